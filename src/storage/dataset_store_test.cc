#include "storage/dataset_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "testing/test_env.h"

namespace tern::storage {
namespace {

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::unique_ptr<DatasetStore> OpenIn(const std::string& dir) {
  auto s = DatasetStore::Open(dir);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// Flips one bit of the file at `offset`.
void FlipBit(const std::string& path, off_t offset) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char c = 0;
  ASSERT_EQ(::pread(fd, &c, 1, offset), 1);
  c ^= 0x10;
  ASSERT_EQ(::pwrite(fd, &c, 1, offset), 1);
  ::close(fd);
}

TEST(DatasetStoreTest, PutReadRangesListRemove) {
  auto st = OpenIn(testing::TempDir("ds-basic"));
  std::string data = Random(3 * kChunkBytes + 1234, 1);
  ASSERT_TRUE(st->Put("logs", "day1.bin", data).ok());
  ASSERT_TRUE(st->Put("logs", "empty", "").ok());
  EXPECT_EQ(*st->Size("logs", "day1.bin"), data.size());
  EXPECT_EQ(*st->Read("logs", "day1.bin", 0, data.size()), data);
  // Ranges within a chunk, across chunk boundaries, past the end.
  for (auto [off, len] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 1}, {100, 5000}, {kChunkBytes - 3, 7}, {kChunkBytes, kChunkBytes},
           {2 * kChunkBytes + 5, 1u << 20}, {data.size() - 1, 10}}) {
    Result<std::string> r = st->Read("logs", "day1.bin", off, len);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, data.substr(off, len)) << off << "+" << len;
  }
  EXPECT_EQ(st->Read("logs", "day1.bin", data.size(), 10)->size(), 0u);
  EXPECT_EQ(st->Read("logs", "day1.bin", data.size() + 1, 10).status().code(),
            StatusCode::kOutOfRange);
  EXPECT_EQ(st->Read("logs", "empty", 0, 10)->size(), 0u);
  Result<std::vector<ObjectInfo>> ls = st->List("logs");
  ASSERT_TRUE(ls.ok());
  EXPECT_EQ(*ls, (std::vector<ObjectInfo>{{"day1.bin", data.size()}, {"empty", 0}}));
  Result<std::vector<DatasetInfo>> ds = st->Datasets();
  ASSERT_TRUE(ds.ok());
  ASSERT_EQ(ds->size(), 1u);
  EXPECT_EQ((*ds)[0].bytes, data.size());
  DatasetCounters c = st->counters("logs");
  EXPECT_GT(c.reads, 5u);
  EXPECT_EQ(c.bytes_written, data.size());
  // Replacing is atomic and visible.
  ASSERT_TRUE(st->Put("logs", "day1.bin", "short").ok());
  EXPECT_EQ(*st->Read("logs", "day1.bin", 0, 100), "short");
  ASSERT_TRUE(st->Remove("logs", "day1.bin").ok());
  EXPECT_EQ(st->Remove("logs", "day1.bin").code(), StatusCode::kNotFound);
  EXPECT_EQ(st->Read("logs", "day1.bin", 0, 1).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(st->RemoveDataset("logs").ok());
  EXPECT_EQ(st->List("logs").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(st->RemoveDataset("logs").code(), StatusCode::kNotFound);
}

TEST(DatasetStoreTest, UnknownDatasetAndBadNamesAreClearErrors) {
  auto st = OpenIn(testing::TempDir("ds-names"));
  Result<std::string> r = st->Read("nope", "k", 0, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("no dataset 'nope'"), std::string::npos) << r.status();
  for (const char* bad : {"", "../etc", "a/b", "Upper", ".hidden", "a..b"}) {
    EXPECT_EQ(st->Put(bad, "k", "x").code(), StatusCode::kInvalidArgument) << bad;
  }
  for (const char* bad : {"", "../x", "a/b", ".x", "x.obj", "sp ace"}) {
    EXPECT_EQ(st->Put("ok", bad, "x").code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(st->Put("ok", "Mixed-Case_1.csv", "x").ok());
}

TEST(DatasetStoreTest, CorruptionIsDetectedByChecksumNamingTheChunk) {
  std::string dir = testing::TempDir("ds-corrupt");
  auto st = OpenIn(dir);
  std::string data = Random(4 * kChunkBytes, 2);
  ASSERT_TRUE(st->Put("d", "obj", data).ok());
  std::string path = dir + "/d/obj.obj";
  const off_t header = 28 + 4 * 4 + 4;
  FlipBit(path, header + 2 * kChunkBytes + 77);  // a bit in chunk 2
  Result<std::string> whole = st->Read("d", "obj", 0, data.size());
  EXPECT_EQ(whole.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(whole.status().message().find("chunk 2"), std::string::npos) << whole.status();
  // Reads that don't touch the bad chunk still work: checksums are per chunk.
  EXPECT_EQ(*st->Read("d", "obj", 0, 2 * kChunkBytes), data.substr(0, 2 * kChunkBytes));
  EXPECT_EQ(*st->Read("d", "obj", 3 * kChunkBytes, kChunkBytes), data.substr(3 * kChunkBytes));
  // A damaged header, and a truncated file, are detected too.
  ASSERT_TRUE(st->Put("d", "obj2", data).ok());
  FlipBit(dir + "/d/obj2.obj", 16);  // inside `size`
  EXPECT_EQ(st->Read("d", "obj2", 0, 1).status().code(), StatusCode::kDataLoss);
  ASSERT_TRUE(st->Put("d", "obj3", data).ok());
  ASSERT_EQ(::truncate((dir + "/d/obj3.obj").c_str(), header + 100), 0);
  EXPECT_EQ(st->Read("d", "obj3", 0, 1).status().code(), StatusCode::kDataLoss);
}

TEST(DatasetStoreTest, DurableAcrossReopenAndLeftoverTempFilesAreIgnored) {
  std::string dir = testing::TempDir("ds-reopen");
  std::string data = Random(kChunkBytes + 9, 3);
  {
    auto st = OpenIn(dir);
    ASSERT_TRUE(st->Put("logs", "a", data).ok());
  }
  // A crash in the middle of a Put leaves a .tmp: ignored, cleaned up, old object intact.
  std::ofstream(dir + "/logs/a.obj.tmp") << "half-written garbage";
  auto st = OpenIn(dir);
  EXPECT_EQ(*st->Read("logs", "a", 0, data.size()), data);
  EXPECT_EQ(st->List("logs")->size(), 1u);
  EXPECT_NE(::access((dir + "/logs/a.obj.tmp").c_str(), F_OK), 0);
}

}  // namespace
}  // namespace tern::storage
