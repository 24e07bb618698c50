#include "core/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

namespace tern {
namespace {

TEST(Crc32cTest, KnownValues) {
  // RFC 3720 B.4 test vectors.
  std::string zeros(32, '\0'), ones(32, '\xff'), inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
}

TEST(Crc32cTest, HardwareAndTableAgreeAndChainingWorks) {
  std::mt19937 rng(7);
  std::string data(100003, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{4096},
                   data.size()}) {
    EXPECT_EQ(Crc32c(data.data(), n), Crc32cPortable(data.data(), n)) << n;
  }
  uint32_t whole = Crc32c(data.data(), data.size());
  uint32_t parts = Crc32c(data.data() + 1000, data.size() - 1000, Crc32c(data.data(), 1000));
  EXPECT_EQ(whole, parts);
  data[5000] ^= 1;
  EXPECT_NE(Crc32c(data.data(), data.size()), whole);
}

// Inputs of 3 KiB or more go as three interleaved lanes whose CRCs are combined: every
// length around the lane boundaries, every start offset, and a continued CRC agree with
// the table.
TEST(Crc32cTest, InterleavedLanesAgreeWithTheTable) {
  std::mt19937 rng(11);
  std::string data(40000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {size_t{3071}, size_t{3072}, size_t{3073}, size_t{3080}, size_t{4095},
                   size_t{4096}, size_t{4104}, size_t{6143}, size_t{6144}, size_t{6151},
                   size_t{7167}, size_t{7168}, size_t{8192}, size_t{9216}, size_t{12345},
                   size_t{32768}}) {
    for (size_t off : {size_t{0}, size_t{1}, size_t{5}}) {
      EXPECT_EQ(Crc32c(data.data() + off, n), Crc32cPortable(data.data() + off, n)) << n << "+" << off;
      EXPECT_EQ(Crc32c(data.data() + off, n, 0x12345678u),
                Crc32cPortable(data.data() + off, n, 0x12345678u)) << n << "+" << off;
    }
  }
  std::string zeros(3 * 1024 * 4, '\0');
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), Crc32cPortable(zeros.data(), zeros.size()));
  data[30000] ^= 0x10;  // a flip in the third lane of a block changes it
  EXPECT_EQ(Crc32c(data.data(), data.size()), Crc32cPortable(data.data(), data.size()));
}

// Crc32cCopyPage gives Crc32c's value for the page (continued from any CRC) and leaves
// exact copies in both destinations, aligned (the streaming path), unaligned (the
// fallback) or with no second destination; source offsets that are not aligned too.
TEST(Crc32cTest, CopyPageChecksumsAndCopiesInOnePass) {
  std::mt19937 rng(13);
  alignas(64) static char src[3 * 4096];
  alignas(64) static char d1[2 * 4096];
  alignas(64) static char d2[2 * 4096];
  for (char& c : src) c = static_cast<char>(rng());
  for (size_t src_off : {size_t{0}, size_t{8}, size_t{4096 + 3}}) {
    for (size_t dst_off : {size_t{0}, size_t{16}, size_t{1}}) {
      for (bool second : {true, false}) {
        std::memset(d1, 0, sizeof(d1));
        std::memset(d2, 0, sizeof(d2));
        const uint32_t from = static_cast<uint32_t>(rng());
        const uint32_t got = Crc32cCopyPage(src + src_off, d1 + dst_off,
                                            second ? d2 + dst_off : nullptr, from);
        EXPECT_EQ(got, Crc32cPortable(src + src_off, 4096, from))
            << src_off << " " << dst_off << " " << second;
        EXPECT_EQ(std::memcmp(d1 + dst_off, src + src_off, 4096), 0);
        if (second) {
          EXPECT_EQ(std::memcmp(d2 + dst_off, src + src_off, 4096), 0);
        } else {
          EXPECT_EQ(d2[dst_off + 100], 0) << "no second destination was given";
        }
      }
    }
  }
  const uint32_t before = Crc32cCopyPage(src, d1, d2, 0);
  src[3500] ^= 1;  // a bit in the fourth lane
  EXPECT_NE(Crc32cCopyPage(src, d1, d2, 0), before);
  EXPECT_EQ(Crc32cCopyPage(src, d1, d2, 0), Crc32cPortable(src, 4096, 0));
}

// Crc32cCombine(Crc32c(A), Crc32c(B), |B|) is the CRC of A || B, for every split of
// random bytes (empty parts too) and long runs of zeros; a flipped bit in B changes it.
TEST(Crc32cTest, CombineGivesTheCrcOfTheConcatenation) {
  std::mt19937 rng(3);
  std::string data(20000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t split : {size_t{0}, size_t{1}, size_t{7}, size_t{24}, size_t{4096}, size_t{12289},
                       data.size()}) {
    const uint32_t a = Crc32c(data.data(), split);
    const uint32_t b = Crc32c(data.data() + split, data.size() - split);
    EXPECT_EQ(Crc32cCombine(a, b, data.size() - split), Crc32c(data.data(), data.size())) << split;
  }
  const std::string zeros(1 << 20, '\0');
  const uint32_t head = Crc32c(data.data(), 100);
  EXPECT_EQ(Crc32cCombine(head, Crc32c(zeros.data(), zeros.size()), zeros.size()),
            Crc32c(zeros.data(), zeros.size(), head));
  std::string b = data.substr(500);
  const uint32_t good = Crc32cCombine(Crc32c(data.data(), 500), Crc32c(b.data(), b.size()), b.size());
  b[9999] ^= 4;
  EXPECT_NE(Crc32cCombine(Crc32c(data.data(), 500), Crc32c(b.data(), b.size()), b.size()), good);
}

}  // namespace
}  // namespace tern
