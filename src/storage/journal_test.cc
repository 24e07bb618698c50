#include "storage/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "core/bytes.h"
#include "core/file.h"
#include "core/mutex.h"
#include "testing/test_env.h"

namespace tern::storage {
namespace {

// A framed record as the keeper sees it: the fixed part (seq, flags) and a payload.
std::string Rec(uint64_t seq, bool full = false, std::string payload = "pages") {
  std::string body;
  AppendU64(&body, seq);
  body.push_back(static_cast<char>(full ? kRecordFull : 0));
  body.append(3, '\0');
  AppendU32(&body, 0);
  AppendU64(&body, 65536);
  body += payload;
  std::string out;
  AppendFramed(kJournalRecordMagic, body, &out);
  return out;
}

Status AppendSync(JournalStore* j, const std::string& id, std::string rec) {
  Mutex m;
  CondVar cv;
  bool done = false;
  Status out;
  j->Append(id, std::move(rec), [&](Status s) {
    MutexLock l(&m);
    out = s;
    done = true;
    cv.Signal();
  });
  MutexLock l(&m);
  while (!done) cv.Wait(&m);
  return out;
}

std::unique_ptr<JournalStore> OpenIn(const std::string& dir) {
  auto s = JournalStore::Open(dir);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

std::vector<std::string> Segments(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* e = ::readdir(d)) {
    if (std::string(e->d_name).rfind("seg-", 0) == 0) out.push_back(dir + "/" + e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(JournalFramingTest, RoundTripTruncationAndDamageAreTold) {
  std::string bytes;
  AppendFramed(0x11223344, "hello", &bytes);
  AppendFramed(0x11223344, "", &bytes);
  size_t off = 0;
  auto a = NextFramed(0x11223344, bytes, &off);
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ(**a, "hello");
  auto b = NextFramed(0x11223344, bytes, &off);
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ(**b, "");
  auto end = NextFramed(0x11223344, bytes, &off);
  ASSERT_TRUE(end.ok());
  EXPECT_FALSE(end->has_value());
  // Every cut inside the first entry is "truncated", and consumes nothing.
  for (size_t cut = 1; cut < kFrameHeaderBytes + 5; ++cut) {
    size_t o = 0;
    auto t = NextFramed(0x11223344, std::string_view(bytes).substr(0, cut), &o);
    ASSERT_FALSE(t.ok()) << cut;
    EXPECT_EQ(t.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(t.status().message().find("truncated"), std::string_view::npos) << t.status();
    EXPECT_EQ(o, 0u);
  }
  std::string bad = bytes;
  bad[kFrameHeaderBytes + 1] ^= 1;
  off = 0;
  auto c = NextFramed(0x11223344, bad, &off);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("checksum"), std::string_view::npos) << c.status();
  off = 0;
  EXPECT_NE(NextFramed(0x55667788, bytes, &off).status().message().find("magic"),
            std::string_view::npos);
}

TEST(JournalStoreTest, AppendsReadBackInOrderAndSurviveReopen) {
  const std::string dir = testing::TempDir("journal-basic");
  {
    auto j = OpenIn(dir);
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(1, true, "base")).ok());
    for (uint64_t s = 2; s <= 5; ++s) ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(s)).ok()) << s;
    ASSERT_TRUE(AppendSync(j.get(), "d-1", Rec(1, true)).ok());
    Result<std::string> all = j->Read("c-1", 0);
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(*all, Rec(1, true, "base") + Rec(2) + Rec(3) + Rec(4) + Rec(5));
    EXPECT_EQ(j->stats().appends, 6u);
  }
  auto j = OpenIn(dir);
  std::optional<JournalInfo> info = j->Info("c-1");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->last_seq, 5u);
  EXPECT_EQ(info->records, 5u);
  EXPECT_EQ(info->full_seq, std::optional<uint64_t>(1));
  EXPECT_EQ(*j->Read("c-1", 3), Rec(1, true, "base") + Rec(2) + Rec(3) + Rec(4) + Rec(5))
      << "a journal that starts with a full record is read whole";
  EXPECT_EQ(j->List().size(), 2u);
  // The next record follows on after the reopen.
  EXPECT_TRUE(AppendSync(j.get(), "c-1", Rec(6)).ok());
  EXPECT_EQ(j->Read("x", 0).status().code(), StatusCode::kNotFound);
}

