// EtcdStore: the ClusterStore (store.h) on etcd v3 (3.4, Debian's etcd-server),
// spoken through etcd's JSON gRPC gateway over plain HTTP/1.1 on the client port:
// POST /v3/kv/{put,range,deleterange,txn}, /v3/lease/{grant,keepalive,revoke} and a
// streaming POST /v3/watch per watch. Keys and values travel base64-encoded; int64
// fields come back as JSON strings.
//
// Leases: etcd TTLs are whole seconds, so GrantLease rounds the TTL up to the next
// second (at least 1 s). etcd also enforces a minimum TTL of
// ceil(1.5 * election-timeout) (2 s with the default 1000 ms election timeout; 1 s
// with --election-timeout 500 or less) and silently grants that instead. Expiry is
// checked by etcd's lessor about every 500 ms, so keys vanish up to ~0.5 s after the
// TTL. After an etcd restart every lease gets its full TTL again (as EmbeddedStore).
//
// Watches: each watch has a thread reading its own HTTP stream. A dropped stream is
// reopened from the last revision delivered, so no event is lost or repeated; if etcd
// stays unreachable for `watch_unavailable_timeout`, the watch ends with kUnavailable.
// A start revision etcd has compacted away ends it with kOutOfRange (WatchPrefix
// returns that error directly when it can tell up front). after_revision 0 = from now.
// Batches are etcd's watch responses (one or more revisions each, in order).
//
// Errors: connection refused/reset -> kUnavailable; etcd's gRPC codes map one to one
// (tern's codes are gRPC's): lease not found -> kNotFound, compacted -> kOutOfRange,
// a put repeated or overlapping a delete in one Apply -> kInvalidArgument.
//
// Ownership: the caller owns the store; Watch handles must be destroyed before it.
// Thread-safety: every method may be called from any thread; requests use a small
// mutex-guarded pool of HTTP connections (one per concurrent caller).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"
#include "store/store.h"

namespace tern::transport {
class HttpClient;
}

namespace tern::store {

struct EtcdStoreOptions {
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds request_timeout{5000};
  // How long a watch keeps reconnecting before it ends with kUnavailable.
  std::chrono::milliseconds watch_unavailable_timeout{10000};
  // Idle connections kept for reuse; more callers at once open more connections.
  size_t max_idle_connections = 4;
};

class EtcdStore final : public ClusterStore {
 public:
  // `endpoint` is "host:port" of etcd's client URL (e.g. "127.0.0.1:2379"). Makes one
  // request, so an unreachable etcd is kUnavailable here.
  static Result<std::unique_ptr<EtcdStore>> Connect(const std::string& endpoint,
                                                    const EtcdStoreOptions& options = {});
  ~EtcdStore() override;
  EtcdStore(const EtcdStore&) = delete;
  EtcdStore& operator=(const EtcdStore&) = delete;

  std::string Describe() const override;
  Result<int64_t> Put(std::string_view key, std::string_view value, LeaseId lease = 0) override;
  Result<std::optional<KeyValue>> Get(std::string_view key) override;
  Result<RangeResult> Range(std::string_view prefix) override;
  Result<int64_t> Delete(std::string_view key) override;
  Result<ApplyResult> Apply(const std::vector<Compare>& compares,
                            const std::vector<Op>& ops) override;
  // Rounds up to whole seconds (>= 1 s); see the header comment for etcd's minimum.
  Result<LeaseId> GrantLease(std::chrono::milliseconds ttl) override;
  Status KeepAlive(LeaseId lease) override;
  Status Revoke(LeaseId lease) override;
  Result<std::unique_ptr<Watch>> WatchPrefix(std::string_view prefix, int64_t after_revision,
                                             WatchCallback callback) override;

  // Compacts etcd's history up to `revision` (tests of the compacted-watch path).
  Status CompactForTest(int64_t revision);

  // One JSON request to the gateway: the parsed response body as text, or the mapped
  // error. Public for tests and tools; `path` like "/v3/kv/range".
  Result<std::string> Call(const std::string& path, const std::string& json_body);

 private:
  class EtcdWatch;
  EtcdStore(std::string host, uint16_t port, const EtcdStoreOptions& options);

  const std::string host_;
  const uint16_t port_;
  const EtcdStoreOptions options_;
  Mutex mu_;
  std::vector<std::unique_ptr<transport::HttpClient>> idle_ GUARDED_BY(mu_);
};

// The exclusive end of the key range holding every key that starts with `prefix`
// ("" and all-0xff prefixes: "\0", etcd's "to the end").
std::string PrefixRangeEnd(std::string_view prefix);

}  // namespace tern::store
