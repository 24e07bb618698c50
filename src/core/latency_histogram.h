// LatencyHistogram: counts of durations in fixed buckets, 8 per power of two (each
// bucket ≤ 12.5% wide) from 128 ns to ~2.4 h; shorter durations share the first
// buckets, longer ones the last. Recording is a shift, a count-leading-zeros and an
// increment — cheap enough for every request, and no lock: an agent keeps one per
// instance on the instance's worker thread. Reports are the cumulative counts (sparse);
// the reader subtracts two reports to get an interval's distribution, so several readers
// need no coordination.
//
// Value type; thread-compatible.
#pragma once

#include <array>
#include <cstdint>
#include <map>

namespace tern {

class LatencyHistogram {
 public:
  static constexpr int kUnitShift = 7;  // 128 ns
  static constexpr int kSubBits = 3;    // 8 buckets per power of two
  static constexpr int kBuckets = 8 * 34;

  static int BucketOf(int64_t ns) {
    uint64_t v = ns <= 0 ? 0 : static_cast<uint64_t>(ns) >> kUnitShift;
    if (v < (1u << kSubBits)) return static_cast<int>(v);
    int msb = 63 - __builtin_clzll(v);
    int b = (msb - kSubBits + 1) * (1 << kSubBits) +
            static_cast<int>((v >> (msb - kSubBits)) & ((1u << kSubBits) - 1));
    return b < kBuckets ? b : kBuckets - 1;
  }
  // The shortest duration that falls into bucket `b`.
  static int64_t LowerBoundNs(int b) {
    if (b < (1 << kSubBits)) return int64_t{b} << kUnitShift;
    int msb = b / (1 << kSubBits) + kSubBits - 1;
    uint64_t v = (uint64_t{1} << kSubBits | static_cast<uint64_t>(b % (1 << kSubBits)))
                 << (msb - kSubBits);
    return static_cast<int64_t>(v << kUnitShift);
  }

  void Record(int64_t ns) { ++counts_[BucketOf(ns)]; }
  const std::array<uint64_t, kBuckets>& counts() const { return counts_; }

  // The lower bound of the bucket holding the q-quantile (0 < q ≤ 1) of `counts`
  // (bucket → count): a duration the quantile is certainly not below; -1 when empty.
  static int64_t QuantileLowerBoundNs(const std::map<int, uint64_t>& counts, double q) {
    uint64_t total = 0;
    for (const auto& [b, n] : counts) total += n;
    if (total == 0) return -1;
    // The rank of the quantile, 1-based: ceil(q × total).
    uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(total));
    if (static_cast<double>(rank) < q * static_cast<double>(total)) ++rank;
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (const auto& [b, n] : counts) {
      seen += n;
      if (seen >= rank) return LowerBoundNs(b);
    }
    return LowerBoundNs(counts.rbegin()->first);
  }

 private:
  std::array<uint64_t, kBuckets> counts_{};
};

}  // namespace tern
