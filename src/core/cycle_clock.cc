#include "core/cycle_clock.h"

#include <cstdint>
#include <fstream>
#include <string>

namespace tern::internal {
namespace {

#if defined(__x86_64__)
// One (counter, CLOCK_MONOTONIC) pair: the counter read on both sides of the clock,
// their midpoint taken. The tightest of a few tries: a thread preempted between the
// reads (a busy machine) would otherwise skew the rate by the time it was away.
struct Pair {
  uint64_t tsc;
  int64_t ns;
};
Pair ReadPair() {
  Pair best{0, 0};
  uint64_t best_gap = UINT64_MAX;
  for (int i = 0; i < 16 && best_gap > 1000; ++i) {
    const uint64_t a = __rdtsc();
    const int64_t ns = MonoNanos();
    const uint64_t b = __rdtsc();
    if (b >= a && b - a < best_gap) {
      best_gap = b - a;
      best = {a + (b - a) / 2, ns};
    }
  }
  return best;
}

bool KernelClocksourceIsTsc() {
  std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string name;
  return static_cast<bool>(f >> name) && name == "tsc";
}
#endif

CycleScale Calibrate() {
  CycleScale s;
#if defined(__x86_64__)
  if (!KernelClocksourceIsTsc()) return s;
  // 2 ms: the pairs' ~60 ns uncertainty is then a 3e-5 error in the rate.
  const Pair p0 = ReadPair();
  Pair p1 = p0;
  while (p1.ns - p0.ns < 2'000'000) p1 = ReadPair();
  if (p0.tsc == 0 || p1.tsc <= p0.tsc) return s;
  s.ns_per_tick = static_cast<double>(p1.ns - p0.ns) / static_cast<double>(p1.tsc - p0.tsc);
  s.tsc0 = p1.tsc;
  s.use_tsc = true;
#endif
  return s;
}

}  // namespace

const CycleScale& CalibratedCycleScale() {
  static const CycleScale scale = Calibrate();
  return scale;
}

}  // namespace tern::internal
