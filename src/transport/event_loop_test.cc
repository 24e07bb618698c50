#include "transport/event_loop.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "core/clock.h"

namespace tern::transport {
namespace {

using namespace std::chrono_literals;

// Polls `pred` until it holds or `timeout` passes.
template <typename Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

std::unique_ptr<EventLoopThread> StartedLoop() {
  auto t = EventLoopThread::Create();
  EXPECT_TRUE(t.ok()) << t.status();
  (*t)->Start();
  return std::move(t).value();
}

TEST(EventLoopTest, PostRunsOnTheLoopThreadInOrder) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  std::vector<int> order;  // touched only on the loop thread
  std::atomic<int> ran{0};
  std::atomic<bool> all_on_loop{true};
  for (int i = 0; i < 100; ++i) {
    loop->Post([&, i] {
      if (!loop->IsInLoopThread()) all_on_loop = false;
      order.push_back(i);
      ++ran;
    });
  }
  ASSERT_TRUE(WaitUntil([&] { return ran == 100; }));
  EXPECT_TRUE(all_on_loop);
  std::vector<int> copy;
  loop->RunSync([&] { copy = order; });
  ASSERT_EQ(copy.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(copy[i], i);
  EXPECT_FALSE(loop->IsInLoopThread());
}

TEST(EventLoopTest, PostFromManyThreads) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  int count = 0;  // loop thread only
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) loop->Post([&] { ++count; });
    });
  }
  for (auto& th : threads) th.join();
  int seen = 0;
  ASSERT_TRUE(WaitUntil([&] {
    loop->RunSync([&] { seen = count; });
    return seen == 20000;
  }));
}

TEST(EventLoopTest, TimersFireInDeadlineOrderAndCanBeCancelled) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  std::vector<int> fired;  // loop thread only
  std::atomic<bool> done{false};
  const int64_t start = MonoNanos();
  std::atomic<int64_t> first_at{0};
  loop->RunSync([&] {
    loop->RunAfter(60ms, [&] {
      fired.push_back(3);
      done = true;
    });
    loop->RunAfter(20ms, [&] {
      fired.push_back(1);
      first_at = MonoNanos();
    });
    EventLoop::TimerId cancelled = loop->RunAfter(30ms, [&] { fired.push_back(99); });
    loop->RunAfter(40ms, [&] { fired.push_back(2); });
    EXPECT_TRUE(loop->CancelTimer(cancelled));
    EXPECT_FALSE(loop->CancelTimer(cancelled));
  });
  ASSERT_TRUE(WaitUntil([&] { return done.load(); }));
  std::vector<int> copy;
  loop->RunSync([&] { copy = fired; });
  EXPECT_EQ(copy, (std::vector<int>{1, 2, 3}));
  EXPECT_GE(first_at - start, 20'000'000);
}

TEST(EventLoopTest, ManyCancelledTimersDoNotAccumulate) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  std::atomic<bool> fired{false};
  loop->RunSync([&] {
    for (int i = 0; i < 10000; ++i) {
      loop->CancelTimer(loop->RunAfter(std::chrono::hours(1), [] {}));
    }
    loop->RunAfter(1ms, [&] { fired = true; });
  });
  EXPECT_TRUE(WaitUntil([&] { return fired.load(); }));
}

TEST(EventLoopTest, StopFromAnotherThreadAndBeforeRun) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  (*loop)->Stop();
  (*loop)->Run();  // returns at once
  std::thread th([&] { (*loop)->Run(); });
  std::atomic<bool> ran{false};
  (*loop)->Post([&] { ran = true; });
  ASSERT_TRUE(WaitUntil([&] { return ran.load(); }));
  (*loop)->Stop();
  th.join();
}

TEST(EventLoopTest, FdCallbacksAndRemovalFromInsideTheCallback) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::atomic<int> calls{0};
  loop->RunSync([&] {
    Status s = loop->AddFd(fds[0], EventLoop::kReadable, [&](uint32_t ev) {
      EXPECT_TRUE(ev & EventLoop::kReadable);
      char c;
      EXPECT_EQ(read(fds[0], &c, 1), 1);
      ++calls;
      loop->RemoveFd(fds[0]);  // no more callbacks, even with data left
    });
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(loop->AddFd(fds[0], EventLoop::kReadable, [](uint32_t) {}).code(),
              StatusCode::kAlreadyExists);
  });
  ASSERT_EQ(write(fds[1], "ab", 2), 2);
  ASSERT_TRUE(WaitUntil([&] { return calls == 1; }));
  // The second byte stays unread; a round trip through the loop shows no more calls.
  loop->RunSync([] {});
  loop->RunSync([] {});
  EXPECT_EQ(calls, 1);
  close(fds[0]);
  close(fds[1]);
}

TEST(EventLoopTest, DeferRunsAfterTheCurrentTaskAndDeleteLaterFrees) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  struct Tracker {
    std::atomic<bool>* destroyed;
    ~Tracker() { *destroyed = true; }
  };
  std::atomic<bool> destroyed{false};
  std::vector<std::string> log;
  std::atomic<bool> done{false};
  loop->Post([&] {
    loop->Defer([&] {
      log.push_back("deferred");
      done = true;
    });
    loop->DeleteLater(std::unique_ptr<Tracker>(new Tracker{&destroyed}));
    log.push_back("task");
    EXPECT_FALSE(destroyed);
  });
  ASSERT_TRUE(WaitUntil([&] { return done && destroyed; }));
  std::vector<std::string> copy;
  loop->RunSync([&] { copy = log; });
  EXPECT_EQ(copy, (std::vector<std::string>{"task", "deferred"}));
}

TEST(EventLoopTest, RunSyncFromTheLoopThreadRunsInline) {
  auto t = StartedLoop();
  EventLoop* loop = t->loop();
  int depth = 0;
  loop->RunSync([&] { loop->RunSync([&] { depth = 2; }); });
  EXPECT_EQ(depth, 2);
}

TEST(EventLoopTest, RestartAfterStop) {
  auto t = StartedLoop();
  t->Stop();
  t->Start();
  std::atomic<bool> ran{false};
  t->loop()->Post([&] { ran = true; });
  EXPECT_TRUE(WaitUntil([&] { return ran.load(); }));
}

}  // namespace
}  // namespace tern::transport
