#include "controller/controller.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <list>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "client/agent_client.h"
#include "controller/advisor.h"
#include "controller/model.h"
#include "controller/energy.h"
#include "placement/explain.h"
#include "controller/plan.h"
#include "core/base64.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/ids.h"
#include "core/logging.h"
#include "core/manifest.h"
#include "core/mutex.h"
#include "core/task_thread.h"
#include "core/version.h"
#include "dataplane/location.h"
#include "store/election.h"
#include "store/store.h"
#include "transport/event_loop.h"
#include "transport/http.h"
#include "transport/json_api.h"

namespace tern::controller {

using nlohmann::json;
using transport::ErrorResponse;
using transport::HttpRequest;
using transport::HttpResponder;
using transport::HttpResponse;

namespace {

int64_t UnixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<std::string> PathParts(std::string_view path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) out.emplace_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

// What an agent reported in its last two heartbeats, for rates.
struct Telemetry {
  int64_t at_ns = 0;         // MonoNanos() when received
  int64_t cpu_ns = 0;        // the agent process's CPU time
  std::optional<uint64_t> rapl_uj;  // package energy counter, where the agent reads RAPL
  uint64_t rss_bytes = 0;
  double cpu_util = 0;       // of its cores, over the last interval
  struct Inst {
    std::string service;
    uint64_t requests = 0;
    uint64_t failures = 0;
    int64_t exec_ns_total = 0;
    uint64_t queued = 0;
    uint64_t memory_bytes = 0;
    uint64_t data_local_bytes = 0;   // dataset bytes read from its own device
    uint64_t data_remote_bytes = 0;  // ... fetched from other devices
    double data_per_request = 0;  // dataset bytes per request over the last interval
    double rate = 0;          // requests/s over the last interval
    double mean_exec_us = 0;  // over the last interval
    int64_t cpu_ns_total = 0;        // worker CPU time during its requests (cumulative)
    uint64_t reply_bytes_total = 0;  // reply payload bytes (cumulative)
    double mean_cpu_us = 0;          // CPU per request over the last interval with requests
    EnergyEstimate energy;           // per request, likewise (energy.h)
  };
  std::map<std::string, Inst> instances;
  std::set<std::string> services;  // deployed on the agent
  struct Dataset {
    uint64_t objects = 0, bytes = 0, bytes_read = 0;
  };
  std::map<std::string, Dataset> datasets;  // kept by the agent
};

// The reconcile thread's connection to one agent.
struct AgentConn {
  std::string boot;
  std::string admin;
  std::unique_ptr<client::AgentClient> client;
  std::set<std::string> deployed;  // "service@module_hash"
  bool synced = false;             // locations and links pushed for this boot
  uint64_t pushed_version = 0;
  std::string pushed_datasets;     // the dataset-locations document it has
};

}  // namespace

struct Controller::Impl {
  store::ClusterStore* store = nullptr;
  ControllerOptions options;
  std::unique_ptr<transport::EventLoopThread> loop;
  std::unique_ptr<transport::HttpServer> http;
  std::unique_ptr<TaskThread> fast;  // registrations, heartbeats
  std::unique_ptr<TaskThread> slow;  // deploys, reads that range the store

  // Leadership (store/election.h); the election and its lease belong to the reconcile
  // thread (and Start, before it runs).
  std::atomic<bool> leader{false};
  std::unique_ptr<store::Election> election;
  store::LeaseId leader_lease = 0;
  Mutex leader_mu;
  std::string leader_id GUARDED_BY(leader_mu);

  // The reconcile thread and its wake-ups.
  std::thread reconciler;
  Mutex rmu;
  CondVar rcv;
  bool poke GUARDED_BY(rmu) = false;
  bool stopping GUARDED_BY(rmu) = false;
  uint64_t rounds_started GUARDED_BY(rmu) = 0;
  uint64_t rounds_done GUARDED_BY(rmu) = 0;
  std::map<std::string, AgentConn> conns;  // reconcile thread only
  std::map<std::pair<std::string, std::string>, int64_t> backoff_until;  // reconcile thread
  std::unique_ptr<store::Watch> agents_watch;

  // Published state.
  Mutex pub_mu;
  uint64_t version GUARDED_BY(pub_mu) = 0;
  std::vector<dataplane::InstanceLocation> locations GUARDED_BY(pub_mu);
  // {"version", "locations"} as long polls get it, rendered once per version.
  std::string locations_doc GUARDED_BY(pub_mu) = R"({"locations":[],"version":0})";
  std::map<std::string, std::string> unplaceable GUARDED_BY(pub_mu);
  std::deque<std::pair<int64_t, std::string>> events GUARDED_BY(pub_mu);
  std::map<std::string, Telemetry> telemetry GUARDED_BY(pub_mu);
  std::map<std::string, int64_t> last_heartbeat_ns GUARDED_BY(pub_mu);

  // Long polls waiting for a new version (loop thread only).
  struct Waiter {
    uint64_t after;
    HttpResponder responder;
    transport::EventLoop::TimerId timer;
  };
  std::list<Waiter> waiters;

  // Rate-limits a repeated warning: true = stay quiet (logged from this line less than
  // `seconds` ago).
  Mutex quiet_mu;
  std::map<int, int64_t> last_logged GUARDED_BY(quiet_mu);
  bool Quiet(int line, int seconds) {
    MutexLock l(&quiet_mu);
    int64_t now = MonoNanos();
    auto [it, fresh] = last_logged.emplace(line, now);
    if (fresh) return false;
    if (now - it->second < int64_t{seconds} * 1000000000) return true;
    it->second = now;
    return false;
  }

  // ---- events and publication -------------------------------------------------------

  void Event(std::string what) {
    TERN_LOG(INFO) << what;
    MutexLock l(&pub_mu);
    events.emplace_back(UnixMillis(), std::move(what));
    while (events.size() > 64) events.pop_front();
  }

  static std::string LocationsDoc(uint64_t v,
                                  const std::vector<dataplane::InstanceLocation>& locs) {
    json j = json::parse(dataplane::LocationsToJson(locs));
    j["version"] = v;
    return j.dump();
  }

  // Loop thread: answers the long polls the new version satisfies.
  void WakeWaiters() {
    uint64_t v;
    std::string doc;
    {
      MutexLock l(&pub_mu);
      v = version;
      doc = locations_doc;
    }
    for (auto it = waiters.begin(); it != waiters.end();) {
      if (v > it->after) {
        loop->loop()->CancelTimer(it->timer);
        it->responder.Respond(HttpResponse::Json(200, doc));
        it = waiters.erase(it);
      } else {
        ++it;
      }
    }
  }

