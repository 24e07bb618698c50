// durable_bench: what `durable: true` costs a request (issue #6 point 5,
// docs/design/migration.md "Durable instances").
//
//   durable_bench [--quick] [--out=DIR] [--wasm-dir=DIR] [--source-dir=DIR]
//                 [--keeper-dir=DIR] [--requests=N] [--words=8]
//
// Three agents run in this process (Agent + AgentServer each, real TCP on 127.0.0.1, as
// in src/agent/durable_test.cc): cpu0 runs examples/counter, csd0 keeps its journal in
// --keeper-dir (its datasets dir; default: a fresh directory under the build directory,
// on the same disk as the repository), and csd1, in a directory next to it, is the
// second keeper of the counters deployed with two. A native client sends `touch <words>` invoke frames
// with a fresh idempotency key each (as `tern load --counter` does) over one TCP
// connection:
//   - latency: one request at a time, N of them (p50/p99/p99.9);
//   - throughput: 16 in flight (pipelined) to one instance, and to four instances of a
//     service (the keeper's group commit: records per fdatasync);
// first for the plain stateful counter, then for the same counter deployed durable
// (after its first base checkpoint) with one keeper, then with two (each reply waits for
// both; the appends go out in parallel). The limits of this machine come from the same
// run: appending 512 B to a file in the keeper's directory + fdatasync (the disk), the
// same on two files from two threads at once (two keepers on this one disk), and a 64 B
// TCP round trip between two threads over loopback (the network). A durable request
// cannot take less than the plain one + one round trip + one fdatasync (two at once with
// two keepers).
//
// Writes DIR/durable.json and DIR/durable.md. Exit code 1 if a run failed (an error
// answer, a wrong count), 2 on usage.
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "common/bench_util.h"
#include "core/file.h"
#include "core/ids.h"
#include "core/manifest.h"
#include "core/status.h"
#include "storage/journal.h"
#include "transport/frame.h"
#include "transport/frame_client.h"
#include "transport/socket.h"
#include "wasm/engine.h"

namespace tern::bench {
namespace {

using agent::Agent;
using agent::AgentOptions;
using agent::AgentServer;
using agent::AgentServerOptions;

constexpr size_t kWindow = 16;
constexpr int kInstances = 4;

struct Args {
  bool quick = false;
  std::string out = std::string(TERN_BENCH_SOURCE_DIR) + "/bench/results";
  std::string wasm_dir = std::string(TERN_BENCH_BUILD_DIR) + "/wasm";
  std::string source_dir = TERN_BENCH_SOURCE_DIR;
  std::string keeper_dir;  // "" = a fresh one under the build directory
  int requests = 0;        // 0 = 2000 (300 with --quick)
  uint32_t words = 8;
};

struct Node {
  std::unique_ptr<Agent> agent;
  std::unique_ptr<AgentServer> server;
  std::string tcp;
};

Result<Node> StartNode(wasm::Engine* engine, const std::string& device,
                       const std::string& datasets_dir) {
  Node n;
  AgentOptions o;
  o.device = device;
  o.workers = 2;
  o.datasets_dir = datasets_dir;
  TERN_ASSIGN_OR_RETURN(n.agent, Agent::Create(o, engine));
  AgentServerOptions so;
  so.frame_port = 0;
  so.admin_port = 0;
  TERN_ASSIGN_OR_RETURN(n.server, AgentServer::Start(n.agent.get(), so));
  n.tcp = n.agent->options().tcp_address;
  return n;
}

// ---- the limits

// Appends `bytes` to a file in `dir` and fdatasyncs it, `n` times: what the keeper's
// journal pays per group at least (a `touch 8` record is ~400 bytes).
Result<std::vector<int64_t>> FdatasyncNs(const std::string& dir, int n, size_t bytes) {
  const std::string path = dir + "/fdatasync-probe";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("open " + path, errno);
  std::string block(bytes, 'x');
  std::vector<int64_t> ns;
  for (int i = 0; i < n; ++i) {
    const int64_t t0 = NowNs();
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) ||
        ::fdatasync(fd) != 0) {
      Status s = ErrnoError("write+fdatasync " + path, errno);
      ::close(fd);
      return s;
    }
    ns.push_back(NowNs() - t0);
  }
  ::close(fd);
  ::unlink(path.c_str());
  return ns;
}

