// WorkerGate: holds the worker thread that owns an instance until the test releases
// it. Test-only; header-only.
//
// Why: a test that needs "the worker is busy" (a request queued behind it, a caller
// whose callee cannot answer yet, a data request that must not wait for the guest
// worker) used to make it busy with a guest that spins for N ms of wall or CPU time.
// Under load that is not deterministic: the test thread may stall past the N ms (the
// busy spell is over before the test acts), and a CPU-time limit of a few seconds takes
// tens of seconds of wall time on a loaded 2-core machine. A gate is busy exactly as
// long as the test wants, whatever the load.
//
// The worker runs the gate's closure as one of its tasks (Agent::RunOnWorkerOf): while
// it waits there, the worker runs no guest, reads none of its connections and takes
// nothing from its queues. A gate never released opens by itself after `safety`, so a
// product that waits for the held worker fails the test (ReleasedByTest() is false)
// instead of hanging it.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "agent/agent.h"
#include "core/mutex.h"

namespace tern::agent {

class WorkerGate {
 public:
  // Returns once the worker that owns `instance_id` is held.
  WorkerGate(Agent* agent, const std::string& instance_id,
             std::chrono::milliseconds safety = std::chrono::seconds(20))
      : safety_(safety) {
    thread_ = std::thread([this, agent, instance_id] {
      Status s = agent->RunOnWorkerOf(instance_id, [this] { Hold(); });
      MutexLock l(&mu_);
      if (!s.ok()) {
        error_ = s.ToString();
        held_ = true;  // never held; do not wait for it
        cv_.SignalAll();
      }
    });
    MutexLock l(&mu_);
    while (!held_) cv_.Wait(&mu_);
    EXPECT_TRUE(error_.empty()) << "the gate could not hold the worker of " << instance_id
                                << ": " << error_;
  }
  ~WorkerGate() {
    Release();
    thread_.join();
  }
  WorkerGate(const WorkerGate&) = delete;
  WorkerGate& operator=(const WorkerGate&) = delete;

  // Lets the worker go on (idempotent).
  void Release() {
    MutexLock l(&mu_);
    released_ = true;
    cv_.SignalAll();
  }
  // False once the gate opened by itself (`safety` passed before Release()).
  bool ReleasedByTest() {
    MutexLock l(&mu_);
    return !timed_out_;
  }

 private:
  void Hold() {
    const auto until = std::chrono::steady_clock::now() + safety_;
    MutexLock l(&mu_);
    held_ = true;
    cv_.SignalAll();
    while (!released_) {
      const auto left = until - std::chrono::steady_clock::now();
      if (left <= std::chrono::steady_clock::duration::zero()) {
        timed_out_ = true;
        break;
      }
      cv_.WaitFor(&mu_, left);
    }
  }

  const std::chrono::milliseconds safety_;
  Mutex mu_;
  CondVar cv_;
  bool held_ GUARDED_BY(mu_) = false;
  bool released_ GUARDED_BY(mu_) = false;
  bool timed_out_ GUARDED_BY(mu_) = false;
  std::string error_ GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace tern::agent
