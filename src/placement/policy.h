// Placement policies over the cost model (cost.h): where one instance of a service goes
// (Place, with every candidate and why it lost) and where many go (PlaceAll, greedy with
// the utilization, memory and quota use updated as it places).
//
//   kLatency    the lowest predicted p99 among devices meeting the hard constraints
//               (allowed, memory, reserved share, quota);
//   kEnergy     the least energy per request among those; the SLO is not a constraint
//               (the prediction still says whether it is met);
//   kBalanced   the least energy among those that also meet the SLO; if none does, the
//               lowest p99 (and the explanation says so);
//   kHostOnly   baseline: kLatency restricted to host CPUs (kind cpu);
//   kRandom     baseline: uniform among the devices meeting the hard constraints,
//               seeded and deterministic;
//   kDataLocal  baseline (Ray-style locality): the device holding the most bytes the
//               service reads; ties go to host CPUs, then to the lowest p99. Ignores
//               everything else the model knows, on purpose.
// Ties in any objective go to the lower p99, then to the device listed first.
//
// Thread-safety: stateless functions. The view and profiles are only read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "placement/cost.h"
#include "placement/model.h"

namespace tern::placement {

enum class Policy { kLatency, kEnergy, kBalanced, kHostOnly, kRandom, kDataLocal };

// "latency", "energy", "balanced", "host-only", "random", "data-local".
std::string_view PolicyName(Policy policy);
// The inverse; kInvalidArgument listing the names.
Result<Policy> ParsePolicy(std::string_view name);
// Every policy, in the order above.
std::vector<Policy> AllPolicies();

struct PlaceOptions {
  uint64_t seed = 1;  // kRandom only
};

struct Candidate {
  Prediction prediction;
  std::string verdict;  // "chosen", "rejected: <why_not>", "feasible: higher energy (...)"

  bool operator==(const Candidate&) const = default;
};

struct Decision {
  std::string device;                 // empty when no device meets the hard constraints
  Prediction prediction;              // of the chosen device
  std::vector<Candidate> candidates;  // every device of the view, in view order
  Policy policy = Policy::kBalanced;
  bool slo_met = false;     // the chosen device meets the service's SLO
  std::string explanation;  // one paragraph: what was chosen, why, what was given up

  bool operator==(const Decision&) const = default;
};

// Places one instance of `service` on the view's current state. kInvalidArgument for a bad
// view or profile; a service no device can take is a Decision with an empty device.
Result<Decision> Place(const ClusterView& view, const ServiceProfile& service, Policy policy,
                       const PlaceOptions& options = {});

struct InstancePlacement {
  int service = 0;  // index into the services passed to PlaceAll
  int replica = 0;
  std::string device;  // empty: unplaced
  double latency_p50_us = 0;
  double latency_p99_us = 0;
  double energy_j_per_request = 0;
  double bytes_moved_per_request = 0;
  bool meets_slo = false;
  std::string why_not;  // for unplaced instances: the reason on the first device tried

  bool operator==(const InstancePlacement&) const = default;
};

struct PlaceAllResult {
  std::vector<InstancePlacement> instances;  // in placement order
  int placed = 0;
  int unplaced = 0;
  int slo_misses = 0;  // placed, but predicted p99 > SLO at the time of placement

  bool operator==(const PlaceAllResult&) const = default;
};

// Places every replica of every service, one instance at a time, each by `policy` on the
// state left by the previous ones (utilization, memory, tenant use). Callees placed in
// the same batch count where they were placed, so services are placed callees first (a
// depth-first order over the batch's call edges, cycles broken at the first service met).
// Predictions are those at placement time (later instances on the same device add load:
// sim.h's Evaluate recomputes at the final state). Cost: O(S·D) for the per-(service,
// device) terms plus, per instance, a lazily sorted scan that stops at the first device
// whose lower bound cannot win (typically a handful), S services, D devices.
Result<PlaceAllResult> PlaceAll(const ClusterView& view,
                                const std::vector<ServiceProfile>& services, Policy policy,
                                const PlaceOptions& options = {});

}  // namespace tern::placement
