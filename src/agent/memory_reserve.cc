#include "agent/memory_reserve.h"

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
  if (filler_.joinable()) filler_.join();
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

// Paced, not idle: after each block the filler sleeps three times as long as the block
// took, so it uses at most a quarter of a CPU (unless WaitFull hurries it). It used to
// run at SCHED_IDLE, which on a busy machine left it preempted for seconds inside a
// fault or a syscall holding a lock that the agent's mmap/munmap/mremap (MoveInto's
// among them) then waited behind; see Prefaulter in the header. It faults its blocks in
// by writing to them rather than with MADV_POPULATE_WRITE: a page fault holds only its
// mapping's lock, the madvise the process's mmap lock.
void MemoryReserve::Fill() {
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
      const int64_t start = MonoNanos();
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
      if (hurry_ == 0 && !stop_) {
        // The pause (a hold, the destructor) ends the sleep early: both signal cv_.
        const int64_t took = MonoNanos() - start;
        const int64_t until = MonoNanos() + 3 * took;
        while (hurry_ == 0 && !pause_.load(std::memory_order_relaxed)) {
          const int64_t left = until - MonoNanos();
          if (left <= 0) break;
          cv_.WaitFor(&mu_, std::chrono::nanoseconds(left));
        }
      }
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
  // Someone waits for it: the filler does not pace itself meanwhile.
  ++hurry_;
  cv_.SignalAll();
  while (ready_ < target_ && holds_ == 0) {
    const int64_t left = deadline - MonoNanos();
    if (left <= 0) break;
    cv_.WaitFor(&mu_, std::chrono::nanoseconds(left));
  }
  --hurry_;
  return ready_ >= target_;
}

namespace {
constexpr size_t kStepBytes = size_t{2} << 20;

// Faults [p, p + n) in for writing without changing its bytes, even while another thread
// writes them.
void FaultInForWrite(uint8_t* p, size_t n) {
#if defined(__x86_64__)
  // A locked OR of zero per 4 KiB page: a write access (the fault maps the page
  // writable), atomic, so a concurrent store to the same byte is never undone; a plain
  // store or a compiler's atomic could be (an idempotent RMW may be compiled to a load).
  for (size_t off = 0; off < n; off += 4096) {
    asm volatile("lock orb $0, %0" : "+m"(p[off]) : : "memory");
  }
#else
  // Holds the mmap lock for the call: at most one huge page at a time.
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{4095};
  (void)::madvise(reinterpret_cast<void*>(first), reinterpret_cast<uintptr_t>(p) + n - first,
                  MADV_POPULATE_WRITE);
#endif
}
}  // namespace

Prefaulter::Prefaulter(std::vector<Range> ranges, uint64_t lead) : lead_(lead) {
  // Steps of at most 2 MiB, cut at the 2 MiB boundaries of each range's memory (a huge
  // page per step where the kernel gives one), in the writer's order.
  std::vector<Range> steps;
  for (const Range& r : ranges) {
    size_t off = 0;
    while (off < r.n) {
      const uintptr_t a = reinterpret_cast<uintptr_t>(r.p) + off;
      const size_t len = std::min<size_t>(kStepBytes - (a & (kStepBytes - 1)), r.n - off);
      steps.push_back(Range{r.p + off, len, r.at + off});
      off += len;
    }
  }
  std::stable_sort(steps.begin(), steps.end(),
                   [](const Range& a, const Range& b) { return a.at < b.at; });
  thread_ = std::thread([this, steps = std::move(steps)]() mutable { Run(std::move(steps)); });
}

Prefaulter::~Prefaulter() {
  {
    MutexLock l(&mu_);
    stop_ = true;
    stopping_.store(true, std::memory_order_relaxed);
    cv_.SignalAll();
  }
  thread_.join();
}

void Prefaulter::Advance(uint64_t at) {
  uint64_t was = progress_.load(std::memory_order_relaxed);
  // Sequentially consistent with Run's store of waiting_for_ and its load of progress_:
  // either Run sees the new progress, or this sees what it waits for and wakes it.
  while (at > was && !progress_.compare_exchange_weak(was, at)) {
  }
  if (at + lead_ > waiting_for_.load()) {
    MutexLock l(&mu_);
    cv_.SignalAll();
  }
}

bool Prefaulter::WaitDone(int64_t timeout_ns) {
  const int64_t deadline = MonoNanos() + timeout_ns;
  MutexLock l(&mu_);
  while (!done_) {
    const int64_t left = deadline - MonoNanos();
    if (left <= 0) return false;
    cv_.WaitFor(&mu_, std::chrono::nanoseconds(left));
  }
  return true;
}

void Prefaulter::Run(std::vector<Range> steps) {
  for (const Range& s : steps) {
    if (s.at >= progress_.load() + lead_) {
      MutexLock l(&mu_);
      waiting_for_.store(s.at);
      while (!stop_ && s.at >= progress_.load() + lead_) cv_.Wait(&mu_);
      waiting_for_.store(UINT64_MAX);
      if (stop_) return;
    }
    if (stopping_.load(std::memory_order_relaxed)) return;
    FaultInForWrite(s.p, s.n);
  }
  MutexLock l(&mu_);
  done_ = true;
  cv_.SignalAll();
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
