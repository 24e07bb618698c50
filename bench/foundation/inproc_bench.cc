// Sections invoke, instantiate, snapshot and kernels: everything that runs inside one
// process with tern's V8 engine (see foundation.h and docs/benchmarks.md).
#include <fmt/format.h>
#include <sys/mman.h>

#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "agent/agent.h"
#include "core/file.h"
#include "core/manifest.h"
#include "core/mutex.h"
#include "foundation.h"
#include "raw_v8.h"
#include "tern_native.h"
#include "wasm/engine.h"
#include "wasm/snapshot.h"

extern "C" {
// The handlers of the native builds of examples/echo and examples/kernels.
int32_t echo_nop(void);
int32_t kernels_sum_filter(void);
int32_t kernels_sha256(void);
}

namespace tern::bench {
namespace {

// The CPU the single-threaded measurements run on, and the "other" vCPU.
constexpr int kCpuA = 0;
constexpr int kCpuB = 1;

std::string PinText(bool pinned, int cpu) {
  return pinned ? fmt::format("pinned cpu{}", cpu) : "unpinned";
}

// A service as the benchmarks load it: its manifest and module bytes.
struct Guest {
  Manifest manifest;
  std::string bytes;
  uint32_t cap_pages() const { return manifest.limits.memory_mib * 16; }
  wasm::InstanceLimits limits() const {
    wasm::InstanceLimits l;
    l.max_memory_pages = cap_pages();
    l.cpu_ms = manifest.limits.cpu_ms;
    l.max_reply_bytes = manifest.limits.response_bytes();
    return l;
  }
};

Result<Guest> LoadGuest(const Options& o, const std::string& name) {
  Guest g;
  TERN_ASSIGN_OR_RETURN(g.manifest,
                        LoadManifest(o.source_dir + "/examples/" + name + "/manifest.yaml"));
  TERN_ASSIGN_OR_RETURN(g.bytes, ReadFile(o.wasm_dir + "/" + name + ".wasm"));
  return g;
}

// HostCalls for engine-level calls: a fixed request, the reply kept.
class BenchHost final : public wasm::HostCalls {
 public:
  explicit BenchHost(std::string request = "") : request_(std::move(request)) {}
  std::string_view Request() override { return request_; }
  void SetReply(std::string_view bytes) override { reply_.assign(bytes.data(), bytes.size()); }
  void SetFailure(StatusCode, std::string_view message) override {
    failure_.assign(message.data(), message.size());
  }
  void Log(int32_t, std::string_view) override {}
  void set_request(std::string r) { request_ = std::move(r); }
  const std::string& reply() const { return reply_; }

