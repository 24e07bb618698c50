// EventLoop: a single-threaded epoll reactor for sockets, timers and cross-thread tasks.
//
// Threading model. One thread runs Run(); it is "the loop thread". Everything
// registered with the loop (fd callbacks, timers, deferred and posted tasks) runs on it,
// one at a time, so objects that live on a loop need no locks. Only Post(), RunSync(),
// Stop() and IsInLoopThread() may be called from other threads. The other methods
// ("loop-thread methods") may be called from the loop thread, or from any one thread
// while the loop is not running (to set things up before Run() or tear them down
// after it returned).
//
// One iteration: wait in epoll (bounded by the next timer), dispatch ready fds, run
// due timers, run posted tasks (woken by an eventfd), then run deferred tasks and
// destroy objects handed to DeleteLater(). Deferred tasks let a connection batch all
// the replies produced in one iteration into a single write.
//
// Ownership: the loop owns its epoll fd, its eventfd and the callbacks; it does not
// own the fds it watches. Objects registered with a loop must be destroyed (or
// unregistered) before the loop, on the loop thread or while it is not running.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"

struct epoll_event;

namespace tern::transport {

struct EventLoopOptions {
  // After an iteration that handled events, poll (without blocking) for up to this
  // long before blocking in epoll. Trades CPU for latency: a blocking wake-up across
  // vCPUs costs tens of microseconds on our VMs, while a spin catches the partner's
  // next message at once. 0 = never spin (the default; don't spin when the peer may
  // share this CPU: it would wait for our time slice).
  std::chrono::nanoseconds busy_poll{0};
};

class EventLoop {
 public:
  // Interest / readiness bits passed to fd callbacks.
  static constexpr uint32_t kReadable = 1;
  static constexpr uint32_t kWritable = 2;
  // Reported together with kReadable when the peer hung up or the fd has an error;
  // a read (or getsockopt(SO_ERROR)) tells which.
  static constexpr uint32_t kError = 4;

  using FdCallback = std::function<void(uint32_t events)>;
  using TimerId = uint64_t;

  // Creates a loop (epoll + eventfd). Fails only if the kernel refuses the fds.
  static Result<std::unique_ptr<EventLoop>> Create(const EventLoopOptions& options = {});
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs iterations on the calling thread until Stop(). If Stop() was called before
  // Run(), returns at once. Deferred tasks still pending when it stops are run.
  void Run();
  // Makes Run() return after the current iteration. Any thread; idempotent.
  void Stop();

  // Queues `fn` to run on the loop thread. Any thread; never runs `fn` inline. Tasks
  // run in the order they were posted. Tasks still queued when the loop is destroyed
  // are destroyed without running.
  void Post(std::function<void()> fn);
  // Runs `fn` on the loop thread and waits for it: inline if called on the loop
  // thread. The loop must be running (or about to run), or this blocks forever.
  void RunSync(const std::function<void()>& fn);
  // True on the thread running Run(); also true on any thread while nobody runs it.
  bool IsInLoopThread() const;

  // --- Loop-thread methods ---

  // Watches `fd` for `events` (kReadable | kWritable; level-triggered) and calls
  // `cb` with the ready bits. `fd` must not be registered already; the caller keeps
  // owning it and must RemoveFd() before closing it.
  Status AddFd(int fd, uint32_t events, FdCallback cb);
  // Changes the interest set of a registered fd.
  Status ModifyFd(int fd, uint32_t events);
  // Stops watching `fd`. Safe to call from inside that fd's own callback; no callback
  // for it runs afterwards, even if an event for it is already pending.
  void RemoveFd(int fd);

  // Runs `fn` once after `delay` (rounded up to whole milliseconds). Returns an id
  // for CancelTimer.
  TimerId RunAfter(std::chrono::nanoseconds delay, std::function<void()> fn);
  // Cancels a timer that has not run yet; returns false if it already ran or is unknown.
  bool CancelTimer(TimerId id);

  // Runs `fn` at the end of the current iteration (or of the next one when called
  // outside Run), before the loop blocks again.
  void Defer(std::function<void()> fn);
  // Destroys `obj` at the end of the current iteration: lets an object be dropped by
  // its owner from inside one of its own callbacks.
  template <typename T>
  void DeleteLater(std::unique_ptr<T> obj) {
    graveyard_.emplace_back(obj.release(), [](void* p) { delete static_cast<T*>(p); });
  }

  // Monotonic time at the start of the current iteration (MonoNanos()), cheap.
  int64_t NowNanos() const { return now_nanos_; }

 private:
  struct FdEntry {
    int fd;
    bool removed = false;
    FdCallback cb;
  };
  struct TimerSlot {
    int64_t deadline;
    std::function<void()> fn;
  };
  using HeapItem = std::pair</* deadline */ int64_t, TimerId>;

  EventLoop(int epoll_fd, int wake_fd, const EventLoopOptions& options);
  int Wait();
  void Wake();
  void DrainPosted();
  int NextTimeoutMillis();
  void RunDueTimers();
  void RunDeferred();

  const int epoll_fd_;
  const int wake_fd_;
  const int64_t busy_poll_nanos_;
  std::atomic<bool> stop_{false};
  std::atomic<std::thread::id> loop_thread_{};

  Mutex mu_;
  std::vector<std::function<void()>> posted_ GUARDED_BY(mu_);
  std::vector<std::function<void()>> running_;  // loop thread: the batch being run

  // Loop-thread state.
  int64_t now_nanos_ = 0;
  int64_t last_work_nanos_ = 0;  // last iteration that had events (for busy_poll)
  std::vector</* fd */ std::unique_ptr<FdEntry>> fds_;
  std::vector<std::unique_ptr<FdEntry>> removed_fds_;  // freed at iteration end
  std::unique_ptr<FdEntry> wake_entry_;
  std::unordered_map<TimerId, TimerSlot> timers_;
  std::priority_queue<HeapItem, std::vector<HeapItem>, std::greater<HeapItem>> timer_heap_;
  TimerId next_timer_id_ = 1;
  std::vector<std::function<void()>> deferred_;
  std::vector<std::unique_ptr<void, void (*)(void*)>> graveyard_;
  std::unique_ptr<::epoll_event[]> events_;
};

// A loop and the thread that runs it. Create() makes the loop without starting the
// thread, so servers can be set up first; Start() spawns the thread; Stop() (and the
// destructor) stops the loop and joins. Start/Stop from one controlling thread.
class EventLoopThread {
 public:
  static Result<std::unique_ptr<EventLoopThread>> Create(const EventLoopOptions& options = {});
  ~EventLoopThread();
  EventLoopThread(const EventLoopThread&) = delete;
  EventLoopThread& operator=(const EventLoopThread&) = delete;

  EventLoop* loop() const { return loop_.get(); }
  void Start();
  // Stops the loop and joins the thread; the loop can be started again afterwards.
  void Stop();

 private:
  explicit EventLoopThread(std::unique_ptr<EventLoop> loop) : loop_(std::move(loop)) {}
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

}  // namespace tern::transport
