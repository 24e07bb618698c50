// Watchdog: enforces a per-call CPU-time limit on worker threads.
//
// One Watchdog (one thread) per Engine. Each worker thread registers a Slot; around each
// guest call it marks Begin(limit) / End(). Every `period` the watchdog thread reads the
// CPU clock of each registered thread (pthread_getcpuclockid) and, when a running call
// has used more than its limit, invokes the slot's `terminate` callback (for V8:
// Isolate::TerminateExecution) exactly once for that call.
//
// Why the watchdog reads the clocks, not the worker: reading a thread CPU clock is a
// system call (~1.3 µs on our VMs), more than a whole no-op guest call. The worker's
// fast path is one TSC read (wall time, CycleNanos) and two atomic stores at Begin, and one
// uncontended compare-and-swap at End. CPU used before the watchdog first sees a call is
// charged as min(wall time since Begin, thread CPU since the previous look, one period),
// so a call is stopped within about one period of its limit, early or late.
//
// Ownership: the Engine owns the Watchdog; each Worker owns its Slot, which must be
// destroyed before the Watchdog. Thread-safety: Register and ~Slot from any thread;
// Begin/End only on the registered thread; `terminate` runs on the watchdog thread and
// must be thread-safe.
#pragma once

#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "core/cycle_clock.h"
#include "core/mutex.h"

namespace tern::wasm {

class Watchdog {
 public:
  class Slot {
   public:
    ~Slot();  // unregisters
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

    // A call starts on the registered thread; it may use `limit_ns` of thread CPU time.
    void Begin(int64_t limit_ns) {
      limit_ns_.store(limit_ns, std::memory_order_relaxed);
      start_wall_ns_.store(WallNanos(), std::memory_order_relaxed);
      ++seq_;
      word_.store(seq_ << 2 | kRunning, std::memory_order_release);
    }

    // The call ended. Returns true when the watchdog terminated (or is terminating)
    // this call: the terminate callback has then returned, and the caller must clear a
    // termination the engine has not delivered yet.
    bool End() {
      uint64_t expected = seq_ << 2 | kRunning;
      if (word_.compare_exchange_strong(expected, seq_ << 2 | kIdle, std::memory_order_acq_rel)) {
        return false;
      }
      return EndSlow();
    }

   private:
    friend class Watchdog;
    enum : uint64_t { kIdle = 0, kRunning = 1, kClaimed = 2, kTerminated = 3 };
    Slot(Watchdog* watchdog, clockid_t cpu_clock, std::function<void()> terminate);
    bool EndSlow();
    // CycleNanos (core/cycle_clock.h), on both threads: a call's start is read on the
    // worker's path into every guest call, where clock_gettime would cost ~58 ns.
    static int64_t WallNanos() { return CycleNanos(); }

    Watchdog* const watchdog_;
    const clockid_t cpu_clock_;
    const std::function<void()> terminate_;
    // Shared with the watchdog thread: (call sequence << 2) | state.
    std::atomic<uint64_t> word_{0};
    std::atomic<int64_t> limit_ns_{0};
    std::atomic<int64_t> start_wall_ns_{0};
    uint64_t seq_ = 0;  // worker thread only
    // Watchdog thread only (under mu_).
    uint64_t observed_seq_ = 0;
    int64_t cpu_base_ = 0;
    int64_t last_cpu_ = -1;
  };

  explicit Watchdog(uint32_t period_us);
  ~Watchdog();  // stops and joins the thread; all slots must be gone
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Registers the calling thread. `terminate` stops the thread's running call.
  std::unique_ptr<Slot> Register(std::function<void()> terminate);

  // Number of calls terminated so far (for tests and status).
  uint64_t terminations() const { return terminations_.load(std::memory_order_relaxed); }

 private:
  void Run();
  void Check(Slot* s, int64_t now_wall) REQUIRES(mu_);
  void Unregister(Slot* s);

  const uint32_t period_us_;
  Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  std::vector<Slot*> slots_ GUARDED_BY(mu_);
  std::atomic<uint64_t> terminations_{0};
  std::thread thread_;
};

}  // namespace tern::wasm