 private:
  std::string request_;
  std::string reply_;
  std::string failure_;
};

// Runs `fn` on a new thread that owns a wasm::Worker (its isolate), pinned to `cpu`
// (< 0: unpinned), and joins it. The Worker dies on that thread after `fn` returns, so
// `fn` must destroy its instances before returning.
Status OnWorkerThread(wasm::Engine* engine, int cpu,
                      const std::function<Status(wasm::Worker*, bool pinned)>& fn) {
  Status st;
  std::thread t([&] {
    bool pinned = cpu >= 0 && PinThisThread(cpu);
    Result<std::unique_ptr<wasm::Worker>> w = engine->NewWorker();
    if (!w.ok()) {
      st = w.status();
      return;
    }
    st = fn(w->get(), pinned);
  });
  t.join();
  return st;
}

std::string GBps(double bytes, double ns) { return Fmt3(bytes / ns) + " GB/s"; }

// Times `n` calls of `fn` one by one, after `warmup` untimed ones.
template <typename Fn>
std::vector<int64_t> TimeEach(size_t warmup, size_t n, Fn&& fn) {
  for (size_t i = 0; i < warmup; ++i) fn();
  std::vector<int64_t> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t t0 = NowNs();
    fn();
    v.push_back(NowNs() - t0);
  }
  return v;
}

// Per-call time without per-call timer reads: `n` calls of `fn` in batches of
// kBatchCalls, each batch timed as a whole; returns the median over batches of the
// mean time per call (the median keeps batches hit by preemption out).
constexpr size_t kBatchCalls = 1000;
template <typename Fn>
double TimeBatches(size_t n, Fn&& fn) {
  std::vector<int64_t> per_batch;  // in units of 1/1000 ns per call
  for (size_t done = 0; done + kBatchCalls <= n; done += kBatchCalls) {
    int64_t t0 = NowNs();
    for (size_t i = 0; i < kBatchCalls; ++i) fn();
    per_batch.push_back((NowNs() - t0) * 1000 / static_cast<int64_t>(kBatchCalls));
  }
  return Summarize(per_batch).p50 / 1000.0;
}

double P50(std::vector<int64_t> v) { return Summarize(v).p50; }
double Min(std::vector<int64_t> v) { return Summarize(v).min; }

// A two-thread handoff through tern::Mutex + CondVar (the primitives the agent's worker
// queue uses): one round trip = post + wake the peer + the peer answers + wake back.
std::vector<int64_t> CondVarPingPong(size_t warmup, size_t n, int cpu_a, int cpu_b, bool* pinned) {
  Mutex mu;
  CondVar to_b, to_a;
  uint64_t posted = 0, answered = 0;  // guarded by mu
  bool stop = false;
  std::atomic<bool> pin_ok{true};
  std::thread b([&] {
    if (cpu_b >= 0 && !PinThisThread(cpu_b)) pin_ok = false;
    MutexLock l(&mu);
    for (;;) {
      while (posted == answered && !stop) to_b.Wait(&mu);
      if (stop) break;
      answered = posted;
      to_a.Signal();
    }
  });
  if (cpu_a >= 0 && !PinThisThread(cpu_a)) pin_ok = false;
  std::vector<int64_t> v;
  v.reserve(n);
  for (size_t i = 0; i < warmup + n; ++i) {
    int64_t t0 = NowNs();
    {
      MutexLock l(&mu);
      ++posted;
      to_b.Signal();
      while (answered != posted) to_a.Wait(&mu);
    }
    if (i >= warmup) v.push_back(NowNs() - t0);
  }
  {
    MutexLock l(&mu);
    stop = true;
    to_b.Signal();
  }
  b.join();
  UnpinThisThread();
  *pinned = pin_ok && cpu_a >= 0;
  return v;
}

// ------------------------------------------------------------------ state shared by sections

struct Shared {
  wasm::Engine* engine = nullptr;
  Guest echo, counter, kernels;
  std::optional<RawV8Results> raw;  // computed once for invoke + instantiate
  int cpus = 1;
};

Status EnsureRawV8(const Options& o, Shared* s) {
  if (s->raw) return Status::Ok();
  RawV8Options ro;
  ro.cpu = kCpuA;
  ro.warmup_calls = o.N(10000, 1000);
  ro.calls = o.N(100000, 10000);
  ro.batch_calls = o.N(1000000, 100000);
  ro.warmup_instantiations = o.N(100, 20);
  ro.instantiations = o.N(2000, 200);
  Progress("raw V8 floor: compiling echo.wasm in a fresh isolate, calling `nop`, instantiating");
  TERN_ASSIGN_OR_RETURN(RawV8Results r, RunRawV8(s->echo.bytes, ro));
  s->raw = std::move(r);
  return Status::Ok();
}

// ------------------------------------------------------------------ 1. invoke

Status RunInvoke(const Options& o, Shared* s, Report* rep) {
  const std::string sec = "invoke";
  rep->SetSectionInfo(
      sec, "1. Warm invoke of a no-op handler (echo/nop), in-process, no network",
      "Per-call samples are each timed with two clock_gettime reads (the timer overhead "
      "row says what that adds); 'batch median' is the median, over batches of 1000 calls timed as "
      "a whole, "
      "of the time per call (no per-call timer reads, preempted batches ignored). "
      "Single-thread rows run on one pinned thread. The agent runs 1 worker thread.");
  const double timer = TimerOverheadNs();
  rep->AddValue(sec, "timer overhead (one clock_gettime, median)", "", FormatNs(timer),
                {{"timer_ns", timer}});

  const size_t warm = o.N(10000, 1000), n = o.N(100000, 10000), batch = o.N(1000000, 100000);

  // (a) the agent's in-process path, from inside RunOnWorkerOf.
  agent::AgentOptions ao;
  ao.device = "bench";
  ao.workers = 1;
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<agent::Agent> ag, agent::Agent::Create(ao, s->engine));
  TERN_ASSIGN_OR_RETURN(agent::ServiceStatus ss, ag->Deploy(s->echo.manifest, s->echo.bytes));
  if (ss.instances.empty()) return InternalError("echo deployed without an instance");
  const std::string id = ss.instances[0];
  agent::InvokeRequest req;
  req.service = "echo";
  req.handler = "nop";
  req.instance = id;

  std::vector<int64_t> inline_ns;
  double inline_batch = 0;
  bool pinned = false;
  Status inner;
  TERN_RETURN_IF_ERROR(ag->RunOnWorkerOf(id, [&] {
    pinned = PinThisThread(kCpuA);
    auto call = [&] {
      Result<agent::InvokeResult> r = ag->InvokeInline(req);
      if (!r.ok())
        inner = r.status();
      else if (!r->status.ok())
        inner = r->status;
    };
    inline_ns = TimeEach(warm, n, call);
    inline_batch = TimeBatches(batch, call);
    UnpinThisThread();
  }));
  TERN_RETURN_IF_ERROR(inner.WithPrefix("InvokeInline"));
  const double inline_p50 = P50(inline_ns);
  rep->AddSamples(sec, "agent: Agent::InvokeInline (in RunOnWorkerOf)", PinText(pinned, kCpuA),
                  std::move(inline_ns), "batch median " + FormatNs(inline_batch),
                  {{"batch_median_ns", inline_batch}});

  // (b) the engine layer alone: wasm::Instance::Call.
  std::vector<int64_t> call_ns;
  double call_batch = 0;
  TERN_RETURN_IF_ERROR(OnWorkerThread(s->engine, kCpuA, [&](wasm::Worker* w, bool p) -> Status {
    pinned = p;
    TERN_ASSIGN_OR_RETURN(auto module, s->engine->Compile(s->echo.bytes, s->echo.cap_pages()));
    TERN_ASSIGN_OR_RETURN(auto inst, w->Instantiate(module, s->echo.limits(), true));
    BenchHost host;
    Status st;
    auto call = [&] {
      Status c = inst->Call("nop", &host);
      if (!c.ok()) st = c;
    };
    call_ns = TimeEach(warm, n, call);
    call_batch = TimeBatches(batch, call);
    return st;
  }));
  const double call_p50 = P50(call_ns);
  rep->AddSamples(sec, "engine: wasm::Instance::Call(\"nop\")", PinText(pinned, kCpuA),
                  std::move(call_ns), "batch median " + FormatNs(call_batch),
                  {{"batch_median_ns", call_batch}});

