// AgentClient: the client library for one agent — its HTTP/JSON admin API and its
// frame-protocol data plane. Used by the CLI, the integration tests and benchmarks.
//
// Errors: transport failures as the transport reports them (kUnavailable: is the agent
// running? kDeadlineExceeded), and the agent's own errors with their code and message.
// Ownership: owns its connections. Thread-safety: not thread-safe; one per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "transport/json_api.h"

namespace tern::transport {
class HttpClient;
class FrameClient;
}  // namespace tern::transport

namespace tern::client {

class AgentClient {
 public:
  // `admin` is "host:port" of the agent's HTTP admin API. Connects now.
  static Result<std::unique_ptr<AgentClient>> Connect(const std::string& admin,
                                                      std::chrono::milliseconds timeout);
  ~AgentClient();
  AgentClient(const AgentClient&) = delete;
  AgentClient& operator=(const AgentClient&) = delete;

  // The JSON documents of GET /v1/info and GET /v1/status.
  Result<std::string> Info();
  Result<std::string> StatusJson();
  // The location table: GET it; PUT (replace = true) or POST (upsert) a
  // {"locations": [...]} document; PUT emulated links [{"a","b","latency","bandwidth"}].
  Result<std::string> Locations();
  Result<std::string> SetLocations(const std::string& json, bool replace);
  Result<std::string> SetLinks(const std::string& json);
  // PUT /v1/dataset-locations: {"datasets": [{"dataset", "agent", "host", "tcp", "shm"}]}.
  Result<std::string> SetDatasetLocations(const std::string& json);
  // Deploys; returns the service JSON (module hash, instances).
  Result<std::string> Deploy(const std::string& manifest_yaml, const std::string& module_bytes,
                             bool start_instances);
  Status Undeploy(const std::string& service);
  // Starts an instance (named `id`, or by the agent if ""); returns its id.
  Result<std::string> StartInstance(const std::string& service, const std::string& id = "");
  Status StopInstance(const std::string& instance);
  // The snapshot file bytes (docs/formats/snapshot.md).
  Result<std::string> Snapshot(const std::string& instance);
  Status Restore(const std::string& instance, const std::string& snapshot_bytes);

  // Durable instances (docs/design/migration.md): PUT the keepers of an instance's
  // journal ({device, tcp} each, 1 or 2); take a base checkpoint (a full journal record
  // on each keeper; returns its JSON report: seq, bytes, keepers, failed); on a keeper,
  // read an instance's journal after a sequence number and drop it; on the restoring
  // agent, apply records on top of the base at `base_seq` (returns the JSON report:
  // records, seq, ignored_bytes).
  Status SetKeepers(const std::string& instance,
                    const std::vector<std::pair<std::string, std::string>>& keepers);
  Status SetKeeper(const std::string& instance, const std::string& device, const std::string& tcp) {
    return SetKeepers(instance, {{device, tcp}});
  }
  Result<std::string> JournalCheckpoint(const std::string& instance);
  Result<std::string> ReadJournal(const std::string& instance, uint64_t after);
  Status DropJournal(const std::string& instance);
  Result<std::string> ReplayJournal(const std::string& instance, uint64_t base_seq,
                                    const std::string& records);

  // Datasets kept by this agent (a storage device's): objects are put, listed, read and
  // removed through the admin API (/v1/datasets/...).
  Status PutObject(const std::string& dataset, const std::string& key, const std::string& bytes);
  Result<std::string> Datasets();                            // JSON: every dataset
  Result<std::string> ListDataset(const std::string& dataset);  // JSON: its objects
  Result<std::string> ReadObject(const std::string& dataset, const std::string& key,
                                 uint64_t offset, uint64_t len);
  // Removes one object, or the whole dataset when `key` is "".
  Status RemoveObject(const std::string& dataset, const std::string& key);

  // Invokes over the frame protocol (connects to the agent's frame port on first use).
  // `ids` go into the frame: a trace id of 0 lets the agent start a trace of its own
  // (the caller then does not learn it); an idempotency key of 0 is none.
  Result<std::string> Invoke(const std::string& service, const std::string& handler,
                             const std::string& payload,
                             std::chrono::milliseconds timeout = std::chrono::seconds(30),
                             const transport::CallIds& ids = {});
  // The frame client, for pipelined use (benchmarks); connects on first use.
  Result<transport::FrameClient*> Frames();

 private:
  AgentClient(std::string host, std::unique_ptr<transport::HttpClient> http,
              std::chrono::milliseconds timeout);
  // Sends an admin request; non-2xx answers become the Status they carry.
  Result<std::string> Admin(const std::string& method, const std::string& target,
                            const std::string& body, const std::string& content_type);

  std::string host_;
  std::unique_ptr<transport::HttpClient> http_;
  std::unique_ptr<transport::FrameClient> frames_;
  std::chrono::milliseconds timeout_;
};

}  // namespace tern::client