TEST(JournalStoreTest, GapsAreRefusedRetriesReplaceFullRecordsRestart) {
  auto j = OpenIn(testing::TempDir("journal-rules"));
  // A delta cannot start a journal: this keeper knows nothing of the instance.
  Status first = AppendSync(j.get(), "c-1", Rec(4));
  EXPECT_EQ(first.code(), StatusCode::kFailedPrecondition) << first;
  EXPECT_NE(first.message().find("full record is needed"), std::string_view::npos) << first;
  ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(4, true, "F4")).ok());
  ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(5, false, "a")).ok());
  EXPECT_EQ(AppendSync(j.get(), "c-1", Rec(7)).code(), StatusCode::kFailedPrecondition);  // gap
  // A retry of 5 (its first append's outcome unknown to the agent) replaces it.
  ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(5, false, "b")).ok());
  EXPECT_EQ(*j->Read("c-1", 0), Rec(4, true, "F4") + Rec(5, false, "b"));
  // Nothing may replace the full record itself with a delta.
  EXPECT_EQ(AppendSync(j.get(), "c-1", Rec(4)).code(), StatusCode::kFailedPrecondition);
  // A full record starts the journal afresh at its number (a new incarnation).
  ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(1, true, "F1")).ok());
  EXPECT_EQ(*j->Read("c-1", 0), Rec(1, true, "F1"));
  EXPECT_EQ(j->stats().refused, 3u);
}

TEST(JournalStoreTest, BaseDropsCoveredRecordsDurablyAndDropForgets) {
  const std::string dir = testing::TempDir("journal-base");
  {
    auto j = OpenIn(dir);
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(1, true)).ok());
    for (uint64_t s = 2; s <= 6; ++s) ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(s)).ok());
    ASSERT_TRUE(j->SetBase("c-1", 4).ok());
    EXPECT_EQ(*j->Read("c-1", 4), Rec(5) + Rec(6));
    ASSERT_TRUE(AppendSync(j.get(), "d-1", Rec(1, true)).ok());
    ASSERT_TRUE(j->Drop("d-1").ok());
    EXPECT_FALSE(j->Info("d-1").has_value());
  }
  auto j = OpenIn(dir);
  std::optional<JournalInfo> info = j->Info("c-1");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->base_seq, 4u);
  EXPECT_EQ(info->records, 2u);
  EXPECT_EQ(*j->Read("c-1", 4), Rec(5) + Rec(6));
  EXPECT_FALSE(j->Info("d-1").has_value()) << "a drop is durable";
  // After a base, deltas follow it; one before it is refused.
  EXPECT_TRUE(AppendSync(j.get(), "c-1", Rec(7)).ok());
  EXPECT_EQ(AppendSync(j.get(), "c-1", Rec(3)).code(), StatusCode::kFailedPrecondition);
  // A base on a keeper that has no journal yet (a new keeper gets its base checkpoint
  // first): the next delta follows it.
  ASSERT_TRUE(j->SetBase("e-1", 10).ok());
  EXPECT_TRUE(AppendSync(j.get(), "e-1", Rec(11)).ok());
}

TEST(JournalStoreTest, SegmentsRotateAndAreDeletedOnceAFullRecordSupersedesThem) {
  const std::string dir = testing::TempDir("journal-rotate");
  {
    auto j = OpenIn(dir);
    j->SetSegmentBytesForTest(1024);
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(1, true, std::string(600, 'f'))).ok());
    for (uint64_t s = 2; s <= 12; ++s) {
      ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(s, false, std::string(400, 'd'))).ok());
    }
    ASSERT_TRUE(AppendSync(j.get(), "d-1", Rec(1, true, "other")).ok());
    const size_t before = Segments(dir).size();
    EXPECT_GE(before, 5u) << "the segments did not rotate";
    // A base checkpoint: every earlier record of c-1 is dead; their segments go, except
    // the one that still holds d-1's record, and the current one.
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(13, true, "F13")).ok());
    const size_t after = Segments(dir).size();
    EXPECT_LE(after, 3u) << "of " << before;
    EXPECT_EQ(*j->Read("c-1", 0), Rec(13, true, "F13"));
  }
  auto j = OpenIn(dir);
  EXPECT_EQ(*j->Read("c-1", 0), Rec(13, true, "F13"));
  EXPECT_EQ(*j->Read("d-1", 0), Rec(1, true, "other"));
}