  // (c) the floor: the same export called through V8's API directly.
  TERN_RETURN_IF_ERROR(EnsureRawV8(o, s));
  const double raw_p50 = P50(s->raw->call_ns);
  rep->AddSamples(sec, "floor: raw V8 Function::Call of export `nop`",
                  PinText(s->raw->pinned, kCpuA), s->raw->call_ns,
                  "batch median " + FormatNs(s->raw->batch_median_ns),
                  {{"batch_median_ns", s->raw->batch_median_ns}});

  // (d) the peer: the same handler compiled natively (echo_native), called directly.
  std::vector<int64_t> native_ns;
  double native_batch = 0;
  {
    std::thread t([&] {
      pinned = PinThisThread(kCpuA);
      tern_native_set_log_level(TERN_LOG_ERROR + 1);
      tern_native_set_request(nullptr, 0);
      auto call = [] { (void)tern_native_invoke(echo_nop); };
      native_ns = TimeEach(warm, n, call);
      native_batch = TimeBatches(batch * 10, call);
    });
    t.join();
  }
  rep->AddSamples(sec, "native: echo_native tern_native_invoke(echo_nop)", PinText(pinned, kCpuA),
                  std::move(native_ns), "batch median " + FormatNs(native_batch),
                  {{"batch_median_ns", native_batch}});

  // (e) the cross-thread path: Agent::InvokeSync from another thread, vs a bare
  // Mutex+CondVar round trip between two threads placed the same way.
  const size_t xwarm = o.N(1000, 100), xn = o.N(10000, 1000);
  struct Placement {
    const char* label;
    int worker_cpu;
    int client_cpu;
  };
  std::vector<Placement> placements = {{"same vCPU", kCpuA, kCpuA}};
  if (s->cpus >= 2) placements.push_back({"cross vCPU", kCpuA, kCpuB});
  placements.push_back({"unpinned", -1, -1});
  agent::InvokeRequest sreq = req;
  double sync_same = 0, sync_cross = 0, cv_same = 0, cv_cross = 0;
  for (const Placement& pl : placements) {
    bool wp = false;
    TERN_RETURN_IF_ERROR(ag->RunOnWorkerOf(id, [&] {
      if (pl.worker_cpu >= 0)
        wp = PinThisThread(pl.worker_cpu);
      else
        UnpinThisThread();
    }));
    std::vector<int64_t> sync_ns;
    bool cp = false;
    Status st;
    std::thread client([&] {
      if (pl.client_cpu >= 0) cp = PinThisThread(pl.client_cpu);
      sync_ns = TimeEach(xwarm, xn, [&] {
        agent::InvokeResult r = ag->InvokeSync(sreq);
        if (!r.status.ok()) st = r.status;
      });
    });
    client.join();
    TERN_RETURN_IF_ERROR(st.WithPrefix("InvokeSync"));
    std::string where = pl.worker_cpu < 0
                            ? "unpinned"
                            : fmt::format("{}: worker {}, caller {}", pl.label,
                                          PinText(wp, pl.worker_cpu), PinText(cp, pl.client_cpu));
    double p50 = P50(sync_ns);
    rep->AddSamples(sec, "agent: Agent::InvokeSync from another thread", where, std::move(sync_ns));
    bool cvp = false;
    std::vector<int64_t> cv_ns;
    std::thread cv_thread(
        [&] { cv_ns = CondVarPingPong(xwarm, xn, pl.worker_cpu, pl.client_cpu, &cvp); });
    cv_thread.join();
    double cvp50 = P50(cv_ns);
    const std::string cv_where =
        pl.worker_cpu < 0 ? "unpinned"
                          : fmt::format("{}: threads {} and {}", pl.label,
                                        PinText(cvp, pl.worker_cpu), PinText(cvp, pl.client_cpu));
    rep->AddSamples(sec, "floor: bare Mutex+CondVar round trip between two threads", cv_where,
                    std::move(cv_ns));
    if (std::string(pl.label) == "same vCPU") {
      sync_same = p50;
      cv_same = cvp50;
    } else if (std::string(pl.label) == "cross vCPU") {
      sync_cross = p50;
      cv_cross = cvp50;
    }
  }
  TERN_RETURN_IF_ERROR(ag->RunOnWorkerOf(id, [] { UnpinThisThread(); }));

