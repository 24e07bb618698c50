// Simulation mode for the placement engine: seeded synthetic clusters (hosts with CPUs,
// storage hosts with computational storage drives holding datasets, SmartNICs; racks),
// synthetic services (scan-heavy, compute-heavy, call chains), an evaluation of a
// placement at its final state, and an exhaustive oracle for tiny inputs. No processes
// are started; bench/placement times these (the library reads no clock).
//
// Ownership: value types. Thread-safety: stateless functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "placement/model.h"
#include "placement/policy.h"

namespace tern::placement {

struct SimSpec {
  int devices = 1000;
  int instances = 10000;  // replicas over all services
  int services = 1000;
  uint64_t seed = 1;
  // Total CPU demand of all instances as a share of the cluster's free offered capacity
  // (in reference cores): request rates are scaled to it.
  double load = 0.5;
  // Call chains call services placed in the same batch (true) or only services that are
  // already running on fixed devices (false; what the exhaustive oracle needs).
  bool batch_call_edges = true;
};

struct SimCluster {
  ClusterView view;
  std::vector<ServiceProfile> services;
  int hosts = 0;
  int racks = 0;
};

// A cluster and its services, deterministic in the spec (same spec, same output). The
// mix: ~40% storage hosts (a CPU and CSDs holding datasets, some datasets on two CSDs),
// ~60% compute hosts (a CPU, a SmartNIC, sometimes a CSD); racks of 16 hosts (5 µs,
// 25 Gbit/s, 0.6 nJ/B inside a rack; 20 µs, 10 Gbit/s, 1 nJ/B between racks); services
// 40% scan-heavy (MiB read per request, low selectivity), 30% compute-heavy, 30% call
// chains. kInvalidArgument for specs out of range (devices >= 2, services >= 1,
// instances >= services).
Result<SimCluster> GenerateCluster(const SimSpec& spec);

// A placement evaluated at its final state: every instance with the load of all the
// others (PlaceAll's own predictions are at placement time). Means are per placed
// instance.
struct Quality {
  int placed = 0;
  int unplaced = 0;
  int slo_misses = 0;  // placed instances whose p99 > SLO at the final state
  int overloaded = 0;  // placed instances on a device past a hard constraint
  double mean_p50_us = 0;
  double mean_p99_us = 0;  // over instances with a finite p99
  double mean_energy_j = 0;
  double mean_bytes_moved = 0;
  double offloaded = 0;  // share of placed instances on a device that is not a host CPU
  double max_utilization = 0;

  bool operator==(const Quality&) const = default;
};
// `result` must come from PlaceAll (or SolveExhaustive) on the same view and services.
Result<Quality> Evaluate(const ClusterView& view, const std::vector<ServiceProfile>& services,
                         const PlaceAllResult& result);

// The best assignment of every instance by brute force, judged like Evaluate: kLatency
// the least mean p99, kEnergy the least mean energy, kBalanced the fewest SLO misses
// then the least mean energy; assignments breaking a hard constraint at the final state
// are skipped. Only for tiny inputs: kInvalidArgument past `max_assignments` (devices ^
// instances) or when services call each other within the batch; kResourceExhausted when
// no assignment is feasible. Other policies: kInvalidArgument.
Result<PlaceAllResult> SolveExhaustive(const ClusterView& view,
                                       const std::vector<ServiceProfile>& services,
                                       Policy objective, uint64_t max_assignments = 2'000'000);

// The small driver: PlaceAll and Evaluate for each policy.
struct SimOutcome {
  Policy policy = Policy::kBalanced;
  PlaceAllResult result;
  Quality quality;
};
Result<std::vector<SimOutcome>> RunPolicies(const SimCluster& cluster,
                                            const std::vector<Policy>& policies,
                                            const PlaceOptions& options = {});

}  // namespace tern::placement
