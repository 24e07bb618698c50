// The cost model: what one instance of a service would cost on one device, predicted from
// the view (model.h). Pure arithmetic; docs/design/placement.md has every formula.
//
//   compute   cpu_ns_per_request / (speed × per-server share of the offered cores)
//   data      per dataset read, from the nearest replica: tier fixed cost + 2 × path
//             latency + bytes × max(path ns/byte, tier software ns/byte); 0 when the
//             dataset is on the device itself (reading it is part of the CPU time)
//   caller    the same for the request from and the reply to the caller (gateway: TCP)
//   rpc       Σ calls × the same, to the nearest instance of each callee
//   queueing  M/M/c waiting time (Erlang C, exponential tail; scaled by (1 + cv²)/2 for
//             the service's CPU-time variation, Allen–Cunneen) at the utilization the
//             placement would cause on the offered cores, cores × (1 − reserved), with
//             c = max(1, ⌊offered cores⌋) servers; p50/p99 = the fixed terms + the wait's
//             p50/p99
//   energy    (active W / cores) × CPU core-seconds + Σ bytes × J/byte of every link crossed
//
// Constraints, each with a message naming it and the numbers: allowed devices, memory,
// the reserved share (utilization of the offered cores must stay < 1), tenant quota
// (instances, cores), SLO (predicted p99 <= target).
//
// Thread-safety: stateless functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "placement/model.h"

namespace tern::placement {

// The terms of a predicted latency, in µs.
struct CostBreakdown {
  double compute_us = 0;
  double data_us = 0;    // dataset reads
  double caller_us = 0;  // request in + reply out to the caller
  double rpc_us = 0;     // calls to callees (transport only: the callees' own time is theirs)
  double queue_p50_us = 0;
  double queue_p99_us = 0;

  bool operator==(const CostBreakdown&) const = default;
};

// How one dataset read travels.
struct ReadPath {
  std::string dataset;
  std::string from_device;  // the replica read
  std::string path;         // "local", "csd0 → s1 (shm)", "csd0 → s1 → c1 → cpu1 (tcp)"
  double bytes = 0;
  double us = 0;
  double joules = 0;

  bool operator==(const ReadPath&) const = default;
};

struct Prediction {
  std::string device;
  DeviceKind kind = DeviceKind::kCpu;
  bool feasible = false;   // every constraint holds, the SLO included
  bool fits = false;       // the hard constraints hold (allowed, memory, share, quota)
  bool meets_slo = false;  // p99 <= target (true without a target)
  std::string why_not;     // the failed constraints, "; "-separated; empty when feasible

  double latency_p50_us = 0;
  double latency_p99_us = 0;  // +infinity when the device would be saturated
  double energy_j_per_request = 0;
  double bytes_moved_per_request = 0;  // bytes crossing any link (not those read locally)
  CostBreakdown terms;

  double utilization_after = 0;  // of the offered cores, with this instance
  double load_cores = 0;         // core-equivalents of this device the instance keeps busy
  double local_bytes = 0;        // bytes per request read from datasets on the device
  ProfileSource source = ProfileSource::kEstimate;
  std::vector<ReadPath> reads;

  bool operator==(const Prediction&) const = default;
};

// Predicts one more instance of `service` on `device`, with the device's current state
// from the view. kInvalidArgument for a bad view or profile (ValidateView/
// ValidateProfile), kNotFound for an unknown device. An infeasible placement is not an
// error: it is a Prediction with feasible == false and the reason.
Result<Prediction> Predict(const ClusterView& view, const ServiceProfile& service,
                           std::string_view device);

// The waiting time (before service starts) of an M/M/c queue with `servers` servers at
// `utilization` (of all servers, < 1), each request taking `service_ns` on one server:
// P(wait > t) = ErlangC × exp(−c(1 − ρ)t / (k · service_ns)), k = (1 + cv2) / 2 (the
// Allen–Cunneen correction for service times of squared variation cv2; k = 1 is M/M/c).
// Quantiles are 0 when the probability of waiting at all is below 1 − q. Infinite at
// utilization >= 1.
struct WaitTimes {
  double p50_ns = 0;
  double p99_ns = 0;
  double mean_ns = 0;
  double p_wait = 0;  // Erlang C: the probability that a request waits
};
WaitTimes MmcWait(int servers, double utilization, double service_ns, double cv2 = 1);

}  // namespace tern::placement
