#include "dataplane/link.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace tern::dataplane {
namespace {

constexpr int64_t kUs = 1'000;
constexpr int64_t kMs = 1'000'000;

TEST(LinkTableTest, SymmetricLookup) {
  LinkTable t;
  t.Set("h1", "h2", LinkSpec{50 * kUs, 1e9});
  ASSERT_TRUE(t.Find("h1", "h2").has_value());
  ASSERT_TRUE(t.Find("h2", "h1").has_value());
  EXPECT_EQ(*t.Find("h2", "h1"), (LinkSpec{50 * kUs, 1e9}));
  EXPECT_FALSE(t.Find("h1", "h3").has_value());
  EXPECT_FALSE(t.Find("h1", "h1").has_value());
  t.Set("h2", "h1", LinkSpec{kMs, 0});  // replaces, whichever order
  EXPECT_EQ(*t.Find("h1", "h2"), (LinkSpec{kMs, 0}));
  EXPECT_EQ(t.size(), 1u);
}

TEST(LinkShaperTest, SerializationPlusLatency) {
  LinkShaper s(LinkSpec{50 * kUs, 1e9});
  // 1 Gbit/s: 125000 bytes = 1e6 bits = exactly 1 ms on the wire, then 50 us in flight.
  EXPECT_EQ(s.DeliverAt(0, 125000), kMs + 50 * kUs);
  EXPECT_EQ(s.busy_until(), kMs);
}

TEST(LinkShaperTest, BackToBackMessagesQueue) {
  LinkShaper s(LinkSpec{50 * kUs, 1e9});
  EXPECT_EQ(s.DeliverAt(0, 125000), 1 * kMs + 50 * kUs);
  EXPECT_EQ(s.DeliverAt(0, 125000), 2 * kMs + 50 * kUs);        // waits for the first
  EXPECT_EQ(s.DeliverAt(kMs / 2, 125000), 3 * kMs + 50 * kUs);  // still queued
  // After the link drained, a message starts at once.
  EXPECT_EQ(s.DeliverAt(10 * kMs, 1250), 10 * kMs + 10 * kUs + 50 * kUs);
}

TEST(LinkShaperTest, FractionalNanosecondsCarryWhileBusy) {
  // 3 bits/ns: a 1-byte message takes 8/3 ns. Three back-to-back messages take exactly 8.
  LinkShaper s(LinkSpec{0, 3e9});
  EXPECT_EQ(s.DeliverAt(100, 1), 102);
  EXPECT_EQ(s.DeliverAt(100, 1), 105);
  EXPECT_EQ(s.DeliverAt(100, 1), 108);
  // 1000 one-byte messages back to back take 8000/3 ns in total, not 1000 * 3.
  LinkShaper t(LinkSpec{0, 3e9});
  int64_t last = 0;
  for (int i = 0; i < 1000; ++i) last = t.DeliverAt(0, 1);
  EXPECT_EQ(last, 8000 / 3);
}

TEST(LinkShaperTest, UnlimitedBandwidthIsLatencyOnly) {
  LinkShaper s(LinkSpec{2 * kMs, 0});
  EXPECT_EQ(s.DeliverAt(5, 1 << 30), 5 + 2 * kMs);
  EXPECT_EQ(s.DeliverAt(6, 1), 6 + 2 * kMs);
  // Delivery order follows call order even if time goes backwards.
  EXPECT_EQ(s.DeliverAt(3, 1), 6 + 2 * kMs);
}

TEST(LinkShaperTest, HugeMessagesSaturateInsteadOfOverflowing) {
  LinkShaper s(LinkSpec{kMs, 1});
  EXPECT_EQ(s.DeliverAt(0, SIZE_MAX), INT64_MAX);
}

TEST(DelayQueueTest, PopsInReleaseOrderStableForTies) {
  DelayQueue<std::string> q;
  EXPECT_FALSE(q.NextRelease().has_value());
  q.Push(30, "c");
  q.Push(10, "a1");
  q.Push(20, "b");
  q.Push(10, "a2");
  q.Push(10, "a3");
  EXPECT_EQ(q.size(), 5u);
  EXPECT_EQ(q.NextRelease(), std::optional<int64_t>(10));
  EXPECT_TRUE(q.PopReady(9).empty());
  EXPECT_EQ(q.PopReady(10), (std::vector<std::string>{"a1", "a2", "a3"}));
  EXPECT_EQ(q.NextRelease(), std::optional<int64_t>(20));
  q.Push(25, "b2");
  EXPECT_EQ(q.PopReady(100), (std::vector<std::string>{"b", "b2", "c"}));
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.NextRelease().has_value());
}

