// ndp_bench: near-data offload end to end (issue #5). Starts an emulated datacenter with
// `tern up` (bench/ndp/ndp.yaml: a compute host cpu0 with one core, and a CSD csd0 with a
// quarter of a core behind a 1 Gbit/s, 50 µs link), generates a dataset of fixed 64-byte
// records (ndp_data.h), puts it on the CSD with `tern data put`, and measures the
// ndpscan guest (ndp_scan.cc) through the gateway:
//
//   filter at 0.1%, 10% and 100% selectivity (scan-filter-aggregate over one object per
//   query), and crunch (compute-heavy over the first MiBs of an object).
//
// Every case runs on every device (the oracle: each feasible placement measured, the best
// taken); the controller is then asked where each policy (host-only, data-local, latency,
// energy, balanced) would place the service, given hints measured in the host run, and
// the policy gets the numbers measured on the device it chose. Latency is the client's
// (the gateway's answer), bytes moved come from the agents' counters (remote dataset
// bytes and reply bytes), CPU time from the devices' cgroups (cpuacct.usage; the agents'
// per-instance thread CPU time without cgroups), joules from the topology's power model.
// A last section measures the CSD's dataset-serving throughput to a reader on cpu0 with
// and without offloaded queries running on the CSD.
//
// usage: ndp_bench [--quick] [--out=DIR] [--source-dir=DIR] [--build-dir=DIR]
//   --quick  4 objects of 2 MiB and a few queries per case (the ctest smoke run)
// Writes ndp.json, ndp.md and ndp.svg into --out (default bench/results). Exit code 1 if a
// step failed, 0 otherwise (missed goals are reported, not failures).
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/procs.h"  // bench/cluster/procs.h (RunCaptured)
#include "common/bench_util.h"
#include "ndp/ndp_data.h"
#include "core/clock.h"
#include "core/status.h"
#include "transport/json_api.h"

namespace tern::bench::ndp {
namespace {

using nlohmann::json;

struct Args {
  bool quick = false;
  std::string out;
  std::string source_dir = TERN_BENCH_SOURCE_DIR;
  std::string build_dir = TERN_BENCH_BUILD_DIR;
  int objects = 64;
  uint64_t object_bytes = uint64_t{16} << 20;
  int queries = 30;
  uint64_t crunch_bytes = uint64_t{2} << 20;
  int crunch_rounds = 96;
  int crunch_queries = 12;
  double serve_seconds = 6;
};

std::string Row(const std::vector<std::string>& cells) {
  return "| " + fmt::format("{}", fmt::join(cells, " | ")) + " |\n";
}

std::string ObjectKey(int i) { return fmt::format("obj-{:03d}.bin", i); }

// ---------------------------------------------------------------------------------------
// The dataset.

struct Dataset {
  std::string dir;
  std::vector<std::string> files;
  // Expected filter answers per object, per ppm.
  std::map<uint32_t, std::vector<FilterAnswer>> answers;
  double seconds = 0;
};

Result<Dataset> Generate(const Args& a, const std::string& dir,
                         const std::vector<uint32_t>& ppms) {
  Dataset d;
  d.dir = dir;
  int64_t t0 = NowNs();
  const uint64_t per_object = a.object_bytes / kRecordBytes;
  std::vector<char> buf(1 << 20);
  for (uint32_t p : ppms) d.answers[p].resize(static_cast<size_t>(a.objects));
  for (int o = 0; o < a.objects; ++o) {
    std::string path = dir + "/" + ObjectKey(o);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return InternalError("cannot write " + path);
    uint64_t id = static_cast<uint64_t>(o) * per_object;
    uint64_t left = per_object;
    while (left > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size() / kRecordBytes));
      for (size_t i = 0; i < n; ++i, ++id) {
        EncodeRecord(id, buf.data() + i * kRecordBytes);
        uint32_t key = RecordKey(id);
        for (uint32_t p : ppms) {
          if (key < p) {
            FilterAnswer& ans = d.answers[p][static_cast<size_t>(o)];
            ++ans.matches;
            ans.sum += RecordValue(id);
          }
        }
      }
      if (std::fwrite(buf.data(), 1, n * kRecordBytes, f) != n * kRecordBytes) {
        std::fclose(f);
        return InternalError("short write to " + path);
      }
      left -= n;
    }
    if (std::fclose(f) != 0) return InternalError("cannot close " + path);
    d.files.push_back(path);
  }
  d.seconds = static_cast<double>(NowNs() - t0) * 1e-9;
  return d;
}

// ---------------------------------------------------------------------------------------
// The cluster.

// `tern down NAME` when the benchmark is stopped (bench/run.sh's timeout sends SIGTERM):
// the argv is prepared before the handler is installed; fork, execv and waitpid are
// async-signal-safe.
char g_down_tern[4096];
char g_down_name[64];
char* g_down_argv[4] = {g_down_tern, const_cast<char*>("down"), g_down_name, nullptr};