TEST(JournalStoreTest, TornTailIsIgnoredCutAndLoggedNeverAppliedPartially) {
  const std::string dir = testing::TempDir("journal-torn");
  {
    auto j = OpenIn(dir);
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(1, true)).ok());
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(2)).ok());
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(3, false, std::string(300, 'x'))).ok());
  }
  std::vector<std::string> segs = Segments(dir);
  ASSERT_FALSE(segs.empty());
  const std::string last = segs.back();
  struct stat sb;
  ASSERT_EQ(::stat(last.c_str(), &sb), 0);
  // A crash in the middle of the third append: its last 100 bytes never reached the disk.
  ASSERT_EQ(::truncate(last.c_str(), sb.st_size - 100), 0);
  {
    auto j = OpenIn(dir);
    EXPECT_EQ(*j->Read("c-1", 0), Rec(1, true) + Rec(2));
    EXPECT_GT(j->stats().torn_bytes, 0u);
    // The segment was cut at the last whole entry, and record 3 can be written again.
    ASSERT_EQ(::stat(last.c_str(), &sb), 0);
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(3, false, "again")).ok());
  }
  auto j = OpenIn(dir);
  EXPECT_EQ(*j->Read("c-1", 0), Rec(1, true) + Rec(2) + Rec(3, false, "again"));
  EXPECT_EQ(j->stats().torn_bytes, 0u);
}

TEST(JournalStoreTest, DamagedEntryStopsTheReadBackThere) {
  const std::string dir = testing::TempDir("journal-crc");
  {
    auto j = OpenIn(dir);
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(1, true, std::string(64, 'a'))).ok());
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(2, false, std::string(64, 'b'))).ok());
    ASSERT_TRUE(AppendSync(j.get(), "c-1", Rec(3, false, std::string(64, 'c'))).ok());
  }
  const std::string seg = Segments(dir).back();
  Result<std::string> bytes = ReadFile(seg);
  ASSERT_TRUE(bytes.ok());
  // Flip a bit inside record 2's payload ("bbbb...").
  size_t at = bytes->find(std::string(64, 'b'));
  ASSERT_NE(at, std::string::npos);
  int fd = ::open(seg.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char c = 'b' ^ 0x04;
  ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(at + 10)), 1);
  ::close(fd);
  auto j = OpenIn(dir);
  // Record 2 is damaged: neither it nor record 3 after it is applied.
  EXPECT_EQ(*j->Read("c-1", 0), Rec(1, true, std::string(64, 'a')));
  EXPECT_GT(j->stats().torn_bytes, 0u);
}

TEST(JournalStoreTest, ConcurrentAppendsOfManyInstancesShareSyncs) {
  auto j = OpenIn(testing::TempDir("journal-group"));
  j->SetSyncDelayForTest(3'000'000);  // a slow disk: 3 ms per fdatasync
  constexpr int kInstances = 16, kEach = 5;
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  for (int i = 0; i < kInstances; ++i) {
    ts.emplace_back([&, i] {
      const std::string id = "c-" + std::to_string(i);
      for (uint64_t s = 1; s <= kEach; ++s) {
        if (!AppendSync(j.get(), id, Rec(s, s == 1)).ok()) ++failures;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
  JournalStats st = j->stats();
  EXPECT_EQ(st.appends, uint64_t{kInstances * kEach});
  // Each instance waits for its own ack, so at most one record per instance is in a
  // group; with 16 writers, groups hold several: fewer syncs than appends.
  EXPECT_LT(st.syncs, st.appends) << "no group commit";
  for (int i = 0; i < kInstances; ++i) {
    EXPECT_EQ(j->Info("c-" + std::to_string(i))->records, uint64_t{kEach});
  }
}

}  // namespace
}  // namespace tern::storage
