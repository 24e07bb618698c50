#include "wasm/v8/watchdog.h"

#include <sched.h>

#include <algorithm>
#include <chrono>

#include "core/logging.h"

namespace tern::wasm {

Watchdog::Slot::Slot(Watchdog* watchdog, clockid_t cpu_clock, std::function<void()> terminate)
    : watchdog_(watchdog), cpu_clock_(cpu_clock), terminate_(std::move(terminate)) {}

Watchdog::Slot::~Slot() { watchdog_->Unregister(this); }

bool Watchdog::Slot::EndSlow() {
  // The watchdog claimed this call; wait until its terminate callback has returned so
  // that the caller can cancel a termination that arrived after the call finished.
  while ((word_.load(std::memory_order_acquire) & 3) != kTerminated) sched_yield();
  word_.store(seq_ << 2 | kIdle, std::memory_order_release);
  return true;
}

Watchdog::Watchdog(uint32_t period_us) : period_us_(std::max<uint32_t>(period_us, 100)) {
  (void)CycleNanos();  // calibrated here (~2 ms), not in the first guest call
  thread_ = std::thread([this] { Run(); });
}

Watchdog::~Watchdog() {
  {
    MutexLock l(&mu_);
    CHECK(slots_.empty()) << "a Worker outlived its Engine";
    stop_ = true;
  }
  cv_.SignalAll();
  thread_.join();
}

std::unique_ptr<Watchdog::Slot> Watchdog::Register(std::function<void()> terminate) {
  clockid_t clock;
  int rc = pthread_getcpuclockid(pthread_self(), &clock);
  CHECK(rc == 0) << "pthread_getcpuclockid failed: " << rc;
  std::unique_ptr<Slot> slot(new Slot(this, clock, std::move(terminate)));
  {
    MutexLock l(&mu_);
    slots_.push_back(slot.get());
  }
  cv_.SignalAll();
  return slot;
}

void Watchdog::Unregister(Slot* s) {
  MutexLock l(&mu_);
  slots_.erase(std::remove(slots_.begin(), slots_.end(), s), slots_.end());
}

void Watchdog::Run() {
  MutexLock l(&mu_);
  while (!stop_) {
    if (slots_.empty()) {
      cv_.Wait(&mu_);
      continue;
    }
    cv_.WaitFor(&mu_, std::chrono::microseconds(period_us_));
    if (stop_) break;
    const int64_t now_wall = Slot::WallNanos();  // the clock of Slot::Begin
    for (Slot* s : slots_) Check(s, now_wall);
  }
}

void Watchdog::Check(Slot* s, int64_t now_wall) {
  uint64_t word = s->word_.load(std::memory_order_acquire);
  const uint64_t seq = word >> 2;
  const uint64_t state = word & 3;
  timespec ts;
  if (clock_gettime(s->cpu_clock_, &ts) != 0) return;
  const int64_t cpu = static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  const int64_t prev_cpu = s->last_cpu_;
  s->last_cpu_ = cpu;
  if (state != Slot::kRunning) return;
  if (s->observed_seq_ != seq) {
    // First look at this call: charge what it can have used since it began, which is
    // at most its wall time and at most the thread's CPU time since the previous look;
    // never more than one period, so a late watchdog cannot overcharge a call by more.
    int64_t charged =
        std::max<int64_t>(0, now_wall - s->start_wall_ns_.load(std::memory_order_relaxed));
    if (prev_cpu >= 0) charged = std::min(charged, cpu - prev_cpu);
    charged = std::min<int64_t>(charged, int64_t{period_us_} * 1000);
    s->cpu_base_ = cpu - charged;
    s->observed_seq_ = seq;
  }
  if (cpu - s->cpu_base_ < s->limit_ns_.load(std::memory_order_relaxed)) return;
  if (s->word_.compare_exchange_strong(word, seq << 2 | Slot::kClaimed,
                                       std::memory_order_acq_rel)) {
    s->terminate_();
    terminations_.fetch_add(1, std::memory_order_relaxed);
    s->word_.store(seq << 2 | Slot::kTerminated, std::memory_order_release);
  }
}

}  // namespace tern::wasm
