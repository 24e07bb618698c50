#include "emu/teardown.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>

#include "core/file.h"
#include "emu/cgroup.h"
#include "emu/command.h"
#include "emu/ledger.h"
#include "emu/spawn.h"

namespace tern::emu {

namespace {

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Sub-directories of `dir` (not recursive), as full paths.
std::vector<std::string> SubDirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string full = dir + "/" + name;
    if (IsDir(full)) out.push_back(full);
  }
  ::closedir(d);
  return out;
}

void CollectCgroupTree(const std::string& dir, std::vector<std::string>* out) {
  if (!IsDir(dir)) return;
  out->push_back(dir);
  for (const std::string& sub : SubDirs(dir)) CollectCgroupTree(sub, out);
}

// A cgroup dir belongs to `cluster` if it has the path component sequence tern/<cluster>.
bool IsCgroupOfCluster(const std::string& dir, const std::string& cluster) {
  std::string key = "/tern/" + cluster;
  size_t pos = dir.find(key);
  if (pos == std::string::npos) return false;
  size_t end = pos + key.size();
  return end == dir.size() || dir[end] == '/';
}

std::vector<std::string> NetnsNames(const std::string& cluster) {
  std::vector<std::string> out;
  const std::string prefix = NetnsPrefix(cluster);
  DIR* d = ::opendir("/run/netns");
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0) {
      out.push_back(name);
    }
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// Links of the root namespace that are named like `cluster`'s (bridge first).
Result<std::vector<std::string>> LinkNames(const std::string& cluster) {
  TERN_ASSIGN_OR_RETURN(std::string ip, FindTool("ip"));
  TERN_ASSIGN_OR_RETURN(std::string text, RunTool({ip, "-o", "link", "show"}));
  std::vector<std::string> veths;
  bool bridge = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string_view line(text.data() + pos, eol - pos);
    pos = eol + 1;
    // "5: tv-demo-0@if4: <BROADCAST,...> ..."
    size_t a = line.find(": ");
    if (a == std::string_view::npos) continue;
    std::string_view rest = line.substr(a + 2);
    std::string_view name = rest.substr(0, rest.find_first_of(":@"));
    if (name == BridgeName(cluster)) {
      bridge = true;
    } else if (IsVethOfCluster(name, cluster)) {
      veths.emplace_back(name);
    }
  }
  std::sort(veths.begin(), veths.end());
  if (bridge) veths.push_back(BridgeName(cluster));  // ports first, then the bridge
  return veths;
}

std::vector<std::string> CgroupDirs(const std::string& cluster, const std::string& cgroup_root) {
  std::vector<std::string> out;
  for (const char* ctrl : kSweptControllers) {
    CollectCgroupTree(ClusterCgroupDir(cgroup_root, ctrl, cluster), &out);
  }
  return out;
}

size_t Depth(const std::string& path) { return std::count(path.begin(), path.end(), '/'); }

}  // namespace

std::vector<std::string> FindClusterResources(const std::string& cluster,
                                              const std::string& cgroup_root) {
  std::vector<std::string> out;
  if (!ValidateClusterName(cluster).ok()) return out;
  for (const std::string& n : NetnsNames(cluster)) out.push_back("netns " + n);
  Result<std::vector<std::string>> links = LinkNames(cluster);
  if (links.ok()) {
    for (const std::string& l : *links) out.push_back("link " + l);
  }
  for (const std::string& d : CgroupDirs(cluster, cgroup_root)) out.push_back("cgroup " + d);
  return out;
}

