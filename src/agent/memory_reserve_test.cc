#include "agent/memory_reserve.h"

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/clock.h"

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

// A 2 MiB-aligned anonymous mapping of n bytes (the prefaulter's steps are whole 2 MiB
// blocks of it, so the resident counts below are exact whether or not THP is on).
struct AlignedMapping {
  explicit AlignedMapping(size_t n) : raw(n + kBlock), bytes(n) {
    if (raw.p != nullptr) {
      p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw.p) + kBlock - 1) &
                                     ~uintptr_t{kBlock - 1});
    }
  }
  Mapping raw;
  size_t bytes;
  uint8_t* p = nullptr;
};

// Polls until `p` has `pages` resident pages; false after 20 s.
bool WaitResident(const uint8_t* p, size_t n, size_t pages) {
  const int64_t deadline = MonoNanos() + 20'000'000'000;
  while (ResidentPages(p, n) != pages) {
    if (MonoNanos() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

TEST(PrefaulterTest, FaultsRangesInWithoutChangingWhatTheyHold) {
  AlignedMapping m(16 * kMiB);
  ASSERT_NE(m.p, nullptr);
  // Every third page holds data already; the others were never touched.
  for (size_t off = 0; off < m.bytes; off += 3 * 4096) std::memset(m.p + off, 0x5A, 4096);
  ASSERT_LT(ResidentPages(m.p, m.bytes), m.bytes / 4096);
  {
    // Two ranges positioned out of address order.
    Prefaulter pf({{m.p + 8 * kMiB, 8 * kMiB, 0}, {m.p, 8 * kMiB, 8 * kMiB}},
                  /*lead=*/UINT64_MAX / 2);
    ASSERT_TRUE(pf.WaitDone(kWait));
  }
  EXPECT_EQ(ResidentPages(m.p, m.bytes), m.bytes / 4096);
  for (size_t off = 0; off < m.bytes; off += 4096) {
    const uint8_t want = (off / 4096) % 3 == 0 ? 0x5A : 0;
    ASSERT_EQ(m.p[off], want) << "page " << off / 4096;
    ASSERT_EQ(m.p[off + 4095], want) << "page " << off / 4096;
  }
}

TEST(PrefaulterTest, KeepsAtMostItsLeadAheadOfTheWriter) {
  AlignedMapping m(64 * kMiB);
  ASSERT_NE(m.p, nullptr);
  Prefaulter pf({{m.p, m.bytes, 0}}, /*lead=*/8 * kMiB);
  // Positions below 0 + 8 MiB: the first four 2 MiB steps, and no more.
  ASSERT_TRUE(WaitResident(m.p, m.bytes, 8 * kMiB / 4096)) << ResidentPages(m.p, m.bytes);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(ResidentPages(m.p, m.bytes), 8 * kMiB / 4096);
  EXPECT_FALSE(pf.WaitDone(0));
  // The writer reaches 30 MiB: the steps below 38 MiB, i.e. up to 38 MiB.
  pf.Advance(30 * kMiB);
  pf.Advance(20 * kMiB);  // progress never goes back
  ASSERT_TRUE(WaitResident(m.p, m.bytes, 38 * kMiB / 4096)) << ResidentPages(m.p, m.bytes);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(ResidentPages(m.p, m.bytes), 38 * kMiB / 4096);
  pf.Advance(m.bytes);
  ASSERT_TRUE(pf.WaitDone(kWait));
  EXPECT_EQ(ResidentPages(m.p, m.bytes), m.bytes / 4096);
}

TEST(PrefaulterTest, StopsWhenDestroyedWhileWaitingForTheWriter) {
  AlignedMapping m(32 * kMiB);
  ASSERT_NE(m.p, nullptr);
  const int64_t start = MonoNanos();
  {
    Prefaulter pf({{m.p, m.bytes, 0}}, /*lead=*/4 * kMiB);
    ASSERT_TRUE(WaitResident(m.p, m.bytes, 4 * kMiB / 4096));
  }
  EXPECT_LT(MonoNanos() - start, 10'000'000'000) << "the destructor waited for progress";
  EXPECT_EQ(ResidentPages(m.p, m.bytes), 4 * kMiB / 4096);
}

// The cause of seconds-long stalls under load: a prefaulter at idle priority, preempted
// inside MADV_POPULATE_WRITE (which holds the process's mmap lock) and then starved,
// made every mmap/munmap of the process wait for it: 10-12 s in a standalone run of
// exactly this set-up. Here the prefaulter's thread is made idle on purpose (it inherits
// the creating thread's policy and CPU) and starved by a spinner on its CPU, while
// another CPU maps and unmaps: its faults must hold no lock that mmap needs.
TEST(PrefaulterTest, AStarvedPrefaulterDoesNotStallTheProcesssMmap) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof allowed, &allowed), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  }
  if (cpus.size() < 2) GTEST_SKIP() << "needs two CPUs (has " << cpus.size() << ")";
  // Before Linux 6.4 an anonymous page fault takes the process's mmap lock (for reading)
  // rather than only its VMA's lock, so a starved faulting thread can hold up mmap there
  // whatever it faults with; the prefaulter's normal priority is the defence on those.
  utsname u{};
  int major = 0, minor = 0;
  if (uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &major, &minor) != 2 ||
      major * 100 + minor < 604) {
    GTEST_SKIP() << "kernel " << u.release << " has no per-VMA locks for page faults (6.4+)";
  }
  auto pin = [](int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return sched_setaffinity(0, sizeof s, &s) == 0;
  };
  AlignedMapping m(256 * kMiB);
  ASSERT_NE(m.p, nullptr);
  m.p[0] = 1;  // the mapping's first fault (it takes the mmap lock) is behind us

  std::atomic<bool> stop{false};
  ASSERT_TRUE(pin(cpus[0]));
  std::thread spinner([&] {
    while (!stop.load(std::memory_order_relaxed)) {
    }
  });
  sched_param none{};
  ASSERT_EQ(pthread_setschedparam(pthread_self(), SCHED_IDLE, &none), 0);
  auto pf = std::make_unique<Prefaulter>(std::vector<Prefaulter::Range>{{m.p, m.bytes, 0}},
                                         /*lead=*/UINT64_MAX / 2);
  const bool back = pthread_setschedparam(pthread_self(), SCHED_OTHER, &none) == 0;
  const bool moved = pin(cpus[1]);
  int64_t worst = 0;
  int calls = 0;
  const int64_t end = MonoNanos() + 400'000'000;
  while (back && moved && MonoNanos() < end) {
    const int64_t t = MonoNanos();
    void* q = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q != MAP_FAILED) ::munmap(q, 4096);
    worst = std::max(worst, MonoNanos() - t);
    ++calls;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  stop.store(true);
  spinner.join();
  pf.reset();
  (void)sched_setaffinity(0, sizeof allowed, &allowed);
  ASSERT_TRUE(back) << "could not return to SCHED_OTHER";
  ASSERT_TRUE(moved);
  EXPECT_GT(calls, 10);
  EXPECT_LT(worst, 300'000'000) << "an mmap waited " << worst / 1e6 << " ms for the prefaulter";
}

}  // namespace
}  // namespace tern::agent
