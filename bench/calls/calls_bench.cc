// calls_bench: what a call between two guests costs on each of tern's transports, and
// what transport choice buys a call graph (issue #3).
//
//   calls_bench [--quick] [--out=DIR] [--wasm-dir=DIR]
//
// Three agents run in this process, each with its own workers, frame server (TCP on
// 127.0.0.1) and shared-memory socket: `a` and `b` on emulated host h1, `c` on host h2.
// A driver guest (examples/relay, handler `calls`) on agent `a` makes N calls one after
// the other and times each with its own clock, so a row is exactly what a call costs the
// calling guest: both sandbox crossings, routing, the transport and the callee's run.
//
//   single call   driver → echo on the same worker (in-process, nested), on another
//                 worker of the same agent (in-process, queued), on agent b (shared
//                 memory), on agent c (TCP); 64 B, 4 KiB, 64 KiB.
//   chain of 4    driver → s1 → s2 → s3 → s4 (3 nested calls inside the chain, 4 in all):
//                 all on a; alternating a/b (shared memory between hops); alternating
//                 a/c (TCP between hops).
//   fan-out 1→8   driver → front, which starts 8 calls to a leaf service (8 replicas)
//                 at once and waits for all: leaves on a, on b, on c.
//
// Writes DIR/calls.json and DIR/calls.md (default bench/results). Unpinned: the agents'
// workers are free to run on both vCPUs, and in this process several agents share them.
#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "common/bench_util.h"
#include "core/file.h"
#include "core/manifest.h"
#include "wasm/engine.h"

