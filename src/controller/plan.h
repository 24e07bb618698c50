// The controller's decisions as pure functions over a snapshot of the cluster, so they
// are unit-tested without agents, stores or clocks:
//   PlanReconcile  what to do to bring the running instances to the desired state
//                  (forget the instances of dead agents, start again those whose agent
//                  restarted, place missing replicas, stop extra ones);
//   ChooseDevice   the placement policy for now: spread a service's replicas over
//                  devices, then least loaded per unit of compute (cores × speed), within
//                  memory and the service's allowed devices. (The offload issue brings
//                  the cost model.)
//   LocationsOf    the location table the data plane routes by.
//   CheckMigrationTarget  whether an instance may move to a device (alive, not where it
//                  is, allowed, memory fits), with errors that name the device.
//   PlanRebalance  the rebalancer's decision: which running instance (if any) is worth
//                  moving now, off a device under sustained overload, off a device where
//                  it keeps missing its SLO to one predicted to meet it, or to a
//                  placement cheaper by more than a margin that pays for the move; a
//                  per-instance cool-down keeps decisions from flapping.
// Value types and stateless functions; thread-compatible.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "controller/model.h"
#include "core/status.h"
#include "dataplane/location.h"

namespace tern::controller {

struct PlacedInstance {
  InstanceRecord record;
  int64_t epoch = 0;  // the record's mod_revision
};

struct ClusterView {
  std::map</*device*/ std::string, AgentRecord> agents;  // live agents only
  std::map</*name*/ std::string, ServiceRecord> services;
  std::map</*id*/ std::string, PlacedInstance> instances;
  // (device, service) pairs where starting failed recently: not tried again for now.
  std::set<std::pair<std::string, std::string>> backoff;
  // Services placed by the placement engine (advisor.h): their devices, best first. The
  // planner takes the first that fits, preferring devices without a replica yet.
  std::map</*service*/ std::string, std::vector<std::string>> ranked;
  // Devices being drained (`tern drain`): they get no new placements.
  std::set<std::string> draining;
  // Instances an operation (a migration, a drain) is moving right now: the planner
  // neither starts, stops, forgets nor re-places them (they still count where they are).
  std::set<std::string> busy;
  // Instances about to be stopped because a replacement was started for them (a drain of
  // a stateless instance): they do not count towards their service's replicas.
  std::set<std::string> leaving;
  // The last checkpoint of each instance that has one.
  std::map</*instance*/ std::string, CheckpointRecord> checkpoints;
};

struct Action {
  enum class Kind {
    kForget,   // the instance's agent is gone (or its service): drop the record
    kStart,    // (re)start the placed instance on its device
    kCreate,   // place a new instance of `service` on `device` and start it
    kStop,     // stop the instance on its device and drop the record
    kRestore,  // re-place the instance (same id) on `device` and restore its checkpoint
  };
  Kind kind = Kind::kCreate;
  std::string instance;  // "" for kCreate (the executor names it)
  std::string service;
  std::string device;
  std::string reason;  // for logs