void DownOnSignal(int sig) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execv(g_down_tern, g_down_argv);
    ::_exit(127);
  }
  if (pid > 0) ::waitpid(pid, nullptr, 0);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void TearDownOnSignals(const std::string& tern, const std::string& name) {
  std::snprintf(g_down_tern, sizeof(g_down_tern), "%s", tern.c_str());
  std::snprintf(g_down_name, sizeof(g_down_name), "%s", name.c_str());
  struct sigaction sa {};
  sa.sa_handler = DownOnSignal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

struct Device {
  std::string name;
  std::string admin;  // agent admin HOST:PORT
  double cores = 1;
  double active_w = 0;
  double link_j_per_byte = 0;  // the device's own link (PCIe)
};

class Cluster {
 public:
  Cluster(std::string tern, std::string name, std::string home)
      : tern_(std::move(tern)), name_(std::move(name)), home_(std::move(home)) {}
  ~Cluster() { Down(); }

  Status Up(const std::string& topology) {
    cluster::Captured c = Tern({"up", topology, "--name", name_}, std::chrono::seconds(90));
    up_ = true;
    if (c.exit_code != 0) return UnavailableError("tern up failed:\n" + c.output);
    std::ifstream in(home_ + "/clusters/" + name_ + "/cluster.json");
    json rec = json::parse(in, nullptr, false);
    if (rec.is_discarded()) return InternalError("no cluster record after tern up");
    controller_ = rec["controller"].get<std::string>();
    gateway_ = rec["gateway"].get<std::string>();
    isolation_ = rec["isolation"].get<std::string>();
    TERN_ASSIGN_OR_RETURN(auto ctl, transport::JsonApiClient::Connect(controller_, "controller",
                                                                      std::chrono::seconds(5)));
    TERN_ASSIGN_OR_RETURN(std::string topo, ctl->Call("GET", "/v1/topology"));
    json t = json::parse(topo, nullptr, false);
    if (t.is_discarded()) return InternalError("bad topology JSON from the controller");
    for (const json& h : t["hosts"]) {
      for (const json& dj : h["devices"]) {
        Device d;
        d.name = dj["name"].get<std::string>();
        d.cores = dj["cores"].get<double>();
        d.active_w = dj["power"]["active_w"].get<double>();
        d.link_j_per_byte = dj["link"]["energy_j_per_byte"].get<double>();
        d.admin = rec["agents"][d.name]["address"].get<std::string>();
        devices_[d.name] = d;
      }
    }
    for (const json& l : t["links"]) host_link_j_per_byte_ = l["energy_j_per_byte"].get<double>();
    return Status::Ok();
  }

  void Down() {
    if (!up_) return;
    up_ = false;
    cluster::Captured c = Tern({"down", name_}, std::chrono::seconds(60));
    if (c.exit_code != 0) std::fprintf(stderr, "tern down %s: %s\n", name_.c_str(), c.output.c_str());
  }

  cluster::Captured Tern(std::vector<std::string> args, std::chrono::milliseconds timeout) {
    args.insert(args.begin(), tern_);
    return cluster::RunCaptured(args, timeout);
  }

  Status TernOk(const std::vector<std::string>& args, std::chrono::milliseconds timeout) {
    cluster::Captured c = Tern(args, timeout);
    if (c.exit_code != 0) {
      return UnavailableError(fmt::format("tern {} failed: {}", fmt::join(args, " "), c.output));
    }
    return Status::Ok();
  }

  Result<json> Get(const std::string& address, const std::string& path) {
    TERN_ASSIGN_OR_RETURN(auto c, transport::JsonApiClient::Connect(address, "server",
                                                                    std::chrono::seconds(5)));
    TERN_ASSIGN_OR_RETURN(std::string body, c->Call("GET", path, {}, std::chrono::seconds(20)));
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) return InternalError("bad JSON from " + address + path);
    return j;
  }

  Status Undeploy(const std::string& service) {
    TERN_ASSIGN_OR_RETURN(auto c, transport::JsonApiClient::Connect(controller_, "controller",
                                                                    std::chrono::seconds(5)));
    return c->Call("DELETE", "/v1/services/" + service, {}, std::chrono::seconds(60)).status();
  }

  // Waits until the controller's telemetry says `device` is idle (cpu_util < 5%), so that
  // a placement question is not answered from the load of the previous measurement.
  void WaitIdle(const std::string& device) {
    int64_t deadline = NowNs() + int64_t{15} * 1000000000;
    int quiet = 0;
    while (NowNs() < deadline) {
      Result<json> agents = Get(controller_, "/v1/agents");
      if (agents.ok()) {
        for (const json& a : *agents) {
          if (a.value("device", "") == device && a.contains("cpu_util")) {
            quiet = a["cpu_util"].get<double>() < 0.05 ? quiet + 1 : 0;
          }
        }
      }
      if (quiet >= 2) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }

  // cpuacct.usage of the device's cgroup (ns), or nullopt without cgroups.
  std::optional<uint64_t> CgroupCpuNs(const std::string& device) const {
    if (isolation_ != "netns") return std::nullopt;
    std::ifstream in("/sys/fs/cgroup/cpuacct/tern/" + name_ + "/" + device + "/cpuacct.usage");
    uint64_t v = 0;
    if (!(in >> v)) return std::nullopt;
    return v;
  }

  const std::string& controller() const { return controller_; }
  const std::string& gateway() const { return gateway_; }
  const std::string& isolation() const { return isolation_; }
  const std::map<std::string, Device>& devices() const { return devices_; }
  double host_link_j_per_byte() const { return host_link_j_per_byte_; }

 private:
  std::string tern_, name_, home_;
  bool up_ = false;
  std::string controller_, gateway_, isolation_;
  std::map<std::string, Device> devices_;
  double host_link_j_per_byte_ = 0;
};

// ---------------------------------------------------------------------------------------
// One placement measured.

struct Counters {
  uint64_t remote_bytes = 0, reply_bytes = 0, requests = 0;
  int64_t inst_cpu_ns = 0;
  std::map<std::string, int64_t> inst_cpu_by_device;
  std::map<std::string, std::optional<uint64_t>> cg_cpu;
};

Result<Counters> ReadCounters(Cluster& c, const std::string& service) {
  Counters k;
  for (const auto& [name, d] : c.devices()) {
    TERN_ASSIGN_OR_RETURN(json st, c.Get(d.admin, "/v1/status"));
    for (const json& i : st["instances"]) {
      if (i.value("service", "") != service) continue;
      k.remote_bytes += i["data"]["remote_bytes"].get<uint64_t>();
      k.reply_bytes += i.value("reply_bytes_total", uint64_t{0});
      k.requests += i["requests"].get<uint64_t>();
      int64_t cpu = i.value("cpu_ns_total", int64_t{0});
      k.inst_cpu_ns += cpu;
      k.inst_cpu_by_device[name] += cpu;
    }
    k.cg_cpu[name] = c.CgroupCpuNs(name);
  }
  return k;
}

struct Measured {
  std::string device;
  Stats latency;                // ns
  double bytes_per_query = 0;   // from the agents' counters
  double remote_per_query = 0;  // dataset bytes read across the link
  double reply_per_query = 0;
  double cpu_ns_per_query = 0;  // all devices (cgroups), else the instances' threads
  double inst_cpu_ns_per_query = 0;
  std::map<std::string, double> cpu_ns_by_device;
  double joules_per_query = 0;
  double telemetry_j = -1;  // the controller's energy telemetry (J/request), -1 = none
  bool cgroup_cpu = false;
  int errors = 0;
};

// Sends `n` queries (payload(i)) one after another to service/handler through the
// gateway; `check` validates each reply.
Result<Measured> Measure(Cluster& c, const std::string& device, const std::string& service,
                         const std::string& handler, int n,
                         const std::function<std::string(int)>& payload,
                         const std::function<Status(int, const std::string&)>& check) {
  TERN_ASSIGN_OR_RETURN(auto gw, transport::JsonApiClient::Connect(c.gateway(), "gateway",
                                                                   std::chrono::seconds(5)));
  const std::string target = "/v1/invoke/" + service + "/" + handler;
  // Warm-up: the instance starts, the gateway and the agents learn the locations.
  int64_t deadline = NowNs() + int64_t{30} * 1000000000;
  for (;;) {
    Result<transport::HttpClientResponse> r =
        gw->Raw("POST", target, payload(0), std::chrono::seconds(60));
    if (r.ok() && r->status == 200 && check(0, r->body).ok()) break;
    if (NowNs() > deadline) {
      return UnavailableError(fmt::format(
          "{} never answered correctly: {}", service,
          r.ok() ? fmt::format("HTTP {} {}", r->status, r->body.substr(0, 300))
                 : r.status().ToString()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (!r.ok()) {
      TERN_ASSIGN_OR_RETURN(gw, transport::JsonApiClient::Connect(c.gateway(), "gateway",
                                                                  std::chrono::seconds(5)));
    }
  }
  TERN_ASSIGN_OR_RETURN(Counters before, ReadCounters(c, service));
  Measured m;
  m.device = device;
  std::vector<int64_t> lat;
  for (int i = 0; i < n; ++i) {
    std::string body = payload(i);
    int64_t t0 = NowNs();
    Result<transport::HttpClientResponse> r =
        gw->Raw("POST", target, body, std::chrono::seconds(60));
    int64_t t1 = NowNs();
    if (!r.ok()) return r.status().WithPrefix(service);
    if (r->status != 200) {
      return InternalError(fmt::format("{}: HTTP {}: {}", service, r->status, r->body.substr(0, 300)));
    }
    Status ok = check(i, r->body);
    if (!ok.ok()) return ok.WithPrefix(service);
    lat.push_back(t1 - t0);
  }
  TERN_ASSIGN_OR_RETURN(Counters after, ReadCounters(c, service));
  const double q = n;
  m.latency = Summarize(lat);
  m.remote_per_query = static_cast<double>(after.remote_bytes - before.remote_bytes) / q;
  m.reply_per_query = static_cast<double>(after.reply_bytes - before.reply_bytes) / q;
  m.bytes_per_query = m.remote_per_query + m.reply_per_query;
  m.inst_cpu_ns_per_query = static_cast<double>(after.inst_cpu_ns - before.inst_cpu_ns) / q;
  m.cgroup_cpu = true;
  for (const auto& [name, d] : c.devices()) {
    double ns;
    if (after.cg_cpu[name] && before.cg_cpu[name]) {
      ns = static_cast<double>(*after.cg_cpu[name] - *before.cg_cpu[name]) / q;
    } else {
      m.cgroup_cpu = false;
      ns = static_cast<double>(after.inst_cpu_by_device[name] - before.inst_cpu_by_device[name]) / q;
    }
    m.cpu_ns_by_device[name] = ns;
    m.cpu_ns_per_query += ns;
    m.joules_per_query += d.active_w / d.cores * ns * 1e-9;
  }
  // Every byte moved crosses a host link (to the other host, or to the gateway); bytes
  // that leave the CSD also cross its own link.
  double csd_bytes = m.remote_per_query + (device == "csd0" ? m.reply_per_query : 0);
  auto csd = c.devices().find("csd0");
  m.joules_per_query += m.bytes_per_query * c.host_link_j_per_byte() +
                        csd_bytes * (csd == c.devices().end() ? 0 : csd->second.link_j_per_byte);
  return m;
}

json MeasuredJson(const Measured& m) {
  return json{{"device", m.device},
              {"latency_ns", {{"p50", m.latency.p50}, {"p99", m.latency.p99},
                              {"min", m.latency.min}, {"max", m.latency.max},
                              {"count", m.latency.count}}},
              {"bytes_per_query", m.bytes_per_query},
              {"remote_dataset_bytes_per_query", m.remote_per_query},
              {"reply_bytes_per_query", m.reply_per_query},
              {"cpu_ns_per_query", m.cpu_ns_per_query},
              {"cpu_ns_by_device", m.cpu_ns_by_device},
              {"instance_cpu_ns_per_query", m.inst_cpu_ns_per_query},
              {"cpu_source", m.cgroup_cpu ? "cgroup cpuacct.usage" : "instance thread CPU"},
              {"joules_per_query", m.joules_per_query},
              {"controller_telemetry_j_per_request", m.telemetry_j}};
}

// ---------------------------------------------------------------------------------------
// Cases.

struct Case {
  std::string name;      // "filter 0.1%"
  std::string service;   // base service name
  std::string handler;
  uint32_t ppm = 0;      // filter
  double slo_ms = 0;     // the service's p99 target (balanced)
  int queries = 0;
  uint64_t read_bytes = 0;  // per query
};

struct CaseResult {
  Case c;
  std::map<std::string, Measured> by_device;
  std::map<std::string, std::string> choice;  // policy -> device
  std::map<std::string, std::string> why;     // policy -> explanation text
  json hints;
};

const std::vector<std::string> kPolicies = {"host-only", "data-local", "latency", "energy",
                                            "balanced"};

std::string Percent(uint32_t ppm) {
  return ppm >= 10000 ? fmt::format("{}%", ppm / 10000) : fmt::format("{}%", ppm / 10000.0);
}

Status CheckFilter(const Dataset& ds, uint32_t ppm, int object, const std::string& body) {
  if (body.size() < 16 || (body.size() - 16) % kRecordBytes != 0) {
    return InternalError(fmt::format("filter reply of {} bytes", body.size()));
  }
  uint64_t matches = 0, sum = 0;
  std::memcpy(&matches, body.data(), 8);
  std::memcpy(&sum, body.data() + 8, 8);
  const FilterAnswer& want = ds.answers.at(ppm)[static_cast<size_t>(object)];
  if (matches != want.matches || sum != want.sum || (body.size() - 16) / kRecordBytes != matches) {
    return InternalError(fmt::format("filter {} on {}: got {} matches (sum {}), want {} (sum {})",
                                     ppm, ObjectKey(object), matches, sum, want.matches, want.sum));
  }
  return Status::Ok();
}

// The ndpscan manifest, written next to the results of this run.
std::string Manifest(uint64_t object_bytes) {
  uint64_t mib = std::max<uint64_t>(object_bytes >> 20, 1);
  return fmt::format(
      "name: ndpscan\nversion: 1.0.0\nmodule: ndpscan.wasm\nstateful: false\n"
      "handlers: [filter, crunch]\nlimits:\n  memory_mib: {}\n  cpu_ms: 120000\n"
      "  request_kib: 4\n  response_kib: {}\n",
      mib * 3 + 16, (mib + 1) * 1024);
}

class Bench {
 public:
  Bench(Args a, Cluster* c, const Dataset* ds, std::string manifest, std::string wasm)
      : a_(std::move(a)), c_(c), ds_(ds), manifest_(std::move(manifest)), wasm_(std::move(wasm)) {}

  std::string Payload(const Case& k, int i) const {
    int obj = i % a_.objects;
    if (k.handler == "filter") return fmt::format("ndp|{}|{}", ObjectKey(obj), k.ppm);
    return fmt::format("ndp|{}|{}|{}", ObjectKey(obj), a_.crunch_bytes, a_.crunch_rounds);
  }

  Status Check(const Case& k, int i, const std::string& body) const {
    int obj = i % a_.objects;
    if (k.handler == "filter") return CheckFilter(*ds_, k.ppm, obj, body);
    uint64_t records = 0;
    if (body.size() != 16) return InternalError("crunch reply of " + std::to_string(body.size()));
    std::memcpy(&records, body.data(), 8);
    if (records != a_.crunch_bytes / kRecordBytes) {
      return InternalError(fmt::format("crunch: {} records, want {}", records,
                                       a_.crunch_bytes / kRecordBytes));
    }
    return Status::Ok();
  }

  Result<CaseResult> Run(const Case& k) {
    CaseResult r;
    r.c = k;
    // The oracle's set: the service pinned to each device in turn.
    for (const auto& [dev, d] : c_->devices()) {
      std::string svc = fmt::format("{}-{}", k.service, dev);
      TERN_RETURN_IF_ERROR(c_->TernOk({"deploy", manifest_, "--module", wasm_, "--name", svc,
                                       "--devices", dev},
                                      std::chrono::seconds(90)));
      Progress(fmt::format("{}: {} queries on {}", k.name, k.queries, dev));
      Result<Measured> m = Measure(
          *c_, dev, svc, k.handler, k.queries, [&](int i) { return Payload(k, i); },
          [&](int i, const std::string& b) { return Check(k, i, b); });
      // tern's own energy telemetry for the service (GET /v1/services: the device power
      // model with idle power shared by CPU time; controller/energy.h), once a heartbeat
      // interval with requests has been seen.
      if (m.ok()) {
        int64_t until = NowNs() + int64_t{3} * 1000000000;
        while (NowNs() < until) {
          Result<json> svcs = c_->Get(c_->controller(), "/v1/services");
          if (svcs.ok()) {
            for (const json& sj : *svcs) {
              if (sj.value("name", "") == svc && sj.contains("energy")) {
                m->telemetry_j = sj["energy"]["j_per_request"].get<double>();
              }
            }
          }
          if (m->telemetry_j >= 0) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
      }
      Status un = c_->Undeploy(svc);
      if (!m.ok()) return m.status();
      TERN_RETURN_IF_ERROR(un);
      Progress(fmt::format("  {}: p50 {} p99 {}, {:.0f} B moved, {:.3f} J", dev,
                           FormatNs(m->latency.p50), FormatNs(m->latency.p99), m->bytes_per_query,
                           m->joules_per_query));
      r.by_device[dev] = *m;
    }
    // The hints a deployer would give, from the host run's measurements: CPU time per
    // query of the instance on the host (a reference core) and the bytes it read.
    const Measured& host = r.by_device.at("cpu0");
    double cpu_us = std::max(host.inst_cpu_ns_per_query / 1e3, 1.0);
    double reads = host.remote_per_query;
    r.hints = json{{"cpu_us", cpu_us}, {"reads_bytes", reads}, {"rate", 1}, {"cv2", 0},
                   {"slo_p99_ms", k.slo_ms}};
    c_->WaitIdle("csd0");
    c_->WaitIdle("cpu0");
    for (const std::string& policy : kPolicies) {
      std::string svc = fmt::format("{}-{}", k.service, policy);
      TERN_RETURN_IF_ERROR(c_->TernOk(
          {"deploy", manifest_, "--module", wasm_, "--name", svc, "--policy", policy, "--cpu-us",
           fmt::format("{:.0f}", cpu_us), "--reads", fmt::format("ndp={:.0f}", reads), "--rate",
           "1", "--cv2", "0", "--slo-p99-ms", fmt::format("{}", k.slo_ms)},
          std::chrono::seconds(90)));
      Result<json> ex = c_->Get(c_->controller(), "/v1/services/" + svc + "/explain");
      Status un = c_->Undeploy(svc);
      if (!ex.ok()) return ex.status();
      TERN_RETURN_IF_ERROR(un);
      std::string dev = (*ex)["device"].get<std::string>();
      if (!r.by_device.count(dev)) {
        return InternalError(fmt::format("{} chose '{}', which was not measured", policy, dev));
      }
      r.choice[policy] = dev;
      r.why[policy] = (*ex)["text"].get<std::string>();
      Progress(fmt::format("  policy {} -> {}", policy, dev));
    }
    return r;
  }

 private:
  Args a_;
  Cluster* c_;
  const Dataset* ds_;
  std::string manifest_, wasm_;
};

// ---------------------------------------------------------------------------------------
// Dataset serving under offloaded load.

struct ServeResult {
  double unloaded_mbps = 0;  // MB/s the reader on cpu0 gets from csd0
  double loaded_mbps = 0;    // the same while crunch queries run on csd0
  int offloaded_queries = 0;
  std::string partition;
};

// A reader on cpu0 (filter at 0 ppm: reads everything, returns nothing) pulls objects
// from csd0 for `seconds`; MB/s of dataset bytes.
Result<double> ReadThroughput(Cluster& c, const Args& a, const std::string& service,
                              double seconds) {
  TERN_ASSIGN_OR_RETURN(auto gw, transport::JsonApiClient::Connect(c.gateway(), "gateway",
                                                                   std::chrono::seconds(5)));
  int64_t t0 = NowNs(), end = t0 + static_cast<int64_t>(seconds * 1e9);
  uint64_t bytes = 0;
  int i = 0;
  while (NowNs() < end) {
    Result<transport::HttpClientResponse> r = gw->Raw(
        "POST", "/v1/invoke/" + service + "/filter",
        fmt::format("ndp|{}|0", ObjectKey(i++ % a.objects)), std::chrono::seconds(60));
    if (!r.ok()) return r.status();
    if (r->status != 200) return InternalError("reader: HTTP " + std::to_string(r->status) + " " + r->body);
    bytes += a.object_bytes;
  }
  return static_cast<double>(bytes) / (static_cast<double>(NowNs() - t0) * 1e-9) / 1e6;
}

Result<ServeResult> MeasureServing(Cluster& c, const Args& a, const std::string& manifest,
                                   const std::string& wasm) {
  ServeResult s;
  TERN_RETURN_IF_ERROR(c.TernOk({"deploy", manifest, "--module", wasm, "--name", "reader",
                                 "--devices", "cpu0"},
                                std::chrono::seconds(90)));
  TERN_RETURN_IF_ERROR(c.TernOk({"deploy", manifest, "--module", wasm, "--name", "offload",
                                 "--devices", "csd0"},
                                std::chrono::seconds(90)));
  // Warm both up.
  for (const char* svc : {"reader", "offload"}) {
    TERN_ASSIGN_OR_RETURN(auto gw, transport::JsonApiClient::Connect(c.gateway(), "gateway",
                                                                     std::chrono::seconds(5)));
    int64_t deadline = NowNs() + int64_t{30} * 1000000000;
    for (;;) {
      Result<transport::HttpClientResponse> r =
          gw->Raw("POST", std::string("/v1/invoke/") + svc + "/filter",
                  fmt::format("ndp|{}|0", ObjectKey(0)), std::chrono::seconds(60));
      if (r.ok() && r->status == 200) break;
      if (NowNs() > deadline) return UnavailableError(std::string(svc) + " did not answer");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  Progress("serving: reader on cpu0 alone");
  TERN_ASSIGN_OR_RETURN(s.unloaded_mbps, ReadThroughput(c, a, "reader", a.serve_seconds));
  // Offloaded load: two clients keep crunch queries running on csd0.
  std::atomic<bool> stop{false};
  std::atomic<int> done{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t) {
    load.emplace_back([&, t] {
      auto gw = transport::JsonApiClient::Connect(c.gateway(), "gateway", std::chrono::seconds(5));
      if (!gw.ok()) return;
      int i = t;
      while (!stop.load()) {
        Result<transport::HttpClientResponse> r = (*gw)->Raw(
            "POST", "/v1/invoke/offload/crunch",
            fmt::format("ndp|{}|{}|{}", ObjectKey(i++ % a.objects), a.crunch_bytes, a.crunch_rounds),
            std::chrono::seconds(120));
        if (!r.ok()) return;
        if (r->status == 200) done.fetch_add(1);
      }
    });
  }
  Progress("serving: reader on cpu0 with crunch queries on csd0");
  Result<double> loaded = ReadThroughput(c, a, "reader", a.serve_seconds);
  stop.store(true);
  for (std::thread& t : load) t.join();
  if (!loaded.ok()) return loaded.status();
  s.loaded_mbps = *loaded;
  s.offloaded_queries = done.load();
  Result<json> st = c.Get(c.devices().at("csd0").admin, "/v1/info");
  if (st.ok() && st->contains("partition")) s.partition = (*st)["partition"].dump();
  (void)c.Undeploy("reader");
  (void)c.Undeploy("offload");
  return s;
}

// ---------------------------------------------------------------------------------------
// The report.

struct PolicyRow {
  std::string policy, device;
  const Measured* m;
};

std::string Svg(const std::vector<CaseResult>& results) {
  // Median latency relative to host-only, log scale, one group per case.
  const std::vector<std::string> series = {"host-only", "data-local", "latency", "energy",
                                           "balanced", "oracle"};
  const char* colors[] = {"#888888", "#d98c3f", "#3f7fd9", "#4caf50", "#9c27b0", "#222222"};
  const int w = 760, h = 360, left = 60, top = 30, bottom = 60;
  const int plot_h = h - top - bottom;
  const double lo = std::log10(0.01), hi = std::log10(10.0);
  auto y = [&](double v) {
    double l = std::clamp(std::log10(std::max(v, 1e-6)), lo, hi);
    return top + plot_h * (hi - l) / (hi - lo);
  };
  std::string s = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' "
      "font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
      "<text x='{}' y='16' font-size='13'>bench/ndp: median query latency relative to "
      "host-only (log scale; lower is better)</text>\n",
      w, h, left);
  for (double v : {0.01, 0.1, 1.0, 10.0}) {
    s += fmt::format("<line x1='{}' x2='{}' y1='{:.1f}' y2='{:.1f}' stroke='#ddd'/>"
                     "<text x='{}' y='{:.1f}' text-anchor='end'>{}×</text>\n",
                     left, w - 10, y(v), y(v), left - 4, y(v) + 4, v);
  }
  const double group = static_cast<double>(w - left - 20) / std::max<size_t>(results.size(), 1);
  const double bar = group / (series.size() + 1);
  for (size_t g = 0; g < results.size(); ++g) {
    const CaseResult& r = results[g];
    double base = r.by_device.at(r.choice.at("host-only")).latency.p50;
    double best = 1e300;
    for (const auto& [d, m] : r.by_device) best = std::min(best, m.latency.p50);
    for (size_t k = 0; k < series.size(); ++k) {
      double v = series[k] == "oracle" ? best : r.by_device.at(r.choice.at(series[k])).latency.p50;
      double rel = v / base;
      double x = left + g * group + (k + 0.5) * bar;
      double y0 = y(1.0), y1 = y(rel);
      s += fmt::format("<rect x='{:.1f}' y='{:.1f}' width='{:.1f}' height='{:.1f}' fill='{}'/>\n",
                       x, std::min(y0, y1), bar * 0.9, std::max(std::abs(y1 - y0), 1.0), colors[k]);
    }
    s += fmt::format("<text x='{:.1f}' y='{}' text-anchor='middle'>{}</text>\n",
                     left + g * group + group / 2, h - bottom + 16, r.c.name);
  }
  for (size_t k = 0; k < series.size(); ++k) {
    double x = left + k * 110;
    s += fmt::format("<rect x='{:.0f}' y='{}' width='10' height='10' fill='{}'/>"
                     "<text x='{:.0f}' y='{}'>{}</text>\n",
                     x, h - 22, colors[k], x + 14, h - 13, series[k]);
  }
  s += "</svg>\n";
  return s;
}

int Main(const Args& a) {
  SetProgressName("ndp");
  const std::string tern = a.build_dir + "/src/bin/tern";
  const std::string wasm = a.build_dir + "/wasm/ndpscan.wasm";
  const std::string topology = a.source_dir + "/bench/ndp/ndp.yaml";
  const std::string out = a.out.empty() ? a.source_dir + "/bench/results" : a.out;
  for (const std::string& f : {tern, wasm, topology}) {
    if (::access(f.c_str(), R_OK) != 0) {
      std::fprintf(stderr, "ndp_bench: missing %s (build: ninja ndp_bench)\n", f.c_str());
      return 2;
    }
  }
  char tmpl[] = "/tmp/tern-ndp.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string work = tmpl;
  const std::string home = work + "/home";
  ::mkdir(home.c_str(), 0755);
  ::mkdir((work + "/data").c_str(), 0755);
  ::setenv("TERN_HOME", home.c_str(), 1);
  const std::string manifest = work + "/ndpscan.yaml";
  {
    std::ofstream m(manifest);
    m << Manifest(std::max(a.object_bytes, a.crunch_bytes));
  }
  auto cleanup = [&] { (void)cluster::RunCaptured({"/bin/rm", "-rf", work}, std::chrono::seconds(60)); };

  const std::vector<uint32_t> ppms = {1000, 100000, 1000000};
  Progress(fmt::format("generating {} objects of {} MiB", a.objects, a.object_bytes >> 20));
  Result<Dataset> ds = Generate(a, work + "/data", ppms);
  if (!ds.ok()) {
    std::fprintf(stderr, "ndp_bench: %s\n", ds.status().ToString().c_str());
    cleanup();
    return 1;
  }
  int rc = 0;
  json doc;
  doc["machine"] = MachineInfo(a.source_dir);
  doc["quick"] = a.quick;
  std::vector<CaseResult> results;
  std::optional<ServeResult> serve, serve_nopart;
  double put_s = 0;
  std::string isolation;
  std::map<std::string, Device> devices;
  {
    const std::string name = fmt::format("ndp{}", ::getpid() % 10000);
    TearDownOnSignals(tern, name);
    Cluster c(tern, name, home);
    Status s = [&]() -> Status {
      Progress("tern up " + topology);
      TERN_RETURN_IF_ERROR(c.Up(topology));
      isolation = c.isolation();
      devices = c.devices();
      std::vector<std::string> put = {"data", "put", "ndp"};
      put.insert(put.end(), ds->files.begin(), ds->files.end());
      Progress(fmt::format("tern data put ndp ({} MiB)", (a.object_bytes * a.objects) >> 20));
      int64_t t0 = NowNs();
      TERN_RETURN_IF_ERROR(c.TernOk(put, std::chrono::seconds(600)));
      put_s = static_cast<double>(NowNs() - t0) * 1e-9;
      Bench b(a, &c, &*ds, manifest, wasm);
      const double full = a.quick ? 0.25 : 1;
      std::vector<Case> cases;
      for (uint32_t p : ppms) {
        cases.push_back({"filter " + Percent(p), fmt::format("f{}", p), "filter", p,
                         std::round(2000 * full), a.queries, a.object_bytes});
      }
      // crunch's SLO is one a host meets and a 0.19-core CSD does not (interactive use).
      cases.push_back({"crunch", "crunch", "crunch", 0, a.quick ? 60.0 : 150.0, a.crunch_queries,
                       a.crunch_bytes});
      for (const Case& k : cases) {
        TERN_ASSIGN_OR_RETURN(CaseResult r, b.Run(k));
        results.push_back(std::move(r));
      }
      TERN_ASSIGN_OR_RETURN(ServeResult sr, MeasureServing(c, a, manifest, wasm));
      serve = sr;
      return Status::Ok();
    }();
    if (!s.ok()) {
      std::fprintf(stderr, "ndp_bench: %s\n", s.ToString().c_str());
      rc = 1;
    }
  }
  // The same serving measurement on a CSD that reserves nothing (no guests' cgroup): what
  // the partition protects against. Full runs only.
  if (rc == 0 && !a.quick) {
    std::ifstream in(topology);
    std::stringstream text;
    text << in.rdbuf();
    std::string t = text.str();
    size_t at = t.find("reserved: 0.5");
    const std::string variant = work + "/ndp-nopart.yaml";
    if (at != std::string::npos) {
      t.replace(at, std::string("reserved: 0.5").size(), "reserved: 0  ");
      std::ofstream(variant) << t;
      const std::string name = fmt::format("ndq{}", ::getpid() % 10000);
      TearDownOnSignals(tern, name);
      Cluster c(tern, name, home);
      Args small = a;
      small.objects = std::min(a.objects, 8);
      Status s = [&]() -> Status {
        Progress("tern up (csd0 reserving nothing) for the serving comparison");
        TERN_RETURN_IF_ERROR(c.Up(variant));
        std::vector<std::string> put = {"data", "put", "ndp"};
        put.insert(put.end(), ds->files.begin(), ds->files.begin() + small.objects);
        TERN_RETURN_IF_ERROR(c.TernOk(put, std::chrono::seconds(600)));
        TERN_ASSIGN_OR_RETURN(ServeResult sr, MeasureServing(c, small, manifest, wasm));
        serve_nopart = sr;
        return Status::Ok();
      }();
      if (!s.ok()) std::fprintf(stderr, "ndp_bench: without partitioning: %s\n", s.ToString().c_str());
    }
  }
  cleanup();

  // JSON and Markdown.
  std::string md = "# Near-data offload end to end (bench/ndp)\n\n";
  md += fmt::format(
      "`ndp_bench{}` on the emulated datacenter of `bench/ndp/ndp.yaml` (`tern up`, isolation "
      "**{}**): cpu0 (1 core) on h1; csd0 (0.25 core, half of it reserved for serving its data) on h2 "
      "with the dataset; h1–h2 1 Gbit/s, 50 µs. Dataset `ndp`: {} objects × {} MiB of 64-byte "
      "records ({} MiB, generated in {:.1f} s, put with `tern data put` in {:.1f} s). Each "
      "query scans one object (filter) or the first {} MiB of one (crunch, {} rounds per "
      "record); queries run one at a time through the gateway. Git {}.\n\n",
      a.quick ? " --quick" : "", isolation, a.objects, a.object_bytes >> 20,
      (a.object_bytes * a.objects) >> 20, ds->seconds, put_s, a.crunch_bytes >> 20,
      a.crunch_rounds, GitRev(a.source_dir));
  md +=
      "Latency: the client's, through the gateway. Bytes moved: the agents' counters (dataset "
      "bytes read across the link + reply bytes). Joules: Σ devices active W / cores × CPU "
      "time (the devices' cgroups, `cpuacct.usage`) + link J/B × bytes moved. tern's J/req: "
      "the controller's own energy telemetry for the service (`GET /v1/services`, last "
      "heartbeat interval: the device's idle + (active − idle) × utilization shared by CPU "
      "time, + link J/B × bytes; it charges idle power, the column before does not). RAPL: "
      "/sys/class/powercap is " +
      std::string(::access("/sys/class/powercap", R_OK) == 0 ? "present (not used yet)"
                                                              : "absent on this VM") +
      ", so energy is the topology's power model only. Policies: the controller's choice "
      "(`GET /v1/services/NAME/explain` after `tern deploy --policy P` with hints measured in "
      "the host run); each gets the numbers measured on the device it chose. Oracle: every "
      "device measured, the best taken (lowest median latency; lowest J for energy; "
      "lowest J meeting the SLO for balanced).\n\n";
  json cases_j = json::array();
  bool goals_ok = true;
  std::string summary;
  for (const CaseResult& r : results) {
    const Measured& host = r.by_device.at(r.choice.at("host-only"));
    const Measured* best_lat = nullptr;
    const Measured* best_j = nullptr;
    const Measured* best_bal = nullptr;
    for (const auto& [d, m] : r.by_device) {
      if (!best_lat || m.latency.p50 < best_lat->latency.p50) best_lat = &m;
      if (!best_j || m.joules_per_query < best_j->joules_per_query) best_j = &m;
      bool meets = m.latency.p99 <= r.c.slo_ms * 1e6;
      bool best_meets = best_bal && best_bal->latency.p99 <= r.c.slo_ms * 1e6;
      if (!best_bal || (meets && !best_meets) ||
          (meets == best_meets && (meets ? m.joules_per_query < best_bal->joules_per_query
                                         : m.latency.p99 < best_bal->latency.p99))) {
        best_bal = &m;
      }
    }
    md += fmt::format("## {} (SLO p99 {} ms, {} queries per placement)\n\n", r.c.name, r.c.slo_ms,
                      r.c.queries);
    md += Row({"placement", "device", "p50", "p99", "bytes moved / query", "CPU / query",
               "J / query", "tern's J/req", "p50 vs host-only", "bytes vs host-only", "vs oracle"});
    md += Row({"---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---"});
    json cj{{"case", r.c.name}, {"slo_p99_ms", r.c.slo_ms}, {"hints", r.hints}};
    for (const auto& [d, m] : r.by_device) cj["measured"][d] = MeasuredJson(m);
    for (const std::string& p : kPolicies) {
      const Measured& m = r.by_device.at(r.choice.at(p));
      double vs_oracle;
      std::string obj;
      if (p == "energy") {
        vs_oracle = m.joules_per_query / best_j->joules_per_query;
        obj = "J";
      } else if (p == "balanced") {
        vs_oracle = best_bal->latency.p99 <= r.c.slo_ms * 1e6
                        ? m.joules_per_query / best_bal->joules_per_query
                        : m.latency.p99 / best_bal->latency.p99;
        obj = best_bal->latency.p99 <= r.c.slo_ms * 1e6 ? "J within SLO" : "p99";
      } else {
        vs_oracle = m.latency.p50 / best_lat->latency.p50;
        obj = "p50";
      }
      bool tern_policy = p == "latency" || p == "energy" || p == "balanced";
      if (tern_policy && vs_oracle > 1.10) goals_ok = false;
      double lat_ratio = host.latency.p50 / m.latency.p50;
      double byte_ratio = host.bytes_per_query / std::max(m.bytes_per_query, 1.0);
      md += Row({p, m.device, FormatNs(m.latency.p50), FormatNs(m.latency.p99),
                 FormatCount(m.bytes_per_query), FormatNs(m.cpu_ns_per_query),
                 fmt::format("{:.4f}", m.joules_per_query),
                 m.telemetry_j >= 0 ? fmt::format("{:.4f}", m.telemetry_j) : "-",
                 fmt::format("{:.2f}× faster", lat_ratio),
                 fmt::format("{:.1f}× fewer", byte_ratio),
                 fmt::format("{:.2f} ({})", vs_oracle, obj)});
      cj["policies"][p] = json{{"device", m.device}, {"p50_vs_host_only", lat_ratio},
                               {"bytes_vs_host_only", byte_ratio}, {"vs_oracle", vs_oracle},
                               {"oracle_objective", obj}};
    }
    md += Row({"oracle (latency)", best_lat->device, FormatNs(best_lat->latency.p50),
               FormatNs(best_lat->latency.p99), FormatCount(best_lat->bytes_per_query),
               FormatNs(best_lat->cpu_ns_per_query), fmt::format("{:.4f}", best_lat->joules_per_query),
               best_lat->telemetry_j >= 0 ? fmt::format("{:.4f}", best_lat->telemetry_j) : "-",
               fmt::format("{:.2f}× faster", host.latency.p50 / best_lat->latency.p50),
               fmt::format("{:.1f}× fewer", host.bytes_per_query / std::max(best_lat->bytes_per_query, 1.0)),
               "1"});
    md += fmt::format(
        "\nHints given to the controller (from the host run): {:.0f} µs CPU, {} dataset bytes per "
        "query, 1 query/s, cv² 0.\n\n",
        r.hints["cpu_us"].get<double>(), FormatCount(r.hints["reads_bytes"].get<double>()));
    cj["oracle"] = json{{"latency", best_lat->device}, {"energy", best_j->device},
                        {"balanced", best_bal->device}};
    cj["explain_latency"] = r.why.at("latency");
    if (r.c.handler == "filter" && r.c.ppm == 1000) {
      const Measured& lat = r.by_device.at(r.choice.at("latency"));
      double lr = host.latency.p50 / lat.latency.p50;
      double br = host.bytes_per_query / std::max(lat.bytes_per_query, 1.0);
      summary += fmt::format(
          "- filter 0.1%: the latency policy ({}) is **{:.1f}× faster** than host-only at the "
          "median (goal ≥5×: {}) and moves **{:.0f}× fewer bytes** (goal ≥50×: {}).\n",
          lat.device, lr, lr >= 5 ? "met" : "MISSED", br, br >= 50 ? "met" : "MISSED");
      if (lr < 5 || br < 50) goals_ok = false;
    }
    if (r.c.handler == "crunch") {
      summary += fmt::format(
          "- crunch (compute-heavy): latency → {}, balanced → {}, energy → {} (the CSD is "
          "{:.1f}× slower than the host at the median).\n",
          r.choice.at("latency"), r.choice.at("balanced"), r.choice.at("energy"),
          r.by_device.at("csd0").latency.p50 / r.by_device.at("cpu0").latency.p50);
    }
    cases_j.push_back(cj);
  }
  doc["cases"] = cases_j;
  if (serve) {
    std::string nopart_line;
    double ratio = serve->loaded_mbps / serve->unloaded_mbps;
    doc["serving"] = json{{"unloaded_mb_per_s", serve->unloaded_mbps},
                          {"loaded_mb_per_s", serve->loaded_mbps},
                          {"ratio", ratio},
                          {"offloaded_queries", serve->offloaded_queries},
                          {"partition", serve->partition}};
    md += fmt::format(
        "## The CSD's dataset serving under offloaded load\n\nA reader on cpu0 pulls whole "
        "objects from csd0 for {} s (filter at 0%), alone and while two clients keep crunch "
        "queries running on csd0 ({} completed). csd0's partition: {}.\n\n",
        a.serve_seconds, serve->offloaded_queries,
        serve->partition.empty() ? "none reported" : "`" + serve->partition + "`");
    md += Row({"reader on cpu0", "MB/s from csd0"});
    md += Row({"---", "---"});
    md += Row({"alone", fmt::format("{:.1f}", serve->unloaded_mbps)});
    md += Row({"with offloaded queries", fmt::format("{:.1f} ({:.0f}% of alone; goal ≥ 90%)",
                                                     serve->loaded_mbps, ratio * 100)});
    if (serve_nopart) {
      double r2 = serve_nopart->loaded_mbps / serve_nopart->unloaded_mbps;
      doc["serving_without_partition"] =
          json{{"unloaded_mb_per_s", serve_nopart->unloaded_mbps},
               {"loaded_mb_per_s", serve_nopart->loaded_mbps},
               {"ratio", r2},
               {"offloaded_queries", serve_nopart->offloaded_queries},
               {"partition", serve_nopart->partition}};
      md += Row({"alone, csd0 reserving nothing (a second `tern up`)",
                 fmt::format("{:.1f}", serve_nopart->unloaded_mbps)});
      md += Row({"with offloaded queries, csd0 reserving nothing",
                 fmt::format("{:.1f} ({:.0f}% of alone; {} offloaded queries completed)",
                             serve_nopart->loaded_mbps, r2 * 100, serve_nopart->offloaded_queries)});
      nopart_line = fmt::format("- without partitioning (csd0 reserving nothing): {:.0f}% of "
                                "unloaded ({:.1f} of {:.1f} MB/s).\n",
                                r2 * 100, serve_nopart->loaded_mbps, serve_nopart->unloaded_mbps);
    }
    md += "\n";
    summary += fmt::format("- dataset serving with offloaded queries running, partitioned: {:.0f}% "
                           "of unloaded ({:.1f} of {:.1f} MB/s; goal ≥ 90%: {}).\n",
                           ratio * 100, serve->loaded_mbps, serve->unloaded_mbps,
                           ratio >= 0.9 ? "met" : "MISSED");
    summary += nopart_line;
  }
  doc["goals_met"] = goals_ok;
  md = md.substr(0, md.find("\n\n") + 2) + "## Summary\n\n" + summary +
       fmt::format("- every tern policy within 10% of the oracle in its objective: {}.\n\n",
                   goals_ok ? "yes" : "NO (see the tables)") +
       "![latency relative to host-only](ndp.svg)\n\n" + md.substr(md.find("\n\n") + 2);
  if (!results.empty()) {
    md += "## Why: the controller's explanations for the latency policy\n\n";
    for (const CaseResult& r : results) {
      md += "### " + r.c.name + "\n\n```\n" + r.why.at("latency") + "```\n\n";
    }
  }
  ::mkdir(out.c_str(), 0755);
  std::ofstream(out + "/ndp.json") << doc.dump(2) << "\n";
  std::ofstream(out + "/ndp.md") << md;
  if (!results.empty()) std::ofstream(out + "/ndp.svg") << Svg(results);
  std::fprintf(stderr, "%s", summary.c_str());
  Progress("wrote " + out + "/ndp.{json,md,svg}");
  return rc;
}

}  // namespace
}  // namespace tern::bench::ndp

int main(int argc, char** argv) {
  tern::bench::ndp::Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--quick") {
      a.quick = true;
      a.objects = 4;
      a.object_bytes = uint64_t{2} << 20;
      a.queries = 5;
      a.crunch_bytes = uint64_t{1} << 20;
      a.crunch_queries = 3;
      a.serve_seconds = 2;
    } else if (s.rfind("--out=", 0) == 0) {
      a.out = s.substr(6);
    } else if (s.rfind("--source-dir=", 0) == 0) {
      a.source_dir = s.substr(13);
    } else if (s.rfind("--build-dir=", 0) == 0) {
      a.build_dir = s.substr(12);
    } else {
      std::fprintf(stderr, "usage: ndp_bench [--quick] [--out=DIR] [--source-dir=DIR] [--build-dir=DIR]\n");
      return 2;
    }
  }
  return tern::bench::ndp::Main(a);
}
