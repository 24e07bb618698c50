// `tern data put|ls|get|rm`: datasets on storage devices.
//
// In a cluster (`tern up`), the device that holds a dataset comes from --device or from
// the topology (a device's `datasets:` list); with --agent, that one agent.
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/cluster.h"
#include "cli/cluster_commands.h"
#include "cli/flags.h"
#include "cli/main_util.h"
#include "client/agent_client.h"
#include "cluster/topology.h"
#include "core/file.h"
#include "storage/dataset_store.h"

namespace tern::cli {

using nlohmann::json;

namespace {

struct Target {
  std::string device;  // "" in agent mode
  std::string admin;
};

// The agents a command may talk to: one with --agent, else the cluster's.
Result<std::vector<Target>> Agents(const Flags& f) {
  TERN_ASSIGN_OR_RETURN(std::optional<ClusterRecord> c, ResolveCluster(f));
  if (!c) return std::vector<Target>{{"", f.Get("agent")}};
  if (c->agents.empty()) {
    return FailedPreconditionError("the cluster record lists no agents (is the cluster up?)");
  }
  std::vector<Target> out;
  for (const auto& [device, a] : c->agents) out.push_back({device, a.address});
  return out;
}

// The agent holding `dataset`: --device, else the topology's device that lists it.
Result<Target> Holder(const Flags& f, const std::string& dataset) {
  TERN_ASSIGN_OR_RETURN(std::vector<Target> agents, Agents(f));
  if (agents.size() == 1 && agents[0].device.empty()) return agents[0];
  std::string device = f.Get("device");
  if (device.empty()) {
    TERN_ASSIGN_OR_RETURN(std::optional<ClusterRecord> c, ResolveCluster(f));
    Result<cluster::Topology> t = cluster::LoadTopologyFile(c->topology);
    if (!t.ok()) return t.status().WithPrefix("the cluster's topology");
    for (const cluster::Device* d : t->Devices()) {
      for (const std::string& ds : d->datasets) {
        if (ds == dataset) device = d->name;
      }
    }
    if (device.empty()) {
      return NotFoundError(fmt::format(
          "no device of the topology holds dataset '{}' (list it under a device's `datasets:`, "
          "or pass --device)",
          dataset));
    }
  }
  for (const Target& a : agents) {
    if (a.device == device) return a;
  }
  return NotFoundError(fmt::format("no agent for device '{}' in this cluster", device));
}

Result<std::unique_ptr<client::AgentClient>> Connect(const Target& t) {
  return client::AgentClient::Connect(t.admin, std::chrono::milliseconds(5000));
}

std::string Bytes(uint64_t n) {
  if (n >= (uint64_t{1} << 30)) return fmt::format("{:.1f}G", n / double(1 << 30));
  if (n >= (1u << 20)) return fmt::format("{:.1f}M", n / double(1 << 20));
  if (n >= (1u << 10)) return fmt::format("{:.1f}K", n / 1024.0);
  return fmt::format("{}B", n);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

int CmdData(int argc, char** argv) {
  Flags f("tern data put DATASET FILE... | ls [DATASET] | get DATASET KEY [-o FILE] | "
          "rm DATASET [KEY]",
          "Manages datasets: named objects kept, durably and checksummed, by storage devices\n"
          "(docs/formats/dataset.md). Services read them with tern_data_read wherever they\n"
          "run. In a cluster, the device holding a dataset is --device, or the topology's\n"
          "device that lists it under `datasets:`.");
  f.Add("device", "", "the device to use (default: the one the topology names)");
  f.Add("key", "", "put: the object's key (default: the file's name; one file only)");
  f.Add("o", "", "get: write the object to this file instead of stdout");
  f.Add("agent", std::getenv("TERN_AGENT") ? std::getenv("TERN_AGENT") : "127.0.0.1:7401",
        "one agent's admin address HOST:PORT ($TERN_AGENT) instead of the cluster");
  AddClusterFlags(&f);
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern data", 1); rc >= 0) return rc;
  const std::vector<std::string>& p = f.positional();
  const std::string& sub = p[0];
  if (sub == "put") {
    if (p.size() < 3) return UsageError(f, "tern data", "put needs a DATASET and FILEs");
    if (!f.Get("key").empty() && p.size() != 3) {
      return UsageError(f, "tern data", "--key works with one file only");
    }
    Status ds = storage::ValidateDatasetName(p[1]);
    if (!ds.ok()) return CommandFailed(ds);
    Result<Target> t = Holder(f, p[1]);
    if (!t.ok()) return CommandFailed(t.status());
    auto c = Connect(*t);
    if (!c.ok()) return CommandFailed(c.status());
    for (size_t i = 2; i < p.size(); ++i) {
      std::string key = f.Get("key").empty() ? BaseName(p[i]) : f.Get("key");
      Result<std::string> bytes = ReadFile(p[i]);
      if (!bytes.ok()) return CommandFailed(bytes.status());
      Status s = (*c)->PutObject(p[1], key, *bytes);
      if (!s.ok()) return CommandFailed(s.WithPrefix(fmt::format("{}/{}", p[1], key)));
      std::printf("put %s/%s (%s) on %s\n", p[1].c_str(), key.c_str(), Bytes(bytes->size()).c_str(),
                  t->device.empty() ? t->admin.c_str() : t->device.c_str());
    }
    return 0;
  }
  if (sub == "ls") {
    if (p.size() > 2) return UsageError(f, "tern data", "ls takes at most a DATASET");
    Result<std::vector<Target>> agents = Agents(f);
    if (!agents.ok()) return CommandFailed(agents.status());
    if (p.size() == 2) {
      Result<Target> t = Holder(f, p[1]);
      if (!t.ok()) return CommandFailed(t.status());
      auto c = Connect(*t);
      if (!c.ok()) return CommandFailed(c.status());
      Result<std::string> r = (*c)->ListDataset(p[1]);
      if (!r.ok()) return CommandFailed(r.status());
      json j = json::parse(*r, nullptr, false);
      std::printf("%-40s %s\n", "KEY", "SIZE");
      for (const json& o : j) {
        std::printf("%-40s %s\n", o.value("key", "").c_str(),
                    Bytes(o.value("size", uint64_t{0})).c_str());
      }
      return 0;
    }
    std::printf("%-12s %-20s %-8s %-9s %-9s %s\n", "DEVICE", "DATASET", "OBJECTS", "SIZE", "READS",
                "READ");
    for (const Target& t : *agents) {
      auto c = Connect(t);
      if (!c.ok()) {
        std::printf("%-12s (unreachable: %s)\n", t.device.c_str(),
                    std::string(c.status().message()).c_str());
        continue;
      }
      Result<std::string> r = (*c)->Datasets();
      if (!r.ok()) return CommandFailed(r.status());
      for (const json& d : json::parse(*r, nullptr, false)) {
        std::printf("%-12s %-20s %-8llu %-9s %-9llu %s\n",
                    t.device.empty() ? "-" : t.device.c_str(), d.value("name", "").c_str(),
                    static_cast<unsigned long long>(d.value("objects", uint64_t{0})),
                    Bytes(d.value("bytes", uint64_t{0})).c_str(),
                    static_cast<unsigned long long>(d.value("reads", uint64_t{0})),
                    Bytes(d.value("bytes_read", uint64_t{0})).c_str());
      }
    }
    return 0;
  }
  if (sub == "get") {
    if (p.size() != 3) return UsageError(f, "tern data", "get needs a DATASET and a KEY");
    Result<Target> t = Holder(f, p[1]);
    if (!t.ok()) return CommandFailed(t.status());
    auto c = Connect(*t);
    if (!c.ok()) return CommandFailed(c.status());
    Result<std::string> bytes = (*c)->ReadObject(p[1], p[2], 0, storage::kMaxObjectBytes);
    if (!bytes.ok()) return CommandFailed(bytes.status());
    if (!f.Get("o").empty()) {
      Status s = WriteFileAtomic(f.Get("o"), *bytes);
      if (!s.ok()) return CommandFailed(s);
      std::printf("wrote %s (%s)\n", f.Get("o").c_str(), Bytes(bytes->size()).c_str());
      return 0;
    }
    std::fwrite(bytes->data(), 1, bytes->size(), stdout);
    return 0;
  }
  if (sub == "rm") {
    if (p.size() < 2 || p.size() > 3) return UsageError(f, "tern data", "rm needs a DATASET [KEY]");
    Result<Target> t = Holder(f, p[1]);
    if (!t.ok()) return CommandFailed(t.status());
    auto c = Connect(*t);
    if (!c.ok()) return CommandFailed(c.status());
    Status s = (*c)->RemoveObject(p[1], p.size() == 3 ? p[2] : "");
    if (!s.ok()) return CommandFailed(s);
    std::printf("removed %s%s\n", p[1].c_str(), p.size() == 3 ? ("/" + p[2]).c_str() : "");
    return 0;
  }
  return UsageError(f, "tern data", "unknown subcommand '" + sub + "' (put, ls, get, rm)");
}

}  // namespace tern::cli
