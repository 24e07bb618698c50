// RawV8: the floor for the in-process measurements — the same guest driven directly
// through V8's embedder API (v8.h), with no tern code in between: its own isolate and
// context, WasmModuleObject::Compile, `new WebAssembly.Instance` with stub imports,
// and Function::Call of an export in a loop.
//
// Thread-safety: Run() starts its own thread (an isolate is single-threaded) and joins
// it. V8 must already be initialized in this process (tern's engine does it:
// wasm::NewV8Engine); Run() creates and disposes its own isolate.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::bench {

struct RawV8Options {
  std::string export_name = "nop";  // signature () -> i32
  size_t warmup_calls = 10000;
  size_t calls = 100000;         // each timed on its own
  size_t batch_calls = 1000000;  // timed in batches of 1000 (no per-call timer reads)
  size_t warmup_instantiations = 100;
  size_t instantiations = 2000;  // each of: with _initialize, without
  int cpu = -1;                  // pin the thread to this CPU; < 0 = unpinned
};

struct RawV8Results {
  std::vector<int64_t> call_ns;              // per call
  double batch_median_ns = 0;                // per call: median over batches of 1000
  std::vector<int64_t> instantiate_init_ns;  // new Instance + _initialize
  std::vector<int64_t> instantiate_ns;       // new Instance only
  bool pinned = false;
};

struct RawRestoreResults {
  std::vector<int64_t> instantiate_ns;  // new Instance, no _initialize
  std::vector<int64_t> grow_ns;         // memory.grow(delta)
  std::vector<int64_t> populate_ns;     // madvise(MADV_POPULATE_WRITE) of the whole memory
  std::vector<int64_t> copy_ns;         // memcpy of the image
  std::vector<int64_t> restore_ns;      // grow + populate + copy
  bool pinned = false;
};

// The steps of a restore into a fresh instance, done `reps` times in a raw isolate:
// instantiate `wasm_bytes` without _initialize, memory.grow to image.size() (a whole
// number of pages, at least the fresh memory), pre-fault with MADV_POPULATE_WRITE (as
// tern's Restore does), memcpy `image` in. Pinned to `cpu` unless cpu < 0.
Result<RawRestoreResults> RunRawV8Restore(std::string_view wasm_bytes, std::string_view image,
                                          size_t reps, int cpu);

// Compiles `wasm_bytes` (every import stubbed by a function that returns 0), then
// measures. Errors: the module does not compile or instantiate, the export is missing,
// or a call throws.
Result<RawV8Results> RunRawV8(std::string_view wasm_bytes, const RawV8Options& options);

}  // namespace tern::bench
