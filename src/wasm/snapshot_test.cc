#include "wasm/snapshot.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "core/file.h"

namespace tern::wasm {
namespace {

using ::testing::HasSubstr;

Snapshot MakeSnapshot(uint32_t pages, bool with_sp) {
  Snapshot s;
  s.module_hash = std::string(64, 'a');
  s.memory.assign(size_t{pages} * 65536, '\0');
  std::mt19937 rng(7);
  // A few scattered non-zero bytes and one dense page.
  for (uint32_t p = 0; p < pages; p += 3) s.memory[size_t{p} * 65536 + (rng() % 65536)] = 'x';
  if (pages > 1) {
    for (size_t i = 0; i < 65536; ++i) s.memory[65536 + i] = static_cast<char>(rng());
  }
  if (with_sp) {
    s.stack_pointer = 67424;
    s.globals = {{0, ValType::kI32, 67424},
                 {1, ValType::kI64, 0x8000000000000001},
                 {4, ValType::kF32, 0x3fc00000},
                 {9, ValType::kF64, 0xfff8000000000000}};
  }
  return s;
}

// Recomputes the trailing CRC after a test edited the bytes.
void Reseal(std::string* enc) {
  const uint32_t crc = Crc32c(std::string_view(*enc).substr(0, enc->size() - 4));
  std::memcpy(enc->data() + enc->size() - 4, &crc, 4);
}

constexpr size_t kGlobalsAt = 112;  // align8(48 + 64-byte hash)

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xe3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros), 0x8a9136aau);
}

TEST(SnapshotTest, RoundTrips) {
  for (uint32_t pages : {0u, 1u, 2u, 17u}) {
    for (bool sp : {false, true}) {
      Snapshot s = MakeSnapshot(pages, sp);
      std::string enc = EncodeSnapshot(s);
      Result<Snapshot> d = DecodeSnapshot(enc);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(*d, s) << pages << " " << sp;
      EXPECT_EQ(d->pages(), pages);
    }
  }
}

TEST(SnapshotTest, ElidesZeroPages) {
  Snapshot s;
  s.module_hash = "h";
  s.memory.assign(1024 * 65536, '\0');  // 64 MiB
  s.memory[5 * 65536 + 100] = 1;
  std::string enc = EncodeSnapshot(s);
  EXPECT_LT(enc.size(), 64u * 1024);  // header + bitmap (32 KiB) + one 4 KiB block
  Result<Snapshot> d = DecodeSnapshot(enc);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(*d == s);
}

TEST(SnapshotTest, EveryTruncationIsDataLoss) {
  std::string enc = EncodeSnapshot(MakeSnapshot(3, true));
  for (size_t n = 0; n < enc.size(); n += (n < 200 ? 1 : 97)) {
    Result<Snapshot> d = DecodeSnapshot(std::string_view(enc.data(), n));
    ASSERT_FALSE(d.ok()) << n;
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << n << " " << d.status();
  }
  Result<Snapshot> longer = DecodeSnapshot(enc + "x");
  EXPECT_THAT(std::string(longer.status().message()), HasSubstr("trailing bytes"));
}

TEST(SnapshotTest, EveryByteFlipIsDetected) {
  std::string enc = EncodeSnapshot(MakeSnapshot(2, true));
  for (size_t i = 0; i < enc.size(); i += (i < 512 ? 1 : 31)) {
    std::string bad = enc;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    Result<Snapshot> d = DecodeSnapshot(bad);
    ASSERT_FALSE(d.ok()) << i;
    EXPECT_TRUE(d.status().code() == StatusCode::kDataLoss ||
                d.status().code() == StatusCode::kInvalidArgument)
        << i << " " << d.status();
  }
}

TEST(SnapshotTest, ForeignAndFutureFiles) {
  EXPECT_THAT(std::string(DecodeSnapshot("\x7f"
                                         "ELF and more bytes here")
                              .status()
                              .message()),
              HasSubstr("bad magic"));
  EXPECT_EQ(DecodeSnapshot("").status().code(), StatusCode::kDataLoss);
  std::string enc = EncodeSnapshot(MakeSnapshot(1, false));
  enc[8] = 3;  // version
  Result<Snapshot> d = DecodeSnapshot(enc);
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("version 3"));
}

// Version 1 (before globals) had a reserved 0 where version 2 keeps the global count:
// such files still read, with no globals (a restore then refuses modules that have
// some: engine test).
TEST(SnapshotTest, ReadsVersion1FilesWithoutGlobals) {
  Snapshot s = MakeSnapshot(2, true);
  s.globals.clear();
  std::string enc = EncodeSnapshot(s);
  enc[8] = 1;
  Reseal(&enc);
  Result<Snapshot> d = DecodeSnapshot(enc);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, s);
  enc[44] = 1;  // a global count in a version 1 file
  Reseal(&enc);
  EXPECT_EQ(DecodeSnapshot(enc).status().code(), StatusCode::kDataLoss);
}

TEST(SnapshotTest, MalformedGlobalEntriesAreDataLoss) {
  const std::string good = EncodeSnapshot(MakeSnapshot(1, true));
  struct Edit {
    size_t at;
    char value;
    const char* why;
  };
  for (const Edit& e : {Edit{kGlobalsAt + 4, '\x7b', "v128 type"},
                        Edit{kGlobalsAt + 5, '\x01', "padding"},
                        Edit{kGlobalsAt + 16, '\x00', "index not ascending"},  // 1 -> 0
                        Edit{kGlobalsAt + 12, '\x01', "i32 with high bits"}}) {
    std::string enc = good;
    enc[e.at] = e.value;
    Reseal(&enc);
    Result<Snapshot> d = DecodeSnapshot(enc);
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << e.why << ": " << d.status();
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("global")) << e.why;
  }
}

TEST(SnapshotTest, Files) {
  char dir_template[] = "/tmp/tern_snapshot_test_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  std::string path = std::string(dir_template) + "/s.snap";
  Snapshot s = MakeSnapshot(4, true);
  ASSERT_TRUE(WriteSnapshotFile(path, s).ok());
  Result<Snapshot> d = ReadSnapshotFile(path);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(*d == s);
  ASSERT_TRUE(WriteFileAtomic(path, "junk").ok());
  Result<Snapshot> bad = ReadSnapshotFile(path);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(path));
  EXPECT_EQ(ReadSnapshotFile(path + ".missing").status().code(), StatusCode::kNotFound);
  unlink(path.c_str());
  rmdir(dir_template);
}

}  // namespace
}  // namespace tern::wasm
