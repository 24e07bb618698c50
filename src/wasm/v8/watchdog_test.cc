#include "wasm/v8/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace tern::wasm {
namespace {

int64_t ThreadCpuNanos() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

TEST(WatchdogTest, TerminatesACallThatUsesTooMuchCpu) {
  Watchdog wd(1000);
  std::atomic<bool> stop{false};
  auto slot = wd.Register([&] { stop.store(true); });
  const int64_t cpu0 = ThreadCpuNanos();
  slot->Begin(30'000'000);  // 30 ms
  volatile uint64_t spins = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    spins = spins + 1;
    ASSERT_LT(ThreadCpuNanos() - cpu0, 5'000'000'000) << "watchdog never fired";
  }
  EXPECT_TRUE(slot->End());
  const int64_t used = ThreadCpuNanos() - cpu0;
  EXPECT_GE(used, 25'000'000);
  EXPECT_LT(used, 1'000'000'000);
  EXPECT_EQ(wd.terminations(), 1u);
}

TEST(WatchdogTest, ShortCallsAndSleepingCallsAreLeftAlone) {
  Watchdog wd(500);
  std::atomic<int> fired{0};
  auto slot = wd.Register([&] { fired.fetch_add(1); });
  for (int i = 0; i < 200000; ++i) {
    slot->Begin(5'000'000);
    EXPECT_FALSE(slot->End());
  }
  // Sleeping uses no CPU: a 20 ms sleep under a 5 ms CPU limit is fine.
  slot->Begin(5'000'000);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(slot->End());
  EXPECT_EQ(fired.load(), 0);
}

TEST(WatchdogTest, BeginEndCostsLittle) {
  Watchdog wd(2000);
  auto slot = wd.Register([] {});
  constexpr int kN = 1'000'000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kN; ++i) {
    slot->Begin(1'000'000'000);
    slot->End();
  }
  double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / kN;
  std::printf("[ perf ] watchdog Begin+End: %.1f ns\n", ns);
  EXPECT_LT(ns, 1000);
}

TEST(WatchdogTest, ManyThreads) {
  Watchdog wd(1000);
  std::vector<std::thread> threads;
  std::atomic<int> terminated{0};
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      std::atomic<bool> stop{false};
      auto slot = wd.Register([&] { stop.store(true); });
      slot->Begin(10'000'000);
      while (!stop.load()) {
      }
      if (slot->End()) terminated.fetch_add(1);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(terminated.load(), 3);
}

}  // namespace
}  // namespace tern::wasm
