// Resource partitioning on a device (issue #5, point 4): a storage device's main task —
// serving its datasets to the rest of the cluster — keeps its reserved share of the
// device's CPU while offloaded guests run there.
//
// The agent's guest worker threads go into a child cgroup of the agent's own (cgroup v1
// cpu controller) named "guests", with a CFS quota of (1 − reserved) × cores; every other
// thread (the dataset-serving worker, the admin server, the registrar) stays in the
// device's cgroup, whose quota (emu/cgroup.h: the device's cores) the guests can then
// fill only up to their share. cgroup v1's `tasks` file takes thread ids, so threads of
// one process can sit in different cgroups.
//
// Without cgroup v1 the guest workers are lowered to nice kGuestNice instead (a thread's
// nice value is its own on Linux): no budget, but whenever the device's main task and a
// guest want the CPU at once, the main task wins (CFS gives a nice-0 thread ~10× the
// share of a nice-10 one). Dataset requests are served off the guest workers either way.
//
// Pure functions over files; the caller passes the cgroup root (tests use a temp dir).
// Thread-safety: stateless; safe from any thread.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::agent {

inline constexpr int64_t kGuestCfsPeriodUs = 100000;
inline constexpr char kGuestCgroupName[] = "guests";
inline constexpr int kGuestNice = 10;

struct PartitionSpec {
  double cores = 0;     // the device's cores (its cgroup's quota)
  double reserved = 0;  // share of them kept for the main task, in [0, 1)
  std::vector<pid_t> guest_tids;  // the guest worker threads
  std::string cgroup_root = "/sys/fs/cgroup";
  std::string proc_self_cgroup = "/proc/self/cgroup";
};

struct Partition {
  std::string mode;          // "cgroup", "nice: <why no cgroup>" or "none: <why>"
  std::string dir;           // the guests' cgroup directory (mode cgroup)
  double guest_cores = 0;    // what guests may use; 0 = unlimited
  int64_t quota_us = -1;     // cpu.cfs_quota_us written (-1 = none)
};

// The cpu controller's cgroup path of a process from its /proc/PID/cgroup text
// ("4:cpu,cpuacct:/tern/ndp/csd0" -> "/tern/ndp/csd0"); kNotFound without a v1 cpu line.
Result<std::string> CpuCgroupPath(std::string_view proc_cgroup);

// cpu.cfs_quota_us for guests on a device of `cores` with `reserved`:
// round((1 − reserved) × cores × kGuestCfsPeriodUs), at least 1000 (the kernel's minimum).
int64_t GuestQuotaUs(double cores, double reserved);

// Creates <root>/cpu<path>/guests, writes its period and quota, and moves every guest
// thread into it. Returns mode "none: ..." (not an error) when there is nothing to do
// (reserved == 0, cores <= 0); mode "nice: ..." when there is no cgroup v1 cpu controller
// (the guest threads get nice kGuestNice); an error when the controller is there but
// writing it fails (naming the file).
Result<Partition> PartitionGuests(const PartitionSpec& spec);

}  // namespace tern::agent
