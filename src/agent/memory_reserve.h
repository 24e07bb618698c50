// MemoryReserve: a warm pool of faulted-in anonymous memory that an agent keeps so
// that a migration target lands on pages the process already holds (like QEMU's
// -mem-prealloc or a VMM's warm pool). docs/design/migration.md "The warm memory
// reserve" says why and what it costs.
//
// The reserve holds up to `bytes` of 2 MiB-aligned, MADV_HUGEPAGE anonymous memory,
// faulted in (written) by a filler thread that uses at most a quarter of a CPU, never on
// a request's or a migration's path. MoveInto() hands blocks out by moving their page tables into the
// caller's range (mremap MREMAP_MAYMOVE | MREMAP_FIXED): no copy and no fault; with
// source and destination 2 MiB-aligned the kernel moves whole huge-page entries. The
// filler then refills the reserve, unless a Hold pauses it (an incoming migration
// holds one, so that refilling never competes with it for the CPU).
//
// Isolation between tenants: the reserve only ever holds memory fresh from the kernel
// (zero-filled on its first touch, written with zeros by the filler, never given
// anything else); memory handed out is never taken back. So what MoveInto places reads
// as zero, whatever the range held before.
//
// Ownership: the reserve owns its unhanded blocks (unmapped when it is destroyed); the
// blocks it moved belong to whoever owns the destination range (they are unmapped with
// it). Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/mutex.h"

namespace tern::agent {

class MemoryReserve {
 public:
  static constexpr size_t kBlockBytes = size_t{2} << 20;  // one huge page

  // Keeps `bytes` (rounded up to whole 2 MiB blocks) ready; 0 = no reserve (no thread;
  // MoveInto places nothing).
  explicit MemoryReserve(size_t bytes);
  ~MemoryReserve();
  MemoryReserve(const MemoryReserve&) = delete;
  MemoryReserve& operator=(const MemoryReserve&) = delete;

  // Replaces the whole 2 MiB blocks inside [p, p + n) (from the first aligned address
  // to the last) with warm zero blocks, as many as the reserve has, in ascending order;
  // returns the bytes placed (0 when the reserve is empty or the range holds no whole
  // block). The range must be mapped read-write, private and anonymous, and its content
  // must not be needed (fresh pages or capacity not yet written): it is discarded. Not
  // for a range a userfaultfd tracks (register it afterwards). If moving fails, the
  // block is mapped fresh (zero) again, so the range stays whole, and the rest of the
  // range is left as it was.
  size_t MoveInto(uint8_t* p, size_t n);

  // Pauses refilling while it lives (movable; the reserve must outlive it).
  class Hold {
   public:
    Hold() = default;
    explicit Hold(MemoryReserve* r);
    Hold(Hold&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
    Hold& operator=(Hold&& o) noexcept;
    ~Hold() { Release(); }
    void Release();

   private:
    MemoryReserve* r_ = nullptr;
  };

  struct Stats {
    uint64_t target_bytes = 0;  // what it keeps ready when full
    uint64_t ready_bytes = 0;   // faulted in and not yet handed out
    uint64_t moved_bytes = 0;   // handed out since the start
    uint64_t failed_moves = 0;  // mremap failures (the caller's pages then fault in)
  };
  Stats stats() const;

  // Waits until the reserve is full, filling at full speed meanwhile; false after
  // `timeout_ns`, or at once while a Hold pauses it (benchmarks and tests).
  bool WaitFull(int64_t timeout_ns);

 private:
  struct Span {  // ready blocks, [addr, addr + bytes), all inside one mapping
    uintptr_t addr;
    size_t bytes;
    uint64_t mapping;  // spans of different mappings are never merged (mremap's source
                       // must lie in one mapping)
  };
  void Fill();

  const size_t target_;
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<Span> spans_ GUARDED_BY(mu_);
  uint64_t ready_ GUARDED_BY(mu_) = 0;
  uint64_t moved_ GUARDED_BY(mu_) = 0;
  uint64_t failed_ GUARDED_BY(mu_) = 0;
  int holds_ GUARDED_BY(mu_) = 0;
  int hurry_ GUARDED_BY(mu_) = 0;  // WaitFull calls: the filler does not pace itself
  std::atomic<bool> pause_{false};  // stop or a hold: the filler stops at its next block
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread filler_;
};

// Faults in ranges of the caller's memory ahead of writes to come (a migration target's
// incoming memory and rollback point), on a thread of its own, without changing a byte
// of them: the writer then copies into mapped memory, and the kernel's page zeroing runs
// beside it instead of inside it. Each range has a position `at` in a common order (the
// byte offset in the instance's memory it mirrors); the thread faults the ranges in 2 MiB
// steps in that order, but at most `lead` bytes past the writer's progress (Advance):
// it does the work the writer would do itself a little earlier, never more of it.
//
// Why paced at normal priority rather than at idle priority: a fault holds a lock (the
// range's VMA lock, or the process's mmap lock for the first fault of a fresh mapping
// and for MADV_POPULATE_WRITE), zeroing a 2 MiB huge page is a preemption point, and an
// idle thread preempted there on a busy machine did not run again for seconds while
// every mmap/munmap/mprotect of the agent (V8's, malloc's) waited behind it
// (docs/design/migration.md "Stalls under load"). On x86-64 the faults are writes that
// change nothing (an atomic OR of zero), which take only the range's VMA lock (Linux 6.4+;
// before, the mmap lock for reading); elsewhere MADV_POPULATE_WRITE, one huge page per call.
//
// The ranges must stay mapped, and nothing may change their mappings (grow, mremap,
// munmap, userfaultfd registration), until the Prefaulter is destroyed: destroy it first.
class Prefaulter {
 public:
  struct Range {
    uint8_t* p;
    size_t n;
    uint64_t at;  // its position in the writer's order
  };
  static constexpr uint64_t kDefaultLead = uint64_t{16} << 20;

  explicit Prefaulter(std::vector<Range> ranges, uint64_t lead = kDefaultLead);
  ~Prefaulter();  // stops after its current step and joins
  Prefaulter(const Prefaulter&) = delete;
  Prefaulter& operator=(const Prefaulter&) = delete;

  // The writer has reached position `at` (positions below it are written): the thread
  // may fault up to at + lead. Cheap unless it crosses a step the thread waits for.
  void Advance(uint64_t at);

  // Waits until every range is faulted in (tests); false after `timeout_ns`.
  bool WaitDone(int64_t timeout_ns);

 private:
  void Run(std::vector<Range> steps);

  const uint64_t lead_;
  std::atomic<uint64_t> progress_{0};
  std::atomic<uint64_t> waiting_for_{UINT64_MAX};  // the position the thread waits for
  Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  bool done_ GUARDED_BY(mu_) = false;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// Gives `*s`, about to be overwritten with up to `bytes` bytes, a buffer of that capacity
// on warm memory when its own is smaller: the buffer's whole 2 MiB blocks come from
// `reserve` (may be null) as far as it has them; the pages before its first block
// boundary and after its last fault in as usual. Its content is not kept.
void ReserveWarmString(MemoryReserve* reserve, std::string* s, size_t bytes);

}  // namespace tern::agent
