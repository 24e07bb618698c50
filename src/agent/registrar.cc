#include "agent/registrar.h"

#include <fstream>

#include <fmt/format.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <deque>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "agent/agent.h"
#include "agent/agent_json.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/mutex.h"
#include "storage/dataset_store.h"
#include "transport/json_api.h"

namespace tern::agent {

using nlohmann::json;

namespace {

std::string NewBootId() {
  std::random_device rd;
  uint64_t a = (uint64_t{rd()} << 32) | rd();
  uint64_t b = static_cast<uint64_t>(MonoNanos()) ^ (static_cast<uint64_t>(::getpid()) << 40);
  return fmt::format("{:016x}{:08x}", a, static_cast<uint32_t>(b ^ (b >> 32)));
}

int64_t ProcessCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

uint64_t RssBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? uint64_t{resident} * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace

struct Registrar::Impl {
  Agent* agent = nullptr;
  RegistrarOptions options;
  std::string boot;
  std::thread thread;
  Mutex mu;
  CondVar cv;
  bool stop GUARDED_BY(mu) = false;

  // Keeper drop-outs (Agent::KeeperDropReporter) go on a thread of their own: a reply
  // waits for the answer, which must not wait behind a heartbeat, nor a heartbeat
  // behind it.
  struct Report {
    std::string body;
    int64_t deadline_ns = 0;
    std::function<void(Status)> done;
  };
  std::deque<Report> reports GUARDED_BY(mu);
  CondVar reports_cv;
  std::thread reporter;

  // Sleeps up to `d`; false if stopping.
  bool Sleep(std::chrono::milliseconds d) {
    MutexLock l(&mu);
    int64_t deadline = MonoNanos() + std::chrono::nanoseconds(d).count();
    while (!stop) {
      int64_t left = deadline - MonoNanos();
      if (left <= 0) return true;
      cv.WaitFor(&mu, std::chrono::nanoseconds(left));
    }
    return false;
  }

  std::string RegisterBody() const {
    const AgentOptions& ao = agent->options();
    return json{{"device", ao.device}, {"host", ao.host},     {"kind", options.kind},
                {"boot", boot},        {"admin", options.admin}, {"tcp", options.tcp},
                {"shm", options.shm},  {"cores", options.cores}, {"speed", options.speed},
                {"memory_bytes", options.memory_bytes}}
        .dump();
  }

  // `status`: the agent's /v1/status JSON, or null when it is not ready (then the
  // heartbeat only keeps the lease: see StatusFor).
  std::string HeartbeatBody(int64_t lease, const std::string* status_json) const {
    if (status_json == nullptr) return json{{"lease", lease}, {"boot", boot}}.dump();
    json status = json::parse(*status_json, nullptr, false);
    json datasets = json::array();
    if (storage::DatasetStore* st = agent->datasets()) {
      Result<std::vector<storage::DatasetInfo>> ds = st->Datasets();
      if (ds.ok()) {
        for (const storage::DatasetInfo& d : *ds) {
          storage::DatasetCounters c = st->counters(d.name);
          datasets.push_back({{"name", d.name}, {"objects", d.objects}, {"bytes", d.bytes},
                              {"bytes_read", c.bytes_read}});
        }
      }
    }
    json hb{{"lease", lease},           {"boot", boot},       {"datasets", datasets},
            {"cpu_ns", ProcessCpuNs()}, {"rss_bytes", RssBytes()},
            {"cores", options.cores},   {"status", status},
            {"memory_reserve", json::parse(MemoryReserveToJson(agent->memory_reserve()))}};
    // The package energy counter, where this machine exposes RAPL (the controller then
    // uses it instead of the device's power model; controller/energy.h).
    if (options.kind == "cpu") {
      std::ifstream rapl("/sys/class/powercap/intel-rapl:0/energy_uj");
      uint64_t uj = 0;
      if (rapl >> uj) hb["rapl_energy_uj"] = uj;
    }
    return hb.dump();
  }

  void Enqueue(std::vector<Agent::KeeperDrop> drops, int64_t timeout_ns,
               std::function<void(Status)> done) {
    json out = json::array();
    for (const Agent::KeeperDrop& d : drops) {
      out.push_back({{"instance", d.instance}, {"keeper", d.keeper}, {"seq", d.seq},
                     {"kept_by", d.kept_by}, {"why", d.why}});
    }
    Report r{json{{"boot", boot}, {"keepers_out", out}}.dump(), MonoNanos() + timeout_ns,
             std::move(done)};
    {
      MutexLock l(&mu);
      if (!stop) {
        reports.push_back(std::move(r));
        reports_cv.Signal();
        return;
      }
    }
    r.done(UnavailableError("the agent is stopping"));
  }

  // POSTs one report to the controllers in turn until one records it or its deadline
  // passes. A controller that is not the leader records it too: the store is shared.
  Status Send(const Report& r, std::unique_ptr<transport::JsonApiClient>* c, size_t* next) {
    const std::string path = "/v1/agents/" + agent->options().device + "/journal-out";
    Status last = UnavailableError("no controller answered");
    for (;;) {
      const int64_t left = r.deadline_ns - MonoNanos();
      if (left <= 0) return last;
      const auto within = std::chrono::milliseconds(std::max<int64_t>(left / 1'000'000, 1));
      const std::string& addr = options.controllers[*next % options.controllers.size()];
      if (*c == nullptr) {
        Result<std::unique_ptr<transport::JsonApiClient>> nc =
            transport::JsonApiClient::Connect(addr, "controller", within);
        if (!nc.ok()) {
          last = nc.status().WithPrefix("the controller at " + addr);
          ++*next;
          // Every controller refused at once: a short pause, not a busy loop.
          if (*next % options.controllers.size() == 0 && !Sleep(std::chrono::milliseconds(50))) {
            return UnavailableError("the agent is stopping");
          }
          continue;
        }
        *c = std::move(*nc);
      }
      Result<std::string> a = (*c)->Call("POST", path, r.body, within);
      if (a.ok()) return Status::Ok();
      last = a.status().WithPrefix("the controller at " + addr);
      // An answer that is not about reaching it (a bad report) is final.
      if (a.status().code() == StatusCode::kInvalidArgument) return last;
      c->reset();
      ++*next;
    }
  }

