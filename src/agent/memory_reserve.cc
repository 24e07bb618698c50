#include "agent/memory_reserve.h"

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/clock.h"
#include "core/logging.h"

namespace tern::agent {

namespace {
// The filler maps and faults in this much at a time (one mapping: a span never crosses
// two, see Span::mapping): few mappings, and a hold stops it within one 2 MiB block.
constexpr size_t kChunkBytes = size_t{64} << 20;
constexpr uintptr_t kBlockMask = MemoryReserve::kBlockBytes - 1;
}  // namespace

MemoryReserve::MemoryReserve(size_t bytes)
    : target_((bytes + kBlockMask) & ~static_cast<size_t>(kBlockMask)) {
  if (target_ > 0) filler_ = std::thread([this] { Fill(); });
}

MemoryReserve::~MemoryReserve() {
  {
    MutexLock l(&mu_);
    stop_ = true;
    pause_.store(true, std::memory_order_relaxed);
    cv_.SignalAll();
  }
  if (filler_.joinable()) {
    SetFillerPriority(/*idle=*/false);  // so that it finishes its block promptly
    filler_.join();
  }
  MutexLock l(&mu_);
  for (const Span& s : spans_) ::munmap(reinterpret_cast<void*>(s.addr), s.bytes);
  spans_.clear();
}

MemoryReserve::Hold::Hold(MemoryReserve* r) : r_(r) {
  if (r_ == nullptr) return;
  MutexLock l(&r_->mu_);
  ++r_->holds_;
  r_->pause_.store(true, std::memory_order_relaxed);
}

MemoryReserve::Hold& MemoryReserve::Hold::operator=(Hold&& o) noexcept {
  if (this != &o) {
    Release();
    r_ = o.r_;
    o.r_ = nullptr;
  }
  return *this;
}

void MemoryReserve::Hold::Release() {
  if (r_ == nullptr) return;
  MutexLock l(&r_->mu_);
  if (--r_->holds_ == 0 && !r_->stop_) {
    r_->pause_.store(false, std::memory_order_relaxed);
    r_->cv_.SignalAll();
  }
  r_ = nullptr;
}

void MemoryReserve::SetFillerPriority(bool idle) {
  if (!filler_.joinable()) return;
  sched_param p{};
  (void)pthread_setschedparam(filler_.native_handle(), idle ? SCHED_IDLE : SCHED_OTHER, &p);
}

// Idle priority: the filler uses only CPU time nothing else wants. It faults its blocks
// in by writing to them rather than with MADV_POPULATE_WRITE: a page fault holds only
// its mapping's lock, while the madvise holds the process's mmap lock for the whole
// call, and an idle thread preempted while holding it would stall every mmap/munmap of
// the agent (V8's and malloc's) until it runs again. MoveInto raises its priority while
// it moves pages out of a mapping the filler may be faulting in.
void MemoryReserve::Fill() {
  sched_param idle{};
  (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);  // best effort
  uint64_t mapping = 0;
  bool warned = false;
  for (;;) {
    size_t want;
    {
      MutexLock l(&mu_);
      while (!stop_ && (holds_ > 0 || ready_ >= target_)) cv_.Wait(&mu_);
      if (stop_) return;
      want = std::min<size_t>(target_ - ready_, kChunkBytes);
    }
    // 2 MiB-aligned: map a block more and trim both ends.
    void* raw = ::mmap(nullptr, want + kBlockBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
      if (!warned) {
        TERN_LOG(WARN) << "memory reserve: mmap of " << (want >> 20)
                       << " MiB failed: " << std::strerror(errno) << "; retrying every second";
        warned = true;
      }
      MutexLock l(&mu_);
      if (!stop_) cv_.WaitFor(&mu_, std::chrono::seconds(1));
      continue;
    }
    const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t a = (r + kBlockMask) & ~kBlockMask;
    if (a > r) ::munmap(raw, a - r);
    if (r + want + kBlockBytes > a + want) {
      ::munmap(reinterpret_cast<void*>(a + want), r + want + kBlockBytes - (a + want));
    }
    (void)::madvise(reinterpret_cast<void*>(a), want, MADV_HUGEPAGE);  // best effort
    ++mapping;
    size_t done = 0;
    for (; done < want && !pause_.load(std::memory_order_relaxed); done += kBlockBytes) {
      // One write per 4 KiB page: a huge page faults in on the first, the rest are
      // plain stores; where no huge page was free, every 4 KiB page faults in. The
      // kernel zero-fills each; the stores write zeros again.
      for (size_t off = 0; off < kBlockBytes; off += 4096) {
        *reinterpret_cast<volatile char*>(a + done + off) = 0;
      }
      MutexLock l(&mu_);
      if (!spans_.empty() && spans_.back().mapping == mapping &&
          spans_.back().addr + spans_.back().bytes == a + done) {
        spans_.back().bytes += kBlockBytes;
      } else {
        spans_.push_back(Span{a + done, kBlockBytes, mapping});
      }
      ready_ += kBlockBytes;
      cv_.SignalAll();
    }
    if (done < want) ::munmap(reinterpret_cast<void*>(a + done), want - done);
  }
}

size_t MemoryReserve::MoveInto(uint8_t* p, size_t n) {
  const uintptr_t first = (reinterpret_cast<uintptr_t>(p) + kBlockMask) & ~kBlockMask;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~kBlockMask;
  if (target_ == 0 || end <= first) return 0;
  MutexLock l(&mu_);
  if (spans_.empty()) return 0;
  if (movers_++ == 0) SetFillerPriority(/*idle=*/false);
  uintptr_t at = first;
  while (at < end && !spans_.empty()) {
    Span& s = spans_.front();
    const size_t len = std::min<size_t>(s.bytes, end - at);
    void* moved = ::mremap(reinterpret_cast<void*>(s.addr), len, len,
                           MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(at));
    if (moved == MAP_FAILED) {
      const int err = errno;
      // The kernel may have unmapped the destination before failing: map it again
      // (fresh zero pages, what the caller's untouched range held).
      void* again = ::mmap(reinterpret_cast<void*>(at), len, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (again == MAP_FAILED) {
        TERN_LOG(ERROR) << "memory reserve: remapping " << (len >> 20)
                        << " MiB after a failed move failed: " << std::strerror(errno);
      }
      if (failed_++ == 0) {
        TERN_LOG(WARN) << "memory reserve: mremap of " << (len >> 20)
                       << " MiB failed: " << std::strerror(err)
                       << " (the rest faults in as fresh memory)";
      }
      break;
    }
    at += len;
    ready_ -= len;
    s.addr += len;
    s.bytes -= len;
    if (s.bytes == 0) spans_.pop_front();
  }
  if (--movers_ == 0) SetFillerPriority(/*idle=*/true);
  moved_ += at - first;
  cv_.SignalAll();  // refill (once no hold pauses it)
  return at - first;
}

MemoryReserve::Stats MemoryReserve::stats() const {
  MutexLock l(&mu_);
  return Stats{target_, ready_, moved_, failed_};
}

bool MemoryReserve::WaitFull(int64_t timeout_ns) {
  const int64_t deadline = MonoNanos() + timeout_ns;
  MutexLock l(&mu_);
  if (ready_ >= target_) return true;
  // Someone waits for it: fill at normal priority meanwhile (at idle priority on a busy
  // machine the filler may get a fraction of a percent of a CPU).
  if (movers_++ == 0) SetFillerPriority(/*idle=*/false);
  while (ready_ < target_ && holds_ == 0) {
    const int64_t left = deadline - MonoNanos();
    if (left <= 0) break;
    cv_.WaitFor(&mu_, std::chrono::nanoseconds(left));
  }
  if (--movers_ == 0) SetFillerPriority(/*idle=*/true);
  return ready_ >= target_;
}

void ReserveWarmString(MemoryReserve* reserve, std::string* s, size_t bytes) {
  if (reserve == nullptr || s->capacity() >= bytes || bytes < 2 * MemoryReserve::kBlockBytes) return;
  std::string fresh;
  fresh.reserve(bytes);  // untouched capacity: its content is not needed
  // From its second byte on: the first holds the terminator.
  reserve->MoveInto(reinterpret_cast<uint8_t*>(fresh.data()) + 1, bytes - 1);
  s->swap(fresh);
}

}  // namespace tern::agent
