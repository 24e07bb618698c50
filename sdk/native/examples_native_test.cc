// Runs the example services natively (tern_add_native_guest + tern_native.c) and
// checks their replies, and checks tern.hpp and tern_native themselves. The wasm
// builds of the same sources are exercised by the agent's tests.
#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "tern/tern.hpp"
#include "tern_native.h"

// The handlers' C symbols (see each example's source).
extern "C" {
int32_t echo_echo(void);
int32_t echo_nop(void);
int32_t counter_incr(void);
int32_t counter_get(void);
int32_t counter_reset(void);
int32_t counter_fill(void);
int32_t counter_check(void);
int32_t counter_CorruptFillForTest(void);
int32_t wordcount_count(void);
int32_t wordcount_stats(void);
int32_t kernels_sum_filter(void);
int32_t kernels_sha256(void);
}

namespace {

struct Outcome {
  int32_t status = 0;
  std::string reply;
  bool replied = false;
  std::string message;  // from tern_fail
};

Outcome Call(tern_native_handler handler, std::string_view request = {}) {
  tern_native_reset();
  tern_native_set_request(request.data(), static_cast<uint32_t>(request.size()));
  Outcome o;
  o.status = tern_native_invoke(handler);
  const void* data = nullptr;
  uint32_t len = 0;
  o.replied = tern_native_reply(&data, &len) != 0;
  o.reply.assign(static_cast<const char*>(data), len);
  const char* msg = nullptr;
  tern_native_failure(&msg);
  o.message = msg;
  return o;
}

std::string U32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

uint32_t Lcg(uint32_t x) { return x * 1664525u + 1013904223u; }

}  // namespace

// --- tern.hpp and tern_native, with handlers defined here -------------------------

