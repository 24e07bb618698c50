#include "wasm/dirty_tracker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstring>

namespace tern::wasm {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr size_t kPage = 4096;

// An anonymous mapping: `reserve` bytes PROT_NONE of which the first `bytes` are RW,
// like a wasm memory with guard regions.
class Region {
 public:
  Region(size_t bytes, size_t reserve) : reserve_(reserve) {
    void* p = mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    base_ = static_cast<uint8_t*>(p);
    EXPECT_EQ(mprotect(base_, bytes, PROT_READ | PROT_WRITE), 0);
  }
  ~Region() { munmap(base_, reserve_); }
  uint8_t* base() const { return base_; }
  void Enable(size_t bytes) { ASSERT_EQ(mprotect(base_, bytes, PROT_READ | PROT_WRITE), 0); }

 private:
  uint8_t* base_;
  size_t reserve_;
};

using Factory = Result<std::unique_ptr<DirtyTracker>> (*)(uint8_t*, size_t, size_t);

class DirtyTrackerTest : public ::testing::TestWithParam<DirtyTracker::Kind> {
 protected:
  std::unique_ptr<DirtyTracker> Make(uint8_t* base, size_t bytes, size_t page_bytes) {
    Factory f = GetParam() == DirtyTracker::Kind::kUffdWriteProtect ? &DirtyTracker::CreateUffd
                                                                    : &DirtyTracker::CreateShadow;
    Result<std::unique_ptr<DirtyTracker>> t = f(base, bytes, page_bytes);
    if (!t.ok() && t.status().code() == StatusCode::kUnimplemented) {
      skip_reason_ = std::string(t.status().message());
      return nullptr;
    }
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    EXPECT_EQ((*t)->kind(), GetParam());
    return std::move(*t);
  }
  std::string skip_reason_;
};

#define MAKE_OR_SKIP(var, ...)                           \
  std::unique_ptr<DirtyTracker> var = Make(__VA_ARGS__); \
  if (var == nullptr && !skip_reason_.empty()) {         \
    GTEST_SKIP() << skip_reason_;                        \
  }                                                      \
  ASSERT_NE(var, nullptr)

TEST_P(DirtyTrackerTest, ReportsExactlyTheWrittenPages) {
  Region r(64 * kPage, 64 * kPage);
  r.base()[5 * kPage] = 1;  // before creation: not reported
  MAKE_OR_SKIP(t, r.base(), 64 * kPage, kPage);
  EXPECT_THAT(*t->Collect(), IsEmpty());
  r.base()[3 * kPage + 17] = 1;
  r.base()[7 * kPage] = 2;
  r.base()[40 * kPage + 4095] = 3;
  EXPECT_THAT(*t->Collect(), ElementsAre(3, 7, 40));
  EXPECT_THAT(*t->Collect(), IsEmpty());
  // Reads do not count.
  unsigned sum = 0;
  for (size_t i = 0; i < 64 * kPage; i += kPage) sum += r.base()[i];
  EXPECT_EQ(sum, 3u);  // page 5 (written before creation) + page 7
  EXPECT_THAT(*t->Collect(), IsEmpty());
  r.base()[7 * kPage + 1] = 9;
  r.base()[63 * kPage] = 9;
  EXPECT_THAT(*t->Collect(), ElementsAre(7, 63));
}

// Peek reports without re-arming: the uffd tracker keeps reporting a written page until
// Collect or Rearm; the shadow tracker reports each change once. A write after a peek
// is never missed, and Rearm starts a clean interval without reporting.
TEST_P(DirtyTrackerTest, PeekReportsWithoutRearmingUntilRearmOrCollect) {
  Region r(64 * kPage, 64 * kPage);
  MAKE_OR_SKIP(t, r.base(), 64 * kPage, kPage);
  const bool uffd = GetParam() == DirtyTracker::Kind::kUffdWriteProtect;
  r.base()[2 * kPage] = 1;
  EXPECT_THAT(*t->Peek(), ElementsAre(2));
  r.base()[50 * kPage + 9] = 1;
  if (uffd) {
    EXPECT_THAT(*t->Peek(), ElementsAre(2, 50));
    EXPECT_THAT(*t->Peek(), ElementsAre(2, 50));  // still not re-armed
  } else {
    EXPECT_THAT(*t->Peek(), ElementsAre(50));
  }
  r.base()[2 * kPage + 1] = 2;  // a page already reported, written again
  EXPECT_THAT(*t->Peek(), ::testing::Contains(2));
  ASSERT_TRUE(t->Rearm().ok());
  EXPECT_THAT(*t->Peek(), IsEmpty());
  EXPECT_THAT(*t->Collect(), IsEmpty());
  r.base()[7 * kPage] = 3;
  r.base()[50 * kPage] = 3;
  EXPECT_THAT(*t->Peek(), ElementsAre(7, 50));
  if (uffd) {
    EXPECT_THAT(*t->Collect(), ElementsAre(7, 50));
  } else {
    EXPECT_THAT(*t->Collect(), IsEmpty());  // the peek brought the shadow up to date
  }
  EXPECT_THAT(*t->Peek(), IsEmpty());
  EXPECT_THAT(*t->Collect(), IsEmpty());
}

// Pages found written when the range grew stay reported by Peek until a re-arm.
TEST_P(DirtyTrackerTest, PeekKeepsThePagesFoundWhenTheRangeGrew) {
  Region r(16 * kPage, 64 * kPage);
  MAKE_OR_SKIP(t, r.base(), 16 * kPage, kPage);
  r.Enable(32 * kPage);
  r.base()[20 * kPage] = 1;  // written before Grow
  ASSERT_TRUE(t->Grow(32 * kPage).ok());
  EXPECT_THAT(*t->Peek(), ::testing::Contains(20));
  if (GetParam() == DirtyTracker::Kind::kUffdWriteProtect) {
    EXPECT_THAT(*t->Peek(), ElementsAre(20));
  }
  ASSERT_TRUE(t->Rearm().ok());
  EXPECT_THAT(*t->Peek(), IsEmpty());
}

TEST_P(DirtyTrackerTest, AggregatesIntoLargerPages) {
  constexpr size_t kWasmPage = 65536;
  Region r(8 * kWasmPage, 8 * kWasmPage);
  MAKE_OR_SKIP(t, r.base(), 8 * kWasmPage, kWasmPage);
  EXPECT_EQ(t->page_bytes(), kWasmPage);
  r.base()[kWasmPage + 3 * kPage] = 1;
  r.base()[kWasmPage + 9 * kPage] = 1;
  std::memset(r.base() + 5 * kWasmPage - 8, 7, 16);  // straddles pages 4 and 5
  EXPECT_THAT(*t->Collect(), ElementsAre(1, 4, 5));
}

TEST_P(DirtyTrackerTest, FollowsGrowthInPlace) {
  Region r(16 * kPage, 256 * kPage);
  MAKE_OR_SKIP(t, r.base(), 16 * kPage, kPage);
  r.base()[2 * kPage] = 1;
  r.Enable(48 * kPage);
  r.base()[20 * kPage] = 1;  // written before Grow(): still reported
  ASSERT_TRUE(t->Grow(48 * kPage).ok());
  EXPECT_EQ(t->bytes(), 48 * kPage);
  r.base()[40 * kPage] = 1;
  EXPECT_THAT(*t->Collect(), ElementsAre(2, 20, 40));
  EXPECT_THAT(*t->Collect(), IsEmpty());
  r.base()[47 * kPage] = 5;
  EXPECT_THAT(*t->Collect(), ElementsAre(47));
  EXPECT_FALSE(t->Grow(8 * kPage).ok());
}

TEST_P(DirtyTrackerTest, RejectsBadRanges) {
  Region r(4 * kPage, 4 * kPage);
  Factory f = GetParam() == DirtyTracker::Kind::kUffdWriteProtect ? &DirtyTracker::CreateUffd
                                                                  : &DirtyTracker::CreateShadow;
  EXPECT_EQ(f(r.base() + 1, kPage, kPage).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f(r.base(), 100, kPage).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f(r.base(), kPage, 3000).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(DirtyTrackerTest, CollectCostOn64MiB) {
  constexpr size_t kBytes = 64 << 20;
  Region r(kBytes, kBytes);
  std::memset(r.base(), 1, kBytes);  // populate
  MAKE_OR_SKIP(t, r.base(), kBytes, kPage);
  std::vector<double> us;
  for (int round = 0; round < 5; ++round) {
    for (size_t i = 0; i < 100; ++i) r.base()[i * 163 * kPage] = static_cast<uint8_t>(round + 2);
    auto start = std::chrono::steady_clock::now();
    Result<std::vector<uint32_t>> d = t->Collect();
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                     .count());
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->size(), 100u);
  }
  std::printf(
      "[ perf ] %s: Collect() over 64 MiB with 100 dirty pages: first %.0f us, then %.0f %.0f %.0f "
      "%.0f us\n",
      std::string(DirtyTrackerKindName(t->kind())).c_str(), us[0], us[1], us[2], us[3], us[4]);
}

// kB of transparent huge pages backing the mapping that contains `p` (/proc/self/smaps).
size_t AnonHugeKb(const void* p) {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return 0;
  char line[512];
  bool inside = false;
  size_t kb = 0;
  const auto at = reinterpret_cast<uintptr_t>(p);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo, hi;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, ':') != nullptr &&
        std::strstr(line, "kB") == nullptr) {
      inside = at >= lo && at < hi;
      continue;
    }
    if (inside && std::sscanf(line, "AnonHugePages: %zu kB", &kb) == 1) break;
  }
  std::fclose(f);
  return inside ? kb : 0;
}

