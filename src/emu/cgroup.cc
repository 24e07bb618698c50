#include "emu/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <thread>

#include "core/file.h"
#include "emu/spawn.h"

namespace tern::emu {

namespace {

// Writes `value` to a cgroup control file (no O_CREAT, no rename: these are not files).
Status WriteControl(const std::string& path, const std::string& value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size())) {
    return ErrnoError(fmt::format("write '{}' to {}", value, path), n < 0 ? err : EIO);
  }
  return Status::Ok();
}

Result<uint64_t> ReadNumber(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  uint64_t v = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    v = v * 10 + static_cast<uint64_t>(text[i] - '0');
  }
  if (i == 0) return InternalError(fmt::format("{}: not a number: '{}'", path, text));
  return v;
}

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> SubDirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == ".." || e->d_type != DT_DIR) continue;
    out.push_back(dir + "/" + name);
  }
  ::closedir(d);
  return out;
}

Status MakeCgroupDir(const std::string& dir, Ledger* ledger) {
  if (IsDir(dir)) return Status::Ok();
  if (ledger != nullptr) TERN_RETURN_IF_ERROR(ledger->Record(LedgerEntry::Cgroup(dir)));
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoError("mkdir " + dir, errno);
  return Status::Ok();
}

}  // namespace

int64_t CfsQuotaUs(double cores, int machine_cores) {
  if (cores <= 0 || cores >= machine_cores) return -1;
  return std::max<int64_t>(1000, std::llround(cores * static_cast<double>(kCfsPeriodUs)));
}