  // (f) a stateful request: counter/incr with 1 and 16 MiB of state. After each clean
  // request the agent brings the instance's rollback point up to date, copying only the
  // pages the request wrote (userfaultfd) or, without it, the whole memory.
  std::vector<std::pair<uint32_t, double>> stateful_p50;
  {
    TERN_ASSIGN_OR_RETURN(agent::ServiceStatus cs,
                          ag->Deploy(s->counter.manifest, s->counter.bytes));
    if (cs.instances.empty()) return InternalError("counter deployed without an instance");
    agent::InvokeRequest creq;
    creq.service = "counter";
    creq.instance = cs.instances[0];
    uint32_t have_kib = 0;
    for (uint32_t kib : {1024u, 16384u}) {
      agent::InvokeRequest fill = creq;
      fill.handler = "fill";
      fill.payload = std::to_string(kib - have_kib);
      have_kib = kib;
      agent::InvokeResult fr = ag->InvokeSync(fill);
      TERN_RETURN_IF_ERROR(fr.status.WithPrefix("counter fill"));
      creq.handler = "incr";
      std::vector<int64_t> ns;
      Status cinner;
      TERN_RETURN_IF_ERROR(ag->RunOnWorkerOf(creq.instance, [&] {
        pinned = PinThisThread(kCpuA);
        ns = TimeEach(o.N(2000, 200), o.N(20000, 2000), [&] {
          Result<agent::InvokeResult> r = ag->InvokeInline(creq);
          if (!r.ok())
            cinner = r.status();
          else if (!r->status.ok())
            cinner = r->status;
        });
        UnpinThisThread();
      }));
      TERN_RETURN_IF_ERROR(cinner.WithPrefix("counter incr"));
      agent::AgentStatus st = ag->GetStatus();
      std::string how = "whole memory copied per request";
      for (const auto& i : st.instances) {
        if (i.id == creq.instance && i.dirty_tracking) how = "written pages copied (userfaultfd)";
      }
      stateful_p50.emplace_back(kib, P50(ns));
      rep->AddSamples(
          sec, fmt::format("agent: stateful counter/incr, {} MiB state, InvokeInline", kib / 1024),
          PinText(pinned, kCpuA), std::move(ns), how, {{"state_kib", static_cast<double>(kib)}});
    }
  }
  ag->Shutdown();

