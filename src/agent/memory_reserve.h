// MemoryReserve: a warm pool of faulted-in anonymous memory that an agent keeps so
// that a migration target lands on pages the process already holds (like QEMU's
// -mem-prealloc or a VMM's warm pool). docs/design/migration.md "The warm memory
// reserve" says why and what it costs.
//
// The reserve holds up to `bytes` of 2 MiB-aligned, MADV_HUGEPAGE anonymous memory,
// faulted in (written) by a filler thread at SCHED_IDLE, never on a request's or a
// migration's path. MoveInto() hands blocks out by moving their page tables into the
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

  // Waits until the reserve is full, filling at normal priority meanwhile; false after
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
  void SetFillerPriority(bool idle);

  const size_t target_;
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<Span> spans_ GUARDED_BY(mu_);
  uint64_t ready_ GUARDED_BY(mu_) = 0;
  uint64_t moved_ GUARDED_BY(mu_) = 0;
  uint64_t failed_ GUARDED_BY(mu_) = 0;
  int holds_ GUARDED_BY(mu_) = 0;
  int movers_ GUARDED_BY(mu_) = 0;  // MoveInto and WaitFull calls: the filler at normal priority
  std::atomic<bool> pause_{false};  // stop or a hold: the filler stops at its next block
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread filler_;
};

// Gives `*s`, about to be overwritten with up to `bytes` bytes, a buffer of that capacity
// on warm memory when its own is smaller: the buffer's whole 2 MiB blocks come from
// `reserve` (may be null) as far as it has them; the pages before its first block
// boundary and after its last fault in as usual. Its content is not kept.
void ReserveWarmString(MemoryReserve* reserve, std::string* s, size_t bytes);

}  // namespace tern::agent