  // ---- leadership ---------------------------------------------------------------------

  // Reconcile thread: joins (or re-joins, after its lease died) the election and says
  // whether this controller leads now.
  bool Lead() {
    if (election && !election->is_leader() && store->KeepAlive(leader_lease).code() ==
                                                  StatusCode::kNotFound) {
      election.reset();  // our lease is gone: campaign again with a new one
    }
    if (!election) {
      Result<store::LeaseId> lease = store->GrantLease(options.leader_ttl);
      if (!lease.ok()) {
        if (!Quiet(__LINE__, 10)) TERN_LOG(WARN) << "leader election: " << lease.status();
        return false;
      }
      store::ElectionOptions eo;
      eo.keepalive_interval = std::max(options.leader_ttl / 4, std::chrono::milliseconds(50));
      Result<std::unique_ptr<store::Election>> e = store::Election::Start(
          store, std::string(kElectionPrefix), options.id, *lease, [this](bool now_leader) {
            Event(now_leader ? fmt::format("controller {} is the leader", options.id)
                             : fmt::format("controller {} lost the leadership", options.id));
            Poke();
          },
          eo);
      if (!e.ok()) {
        (void)store->Revoke(*lease);
        if (!Quiet(__LINE__, 10)) TERN_LOG(WARN) << "leader election: " << e.status();
        return false;
      }
      election = std::move(*e);
      leader_lease = *lease;
    }
    bool lead = election->is_leader();
    leader = lead;
    {
      MutexLock l(&leader_mu);
      leader_id = election->leader();
    }
    return lead;
  }

  std::string Leader() {
    MutexLock l(&leader_mu);
    return leader_id;
  }

  Status NotLeader() {
    std::string who = Leader();
    return UnavailableError(fmt::format("controller {} is not the leader{}", options.id,
                                        who.empty() ? " (no leader yet; retry)"
                                                    : "; the leader is " + who));
  }

  // ---- the reconcile loop -------------------------------------------------------------

  void Poke() {
    MutexLock l(&rmu);
    poke = true;
    rcv.Signal();
  }

  // Slow/fast thread: waits until a round that started after this call has finished.
  Status WaitForRound(std::chrono::milliseconds timeout) {
    int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
    MutexLock l(&rmu);
    uint64_t want = rounds_started + 1;
    poke = true;
    rcv.Signal();
    while (rounds_done < want) {
      int64_t left = deadline - MonoNanos();
      if (left <= 0) return DeadlineExceededError("the controller's reconcile round took too long");
      rcv.WaitFor(&rmu, std::chrono::nanoseconds(left));
    }
    return Status::Ok();
  }

  void ReconcileLoop() {
    for (;;) {
      {
        MutexLock l(&rmu);
        int64_t deadline =
            MonoNanos() + std::chrono::nanoseconds(options.reconcile_interval).count() / 2;
        while (!poke && !stopping) {
          int64_t left = deadline - MonoNanos();
          if (left <= 0) break;
          rcv.WaitFor(&rmu, std::chrono::nanoseconds(left));
        }
        if (stopping) {
          rounds_done = rounds_started + 1;  // release waiters
          rcv.SignalAll();
          return;
        }
        poke = false;
        ++rounds_started;
      }
      if (Lead()) {
        Status s = Reconcile();
        if (!s.ok() && !Quiet(__LINE__, 5)) TERN_LOG(WARN) << "reconcile: " << s;
      }
      MutexLock l(&rmu);
      rounds_done = rounds_started;
      rcv.SignalAll();
    }
  }

  Result<ClusterView> LoadView() {
    ClusterView view;
    TERN_ASSIGN_OR_RETURN(store::RangeResult agents, store->Range(kAgentsPrefix));
    for (const store::KeyValue& kv : agents.kvs) {
      Result<AgentRecord> a = AgentFromJson(kv.value, kv.key);
      if (!a.ok()) {
        if (Quiet(__LINE__, 10)) {} else TERN_LOG(WARN) << "skipping a bad agent record: " << a.status();
        continue;
      }
      view.agents[a->device] = std::move(*a);
    }
    TERN_ASSIGN_OR_RETURN(store::RangeResult services, store->Range(kServicesPrefix));
    for (const store::KeyValue& kv : services.kvs) {
      Result<ServiceRecord> s = ServiceFromJson(kv.value, kv.key);
      if (!s.ok()) {
        if (Quiet(__LINE__, 10)) {} else TERN_LOG(WARN) << "skipping a bad service record: " << s.status();
        continue;
      }
      view.services[s->name] = std::move(*s);
    }
    TERN_ASSIGN_OR_RETURN(store::RangeResult instances, store->Range(kInstancesPrefix));
    for (const store::KeyValue& kv : instances.kvs) {
      Result<InstanceRecord> r = InstanceFromJson(kv.value, kv.key);
      if (!r.ok()) {
        if (Quiet(__LINE__, 10)) {} else TERN_LOG(WARN) << "skipping a bad instance record: " << r.status();
        continue;
      }
      std::string id = r->id;
      view.instances[id] = PlacedInstance{std::move(*r), kv.mod_revision};
    }
    int64_t now = MonoNanos();
    for (auto it = backoff_until.begin(); it != backoff_until.end();) {
      if (it->second <= now) {
        it = backoff_until.erase(it);
      } else {
        view.backoff.insert(it->first);
        ++it;
      }
    }
    return view;
  }

  // The connection to a live agent, made anew when it restarted.
  Result<AgentConn*> Conn(const AgentRecord& a) {
    AgentConn& c = conns[a.device];
    if (c.client && c.boot == a.boot && c.admin == a.admin) return &c;
    c = AgentConn{};
    TERN_ASSIGN_OR_RETURN(c.client, client::AgentClient::Connect(a.admin, std::chrono::seconds(5)));
    c.boot = a.boot;
    c.admin = a.admin;
    // What it already runs (it may have outlived a controller restart).
    Result<std::string> st = c.client->StatusJson();
    if (st.ok()) {
      json j = json::parse(*st, nullptr, false);
      if (!j.is_discarded() && j.contains("services") && j["services"].is_array()) {
        for (const json& s : j["services"]) {
          if (s.contains("manifest") && s["manifest"].contains("name") &&
              s.contains("module_hash")) {
            c.deployed.insert(s["manifest"]["name"].get<std::string>() + "@" +
                              s["module_hash"].get<std::string>());
          }
        }
      }
    }
    return &c;
  }

