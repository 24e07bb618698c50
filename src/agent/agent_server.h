// AgentServer: the network front of an Agent — the data-plane frame server (TCP) and
// the HTTP/JSON admin API, both on one event-loop thread, plus one admin thread for
// operations that block (deploy compiles, snapshots wait for a request boundary), so
// the I/O loop never waits on a guest.
//
// TCP frame connections are served one of two ways (AgentServerOptions::tcp_serving):
//   worker  the I/O thread only accepts; each connection goes to an agent worker
//           (Agent::AdoptTcpConnection), which reads, runs and answers it in its own
//           loop, as it does for shared-memory connections: no thread hop. Default.
//   loop    the I/O thread reads and writes every connection (transport::FrameServer)
//           and queues each invoke to a worker: I/O thread → worker → I/O thread.
//
// HTTP API (JSON unless noted; errors are {"error": {"code", "code_number", "message"}}):
//   GET    /v1/info                          device, ports, ABI and tern versions,
//                                            call counters, frame connection counters
//   GET    /v1/status                        services, instances, counters
//   POST   /v1/services                      {"manifest": "<yaml>", "module_b64": "..."}
//   DELETE /v1/services/{name}
//   POST   /v1/services/{name}/instances     start one more instance; optional body
//                                            {"id": "..."} names it
//   DELETE /v1/instances/{id}                stop it
//   GET    /v1/instances/{id}/snapshot       the snapshot file (application/octet-stream;
//                                            X-Tern-Journal-Seq: the last journal record
//                                            it includes, durable instances)
//   PUT    /v1/instances/{id}/snapshot       restore from a snapshot file in the body
//   PUT    /v1/instances/{id}/keeper         durable: {"device", "tcp"} keeps its journal
//   POST   /v1/instances/{id}/checkpoint     durable: a base checkpoint (a full journal
//                                            record) -> {"seq", "bytes", "keeper"}
//   POST   /v1/instances/{id}/journal?base=N durable: apply journal records (the body) on
//                                            top of the base checkpoint at record N
//   GET    /v1/journals                      journals this device keeps, and counters
//   GET    /v1/journals/{id}?after=N         the records that restore {id} on top of the
//                                            base checkpoint at N (octet-stream)
//   POST   /v1/journals/{id}/base            {"seq": N}: a base checkpoint covers up to N
//   DELETE /v1/journals/{id}                 forget it
//   POST   /v1/invoke/{service}/{handler}    body = request payload; 200 body = reply
//                                            (?instance=ID picks an instance)
//   GET    /v1/locations                     the location table (other agents' instances)
//   PUT    /v1/locations                     replace it: [{"instance", "service", "agent",
//                                            "host", "tcp", "shm", "epoch"}, ...]
//   POST   /v1/locations                     upsert entries (older epochs are ignored)
//   PUT    /v1/links                         emulated links [{"a", "b", "latency",
//                                            "bandwidth"}] (user-space delay on TCP)
//   GET    /v1/datasets                      this device's datasets (objects, bytes, reads)
//   GET    /v1/datasets/{ds}                 its objects; DELETE removes the dataset
//   PUT    /v1/datasets/{ds}/{key}           store an object (body = bytes; fsync'd)
//   GET    /v1/datasets/{ds}/{key}           read it (?offset=&len=); DELETE removes it
//   GET|PUT /v1/dataset-locations            where other devices' datasets are:
//                                            {"datasets": [{"dataset", "agent", "host",
//                                            "tcp", "shm"}]} (the controller pushes it)
// Frames: kInvoke → kReply / kError with the same request id; kPing → kPong; an
// invoke with a non-zero epoch for a service that is not here → kMoved. The same
// frames arrive over shared memory (shm_path), served by the agent's workers.
//
// Ownership: borrows the Agent (must outlive the server). Thread-safety: Start and the
// destructor from one thread; the rest is internal.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "agent/agent.h"
#include "core/status.h"

namespace tern::agent {

// Who reads and writes TCP frame connections (see the top of this file).
enum class TcpServing { kWorker, kLoop };
std::string_view TcpServingName(TcpServing s);
// "worker" or "loop"; kInvalidArgument naming the choices otherwise.
Result<TcpServing> ParseTcpServing(std::string_view s);

struct AgentServerOptions {
  std::string host = "127.0.0.1";
  uint16_t frame_port = 7400;  // 0 = any free port
  uint16_t admin_port = 7401;  // 0 = any free port
  // Unix socket of the shared-memory listener for agents on the same host; "" = none.
  std::string shm_path;
  // The I/O thread polls for this long after handling events before blocking: replies
  // from workers then leave without a cross-vCPU wake-up (~35 µs here). 0 = never.
  uint32_t io_busy_poll_us = 100;
  TcpServing tcp_serving = TcpServing::kWorker;
  // Limits of each TCP frame connection (output buffering, stalled peers, payloads).
  TcpConnLimits tcp_limits;
  // Connections beyond this are sent a kResourceExhausted kError frame and closed.
  size_t max_frame_connections = 4096;
};

class AgentServer {
 public:
  static Result<std::unique_ptr<AgentServer>> Start(Agent* agent,
                                                    const AgentServerOptions& options);
  ~AgentServer();
  AgentServer(const AgentServer&) = delete;
  AgentServer& operator=(const AgentServer&) = delete;

  uint16_t frame_port() const;
  uint16_t admin_port() const;

 private:
  struct Impl;
  explicit AgentServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::agent
