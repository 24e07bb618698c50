#include "agent/partition.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <fstream>
#include <sstream>

namespace tern::agent {
namespace {

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status WriteValue(const std::string& path, const std::string& value, bool append = false) {
  std::ofstream out(path, append ? std::ios::app : std::ios::trunc);
  if (!out) return ErrnoError("open " + path, errno);
  out << value;
  out.flush();
  if (!out) return ErrnoError(fmt::format("write '{}' to {}", value, path), errno);
  return Status::Ok();
}

// The fallback without cgroups: the guest threads yield to the main task.
Result<Partition> NiceGuests(const PartitionSpec& spec, std::string why) {
  for (pid_t tid : spec.guest_tids) {
    errno = 0;
    int now = ::getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
    if (errno == 0 && now >= kGuestNice) continue;  // already as low (raising needs root)
    if (::setpriority(PRIO_PROCESS, static_cast<id_t>(tid), kGuestNice) != 0) {
      return ErrnoError(fmt::format("setpriority(thread {}, {})", tid, kGuestNice), errno);
    }
  }
  Partition p;
  p.mode = fmt::format("nice: guest workers at nice {} ({})", kGuestNice, why);
  return p;
}

}  // namespace

Result<std::string> CpuCgroupPath(std::string_view text) {
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    // hierarchy-id:controller-list:path
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1);
    std::istringstream cs(controllers);
    std::string c;
    while (std::getline(cs, c, ',')) {
      if (c == "cpu") return line.substr(b + 1);
    }
  }
  return NotFoundError("no cgroup v1 cpu controller in /proc/self/cgroup");
}

int64_t GuestQuotaUs(double cores, double reserved) {
  double q = std::round((1.0 - reserved) * cores * static_cast<double>(kGuestCfsPeriodUs));
  return std::max<int64_t>(static_cast<int64_t>(q), 1000);
}

Result<Partition> PartitionGuests(const PartitionSpec& spec) {
  Partition p;
  if (spec.reserved < 0 || spec.reserved >= 1) {
    return InvalidArgumentError(
        fmt::format("reserved: expected a share in [0, 1), got {}", spec.reserved));
  }
  if (spec.reserved == 0 || spec.cores <= 0) {
    p.mode = "none: no share is reserved for the device's main task";
    return p;
  }
  const std::string cpu_root = spec.cgroup_root + "/cpu";
  if (!IsDir(cpu_root)) return NiceGuests(spec, "no cgroup v1 cpu controller at " + cpu_root);
  std::ifstream in(spec.proc_self_cgroup);
  std::stringstream text;
  text << in.rdbuf();
  Result<std::string> path = CpuCgroupPath(text.str());
  if (!path.ok()) return NiceGuests(spec, std::string(path.status().message()));
  std::string parent = cpu_root + (*path == "/" ? "" : *path);
  if (!IsDir(parent)) return NiceGuests(spec, "the agent's cpu cgroup " + parent + " is not visible");
  p.dir = parent + "/" + kGuestCgroupName;
  if (::mkdir(p.dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoError("mkdir " + p.dir, errno);
  }
  p.quota_us = GuestQuotaUs(spec.cores, spec.reserved);
  TERN_RETURN_IF_ERROR(WriteValue(p.dir + "/cpu.cfs_period_us", std::to_string(kGuestCfsPeriodUs)));
  TERN_RETURN_IF_ERROR(WriteValue(p.dir + "/cpu.cfs_quota_us", std::to_string(p.quota_us)));
  for (pid_t tid : spec.guest_tids) {
    TERN_RETURN_IF_ERROR(WriteValue(p.dir + "/tasks", std::to_string(tid) + "\n", /*append=*/true));
  }
  p.guest_cores = static_cast<double>(p.quota_us) / static_cast<double>(kGuestCfsPeriodUs);
  p.mode = "cgroup";
  return p;
}

}  // namespace tern::agent