  Status EnsureDeployed(AgentConn* c, const ServiceRecord& svc) {
    std::string tag = svc.name + "@" + svc.module_hash;
    if (c->deployed.count(tag)) return Status::Ok();
    TERN_ASSIGN_OR_RETURN(std::optional<store::KeyValue> module,
                          store->Get(std::string(kModulesPrefix) + svc.module_hash));
    if (!module) {
      return DataLossError(fmt::format("the module {} of service {} is missing from the store",
                                       svc.module_hash.substr(0, 12), svc.name));
    }
    TERN_RETURN_IF_ERROR(
        c->client->Deploy(svc.manifest_yaml, module->value, /*start_instances=*/false).status());
    // Other versions of the service are gone from the agent now.
    for (auto it = c->deployed.begin(); it != c->deployed.end();) {
      it = it->rfind(svc.name + "@", 0) == 0 ? c->deployed.erase(it) : std::next(it);
    }
    c->deployed.insert(tag);
    return Status::Ok();
  }

  // Reserves `count` instance numbers of a service at once (a counter in the store, so
  // ids are never reused); returns the first.
  Result<int64_t> ReserveInstanceIds(const std::string& service, int64_t count) {
    std::string key = std::string(kSeqPrefix) + service;
    for (int attempt = 0; attempt < 16; ++attempt) {
      TERN_ASSIGN_OR_RETURN(std::optional<store::KeyValue> cur, store->Get(key));
      int64_t n = 0;
      int64_t rev = 0;
      if (cur) {
        n = std::strtoll(cur->value.c_str(), nullptr, 10);
        rev = cur->mod_revision;
      }
      TERN_ASSIGN_OR_RETURN(store::ClusterStore::ApplyResult r,
                            store->Apply({store::Compare{key, rev}},
                                         {store::Op::Put(key, std::to_string(n + count))}));
      if (r.applied) return n + 1;
    }
    return AbortedError("could not allocate an instance id (contention)");
  }

  // Starts `rec` on its agent and records the agent's boot (which bumps its epoch).
  Status StartOn(const ClusterView& view, InstanceRecord rec, int64_t rev) {
    const AgentRecord& a = view.agents.at(rec.device);
    const ServiceRecord& svc = view.services.at(rec.service);
    TERN_ASSIGN_OR_RETURN(AgentConn * c, Conn(a));
    Status s = EnsureDeployed(c, svc);
    if (s.ok()) {
      Result<std::string> id = c->client->StartInstance(svc.name, rec.id);
      s = id.ok() || id.status().code() == StatusCode::kAlreadyExists ? Status::Ok()
                                                                       : id.status();
    }
    if (!s.ok()) {
      if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) {
        conns.erase(rec.device);  // reconnect next time
      }
      return s;
    }
    rec.boot = a.boot;
    rec.module_hash = svc.module_hash;
    std::string key = std::string(kInstancesPrefix) + rec.id;
    TERN_ASSIGN_OR_RETURN(store::ClusterStore::ApplyResult r,
                          store->Apply({store::Compare{key, rev}}, {store::Op::Put(key, ToJson(rec))}));
    if (!r.applied) return AbortedError("the instance record changed meanwhile");
    return Status::Ok();
  }

  void Fail(const Action& a, const Status& s) {
    backoff_until[{a.device, a.service}] =
        MonoNanos() + std::chrono::nanoseconds(options.start_backoff).count();
    Event(fmt::format("could not start {} of {} on {}: {}", a.instance.empty() ? "a replica" : a.instance,
                      a.service, a.device, s.message()));
  }

  void Execute(const ClusterView& view, const Action& a) {
    std::string key = std::string(kInstancesPrefix) + a.instance;
    switch (a.kind) {
      case Action::Kind::kForget: {
        (void)store->Delete(key);
        Event(fmt::format("instance {} of {} lost: {}", a.instance, a.service, a.reason));
        return;
      }
      case Action::Kind::kStop: {
        auto ait = view.agents.find(a.device);
        if (ait != view.agents.end()) {
          Result<AgentConn*> c = Conn(ait->second);
          if (c.ok()) {
            Status s = (*c)->client->StopInstance(a.instance);
            if (!s.ok() && s.code() != StatusCode::kNotFound) {
              TERN_LOG(WARN) << "stopping " << a.instance << " on " << a.device << ": " << s;
            }
            bool others = false;
            for (const auto& [id, p] : view.instances) {
              others |= id != a.instance && p.record.device == a.device &&
                        p.record.service == a.service;
            }
            if (!others && view.services.count(a.service) == 0) {
              (void)(*c)->client->Undeploy(a.service);
              for (auto it = (*c)->deployed.begin(); it != (*c)->deployed.end();) {
                it = it->rfind(a.service + "@", 0) == 0 ? (*c)->deployed.erase(it) : std::next(it);
              }
            }
          }
        }
        (void)store->Delete(key);
        Event(fmt::format("stopped {} on {}: {}", a.instance, a.device, a.reason));
        return;
      }
      case Action::Kind::kStart: {
        const PlacedInstance& p = view.instances.at(a.instance);
        Status s = StartOn(view, p.record, p.epoch);
        if (!s.ok()) {
          Fail(a, s);
          (void)store->Delete(key);  // placed again elsewhere next round
          return;
        }
        Event(fmt::format("started {} on {} ({})", a.instance, a.device, a.reason));
        return;
      }
      case Action::Kind::kCreate: {
        Result<std::string> id = TakeInstanceId(a.service);
        if (!id.ok()) {
          Fail(a, id.status());
          return;
        }
        InstanceRecord rec{*id, a.service, a.device, "", view.services.at(a.service).module_hash};
        std::string ikey = std::string(kInstancesPrefix) + *id;
        Result<int64_t> rev = store->Put(ikey, ToJson(rec));
        if (!rev.ok()) {
          Fail(a, rev.status());
          return;
        }
        Status s = StartOn(view, rec, *rev);
        if (!s.ok()) {
          Fail(Action{a.kind, *id, a.service, a.device, a.reason}, s);
          (void)store->Delete(ikey);
          return;
        }
        Event(fmt::format("placed {} on {} ({})", *id, a.device, a.reason));
        return;
      }
    }
  }

