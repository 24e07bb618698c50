#include "agent/agent.h"

#include <dirent.h>
#include <fmt/format.h>

#include <cstring>
#include <deque>
#include <thread>

#include "core/clock.h"
#include "core/cpu.h"
#include "core/file.h"
#include "core/ids.h"
#include "core/logging.h"
#include "wasm/dirty_tracker.h"

namespace tern::agent {

// ---------------------------------------------------------------------------------
// Service and Slot

struct Agent::Service {
  Manifest manifest;
  std::shared_ptr<const wasm::Module> module;
  wasm::InstanceLimits limits;
  uint64_t module_size = 0;
};

// One instance, owned by its worker thread; touched only there.
struct Agent::Slot {
  std::string id;
  std::shared_ptr<const Service> service;
  std::unique_ptr<wasm::Instance> inst;
  // Declared after `inst`, so destroyed first: a tracker must die before its memory.
  // Pages written since `good` was last brought up to date (stateful services, where
  // the kernel supports userfaultfd write-protection); null = copy everything.
  std::unique_ptr<wasm::DirtyTracker> tracker;
  const uint8_t* tracked_base = nullptr;
  wasm::Snapshot good;        // the last good state: the rollback point
  uint64_t pages_copied = 0;  // into `good`, in 4 KiB pages
  std::shared_ptr<std::atomic<uint64_t>> queued;
  uint64_t requests = 0;
  uint64_t failures = 0;
  uint64_t rollbacks = 0;
  uint64_t expired = 0;  // requests dropped at their deadline before running
  int64_t exec_ns_total = 0;
  std::string last_error;
};

namespace {

// HostCalls for one request.
class RequestHost final : public wasm::HostCalls {
 public:
  RequestHost(std::string_view request, const std::string& instance_id)
      : request_(request), instance_id_(instance_id) {}

  std::string_view Request() override { return request_; }
  void SetReply(std::string_view bytes) override { reply_.assign(bytes.data(), bytes.size()); }
  void SetFailure(StatusCode code, std::string_view message) override {
    guest_failed_ = true;
    guest_code_ = code;
    guest_message_.assign(message.data(), message.size());
  }
  void Log(int32_t level, std::string_view line) override {
    // Guests may log at most kMaxLogLinesPerRequest lines per request.
    if (++log_lines_ > kMaxLogLinesPerRequest) return;
    std::string_view l = line.substr(0, 4096);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.remove_suffix(1);
    switch (level) {
      case 0:
        TERN_LOG(DEBUG) << "[" << instance_id_ << "] " << l;
        break;
      case 1:
        TERN_LOG(INFO) << "[" << instance_id_ << "] " << l;
        break;
      case 2:
        TERN_LOG(WARN) << "[" << instance_id_ << "] " << l;
        break;
      default:
        TERN_LOG(ERROR) << "[" << instance_id_ << "] " << l;
        break;
    }
  }

  std::string& reply() { return reply_; }
  // True if `s` is the failure the guest itself reported (a clean request boundary).
  bool IsGuestFailure(const Status& s) const { return guest_failed_ && s.code() == guest_code_; }

