// ClusterStore: where the controller keeps the cluster's state — a small, etcd-shaped
// key-value store with revisions, leases and watches. Two real backends:
//
//   EmbeddedStore (embedded_store.h)  in-process, persisted to a file (a log of
//                                     mutations, compacted), so a restarted controller
//                                     recovers; the default for one machine.
//   EtcdStore (etcd_store.h)          etcd v3 (Debian's etcd-server) through its JSON
//                                     gateway; several controllers share it.
//
// The model is etcd's, so both backends behave the same:
//   - keys and values are byte strings; keys are ordered bytewise;
//   - every mutation (a Put, a Delete, or an atomic Apply of several) gets the next
//     store revision; a key's mod_revision is the revision that last wrote it, and
//     create_revision the one that created it (both > 0);
//   - a lease has a TTL; keys put with a lease are deleted when it expires (no
//     KeepAlive within the TTL) or is revoked, and watchers see those deletes;
//   - a watch delivers, in revision order and without gaps, every event on keys under a
//     prefix after a given revision.
// Leader election (election.h) is built on these primitives, identically for both.
//
// Ownership: the caller owns the store; Watch handles must be destroyed before it.
// Thread-safety: every method may be called from any thread. Watch callbacks run on a
// thread of the store's, one at a time per watch; they may call the store, but must
// not destroy their own Watch handle.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::store {

using LeaseId = int64_t;  // 0 = no lease

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  LeaseId lease = 0;

  bool operator==(const KeyValue&) const = default;
};

struct RangeResult {
  std::vector<KeyValue> kvs;  // sorted by key
  int64_t revision = 0;       // the store's revision when read
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // for kDelete: the key, and mod_revision = the deleting revision
};

// One operation of an atomic Apply.
struct Op {
  enum class Type { kPut, kDelete, kDeletePrefix };
  Type type = Type::kPut;
  std::string key;  // the key, or the prefix for kDeletePrefix
  std::string value;
  LeaseId lease = 0;

  static Op Put(std::string key, std::string value, LeaseId lease = 0) {
    return Op{Type::kPut, std::move(key), std::move(value), lease};
  }
  static Op Delete(std::string key) { return Op{Type::kDelete, std::move(key), {}, 0}; }
  static Op DeletePrefix(std::string prefix) {
    return Op{Type::kDeletePrefix, std::move(prefix), {}, 0};
  }
};

// A condition of an atomic Apply on one key's mod_revision: 0 = the key must not exist.
struct Compare {
  std::string key;
  int64_t mod_revision = 0;
};

// Cancels its watch when destroyed; no callback runs after the destructor returns.
class Watch {
 public:
  virtual ~Watch() = default;
};

// Called with each batch of events (never empty). An error (the watch could not go
// on, e.g. the revision was compacted away or etcd is gone for good) ends the watch:
// the callback gets it once, with no events, and is not called again.
using WatchCallback = std::function<void(const Status& status, std::vector<WatchEvent> events)>;

class ClusterStore {
 public:
  virtual ~ClusterStore() = default;

  // "embedded" or "etcd", and where it lives (a file, the endpoint), for logs and
  // `tern ps`.
  virtual std::string Describe() const = 0;

  // Writes one key; returns the new revision. `lease` must be live (kNotFound if not).
  virtual Result<int64_t> Put(std::string_view key, std::string_view value,
                              LeaseId lease = 0) = 0;
  // The key's current value, or nullopt.
  virtual Result<std::optional<KeyValue>> Get(std::string_view key) = 0;
  // Every key starting with `prefix` ("" = all), sorted, with the revision read at.
  virtual Result<RangeResult> Range(std::string_view prefix) = 0;
  // Deletes one key; returns how many were deleted (0 or 1).
  virtual Result<int64_t> Delete(std::string_view key) = 0;
  // All of `ops` at one revision if every `compares` holds; else nothing. Returns
  // whether it applied, and the revision (the new one, or the current one if not).
  struct ApplyResult {
    bool applied = false;
    int64_t revision = 0;
  };
  virtual Result<ApplyResult> Apply(const std::vector<Compare>& compares,
                                    const std::vector<Op>& ops) = 0;

  // Leases. TTLs are whole seconds in etcd; both backends round up to 1 s granularity
  // only where they must (see the backend headers) and report the granted TTL.
  virtual Result<LeaseId> GrantLease(std::chrono::milliseconds ttl) = 0;
  // Resets the lease's countdown; kNotFound if it expired or was revoked.
  virtual Status KeepAlive(LeaseId lease) = 0;
  // Deletes the lease and its keys. Revoking an unknown lease is kNotFound.
  virtual Status Revoke(LeaseId lease) = 0;

  // Watches keys under `prefix` for events with revision > `after_revision` (pass the
  // revision of a Range to see everything after it). The first callback may come
  // before this returns.
  virtual Result<std::unique_ptr<Watch>> WatchPrefix(std::string_view prefix,
                                                     int64_t after_revision,
                                                     WatchCallback callback) = 0;
};

}  // namespace tern::store