  // Instance numbers reserved for this round's creations, per service.
  std::map<std::string, std::pair</*next*/ int64_t, /*end*/ int64_t>> reserved_ids;

  Result<std::string> TakeInstanceId(const std::string& service) {
    auto it = reserved_ids.find(service);
    if (it == reserved_ids.end() || it->second.first >= it->second.second) {
      return InternalError("no instance id reserved for " + service);
    }
    return MakeInstanceId(service, static_cast<uint64_t>(it->second.first++));
  }

  // The placement engine's inputs from telemetry: device utilization, datasets kept,
  // and per-service measurements.
  void EngineInputs(const ClusterView& view, std::map<std::string, double>* util,
                    std::map<std::string, std::vector<std::string>>* datasets,
                    std::map<std::string, ServiceMeasurement>* measured) {
    MutexLock l(&pub_mu);
    for (const auto& [device, t] : telemetry) {
      if (!view.agents.count(device)) continue;
      (*util)[device] = t.cpu_util;
      for (const auto& [name, d] : t.datasets) (*datasets)[device].push_back(name);
      double speed = view.agents.at(device).speed;
      for (const auto& [id, x] : t.instances) {
        if (x.rate <= 0) continue;
        ServiceMeasurement& m = (*measured)[x.service];
        double n = x.rate;  // weights: requests per second of this instance
        double total = m.requests + n;
        // The request's CPU time where the agent measures it (its wall time includes
        // waiting for remote data, which the model prices separately, and a CSD's
        // throttling); older agents report only the wall time.
        const double us = x.mean_cpu_us > 0 ? x.mean_cpu_us : x.mean_exec_us;
        m.cpu_ns_speed1 = (m.cpu_ns_speed1 * m.requests + us * 1e3 * speed * n) / total;
        m.data_bytes = (m.data_bytes * m.requests + x.data_per_request * n) / total;
        m.rate = std::max(m.rate, x.rate);
        m.requests = total;
      }
    }
  }

  // The engine's view, and a service's decision under its policy.
  Result<placement::Decision> AdviseFor(const ClusterView& view, const ServiceRecord& svc) {
    std::map<std::string, double> util;
    std::map<std::string, std::vector<std::string>> datasets;
    std::map<std::string, ServiceMeasurement> measured;
    EngineInputs(view, &util, &datasets, &measured);
    TERN_ASSIGN_OR_RETURN(PlacementHints hints, HintsFromJson(svc.placement));
    placement::ClusterView pv = BuildPlacementView(options.topology.get(), view, util, datasets);
    auto m = measured.find(svc.name);
    return Advise(svc, hints, pv,
                  m == measured.end() ? std::nullopt : std::optional<ServiceMeasurement>(m->second));
  }

  Status Reconcile() {
    TERN_ASSIGN_OR_RETURN(ClusterView view, LoadView());
    for (const auto& [name, svc] : view.services) {
      if (svc.placement.empty()) continue;
      Result<placement::Decision> d = AdviseFor(view, svc);
      if (!d.ok()) {
        if (!Quiet(__LINE__, 10)) TERN_LOG(WARN) << "placing " << name << ": " << d.status();
        continue;
      }
      view.ranked[name] = RankedDevices(*d);
    }
    Plan plan = PlanReconcile(view);
    // One store round trip per service for the ids of all its new instances.
    std::map<std::string, int64_t> creates;
    for (const Action& a : plan.actions) {
      if (a.kind == Action::Kind::kCreate) ++creates[a.service];
    }
    reserved_ids.clear();
    for (const auto& [service, n] : creates) {
      Result<int64_t> first = ReserveInstanceIds(service, n);
      if (first.ok()) reserved_ids[service] = {*first, *first + n};
    }
    for (const Action& a : plan.actions) Execute(view, a);
    if (!plan.actions.empty()) {
      TERN_ASSIGN_OR_RETURN(view, LoadView());
    }
    for (auto it = conns.begin(); it != conns.end();) {
      it = view.agents.count(it->first) ? std::next(it) : conns.erase(it);
    }
    std::vector<dataplane::InstanceLocation> locs = LocationsOf(view);
    uint64_t v;
    bool changed = false;
    {
      MutexLock l(&pub_mu);
      unplaceable = plan.unplaceable;
      if (locs != locations) {
        locations = locs;
        ++version;
        locations_doc = LocationsDoc(version, locations);
        changed = true;
      }
      v = version;
    }
    if (changed) loop->loop()->Post([this] { WakeWaiters(); });
    // Push the table to every agent that has not seen this version (and the emulated
    // links to agents that are new or restarted).
    std::string doc = dataplane::LocationsToJson(locs);
    std::string datasets_doc = DatasetLocationsDoc(view);
    for (const auto& [device, a] : view.agents) {
      Result<AgentConn*> c = Conn(a);
      if (!c.ok()) continue;
      if (!(*c)->synced && !options.links_json.empty()) {
        Result<std::string> r = (*c)->client->SetLinks(options.links_json);
        if (!r.ok()) TERN_LOG(WARN) << "pushing links to " << device << ": " << r.status();
      }
      if ((*c)->synced && (*c)->pushed_version == v) continue;
      Result<std::string> r = (*c)->client->SetLocations(doc, /*replace=*/true);
      if (!r.ok()) {
        if (Quiet(__LINE__, 5)) {} else TERN_LOG(WARN) << "pushing locations to " << device << ": " << r.status();
        conns.erase(device);
        continue;
      }
      (*c)->synced = true;
      (*c)->pushed_version = v;
    }
    for (const auto& [device, a] : view.agents) {
      auto it = conns.find(device);
      if (it == conns.end() || !it->second.synced || it->second.pushed_datasets == datasets_doc) {
        continue;
      }
      Result<std::string> r = it->second.client->SetDatasetLocations(datasets_doc);
      if (r.ok()) {
        it->second.pushed_datasets = datasets_doc;
      } else if (!Quiet(__LINE__, 5)) {
        TERN_LOG(WARN) << "pushing dataset locations to " << device << ": " << r.status();
      }
    }
    return Status::Ok();
  }

