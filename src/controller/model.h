// The controller's records and how they are kept in the ClusterStore (store/store.h).
//
// Keys (all under /tern/):
//   /tern/agents/<device>       AgentRecord, put with the agent's lease: it vanishes when
//                               the agent stops heartbeating (that is how death is seen)
//   /tern/services/<name>       ServiceRecord: the desired state (manifest, replicas)
//   /tern/modules/<sha256>      the wasm module's bytes
//   /tern/instances/<id>        InstanceRecord: where an instance is placed; the key's
//                               mod_revision is the instance's routing epoch, so every
//                               (re)start bumps it
//   /tern/seq/<service>         the last instance number handed out for the service
//   /tern/election/...          leader election among controllers (store/election.h)
//   /tern/topology              the topology the cluster was started from (JSON), if any
//   /tern/drained/<device>      the device takes no new placements (`tern drain`)
//   /tern/checkpoints/<id>      CheckpointRecord: where the instance's last checkpoint is
//                               kept (an object of a storage device's dataset) and when
//                               it was taken
//
// Value types; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::controller {

inline constexpr std::string_view kAgentsPrefix = "/tern/agents/";
inline constexpr std::string_view kServicesPrefix = "/tern/services/";
inline constexpr std::string_view kModulesPrefix = "/tern/modules/";
inline constexpr std::string_view kInstancesPrefix = "/tern/instances/";
inline constexpr std::string_view kSeqPrefix = "/tern/seq/";
inline constexpr std::string_view kElectionPrefix = "/tern/election";
inline constexpr std::string_view kTopologyKey = "/tern/topology";
inline constexpr std::string_view kDrainedPrefix = "/tern/drained/";
inline constexpr std::string_view kCheckpointsPrefix = "/tern/checkpoints/";
// A keeper that dropped out of a durable instance's journal, as its agent reported
// before acknowledging a reply without it: <prefix><instance>/<keeper> =
// {"seq": the first record it may lack, "kept_by": [...], "agent", "why", "unix_ms"}.
inline constexpr std::string_view kJournalOutPrefix = "/tern/journal-out/";
// The dataset checkpoints are kept in, on the storage device's agent; one object per
// instance, named by the instance id.
inline constexpr std::string_view kCheckpointDataset = "tern.checkpoints";

// A device agent, as it registered.
struct AgentRecord {
  std::string device;  // unique name, e.g. "csd0"
  std::string host;    // emulated or real host
  std::string kind = "cpu";
  std::string boot;    // random per agent process: a new boot = a restarted agent
  std::string admin;   // "ip:port" of its HTTP admin API
  std::string tcp;     // "ip:port" of its frame server
  std::string shm;     // its shared-memory listener ("" = none)
  double cores = 1;
  double speed = 1;
  uint64_t memory_bytes = 1ull << 30;
  int64_t registered_unix_ms = 0;

  bool operator==(const AgentRecord&) const = default;
};

// A service the cluster should run.
struct ServiceRecord {
  std::string name;
  std::string manifest_yaml;
  std::string module_hash;  // sha256 hex of the module
  int replicas = 1;
  // Devices it may run on ("" entries never); empty = any device.
  std::vector<std::string> devices;
  uint64_t memory_bytes = 0;  // the manifest's memory cap: what one instance may take
  int64_t created_unix_ms = 0;
  std::string placement;  // placement hints (advisor.h PlacementHints, JSON); "" = spread
  bool stateful = false;  // the manifest's `stateful`
  int64_t checkpoint_ms = 0;  // the manifest's `checkpoint_ms`: snapshot period, 0 = none
  bool durable = false;       // the manifest's `durable`: a journal on the checkpoint keeper
  // `durable: strict`: never acknowledged with fewer keepers than assigned, so a keeper
  // that dropped out misses no acknowledged request (what a restore from it reports).
  bool durable_strict = false;
  int64_t slo_p99_us = 0;     // the manifest's `slo_p99_ms` in µs, 0 = none

  bool operator==(const ServiceRecord&) const = default;
};

// One instance's placement.
struct InstanceRecord {
  std::string id;
  std::string service;
  std::string device;
  // The agent boot it was started on; "" = placed, not started yet. An instance whose
  // agent has a different boot now must be started again there.
  std::string boot;
  std::string module_hash;

  bool operator==(const InstanceRecord&) const = default;
};

// An instance's last checkpoint: its snapshot (wasm/snapshot.h bytes), kept as object
// `id` of dataset kCheckpointDataset by the agents of up to two devices (`copies`), so
// that it outlives the death of one keeper together with the instance's own device.
struct CheckpointRecord {
  std::string id;  // the instance
  std::string service;
  // The newest copy (copies[0]): its keeper, when it was taken, its size.
  std::string device;
  std::string source;   // the device the instance ran on when it was taken
  int64_t unix_ms = 0;
  uint64_t bytes = 0;
  // Every kept copy, the newest first, on distinct devices. A copy may be older than the
  // newest when writing the last one to its keeper failed. JSON "copies": [{"device",
  // "unix_ms", "bytes"}]; a record without it (written before copies were kept twice) has
  // the one copy of device / unix_ms / bytes.
  struct Copy {
    std::string device;
    int64_t unix_ms = 0;
    uint64_t bytes = 0;
    bool operator==(const Copy&) const = default;
  };
  std::vector<Copy> copies;
  // Durable instances: the checkpoint is a full record of the instance's journal on
  // `device`, its one keeper (not a snapshot object), with this sequence number.
  bool durable = false;
  uint64_t journal_seq = 0;

  bool operator==(const CheckpointRecord&) const = default;
};

std::string ToJson(const AgentRecord& r);
std::string ToJson(const CheckpointRecord& r);
std::string ToJson(const ServiceRecord& r);
std::string ToJson(const InstanceRecord& r);
// Parse the JSON above; errors name `what` (a key) and the bad field.
Result<AgentRecord> AgentFromJson(std::string_view json, std::string_view what);
Result<ServiceRecord> ServiceFromJson(std::string_view json, std::string_view what);
Result<InstanceRecord> InstanceFromJson(std::string_view json, std::string_view what);
Result<CheckpointRecord> CheckpointFromJson(std::string_view json, std::string_view what);

// The last path element of a key ("/tern/agents/csd0" -> "csd0").
std::string_view KeyName(std::string_view key);

}  // namespace tern::controller
