#include "cli/cluster.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli/flags.h"
#include "core/file.h"

namespace tern::cli {

using nlohmann::json;

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

}  // namespace

std::string TernHome() {
  if (std::string h = Env("TERN_HOME"); !h.empty()) return h;
  if (std::string h = Env("HOME"); !h.empty()) return h + "/.tern";
  return fmt::format("/tmp/tern-{}", ::getuid());
}

std::string ClusterDir(const std::string& name) { return TernHome() + "/clusters/" + name; }

std::string ClusterRecordToJson(const ClusterRecord& r) {
  json agents = json::object();
  for (const auto& [device, a] : r.agents) {
    agents[device] =
        json{{"host", a.host}, {"address", a.address}, {"log", a.log}, {"pid", a.pid}};
  }
  return json{{"name", r.name},           {"topology", r.topology},
              {"dir", r.dir},             {"controller", r.controller},
              {"gateway", r.gateway},     {"isolation", r.isolation},
              {"agents", agents}}
      .dump(2);
}

Result<ClusterRecord> ClusterRecordFromJson(const std::string& text, const std::string& origin) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return DataLossError(fmt::format("{}: not a JSON object", origin));
  }
  ClusterRecord r;
  try {
    r.name = j.at("name").get<std::string>();
    r.topology = j.value("topology", "");
    r.dir = j.value("dir", "");
    r.controller = j.at("controller").get<std::string>();
    r.gateway = j.value("gateway", "");
    r.isolation = j.value("isolation", "");
    if (j.contains("agents")) {
      for (const auto& [device, a] : j["agents"].items()) {
        r.agents[device] = ClusterRecord::Agent{a.value("host", ""), a.value("address", ""),
                                                a.value("log", ""), a.value("pid", 0)};
      }
    }
  } catch (const std::exception& e) {
    return DataLossError(fmt::format("{}: {}", origin, e.what()));
  }
  return r;
}

Status SaveClusterRecord(const ClusterRecord& r) {
  TERN_RETURN_IF_ERROR(MakeDirs(ClusterDir(r.name)));
  TERN_RETURN_IF_ERROR(WriteFileAtomic(ClusterDir(r.name) + "/cluster.json", ClusterRecordToJson(r)));
  return WriteFileAtomic(TernHome() + "/current", r.name + "\n");
}

Result<ClusterRecord> LoadClusterRecord(const std::string& name) {
  std::string n = name;
  if (n.empty()) {
    Result<std::string> cur = ReadFile(TernHome() + "/current");
    if (!cur.ok()) return NotFoundError("no cluster is up (start one with `tern up TOPOLOGY`)");
    n = *cur;
    while (!n.empty() && (n.back() == '\n' || n.back() == ' ')) n.pop_back();
  }
  std::string path = ClusterDir(n) + "/cluster.json";
  Result<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return NotFoundError(fmt::format("no cluster '{}' is up (no {})", n, path));
  }
  return ClusterRecordFromJson(*text, path);
}

void ForgetClusterRecord(const std::string& name) {
  ::unlink((ClusterDir(name) + "/cluster.json").c_str());
  Result<std::string> cur = ReadFile(TernHome() + "/current");
  if (cur.ok() && cur->rfind(name + "\n", 0) == 0) ::unlink((TernHome() + "/current").c_str());
}

void AddClusterFlags(Flags* f) {
  f->Add("controller", Env("TERN_CONTROLLER"),
         "controller HOST:PORT ($TERN_CONTROLLER; default: the cluster `tern up` started)");
  f->Add("gateway", Env("TERN_GATEWAY"), "gateway HOST:PORT ($TERN_GATEWAY; default: likewise)");
}

Result<std::optional<ClusterRecord>> ResolveCluster(const Flags& f) {
  if (f.IsSet("agent") || !Env("TERN_AGENT").empty()) return std::optional<ClusterRecord>();
  if (!f.Get("controller").empty() || !f.Get("gateway").empty()) {
    ClusterRecord r;
    r.name = "(given)";
    r.controller = f.Get("controller");
    r.gateway = f.Get("gateway");
    // Fill what was not given from the current cluster, if any.
    Result<ClusterRecord> cur = LoadClusterRecord("");
    if (cur.ok()) {
      if (r.controller.empty()) r.controller = cur->controller;
      if (r.gateway.empty()) r.gateway = cur->gateway;
    }
    return std::optional<ClusterRecord>(r);
  }
  Result<ClusterRecord> cur = LoadClusterRecord("");
  if (cur.ok()) return std::optional<ClusterRecord>(std::move(*cur));
  if (cur.status().code() == StatusCode::kNotFound) return std::optional<ClusterRecord>();
  return cur.status();
}

}  // namespace tern::cli