  bool operator==(const Action&) const = default;
};

struct Plan {
  std::vector<Action> actions;
  // Services that miss replicas no device can take, and why.
  std::map<std::string, std::string> unplaceable;
};

Plan PlanReconcile(const ClusterView& view);

// What each device runs (counting only instances that are not being forgotten).
struct DeviceUse {
  int instances = 0;
  std::map</*service*/ std::string, int> of_service;
  uint64_t memory_bytes = 0;
};
using UseMap = std::map</*device*/ std::string, DeviceUse>;

// The device for one more instance of `svc`, given the current use; kResourceExhausted
// (saying why for each device) when none fits.
Result<std::string> ChooseDevice(const ClusterView& view, const ServiceRecord& svc,
                                 const UseMap& use);

// What each live device runs now (every instance record on a live agent counts).
UseMap UseOf(const ClusterView& view);

// Whether instance `id` may be migrated to `device` now: FailedPrecondition /
// NotFound / ResourceExhausted with a message naming the instance and the device when not.
Status CheckMigrationTarget(const ClusterView& view, const std::string& id,
                            const std::string& device);

// The device the placement policy picks for instance `id` if it has to leave its device
// (a drain): like ChooseDevice for one more instance of its service, never its own device.
Result<std::string> ChooseMigrationTarget(const ClusterView& view, const std::string& id);

// What the agents' heartbeats say they run: per live device, the instance ids of its last
// heartbeat and of the one before.
struct Sightings {
  std::set<std::string> last;
  std::set<std::string> previous;
  bool two = false;            // both heartbeats were received (else not judged)
  int64_t previous_at_ns = 0;  // when the older of the two arrived (monotonic clock)
};

// Instances that run somewhere else than their record says, by the agents' own reports:
// a started, not busy instance that neither of its recorded device's last two heartbeats
// lists, and both of exactly one other live device's do — all four heartbeats received
// after `since_ns[id]` (when the controller first saw the record as it is: older reports
// may predate a move it recorded itself). That is a migration that completed while no
// controller followed it (the one that asked died). → instance → the device it runs on.
std::map<std::string, std::string> MovedInstances(
    const ClusterView& view, const std::map</*device*/ std::string, Sightings>& seen,
    const std::map</*instance*/ std::string, int64_t>& since_ns);

// ---- the rebalancer ----------------------------------------------------------------

struct RebalanceOptions {
  // A device is overloaded when its CPU utilization (0..1) was at least this in each of
  // its last `overload_samples` samples (one per heartbeat: the window).
  double overload_util = 0.85;
  int overload_samples = 5;
  // A target must be below overload_util - headroom (so the move does not overload it).
  double headroom = 0.25;
  // A cheaper placement is taken when it saves more than `margin` (a fraction of the
  // current cost) plus the migration's own cost, amortised (cost units).
  double margin = 0.2;
  double migration_cost = 0;
  // An instance violates its SLO when its measured p99 was above its service's target
  // in each of its last `slo_samples` samples (one per heartbeat interval in which it
  // served requests: the window).
  int slo_samples = 5;
  // An instance that moved is not moved again for this long.
  int64_t cooldown_ms = 30000;
};

struct RebalanceInput {
  // Per live device: its recent CPU utilization samples, oldest first.
  std::map</*device*/ std::string, std::vector<double>> util;
  // Per instance: requests/s (the busiest instance moves first off an overloaded device).
  std::map</*instance*/ std::string, double> rate;
  // Per instance, from the placement policy: the cost where it runs and the cheapest
  // other device with its cost (services placed by the engine only).
  struct Alternative {
    double current = 0;
    std::string device;
    double cost = 0;
  };
  std::map</*instance*/ std::string, Alternative> cheaper;
  // Per instance of a service with an SLO: the target p99 (µs); its measured p99 per
  // heartbeat interval in which it served requests (µs, oldest first, on the device it
  // runs on now); and the engine's predicted p99 for it on each device (µs, lowest
  // first; its own device may be among them and is skipped), with why it cannot take it
  // ("" = it fits).
  struct Predicted {
    std::string device;
    double p99_us = 0;
    std::string why_not;
  };
  struct Slo {
    double target_us = 0;
    std::vector<double> p99_us;
    std::vector<Predicted> predicted;
  };
  std::map</*instance*/ std::string, Slo> slo;
  // When each instance last moved (unix ms), and now.
  std::map</*instance*/ std::string, int64_t> last_moved_ms;
  int64_t now_ms = 0;
};

struct Move {
  std::string instance;
  std::string from;
  std::string to;
  std::string reason;

  bool operator==(const Move&) const = default;
};

// At most one move per call (the controller calls it once a round, and moves take a
// while): overload first (the most loaded device, its busiest movable instance, to the
// device ChooseMigrationTarget picks if that one has headroom), then an SLO violation
// (the worst violator, to the device with the lowest predicted p99 that meets the target,
// may take it and has headroom), then the largest saving. Busy, cooling-down and
// not-running instances never move. `stuck`, if given, gets the instances that violate
// their SLO but have no such device, with why.
std::optional<Move> PlanRebalance(const ClusterView& view, const RebalanceInput& in,
                                  const RebalanceOptions& options,
                                  std::map<std::string, std::string>* stuck = nullptr);

// The started instances of live agents, as the data plane's location entries.
std::vector<dataplane::InstanceLocation> LocationsOf(const ClusterView& view);

}  // namespace tern::controller