Status CheckCgroupV1(const std::string& cgroup_root) {
  const std::pair<const char*, const char*> needed[] = {{"cpu", "cpu.cfs_quota_us"},
                                                        {"cpuacct", "cpuacct.usage"},
                                                        {"memory", "memory.limit_in_bytes"}};
  for (const auto& [ctrl, file] : needed) {
    std::string path = fmt::format("{}/{}/{}", cgroup_root, ctrl, file);
    if (!FileExists(path)) {
      return UnavailableError(fmt::format(
          "cgroup v1 controller '{}' is not mounted at {}/{} ({} is missing); device CPU and "
          "memory limits need cgroup v1 with the cpu, cpuacct and memory controllers",
          ctrl, cgroup_root, ctrl, path));
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<DeviceCgroup>> DeviceCgroup::Create(const CgroupSpec& spec, Ledger* ledger,
                                                           const std::string& cgroup_root) {
  TERN_RETURN_IF_ERROR(ValidateClusterName(spec.cluster));
  TERN_RETURN_IF_ERROR(ValidateDeviceName(spec.device));
  if (spec.cores < 0 || !std::isfinite(spec.cores)) {
    return InvalidArgumentError(
        fmt::format("device {}: cores must be >= 0, not {}", spec.device, spec.cores));
  }
  TERN_RETURN_IF_ERROR(CheckCgroupV1(cgroup_root));
  std::vector<std::string> dirs;
  for (const char* ctrl : kDeviceControllers) {
    // <ctrl>/tern is shared by all clusters, and a teardown removes it when it is empty:
    // if it vanishes between the two mkdirs, make it again.
    const std::string tern_dir = fmt::format("{}/{}/tern", cgroup_root, ctrl);
    const std::string cluster_dir = ClusterCgroupDir(cgroup_root, ctrl, spec.cluster);
    for (int attempt = 0;; ++attempt) {
      if (!IsDir(tern_dir) && ::mkdir(tern_dir.c_str(), 0755) != 0 && errno != EEXIST) {
        return ErrnoError("mkdir " + tern_dir, errno);
      }
      Status s = MakeCgroupDir(cluster_dir, ledger);
      if (s.ok()) break;
      if (attempt == 3 || s.code() != StatusCode::kNotFound) return s;
    }
    std::string dir = DeviceCgroupDir(cgroup_root, ctrl, spec.cluster, spec.device);
    TERN_RETURN_IF_ERROR(MakeCgroupDir(dir, ledger));
    dirs.push_back(dir);
  }
  const std::string& cpu = dirs[0];
  const std::string& memory = dirs[2];
  int machine_cores = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  TERN_RETURN_IF_ERROR(WriteControl(cpu + "/cpu.cfs_period_us", std::to_string(kCfsPeriodUs)));
  TERN_RETURN_IF_ERROR(WriteControl(cpu + "/cpu.cfs_quota_us",
                                    std::to_string(CfsQuotaUs(spec.cores, machine_cores))));
  // -1 means "no limit" to memory.limit_in_bytes.
  TERN_RETURN_IF_ERROR(
      WriteControl(memory + "/memory.limit_in_bytes",
                   spec.memory_bytes == 0 ? std::string("-1") : std::to_string(spec.memory_bytes)));
  return std::unique_ptr<DeviceCgroup>(new DeviceCgroup(std::move(dirs)));
}

Status DeviceCgroup::AddProcess(pid_t pid) const {
  for (const std::string& dir : dirs_) {
    TERN_RETURN_IF_ERROR(WriteControl(dir + "/cgroup.procs", std::to_string(pid)));
  }
  return Status::Ok();
}

Result<uint64_t> DeviceCgroup::CpuUsageNs() const {
  return ReadNumber(dirs_[1] + "/cpuacct.usage");
}

Result<uint64_t> DeviceCgroup::MemoryUsage() const {
  return ReadNumber(dirs_[2] + "/memory.usage_in_bytes");
}

Result<std::vector<pid_t>> DeviceCgroup::Pids() const { return ReadCgroupPids(dirs_[0]); }

Status DeviceCgroup::Remove(Ledger* ledger, std::chrono::milliseconds grace) const {
  std::vector<ProcessRecord> ours;
  if (ledger != nullptr) {
    for (const LedgerEntry& e : ledger->entries()) {
      if (e.kind == ResourceKind::kProcess) ours.push_back(e.process);
    }
  }
  for (const std::string& dir : dirs_) {
    TERN_RETURN_IF_ERROR(RemoveCgroupDir(dir, ours, grace));
    if (ledger != nullptr) TERN_RETURN_IF_ERROR(ledger->Forget(LedgerEntry::Cgroup(dir)));
  }
  return Status::Ok();
}

Result<std::vector<pid_t>> ReadCgroupPids(const std::string& dir) {
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/cgroup.procs"));
  std::vector<pid_t> pids;
  pid_t cur = 0;
  bool in_number = false;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      cur = cur * 10 + (c - '0');
      in_number = true;
    } else if (in_number) {
      pids.push_back(cur);
      cur = 0;
      in_number = false;
    }
  }
  if (in_number) pids.push_back(cur);
  return pids;
}

Status RemoveCgroupDir(const std::string& dir, const std::vector<ProcessRecord>& ours,
                       std::chrono::milliseconds grace) {
  if (!IsDir(dir)) return Status::Ok();
  auto deadline = std::chrono::steady_clock::now() + grace + std::chrono::seconds(5);
  for (;;) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return Status::Ok();
    if (errno != EBUSY) return ErrnoError("rmdir " + dir, errno);
    // cgroup v1 says EBUSY (not ENOTEMPTY) for a directory with child cgroups.
    for (const std::string& sub : SubDirs(dir)) {
      return FailedPreconditionError(fmt::format("rmdir {}: it has a child cgroup ({})", dir, sub));
    }
    Result<std::vector<pid_t>> pids = ReadCgroupPids(dir);
    if (!pids.ok()) return pids.status();
    std::vector<ProcessRecord> to_stop;
    std::vector<pid_t> foreign;
    for (pid_t pid : *pids) {
      auto it = std::find_if(ours.begin(), ours.end(),
                             [pid](const ProcessRecord& r) { return r.pid == pid; });
      if (it != ours.end()) {
        Result<ProcessRecord> now = ReadProcessRecord(pid);
        if (!now.ok() || now->start_time == it->start_time) {
          to_stop.push_back(*it);
          continue;
        }
      }
      foreign.push_back(pid);
    }
    if (!foreign.empty()) {
      std::string list;
      for (pid_t p : foreign) list += (list.empty() ? "" : ",") + std::to_string(p);
      return FailedPreconditionError(fmt::format(
          "cgroup {} holds processes that are not ours per the ledger (pids {}); left in place",
          dir, list));
    }
    for (Result<TerminateOutcome>& r : TerminateAll(to_stop, grace)) {
      if (!r.ok()) return r.status();
    }
    for (const ProcessRecord& r : to_stop) ::waitpid(r.pid, nullptr, WNOHANG);
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceededError(fmt::format("rmdir {}: still busy", dir));
    }
    // Exited tasks leave the cgroup asynchronously; rmdir is retried.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace tern::emu
