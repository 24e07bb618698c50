// CycleNanos: monotonic nanoseconds from the CPU's time-stamp counter, for measuring
// durations on hot paths. clock_gettime(CLOCK_MONOTONIC) costs ~150 cycles (~58 ns) in
// this VM's vDSO, a bare `rdtsc` ~60 cycles; a 64 B shared-memory request read the clock
// three times on its way through the agent, about as long as the raw ring's whole
// round trip (docs/design/dataplane.md, "Clocks and the call path").
//
// Its origin is arbitrary and its rate is calibrated against CLOCK_MONOTONIC once per
// process (~2 ms, at the first call): compare its values with each other only (a
// duration, a "spin until"), never with MonoNanos() or a deadline. It uses the TSC only
// where the kernel's clocksource is "tsc" (the kernel checked that it is invariant and
// synchronized across CPUs) on x86-64; elsewhere it is MonoNanos().
//
// Thread-safety: any thread (the calibration is a function-local static).
#pragma once

#include <cstdint>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "core/clock.h"

namespace tern {

namespace internal {
struct CycleScale {
  bool use_tsc = false;
  uint64_t tsc0 = 0;         // the counter at calibration: CycleNanos() == 0 there
  double ns_per_tick = 0.0;  // measured against CLOCK_MONOTONIC
};
const CycleScale& CalibratedCycleScale();
}  // namespace internal

inline int64_t CycleNanos() {
#if defined(__x86_64__)
  static const internal::CycleScale& scale = internal::CalibratedCycleScale();
  if (scale.use_tsc) {
    return static_cast<int64_t>(static_cast<double>(static_cast<int64_t>(__rdtsc() - scale.tsc0)) * scale.ns_per_tick);
  }
#endif
  return MonoNanos();
}

}  // namespace tern