  void ReportLoop() {
    std::unique_ptr<transport::JsonApiClient> c;
    size_t next = 0;
    for (;;) {
      Report r;
      {
        MutexLock l(&mu);
        while (!stop && reports.empty()) reports_cv.Wait(&mu);
        if (stop) break;
        r = std::move(reports.front());
        reports.pop_front();
      }
      Status s = Send(r, &c, &next);
      if (!s.ok()) TERN_LOG(WARN) << "telling the controller that a journal keeper drops out: " << s;
      r.done(s);
    }
    std::deque<Report> left;
    {
      MutexLock l(&mu);
      left.swap(reports);
    }
    for (Report& r : left) r.done(UnavailableError("the agent is stopping"));
  }

  void Loop() {
    size_t next = 0;
    bool outage_logged = false;
    for (;;) {
      const std::string& addr = options.controllers[next % options.controllers.size()];
      Result<std::unique_ptr<transport::JsonApiClient>> c =
          transport::JsonApiClient::Connect(addr, "controller", std::chrono::seconds(2));
      Result<std::string> reg = c.ok() ? (*c)->Call("POST", "/v1/agents", RegisterBody(),
                                                    std::chrono::seconds(10))
                                       : Result<std::string>(c.status());
      json j = reg.ok() ? json::parse(*reg, nullptr, false) : json();
      if (!reg.ok() || j.is_discarded() || !j.contains("lease")) {
        if (!outage_logged) {
          TERN_LOG(WARN) << "cannot register with the controller at " << addr << ": "
                         << (reg.ok() ? Status(InternalError("bad answer: " + *reg)) : reg.status())
                         << " (retrying)";
          outage_logged = true;
        }
        ++next;
        if (!Sleep(std::chrono::milliseconds(500))) return;
        continue;
      }
      int64_t lease = j["lease"].get<int64_t>();
      auto every = std::chrono::milliseconds(std::max<int64_t>(j.value("heartbeat_ms", 1000), 50));
      TERN_LOG(INFO) << "registered with the controller at " << addr << " (heartbeat every "
                     << every.count() << " ms)";
      outage_logged = false;
      // The status is gathered on a thread of its own: GetStatus waits for each worker
      // to finish the guest request it runs (up to that guest's CPU limit, longer on a
      // loaded machine), and the lease must not wait for that, or a busy agent is taken
      // for dead. A status not ready within half an interval is sent with a later
      // heartbeat; meanwhile heartbeats only keep the lease.
      std::future<std::string> status;
      for (;;) {
        if (!Sleep(every)) return;
        if (!status.valid()) {
          status = std::async(std::launch::async,
                              [this] { return StatusToJson(agent->GetStatus()); });
        }
        std::string status_json;
        const bool ready = status.wait_for(every / 2) == std::future_status::ready;
        if (ready) status_json = status.get();
        Result<std::string> hb = (*c)->Call(
            "POST", "/v1/agents/" + agent->options().device + "/heartbeat",
            HeartbeatBody(lease, ready ? &status_json : nullptr), std::chrono::seconds(2));
        if (hb.ok()) continue;
        if (hb.status().code() == StatusCode::kNotFound) {
          TERN_LOG(WARN) << "the controller forgot this agent (" << hb.status().message()
                         << "); registering again";
        } else {
          TERN_LOG(WARN) << "heartbeat to " << addr << ": " << hb.status();
          ++next;
        }
        break;
      }
    }
  }
};

Registrar::Registrar(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Registrar>> Registrar::Start(Agent* agent,
                                                    const RegistrarOptions& options) {
  if (options.controllers.empty()) return InvalidArgumentError("no controller address given");
  if (options.admin.empty()) return InvalidArgumentError("the agent's admin address is unknown");
  auto impl = std::make_unique<Impl>();
  impl->agent = agent;
  impl->options = options;
  impl->boot = NewBootId();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Loop(); });
  impl->reporter = std::thread([raw] { raw->ReportLoop(); });
  agent->SetKeeperDropReporter(
      [raw](std::vector<Agent::KeeperDrop> drops, int64_t timeout_ns,
            std::function<void(Status)> done) {
        raw->Enqueue(std::move(drops), timeout_ns, std::move(done));
      });
  return std::unique_ptr<Registrar>(new Registrar(std::move(impl)));
}

Registrar::~Registrar() {
  impl_->agent->SetKeeperDropReporter(nullptr);
  {
    MutexLock l(&impl_->mu);
    impl_->stop = true;
    impl_->cv.SignalAll();
    impl_->reports_cv.SignalAll();
  }
  impl_->thread.join();
  impl_->reporter.join();
}

const std::string& Registrar::boot() const { return impl_->boot; }

}  // namespace tern::agent
