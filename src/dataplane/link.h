// User-space emulated links. Where the kernel has no netem (or we have no root), the data
// plane shapes traffic itself: a LinkTable says which latency and bandwidth join two
// hosts, a LinkShaper computes when each message of one direction of a link may be
// delivered, and a DelayQueue holds messages until then.
//
// Everything here is pure arithmetic on nanosecond timestamps passed in by the caller:
// no clock is read and nothing sleeps, so tests are exact.
//
// Ownership: value types; DelayQueue owns its items until they are popped.
// Thread-safety: LinkTable is safe from any thread. LinkShaper and DelayQueue are not
// synchronized: each belongs to one thread (the event loop that sends on that link
// direction), or the owner locks around them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"

namespace tern::dataplane {

struct LinkSpec {
  int64_t latency_ns = 0;    // one-way propagation delay
  double bandwidth_bps = 0;  // bits per second; 0 = unlimited

  bool operator==(const LinkSpec&) const = default;
};

// Links between hosts, symmetric: Set(a, b) also answers Find(b, a). A host with itself
// has no link unless one is set.
class LinkTable {
 public:
  LinkTable() = default;
  LinkTable(const LinkTable&) = delete;
  LinkTable& operator=(const LinkTable&) = delete;

  // Sets (or replaces) the link between hosts `a` and `b`.
  void Set(const std::string& a, const std::string& b, LinkSpec spec) EXCLUDES(mu_);
  // The link between `a` and `b`, in either order; nullopt if none was set.
  std::optional<LinkSpec> Find(const std::string& a, const std::string& b) const EXCLUDES(mu_);
  size_t size() const EXCLUDES(mu_);

 private:
  static std::pair<std::string, std::string> Key(const std::string& a, const std::string& b) {
    return a <= b ? std::make_pair(a, b) : std::make_pair(b, a);
  }

  mutable Mutex mu_;
  std::map<std::pair<std::string, std::string>, LinkSpec> links_ GUARDED_BY(mu_);
};

// Shapes one direction of one link. A message of n bytes handed over at `now_ns` starts
// serializing when the link is free (messages queue behind each other: a busy-until
// clock), takes n*8/bandwidth seconds, and arrives `latency_ns` after its last bit left.
// Serialization is exact integer arithmetic; the sub-nanosecond remainder carries over
// while the link stays busy, so back-to-back messages run at exactly the bandwidth.
// The bandwidth is rounded to whole bits per second. Not thread-safe.
class LinkShaper {
 public:
  explicit LinkShaper(LinkSpec spec);

  // The time at which a message of `bytes` handed over at `now_ns` is delivered. Calls
  // must hand messages over in sending order; an earlier `now_ns` than a previous call's
  // is treated as "at once", so delivery order always equals call order.
  int64_t DeliverAt(int64_t now_ns, size_t bytes);

  // When the last accepted message finishes serializing (the link is free from then).
  int64_t busy_until() const { return busy_until_; }
  const LinkSpec& spec() const { return spec_; }

 private:
  LinkSpec spec_;
  uint64_t rate_bps_ = 0;  // 0 = unlimited
  int64_t latency_ns_ = 0;
  int64_t busy_until_ = INT64_MIN;
  uint64_t carry_ = 0;  // leftover of bytes*8e9 / rate, in units of 1/rate ns
};

// Items waiting for their release time. PopReady(now) returns the items due by `now`
// in release-time order, equal times in push order. Not thread-safe.
template <typename T>
class DelayQueue {
 public:
  void Push(int64_t release_ns, T item) {
    heap_.push_back(Entry{release_ns, next_seq_++, std::move(item)});
    std::push_heap(heap_.begin(), heap_.end(), Later);
  }

  // Removes and returns every item with release time <= now_ns, in order.
  std::vector<T> PopReady(int64_t now_ns) {
    std::vector<T> out;
    while (!heap_.empty() && heap_.front().release_ns <= now_ns) {
      std::pop_heap(heap_.begin(), heap_.end(), Later);
      out.push_back(std::move(heap_.back().item));
      heap_.pop_back();
    }
    return out;
  }

  // The earliest release time, for an event loop's timeout; nullopt when empty.
  std::optional<int64_t> NextRelease() const {
    if (heap_.empty()) return std::nullopt;
    return heap_.front().release_ns;
  }

  size_t size() const { return heap_.size(); }
  bool empty() const { return heap_.empty(); }

 private:
  struct Entry {
    int64_t release_ns;
    uint64_t seq;  // push order, for stability among equal release times
    T item;
  };
  // Heap order: the earliest (release, seq) at the front.
  static bool Later(const Entry& x, const Entry& y) {
    if (x.release_ns != y.release_ns) return x.release_ns > y.release_ns;
    return x.seq > y.seq;
  }

  std::vector<Entry> heap_;
  uint64_t next_seq_ = 0;
};

// Parses a latency: "0", or a non-negative decimal number with a unit ns, us (or µs),
// ms, s: "50us", "1.5ms". At most one hour. kInvalidArgument otherwise.
Result<int64_t> ParseLatency(std::string_view text);
// Parses a bandwidth in bits per second: "unlimited" (-> 0), or a positive decimal with a
// unit bit, kbit, mbit, gbit, tbit (SI, case-insensitive, optional "/s"): "100mbit",
// "10Gbit/s"; or bytes per second with a capital B and "/s" (case-sensitive): B/s, kB/s
// (or KB/s), MB/s, GB/s, TB/s (SI) and KiB/s, MiB/s, GiB/s, TiB/s, converted to bits:
// "16GB/s" -> 1.28e11. Units like "mbps", "Gb/s" or "16GB" are refused as ambiguous (tc
// reads "mbps" as bytes, "Gb/s" conventionally means bits). At least 1 bit/s, at most
// 1000 tbit/s.
Result<double> ParseBandwidth(std::string_view text);
// Both of the above; errors name which one is wrong.
Result<LinkSpec> ParseLinkSpec(std::string_view latency, std::string_view bandwidth);

}  // namespace tern::dataplane
