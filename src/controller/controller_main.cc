#include "controller/controller_main.h"

#include <fmt/format.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli/flags.h"
#include "cli/main_util.h"
#include "cluster/topology.h"
#include "controller/controller.h"
#include "core/ids.h"
#include "core/logging.h"
#include "store/embedded_store.h"
#include "store/etcd_store.h"

namespace tern::controller {

namespace {

// The emulated links of a topology, in the agents' PUT /v1/links form.
std::string LinksJson(const cluster::Topology& t) {
  nlohmann::json links = nlohmann::json::array();
  for (const cluster::HostLink& l : t.links) {
    nlohmann::json e{{"a", l.a}, {"b", l.b}, {"latency", fmt::format("{}ns", l.latency_ns)}};
    if (l.bandwidth_bps > 0) e["bandwidth"] = fmt::format("{:.0f}bit", l.bandwidth_bps);
    links.push_back(e);
  }
  return links.dump();
}

int Usage(const cli::Flags& f, const Status& s) {
  return cli::UsageError(f, "tern controller", s.message());
}

}  // namespace

int RunControllerCommand(int argc, char** argv) {
  cli::Flags f("tern controller [flags]",
               "Runs the cluster controller: agents register with it, it places service "
               "instances on them, keeps the location table and serves the API the CLI "
               "uses (tern deploy/ps --controller). State lives in a cluster store.");
  f.Add("listen", "127.0.0.1:7300", "HOST:PORT of the HTTP/JSON API (port 0 = any free port)");
  f.Add("id", "controller", "this controller's name, unique among controllers of one store");
  f.Add("store", "embedded",
        "where the cluster state lives: 'embedded' (in this process, persisted under "
        "--data-dir), or 'etcd:HOST:PORT' (etcd v3; several controllers elect a leader)");
  f.Add("data-dir", "",
        "directory of the embedded store (default: ./tern-state/<id>); 'none' = memory only");
  f.Add("topology", "", "the cluster's topology file: served to clients, links pushed to agents");
  f.Add("agent-ttl-ms", "3000", "an agent silent for this long is dead");
  f.Add("heartbeat-ms", "1000", "how often agents heartbeat");
  f.Add("log-level", "info", "debug, info, warn or error");
  f.AddBool("rebalance",
            "move running instances: off devices whose CPU stays above --overload-pct for "
            "--overload-window heartbeats, off devices where they miss their SLO (the "
            "manifest's slo_p99_ms) for --slo-window heartbeats, or to placements the policy "
            "finds cheaper by more than --rebalance-margin-pct (each instance at most once per "
            "--cooldown-ms)");
  f.Add("overload-pct", "85", "rebalancer: a device's CPU use (%) that counts as overload");
  f.Add("overload-window", "5", "rebalancer: consecutive heartbeats of overload before a move");
  f.Add("slo-window", "5",
        "rebalancer: consecutive heartbeats (with requests) of an instance's p99 above its "
        "SLO before a move");
  f.Add("rebalance-margin-pct", "20", "rebalancer: the saving (% of the cost) a move must beat");
  f.Add("cooldown-ms", "30000", "rebalancer: an instance that moved stays this long");
  if (int rc = cli::ParseFlagsOrExit(&f, argc, argv, "tern controller", 0, 0); rc >= 0) return rc;
  LogLevel level;
  if (!ParseLogLevel(f.Get("log-level"), &level)) {
    return Usage(f, InvalidArgumentError("--log-level must be debug, info, warn or error"));
  }
  SetMinLogLevel(level);
  ControllerOptions o;
  o.id = f.Get("id");
  if (!IsValidName(o.id)) {
    return Usage(f, InvalidArgumentError(fmt::format("--id '{}' is not a valid name", o.id)));
  }
  {
    // ParseHostPort refuses port 0, which means "any free port" here.
    std::string listen = f.Get("listen");
    size_t colon = listen.rfind(':');
    bool zero = colon != std::string::npos && listen.substr(colon + 1) == "0";
    Status hp = ParseHostPort(zero ? listen.substr(0, colon) + ":1" : listen, &o.host, &o.port);
    if (!hp.ok()) return Usage(f, hp.WithPrefix("--listen"));
    if (zero) o.port = 0;
  }
  Result<int64_t> ttl = f.GetInt("agent-ttl-ms", 100, 600000);
  Result<int64_t> hb = f.GetInt("heartbeat-ms", 20, 600000);
  if (!ttl.ok()) return Usage(f, ttl.status());
  if (!hb.ok()) return Usage(f, hb.status());
  if (*hb * 2 > *ttl) {
    return Usage(f, InvalidArgumentError(
                        "--heartbeat-ms must be at most half of --agent-ttl-ms, or live agents "
                        "would be declared dead"));
  }
  o.agent_ttl = std::chrono::milliseconds(*ttl);
  o.heartbeat = std::chrono::milliseconds(*hb);
  o.rebalance = f.GetBool("rebalance");
  {
    Result<int64_t> pct = f.GetInt("overload-pct", 1, 100);
    Result<int64_t> window = f.GetInt("overload-window", 1, 1000);
    Result<int64_t> slo_window = f.GetInt("slo-window", 1, 1000);
    Result<int64_t> margin = f.GetInt("rebalance-margin-pct", 0, 1000);
    Result<int64_t> cooldown = f.GetInt("cooldown-ms", 0, 86'400'000);
    for (const Status& s :
         {pct.status(), window.status(), slo_window.status(), margin.status(), cooldown.status()}) {
      if (!s.ok()) return Usage(f, s);
    }
    o.rebalance_options.overload_util = static_cast<double>(*pct) / 100;
    o.rebalance_options.overload_samples = static_cast<int>(*window);
    o.rebalance_options.slo_samples = static_cast<int>(*slo_window);
    o.rebalance_options.margin = static_cast<double>(*margin) / 100;
    o.rebalance_options.cooldown_ms = *cooldown;
  }
  if (!f.Get("topology").empty()) {
    Result<cluster::Topology> t = cluster::LoadTopologyFile(f.Get("topology"));
    if (!t.ok()) {
      std::fprintf(stderr, "tern controller: %s\n", t.status().ToString().c_str());
      return 2;
    }
    o.topology_json = cluster::TopologyToJson(*t);
    o.topology = std::make_shared<const cluster::Topology>(*t);
    o.links_json = LinksJson(*t);
  }

  cli::BlockStopSignals();

  std::unique_ptr<store::ClusterStore> st;
  std::string spec = f.Get("store");
  if (spec == "embedded") {
    std::string dir = f.Get("data-dir");
    if (dir.empty()) dir = "tern-state/" + o.id;
    if (dir == "none") dir.clear();
    Result<std::unique_ptr<store::EmbeddedStore>> e = store::EmbeddedStore::Open(dir);
    if (!e.ok()) {
      TERN_LOG(ERROR) << "embedded store: " << e.status();
      return 1;
    }
    st = std::move(*e);
  } else if (spec.rfind("etcd:", 0) == 0) {
    Result<std::unique_ptr<store::EtcdStore>> e = store::EtcdStore::Connect(spec.substr(5));
    if (!e.ok()) {
      TERN_LOG(ERROR) << "etcd store: " << e.status() << " (is etcd running at " << spec.substr(5)
                      << "?)";
      return 1;
    }
    st = std::move(*e);
  } else {
    return Usage(f, InvalidArgumentError(fmt::format(
                        "--store must be 'embedded' or 'etcd:HOST:PORT', not '{}'", spec)));
  }
  Result<std::unique_ptr<Controller>> c = Controller::Start(st.get(), o);
  if (!c.ok()) {
    TERN_LOG(ERROR) << "controller: " << c.status();
    return 1;
  }
  TERN_LOG(INFO) << "controller " << o.id << " ready on http://" << o.host << ":" << (*c)->port()
                 << ", store " << st->Describe();
  std::printf("controller listening on http://%s:%u\n", o.host.c_str(), (*c)->port());
  std::fflush(stdout);
  std::string sig = cli::WaitForStopSignal();
  TERN_LOG(INFO) << "controller " << o.id << " stopping (" << sig << ")";
  c->reset();
  st.reset();
  return 0;
}

}  // namespace tern::controller
