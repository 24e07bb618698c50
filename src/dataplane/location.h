// The location table: which instances of which service run where, and how to reach
// the agent that runs them. The data plane resolves every call through it
// (service -> instances -> agent, host, tcp/shm address), and the picker
// (dataplane/picker.h) chooses one instance and a transport tier from the result.
//
// Entries carry an epoch that is bumped every time an instance moves or restarts, so
// updates arriving out of order from several writers (controller pushes, `Moved`
// redirects, a file) settle on the newest one.
//
// The file format (YAML; the admin API uses the same shape in JSON):
//
//   locations:
//     - instance: counter-1          # required, a name ([a-z0-9._-])
//       service: counter             # required
//       agent: host1-cpu0            # required: the agent's device name
//       host: host1                  # default: the agent name
//       tcp: 127.0.0.1:7400          # frame address of the agent
//       shm: /run/tern/host1-cpu0.sock   # the agent's shared-memory listener
//       epoch: 3                     # default 1, >= 1
//
// At least one of tcp/shm is required, except for instances of the local agent (the
// parser's `local_agent`), which are reached in-process.
//
// Ownership: InstanceLocation is a value type. LocationTable owns copies of its entries
// and hands out copies.
// Thread-safety: LocationTable is safe to use from any thread; the parse functions are
// stateless.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"

namespace tern::dataplane {

struct InstanceLocation {
  std::string instance;  // "counter-1"
  std::string service;   // "counter"
  std::string agent;     // the agent's id (its device name), e.g. "host1-cpu0"
  std::string host;      // emulated or real host name, e.g. "host1"
  std::string tcp;       // "127.0.0.1:7400", frame address of that agent ("" = none)
  std::string shm;       // Unix socket path of that agent's shm listener ("" = none)
  uint64_t epoch = 1;    // bumped every time the instance moves or restarts

  bool operator==(const InstanceLocation&) const = default;
};

class LocationTable {
 public:
  LocationTable() = default;
  LocationTable(const LocationTable&) = delete;
  LocationTable& operator=(const LocationTable&) = delete;

  // Inserts or updates the entry of `loc.instance`.
  //  - new instance, or a higher epoch than the stored one: stored, returns true;
  //  - the same epoch and the same fields: nothing changes, returns true;
  //  - a lower epoch (or not above the epoch at which the instance was removed): stale,
  //    ignored, returns false;
  //  - the same epoch with different fields: kFailedPrecondition (two writers disagree).
  // kInvalidArgument if instance or service is empty. Fields are not validated further:
  // parse input with ParseLocationsYaml/Json first.
  Result<bool> Upsert(const InstanceLocation& loc) EXCLUDES(mu_);

  // Removes `instance` if `epoch` >= its stored epoch, and remembers that epoch so that a
  // late Upsert of an older (or the same) epoch is ignored as stale. kNotFound if absent,
  // kFailedPrecondition if `epoch` is older than the stored one (it moved since).
  Status Remove(const std::string& instance, uint64_t epoch) EXCLUDES(mu_);

  // Replaces the whole content with a full snapshot (from a controller or a file) and
  // forgets removed epochs. If `all` names an instance twice, the higher epoch wins (the
  // later entry on a tie).
  void Replace(std::vector<InstanceLocation> all) EXCLUDES(mu_);

  // The instances of `service`, ordered by instance id; empty if none.
  std::vector<InstanceLocation> Lookup(const std::string& service) const EXCLUDES(mu_);
  std::optional<InstanceLocation> Find(const std::string& instance) const EXCLUDES(mu_);
  // All entries, ordered by (service, instance).
  std::vector<InstanceLocation> All() const EXCLUDES(mu_);
  size_t size() const EXCLUDES(mu_);

  // Bumped on every change (never on an ignored or no-op update), so callers can cache
  // Lookup() results and revalidate with one atomic load. Starts at 0.
  uint64_t version() const { return version_.load(std::memory_order_acquire); }

  // How many removed instances' epochs are remembered; the oldest are forgotten first.
  static constexpr size_t kMaxTombstones = 16384;

 private:
  void Bump() REQUIRES(mu_) { version_.fetch_add(1, std::memory_order_release); }
  void Erase(const std::string& instance) REQUIRES(mu_);

  mutable Mutex mu_;
  // service -> instance -> location; the inner map keeps Lookup() ordered.
  std::map<std::string, std::map<std::string, InstanceLocation>> by_service_ GUARDED_BY(mu_);
  std::unordered_map</* instance */ std::string, /* service */ std::string> service_of_
      GUARDED_BY(mu_);
  // Removed instance -> the epoch of its removal; `tombstone_order_` evicts the oldest.
  std::unordered_map<std::string, uint64_t> tombstones_ GUARDED_BY(mu_);
  std::deque<std::string> tombstone_order_ GUARDED_BY(mu_);
  std::atomic<uint64_t> version_{0};
};

// Parses the YAML location file format above. `origin` names the text in errors
// ("origin:LINE: locations[I]: field 'F': what"). An empty document is an empty list.
// Errors (all kInvalidArgument): syntax, unknown or repeated keys, missing required
// fields, invalid names/addresses/epochs, an instance listed twice, neither tcp nor shm
// on an instance whose agent is not `local_agent`.
Result<std::vector<InstanceLocation>> ParseLocationsYaml(std::string_view text,
                                                         std::string_view origin,
                                                         std::string_view local_agent = {});
// Reads and parses a YAML location file; errors name the path.
Result<std::vector<InstanceLocation>> LoadLocationsFile(const std::string& path,
                                                        std::string_view local_agent = {});

// Parses the JSON form, {"locations": [{"instance": ..., ...}, ...]}, with the same rules;
// errors name the entry and the field ("locations[2]: field 'tcp': ..."). epoch is a
// JSON integer.
Result<std::vector<InstanceLocation>> ParseLocationsJson(std::string_view text,
                                                         std::string_view local_agent = {});
// Renders the JSON form; ParseLocationsJson(LocationsToJson(v)) == v for valid entries.
// Empty tcp/shm are left out.
std::string LocationsToJson(const std::vector<InstanceLocation>& locations);

}  // namespace tern::dataplane
