// The test binary's global operator new/delete: malloc/free plus a per-thread counter,
// so tests can check that a hot path does not allocate (V8 included, as libnode's
// references to operator new bind to these).
#include <cstdlib>
#include <new>

#include "wasm/test_util.h"

namespace {
thread_local bool t_counting = false;
thread_local uint64_t t_count = 0;
}  // namespace

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
// (Sanitizers bring their own operator new; replacing only part of the family would
// mismatch allocation and deallocation.)
#define TERN_COUNT_ALLOCATIONS 1
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(size_t n) {
  if (t_counting) ++t_count;
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t n) {
  if (t_counting) ++t_count;
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
#endif

namespace tern::wasm::testing {

bool CanCountAllocations() {
#ifdef TERN_COUNT_ALLOCATIONS
  return true;
#else
  return false;
#endif
}

void StartCountingAllocations() {
  t_count = 0;
  t_counting = true;
}

uint64_t StopCountingAllocations() {
  t_counting = false;
  return t_count;
}

}  // namespace tern::wasm::testing