// The same as FdatasyncNs on two files (in `dir` and `dir2`) from two threads at once,
// `n` times: the time until both are durable, what two keepers on one disk pay at least.
Result<std::vector<int64_t>> FdatasyncPairNs(const std::string& dir, const std::string& dir2,
                                             int n, size_t bytes) {
  std::atomic<int> go{0}, done{0};
  std::atomic<bool> failed{false};
  auto side = [&](const std::string& d) {
    const std::string path = d + "/fdatasync-pair-probe";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) failed = true;
    std::string block(bytes, 'x');
    for (int i = 1; i <= n; ++i) {
      while (go.load(std::memory_order_acquire) < i) std::this_thread::yield();
      if (fd < 0 || ::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) ||
          ::fdatasync(fd) != 0) {
        failed = true;
      }
      done.fetch_add(1, std::memory_order_acq_rel);
    }
    if (fd >= 0) ::close(fd);
    ::unlink(path.c_str());
  };
  std::thread a(side, dir), b(side, dir2);
  std::vector<int64_t> ns;
  for (int i = 1; i <= n; ++i) {
    const int64_t t0 = NowNs();
    go.store(i, std::memory_order_release);
    while (done.load(std::memory_order_acquire) < 2 * i) std::this_thread::yield();
    ns.push_back(NowNs() - t0);
  }
  a.join();
  b.join();
  if (failed) return UnavailableError("append + fdatasync in " + dir + " or " + dir2 + " failed");
  return ns;
}