Result<TeardownReport> Teardown(const std::string& state_dir, const std::string& cluster,
                                const TeardownOptions& options) {
  TERN_RETURN_IF_ERROR(ValidateClusterName(cluster));
  TeardownReport report;
  const std::string ledger_path = LedgerPath(state_dir, cluster);
  std::vector<LedgerEntry> entries;
  {
    Result<std::vector<LedgerEntry>> loaded = Ledger::Load(state_dir, cluster);
    if (loaded.ok()) {
      entries = std::move(*loaded);
    } else if (loaded.status().code() == StatusCode::kNotFound) {
      report.notes.push_back(fmt::format("no ledger at {}: swept by name only", ledger_path));
    } else {
      report.notes.push_back(
          fmt::format("ledger unusable ({}): swept by name only", loaded.status().ToString()));
    }
  }
  std::vector<LedgerEntry> kept;  // entries that could not be removed
  auto remaining = [&](const LedgerEntry* e, std::string why) {
    report.remaining.push_back(std::move(why));
    if (e != nullptr) kept.push_back(*e);
  };

  // 1. Processes: only those whose pid and start time still match.
  std::vector<ProcessRecord> ours;
  std::vector<const LedgerEntry*> proc_entries;
  for (const LedgerEntry& e : entries) {
    if (e.kind != ResourceKind::kProcess) continue;
    ours.push_back(e.process);
    proc_entries.push_back(&e);
  }
  std::vector<Result<TerminateOutcome>> outcomes = TerminateAll(ours, options.grace);
  for (size_t i = 0; i < outcomes.size(); ++i) {
    if (!outcomes[i].ok()) {
      remaining(proc_entries[i],
                proc_entries[i]->ToString() + ": " + outcomes[i].status().ToString());
    } else if (*outcomes[i] != TerminateOutcome::kNotRunning) {
      report.removed.push_back(proc_entries[i]->ToString() +
                               (*outcomes[i] == TerminateOutcome::kKilled ? " (SIGKILL)" : ""));
    }
  }

  // 2. Cgroups, deepest first.
  std::vector<std::string> cgroups;
  for (const LedgerEntry& e : entries) {
    if (e.kind != ResourceKind::kCgroup) continue;
    if (!IsCgroupOfCluster(e.name, cluster)) {
      remaining(&e, fmt::format("cgroup {}: not under tern/{}; left alone", e.name, cluster));
      continue;
    }
    cgroups.push_back(e.name);
  }
  for (const std::string& d : CgroupDirs(cluster, options.cgroup_root)) cgroups.push_back(d);
  std::sort(cgroups.begin(), cgroups.end(), [](const std::string& a, const std::string& b) {
    return Depth(a) != Depth(b) ? Depth(a) > Depth(b) : a < b;
  });
  cgroups.erase(std::unique(cgroups.begin(), cgroups.end()), cgroups.end());
  for (const std::string& dir : cgroups) {
    if (!IsDir(dir)) continue;
    Status s = RemoveCgroupDir(dir, ours, options.grace);
    if (s.ok()) {
      report.removed.push_back("cgroup " + dir);
    } else {
      LedgerEntry e = LedgerEntry::Cgroup(dir);
      remaining(&e, s.ToString());
    }
  }

  // The shared <ctrl>/tern directories go when no cluster uses them any more (rmdir
  // fails, harmlessly, while one does).
  for (const char* ctrl : kSweptControllers) {
    const std::string tern_dir = fmt::format("{}/{}/tern", options.cgroup_root, ctrl);
    if (IsDir(tern_dir) && SubDirs(tern_dir).empty() && ::rmdir(tern_dir.c_str()) == 0) {
      report.removed.push_back("cgroup " + tern_dir);
    }
  }

  // 3. Qdiscs on links that are not ours go explicitly; the others go with their link.
  Result<std::string> tc = FindTool("tc");
  for (const LedgerEntry& e : entries) {
    if (e.kind != ResourceKind::kQdisc) continue;
    bool goes_with_link =
        e.netns.empty()
            ? (e.name == BridgeName(cluster) || IsVethOfCluster(e.name, cluster))
            : e.netns.compare(0, NetnsPrefix(cluster).size(), NetnsPrefix(cluster)) == 0;
    if (!goes_with_link && tc.ok()) {
      std::vector<std::string> argv{*tc};
      if (!e.netns.empty()) argv.insert(argv.end(), {"-n", e.netns});
      argv.insert(argv.end(), {"qdisc", "del", "dev", e.name, "root"});
      Result<CommandOutput> r = RunCommand(argv);
      if (r.ok() && r->exit_code == 0) report.removed.push_back(e.ToString());
    }
  }

  // 4. Links: veths (each takes its peer along), then the bridge.
  for (const LedgerEntry& e : entries) {
    if (e.kind != ResourceKind::kVeth && e.kind != ResourceKind::kBridge) continue;
    if (e.name != BridgeName(cluster) && !IsVethOfCluster(e.name, cluster)) {
      remaining(&e, fmt::format("link {}: not a name of cluster {}; left alone", e.name, cluster));
    }
  }
  Result<std::vector<std::string>> present = LinkNames(cluster);
  if (!present.ok()) {
    report.notes.push_back("cannot list links: " + present.status().ToString());
  } else {
    TERN_ASSIGN_OR_RETURN(std::string ip, FindTool("ip"));
    for (const std::string& name : *present) {
      // A veth whose peer was deleted a moment ago is gone too.
      Result<CommandOutput> r = RunCommand({ip, "link", "del", "dev", name});
      if (r.ok() && r->exit_code == 0) {
        report.removed.push_back("link " + name);
      } else {
        Result<CommandOutput> still = RunCommand({ip, "link", "show", "dev", name});
        if (still.ok() && still->exit_code == 0) {
          LedgerEntry e =
              name == BridgeName(cluster) ? LedgerEntry::Bridge(name) : LedgerEntry::Veth(name);
          remaining(&e, fmt::format("link {}: `ip link del` failed: {}", name,
                                    r.ok() ? r->err : r.status().ToString()));
        }
      }
    }
  }

  // 5. Network namespaces.
  std::set<std::string> namespaces;
  for (const LedgerEntry& e : entries) {
    if (e.kind != ResourceKind::kNetns) continue;
    if (e.name.compare(0, NetnsPrefix(cluster).size(), NetnsPrefix(cluster)) != 0) {
      remaining(&e, fmt::format("netns {}: not a name of cluster {}; left alone", e.name, cluster));
      continue;
    }
    namespaces.insert(e.name);
  }
  for (const std::string& n : NetnsNames(cluster)) namespaces.insert(n);
  for (const std::string& n : namespaces) {
    if (!FileExists("/run/netns/" + n)) continue;
    Result<std::string> ip = FindTool("ip");
    Result<std::string> r =
        ip.ok() ? RunTool({*ip, "netns", "del", n}) : Result<std::string>(ip.status());
    if (r.ok()) {
      report.removed.push_back("netns " + n);
    } else {
      LedgerEntry e = LedgerEntry::Netns(n);
      remaining(&e, r.status().ToString());
    }
  }

  // 6. Sysctls we changed go back to their old values.
  for (const LedgerEntry& e : entries) {
    if (e.kind != ResourceKind::kSysctl) continue;
    if (e.name.compare(0, 10, "/proc/sys/") != 0) {
      remaining(&e, fmt::format("sysctl {}: not under /proc/sys; left alone", e.name));
      continue;
    }
    int fd = ::open(e.name.c_str(), O_WRONLY | O_CLOEXEC);
    bool ok = fd >= 0 &&
              ::write(fd, e.value.data(), e.value.size()) == static_cast<ssize_t>(e.value.size());
    if (fd >= 0) ::close(fd);
    if (ok) {
      report.removed.push_back(e.ToString());
    } else {
      remaining(&e, fmt::format("{}: write failed", e.ToString()));
    }
  }

  // 7. The ledger: gone if everything is, else it keeps what remains.
  if (kept.empty()) {
    const std::string dir = DirName(ledger_path);
    ::unlink(ledger_path.c_str());
    DIR* d = ::opendir(dir.c_str());
    if (d != nullptr) {
      // Temporaries of an atomic write interrupted by a crash: ledger.json.tmp.<pid>.
      std::vector<std::string> tmps;
      while (struct dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name.rfind("ledger.json.tmp.", 0) == 0) tmps.push_back(dir + "/" + name);
      }
      ::closedir(d);
      for (const std::string& t : tmps) ::unlink(t.c_str());
      ::rmdir(dir.c_str());  // only if empty
    }
  } else {
    Status s = MakeDirs(DirName(ledger_path));
    if (s.ok()) s = WriteFileAtomic(ledger_path, LedgerToJson(cluster, kept));
    if (!s.ok()) report.notes.push_back("could not rewrite the ledger: " + s.ToString());
  }
  return report;
}

}  // namespace tern::emu