  rep->AddSummary({"1. warm no-op invoke, in-process (Agent::InvokeInline, echo/nop), p50",
                   FormatNs(inline_p50), "raw V8 export call " + FormatNs(raw_p50),
                   inline_p50 / raw_p50, "p50 ≤ 2 µs", inline_p50 <= 2000});
  rep->AddSummary({"1b. same, engine layer only (Instance::Call), p50", FormatNs(call_p50),
                   "raw V8 export call " + FormatNs(raw_p50), call_p50 / raw_p50, "",
                   std::nullopt});
  rep->AddSummary({"1c. same, native build (echo_native), batch median", FormatNs(native_batch),
                   "raw V8 export call, batch median " + FormatNs(s->raw->batch_median_ns),
                   std::nullopt, "", std::nullopt});
  rep->AddSummary({"1d. cross-thread Agent::InvokeSync, same vCPU, p50", FormatNs(sync_same),
                   "Mutex+CondVar round trip " + FormatNs(cv_same), sync_same / cv_same, "",
                   std::nullopt});
  for (const auto& [kib, p50] : stateful_p50) {
    rep->AddSummary(
        {fmt::format("1f. stateful invoke (counter/incr, {} MiB state, rollback point kept), p50",
                     kib / 1024),
         FormatNs(p50), "no-op invoke " + FormatNs(inline_p50), p50 / inline_p50, "",
         std::nullopt});
  }
  if (s->cpus >= 2) {
    rep->AddSummary({"1e. cross-thread Agent::InvokeSync, cross vCPU, p50", FormatNs(sync_cross),
                     "Mutex+CondVar round trip " + FormatNs(cv_cross), sync_cross / cv_cross, "",
                     std::nullopt});
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ 2. instantiate

Status RunInstantiate(const Options& o, Shared* s, Report* rep) {
  const std::string sec = "instantiate";
  rep->SetSectionInfo(
      sec, "2. New instance from a cached module (echo.wasm, 16 MiB cap)",
      "Worker::Instantiate(module, limits, run_initialize) then destroying the instance, "
      "in a loop on one pinned worker thread; the module is compiled once before. The floor "
      "is `new WebAssembly.Instance(module, imports)` in a raw isolate with prebuilt stub "
      "imports. Destroying an instance drops V8 handles; its memory is reclaimed by V8's "
      "GC later, whose cost lands in whichever iteration it runs.");
  const size_t warm = o.N(100, 20), n = o.N(2000, 200);
  struct Pass {
    bool init;
    std::vector<int64_t> total, create, destroy;
  };
  std::vector<Pass> passes = {{true, {}, {}, {}}, {false, {}, {}, {}}};
  bool pinned = false;
  TERN_RETURN_IF_ERROR(OnWorkerThread(s->engine, kCpuA, [&](wasm::Worker* w, bool p) -> Status {
    pinned = p;
    TERN_ASSIGN_OR_RETURN(auto module, s->engine->Compile(s->echo.bytes, s->echo.cap_pages()));
    const wasm::InstanceLimits limits = s->echo.limits();
    for (Pass& pass : passes) {
      for (size_t i = 0; i < warm + n; ++i) {
        int64_t t0 = NowNs();
        Result<std::unique_ptr<wasm::Instance>> inst = w->Instantiate(module, limits, pass.init);
        int64_t t1 = NowNs();
        if (!inst.ok()) return inst.status().WithPrefix(fmt::format("instantiation {}", i));
        inst->reset();
        int64_t t2 = NowNs();
        if (i < warm) continue;
        pass.total.push_back(t2 - t0);
        pass.create.push_back(t1 - t0);
        pass.destroy.push_back(t2 - t1);
      }
    }
    return Status::Ok();
  }));
  TERN_RETURN_IF_ERROR(EnsureRawV8(o, s));
  const std::string where = PinText(pinned, kCpuA);
  double with_init = 0, without_init = 0;
  for (Pass& pass : passes) {
    const std::string what = pass.init ? "with _initialize" : "without _initialize";
    (pass.init ? with_init : without_init) = P50(pass.total);
    rep->AddSamples(sec, "Instantiate + destroy, " + what, where, std::move(pass.total));
    rep->AddSamples(sec, "  of which Instantiate, " + what, where, std::move(pass.create));
    rep->AddSamples(sec, "  of which destroy, " + what, where, std::move(pass.destroy));
  }
  const double raw_init = P50(s->raw->instantiate_init_ns);
  const double raw_plain = P50(s->raw->instantiate_ns);
  rep->AddSamples(sec, "floor: raw V8 new WebAssembly.Instance + _initialize()",
                  PinText(s->raw->pinned, kCpuA), s->raw->instantiate_init_ns);
  rep->AddSamples(sec, "floor: raw V8 new WebAssembly.Instance", PinText(s->raw->pinned, kCpuA),
                  s->raw->instantiate_ns);
  rep->AddSummary({"2. new instance from cached module (+ _initialize, + destroy), p50",
                   FormatNs(with_init), "raw V8 new Instance + _initialize " + FormatNs(raw_init),
                   with_init / raw_init, "p50 ≤ 100 µs", with_init <= 100000});
  rep->AddSummary({"2b. same, without _initialize, p50", FormatNs(without_init),
                   "raw V8 new Instance " + FormatNs(raw_plain), without_init / raw_plain,
                   "p50 ≤ 100 µs", without_init <= 100000});
  return Status::Ok();
}

// ------------------------------------------------------------------ 3. snapshot

// A pre-faulted anonymous mapping (the memcpy floor's destination).
class Faulted {
 public:
  explicit Faulted(size_t n) : n_(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p_ = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
    if (p_ != nullptr) std::memset(p_, 1, n);
  }
  ~Faulted() {
    if (p_ != nullptr) munmap(p_, n_);
  }
  Faulted(const Faulted&) = delete;
  Faulted& operator=(const Faulted&) = delete;
  uint8_t* data() { return p_; }

 private:
  size_t n_;
  uint8_t* p_;
};

Status RunSnapshot(const Options& o, Shared* s, Report* rep) {
  const std::string sec = "snapshot";
  rep->SetSectionInfo(
      sec, "3. Snapshot and restore throughput (counter, state grown with `fill`)",
      "GB/s = instance memory bytes / time (1 GB = 1e9 B), from the median and (best) the "
      "minimum time. SnapshotInto copies memory into a reused Snapshot buffer; 'Restore, "
      "equal size' restores into an instance that already has the size; 'Restore, fresh "
      "instance' instantiates without _initialize, then Restore grows the memory and copies "
      "in (the restore time excludes the instantiation, which the next row includes). The "
      "floor is memcpy of the same size between two pre-faulted buffers; for restores into a "
      "fresh instance, whose memory is new, the floors are a copy into fresh anonymous memory "
      "(mmap + MADV_POPULATE_WRITE + memcpy) and the same restore steps done with V8's API "
      "directly (memory.grow, populate, memcpy). One pinned worker thread. The restored "
      "state is verified with counter's `check`; the summary's ratio for fresh restores is "
      "against the fresh-memory copy. EncodeSnapshot and DecodeSnapshot build a new "
      "std::string per call (zero-filled, then written), so they pay for fresh pages each "
      "time once the size is above glibc's mmap threshold (which adapts up to 32 MiB).");
  struct Size {
    uint32_t mib;
    size_t reps, fresh_reps, enc_reps;
  };
  std::vector<Size> sizes = {{1, o.N(200, 20), o.N(50, 5), o.N(50, 5)},
                             {16, o.N(30, 5), o.N(15, 3), o.N(10, 2)}};
  if (!o.quick) sizes.push_back({64, 10, 8, 4});
  TERN_RETURN_IF_ERROR(OnWorkerThread(s->engine, kCpuA, [&](wasm::Worker* w, bool p) -> Status {
    const std::string where = PinText(p, kCpuA);
    TERN_ASSIGN_OR_RETURN(auto module,
                          s->engine->Compile(s->counter.bytes, s->counter.cap_pages()));
    const wasm::InstanceLimits limits = s->counter.limits();
    for (const Size& sz : sizes) {
      TERN_ASSIGN_OR_RETURN(auto inst, w->Instantiate(module, limits, true));
      // Grow the state to about sz.mib MiB (a fresh instance holds ~128 KiB).
      const uint32_t kib = sz.mib * 1024 - 192;
      BenchHost fill(std::to_string(kib));
      TERN_RETURN_IF_ERROR(inst->Call("fill", &fill).WithPrefix("fill"));
      const std::string checksum = fill.reply();
      const uint64_t bytes = inst->memory_bytes();
      const double b = static_cast<double>(bytes);
      const std::string label = fmt::format("{} MiB ({} pages)", sz.mib, bytes / 65536);

      // SnapshotInto, reused buffer (the first one allocates and faults it in).
      wasm::Snapshot snap;
      int64_t t0 = NowNs();
      TERN_RETURN_IF_ERROR(inst->SnapshotInto(&snap));
      const int64_t first = NowNs() - t0;
      Status st;
      std::vector<int64_t> snap_ns = TimeEach(1, sz.reps, [&] {
        Status c = inst->SnapshotInto(&snap);
        if (!c.ok()) st = c;
      });
      TERN_RETURN_IF_ERROR(st);
      const double snap_p50 = P50(snap_ns), snap_min = Min(snap_ns);

      // memcpy floor.
      Faulted dst(bytes);
      if (dst.data() == nullptr) return ResourceExhaustedError("mmap for the memcpy floor");
      std::vector<int64_t> cpy_ns =
          TimeEach(1, sz.reps, [&] { std::memcpy(dst.data(), snap.memory.data(), bytes); });
      const double cpy_p50 = P50(cpy_ns), cpy_min = Min(cpy_ns);

      // Restore into an instance that already has this size.
      TERN_ASSIGN_OR_RETURN(auto same, w->Instantiate(module, limits, false));
      TERN_RETURN_IF_ERROR(same->Restore(snap).WithPrefix("first restore"));
      std::vector<int64_t> rest_ns = TimeEach(1, sz.reps, [&] {
        Status c = same->Restore(snap);
        if (!c.ok()) st = c;
      });
      TERN_RETURN_IF_ERROR(st);
      BenchHost check;
      TERN_RETURN_IF_ERROR(same->Call("check", &check).WithPrefix("check after restore"));
      if (check.reply() != checksum) {
        return DataLossError(fmt::format("restored checksum {} != {}", check.reply(), checksum));
      }
      same.reset();
      const double rest_p50 = P50(rest_ns), rest_min = Min(rest_ns);

      // Restore into a fresh instance (instantiate without _initialize, then Restore).
      std::vector<int64_t> fresh_restore, fresh_total;
      for (size_t i = 0; i < sz.fresh_reps; ++i) {
        int64_t a = NowNs();
        TERN_ASSIGN_OR_RETURN(auto fresh, w->Instantiate(module, limits, false));
        int64_t m = NowNs();
        TERN_RETURN_IF_ERROR(fresh->Restore(snap).WithPrefix("restore into a fresh instance"));
        int64_t e = NowNs();
        fresh_restore.push_back(e - m);
        fresh_total.push_back(e - a);
        if (i == 0) {
          BenchHost c2;
          TERN_RETURN_IF_ERROR(fresh->Call("check", &c2).WithPrefix("check after fresh restore"));
          if (c2.reply() != checksum) return DataLossError("fresh restore: checksum differs");
        }
      }
      const double fresh_p50 = P50(fresh_restore), fresh_min = Min(fresh_restore);
      const double fresh_total_p50 = P50(fresh_total);

      // Floors for the fresh restore: copying into fresh anonymous memory (mmap +
      // MADV_POPULATE_WRITE + memcpy), and the same restore steps done in raw V8.
      std::vector<int64_t> fresh_cpy_ns;
      for (size_t i = 0; i < sz.fresh_reps; ++i) {
        int64_t a = NowNs();
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return ResourceExhaustedError("mmap for the fresh-memory floor");
        ::madvise(p, bytes, MADV_POPULATE_WRITE);
        std::memcpy(p, snap.memory.data(), bytes);
        fresh_cpy_ns.push_back(NowNs() - a);
        munmap(p, bytes);
      }
      const double fresh_cpy_p50 = P50(fresh_cpy_ns), fresh_cpy_min = Min(fresh_cpy_ns);
      TERN_ASSIGN_OR_RETURN(RawRestoreResults raw,
                            RunRawV8Restore(s->counter.bytes, snap.memory, sz.fresh_reps, kCpuA));
      const double raw_restore_p50 = P50(raw.restore_ns);

      // Encode / decode (the file format: zero pages elided, CRC).
      std::string enc;
      std::vector<int64_t> enc_ns =
          TimeEach(0, sz.enc_reps, [&] { enc = wasm::EncodeSnapshot(snap); });
      std::vector<int64_t> dec_ns;
      for (size_t i = 0; i < sz.enc_reps; ++i) {
        int64_t a = NowNs();
        Result<wasm::Snapshot> d = wasm::DecodeSnapshot(enc);
        dec_ns.push_back(NowNs() - a);
        if (!d.ok()) return d.status().WithPrefix("DecodeSnapshot");
        if (i == 0 && !(*d == snap)) return DataLossError("decoded snapshot differs");
      }
      const double enc_p50 = P50(enc_ns), dec_p50 = P50(dec_ns);

      auto gb = [&](double p50, double mn) {
        return fmt::format("{} (best {})", GBps(b, p50), GBps(b, mn));
      };
      nlohmann::json f = {{"memory_bytes", bytes}};
      rep->AddValue(
          sec, "SnapshotInto, first call (allocates the buffer), " + label, where,
          FormatNs(static_cast<double>(first)) + " = " + GBps(b, static_cast<double>(first)));
      rep->AddSamples(sec, "SnapshotInto, reused buffer, " + label, where, std::move(snap_ns),
                      gb(snap_p50, snap_min), f);
      rep->AddSamples(sec, "Restore, equal-size instance, " + label, where, std::move(rest_ns),
                      gb(rest_p50, rest_min), f);
      rep->AddSamples(sec, "Restore, fresh instance (grow + copy), " + label, where, fresh_restore,
                      gb(fresh_p50, fresh_min), f);
      rep->AddSamples(sec, "Instantiate + Restore, fresh instance, " + label, where,
                      std::move(fresh_total), GBps(b, fresh_total_p50), f);
      rep->AddSamples(sec, "floor: memcpy between pre-faulted buffers, " + label, where,
                      std::move(cpy_ns), gb(cpy_p50, cpy_min), f);
      rep->AddSamples(sec, "floor: memcpy into fresh memory (mmap + populate + copy), " + label,
                      where, std::move(fresh_cpy_ns), gb(fresh_cpy_p50, fresh_cpy_min), f);
      const std::string raw_where = PinText(raw.pinned, kCpuA);
      rep->AddSamples(sec,
                      "raw V8 restore into a fresh instance (grow + populate + copy), " + label,
                      raw_where, raw.restore_ns, gb(raw_restore_p50, Min(raw.restore_ns)), f);
      rep->AddSamples(sec, "  of which memory.grow", raw_where, std::move(raw.grow_ns));
      rep->AddSamples(sec, "  of which madvise(MADV_POPULATE_WRITE)", raw_where,
                      std::move(raw.populate_ns));
      rep->AddSamples(sec, "  of which memcpy", raw_where, std::move(raw.copy_ns));
      rep->AddSamples(sec, "raw V8 new Instance (no _initialize) before it", raw_where,
                      std::move(raw.instantiate_ns));
      rep->AddSamples(sec, "EncodeSnapshot, " + label, where, std::move(enc_ns),
                      fmt::format("{}; file {} B = {}% of memory", GBps(b, enc_p50), enc.size(),
                                  Fmt3(100.0 * static_cast<double>(enc.size()) / b)),
                      {{"memory_bytes", bytes}, {"encoded_bytes", enc.size()}});
      rep->AddSamples(sec, "DecodeSnapshot, " + label, where, std::move(dec_ns), GBps(b, dec_p50),
                      f);

      const std::string mem = fmt::format("memcpy {}", GBps(b, cpy_p50));
      rep->AddSummary({fmt::format("3. snapshot (SnapshotInto) {} MiB, median", sz.mib),
                       GBps(b, snap_p50), mem, snap_p50 / cpy_p50, "≥ 2 GB/s",
                       b / snap_p50 >= 2.0});
      rep->AddSummary({fmt::format("3. restore into equal-size instance {} MiB, median", sz.mib),
                       GBps(b, rest_p50), mem, rest_p50 / cpy_p50, "≥ 2 GB/s",
                       b / rest_p50 >= 2.0});
      rep->AddSummary({fmt::format("3. restore into fresh instance {} MiB, median", sz.mib),
                       GBps(b, fresh_p50),
                       fmt::format("copy into fresh memory {}; raw V8 grow+copy {}",
                                   GBps(b, fresh_cpy_p50), GBps(b, raw_restore_p50)),
                       fresh_p50 / fresh_cpy_p50, "≥ 2 GB/s", b / fresh_p50 >= 2.0});
      inst.reset();
    }
    return Status::Ok();
  }));
  return Status::Ok();
}

// ------------------------------------------------------------------ 4. kernels

std::string U32Le(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

std::string Hex(const std::string& s) {
  std::string out;
  for (unsigned char c : s) out += fmt::format("{:02x}", c);
  return out;
}

Status RunKernels(const Options& o, Shared* s, Report* rep) {
  const std::string sec = "kernels";
  rep->SetSectionInfo(
      sec, "4. Compute kernels: wasm (Instance::Call) vs the same C compiled natively (-O2)",
      "Both builds of examples/kernels/kernels.c run on one pinned thread, alternating call "
      "by call. The first call also generates the input (both builds cache it) and, in "
      "wasm, runs Liftoff code; then wasm calls run until V8 has tiered up to TurboFan "
      "(warm-up), and the timed rounds follow. 'best' = min, 'median' = p50. Results of "
      "wasm and native are compared byte for byte.");
  struct Kernel {
    const char* name;
    const char* label;
    std::string request;
    tern_native_handler native;
    size_t rounds;
  };
  std::vector<Kernel> kernels = {
      {"sum_filter", "sum_filter n = 1M int32", U32Le(1u << 20), kernels_sum_filter, o.N(100, 10)},
      {"sha256", "sha256 over 4 MiB", U32Le(4096), kernels_sha256, o.N(30, 4)},
  };
  const int64_t warm_ns = o.quick ? 150'000'000 : 600'000'000;
  TERN_RETURN_IF_ERROR(OnWorkerThread(s->engine, kCpuA, [&](wasm::Worker* w, bool p) -> Status {
    const std::string where = PinText(p, kCpuA);
    TERN_ASSIGN_OR_RETURN(auto module,
                          s->engine->Compile(s->kernels.bytes, s->kernels.cap_pages()));
    TERN_ASSIGN_OR_RETURN(auto inst, w->Instantiate(module, s->kernels.limits(), true));
    tern_native_set_log_level(TERN_LOG_ERROR + 1);
    for (const Kernel& k : kernels) {
      BenchHost host(k.request);
      auto wasm_call = [&]() -> Result<int64_t> {
        int64_t t0 = NowNs();
        Status st = inst->Call(k.name, &host);
        int64_t dt = NowNs() - t0;
        if (!st.ok()) return st.WithPrefix(k.name);
        return dt;
      };
      std::string native_reply;
      auto native_call = [&]() -> Result<int64_t> {
        tern_native_set_request(k.request.data(), static_cast<uint32_t>(k.request.size()));
        int64_t t0 = NowNs();
        int32_t rc = tern_native_invoke(k.native);
        int64_t dt = NowNs() - t0;
        if (rc != 0) return InternalError(fmt::format("native {} returned {}", k.name, rc));
        const void* data = nullptr;
        uint32_t len = 0;
        tern_native_reply(&data, &len);
        native_reply.assign(static_cast<const char*>(data), len);
        return dt;
      };
      TERN_ASSIGN_OR_RETURN(int64_t wasm_first, wasm_call());
      TERN_ASSIGN_OR_RETURN(int64_t wasm_second, wasm_call());
      TERN_ASSIGN_OR_RETURN(int64_t native_first, native_call());
      if (host.reply() != native_reply || host.reply().empty()) {
        return DataLossError(fmt::format("{}: wasm replied {}, native {}", k.name,
                                         Hex(host.reply()), Hex(native_reply)));
      }
      // Warm-up until TurboFan code is in (tiering happens in the background).
      size_t warm_calls = 0;
      for (int64_t start = NowNs(); warm_calls < 5 || NowNs() - start < warm_ns; ++warm_calls) {
        TERN_RETURN_IF_ERROR(wasm_call().status());
      }
      std::vector<int64_t> wasm_ns, native_ns;
      for (size_t r = 0; r < k.rounds; ++r) {
        TERN_ASSIGN_OR_RETURN(int64_t a, wasm_call());
        TERN_ASSIGN_OR_RETURN(int64_t b, native_call());
        wasm_ns.push_back(a);
        native_ns.push_back(b);
      }
      if (host.reply() != native_reply)
        return DataLossError(std::string(k.name) + ": results differ");
      const double wb = Min(wasm_ns), wm = P50(wasm_ns), nb = Min(native_ns), nm = P50(native_ns);
      rep->AddValue(
          sec, fmt::format("wasm {}: first call / second call", k.label), where,
          FormatNs(static_cast<double>(wasm_first)) + " / " +
              FormatNs(static_cast<double>(wasm_second)) +
              fmt::format(" (then {} warm-up calls)", warm_calls),
          {{"first_ns", wasm_first}, {"second_ns", wasm_second}, {"warmup_calls", warm_calls}});
      rep->AddValue(sec, fmt::format("native {}: first call", k.label), where,
                    FormatNs(static_cast<double>(native_first)), {{"first_ns", native_first}});
      rep->AddSamples(sec, fmt::format("wasm {} (Instance::Call)", k.label), where,
                      std::move(wasm_ns), "reply " + Hex(host.reply()).substr(0, 16));
      rep->AddSamples(
          sec, fmt::format("native {} (-O2)", k.label), where, std::move(native_ns),
          fmt::format("ratio wasm/native: best {}×, median {}×", Fmt3(wb / nb), Fmt3(wm / nm)));
      rep->AddSummary({fmt::format("4. {}, wasm vs native, best", k.label),
                       fmt::format("{} (median {})", FormatNs(wb), FormatNs(wm)),
                       fmt::format("native {} (median {})", FormatNs(nb), FormatNs(nm)), wb / nb,
                       "≤ 1.3× native", wb / nb <= 1.3});
    }
    return Status::Ok();
  }));
  return Status::Ok();
}

}  // namespace

bool RunInProcessSections(const Options& o, Report* rep) {
  Shared s;
  s.cpus = UsableCpus();
  auto fail = [](const std::string& what, const Status& st) {
    Progress("FAILED " + what + ": " + st.ToString());
    return false;
  };
  for (auto [name, g] : {std::pair<const char*, Guest*>{"echo", &s.echo},
                         {"counter", &s.counter},
                         {"kernels", &s.kernels}}) {
    Result<Guest> r = LoadGuest(o, name);
    if (!r.ok()) return fail(std::string("loading guest ") + name, r.status());
    *g = std::move(*r);
  }
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine({});
  if (!engine.ok()) return fail("V8 engine", engine.status());
  s.engine = engine->get();
  Progress(
      fmt::format("V8 engine up; {} usable vCPUs; {} run", s.cpus, o.quick ? "quick" : "full"));

  bool ok = true;
  struct Sec {
    const char* name;
    Status (*fn)(const Options&, Shared*, Report*);
  };
  for (const Sec& sec : {Sec{"invoke", RunInvoke}, Sec{"instantiate", RunInstantiate},
                         Sec{"snapshot", RunSnapshot}, Sec{"kernels", RunKernels}}) {
    if (!o.Wants(sec.name)) continue;
    Progress(std::string("section ") + sec.name);
    Status st = sec.fn(o, &s, rep);
    if (!st.ok()) {
      rep->AddNote(sec.name, "FAILED: " + st.ToString());
      ok = fail(sec.name, st);
    }
  }
  return ok;
}

}  // namespace tern::bench
