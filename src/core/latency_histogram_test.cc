#include "core/latency_histogram.h"

#include <gtest/gtest.h>

namespace tern {
namespace {

TEST(LatencyHistogramTest, EveryDurationFallsIntoTheBucketWhoseBoundsHoldIt) {
  for (int64_t ns : {int64_t{0}, int64_t{1}, int64_t{127}, int64_t{128}, int64_t{1000},
                     int64_t{1023}, int64_t{1024}, int64_t{1100}, int64_t{999'999},
                     int64_t{2'500'000}, int64_t{1'000'000'000}, int64_t{3'600'000'000'000}}) {
    int b = LatencyHistogram::BucketOf(ns);
    ASSERT_GE(b, 0);
    ASSERT_LT(b, LatencyHistogram::kBuckets);
    EXPECT_LE(LatencyHistogram::LowerBoundNs(b), ns) << ns;
    EXPECT_GT(LatencyHistogram::LowerBoundNs(b + 1), ns) << ns;
    // At most 12.5% wide (beyond the linear first buckets).
    if (ns >= 1024) {
      EXPECT_LE(LatencyHistogram::LowerBoundNs(b + 1) - LatencyHistogram::LowerBoundNs(b),
                LatencyHistogram::LowerBoundNs(b) / 8 + 1)
          << ns;
    }
  }
  // Bounds increase strictly; far beyond the range goes to the last bucket.
  for (int b = 1; b < LatencyHistogram::kBuckets; ++b) {
    EXPECT_GT(LatencyHistogram::LowerBoundNs(b), LatencyHistogram::LowerBoundNs(b - 1)) << b;
    EXPECT_EQ(LatencyHistogram::BucketOf(LatencyHistogram::LowerBoundNs(b)), b) << b;
  }
  EXPECT_EQ(LatencyHistogram::BucketOf(INT64_MAX), LatencyHistogram::kBuckets - 1);
  EXPECT_EQ(LatencyHistogram::BucketOf(-5), 0);
}

TEST(LatencyHistogramTest, QuantileIsTheLowerBoundOfItsBucket) {
  LatencyHistogram h;
  for (int i = 0; i < 98; ++i) h.Record(100'000);  // 100 µs
  h.Record(5'000'000);                             // 5 ms
  h.Record(9'000'000);                             // 9 ms
  std::map<int, uint64_t> counts;
  for (int b = 0; b < LatencyHistogram::kBuckets; ++b) {
    if (h.counts()[b] != 0) counts[b] = h.counts()[b];
  }
  ASSERT_EQ(counts.size(), 3u);
  int64_t p50 = LatencyHistogram::QuantileLowerBoundNs(counts, 0.5);
  EXPECT_LE(p50, 100'000);
  EXPECT_GT(p50, 100'000 * 7 / 8);
  // The 99th of 100 is the 5 ms one; the 100th the 9 ms one.
  int64_t p99 = LatencyHistogram::QuantileLowerBoundNs(counts, 0.99);
  EXPECT_LE(p99, 5'000'000);
  EXPECT_GT(p99, 5'000'000 * 7 / 8);
  EXPECT_GT(LatencyHistogram::QuantileLowerBoundNs(counts, 1.0), 8'000'000);
  EXPECT_EQ(LatencyHistogram::QuantileLowerBoundNs({}, 0.99), -1);
}

}  // namespace
}  // namespace tern
