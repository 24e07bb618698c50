#include "cli/commands.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "cli/cluster.h"
#include "cli/cluster_commands.h"
#include "cli/flags.h"
#include "cli/main_util.h"
#include "client/agent_client.h"
#include "core/clock.h"
#include "core/file.h"
#include "core/ids.h"
#include "core/manifest.h"
#include "dataplane/location.h"

namespace tern::cli {
namespace {

constexpr char kDefaultAgent[] = "127.0.0.1:7401";

std::string DefaultAgent() {
  const char* env = std::getenv("TERN_AGENT");
  return env != nullptr && *env != '\0' ? env : kDefaultAgent;
}

void AddAgentFlag(Flags* f) {
  f->Add("agent", DefaultAgent(), "agent admin address HOST:PORT ($TERN_AGENT)");
  f->Add("timeout-ms", "30000", "give up after this many milliseconds");
}

// For commands that work on a whole cluster too: with a cluster (see cli/cluster.h)
// they talk to its controller and gateway; with --agent, to that one agent.
void AddTargetFlags(Flags* f) {
  AddAgentFlag(f);
  AddClusterFlags(f);
}

int Fail(const Status& s) { return CommandFailed(s); }
int Usage(const Flags& f, const Status& s) { return UsageError(f, "tern", s.message()); }
int ParseOrExit(Flags* f, int argc, char** argv, size_t min_pos, size_t max_pos) {
  return ParseFlagsOrExit(f, argc, argv, "tern", min_pos, max_pos);
}

Result<std::unique_ptr<client::AgentClient>> Connect(const Flags& f) {
  TERN_ASSIGN_OR_RETURN(int64_t ms, f.GetInt("timeout-ms", 1, 3'600'000));
  return client::AgentClient::Connect(f.Get("agent"), std::chrono::milliseconds(ms));
}

int CmdDeploy(int argc, char** argv) {
  Flags f("tern deploy MANIFEST [--module FILE.wasm] [flags]",
          "Deploys a service (a manifest + its wasm module) and starts `replicas`\n"
          "instances of it: through the cluster's controller, which places them (see\n"
          "`tern up`), or on one agent with --agent. Deploying a service again replaces it.");
  f.Add("module", "",
        "the .wasm to deploy (default: the manifest's `module`, looked up next to the "
        "manifest, in $TERN_WASM_PATH, then build/release/wasm and build/dev/wasm)");
  f.AddBool("no-start", "deploy without starting instances");
  f.Add("name", "", "deploy under this service name instead of the manifest's `name`");
  f.Add("replicas", "", "number of instances instead of the manifest's `replicas`");
  f.Add("checkpoint-ms", "",
        "cluster, stateful services: snapshot each instance this often to a storage device, "
        "to restore it from if its agent dies (the manifest's `checkpoint_ms`; 0 = off)");
  f.AddBool("durable",
            "cluster, stateful services: no acknowledged request is lost when its agent dies: "
            "each reply waits until what the request wrote is journaled (fdatasync) on the "
            "instance's two journal keepers (the manifest's `durable`; implies checkpoints)");
  f.AddBool("durable-strict",
            "as --durable, but a request whose record a keeper fails to take fails "
            "(`unavailable`, rolled back) instead of being acknowledged with one copy "
            "(the manifest's `durable: strict`)");
  f.Add("devices", "", "cluster: the devices it may run on, comma-separated (default: any)");
  f.Add("policy", "",
        "cluster: let the placement engine place it: latency, energy, balanced, host-only, "
        "random or data-local (default: spread replicas over devices)");
  f.Add("cpu-us", "", "placement hint: CPU time per request on a reference core, µs");
  f.Add("reads", "", "placement hint: dataset bytes read per request, DATASET=BYTES[,...]");
  f.Add("slo-p99-ms", "",
        "placement: the p99 latency target, ms (with --policy; overrides the manifest's "
        "`slo_p99_ms`)");
  f.Add("rate", "", "placement hint: requests per second per instance");
  f.Add("cv2", "",
        "placement hint: variability of the CPU time per request, variance/mean^2 (1 = "
        "exponential, the default; 0 = constant, e.g. a scan of a fixed object)");
  AddTargetFlags(&f);
  if (int rc = ParseOrExit(&f, argc, argv, 1, 1); rc >= 0) return rc;
  const std::string manifest_path = f.positional()[0];
  Result<Manifest> m = LoadManifest(manifest_path);
  if (!m.ok()) return Fail(m.status());
  const bool rewritten = !f.Get("name").empty() || !f.Get("replicas").empty() ||
                         !f.Get("checkpoint-ms").empty() || f.GetBool("durable") ||
                         f.GetBool("durable-strict");
  if (f.GetBool("durable") || f.GetBool("durable-strict")) {
    if (!m->stateful) {
      return Fail(InvalidArgumentError(fmt::format(
          "--durable is for stateful services; {} is not (`stateful: true`): a stateless "
          "service has no state to lose",
          m->name)));
    }
    m->durable = true;
    m->durable_strict = m->durable_strict || f.GetBool("durable-strict");
    if (m->checkpoint_ms == 0) m->checkpoint_ms = kDurableCheckpointMs;
  }
  if (!f.Get("checkpoint-ms").empty()) {
    Result<int64_t> ms = f.GetInt("checkpoint-ms", 0, kMaxCheckpointMs);
    if (!ms.ok()) return Fail(ms.status());
    if (*ms != 0 && *ms < kMinCheckpointMs) {
      return Fail(InvalidArgumentError(
          fmt::format("--checkpoint-ms must be 0 (off) or at least {}", kMinCheckpointMs)));
    }
    if (*ms != 0 && !m->stateful) {
      return Fail(InvalidArgumentError(fmt::format(
          "--checkpoint-ms is for stateful services; {} is not (`stateful: true`)", m->name)));
    }
    if (*ms == 0 && m->durable) {
      return Fail(InvalidArgumentError(
          "--checkpoint-ms 0 with a durable service: its journal is truncated after each base "
          "checkpoint, so it needs them (leave --checkpoint-ms out for the default of 10000)"));
    }
    m->checkpoint_ms = static_cast<uint32_t>(*ms);
  }
  if (!f.Get("name").empty()) {
    if (!IsValidName(f.Get("name"))) {
      return Fail(InvalidArgumentError(fmt::format(
          "--name '{}' is not a valid service name (letters, digits, '-', '_', '.')",
          f.Get("name"))));
    }
    m->name = f.Get("name");
  }
  if (!f.Get("replicas").empty()) {
    Result<int64_t> n = f.GetInt("replicas", 0, 1024);
    if (!n.ok()) return Fail(n.status());
    m->replicas = static_cast<uint32_t>(*n);
  }
  std::string module_path = f.Get("module");
  if (module_path.empty()) {
    if (m->module.empty()) {
      return Fail(
          InvalidArgumentError(manifest_path + " has no `module:` field; pass --module FILE.wasm"));
    }
    // Next to the manifest first, then where the build puts guests.
    std::vector<std::string> candidates = {JoinPath(DirName(manifest_path), m->module)};
    if (const char* p = std::getenv("TERN_WASM_PATH"); p != nullptr && *p != '\0') {
      candidates.push_back(JoinPath(p, m->module));
    }
    for (const char* dir : {"build/release/wasm", "build/dev/wasm"}) {
      candidates.push_back(JoinPath(dir, m->module));
    }
    module_path = candidates[0];
    for (const auto& c : candidates) {
      if (FileExists(c)) {
        module_path = c;
        break;
      }
    }
  }
  Result<std::string> bytes = ReadFile(module_path);
  if (!bytes.ok()) {
    return Fail(
        Status(bytes.status().code(),
               fmt::format("{} (pass --module PATH; `make build` puts guests in build/dev/wasm/)",
                           bytes.status().message())));
  }
  Result<std::string> yaml = rewritten ? Result<std::string>(ManifestToYaml(*m))
                                       : ReadFile(manifest_path);
  if (!yaml.ok()) return Fail(yaml.status());
  Result<std::optional<ClusterRecord>> cluster = ResolveCluster(f);
  if (!cluster.ok()) return Fail(cluster.status());
  if (cluster->has_value()) {
    Result<int64_t> tmo = f.GetInt("timeout-ms", 1, 3'600'000);
    if (!tmo.ok()) return Usage(f, tmo.status());
    int replicas = f.Get("replicas").empty() ? -1 : static_cast<int>(m->replicas);
    if (f.GetBool("no-start")) replicas = 0;
    std::string placement;
    if (!f.Get("policy").empty()) {
      nlohmann::json p{{"policy", f.Get("policy")}};
      for (const char* k : {"cpu-us", "slo-p99-ms", "rate", "cv2"}) {
        if (f.Get(k).empty()) continue;
        char* end = nullptr;
        double v = std::strtod(f.Get(k).c_str(), &end);
        if (*end != '\0' || !(v >= 0)) {
          return Usage(f, InvalidArgumentError(fmt::format("--{} must be a number >= 0", k)));
        }
        if (std::string(k) == "cpu-us") p["cpu_us"] = v;
        if (std::string(k) == "slo-p99-ms") p["slo_p99_us"] = v * 1000;
        if (std::string(k) == "rate") p["rate"] = v;
        if (std::string(k) == "cv2") p["cv2"] = v;
      }
      nlohmann::json reads = nlohmann::json::array();
      std::string spec = f.Get("reads");
      for (size_t i = 0; i < spec.size();) {
        size_t j = spec.find(',', i);
        if (j == std::string::npos) j = spec.size();
        std::string one = spec.substr(i, j - i);
        size_t eq = one.find('=');
        char* end = nullptr;
        double v = eq == std::string::npos ? -1 : std::strtod(one.c_str() + eq + 1, &end);
        if (eq == std::string::npos || *end != '\0' || !(v >= 0)) {
          return Usage(f, InvalidArgumentError("--reads must be DATASET=BYTES[,DATASET=BYTES]"));
        }
        reads.push_back({{"dataset", one.substr(0, eq)}, {"bytes", v}});
        i = j + 1;
      }
      if (!reads.empty()) p["reads"] = reads;
      placement = p.dump();
    } else if (!f.Get("cpu-us").empty() || !f.Get("reads").empty() ||
               !f.Get("slo-p99-ms").empty() || !f.Get("rate").empty() || !f.Get("cv2").empty()) {
      return Usage(f, InvalidArgumentError("placement hints need --policy"));
    }
    return ClusterDeploy(**cluster, *yaml, *bytes, replicas, f.Get("devices"), placement, *tmo);
  }
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  Result<std::string> r = (*c)->Deploy(*yaml, *bytes, !f.GetBool("no-start"));
  if (!r.ok()) return Fail(r.status());
  nlohmann::json j = nlohmann::json::parse(*r, nullptr, false);
  std::vector<std::string> inst = j.value("instances", std::vector<std::string>{});
  std::string list;
  for (const auto& i : inst) list += (list.empty() ? "" : ", ") + i;
  std::printf("deployed %s %s (module %s, %zu bytes); instances: %s\n", m->name.c_str(),
              m->version.c_str(), j.value("module_hash", std::string("?")).substr(0, 12).c_str(),
              bytes->size(), list.empty() ? "none" : list.c_str());
  return 0;
}

int CmdInvoke(int argc, char** argv) {
  Flags f("tern invoke SERVICE HANDLER [PAYLOAD] [flags]",
          "Calls a handler of a service and prints the reply: through the cluster's\n"
          "gateway (HTTP), or over one agent's frame protocol with --agent. PAYLOAD is\n"
          "taken literally; `-` reads it from stdin. When stderr is a terminal, the trace\n"
          "id of the call is printed there (`trace <hex>`); scripts choose their own with\n"
          "--trace-id. Every call of --repeat sends the same ids.");
  f.Add("data-file", "", "read the payload from this file");
  f.Add("repeat", "1", "call N times and print latency percentiles instead of the reply");
  f.Add("trace-id", "", "trace id to send (1-16 hex digits; default: a fresh random one)");
  f.Add("idempotency-key", "",
        "idempotency key to send: a u64, decimal or hex after 0x (default: none)");
  AddTargetFlags(&f);
  if (int rc = ParseOrExit(&f, argc, argv, 2, 3); rc >= 0) return rc;
  std::string payload;
  if (f.positional().size() == 3) {
    payload = f.positional()[2];
    if (payload == "-") {
      payload.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    }
  }
  if (f.IsSet("data-file")) {
    Result<std::string> d = ReadFile(f.Get("data-file"));
    if (!d.ok()) return Fail(d.status());
    payload = std::move(*d);
  }
  Result<int64_t> repeat = f.GetInt("repeat", 1, 10'000'000);
  if (!repeat.ok()) return Usage(f, repeat.status());
  Result<int64_t> tmo = f.GetInt("timeout-ms", 1, 3'600'000);
  if (!tmo.ok()) return Usage(f, tmo.status());
  transport::CallIds ids;
  if (f.IsSet("trace-id")) {
    Result<uint64_t> t = ParseTraceId(f.Get("trace-id"), "--trace-id");
    if (!t.ok()) return Usage(f, t.status());
    ids.trace_id = *t;
  } else {
    ids.trace_id = NewTraceId();
  }
  if (f.IsSet("idempotency-key")) {
    Result<uint64_t> k = ParseIdempotencyKey(f.Get("idempotency-key"), "--idempotency-key");
    if (!k.ok()) return Usage(f, k.status());
    ids.idempotency_key = *k;
  }
  Result<std::optional<ClusterRecord>> cluster = ResolveCluster(f);
  if (!cluster.ok()) return Fail(cluster.status());
  if (cluster->has_value()) {
    return ClusterInvoke(**cluster, f.positional()[0], f.positional()[1], payload, *repeat, *tmo,
                         ids);
  }
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  const std::string& svc = f.positional()[0];
  const std::string& handler = f.positional()[1];
  if (isatty(STDERR_FILENO)) std::fprintf(stderr, "trace %s\n", TraceIdHex(ids.trace_id).c_str());
  if (*repeat == 1) {
    Result<std::string> r =
        (*c)->Invoke(svc, handler, payload, std::chrono::milliseconds(*tmo), ids);
    if (!r.ok()) return Fail(r.status());
    PrintReply(*r);
    return 0;
  }
  std::vector<int64_t> ns;
  ns.reserve(static_cast<size_t>(*repeat));
  int64_t start = MonoNanos();
  for (int64_t i = 0; i < *repeat; ++i) {
    int64_t t0 = MonoNanos();
    Result<std::string> r =
        (*c)->Invoke(svc, handler, payload, std::chrono::milliseconds(*tmo), ids);
    if (!r.ok()) return Fail(r.status().WithPrefix(fmt::format("call {} of {}", i + 1, *repeat)));
    ns.push_back(MonoNanos() - t0);
  }
  PrintLatencySummary(std::move(ns), (MonoNanos() - start) / 1e9, "");
  return 0;
}

int CmdLocations(int argc, char** argv) {
  Flags f("tern locations ls | set FILE.yaml [--replace] | links FILE.json [flags]",
          "Shows or changes an agent's location table: where the instances of other agents\n"
          "run (agent, host, TCP address, shared-memory socket, epoch). Calls from guests\n"
          "pick an instance and a transport from it. `set` upserts the entries of a YAML\n"
          "file (`locations:` list; older epochs are ignored) or, with --replace, replaces\n"
          "the table. `links` sets emulated links between hosts from a JSON file:\n"
          "[{\"a\": \"h1\", \"b\": \"h2\", \"latency\": \"50us\", \"bandwidth\": \"1gbit\"}].");
  f.AddBool("replace", "replace the whole table instead of upserting");
  AddAgentFlag(&f);
  if (int rc = ParseOrExit(&f, argc, argv, 1, 2); rc >= 0) return rc;
  const std::string sub = f.positional()[0];
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  if (sub == "ls") {
    Result<std::string> r = (*c)->Locations();
    if (!r.ok()) return Fail(r.status());
    Result<std::vector<dataplane::InstanceLocation>> locs = dataplane::ParseLocationsJson(*r);
    if (!locs.ok()) return Fail(locs.status());
    std::printf("%-20s %-14s %-14s %-10s %-22s %-6s %s\n", "INSTANCE", "SERVICE", "AGENT", "HOST",
                "TCP", "EPOCH", "SHM");
    for (const auto& l : *locs) {
      std::printf("%-20s %-14s %-14s %-10s %-22s %-6llu %s\n", l.instance.c_str(),
                  l.service.c_str(), l.agent.c_str(), l.host.c_str(), l.tcp.c_str(),
                  static_cast<unsigned long long>(l.epoch), l.shm.c_str());
    }
    return 0;
  }
  if (f.positional().size() != 2) {
    return Fail(InvalidArgumentError("tern locations " + sub + " needs a FILE"));
  }
  if (sub == "set") {
    Result<std::vector<dataplane::InstanceLocation>> locs =
        dataplane::LoadLocationsFile(f.positional()[1]);
    if (!locs.ok()) return Fail(locs.status());
    Result<std::string> r =
        (*c)->SetLocations(dataplane::LocationsToJson(*locs), f.GetBool("replace"));
    if (!r.ok()) return Fail(r.status());
    std::printf("%s\n", r->c_str());
    return 0;
  }
  if (sub == "links") {
    Result<std::string> body = ReadFile(f.positional()[1]);
    if (!body.ok()) return Fail(body.status());
    Result<std::string> r = (*c)->SetLinks(*body);
    if (!r.ok()) return Fail(r.status());
    std::printf("%s\n", r->c_str());
    return 0;
  }
  return Fail(InvalidArgumentError("unknown subcommand '" + sub + "' (ls, set or links)"));
}

int CmdPs(int argc, char** argv) {
  Flags f("tern ps [flags]",
          "Lists devices, services, instances (placement, epoch, load) and recent events\n"
          "of the cluster, or one agent's services and instances with --agent.");
  f.AddBool("json", "print the raw JSON status");
  AddTargetFlags(&f);
  if (int rc = ParseOrExit(&f, argc, argv, 0, 0); rc >= 0) return rc;
  Result<std::optional<ClusterRecord>> cluster = ResolveCluster(f);
  if (!cluster.ok()) return Fail(cluster.status());
  if (cluster->has_value()) {
    Result<int64_t> tmo = f.GetInt("timeout-ms", 1, 3'600'000);
    if (!tmo.ok()) return Usage(f, tmo.status());
    return ClusterPs(**cluster, f.GetBool("json"), *tmo);
  }
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  Result<std::string> r = (*c)->StatusJson();
  if (!r.ok()) return Fail(r.status());
  if (f.GetBool("json")) {
    std::printf("%s\n", r->c_str());
    return 0;
  }
  nlohmann::json j = nlohmann::json::parse(*r, nullptr, false);
  if (j.is_discarded()) return Fail(InternalError("agent sent malformed JSON"));
  std::printf("device %s, %d workers, %zu compiled modules\n\n",
              j.value("device", std::string("?")).c_str(), j.value("workers", 0),
              j.value("cached_modules", size_t{0}));
  std::printf("%-16s %-10s %-9s %-6s %-14s %s\n", "SERVICE", "VERSION", "STATEFUL", "INST",
              "MODULE", "HANDLERS");
  for (const auto& s : j["services"]) {
    const auto& m = s["manifest"];
    std::string handlers;
    for (const auto& h : m["handlers"])
      handlers += (handlers.empty() ? "" : ",") + h.get<std::string>();
    std::printf("%-16s %-10s %-9s %-6zu %-14s %s\n", m.value("name", std::string()).c_str(),
                m.value("version", std::string()).c_str(),
                m.value("stateful", false) ? "yes" : "no", s["instances"].size(),
                s.value("module_hash", std::string()).substr(0, 12).c_str(), handlers.c_str());
  }
  std::printf("\n%-16s %-12s %-6s %-9s %-8s %-9s %-9s %-10s %s\n", "INSTANCE", "SERVICE", "WORKER",
              "REQUESTS", "FAILED", "ROLLBACK", "MEMORY", "AVG_EXEC", "LAST ERROR");
  for (const auto& i : j["instances"]) {
    uint64_t req = i.value("requests", uint64_t{0});
    double avg_us = req ? i.value("exec_ns_total", int64_t{0}) / 1e3 / static_cast<double>(req) : 0;
    std::string err = i.value("last_error", std::string());
    if (err.size() > 60) err = err.substr(0, 57) + "...";
    std::printf("%-16s %-12s %-6d %-9llu %-8llu %-9llu %-9s %-10s %s\n",
                i.value("id", std::string()).c_str(), i.value("service", std::string()).c_str(),
                i.value("worker", 0), static_cast<unsigned long long>(req),
                static_cast<unsigned long long>(i.value("failures", uint64_t{0})),
                static_cast<unsigned long long>(i.value("rollbacks", uint64_t{0})),
                fmt::format("{}K", i.value("memory_bytes", uint64_t{0}) >> 10).c_str(),
                fmt::format("{:.1f}us", avg_us).c_str(), err.c_str());
  }
  return 0;
}

int CmdSimple(int argc, char** argv, const std::string& cmd) {
  std::string usage, desc;
  if (cmd == "start") {
    usage = "tern start SERVICE";
    desc = "Starts one more instance of a deployed service; prints its id.";
  } else if (cmd == "stop") {
    usage = "tern stop INSTANCE";
    desc = "Stops an instance (its state is discarded; snapshot it first to keep it).";
  } else {
    usage = "tern undeploy SERVICE";
    desc = "Stops every instance of a service and removes it (from the cluster, or from\n"
           "one agent with --agent).";
  }
  Flags f(usage + " [flags]", desc);
  if (cmd == "undeploy") {
    AddTargetFlags(&f);
  } else {
    AddAgentFlag(&f);
  }
  if (int rc = ParseOrExit(&f, argc, argv, 1, 1); rc >= 0) return rc;
  if (cmd == "undeploy") {
    Result<std::optional<ClusterRecord>> cluster = ResolveCluster(f);
    if (!cluster.ok()) return Fail(cluster.status());
    if (cluster->has_value()) {
      Result<int64_t> tmo = f.GetInt("timeout-ms", 1, 3'600'000);
      if (!tmo.ok()) return Usage(f, tmo.status());
      return ClusterUndeploy(**cluster, f.positional()[0], *tmo);
    }
  }
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  const std::string& arg = f.positional()[0];
  if (cmd == "start") {
    Result<std::string> id = (*c)->StartInstance(arg);
    if (!id.ok()) return Fail(id.status());
    std::printf("%s\n", id->c_str());
    return 0;
  }
  Status s = cmd == "stop" ? (*c)->StopInstance(arg) : (*c)->Undeploy(arg);
  if (!s.ok()) return Fail(s);
  std::printf("%s %s\n", cmd == "stop" ? "stopped" : "undeployed", arg.c_str());
  return 0;
}

int CmdSnapshot(int argc, char** argv) {
  Flags f("tern snapshot INSTANCE [-o FILE] [flags]",
          "Saves an instance's state (linear memory + stack pointer, taken between two\n"
          "requests) to a file that `tern restore` accepts on any agent.");
  f.Add("output", "", "file to write (default: INSTANCE.snap)");
  f.AddAlias("o", "output");
  AddAgentFlag(&f);
  if (int rc = ParseOrExit(&f, argc, argv, 1, 1); rc >= 0) return rc;
  const std::string& id = f.positional()[0];
  std::string out = f.IsSet("output") ? f.Get("output") : id + ".snap";
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  Result<std::string> bytes = (*c)->Snapshot(id);
  if (!bytes.ok()) return Fail(bytes.status());
  Status w = WriteFileAtomic(out, *bytes);
  if (!w.ok()) return Fail(w);
  std::printf("snapshot of %s written to %s (%zu bytes)\n", id.c_str(), out.c_str(), bytes->size());
  return 0;
}

int CmdRestore(int argc, char** argv) {
  Flags f("tern restore INSTANCE FILE [flags]",
          "Replaces an instance's state with a snapshot taken by `tern snapshot` from an\n"
          "instance of the same module (on this or any other agent).");
  AddAgentFlag(&f);
  if (int rc = ParseOrExit(&f, argc, argv, 2, 2); rc >= 0) return rc;
  Result<std::string> bytes = ReadFile(f.positional()[1]);
  if (!bytes.ok()) return Fail(bytes.status());
  auto c = Connect(f);
  if (!c.ok()) return Fail(c.status());
  Status s = (*c)->Restore(f.positional()[0], *bytes);
  if (!s.ok()) return Fail(s);
  std::printf("restored %s from %s\n", f.positional()[0].c_str(), f.positional()[1].c_str());
  return 0;
}

}  // namespace

void PrintTopLevelHelp() {
  std::fputs(
      "tern — offloadable, migratable WebAssembly microservices\n\n"
      "usage: tern COMMAND [ARGS] [--help]\n\n"
      "an emulated datacenter on this machine:\n"
      "  up          start a cluster from a topology file (controller, gateway, agents)\n"
      "  down        stop it and remove everything it made\n"
      "  topology    check a topology file\n"
      "  logs        print the log of a device's agent, the controller or the gateway\n"
      "  data        put, list, read and remove datasets on storage devices\n"
      "  explain     where the placement engine would put a service, and why\n"
      "  load        open-loop load through the gateway; checks nothing is lost\n"
      "  migrate     move a running instance, with its state, to another device\n"
      "  drain       move everything off a device (and keep new placements off it)\n"
      "  undrain     let a drained device take placements again\n\n"
      "roles (long-running processes; `tern up` starts them for you):\n"
      "  agent       the agent of one device (hosts instances, serves calls)\n"
      "  controller  the cluster controller (placement, locations, API)\n"
      "  gateway     the HTTP ingress: POST /v1/invoke/{service}/{handler}\n\n"
      "commands (the cluster `tern up` started, --controller/--gateway, or one agent with\n"
      "--agent HOST:PORT / $TERN_AGENT):\n"
      "  deploy      deploy a service: manifest + wasm module\n"
      "  invoke      call a handler and print the reply\n"
      "  ps          list devices, services and instances\n"
      "  start       start another instance of a service\n"
      "  stop        stop an instance\n"
      "  undeploy    remove a service\n"
      "  snapshot    save an instance's state to a file\n"
      "  restore     load an instance's state from a file\n"
      "  locations   show or set where other agents' instances run (calls use it)\n"
      "  version     print the version\n\n"
      "`tern COMMAND --help` explains each one.\n",
      stdout);
}

int RunClientCommand(int argc, char** argv) {
  if (argc < 2) {
    PrintTopLevelHelp();
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "deploy") return CmdDeploy(argc, argv);
  if (cmd == "invoke") return CmdInvoke(argc, argv);
  if (cmd == "ps") return CmdPs(argc, argv);
  if (cmd == "start" || cmd == "stop" || cmd == "undeploy") return CmdSimple(argc, argv, cmd);
  if (cmd == "snapshot") return CmdSnapshot(argc, argv);
  if (cmd == "restore") return CmdRestore(argc, argv);
  if (cmd == "locations") return CmdLocations(argc, argv);
  if (cmd == "up") return CmdUp(argc, argv);
  if (cmd == "down") return CmdDown(argc, argv);
  if (cmd == "topology") return CmdTopology(argc, argv);
  if (cmd == "logs") return CmdLogs(argc, argv);
  if (cmd == "data") return CmdData(argc, argv);
  if (cmd == "explain") return CmdExplain(argc, argv);
  if (cmd == "load") return CmdLoad(argc, argv);
  if (cmd == "migrate") return CmdMigrate(argc, argv);
  if (cmd == "drain") return CmdDrain(argc, argv);
  if (cmd == "undrain") return CmdUndrain(argc, argv);
  if (cmd == "version" || cmd == "--version") {
    std::printf("tern 0.1.0 (guest ABI tern_v1)\n");
    return 0;
  }
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    PrintTopLevelHelp();
    return 0;
  }
  std::fprintf(stderr, "tern: unknown command '%s'\n\n", cmd.c_str());
  PrintTopLevelHelp();
  return 2;
}

}  // namespace tern::cli