// A migration target's memory is on transparent huge pages (MADV_HUGEPAGE): the tracker
// must still report single 4 KiB pages (a write to a protected huge page splits it).
TEST_P(DirtyTrackerTest, TracksHugePagesIn4KiBPages) {
  constexpr size_t kHuge = size_t{2} << 20;
  constexpr size_t kBytes = 2 * kHuge;
  Region r(kBytes + kHuge, kBytes + kHuge);
  uint8_t* base = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(r.base()) + kHuge - 1) & ~(uintptr_t{kHuge} - 1));
  ASSERT_EQ(madvise(base, kBytes, MADV_HUGEPAGE), 0) << std::strerror(errno);
  std::memset(base, 0x5a, kBytes);
  if (AnonHugeKb(base) == 0) GTEST_SKIP() << "no transparent huge page was used here";
  MAKE_OR_SKIP(t, base, kBytes, kPage);
  EXPECT_THAT(*t->Collect(), IsEmpty());
  base[3 * kPage] = 1;
  base[700 * kPage + 5] = 2;  // in the second huge page
  EXPECT_THAT(*t->Collect(), ElementsAre(3, 700));
  base[4 * kPage] = 3;  // same huge page as page 3
  EXPECT_THAT(*t->Collect(), ElementsAre(4));
  EXPECT_THAT(*t->Collect(), IsEmpty());
  EXPECT_EQ(base[3 * kPage + 1], 0x5a);  // contents intact
  EXPECT_EQ(base[3 * kPage], 1);
}

