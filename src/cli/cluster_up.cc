// `tern up TOPOLOGY` and `tern down`: an emulated datacenter on this machine.
//
// up:   network (as root: a namespace per host on a bridge, tbf rates; else loopback),
//       the cluster store (embedded, or a real etcd), the controller, one agent per device
//       (as root: in its host's namespace and in a cgroup with the device's CPU quota and
//       memory), the gateway; then waits until every agent has registered. Everything it
//       makes is in the emulation ledger (emu/ledger.h) before it exists, so `tern down`
//       removes it all even after a crash of `tern up`; a failed `tern up` tears itself
//       down.
// down: emu::Teardown (ledger + sweep by name), then forgets the cluster.
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/cluster.h"
#include "cli/cluster_commands.h"
#include "cli/flags.h"
#include "cli/main_util.h"
#include "cluster/topology.h"
#include "core/clock.h"
#include "core/file.h"
#include "emu/cgroup.h"
#include "emu/ledger.h"
#include "emu/naming.h"
#include "emu/netns.h"
#include "emu/spawn.h"
#include "emu/teardown.h"
#include "transport/json_api.h"
#include "transport/socket.h"

namespace tern::cli {

using nlohmann::json;

namespace {

std::string StateDir() { return TernHome() + "/clusters"; }

std::string SelfExe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "tern";
}

std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[4096];
  return ::getcwd(cwd, sizeof(cwd)) ? std::string(cwd) + "/" + path : path;
}

// The last lines of a log, for error messages.
std::string Tail(const std::string& path, size_t n = 5) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string l;
  while (std::getline(in, l)) lines.push_back(l);
  std::string out;
  for (size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size(); ++i) {
    out += "\n    " + lines[i];
  }
  return out;
}

