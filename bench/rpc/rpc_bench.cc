// rpc_bench: round-trip latency (p50/p99/p99.9) and throughput (calls/s, and per CPU
// core consumed) of request/response calls between two processes, for each target
// (rpc_target.h) × payload × placement. docs/benchmarks.md says how to read it;
// bench/run.sh runs it. By hand:
//
//   rpc_bench [--quick] [--out=DIR] [--targets=a,b,...] [--payloads=64,4096,65536]
//             [--pinning=pinned,unpinned[,cross]] [--network=loopback,netns]
//             [--source-dir=DIR]
//
// writes DIR/rpc.json and DIR/rpc.md (default DIR: bench/results of the checkout),
// progress on stderr, the tables on stdout. `rpc_bench --serve=<target> ...` is the
// server side of a target, started by rpc_bench itself (ServerProcess).
//
// --network (default both): loopback rows, and netns rows for the TCP targets across
// two network namespaces of an emulated network (netns_site.h), built for the run and
// torn down after it (also on SIGINT/SIGTERM). The netns rows need root and iproute2;
// without them the report says they were skipped and why.
//
// Exit code: 0 when every measurement ran, 1 when one failed (the report says which),
// 2 on bad flags.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/bench_util.h"
#include "netns_site.h"
#include "rpc_report.h"
#include "rpc_target.h"
#include "shm_ring.h"

#ifndef TERN_BENCH_SOURCE_DIR
#define TERN_BENCH_SOURCE_DIR ""
#endif

