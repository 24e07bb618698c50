// cluster_bench: what tern's cluster pieces cost, measured with the real binaries as
// child processes on 127.0.0.1 (docs/benchmarks.md, "bench/cluster"):
//
//   gateway   HTTP requests/s and p50/p90/p99 with wrk (POST, 64 B body) at 1, 16 and
//             64 connections against: the gateway → 2 agents running echo (2 replicas);
//             the physical limit (a one-thread epoll HTTP/1.1 responder with a fixed
//             64 B reply, `cluster_bench --serve-limit`); one agent's own admin HTTP
//             front end (POST /v1/invoke/echo/echo, no gateway hop). Unpinned, and
//             (full runs) pinned: wrk on CPU 1, every server process on CPU 0.
//   deploy    a controller + 4 agents (1 worker each): time until 1000 instances of one
//             service (and 10 services × 100) run, deployed with POST /v1/services and
//             watched with GET /v1/services; the agents' RSS after; embedded store
//             (fsync) and etcd.
//   failure   a controller + 3 agents, echo with 2 replicas: SIGKILL an agent holding a
//             replica, then poll GET /v1/cluster every 10 ms for the event "agent X is
//             gone" and for the replacement running elsewhere; per store, for TTL/heartbeat
//             1500/200 ms and the defaults 3000/1000 ms.
//
//   cluster_bench [--quick] [--out=DIR] [--sections=gateway,deploy,failure]
//                 [--source-dir=DIR] [--build-dir=DIR] [--keep-logs]
//   cluster_bench --serve-limit        (the limit responder; started by cluster_bench)
//
// Writes DIR/cluster.json and DIR/cluster.md (default bench/results), progress on
// stderr. Every process it starts dies with it (PR_SET_PDEATHSIG) and is killed at the
// end of its section; logs go to a temporary directory, kept (and named) when a
// section fails or with --keep-logs.
//
// Exit code: 0 when every measurement ran, 1 when one failed (the report says which),
// 2 on bad flags or a missing binary.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/bench_util.h"
#include "core/base64.h"
#include "core/clock.h"
#include "core/file.h"
#include "core/manifest.h"
#include "http_load.h"
#include "procs.h"
#include "transport/http.h"
#include "transport/json_api.h"

#ifndef TERN_BENCH_SOURCE_DIR
#define TERN_BENCH_SOURCE_DIR ""
#endif
#ifndef TERN_BENCH_BUILD_DIR
#define TERN_BENCH_BUILD_DIR ""
#endif