TEST(DelayQueueTest, HoldsMoveOnlyItemsAndManyTies) {
  DelayQueue<std::unique_ptr<int>> q;
  for (int i = 0; i < 100; ++i) q.Push(i % 3, std::make_unique<int>(i));
  std::vector<std::unique_ptr<int>> out = q.PopReady(2);
  ASSERT_EQ(out.size(), 100u);
  int k = 0;
  for (int t = 0; t < 3; ++t) {
    for (int i = t; i < 100; i += 3) EXPECT_EQ(*out[k++], i);
  }
}

TEST(ParseLinkSpecTest, Good) {
  struct Case {
    const char* latency;
    const char* bandwidth;
    LinkSpec want;
  } cases[] = {
      {"0", "unlimited", {0, 0}},
      {"50us", "1gbit", {50 * kUs, 1e9}},
      {"1ms", "100mbit", {kMs, 1e8}},
      {"1.5ms", "10Gbit/s", {1500 * kUs, 1e10}},
      {"250ns", "2.5gbit", {250, 2.5e9}},
      {"2s", "64kbit", {2'000'000'000, 64e3}},
      {"10\xC2\xB5s", "1tbit", {10 * kUs, 1e12}},
      {"0ms", "UNLIMITED", {0, 0}},
      {"3US", "9600bit", {3 * kUs, 9600}},
      {"2us", "16GB/s", {2 * kUs, 128e9}},
      {"2us", "500MB/s", {2 * kUs, 4e9}},
      {"2us", "1.5kB/s", {2 * kUs, 12e3}},
      {"2us", "2KB/s", {2 * kUs, 16e3}},
      {"2us", "100B/s", {2 * kUs, 800}},
      {"2us", "1GiB/s", {2 * kUs, 8.0 * (1 << 30)}},
      {"2us", "3MiB/s", {2 * kUs, 24.0 * (1 << 20)}},
      {"2us", "1TB/s", {2 * kUs, 8e12}},
  };
  for (const Case& c : cases) {
    Result<LinkSpec> r = ParseLinkSpec(c.latency, c.bandwidth);
    ASSERT_TRUE(r.ok()) << c.latency << " " << c.bandwidth << ": " << r.status();
    EXPECT_EQ(r->latency_ns, c.want.latency_ns) << c.latency;
    EXPECT_DOUBLE_EQ(r->bandwidth_bps, c.want.bandwidth_bps) << c.bandwidth;
  }
}

TEST(ParseLinkSpecTest, Bad) {
  struct Case {
    const char* latency;
    const char* bandwidth;
    const char* expect;
  } cases[] = {
      {"5", "1gbit", "latency '5': needs a unit"},
      {"", "1gbit", "latency '': expected a non-negative number"},
      {"-1ms", "1gbit", "latency '-1ms': expected a non-negative number"},
      {"1xs", "1gbit", "latency '1xs': unknown unit 'xs'"},
      {"ms", "1gbit", "latency 'ms': expected a non-negative number"},
      {"1e3us", "1gbit", "unknown unit 'e3us'"},
      {"1.2.3ms", "1gbit", "unknown unit '.3ms'"},
      {"2h", "1gbit", "unknown unit 'h'"},
      {"3601s", "1gbit", "more than one hour"},
      {"1ms", "100", "bandwidth '100': needs a unit"},
      {"1ms", "0", "bandwidth '0': needs a unit"},
      {"1ms", "0mbit", "must be at least 1 bit/s (write 'unlimited' for no limit)"},
      {"1ms", "100mbps",
       "bandwidth '100mbps': ambiguous unit 'mbps' (tc reads it as bytes per second); write "
       "'mbit'"},
      {"1ms", "1gbyte", "unknown unit 'gbyte'"},
      {"1ms", "fast", "bandwidth 'fast': expected a non-negative number"},
      {"1ms", "-5gbit", "expected a non-negative number"},
      {"1ms", "2000tbit", "more than 1000 tbit/s"},
      {"1ms", "inf", "expected a non-negative number"},
      {"1ms", "10Gb/s", "ambiguous unit 'Gb/s'; write 'gbit' for bits or 'GB/s' for bytes"},
      {"1ms", "16GB", "ambiguous unit 'GB'; write 'gbit' for bits or 'GB/s' for bytes"},
      {"1ms", "5kb/s", "write 'kbit' for bits or 'kB/s'"},
      {"1ms", "5mB/s", "ambiguous unit 'mB/s'"},
      {"1ms", "0GB/s", "must be at least 1 bit/s"},
      {"1ms", "200TB/s", "more than 1000 tbit/s"},
      {"1ms", "1GiB", "unknown unit 'GiB'"},
  };
  for (const Case& c : cases) {
    Result<LinkSpec> r = ParseLinkSpec(c.latency, c.bandwidth);
    ASSERT_FALSE(r.ok()) << c.latency << " " << c.bandwidth;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.expect), std::string_view::npos) << "got: " << r.status();
  }
}

}  // namespace
}  // namespace tern::dataplane