  // Where each dataset is, from what live agents report (the first device by name that
  // keeps it), as agents' PUT /v1/dataset-locations wants it.
  std::string DatasetLocationsDoc(const ClusterView& view) {
    std::map<std::string, const AgentRecord*> owner;
    {
      MutexLock l(&pub_mu);
      for (const auto& [device, t] : telemetry) {
        auto a = view.agents.find(device);
        if (a == view.agents.end()) continue;
        for (const auto& [name, d] : t.datasets) owner.emplace(name, &a->second);
      }
    }
    json out = json::array();
    for (const auto& [name, a] : owner) {
      out.push_back({{"dataset", name}, {"agent", a->device}, {"host", a->host},
                     {"tcp", a->tcp}, {"shm", a->shm}});
    }
    return json{{"datasets", out}}.dump();
  }

  // ---- API handlers -------------------------------------------------------------------

  HttpResponse Register(const HttpRequest& req) {
    Result<AgentRecord> a = AgentFromJson(req.body, "register");
    if (!a.ok()) return ErrorResponse(InvalidArgumentError(a.status().message()));
    if (!IsValidName(a->device)) {
      return ErrorResponse(InvalidArgumentError(
          fmt::format("register: '{}' is not a valid device name", a->device)));
    }
    if (a->admin.empty() || a->boot.empty()) {
      return ErrorResponse(InvalidArgumentError("register: 'admin' and 'boot' are required"));
    }
    a->registered_unix_ms = UnixMillis();
    std::string key = std::string(kAgentsPrefix) + a->device;
    // A restarted agent replaces its old record (and the old lease goes).
    Result<std::optional<store::KeyValue>> old = store->Get(key);
    Result<store::LeaseId> lease = store->GrantLease(options.agent_ttl);
    if (!lease.ok()) return ErrorResponse(lease.status().WithPrefix("register"));
    Result<int64_t> put = store->Put(key, ToJson(*a), *lease);
    if (!put.ok()) return ErrorResponse(put.status().WithPrefix("register"));
    if (old.ok() && old->has_value() && (*old)->lease != 0 && (*old)->lease != *lease) {
      (void)store->Revoke((*old)->lease);
      // Revoking deleted the key if it still carried the old lease; put it back.
      (void)store->Put(key, ToJson(*a), *lease);
    }
    {
      MutexLock l(&pub_mu);
      last_heartbeat_ns[a->device] = MonoNanos();
      telemetry.erase(a->device);
    }
    Event(fmt::format("agent {} registered ({} on host {}, {} cores, admin {})", a->device, a->kind,
                      a->host, a->cores, a->admin));
    Poke();
    return HttpResponse::Json(
        200, json{{"lease", *lease},
                  {"ttl_ms", options.agent_ttl.count()},
                  {"heartbeat_ms", options.heartbeat.count()}}
                 .dump());
  }