namespace tern::bench::rpc {
namespace {

constexpr const char* kUsage =
    "usage: rpc_bench [--quick] [--out=DIR] [--targets=a,b,...] [--payloads=64,4096,65536]\n"
    "                 [--pinning=pinned,unpinned,cross] [--network=loopback,netns]\n"
    "                 [--source-dir=DIR]\n"
    "       (rpc_bench --serve=TARGET ... is the server side, started by rpc_bench)\n";

struct Options {
  bool quick = false;
  std::string out_dir;
  std::string source_dir = TERN_BENCH_SOURCE_DIR;
  std::vector<std::string> targets;  // empty = all
  std::vector<size_t> payloads = {64, 4096, 65536};
  std::vector<Placement> placements = {Placement::kPinned, Placement::kUnpinned};
  bool loopback = true;  // --network: the loopback rows
  bool netns = true;     // --network: the netns rows (TCP targets; as root only)
  std::string self_binary;
};

// How long and how many, per measurement.
struct Budget {
  size_t warmup_calls;
  size_t max_samples;
  int64_t latency_ns;     // the latency loop stops at max_samples or after this
  int64_t throughput_ns;  // per in-flight count
};

// How long kLimitShmSpin spin iterations (a check and a PAUSE each) take here: the
// median of 21 rounds.
double SpinWindowNs() {
  std::vector<int64_t> rounds;
  for (int r = 0; r < 21; ++r) {
    const int64_t t0 = NowNs();
    for (int i = 0; i < kLimitShmSpin; ++i) CpuRelax();
    rounds.push_back(NowNs() - t0);
  }
  return Summarize(rounds).p50;
}

Budget BudgetFor(const Options& o, size_t payload) {
  if (o.quick) return {20, payload > 4096 ? size_t{300} : size_t{1000}, 100'000'000, 100'000'000};
  return {200, payload > 4096 ? size_t{10'000} : size_t{20'000}, 2'000'000'000, 1'000'000'000};
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool Flag(const char* arg, const char* name, std::string* value) {
  size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

std::string PayloadName(size_t bytes) {
  if (bytes >= 1024 && bytes % 1024 == 0) return std::to_string(bytes / 1024) + " KiB";
  return std::to_string(bytes) + " B";
}

// Places this process (every thread) for `placement`.
void PlaceClient(Placement placement) { PinProcess(getpid(), ClientCpu(placement)); }

void Stamp(std::vector<uint8_t>& request, uint64_t seq) {
  std::memcpy(request.data(), &seq, sizeof(seq));
}

// Runs one target at one payload and placement, on loopback (site null) or across the
// emulated network of `site`; returns its result row.
nlohmann::json Measure(const Options& o, const TargetInfo& info, size_t payload,
                       Placement placement, const NetnsSite* site) {
  const std::string label = info.name + " " + PayloadName(payload) + " " +
                            PlacementName(placement) + (site != nullptr ? " netns" : "");
  nlohmann::json row = {{"target", info.name},
                        {"group", info.group},
                        {"payload", payload},
                        {"pinning", PlacementName(placement)},
                        {"network", site != nullptr ? "netns" : "loopback"},
                        {"ok", false}};
  auto fail = [&](const Status& st, const char* phase) {
    row["error"] = std::string(phase) + ": " + st.ToString();
    Progress(label + ": FAILED in " + phase + ": " + st.ToString());
    return row;
  };
  const Budget budget = BudgetFor(o, payload);
  TargetConfig config;
  config.payload_bytes = payload;
  config.placement = placement;
  config.max_in_flight = *std::max_element(info.in_flight.begin(), info.in_flight.end());
  config.self_binary = o.self_binary;
  config.netns = site;

  PlaceClient(placement);
  std::unique_ptr<RpcTarget> target = info.make();
  Status st = target->Setup(config);
  if (!st.ok()) {
    (void)target->Teardown();
    return fail(st, "setup");
  }
  PlaceClient(placement);  // threads the target started (gRPC's) follow the placement

  std::vector<uint8_t> request(payload);
  for (size_t i = 0; i < payload; ++i) request[i] = static_cast<uint8_t>(i * 131 + 7);
  std::vector<uint8_t> reply(payload);

  // Warm-up, every reply compared byte for byte.
  for (size_t i = 0; i < budget.warmup_calls && st.ok(); ++i) {
    Stamp(request, i);
    st = target->RoundTrip(request, reply);
    if (st.ok() && reply != request) st = DataLossError("the reply differs from the request");
  }
  if (!st.ok()) {
    (void)target->Teardown();
    return fail(st, "warm-up");
  }

  // Latency: one call in flight; the sequence number in the first 8 bytes and the
  // last 8 bytes are checked on every call.
  std::vector<int64_t> samples;
  samples.reserve(budget.max_samples);
  const int64_t stop = NowNs() + budget.latency_ns;
  for (uint64_t seq = budget.warmup_calls; samples.size() < budget.max_samples; ++seq) {
    Stamp(request, seq);
    const int64_t t0 = NowNs();
    st = target->RoundTrip(request, reply);
    const int64_t t1 = NowNs();
    if (!st.ok()) break;
    if (std::memcmp(reply.data(), request.data(), 8) != 0 ||
        std::memcmp(reply.data() + payload - 8, request.data() + payload - 8, 8) != 0) {
      st = DataLossError("the reply differs from the request");
      break;
    }
    samples.push_back(t1 - t0);
    if (t1 >= stop) break;
  }
  if (!st.ok()) {
    (void)target->Teardown();
    return fail(st, "latency");
  }
  const Stats s = Summarize(samples);
  nlohmann::json lat = {{"count", s.count}, {"min", s.min}, {"p50", s.p50},
                        {"p99", s.p99},     {"max", s.max}, {"mean", s.mean}};
  if (s.count >= kMinSamplesForP999) lat["p999"] = s.p999;
  row["latency"] = lat;
  std::string line =
      fmt::format("{}: p50 {} p99 {}{} (n={})", label, FormatNs(s.p50), FormatNs(s.p99),
                  s.count >= kMinSamplesForP999 ? " p99.9 " + FormatNs(s.p999) : "", s.count);

  // Throughput at each in-flight count, with the CPU time both processes consumed.
  nlohmann::json tp = nlohmann::json::array();
  const pid_t server = target->ServerPid();
  for (int n : info.in_flight) {
    const double cpu_c0 = ProcessCpuSeconds();
    const double cpu_s0 = server > 0 ? ProcessCpuSeconds(server) : 0;
    const int64_t t0 = NowNs();
    Result<uint64_t> calls = target->RunInFlight(n, request, t0 + budget.throughput_ns);
    const int64_t t1 = NowNs();
    const double cpu_c = ProcessCpuSeconds() - cpu_c0;
    const double cpu_s = server > 0 ? ProcessCpuSeconds(server) - cpu_s0 : 0;
    if (!calls.ok()) {
      if (calls.status().code() == StatusCode::kUnimplemented) continue;
      st = calls.status();
      break;
    }
    const double seconds = static_cast<double>(t1 - t0) / 1e9;
    const double cpu = cpu_c + cpu_s;
    nlohmann::json t = {{"in_flight", n},
                        {"calls", *calls},
                        {"seconds", seconds},
                        {"calls_per_s", static_cast<double>(*calls) / seconds},
                        {"cpu_client_s", cpu_c},
                        {"cpu_server_s", cpu_s},
                        {"cores_used", cpu / seconds}};
    if (cpu > 0) t["calls_per_core_s"] = static_cast<double>(*calls) / cpu;
    line += fmt::format("; {} in flight: {} calls/s, {}/core ({} cores)", n,
                        FormatCount(t["calls_per_s"].get<double>()),
                        FormatCount(t.value("calls_per_core_s", 0.0)), Fmt3(cpu / seconds));
    tp.push_back(std::move(t));
  }
  row["throughput"] = tp;
  Status down = target->Teardown();
  if (st.ok()) st = down;
  if (!st.ok()) {
    Progress(line);
    return fail(st, "throughput/teardown");
  }
  row["ok"] = true;
  Progress(line);
  return row;
}

// Builds the emulated network for the netns rows when they are wanted (--network has
// netns and a chosen target supports it) and possible (root, iproute2, no other run using
// it). Describes the outcome in (*doc)["netns"]: status "ok" (with the topology),
// "skipped" or "off" (with the reason), or "failed" (then *ok = false).
std::unique_ptr<NetnsSite> StartNetns(const Options& o,
                                      const std::vector<const TargetInfo*>& chosen,
                                      nlohmann::json* doc, bool* ok) {
  nlohmann::json& n = (*doc)["netns"];
  bool any = false;
  for (const TargetInfo* t : chosen) any = any || t->netns;
  if (!o.netns) {
    n = {{"status", "off"}, {"reason", "not requested (--network without netns)"}};
    return nullptr;
  }
  if (!any) {
    n = {{"status", "off"},
         {"reason",
          "no chosen target runs across namespaces (limit_tcp, tern_tcp and "
          "grpc_unary_sync do)"}};
    return nullptr;
  }
  NetnsSiteOptions so;
  so.teardown_on_signal = true;
  Result<std::unique_ptr<NetnsSite>> site = NetnsSite::Create(so);
  if (!site.ok()) {
    const StatusCode code = site.status().code();
    const std::string why = code == StatusCode::kPermissionDenied ? "needs root"
                            : code == StatusCode::kUnavailable    ? "unavailable"
                                                                  : "failed";
    n = {{"status", code == StatusCode::kPermissionDenied || code == StatusCode::kUnavailable
                        ? "skipped"
                        : "failed"},
         {"reason", why + ": " + site.status().ToString()}};
    if (n["status"] == "failed") *ok = false;
    Progress("netns rows " + n["status"].get<std::string>() + ": " + site.status().ToString());
    return nullptr;
  }
  const emu::HostNetwork& net = (*site)->network();
  n = {{"status", "ok"},
       {"cluster", net.cluster},
       {"state_dir", so.state_dir},
       {"bridge", {{"name", net.bridge}, {"address", net.bridge_address}}},
       {"server", {{"netns", (*site)->server_netns()}, {"address", (*site)->server_address()}}},
       {"client", {{"netns", (*site)->client_netns()}, {"address", (*site)->client_address()}}}};
  Progress(fmt::format("netns: server in {} ({}), client sockets in {} ({}), bridge {}",
                       (*site)->server_netns(), (*site)->server_address(), (*site)->client_netns(),
                       (*site)->client_address(), net.bridge));
  return std::move(*site);
}

int Serve(const std::string& name, int argc, char** argv) {
  ServeArgs args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) continue;
    size_t eq = a.find('=');
    if (eq == std::string::npos) {
      args.values[a.substr(2)] = "";
    } else {
      args.values[a.substr(2, eq - 2)] = a.substr(eq + 1);
    }
  }
  PrepareServeProcess(args);
  TargetList list;
  RegisterLimitTargets(&list);
  RegisterGrpcTargets(&list);
  RegisterTernTargets(&list);
  const TargetInfo* t = list.Find(name);
  if (t == nullptr || !t->serve) {
    std::fprintf(stderr, "rpc_bench: no server side for target '%s'\n", name.c_str());
    return 2;
  }
  return t->serve(args);
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string name;
    if (Flag(argv[i], "--serve", &name)) return Serve(name, argc, argv);
  }
  SetProgressName("rpc");
  Options o;
  std::string v;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strcmp(a, "--quick") == 0) {
      o.quick = true;
    } else if (Flag(a, "--out", &o.out_dir) || Flag(a, "--source-dir", &o.source_dir)) {
    } else if (Flag(a, "--targets", &v)) {
      o.targets = Split(v);
    } else if (Flag(a, "--payloads", &v)) {
      o.payloads.clear();
      for (const std::string& p : Split(v)) {
        char* end = nullptr;
        unsigned long long n = std::strtoull(p.c_str(), &end, 10);
        if (end == nullptr || *end != '\0' || n < 8 || n > (16u << 20)) {
          std::fprintf(stderr, "rpc_bench: bad payload '%s' (bytes, 8 .. 16 MiB)\n%s", p.c_str(),
                       kUsage);
          return 2;
        }
        o.payloads.push_back(n);
      }
    } else if (Flag(a, "--pinning", &v)) {
      o.placements.clear();
      for (const std::string& p : Split(v)) {
        if (p == "pinned") {
          o.placements.push_back(Placement::kPinned);
        } else if (p == "unpinned") {
          o.placements.push_back(Placement::kUnpinned);
        } else if (p == "cross") {
          o.placements.push_back(Placement::kCross);
        } else {
          std::fprintf(stderr, "rpc_bench: bad placement '%s'\n%s", p.c_str(), kUsage);
          return 2;
        }
      }
    } else if (Flag(a, "--network", &v)) {
      o.loopback = o.netns = false;
      for (const std::string& n : Split(v)) {
        if (n == "loopback") {
          o.loopback = true;
        } else if (n == "netns") {
          o.netns = true;
        } else {
          std::fprintf(stderr, "rpc_bench: bad network '%s' (loopback, netns)\n%s", n.c_str(),
                       kUsage);
          return 2;
        }
      }
    } else if (std::strcmp(a, "--help") == 0 || std::strcmp(a, "-h") == 0) {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "rpc_bench: unknown argument '%s'\n%s", a, kUsage);
      return 2;
    }
  }
  if (o.payloads.empty() || o.placements.empty() || (!o.loopback && !o.netns)) {
    std::fprintf(stderr, "rpc_bench: nothing to measure\n%s", kUsage);
    return 2;
  }
  if (o.out_dir.empty()) {
    o.out_dir = o.source_dir.empty() ? "." : o.source_dir + "/bench/results";
  }
  std::error_code ec;
  o.self_binary = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) {
    std::fprintf(stderr, "rpc_bench: cannot find its own binary: %s\n", ec.message().c_str());
    return 1;
  }
  for (Placement p : o.placements) {
    if (p == Placement::kCross && UsableCpus() < 2) {
      std::fprintf(stderr, "rpc_bench: the cross placement needs 2 CPUs\n");
      return 2;
    }
  }

  TargetList list;
  RegisterLimitTargets(&list);
  RegisterGrpcTargets(&list);
  RegisterTernTargets(&list);
  std::vector<const TargetInfo*> chosen;
  if (o.targets.empty()) {
    for (const TargetInfo& t : list.all()) chosen.push_back(&t);
  } else {
    for (const std::string& name : o.targets) {
      const TargetInfo* t = list.Find(name);
      if (t == nullptr) {
        std::string known;
        for (const TargetInfo& k : list.all()) known += " " + k.name;
        std::fprintf(stderr, "rpc_bench: unknown target '%s' (known:%s)\n", name.c_str(),
                     known.c_str());
        return 2;
      }
      chosen.push_back(t);
    }
  }

  nlohmann::json doc = nlohmann::json::object();
  const int64_t t0 = NowNs();
  doc["machine"] = MachineInfo("");
  doc["machine"]["timer_overhead_ns"] = TimerOverheadNs();
  doc["git_rev"] = GitRev(o.source_dir);
  doc["mode"] = o.quick ? "quick" : "full";
  doc["placements"] = nlohmann::json::array();
  for (Placement p : o.placements) doc["placements"].push_back(PlacementName(p));
  doc["payloads"] = o.payloads;
  doc["networks"] = nlohmann::json::array();
  if (o.loopback) doc["networks"].push_back("loopback");
  if (o.netns) doc["networks"].push_back("netns");
  doc["machine"]["limit_shm_spin_ns"] = SpinWindowNs();
  doc["notes"] = {
      fmt::format("limit_shm does **not spin in the pinned run** (futex wait only): with both "
                  "ends on one vCPU a spinning end only keeps the other from running. Unpinned "
                  "(and cross) it spins {} iterations (a check and a PAUSE each; {} here), then "
                  "futex-waits.",
                  kLimitShmSpin, FormatNs(doc["machine"]["limit_shm_spin_ns"].get<double>())),
      "The server side of every target is a separate process (`rpc_bench --serve=...`) on "
      "127.0.0.1 or a shared memfd; the client is rpc_bench's main thread. The netns rows "
      "put the server in one network namespace and the client's socket in another, joined "
      "by veth pairs through a bridge (see *TCP across two network namespaces*)."};
  doc["targets"] = nlohmann::json::array();
  for (const TargetInfo* t : chosen) {
    doc["targets"].push_back({{"name", t->name},
                              {"group", t->group},
                              {"description", t->description},
                              {"in_flight", t->in_flight},
                              {"netns", t->netns}});
  }
  Progress(fmt::format("{} run: {} targets × {} payloads × {} placements",
                       doc["mode"].get<std::string>(), chosen.size(), o.payloads.size(),
                       o.placements.size()));

  bool ok = true;
  std::unique_ptr<NetnsSite> site = StartNetns(o, chosen, &doc, &ok);
  // --quick (the ctest smoke run) measures the netns rows at the smallest payload only.
  const size_t smallest = *std::min_element(o.payloads.begin(), o.payloads.end());
  doc["results"] = nlohmann::json::array();
  for (Placement p : o.placements) {
    for (size_t payload : o.payloads) {
      for (const TargetInfo* t : chosen) {
        std::vector<const NetnsSite*> networks;
        if (o.loopback) networks.push_back(nullptr);
        if (site != nullptr && t->netns && (!o.quick || payload == smallest)) {
          networks.push_back(site.get());
        }
        for (const NetnsSite* network : networks) {
          nlohmann::json row = Measure(o, *t, payload, p, network);
          ok = ok && row["ok"].get<bool>();
          doc["results"].push_back(std::move(row));
        }
      }
    }
  }
  if (site != nullptr) {
    PinProcess(getpid(), -1);
    const emu::TeardownReport down = site->Teardown();
    doc["netns"]["teardown"] = {
        {"clean", down.clean()}, {"removed", down.removed.size()}, {"remaining", down.remaining}};
    if (!down.clean()) {
      ok = false;
      Progress("netns: teardown left: " + doc["netns"]["teardown"]["remaining"].dump());
    } else {
      Progress(fmt::format("netns: torn down ({} resources removed)", down.removed.size()));
    }
    site.reset();
  }
  PinProcess(getpid(), -1);
  doc["ok"] = ok;
  doc["seconds"] = static_cast<double>(NowNs() - t0) / 1e9;
  AddGoalSummary(doc);
  AddNetnsOverhead(doc);

  std::filesystem::create_directories(o.out_dir, ec);
  const std::string json_path = o.out_dir + "/rpc.json";
  const std::string md_path = o.out_dir + "/rpc.md";
  std::ofstream jout(json_path, std::ios::trunc);
  jout << doc.dump(2) << "\n";
  std::ofstream mout(md_path, std::ios::trunc);
  mout << RenderMarkdown(doc);
  jout.close();
  mout.close();
  if (!jout || !mout) {
    std::fprintf(stderr, "rpc_bench: cannot write %s or %s\n", json_path.c_str(), md_path.c_str());
    return 1;
  }
  std::fputs(RenderTables(doc).c_str(), stdout);
  Progress(fmt::format("done in {:.1f} s{}: {} and {}", doc["seconds"].get<double>(),
                       ok ? "" : " (SOME TARGETS FAILED)", md_path, json_path));
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace tern::bench::rpc

int main(int argc, char** argv) { return tern::bench::rpc::Main(argc, argv); }
