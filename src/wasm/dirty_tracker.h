// DirtyTracker: which pages of a memory range were written since the last Collect().
//
// Used to keep a "last good state" copy of a stateful instance cheaply: after each
// request, Peek() names the pages written since the last re-arm, a superset of what the
// request wrote; only those that differ from the copy are copied, and the tracker is
// re-armed (Rearm) once the set grows large (agent.cc, PeekWritten).
//
// Two implementations:
//   kUffdWriteProtect  userfaultfd write-protection in asynchronous mode
//                      (UFFD_FEATURE_WP_ASYNC + WP_UNPOPULATED, Linux >= 6.7) read and
//                      re-armed with the PAGEMAP_SCAN ioctl on /proc/self/pagemap. Exact,
//                      and the cost is proportional to the pages written: no fault is
//                      delivered to user space, the kernel just marks the page written.
//   kShadowCompare     keeps a copy of the range and compares it page by page. Portable;
//                      costs a full compare per Collect() and a second copy of the memory.
//
// The tracked range is [base, base + bytes). It may grow in place (a wasm memory that
// grew with memory.grow): call Grow(). The memory must stay mapped while the tracker
// exists, and the tracker must be destroyed before the memory is unmapped.
//
// Ownership: the tracker owns its userfaultfd / shadow copy, not the memory.
// Thread-safety: not thread-safe; one thread uses a tracker at a time. Writes to the
// memory may come from any thread (they are tracked), but must not race with Collect()
// if the caller wants a consistent copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::wasm {

class DirtyTracker {
 public:
  enum class Kind { kUffdWriteProtect, kShadowCompare };

  virtual ~DirtyTracker() = default;

  // Tracks writes to [base, base + bytes) in units of `page_bytes` (a power of two, at
  // least 4096; use 65536 for wasm pages). `base` must be 4096-aligned and the range
  // mapped, private and anonymous (a wasm memory is). Writes before creation are not
  // reported. kUnimplemented when the kernel lacks userfaultfd write-protection,
  // WP_ASYNC or PAGEMAP_SCAN, or cannot track this range (not anonymous memory, or
  // already tracked by another uffd tracker); kInvalidArgument for a bad range.
  static Result<std::unique_ptr<DirtyTracker>> CreateUffd(uint8_t* base, size_t bytes,
                                                          size_t page_bytes);
  // The shadow-copy fallback; works everywhere. Copies the range now.
  static Result<std::unique_ptr<DirtyTracker>> CreateShadow(uint8_t* base, size_t bytes,
                                                            size_t page_bytes);
  // The best available: userfaultfd when the kernel supports it, else the shadow copy.
  static Result<std::unique_ptr<DirtyTracker>> Create(uint8_t* base, size_t bytes,
                                                      size_t page_bytes);

  virtual Kind kind() const = 0;
  virtual size_t page_bytes() const = 0;
  virtual size_t bytes() const = 0;

  // Returns the indices (ascending, in units of page_bytes from base) of the pages
  // written since creation or the previous Collect(), and starts a new interval. A page
  // may be reported although its content did not change (written with the same bytes;
  // for the uffd tracker also a page only read in a region added by Grow()), but a page
  // whose content changed is never missed.
  virtual Result<std::vector<uint32_t>> Collect() = 0;

  // Collect() without starting a new interval: every page written since the previous
  // call of Collect(), Peek() or Rearm() is reported (the same caveats), and the uffd
  // tracker reports it again on each later Peek() until Collect() or Rearm(). Costs no
  // TLB shootdown: re-arming (write-protecting the written pages again) is what makes
  // the other CPUs running this process's threads flush their TLBs, one interrupt per
  // 2 MiB of the range that holds a written page (PAGEMAP_SCAN flushes per page table),
  // ~15-50 µs each on a VM. A caller that compares the reported pages with a copy of
  // its own peeks after each request and re-arms only once the set grows large.
  virtual Result<std::vector<uint32_t>> Peek() = 0;
  // Starts a new interval without reporting (cheaper than Collect()).
  virtual Status Rearm() = 0;

  // The range grew in place to `new_bytes` (same base). The new part is tracked from
  // now on; the shadow tracker assumes it was all zero (true for new wasm pages), so
  // pages written there before this call are reported by the next Collect().
  virtual Status Grow(size_t new_bytes) = 0;
};

std::string_view DirtyTrackerKindName(DirtyTracker::Kind kind);

}  // namespace tern::wasm
