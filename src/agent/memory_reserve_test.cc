#include "agent/memory_reserve.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kBlock = MemoryReserve::kBlockBytes;
constexpr int64_t kWait = 30'000'000'000;  // generous: the filler runs at idle priority

// An anonymous read-write mapping, unmapped at the end of the scope.
struct Mapping {
  explicit Mapping(size_t n) : bytes(n) {
    void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = m == MAP_FAILED ? nullptr : static_cast<uint8_t*>(m);
  }
  ~Mapping() {
    if (p != nullptr) ::munmap(p, bytes);
  }
  uint8_t* p;
  size_t bytes;
};

// How many of the 4 KiB pages in [p, p + n) are resident (mapped, no fault to come).
size_t ResidentPages(const uint8_t* p, size_t n) {
  std::vector<unsigned char> v(n / 4096);
  if (::mincore(const_cast<uint8_t*>(p), n, v.data()) != 0) return 0;
  size_t k = 0;
  for (unsigned char c : v) k += c & 1;
  return k;
}

bool AllZero(const uint8_t* p, size_t n) {
  static const uint8_t zeros[4096] = {};
  for (size_t off = 0; off < n; off += 4096) {
    if (std::memcmp(p + off, zeros, std::min<size_t>(4096, n - off)) != 0) return false;
  }
  return true;
}

TEST(MemoryReserveTest, HandsOutZeroedAlignedResidentBlocksAndRefills) {
  MemoryReserve r(7 * kMiB);  // rounded up to 4 blocks
  ASSERT_TRUE(r.WaitFull(kWait));
  MemoryReserve::Stats s = r.stats();
  EXPECT_EQ(s.target_bytes, 8 * kMiB);
  EXPECT_EQ(s.ready_bytes, 8 * kMiB);

  // A destination that held another tenant's data and starts 4 KiB past a 2 MiB
  // boundary: only its whole aligned blocks are replaced, with zero pages.
  Mapping dst(12 * kMiB);
  ASSERT_NE(dst.p, nullptr);
  std::memset(dst.p, 0xAB, dst.bytes);
  uint8_t* aligned = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(dst.p) + kBlock - 1) & ~uintptr_t{kBlock - 1});
  uint8_t* start = aligned + 4096;  // the first whole block is at aligned + 2 MiB
  const size_t n = 6 * kMiB;        // [start, start + n) holds two whole blocks
  ASSERT_LE(start + n, dst.p + dst.bytes);
  EXPECT_EQ(r.MoveInto(start, n), 4 * kMiB);
  EXPECT_TRUE(AllZero(aligned + kBlock, 4 * kMiB)) << "moved blocks must read as zero";
  EXPECT_EQ(start[0], 0xAB) << "the partial block before the first whole one is kept";
  EXPECT_EQ(aligned[3 * kBlock], 0xAB) << "the partial block after the last is kept";
  s = r.stats();
  EXPECT_EQ(s.moved_bytes, 4 * kMiB);
  EXPECT_EQ(s.failed_moves, 0u);

  // A range with no whole block gets nothing.
  EXPECT_EQ(r.MoveInto(start, kBlock), 0u);

  // Refilled in the background, and the next hand-out is zero too (not the bytes the
  // first destination held).
  ASSERT_TRUE(r.WaitFull(kWait));
  Mapping dst2(16 * kMiB);
  ASSERT_NE(dst2.p, nullptr);
  std::memset(dst2.p, 0xCD, dst2.bytes);
  MemoryReserve::Hold hold(&r);  // no refill until the checks below
  const size_t placed = r.MoveInto(dst2.p, dst2.bytes);
  EXPECT_EQ(placed, 8 * kMiB) << "the whole reserve, no more";
  uint8_t* a2 = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(dst2.p) + kBlock - 1) & ~uintptr_t{kBlock - 1});
  EXPECT_TRUE(AllZero(a2, placed));
  EXPECT_EQ(ResidentPages(a2, placed), placed / 4096) << "moved pages are faulted in";
  EXPECT_EQ(a2[placed], 0xCD) << "beyond what the reserve had, the range is as it was";
  // The moved memory is ordinary memory: writable, and it keeps what is written.
  std::memset(a2, 0x11, placed);
  EXPECT_EQ(a2[placed - 1], 0x11);
  EXPECT_EQ(r.stats().ready_bytes, 0u);
  hold.Release();
  ASSERT_TRUE(r.WaitFull(kWait));
}

TEST(MemoryReserveTest, HoldPausesRefillingUntilReleased) {
  MemoryReserve r(4 * kMiB);
  ASSERT_TRUE(r.WaitFull(kWait));
  Mapping dst(8 * kMiB);
  ASSERT_NE(dst.p, nullptr);
  {
    MemoryReserve::Hold hold(&r);
    EXPECT_EQ(r.MoveInto(dst.p, dst.bytes), 4 * kMiB);
    // Not refilled while held (an incoming migration must not compete with it).
    EXPECT_FALSE(r.WaitFull(kWait)) << "returns at once while held";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_EQ(r.stats().ready_bytes, 0u);
    MemoryReserve::Hold moved = std::move(hold);  // a moved-from hold releases nothing
  }
  EXPECT_TRUE(r.WaitFull(kWait));
}

TEST(MemoryReserveTest, EmptyReservePlacesNothing) {
  MemoryReserve off(0);
  Mapping dst(8 * kMiB);
  ASSERT_NE(dst.p, nullptr);
  dst.p[0] = 1;
  EXPECT_EQ(off.MoveInto(dst.p, dst.bytes), 0u);
  EXPECT_EQ(dst.p[0], 1);
  EXPECT_TRUE(off.WaitFull(0));
  EXPECT_EQ(off.stats().target_bytes, 0u);
}

}  // namespace
}  // namespace tern::agent