namespace tern::bench {
namespace {

using agent::Agent;
using agent::AgentOptions;
using agent::AgentServer;
using agent::AgentServerOptions;

struct Node {
  std::unique_ptr<Agent> agent;
  std::unique_ptr<AgentServer> server;
};

struct Env {
  wasm::Engine* engine = nullptr;
  std::string relay_wasm;
  Manifest relay;
  std::map<std::string, Node> nodes;  // "a", "b", "c"
  std::string tmp;
};

Result<Node> StartNode(Env& env, const std::string& device, const std::string& host,
                       int workers) {
  Node n;
  AgentOptions o;
  o.device = device;
  o.host = host;
  o.workers = workers;
  TERN_ASSIGN_OR_RETURN(n.agent, Agent::Create(o, env.engine));
  AgentServerOptions so;
  so.frame_port = 0;
  so.admin_port = 0;
  so.shm_path = env.tmp + "/" + device + ".sock";
  TERN_ASSIGN_OR_RETURN(n.server, AgentServer::Start(n.agent.get(), so));
  return n;
}

// Deploys relay as `service` on node `at` and tells every node where its instances are.
Status Deploy(Env& env, const std::string& at, const std::string& service, uint32_t replicas = 1) {
  Manifest m = env.relay;
  m.name = service;
  m.replicas = replicas;
  Node& n = env.nodes.at(at);
  TERN_ASSIGN_OR_RETURN(agent::ServiceStatus st, n.agent->Deploy(m, env.relay_wasm));
  for (const std::string& id : st.instances) {
    dataplane::InstanceLocation l;
    l.instance = id;
    l.service = service;
    l.agent = n.agent->options().device;
    l.host = n.agent->options().host;
    l.tcp = n.agent->options().tcp_address;
    l.shm = n.agent->options().shm_path;
    for (auto& [name, other] : env.nodes) {
      if (name == at) continue;
      TERN_RETURN_IF_ERROR(other.agent->locations().Upsert(l).status());
    }
  }
  return Status::Ok();
}

// The driver on `a` calls svc.handler(body) n times; returns the per-call times (ns).
Result<std::vector<int64_t>> DriveCalls(Env& env, const std::string& svc,
                                        const std::string& handler, const std::string& body,
                                        int n) {
  agent::InvokeRequest r;
  r.service = "driver";
  r.handler = "calls";
  r.payload = fmt::format("{}|{}|{}|{}", n, svc, handler, body);
  agent::InvokeResult res = env.nodes.at("a").agent->InvokeSync(std::move(r));
  if (!res.status.ok()) return res.status.WithPrefix(svc + "." + handler);
  if (res.reply.size() != static_cast<size_t>(n) * 8) {
    return InternalError(fmt::format("driver replied {} bytes, expected {}", res.reply.size(),
                                     n * 8));
  }
  std::vector<int64_t> out(static_cast<size_t>(n));
  std::memcpy(out.data(), res.reply.data(), res.reply.size());
  return out;
}

struct Row {
  std::string section, name, payload, tier;
  Stats stats;
};

int Main(int argc, char** argv) {
  agent::TuneMallocForAgentProcess();  // the agents run in this process, as in `tern agent`
  bool quick = false;
  std::string out_dir = std::string(TERN_BENCH_SOURCE_DIR) + "/bench/results";
  std::string wasm_dir = std::string(TERN_BENCH_BUILD_DIR) + "/wasm";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a.rfind("--out=", 0) == 0) {
      out_dir = a.substr(6);
    } else if (a.rfind("--wasm-dir=", 0) == 0) {
      wasm_dir = a.substr(11);
    } else {
      std::fprintf(stderr, "usage: calls_bench [--quick] [--out=DIR] [--wasm-dir=DIR]\n");
      return 2;
    }
  }
  SetProgressName("calls");
  Env env;
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine({});
  if (!engine.ok()) {
    std::fprintf(stderr, "calls_bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  env.engine = engine->get();
  Result<std::string> wasm = ReadFile(wasm_dir + "/relay.wasm");
  Result<Manifest> m = LoadManifest(std::string(TERN_BENCH_SOURCE_DIR) +
                                    "/examples/relay/manifest.yaml");
  if (!wasm.ok() || !m.ok()) {
    std::fprintf(stderr, "calls_bench: %s (build the relay guest first)\n",
                 (wasm.ok() ? m.status() : wasm.status()).ToString().c_str());
    return 1;
  }
  env.relay_wasm = *wasm;
  env.relay = *m;
  char tmpl[] = "/tmp/tern-calls-bench.XXXXXX";
  env.tmp = mkdtemp(tmpl);

  auto check = [](const Status& s) {
    if (!s.ok()) {
      std::fprintf(stderr, "calls_bench: %s\n", s.ToString().c_str());
      std::exit(1);
    }
  };
  for (auto [dev, host] : {std::pair{"a", "h1"}, {"b", "h1"}, {"c", "h2"}}) {
    Result<Node> n = StartNode(env, dev, host, 2);
    check(n.status());
    env.nodes[dev] = std::move(*n);
  }
  // Instances are placed round-robin over a's two workers: driver → w0, echo-w1 → w1,
  // echo-w0 → w0 (the driver's own worker).
  check(Deploy(env, "a", "driver"));
  check(Deploy(env, "a", "echo-w1"));
  check(Deploy(env, "a", "echo-w0"));
  check(Deploy(env, "b", "echo-shm"));
  check(Deploy(env, "c", "echo-tcp"));

  std::vector<Row> rows;
  const int n_small = quick ? 300 : 20000;
  const int n_large = quick ? 100 : 3000;
  struct Target {
    const char* svc;
    const char* label;
    const char* tier;
  };
  const Target singles[] = {
      {"echo-w0", "in-process, same worker", "inproc"},
      {"echo-w1", "in-process, other worker", "inproc"},
      {"echo-shm", "shared memory (agent b, same host)", "shm"},
      {"echo-tcp", "TCP (agent c, other host, loopback)", "tcp"},
  };
  for (size_t payload : {size_t{64}, size_t{4096}, size_t{65536}}) {
    std::string body(payload, 'x');
    for (const Target& t : singles) {
      Progress(fmt::format("single call {} {} B", t.svc, payload));
      int n = payload > 4096 ? n_large : n_small;
      (void)DriveCalls(env, t.svc, "echo", body, quick ? 20 : 500);  // warm up
      Result<std::vector<int64_t>> s = DriveCalls(env, t.svc, "echo", body, n);
      check(s.status());
      rows.push_back({"single call", t.label, FormatCount(static_cast<double>(payload)) + "B",
                      t.tier, Summarize(*s)});
    }
  }

  // Chains: s1..s4 placed per variant; the driver calls s1.chain("s2,s3,s4|body").
  struct Placement {
    const char* label;
    const char* tier;
    std::vector<std::string> at;
  };
  const Placement chains[] = {
      {"all on agent a", "inproc", {"a", "a", "a", "a"}},
      {"alternating a/b (one host)", "shm", {"a", "b", "a", "b"}},
      {"alternating a/c (two hosts)", "tcp", {"a", "c", "a", "c"}},
  };
  int variant = 0;
  for (const Placement& p : chains) {
    std::vector<std::string> names;
    for (int i = 0; i < 4; ++i) {
      names.push_back(fmt::format("chain{}-s{}", variant, i + 1));
      check(Deploy(env, p.at[i], names.back()));
    }
    std::string hops = names[1] + "," + names[2] + "," + names[3] + "|" + std::string(64, 'c');
    Progress(fmt::format("chain of 4, {}", p.label));
    (void)DriveCalls(env, names[0], "chain", hops, quick ? 20 : 300);
    Result<std::vector<int64_t>> s = DriveCalls(env, names[0], "chain", hops, quick ? 200 : 5000);
    check(s.status());
    rows.push_back({"chain of 4", p.label, "64B", p.tier, Summarize(*s)});
    ++variant;
  }
  // Fan-out 1→8: front on a; 8 leaf replicas on a, b or c.
  const Placement fans[] = {
      {"leaves on agent a", "inproc", {"a"}},
      {"leaves on agent b (one host)", "shm", {"b"}},
      {"leaves on agent c (two hosts)", "tcp", {"c"}},
  };
  variant = 0;
  for (const Placement& p : fans) {
    std::string front = fmt::format("fan{}-front", variant);
    std::string leaf = fmt::format("fan{}-leaf", variant);
    check(Deploy(env, "a", front));
    check(Deploy(env, p.at[0], leaf, 8));
    std::string body = "8|" + leaf + "|echo|" + std::string(64, 'f');
    Progress(fmt::format("fan-out 1→8, {}", p.label));
    (void)DriveCalls(env, front, "fanout", body, quick ? 20 : 300);
    Result<std::vector<int64_t>> s = DriveCalls(env, front, "fanout", body, quick ? 200 : 3000);
    check(s.status());
    rows.push_back({"fan-out 1→8", p.label, "64B", p.tier, Summarize(*s)});
    ++variant;
  }

  // Report.
  nlohmann::json j;
  j["benchmark"] = "calls";
  j["machine"] = MachineInfo(TERN_BENCH_SOURCE_DIR);
  j["quick"] = quick;
  j["placement"] = "unpinned; three agents (2 workers each) in one process on 2 vCPUs";
  for (const Row& r : rows) {
    j["rows"].push_back({{"section", r.section},
                         {"name", r.name},
                         {"payload", r.payload},
                         {"tier", r.tier},
                         {"count", r.stats.count},
                         {"p50_ns", r.stats.p50},
                         {"p99_ns", r.stats.p99},
                         {"p999_ns", r.stats.p999},
                         {"mean_ns", r.stats.mean}});
  }
  std::string md = "# Calls between guests (bench/calls)\n\n";
  md += "Times measured by the calling guest (examples/relay `calls`): both sandbox crossings, "
        "routing, the transport and the callee. Three agents in one process on this 2-vCPU VM, "
        "unpinned; a and b on emulated host h1, c on h2 (loopback TCP, no emulated delay).";
  md += quick ? " **Quick run: few samples.**\n\n" : "\n\n";
  std::string section;
  for (const Row& r : rows) {
    if (r.section != section) {
      section = r.section;
      md += "\n## " + section + "\n\n| placement | payload | tier | p50 | p99 | p99.9 | n |\n"
            "|---|---|---|---|---|---|---|\n";
    }
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", r.name, r.payload, r.tier,
                      FormatNs(r.stats.p50), FormatNs(r.stats.p99),
                      r.stats.count >= kMinSamplesForP999 ? FormatNs(r.stats.p999) : "—",
                      r.stats.count);
  }
  check(MakeDirs(out_dir));
  check(WriteFileAtomic(out_dir + "/calls.json", j.dump(2) + "\n"));
  check(WriteFileAtomic(out_dir + "/calls.md", md));
  std::fputs(md.c_str(), stdout);
  for (auto& [name, n] : env.nodes) {
    n.server.reset();
    n.agent.reset();
  }
  std::string rm = "rm -rf " + env.tmp;
  (void)std::system(rm.c_str());
  return 0;
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