INSTANTIATE_TEST_SUITE_P(Kinds, DirtyTrackerTest,
                         ::testing::Values(DirtyTracker::Kind::kUffdWriteProtect,
                                           DirtyTracker::Kind::kShadowCompare),
                         [](const auto& info) {
                           return info.param == DirtyTracker::Kind::kUffdWriteProtect ? "Uffd"
                                                                                      : "Shadow";
                         });

TEST(DirtyTrackerCreateTest, FallsBackWhenTheRangeIsAlreadyTracked) {
  Region r(4 * kPage, 4 * kPage);
  Result<std::unique_ptr<DirtyTracker>> first =
      DirtyTracker::CreateUffd(r.base(), 4 * kPage, kPage);
  if (!first.ok()) GTEST_SKIP() << first.status();
  Result<std::unique_ptr<DirtyTracker>> second = DirtyTracker::Create(r.base(), 4 * kPage, kPage);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->kind(), DirtyTracker::Kind::kShadowCompare);
  r.base()[kPage] = 1;
  EXPECT_THAT(*(*first)->Collect(), ElementsAre(1));
  EXPECT_THAT(*(*second)->Collect(), ElementsAre(1));
}

TEST(DirtyTrackerCreateTest, PrefersUffdWhenAvailable) {
  Region r(4 * kPage, 4 * kPage);
  Result<std::unique_ptr<DirtyTracker>> t = DirtyTracker::Create(r.base(), 4 * kPage, kPage);
  ASSERT_TRUE(t.ok()) << t.status();
  Result<std::unique_ptr<DirtyTracker>> u = DirtyTracker::CreateUffd(r.base(), 0, kPage);
  std::printf("[ info ] DirtyTracker::Create picked %s\n",
              std::string(DirtyTrackerKindName((*t)->kind())).c_str());
  if (u.ok()) {
    EXPECT_EQ((*t)->kind(), DirtyTracker::Kind::kUffdWriteProtect);
  }
}

}  // namespace
}  // namespace tern::wasm
