// TaskThread: one thread running posted tasks in order — where servers put work that
// blocks (a deploy compiles, a controller talks to agents) so their I/O loop never
// waits. Tasks still queued at destruction run before the thread exits.
//
// Ownership: owns its thread. Thread-safety: Post() from any thread; destroy it from a
// thread that is not its own.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <utility>

#include "core/mutex.h"

namespace tern {

class TaskThread {
 public:
  TaskThread() : thread_([this] { Loop(); }) {}
  ~TaskThread() {
    {
      MutexLock l(&mu_);
      stop_ = true;
      cv_.Signal();
    }
    thread_.join();
  }
  TaskThread(const TaskThread&) = delete;
  TaskThread& operator=(const TaskThread&) = delete;

  void Post(std::function<void()> fn) {
    MutexLock l(&mu_);
    tasks_.push_back(std::move(fn));
    cv_.Signal();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        MutexLock l(&mu_);
        while (tasks_.empty() && !stop_) cv_.Wait(&mu_);
        if (tasks_.empty()) return;
        fn = std::move(tasks_.front());
        tasks_.pop_front();
      }
      fn();
    }
  }

  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tern
