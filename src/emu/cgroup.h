// Per-device cgroups (cgroup v1) that give an emulated device its CPU share and memory:
// a CSD at 0.25 core gets cpu.cfs_quota_us = 25000 per cfs_period_us = 100000.
//
// A device gets one directory in each of the cpu, cpuacct and memory hierarchies:
//   <root>/{cpu,cpuacct,memory}/tern/<cluster>/<device>      (root = /sys/fs/cgroup)
// The intermediate tern/<cluster> directories are recorded too, so teardown removes them;
// <root>/<ctrl>/tern is shared by all clusters: teardown removes it once it is empty.
//
// Ownership: a DeviceCgroup names directories; it does not remove them when destroyed
// (the cluster outlives `tern up`): Remove() or emu::Teardown does.
// Thread-safety: the methods only read and write cgroup files; safe from any thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "emu/ledger.h"
#include "emu/naming.h"

namespace tern::emu {

// The controllers a device cgroup lives in.
inline constexpr const char* kDeviceControllers[] = {"cpu", "cpuacct", "memory"};
// Controllers teardown sweeps for tern/<cluster> directories (a superset).
inline constexpr const char* kSweptControllers[] = {"cpu",  "cpuacct", "memory",
                                                    "pids", "cpuset",  "freezer"};

inline constexpr int64_t kCfsPeriodUs = 100000;

struct CgroupSpec {
  std::string cluster;
  std::string device;
  double cores = 0;           // CPU quota in cores; 0 or >= the machine's cores: no quota
  uint64_t memory_bytes = 0;  // memory.limit_in_bytes; 0: no limit
};

// cpu.cfs_quota_us for `cores` on a machine with `machine_cores`: -1 (no quota) for
// cores <= 0 or cores >= machine_cores, else round(cores * kCfsPeriodUs), at least 1000
// (the kernel's minimum).
int64_t CfsQuotaUs(double cores, int machine_cores);

// kUnavailable with a message saying what is missing unless the cgroup v1 controllers
// cpu, cpuacct and memory are mounted under `cgroup_root`.
Status CheckCgroupV1(const std::string& cgroup_root = std::string(kDefaultCgroupRoot));

class DeviceCgroup {
 public:
  // Creates (or reuses) the device's directories, recording each in `ledger` first, and
  // writes the CPU quota and memory limit. Errors: kInvalidArgument for bad names or
  // negative cores, kUnavailable if cgroup v1 is missing, errno errors naming the file.
  // `ledger` must outlive the call.
  static Result<std::unique_ptr<DeviceCgroup>> Create(
      const CgroupSpec& spec, Ledger* ledger,
      const std::string& cgroup_root = std::string(kDefaultCgroupRoot));

  // The directories, one per controller in kDeviceControllers: SpawnSpec::cgroup_dirs.
  const std::vector<std::string>& dirs() const { return dirs_; }

  // Moves `pid` (one thread group: writes cgroup.procs) into every directory.
  Status AddProcess(pid_t pid) const;
  // Total CPU time of the cgroup's tasks (cpuacct.usage), nanoseconds.
  Result<uint64_t> CpuUsageNs() const;
  // memory.usage_in_bytes.
  Result<uint64_t> MemoryUsage() const;
  // The pids in the cgroup (cpu hierarchy's cgroup.procs).
  Result<std::vector<pid_t>> Pids() const;
  // Removes the device's directories (see RemoveCgroupDir), forgetting them in `ledger`.
  Status Remove(Ledger* ledger, std::chrono::milliseconds grace = std::chrono::seconds(2)) const;

 private:
  explicit DeviceCgroup(std::vector<std::string> dirs) : dirs_(std::move(dirs)) {}
  std::vector<std::string> dirs_;
};

// Removes one cgroup directory. Tasks still in it are terminated (SIGTERM, `grace`,
// SIGKILL) only if they are in `ours` (pid AND start time match); then rmdir is retried
// until the tasks are gone (at most grace + 5 s). kFailedPrecondition naming the pids if
// tasks that are not ours remain. A missing directory is OK (idempotent).
Status RemoveCgroupDir(const std::string& dir, const std::vector<ProcessRecord>& ours,
                       std::chrono::milliseconds grace);

// The pids listed in <dir>/cgroup.procs.
Result<std::vector<pid_t>> ReadCgroupPids(const std::string& dir);

}  // namespace tern::emu