  HttpResponse Heartbeat(const std::string& device, const HttpRequest& req) {
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("lease") ||
        !j["lease"].is_number_integer()) {
      return ErrorResponse(InvalidArgumentError("heartbeat: body must be {\"lease\": N, ...}"));
    }
    Status s = store->KeepAlive(j["lease"].get<store::LeaseId>());
    if (!s.ok()) {
      if (s.code() == StatusCode::kNotFound) {
        return ErrorResponse(NotFoundError(
            fmt::format("agent {}: lease expired; register again", device)));
      }
      return ErrorResponse(s);
    }
    Telemetry t;
    t.at_ns = MonoNanos();
    t.cpu_ns = j.value("cpu_ns", int64_t{0});
    t.rss_bytes = j.value("rss_bytes", uint64_t{0});
    if (j.contains("rapl_energy_uj") && j["rapl_energy_uj"].is_number_unsigned()) {
      t.rapl_uj = j["rapl_energy_uj"].get<uint64_t>();
    }
    double cores = std::max(j.value("cores", 1.0), 1e-3);
    if (j.contains("status") && j["status"].is_object()) {
      const json& st = j["status"];
      if (st.contains("instances") && st["instances"].is_array()) {
        for (const json& i : st["instances"]) {
          if (!i.is_object() || !i.contains("id") || !i["id"].is_string()) continue;
          Telemetry::Inst& x = t.instances[i["id"].get<std::string>()];
          x.service = i.value("service", std::string());
          x.requests = i.value("requests", uint64_t{0});
          x.failures = i.value("failures", uint64_t{0});
          x.exec_ns_total = i.value("exec_ns_total", int64_t{0});
          x.cpu_ns_total = i.value("cpu_ns_total", int64_t{0});
          x.reply_bytes_total = i.value("reply_bytes_total", uint64_t{0});
          x.queued = i.value("queued", uint64_t{0});
          x.memory_bytes = i.value("memory_bytes", uint64_t{0});
          if (i.contains("data") && i["data"].is_object()) {
            x.data_local_bytes = i["data"].value("local_bytes", uint64_t{0});
            x.data_remote_bytes = i["data"].value("remote_bytes", uint64_t{0});
          }
        }
      }
      if (st.contains("services") && st["services"].is_array()) {
        for (const json& sv : st["services"]) {
          if (sv.contains("manifest") && sv["manifest"].contains("name")) {
            t.services.insert(sv["manifest"]["name"].get<std::string>());
          }
        }
      }
    }
    if (j.contains("datasets") && j["datasets"].is_array()) {
      for (const json& d : j["datasets"]) {
        if (!d.is_object() || !d.contains("name") || !d["name"].is_string()) continue;
        Telemetry::Dataset& x = t.datasets[d["name"].get<std::string>()];
        x.objects = d.value("objects", uint64_t{0});
        x.bytes = d.value("bytes", uint64_t{0});
        x.bytes_read = d.value("bytes_read", uint64_t{0});
      }
    }
    MutexLock l(&pub_mu);
    last_heartbeat_ns[device] = t.at_ns;
    auto it = telemetry.find(device);
    if (it != telemetry.end() && t.at_ns > it->second.at_ns) {
      const Telemetry& p = it->second;
      double dt = static_cast<double>(t.at_ns - p.at_ns) / 1e9;
      t.cpu_util = std::clamp(static_cast<double>(t.cpu_ns - p.cpu_ns) / 1e9 / dt / cores, 0.0, 1.0);
      for (auto& [id, x] : t.instances) {
        auto pi = p.instances.find(id);
        if (pi == p.instances.end() || x.requests < pi->second.requests) continue;
        uint64_t dn = x.requests - pi->second.requests;
        // An idle interval keeps the last per-request figures (there is nothing new).
        x.energy = pi->second.energy;
        x.mean_cpu_us = pi->second.mean_cpu_us;
        x.rate = static_cast<double>(dn) / dt;
        x.mean_exec_us =
            dn ? static_cast<double>(x.exec_ns_total - pi->second.exec_ns_total) / dn / 1e3 : 0;
        uint64_t data_now = x.data_local_bytes + x.data_remote_bytes;
        uint64_t data_then = pi->second.data_local_bytes + pi->second.data_remote_bytes;
        x.data_per_request =
            dn && data_now >= data_then ? static_cast<double>(data_now - data_then) / dn : 0;
        if (dn > 0) {
          x.mean_cpu_us = static_cast<double>(x.cpu_ns_total - pi->second.cpu_ns_total) / dn / 1e3;
        }
        // Energy (energy.h): the device's power model from the topology, or RAPL.
        const cluster::Device* dev =
            options.topology ? options.topology->FindDevice(device) : nullptr;
        if (dev != nullptr && dn > 0) {
          EnergyInputs in;
          in.idle_w = dev->power.idle_w;
          in.active_w = dev->power.active_w;
          in.cores = cores;
          in.interval_s = dt;
          in.device_cpu_s = static_cast<double>(t.cpu_ns - p.cpu_ns) / 1e9;
          in.instance_cpu_s = static_cast<double>(x.cpu_ns_total - pi->second.cpu_ns_total) / 1e9;
          in.requests = static_cast<double>(dn);
          uint64_t moved_now = x.data_remote_bytes + x.reply_bytes_total;
          uint64_t moved_then = pi->second.data_remote_bytes + pi->second.reply_bytes_total;
          in.bytes = moved_now >= moved_then ? static_cast<double>(moved_now - moved_then) : 0;
          // A byte moved crosses the device's own link and one host link.
          double host_jpb = 0;
          for (const cluster::HostLink& l : options.topology->links) {
            if (l.a == dev->host || l.b == dev->host) host_jpb = std::max(host_jpb, l.energy_j_per_byte);
          }
          in.j_per_byte = dev->link.energy_j_per_byte + host_jpb;
          if (t.rapl_uj && p.rapl_uj && *t.rapl_uj >= *p.rapl_uj) {
            in.rapl_j = static_cast<double>(*t.rapl_uj - *p.rapl_uj) * 1e-6;
          }
          x.energy = EnergyPerRequest(in);
        }
      }
    }
    telemetry[device] = std::move(t);
    return HttpResponse::Json(200, json{{"ok", true}}.dump());
  }

  json ServiceJson(const ServiceRecord& s, const ClusterView& view) {
    json inst = json::array();
    for (const auto& [id, p] : view.instances) {
      if (p.record.service != s.name) continue;
      auto ait = view.agents.find(p.record.device);
      bool running = ait != view.agents.end() && !p.record.boot.empty() &&
                     p.record.boot == ait->second.boot;
      inst.push_back(json{{"id", id},
                          {"device", p.record.device},
                          {"host", ait == view.agents.end() ? "" : ait->second.host},
                          {"epoch", p.epoch},
                          {"state", running ? "running" : "starting"}});
    }
    json out{{"name", s.name},         {"replicas", s.replicas},
             {"devices", s.devices},   {"module_hash", s.module_hash},
             {"instances", inst}};
    MutexLock l(&pub_mu);
    // Energy per request (energy.h) over the last telemetry interval, weighted by the
    // instances' request rates.
    double rate = 0, joules = 0, cpu_us = 0;
    std::string source;
    for (const auto& [device, t] : telemetry) {
      for (const auto& [id, x] : t.instances) {
        if (x.service != s.name || x.energy.j_per_request <= 0) continue;
        // Idle instances (their last figures) count, with a tiny weight.
        const double w = std::max(x.rate, 1e-9);
        rate += w;
        joules += x.energy.j_per_request * w;
        cpu_us += x.mean_cpu_us * w;
        source = source.empty() || source == x.energy.source ? x.energy.source : "mixed";
      }
    }
    if (rate > 0) {
      out["energy"] = json{{"j_per_request", joules / rate},
                           {"cpu_us_per_request", cpu_us / rate},
                           {"watts", rate > 1e-6 ? joules : 0.0},
                           {"source", source}};
    }
    auto u = unplaceable.find(s.name);
    if (u != unplaceable.end()) out["problem"] = u->second;
    return out;
  }

  HttpResponse Deploy(const HttpRequest& req) {
    if (!leader.load()) return ErrorResponse(NotLeader());
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("manifest") ||
        !j["manifest"].is_string() || !j.contains("module_b64") || !j["module_b64"].is_string()) {
      return ErrorResponse(InvalidArgumentError(
          "deploy: body must be {\"manifest\": \"<yaml>\", \"module_b64\": \"...\", "
          "\"replicas\": N, \"devices\": [...]}"));
    }
    Result<Manifest> m = ParseManifest(j["manifest"].get<std::string>(), "manifest");
    if (!m.ok()) return ErrorResponse(m.status());
    Result<std::string> module = Base64Decode(j["module_b64"].get<std::string>());
    if (!module.ok()) return ErrorResponse(module.status().WithPrefix("module_b64"));
    if (module->size() < 8 || module->compare(0, 4, std::string("\0asm", 4)) != 0) {
      return ErrorResponse(InvalidArgumentError("deploy: the module is not WebAssembly"));
    }
    ServiceRecord s;
    s.name = m->name;
    s.manifest_yaml = j["manifest"].get<std::string>();
    s.module_hash = Sha256Hex(*module);
    s.replicas = static_cast<int>(m->replicas);
    s.memory_bytes = m->limits.memory_bytes();
    s.created_unix_ms = UnixMillis();
    if (j.contains("replicas")) {
      if (!j["replicas"].is_number_integer() || j["replicas"].get<int64_t>() < 0 ||
          j["replicas"].get<int64_t>() > 1000) {
        return ErrorResponse(InvalidArgumentError("deploy: 'replicas' must be 0..1000"));
      }
      s.replicas = j["replicas"].get<int>();
    }
    if (j.contains("devices")) {
      if (!j["devices"].is_array()) {
        return ErrorResponse(InvalidArgumentError("deploy: 'devices' must be a list of names"));
      }
      for (const json& d : j["devices"]) {
        if (!d.is_string() || !IsValidName(d.get<std::string>())) {
          return ErrorResponse(InvalidArgumentError("deploy: 'devices' must be a list of names"));
        }
        s.devices.push_back(d.get<std::string>());
      }
    }
    if (j.contains("placement")) {
      Result<PlacementHints> h = HintsFromJson(j["placement"].dump());
      if (!h.ok()) return ErrorResponse(h.status().WithPrefix("deploy"));
      if (!h->policy.empty()) s.placement = HintsToJson(*h);
    }
    Result<store::ClusterStore::ApplyResult> w = store->Apply(
        {}, {store::Op::Put(std::string(kModulesPrefix) + s.module_hash, *module),
             store::Op::Put(std::string(kServicesPrefix) + s.name, ToJson(s))});
    if (!w.ok()) return ErrorResponse(w.status().WithPrefix("deploy"));
    Event(fmt::format("service {} deployed: {} replicas, module {}", s.name, s.replicas,
                      s.module_hash.substr(0, 12)));
    Status round = WaitForRound(std::chrono::seconds(60));
    if (!round.ok()) return ErrorResponse(round);
    Result<ClusterView> view = LoadView();
    if (!view.ok()) return ErrorResponse(view.status());
    return HttpResponse::Json(201, ServiceJson(s, *view).dump());
  }

  HttpResponse Undeploy(const std::string& name) {
    if (!leader.load()) return ErrorResponse(NotLeader());
    Result<int64_t> n = store->Delete(std::string(kServicesPrefix) + name);
    if (!n.ok()) return ErrorResponse(n.status());
    if (*n == 0) return ErrorResponse(NotFoundError(fmt::format("no service '{}'", name)));
    Event(fmt::format("service {} removed", name));
    Status round = WaitForRound(std::chrono::seconds(60));
    if (!round.ok()) return ErrorResponse(round);
    return HttpResponse::Json(200, json{{"undeployed", name}}.dump());
  }

  HttpResponse Explain(const std::string& name) {
    Result<ClusterView> view = LoadView();
    if (!view.ok()) return ErrorResponse(view.status());
    auto it = view->services.find(name);
    if (it == view->services.end()) return ErrorResponse(NotFoundError("no service '" + name + "'"));
    ServiceRecord svc = it->second;
    bool spread = svc.placement.empty();
    if (spread) svc.placement = HintsToJson(PlacementHints{"balanced"});
    Result<placement::Decision> d = AdviseFor(*view, svc);
    if (!d.ok()) return ErrorResponse(d.status());
    std::string text = placement::ExplainDecision(*d);
    if (spread) {
      text = "(" + name + " is placed by the spread policy; this is what the balanced policy "
             "would choose — deploy with --policy to use it)\n" + text;
    }
    json running = json::array();
    for (const auto& [id, p] : view->instances) {
      if (p.record.service == name) running.push_back({{"id", id}, {"device", p.record.device}});
    }
    return HttpResponse::Json(200, json{{"service", name},
                                        {"policy", placement::PolicyName(d->policy)},
                                        {"device", d->device},
                                        {"slo_met", d->slo_met},
                                        {"instances", running},
                                        {"text", text}}
                                       .dump());
  }

  json AgentsJson(const ClusterView& view) {
    json out = json::array();
    MutexLock l(&pub_mu);
    int64_t now = MonoNanos();
    for (const auto& [device, a] : view.agents) {
      json j = json::parse(ToJson(a));
      auto hb = last_heartbeat_ns.find(device);
      if (hb != last_heartbeat_ns.end()) j["heartbeat_age_ms"] = (now - hb->second) / 1000000;
      auto t = telemetry.find(device);
      if (t != telemetry.end()) {
        j["cpu_util"] = t->second.cpu_util;
        j["rss_bytes"] = t->second.rss_bytes;
        json inst = json::object();
        for (const auto& [id, x] : t->second.instances) {
          inst[id] = json{{"service", x.service},         {"requests", x.requests},
                          {"failures", x.failures},       {"queued", x.queued},
                          {"memory_bytes", x.memory_bytes}, {"rate", x.rate},
                          {"mean_exec_us", x.mean_exec_us},
                          {"mean_cpu_us", x.mean_cpu_us},
                          {"j_per_request", x.energy.j_per_request},
                          {"energy_source", x.energy.source},
                          {"data_local_bytes", x.data_local_bytes},
                          {"data_remote_bytes", x.data_remote_bytes}};
        }
        j["instances"] = inst;
        json ds = json::object();
        for (const auto& [name, d] : t->second.datasets) {
          ds[name] = json{{"objects", d.objects}, {"bytes", d.bytes}, {"bytes_read", d.bytes_read}};
        }
        j["datasets"] = ds;
      }
      out.push_back(j);
    }
    return out;
  }

  HttpResponse ClusterDoc() {
    Result<ClusterView> view = LoadView();
    if (!view.ok()) return ErrorResponse(view.status());
    json services = json::array();
    for (const auto& [name, s] : view->services) services.push_back(ServiceJson(s, *view));
    json out{{"controller", options.id},
             {"leader", Leader()},
             {"store", store->Describe()},
             {"agents", AgentsJson(*view)},
             {"services", services}};
    json ev = json::array();
    {
      MutexLock l(&pub_mu);
      out["locations_version"] = version;
      for (const auto& [at, what] : events) ev.push_back(json{{"unix_ms", at}, {"event", what}});
    }
    out["events"] = ev;
    return HttpResponse::Json(200, out.dump());
  }

  void Locations(HttpRequest req, HttpResponder resp) {
    uint64_t after = 0;
    int64_t wait_ms = 0;
    std::string_view a = req.Query("after"), w = req.Query("wait_ms");
    if (!a.empty()) after = std::strtoull(std::string(a).c_str(), nullptr, 10);
    if (!w.empty()) wait_ms = std::clamp<int64_t>(std::strtoll(std::string(w).c_str(), nullptr, 10), 0, 60000);
    std::string doc;
    {
      MutexLock l(&pub_mu);
      if (version > after || wait_ms == 0) doc = locations_doc;
    }
    if (!doc.empty()) {
      resp.Respond(HttpResponse::Json(200, doc));
      return;
    }
    auto it = waiters.insert(waiters.end(), Waiter{after, resp, 0});
    it->timer = loop->loop()->RunAfter(std::chrono::milliseconds(wait_ms), [this, it] {
      std::string d;
      {
        MutexLock l(&pub_mu);
        d = locations_doc;
      }
      it->responder.Respond(HttpResponse::Json(200, d));
      waiters.erase(it);
    });
  }

  transport::HttpRouter Routes() {
    transport::HttpRouter r;
    r.Handle("GET", "/v1/info", [this](const HttpRequest&) {
      json j{{"id", options.id},
             {"leader", Leader()},
             {"is_leader", leader.load()},
             {"store", store->Describe()},
             {"version", kTernVersion}};
      return HttpResponse::Json(200, j.dump());
    });
    r.Handle("GET", "/v1/topology", [this](const HttpRequest&) {
      if (options.topology_json.empty()) {
        return ErrorResponse(NotFoundError("this controller was started without a topology"));
      }
      return HttpResponse::Json(200, options.topology_json);
    });
    r.HandleAsync("GET", "/v1/locations",
                  [this](HttpRequest req, HttpResponder resp) { Locations(std::move(req), resp); });
    r.HandleAsync("POST", "/v1/agents", [this](HttpRequest req, HttpResponder resp) {
      fast->Post([this, req = std::move(req), resp] { resp.Respond(Register(req)); });
    });
    r.HandleAsync("*", "/v1/agents/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);  // v1 agents DEVICE heartbeat
      if (p.size() == 4 && p[3] == "heartbeat" && req.method == "POST") {
        fast->Post([this, dev = p[2], req = std::move(req), resp] {
          resp.Respond(Heartbeat(dev, req));
        });
        return;
      }
      resp.Respond(ErrorResponse(NotFoundError(fmt::format("no route {} {}", req.method, req.path))));
    });
    r.HandleAsync("GET", "/v1/agents", [this](HttpRequest, HttpResponder resp) {
      slow->Post([this, resp] {
        Result<ClusterView> view = LoadView();
        resp.Respond(view.ok() ? HttpResponse::Json(200, AgentsJson(*view).dump())
                               : ErrorResponse(view.status()));
      });
    });
    r.HandleAsync("POST", "/v1/services", [this](HttpRequest req, HttpResponder resp) {
      slow->Post([this, req = std::move(req), resp] { resp.Respond(Deploy(req)); });
    });
    r.HandleAsync("GET", "/v1/services", [this](HttpRequest, HttpResponder resp) {
      slow->Post([this, resp] {
        Result<ClusterView> view = LoadView();
        if (!view.ok()) return resp.Respond(ErrorResponse(view.status()));
        json out = json::array();
        for (const auto& [name, s] : view->services) out.push_back(ServiceJson(s, *view));
        resp.Respond(HttpResponse::Json(200, out.dump()));
      });
    });
    r.HandleAsync("GET", "/v1/services/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);  // v1 services NAME explain
      if (p.size() != 4 || p[3] != "explain") {
        return resp.Respond(
            ErrorResponse(NotFoundError("use GET /v1/services/{name}/explain")));
      }
      slow->Post([this, name = p[2], resp] { resp.Respond(Explain(name)); });
    });
    r.HandleAsync("DELETE", "/v1/services/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);
      if (p.size() != 3) {
        return resp.Respond(ErrorResponse(NotFoundError("use DELETE /v1/services/{name}")));
      }
      slow->Post([this, name = p[2], resp] { resp.Respond(Undeploy(name)); });
    });
    r.HandleAsync("GET", "/v1/cluster", [this](HttpRequest, HttpResponder resp) {
      slow->Post([this, resp] { resp.Respond(ClusterDoc()); });
    });
    return r;
  }

  // Pokes the reconciler when an agent record goes (death) or comes.
  void WatchAgents() {
    Result<store::RangeResult> cur = store->Range(kAgentsPrefix);
    int64_t rev = cur.ok() ? cur->revision : 0;
    Result<std::unique_ptr<store::Watch>> w = store->WatchPrefix(
        kAgentsPrefix, rev, [this](const Status& s, std::vector<store::WatchEvent> events) {
          if (!s.ok()) {
            TERN_LOG(WARN) << "watching agents: " << s << " (falling back to periodic checks)";
            return;
          }
          for (const store::WatchEvent& e : events) {
            if (e.type != store::WatchEvent::Type::kDelete) continue;
            std::string device(KeyName(e.kv.key));
            int64_t age_ms = -1;
            {
              MutexLock l(&pub_mu);
              auto hb = last_heartbeat_ns.find(device);
              if (hb != last_heartbeat_ns.end()) age_ms = (MonoNanos() - hb->second) / 1000000;
            }
            Event(age_ms >= 0 ? fmt::format("agent {} is gone (last heartbeat {} ms ago)", device,
                                            age_ms)
                              : fmt::format("agent {} is gone", device));
          }
          Poke();
        });
    if (w.ok()) {
      agents_watch = std::move(*w);
    } else {
      TERN_LOG(WARN) << "watching agents: " << w.status() << " (falling back to periodic checks)";
    }
  }
};

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Controller>> Controller::Start(store::ClusterStore* store,
                                                      const ControllerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->store = store;
  impl->options = options;
  impl->fast = std::make_unique<TaskThread>();
  impl->slow = std::make_unique<TaskThread>();
  TERN_ASSIGN_OR_RETURN(impl->loop, transport::EventLoopThread::Create());
  transport::HttpServerOptions ho;
  ho.host = options.host;
  ho.port = options.port;
  TERN_ASSIGN_OR_RETURN(impl->http,
                        transport::HttpServer::Start(impl->loop->loop(), ho, impl->Routes()));
  impl->WatchAgents();
  impl->Lead();  // before the reconcile thread exists: a lone controller leads at once
  impl->loop->Start();
  Impl* raw = impl.get();
  impl->reconciler = std::thread([raw] { raw->ReconcileLoop(); });
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

Controller::~Controller() {
  Impl* i = impl_.get();
  i->agents_watch.reset();
  {
    MutexLock l(&i->rmu);
    i->stopping = true;
    i->rcv.SignalAll();
  }
  i->reconciler.join();
  i->fast.reset();
  i->slow.reset();
  i->loop->loop()->RunSync([i] {
    for (auto& w : i->waiters) i->loop->loop()->CancelTimer(w.timer);
    i->waiters.clear();
    i->http.reset();
  });
  i->loop->Stop();
  i->election.reset();  // resigns
  if (i->leader_lease != 0) (void)i->store->Revoke(i->leader_lease);
}

uint16_t Controller::port() const { return impl_->http->port(); }
bool Controller::is_leader() const { return impl_->leader.load(); }

}  // namespace tern::controller