// A 64 B ping-pong between two threads over a loopback TCP connection.
Result<std::vector<int64_t>> TcpRoundTripNs(int n) {
  transport::UniqueFd ls(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(ls.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(ls.get(), 1) != 0 ||
      ::getsockname(ls.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return ErrnoError("loopback listen", errno);
  }
  transport::UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    return ErrnoError("loopback connect", errno);
  }
  transport::UniqueFd s(::accept(ls.get(), nullptr, nullptr));
  const int one = 1;
  ::setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto full = [](int fd, char* p, size_t k, bool rd) {
    while (k > 0) {
      ssize_t r = rd ? ::recv(fd, p, k, 0) : ::send(fd, p, k, MSG_NOSIGNAL);
      if (r <= 0) return false;
      p += r;
      k -= static_cast<size_t>(r);
    }
    return true;
  };
  std::thread echo([&] {
    char buf[64];
    for (int i = 0; i < n; ++i) {
      if (!full(s.get(), buf, sizeof(buf), true) || !full(s.get(), buf, sizeof(buf), false)) return;
    }
  });
  std::vector<int64_t> ns;
  char buf[64] = {};
  for (int i = 0; i < n; ++i) {
    const int64_t t0 = NowNs();
    if (!full(c.get(), buf, sizeof(buf), false) || !full(c.get(), buf, sizeof(buf), true)) break;
    ns.push_back(NowNs() - t0);
  }
  echo.join();
  if (static_cast<int>(ns.size()) != n) return UnavailableError("loopback ping-pong broke");
  return ns;
}

// ---- the requests

transport::Frame Touch(const std::string& service, uint32_t words, uint64_t key) {
  transport::Frame f;
  f.type = transport::FrameType::kInvoke;
  f.service = service;
  f.handler = "touch";
  f.payload = std::to_string(words);
  f.idempotency_key = key;
  return f;
}

struct Run {
  std::string name;
  Stats latency;             // interleaved with the other runs (InterleavedLatency)
  Stats sequential_latency;  // this run alone, before its throughput
  double rps_one = 0;   // 16 in flight, one instance
  double rps_four = 0;  // 16 in flight, four instances
  uint64_t record_bytes = 0;     // mean journal record of one request (durable)
  double records_per_sync = 0;   // the keepers' group commit over the four-instance run
  std::string error;
};

// Latency (one at a time) and throughput (16 in flight) of `touch` on `service` (one
// instance) and `service4` (four). `count` answers: the counter's value after each run,
// checked against the number of requests sent.
Run Measure(const Args& args, const std::string& name, Node& cpu0, const std::string& service,
            const std::string& service4, int n, uint64_t* key) {
  Run r;
  r.name = name;
  std::string host;
  uint16_t port = 0;
  Status st = ParseHostPort(cpu0.tcp, &host, &port);
  Result<std::unique_ptr<transport::FrameClient>> c =
      st.ok() ? transport::FrameClient::Connect(host, port) : Result<std::unique_ptr<transport::FrameClient>>(st);
  if (!c.ok()) {
    r.error = c.status().ToString();
    return r;
  }
  // Warm-up.
  for (int i = 0; i < 50; ++i) (void)(*c)->Call(Touch(service, args.words, ++*key), std::chrono::seconds(10));
  std::vector<int64_t> ns;
  for (int i = 0; i < n && r.error.empty(); ++i) {
    const int64_t t0 = NowNs();
    Result<transport::Frame> f = (*c)->Call(Touch(service, args.words, ++*key), std::chrono::seconds(10));
    ns.push_back(NowNs() - t0);
    if (!f.ok()) r.error = f.status().ToString();
  }
  r.latency = Summarize(ns);
  auto throughput = [&](const std::string& svc, double* rps) {
    std::vector<transport::Frame> batch;
    for (int i = 0; i < 2 * n; ++i) batch.push_back(Touch(svc, args.words, ++*key));
    const int64_t t0 = NowNs();
    Result<std::vector<Result<transport::Frame>>> got =
        (*c)->CallMany(std::move(batch), kWindow, std::chrono::seconds(120));
    const int64_t dt = NowNs() - t0;
    if (!got.ok()) {
      r.error = got.status().ToString();
      return;
    }
    for (const Result<transport::Frame>& g : *got) {
      if (!g.ok() && r.error.empty()) r.error = g.status().ToString();
    }
    *rps = 2.0 * n / (static_cast<double>(dt) / 1e9);
  };
  if (r.error.empty()) throughput(service, &r.rps_one);
  if (r.error.empty()) throughput(service4, &r.rps_four);
  return r;
}

// Latency of `touch` one request at a time, alternating between `services` (one
// request to each in turn, n each): the runs see the same moments of the shared disk
// and CPUs, so their ratio is not the drift between two sequential runs.
Result<std::vector<Stats>> InterleavedLatency(const Args& args, Node& cpu0,
                                              const std::vector<std::string>& services, int n,
                                              uint64_t* key) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(cpu0.tcp, &host, &port));
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::FrameClient> c,
                        transport::FrameClient::Connect(host, port));
  std::vector<std::vector<int64_t>> ns(services.size());
  for (int i = 0; i < n; ++i) {
    for (size_t s = 0; s < services.size(); ++s) {
      const int64_t t0 = NowNs();
      TERN_RETURN_IF_ERROR(
          c->Call(Touch(services[s], args.words, ++*key), std::chrono::seconds(10)).status());
      ns[s].push_back(NowNs() - t0);
    }
  }
  std::vector<Stats> out;
  for (std::vector<int64_t>& v : ns) out.push_back(Summarize(v));
  return out;
}

Result<std::vector<std::string>> DeployCounter(Node& cpu0, const Manifest& base,
                                               const std::string& name, int replicas, bool durable,
                                               const std::string& wasm) {
  Manifest m = base;
  m.name = name;
  m.replicas = static_cast<uint32_t>(replicas);
  m.durable = durable;
  if (durable && m.checkpoint_ms == 0) m.checkpoint_ms = kDurableCheckpointMs;
  TERN_ASSIGN_OR_RETURN(agent::ServiceStatus s, cpu0.agent->Deploy(m, wasm));
  return s.instances;
}

