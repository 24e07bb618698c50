// Mutex, MutexLock and CondVar with clang thread-safety annotations.
//
// Use these instead of std::mutex so that `-Wthread-safety` can check GUARDED_BY
// fields. Thread-safety: Mutex is, of course, safe to use from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define TERN_THREAD_ANNOTATION_(x) __attribute__((x))
#else
#define TERN_THREAD_ANNOTATION_(x)
#endif

#define CAPABILITY(x) TERN_THREAD_ANNOTATION_(capability(x))
#define SCOPED_CAPABILITY TERN_THREAD_ANNOTATION_(scoped_lockable)
#define GUARDED_BY(x) TERN_THREAD_ANNOTATION_(guarded_by(x))
#define PT_GUARDED_BY(x) TERN_THREAD_ANNOTATION_(pt_guarded_by(x))
#define REQUIRES(...) TERN_THREAD_ANNOTATION_(requires_capability(__VA_ARGS__))
#define ACQUIRE(...) TERN_THREAD_ANNOTATION_(acquire_capability(__VA_ARGS__))
#define RELEASE(...) TERN_THREAD_ANNOTATION_(release_capability(__VA_ARGS__))
#define EXCLUDES(...) TERN_THREAD_ANNOTATION_(locks_excluded(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS TERN_THREAD_ANNOTATION_(no_thread_safety_analysis)

namespace tern {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  // For code that must assert the lock is held but cannot prove it to the analysis.
  void AssertHeld() const {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// CondVar waits on a Mutex the caller already holds.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void Wait(Mutex* mu) REQUIRES(mu) {
    std::unique_lock<std::mutex> lk(mu->mu_, std::adopt_lock);
    cv_.wait(lk);
    lk.release();
  }
  // Returns false on timeout.
  template <class Rep, class Period>
  bool WaitFor(Mutex* mu, std::chrono::duration<Rep, Period> d) REQUIRES(mu) {
    std::unique_lock<std::mutex> lk(mu->mu_, std::adopt_lock);
    bool signaled = cv_.wait_for(lk, d) == std::cv_status::no_timeout;
    lk.release();
    return signaled;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace tern
