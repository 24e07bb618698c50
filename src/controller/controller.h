// Controller: the cluster's brain. Agents register with it and heartbeat (their
// liveness is a store lease, so a dead agent's record vanishes by itself); it keeps the
// desired state (services, replicas) and the placements in a ClusterStore, reconciles
// the two (plan.h) by driving the agents' admin APIs, derives the location table and
// pushes it to every agent (PUT /v1/locations) and to gateways (long-polled
// GET /v1/locations), and serves the HTTP/JSON API the CLI uses.
//
// Several controllers may share one store (etcd): they elect a leader (store lease +
// compare-and-put on /tern/election/leader); only the leader reconciles and accepts
// deploys, the others answer 503 naming the leader. Heartbeats and reads work on all.
//
// HTTP API (JSON; errors are transport/json_api.h documents):
//   GET    / (and /dashboard)            the web dashboard (dashboard.h): one HTML page
//   GET    /v1/info                      id, leader, store, version
//   POST   /v1/agents                    register: AgentRecord → {"lease","ttl_ms","heartbeat_ms"}
//   POST   /v1/agents/{device}/heartbeat {"lease", "boot", telemetry} (404: register again)
//   GET    /v1/agents                    agents with their telemetry
//   POST   /v1/services                  {"manifest", "module_b64", "replicas"?, "devices"?}
//                                        → placed instances (waits for one reconcile round)
//   GET    /v1/services                  services with their instances
//   DELETE /v1/services/{name}
//   GET    /v1/cluster                   everything `tern ps` shows, plus recent events
//   GET    /v1/locations?after=V&wait_ms=N   {"version", "locations"}: answers when the
//                                        version is > V, or after wait_ms (long poll)
//   GET    /v1/topology                  the topology it was started with (JSON), if any
//   GET    /v1/services/{name}/explain   the placement engine's decision for one more
//                                        instance: every candidate and its predicted cost
//   POST   /v1/instances/{id}/migrate    {"to": DEVICE, "mode"?, "max_rounds"?,
//                                        "freeze_timeout_ms"?} → the source agent's
//                                        migration report plus "from", "to", "epoch"
//   POST   /v1/devices/{device}/drain    no new placements on it; moves its instances
//                                        (202; progress: GET, the same path)
//   DELETE /v1/devices/{device}/drain    undrain: it takes placements again
//
// Checkpoints: instances of services whose manifest sets `checkpoint_ms` are snapshotted
// that often (a checkpointer thread) onto a storage device's dataset kCheckpointDataset;
// an instance that must start again (its agent died or restarted) gets its last
// checkpoint restored before its location is published. See docs/design/migration.md.
//
// Ownership: borrows the ClusterStore (must outlive it). Thread-safety: Start and the
// destructor from one thread; everything else is internal (an HTTP loop thread, a task
// thread for API work that blocks, an ops thread for migrations and drains, a reconcile
// thread, a checkpointer thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "controller/plan.h"
#include "core/status.h"

namespace tern::store {
class ClusterStore;
}
namespace tern::cluster {
struct Topology;
}

namespace tern::controller {

struct ControllerOptions {
  std::string id = "controller";  // unique among controllers sharing a store
  std::string host = "127.0.0.1";
  uint16_t port = 7300;           // 0 = any free port
  // An agent that misses heartbeats for this long is dead (its lease TTL).
  std::chrono::milliseconds agent_ttl{3000};
  // How often agents are asked to heartbeat.
  std::chrono::milliseconds heartbeat{1000};
  // Reconcile at least this often (and at once on every change).
  std::chrono::milliseconds reconcile_interval{1000};
  // After a failed start on a device, don't place the service there for this long.
  std::chrono::milliseconds start_backoff{5000};
  // TTL of this controller's leadership lease (when several controllers share a store).
  std::chrono::milliseconds leader_ttl{2000};
  // The topology JSON (cluster/topology.h TopologyToJson) to serve and whose host links
  // to push to agents as emulated links; "" = none.
  std::string topology_json;
  // Emulated links to push to every agent (PUT /v1/links: [{"a","b","latency",
  // "bandwidth"}]); "" = none.
  std::string links_json;
  // The topology (power models, reserved shares, datasets, links) the placement engine
  // prices placements with; null = only what agents register.
  std::shared_ptr<const cluster::Topology> topology;
  // The rebalancer (plan.h PlanRebalance): off by default. When on, each reconcile round
  // may start one move (a migration, or a replacement for stateless instances).
  bool rebalance = false;
  RebalanceOptions rebalance_options;
};

class Controller {
 public:
  static Result<std::unique_ptr<Controller>> Start(store::ClusterStore* store,
                                                   const ControllerOptions& options);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  uint16_t port() const;
  bool is_leader() const;

 private:
  struct Impl;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::controller
