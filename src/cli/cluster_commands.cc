#include "cli/cluster_commands.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "cli/flags.h"
#include "cli/main_util.h"
#include "cluster/topology.h"
#include "core/base64.h"
#include "core/clock.h"
#include "core/ids.h"
#include "transport/http.h"
#include "transport/json_api.h"

namespace tern::cli {

using nlohmann::json;

namespace {

Result<std::unique_ptr<transport::JsonApiClient>> Controller(const ClusterRecord& c,
                                                             int64_t timeout_ms) {
  if (c.controller.empty()) {
    return FailedPreconditionError("no controller address (--controller or `tern up` first)");
  }
  Result<std::unique_ptr<transport::JsonApiClient>> r = transport::JsonApiClient::Connect(
      c.controller, "controller", std::chrono::milliseconds(std::min<int64_t>(timeout_ms, 5000)));
  if (!r.ok()) {
    return Status(r.status().code(),
                  fmt::format("{} (is the cluster up? `tern up TOPOLOGY`, or --controller)",
                              r.status().message()));
  }
  return r;
}

std::string Mib(uint64_t bytes) { return fmt::format("{}M", bytes >> 20); }

// A durable instance refuses writes until its first base checkpoint has given it a
// keeper (its journal), so `tern deploy` of a durable service returns only when every
// instance has one: a request sent right after the deploy then succeeds. Not durable: at
// once. The wait is bounded by the command's timeout; running out is a note, not an error
// (the controller keeps trying, and `tern ps` shows the journal once it exists).
int WaitForJournals(transport::JsonApiClient& ctl, const std::string& service, int64_t timeout_ms) {
  const int64_t deadline = MonoNanos() + timeout_ms * 1'000'000;
  bool said = false;
  for (;;) {
    Result<std::string> r =
        ctl.Call("GET", "/v1/cluster", {}, std::chrono::milliseconds(timeout_ms));
    if (!r.ok()) return CommandFailed(r.status());
    json j = json::parse(*r, nullptr, false);
    if (j.is_discarded()) return CommandFailed(InternalError("the controller sent malformed JSON"));
    std::vector<std::string> waiting, ready;
    for (const json& svc : j.value("services", json::array())) {
      if (svc.value("name", "") != service) continue;
      if (!svc.value("durable", false)) return 0;
      for (const json& i : svc.value("instances", json::array())) {
        const std::string id = i.value("id", "");
        if (i.contains("checkpoint") && i["checkpoint"].value("durable", false)) {
          std::vector<std::string> keepers;
          for (const json& k : i["checkpoint"].value("keepers", json::array())) {
            if (k.is_string()) keepers.push_back(k.get<std::string>());
          }
          if (keepers.empty()) keepers.push_back(i["checkpoint"].value("device", ""));
          ready.push_back(fmt::format("{} on {}{}", id, fmt::join(keepers, " and "),
                                      keepers.size() < 2 ? " (one copy: degraded)" : ""));
        } else {
          waiting.push_back(id);
        }
      }
    }
    if (waiting.empty()) {
      if (!ready.empty()) std::printf("journals: %s\n", fmt::format("{}", fmt::join(ready, ", ")).c_str());
      return 0;
    }
    if (MonoNanos() > deadline) {
      std::printf("note: no journal yet for %s; durable requests fail until the controller "
                  "assigns one (tern ps shows it)\n",
                  fmt::format("{}", fmt::join(waiting, ", ")).c_str());
      return 0;
    }
    if (!said) {
      std::printf("waiting for the first durable checkpoint of %s...\n",
                  fmt::format("{}", fmt::join(waiting, ", ")).c_str());
      std::fflush(stdout);
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

int ClusterDeploy(const ClusterRecord& c, const std::string& manifest_yaml,
                  const std::string& module, int replicas, const std::string& devices,
                  const std::string& placement_json, int64_t timeout_ms) {
  json req{{"manifest", manifest_yaml}, {"module_b64", Base64Encode(module)}};
  if (!placement_json.empty()) req["placement"] = json::parse(placement_json);
  if (replicas >= 0) req["replicas"] = replicas;
  if (!devices.empty()) {
    json d = json::array();
    for (size_t i = 0; i <= devices.size();) {
      size_t j = devices.find(',', i);
      if (j == std::string::npos) j = devices.size();
      if (j > i) d.push_back(devices.substr(i, j - i));
      i = j + 1;
    }
    req["devices"] = d;
  }
  auto ctl = Controller(c, timeout_ms);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  Result<std::string> r = (*ctl)->Call("POST", "/v1/services", req.dump(),
                                       std::chrono::milliseconds(timeout_ms));
  if (!r.ok()) return CommandFailed(r.status());
  json s = json::parse(*r, nullptr, false);
  if (s.is_discarded()) return CommandFailed(InternalError("the controller sent malformed JSON"));
  std::vector<std::string> where;
  size_t total = s["instances"].size();
  for (const json& i : s["instances"]) {
    if (where.size() == 8 && total > 9) {
      where.push_back(fmt::format("and {} more (tern ps)", total - 8));
      break;
    }
    where.push_back(fmt::format("{} on {} ({})", i.value("id", ""), i.value("device", ""),
                                i.value("host", "")));
  }
  std::printf("deployed %s (module %s): %zu of %d replicas%s%s\n", s.value("name", "").c_str(),
              s.value("module_hash", "").substr(0, 12).c_str(), total,
              s.value("replicas", 0), where.empty() ? "" : ": ",
              fmt::format("{}", fmt::join(where, ", ")).c_str());
  if (s.contains("problem")) {
    std::printf("note: %s\n", s["problem"].get<std::string>().c_str());
  }
  return WaitForJournals(**ctl, s.value("name", ""), timeout_ms);
}

int ClusterUndeploy(const ClusterRecord& c, const std::string& service, int64_t timeout_ms) {
  auto ctl = Controller(c, timeout_ms);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  Result<std::string> r =
      (*ctl)->Call("DELETE", "/v1/services/" + service, {}, std::chrono::milliseconds(timeout_ms));
  if (!r.ok()) return CommandFailed(r.status());
  std::printf("undeployed %s\n", service.c_str());
  return 0;
}

int ClusterPs(const ClusterRecord& c, bool raw_json, int64_t timeout_ms) {
  auto ctl = Controller(c, timeout_ms);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  Result<std::string> r = (*ctl)->Call("GET", "/v1/cluster", {}, std::chrono::milliseconds(timeout_ms));
  if (!r.ok()) return CommandFailed(r.status());
  if (raw_json) {
    std::printf("%s\n", r->c_str());
    return 0;
  }
  json j = json::parse(*r, nullptr, false);
  if (j.is_discarded()) return CommandFailed(InternalError("the controller sent malformed JSON"));
  std::printf("cluster %s: controller %s (leader %s), store %s, gateway %s\n\n", c.name.c_str(),
              c.controller.c_str(), j.value("leader", "?").c_str(), j.value("store", "?").c_str(),
              c.gateway.empty() ? "-" : c.gateway.c_str());
  // Per-instance telemetry, reported by the agents.
  std::map<std::string, json> tel;
  std::printf("%-12s %-8s %-5s %-6s %-6s %-6s %-7s %-5s %s\n", "DEVICE", "HOST", "KIND", "CORES",
              "SPEED", "CPU", "MEMORY", "INST", "ADDRESS");
  for (const json& a : j["agents"]) {
    int inst = 0;
    if (a.contains("instances")) {
      for (const auto& [id, t] : a["instances"].items()) {
        tel[id] = t;
        ++inst;
      }
    }
    std::string device = a.value("device", "");
    if (a.value("draining", false)) device += " (drain)";
    std::printf(
        "%-12s %-8s %-5s %-6.2f %-6.2f %-6s %-7s %-5d %s\n", device.c_str(),
        a.value("host", "").c_str(), a.value("kind", "").c_str(), a.value("cores", 0.0),
        a.value("speed", 0.0),
        a.contains("cpu_util") ? fmt::format("{:.0f}%", 100 * a["cpu_util"].get<double>()).c_str()
                               : "-",
        Mib(a.value("memory_bytes", uint64_t{0})).c_str(), inst, a.value("tcp", "").c_str());
  }
  std::printf("\n%-18s %-12s %-12s %-8s %-6s %-9s %-9s %-9s %-9s %-9s %-9s %s\n", "INSTANCE",
              "SERVICE", "DEVICE", "HOST", "EPOCH", "STATE", "REQ/S", "EXEC_US", "P99_MS", "J/REQ",
              "REQUESTS", "CHECKPOINT");
  std::vector<std::string> problems;
  for (const json& s : j["services"]) {
    for (const json& i : s["instances"]) {
      std::string id = i.value("id", "");
      auto t = tel.find(id);
      std::string joules = "-";
      if (t != tel.end() && t->second.value("j_per_request", 0.0) > 0) {
        joules = fmt::format("{:.3g}{}", t->second["j_per_request"].get<double>(),
                             t->second.value("energy_source", "") == "rapl" ? "r" : "");
      }
      std::string ckpt = "-";
      if (i.contains("checkpoint")) {
        // Every keeper of a copy, the newest copy's first.
        std::string keepers = i["checkpoint"].value("device", "");
        if (i["checkpoint"].contains("keepers") && i["checkpoint"]["keepers"].is_array()) {
          keepers.clear();
          for (const json& k : i["checkpoint"]["keepers"]) {
            if (!k.is_string()) continue;
            keepers += (keepers.empty() ? "" : "+") + k.get<std::string>();
          }
        }
        ckpt = fmt::format("{:.1f}s ago on {}",
                           i["checkpoint"].value("age_ms", int64_t{0}) / 1000.0, keepers);
      } else if (s.value("checkpoint_ms", int64_t{0}) > 0) {
        ckpt = "none yet";
      }
      // Durable: every acknowledged request is in the journal on the same keepers; fewer
      // than two that get its records (one dropped out, or only one can keep it) is
      // degraded: durable against one device's death, not two.
      if (s.value("durable", false)) {
        size_t copies = i.contains("checkpoint") ? i["checkpoint"].value("keepers", json::array()).size() : 0;
        std::string out;
        if (i.contains("journal") && i["journal"].is_object()) {
          copies = i["journal"].value("keepers", json::array()).size();
          for (const json& k : i["journal"].value("out", json::array())) {
            if (k.is_string()) out += (out.empty() ? "" : ",") + k.get<std::string>();
          }
        }
        // What the controller recorded (the agent reports a drop-out before it
        // acknowledges without that keeper): ahead of the next heartbeat.
        if (out.empty() && i.contains("checkpoint")) {
          for (const json& k : i["checkpoint"].value("keepers_out", json::array())) {
            if (!k.is_object()) continue;
            out += fmt::format("{}{} at #{}", out.empty() ? "" : ",", k.value("device", ""),
                               k.value("seq", uint64_t{0}));
            copies = std::min<size_t>(copies, 1);
          }
        }
        ckpt += copies >= 2 ? " +journal (durable)"
                            : fmt::format(" +journal (durable, DEGRADED: {} of 2 copies{})", copies,
                                          out.empty() ? "" : "; " + out + " dropped out");
      }
      std::string state = i.value("state", "");
      if (i.value("moving", false)) state = "moving";
      // The p99 of its time in the guest over the last interval with requests, against
      // its service's SLO ("!" = above it).
      std::string p99 = "-";
      if (i.contains("p99_us") && i["p99_us"].is_number()) {
        double us = i["p99_us"].get<double>();
        double slo = s.value("slo_p99_us", 0.0);
        p99 = fmt::format("{:.3g}{}", us / 1000, slo > 0 && us > slo ? "!" : "");
      }
      std::printf(
          "%-18s %-12s %-12s %-8s %-6lld %-9s %-9s %-9s %-9s %-9s %-9s %s\n", id.c_str(),
          s.value("name", "").c_str(), i.value("device", "").c_str(), i.value("host", "").c_str(),
          static_cast<long long>(i.value("epoch", int64_t{0})), state.c_str(),
          t == tel.end() ? "-" : fmt::format("{:.1f}", t->second.value("rate", 0.0)).c_str(),
          t == tel.end() ? "-"
                         : fmt::format("{:.1f}", t->second.value("mean_exec_us", 0.0)).c_str(),
          p99.c_str(), joules.c_str(),
          t == tel.end() ? "-" : std::to_string(t->second.value("requests", uint64_t{0})).c_str(),
          ckpt.c_str());
    }
    if (s.contains("problem")) {
      problems.push_back(fmt::format("{}: {}", s.value("name", ""), s["problem"].get<std::string>()));
    }
  }
  for (const std::string& p : problems) std::printf("! %s\n", p.c_str());
  bool any_data = false;
  for (const json& a : j["agents"]) {
    if (!a.contains("datasets") || a["datasets"].empty()) continue;
    if (!any_data) std::printf("\n%-20s %-12s %-8s %-10s %s\n", "DATASET", "DEVICE", "OBJECTS", "SIZE", "SERVED");
    any_data = true;
    for (const auto& [name, d] : a["datasets"].items()) {
      std::printf("%-20s %-12s %-8llu %-10s %s\n", name.c_str(), a.value("device", "").c_str(),
                  static_cast<unsigned long long>(d.value("objects", uint64_t{0})),
                  Mib(d.value("bytes", uint64_t{0})).c_str(),
                  Mib(d.value("bytes_read", uint64_t{0})).c_str());
    }
  }
  if (j.contains("events") && !j["events"].empty()) {
    std::printf("\nrecent events:\n");
    const json& ev = j["events"];
    size_t from = ev.size() > 8 ? ev.size() - 8 : 0;
    for (size_t k = from; k < ev.size(); ++k) {
      std::printf("  %s\n", ev[k].value("event", "").c_str());
    }
  }
  return 0;
}

int ClusterInvoke(const ClusterRecord& c, const std::string& service, const std::string& handler,
                  const std::string& payload, int64_t repeat, int64_t timeout_ms,
                  const transport::CallIds& ids) {
  if (c.gateway.empty()) {
    return CommandFailed(FailedPreconditionError("no gateway address (--gateway or `tern up` first)"));
  }
  std::string host;
  uint16_t port = 0;
  Status hp = ParseHostPort(c.gateway, &host, &port);
  if (!hp.ok()) return CommandFailed(hp.WithPrefix("gateway"));
  auto http = transport::HttpClient::Connect(host, port, std::chrono::seconds(5));
  if (!http.ok()) {
    return CommandFailed(Status(http.status().code(),
                       fmt::format("gateway {}: {} (is the cluster up?)", c.gateway,
                                   http.status().message())));
  }
  std::string target = "/v1/invoke/" + service + "/" + handler;
  transport::HttpHeaders headers = {{"X-Tern-Timeout-Ms", std::to_string(timeout_ms)},
                                    {transport::kTraceIdHeader, TraceIdHex(ids.trace_id)}};
  if (ids.idempotency_key != 0) {
    headers.emplace_back(transport::kIdempotencyKeyHeader, std::to_string(ids.idempotency_key));
  }
  // The trace id the gateway used (it echoes ours), on stderr (stdout is the reply) when
  // that is a terminal.
  auto print_trace = [&](const transport::HttpClientResponse* r) {
    if (!isatty(STDERR_FILENO)) return;
    const std::string* t = r ? r->FindHeader(transport::kTraceIdHeader) : nullptr;
    std::fprintf(stderr, "trace %s\n", t ? t->c_str() : TraceIdHex(ids.trace_id).c_str());
  };
  auto once = [&]() -> Result<transport::HttpClientResponse> {
    TERN_ASSIGN_OR_RETURN(transport::HttpClientResponse r,
                          (*http)->Request("POST", target, payload, "application/octet-stream",
                                           std::chrono::milliseconds(timeout_ms + 1000), headers));
    if (r.status != 200) return transport::StatusFromErrorBody(r.status, r.body, "gateway");
    return r;
  };
  if (repeat == 1) {
    Result<transport::HttpClientResponse> r = once();
    print_trace(r.ok() ? &*r : nullptr);
    if (!r.ok()) return CommandFailed(r.status());
    PrintReply(r->body);
    return 0;
  }
  std::vector<int64_t> ns;
  std::map<std::string, int> served;
  int64_t start = MonoNanos();
  for (int64_t i = 0; i < repeat; ++i) {
    int64_t t0 = MonoNanos();
    Result<transport::HttpClientResponse> r = once();
    if (i == 0 || !r.ok()) print_trace(r.ok() ? &*r : nullptr);
    if (!r.ok()) return CommandFailed(r.status().WithPrefix(fmt::format("call {} of {}", i + 1, repeat)));
    ns.push_back(MonoNanos() - t0);
    const std::string* who = r->FindHeader("x-tern-instance");
    ++served[who ? *who : "?"];
  }
  PrintLatencySummary(std::move(ns), static_cast<double>(MonoNanos() - start) / 1e9,
                      " through the gateway");
  std::string by;
  for (const auto& [id, n] : served) by += fmt::format("{}{} {}", by.empty() ? "" : ", ", id, n);
  std::printf("served by: %s\n", by.c_str());
  return 0;
}

int CmdExplain(int argc, char** argv) {
  Flags f("tern explain SERVICE",
          "Shows where the placement engine would put one more instance of a service, and\n"
          "why: every device with its predicted p50/p99 latency, energy per request and\n"
          "bytes moved, and the verdict (chosen, rejected and for what).");
  f.Add("timeout-ms", "30000", "give up after this many milliseconds");
  AddClusterFlags(&f);
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern explain", 1, 1); rc >= 0) return rc;
  Result<std::optional<ClusterRecord>> c = ResolveCluster(f);
  if (!c.ok()) return CommandFailed(c.status());
  if (!c->has_value()) {
    return CommandFailed(FailedPreconditionError("no cluster: `tern up` first, or --controller"));
  }
  auto ctl = Controller(**c, 30000);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  Result<std::string> r =
      (*ctl)->Call("GET", "/v1/services/" + f.positional()[0] + "/explain", {});
  if (!r.ok()) return CommandFailed(r.status());
  json j = json::parse(*r, nullptr, false);
  if (j.is_discarded()) return CommandFailed(InternalError("the controller sent malformed JSON"));
  std::string where;
  for (const json& i : j["instances"]) {
    where += fmt::format("{}{} on {}", where.empty() ? "" : ", ", i.value("id", ""),
                         i.value("device", ""));
  }
  std::printf("%s: policy %s; running: %s\n\n%s", j.value("service", "").c_str(),
              j.value("policy", "").c_str(), where.empty() ? "none" : where.c_str(),
              j.value("text", "").c_str());
  return 0;
}

int CmdTopology(int argc, char** argv) {
  Flags f("tern topology check FILE.yaml",
          "Validates a topology file (hosts, devices, links; docs/formats/topology.md) and\n"
          "prints what it describes. Errors name the line and the field.");
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern topology", 2, 2); rc >= 0) return rc;
  if (f.positional()[0] != "check") {
    return UsageError(f, "tern topology", "unknown subcommand '" + f.positional()[0] + "'");
  }
  Result<cluster::Topology> t = cluster::LoadTopologyFile(f.positional()[1]);
  if (!t.ok()) return CommandFailed(t.status());
  std::fputs(cluster::DescribeTopology(*t).c_str(), stdout);
  std::printf("ok: %s is a valid topology\n", f.positional()[1].c_str());
  return 0;
}

int CmdLogs(int argc, char** argv) {
  Flags f("tern logs DEVICE|controller|gateway [--lines N] [--follow]",
          "Prints the log of a process of the cluster `tern up` started (the current one,\n"
          "or --cluster NAME).");
  f.Add("lines", "40", "how many of the last lines to print");
  f.AddBool("follow", "keep printing new lines until interrupted");
  f.Add("cluster", "", "the cluster (default: the current one)");
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern logs", 1, 1); rc >= 0) return rc;
  Result<int64_t> lines = f.GetInt("lines", 0, 1000000);
  if (!lines.ok()) return CommandFailed(lines.status());
  Result<ClusterRecord> c = LoadClusterRecord(f.Get("cluster"));
  if (!c.ok()) return CommandFailed(c.status());
  const std::string& who = f.positional()[0];
  std::string path = c->dir + "/logs/" + who + ".log";
  std::ifstream in(path);
  if (!in) {
    std::string names = "controller, gateway";
    for (const auto& [d, a] : c->agents) names += ", " + d;
    return CommandFailed(NotFoundError(fmt::format("no log {} (processes: {})", path, names)));
  }
  std::deque<std::string> last;
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (last.size() > static_cast<size_t>(*lines)) last.pop_front();
  }
  for (const std::string& l : last) std::printf("%s\n", l.c_str());
  std::fflush(stdout);
  if (!f.GetBool("follow")) return 0;
  in.clear();
  for (;;) {
    while (std::getline(in, line)) std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    in.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace tern::cli
