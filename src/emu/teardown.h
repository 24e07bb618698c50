// Teardown: removes everything the emulation made for one cluster, and only that, even
// after `tern up` crashed or its ledger was lost.
//
// Two passes:
//  1. The ledger (<state_dir>/<cluster>/ledger.json, emu/ledger.h): processes are
//     terminated (if pid AND start time still match), cgroup directories removed (deepest
//     first), qdiscs deleted, veths, the bridge and namespaces deleted, sysctls restored.
//  2. A sweep by name, for resources the ledger does not list (lost or corrupt ledger):
//     network namespaces named tern-<cluster>-*, links tb-<cluster> and
//     tv-<cluster>-<digits> / tp-<cluster>-<digits> in the root namespace, and cgroup
//     directories under <root>/<ctrl>/tern/<cluster>/ of the swept controllers. Cluster
//     names have no '-', so the prefix "tern-a-" never matches cluster "ab"'s "tern-ab-".
//     A process found only by the sweep (in a cgroup of the cluster but not in the ledger)
//     is NOT killed: its cgroup is reported as remaining.
// Then the ledger file is deleted if nothing remains, or rewritten with what remains.
//
// Idempotent: a second call finds nothing and removes nothing. Needs root for the network
// and cgroup parts; without root those are reported as remaining.
// Thread-safety: do not run two teardowns (or a teardown and CreateHostNetwork) of the
// same cluster at once; different clusters are independent.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "core/status.h"
#include "emu/naming.h"

namespace tern::emu {

struct TeardownOptions {
  std::string cgroup_root = std::string(kDefaultCgroupRoot);
  std::chrono::milliseconds grace{2000};  // SIGTERM -> SIGKILL
};

struct TeardownReport {
  std::vector<std::string> removed;    // "netns tern-demo-host1", "process 4242 (agent)", ...
  std::vector<std::string> remaining;  // what could not be removed, and why
  std::vector<std::string> notes;      // e.g. "ledger corrupt: ...; swept by name only"
  bool clean() const { return remaining.empty(); }
};

// Tears down `cluster` as described above. Errors only for an invalid cluster name; every
// other problem is in the report's `remaining` (the teardown continues past it).
Result<TeardownReport> Teardown(const std::string& state_dir, const std::string& cluster,
                                const TeardownOptions& options = {});

// What the sweep would find now: namespaces, links and cgroup dirs of `cluster` by name.
// For tests and `tern status`.
std::vector<std::string> FindClusterResources(
    const std::string& cluster, const std::string& cgroup_root = std::string(kDefaultCgroupRoot));

}  // namespace tern::emu
