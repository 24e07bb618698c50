#include "core/ids.h"

#include <gtest/gtest.h>

#include <set>

namespace tern {
namespace {

TEST(TraceIdTest, FreshIdsAreNonZeroAndDistinct) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    uint64_t id = NewTraceId();
    EXPECT_NE(id, 0u);
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 10000u);
}

TEST(TraceIdTest, HexRoundTrip) {
  EXPECT_EQ(TraceIdHex(0x4bf92f3577b34da6ull), "4bf92f3577b34da6");
  EXPECT_EQ(TraceIdHex(1), "0000000000000001");
  for (uint64_t v : {uint64_t{1}, uint64_t{0xabcdef}, ~uint64_t{0}, NewTraceId()}) {
    Result<uint64_t> r = ParseTraceId(TraceIdHex(v));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, v);
  }
  EXPECT_EQ(*ParseTraceId("ABCdef"), 0xabcdefu);
  EXPECT_EQ(*ParseTraceId("0x2a"), 0x2au);
}

TEST(TraceIdTest, BadTraceIdsSayWhy) {
  for (const char* bad : {"", "0x", "xyz", "12 34", "-1", "4bf92f3577b34da6f", "0", "0000"}) {
    Result<uint64_t> r = ParseTraceId(bad, "X-Tern-Trace-Id");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("X-Tern-Trace-Id"), std::string_view::npos) << r.status();
  }
  EXPECT_NE(ParseTraceId("zz").status().message().find("hex digits"), std::string_view::npos);
  EXPECT_NE(ParseTraceId("0").status().message().find("0 means none"), std::string_view::npos);
}

TEST(IdempotencyKeyTest, DecimalOrHex) {
  EXPECT_EQ(*ParseIdempotencyKey("42"), 42u);
  EXPECT_EQ(*ParseIdempotencyKey("0x2a"), 42u);
  EXPECT_EQ(*ParseIdempotencyKey("0X2A"), 42u);
  EXPECT_EQ(*ParseIdempotencyKey("18446744073709551615"), ~uint64_t{0});
  EXPECT_EQ(*ParseIdempotencyKey("0xffffffffffffffff"), ~uint64_t{0});
  for (const char* bad :
       {"", "0", "0x0", "2a", "18446744073709551616", "0x1ffffffffffffffff", "-3", "1.5", "0x"}) {
    Result<uint64_t> r = ParseIdempotencyKey(bad, "Idempotency-Key");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("Idempotency-Key"), std::string_view::npos);
  }
}

TEST(IdempotencyKeyTest, DerivedCallKeysDifferByOrdinalAndTarget) {
  EXPECT_EQ(DeriveCallKey(0, 1, "svc", "h"), 0u);
  const uint64_t k = DeriveCallKey(7, 1, "svc", "h");
  EXPECT_NE(k, 0u);
  EXPECT_EQ(k, DeriveCallKey(7, 1, "svc", "h"));
  EXPECT_NE(k, DeriveCallKey(7, 2, "svc", "h"));
  EXPECT_NE(k, DeriveCallKey(8, 1, "svc", "h"));
  EXPECT_NE(k, DeriveCallKey(7, 1, "svd", "h"));
  EXPECT_NE(k, DeriveCallKey(7, 1, "svc", "i"));
}

}  // namespace
}  // namespace tern