// Waits until the log at `path` has a line starting with `prefix` (what our binaries print
// when they are ready) and returns it; fails early if the process died.
Result<std::string> WaitForLine(const std::string& path, const std::string& prefix,
                                const emu::ProcessRecord& proc, const std::string& who,
                                std::chrono::milliseconds timeout) {
  int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  for (;;) {
    std::ifstream in(path);
    std::string l;
    while (std::getline(in, l)) {
      size_t at = l.find(prefix);
      if (at != std::string::npos) return l.substr(at);
    }
    if (!emu::IsAlive(proc)) {
      return UnavailableError(fmt::format("{} exited during start-up; its log {} ends:{}", who,
                                          path, Tail(path)));
    }
    if (MonoNanos() > deadline) {
      return DeadlineExceededError(
          fmt::format("{} did not become ready in {} s; its log {} ends:{}", who,
                      timeout.count() / 1000, path, Tail(path)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}


struct UpOptions {
  std::string topology_path;
  std::string name;
  std::string isolation;  // auto | netns | loopback
  std::string store;      // embedded | etcd
  bool rebalance = false;  // the controller's --rebalance
  std::chrono::milliseconds timeout{60000};
};

class Up {
 public:
  explicit Up(UpOptions o) : o_(std::move(o)) {}

  Status Run(ClusterRecord* rec) {
    TERN_ASSIGN_OR_RETURN(topo_, cluster::LoadTopologyFile(o_.topology_path));
    if (o_.name.empty()) o_.name = topo_.name;
    TERN_RETURN_IF_ERROR(emu::ValidateClusterName(o_.name));
    dir_ = ClusterDir(o_.name);
    // A fresh start: logs, store and sockets of an earlier run go (datasets in data/ stay,
    // like the disks of a rack that was powered off).
    for (const char* old : {"/logs", "/store", "/sock", "/etcd.data"}) {
      TERN_RETURN_IF_ERROR(RemoveTree(dir_ + old));
    }
    TERN_RETURN_IF_ERROR(MakeDirs(dir_ + "/logs"));
    TERN_RETURN_IF_ERROR(MakeDirs(dir_ + "/sock"));
    TERN_ASSIGN_OR_RETURN(ledger_, emu::Ledger::Open(StateDir(), o_.name));
    bin_ = SelfExe();
    rec->name = o_.name;
    rec->topology = Absolute(o_.topology_path);
    rec->dir = dir_;

    TERN_RETURN_IF_ERROR(Network(rec));
    TERN_RETURN_IF_ERROR(Store());
    TERN_RETURN_IF_ERROR(Controller(rec));
    TERN_RETURN_IF_ERROR(Agents(rec));
    TERN_RETURN_IF_ERROR(Gateway(rec));
    return WaitRegistered(*rec);
  }

 private:
  void Step(const std::string& what) {
    std::printf("[%d/%d] %s\n", ++step_, o_.store == "etcd" ? 6 : 5, what.c_str());
    std::fflush(stdout);
  }

  Status Network(ClusterRecord* rec) {
    bool can = emu::CheckNetworkSupport().ok() && emu::CheckCgroupV1().ok();
    if (o_.isolation == "netns" && !can) {
      Status why = emu::CheckNetworkSupport();
      if (why.ok()) why = emu::CheckCgroupV1();
      return Status(why.code(), fmt::format("--isolation netns: {}", why.message()));
    }
    netns_ = o_.isolation == "netns" || (o_.isolation == "auto" && can);
    rec->isolation = netns_ ? "netns" : "loopback";
    if (!netns_) {
      Step(fmt::format("network: loopback for all {} hosts{}", topo_.hosts.size(),
                       o_.isolation == "loopback"
                           ? ""
                           : " (not root, or no ip/tc/cgroup v1: no namespaces, no kernel "
                             "rate limits, no CPU quotas; the data plane still delays calls "
                             "by each link's latency and bandwidth)"));
      for (const cluster::Host& h : topo_.hosts) address_[h.name] = "127.0.0.1";
      ctl_host_ = "127.0.0.1";
      return Status::Ok();
    }
    emu::NetworkPlan plan;
    plan.cluster = o_.name;
    for (const cluster::Host& h : topo_.hosts) {
      // The kernel limit of a host's interface: its fastest link (each pair's own rate
      // and latency are applied per call by the data plane's link shaper).
      double rate = 0;
      for (const cluster::HostLink& l : topo_.links) {
        if (l.a == h.name || l.b == h.name) rate = std::max(rate, l.bandwidth_bps);
      }
      plan.hosts.push_back(emu::HostSpec{h.name, static_cast<uint64_t>(rate)});
    }
    TERN_ASSIGN_OR_RETURN(emu::HostNetwork net, emu::CreateHostNetwork(plan, ledger_.get()));
    std::string hosts;
    for (const emu::HostEndpoint& e : net.hosts) {
      address_[e.name] = e.address;
      netns_of_[e.name] = e.netns;
      hosts += fmt::format("{}{} {}", hosts.empty() ? "" : ", ", e.name, e.address);
    }
    ctl_host_ = net.bridge_address;
    Step(fmt::format("network: bridge {} ({}), a namespace per host: {}", net.bridge,
                     net.bridge_address, hosts));
    return Status::Ok();
  }

  Result<emu::ProcessRecord> Spawn(const std::string& who, std::vector<std::string> argv,
                                   const std::string& netns = "",
                                   std::vector<std::string> cgroups = {}) {
    emu::SpawnSpec s;
    s.argv = std::move(argv);
    s.netns = netns;
    s.cgroup_dirs = std::move(cgroups);
    s.stdout_path = dir_ + "/logs/" + who + ".log";
    s.stderr_path = s.stdout_path;
    s.working_dir = dir_;
    return emu::Spawn(s, ledger_.get());
  }

  Status Store() {
    if (o_.store == "embedded") return Status::Ok();
    TERN_ASSIGN_OR_RETURN(uint16_t client, transport::PickFreeLoopbackPort());
    TERN_ASSIGN_OR_RETURN(uint16_t peer, transport::PickFreeLoopbackPort());
    std::string c = fmt::format("http://127.0.0.1:{}", client);
    std::string p = fmt::format("http://127.0.0.1:{}", peer);
    TERN_ASSIGN_OR_RETURN(
        emu::ProcessRecord etcd,
        Spawn("etcd", {"/usr/bin/etcd", "--name", "tern-" + o_.name, "--data-dir",
                       dir_ + "/etcd.data", "--listen-client-urls", c, "--advertise-client-urls",
                       c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                       "--initial-cluster", "tern-" + o_.name + "=" + p, "--log-level", "warn",
                       "--max-request-bytes", "8388608"}));
    etcd_ = fmt::format("127.0.0.1:{}", client);
    int64_t deadline = MonoNanos() + int64_t{20} * 1000000000;
    for (;;) {
      auto h = transport::JsonApiClient::Connect(etcd_, "etcd", std::chrono::milliseconds(500));
      if (h.ok() && (*h)->Call("GET", "/health", {}, std::chrono::seconds(2)).ok()) break;
      if (!emu::IsAlive(etcd) || MonoNanos() > deadline) {
        return UnavailableError(fmt::format("etcd did not start; its log ends:{}",
                                            Tail(dir_ + "/logs/etcd.log")));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Step(fmt::format("store: etcd on {} (pid {})", etcd_, etcd.pid));
    return Status::Ok();
  }

  Status Controller(ClusterRecord* rec) {
    std::vector<std::string> argv = {bin_, "controller", "--listen", ctl_host_ + ":0",
                                     "--topology", rec->topology, "--id", "controller"};
    if (o_.store == "embedded") {
      argv.insert(argv.end(), {"--store", "embedded", "--data-dir", dir_ + "/store"});
    } else {
      argv.insert(argv.end(), {"--store", "etcd:" + etcd_});
    }
    if (o_.rebalance) argv.push_back("--rebalance");
    TERN_ASSIGN_OR_RETURN(emu::ProcessRecord p, Spawn("controller", argv));
    TERN_ASSIGN_OR_RETURN(std::string line,
                          WaitForLine(dir_ + "/logs/controller.log", "controller listening on http://",
                                      p, "the controller", std::chrono::seconds(20)));
    rec->controller = line.substr(std::string("controller listening on http://").size());
    Step(fmt::format("controller: http://{} (pid {}, store {})", rec->controller, p.pid,
                     o_.store == "embedded" ? "embedded in " + dir_ + "/store" : "etcd " + etcd_));
    return Status::Ok();
  }

  Status Agents(ClusterRecord* rec) {
    struct Started {
      const cluster::Device* d;
      emu::ProcessRecord p;
    };
    std::vector<Started> started;
    for (const cluster::Device* d : topo_.Devices()) {
      std::vector<std::string> cgroups;
      if (netns_) {
        emu::CgroupSpec cs{o_.name, d->name, d->cores, d->memory_bytes};
        TERN_ASSIGN_OR_RETURN(std::unique_ptr<emu::DeviceCgroup> cg,
                              emu::DeviceCgroup::Create(cs, ledger_.get()));
        cgroups = cg->dirs();
      }
      int workers = std::clamp(static_cast<int>(std::ceil(d->cores)), 1, 4);
      std::vector<std::string> argv = {
          bin_,          "agent",
          "--device",    d->name,
          "--host-id",   d->host,
          "--host",      address_.at(d->host),
          "--port",      "0",
          "--admin-port", "0",
          "--controller", rec->controller,
          "--kind",      std::string(cluster::DeviceKindName(d->kind)),
          "--cores",     fmt::format("{}", d->cores),
          "--speed",     fmt::format("{}", d->speed),
          "--reserved",  fmt::format("{}", d->reserved),
          "--memory-mib", std::to_string(std::max<uint64_t>(d->memory_bytes >> 20, 1)),
          "--workers",   std::to_string(workers),
          "--shm-socket", dir_ + "/sock/" + d->name + ".sock",
          "--datasets-dir", dir_ + "/data/" + d->name};
      std::string ns = netns_ ? netns_of_.at(d->host) : "";
      TERN_ASSIGN_OR_RETURN(emu::ProcessRecord p, Spawn(d->name, argv, ns, cgroups));
      started.push_back({d, p});
    }
    for (const Started& s : started) {
      std::string log = dir_ + "/logs/" + s.d->name + ".log";
      TERN_ASSIGN_OR_RETURN(std::string line,
                            WaitForLine(log, "listening frames=", s.p, "agent " + s.d->name,
                                        std::chrono::seconds(30)));
      unsigned fp = 0, ap = 0;
      std::sscanf(line.c_str(), "listening frames=%u admin=%u", &fp, &ap);
      std::string addr = fmt::format("{}:{}", address_.at(s.d->host), ap);
      rec->agents[s.d->name] = ClusterRecord::Agent{s.d->host, addr, log, s.p.pid};
    }
    Step(fmt::format("agents: {} devices started{}", started.size(),
                     netns_ ? " (each in its host's namespace, CPU quota and memory limit from "
                              "the topology)"
                            : ""));
    return Status::Ok();
  }

  Status Gateway(ClusterRecord* rec) {
    TERN_ASSIGN_OR_RETURN(emu::ProcessRecord p,
                          Spawn("gateway", {bin_, "gateway", "--listen", "127.0.0.1:0",
                                            "--controller", rec->controller}));
    TERN_ASSIGN_OR_RETURN(std::string line,
                          WaitForLine(dir_ + "/logs/gateway.log", "gateway listening on http://",
                                      p, "the gateway", std::chrono::seconds(20)));
    rec->gateway = line.substr(std::string("gateway listening on http://").size());
    Step(fmt::format("gateway: http://{} (pid {})", rec->gateway, p.pid));
    return Status::Ok();
  }

  Status WaitRegistered(const ClusterRecord& rec) {
    int64_t deadline = MonoNanos() + std::chrono::nanoseconds(o_.timeout).count();
    size_t want = topo_.device_count(), have = 0;
    for (;;) {
      auto c = transport::JsonApiClient::Connect(rec.controller, "controller",
                                                 std::chrono::seconds(2));
      if (c.ok()) {
        Result<std::string> a = (*c)->Call("GET", "/v1/agents", {}, std::chrono::seconds(5));
        if (a.ok()) {
          json j = json::parse(*a, nullptr, false);
          have = j.is_array() ? j.size() : 0;
          if (have >= want) break;
        }
      }
      if (MonoNanos() > deadline) {
        return DeadlineExceededError(fmt::format(
            "only {} of {} agents registered with the controller in time (see `tern logs`)", have,
            want));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Step(fmt::format("ready: {} agents registered with the controller; dashboard: http://{}/", want,
                     rec.controller));
    return Status::Ok();
  }

  UpOptions o_;
  cluster::Topology topo_;
  std::string dir_;
  std::string bin_;
  std::unique_ptr<emu::Ledger> ledger_;
  bool netns_ = false;
  std::map</*host*/ std::string, std::string> address_;
  std::map</*host*/ std::string, std::string> netns_of_;
  std::string ctl_host_;
  std::string etcd_;
  int step_ = 0;
};

void PrintReport(const emu::TeardownReport& r) {
  if (r.removed.empty() && r.remaining.empty()) {
    std::printf("nothing to remove\n");
  }
  for (const std::string& n : r.notes) std::printf("note: %s\n", n.c_str());
  if (!r.removed.empty()) {
    // "process 42 (...)", "netns tern-x-h1", ...: counted by kind.
    std::map<std::string, int> kinds;
    for (const std::string& what : r.removed) ++kinds[what.substr(0, what.find(' '))];
    std::vector<std::string> parts;
    for (const auto& [k, n] : kinds) {
      std::string noun = k == "netns" ? "network namespace" : k;
      std::string plural = noun == "process" ? "processes" : noun + "s";
      parts.push_back(fmt::format("{} {}", n, n == 1 ? noun : plural));
    }
    std::printf("removed %s\n", fmt::format("{}", fmt::join(parts, ", ")).c_str());
  }
  for (const std::string& s : r.remaining) std::printf("NOT removed: %s\n", s.c_str());
}

}  // namespace

int CmdUp(int argc, char** argv) {
  Flags f("tern up TOPOLOGY.yaml [flags]",
          "Starts an emulated datacenter on this machine from a topology file\n"
          "(docs/formats/topology.md): the controller, one agent per device and the gateway.\n"
          "As root, each host gets a network namespace on a bridge (rate limits from its\n"
          "links) and each device agent a cgroup with its CPU share and memory; otherwise\n"
          "everything runs on loopback and it says so. Link latency and bandwidth are also\n"
          "applied per call by the data plane. `tern down` removes everything it made.");
  f.Add("name", "", "cluster name, 1-8 of [a-z0-9] (default: the topology's `name`)");
  f.Add("isolation", "auto", "netns (needs root), loopback, or auto (netns when possible)");
  f.Add("store", "embedded", "the controller's store: embedded, or etcd (starts a real etcd)");
  f.Add("timeout-ms", "60000", "give up when the cluster is not up in this time");
  f.AddBool("rebalance",
            "the controller moves running instances off overloaded devices and to cheaper "
            "placements (`tern controller --help`: --rebalance)");
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern up", 1, 1); rc >= 0) return rc;
  UpOptions o;
  o.topology_path = f.positional()[0];
  o.name = f.Get("name");
  o.isolation = f.Get("isolation");
  o.store = f.Get("store");
  o.rebalance = f.GetBool("rebalance");
  if (o.isolation != "auto" && o.isolation != "netns" && o.isolation != "loopback") {
    return UsageError(f, "tern up", "--isolation must be auto, netns or loopback");
  }
  if (o.store != "embedded" && o.store != "etcd") {
    return UsageError(f, "tern up", "--store must be embedded or etcd");
  }
  Result<int64_t> tmo = f.GetInt("timeout-ms", 1000, 3600000);
  if (!tmo.ok()) return CommandFailed(tmo.status());
  o.timeout = std::chrono::milliseconds(*tmo);
  // Refuse to start over a running cluster of the same name; clean up a dead one.
  {
    Result<cluster::Topology> t = cluster::LoadTopologyFile(o.topology_path);
    if (!t.ok()) return CommandFailed(t.status());
    std::string name = o.name.empty() ? t->name : o.name;
    Result<ClusterRecord> old = LoadClusterRecord(name);
    if (old.ok()) {
      auto c = transport::JsonApiClient::Connect(old->controller, "controller",
                                                 std::chrono::milliseconds(500));
      if (c.ok() && (*c)->Call("GET", "/v1/info", {}, std::chrono::seconds(2)).ok()) {
        return CommandFailed(AlreadyExistsError(fmt::format(
            "cluster '{}' is already up (controller {}); `tern down {}` first", name,
            old->controller, name)));
      }
    }
    Result<std::vector<emu::LedgerEntry>> leftovers = emu::Ledger::Load(StateDir(), name);
    if (leftovers.ok() && !leftovers->empty()) {
      std::printf("cleaning up what an earlier run of '%s' left behind\n", name.c_str());
      Result<emu::TeardownReport> r = emu::Teardown(StateDir(), name);
      if (r.ok()) PrintReport(*r);
      ForgetClusterRecord(name);
    }
  }
  ClusterRecord rec;
  Up up(o);
  Status s = up.Run(&rec);
  if (!s.ok()) {
    std::fprintf(stderr, "tern up: %s\ntearing down what was started...\n", s.ToString().c_str());
    if (!rec.name.empty()) {
      Result<emu::TeardownReport> r = emu::Teardown(StateDir(), rec.name);
      if (r.ok()) PrintReport(*r);
    }
    return 1;
  }
  Status saved = SaveClusterRecord(rec);
  if (!saved.ok()) return CommandFailed(saved);
  std::printf("\ncluster %s is up (%s): %zu devices on %s\n", rec.name.c_str(),
              rec.isolation.c_str(), rec.agents.size(), rec.topology.c_str());
  std::printf("%-12s %-8s %s\n", "DEVICE", "HOST", "ADMIN");
  for (const auto& [d, a] : rec.agents) {
    std::printf("%-12s %-8s %s\n", d.c_str(), a.host.c_str(), a.address.c_str());
  }
  std::printf(
      "\nnext:\n"
      "  tern deploy examples/echo/manifest.yaml --replicas 2\n"
      "  tern invoke echo echo hello          (through the gateway, http://%s)\n"
      "  tern ps                              (devices, placement, load, events)\n"
      "  open http://%s/   (the dashboard: the same, live, in a browser)\n"
      "  tern logs controller | gateway | DEVICE\n"
      "  tern down %s\n",
      rec.gateway.c_str(), rec.controller.c_str(), rec.name.c_str());
  return 0;
}

int CmdDown(int argc, char** argv) {
  Flags f("tern down [NAME]",
          "Stops the cluster `tern up` started (the current one, or NAME) and removes every\n"
          "process, network namespace, link and cgroup it made, and only those. Works after\n"
          "a crash of `tern up` too.");
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern down", 0, 1); rc >= 0) return rc;
  std::string name;
  if (!f.positional().empty()) {
    name = f.positional()[0];
  } else {
    Result<ClusterRecord> cur = LoadClusterRecord("");
    if (!cur.ok()) return CommandFailed(cur.status());
    name = cur->name;
  }
  Result<emu::TeardownReport> r = emu::Teardown(StateDir(), name);
  if (!r.ok()) return CommandFailed(r.status());
  PrintReport(*r);
  ForgetClusterRecord(name);
  if (!r->clean()) return 1;
  std::printf("cluster %s is down\n", name.c_str());
  return 0;
}

}  // namespace tern::cli
