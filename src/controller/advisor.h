// The controller's use of the placement engine (placement/): the engine's view of the
// cluster built from the topology and the live agents, a service's profile from its
// hints and, once instances run, from their telemetry; and the devices ranked by a
// policy, which the planner (plan.h) places replicas on.
//
// A service opts in with a placement policy (`tern deploy --policy balanced ...`); the
// others keep the spread policy of plan.h.
// Value types and stateless functions; thread-compatible.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cluster/topology.h"
#include "controller/model.h"
#include "controller/plan.h"
#include "core/status.h"
#include "placement/model.h"
#include "placement/policy.h"

namespace tern::controller {

// What a service told the controller about itself (deploy request "placement": {...}).
struct PlacementHints {
  std::string policy;       // "latency", "energy", "balanced", ... ("" = spread)
  double cpu_us = 0;        // per request at speed 1.0 (0 = the engine's estimate)
  double rate = 0;          // requests/s per instance
  double slo_p99_us = 0;    // 0 = none
  std::vector<placement::DatasetRead> reads;  // bytes per request per dataset
  // Variability of the CPU time per request (variance / mean²): 1 = exponential (the
  // cautious default), 0 = always the same (a scan of a fixed object).
  double cv2 = 1;

  bool operator==(const PlacementHints&) const = default;
};
std::string HintsToJson(const PlacementHints& h);
// kInvalidArgument naming the field (and the policy names for a bad policy).
Result<PlacementHints> HintsFromJson(std::string_view json);

// Measured behaviour of a service's running instances (from agents' telemetry).
struct ServiceMeasurement {
  double requests = 0;       // over the last telemetry interval, all instances
  double cpu_ns_speed1 = 0;  // CPU ns per request normalised to speed 1.0
  double data_bytes = 0;     // dataset bytes read per request
  double rate = 0;           // requests/s per instance
};

// The engine's view: the live agents' devices, described by the topology where it has
// them (power, reserved share, datasets, links), else by what the agent registered.
// `guest_cores` and `datasets` are per device (telemetry): `guest_cores` is the
// core-equivalents its guests keep busy (their requests' CPU time per second), which
// becomes the utilization of the offered cores, cores × (1 − reserved). The agent's own
// CPU (heartbeats, serving datasets to other devices) is not in it: that is the
// device's main task, what the reserved share is for.
placement::ClusterView BuildPlacementView(
    const cluster::Topology* topology, const ClusterView& view,
    const std::map<std::string, double>& guest_cores,
    const std::map<std::string, std::vector<std::string>>& datasets);

// The profile of `svc`: hints first, measurements when there are any.
Result<placement::ServiceProfile> BuildProfile(const ServiceRecord& svc,
                                               const PlacementHints& hints,
                                               const placement::ClusterView& view,
                                               const std::optional<ServiceMeasurement>& m);

// The engine's decision for one more instance of `svc` under its policy.
Result<placement::Decision> Advise(const ServiceRecord& svc, const PlacementHints& hints,
                                   const placement::ClusterView& view,
                                   const std::optional<ServiceMeasurement>& m);

// The devices the decision ranks feasible, best first (what the planner uses).
std::vector<std::string> RankedDevices(const placement::Decision& d);

}  // namespace tern::controller