int RunAll(const Args& args) {
  SetProgressName("durable");
  const int n = args.requests > 0 ? args.requests : args.quick ? 300 : 2000;
  std::string keeper_dir = args.keeper_dir;
  if (keeper_dir.empty()) {
    std::string tmpl = std::string(TERN_BENCH_BUILD_DIR) + "/bench-durable-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("durable_bench: mkdtemp");
      return 1;
    }
    keeper_dir = tmpl;
  }
  // The second keeper's, next to it (its own datasets dir; a fresh one).
  std::string keeper_dir2 = keeper_dir + "-second-XXXXXX";
  if (::mkdtemp(keeper_dir2.data()) == nullptr) {
    std::perror("durable_bench: mkdtemp");
    return 1;
  }
  // Directories made here are removed however the run ends.
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      if (!dir.empty()) (void)RemoveTree(dir);
    }
  } cleanup{args.keeper_dir.empty() ? keeper_dir : ""}, cleanup2{keeper_dir2};
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine({});
  Result<std::string> wasm = ReadFile(args.wasm_dir + "/counter.wasm");
  Result<Manifest> manifest = LoadManifest(args.source_dir + "/examples/counter/manifest.yaml");
  if (!engine.ok() || !wasm.ok() || !manifest.ok()) {
    std::fprintf(stderr, "durable_bench: %s (build the counter guest first)\n",
                 (!engine.ok() ? engine.status() : !wasm.ok() ? wasm.status() : manifest.status())
                     .ToString()
                     .c_str());
    return 1;
  }
  nlohmann::json doc;
  doc["benchmark"] = "durable";
  doc["machine"] = MachineInfo(args.source_dir);
  doc["quick"] = args.quick;
  doc["handler"] = fmt::format("touch {}", args.words);
  doc["requests"] = n;
  doc["keeper_dir"] = keeper_dir;

  // The limits first, in the directory the keeper will write.
  Progress("limits: fdatasync of 512 B appends in " + keeper_dir + ", loopback TCP round trip");
  // One and two fdatasyncs at once, in alternating chunks: the disk's speed drifts with
  // what else runs here (by 5x within a run on this VM), and both see the same drift.
  auto disk_limits = [&](std::vector<int64_t>* one, std::vector<int64_t>* two) -> Status {
    for (int done = 0; done < std::min(n, 500); done += 50) {
      TERN_ASSIGN_OR_RETURN(std::vector<int64_t> a, FdatasyncNs(keeper_dir, 50, 512));
      TERN_ASSIGN_OR_RETURN(std::vector<int64_t> b,
                            FdatasyncPairNs(keeper_dir, keeper_dir2, 50, 512));
      one->insert(one->end(), a.begin(), a.end());
      two->insert(two->end(), b.begin(), b.end());
    }
    return Status::Ok();
  };
  Result<std::vector<int64_t>> sync = std::vector<int64_t>{}, pair = std::vector<int64_t>{};
  if (Status s = disk_limits(&*sync, &*pair); !s.ok()) sync = s;
  Result<std::vector<int64_t>> rtt = TcpRoundTripNs(std::max(n, 2000));
  for (const Status& s : {sync.status(), pair.status(), rtt.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "durable_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  const Stats rtt_st = Summarize(*rtt);

  Result<Node> cpu0 = StartNode(engine->get(), "cpu0", "");
  Result<Node> csd0 = StartNode(engine->get(), "csd0", keeper_dir);
  Result<Node> csd1 = StartNode(engine->get(), "csd1", keeper_dir2);
  for (const Status& s : {cpu0.status(), csd0.status(), csd1.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "durable_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  int rc = 0;
  uint64_t key = 1;
  std::vector<Run> runs;
  // Plain stateful counters.
  Result<std::vector<std::string>> p1 = DeployCounter(*cpu0, *manifest, "plain", 1, false, *wasm);
  Result<std::vector<std::string>> p4 = DeployCounter(*cpu0, *manifest, "plain4", kInstances, false, *wasm);
  // Durable ones, each after its keeper and first base checkpoint.
  Result<std::vector<std::string>> d1 = DeployCounter(*cpu0, *manifest, "durable", 1, true, *wasm);
  Result<std::vector<std::string>> d4 = DeployCounter(*cpu0, *manifest, "durable4", kInstances, true, *wasm);
  Result<std::vector<std::string>> t1 = DeployCounter(*cpu0, *manifest, "twokeepers", 1, true, *wasm);
  Result<std::vector<std::string>> t4 = DeployCounter(*cpu0, *manifest, "twokeepers4", kInstances, true, *wasm);
  for (const auto* r : {&p1, &p4, &d1, &d4, &t1, &t4}) {
    if (!r->ok()) {
      std::fprintf(stderr, "durable_bench: deploy: %s\n", r->status().ToString().c_str());
      return 1;
    }
  }
  for (const auto* r : {&d1, &d4, &t1, &t4}) {
    for (const std::string& id : **r) {
      std::vector<agent::JournalKeeper> keepers{{"csd0", csd0->tcp}};
      if (r == &t1 || r == &t4) keepers.push_back({"csd1", csd1->tcp});
      Status s = cpu0->agent->SetKeepers(id, keepers);
      if (s.ok()) s = cpu0->agent->JournalCheckpoint(id).status();
      if (!s.ok()) {
        std::fprintf(stderr, "durable_bench: keeper of %s: %s\n", id.c_str(), s.ToString().c_str());
        return 1;
      }
    }
  }
  Progress(fmt::format("not durable: {} x touch {} one at a time, then {} in flight", n, args.words, kWindow));
  runs.push_back(Measure(args, "stateful, not durable", *cpu0, "plain", "plain4", n, &key));
  // One durable run: its records per fdatasync and record size, from its keepers' stats.
  auto durable_run = [&](const std::string& name, const std::string& svc, const std::string& svc4,
                         std::vector<Node*> keepers) {
    storage::JournalStats before, after;
    auto add = [](storage::JournalStats* sum, const storage::JournalStats& s) {
      sum->appends += s.appends;
      sum->syncs += s.syncs;
      sum->bytes += s.bytes;
    };
    for (Node* k : keepers) add(&before, k->agent->journals()->stats());
    Progress(fmt::format("{}: {} x touch {} one at a time, then {} in flight", name, n, args.words,
                         kWindow));
    Run r = Measure(args, name, *cpu0, svc, svc4, n, &key);
    for (Node* k : keepers) add(&after, k->agent->journals()->stats());
    r.records_per_sync = after.syncs > before.syncs
                             ? static_cast<double>(after.appends - before.appends) /
                                   static_cast<double>(after.syncs - before.syncs)
                             : 0;
    r.record_bytes = after.appends > before.appends
                         ? (after.bytes - before.bytes) / (after.appends - before.appends)
                         : 0;
    runs.push_back(std::move(r));
  };
  durable_run("durable, one keeper (csd0 over loopback TCP)", "durable", "durable4", {&*csd0});
  durable_run("durable, two keepers (csd0 and csd1 in parallel)", "twokeepers", "twokeepers4",
              {&*csd0, &*csd1});
  // The latencies again, the three alternating request by request (what the report
  // compares; the sequential runs above measured throughput and warmed up).
  Progress(fmt::format("interleaved: {} x touch {} to each of plain, one keeper, two keepers", n,
                       args.words));
  Result<std::vector<Stats>> inter =
      InterleavedLatency(args, *cpu0, {"plain", "durable", "twokeepers"}, n, &key);
  if (!inter.ok()) {
    runs[0].error = inter.status().ToString();
  } else {
    for (size_t i = 0; i < 3; ++i) {
      runs[i].sequential_latency = runs[i].latency;
      runs[i].latency = (*inter)[i];
    }
  }
  std::string spread;  // requests per instance of the four-instance durable service
  for (const agent::InstanceStatus& i : cpu0->agent->GetStatus().instances) {
    if (i.service == "durable4") spread += (spread.empty() ? "" : " / ") + std::to_string(i.requests);
  }
  doc["durable4_requests_per_instance"] = spread;
  // The disk moves with what else runs here: the fdatasync limit again, right after the
  // durable runs, and the two samples together.
  std::vector<int64_t> sync2, pair2;
  if (Status s = disk_limits(&sync2, &pair2); !s.ok()) {
    std::fprintf(stderr, "durable_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<int64_t> before_sync = *sync, after_sync = sync2;
  const Stats sync_before = Summarize(before_sync), sync_after = Summarize(after_sync);
  sync->insert(sync->end(), sync2.begin(), sync2.end());
  pair->insert(pair->end(), pair2.begin(), pair2.end());
  const Stats sync_st = Summarize(*sync), pair_st = Summarize(*pair);
  const Run& d = runs[1];
  const Run& d2 = runs[2];
  // The books: every touch counted once. A plain and each durable counter got 50
  // warm-ups + n + 2n + n (interleaved) requests on the single instance.
  for (const char* svc : {"plain", "durable", "twokeepers"}) {
    agent::InvokeRequest g;
    g.service = svc;
    g.handler = "get";
    agent::InvokeResult got = cpu0->agent->InvokeSync(g);
    const std::string want = std::to_string(50 + 4 * n);
    if (!got.status.ok() || got.reply != want) {
      std::fprintf(stderr, "durable_bench: %s counts %s, expected %s\n", svc,
                   got.status.ok() ? got.reply.c_str() : got.status.ToString().c_str(), want.c_str());
      rc = 1;
    }
  }
  for (const Run& r : runs) {
    if (!r.error.empty()) {
      std::fprintf(stderr, "durable_bench: %s: %s\n", r.name.c_str(), r.error.c_str());
      rc = 1;
    }
  }

  // ---- the report
  const Run& plain = runs[0];
  const double floor_p50 = plain.latency.p50 + rtt_st.p50 + sync_st.p50;
  // Two keepers: the round trips overlap, the two fdatasyncs share this one disk.
  const double floor2_p50 = plain.latency.p50 + rtt_st.p50 + pair_st.p50;
  auto stats_json = [](const Stats& s) {
    return nlohmann::json{{"p50_ns", s.p50}, {"p99_ns", s.p99}, {"p999_ns", s.p999},
                          {"max_ns", s.max}, {"count", s.count}};
  };
  doc["limits"] = {{"fdatasync_512b_append", stats_json(sync_st)},
                   {"fdatasync_512b_append_before", stats_json(sync_before)},
                   {"fdatasync_512b_append_after", stats_json(sync_after)},
                   {"fdatasync_512b_append_two_files_at_once", stats_json(pair_st)},
                   {"tcp_rtt_64b", stats_json(rtt_st)}};
  for (const Run& r : runs) {
    nlohmann::json j{{"name", r.name},
                     {"latency", stats_json(r.latency)},
                     {"latency_run_alone", stats_json(r.sequential_latency)},
                     {"rps_16_in_flight_1_instance", r.rps_one},
                     {"rps_16_in_flight_4_instances", r.rps_four}};
    if (&r != &plain) {
      j["journal_record_bytes"] = r.record_bytes;
      j["records_per_fdatasync"] = r.records_per_sync;
    }
    if (!r.error.empty()) j["error"] = r.error;
    doc["runs"].push_back(j);
  }
  doc["summary"] = {{"durable_over_plain_p50", d.latency.p50 / std::max(plain.latency.p50, 1.0)},
                    {"durable_over_floor_p50", d.latency.p50 / std::max(floor_p50, 1.0)},
                    {"floor_p50_ns", floor_p50},
                    {"two_keepers_over_one_p50", d2.latency.p50 / std::max(d.latency.p50, 1.0)},
                    {"two_keepers_over_plain_p50", d2.latency.p50 / std::max(plain.latency.p50, 1.0)},
                    {"two_keepers_over_floor_p50", d2.latency.p50 / std::max(floor2_p50, 1.0)},
                    {"two_keepers_floor_p50_ns", floor2_p50}};
  std::string md = fmt::format(
      "# durable: the cost of `durable: true` per request\n\n"
      "`touch {}` on examples/counter (one stateful instance, ~128 KiB of memory) from a native "
      "client over loopback TCP, a fresh idempotency key per request; the durable counters' "
      "journal is kept by a second agent (csd0) in this process, over loopback TCP, in `{}`, "
      "and with two keepers also by a third (csd1), in a directory next to it on the same disk. "
      "Latency: {} requests one at a time to each, the three counters in turn request by request "
      "(so that they see the same drift of the shared disk; each run alone, before its "
      "throughput run, in durable.json). The fdatasync limits likewise alternate in chunks of "
      "50. Throughput: {} requests with {} in flight, to one "
      "instance and to {} instances. Machine: {} vCPUs, shared and noisy; medians of one run "
      "(bench/durable, docs/benchmarks.md).{}\n\n",
      args.words, keeper_dir, n, 2 * n, kWindow, kInstances, UsableCpus(),
      args.quick ? " **Quick run: few samples.**" : "");
  md += "| what | p50 | p99 | p99.9 | req/s, 16 in flight, 1 instance | 4 instances |\n";
  md += "|---|---|---|---|---|---|\n";
  md += fmt::format("| limit: loopback TCP round trip, 64 B | {} | {} | {} | | |\n", FormatNs(rtt_st.p50),
                    FormatNs(rtt_st.p99), FormatNs(rtt_st.p999));
  md += fmt::format(
      "| limit: append 512 B + fdatasync in the keeper's directory (before and after the "
      "runs; each alone: p50 {} / {}) | {} | {} | {} | | |\n",
      FormatNs(sync_before.p50), FormatNs(sync_after.p50), FormatNs(sync_st.p50),
      FormatNs(sync_st.p99), FormatNs(sync_st.p999));
  md += fmt::format(
      "| limit: the same on two files from two threads at once (two keepers, one disk) | {} | {} "
      "| {} | | |\n",
      FormatNs(pair_st.p50), FormatNs(pair_st.p99), FormatNs(pair_st.p999));
  for (const Run& r : runs) {
    md += fmt::format("| `touch {}`, {} | {} | {} | {} | {} | {} |\n", args.words, r.name,
                      FormatNs(r.latency.p50), FormatNs(r.latency.p99), FormatNs(r.latency.p999),
                      FormatCount(r.rps_one), FormatCount(r.rps_four));
  }
  md += fmt::format("| floor of a durable request: not durable + round trip + fdatasync (p50s) | {} | | | | |\n",
                    FormatNs(floor_p50));
  md += fmt::format(
      "| floor with two keepers: not durable + round trip + two fdatasyncs at once (p50s) | {} "
      "| | | | |\n\n",
      FormatNs(floor2_p50));
  md += fmt::format(
      "Durable / not durable, p50: **{:.1f}×**; durable / its floor, p50: **{:.2f}×**. A "
      "journal record of one `touch {}` is {} bytes on the wire (the pages it changed, "
      "LZ4, and its dedup entry); over the {}-instance run the keeper wrote {:.2f} records "
      "per fdatasync (group commit; requests per instance {}).\n",
      d.latency.p50 / std::max(plain.latency.p50, 1.0), d.latency.p50 / std::max(floor_p50, 1.0),
      args.words, d.record_bytes, kInstances, d.records_per_sync, spread);
  md += fmt::format(
      "\nTwo keepers / one, p50: **{:.2f}×** (the appends go out in parallel: the reply waits "
      "for the slower acknowledgement, not the sum); two keepers / their floor, p50: "
      "**{:.2f}×**; {:.2f} records per fdatasync on each keeper over the {}-instance run.\n",
      d2.latency.p50 / std::max(d.latency.p50, 1.0), d2.latency.p50 / std::max(floor2_p50, 1.0),
      d2.records_per_sync, kInstances);
  Progress(fmt::format("durable p50 {} with one keeper, {} with two, vs plain {} (floors {} / {}); "
                       "{:.2f} records per fdatasync",
                       FormatNs(d.latency.p50), FormatNs(d2.latency.p50), FormatNs(plain.latency.p50),
                       FormatNs(floor_p50), FormatNs(floor2_p50), d.records_per_sync));
  Status st = MakeDirs(args.out);
  if (st.ok()) st = WriteFileAtomic(args.out + "/durable.json", doc.dump(1) + "\n");
  if (st.ok()) st = WriteFileAtomic(args.out + "/durable.md", md);
  if (!st.ok()) {
    std::fprintf(stderr, "durable_bench: %s\n", st.ToString().c_str());
    rc = 1;
  }
  std::fputs(md.c_str(), stdout);
  return rc;
}

int Main(int argc, char** argv) {
  Args args;
  const char* usage =
      "usage: durable_bench [--quick] [--out=DIR] [--wasm-dir=DIR] [--source-dir=DIR]\n"
      "                     [--keeper-dir=DIR] [--requests=N] [--words=8]\n";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* flag) { return FlagValue(a, flag); };
    if (a == "--quick") {
      args.quick = true;
    } else if (auto v = val("--out")) {
      args.out = *v;
    } else if (auto v = val("--wasm-dir")) {
      args.wasm_dir = *v;
    } else if (auto v = val("--source-dir")) {
      args.source_dir = *v;
    } else if (auto v = val("--keeper-dir")) {
      args.keeper_dir = *v;
    } else if (auto v = val("--requests"); v && ParseNum(*v, &args.requests) && args.requests > 0 &&
                                           args.requests <= 1000000) {
    } else if (auto v = val("--words"); v && ParseNum(*v, &args.words) && args.words <= 4096) {
    } else {
      std::fputs(usage, stderr);
      return 2;
    }
  }
  return RunAll(args);
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
