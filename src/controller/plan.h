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
// Value types and stateless functions; thread-compatible.
#pragma once

#include <cstdint>
#include <map>
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
};

struct Action {
  enum class Kind {
    kForget,  // the instance's agent is gone (or its service): drop the record
    kStart,   // (re)start the placed instance on its device
    kCreate,  // place a new instance of `service` on `device` and start it
    kStop,    // stop the instance on its device and drop the record
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

// The started instances of live agents, as the data plane's location entries.
std::vector<dataplane::InstanceLocation> LocationsOf(const ClusterView& view);

}  // namespace tern::controller