TERN_HANDLER(sdk_test_upper, "upper") {
  std::string s(tern::Request());
  if (s.empty()) return tern::Fail(TERN_INVALID_ARGUMENT, "empty");
  for (char& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  tern::Log(TERN_LOG_DEBUG, "upper");
  tern::LogF(TERN_LOG_DEBUG, "upper %zu", s.size());
  return tern::Reply(s);
}

TERN_HANDLER(sdk_test_plain) {
  if (tern::NowNs() <= 0 || tern::NowNs(TERN_CLOCK_REALTIME) <= 0) return TERN_INTERNAL;
  return TERN_UNIMPLEMENTED;  // a non-zero return fails the request without tern_fail
}

TEST(SdkNativeTest, HandlerMacroRequestReplyFailAndLog) {
  uint64_t logs = tern_native_log_count();
  Outcome o = Call(sdk_test_upper, "abc, Def!");
  EXPECT_EQ(o.status, TERN_OK);
  EXPECT_TRUE(o.replied);
  EXPECT_EQ(o.reply, "ABC, DEF!");
  EXPECT_EQ(tern_native_log_count(), logs + 2);

  o = Call(sdk_test_upper, "");
  EXPECT_EQ(o.status, TERN_INVALID_ARGUMENT);
  EXPECT_EQ(o.message, "empty");
  EXPECT_FALSE(o.replied);

  o = Call(sdk_test_plain);
  EXPECT_EQ(o.status, TERN_UNIMPLEMENTED);
  EXPECT_EQ(o.message, "");
}

TERN_HANDLER(sdk_test_same, "same") { return tern::Reply(tern::Request()); }

// tern::Request() and echo read before they ask for the length (one host call for a
// request shorter than their buffer): every size around the buffer's edges (it starts
// at 256 bytes and grows to one byte past the largest request) comes back whole.
TEST(SdkNativeTest, RequestsAroundTheBufferSizeArriveWhole) {
  uint32_t x = 1;
  for (size_t len :
       {size_t{5}, size_t{255}, size_t{256}, size_t{257}, size_t{256}, size_t{258}, size_t{257},
        size_t{0}, size_t{5000}, size_t{5001}, size_t{5002}, size_t{5001}, size_t{3}}) {
    std::string req(len, '\0');
    for (char& c : req) c = static_cast<char>(x = Lcg(x));
    Outcome o = Call(sdk_test_same, req);
    EXPECT_EQ(o.status, TERN_OK);
    EXPECT_TRUE(o.reply == req) << len << " bytes via tern::Request()";
    o = Call(echo_echo, req);
    EXPECT_EQ(o.status, TERN_OK);
    EXPECT_TRUE(o.reply == req) << len << " bytes via echo";
  }
}

TEST(SdkNativeTest, RequestReadHonoursOffsetAndLength) {
  tern_native_reset();
  tern_native_set_request("0123456789", 10);
  EXPECT_EQ(tern_request_len(), 10u);
  char buf[8] = {};
  EXPECT_EQ(tern_request_read(buf, 4, 8), 2u);
  EXPECT_EQ(std::string_view(buf, 2), "89");
  EXPECT_EQ(tern_request_read(buf, 4, 10), 0u);
  EXPECT_EQ(tern_request_read(buf, 3, 1), 3u);
  EXPECT_EQ(std::string_view(buf, 3), "123");
}

TEST(SdkNativeTest, ResponseLimitIsEnforced) {
  tern_native_set_response_limit(4);
  Outcome o = Call(echo_echo, "12345");
  EXPECT_EQ(o.status, TERN_RESOURCE_EXHAUSTED);
  EXPECT_FALSE(o.replied);
  o = Call(echo_echo, "1234");
  EXPECT_EQ(o.status, TERN_OK);
  EXPECT_EQ(o.reply, "1234");
  tern_native_set_response_limit(1u << 20);
}

// --- echo ---------------------------------------------------------------------------

TEST(EchoNativeTest, EchoRepliesWithTheRequestAndNopWithNothing) {
  Outcome o = Call(echo_echo, "hello tern");
  EXPECT_EQ(o.status, TERN_OK);
  EXPECT_EQ(o.reply, "hello tern");
  std::string big(300000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  o = Call(echo_echo, big);
  EXPECT_EQ(o.reply, big);
  o = Call(echo_echo, "");
  EXPECT_EQ(o.status, TERN_OK);
  EXPECT_EQ(o.reply, "");

  o = Call(echo_nop, "ignored");
  EXPECT_EQ(o.status, TERN_OK);
  EXPECT_FALSE(o.replied);
}

// --- counter ------------------------------------------------------------------------

TEST(CounterNativeTest, IncrGetReset) {
  EXPECT_EQ(Call(counter_reset).reply, "0");
  EXPECT_EQ(Call(counter_incr).reply, "1");
  EXPECT_EQ(Call(counter_incr, "5").reply, "6");
  EXPECT_EQ(Call(counter_incr, " -2\n").reply, "4");
  EXPECT_EQ(Call(counter_incr, "+10").reply, "14");
  EXPECT_EQ(Call(counter_get).reply, "14");

  for (std::string_view bad : {"abc", "1x", "-", "99999999999999999999", "1 2"}) {
    Outcome o = Call(counter_incr, bad);
    EXPECT_EQ(o.status, TERN_INVALID_ARGUMENT) << bad;
    EXPECT_FALSE(o.message.empty());
  }
  EXPECT_EQ(Call(counter_get).reply, "14");

  EXPECT_EQ(Call(counter_incr, "9223372036854775807").status, TERN_OUT_OF_RANGE);
  EXPECT_EQ(Call(counter_incr, "-9223372036854775808").reply, "-9223372036854775794");
  EXPECT_EQ(Call(counter_incr, "-100").status, TERN_OUT_OF_RANGE);
  EXPECT_EQ(Call(counter_reset).reply, "0");
  EXPECT_EQ(Call(counter_get).reply, "0");
}

TEST(CounterNativeTest, FillCheckAndDataLoss) {
  ASSERT_EQ(Call(counter_reset).status, TERN_OK);
  Outcome empty = Call(counter_check);
  ASSERT_EQ(empty.status, TERN_OK);
  EXPECT_EQ(empty.reply, "6a09e667f3bcc908");  // the checksum seed

  Outcome f1 = Call(counter_fill, "64");
  ASSERT_EQ(f1.status, TERN_OK) << f1.message;
  EXPECT_EQ(f1.reply, "660bda3e94c9d58d");  // what counter.wasm replies, too
  EXPECT_NE(f1.reply, empty.reply);
  EXPECT_EQ(Call(counter_check).reply, f1.reply);

  Outcome f2 = Call(counter_fill, "3");
  ASSERT_EQ(f2.status, TERN_OK);
  EXPECT_EQ(f2.reply, "207c8597a31d664e");  // as counter.wasm
  EXPECT_EQ(Call(counter_check).reply, f2.reply);
  EXPECT_EQ(Call(counter_incr, "2").reply, "2");  // the counter is independent

  // The content depends only on the position: 64+3 KiB in one or two steps agree.
  ASSERT_EQ(Call(counter_reset).status, TERN_OK);
  EXPECT_EQ(Call(counter_fill, "64").reply, f1.reply);
  EXPECT_EQ(Call(counter_fill, "3").reply, f2.reply);

  for (std::string_view bad : {"", "0", "-1", "1048577", "x"}) {
    EXPECT_EQ(Call(counter_fill, bad).status, TERN_INVALID_ARGUMENT) << bad;
  }
  EXPECT_EQ(Call(counter_check).reply, f2.reply);

  ASSERT_EQ(counter_CorruptFillForTest(), 1);
  Outcome lost = Call(counter_check);
  EXPECT_EQ(lost.status, 15);  // TERN_DATA_LOSS
  EXPECT_EQ(lost.status, TERN_DATA_LOSS);
  EXPECT_FALSE(lost.message.empty());

  EXPECT_EQ(Call(counter_reset).reply, "0");
  EXPECT_EQ(Call(counter_check).reply, empty.reply);
}

TEST(CounterNativeTest, FillWithACompressibleShare) {
  ASSERT_EQ(Call(counter_reset).status, TERN_OK);
  const std::string random = Call(counter_fill, "64").reply;
  ASSERT_EQ(Call(counter_reset).status, TERN_OK);
  EXPECT_EQ(Call(counter_fill, " 64 0 ").reply, random);  // 0% = the plain fill
  ASSERT_EQ(Call(counter_reset).status, TERN_OK);
  Outcome half = Call(counter_fill, "64 50");
  ASSERT_EQ(half.status, TERN_OK) << half.message;
  EXPECT_NE(half.reply, random);
  EXPECT_EQ(Call(counter_check).reply, half.reply);  // every byte still verified
  ASSERT_EQ(Call(counter_reset).status, TERN_OK);
  EXPECT_EQ(Call(counter_fill, "32 50").status, TERN_OK);  // position-only content
  EXPECT_EQ(Call(counter_fill, "32 50").reply, half.reply);
  for (std::string_view bad : {"64 101", "64 -1", "64 x", "64 50 1", "x 50"}) {
    EXPECT_EQ(Call(counter_fill, bad).status, TERN_INVALID_ARGUMENT) << bad;
  }
  EXPECT_EQ(Call(counter_check).reply, half.reply);
  EXPECT_EQ(Call(counter_reset).reply, "0");
}

// --- wordcount ----------------------------------------------------------------------

TEST(WordcountNativeTest, CountsWordsExactly) {
  Outcome o = Call(wordcount_count, "The cat and the hat. THE END, the end? A cat!");
  ASSERT_EQ(o.status, TERN_OK) << o.message;
  EXPECT_EQ(o.reply, R"({"words":11,"unique":6,"top":[["the",4],["cat",2],["end",2],["a",1],)"
                     R"(["and",1],["hat",1]]})");

  // Digits are word characters; UTF-8 bytes and punctuation separate words.
  o = Call(wordcount_count,
           "x1 X1 \xc3\xbcn\xc3\xaf"
           "code 42-42");
  EXPECT_EQ(o.reply, R"({"words":6,"unique":4,"top":[["42",2],["x1",2],["code",1],["n",1]]})");

  o = Call(wordcount_count, "");
  EXPECT_EQ(o.reply, R"({"words":0,"unique":0,"top":[]})");
}

TEST(WordcountNativeTest, TopTenWithTiesBrokenAlphabetically) {
  // 12 words: "l" 3 times, "b" and "k" twice, the other nine once.
  Outcome o = Call(wordcount_count, "l k j i h g f e d c b a l k b l");
  ASSERT_EQ(o.status, TERN_OK);
  EXPECT_EQ(o.reply, R"({"words":16,"unique":12,"top":[["l",3],["b",2],["k",2],["a",1],["c",1],)"
                     R"(["d",1],["e",1],["f",1],["g",1],["h",1]]})");
}

TEST(WordcountNativeTest, StatsAccumulate) {
  std::string before = Call(wordcount_stats).reply;
  ASSERT_EQ(before.rfind("{\"requests\":", 0), 0u) << before;
  uint64_t requests = 0;
  uint64_t words = 0;
  ASSERT_EQ(std::sscanf(before.c_str(), "{\"requests\":%lu,\"words\":%lu}", &requests, &words), 2)
      << before;
  ASSERT_EQ(Call(wordcount_count, "one two three").status, TERN_OK);
  EXPECT_EQ(Call(wordcount_stats).reply, "{\"requests\":" + std::to_string(requests + 1) +
                                             ",\"words\":" + std::to_string(words + 3) + "}");
}

// --- kernels ------------------------------------------------------------------------

int64_t ExpectedSum(uint32_t n, int32_t threshold) {
  uint32_t x = 0x5eed0001u;
  int64_t sum = 0;
  for (uint32_t i = 0; i < n; ++i) {
    x = Lcg(x);
    int32_t v = static_cast<int32_t>(x);
    if (v > threshold) sum += v;
  }
  return sum;
}

int64_t ReplyI64(const std::string& r) {
  EXPECT_EQ(r.size(), 8u);
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < r.size(); ++i) {
    v |= uint64_t{static_cast<uint8_t>(r[i])} << (8 * i);
  }
  return static_cast<int64_t>(v);
}

TEST(KernelsNativeTest, SumFilterMatchesAnIndependentLoop) {
  // Growing, shrinking and growing again exercises the guest's cached input.
  for (uint32_t n : {1000u, 10u, 0u, 100000u, 1u}) {
    Outcome o = Call(kernels_sum_filter, U32(n));
    ASSERT_EQ(o.status, TERN_OK) << o.message;
    EXPECT_EQ(ReplyI64(o.reply), ExpectedSum(n, 0)) << n;
  }
  for (int32_t threshold : {-2000000000, 1000000000, 2147483647}) {
    Outcome o = Call(kernels_sum_filter, U32(5000) + U32(static_cast<uint32_t>(threshold)));
    ASSERT_EQ(o.status, TERN_OK);
    EXPECT_EQ(ReplyI64(o.reply), ExpectedSum(5000, threshold)) << threshold;
  }
  EXPECT_EQ(Call(kernels_sum_filter, "abc").status, TERN_INVALID_ARGUMENT);
  EXPECT_EQ(Call(kernels_sum_filter, U32(1) + "x").status, TERN_INVALID_ARGUMENT);
  EXPECT_EQ(Call(kernels_sum_filter, U32(64u * 1024 * 1024 + 1)).status, TERN_INVALID_ARGUMENT);
}

TEST(KernelsNativeTest, Sha256MatchesOpenSsl) {
  for (uint32_t kib : {0u, 1u, 3u, 257u, 2u}) {
    std::string bytes(size_t{kib} * 1024, '\0');
    uint32_t x = 0x5eed0002u;
    for (size_t off = 0; off < bytes.size(); off += 4) {
      x = Lcg(x);
      uint32_t le = x;
      for (int k = 0; k < 4; ++k) bytes[off + k] = static_cast<char>(le >> (8 * k));
    }
    unsigned char want[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), want);
    Outcome o = Call(kernels_sha256, U32(kib));
    ASSERT_EQ(o.status, TERN_OK) << o.message;
    EXPECT_EQ(o.reply, std::string(reinterpret_cast<const char*>(want), sizeof(want))) << kib;
  }
  // SHA-256("") is the well-known e3b0c442...b855.
  Outcome o = Call(kernels_sha256, U32(0));
  ASSERT_EQ(o.reply.size(), 32u);
  EXPECT_EQ(static_cast<uint8_t>(o.reply[0]), 0xe3);
  EXPECT_EQ(static_cast<uint8_t>(o.reply[31]), 0x55);

  EXPECT_EQ(Call(kernels_sha256, "").status, TERN_INVALID_ARGUMENT);
  EXPECT_EQ(Call(kernels_sha256, U32(262145)).status, TERN_INVALID_ARGUMENT);
}
