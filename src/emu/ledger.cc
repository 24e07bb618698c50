#include "emu/ledger.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/file.h"
#include "emu/naming.h"

namespace tern::emu {

namespace {

constexpr int kLedgerVersion = 1;

struct KindName {
  ResourceKind kind;
  const char* name;
};
constexpr KindName kKinds[] = {
    {ResourceKind::kBridge, "bridge"}, {ResourceKind::kNetns, "netns"},
    {ResourceKind::kVeth, "veth"},     {ResourceKind::kQdisc, "qdisc"},
    {ResourceKind::kCgroup, "cgroup"}, {ResourceKind::kProcess, "process"},
    {ResourceKind::kSysctl, "sysctl"},
};

}  // namespace

const char* ResourceKindName(ResourceKind kind) {
  for (const KindName& k : kKinds) {
    if (k.kind == kind) return k.name;
  }
  return "unknown";
}

bool ParseResourceKind(const std::string& s, ResourceKind* out) {
  for (const KindName& k : kKinds) {
    if (s == k.name) {
      *out = k.kind;
      return true;
    }
  }
  return false;
}

LedgerEntry LedgerEntry::Bridge(std::string name) {
  LedgerEntry e;
  e.kind = ResourceKind::kBridge;
  e.name = std::move(name);
  return e;
}
LedgerEntry LedgerEntry::Netns(std::string name) {
  LedgerEntry e;
  e.kind = ResourceKind::kNetns;
  e.name = std::move(name);
  return e;
}
LedgerEntry LedgerEntry::Veth(std::string name) {
  LedgerEntry e;
  e.kind = ResourceKind::kVeth;
  e.name = std::move(name);
  return e;
}
LedgerEntry LedgerEntry::Qdisc(std::string ifname, std::string netns) {
  LedgerEntry e;
  e.kind = ResourceKind::kQdisc;
  e.name = std::move(ifname);
  e.netns = std::move(netns);
  return e;
}
LedgerEntry LedgerEntry::Cgroup(std::string dir) {
  LedgerEntry e;
  e.kind = ResourceKind::kCgroup;
  e.name = std::move(dir);
  return e;
}
LedgerEntry LedgerEntry::Process(ProcessRecord p) {
  LedgerEntry e;
  e.kind = ResourceKind::kProcess;
  e.process = std::move(p);
  return e;
}
LedgerEntry LedgerEntry::Sysctl(std::string path, std::string old_value) {
  LedgerEntry e;
  e.kind = ResourceKind::kSysctl;
  e.name = std::move(path);
  e.value = std::move(old_value);
  return e;
}

std::string LedgerEntry::ToString() const {
  switch (kind) {
    case ResourceKind::kProcess:
      return fmt::format("process {} ({})", process.pid, process.exe.empty() ? "?" : process.exe);
    case ResourceKind::kQdisc:
      return fmt::format("qdisc on {}{}", name, netns.empty() ? "" : " in netns " + netns);
    case ResourceKind::kSysctl:
      return fmt::format("sysctl {} (restore to {})", name, value);
    default:
      return fmt::format("{} {}", ResourceKindName(kind), name);
  }
}

std::string LedgerPath(const std::string& state_dir, const std::string& cluster) {
  return JoinPath(JoinPath(state_dir, cluster), "ledger.json");
}

std::string LedgerToJson(const std::string& cluster, const std::vector<LedgerEntry>& entries) {
  nlohmann::json j;
  j["version"] = kLedgerVersion;
  j["cluster"] = cluster;
  nlohmann::json arr = nlohmann::json::array();
  for (const LedgerEntry& e : entries) {
    nlohmann::json o;
    o["kind"] = ResourceKindName(e.kind);
    if (e.kind == ResourceKind::kProcess) {
      o["pid"] = e.process.pid;
      o["start_time"] = e.process.start_time;
      o["exe"] = e.process.exe;
    } else {
      o["name"] = e.name;
    }
    if (e.kind == ResourceKind::kQdisc) o["netns"] = e.netns;
    if (e.kind == ResourceKind::kSysctl) o["value"] = e.value;
    arr.push_back(std::move(o));
  }
  j["entries"] = std::move(arr);
  return j.dump(1) + "\n";
}

Result<std::vector<LedgerEntry>> ParseLedger(const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& ex) {
    return DataLossError(
        fmt::format("{}: not a valid ledger (torn or corrupt): {}", origin, ex.what()));
  }
  if (!j.is_object()) return InvalidArgumentError(origin + ": the ledger is not a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer() ||
      j["version"].get<int>() != kLedgerVersion) {
    return InvalidArgumentError(
        fmt::format("{}: field 'version': expected {}", origin, kLedgerVersion));
  }
  if (!j.contains("entries") || !j["entries"].is_array()) {
    return InvalidArgumentError(origin + ": field 'entries': expected an array");
  }
  std::vector<LedgerEntry> out;
  const nlohmann::json& arr = j["entries"];
  for (size_t i = 0; i < arr.size(); ++i) {
    const nlohmann::json& o = arr[i];
    auto field_error = [&](const char* field, const char* what) {
      return InvalidArgumentError(
          fmt::format("{}: entries[{}]: field '{}': {}", origin, i, field, what));
    };
    if (!o.is_object()) return field_error("kind", "the entry is not an object");
    auto str = [&](const char* key, std::string* dst) -> bool {
      if (!o.contains(key)) return false;
      if (!o[key].is_string()) return false;
      *dst = o[key].get<std::string>();
      return true;
    };
    std::string kind_name;
    LedgerEntry e;
    if (!str("kind", &kind_name)) return field_error("kind", "missing or not a string");
    if (!ParseResourceKind(kind_name, &e.kind)) return field_error("kind", "unknown kind");
    if (e.kind == ResourceKind::kProcess) {
      if (!o.contains("pid") || !o["pid"].is_number_integer() || o["pid"].get<int64_t>() <= 0) {
        return field_error("pid", "missing or not a positive integer");
      }
      if (!o.contains("start_time") || !o["start_time"].is_number_unsigned()) {
        return field_error("start_time", "missing or not an unsigned integer");
      }
      e.process.pid = static_cast<pid_t>(o["pid"].get<int64_t>());
      e.process.start_time = o["start_time"].get<uint64_t>();
      str("exe", &e.process.exe);
    } else {
      if (!str("name", &e.name) || e.name.empty()) {
        return field_error("name", "missing, empty or not a string");
      }
    }
    if (e.kind == ResourceKind::kQdisc) str("netns", &e.netns);
    if (e.kind == ResourceKind::kSysctl && !str("value", &e.value)) {
      return field_error("value", "missing or not a string");
    }
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::unique_ptr<Ledger>> Ledger::Open(const std::string& state_dir,
                                             const std::string& cluster) {
  TERN_RETURN_IF_ERROR(ValidateClusterName(cluster));
  std::string path = LedgerPath(state_dir, cluster);
  std::vector<LedgerEntry> entries;
  if (FileExists(path)) {
    TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    TERN_ASSIGN_OR_RETURN(entries, ParseLedger(text, path));
  } else {
    TERN_RETURN_IF_ERROR(MakeDirs(DirName(path)));
  }
  std::unique_ptr<Ledger> ledger(new Ledger(cluster, path, std::move(entries)));
  {
    MutexLock lock(&ledger->mu_);
    TERN_RETURN_IF_ERROR(ledger->WriteLocked());  // proves the directory is writable
  }
  return ledger;
}

Result<std::vector<LedgerEntry>> Ledger::Load(const std::string& state_dir,
                                              const std::string& cluster) {
  TERN_RETURN_IF_ERROR(ValidateClusterName(cluster));
  std::string path = LedgerPath(state_dir, cluster);
  if (!FileExists(path)) return NotFoundError(fmt::format("no ledger at {}", path));
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseLedger(text, path);
}

Status Ledger::WriteLocked() {
  return WriteFileAtomic(path_, LedgerToJson(cluster_, entries_)).WithPrefix("ledger");
}

Status Ledger::Record(const LedgerEntry& e) {
  MutexLock lock(&mu_);
  if (std::find(entries_.begin(), entries_.end(), e) != entries_.end()) return Status::Ok();
  entries_.push_back(e);
  Status s = WriteLocked();
  if (!s.ok()) entries_.pop_back();  // the caller must not create the resource
  return s;
}

Status Ledger::Forget(const LedgerEntry& e) {
  MutexLock lock(&mu_);
  auto it = std::find(entries_.begin(), entries_.end(), e);
  if (it == entries_.end()) return Status::Ok();
  entries_.erase(it);
  return WriteLocked();
}

std::vector<LedgerEntry> Ledger::entries() const {
  MutexLock lock(&mu_);
  return entries_;
}

}  // namespace tern::emu