 private:
  static constexpr int kMaxLogLinesPerRequest = 64;
  std::string_view request_;
  const std::string& instance_id_;
  std::string reply_;
  bool guest_failed_ = false;
  StatusCode guest_code_ = StatusCode::kOk;
  std::string guest_message_;
  int log_lines_ = 0;
};

std::string JoinNames(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------
// WorkerThread: a thread with its own wasm::Worker (isolate) and a task queue.

namespace {
// The WorkerThread whose loop runs on this thread, if any.
thread_local const void* current_worker = nullptr;
}  // namespace

class Agent::WorkerThread {
 public:
  WorkerThread(int index, wasm::Engine* engine) : index_(index), engine_(engine) {}
  ~WorkerThread() { Stop(); }

  Status Start() {
    Mutex start_mu;
    CondVar started;
    bool ready = false;
    Status st;
    thread_ = std::thread([&] {
      Result<std::unique_ptr<wasm::Worker>> w = engine_->NewWorker();
      {
        MutexLock l(&start_mu);
        if (w.ok())
          worker_ = std::move(*w);
        else
          st = w.status();
        ready = true;
        started.Signal();
      }
      if (worker_) Loop();
    });
    MutexLock l(&start_mu);
    while (!ready) started.Wait(&start_mu);
    return st;
  }

  void Stop() {
    {
      MutexLock l(&mu_);
      stopping_ = true;
      posted_.fetch_add(1, std::memory_order_release);
      cv_.Signal();
    }
    if (thread_.joinable()) thread_.join();
  }

  // Queues `task`; returns false if the worker is stopping (the task is dropped).
  bool Post(std::function<void()> task) {
    MutexLock l(&mu_);
    if (stopping_) return false;
    tasks_.push_back(std::move(task));
    posted_.fetch_add(1, std::memory_order_release);
    if (sleeping_) cv_.Signal();
    return true;
  }

  // Runs `fn` on the worker thread and waits for its result.
  Status RunAndWait(const std::function<Status()>& fn) {
    Mutex m;
    CondVar cv;
    bool done = false;
    Status result;
    bool posted = Post([&] {
      Status s = fn();
      MutexLock l(&m);
      result = std::move(s);
      done = true;
      cv.Signal();
    });
    if (!posted) return UnavailableError("agent is shutting down");
    MutexLock l(&m);
    while (!done) cv.Wait(&m);
    return result;
  }

  int index() const { return index_; }
  // Worker-thread only.
  wasm::Worker* worker() { return worker_.get(); }
  std::map<std::string, std::unique_ptr<Slot>>& slots() { return slots_; }

 private:
  void Loop() {
    current_worker = this;
    std::deque<std::function<void()>> batch;
    for (;;) {
      // Spin briefly before sleeping: a blocking wake-up across vCPUs costs ~35 µs
      // here (../shared/notes/machine.md), a spinning worker picks a task up in < 1 µs.
      const uint64_t seen = posted_.load(std::memory_order_acquire);
      if (taken_ == seen) {
        const int64_t until = MonoNanos() + kSpinNanos;
        while (posted_.load(std::memory_order_acquire) == seen && MonoNanos() < until) {
          CpuRelax();
        }
      }
      {
        MutexLock l(&mu_);
        while (tasks_.empty() && !stopping_) {
          sleeping_ = true;
          cv_.Wait(&mu_);
          sleeping_ = false;
        }
        taken_ = posted_.load(std::memory_order_relaxed);
        if (tasks_.empty() && stopping_) break;
        batch.swap(tasks_);
      }
      while (!batch.empty()) {
        batch.front()();
        batch.pop_front();
      }
    }
    slots_.clear();  // instances die with their isolate, on this thread
    worker_.reset();
  }

  const int index_;
  wasm::Engine* const engine_;
  std::thread thread_;
  std::unique_ptr<wasm::Worker> worker_;
  std::map<std::string, std::unique_ptr<Slot>> slots_;  // worker thread only

  static constexpr int64_t kSpinNanos = 20'000;
  std::atomic<uint64_t> posted_{0};  // tasks ever posted
  uint64_t taken_ = 0;               // worker thread only: posted_ when it last took tasks

  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  bool sleeping_ GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------
// Agent

Agent::Agent(const AgentOptions& options, wasm::Engine* engine)
    : options_(options), engine_(engine) {}

Agent::~Agent() { Shutdown(); }

void Agent::Shutdown() {
  for (auto& w : workers_) w->Stop();
}

Result<std::unique_ptr<Agent>> Agent::Create(const AgentOptions& options, wasm::Engine* engine) {
  if (options.workers < 1 || options.workers > 256) {
    return InvalidArgumentError(
        fmt::format("workers must be in [1, 256], got {}", options.workers));
  }
  std::unique_ptr<Agent> agent(new Agent(options, engine));
  for (int i = 0; i < options.workers; ++i) {
    auto w = std::make_unique<WorkerThread>(i, engine);
    TERN_RETURN_IF_ERROR(w->Start().WithPrefix(fmt::format("starting worker {}", i)));
    agent->workers_.push_back(std::move(w));
  }
  if (!options.data_dir.empty()) {
    TERN_RETURN_IF_ERROR(MakeDirs(options.data_dir + "/services"));
    TERN_RETURN_IF_ERROR(MakeDirs(options.data_dir + "/snapshots"));
    TERN_RETURN_IF_ERROR(agent->LoadFromDataDir());
  }
  return agent;
}

Status Agent::LoadFromDataDir() {
  std::string dir = options_.data_dir + "/services";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoError("opendir " + dir, errno);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != ".." && IsValidName(n)) names.push_back(n);
  }
  ::closedir(d);
  for (const std::string& n : names) {
    std::string base = dir + "/" + n;
    Result<Manifest> m = LoadManifest(base + "/manifest.yaml");
    Result<std::string> bytes = ReadFile(base + "/module.wasm");
    if (!m.ok() || !bytes.ok()) {
      TERN_LOG(WARN) << "skipping service in " << base << ": "
                     << (m.ok() ? bytes.status() : m.status());
      continue;
    }
    Result<ServiceStatus> r = Deploy(*m, std::move(*bytes), /*start_instances=*/true);
    if (!r.ok()) {
      TERN_LOG(WARN) << "could not redeploy service '" << n << "' from " << base << ": "
                     << r.status();
    } else {
      TERN_LOG(INFO) << "redeployed service '" << n << "' from " << base;
    }
  }
  return Status::Ok();
}

Result<ServiceStatus> Agent::Deploy(const Manifest& manifest, std::string module_bytes,
                                    bool start_instances) {
  if (!IsValidName(manifest.name)) {
    return InvalidArgumentError(fmt::format("invalid service name '{}'", manifest.name));
  }
  const uint32_t cap_pages = manifest.limits.memory_mib * (1u << 20) / wasm::kWasmPageBytes;
  TERN_ASSIGN_OR_RETURN(std::shared_ptr<const wasm::Module> module,
                        engine_->Compile(module_bytes, cap_pages));
  for (const std::string& h : manifest.handlers) {
    const wasm::ExportDesc* e = module->info().FindExport(h);
    if (e == nullptr || e->kind != wasm::ExternKind::kFunction) {
      std::vector<std::string> funcs;
      for (const auto& x : module->info().exports) {
        if (x.kind == wasm::ExternKind::kFunction) funcs.push_back(x.name);
      }
      return InvalidArgumentError(fmt::format(
          "manifest of '{}' lists handler '{}', but the module exports no such function "
          "(exported functions: {})",
          manifest.name, h, JoinNames(funcs)));
    }
  }
  auto svc = std::make_shared<Service>();
  svc->manifest = manifest;
  svc->module = module;
  svc->module_size = module_bytes.size();
  svc->limits.max_memory_pages = cap_pages;
  svc->limits.cpu_ms = manifest.limits.cpu_ms;
  svc->limits.max_reply_bytes = manifest.limits.response_bytes();

  if (!options_.data_dir.empty()) {
    std::string base = options_.data_dir + "/services/" + manifest.name;
    TERN_RETURN_IF_ERROR(MakeDirs(base));
    TERN_RETURN_IF_ERROR(WriteFileAtomic(base + "/module.wasm", module_bytes));
    TERN_RETURN_IF_ERROR(WriteFileAtomic(base + "/manifest.yaml", ManifestToYaml(manifest)));
  }

  // A redeploy replaces the old version: its instances stop first.
  bool existed = false;
  {
    MutexLock l(&mu_);
    existed = services_.count(manifest.name) > 0;
  }
  if (existed) TERN_RETURN_IF_ERROR(Undeploy(manifest.name));
  {
    MutexLock l(&mu_);
    services_[manifest.name] = svc;
  }
  ServiceStatus out;
  out.manifest = manifest;
  out.module_hash = module->hash();
  out.module_bytes = svc->module_size;
  if (start_instances) {
    for (uint32_t i = 0; i < manifest.replicas; ++i) {
      TERN_ASSIGN_OR_RETURN(std::string id, StartInstanceLocked(svc));
      out.instances.push_back(id);
    }
  }
  return out;
}

Status Agent::Undeploy(const std::string& service) {
  std::vector<std::pair<int, std::string>> victims;
  {
    MutexLock l(&mu_);
    if (services_.erase(service) == 0)
      return NotFoundError(fmt::format("no service '{}'", service));
    const std::vector<std::string> ids = InstancesOf(service);  // a copy: EraseRoute edits it
    for (const std::string& id : ids) {
      victims.emplace_back(routes_.at(id).worker, id);
      EraseRoute(id);
    }
  }
  for (auto& [w, id] : victims) TERN_RETURN_IF_ERROR(StopInstanceOn(w, id));
  if (!options_.data_dir.empty()) {
    std::string base = options_.data_dir + "/services/" + service;
    ::unlink((base + "/module.wasm").c_str());
    ::unlink((base + "/manifest.yaml").c_str());
    ::rmdir(base.c_str());
  }
  return Status::Ok();
}

Result<std::string> Agent::StartInstance(const std::string& service) {
  std::shared_ptr<const Service> svc;
  {
    MutexLock l(&mu_);
    auto it = services_.find(service);
    if (it == services_.end())
      return NotFoundError(fmt::format("no service '{}' deployed", service));
    svc = it->second;
  }
  return StartInstanceLocked(svc);
}

Result<std::string> Agent::StartInstanceLocked(std::shared_ptr<const Service> svc) {
  std::string id;
  int w = 0;
  {
    MutexLock l(&mu_);
    id = MakeInstanceId(svc->manifest.name, ++next_instance_[svc->manifest.name]);
    w = next_worker_++ % static_cast<int>(workers_.size());
  }
  auto queued = std::make_shared<std::atomic<uint64_t>>(0);
  WorkerThread* wt = workers_[w].get();
  Status st = wt->RunAndWait([&]() -> Status {
    auto slot = std::make_unique<Slot>();
    slot->id = id;
    slot->service = svc;
    slot->queued = queued;
    TERN_ASSIGN_OR_RETURN(slot->inst, wt->worker()->Instantiate(svc->module, svc->limits, true));
    TERN_RETURN_IF_ERROR(slot->inst->SnapshotInto(&slot->good));
    if (svc->manifest.stateful) StartTracking(slot.get());
    wt->slots()[id] = std::move(slot);
    return Status::Ok();
  });
  TERN_RETURN_IF_ERROR(st.WithPrefix(fmt::format("starting instance {}", id)));
  MutexLock l(&mu_);
  if (services_.count(svc->manifest.name) == 0 || services_[svc->manifest.name] != svc) {
    // Undeployed or replaced meanwhile.
    wt->Post([wt, id] { wt->slots().erase(id); });
    return AbortedError(
        fmt::format("service '{}' changed while starting {}", svc->manifest.name, id));
  }
  AddRoute(id, Route{w, svc, queued});
  return id;
}

Status Agent::StopInstance(const std::string& instance_id) {
  int w;
  {
    MutexLock l(&mu_);
    auto it = routes_.find(instance_id);
    if (it == routes_.end()) return NotFoundError(fmt::format("no instance '{}'", instance_id));
    w = it->second.worker;
    EraseRoute(instance_id);
  }
  return StopInstanceOn(w, instance_id);
}

void Agent::AddRoute(const std::string& id, Route route) {
  instances_of_[route.service->manifest.name].push_back(id);
  routes_[id] = std::move(route);
}

void Agent::EraseRoute(const std::string& id) {
  auto it = routes_.find(id);
  if (it == routes_.end()) return;
  auto svc = instances_of_.find(it->second.service->manifest.name);
  if (svc != instances_of_.end()) {
    std::erase(svc->second, id);
    if (svc->second.empty()) instances_of_.erase(svc);
  }
  routes_.erase(it);
}

const std::vector<std::string>& Agent::InstancesOf(const std::string& service) const {
  static const std::vector<std::string> kNone;
  auto it = instances_of_.find(service);
  return it == instances_of_.end() ? kNone : it->second;
}

Result<Agent::Route> Agent::FindRoute(const std::string& instance_id) {
  MutexLock l(&mu_);
  auto it = routes_.find(instance_id);
  if (it == routes_.end()) return NotFoundError(fmt::format("no instance '{}'", instance_id));
  return it->second;
}

Status Agent::RunOnSlot(const std::string& instance_id,
                        const std::function<Status(WorkerThread*, Slot*)>& fn) {
  TERN_ASSIGN_OR_RETURN(Route route, FindRoute(instance_id));
  WorkerThread* wt = workers_[route.worker].get();
  return wt->RunAndWait([&]() -> Status {
    auto it = wt->slots().find(instance_id);
    if (it == wt->slots().end()) return NotFoundError("instance " + instance_id + " was stopped");
    return fn(wt, it->second.get());
  });
}

Status Agent::StopInstanceOn(int worker, const std::string& id) {
  WorkerThread* wt = workers_[worker].get();
  return wt->RunAndWait([wt, &id] {
    wt->slots().erase(id);
    return Status::Ok();
  });
}

void Agent::Invoke(InvokeRequest req, std::function<void(InvokeResult)> done) {
  std::string id;
  Route route;
  {
    MutexLock l(&mu_);
    auto sit = services_.find(req.service);
    if (sit == services_.end()) {
      std::vector<std::string> names;
      for (const auto& [n, _] : services_) names.push_back(n);
      done(InvokeResult{
          NotFoundError(fmt::format("no service '{}' on device {} (deployed: {})", req.service,
                                    options_.device, names.empty() ? "none" : JoinNames(names))),
          {},
          {},
          0});
      return;
    }
    const Service& svc = *sit->second;
    if (!svc.manifest.HasHandler(req.handler)) {
      done(InvokeResult{
          NotFoundError(fmt::format("service '{}' has no handler '{}' (handlers: {})", req.service,
                                    req.handler, JoinNames(svc.manifest.handlers))),
          {},
          {},
          0});
      return;
    }
    if (req.payload.size() > svc.manifest.limits.request_bytes()) {
      done(InvokeResult{InvalidArgumentError(fmt::format(
                            "request of {} bytes exceeds the {} byte limit of service '{}' "
                            "(limits.request_kib in its manifest)",
                            req.payload.size(), svc.manifest.limits.request_bytes(), req.service)),
                        {},
                        {},
                        0});
      return;
    }
    if (!req.instance.empty()) {
      auto rit = routes_.find(req.instance);
      if (rit == routes_.end() || rit->second.service != sit->second) {
        done(InvokeResult{NotFoundError(fmt::format("no instance '{}' of service '{}'",
                                                    req.instance, req.service)),
                          {},
                          {},
                          0});
        return;
      }
      id = rit->first;
      route = rit->second;
    } else {
      // Least-queued instance of the service (instances per service are few).
      uint64_t best = UINT64_MAX;
      for (const std::string& rid : InstancesOf(req.service)) {
        const Route& r = routes_.at(rid);
        uint64_t q = r.queued->load(std::memory_order_relaxed);
        if (q < best) {
          best = q;
          id = rid;
          route = r;
        }
      }
      if (id.empty()) {
        done(InvokeResult{UnavailableError(fmt::format("service '{}' has no running instance "
                                                       "(start one: tern start {})",
                                                       req.service, req.service)),
                          {},
                          {},
                          0});
        return;
      }
    }
  }
  if (route.queued->fetch_add(1, std::memory_order_relaxed) >= options_.max_queue_per_instance) {
    route.queued->fetch_sub(1, std::memory_order_relaxed);
    done(InvokeResult{
        ResourceExhaustedError(fmt::format("instance {} has {} requests queued; back off and retry",
                                           id, options_.max_queue_per_instance)),
        {},
        id,
        0});
    return;
  }
  WorkerThread* wt = workers_[route.worker].get();
  auto task = [this, wt, id, req = std::move(req), done, queued = route.queued]() mutable {
    queued->fetch_sub(1, std::memory_order_relaxed);
    done(Execute(wt, id, req));
  };
  if (!wt->Post(std::move(task))) {
    route.queued->fetch_sub(1, std::memory_order_relaxed);
    done(InvokeResult{UnavailableError("agent is shutting down"), {}, id, 0});
  }
}

InvokeResult Agent::Execute(WorkerThread* wt, const std::string& id, const InvokeRequest& req) {
  auto it = wt->slots().find(id);
  if (it == wt->slots().end()) {
    return InvokeResult{UnavailableError(fmt::format("instance {} was stopped", id)), {}, id, 0};
  }
  Slot& slot = *it->second;
  int64_t t0 = MonoNanos();
  if (req.deadline_ns != 0 && t0 >= req.deadline_ns) {
    ++slot.expired;
    return InvokeResult{DeadlineExceededError(fmt::format(
                            "request expired after waiting in the queue of {} (its deadline "
                            "passed {} µs ago); not run",
                            id, (t0 - req.deadline_ns) / 1000)),
                        {},
                        id,
                        0};
  }
  RequestHost host(req.payload, slot.id);
  Status s = slot.inst->Call(req.handler, &host);
  int64_t dt = MonoNanos() - t0;
  ++slot.requests;
  slot.exec_ns_total += dt;
  const bool clean = s.ok() || host.IsGuestFailure(s);
  if (!s.ok()) {
    ++slot.failures;
    slot.last_error = s.ToString();
  }
  if (clean) {
    if (slot.service->manifest.stateful) {
      // The new state is the rollback point.
      Status snap = UpdateGoodState(&slot);
      if (!snap.ok()) TERN_LOG(ERROR) << "snapshot of " << slot.id << " failed: " << snap;
    }
    const bool ok = s.ok();
    return InvokeResult{std::move(s), ok ? std::move(host.reply()) : std::string(), id, dt};
  }
  // The guest did not reach a clean request boundary (trap, timeout, memory cap):
  // its memory may be half-updated. Replace it with a fresh instance holding the
  // last good state.
  ++slot.rollbacks;
  Status rb = RestoreSlot(wt, &slot, slot.good);
  std::string msg = std::string(s.message());
  if (rb.ok()) {
    msg += "; instance " + id + " was rolled back to its last good state";
  } else {
    msg += "; rolling instance " + id + " back failed (" + rb.ToString() + ")";
    TERN_LOG(ERROR) << "rollback of " << id << " failed: " << rb;
  }
  return InvokeResult{Status(s.code(), msg), {}, id, dt};
}

Status Agent::RestoreSlot(WorkerThread* wt, Slot* slot, const wasm::Snapshot& snap) {
  // In place when the memory has not outgrown the snapshot: every byte and the stack
  // pointer are overwritten, and the pages are already faulted in (7-29 GB/s here,
  // against ~1 GB/s for first touches of a fresh instance's memory). A wasm memory
  // cannot shrink, so a larger one needs a fresh instance.
  if (slot->inst->memory_bytes() <= snap.memory.size()) {
    Status s = slot->inst->Restore(snap);
    if (s.ok()) {
      if (slot->tracker != nullptr) {
        // The restore wrote every page; `good` is being set to `snap`: start clean.
        if (slot->inst->memory_data() != slot->tracked_base ||
            slot->inst->memory_bytes() != slot->tracker->bytes()) {
          StartTracking(slot);
        } else {
          TERN_RETURN_IF_ERROR(slot->tracker->Collect().status());
        }
      }
      return s;
    }
    TERN_LOG(WARN) << "in-place restore of " << slot->id << " failed (" << s
                   << "); restoring into a fresh instance";
  }
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<wasm::Instance> fresh,
                        wt->worker()->Instantiate(slot->service->module, slot->service->limits,
                                                  /*run_initialize=*/false));
  TERN_RETURN_IF_ERROR(fresh->Restore(snap));
  slot->tracker.reset();  // before the memory it tracks goes away
  slot->tracked_base = nullptr;
  slot->inst = std::move(fresh);
  if (slot->service->manifest.stateful) StartTracking(slot);
  return Status::Ok();
}

namespace {
constexpr size_t kTrackPage = 4096;
// Below this size a full copy of the memory is cheaper than write-protect tracking: on
// this VM each first write to a protected page is a ~15 µs fault and re-arming costs a
// TLB shootdown, ~110 µs per small request in all, while memcpy moves 4 MiB in ~100 µs.
constexpr uint64_t kTrackMinBytes = 4u << 20;
}  // namespace

void Agent::StartTracking(Slot* slot) {
  slot->tracker.reset();
  slot->tracked_base = nullptr;
  if (slot->inst->memory_bytes() < kTrackMinBytes) return;
  uint8_t* base = slot->inst->memory_data();
  Result<std::unique_ptr<wasm::DirtyTracker>> t =
      wasm::DirtyTracker::CreateUffd(base, slot->inst->memory_bytes(), kTrackPage);
  if (!t.ok()) {
    // Without userfaultfd the whole memory is copied after each request: correct, slower.
    TERN_LOG(DEBUG) << "no dirty tracking for " << slot->id << ": " << t.status();
    return;
  }
  slot->tracker = std::move(*t);
  slot->tracked_base = base;
}

Status Agent::UpdateGoodState(Slot* slot) {
  wasm::Instance* inst = slot->inst.get();
  uint8_t* base = inst->memory_data();
  const uint64_t bytes = inst->memory_bytes();
  if (slot->tracker == nullptr || base != slot->tracked_base || bytes < slot->good.memory.size()) {
    TERN_RETURN_IF_ERROR(inst->SnapshotInto(&slot->good));
    slot->pages_copied += bytes / kTrackPage;
    // Track from here if the memory is now big enough (or moved under a tracker).
    if (slot->tracker != nullptr || bytes >= kTrackMinBytes) StartTracking(slot);
    return Status::Ok();
  }
  std::string& good = slot->good.memory;
  const size_t old_bytes = good.size();
  if (bytes > old_bytes) {
    // Pages added by memory.grow during the request were not tracked yet: take them all.
    good.append(reinterpret_cast<const char*>(base) + old_bytes, bytes - old_bytes);
    slot->pages_copied += (bytes - old_bytes) / kTrackPage;
    TERN_RETURN_IF_ERROR(slot->tracker->Grow(bytes));
  }
  TERN_ASSIGN_OR_RETURN(std::vector<uint32_t> dirty, slot->tracker->Collect());
  for (uint32_t page : dirty) {
    size_t off = size_t{page} * kTrackPage;
    if (off >= old_bytes) continue;  // copied above
    std::memcpy(good.data() + off, base + off, kTrackPage);
  }
  slot->pages_copied += dirty.size();
  // Between requests the stack pointer is back at its initial value; keep it as is.
  return Status::Ok();
}

Result<InvokeResult> Agent::InvokeInline(const InvokeRequest& req) {
  std::string id;
  int w = -1;
  {
    MutexLock l(&mu_);
    if (!req.instance.empty()) {
      auto it = routes_.find(req.instance);
      if (it != routes_.end()) {
        id = it->first;
        w = it->second.worker;
      }
    } else {
      // Prefer an instance that lives on this very worker.
      for (const std::string& rid : InstancesOf(req.service)) {
        const Route& r = routes_.at(rid);
        if (w < 0 || workers_[r.worker].get() == current_worker) {
          id = rid;
          w = r.worker;
        }
        if (workers_[w].get() == current_worker) break;
      }
    }
  }
  if (w < 0) return NotFoundError("no instance for " + req.service);
  if (current_worker != workers_[w].get()) {
    return FailedPreconditionError("InvokeInline called off the instance's worker thread");
  }
  return Execute(workers_[w].get(), id, req);
}

Status Agent::RunOnWorkerOf(const std::string& instance_id, const std::function<void()>& fn) {
  TERN_ASSIGN_OR_RETURN(Route route, FindRoute(instance_id));
  return workers_[route.worker]->RunAndWait([&] {
    fn();
    return Status::Ok();
  });
}

InvokeResult Agent::InvokeSync(InvokeRequest request) {
  Mutex m;
  CondVar cv;
  bool ready = false;
  InvokeResult out;
  Invoke(std::move(request), [&](InvokeResult r) {
    MutexLock l(&m);
    out = std::move(r);
    ready = true;
    cv.Signal();
  });
  MutexLock l(&m);
  while (!ready) cv.Wait(&m);
  return out;
}

Result<wasm::Snapshot> Agent::Snapshot(const std::string& instance_id) {
  wasm::Snapshot snap;
  TERN_RETURN_IF_ERROR(RunOnSlot(instance_id, [&](WorkerThread*, Slot* slot) {
    return slot->inst->SnapshotInto(&snap);
  }));
  return snap;
}

Status Agent::Restore(const std::string& instance_id, const wasm::Snapshot& snap) {
  TERN_ASSIGN_OR_RETURN(Route route, FindRoute(instance_id));
  const std::shared_ptr<const Service>& svc = route.service;
  if (snap.module_hash != svc->module->hash()) {
    return FailedPreconditionError(fmt::format(
        "snapshot was taken from module {} but instance {} runs module {} (service '{}' "
        "version {}); restore into an instance of the same module",
        snap.module_hash.substr(0, 12), instance_id, svc->module->hash().substr(0, 12),
        svc->manifest.name, svc->manifest.version));
  }
  if (snap.pages() > svc->limits.max_memory_pages) {
    return ResourceExhaustedError(
        fmt::format("snapshot has {} pages, more than the {} page memory cap of service '{}'",
                    snap.pages(), svc->limits.max_memory_pages, svc->manifest.name));
  }
  return RunOnSlot(instance_id, [&](WorkerThread* wt, Slot* slot) -> Status {
    TERN_RETURN_IF_ERROR(RestoreSlot(wt, slot, snap));
    slot->good = snap;
    return Status::Ok();
  });
}

AgentStatus Agent::GetStatus() {
  AgentStatus st;
  st.device = options_.device;
  st.workers = static_cast<int>(workers_.size());
  st.cached_modules = engine_->CachedModuleCount();
  {
    MutexLock l(&mu_);
    for (const auto& [name, svc] : services_) {
      ServiceStatus ss;
      ss.manifest = svc->manifest;
      ss.module_hash = svc->module->hash();
      ss.module_bytes = svc->module_size;
      ss.instances = InstancesOf(name);
      st.services.push_back(std::move(ss));
    }
  }
  for (auto& w : workers_) {
    WorkerThread* wt = w.get();
    std::vector<InstanceStatus> part;
    Status s = wt->RunAndWait([&] {
      for (const auto& [id, slot] : wt->slots()) {
        InstanceStatus is;
        is.id = id;
        is.service = slot->service->manifest.name;
        is.worker = wt->index();
        is.requests = slot->requests;
        is.failures = slot->failures;
        is.rollbacks = slot->rollbacks;
        is.expired = slot->expired;
        is.memory_bytes = slot->inst->memory_bytes();
        is.pages_copied = slot->pages_copied;
        is.dirty_tracking = slot->tracker != nullptr;
        is.queued = slot->queued->load(std::memory_order_relaxed);
        is.exec_ns_total = slot->exec_ns_total;
        is.last_error = slot->last_error;
        part.push_back(std::move(is));
      }
      return Status::Ok();
    });
    if (s.ok()) st.instances.insert(st.instances.end(), part.begin(), part.end());
  }
  return st;
}

Status Agent::RunOnInstanceForTest(const std::string& instance_id,
                                   const std::function<void(wasm::Instance*)>& fn) {
  return RunOnSlot(instance_id, [&](WorkerThread*, Slot* slot) {
    fn(slot->inst.get());
    return Status::Ok();
  });
}

}  // namespace tern::agent
