#include "controller/controller.h"

#include <fmt/format.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "client/agent_client.h"
#include "controller/advisor.h"
#include "controller/dashboard.h"
#include "controller/model.h"
#include "controller/energy.h"
#include "controller/plan.h"
#include "core/base64.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/ids.h"
#include "core/latency_histogram.h"
#include "core/logging.h"
#include "core/manifest.h"
#include "core/mutex.h"
#include "core/task_thread.h"
#include "core/version.h"
#include "dataplane/location.h"
#include "placement/explain.h"
#include "store/election.h"
#include "store/store.h"
#include "storage/journal.h"
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

// The number of the last whole record in concatenated framed journal records (what a
// keeper's GET /v1/journals/ID returns); 0 when there is none.
uint64_t LastRecordSeq(std::string_view records) {
  uint64_t last = 0;
  for (size_t off = 0;;) {
    const size_t at = off;
    Result<std::optional<std::string_view>> body =
        storage::NextFramed(storage::kJournalRecordMagic, records, &off);
    if (!body.ok() || !body->has_value()) return last;
    Result<storage::RecordHeader> h = storage::ParseRecordHeader(records.substr(at, off - at));
    if (h.ok()) last = h->seq;
  }
}

// What an agent reported in its last two heartbeats, for rates.
struct Telemetry {
  int64_t at_ns = 0;         // MonoNanos() when received
  int64_t cpu_ns = 0;        // the agent process's CPU time
  std::optional<uint64_t> rapl_uj;  // package energy counter, where the agent reads RAPL
  uint64_t rss_bytes = 0;
  double cpu_util = 0;       // of its cores, over the last interval
  // Core-equivalents its guests kept busy over the last interval: the CPU time of their
  // requests (the placement engine's utilization of the offered cores; the agent's own
  // work, serving datasets included, is the device's reserved share).
  double guest_cores = 0;
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
    // Each request's latency at its agent (arrival to reply ready), cumulative: bucket → count
    // (core/latency_histogram.h), and the p99 over the last interval with requests (a
    // lower bound: its bucket's; -1 = none yet).
    std::map<int, uint64_t> latency_hist;
    double p99_us = -1;
    std::string last_trace_id;  // of the last request it served, as of the heartbeat
    // Durable instances: the keepers that get its journal records, those that dropped
    // out (failed while the other acknowledged), and the replies acknowledged while
    // fewer than two keepers held their record.
    std::vector<std::string> journal_keepers, journal_out;
    uint64_t journal_degraded = 0;
    uint64_t journal_seq = 0;  // its last record
  };
  std::map<std::string, Inst> instances;
  std::set<std::string> previous_ids;  // the instances of the heartbeat before
  bool two = false;                    // there was a heartbeat before (of this boot)
  int64_t previous_at_ns = 0;          // when it arrived
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
  std::unique_ptr<TaskThread> ops;   // migrations and drains (they take a while)

  // Operations and the planner. A reconcile round holds round_mu from loading its view to
  // executing its plan; an operation holds it while it marks instances and changes their
  // records, so a plan sees both the marks and the records, or neither.
  Mutex round_mu;
  Mutex ops_mu;
  std::set<std::string> busy GUARDED_BY(ops_mu);     // ClusterView::busy
  std::set<std::string> leaving GUARDED_BY(ops_mu);  // ClusterView::leaving
  // Drains, by device: what they did so far (GET /v1/devices/{d}/drain).
  struct DrainStep {
    std::string instance, from, to, how, message;
    bool ok = false;
    json report;  // the migration report, for stateful instances
  };
  struct DrainProgress {
    int64_t started_unix_ms = 0;
    size_t total = 0;
    bool done = false;
    std::vector<DrainStep> steps;
  };
  std::map<std::string, DrainProgress> drains GUARDED_BY(ops_mu);

  // The checkpointer thread (periodic snapshots of stateful instances).
  std::thread checkpointer;
  Mutex ck_mu;
  CondVar ck_cv;
  bool ck_stop GUARDED_BY(ck_mu) = false;
  std::map<std::string, std::unique_ptr<client::AgentClient>> ck_conns;  // checkpointer only
  std::map<std::string, int64_t> ck_attempt_ms;  // checkpointer only: last try per instance
  // Checkpointer only: agents (device@boot) that refused a copy because they keep no
  // datasets; not sent snapshots again until they restart.
  std::set<std::string> ck_no_datasets;
  // Durable instances: the keeper last pushed to each one's agent, as
  // "<agent>@<boot> <keeper>@<boot>" (checkpointer only).
  std::map<std::string, std::string> keeper_pushed;
  // Durable instances (checkpointer only): when the last base checkpoint was recorded
  // (MonoNanos; a heartbeat older than it says nothing of the keepers it assigned), and
  // the last reason given for assigning keepers again (said once).
  std::map<std::string, int64_t> ck_taken_ns;
  std::map<std::string, std::string> replace_said;

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
  // Reconcile thread: each instance record's epoch and when this controller first saw it.
  std::map<std::string, std::pair<int64_t, int64_t>> record_seen;
  Mutex backoff_mu;
  std::map<std::pair<std::string, std::string>, int64_t> backoff_until GUARDED_BY(backoff_mu);
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
  // Keepers reported out of a durable instance's journal to this controller (journal-out):
  // instance -> keeper -> when (MonoNanos). The checkpointer assigns keepers again at
  // once instead of waiting for the agent's next heartbeat to say so.
  std::map<std::string, std::map<std::string, int64_t>> journal_out_at GUARDED_BY(pub_mu);
  // The last version that woke long polls, how many it woke, and how many polls asked for
  // a newer one since (WaitForPollers).
  uint64_t woken_version GUARDED_BY(pub_mu) = 0;
  size_t woken_count GUARDED_BY(pub_mu) = 0;
  size_t repolled GUARDED_BY(pub_mu) = 0;
  // Each live device's recent CPU utilization samples, oldest first (the rebalancer's
  // window).
  std::map<std::string, std::deque<double>> util_history GUARDED_BY(pub_mu);
  // Each instance's p99 per heartbeat interval in which it served requests, oldest first,
  // on the device that reported them (a move starts a new history): the SLO window.
  struct P99History {
    std::string device;
    std::deque<double> us;
  };
  std::map<std::string, P99History> p99_history GUARDED_BY(pub_mu);
  // When the rebalancer last said an instance misses its SLO with nowhere to go
  // (reconcile thread only): said again after a minute at most.
  std::map<std::string, int64_t> slo_stuck_said_ms;
  // When each instance last moved (unix ms; migrations, replacements): the cool-down.
  std::map<std::string, int64_t> last_moved_ms GUARDED_BY(ops_mu);
  std::atomic<bool> rebalancing{false};  // a rebalancer move is queued or running

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
    size_t answered = 0;
    for (auto it = waiters.begin(); it != waiters.end();) {
      if (v > it->after) {
        loop->loop()->CancelTimer(it->timer);
        it->responder.Respond(HttpResponse::Json(200, doc));
        it = waiters.erase(it);
        ++answered;
      } else {
        ++it;
      }
    }
    MutexLock l(&pub_mu);
    woken_version = v;
    woken_count = answered;
    repolled = 0;
  }

  uint64_t PublishedVersion() {
    MutexLock l(&pub_mu);
    return version;
  }

  // Ops thread: waits (up to `timeout`) until the long pollers (gateways) that were woken
  // by a version >= v have polled again for a newer one, i.e. applied that table.
  void WaitForPollers(uint64_t v, std::chrono::milliseconds timeout) {
    int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
    while (MonoNanos() < deadline) {
      {
        MutexLock l(&pub_mu);
        if (woken_version >= v && repolled >= woken_count) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
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
      if (stopping) return UnavailableError("the controller is stopping");
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
        MutexLock rl(&round_mu);
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
    TERN_ASSIGN_OR_RETURN(store::RangeResult drained, store->Range(kDrainedPrefix));
    for (const store::KeyValue& kv : drained.kvs)
      view.draining.insert(std::string(KeyName(kv.key)));
    TERN_ASSIGN_OR_RETURN(store::RangeResult cks, store->Range(kCheckpointsPrefix));
    for (const store::KeyValue& kv : cks.kvs) {
      Result<CheckpointRecord> r = CheckpointFromJson(kv.value, kv.key);
      if (!r.ok()) {
        if (!Quiet(__LINE__, 10))
          TERN_LOG(WARN) << "skipping a bad checkpoint record: " << r.status();
        continue;
      }
      std::string id = r->id;
      view.checkpoints[id] = std::move(*r);
    }
    {
      MutexLock l(&ops_mu);
      view.busy = busy;
      view.leaving = leaving;
    }
    int64_t now = MonoNanos();
    MutexLock bl(&backoff_mu);
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

  // The "service@module_hash" tags an agent's GET /v1/status lists.
  static std::set<std::string> DeployedTags(std::string_view status_json) {
    std::set<std::string> out;
    json j = json::parse(status_json, nullptr, false);
    if (j.is_discarded() || !j.contains("services") || !j["services"].is_array()) return out;
    for (const json& s : j["services"]) {
      if (s.contains("manifest") && s["manifest"].contains("name") && s.contains("module_hash")) {
        out.insert(s["manifest"]["name"].get<std::string>() + "@" +
                   s["module_hash"].get<std::string>());
      }
    }
    return out;
  }

  // Deploys `svc` on the agent `client` talks to unless it has it already (checked on the
  // agent: a redeploy would stop the instances it runs), without starting instances.
  Status DeployIfMissing(client::AgentClient* client, const ServiceRecord& svc) {
    TERN_ASSIGN_OR_RETURN(std::string st, client->StatusJson());
    if (DeployedTags(st).count(svc.name + "@" + svc.module_hash)) return Status::Ok();
    TERN_ASSIGN_OR_RETURN(std::optional<store::KeyValue> module,
                          store->Get(std::string(kModulesPrefix) + svc.module_hash));
    if (!module) {
      return DataLossError(fmt::format("the module {} of service {} is missing from the store",
                                       svc.module_hash.substr(0, 12), svc.name));
    }
    return client->Deploy(svc.manifest_yaml, module->value, /*start_instances=*/false).status();
  }

  Status EnsureDeployed(AgentConn* c, const ServiceRecord& svc) {
    std::string tag = svc.name + "@" + svc.module_hash;
    if (c->deployed.count(tag)) return Status::Ok();
    // Another thread (a migration, a drain) may have deployed it meanwhile: ask.
    if (Result<std::string> st = c->client->StatusJson(); st.ok()) {
      c->deployed = DeployedTags(*st);
      if (c->deployed.count(tag)) return Status::Ok();
    }
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
    bool created = false;
    if (s.ok()) {
      Result<std::string> id = c->client->StartInstance(svc.name, rec.id);
      created = id.ok();
      s = id.ok() || id.status().code() == StatusCode::kAlreadyExists ? Status::Ok()
                                                                       : id.status();
    }
    // A stateful instance that has a checkpoint gets its state back before anyone can
    // route to it (its location is published only once the record carries the boot).
    auto ck = view.checkpoints.find(rec.id);
    if (s.ok() && created && svc.stateful && ck != view.checkpoints.end()) {
      s = RestoreCheckpoint(view, ck->second, c, rec.device);
      if (!s.ok()) (void)c->client->StopInstance(rec.id);
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
    MutexLock bl(&backoff_mu);
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
        DropCheckpoint(view, a.instance);
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
        DropCheckpoint(view, a.instance);
        Event(fmt::format("stopped {} on {}: {}", a.instance, a.device, a.reason));
        return;
      }
      case Action::Kind::kStart: {
        const PlacedInstance& p = view.instances.at(a.instance);
        Status s = StartOn(view, p.record, p.epoch);
        if (!s.ok()) {
          Fail(a, s);
          // Placed again elsewhere next round: a checkpointed instance keeps its record (and
          // id) so that it is restored there; the others are replaced.
          if (!view.checkpoints.count(a.instance)) (void)store->Delete(key);
          return;
        }
        Event(fmt::format("started {} on {} ({})", a.instance, a.device, a.reason));
        return;
      }
      case Action::Kind::kRestore: {
        const PlacedInstance& p = view.instances.at(a.instance);
        InstanceRecord rec = p.record;
        rec.device = a.device;
        rec.boot.clear();
        Result<store::ClusterStore::ApplyResult> moved =
            store->Apply({store::Compare{key, p.epoch}}, {store::Op::Put(key, ToJson(rec))});
        if (!moved.ok() || !moved->applied) return;  // changed meanwhile: next round
        Status s = StartOn(view, rec, moved->revision);
        if (!s.ok()) {
          Fail(a, s);
          return;
        }
        Event(fmt::format("re-placed {} of {} on {} ({})", a.instance, a.service, a.device,
                          a.reason));
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

  // The placement engine's inputs from telemetry: core-equivalents busy with guests per
  // device, datasets kept, and per-service measurements.
  void EngineInputs(const ClusterView& view, std::map<std::string, double>* util,
                    std::map<std::string, std::vector<std::string>>* datasets,
                    std::map<std::string, ServiceMeasurement>* measured) {
    MutexLock l(&pub_mu);
    for (const auto& [device, t] : telemetry) {
      if (!view.agents.count(device)) continue;
      (*util)[device] = t.guest_cores;
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

  // A service's SLO (p99 target, µs; 0 = none): the deploy's placement hint, else its
  // manifest's `slo_p99_ms`.
  static double SloOf(const ServiceRecord& svc) {
    Result<PlacementHints> hints = HintsFromJson(svc.placement);
    if (hints.ok() && hints->slo_p99_us > 0) return hints->slo_p99_us;
    return static_cast<double>(svc.slo_p99_us);
  }

  // Reconcile thread, after a round: asks PlanRebalance for one move and queues it on the
  // ops thread (one at a time).
  void MaybeRebalance(const ClusterView& view) {
    if (!options.rebalance || rebalancing.load()) return;
    RebalanceInput in;
    in.now_ms = UnixMillis();
    {
      MutexLock l(&pub_mu);
      for (const auto& [device, h] : util_history) {
        if (view.agents.count(device)) in.util[device] = std::vector<double>(h.begin(), h.end());
      }
      for (const auto& [device, t] : telemetry) {
        for (const auto& [id, x] : t.instances) in.rate[id] = x.rate;
      }
    }
    {
      MutexLock l(&ops_mu);
      in.last_moved_ms = last_moved_ms;
    }
    {
      MutexLock l(&pub_mu);
      for (auto it = p99_history.begin(); it != p99_history.end();) {
        it = view.instances.count(it->first) ? std::next(it) : p99_history.erase(it);
      }
    }
    // What the engine predicts for each instance of a service it places: where it runs
    // and the cheapest feasible other device, by the policy's measure; and, for a service
    // with an SLO (its placement hint, else its manifest's), the p99 on every device that
    // fits it.
    for (const auto& [name, svc] : view.services) {
      const double slo_us = SloOf(svc);
      if (svc.placement.empty() && slo_us <= 0) continue;
      Result<placement::Decision> d = AdviseFor(view, svc);
      if (!d.ok()) continue;
      bool energy = d->policy == placement::Policy::kEnergy;
      auto cost = [&](const placement::Prediction& p) {
        return energy ? p.energy_j_per_request : p.latency_p99_us;
      };
      std::vector<RebalanceInput::Predicted> predicted;  // lowest p99 first
      for (const placement::Candidate& c : d->candidates) {
        const placement::Prediction& p = c.prediction;
        predicted.push_back({p.device, p.latency_p99_us, p.fits ? "" : p.why_not});
      }
      std::stable_sort(predicted.begin(), predicted.end(),
                       [](const auto& a, const auto& b) { return a.p99_us < b.p99_us; });
      for (const auto& [id, p] : view.instances) {
        if (p.record.service != name) continue;
        if (slo_us > 0) {
          RebalanceInput::Slo& slo = in.slo[id];
          slo.target_us = slo_us;
          slo.predicted = predicted;
          MutexLock l(&pub_mu);
          auto h = p99_history.find(id);
          if (h != p99_history.end() && h->second.device == p.record.device) {
            slo.p99_us.assign(h->second.us.begin(), h->second.us.end());
          }
        }
        if (svc.placement.empty()) continue;
        RebalanceInput::Alternative alt;
        bool have_current = false;
        for (const placement::Candidate& c : d->candidates) {
          if (c.prediction.device == p.record.device) {
            alt.current = cost(c.prediction);
            have_current = true;
          } else if (c.prediction.feasible &&
                     (alt.device.empty() || cost(c.prediction) < alt.cost)) {
            alt.device = c.prediction.device;
            alt.cost = cost(c.prediction);
          }
        }
        if (have_current && !alt.device.empty() && std::isfinite(alt.current)) in.cheaper[id] = alt;
      }
    }
    std::map<std::string, std::string> stuck;
    std::optional<Move> m = PlanRebalance(view, in, options.rebalance_options, &stuck);
    for (const auto& [id, why] : stuck) {
      int64_t& said = slo_stuck_said_ms[id];
      if (in.now_ms - said < 60000) continue;
      said = in.now_ms;
      Event(fmt::format("rebalancing: not moving {}: {}", id, why));
    }
    for (auto it = slo_stuck_said_ms.begin(); it != slo_stuck_said_ms.end();) {
      it = view.instances.count(it->first) ? std::next(it) : slo_stuck_said_ms.erase(it);
    }
    if (!m) return;
    bool stateful = view.services.at(view.instances.at(m->instance).record.service).stateful;
    rebalancing = true;
    Event(fmt::format("rebalancing: moving {} from {} to {}: {}", m->instance, m->from, m->to,
                      m->reason));
    ops->Post([this, m = *m, stateful] {
      if (stateful) {
        (void)MigrateInstance(m.instance, m.to, json::object(), "rebalance");
      } else {
        Result<std::pair<std::string, std::string>> r =
            ReplaceInstance(m.instance, "rebalance", m.to);
        if (!r.ok()) {
          Event(fmt::format("rebalancing {} failed: {}", m.instance, r.status().message()));
        }
      }
      rebalancing = false;
    });
  }

  // Reconcile thread: records where the agents say instances moved (MovedInstances).
  // Returns whether it changed a record.
  bool FollowMoves(const ClusterView& view) {
    std::map<std::string, Sightings> seen;
    {
      MutexLock l(&pub_mu);
      for (const auto& [device, t] : telemetry) {
        Sightings& s = seen[device];
        for (const auto& [id, x] : t.instances) s.last.insert(id);
        s.previous = t.previous_ids;
        s.two = t.two;
        s.previous_at_ns = t.previous_at_ns;
      }
    }
    // When this controller first saw each record as it is now.
    int64_t now = MonoNanos();
    std::map<std::string, int64_t> since;
    for (const auto& [id, p] : view.instances) {
      auto [it, fresh] = record_seen.try_emplace(id, p.epoch, now);
      if (!fresh && it->second.first != p.epoch) it->second = {p.epoch, now};
      since[id] = it->second.second;
    }
    for (auto it = record_seen.begin(); it != record_seen.end();) {
      it = view.instances.count(it->first) ? std::next(it) : record_seen.erase(it);
    }
    bool changed = false;
    for (const auto& [id, device] : MovedInstances(view, seen, since)) {
      const PlacedInstance& p = view.instances.at(id);
      InstanceRecord rec = p.record;
      rec.device = device;
      rec.boot = view.agents.at(device).boot;
      std::string key = std::string(kInstancesPrefix) + id;
      Result<store::ClusterStore::ApplyResult> r =
          store->Apply({store::Compare{key, p.epoch}}, {store::Op::Put(key, ToJson(rec))});
      if (!r.ok() || !r->applied) continue;
      changed = true;
      Event(fmt::format("{} runs on {}, not on {} (it moved while no controller followed; both "
                        "agents say so): recorded there",
                        id, device, p.record.device));
    }
    return changed;
  }

  Status Reconcile() {
    TERN_ASSIGN_OR_RETURN(ClusterView view, LoadView());
    if (FollowMoves(view)) {
      TERN_ASSIGN_OR_RETURN(view, LoadView());
    }
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
    MaybeRebalance(view);
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

  // ---- checkpoints ----------------------------------------------------------------------

  static std::string ClockTime(int64_t unix_ms) {
    time_t secs = static_cast<time_t>(unix_ms / 1000);
    struct tm tm_utc;
    gmtime_r(&secs, &tm_utc);
    return fmt::format("{:02}:{:02}:{:02}.{:03} UTC", tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec,
                       unix_ms % 1000);
  }

  // Reconcile thread: loads the checkpoint `ck` into the (just started, not yet routed)
  // instance on `device`'s agent `c`, from the newest copy whose keeper is alive and
  // whose bytes pass the dataset store's checksums (an older copy when the newest cannot
  // be read). When no keeper of a copy is alive, the instance starts with fresh state
  // and the event says so.
  Status RestoreCheckpoint(const ClusterView& view, const CheckpointRecord& ck, AgentConn* c,
                           const std::string& device) {
    std::vector<const CheckpointRecord::Copy*> alive;
    std::vector<std::string> gone;
    for (const CheckpointRecord::Copy& copy : ck.copies) {
      if (view.agents.count(copy.device)) {
        alive.push_back(&copy);
      } else {
        gone.push_back(copy.device);
      }
    }
    if (alive.empty()) {
      Event(
          fmt::format("the checkpoint of {} was kept by {}, which {} gone: {} starts on {} "
                      "with fresh state (its state is lost)",
                      ck.id, fmt::join(gone, " and "), gone.size() > 1 ? "are all" : "is", ck.id,
                      device));
      (void)store->Delete(std::string(kCheckpointsPrefix) + ck.id);
      if (ck.durable) DropJournalOut(ck.id);
      return Status::Ok();
    }
    if (ck.durable) return RestoreFromJournal(view, ck, alive, gone, c, device);
    std::stable_sort(alive.begin(), alive.end(),
                     [](const auto* x, const auto* y) { return x->unix_ms > y->unix_ms; });
    std::vector<std::string> why;
    for (const CheckpointRecord::Copy* copy : alive) {
      Result<AgentConn*> k = Conn(view.agents.at(copy->device));
      Result<std::string> bytes =
          k.ok() ? (*k)->client->ReadObject(std::string(kCheckpointDataset), ck.id, 0, copy->bytes)
                 : Result<std::string>(k.status());
      if (!bytes.ok()) {
        why.push_back(fmt::format("{}: {}", copy->device, bytes.status().message()));
        continue;
      }
      Status s = c->client->Restore(ck.id, *bytes);
      if (!s.ok()) {
        return Status(s.code(),
                      fmt::format("restoring {} from its checkpoint: {}", ck.id, s.message()));
      }
      double lost_s =
          static_cast<double>(std::max<int64_t>(UnixMillis() - copy->unix_ms, 0)) / 1000;
      std::string also;
      if (!gone.empty()) also = fmt::format("; {} gone", fmt::join(gone, ", "));
      if (!why.empty()) also += fmt::format("; unreadable: {}", fmt::join(why, "; "));
      Event(fmt::format("restored {} on {} from the checkpoint of {} kept by {} (state of the "
                        "last {:.1f} s lost{})",
                        ck.id, device, ClockTime(copy->unix_ms), copy->device, lost_s, also));
      return Status::Ok();
    }
    return UnavailableError(fmt::format("reading the checkpoint of {}: {}", ck.id,
                                        fmt::join(why, "; ")));
  }

  // Reconcile thread: a durable instance's restore. Each keeper's journal starts with a
  // full record (its last base checkpoint) and holds the records after it; a record
  // acknowledged to a client is on every keeper that had not dropped out. Record
  // numbers are never reused, so the journal whose last record has the highest number
  // got the latest record: the new instance gets that one (another readable one when
  // it cannot be applied), then the same keepers. A record on one keeper only was never
  // acknowledged (or acknowledged in degraded mode, logged): replaying it is allowed —
  // its client never saw the reply — and its dedup entry comes with it, so a retry is
  // answered from the table, not run twice.
  Status RestoreFromJournal(const ClusterView& view, const CheckpointRecord& ck,
                            const std::vector<const CheckpointRecord::Copy*>& alive,
                            const std::vector<std::string>& gone, AgentConn* c,
                            const std::string& device) {
    struct Journal {
      const AgentRecord* keeper;
      std::string records;
      uint64_t last = 0;
    };
    std::vector<Journal> journals;
    std::vector<std::string> why;
    bool any_present = false;
    for (const CheckpointRecord::Copy* copy : alive) {
      const AgentRecord& keeper = view.agents.at(copy->device);
      Result<AgentConn*> k = Conn(keeper);
      Result<std::string> records =
          k.ok() ? (*k)->client->ReadJournal(ck.id, 0) : Result<std::string>(k.status());
      if (!records.ok()) {
        any_present |= records.status().code() != StatusCode::kNotFound;
        why.push_back(fmt::format("{}: {}", copy->device, records.status().message()));
        continue;
      }
      any_present = true;
      const uint64_t last = LastRecordSeq(*records);
      journals.push_back({&keeper, std::move(*records), last});
    }
    if (journals.empty()) {
      if (any_present) {
        return UnavailableError(fmt::format("reading the journal of {}: {}", ck.id,
                                            fmt::join(why, "; ")));
      }
      // The keepers live but lost the journal (their disks were replaced): nothing to
      // restore from, as when the keepers are gone.
      Event(fmt::format("the journal of {} is gone from {}: {} starts on {} with fresh state "
                        "(its state is lost)",
                        ck.id, fmt::join(why, "; "), ck.id, device));
      (void)store->Delete(std::string(kCheckpointsPrefix) + ck.id);
      DropJournalOut(ck.id);
      return Status::Ok();
    }
    std::stable_sort(journals.begin(), journals.end(),
                     [](const Journal& x, const Journal& y) { return x.last > y.last; });
    for (size_t n = 0; n < journals.size(); ++n) {
      const Journal& j = journals[n];
      Result<std::string> rep = c->client->ReplayJournal(ck.id, 0, j.records);
      if (!rep.ok()) {
        if (n + 1 == journals.size()) {
          return Status(rep.status().code(), fmt::format("restoring {} from its journal: {}",
                                                         ck.id, rep.status().message()));
        }
        why.push_back(fmt::format("{}: {}", j.keeper->device, rep.status().message()));
        continue;
      }
      json r = json::parse(*rep, nullptr, false);
      // The same keepers, but not one on the device it now runs on (the next checkpoint
      // round replaces that one: a device cannot keep the journal of its own instance).
      std::vector<std::pair<std::string, std::string>> keepers;
      for (const Journal& o : journals) {
        if (o.keeper->device != device) keepers.emplace_back(o.keeper->device, o.keeper->tcp);
      }
      if (!keepers.empty()) {
        Status s = c->client->SetKeepers(ck.id, keepers);
        if (!s.ok()) return s.WithPrefix("restoring " + ck.id + ": setting its keepers");
      }
      const uint64_t ignored = r.is_object() ? r.value("ignored_bytes", uint64_t{0}) : 0;
      const uint64_t records = r.is_object() ? r.value("records", uint64_t{0}) : 0;
      std::vector<std::string> others;
      for (const Journal& o : journals) {
        if (&o != &j) others.push_back(fmt::format("{} had up to #{}", o.keeper->device, o.last));
      }
      for (const std::string& g : gone) others.push_back(g + " gone");
      for (const std::string& w : why) others.push_back("unreadable: " + w);
      // An acknowledged record is on every keeper that had not dropped out. The agent
      // records a drop-out here before it acknowledges anything without that keeper; one
      // whose journal started afresh since (a full record after the record it missed:
      // keepers assigned again) is whole again. Then what the agent acknowledged after
      // the last record read, on the other keepers alone, is lost: how much, the agent's
      // last heartbeat bounds from below (it may have acknowledged more since).
      const std::map<std::string, uint64_t> out = JournalOutOf(ck.id);
      Result<storage::RecordHeader> first = storage::ParseRecordHeader(j.records);
      const uint64_t first_seq = first.ok() ? first->seq : 0;
      auto dropped = out.find(j.keeper->device);
      const bool stale = dropped != out.end() && first_seq <= dropped->second;
      bool was_out = false;
      uint64_t reported_seq = 0;
      {
        MutexLock l(&pub_mu);
        if (const Telemetry::Inst* x = NewestInstTelemetry(ck.id, device)) {
          was_out = std::count(x->journal_out.begin(), x->journal_out.end(), j.keeper->device) > 0;
          reported_seq = x->journal_seq;
        }
      }
      const uint64_t last = r.is_object() ? r.value("seq", uint64_t{0}) : j.last;
      std::string what = "durable: 0 acknowledged requests lost";
      auto svc = view.services.find(ck.service);
      const bool strict = svc != view.services.end() && svc->second.durable_strict;
      if (stale && strict) {
        // Its agent acknowledged nothing without this keeper: the request whose record
        // it missed failed (outcome unknown), and later writes failed until the keepers
        // were assigned again, which would have started its journal afresh.
        what = fmt::format(
            "durable: strict: {} dropped out of its journal at #{}, and nothing was "
            "acknowledged without it: 0 acknowledged requests lost (#{}'s request failed "
            "with an unknown outcome)",
            j.keeper->device, dropped->second, dropped->second);
      } else if (stale) {
        what = fmt::format(
            "NOT complete: {} dropped out of its journal at #{}, so requests acknowledged "
            "after #{} may be lost: {}",
            j.keeper->device, dropped->second, last,
            reported_seq > last
                ? fmt::format("up to {} by its agent's last heartbeat (#{}), and any since",
                              reported_seq - last, reported_seq)
                : std::string("how many, its agent's last heartbeat does not tell (it came "
                              "before them)"));
        TERN_LOG(WARN) << "restore of " << ck.id << " from " << j.keeper->device
                       << ", which dropped out of its journal at #" << dropped->second
                       << ": acknowledged requests may be lost";
      } else if (ignored != 0) {
        what = fmt::format("a damaged tail of {} bytes was ignored", ignored);
      } else if (was_out) {
        what = fmt::format("{} had dropped out of its journal: what was acknowledged since, with "
                           "one copy, is lost",
                           j.keeper->device);
      }
      if (ignored != 0 && stale) what += fmt::format("; a damaged tail of {} bytes was ignored", ignored);
      // The restored instance's journal goes on from what was read: its keepers' old
      // drop-outs say nothing about it.
      DropJournalOut(ck.id);
      Event(fmt::format(
          "restored {} on {} from its journal on {}: a full record and {} after it, up to #{} "
          "({}){}",
          ck.id, device, j.keeper->device, records > 0 ? records - 1 : 0,
          r.is_object() ? r.value("seq", uint64_t{0}) : 0, what,
          others.empty() ? "" : fmt::format("; {}", fmt::join(others, "; "))));
      return Status::Ok();
    }
    return InternalError("unreachable");
  }

  // Drops an instance's checkpoint (record and every copy), best effort.
  void DropCheckpoint(const ClusterView& view, const std::string& id) {
    auto ck = view.checkpoints.find(id);
    if (ck == view.checkpoints.end()) return;
    (void)store->Delete(std::string(kCheckpointsPrefix) + id);
    if (ck->second.durable) DropJournalOut(id);
    for (const CheckpointRecord::Copy& copy : ck->second.copies) {
      auto keeper = view.agents.find(copy.device);
      if (keeper == view.agents.end()) continue;
      if (Result<AgentConn*> k = Conn(keeper->second); k.ok()) {
        RemoveCheckpointData((*k)->client.get(), ck->second.durable, id);
      }
    }
  }

  // The copy of a checkpoint on one keeper: the object, or a durable instance's journal.
  static void RemoveCheckpointData(client::AgentClient* keeper, bool durable,
                                   const std::string& id) {
    if (durable) {
      (void)keeper->DropJournal(id);
    } else {
      (void)keeper->RemoveObject(std::string(kCheckpointDataset), id);
    }
  }

  // Checkpointer thread: a client of `a`'s admin API, made anew when it restarted.
  Result<client::AgentClient*> CkClient(const AgentRecord& a) {
    std::string tag = a.device + "@" + a.boot;
    auto it = ck_conns.find(tag);
    if (it != ck_conns.end()) return it->second.get();
    for (auto i = ck_conns.begin(); i != ck_conns.end();) {
      i = i->first.rfind(a.device + "@", 0) == 0 ? ck_conns.erase(i) : std::next(i);
    }
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<client::AgentClient> c,
                          client::AgentClient::Connect(a.admin, std::chrono::seconds(10)));
    return (ck_conns[tag] = std::move(c)).get();
  }

  // Checkpointer thread: removes the copy of instance `id`'s checkpoint that `device`
  // keeps, best effort.
  void RemoveCopy(const ClusterView& view, const std::string& device, const std::string& id,
                  bool durable = false) {
    auto keeper = view.agents.find(device);
    if (keeper == view.agents.end()) return;
    if (Result<client::AgentClient*> k = CkClient(keeper->second); k.ok()) {
      RemoveCheckpointData(*k, durable, id);
    }
  }

  // Where `rec`'s checkpoint may be kept, best first: the devices that keep its copies now
  // (if alive), then csd/cpm devices, then any other — never the one it runs on.
  static std::vector<const AgentRecord*> KeeperCandidates(const ClusterView& view,
                                                          const InstanceRecord& rec) {
    std::vector<const AgentRecord*> candidates;
    auto old = view.checkpoints.find(rec.id);
    auto add = [&](const AgentRecord& r) {
      if (r.device == rec.device) return;
      for (const AgentRecord* c : candidates) {
        if (c->device == r.device) return;
      }
      candidates.push_back(&r);
    };
    if (old != view.checkpoints.end()) {
      for (const CheckpointRecord::Copy& copy : old->second.copies) {
        if (view.agents.count(copy.device)) add(view.agents.at(copy.device));
      }
    }
    for (const auto& [d, r] : view.agents) {
      if (r.kind == "csd" || r.kind == "cpm") add(r);
    }
    for (const auto& [d, r] : view.agents) add(r);
    return candidates;
  }

  // Up to `n` keepers from `candidates` (best first): `first` (those that already took
  // this checkpoint) then others not in `skip`, the second on another host than the
  // first where one can be — the rule of snapshot copies (TakeCheckpoint).
  std::vector<const AgentRecord*> PickKeepers(const std::vector<const AgentRecord*>& candidates,
                                              std::vector<const AgentRecord*> first,
                                              const std::set<std::string>& skip, size_t n) {
    for (int pass = 0; pass < 2 && first.size() < n; ++pass) {
      for (const AgentRecord* k : candidates) {
        if (first.size() == n) break;
        if (skip.count(k->device) || ck_no_datasets.count(k->device + "@" + k->boot) ||
            std::count(first.begin(), first.end(), k) > 0 ||
            (pass == 0 && !first.empty() && k->host == first[0]->host)) {
          continue;
        }
        first.push_back(k);
      }
    }
    return first;
  }

  // Checkpointer thread: a durable instance's base checkpoint is a full record of its
  // journal, appended by its agent to each of its keepers at a request boundary (they
  // drop what came before). Two keepers, chosen as snapshot copies are (the current ones
  // first); they are pushed to the agent first (a new one's first record is full
  // anyway). A keeper that does not take it is replaced by the next candidate, a few
  // times; with one taker only, the record names one copy and the event says why.
  Status TakeDurableCheckpoint(const ClusterView& view, const InstanceRecord& rec) {
    const AgentRecord& a = view.agents.at(rec.device);
    TERN_ASSIGN_OR_RETURN(client::AgentClient * src, CkClient(a));
    auto old = view.checkpoints.find(rec.id);
    const std::vector<const AgentRecord*> candidates = KeeperCandidates(view, rec);
    constexpr size_t kCopies = 2;
    std::set<std::string> failed;
    std::vector<std::string> why;
    std::optional<CheckpointRecord> done;
    std::vector<const AgentRecord*> kept;  // those that took the last successful one
    bool last_ok = false;                  // the agent's keepers are `kept`
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::vector<const AgentRecord*> pick = PickKeepers(candidates, kept, failed, kCopies);
      if (pick.size() == kept.size()) break;  // no one new to try
      std::vector<std::pair<std::string, std::string>> addrs;
      for (const AgentRecord* k : pick) addrs.emplace_back(k->device, k->tcp);
      const int64_t taken = UnixMillis();
      Status s = src->SetKeepers(rec.id, addrs);
      Result<std::string> rep = s.ok() ? src->JournalCheckpoint(rec.id) : Result<std::string>(s);
      last_ok = false;
      if (!rep.ok()) {
        if (rep.status().code() == StatusCode::kNotFound) return rep.status();  // gone
        for (const AgentRecord* k : pick) {
          if (std::count(kept.begin(), kept.end(), k) == 0) failed.insert(k->device);
        }
        why.push_back(std::string(rep.status().message()));
        continue;
      }
      json r = json::parse(*rep, nullptr, false);
      if (!r.is_object()) return InternalError("checkpoint of " + rec.id + ": bad answer " + *rep);
      std::set<std::string> took;
      for (const json& k : r.value("keepers", json::array())) {
        if (k.is_string()) took.insert(k.get<std::string>());
      }
      for (const json& f : r.value("failed", json::array())) {
        const std::string d = f.value("device", "");
        failed.insert(d);
        why.push_back(fmt::format("{}: {}", d, f.value("error", "")));
        // A device that keeps no datasets cannot keep journals either (until it restarts).
        auto ag = view.agents.find(d);
        if (f.value("code", "") == StatusCodeName(StatusCode::kFailedPrecondition) &&
            ag != view.agents.end()) {
          ck_no_datasets.insert(d + "@" + ag->second.boot);
        }
      }
      kept.clear();
      CheckpointRecord ck{rec.id, rec.service, "", rec.device, taken, r.value("bytes", uint64_t{0})};
      ck.durable = true;
      ck.journal_seq = r.value("seq", uint64_t{0});
      for (const AgentRecord* k : pick) {
        if (!took.count(k->device)) continue;
        kept.push_back(k);
        ck.copies.push_back({k->device, taken, ck.bytes});
      }
      if (kept.empty()) continue;
      ck.device = ck.copies[0].device;
      TERN_RETURN_IF_ERROR(
          store->Put(std::string(kCheckpointsPrefix) + rec.id, ToJson(ck)).status());
      done = ck;
      last_ok = true;
      ck_taken_ns[rec.id] = MonoNanos();
      std::string tag = a.device + "@" + a.boot;
      for (const AgentRecord* k : kept) tag += " " + k->device + "@" + k->boot;
      keeper_pushed[rec.id] = tag;
      if (kept.size() == kCopies) break;
    }
    if (!done) {
      // The agent goes back to the keepers the checkpoint record names: a restore reads
      // only those, so they must go on getting every record (a full one first).
      if (old != view.checkpoints.end()) {
        std::vector<std::pair<std::string, std::string>> addrs;
        for (const CheckpointRecord::Copy& copy : old->second.copies) {
          auto k = view.agents.find(copy.device);
          if (k != view.agents.end() && k->first != rec.device) addrs.emplace_back(k->first, k->second.tcp);
        }
        if (addrs.empty() || !src->SetKeepers(rec.id, addrs).ok()) keeper_pushed.erase(rec.id);
      }
      return UnavailableError(fmt::format(
          "no device can keep the journal of {} (a storage device's agent with datasets, other "
          "than {}){}{}",
          rec.id, rec.device, why.empty() ? "" : ": ", fmt::format("{}", fmt::join(why, "; "))));
    }
    if (!last_ok) {
      // A later try failed on every keeper: the agent goes back to those that took it.
      std::vector<std::pair<std::string, std::string>> addrs;
      for (const AgentRecord* k : kept) addrs.emplace_back(k->device, k->tcp);
      Status s = src->SetKeepers(rec.id, addrs);
      if (!s.ok()) keeper_pushed.erase(rec.id);  // pushed again next round
    }
    if (old != view.checkpoints.end()) {
      for (const CheckpointRecord::Copy& copy : old->second.copies) {
        bool now = std::any_of(done->copies.begin(), done->copies.end(),
                               [&](const auto& c) { return c.device == copy.device; });
        if (!now) RemoveCopy(view, copy.device, rec.id, old->second.durable);
      }
    }
    std::vector<std::string> names;
    for (const auto& c : done->copies) names.push_back(c.device);
    std::vector<std::string> old_names;
    if (old != view.checkpoints.end()) {
      for (const auto& c : old->second.copies) old_names.push_back(c.device);
    }
    if (old == view.checkpoints.end() || old_names != names) {
      Event(fmt::format(
          "the journal and checkpoints of {} are kept by {} (durable; a base checkpoint of {} "
          "bytes{}){}",
          rec.id, fmt::join(names, " and "), done->bytes, names.size() > 1 ? " on each" : "",
          names.size() >= kCopies
              ? ""
              : fmt::format(": one copy, replies are acknowledged with one copy (degraded) until "
                            "another device can keep one{}",
                            why.empty() ? "" : fmt::format(" ({})", fmt::join(why, "; ")))));
    }
    return Status::Ok();
  }

  // Checkpointer thread: why `rec`'s journal needs keepers assigned again now, not at
  // its next checkpoint ("" = it does not): a keeper is gone, is its own device (it
  // moved there), or dropped out (its agent's last heartbeat after the checkpoint says
  // so: it failed while the other acknowledged), or it has one copy and another device
  // could keep a second.
  std::string KeepersToReplace(const ClusterView& view, const InstanceRecord& rec,
                               const CheckpointRecord& ck) {
    std::set<std::string> in;
    for (const CheckpointRecord::Copy& copy : ck.copies) {
      in.insert(copy.device);
      if (copy.device == rec.device) return fmt::format("{} now runs on its keeper {}", rec.id, copy.device);
      if (!view.agents.count(copy.device)) return fmt::format("its keeper {} is gone", copy.device);
    }
    {
      MutexLock l(&pub_mu);
      auto t = telemetry.find(rec.device);
      const Telemetry::Inst* x = InstTelemetry(rec.device, rec.id);
      if (x != nullptr && t->second.at_ns > ck_taken_ns[rec.id]) {
        for (const std::string& d : x->journal_out) {
          if (in.count(d)) {
            return fmt::format("its keeper {} dropped out (it failed to acknowledge a record)", d);
          }
        }
      }
      auto reported = journal_out_at.find(rec.id);
      if (reported != journal_out_at.end()) {
        for (const auto& [d, at] : reported->second) {
          if (in.count(d) && at > ck_taken_ns[rec.id]) {
            return fmt::format("its keeper {} dropped out (it failed to acknowledge a record)", d);
          }
        }
      }
    }
    if (ck.copies.size() < 2) {
      std::vector<const AgentRecord*> first;
      for (const CheckpointRecord::Copy& copy : ck.copies) first.push_back(&view.agents.at(copy.device));
      std::vector<const AgentRecord*> pick = PickKeepers(KeeperCandidates(view, rec), first, {}, 2);
      if (pick.size() > first.size()) {
        return fmt::format("it has one copy and {} can keep another", pick.back()->device);
      }
    }
    return "";
  }

  // Checkpointer thread: a durable instance whose agent does not know its keepers yet
  // (it moved, or an agent restarted) gets them now, not at its next checkpoint: until
  // then its writes fail.
  void PushKeeper(const ClusterView& view, const InstanceRecord& rec, const CheckpointRecord& ck) {
    auto a = view.agents.find(rec.device);
    if (a == view.agents.end()) return;
    std::string tag = a->second.device + "@" + a->second.boot;
    std::vector<std::pair<std::string, std::string>> keepers;
    for (const CheckpointRecord::Copy& copy : ck.copies) {
      auto k = view.agents.find(copy.device);
      if (k == view.agents.end() || k->first == rec.device) continue;
      keepers.emplace_back(k->first, k->second.tcp);
      tag += " " + k->first + "@" + k->second.boot;
    }
    if (keepers.empty() || keeper_pushed[rec.id] == tag) return;
    Result<client::AgentClient*> c = CkClient(a->second);
    Status s = c.ok() ? (*c)->SetKeepers(rec.id, keepers) : c.status();
    if (s.ok()) {
      keeper_pushed[rec.id] = tag;
    } else if (!Quiet(__LINE__, 10)) {
      TERN_LOG(WARN) << "telling " << rec.device << " the keepers of " << rec.id << ": " << s;
    }
  }

  // Checkpointer thread: snapshots `rec` and keeps the snapshot on two devices (one when
  // only one can keep it), never the device the instance runs on (it would die with
  // it): the devices that keep its copies now first, then live csd/cpm devices, then any
  // other live device with datasets; the second copy on another host than the first
  // where such a device can take it. The record lists every copy, newest first.
  Status TakeCheckpoint(const ClusterView& view, const InstanceRecord& rec) {
    const AgentRecord& a = view.agents.at(rec.device);
    TERN_ASSIGN_OR_RETURN(client::AgentClient * src, CkClient(a));
    int64_t taken = UnixMillis();
    Result<std::string> snap = src->Snapshot(rec.id);
    if (!snap.ok()) {
      ck_conns.erase(a.device + "@" + a.boot);
      return snap.status().WithPrefix("snapshot of " + rec.id);
    }
    auto old = view.checkpoints.find(rec.id);
    const std::vector<const AgentRecord*> candidates = KeeperCandidates(view, rec);
    constexpr size_t kCopies = 2;
    std::vector<CheckpointRecord::Copy> kept;
    std::set<std::string> failed;
    std::vector<std::string> why;
    const AgentRecord* first = nullptr;
    // Pass 0 looks for the second keeper on another host; pass 1 takes any.
    for (int pass = 0; pass < 2 && kept.size() < kCopies; ++pass) {
      for (const AgentRecord* k : candidates) {
        if (kept.size() == kCopies) break;
        if (failed.count(k->device) || (first != nullptr && k == first) ||
            (pass == 0 && first != nullptr && k->host == first->host) ||
            ck_no_datasets.count(k->device + "@" + k->boot)) {
          continue;
        }
        Result<client::AgentClient*> kc = CkClient(*k);
        Status put = kc.ok() ? (*kc)->PutObject(std::string(kCheckpointDataset), rec.id, *snap)
                             : kc.status();
        if (!put.ok()) {
          if (!kc.ok() || put.code() == StatusCode::kUnavailable)
            ck_conns.erase(k->device + "@" + k->boot);
          if (put.code() == StatusCode::kFailedPrecondition) {
            ck_no_datasets.insert(k->device + "@" + k->boot);
          }
          failed.insert(k->device);
          why.push_back(fmt::format("{}: {}", k->device, put.message()));
          continue;
        }
        kept.push_back({k->device, taken, static_cast<uint64_t>(snap->size())});
        if (first == nullptr) first = k;
      }
    }
    if (kept.empty()) {
      return UnavailableError(fmt::format(
          "no device can keep the checkpoint of {} (a storage device's agent with datasets, "
          "other than {}){}{}",
          rec.id, rec.device, why.empty() ? "" : ": ", fmt::format("{}", fmt::join(why, "; "))));
    }
    // An older copy on a live keeper that could not take this one still counts (a restore
    // falls back to it); any other old copy goes.
    std::vector<std::string> drop;
    if (old != view.checkpoints.end()) {
      for (const CheckpointRecord::Copy& copy : old->second.copies) {
        bool now = std::any_of(kept.begin(), kept.end(),
                               [&](const auto& k) { return k.device == copy.device; });
        if (now) continue;
        if (kept.size() < kCopies && view.agents.count(copy.device) && copy.device != rec.device) {
          kept.push_back(copy);
        } else {
          drop.push_back(copy.device);
        }
      }
    }
    CheckpointRecord ck{rec.id, rec.service, kept[0].device, rec.device, taken, kept[0].bytes, kept};
    TERN_RETURN_IF_ERROR(store->Put(std::string(kCheckpointsPrefix) + rec.id, ToJson(ck)).status());
    for (const std::string& d : drop) RemoveCopy(view, d, rec.id);
    auto keepers = [](const std::vector<CheckpointRecord::Copy>& copies) {
      std::set<std::string> out;
      for (const auto& c : copies) out.insert(c.device);
      return out;
    };
    if (old == view.checkpoints.end() || keepers(old->second.copies) != keepers(kept)) {
      std::vector<std::string> names;
      for (const auto& c : kept) names.push_back(c.device);
      Event(fmt::format("checkpoints of {} are kept by {} ({} bytes){}", rec.id,
                        fmt::join(names, " and "), snap->size(),
                        kept.size() < kCopies ? " (one copy: no other device can keep one)" : ""));
    }
    return Status::Ok();
  }

  // Returns whether any service is checkpointed (the loop ticks faster then).
  bool CheckpointRound() {
    Result<ClusterView> view = LoadView();
    if (!view.ok()) return false;
    bool any = false;
    for (const auto& [name, svc] : view->services) any |= svc.stateful && svc.checkpoint_ms > 0;
    int64_t now = UnixMillis();
    // Checkpoints of instances that are no more (stopped while a checkpoint was taken).
    for (const auto& [id, ck] : view->checkpoints) {
      if (view->instances.count(id)) continue;
      (void)store->Delete(std::string(kCheckpointsPrefix) + id);
      if (ck.durable) DropJournalOut(id);
      for (const CheckpointRecord::Copy& copy : ck.copies) {
        RemoveCopy(*view, copy.device, id, ck.durable);
      }
    }
    for (const auto& [id, p] : view->instances) {
      auto svc = view->services.find(p.record.service);
      if (svc == view->services.end() || !svc->second.stateful || svc->second.checkpoint_ms <= 0) {
        continue;
      }
      auto a = view->agents.find(p.record.device);
      if (a == view->agents.end() || p.record.boot != a->second.boot || view->busy.count(id)) {
        continue;
      }
      auto ck = view->checkpoints.find(id);
      if (svc->second.durable && ck != view->checkpoints.end()) PushKeeper(*view, p.record, ck->second);
      int64_t last = ck == view->checkpoints.end() ? 0 : ck->second.unix_ms;
      last = std::max(last, ck_attempt_ms[id]);
      bool due = now - last >= svc->second.checkpoint_ms;
      // A durable instance whose journal lost a keeper gets another at once (a base
      // checkpoint on both: the new one's journal starts with a full record); it runs
      // degraded (one copy) meanwhile. At most once a second.
      if (!due && svc->second.durable && ck != view->checkpoints.end() &&
          now - ck_attempt_ms[id] >= 1000) {
        std::string why = KeepersToReplace(*view, p.record, ck->second);
        if (!why.empty()) {
          due = true;
          if (replace_said[id] != why) {
            Event(fmt::format("assigning the keepers of {}'s journal again: {}", id, why));
            replace_said[id] = why;
          }
        }
      }
      if (!due) continue;
      ck_attempt_ms[id] = now;
      Status s = svc->second.durable ? TakeDurableCheckpoint(*view, p.record)
                                     : TakeCheckpoint(*view, p.record);
      if (!s.ok() && !Quiet(__LINE__, 10)) TERN_LOG(WARN) << "checkpoint: " << s;
    }
    for (auto it = ck_attempt_ms.begin(); it != ck_attempt_ms.end();) {
      it = view->instances.count(it->first) ? std::next(it) : ck_attempt_ms.erase(it);
    }
    for (auto* m : {&keeper_pushed, &replace_said}) {
      for (auto it = m->begin(); it != m->end();) {
        it = view->instances.count(it->first) ? std::next(it) : m->erase(it);
      }
    }
    for (auto it = ck_taken_ns.begin(); it != ck_taken_ns.end();) {
      it = view->instances.count(it->first) ? std::next(it) : ck_taken_ns.erase(it);
    }
    {
      MutexLock l(&pub_mu);
      for (auto it = journal_out_at.begin(); it != journal_out_at.end();) {
        it = view->instances.count(it->first) ? std::next(it) : journal_out_at.erase(it);
      }
    }
    return any;
  }

  void CheckpointLoop() {
    bool busy_tick = false;
    for (;;) {
      {
        MutexLock l(&ck_mu);
        // 100 ms while some service is checkpointed, else 1 s (orphans only).
        int64_t deadline = MonoNanos() + (busy_tick ? 100'000'000 : 1'000'000'000);
        while (!ck_stop) {
          int64_t left = deadline - MonoNanos();
          if (left <= 0) break;
          ck_cv.WaitFor(&ck_mu, std::chrono::nanoseconds(left));
        }
        if (ck_stop) return;
      }
      busy_tick = leader.load() && CheckpointRound();
    }
  }

  // ---- migrations and drains (ops thread) -----------------------------------------------

  void Unmark(const std::string& id) {
    MutexLock l(&ops_mu);
    busy.erase(id);
    leaving.erase(id);
  }

  // Points instance `id`'s record at `device`, started on `boot` (the location epoch
  // bumps); returns the new epoch.
  Result<int64_t> MoveRecord(const std::string& id, const std::string& device,
                             const std::string& boot) {
    MutexLock rl(&round_mu);
    std::string key = std::string(kInstancesPrefix) + id;
    TERN_ASSIGN_OR_RETURN(std::optional<store::KeyValue> cur, store->Get(key));
    if (!cur) return NotFoundError(fmt::format("the record of {} is gone", id));
    TERN_ASSIGN_OR_RETURN(InstanceRecord rec, InstanceFromJson(cur->value, key));
    rec.device = device;
    rec.boot = boot;
    TERN_ASSIGN_OR_RETURN(
        store::ClusterStore::ApplyResult r,
        store->Apply({store::Compare{key, cur->mod_revision}}, {store::Op::Put(key, ToJson(rec))}));
    if (!r.applied) return AbortedError(fmt::format("the record of {} changed meanwhile", id));
    return r.revision;
  }

  // Whether the agent `a` runs instance `id` now (its GET /v1/status).
  Result<bool> Runs(const AgentRecord& a, const std::string& id) {
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<client::AgentClient> c,
                          client::AgentClient::Connect(a.admin, std::chrono::seconds(5)));
    TERN_ASSIGN_OR_RETURN(std::string st, c->StatusJson());
    json j = json::parse(st, nullptr, false);
    if (j.is_discarded() || !j.contains("instances") || !j["instances"].is_array()) return false;
    for (const json& i : j["instances"]) {
      if (i.is_object() && i.value("id", "") == id) return true;
    }
    return false;
  }

  static std::string Bytes(uint64_t b) {
    if (b >= (1u << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20));
    if (b >= (1u << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(b) / (1 << 10));
    return fmt::format("{} B", b);
  }

  // Ops thread: migrates `id` to `device` through its source agent's migrate endpoint
  // (`agent_opts`: mode, max_rounds, freeze_timeout_ms, transport), then records the new
  // location.
  // `why` goes into the event. Returns the agent's report plus from/to/epoch.
  Result<json> MigrateInstance(const std::string& id, const std::string& device, json agent_opts,
                               const std::string& why) {
    InstanceRecord rec;
    AgentRecord src, dst;
    ServiceRecord svc;
    {
      MutexLock rl(&round_mu);
      TERN_ASSIGN_OR_RETURN(ClusterView view, LoadView());
      TERN_RETURN_IF_ERROR(CheckMigrationTarget(view, id, device));
      rec = view.instances.at(id).record;
      src = view.agents.at(rec.device);
      dst = view.agents.at(device);
      svc = view.services.at(rec.service);
      MutexLock l(&ops_mu);
      busy.insert(id);
    }
    auto failed = [&](Status s) {
      Event(fmt::format("migration of {} from {} to {} failed: {}; {} keeps serving on {}", id,
                        src.device, device, s.message(), id, src.device));
      Unmark(id);
      return s;
    };
    // The target needs the service (deployed without instances).
    {
      Result<std::unique_ptr<client::AgentClient>> t =
          client::AgentClient::Connect(dst.admin, std::chrono::seconds(10));
      Status d = t.ok() ? DeployIfMissing(t->get(), svc) : t.status();
      if (!d.ok()) {
        return failed(
            Status(d.code(), fmt::format("deploying {} on {}: {}", svc.name, device, d.message())));
      }
    }
    agent_opts["to_tcp"] = dst.tcp;
    agent_opts["to_device"] = device;
    int64_t t0 = MonoNanos();
    Result<std::string> answer = [&]() -> Result<std::string> {
      TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::JsonApiClient> c,
                            transport::JsonApiClient::Connect(src.admin, "agent " + src.device,
                                                              std::chrono::seconds(5)));
      return c->Call("POST", "/v1/instances/" + id + "/migrate", agent_opts.dump(),
                     std::chrono::seconds(120));
    }();
    json report;
    if (answer.ok()) {
      report = json::parse(*answer, nullptr, false);
      if (report.is_discarded() || !report.is_object()) report = json::object();
    } else {
      // Did the source fail after the cut-over? Then the target is authoritative.
      Result<bool> at_target = Runs(dst, id);
      if (!at_target.ok() || !*at_target) {
        Result<bool> at_source = Runs(src, id);
        if (at_source.ok() && !*at_source) {
          // Neither runs it (the source lost it): the planner starts it again (from its
          // checkpoint, if it has one).
          (void)MoveRecord(id, src.device, "");
          Event(
              fmt::format("migration of {} from {} to {} failed: {}; neither runs it now, "
                          "the controller starts it again on {}",
                          id, src.device, device, answer.status().message(), src.device));
          Unmark(id);
          Poke();
          return answer.status();
        }
        if (!at_source.ok()) {
          Event(
              fmt::format("migration of {} from {} to {} failed: {}; {} does not answer "
                          "either (if its agent is gone, {} is re-placed like any other)",
                          id, src.device, device, answer.status().message(), src.device, id));
          Unmark(id);
          Poke();
          return answer.status();
        }
        return failed(answer.status());
      }
      report = json{{"instance", id},
                    {"to_device", device},
                    {"after_failure", std::string(answer.status().message())},
                    {"total_us", (MonoNanos() - t0) / 1000}};
      // The commit reached the target but its answer not the source, which thawed its
      // copy: both run it. The target's is authoritative; the source's copy goes, with
      // the effects of the requests held during the freeze (they ran there).
      Result<bool> both = Runs(src, id);
      if (both.ok() && *both) {
        Result<std::unique_ptr<client::AgentClient>> sc =
            client::AgentClient::Connect(src.admin, std::chrono::seconds(5));
        Status stopped = sc.ok() ? (*sc)->StopInstance(id) : sc.status();
        report["source_copy_stopped"] = stopped.ok();
        TERN_LOG(ERROR) << "migration of " << id << ": both " << src.device << " and " << device
                        << " ran it after a failed commit answer; stopped the source's copy ("
                        << (stopped.ok() ? "ok" : std::string(stopped.message()))
                        << "): the effects of requests held during the freeze are lost";
        Event(fmt::format(
            "ERROR: migration of {}: {} and {} both ran it after the commit answer "
            "was lost; {} is authoritative, the copy on {} was stopped{} — the "
            "effects of requests held during the freeze (they ran on {}) are lost",
            id, src.device, device, device, src.device,
            stopped.ok() ? "" : " (stopping it failed: " + std::string(stopped.message()) + ")",
            src.device));
      }
    }
    Result<int64_t> epoch = MoveRecord(id, device, dst.boot);
    {
      MutexLock l(&ops_mu);
      last_moved_ms[id] = UnixMillis();
    }
    Unmark(id);
    if (!epoch.ok()) {
      Event(fmt::format("migrated {} to {}, but recording it failed: {}", id, device,
                        epoch.status().message()));
      return epoch.status();
    }
    report["from"] = src.device;
    report["to"] = device;
    report["epoch"] = *epoch;
    if (report.contains("after_failure")) {
      Event(fmt::format(
          "migration of {} from {} to {}: the source failed after the cut-over "
          "({}); {} is authoritative now (epoch {})",
          id, src.device, device, report["after_failure"].get<std::string>(), device, *epoch));
    } else {
      Event(fmt::format(
          "migrated {} from {} to {} ({}): downtime {:.2f} ms, total {:.1f} ms, "
          "{} sent ({} raw) over {}, {} rounds, {} forwarded (epoch {})",
          id, src.device, device, why, report.value("downtime_us", 0.0) / 1000,
          report.value("total_us", 0.0) / 1000, Bytes(report.value("bytes_sent", uint64_t{0})),
          Bytes(report.value("bytes_raw", uint64_t{0})), report.value("transport", "tcp"),
          report.value("rounds", 0), report.value("forwarded", 0), *epoch));
    }
    Poke();
    return report;
  }

  // Ops thread: replaces stateless instance `id` by a new one on the device the policy
  // picks: the new one starts and is routed to first, then the old one is stopped.
  Result<std::pair<std::string, std::string>> ReplaceInstance(const std::string& id,
                                                              const std::string& why,
                                                              const std::string& to = "") {
    InstanceRecord old, rec;
    AgentRecord src, dst;
    ServiceRecord svc;
    std::string key;
    {
      MutexLock rl(&round_mu);
      TERN_ASSIGN_OR_RETURN(ClusterView view, LoadView());
      auto it = view.instances.find(id);
      if (it == view.instances.end()) return NotFoundError(fmt::format("no instance '{}'", id));
      if (view.busy.count(id)) return AbortedError(fmt::format("{} is already being moved", id));
      old = it->second.record;
      std::string target = to;
      if (target.empty()) {
        Rank(&view);
        TERN_ASSIGN_OR_RETURN(target, ChooseMigrationTarget(view, id));
      } else {
        TERN_RETURN_IF_ERROR(CheckMigrationTarget(view, id, target));
      }
      src = view.agents.count(old.device) ? view.agents.at(old.device) : AgentRecord{};
      dst = view.agents.at(target);
      svc = view.services.at(old.service);
      TERN_ASSIGN_OR_RETURN(int64_t n, ReserveInstanceIds(old.service, 1));
      rec = InstanceRecord{MakeInstanceId(old.service, static_cast<uint64_t>(n)), old.service,
                           target, "", svc.module_hash};
      key = std::string(kInstancesPrefix) + rec.id;
      TERN_RETURN_IF_ERROR(store->Put(key, ToJson(rec)).status());
      MutexLock l(&ops_mu);
      busy.insert(id);
      busy.insert(rec.id);
      leaving.insert(id);
    }
    Status s = [&]() -> Status {
      TERN_ASSIGN_OR_RETURN(std::unique_ptr<client::AgentClient> c,
                            client::AgentClient::Connect(dst.admin, std::chrono::seconds(10)));
      TERN_RETURN_IF_ERROR(DeployIfMissing(c.get(), svc));
      TERN_RETURN_IF_ERROR(c->StartInstance(svc.name, rec.id).status());
      return MoveRecord(rec.id, dst.device, dst.boot).status();
    }();
    if (!s.ok()) {
      {
        MutexLock rl(&round_mu);
        (void)store->Delete(key);
      }
      Unmark(rec.id);
      Unmark(id);
      return Status(s.code(), fmt::format("starting a replacement of {} on {}: {}", id, dst.device,
                                          s.message()));
    }
    Unmark(rec.id);
    {
      MutexLock l(&ops_mu);
      last_moved_ms[rec.id] = UnixMillis();
    }
    // Callers learn the new instance before the old one goes.
    (void)WaitForRound(std::chrono::seconds(30));
    WaitForPollers(PublishedVersion(), std::chrono::seconds(2));
    {
      MutexLock rl(&round_mu);
      (void)store->Delete(std::string(kInstancesPrefix) + id);
    }
    Unmark(id);
    // The table without it reaches every agent (in the round) and every gateway (they
    // long-poll; wait until they asked again, i.e. applied it) before it stops.
    (void)WaitForRound(std::chrono::seconds(30));
    WaitForPollers(PublishedVersion(), std::chrono::seconds(2));
    if (!src.admin.empty()) {
      Result<std::unique_ptr<client::AgentClient>> c =
          client::AgentClient::Connect(src.admin, std::chrono::seconds(10));
      Status st = c.ok() ? (*c)->StopInstance(id) : c.status();
      if (!st.ok() && st.code() != StatusCode::kNotFound) {
        TERN_LOG(WARN) << "stopping " << id << " on " << src.device << ": " << st;
      }
    }
    Event(
        fmt::format("replaced {} on {} by {} on {} ({})", id, old.device, rec.id, dst.device, why));
    return std::make_pair(rec.id, dst.device);
  }

  // The placement engine's ranking for the services it places (ClusterView::ranked), so
  // that moves go where the engine would place (the others: spread).
  void Rank(ClusterView* view) {
    for (const auto& [name, svc] : view->services) {
      if (svc.placement.empty()) continue;
      Result<placement::Decision> d = AdviseFor(*view, svc);
      if (d.ok()) view->ranked[name] = RankedDevices(*d);
    }
  }

  // Ops thread: moves every instance off `device` (drain recorded already).
  void RunDrain(const std::string& device) {
    std::vector<std::pair<std::string, bool>> todo;  // id, stateful
    if (Result<ClusterView> view = LoadView(); view.ok()) {
      for (const auto& [id, p] : view->instances) {
        if (p.record.device != device) continue;
        auto svc = view->services.find(p.record.service);
        todo.emplace_back(id, svc != view->services.end() && svc->second.stateful);
      }
    }
    {
      MutexLock l(&ops_mu);
      drains[device].total = todo.size();
    }
    Event(fmt::format("draining {}: {} instance(s) to move", device, todo.size()));
    int moved = 0;
    for (const auto& [id, stateful] : todo) {
      DrainStep step;
      step.instance = id;
      step.from = device;
      if (stateful) {
        step.how = "migrated";
        Result<ClusterView> view = LoadView();
        if (view.ok()) Rank(&*view);
        Result<std::string> target =
            view.ok() ? ChooseMigrationTarget(*view, id) : Result<std::string>(view.status());
        Result<json> r = target.ok()
                             ? MigrateInstance(id, *target, json::object(), "drain of " + device)
                             : Result<json>(target.status());
        step.ok = r.ok();
        if (r.ok()) {
          step.to = *target;
          step.report = *r;
        } else {
          step.message = std::string(r.status().message());
        }
      } else {
        Result<std::pair<std::string, std::string>> r = ReplaceInstance(id, "drain of " + device);
        step.ok = r.ok();
        if (r.ok()) {
          step.how = "replaced by " + r->first;
          step.to = r->second;
        } else {
          step.how = "replace";
          step.message = std::string(r.status().message());
        }
      }
      moved += step.ok;
      MutexLock l(&ops_mu);
      drains[device].steps.push_back(std::move(step));
    }
    Event(fmt::format("drained {}: {} of {} instance(s) moved{}", device, moved, todo.size(),
                      moved == static_cast<int>(todo.size()) ? "" : " (see the events above)"));
    MutexLock l(&ops_mu);
    drains[device].done = true;
  }

  json DrainJson(const std::string& device) {
    MutexLock l(&ops_mu);
    auto it = drains.find(device);
    if (it == drains.end())
      return json{{"device", device}, {"done", true}, {"steps", json::array()}};
    json steps = json::array();
    for (const DrainStep& s : it->second.steps) {
      json j{
          {"instance", s.instance}, {"from", s.from}, {"to", s.to}, {"how", s.how}, {"ok", s.ok}};
      if (!s.message.empty()) j["error"] = s.message;
      if (!s.report.is_null()) j["report"] = s.report;
      steps.push_back(j);
    }
    return json{{"device", device},
                {"started_unix_ms", it->second.started_unix_ms},
                {"total", it->second.total},
                {"done", it->second.done},
                {"steps", steps}};
  }

  HttpResponse StartDrain(const std::string& device) {
    if (!leader.load()) return ErrorResponse(NotLeader());
    if (!IsValidName(device)) {
      return ErrorResponse(InvalidArgumentError(fmt::format("'{}' is not a device name", device)));
    }
    Result<std::optional<store::KeyValue>> agent = store->Get(std::string(kAgentsPrefix) + device);
    if (!agent.ok()) return ErrorResponse(agent.status());
    if (!agent->has_value()) {
      return ErrorResponse(NotFoundError(
          fmt::format("device {} has no live agent (`tern ps` lists the devices)", device)));
    }
    {
      MutexLock l(&ops_mu);
      auto it = drains.find(device);
      if (it != drains.end() && !it->second.done) {
        return ErrorResponse(
            AlreadyExistsError(fmt::format("{} is being drained already", device)));
      }
      drains[device] = DrainProgress{UnixMillis(), 0, false, {}};
    }
    {
      MutexLock rl(&round_mu);
      Result<int64_t> put = store->Put(std::string(kDrainedPrefix) + device,
                                       json{{"since_unix_ms", UnixMillis()}}.dump());
      if (!put.ok()) {
        MutexLock l(&ops_mu);
        drains.erase(device);
        return ErrorResponse(put.status().WithPrefix("drain"));
      }
    }
    ops->Post([this, device] { RunDrain(device); });
    return HttpResponse::Json(202, DrainJson(device).dump());
  }

  HttpResponse Undrain(const std::string& device) {
    if (!leader.load()) return ErrorResponse(NotLeader());
    {
      MutexLock l(&ops_mu);
      auto it = drains.find(device);
      if (it != drains.end() && !it->second.done) {
        return ErrorResponse(FailedPreconditionError(
            fmt::format("{} is being drained; undrain it when that is done", device)));
      }
    }
    Result<int64_t> n = store->Delete(std::string(kDrainedPrefix) + device);
    if (!n.ok()) return ErrorResponse(n.status());
    if (*n == 0) return ErrorResponse(NotFoundError(fmt::format("{} is not drained", device)));
    Event(fmt::format("{} takes placements again (undrained)", device));
    Poke();
    return HttpResponse::Json(200, json{{"undrained", device}}.dump());
  }

  HttpResponse Migrate(const std::string& id, const HttpRequest& req) {
    if (!leader.load()) return ErrorResponse(NotLeader());
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("to") || !j["to"].is_string() ||
        j["to"].get<std::string>().empty()) {
      return ErrorResponse(InvalidArgumentError(
          "migrate: body must be {\"to\": \"DEVICE\", \"mode\": \"precopy\"|\"stop-and-copy\", "
          "\"max_rounds\": N, \"freeze_timeout_ms\": N, \"transport\": \"auto\"|\"tcp\"|\"shm\"}"));
    }
    json opts = json::object();
    if (j.contains("transport")) {
      if (!j["transport"].is_string() ||
          (j["transport"] != "auto" && j["transport"] != "tcp" && j["transport"] != "shm")) {
        return ErrorResponse(
            InvalidArgumentError("migrate: 'transport' must be \"auto\", \"tcp\" or \"shm\""));
      }
      opts["transport"] = j["transport"];
    }
    if (j.contains("mode")) {
      if (!j["mode"].is_string() || (j["mode"] != "precopy" && j["mode"] != "stop-and-copy")) {
        return ErrorResponse(
            InvalidArgumentError("migrate: 'mode' must be \"precopy\" or \"stop-and-copy\""));
      }
      opts["mode"] = j["mode"];
    }
    for (const char* k : {"max_rounds", "freeze_timeout_ms"}) {
      if (!j.contains(k)) continue;
      if (!j[k].is_number_integer() || j[k].get<int64_t>() < 1 || j[k].get<int64_t>() > 600000) {
        return ErrorResponse(
            InvalidArgumentError(fmt::format("migrate: '{}' must be 1..600000", k)));
      }
      opts[k] = j[k];
    }
    Result<json> r = MigrateInstance(id, j["to"].get<std::string>(), opts, "requested");
    if (!r.ok()) return ErrorResponse(r.status());
    return HttpResponse::Json(200, r->dump());
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
      util_history.erase(a->device);
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

  // POST /v1/agents/{device}/journal-out: keepers drop out of durable instances'
  // journals. The agent waits for this answer before it acknowledges a reply durable
  // without them, so the record is in the store first: a restore that can read only a
  // keeper that dropped out then knows its journal may lack acknowledged records.
  HttpResponse JournalOut(const std::string& device, const HttpRequest& req) {
    json j = json::parse(req.body, nullptr, false);
    const char* kShape =
        "journal-out: body must be {\"keepers_out\": [{\"instance\", \"keeper\", \"seq\" > 0, "
        "\"kept_by\": [...], \"why\"}]}";
    if (!j.is_object() || !j.contains("keepers_out") || !j["keepers_out"].is_array()) {
      return ErrorResponse(InvalidArgumentError(kShape));
    }
    std::vector<std::pair<std::string, json>> puts;
    std::vector<std::string> events;
    for (const json& d : j["keepers_out"]) {
      const std::string instance = d.is_object() ? d.value("instance", "") : "";
      const std::string keeper = d.is_object() ? d.value("keeper", "") : "";
      const uint64_t seq = d.is_object() ? d.value("seq", uint64_t{0}) : 0;
      if (instance.empty() || keeper.empty() || seq == 0 || instance.find('/') != std::string::npos ||
          keeper.find('/') != std::string::npos) {
        return ErrorResponse(InvalidArgumentError(kShape));
      }
      std::vector<std::string> kept_by;
      for (const json& k : d.value("kept_by", json::array())) {
        if (k.is_string()) kept_by.push_back(k.get<std::string>());
      }
      const std::string why = d.value("why", "");
      puts.emplace_back(fmt::format("{}{}/{}", kJournalOutPrefix, instance, keeper),
                        json{{"seq", seq}, {"kept_by", kept_by}, {"agent", device},
                             {"why", why}, {"unix_ms", UnixMillis()}});
      events.push_back(fmt::format(
          "{} drops out of the journal of {} at record #{} ({}): {} acknowledges its replies on "
          "{} alone (one copy) until its keepers are assigned again",
          keeper, instance, seq, why, device, fmt::join(kept_by, " and ")));
    }
    for (const auto& [key, value] : puts) {
      Status s = store->Put(key, value.dump()).status();
      if (!s.ok()) return ErrorResponse(s.WithPrefix("recording a journal keeper's drop-out"));
    }
    {
      MutexLock l(&pub_mu);
      for (const json& d : j["keepers_out"]) {
        journal_out_at[d.value("instance", "")][d.value("keeper", "")] = MonoNanos();
      }
    }
    for (std::string& e : events) Event(std::move(e));
    return HttpResponse::Json(200, json{{"recorded", puts.size()}}.dump());
  }

  // The keepers recorded as dropped out of `id`'s journal: keeper -> the first record
  // its journal may lack.
  std::map<std::string, uint64_t> JournalOutOf(const std::string& id) {
    std::map<std::string, uint64_t> out;
    Result<store::RangeResult> r = store->Range(fmt::format("{}{}/", kJournalOutPrefix, id));
    if (!r.ok()) return out;
    for (const store::KeyValue& kv : r->kvs) {
      json v = json::parse(kv.value, nullptr, false);
      if (v.is_object()) out[std::string(KeyName(kv.key))] = v.value("seq", uint64_t{0});
    }
    return out;
  }

  // Forgets the drop-outs recorded for `id` (gone, or restored: its journal starts again).
  void DropJournalOut(const std::string& id) {
    for (const auto& [keeper, seq] : JournalOutOf(id)) {
      (void)store->Delete(fmt::format("{}{}/{}", kJournalOutPrefix, id, keeper));
    }
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
    if (!j.contains("status")) {
      // Lease only: the agent's workers were busy when it was due (registrar.cc). Its
      // next full heartbeat's telemetry covers the whole interval since the last one.
      MutexLock l(&pub_mu);
      last_heartbeat_ns[device] = MonoNanos();
      return HttpResponse::Json(200, json{{"ok", true}}.dump());
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
          x.last_trace_id = i.value("last_trace_id", std::string());
          if (i.contains("latency_hist") && i["latency_hist"].is_array()) {
            for (const json& b : i["latency_hist"]) {
              if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() ||
                  !b[1].is_number_unsigned()) {
                continue;
              }
              int bucket = b[0].get<int>();
              if (bucket < 0 || bucket >= LatencyHistogram::kBuckets) continue;
              x.latency_hist[bucket] = b[1].get<uint64_t>();
            }
          }
          if (i.contains("data") && i["data"].is_object()) {
            x.data_local_bytes = i["data"].value("local_bytes", uint64_t{0});
            x.data_remote_bytes = i["data"].value("remote_bytes", uint64_t{0});
          }
          if (i.contains("durable") && i["durable"].is_object()) {
            const json& d = i["durable"];
            for (auto [key, out] : {std::pair{"keepers", &x.journal_keepers},
                                    std::pair{"keepers_out", &x.journal_out}}) {
              if (!d.contains(key) || !d[key].is_array()) continue;
              for (const json& k : d[key]) {
                if (k.is_string()) out->push_back(k.get<std::string>());
              }
            }
            x.journal_degraded = d.value("degraded_acks", uint64_t{0});
            x.journal_seq = d.value("journal_seq", uint64_t{0});
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
        // CPU time where the agent measures it, else (older agents) the wall time.
        const int64_t busy_ns = x.cpu_ns_total > 0
                                    ? x.cpu_ns_total - pi->second.cpu_ns_total
                                    : x.exec_ns_total - pi->second.exec_ns_total;
        if (busy_ns > 0) t.guest_cores += static_cast<double>(busy_ns) / 1e9 / dt;
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
        // The interval's p99: this report's counts less the last one's.
        x.p99_us = pi->second.p99_us;
        if (dn > 0) {
          std::map<int, uint64_t> delta;
          for (const auto& [b, n] : x.latency_hist) {
            auto was = pi->second.latency_hist.find(b);
            uint64_t before = was == pi->second.latency_hist.end() ? 0 : was->second;
            if (n > before) delta[b] = n - before;
          }
          int64_t ns = LatencyHistogram::QuantileLowerBoundNs(delta, 0.99);
          if (ns >= 0) {
            x.p99_us = static_cast<double>(ns) / 1e3;
            P99History& h = p99_history[id];
            if (h.device != device) h = P99History{device, {}};
            h.us.push_back(x.p99_us);
            while (h.us.size() > 64) h.us.pop_front();
          }
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
    if (it != telemetry.end()) {
      for (const auto& [id, x] : it->second.instances) t.previous_ids.insert(id);
      t.two = true;
      t.previous_at_ns = it->second.at_ns;
      std::deque<double>& h = util_history[device];
      h.push_back(t.cpu_util);
      while (h.size() > 64) h.pop_front();
    }
    telemetry[device] = std::move(t);
    return HttpResponse::Json(200, json{{"ok", true}}.dump());
  }

  // The newest heartbeat's report of instance `id` from a device other than `except`
  // (where it is being restored: the report wanted is its old agent's).
  const Telemetry::Inst* NewestInstTelemetry(const std::string& id, const std::string& except)
      REQUIRES(pub_mu) {
    const Telemetry::Inst* out = nullptr;
    int64_t at = 0;
    for (const auto& [device, t] : telemetry) {
      if (device == except) continue;
      auto x = t.instances.find(id);
      if (x != t.instances.end() && t.at_ns > at) {
        out = &x->second;
        at = t.at_ns;
      }
    }
    return out;
  }

  // What `device`'s last heartbeat said about instance `id` (null: nothing).
  const Telemetry::Inst* InstTelemetry(const std::string& device, const std::string& id)
      REQUIRES(pub_mu) {
    auto t = telemetry.find(device);
    if (t == telemetry.end()) return nullptr;
    auto x = t->second.instances.find(id);
    return x == t->second.instances.end() ? nullptr : &x->second;
  }

  json ServiceJson(const ServiceRecord& s, const ClusterView& view) {
    json inst = json::array();
    for (const auto& [id, p] : view.instances) {
      if (p.record.service != s.name) continue;
      auto ait = view.agents.find(p.record.device);
      bool running = ait != view.agents.end() && !p.record.boot.empty() &&
                     p.record.boot == ait->second.boot;
      json i{{"id", id},
             {"device", p.record.device},
             {"host", ait == view.agents.end() ? "" : ait->second.host},
             {"epoch", p.epoch},
             {"state", running ? "running" : "starting"}};
      if (view.busy.count(id)) i["moving"] = true;
      {
        MutexLock l(&pub_mu);
        auto h = p99_history.find(id);
        if (h != p99_history.end() && h->second.device == p.record.device && !h->second.us.empty()) {
          i["p99_us"] = h->second.us.back();  // of the last interval with requests
        }
      }
      auto ck = view.checkpoints.find(id);
      if (ck != view.checkpoints.end()) {
        json keepers = json::array(), copies = json::array();
        for (const CheckpointRecord::Copy& c : ck->second.copies) {
          keepers.push_back(c.device);
          copies.push_back({{"device", c.device}, {"unix_ms", c.unix_ms}, {"bytes", c.bytes}});
        }
        i["checkpoint"] = json{{"device", ck->second.device},
                               {"unix_ms", ck->second.unix_ms},
                               {"age_ms", std::max<int64_t>(UnixMillis() - ck->second.unix_ms, 0)},
                               {"bytes", ck->second.bytes},
                               {"keepers", keepers},
                               {"copies", copies}};
        if (ck->second.durable) {
          i["checkpoint"]["durable"] = true;
          i["checkpoint"]["journal_seq"] = ck->second.journal_seq;
          // Keepers recorded as dropped out since the base checkpoint: the acknowledged
          // records from `seq` on are not on them (degraded until assigned again).
          json out = json::array();
          for (const auto& [keeper, seq] : JournalOutOf(id)) {
            if (seq > ck->second.journal_seq &&
                std::count(keepers.begin(), keepers.end(), keeper) > 0) {
              out.push_back({{"device", keeper}, {"seq", seq}});
            }
          }
          i["checkpoint"]["keepers_out"] = std::move(out);
        }
      }
      {
        // A durable instance's journal as its agent last reported it: the keepers that
        // get its records and those that dropped out (degraded until replaced).
        MutexLock l(&pub_mu);
        const Telemetry::Inst* x = InstTelemetry(p.record.device, id);
        if (x != nullptr && (!x->journal_keepers.empty() || !x->journal_out.empty())) {
          i["journal"] = json{{"keepers", x->journal_keepers},
                              {"out", x->journal_out},
                              {"degraded_acks", x->journal_degraded}};
        }
      }
      inst.push_back(std::move(i));
    }
    json out{{"name", s.name},         {"replicas", s.replicas},
             {"devices", s.devices},   {"module_hash", s.module_hash},
             {"stateful", s.stateful}, {"checkpoint_ms", s.checkpoint_ms},
             {"slo_p99_us", SloOf(s)}, {"durable", s.durable},
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
    s.stateful = m->stateful;
    s.checkpoint_ms = m->checkpoint_ms;
    s.durable = m->durable;
    s.durable_strict = m->durable_strict;
    s.slo_p99_us = static_cast<int64_t>(m->slo_p99_us);
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
      if (view.draining.count(device)) j["draining"] = true;
      auto hb = last_heartbeat_ns.find(device);
      if (hb != last_heartbeat_ns.end()) j["heartbeat_age_ms"] = (now - hb->second) / 1000000;
      auto t = telemetry.find(device);
      if (t != telemetry.end()) {
        j["cpu_util"] = t->second.cpu_util;
        j["rss_bytes"] = t->second.rss_bytes;
        json inst = json::object();
        for (const auto& [id, x] : t->second.instances) {
          inst[id] = json{{"service", x.service},
                          {"requests", x.requests},
                          {"failures", x.failures},
                          {"queued", x.queued},
                          {"memory_bytes", x.memory_bytes},
                          {"rate", x.rate},
                          {"mean_exec_us", x.mean_exec_us},
                          {"mean_cpu_us", x.mean_cpu_us},
                          {"j_per_request", x.energy.j_per_request},
                          {"energy_source", x.energy.source},
                          {"data_local_bytes", x.data_local_bytes},
                          {"data_remote_bytes", x.data_remote_bytes},
                          {"last_trace_id", x.last_trace_id}};
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
    json out{{"controller", options.id},    {"leader", Leader()},   {"store", store->Describe()},
             {"agents", AgentsJson(*view)}, {"services", services}, {"drained", view->draining}};
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
      if (woken_version > 0 && after >= woken_version && wait_ms > 0) ++repolled;
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
    // The dashboard (dashboard.h): a static page that polls the API below.
    auto page = [](const HttpRequest&) {
      HttpResponse resp;
      resp.content_type = "text/html; charset=utf-8";
      resp.body = std::string(DashboardHtml());
      resp.headers.emplace_back("Cache-Control", "no-cache");
      return resp;
    };
    r.Handle("GET", "/", page);
    r.Handle("GET", "/dashboard", page);
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
      if (p.size() == 4 && p[3] == "journal-out" && req.method == "POST") {
        fast->Post([this, dev = p[2], req = std::move(req), resp] {
          resp.Respond(JournalOut(dev, req));
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
    r.HandleAsync("POST", "/v1/instances/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);  // v1 instances ID migrate
      if (p.size() != 4 || p[3] != "migrate") {
        return resp.Respond(
            ErrorResponse(NotFoundError("use POST /v1/instances/{id}/migrate {\"to\": DEVICE}")));
      }
      ops->Post([this, id = p[2], req = std::move(req), resp] { resp.Respond(Migrate(id, req)); });
    });
    r.HandleAsync("*", "/v1/devices/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);  // v1 devices DEVICE drain
      if (p.size() != 4 || p[3] != "drain") {
        return resp.Respond(
            ErrorResponse(NotFoundError("use POST, GET or DELETE /v1/devices/{device}/drain")));
      }
      std::string device = p[2];
      if (req.method == "POST") {
        slow->Post([this, device, resp] { resp.Respond(StartDrain(device)); });
      } else if (req.method == "GET") {
        resp.Respond(HttpResponse::Json(200, DrainJson(device).dump()));
      } else if (req.method == "DELETE") {
        slow->Post([this, device, resp] { resp.Respond(Undrain(device)); });
      } else {
        resp.Respond(
            ErrorResponse(NotFoundError("use POST, GET or DELETE /v1/devices/{device}/drain")));
      }
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
  impl->ops = std::make_unique<TaskThread>();
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
  impl->checkpointer = std::thread([raw] { raw->CheckpointLoop(); });
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

Controller::~Controller() {
  Impl* i = impl_.get();
  i->agents_watch.reset();
  {
    MutexLock l(&i->ck_mu);
    i->ck_stop = true;
    i->ck_cv.SignalAll();
  }
  i->checkpointer.join();
  {
    MutexLock l(&i->rmu);
    i->stopping = true;
    i->rcv.SignalAll();
  }
  i->reconciler.join();
  // The server goes before the task threads its handlers post to: a heartbeat that
  // arrived after a thread was gone would post to nothing. Then `slow` (a drain posts
  // to `ops`) and `fast`, then `ops`; the loop runs until they are done, for their
  // answers (dropped, their connections gone).
  i->loop->loop()->RunSync([i] {
    for (auto& w : i->waiters) i->loop->loop()->CancelTimer(w.timer);
    i->waiters.clear();
    i->http.reset();
  });
  i->slow.reset();
  i->fast.reset();
  i->ops.reset();
  i->loop->Stop();
  i->election.reset();  // resigns
  if (i->leader_lease != 0) (void)i->store->Revoke(i->leader_lease);
}

uint16_t Controller::port() const { return impl_->http->port(); }
bool Controller::is_leader() const { return impl_->leader.load(); }

}  // namespace tern::controller
