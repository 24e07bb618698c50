// Gateway: the HTTP ingress of a tern cluster. Clients POST
// /v1/invoke/{service}/{handler}; the gateway picks an instance of the service from its
// location table (locality first, then the power of two choices by outstanding
// requests), forwards the body as a kInvoke frame to that instance's agent over a
// pooled, pipelined TCP connection, and answers with the reply (200) or the error the
// agent returned (its HTTP status + a JSON body). kMoved answers and connections that
// cannot be established are retried on another instance (at most `max_attempts`
// tries); a connection that breaks after the request was sent is answered with 503 and
// not retried, since invocations are not idempotent. See docs/design/gateway.md.
//
// Threading: `threads` I/O threads, each with its own EventLoop, its own HTTP listener
// on the shared port (SO_REUSEPORT) and its own agent connections; a request is
// served start to end on the thread that accepted it, so per-request state needs no
// locks. The location table is shared (dataplane::LocationTable is thread-safe); each
// thread caches lookups per table version. With `controller` set, one more thread
// long-polls the controller with the blocking HttpClient.
//
// Ownership: Gateway owns its threads, servers and connections; the destructor stops
// everything (answering requests still in flight with 503).
// Thread-safety: all public methods may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"
#include "dataplane/location.h"

namespace tern::gateway {

struct GatewayOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 8080;  // 0 = any free port; see Gateway::port()
  // The host this gateway runs on: instances whose `host` matches are preferred while
  // one of them is not overloaded. "" = no locality preference.
  std::string host_id;
  // Requests in flight across the gateway; beyond it, 503 + Retry-After at once.
  size_t max_inflight = 1024;
  int threads = 1;
  // A local instance with this many outstanding requests (on one I/O thread) is
  // overloaded: remote instances are considered too.
  uint32_t local_max_outstanding = 32;
  // Budget of a request without X-Tern-Timeout-Ms.
  std::chrono::milliseconds default_timeout{30000};
  // Tries per request (the first one included) over kMoved answers and connection
  // failures.
  int max_attempts = 3;
  // Bound on establishing an agent connection.
  std::chrono::milliseconds connect_timeout{2000};
  // Reconnect backoff after a failed connect: first delay, doubling up to the max.
  // While an agent is in backoff, requests go to other instances.
  std::chrono::milliseconds reconnect_backoff{50};
  std::chrono::milliseconds reconnect_backoff_max{2000};

  // Location source: "host:port" of the controller to long-poll ("" = none; then
  // SetLocations() is the only source, e.g. from a --locations file).
  std::string controller;
  // How long one long-poll may wait at the controller. It also bounds how long the
  // destructor waits for the polling thread.
  std::chrono::milliseconds controller_wait{1000};
};

// Counters since start. A value type (a snapshot).
struct GatewayStats {
  uint64_t requests = 0;  // invoke requests received
  uint64_t status_2xx = 0, status_4xx = 0, status_5xx = 0;
  uint64_t retries = 0;               // extra attempts (moved or connection failures)
  uint64_t moved = 0;                 // kMoved answers
  uint64_t rejected_saturation = 0;   // 503 for --max-inflight
  uint64_t in_flight = 0;             // invoke requests being served now
  uint64_t upstream_connections = 0;  // open agent connections (all threads)
  uint64_t locations_version = 0;     // the version given to SetLocations
  size_t locations = 0;               // entries in the table
  // Of the recent (up to 1024) completed invoke requests; 0 if none.
  double latency_p50_ms = 0, latency_p99_ms = 0;
};

class Gateway {
 public:
  // Starts the I/O threads and listeners (and the controller poller). Errors:
  // kInvalidArgument (bad options), or the listener's error (port in use, ...).
  static Result<std::unique_ptr<Gateway>> Start(const GatewayOptions& options);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // The bound HTTP port.
  uint16_t port() const { return port_; }

  // Replaces the location table with `all`; `version` is the source's version (shown
  // in /v1/info and stats). Any thread.
  void SetLocations(std::vector<dataplane::InstanceLocation> all, uint64_t version);
  uint64_t locations_version() const { return locations_version_.load(); }

  GatewayStats stats() const;
  // The JSON document of GET /v1/info.
  std::string InfoJson() const;

  struct Shared;  // state shared by the I/O threads (gateway.cc)
  class Worker;   // one I/O thread (gateway.cc)

 private:
  explicit Gateway(const GatewayOptions& options);
  // The controller poller's thread body: long-polls until the destructor stops it.
  void PollController(const std::string& host, uint16_t port);

  const GatewayOptions options_;
  std::unique_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
  uint16_t port_ = 0;
  std::atomic<uint64_t> locations_version_{0};

  // The controller poller.
  Mutex poll_mu_;
  CondVar poll_cv_;
  bool stopping_ GUARDED_BY(poll_mu_) = false;
  std::thread poller_;
};

// What the controller's GET /v1/locations answers:
// {"version": V, "locations": [...InstanceLocation JSON, as dataplane::LocationsToJson...]}.
struct LocationsSnapshot {
  uint64_t version = 0;
  std::vector<dataplane::InstanceLocation> locations;
};
// Parses that document; kInvalidArgument naming what is wrong (entries are checked as
// dataplane::ParseLocationsJson does).
Result<LocationsSnapshot> ParseLocationsReply(std::string_view text);

// The JSON error body shared with the agent's API:
// {"error":{"code":"not_found","code_number":5,"message":"..."}}.
std::string ErrorJson(const Status& s);

}  // namespace tern::gateway