namespace tern::bench::cluster {
namespace {

using nlohmann::json;

constexpr const char* kUsage =
    "usage: cluster_bench [--quick] [--out=DIR] [--sections=gateway,deploy,failure]\n"
    "                     [--source-dir=DIR] [--build-dir=DIR] [--keep-logs]\n"
    "       (cluster_bench --serve-limit is the limit responder, started by cluster_bench)\n";

struct Options {
  bool quick = false;
  bool keep_logs = false;
  std::string out_dir;
  std::string source_dir = TERN_BENCH_SOURCE_DIR;
  std::string build_dir = TERN_BENCH_BUILD_DIR;
  std::set<std::string> sections = {"gateway", "deploy", "failure"};
  std::string self;  // this binary (for --serve-limit)
  std::string tern, echo_wasm, echo_manifest;
};

// The run's shared state: where logs go, what failed.
struct Run {
  Options o;
  std::string tmp;
  json doc;
  std::vector<std::string> failures;
  std::string Log(const std::string& name) const { return JoinPath(tmp, name + ".log"); }
};

double Ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }
double Mib(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

template <typename T>
T Median(std::vector<T> v) {
  if (v.empty()) return T{};
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Sleeps until `pred` is true (checked every `every`) or `timeout` passes.
template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout, std::chrono::milliseconds every) {
  const int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  while (MonoNanos() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(every);
  }
  return pred();
}

// ------------------------------------------------------------------- controller API

class Api {
 public:
  static Result<Api> Connect(uint16_t port) {
    Api a;
    TERN_ASSIGN_OR_RETURN(
        a.c_, transport::JsonApiClient::Connect("127.0.0.1:" + std::to_string(port), "controller",
                                                std::chrono::seconds(2)));
    return a;
  }
  Result<json> Get(const std::string& target) {
    TERN_ASSIGN_OR_RETURN(std::string body, c_->Call("GET", target, {}, std::chrono::seconds(30)));
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) return DataLossError("controller " + target + ": not JSON");
    return j;
  }
  // POST /v1/services; returns the controller's answer (it waits for one reconcile
  // round, at most 60 s).
  Result<json> Deploy(const std::string& manifest_yaml, const std::string& module, int replicas) {
    json req{
        {"manifest", manifest_yaml}, {"module_b64", Base64Encode(module)}, {"replicas", replicas}};
    TERN_ASSIGN_OR_RETURN(std::string body,
                          c_->Call("POST", "/v1/services", req.dump(), std::chrono::seconds(120)));
    return json::parse(body, nullptr, false);
  }

 private:
  std::unique_ptr<transport::JsonApiClient> c_;
};

// Running instances per device, over all services (or one).
std::map<std::string, int> RunningByDevice(const json& services, const std::string& only = "") {
  std::map<std::string, int> out;
  if (!services.is_array()) return out;
  for (const json& s : services) {
    if (!only.empty() && s.value("name", "") != only) continue;
    if (!s.contains("instances")) continue;
    for (const json& i : s["instances"]) {
      if (i.value("state", "") == "running") ++out[i.value("device", "")];
    }
  }
  return out;
}
int Total(const std::map<std::string, int>& m) {
  int n = 0;
  for (const auto& [k, v] : m) n += v;
  return n;
}

// The echo manifest renamed, with a memory cap.
Result<std::string> EchoManifest(const Options& o, const std::string& name, uint32_t memory_mib) {
  TERN_ASSIGN_OR_RETURN(Manifest m, LoadManifest(o.echo_manifest));
  m.name = name;
  m.limits.memory_mib = memory_mib;
  return ManifestToYaml(m);
}

// One POST through a fresh connection; the response or the transport error.
Result<transport::HttpClientResponse> Post(uint16_t port, const std::string& target,
                                           const std::string& body) {
  TERN_ASSIGN_OR_RETURN(auto c,
                        transport::HttpClient::Connect("127.0.0.1", port, std::chrono::seconds(2)));
  return c->Request("POST", target, body, "application/octet-stream", std::chrono::seconds(10));
}

// A controller and its agents (and maybe a gateway and an etcd), killed in reverse
// order by the destructor.
struct Cluster {
  Etcd etcd;
  Role controller;
  std::vector<Role> agents;
  Role gateway;
  ~Cluster() {
    if (gateway.child) gateway.child->Kill();
    for (Role& a : agents) {
      if (a.child) a.child->Kill();
    }
    if (controller.child) controller.child->Stop(std::chrono::seconds(5));
    if (etcd.child) etcd.child->Stop(std::chrono::seconds(5));
  }
  std::vector<pid_t> ServerPids() const {
    std::vector<pid_t> p;
    if (controller.child) p.push_back(controller.child->pid());
    for (const Role& a : agents) {
      if (a.child) p.push_back(a.child->pid());
    }
    if (gateway.child) p.push_back(gateway.child->pid());
    if (etcd.child) p.push_back(etcd.child->pid());
    return p;
  }
};

// Starts [etcd +] controller + `n` agents and waits until all registered.
Status StartCluster(Run& run, const std::string& tag, const std::string& store, int ttl_ms,
                    int hb_ms, int n_agents, const AgentFlags& agent_template, Cluster* c,
                    Api* api) {
  ControllerFlags cf;
  cf.agent_ttl_ms = ttl_ms;
  cf.heartbeat_ms = hb_ms;
  if (store == "etcd") {
    TERN_ASSIGN_OR_RETURN(c->etcd, StartEtcd(JoinPath(run.tmp, tag + "-etcd")));
    cf.store = "etcd:" + c->etcd.endpoint();
  } else {
    cf.store = "embedded";
    cf.data_dir = JoinPath(run.tmp, tag + "-store");
  }
  TERN_ASSIGN_OR_RETURN(c->controller,
                        StartController(run.o.tern, cf, run.Log(tag + "-controller")));
  for (int i = 0; i < n_agents; ++i) {
    AgentFlags f = agent_template;
    f.device = fmt::format("cpu{}", i);
    TERN_ASSIGN_OR_RETURN(Role a, StartAgent(run.o.tern, c->controller.address(), f,
                                             run.Log(tag + "-agent-" + f.device)));
    c->agents.push_back(std::move(a));
  }
  TERN_ASSIGN_OR_RETURN(*api, Api::Connect(c->controller.port));
  bool all = WaitFor(
      [&] {
        Result<json> a = api->Get("/v1/agents");
        return a.ok() && a->is_array() && static_cast<int>(a->size()) == n_agents;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(20));
  if (!all)
    return DeadlineExceededError(fmt::format("{}: not all {} agents registered", tag, n_agents));
  return Status::Ok();
}

// ---------------------------------------------------------------- section: gateway

std::string MachineNote(const json& machine) {
  return fmt::format(
      "{} vCPUs ({}), shared by wrk, the gateway, the agents and the controller — and, on "
      "this development machine, by whatever else runs (load average at the start: {}). "
      "Throughput here is a share of 2 vCPUs, not of one core per process.",
      machine.value("online_cpus", 0), machine.value("cpu_model", std::string("?")),
      machine.value("loadavg", std::string("?")));
}

struct Target {
  std::string name;
  std::string what;
  uint16_t port;
  std::string path;
};

Status GatewaySection(Run& run) {
  const bool quick = run.o.quick;
  const int seconds = quick ? 2 : 10;
  json& sec = run.doc["gateway"];
  sec = json{{"rows", json::array()}, {"notes", json::array()}, {"seconds_per_run", seconds}};

  Cluster c;
  Api api;
  AgentFlags af;
  af.workers = 1;
  TERN_RETURN_IF_ERROR(StartCluster(run, "gw", "embedded", 3000, 1000, 2, af, &c, &api));
  TERN_ASSIGN_OR_RETURN(c.gateway,
                        StartGateway(run.o.tern, c.controller.address(), run.Log("gw-gateway")));
  TERN_ASSIGN_OR_RETURN(std::string module, ReadFile(run.o.echo_wasm));
  TERN_ASSIGN_OR_RETURN(std::string manifest, EchoManifest(run.o, "echo", 16));
  TERN_ASSIGN_OR_RETURN(json placed, api.Deploy(manifest, module, 2));
  (void)placed;
  bool running = WaitFor(
      [&] {
        Result<json> s = api.Get("/v1/services");
        return s.ok() && Total(RunningByDevice(*s, "echo")) == 2;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(20));
  if (!running) return DeadlineExceededError("echo: 2 replicas not running after 20 s");

  std::unique_ptr<Child> limit;
  {
    TERN_ASSIGN_OR_RETURN(limit, Child::Start({run.o.self, "--serve-limit"}, run.Log("limit")));
    TERN_ASSIGN_OR_RETURN(std::string line, limit->ReadLine(std::chrono::seconds(5)));
    unsigned port = 0;
    if (std::sscanf(line.c_str(), "listening %u", &port) != 1) {
      return InternalError("limit responder: unexpected line '" + line + "'");
    }
    std::vector<Target> targets = {
        {"limit", "one-thread epoll HTTP/1.1 responder, fixed 64 B reply",
         static_cast<uint16_t>(port), "/"},
        {"gateway", "tern gateway → 2 agents (echo, 2 replicas)", c.gateway.port,
         "/v1/invoke/echo/echo"},
        {"agent-direct", "one agent's admin HTTP front end, no gateway hop", c.agents[0].port,
         "/v1/invoke/echo/echo"},
    };
    // Each target answers correctly before it is measured (the gateway may need a
    // moment for the controller's location table).
    const std::string probe(64, 'x');
    for (const Target& t : targets) {
      bool ok = WaitFor(
          [&] {
            auto r = Post(t.port, t.path, probe);
            return r.ok() && r->status == 200 && r->body.size() == 64;
          },
          std::chrono::seconds(10), std::chrono::milliseconds(50));
      if (!ok) {
        auto r = Post(t.port, t.path, probe);
        return UnavailableError(
            fmt::format("{} does not answer POST {} with 200 and 64 B: {}", t.name, t.path,
                        r.ok() ? fmt::format("{} {}", r->status, r->body) : r.status().ToString()));
      }
    }

    const std::string script = JoinPath(run.tmp, "post64.lua");
    TERN_RETURN_IF_ERROR(WriteWrkScript(script, 64));
    std::vector<pid_t> servers = c.ServerPids();
    servers.push_back(limit->pid());

    struct Case {
      int connections;
      bool pinned;
    };
    std::vector<Case> cases = {{1, false}, {16, false}, {64, false}};
    if (!quick) cases.push_back({16, true});
    for (const Case& k : cases) {
      for (pid_t p : servers) PinProcess(p, k.pinned ? 0 : -1);
      for (const Target& t : targets) {
        WrkRun w;
        w.url = fmt::format("http://127.0.0.1:{}{}", t.port, t.path);
        w.script = script;
        w.connections = k.connections;
        w.threads = k.connections == 1 ? 1 : 2;
        if (k.pinned) w.threads = 1;  // one CPU for wrk
        w.seconds = seconds;
        w.cpu = k.pinned ? 1 : -1;
        const std::string pinning = k.pinned ? "wrk on CPU 1, servers on CPU 0" : "unpinned";
        json row{{"target", t.name},     {"what", t.what},     {"connections", k.connections},
                 {"threads", w.threads}, {"pinning", pinning}, {"seconds", seconds},
                 {"ok", false}};
        Result<WrkResult> r = RunWrk(w);
        if (!r.ok()) {
          row["error"] = r.status().ToString();
          run.failures.push_back(fmt::format("gateway: {} c={} {}: {}", t.name, k.connections,
                                             pinning, r.status().message()));
          Progress("gateway: FAILED " + t.name + ": " + r.status().ToString());
        } else {
          row["ok"] = true;
          row["requests_per_s"] = r->requests_per_s;
          row["requests"] = r->requests;
          row["p50_us"] = r->p50_us;
          row["p90_us"] = r->p90_us;
          row["p99_us"] = r->p99_us;
          row["mean_us"] = r->mean_us;
          row["max_us"] = r->max_us;
          row["non_2xx"] = r->non_2xx;
          row["socket_errors"] = r->socket_errors;
          if (r->non_2xx > 0 || r->socket_errors > 0) {
            run.failures.push_back(fmt::format("gateway: {} c={}: {} non-2xx, {} socket errors",
                                               t.name, k.connections, r->non_2xx,
                                               r->socket_errors));
          }
          Progress(fmt::format("gateway: {:12} c={:2} {:8} {:>9} req/s  p50 {}  p99 {}{}", t.name,
                               k.connections, k.pinned ? "pinned" : "unpinned",
                               FormatCount(r->requests_per_s), FormatNs(r->p50_us * 1e3),
                               FormatNs(r->p99_us * 1e3),
                               r->non_2xx ? fmt::format(" ({} non-2xx!)", r->non_2xx) : ""));
        }
        sec["rows"].push_back(row);
      }
    }
    for (pid_t p : servers) PinProcess(p, -1);
  }
  // Ratios gateway / limit (and agent-direct / limit) per case.
  json ratios = json::array();
  for (const json& g : sec["rows"]) {
    if (g["target"] == "limit" || !g["ok"].get<bool>()) continue;
    for (const json& l : sec["rows"]) {
      if (l["target"] != "limit" || !l["ok"].get<bool>() || l["connections"] != g["connections"] ||
          l["pinning"] != g["pinning"]) {
        continue;
      }
      ratios.push_back(json{{"target", g["target"]},
                            {"connections", g["connections"]},
                            {"pinning", g["pinning"]},
                            {"throughput_ratio",
                             g["requests_per_s"].get<double>() / l["requests_per_s"].get<double>()},
                            {"p50_ratio", g["p50_us"].get<double>() / l["p50_us"].get<double>()}});
    }
  }
  sec["ratios"] = ratios;
  return Status::Ok();
}

// ----------------------------------------------------------------- section: deploy

struct Layout {
  int services;
  int replicas;
  std::string name() const { return fmt::format("{} × {}", services, replicas); }
};

json DeployOne(Run& run, const std::string& store, const Layout& layout, int agents,
               uint32_t memory_mib, std::chrono::seconds limit) {
  const int wanted = layout.services * layout.replicas;
  const std::string tag = fmt::format("deploy-{}-{}x{}", store, layout.services, layout.replicas);
  json row{{"store", store},
           {"layout", layout.name()},
           {"services", layout.services},
           {"replicas", layout.replicas},
           {"instances_wanted", wanted},
           {"agents", agents},
           {"instance_memory_mib", memory_mib},
           {"ok", false}};
  auto fail = [&](const std::string& why) {
    row["error"] = why;
    run.failures.push_back(fmt::format("deploy {} {}: {}", store, layout.name(), why));
    Progress(fmt::format("deploy: {} {}: FAILED: {}", store, layout.name(), why));
    return row;
  };
  Cluster c;
  Api api;
  AgentFlags af;
  af.workers = 1;
  af.memory_mib = 16384;
  Status st = StartCluster(run, tag, store, 3000, 1000, agents, af, &c, &api);
  if (!st.ok()) return fail(st.ToString());
  Result<std::string> module = ReadFile(run.o.echo_wasm);
  if (!module.ok()) return fail(module.status().ToString());
  std::vector<std::string> manifests;
  for (int s = 0; s < layout.services; ++s) {
    std::string name = layout.services == 1 ? "echo" : fmt::format("echo-{:02}", s);
    Result<std::string> m = EchoManifest(run.o, name, memory_mib);
    if (!m.ok()) return fail(m.status().ToString());
    manifests.push_back(*m);
  }

  const int64_t t0 = MonoNanos();
  std::vector<double> post_s;
  for (const std::string& m : manifests) {
    Result<json> r = api.Deploy(m, *module, layout.replicas);
    post_s.push_back(static_cast<double>(MonoNanos() - t0) / 1e9);
    if (!r.ok()) {
      // The deploy is recorded before the controller waits for a round; a slow round
      // is not the end: keep watching.
      row["post_error"] = r.status().ToString();
    }
  }
  row["post_returned_s"] = post_s;
  int running = 0;
  int64_t t_done = 0;
  int64_t last_change = MonoNanos();
  const int64_t deadline = t0 + std::chrono::nanoseconds(limit).count();
  json last_services;
  while (MonoNanos() < deadline) {
    Result<json> s = api.Get("/v1/services");
    if (s.ok()) {
      int now = Total(RunningByDevice(*s));
      if (now != running) last_change = MonoNanos();
      running = now;
      last_services = std::move(*s);
      if (running >= wanted) {
        t_done = MonoNanos();
        break;
      }
    }
    // No progress for 15 s: it is stuck (a limit was hit); stop waiting.
    if (MonoNanos() - last_change > int64_t{15} * 1000000000) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  row["instances_running"] = running;
  row["per_agent"] = RunningByDevice(last_services);
  json rss = json::object(), vsize = json::object(), maps = json::object();
  for (const Role& a : c.agents) {
    rss[a.name] = Mib(RssBytes(a.child->pid()));
    vsize[a.name] = static_cast<double>(VirtualBytes(a.child->pid())) / double(uint64_t{1} << 40);
    maps[a.name] = MapCount(a.child->pid());
  }
  row["agent_rss_mib"] = rss;
  row["agent_virtual_tib"] = vsize;
  row["agent_maps"] = maps;
  row["controller_rss_mib"] = Mib(RssBytes(c.controller.child->pid()));
  if (c.etcd.child) row["etcd_rss_mib"] = Mib(RssBytes(c.etcd.child->pid()));
  // Why it stopped short, in the controller's words.
  Result<json> cl = api.Get("/v1/cluster");
  if (cl.ok()) {
    json problems = json::array();
    for (const json& s : (*cl)["services"]) {
      if (s.contains("problem"))
        problems.push_back(s["name"].get<std::string>() + ": " + s["problem"].get<std::string>());
    }
    json recent = json::array();
    for (const json& e : (*cl)["events"]) {
      std::string ev = e.value("event", "");
      if (ev.find("could not") != std::string::npos) recent.push_back(ev);
    }
    if (!problems.empty()) row["problems"] = problems;
    if (!recent.empty()) {
      // The last few only: they repeat.
      json tail = json::array();
      for (size_t i = recent.size() > 3 ? recent.size() - 3 : 0; i < recent.size(); ++i) {
        tail.push_back(recent[i]);
      }
      row["start_failures"] = tail;
    }
  }
  if (t_done == 0) {
    return fail(fmt::format("{} of {} instances running after {:.1f} s", running, wanted,
                            static_cast<double>(MonoNanos() - t0) / 1e9));
  }
  double total_s = static_cast<double>(t_done - t0) / 1e9;
  row["ok"] = true;
  row["total_s"] = total_s;
  row["instances_per_s"] = wanted / total_s;
  double rss_sum = 0;
  for (auto& [k, v] : rss.items()) rss_sum += v.get<double>();
  Progress(
      fmt::format("deploy: {:8} {:9}: {} instances in {:.2f} s ({:.0f}/s), agents' RSS "
                  "{:.0f} MiB in all, controller {:.0f} MiB",
                  store, layout.name(), wanted, total_s, wanted / total_s, rss_sum,
                  row["controller_rss_mib"].get<double>()));
  return row;
}

// What one durable append costs on the disk the embedded store writes to (the same
// directory): `n` × (write 256 B + fdatasync), each timed.
Result<Stats> FdatasyncCost(const std::string& dir, int n) {
  const std::string path = JoinPath(dir, "fdatasync-probe");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("open " + path, errno);
  std::vector<int64_t> samples;
  const std::string record(256, 'r');
  for (int i = 0; i < n; ++i) {
    const int64_t t0 = NowNs();
    if (::write(fd, record.data(), record.size()) != static_cast<ssize_t>(record.size()) ||
        ::fdatasync(fd) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoError("write/fdatasync " + path, err);
    }
    samples.push_back(NowNs() - t0);
  }
  ::close(fd);
  ::unlink(path.c_str());
  return Summarize(samples);
}

Status DeploySection(Run& run) {
  json& sec = run.doc["deploy"];
  sec = json{{"rows", json::array()}, {"notes", json::array()}};
  Result<Stats> sync = FdatasyncCost(run.tmp, run.o.quick ? 50 : 300);
  if (sync.ok()) {
    sec["fdatasync_us"] =
        json{{"p50", sync->p50 / 1e3}, {"p99", sync->p99 / 1e3}, {"n", sync->count}};
    Progress(fmt::format("deploy: a 256 B append + fdatasync here: p50 {} p99 {}",
                         FormatNs(sync->p50), FormatNs(sync->p99)));
  }
  const int agents = 4;
  const uint32_t memory_mib = 2;
  std::vector<Layout> layouts = run.o.quick ? std::vector<Layout>{{1, 100}, {10, 10}}
                                            : std::vector<Layout>{{1, 1000}, {10, 100}};
  std::vector<std::string> stores = {"embedded"};
  if (EtcdAvailable()) {
    stores.push_back("etcd");
  } else {
    sec["notes"].push_back("etcd is not installed: etcd rows skipped");
  }
  const std::chrono::seconds limit(run.o.quick ? 30 : 120);
  for (const std::string& store : stores) {
    for (const Layout& l : layouts) {
      sec["rows"].push_back(DeployOne(run, store, l, agents, memory_mib, limit));
    }
  }
  // Where the ceiling per agent process is: all of them on one agent.
  if (!run.o.quick) {
    json one = DeployOne(run, "embedded", layouts.front(), 1, memory_mib, limit);
    if (one["ok"].get<bool>() && !one["agent_virtual_tib"].empty()) {
      const double n = one["instances_wanted"].get<double>();
      const double tib = one["agent_virtual_tib"].begin()->get<double>();
      const double maps = one["agent_maps"].begin()->get<double>();
      const double gib_each = tib * 1024 / n;
      const double max_maps =
          std::strtod(ReadFile("/proc/sys/vm/max_map_count").value_or("65530").c_str(), nullptr);
      sec["notes"].push_back(fmt::format(
          "One agent holding all {:.0f} instances: {:.2f} TiB of virtual address space (≈{:.1f} "
          "GiB per instance: V8 reserves every wasm memory with its guard regions) and {:.0f} "
          "memory mappings, RSS {:.0f} MiB. Nothing ran out at 1,000 (nor did file descriptors: "
          "instances hold none). The first ceiling per agent process is the 128 TiB user address "
          "space, at ≈{:.0f} instances; vm.max_map_count ({:.0f}) would allow ≈{:.0f}.",
          n, tib, gib_each, maps, one["agent_rss_mib"].begin()->get<double>(),
          128.0 * 1024 / gib_each, max_maps, max_maps / (maps / n)));
    }
    sec["rows"].push_back(std::move(one));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- section: failure

json FailureOne(Run& run, const std::string& store, int ttl_ms, int hb_ms, int reps) {
  const std::string tag = fmt::format("failure-{}-{}-{}", store, ttl_ms, hb_ms);
  json row{{"store", store}, {"ttl_ms", ttl_ms}, {"heartbeat_ms", hb_ms}, {"ok", false}};
  auto fail = [&](const std::string& why) {
    row["error"] = why;
    run.failures.push_back(fmt::format("failure {} {}/{}: {}", store, ttl_ms, hb_ms, why));
    Progress(fmt::format("failure: {} {}/{}: FAILED: {}", store, ttl_ms, hb_ms, why));
    return row;
  };
  Cluster c;
  Api api;
  AgentFlags af;
  af.workers = 1;
  Status st = StartCluster(run, tag, store, ttl_ms, hb_ms, 3, af, &c, &api);
  if (!st.ok()) return fail(st.ToString());
  Result<std::string> module = ReadFile(run.o.echo_wasm);
  Result<std::string> manifest = EchoManifest(run.o, "echo", 16);
  if (!module.ok() || !manifest.ok()) return fail("cannot read the echo example");
  Result<json> d = api.Deploy(*manifest, *module, 2);
  if (!d.ok()) return fail(d.status().ToString());

  std::vector<double> detect_ms, event_ms, replace_ms;
  for (int rep = 0; rep < reps; ++rep) {
    // Two replicas running, on two distinct live agents.
    std::map<std::string, int> by_dev;
    bool ready = WaitFor(
        [&] {
          Result<json> s = api.Get("/v1/services");
          if (!s.ok()) return false;
          by_dev = RunningByDevice(*s, "echo");
          return Total(by_dev) == 2;
        },
        std::chrono::seconds(20), std::chrono::milliseconds(20));
    if (!ready) return fail(fmt::format("repetition {}: 2 replicas not running", rep + 1));
    // Kill an agent holding a replica (rotating over the devices).
    std::string victim;
    for (size_t k = 0; k < c.agents.size() && victim.empty(); ++k) {
      const Role& a = c.agents[(rep + k) % c.agents.size()];
      if (by_dev.count(a.name)) victim = a.name;
    }
    Role* role = nullptr;
    for (Role& a : c.agents) {
      if (a.name == victim) role = &a;
    }
    if (role == nullptr) return fail("no agent holds a replica");

    const int64_t kill_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count();
    const int64_t t_kill = MonoNanos();
    ::kill(role->child->pid(), SIGKILL);
    const std::string gone = "agent " + victim + " is gone";
    int64_t t_gone = 0, t_replaced = 0;
    double ev_ms = -1;
    const int64_t deadline = t_kill + int64_t{ttl_ms + 15000} * 1000000;
    while (MonoNanos() < deadline && (t_gone == 0 || t_replaced == 0)) {
      Result<json> cl = api.Get("/v1/cluster");
      const int64_t now = MonoNanos();
      if (cl.ok()) {
        if (t_gone == 0) {
          for (const json& e : (*cl)["events"]) {
            if (e.value("event", "").find(gone) != std::string::npos &&
                e.value("unix_ms", int64_t{0}) >= kill_unix_ms) {
              t_gone = now;
              ev_ms = static_cast<double>(e["unix_ms"].get<int64_t>() - kill_unix_ms);
            }
          }
        }
        if (t_replaced == 0) {
          std::map<std::string, int> m = RunningByDevice((*cl)["services"], "echo");
          if (Total(m) == 2 && m.count(victim) == 0) t_replaced = now;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    role->child->Kill();  // reap
    if (t_gone == 0 || t_replaced == 0) {
      return fail(fmt::format("repetition {}: {} not seen within {} ms", rep + 1,
                              t_gone == 0 ? "'" + gone + "'" : "the replacement", ttl_ms + 15000));
    }
    detect_ms.push_back(Ms(t_gone - t_kill));
    event_ms.push_back(ev_ms);
    replace_ms.push_back(Ms(t_replaced - t_kill));
    Progress(fmt::format(
        "failure: {:8} ttl {}/{} ms, rep {}: killed {}: gone seen after {:.0f} ms "
        "(event stamped +{:.0f} ms), replacement running after {:.0f} ms",
        store, ttl_ms, hb_ms, rep + 1, victim, detect_ms.back(), ev_ms, replace_ms.back()));
    // Bring the agent back (same device name) for the next repetition.
    if (rep + 1 < reps) {
      AgentFlags f = af;
      f.device = victim;
      Result<Role> again =
          StartAgent(run.o.tern, c.controller.address(), f, run.Log(tag + "-agent-" + victim));
      if (!again.ok()) return fail(again.status().ToString());
      *role = std::move(*again);
      bool back = WaitFor(
          [&] {
            Result<json> a = api.Get("/v1/agents");
            return a.ok() && a->size() == c.agents.size();
          },
          std::chrono::seconds(20), std::chrono::milliseconds(20));
      if (!back) return fail("the restarted agent did not register");
    }
  }
  row["ok"] = true;
  row["repetitions"] = reps;
  row["detect_ms"] = detect_ms;
  row["event_stamp_ms"] = event_ms;
  row["replace_ms"] = replace_ms;
  row["detect_median_ms"] = Median(detect_ms);
  row["detect_max_ms"] = *std::max_element(detect_ms.begin(), detect_ms.end());
  row["event_stamp_median_ms"] = Median(event_ms);
  row["replace_median_ms"] = Median(replace_ms);
  row["replace_max_ms"] = *std::max_element(replace_ms.begin(), replace_ms.end());
  return row;
}

Status FailureSection(Run& run) {
  json& sec = run.doc["failure"];
  sec = json{{"rows", json::array()}, {"notes", json::array()}};
  const int reps = run.o.quick ? 2 : 5;
  std::vector<std::pair<int, int>> settings = {{1500, 200}, {3000, 1000}};
  if (run.o.quick) settings.resize(1);
  std::vector<std::string> stores = {"embedded"};
  if (EtcdAvailable()) {
    stores.push_back("etcd");
  } else {
    sec["notes"].push_back("etcd is not installed: etcd rows skipped");
  }
  for (const std::string& store : stores) {
    for (auto [ttl, hb] : settings) sec["rows"].push_back(FailureOne(run, store, ttl, hb, reps));
  }
  return Status::Ok();
}

// ------------------------------------------------------------------------- report

std::string Us(double us) { return FormatNs(us * 1e3); }

std::string Markdown(const json& doc) {
  std::string md;
  const json& m = doc["machine"];
  md += "# bench/cluster: gateway, controller and failure detection\n\n";
  md += fmt::format(
      "Generated by `bench/run.sh BUILD --suites=cluster{}` (cluster_bench) at {}, "
      "git {}. {}\n\n",
      doc.value("quick", false) ? " --quick" : "", m.value("date_utc", ""), m.value("git_rev", ""),
      doc.value("quick", false) ? "**Quick run** (smoke test: "
                                  "short runs, fewer instances; not for quoting)."
                                : "");
  md +=
      "**Machine and load.** " + doc.value("machine_note", std::string()) +
      fmt::format(" Load average at the end: {}.\n\n", doc.value("loadavg_end", std::string("?")));
  if (doc.contains("gateway")) {
    const json& g = doc["gateway"];
    md += "## 1. Gateway throughput and latency (wrk, POST with a 64 B body)\n\n";
    md += fmt::format(
        "wrk 4.1 `--latency`, {} s per run; keep-alive connections; threads 1 for 1 "
        "connection, else 2 (1 when pinned). Targets: **limit** = a one-thread epoll "
        "HTTP/1.1 responder written for the benchmark that answers every request with a "
        "fixed 64 B body (what one core does for trivial HTTP here: an nginx-like "
        "expectation); **gateway** = `tern gateway` → 2 agents (1 worker each) running "
        "`echo` with 2 replicas (the product path); **agent-direct** = one agent's admin "
        "`POST /v1/invoke/echo/echo` (the agent's own HTTP front end, no gateway hop).\n\n",
        g.value("seconds_per_run", 0));
    md += "| target | conns | pinning | requests/s | p50 | p90 | p99 | non-2xx |\n";
    md += "|---|---:|---|---:|---:|---:|---:|---:|\n";
    for (const json& r : g["rows"]) {
      if (!r["ok"].get<bool>()) {
        md += fmt::format("| {} | {} | {} | failed: {} | | | | |\n", r["target"].get<std::string>(),
                          r["connections"].get<int>(), r["pinning"].get<std::string>(),
                          r.value("error", ""));
        continue;
      }
      md +=
          fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} |\n", r["target"].get<std::string>(),
                      r["connections"].get<int>(), r["pinning"].get<std::string>(),
                      FormatCount(r["requests_per_s"].get<double>()), Us(r["p50_us"].get<double>()),
                      Us(r["p90_us"].get<double>()), Us(r["p99_us"].get<double>()),
                      r["non_2xx"].get<uint64_t>());
    }
    md +=
        "\nRatios to the limit at the same connections and pinning (throughput: target / "
        "limit, so < 1 is slower; p50: target / limit, so > 1 is slower):\n\n";
    md +=
        "| target | conns | pinning | throughput / limit | p50 / limit "
        "|\n|---|---:|---|---:|---:|\n";
    for (const json& r : g["ratios"]) {
      md += fmt::format("| {} | {} | {} | {:.2f} | {:.1f}× |\n", r["target"].get<std::string>(),
                        r["connections"].get<int>(), r["pinning"].get<std::string>(),
                        r["throughput_ratio"].get<double>(), r["p50_ratio"].get<double>());
    }
    for (const json& n : g["notes"]) md += "\n" + n.get<std::string>() + "\n";
    md += "\n";
  }
  if (doc.contains("deploy")) {
    const json& d = doc["deploy"];
    md += "## 2. Controller: time to deploy many instances\n\n";
    md +=
        "A controller + 4 agents (`--workers 1 --memory-mib 16384`), the echo module with "
        "its manifest's memory cap lowered to 2 MiB; `POST /v1/services` with the replica "
        "count (one POST per service, one after the other), then `GET /v1/services` every "
        "50 ms until every instance is `running`. Time from the first POST. RSS (VmRSS) "
        "read right after.\n\n";
    if (d.contains("fdatasync_us")) {
      md += fmt::format(
          "The embedded store makes every write durable with `fdatasync`; on this disk (same "
          "directory) a 256 B append + fdatasync took p50 {} / p99 {} during the run (n={}).\n\n",
          Us(d["fdatasync_us"]["p50"].get<double>()), Us(d["fdatasync_us"]["p99"].get<double>()),
          d["fdatasync_us"]["n"].get<size_t>());
    }
    md +=
        "| store | agents | services × replicas | running | total | instances/s | POSTs "
        "answered at | RSS per agent (MiB) | virtual size per agent | maps per agent | "
        "controller RSS |\n|---|---:|---|---:|---:|---:|---|---|---|---|---:|\n";
    for (const json& r : d["rows"]) {
      auto per_agent = [&](const char* key, const char* f) {
        std::string out;
        if (!r.contains(key)) return out;
        for (auto& [k, v] : r[key].items()) {
          out += (out.empty() ? "" : ", ") + fmt::format(fmt::runtime(f), v.get<double>());
        }
        return out;
      };
      std::string posts;
      if (r.contains("post_returned_s")) {
        const json& p = r["post_returned_s"];
        posts = p.size() == 1 ? fmt::format("{:.2f} s", p[0].get<double>())
                              : fmt::format("{:.2f} … {:.2f} s", p.front().get<double>(),
                                            p.back().get<double>());
      }
      md += fmt::format(
          "| {} | {} | {} | {} of {} | {} | {} | {} | {} | {} TiB | {} | {} |\n",
          r["store"].get<std::string>(), r["agents"].get<int>(), r["layout"].get<std::string>(),
          r.value("instances_running", 0), r["instances_wanted"].get<int>(),
          r["ok"].get<bool>() ? fmt::format("{:.2f} s", r["total_s"].get<double>())
                              : "failed: " + r.value("error", std::string()),
          r["ok"].get<bool>() ? fmt::format("{:.0f}", r["instances_per_s"].get<double>()) : "–",
          posts, per_agent("agent_rss_mib", "{:.0f}"), per_agent("agent_virtual_tib", "{:.2f}"),
          per_agent("agent_maps", "{:.0f}"),
          r.contains("controller_rss_mib")
              ? fmt::format("{:.0f} MiB", r["controller_rss_mib"].get<double>())
              : "");
    }
    for (const json& r : d["rows"]) {
      if (r.contains("start_failures") || r.contains("problems") || r.contains("post_error")) {
        md +=
            fmt::format("\n{} {}: ", r["store"].get<std::string>(), r["layout"].get<std::string>());
        if (r.contains("post_error")) md += "POST: " + r["post_error"].get<std::string>() + ". ";
        if (r.contains("problems")) md += "problem: " + r["problems"].dump() + ". ";
        if (r.contains("start_failures")) md += "start failures: " + r["start_failures"].dump();
        md += "\n";
      }
    }
    for (const json& n : d["notes"]) md += "\n" + n.get<std::string>() + "\n";
    md += "\n";
  }
  if (doc.contains("failure")) {
    const json& f = doc["failure"];
    md += "## 3. Time to detect a dead agent\n\n";
    md +=
        "A controller + 3 agents, echo with 2 replicas; SIGKILL an agent holding a replica; "
        "`GET /v1/cluster` every 10 ms. *gone* = kill → the event \"agent X is gone\" seen "
        "(in brackets: the event's own timestamp − kill time); *replaced* = kill → 2 "
        "replicas running again, none on the dead agent. The agent is restarted between "
        "repetitions.\n\n";
    md +=
        "| store | TTL / heartbeat | reps | gone: median | gone: max | replaced: median | "
        "replaced: max |\n|---|---|---:|---:|---:|---:|---:|\n";
    for (const json& r : f["rows"]) {
      std::string setting =
          fmt::format("{} / {} ms", r["ttl_ms"].get<int>(), r["heartbeat_ms"].get<int>());
      if (!r["ok"].get<bool>()) {
        md += fmt::format("| {} | {} | failed: {} | | | | |\n", r["store"].get<std::string>(),
                          setting, r.value("error", std::string()));
        continue;
      }
      md +=
          fmt::format("| {} | {} | {} | {:.0f} ms ({:.0f}) | {:.0f} ms | {:.0f} ms | {:.0f} ms |\n",
                      r["store"].get<std::string>(), setting, r["repetitions"].get<int>(),
                      r["detect_median_ms"].get<double>(), r["event_stamp_median_ms"].get<double>(),
                      r["detect_max_ms"].get<double>(), r["replace_median_ms"].get<double>(),
                      r["replace_max_ms"].get<double>());
    }
    for (const json& n : f["notes"]) md += "\n" + n.get<std::string>() + "\n";
    md += "\n";
  }
  if (!doc["failures"].empty()) {
    md += "## Failures\n\n";
    for (const json& e : doc["failures"]) md += "- " + e.get<std::string>() + "\n";
  }
  return md;
}

// -------------------------------------------------------------------------- main

bool Flag(const char* arg, const char* name, std::string* value) {
  size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

int Main(int argc, char** argv) {
  Options o;
  std::string v;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--serve-limit") == 0) return ServeLimit();
    if (std::strcmp(argv[i], "--quick") == 0) {
      o.quick = true;
    } else if (std::strcmp(argv[i], "--keep-logs") == 0) {
      o.keep_logs = true;
    } else if (Flag(argv[i], "--out", &v)) {
      o.out_dir = v;
    } else if (Flag(argv[i], "--source-dir", &v)) {
      o.source_dir = v;
    } else if (Flag(argv[i], "--build-dir", &v)) {
      o.build_dir = v;
    } else if (Flag(argv[i], "--sections", &v)) {
      o.sections.clear();
      std::stringstream ss(v);
      for (std::string s; std::getline(ss, s, ',');) {
        if (s != "gateway" && s != "deploy" && s != "failure") {
          std::fprintf(stderr, "unknown section '%s' (gateway, deploy, failure)\n%s", s.c_str(),
                       kUsage);
          return 2;
        }
        o.sections.insert(s);
      }
    } else {
      std::fprintf(stderr, "%s", kUsage);
      return 2;
    }
  }
  SetProgressName("cluster_bench");
  std::error_code ec;
  o.self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  o.tern = JoinPath(o.build_dir, "src/bin/tern");
  o.echo_wasm = JoinPath(o.build_dir, "wasm/echo.wasm");
  o.echo_manifest = JoinPath(o.source_dir, "examples/echo/manifest.yaml");
  for (const std::string& f : {o.tern, o.echo_wasm, o.echo_manifest}) {
    if (!FileExists(f)) {
      std::fprintf(stderr, "missing %s (build `tern` and `echo`; see --build-dir/--source-dir)\n",
                   f.c_str());
      return 2;
    }
  }
  if (o.sections.count("gateway") && ::access(kWrk, X_OK) != 0) {
    std::fprintf(stderr, "missing %s (Debian package wrk; scripts/setup.sh installs it)\n", kWrk);
    return 2;
  }
  if (o.out_dir.empty()) o.out_dir = JoinPath(o.source_dir, "bench/results");
  signal(SIGPIPE, SIG_IGN);

  Run run;
  run.o = o;
  char tmpl[] = "/tmp/tern-cluster-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  run.tmp = tmpl;
  run.doc = json::object();
  run.doc["machine"] = MachineInfo(o.source_dir);
  run.doc["quick"] = o.quick;
  run.doc["machine_note"] = MachineNote(run.doc["machine"]);
  Progress("logs in " + run.tmp);

  struct Section {
    const char* name;
    Status (*fn)(Run&);
  };
  for (const Section& s : {Section{"gateway", GatewaySection}, Section{"deploy", DeploySection},
                           Section{"failure", FailureSection}}) {
    if (!o.sections.count(s.name)) continue;
    const int64_t t0 = MonoNanos();
    Progress(std::string("== ") + s.name);
    Status st = s.fn(run);
    if (!st.ok()) {
      run.failures.push_back(std::string(s.name) + ": " + st.ToString());
      Progress(std::string(s.name) + ": FAILED: " + st.ToString());
      run.doc[s.name]["error"] = st.ToString();
    }
    run.doc[s.name]["section_seconds"] = static_cast<double>(MonoNanos() - t0) / 1e9;
  }
  run.doc["loadavg_end"] = MachineInfo("")["loadavg"];
  run.doc["failures"] = run.failures;

  Status mk = MakeDirs(o.out_dir);
  bool written = mk.ok();
  if (written) {
    std::ofstream js(JoinPath(o.out_dir, "cluster.json"), std::ios::trunc);
    js << run.doc.dump(2) << "\n";
    std::ofstream md(JoinPath(o.out_dir, "cluster.md"), std::ios::trunc);
    md << Markdown(run.doc);
    written = js.good() && md.good();
  }
  if (!written) std::fprintf(stderr, "cannot write results to %s\n", o.out_dir.c_str());
  if (run.failures.empty() && !o.keep_logs) {
    std::filesystem::remove_all(run.tmp, ec);
  } else {
    Progress("logs kept in " + run.tmp);
  }
  Progress(
      fmt::format("wrote {}/cluster.{{json,md}}{}", o.out_dir,
                  run.failures.empty() ? "" : fmt::format(" ({} failures)", run.failures.size())));
  return run.failures.empty() && written ? 0 : 1;
}

}  // namespace
}  // namespace tern::bench::cluster

int main(int argc, char** argv) { return tern::bench::cluster::Main(argc, argv); }
