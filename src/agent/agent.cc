#include "agent/agent.h"

#include <dirent.h>
#include <unistd.h>
#include <fmt/format.h>
#include <malloc.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>
#include <unordered_map>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "agent/channels.h"
#include "agent/journal_record.h"
#include "agent/memory_reserve.h"
#include "agent/migration_slots.h"
#include "agent/migration_wire.h"
#include "core/bytes.h"
#include "core/crc32c.h"
#include "core/clock.h"
#include "core/cycle_clock.h"
#include "core/cpu.h"
#include "core/file.h"
#include "core/ids.h"
#include "core/latency_histogram.h"
#include "core/logging.h"
#include "storage/dataset_store.h"
#include "storage/journal.h"
#include "transport/grow_string.h"
#include "transport/shm.h"
#include "wasm/dirty_tracker.h"

namespace tern::agent {

// The pseudo-service of dataset requests between agents (AnswerDataFrame).
constexpr char kDataService[] = "$data";
constexpr char kMigrateService[] = "$migrate";
// Journal appends of durable instances to their keeper (ServeJournalFrame): handler
// "append", payload "<instance>\n<framed record>".
constexpr char kJournalService[] = "$journal";

// ---------------------------------------------------------------------------------
// Service and Slot

struct Agent::Service {
  Manifest manifest;
  std::shared_ptr<const wasm::Module> module;
  wasm::InstanceLimits limits;
  uint64_t module_size = 0;
  std::string module_bytes;  // kept to deploy it on a migration target that lacks it
  // Whether a snapshot holds the module's whole state (wasm::CheckSnapshotable): always
  // for a stateful service (else refused at deploy).
  bool snapshotable = true;
};

namespace {
// The dedup table of an instance keeps the answers to this many idempotency keys (and
// at most this many reply bytes), oldest forgotten first.
constexpr size_t kDedupEntries = 4096;
constexpr size_t kDedupBytes = 4u << 20;
constexpr uint32_t kNoCrc = 0xFFFFFFFF;  // a page not copied yet (checksum mode)
// How long after a migration frames that route by epoch are still forwarded to the
// instance's new agent instead of being answered kMoved.
constexpr int64_t kForwardGraceNs = 10'000'000'000;
}  // namespace

// An outgoing migration's state on the instance's worker.
struct SlotMigration {
  bool exact = false;           // a userfaultfd tracker feeds `dirty`
  std::vector<uint64_t> dirty;  // exact: bitmap of the 4 KiB pages written since last taken
  std::vector<uint32_t> crc;    // checksum mode: CRC-32C of each page as last copied
  bool frozen = false;
  std::vector<Agent::Held> held;  // arrived while frozen, in order

  void Mark(uint64_t page) {
    if (page / 64 >= dirty.size()) dirty.resize(page / 64 + 1, 0);
    dirty[page / 64] |= uint64_t{1} << (page % 64);
  }
  void MarkRange(uint64_t first, uint64_t end) {
    for (uint64_t p = first; p < end; ++p) Mark(p);
  }
  uint64_t DirtyCount() const {
    uint64_t n = 0;
    for (uint64_t w : dirty) n += static_cast<uint64_t>(__builtin_popcountll(w));
    return n;
  }
  // Appends the marked pages below `pages` (ascending) to `out` and clears every mark.
  void TakeDirty(uint64_t pages, std::vector<uint32_t>* out) {
    for (size_t w = 0; w < dirty.size(); ++w) {
      for (uint64_t bits = dirty[w]; bits != 0; bits &= bits - 1) {
        uint64_t p = w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits));
        if (p < pages) out->push_back(static_cast<uint32_t>(p));
      }
      dirty[w] = 0;
    }
  }
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
  // A rollback that could not be done when the request failed (a callee stopped by its
  // caller's CPU limit: V8 refuses every host access to the isolate until the caller's
  // frames are gone), done before the instance runs again (FinishRollback).
  bool rollback_pending = false;
  uint64_t pages_copied = 0;  // into `good`, in 4 KiB pages
  // The small-memory tracking rule (TrackingCheck): tracked requests and re-arms in
  // the current window; requests left to copy before tracking is tried again.
  uint32_t track_requests = 0;
  uint32_t track_rearms = 0;
  uint32_t untracked_left = 0;
  std::shared_ptr<std::atomic<uint64_t>> queued;
  uint64_t requests = 0;
  uint64_t failures = 0;
  uint64_t rollbacks = 0;
  uint64_t expired = 0;  // requests dropped at their deadline before running
  int64_t exec_ns_total = 0;
  int64_t cpu_ns_total = 0;        // the worker thread's CPU time during requests
  // CPU time per wall time of this instance's measured requests (a moving average), and
  // the wall time of its last request: see ExecuteTraced.
  double cpu_per_wall = 1.0;
  int64_t last_exec_ns = 0;
  uint64_t reply_bytes_total = 0;  // reply payloads of successful requests
  // Each request's latency at this agent (the SLO's measure): arrival to reply ready.
  LatencyHistogram latency_hist;
  std::string last_error;
  uint64_t last_trace_id = 0;  // of the last request served
  uint64_t last_idempotency_key = 0;
  std::unique_ptr<SlotMigration> mig;  // while it migrates away
  // Durable (manifest `durable`): each request's writes are journaled on its keepers
  // before its reply (MakeDurable).
  bool durable = false;
  std::vector<JournalKeeper> keepers;  // none = none assigned yet (the controller pushes them)
  // The last record number used. Never reused: a record whose outcome is unknown (no
  // keeper acknowledged it, or one timed out) keeps its number, so of two keepers'
  // journals the one whose last record has the higher number got the later record.
  uint64_t journal_seq = 0;
  uint64_t journal_appends = 0, journal_failures = 0, journal_full_records = 0;
  uint64_t journal_bytes = 0, journal_degraded = 0;
  int64_t journal_ns_total = 0;
  // Every keeper's next record carries every page (a new state the journals do not know).
  void JournalStartAfresh() {
    for (JournalKeeper& k : keepers) k.full = true;
  }
  // Answers to recent idempotency keys (exactly-once across retries and migrations).
  std::unordered_map<uint64_t, DedupEntry> dedup;
  std::deque<uint64_t> dedup_order;
  size_t dedup_bytes = 0;
  uint64_t deduplicated = 0;  // requests answered from the table

  void Remember(uint64_t key, StatusCode code, std::string reply) {
    if (key == 0 || dedup.count(key) != 0) return;
    dedup_bytes += reply.size();
    dedup.emplace(key, DedupEntry{key, code, std::move(reply)});
    dedup_order.push_back(key);
    while (dedup_order.size() > kDedupEntries || (dedup_bytes > kDedupBytes && dedup_order.size() > 1)) {
      auto it = dedup.find(dedup_order.front());
      dedup_bytes -= it->second.reply.size();
      dedup.erase(it);
      dedup_order.pop_front();
    }
  }
  // Writes that the migration cannot see page by page (a restore, a new tracker).
  void MigMarkAll() {
    if (mig != nullptr && mig->exact) mig->MarkRange(0, inst->memory_bytes() / kMigrationPageBytes);
  }
};

namespace {

// HostCalls for one request.
class RequestHost : public wasm::HostCalls {
 public:
  RequestHost(std::string_view request, const std::string& instance_id)
      : request_(request), instance_id_(instance_id) {}

  std::string_view Request() override { return request_; }
  void SetReply(std::string_view bytes) override {
    reply_.assign(bytes.data(), bytes.size());
    reply_view_ = {};
  }
  // Kept as a view into guest memory until ExecuteTraced decides whether the caller can
  // take it from there (CopyReplyIn() otherwise).
  void SetReplyInPlace(std::string_view bytes) override {
    reply_.clear();
    reply_view_ = bytes.data() != nullptr ? bytes : std::string_view("", 0);
  }
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

  // The reply as a string (an in-place one must have been copied in first).
  std::string& reply() { return reply_; }
  // A reply still in guest memory (tern_reply_in_place), or null.
  std::string_view reply_view() const { return reply_view_; }
  std::string_view reply_bytes() const {
    return reply_view_.data() != nullptr ? reply_view_ : std::string_view(reply_);
  }
  void CopyReplyIn() {
    if (reply_view_.data() == nullptr) return;
    reply_.assign(reply_view_.data(), reply_view_.size());
    reply_view_ = {};
  }
  const std::string& instance_id() const { return instance_id_; }
  // True if `s` is the failure the guest itself reported (a clean request boundary).
  bool IsGuestFailure(const Status& s) const { return guest_failed_ && s.code() == guest_code_; }

 private:
  static constexpr int kMaxLogLinesPerRequest = 64;
  std::string_view request_;
  const std::string& instance_id_;
  std::string reply_;
  std::string_view reply_view_;  // data() != nullptr: the reply is here, in guest memory
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
// WorkerThread: a thread with its own wasm::Worker (isolate), a task queue, the
// data-plane channels its guests call through, and the shared-memory connections it
// serves. It sleeps on a Doorbell (an eventfd that other threads and processes ring).

namespace {
// The WorkerThread whose loop runs on this thread, if any.
thread_local const void* current_worker = nullptr;

constexpr size_t kTcpReadChunk = 64 << 10;
// Reads per connection and round before the worker turns to its other work (epoll is
// level-triggered: the rest is read next round).
constexpr int kTcpReadsPerRound = 16;
// Frames taken from one shared-memory connection per round of the worker's loop (one
// at a time: PollServerConns), before it turns to its other work.
constexpr int kShmFramesPerRound = 64;
// Requests in shared-memory records at least this long are not copied out of the ring
// at the top level of the loop (ShmConnection::PollBorrowed): the guest reads them from
// there when they run where they were read, anything else copies them. Below it the
// copy into the request's string costs less than the bookkeeping (64 B requests).
constexpr size_t kShmBorrowRecordBytes = 2048;
// Per-instance CPU time (ExecuteTraced): the thread's CPU clock is read around one
// request in kCpuSampleEvery, and around every request that follows one that ran
// kCpuExactAfterNs or longer.
constexpr uint64_t kCpuSampleEvery = 16;
constexpr int64_t kCpuExactAfterNs = 50'000;

// One read buffer per worker thread: bytes are fed to a decoder before the next read.
char* TcpReadScratch() {
  thread_local std::unique_ptr<char[]> buf(new char[kTcpReadChunk]);
  return buf.get();
}
}  // namespace

// One outgoing call of a guest (tern_call_start .. tern_call_close).
struct Agent::OutCall {
  // Set once, by whoever completes the call; `done` is stored last (release).
  std::atomic<bool> done{false};
  StatusCode code = StatusCode::kOk;
  std::string result;  // the reply, or the error message
  // What to send (kept for a re-dispatch after kMoved).
  std::string service, handler, payload, tenant;
  uint64_t trace_id = 0;         // the calling request's
  uint64_t idempotency_key = 0;  // kept across re-dispatches
  int64_t deadline_ns = 0;
  int attempts = 0;
  std::vector<std::string> avoid;  // instances that answered kMoved
  // Where it went (remote tiers): the channel key, the wire id and the instance.
  std::string channel_key;
  uint64_t wire_id = 0;
  std::string instance;
  dataplane::Tier tier = dataplane::Tier::kInProcess;

  void Complete(StatusCode c, std::string r) {
    code = c;
    result = std::move(r);
    done.store(true, std::memory_order_release);
  }
  void Complete(InvokeResult&& r) {
    if (r.status.ok()) {
      Complete(StatusCode::kOk, std::move(r.reply));
    } else {
      Complete(r.status.code(), std::string(r.status.message()));
    }
  }
};

// A shared-memory connection served by a worker (the server end).
struct Agent::ServerConn {
  std::unique_ptr<transport::ShmConnection> conn;
  bool dead = false;
};

// A TCP frame connection served by a worker (the server end). Touched only by its
// owner worker; it changes owner at most once (at its first invoke, before any request
// of it is in flight). Replies computed on other workers are posted to the owner.
struct Agent::TcpConn {
  enum class State {
    kOpen,       // reading, answering
    kLingering,  // closed for malformed input: the kError frame is flushed, input discarded
    kClosed,
  };
  TcpConn(transport::UniqueFd f, const TcpConnLimits& l, TcpCounters* c)
      : fd(std::move(f)), limits(l), decoder(l.max_payload_bytes), counters(c) {}
  ~TcpConn() {
    if (state != State::kClosed) {
      counters->open.fetch_sub(1, std::memory_order_relaxed);
      counters->output_bytes.fetch_sub(pending(), std::memory_order_relaxed);
    }
  }
  TcpConn(const TcpConn&) = delete;
  TcpConn& operator=(const TcpConn&) = delete;

  size_t pending() const { return out.size(); }

  transport::UniqueFd fd;
  const TcpConnLimits limits;
  transport::FrameDecoder decoder;
  TcpCounters* const counters;
  const void* owner = nullptr;  // the WorkerThread serving it
  State state = State::kOpen;
  bool placed = false;      // its first invoke has chosen its worker
  bool peer_eof = false;    // the peer will send nothing more
  bool registered = false;  // in the owner's epoll set
  bool write_blocked = false;
  bool shut_wr = false;
  bool dirty = false;  // in the owner's list of connections with new output
  uint32_t interest = 0;
  transport::FrameOutput out;   // replies waiting to be sent
  uint64_t inflight = 0;        // invokes not answered yet
  int64_t stalled_since = 0;    // output waiting and none taken by the peer since then
  int64_t received_ns = 0;      // when the kernel received the last bytes read (MonoNanos)
  int64_t linger_until = 0;
};

class Agent::WorkerThread {
 public:
  struct Task {
    std::function<void()> fn;
    // The instance the task runs a request on; "" for control tasks (start, stop,
    // snapshot, ...), which never run while a guest on this thread waits in a call.
    std::string instance;
    // Transport work (adopting a connection, sending a reply): touches no instance,
    // so it runs even while a guest on this thread waits in a call.
    bool io = false;
  };

  WorkerThread(int index, wasm::Engine* engine, transport::Doorbell doorbell)
      : index_(index), engine_(engine), doorbell_(std::move(doorbell)) {}
  ~WorkerThread() { Stop(); }

  Status Start(Agent* agent) {
    agent_ = agent;
    Mutex start_mu;
    CondVar started;
    bool ready = false;
    Status st;
    thread_ = std::thread([&] {
      tid_ = static_cast<pid_t>(::gettid());
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
      stopping_flag_.store(true, std::memory_order_release);
      posted_.fetch_add(1, std::memory_order_release);
    }
    doorbell_.Ring();
    if (thread_.joinable()) thread_.join();
  }

  // Queues `task`; returns false if the worker is stopping (the task is dropped).
  bool Post(std::function<void()> fn, std::string instance = {}, bool io = false) {
    {
      MutexLock l(&mu_);
      if (stopping_) return false;
      tasks_.push_back(Task{std::move(fn), std::move(instance), io});
      posted_.fetch_add(1, std::memory_order_release);
    }
    if (current_worker != this) doorbell_.Ring();
    return true;
  }

  // Queues a control task ahead of the requests already queued: it runs after the task
  // running now (at the next request boundary), before any request still waiting, in
  // the order urgent tasks were posted. For the steps of a live migration: an overloaded
  // instance has up to max_queue_per_instance requests queued, and a copy step or the
  // freeze behind all of them made every round wait for the whole backlog (seconds
  // under load, with the backlog growing meanwhile: docs/design/migration.md "Stalls
  // under load"). Safe for them because a request checks for the freeze when it runs,
  // not when it is queued, and the dirty tracking does not depend on the order of copies
  // and writes.
  bool PostUrgent(std::function<void()> fn) {
    {
      MutexLock l(&mu_);
      if (stopping_) return false;
      urgent_.push_back(Task{std::move(fn), {}, false});
      urgent_pending_.store(true, std::memory_order_release);
      posted_.fetch_add(1, std::memory_order_release);
    }
    if (current_worker != this) doorbell_.Ring();
    return true;
  }
  void Wake() { doorbell_.Ring(); }

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

  // True if a request for an instance of this worker may run right here, on the calling
  // thread, instead of being queued: the caller is this worker's own loop at its top
  // level (not inside a guest, nor waiting for a call: a request there could re-enter a
  // busy instance), nothing is queued or deferred before it (requests run in the order
  // they came), and the worker is not stopping.
  bool CanRunInline() const {
    return current_worker == this && wait_depth_ == 0 && busy_.empty() && deferred_.empty() &&
           posted_.load(std::memory_order_acquire) == taken_ &&
           !stopping_flag_.load(std::memory_order_relaxed);
  }

  // ---- worker-thread only: the route cache (Agent::InvokeWith)

  // Where a (service, handler, instance) key was routed while Agent::route_gen_ was
  // `gen`. Only keys with a single candidate are cached (an instance named in the
  // request, or a service with one instance here): with several, the least-queued pick
  // is made per request.
  struct CachedRoute {
    uint64_t gen = 0;                        // 0: empty (route_gen_ starts at 1)
    std::string service, handler, instance;  // the key
    std::string id;                          // the instance it goes to
    int worker = 0;
    uint64_t request_bytes = 0;  // the service's request limit
    std::shared_ptr<std::atomic<uint64_t>> queued;
  };
  const CachedRoute* CachedRouteFor(const InvokeRequest& req, uint64_t gen) const {
    for (const CachedRoute& e : route_cache_) {
      if (e.gen == gen && e.service == req.service && e.handler == req.handler &&
          e.instance == req.instance) {
        return &e;
      }
    }
    return nullptr;
  }
  // Whether an entry filled at `gen` routes `service` to an instance of this agent.
  bool CachedRunningService(const std::string& service, uint64_t gen) const {
    for (const CachedRoute& e : route_cache_) {
      if (e.gen == gen && e.instance.empty() && e.service == service) return true;
    }
    return false;
  }
  void CacheRoute(const InvokeRequest& req, uint64_t gen, const std::string& id, int worker,
                  uint64_t request_bytes, const std::shared_ptr<std::atomic<uint64_t>>& queued) {
    // A stale entry first, else round robin (a worker's connections name few services).
    CachedRoute* slot = nullptr;
    for (CachedRoute& e : route_cache_) {
      if (e.gen != gen) {
        slot = &e;
        break;
      }
    }
    if (slot == nullptr) slot = &route_cache_[route_cache_next_++ % route_cache_.size()];
    slot->gen = gen;
    slot->service = req.service;
    slot->handler = req.handler;
    slot->instance = req.instance;
    slot->id = id;
    slot->worker = worker;
    slot->request_bytes = request_bytes;
    slot->queued = queued;
  }

  int index() const { return index_; }
  // The thread's kernel id (valid once Start returned).
  pid_t tid() const { return tid_; }
  const transport::Doorbell& doorbell() const { return doorbell_; }
  // Worker-thread only.
  wasm::Worker* worker() { return worker_.get(); }
  std::map<std::string, std::unique_ptr<Slot>>& slots() { return slots_; }

  // ---- worker-thread only: the call machinery

  // Instances whose request is on this thread's stack (an outer request waiting in a
  // call, and the request running now).
  bool IsBusy(const std::string& id) const {
    return std::find(busy_.begin(), busy_.end(), id) != busy_.end();
  }
  void PushBusy(const std::string& id) { busy_.push_back(id); }
  void PopBusy() { busy_.pop_back(); }
  // Whether a request is running on this thread (this one runs inside it).
  bool Nested() const { return !busy_.empty(); }

  // The outgoing channel for `key`, or null.
  OutChannel* FindChannel(const std::string& key) {
    auto it = channels_.find(key);
    return it == channels_.end() ? nullptr : it->second.get();
  }
  void AddChannel(const std::string& key, std::unique_ptr<OutChannel> ch) {
    channels_[key] = std::move(ch);
  }
  uint64_t NextWireId() { return (uint64_t{static_cast<uint32_t>(index_)} << 48) | ++wire_ids_; }
  void AddInflight(std::shared_ptr<OutCall> call) {
    ++outstanding_[call->instance];
    inflight_[call->wire_id] = std::move(call);
  }
  // Forgets an unfinished remote call (abandoned, or past its deadline): a late answer
  // is dropped.
  void Forget(OutCall* call) {
    auto it = inflight_.find(call->wire_id);
    if (it != inflight_.end() && it->second.get() == call) {
      DropOutstanding(call->instance);
      inflight_.erase(it);
    }
  }
  uint64_t Outstanding(const std::string& instance) const {
    auto it = outstanding_.find(instance);
    return it == outstanding_.end() ? 0 : it->second;
  }

  void AdoptServerConn(std::unique_ptr<transport::ShmConnection> conn) {
    auto sc = std::make_shared<ServerConn>();
    sc->conn = std::move(conn);
    server_conns_.push_back(std::move(sc));
  }

  // ---- worker-thread only: TCP frame connections

  // Takes `c` on: a new connection, or one moved here with its first invoke `first`.
  void AdoptTcpConn(std::shared_ptr<TcpConn> c, std::optional<transport::Frame> first) {
    if (!epoll_fd_.valid()) {
      int ep = ::epoll_create1(EPOLL_CLOEXEC);
      if (ep < 0) {
        TERN_LOG(ERROR) << "worker " << index_ << ": " << ErrnoError("epoll_create1", errno)
                        << "; TCP connection dropped";
        CloseTcp(c, ErrnoError("epoll_create1", errno));
        return;
      }
      epoll_fd_ = transport::UniqueFd(ep);
    }
    c->registered = false;
    c->interest = 0;
    c->dirty = false;
    tcp_conns_[c->fd.get()] = c;
    UpdateTcpInterest(c);
    if (c->state == TcpConn::State::kClosed) return;
    if (c->pending() > 0) MarkTcpDirty(c);
    if (first.has_value() && !agent_->ServeTcpFrame(this, c, std::move(*first))) return;
    DecodeTcp(c);  // frames that were already buffered
  }

  // Hands `c` to worker `to`, which serves `first` (its first invoke) and what follows.
  void MoveTcpConn(const std::shared_ptr<TcpConn>& c, WorkerThread* to, transport::Frame first) {
    if (c->registered) ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, c->fd.get(), nullptr);
    c->registered = false;
    tcp_conns_.erase(c->fd.get());
    c->owner = to;  // our entry in tcp_dirty_ (if any) is skipped from now on
    // If `to` is stopping, the task is dropped and the connection closes with it.
    to->Post([to, c, f = std::move(first)]() mutable { to->AdoptTcpConn(c, std::move(f)); },
             /*instance=*/"", /*io=*/true);
  }

  // Queues `f` for the peer of `c` (a large payload is taken over, not copied); it
  // leaves at the end of this round.
  void QueueTcp(const std::shared_ptr<TcpConn>& c, transport::Frame f) {
    const size_t n = transport::EncodedFrameSize(f);
    const uint64_t id = f.request_id;
    if (AppendTcp(c, n, id, [&] { return c->out.Append(std::move(f)); })) MarkTcpDirty(c);
  }

  // A reply whose payload is still in a guest's memory (tern_reply_in_place), for a
  // request of `c` (this thread owns `c`). A large one is written from there now, and
  // what the socket does not take is copied into the queue before this returns (the
  // guest runs again after that); a small one is copied into the queue and leaves with
  // this round's other output.
  void OnTcpReplyInPlace(const std::shared_ptr<TcpConn>& c, uint64_t request_id,
                         std::string_view payload) {
    if (c->owner != this) {
      // Moved to another worker since (dataset requests move theirs): like any other
      // reply, which that worker writes; only this thread's own sockets are written here.
      transport::Frame f = ReplyHead(request_id);
      f.payload.assign(payload.data(), payload.size());
      OnTcpReply(c, std::move(f));
      return;
    }
    --c->inflight;
    const transport::Frame head = ReplyHead(request_id);
    const size_t n = transport::EncodedFrameSize(head) + payload.size();
    if (!AppendTcp(c, n, request_id, [&] { return c->out.AppendBorrowed(head, payload); })) return;
    if (payload.size() < transport::kLargePayloadBytes) {
      MarkTcpDirty(c);
      return;
    }
    FlushTcp(c);
    c->out.OwnBorrowed();
  }

  // Queues `n` more bytes for the peer of `c` with `append`, unless the peer is too slow
  // (then `c` closes). A frame that cannot be encoded becomes an error answering
  // `request_id`. False if nothing could be queued.
  template <typename AppendFn>
  bool AppendTcp(const std::shared_ptr<TcpConn>& c, size_t n, uint64_t request_id,
                 AppendFn append) {
    if (c->state != TcpConn::State::kOpen) return false;
    if (c->pending() > 0 && c->pending() + n > c->limits.max_output_bytes) {
      agent_->tcp_.closed_slow.fetch_add(1, std::memory_order_relaxed);
      Status why = ResourceExhaustedError(fmt::format(
          "peer is not reading: {} bytes queued for sending, {} more would exceed the limit "
          "of {}",
          c->pending(), n, c->limits.max_output_bytes));
      TERN_LOG(WARN) << "closing a TCP frame connection: " << why;
      CloseTcp(c, why);
      return false;
    }
    const size_t before = c->out.size();
    Status s = append();
    if (!s.ok()) {
      // A reply that cannot be encoded (too large for a frame) fails its request.
      s = c->out.Append(transport::MakeErrorFrame(
          request_id, InternalError(fmt::format("the reply cannot be sent: {}", s.message()))));
      if (!s.ok()) TERN_LOG(ERROR) << "TCP reply dropped: " << s;
    }
    agent_->tcp_.output_bytes.fetch_add(c->out.size() - before, std::memory_order_relaxed);
    return true;
  }

  // A reply computed for a request of `c` (this thread owns `c`).
  void OnTcpReply(const std::shared_ptr<TcpConn>& c, transport::Frame f) {
    --c->inflight;
    if (c->state != TcpConn::State::kOpen) return;
    QueueTcp(c, std::move(f));
  }

  // Waits for `call` on this thread (inside a guest's tern_call_wait). Meanwhile the
  // worker keeps going: it polls its channels and serves requests for instances that
  // are not waiting themselves, so that a call that comes back to this worker (A on
  // worker 0 calls B on worker 1, which calls C on worker 0) cannot deadlock.
  void WaitCall(OutCall* call) {
    const int64_t cpu0 = ThreadCpuNanos();
    const int64_t wall0 = MonoNanos();
    ++wait_depth_;
    WaitCallLoop(call);
    --wait_depth_;
    wait_cpu_ns_ += ThreadCpuNanos() - cpu0;
    wait_wall_ns_ += MonoNanos() - wall0;
  }

  // CPU time this thread spent in WaitCall since the request running now began (what
  // Execute leaves out of the request's own CPU time: spinning, and other requests
  // served meanwhile). Execute saves and restores it around each request.
  int64_t& wait_cpu_ns() { return wait_cpu_ns_; }
  int64_t& wait_wall_ns() { return wait_wall_ns_; }  // the same in wall time

  void WaitCallLoop(OutCall* call) {
    int64_t spin_until = MonoNanos() + kSpinNanos;
    while (!call->done.load(std::memory_order_acquire)) {
      bool progress = Step(/*nested=*/true);
      if (call->done.load(std::memory_order_acquire)) break;
      int64_t now = MonoNanos();
      if (call->deadline_ns != 0 && now >= call->deadline_ns) {
        Forget(call);
        call->Complete(StatusCode::kDeadlineExceeded,
                       fmt::format("call to {}.{} got no answer within its deadline{}",
                                   call->service, call->handler,
                                   call->instance.empty() ? "" : " (instance " + call->instance + ")"));
        break;
      }
      if (progress) {
        spin_until = now + kSpinNanos;
        continue;
      }
      if (now < spin_until) {
        Relax(CycleNanos());
        continue;
      }
      Sleep(call->deadline_ns, /*nested=*/true, [call] {
        return call->done.load(std::memory_order_acquire);
      });
    }
  }

 private:
  void Loop() {
    current_worker = this;
    int64_t spin_until = 0;
    for (;;) {
      bool progress = Step(/*nested=*/false);
      if (stopping_flag_.load(std::memory_order_acquire)) {
        MutexLock l(&mu_);
        if (tasks_.empty() && urgent_.empty() && deferred_.empty()) break;
      }
      // The TSC (CycleNanos): read on every round, ~35 ns less than clock_gettime here,
      // which a request that arrives during the read waits for.
      int64_t now = CycleNanos();
      if (progress) {
        spin_until = now + kSpinNanos;
        continue;
      }
      // Spin briefly before sleeping: a blocking wake-up across vCPUs costs ~35 µs
      // here (../shared/notes/machine.md), a spinning worker picks work up in < 1 µs.
      if (now < spin_until) {
        Relax(now);
        continue;
      }
      Sleep(0, /*nested=*/false, [] { return false; });
    }
    // Calls still in flight can no longer be answered.
    for (auto& [id, call] : inflight_) {
      call->Complete(StatusCode::kUnavailable, "agent is shutting down");
    }
    inflight_.clear();
    channels_.clear();
    server_conns_.clear();
    // Replies already computed leave if the socket takes them now; then every TCP
    // connection closes (its peer sees EOF).
    std::vector<std::shared_ptr<TcpConn>> conns;
    for (auto& [fd, c] : tcp_conns_) conns.push_back(c);
    for (auto& c : conns) {
      FlushTcp(c);
      CloseTcp(c, UnavailableError("agent is shutting down"));
    }
    tcp_conns_.clear();
    tcp_dirty_.clear();
    slots_.clear();  // instances die with their isolate, on this thread
    worker_.reset();
  }

  // One round of work: tasks, channel replies, shared-memory requests. Returns true if
  // anything happened. `nested`: a guest on this thread waits in a call, so control
  // tasks and requests for instances on the stack are deferred until it returns.
  bool Step(bool nested) {
    bool progress = RunUrgent(nested);
    if (!nested && !deferred_.empty()) {
      std::deque<Task> d;
      d.swap(deferred_);
      for (Task& t : d) {
        RunUrgent(nested);
        t.fn();
      }
      progress = true;
    }
    if (posted_.load(std::memory_order_acquire) != taken_) {
      std::deque<Task> batch;
      {
        MutexLock l(&mu_);
        taken_ = posted_.load(std::memory_order_relaxed);
        batch.swap(tasks_);
      }
      for (Task& t : batch) {
        progress |= RunUrgent(nested);
        RunOrDefer(t, nested);
      }
      progress = progress || !batch.empty();
    }
    if (!inflight_.empty() || !channels_.empty()) progress |= PollChannels();
    if (!server_conns_.empty()) progress |= PollServerConns();
    if (!tcp_conns_.empty() || !tcp_dirty_.empty()) progress |= PollTcp();
    return progress;
  }

  void RunOrDefer(Task& t, bool nested) {
    if (nested && !t.io && (t.instance.empty() || IsBusy(t.instance))) {
      deferred_.push_back(std::move(t));
    } else {
      t.fn();
    }
  }

  // Runs the urgent tasks posted so far (between two tasks of a batch: one load when
  // there are none).
  bool RunUrgent(bool nested) {
    if (!urgent_pending_.load(std::memory_order_acquire)) return false;
    std::deque<Task> urgent;
    {
      MutexLock l(&mu_);
      urgent.swap(urgent_);
      urgent_pending_.store(false, std::memory_order_relaxed);
    }
    for (Task& t : urgent) RunOrDefer(t, nested);
    return !urgent.empty();
  }

  bool PollChannels() {
    bool progress = false;
    const int64_t now = MonoNanos();
    std::vector<transport::Frame> frames;
    for (auto it = channels_.begin(); it != channels_.end();) {
      frames.clear();
      Status st = it->second->Poll(now, &frames);
      for (transport::Frame& f : frames) {
        progress = true;
        OnReply(std::move(f));
      }
      if (!st.ok()) {
        // Every call in flight on this channel has failed.
        FailChannelCalls(it->first, st);
        it = channels_.erase(it);
        progress = true;
      } else {
        ++it;
      }
    }
    return progress;
  }

  void FailChannelCalls(const std::string& key, const Status& why) {
    for (auto it = inflight_.begin(); it != inflight_.end();) {
      if (it->second->channel_key == key) {
        DropOutstanding(it->second->instance);
        it->second->Complete(
            why.code() == StatusCode::kResourceExhausted ? why.code() : StatusCode::kUnavailable,
            fmt::format("call to {}.{} failed: {}", it->second->service, it->second->handler,
                        why.message()));
        it = inflight_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void OnReply(transport::Frame f) {
    auto it = inflight_.find(f.request_id);
    if (it == inflight_.end()) return;  // abandoned or expired: dropped
    std::shared_ptr<OutCall> call = std::move(it->second);
    inflight_.erase(it);
    DropOutstanding(call->instance);
    switch (f.type) {
      case transport::FrameType::kReply:
        call->Complete(StatusCode::kOk, std::move(f.payload));
        break;
      case transport::FrameType::kMoved:
        // The instance is not where our table said: re-select (once per instance).
        call->avoid.push_back(call->instance);
        agent_->Redispatch(this, std::move(call));
        break;
      default: {
        Status s = transport::ErrorFrameStatus(f);
        call->Complete(s.ok() ? StatusCode::kInternal : s.code(), std::string(s.message()));
      }
    }
  }

  bool PollServerConns() {
    bool progress = false;
    // The worker's buffer, unless this is a nested round (a guest served from an outer
    // round waits in a call) and the outer round is still going through it.
    std::vector<transport::Frame> nested;
    std::vector<transport::Frame>& frames = polling_shm_ ? nested : shm_frames_;
    const bool outer = !polling_shm_;
    polling_shm_ = true;
    // At the top level a request may run right here (Invoke), and it may wait in a call
    // meanwhile, while nested rounds take the connection's later requests (queued: the
    // instance is busy). So the top level takes one frame at a time, each only after
    // the one before it is served: a frame already taken out of the ring would be served
    // after those later ones. A nested round queues what it takes, in order, so it takes
    // a batch.
    const size_t take = outer ? 1 : 64;
    const int rounds = outer ? kShmFramesPerRound : 1;
    // By index: a nested round may add connections (AdoptServerConn), never removes one.
    // The top level also leaves a large request's payload in the ring (PollBorrowed)
    // until it has been served: run here, the guest reads it from there; queued, it is
    // copied out first (ServeShmFrame, Agent::InvokeWith). Nested rounds copy.
    for (size_t i = 0; i < server_conns_.size();) {
      ServerConn* sc = server_conns_[i].get();
      Result<size_t> n = size_t{0};
      for (int k = 0; k < rounds; ++k) {
        frames.clear();
        std::string_view borrowed;
        n = outer ? sc->conn->PollBorrowed(&frames, kShmBorrowRecordBytes, &borrowed)
                  : sc->conn->Poll(&frames, take);
        if (frames.empty()) break;
        progress = true;
        const std::shared_ptr<ServerConn> hold = server_conns_[i];
        for (transport::Frame& f : frames) {
          agent_->ServeShmFrame(this, hold, borrowed, std::move(f));
        }
        sc->conn->ReleaseBorrowed();
        if (!n.ok()) break;
      }
      // Poll reports a peer that is gone (kUnavailable) once it has nothing more to read.
      // A nested round leaves the connection to the outer one (Poll reports it again).
      if (n.ok() || !outer) {
        ++i;
        continue;
      }
      if (n.status().code() != StatusCode::kUnavailable) {
        TERN_LOG(WARN) << "closing a shared-memory connection: " << n.status();
      }
      sc->dead = true;
      sc->conn->Close();
      server_conns_.erase(server_conns_.begin() + static_cast<std::ptrdiff_t>(i));
      progress = true;
    }
    if (outer) polling_shm_ = false;
    return progress;
  }

  void MarkTcpDirty(const std::shared_ptr<TcpConn>& c) {
    if (c->dirty) return;
    c->dirty = true;
    tcp_dirty_.push_back(c);
  }

  // Registers the events `c` needs: input unless paused (output over the limit) or at
  // EOF; writability while the kernel refuses output.
  void UpdateTcpInterest(const std::shared_ptr<TcpConn>& c) {
    if (c->state == TcpConn::State::kClosed) return;
    const bool reading = !c->peer_eof && (c->state == TcpConn::State::kLingering ||
                                          c->pending() <= c->limits.pause_reading_output_bytes);
    uint32_t want = 0;
    if (reading) want |= EPOLLIN;
    if (c->write_blocked && c->pending() > 0) want |= EPOLLOUT;
    if (c->registered && want == c->interest) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.fd = c->fd.get();
    if (::epoll_ctl(epoll_fd_.get(), c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd.get(),
                    &ev) != 0) {
      CloseTcp(c, ErrnoError("epoll_ctl", errno));
      return;
    }
    c->registered = true;
    c->interest = want;
  }

  void CloseTcp(const std::shared_ptr<TcpConn>& c, const Status& why) {
    if (c->state == TcpConn::State::kClosed) return;
    if (!why.ok() && why.code() != StatusCode::kUnavailable) {
      TERN_LOG(DEBUG) << "worker " << index_ << ": TCP frame connection closed: " << why;
    }
    const int fd = c->fd.get();
    if (c->registered) ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
    c->registered = false;
    auto it = tcp_conns_.find(fd);
    if (it != tcp_conns_.end() && it->second == c) tcp_conns_.erase(it);
    c->fd.reset();
    c->state = TcpConn::State::kClosed;
    agent_->tcp_.open.fetch_sub(1, std::memory_order_relaxed);
    agent_->tcp_.output_bytes.fetch_sub(c->pending(), std::memory_order_relaxed);
    c->out.Clear();
  }

  // Malformed input: a kError frame for the whole connection (request id 0), then the
  // connection lingers, discarding input, until the peer closes or linger_ns passes.
  void FailTcpInput(const std::shared_ptr<TcpConn>& c, const Status& why) {
    agent_->tcp_.closed_malformed.fetch_add(1, std::memory_order_relaxed);
    TERN_LOG(INFO) << "TCP frame connection: malformed input, closing: " << why;
    QueueTcp(c, transport::MakeErrorFrame(0, why));
    if (c->state != TcpConn::State::kOpen) return;
    c->state = TcpConn::State::kLingering;
    c->linger_until = MonoNanos() + c->limits.linger_ns;
    tcp_timers_ = true;
    FlushTcp(c);
  }

  // Decodes and serves the frames buffered in `c`. False if `c` is no longer served by
  // this thread as an open connection (moved, closed or failed).
  bool DecodeTcp(const std::shared_ptr<TcpConn>& c) {
    while (c->state == TcpConn::State::kOpen) {
      transport::Frame f;
      Result<bool> got = c->decoder.Next(&f);
      if (!got.ok()) {
        FailTcpInput(c, got.status());
        return false;
      }
      if (!*got) return true;
      if (!agent_->ServeTcpFrame(this, c, std::move(f))) return false;
    }
    return false;
  }

  // recv() that also sets c->received_ns (transport::RecvDated). Bytes go first into
  // `window` (the missing part of a large payload, possibly empty), then into `buf`
  // (`chunk` bytes, at most kTcpReadChunk).
  static ssize_t RecvDated(TcpConn* c, std::span<char> window, char* buf, size_t chunk) {
    const iovec iov[2] = {{window.data(), window.size()}, {buf, chunk}};
    return window.empty() ? transport::RecvDated(c->fd.get(), &iov[1], 1, &c->received_ns)
                          : transport::RecvDated(c->fd.get(), iov, 2, &c->received_ns);
  }

  // Reads and serves what `c` has (`events` from epoll, or 0). True if anything was
  // read or the connection ended.
  bool ReadTcp(const std::shared_ptr<TcpConn>& c, uint32_t events) {
    bool progress = false;
    char* buf = TcpReadScratch();
    for (int i = 0; i < kTcpReadsPerRound; ++i) {
      if (c->state == TcpConn::State::kClosed || c->peer_eof) break;
      if (c->state == TcpConn::State::kOpen &&
          c->pending() > c->limits.pause_reading_output_bytes) {
        break;  // paused: the peer is not reading its replies
      }
      // A large payload being received lands in its frame directly; after one, the
      // next frame's head is read alone so that its payload does too.
      const bool open = c->state == TcpConn::State::kOpen;
      const std::span<char> window = open ? c->decoder.PayloadWindow() : std::span<char>();
      const size_t chunk = open ? std::min(kTcpReadChunk, c->decoder.ReadLimit()) : kTcpReadChunk;
      ssize_t n = RecvDated(c.get(), window, buf, chunk);
      if (n >= 0) progress = true;
      if (n > 0) {
        if (c->state == TcpConn::State::kOpen) {
          const size_t direct = std::min(static_cast<size_t>(n), window.size());
          c->decoder.PayloadReceived(direct);
          c->decoder.Feed(std::string_view(buf, static_cast<size_t>(n) - direct));
          if (!DecodeTcp(c)) {
            if (c->owner != this) return true;  // moved: no longer ours
            continue;                      // lingering (discard the rest) or closed
          }
        }
        if (static_cast<size_t>(n) < window.size() + chunk) break;  // most likely drained
        continue;
      }
      if (n == 0) {
        c->peer_eof = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      CloseTcp(c, ErrnoError("recv", errno));
      return true;
    }
    if (c->state == TcpConn::State::kClosed) return true;
    if (c->peer_eof || (events & EPOLLHUP)) {
      // Lingering: the peer has seen our error. Otherwise answer what is in flight first,
      // unless the peer is gone altogether (nothing can be sent any more).
      if (c->state == TcpConn::State::kLingering || (events & (EPOLLHUP | EPOLLERR)) ||
          (c->inflight == 0 && c->pending() == 0)) {
        CloseTcp(c, Status::Ok());
        return true;
      }
    }
    UpdateTcpInterest(c);
    return progress;
  }

  // Sends what the socket takes now. True if bytes went out.
  bool FlushTcp(const std::shared_ptr<TcpConn>& c) {
    if (c->state == TcpConn::State::kClosed) return false;
    const size_t before = c->pending();
    Result<size_t> w = c->out.WriteTo(c->fd.get());
    const size_t sent = before - c->pending();
    agent_->tcp_.output_bytes.fetch_sub(sent, std::memory_order_relaxed);
    if (sent > 0) yield_soon_ = true;  // the reader may be waiting for this vCPU
    if (!w.ok()) {
      CloseTcp(c, w.status());
      return sent > 0;
    }
    if (c->pending() == 0) {
      c->write_blocked = false;
      c->stalled_since = 0;
      if (c->state == TcpConn::State::kLingering && !c->shut_wr) {
        ::shutdown(c->fd.get(), SHUT_WR);
        c->shut_wr = true;
      }
      if (c->state == TcpConn::State::kOpen && c->peer_eof && c->inflight == 0) {
        CloseTcp(c, Status::Ok());
        return sent > 0;
      }
    } else {
      c->write_blocked = true;
      if (sent > 0 || c->stalled_since == 0) c->stalled_since = MonoNanos();
      tcp_timers_ = true;
    }
    UpdateTcpInterest(c);
    return sent > 0;
  }

  // Closes connections whose peer stopped reading for write_stall_ns, and lingering
  // ones whose time is up.
  void CheckTcpTimers(int64_t now) {
    std::vector<std::pair<std::shared_ptr<TcpConn>, Status>> victims;
    bool still = false;
    for (auto& [fd, c] : tcp_conns_) {
      if (c->state == TcpConn::State::kLingering) {
        if (now >= c->linger_until) {
          victims.emplace_back(c, Status::Ok());
        } else {
          still = true;
        }
      } else if (c->write_blocked && c->pending() > 0) {
        if (now - c->stalled_since >= c->limits.write_stall_ns) {
          victims.emplace_back(c, DeadlineExceededError(fmt::format(
                                      "peer took none of {} queued reply bytes for {} ms",
                                      c->pending(), c->limits.write_stall_ns / 1'000'000)));
        } else {
          still = true;
        }
      }
    }
    for (auto& [c, why] : victims) {
      if (!why.ok()) {
        agent_->tcp_.closed_slow.fetch_add(1, std::memory_order_relaxed);
        TERN_LOG(WARN) << "closing a TCP frame connection: " << why;
      }
      CloseTcp(c, why);
    }
    tcp_timers_ = still;
  }

  bool PollTcp() {
    bool progress = false;
    if (tcp_conns_.size() == 1 && tcp_conns_.begin()->second->registered &&
        tcp_conns_.begin()->second->interest == EPOLLIN &&
        tcp_conns_.begin()->second->decoder.ReadLimit() == SIZE_MAX) {
      // One connection that only wants input (a client's, or a caller worker's channel):
      // a recv that finds nothing costs what the epoll_wait that would send us to it
      // does, and when a request is there it saves that epoll_wait, one system call
      // per request.
      std::shared_ptr<TcpConn> c = tcp_conns_.begin()->second;
      progress |= ReadTcp(c, 0);
    } else if (!tcp_conns_.empty()) {
      epoll_event evs[64];
      int n = ::epoll_wait(epoll_fd_.get(), evs, 64, 0);
      for (int i = 0; i < n; ++i) {
        auto it = tcp_conns_.find(evs[i].data.fd);
        if (it == tcp_conns_.end()) continue;  // closed earlier in this round
        std::shared_ptr<TcpConn> c = it->second;
        progress = true;
        const uint32_t e = evs[i].events;
        if (e & EPOLLOUT) FlushTcp(c);
        if (c->state != TcpConn::State::kClosed && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
          ReadTcp(c, e);
        }
      }
    }
    // Output queued in this round (replies, pongs, errors): one send per connection.
    if (!tcp_dirty_.empty()) {
      std::vector<std::shared_ptr<TcpConn>> dirty;
      dirty.swap(tcp_dirty_);
      for (std::shared_ptr<TcpConn>& c : dirty) {
        if (c->owner != this) continue;  // moved away; its new owner flushes it
        c->dirty = false;
        progress |= FlushTcp(c);
      }
    }
    if (tcp_timers_) {
      const int64_t now = MonoNanos();
      if (now >= next_tcp_check_) {
        next_tcp_check_ = now + 10'000'000;
        CheckTcpTimers(now);
      }
    }
    return progress;
  }

  // Sleeps on the doorbell (and the fds of channels with calls in flight) until rung,
  // a channel fd is ready, `deadline_ns` (0 = none) or a periodic liveness check.
  template <typename Done>
  void Sleep(int64_t deadline_ns, bool nested, Done done) {
    doorbell_.PrepareSleep();
    // Re-check after announcing the sleep: work posted before that is seen here,
    // work posted after it rings the doorbell.
    if (Step(nested) || done()) {
      doorbell_.CancelSleep();
      return;
    }
    {
      MutexLock l(&mu_);
      if (stopping_ && !nested) {
        doorbell_.CancelSleep();
        return;
      }
    }
    int64_t now = MonoNanos();
    // Shared-memory peers are checked for liveness at least every 10 ms.
    int64_t timeout =
        (!server_conns_.empty() || !inflight_.empty() || tcp_timers_) ? 10'000'000 : 1'000'000'000;
    if (deadline_ns != 0) timeout = std::min(timeout, std::max<int64_t>(0, deadline_ns - now));
    fds_.clear();
    for (auto& [key, ch] : channels_) {
      int64_t due = ch->next_due_ns();
      if (due != 0) timeout = std::min(timeout, std::max<int64_t>(0, due - now));
      if (ch->wait_fd() >= 0) fds_.push_back(ch->wait_fd());
    }
    for (auto& sc : server_conns_) fds_.push_back(sc->conn->socket_fd());
    if (!tcp_conns_.empty()) fds_.push_back(epoll_fd_.get());
    Status st = doorbell_.Sleep(timeout, fds_);
    if (!st.ok()) TERN_LOG(WARN) << "worker " << index_ << ": sleep failed: " << st;
  }

  // One step of an idle spin (`now`: MonoNanos). The thread yields its vCPU (so that a
  // peer sharing it — pinned runs, or more busy threads than vCPUs — runs instead of
  // waiting for the end of our timeslice) right after it woke a sleeping thread or
  // wrote to a TCP socket (that peer may be waiting for this vCPU now), and otherwise
  // every kYieldEveryNanos. Not every few steps: sched_yield is a system call (~0.4 µs
  // here, more when the host is busy), and a request that arrives during one waits for
  // it — yielding every 8 steps kept the idle worker in it a third of the time.
  // `now`: CycleNanos().
  void Relax(int64_t now) {
    const uint64_t wakeups = transport::DoorbellWakeupsOnThisThread();
    if (wakeups != wakeups_seen_ || yield_soon_ || now - last_yield_ns_ >= kYieldEveryNanos) {
      wakeups_seen_ = wakeups;
      yield_soon_ = false;
      last_yield_ns_ = now;
      sched_yield();
    } else {
      CpuRelax();
    }
  }

  void DropOutstanding(const std::string& instance) {
    auto it = outstanding_.find(instance);
    if (it != outstanding_.end() && --it->second == 0) outstanding_.erase(it);
  }

  const int index_;
  pid_t tid_ = 0;
  int64_t wait_cpu_ns_ = 0;
  int64_t wait_wall_ns_ = 0;
  wasm::Engine* const engine_;
  Agent* agent_ = nullptr;
  transport::Doorbell doorbell_;
  std::thread thread_;
  std::unique_ptr<wasm::Worker> worker_;
  std::map<std::string, std::unique_ptr<Slot>> slots_;  // worker thread only

  // Worker thread only.
  std::vector<std::string> busy_;
  std::deque<Task> deferred_;
  std::map<std::string, std::unique_ptr<OutChannel>> channels_;
  std::unordered_map<uint64_t, std::shared_ptr<OutCall>> inflight_;
  std::unordered_map<std::string, uint64_t> outstanding_;
  std::vector<std::shared_ptr<ServerConn>> server_conns_;
  std::vector<transport::Frame> shm_frames_;  // PollServerConns' buffer (its capacity kept)
  bool polling_shm_ = false;                  // PollServerConns is on the stack
  transport::UniqueFd epoll_fd_;  // the TCP connections it owns
  std::unordered_map</*fd*/ int, std::shared_ptr<TcpConn>> tcp_conns_;
  std::vector<std::shared_ptr<TcpConn>> tcp_dirty_;  // output queued since the last flush
  bool tcp_timers_ = false;  // a connection is stalled or lingering: check it every 10 ms
  int64_t next_tcp_check_ = 0;
  std::vector<int> fds_;
  uint64_t wire_ids_ = 0;
  // Relax(): when the thread last yielded, DoorbellWakeupsOnThisThread() then, and
  // whether it has written to a TCP socket since.
  int64_t last_yield_ns_ = 0;
  uint64_t wakeups_seen_ = 0;
  bool yield_soon_ = false;
  int wait_depth_ = 0;  // WaitCall frames on this thread's stack
  std::array<CachedRoute, 4> route_cache_;
  size_t route_cache_next_ = 0;

  // Longer than a cross-vCPU wake-up (~35 µs here): with a shorter spin, two threads
  // that answer each other fall into a cycle where each finds the other asleep.
  static constexpr int64_t kSpinNanos = 100'000;
  static constexpr int64_t kYieldEveryNanos = 20'000;
  std::atomic<uint64_t> posted_{0};  // tasks ever posted
  uint64_t taken_ = 0;               // worker thread only: posted_ when it last took tasks

  Mutex mu_;
  std::deque<Task> tasks_ GUARDED_BY(mu_);
  std::deque<Task> urgent_ GUARDED_BY(mu_);          // PostUrgent: before tasks_
  std::atomic<bool> urgent_pending_{false};          // urgent_ may be non-empty
  bool stopping_ GUARDED_BY(mu_) = false;
  std::atomic<bool> stopping_flag_{false};  // = stopping_, read without the lock
};

// ---------------------------------------------------------------------------------
// The host of one request, with calls to other services (tern_call_*).

class Agent::CallingHost final : public RequestHost {
 public:
  // `trace_id`: the request's (made fresh by Execute when it has none).
  CallingHost(Agent* agent, WorkerThread* wt, const InvokeRequest& req, uint64_t trace_id,
              const std::string& instance_id)
      : RequestHost(req.Payload(), instance_id),
        agent_(agent),
        wt_(wt),
        req_(req),
        trace_id_(trace_id) {}
  ~CallingHost() override {
    for (auto& c : calls_) {
      if (c != nullptr && !c->done.load(std::memory_order_acquire)) wt_->Forget(c.get());
    }
  }

  int32_t CallStart(std::string_view service, std::string_view handler, std::string_view request,
                    uint32_t timeout_ms) override {
    if (!IsValidName(std::string(service)) || handler.empty()) {
      return -static_cast<int32_t>(StatusCode::kInvalidArgument);
    }
    size_t slot = 0;
    while (slot < calls_.size() && calls_[slot] != nullptr) ++slot;
    if (slot == calls_.size()) {
      if (calls_.size() >= kMaxOpenCalls) return -static_cast<int32_t>(StatusCode::kResourceExhausted);
      calls_.emplace_back();
    }
    auto call = std::make_shared<OutCall>();
    call->service.assign(service);
    call->handler.assign(handler);
    call->payload.assign(request);
    int64_t deadline = req_.deadline_ns;
    const int64_t now = MonoNanos();
    int64_t own = timeout_ms > 0 ? now + int64_t{timeout_ms} * 1'000'000
                                 : (deadline == 0 ? now + agent_->options_.call_timeout_ns : 0);
    if (own != 0 && (deadline == 0 || own < deadline)) deadline = own;
    call->deadline_ns = deadline;
    call->tenant = req_.tenant;
    call->trace_id = trace_id_;
    call->idempotency_key =
        DeriveCallKey(req_.idempotency_key, ++calls_started_, call->service, call->handler);
    calls_[slot] = call;
    agent_->Dispatch(wt_, std::move(call));
    return static_cast<int32_t>(slot + 1);
  }

  int32_t CallWait(int32_t handle, uint32_t* len) override {
    OutCall* c = Get(handle);
    *len = 0;
    if (c == nullptr) return -static_cast<int32_t>(StatusCode::kNotFound);
    if (!c->done.load(std::memory_order_acquire)) wt_->WaitCall(c);
    *len = static_cast<uint32_t>(c->result.size());
    return static_cast<int32_t>(c->code);
  }

  std::string_view CallResult(int32_t handle) override {
    OutCall* c = Get(handle);
    if (c == nullptr || !c->done.load(std::memory_order_acquire)) return {};
    return c->result;
  }

  void CallClose(int32_t handle) override {
    OutCall* c = Get(handle);
    if (c == nullptr) return;
    if (!c->done.load(std::memory_order_acquire)) wt_->Forget(c);
    calls_[static_cast<size_t>(handle - 1)].reset();
  }

  // Datasets: this device's store when it keeps the dataset, else its owner's over the
  // data plane, in chunks.
  int64_t DataRead(std::string_view dataset, std::string_view key, uint64_t offset, uint32_t len,
                   std::string* out) override {
    std::string ds(dataset), k(key);
    if (!storage::ValidateDatasetName(ds).ok() || !storage::ValidateObjectKey(k).ok()) {
      return -static_cast<int64_t>(StatusCode::kInvalidArgument);
    }
    storage::DatasetStore* local = agent_->datasets();
    if (local != nullptr && local->HasDataset(ds)) {
      Result<std::string> r = local->Read(ds, k, offset, len);
      if (!r.ok()) return -static_cast<int64_t>(r.status().code());
      agent_->CountData(instance_id(), r->size(), 0, "");
      *out = std::move(*r);
      return static_cast<int64_t>(out->size());
    }
    out->clear();
    uint64_t pos = offset;
    uint32_t left = len;
    do {
      uint32_t chunk = std::min<uint32_t>(left, kDataChunk);
      Result<std::string> r =
          agent_->RemoteData(wt_, req_, trace_id_, instance_id(), "read", ds, k, pos, chunk);
      if (!r.ok()) return -static_cast<int64_t>(r.status().code());
      out->append(*r);
      pos += r->size();
      left -= static_cast<uint32_t>(r->size());
      if (r->size() < chunk) break;  // the end of the object
    } while (left > 0);
    return static_cast<int64_t>(out->size());
  }

  int64_t DataSize(std::string_view dataset, std::string_view key) override {
    std::string ds(dataset), k(key);
    if (!storage::ValidateDatasetName(ds).ok() || !storage::ValidateObjectKey(k).ok()) {
      return -static_cast<int64_t>(StatusCode::kInvalidArgument);
    }
    storage::DatasetStore* local = agent_->datasets();
    if (local != nullptr && local->HasDataset(ds)) {
      Result<uint64_t> n = local->Size(ds, k);
      return n.ok() ? static_cast<int64_t>(*n) : -static_cast<int64_t>(n.status().code());
    }
    Result<std::string> r =
        agent_->RemoteData(wt_, req_, trace_id_, instance_id(), "size", ds, k, 0, 0);
    if (!r.ok()) return -static_cast<int64_t>(r.status().code());
    return static_cast<int64_t>(std::strtoull(r->c_str(), nullptr, 10));
  }

  int64_t DataList(std::string_view dataset, std::string* out) override {
    std::string ds(dataset);
    if (!storage::ValidateDatasetName(ds).ok()) {
      return -static_cast<int64_t>(StatusCode::kInvalidArgument);
    }
    storage::DatasetStore* local = agent_->datasets();
    if (local != nullptr && local->HasDataset(ds)) {
      Result<std::vector<storage::ObjectInfo>> objs = local->List(ds);
      if (!objs.ok()) return -static_cast<int64_t>(objs.status().code());
      for (const storage::ObjectInfo& o : *objs) *out += fmt::format("{}\t{}\n", o.key, o.size);
      return 0;
    }
    Result<std::string> r =
        agent_->RemoteData(wt_, req_, trace_id_, instance_id(), "list", ds, "", 0, 0);
    if (!r.ok()) return -static_cast<int64_t>(r.status().code());
    *out = std::move(*r);
    return 0;
  }

 private:
  static constexpr size_t kMaxOpenCalls = 64;  // TERN_MAX_OPEN_CALLS
  // Remote dataset reads go in requests of at most this many bytes.
  static constexpr uint32_t kDataChunk = 1u << 20;

  OutCall* Get(int32_t handle) {
    if (handle <= 0 || static_cast<size_t>(handle) > calls_.size()) return nullptr;
    return calls_[static_cast<size_t>(handle - 1)].get();
  }

  Agent* const agent_;
  WorkerThread* const wt_;
  const InvokeRequest& req_;
  const uint64_t trace_id_;
  uint64_t calls_started_ = 0;  // tern_call_start calls so far: the ordinal of the next key
  std::vector<std::shared_ptr<OutCall>> calls_;
};

namespace {
std::string ChannelKey(dataplane::Tier tier, const dataplane::InstanceLocation& loc) {
  return fmt::format("{}:{}", dataplane::TierName(tier), loc.agent);
}
}  // namespace

void Agent::Dispatch(WorkerThread* wt, std::shared_ptr<OutCall> call) {
  ++call->attempts;
  struct Candidate {
    dataplane::InstanceLocation loc;
    dataplane::Tier tier;
    int worker = -1;  // local instances
    std::shared_ptr<std::atomic<uint64_t>> queued;
  };
  std::vector<Candidate> cands;
  std::string why_none;
  const dataplane::Self self{options_.device, options_.host};
  bool local_service = false;
  {
    MutexLock l(&mu_);
    auto sit = services_.find(call->service);
    if (sit != services_.end()) {
      local_service = true;
      if (!sit->second->manifest.HasHandler(call->handler)) {
        call->Complete(StatusCode::kNotFound,
                       fmt::format("service '{}' has no handler '{}' (handlers: {})",
                                   call->service, call->handler,
                                   JoinNames(sit->second->manifest.handlers)));
        return;
      }
    }
    for (const std::string& id : InstancesOf(call->service)) {
      const Route& r = routes_.at(id);
      if (r.worker == wt->index() && wt->IsBusy(id)) {
        why_none = fmt::format(
            "instance {} is busy with a request that is waiting on this call (a call cycle)", id);
        continue;
      }
      dataplane::InstanceLocation loc;
      loc.instance = id;
      loc.service = call->service;
      loc.agent = options_.device;
      loc.host = options_.host;
      loc.tcp = options_.tcp_address;
      loc.shm = options_.shm_path;
      Result<dataplane::Tier> tier = dataplane::SelectTier(self, loc, options_.tier_policy);
      if (!tier.ok()) {
        why_none = std::string(tier.status().message());
        continue;
      }
      cands.push_back(Candidate{std::move(loc), *tier, r.worker, r.queued});
    }
  }
  for (dataplane::InstanceLocation& loc : locations_.Lookup(call->service)) {
    if (loc.agent == options_.device) continue;  // our own instances are routed above
    if (std::find(call->avoid.begin(), call->avoid.end(), loc.instance) != call->avoid.end()) {
      continue;
    }
    Result<dataplane::Tier> tier = dataplane::SelectTier(self, loc, options_.tier_policy);
    if (!tier.ok()) {
      why_none = std::string(tier.status().message());
      continue;
    }
    cands.push_back(Candidate{std::move(loc), *tier, -1, nullptr});
  }
  if (cands.empty()) {
    if (!why_none.empty()) {
      call->Complete(StatusCode::kUnavailable,
                     fmt::format("no instance of '{}' can take the call: {}", call->service,
                                 why_none));
    } else if (local_service || !call->avoid.empty()) {
      call->Complete(StatusCode::kUnavailable,
                     fmt::format("service '{}' has no running instance that can be reached",
                                 call->service));
    } else {
      call->Complete(StatusCode::kNotFound,
                     fmt::format("no service '{}' is known to agent {} (not deployed here, and "
                                 "no location for it in the location table)",
                                 call->service, options_.device));
    }
    return;
  }
  std::optional<size_t> pick = dataplane::PickP2C(
      cands.size(),
      [&](size_t i) -> uint64_t {
        const Candidate& c = cands[i];
        uint64_t n = wt->Outstanding(c.loc.instance);
        if (c.queued != nullptr) n += c.queued->load(std::memory_order_relaxed);
        return n;
      },
      [&](size_t i) { return cands[i].tier; }, &wt_rng_state());
  Candidate& c = cands[*pick];
  call->instance = c.loc.instance;
  call->tier = c.tier;
  call_counts_[static_cast<int>(c.tier)].fetch_add(1, std::memory_order_relaxed);

  if (c.tier == dataplane::Tier::kInProcess) {
    InvokeRequest req;
    req.service = call->service;
    req.handler = call->handler;
    req.payload = call->payload;
    req.instance = c.loc.instance;
    req.tenant = call->tenant;
    req.trace_id = call->trace_id;
    req.idempotency_key = call->idempotency_key;
    req.deadline_ns = call->deadline_ns;
    if (c.worker == wt->index() && !IsFrozen(wt, c.loc.instance)) {
      // Same worker: run it right here (the caller waits anyway).
      call->Complete(Execute(wt, c.loc.instance, req));
      return;
    }
    Invoke(std::move(req), [call, wt](InvokeResult r) {
      call->Complete(std::move(r));
      wt->Wake();
    });
    return;
  }

  SendRemote(wt, std::move(call), c.tier, c.loc);
}

void Agent::SendRemote(WorkerThread* wt, std::shared_ptr<OutCall> call, dataplane::Tier tier,
                       const dataplane::InstanceLocation& loc) {
  struct {
    dataplane::Tier tier;
    const dataplane::InstanceLocation& loc;
  } c{tier, loc};
  // Shared memory or TCP: through this worker's channel to that agent.
  const std::string key = ChannelKey(c.tier, c.loc);
  OutChannel* ch = wt->FindChannel(key);
  if (ch == nullptr) {
    Result<std::unique_ptr<OutChannel>> made = OpenChannel(wt, c.tier, c.loc);
    if (!made.ok()) {
      call->Complete(made.status().code(), fmt::format("call to {}.{}: {}", call->service,
                                                       call->handler, made.status().message()));
      return;
    }
    ch = made->get();
    wt->AddChannel(key, std::move(*made));
  }
  if (c.tier == dataplane::Tier::kTcp && links_.size() > 0) {
    ch->SetLink(links_.Find(options_.host, c.loc.host).value_or(dataplane::LinkSpec{}));
  }
  transport::Frame f;
  f.type = transport::FrameType::kInvoke;
  f.request_id = wt->NextWireId();
  f.epoch = c.loc.epoch;
  const int64_t now = MonoNanos();
  if (call->deadline_ns != 0) {
    int64_t left_us = (call->deadline_ns - now) / 1000;
    f.budget_us = static_cast<uint32_t>(std::clamp<int64_t>(left_us, 1, UINT32_MAX));
  }
  f.trace_id = call->trace_id;
  f.idempotency_key = call->idempotency_key;
  f.tenant = call->tenant;
  f.service = call->service;
  f.handler = call->handler;
  f.payload = call->payload;
  Status st = ch->Send(f);
  if (!st.ok()) {
    call->Complete(st.code(), fmt::format("call to {}.{} via {}: {}", call->service,
                                          call->handler, key, st.message()));
    return;
  }
  call->channel_key = key;
  call->wire_id = f.request_id;
  wt->AddInflight(std::move(call));
}

void Agent::Redispatch(WorkerThread* wt, std::shared_ptr<OutCall> call) {
  if (call->attempts >= 3) {
    call->Complete(StatusCode::kUnavailable,
                   fmt::format("call to {}.{}: instance moved {} times while calling; giving up",
                               call->service, call->handler, call->attempts));
    return;
  }
  moved_.fetch_add(1, std::memory_order_relaxed);
  call->channel_key.clear();
  call->wire_id = 0;
  Dispatch(wt, std::move(call));
}

Result<std::unique_ptr<OutChannel>> Agent::OpenChannel(WorkerThread* wt, dataplane::Tier tier,
                                                       const dataplane::InstanceLocation& loc) {
  if (tier == dataplane::Tier::kSharedMemory) {
    Result<std::unique_ptr<transport::ShmConnection>> conn =
        transport::ShmConnect(loc.shm, wt->doorbell(), loc.instance);
    if (!conn.ok()) {
      return UnavailableError(fmt::format("cannot reach agent {} over shared memory at {}: {}",
                                          loc.agent, loc.shm, conn.status().message()));
    }
    return MakeShmChannel(std::move(*conn));
  }
  TcpChannelOptions opt;
  if (std::optional<dataplane::LinkSpec> link = links_.Find(options_.host, loc.host)) {
    opt.link = *link;
  }
  return ConnectTcpChannel(loc.tcp, opt, 1'000'000'000);
}

uint64_t& Agent::wt_rng_state() {
  thread_local uint64_t state = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<uintptr_t>(&state);
  return state;
}

// A request that arrived on a shared-memory connection owned by `wt`.
void Agent::ServeShmFrame(WorkerThread* wt, const std::shared_ptr<ServerConn>& sc,
                          std::string_view borrowed, transport::Frame&& f) {
  if (borrowed.data() != nullptr &&
      (f.type != transport::FrameType::kInvoke || f.service.starts_with('$'))) {
    // Not for a guest: what answers it (a pong, a dataset read) reads the frame's payload.
    f.payload.assign(borrowed.data(), borrowed.size());
    borrowed = {};
  }
  if (std::optional<transport::Frame> answer = AnswerWithoutGuest(this, f)) {
    (void)sc->conn->Send(*answer);
    return;
  }
  const uint64_t id = f.request_id;
  InvokeRequest req = RequestFromFrame(std::move(f));
  req.borrowed_payload = borrowed;
  req.reply_view_ok = true;
  // The reply goes out on the connection's owner thread (connections are single-threaded).
  InvokeWith(std::move(req), [wt, sc, id](InvokeResult r) {
    if (current_worker == wt && r.status.ok() && r.reply_view.data() != nullptr) {
      // Still in the guest's memory: copied from there into the ring (or memfd), once.
      if (sc->dead) return;
      Status st = sc->conn->Send(ReplyHead(id), r.reply_view);
      if (!st.ok()) TERN_LOG(WARN) << "shared-memory reply dropped: " << st;
      return;
    }
    auto send = [sc, out = AnswerFrame(id, std::move(r))] {
      if (sc->dead) return;
      Status st = sc->conn->Send(out);
      if (!st.ok()) TERN_LOG(WARN) << "shared-memory reply dropped: " << st;
    };
    if (current_worker == wt) {
      send();
    } else {
      wt->Post(std::move(send), /*instance=*/"", /*io=*/true);
    }
  });
}

// A request that arrived on a TCP connection owned by `wt`.
bool Agent::ServeTcpFrame(WorkerThread* wt, const std::shared_ptr<TcpConn>& c,
                          transport::Frame f) {
  const bool journal = f.type == transport::FrameType::kInvoke && f.service == kJournalService;
  if (f.type == transport::FrameType::kInvoke && (f.service == kDataService || journal) &&
      data_worker_ != nullptr && wt != data_worker_.get()) {
    // Dataset requests (and journal appends) are the device's main task: their
    // connection moves to the dataset worker (for good: later invokes on it hop from
    // there), off the workers that run guests.
    c->placed = true;
    tcp_.moved.fetch_add(1, std::memory_order_relaxed);
    wt->MoveTcpConn(c, data_worker_.get(), std::move(f));
    return false;
  }
  if (journal) {
    ++c->inflight;
    ServeJournalFrame(std::move(f), [wt, c](transport::Frame out) {
      auto send = [wt, c, out = std::move(out)]() mutable { wt->OnTcpReply(c, std::move(out)); };
      if (current_worker == wt) {
        send();
      } else {
        wt->Post(std::move(send), /*instance=*/"", /*io=*/true);
      }
    });
    return true;
  }
  if (std::optional<transport::Frame> answer = AnswerWithoutGuest(this, f)) {
    wt->QueueTcp(c, std::move(*answer));
    return true;
  }
  if (!c->placed) {
    // The first invoke says what the connection is for: it moves to the worker of an
    // instance of that service, if that is another one.
    c->placed = true;
    const int w = WorkerForService(f.service);
    if (w >= 0 && w != wt->index()) {
      tcp_.moved.fetch_add(1, std::memory_order_relaxed);
      wt->MoveTcpConn(c, workers_[w].get(), std::move(f));
      return false;
    }
  }
  ++c->inflight;
  const uint64_t id = f.request_id;
  // The budget counts from when the kernel received the bytes: a request that waited in
  // the socket while this worker ran a guest has used that time up.
  InvokeRequest req = RequestFromFrame(std::move(f), c->received_ns);
  req.reply_view_ok = true;
  InvokeWith(std::move(req), [wt, c, id](InvokeResult r) {
    if (current_worker == wt && r.status.ok() && r.reply_view.data() != nullptr) {
      wt->OnTcpReplyInPlace(c, id, r.reply_view);
      return;
    }
    auto send = [wt, c, out = AnswerFrame(id, std::move(r))]() mutable {
      wt->OnTcpReply(c, std::move(out));
    };
    if (current_worker == wt) {
      send();
    } else {
      // If the owner is stopping, the reply is dropped with the connection.
      wt->Post(std::move(send), /*instance=*/"", /*io=*/true);
    }
  });
  return true;
}

Status Agent::AdoptTcpConnection(transport::UniqueFd fd, const TcpConnLimits& limits) {
  tcp_.accepted.fetch_add(1, std::memory_order_relaxed);
  tcp_.open.fetch_add(1, std::memory_order_relaxed);
  // Receive timestamps (SCM_TIMESTAMPNS) date each read; without them, the time of
  // the read is used.
  if (Status st = transport::EnableReceiveTimestamps(fd.get()); !st.ok()) {
    TERN_LOG(DEBUG) << "no receive timestamps on a TCP frame connection: " << st;
  }
  auto c = std::make_shared<TcpConn>(std::move(fd), limits, &tcp_);
  WorkerThread* wt = workers_[WorkerForHint("")].get();
  c->owner = wt;
  if (!wt->Post([wt, c] { wt->AdoptTcpConn(c, std::nullopt); }, "", /*io=*/true)) {
    return UnavailableError("agent is shutting down");
  }
  return Status::Ok();
}

ShmServingStats Agent::shm_stats() const {
  return ShmServingStats{shm_in_place_.load(std::memory_order_relaxed),
                         shm_copied_.load(std::memory_order_relaxed)};
}

TcpConnStats Agent::tcp_stats() const {
  TcpConnStats s;
  s.accepted = tcp_.accepted.load(std::memory_order_relaxed);
  s.open = tcp_.open.load(std::memory_order_relaxed);
  s.moved = tcp_.moved.load(std::memory_order_relaxed);
  s.closed_malformed = tcp_.closed_malformed.load(std::memory_order_relaxed);
  s.closed_slow = tcp_.closed_slow.load(std::memory_order_relaxed);
  s.output_bytes = tcp_.output_bytes.load(std::memory_order_relaxed);
  return s;
}

namespace {

// "$data" frames: dataset requests from other agents' guests, answered from this
// device's store without a guest. Handler = read | size | list; payload =
// "dataset\nkey\noffset\nlen" (decimal).
transport::Frame AnswerDataFrame(Agent* agent, const transport::Frame& f) {
  std::vector<std::string> p;
  size_t i = 0;
  while (p.size() < 4) {
    size_t j = f.payload.find('\n', i);
    p.push_back(f.payload.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  auto fail = [&](const Status& s) { return transport::MakeErrorFrame(f.request_id, s); };
  if (p.size() != 4) return fail(InvalidArgumentError("malformed dataset request"));
  storage::DatasetStore* st = agent->datasets();
  if (st == nullptr || !st->HasDataset(p[0])) {
    return fail(NotFoundError(fmt::format("agent {} does not keep dataset '{}'",
                                          agent->options().device, p[0])));
  }
  transport::Frame out;
  out.type = transport::FrameType::kReply;
  out.request_id = f.request_id;
  if (f.handler == "read") {
    uint64_t len = std::min<uint64_t>(std::strtoull(p[3].c_str(), nullptr, 10), 16u << 20);
    Result<std::string> r = st->Read(p[0], p[1], std::strtoull(p[2].c_str(), nullptr, 10), len);
    if (!r.ok()) return fail(r.status());
    out.payload = std::move(*r);
  } else if (f.handler == "size") {
    Result<uint64_t> n = st->Size(p[0], p[1]);
    if (!n.ok()) return fail(n.status());
    out.payload = std::to_string(*n);
  } else if (f.handler == "list") {
    Result<std::vector<storage::ObjectInfo>> objs = st->List(p[0]);
    if (!objs.ok()) return fail(objs.status());
    for (const storage::ObjectInfo& o : *objs) out.payload += fmt::format("{}\t{}\n", o.key, o.size);
  } else {
    return fail(InvalidArgumentError(fmt::format("unknown dataset operation '{}'", f.handler)));
  }
  return out;
}

}  // namespace

std::optional<transport::Frame> AnswerWithoutGuest(Agent* agent, const transport::Frame& f) {
  using transport::FrameType;
  transport::Frame out;
  out.request_id = f.request_id;
  switch (f.type) {
    case FrameType::kInvoke:
      if (f.service == kDataService) return AnswerDataFrame(agent, f);
      if (f.service == kJournalService) {
        return transport::MakeErrorFrame(
            f.request_id, InvalidArgumentError(fmt::format(
                              "'{}' appends are taken on TCP frame connections only",
                              kJournalService)));
      }
      if (f.service == kMigrateService) {
        if (f.handler != "address") {
          return transport::MakeErrorFrame(
              f.request_id, InvalidArgumentError(fmt::format(
                                "'{}' frames on the data-plane port: only 'address' (the "
                                "migration stream has its own port)", kMigrateService)));
        }
        Result<std::string> addr = agent->MigrationAddress();
        if (!addr.ok()) return transport::MakeErrorFrame(f.request_id, addr.status());
        out.type = FrameType::kReply;
        out.payload = *addr;
        return out;
      }
      if (f.epoch == 0 || agent->HasRunningInstance(f.service)) return std::nullopt;
      // A caller routing by a location table that still points here. Right after a
      // migration its table is about to change (the controller publishes the new
      // location): forward rather than fail it; later, kMoved makes it re-pick.
      if (agent->RecentlyMoved(f.service)) return std::nullopt;
      out.type = FrameType::kMoved;
      return out;
    case FrameType::kPing:
      out.type = FrameType::kPong;
      out.payload = f.payload;  // a Pong carries its Ping's payload (docs/formats/frame.md)
      return out;
    default:
      return transport::MakeErrorFrame(
          f.request_id,
          InvalidArgumentError(fmt::format("agent accepts invoke frames only, got '{}'",
                                           transport::FrameTypeName(f.type))));
  }
}

transport::Frame ReplyHead(uint64_t request_id) {
  transport::Frame out;
  out.type = transport::FrameType::kReply;
  out.request_id = request_id;
  return out;
}

InvokeRequest RequestFromFrame(transport::Frame&& f, int64_t received_ns) {
  InvokeRequest req;
  req.received_ns = received_ns;
  req.service = std::move(f.service);
  req.handler = std::move(f.handler);
  // "handler@instance" addresses one instance (a stateful one, or a request forwarded
  // after a migration); plain "handler" lets the agent choose.
  if (size_t at = req.handler.find('@'); at != std::string::npos) {
    req.instance = req.handler.substr(at + 1);
    req.handler.resize(at);
  }
  req.payload = std::move(f.payload);
  req.tenant = std::move(f.tenant);
  req.request_id = f.request_id;
  req.trace_id = f.trace_id;
  req.idempotency_key = f.idempotency_key;
  if (f.budget_us != 0) {
    req.deadline_ns = (received_ns != 0 ? received_ns : MonoNanos()) + int64_t{f.budget_us} * 1000;
  }
  return req;
}

transport::Frame AnswerFrame(uint64_t request_id, InvokeResult&& r) {
  if (!r.status.ok()) return transport::MakeErrorFrame(request_id, r.status);
  transport::Frame out = ReplyHead(request_id);
  // A reply still in guest memory is copied: the frame outlives it.
  out.payload = r.reply_view.data() != nullptr ? std::string(r.reply_view) : std::move(r.reply);
  return out;
}

bool Agent::HasService(const std::string& service) {
  MutexLock l(&mu_);
  return services_.count(service) > 0;
}

bool Agent::HasRunningInstance(const std::string& service) {
  // Asked for every frame that carries an epoch (agents' calls): the route cache knows.
  if (auto* self = static_cast<const WorkerThread*>(current_worker);
      self != nullptr &&
      self->CachedRunningService(service, route_gen_.load(std::memory_order_acquire))) {
    return true;
  }
  MutexLock l(&mu_);
  return !InstancesOf(service).empty();
}

Status Agent::AdoptShmConnection(std::unique_ptr<transport::ShmConnection> conn,
                                 const transport::Doorbell* doorbell) {
  WorkerThread* wt = nullptr;
  for (auto& w : workers_) {
    if (&w->doorbell() == doorbell) wt = w.get();
  }
  if (data_worker_ != nullptr && &data_worker_->doorbell() == doorbell) wt = data_worker_.get();
  if (wt == nullptr) return InvalidArgumentError("no worker has that doorbell");
  auto holder = std::make_shared<std::unique_ptr<transport::ShmConnection>>(std::move(conn));
  if (!wt->Post([wt, holder] { wt->AdoptServerConn(std::move(*holder)); }, "", /*io=*/true)) {
    return UnavailableError("agent is shutting down");
  }
  return Status::Ok();
}

int Agent::WorkerForHint(std::string_view hint) {
  MutexLock l(&mu_);
  auto it = routes_.find(std::string(hint));
  if (it != routes_.end()) return it->second.worker;
  return static_cast<int>(next_conn_worker_++ % workers_.size());
}

int Agent::WorkerForService(const std::string& service) {
  MutexLock l(&mu_);
  int w = -1;
  uint64_t best = UINT64_MAX;
  for (const std::string& id : InstancesOf(service)) {
    const Route& r = routes_.at(id);
    const uint64_t q = r.queued->load(std::memory_order_relaxed);
    if (q < best) {
      best = q;
      w = r.worker;
    }
  }
  return w;
}

const transport::Doorbell* Agent::DoorbellFor(std::string_view hint) {
  // A reader of this device's datasets ("$data@DEVICE", OpenDataChannel) is served by
  // the dataset worker, off the workers that run guests, like a TCP reader
  // (ServeTcpFrame): the device's main task does not wait for its guests.
  const std::string_view data(kDataService);
  if (data_worker_ != nullptr &&
      (hint == data || (hint.size() > data.size() && hint.substr(0, data.size()) == data &&
                        hint[data.size()] == '@'))) {
    return &data_worker_->doorbell();
  }
  return &workers_[WorkerForHint(hint)]->doorbell();
}

// ---------------------------------------------------------------------------------
// Agent

Agent::Agent(const AgentOptions& options, wasm::Engine* engine)
    : options_(options),
      engine_(engine),
      reserve_(options.memory_reserve_bytes > 0
                   ? std::make_unique<MemoryReserve>(options.memory_reserve_bytes)
                   : nullptr) {
  if (reserve_ != nullptr) WarmMigrationSlots();
}

Agent::~Agent() { Shutdown(); }

void Agent::Shutdown() {
  ShutdownMigration();
  for (auto& w : workers_) w->Stop();
  if (data_worker_) data_worker_->Stop();
}

void TuneMallocForAgentProcess() {
  constexpr int kBytes = 16 << 20;
  // Setting either turns glibc's dynamic thresholds off, so both are set.
  if (mallopt(M_MMAP_THRESHOLD, kBytes) != 1 || mallopt(M_TRIM_THRESHOLD, kBytes) != 1) {
    TERN_LOG(WARN) << "mallopt failed; large requests will cost page faults";
  }
}

Result<std::unique_ptr<Agent>> Agent::Create(const AgentOptions& options, wasm::Engine* engine) {
  if (options.workers < 1 || options.workers > 256) {
    return InvalidArgumentError(
        fmt::format("workers must be in [1, 256], got {}", options.workers));
  }
  std::unique_ptr<Agent> agent(new Agent(options, engine));
  for (int i = 0; i < options.workers; ++i) {
    TERN_ASSIGN_OR_RETURN(transport::Doorbell bell, transport::Doorbell::Create());
    agent->workers_.push_back(std::make_unique<WorkerThread>(i, engine, std::move(bell)));
  }
  for (int i = 0; i < options.workers; ++i) {
    TERN_RETURN_IF_ERROR(
        agent->workers_[i]->Start(agent.get()).WithPrefix(fmt::format("starting worker {}", i)));
  }
  {
    TERN_ASSIGN_OR_RETURN(transport::Doorbell bell, transport::Doorbell::Create());
    agent->data_worker_ = std::make_unique<WorkerThread>(options.workers, engine, std::move(bell));
    TERN_RETURN_IF_ERROR(
        agent->data_worker_->Start(agent.get()).WithPrefix("starting the dataset worker"));
  }
  PartitionSpec ps;
  ps.cores = options.cores;
  ps.reserved = options.reserved;
  ps.cgroup_root = options.cgroup_root;
  for (auto& w : agent->workers_) ps.guest_tids.push_back(w->tid());
  Result<Partition> part = PartitionGuests(ps);
  if (part.ok()) {
    agent->partition_ = *part;
  } else {
    // The device still works; its main task is just not protected.
    agent->partition_.mode = "none: " + part.status().ToString();
    TERN_LOG(WARN) << "resource partitioning is off: " << part.status();
  }
  if (agent->partition_.mode == "cgroup") {
    TERN_LOG(INFO) << "guests limited to " << agent->partition_.guest_cores << " cores in "
                   << agent->partition_.dir << " (" << options.reserved * 100
                   << "% of the device's " << options.cores << " cores reserved)";
  }
  std::string datasets_dir = options.datasets_dir;
  if (datasets_dir.empty() && !options.data_dir.empty()) datasets_dir = options.data_dir + "/datasets";
  if (!datasets_dir.empty()) {
    TERN_ASSIGN_OR_RETURN(agent->datasets_, storage::DatasetStore::Open(datasets_dir));
    // Journals of durable instances that run elsewhere, next to the checkpoints this
    // device keeps (not a dataset: the name is not a valid dataset name).
    TERN_ASSIGN_OR_RETURN(agent->journals_, storage::JournalStore::Open(datasets_dir + "/.journal"));
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
  if (manifest.stateful) {
    // Its state must move and roll back whole: refuse what a snapshot would drop.
    TERN_RETURN_IF_ERROR(wasm::CheckSnapshotable(module->info())
                             .WithPrefix(fmt::format("stateful service '{}'", manifest.name)));
  }
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
  svc->module_bytes = module_bytes;
  svc->snapshotable = wasm::CheckSnapshotable(module->info()).ok();
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
    RoutesChanged();
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
    RoutesChanged();
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

Result<std::string> Agent::StartInstance(const std::string& service, const std::string& id) {
  std::shared_ptr<const Service> svc;
  {
    MutexLock l(&mu_);
    auto it = services_.find(service);
    if (it == services_.end())
      return NotFoundError(fmt::format("no service '{}' deployed", service));
    svc = it->second;
  }
  return StartInstanceLocked(svc, id);
}

Result<std::string> Agent::StartInstanceLocked(std::shared_ptr<const Service> svc,
                                               std::string id) {
  if (!id.empty() && !IsValidName(id)) {
    return InvalidArgumentError(
        fmt::format("instance id '{}' is not a valid name ([a-z0-9-], at most 63 chars)", id));
  }
  int w = 0;
  {
    MutexLock l(&mu_);
    if (id.empty()) {
      do {
        id = MakeInstanceId(svc->manifest.name, ++next_instance_[svc->manifest.name]);
      } while (routes_.count(id) > 0);
    } else if (routes_.count(id) > 0) {
      return AlreadyExistsError(fmt::format("instance '{}' already runs here", id));
    }
    w = next_worker_++ % static_cast<int>(workers_.size());
  }
  auto queued = std::make_shared<std::atomic<uint64_t>>(0);
  WorkerThread* wt = workers_[w].get();
  Status st = wt->RunAndWait([&]() -> Status {
    auto slot = std::make_unique<Slot>();
    slot->id = id;
    slot->service = svc;
    slot->queued = queued;
    slot->durable = svc->manifest.durable;
    TERN_ASSIGN_OR_RETURN(slot->inst, wt->worker()->Instantiate(svc->module, svc->limits, true));
    // A stateless module whose globals a snapshot cannot hold is rolled back by a fresh
    // instance instead (RestoreSlot); stateful ones were refused at deploy.
    if (svc->snapshotable) TERN_RETURN_IF_ERROR(slot->inst->SnapshotInto(&slot->good));
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
  RoutesChanged();
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
  RoutesChanged();
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

Status Agent::RunOnSlotWithin(const std::string& instance_id, int64_t timeout_ns,
                              const std::function<Status(WorkerThread*, Slot*)>& fn) {
  TERN_ASSIGN_OR_RETURN(Route route, FindRoute(instance_id));
  WorkerThread* wt = workers_[route.worker].get();
  struct Shared {
    Mutex m;
    CondVar cv;
    bool done = false;
    bool cancelled = false;
    Status st;
  };
  auto sh = std::make_shared<Shared>();
  // The task holds sh->m while it runs `fn`: a waiter that times out either cancels it
  // before it starts or waits for it to finish (so `fn`, a reference, stays valid).
  // Urgent: ahead of the instance's queued requests (WorkerThread::PostUrgent).
  bool posted = wt->PostUrgent([wt, instance_id, sh, &fn] {
    MutexLock l(&sh->m);
    if (sh->cancelled) return;
    auto it = wt->slots().find(instance_id);
    sh->st = it == wt->slots().end() ? NotFoundError("instance " + instance_id + " was stopped")
                                     : fn(wt, it->second.get());
    sh->done = true;
    sh->cv.Signal();
  });
  if (!posted) return UnavailableError("agent is shutting down");
  MutexLock l(&sh->m);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout_ns);
  while (!sh->done) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds(0) || !sh->cv.WaitFor(&sh->m, left)) {
      if (sh->done) break;
      sh->cancelled = true;
      return DeadlineExceededError(fmt::format(
          "instance {} did not reach a request boundary within {} ms (a request of an instance "
          "on its worker is waiting in a nested call)",
          instance_id, timeout_ns / 1'000'000));
    }
  }
  return sh->st;
}

Status Agent::StopInstanceOn(int worker, const std::string& id) {
  WorkerThread* wt = workers_[worker].get();
  return wt->RunAndWait([wt, &id] {
    wt->slots().erase(id);
    return Status::Ok();
  });
}

void Agent::Invoke(InvokeRequest req, std::function<void(InvokeResult)> done) {
  InvokeWith(std::move(req), std::move(done));
}

// InvokeWith's routing under mu_ (the route cache missed): sets *id, *worker and
// *queued and returns true, or answers (an error) or forwards the request and returns
// false. Fills `self`'s cache where the route has a single candidate.
template <typename Done>
bool Agent::RouteUncached(InvokeRequest& req, Done& done, WorkerThread* self, std::string* id,
                          int* worker, std::shared_ptr<std::atomic<uint64_t>>* queued) {
  if (has_moved_.load(std::memory_order_acquire)) {
    // An instance that migrated away (or a service whose instances all did): forwarded
    // to where it went.
    if (std::optional<MovedTo> to = MovedRecord(req.instance, req.service)) {
      OwnRequestPayload(&req);
      Forward(*to, std::move(req), std::function<void(InvokeResult)>(std::move(done)));
      return false;
    }
  }
  const Route* route = nullptr;  // valid while mu_ is held
  // Set when the instance (or the service's last instance) moved away between the check
  // above and the lookup below: a cut-over in between. Forwarded as it would have been.
  std::optional<MovedTo> moved;
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
      return false;
    }
    const Service& svc = *sit->second;
    if (!svc.manifest.HasHandler(req.handler)) {
      done(InvokeResult{
          NotFoundError(fmt::format("service '{}' has no handler '{}' (handlers: {})", req.service,
                                    req.handler, JoinNames(svc.manifest.handlers))),
          {},
          {},
          0});
      return false;
    }
    if (req.PayloadSize() > svc.manifest.limits.request_bytes()) {
      done(InvokeResult{InvalidArgumentError(fmt::format(
                            "request of {} bytes exceeds the {} byte limit of service '{}' "
                            "(limits.request_kib in its manifest)",
                            req.PayloadSize(), svc.manifest.limits.request_bytes(), req.service)),
                        {},
                        {},
                        0});
      return false;
    }
    if (!req.instance.empty()) {
      auto rit = routes_.find(req.instance);
      if (rit == routes_.end()) moved = MovedRecordLocked(req.instance, req.service);
      if (moved) {
        // forwarded below, without the lock
      } else if (rit == routes_.end() || rit->second.service != sit->second) {
        done(InvokeResult{NotFoundError(fmt::format("no instance '{}' of service '{}'",
                                                    req.instance, req.service)),
                          {},
                          {},
                          0});
        return false;
      } else {
        *id = rit->first;
        route = &rit->second;
      }
    } else {
      // Least-queued instance of the service (instances per service are few); on a tie,
      // one on the calling worker (no thread hop).
      uint64_t best = UINT64_MAX;
      const std::string* best_id = nullptr;
      for (const std::string& rid : InstancesOf(req.service)) {
        const Route& r = routes_.at(rid);
        uint64_t q = r.queued->load(std::memory_order_relaxed);
        if (q < best || (q == best && current_worker != nullptr &&
                         workers_[r.worker].get() == current_worker)) {
          best = q;
          best_id = &rid;
          route = &r;
        }
      }
      if (best_id != nullptr) *id = *best_id;
      if (id->empty()) moved = MovedRecordLocked("", req.service);
      if (id->empty() && !moved) {
        done(InvokeResult{UnavailableError(fmt::format("service '{}' has no running instance "
                                                       "(start one: tern start {})",
                                                       req.service, req.service)),
                          {},
                          {},
                          0});
        return false;
      }
    }
    if (route != nullptr) {
      *worker = route->worker;
      *queued = route->queued;
      if (self != nullptr && (!req.instance.empty() || InstancesOf(req.service).size() == 1)) {
        self->CacheRoute(req, route_gen_.load(std::memory_order_relaxed), *id, *worker,
                         svc.manifest.limits.request_bytes(), *queued);
      }
    }
  }
  if (moved) {
    OwnRequestPayload(&req);
    Forward(*moved, std::move(req), std::function<void(InvokeResult)>(std::move(done)));
    return false;
  }
  return true;
}

// Invoke, with any callable as `done`: the worker-owned serving paths pass their
// lambdas, which become a std::function only if the request must be queued or held.
template <typename Done>
void Agent::InvokeWith(InvokeRequest req, Done done) {
  std::string id;
  int worker = 0;
  std::shared_ptr<std::atomic<uint64_t>> queued;
  // On a worker thread (the shm and TCP serving paths), a request routed like one
  // before it since the routing tables last changed goes where that one went: no mutex,
  // no lookups. The entry's strings and counter are copied: a nested round of this
  // worker's loop (while the request waits in a call) may replace the entry.
  auto* const self = static_cast<WorkerThread*>(const_cast<void*>(current_worker));
  const WorkerThread::CachedRoute* hit =
      self == nullptr ? nullptr
                      : self->CachedRouteFor(req, route_gen_.load(std::memory_order_acquire));
  if (hit != nullptr && req.PayloadSize() <= hit->request_bytes) {
    id = hit->id;
    worker = hit->worker;
    queued = hit->queued;
  } else if (!RouteUncached(req, done, self, &id, &worker, &queued)) {
    return;
  }
  if (queued->fetch_add(1, std::memory_order_relaxed) >= options_.max_queue_per_instance) {
    queued->fetch_sub(1, std::memory_order_relaxed);
    done(InvokeResult{
        ResourceExhaustedError(fmt::format("instance {} has {} requests queued; back off and retry",
                                           id, options_.max_queue_per_instance)),
        {},
        id,
        0});
    return;
  }
  WorkerThread* wt = workers_[worker].get();
  if (wt->CanRunInline() && !MayHold()) {
    // A request that arrived on a connection this worker owns (shm or TCP), for one of
    // its instances: run now, no queue (a mutex, a task allocation, a round of the loop).
    // Counted until it is done (as RunRequest does): the decrement, a locked
    // instruction, comes after the reply is out. A payload left in a shared-memory
    // ring is read from there by the guest.
    if (req.borrowed_payload.data() != nullptr) {
      shm_in_place_.fetch_add(1, std::memory_order_relaxed);
    }
    done(Execute(wt, id, req));
    queued->fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  // It waits: a payload still in a shared-memory ring is copied out (the ring's space
  // goes back to its peer when the serving path returns, before this runs).
  OwnRequestPayload(&req);
  std::function<void(InvokeResult)> fn(std::move(done));
  // Its wait in the queue counts in its latency (a request run inline arrived just now).
  if (req.received_ns == 0) req.received_ns = MonoNanos();
  auto task = [this, wt, id, req = std::move(req), fn, queued]() mutable {
    RunRequest(wt, id, req, fn, queued.get());
  };
  if (!wt->Post(std::move(task), id)) {
    queued->fetch_sub(1, std::memory_order_relaxed);
    fn(InvokeResult{UnavailableError("agent is shutting down"), {}, id, 0});
  }
}

void Agent::RunRequest(WorkerThread* wt, const std::string& id, InvokeRequest& req,
                       std::function<void(InvokeResult)>& done,
                       std::atomic<uint64_t>* queued) {
  if (HoldOrForward(wt, id, req, done)) {
    queued->fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  InvokeResult r = Execute(wt, id, req);
  // Counted until it is done, not until it starts: a durable instance waiting for its
  // keeper is busy, and the least-queued pick must see that.
  queued->fetch_sub(1, std::memory_order_relaxed);
  done(std::move(r));
}

InvokeResult Agent::Execute(WorkerThread* wt, const std::string& id, const InvokeRequest& req) {
  // A request from outside that came without a trace id starts a trace here.
  const uint64_t trace_id = req.trace_id != 0 ? req.trace_id : NewTraceId();
  InvokeResult r = ExecuteTraced(wt, id, req, trace_id);
  TERN_LOG(DEBUG) << "trace " << TraceIdHex(trace_id) << " " << req.service << "/" << req.handler
                  << " " << StatusCodeName(r.status.code()) << " (" << id << ", "
                  << r.exec_ns / 1000 << " us)";
  return r;
}

InvokeResult Agent::ExecuteTraced(WorkerThread* wt, const std::string& id, const InvokeRequest& req,
                                  uint64_t trace_id) {
  auto it = wt->slots().find(id);
  if (it == wt->slots().end()) {
    return InvokeResult{UnavailableError(fmt::format("instance {} was stopped", id)), {}, id, 0};
  }
  Slot& slot = *it->second;
  if (Status rb = FinishRollback(wt, &slot); !rb.ok()) {
    return InvokeResult{UnavailableError(fmt::format("instance {} could not be rolled back to its "
                                                     "last good state: {}",
                                                     id, rb.ToString())),
                        {},
                        id,
                        0};
  }
  slot.last_trace_id = trace_id;
  slot.last_idempotency_key = req.idempotency_key;
  // The request's wall time here is measured by the TSC (CycleNanos: ~25 ns a read
  // against ~58 for clock_gettime here, and a small request reads it twice): t0 on.
  // Its latency at this agent, the SLO's measure (docs/design/agent.md), runs from its
  // arrival (the kernel's receive time of its frame, or when it was queued: both by
  // CLOCK_MONOTONIC) until its reply is ready — queue wait, guest, commit, journal and
  // rollback included: the wait before t0 by CLOCK_MONOTONIC (read only when there is
  // an arrival time or a deadline: not for a request served inline off a shm ring),
  // the rest by CycleNanos.
  const int64_t t0 = CycleNanos();
  const int64_t mono0 = req.received_ns > 0 || req.deadline_ns != 0 ? MonoNanos() : 0;
  const int64_t waited =
      req.received_ns > 0 && req.received_ns <= mono0 ? mono0 - req.received_ns : 0;
  auto record_latency = [&slot, t0, waited](int64_t end_cycle_ns) {
    slot.latency_hist.Record(waited + (end_cycle_ns - t0));
  };
  if (req.deadline_ns != 0 && mono0 >= req.deadline_ns) {
    ++slot.expired;
    record_latency(t0);  // its caller waited that long for nothing
    return InvokeResult{DeadlineExceededError(fmt::format(
                            "request expired after waiting in the queue of {} (its deadline "
                            "passed {} µs ago); not run",
                            id, (mono0 - req.deadline_ns) / 1000)),
                        {},
                        id,
                        0};
  }
  if (req.idempotency_key != 0) {
    auto d = slot.dedup.find(req.idempotency_key);
    if (d != slot.dedup.end()) {
      // Answered before (a retry, possibly across a migration): the same answer, not
      // a second execution.
      ++slot.deduplicated;
      const DedupEntry& e = d->second;
      if (e.code == StatusCode::kOk) return InvokeResult{Status::Ok(), e.reply, id, 0};
      return InvokeResult{Status(e.code, e.reply), {}, id, 0};
    }
  }
  CallingHost host(this, wt, req, trace_id, slot.id);
  // The request's own CPU time: the thread's, less what it spent waiting for calls and
  // remote dataset reads (WaitCall: spinning, other requests served meanwhile). Reading
  // the thread's CPU clock is a system call (0.5-1.3 µs here: two of them cost more
  // than a small request's whole guest call), so it is read around one request in
  // kCpuSampleEvery and around those that follow a long one (where two reads are
  // noise); the others are charged their wall time, less waits, times the instance's
  // CPU/wall ratio from its measured requests (1 unless the thread was preempted).
  const bool measure =
      slot.requests % kCpuSampleEvery == 0 || slot.last_exec_ns >= kCpuExactAfterNs;
  const int64_t outer_wait = wt->wait_cpu_ns();
  const int64_t outer_wait_wall = wt->wait_wall_ns();
  wt->wait_cpu_ns() = 0;
  wt->wait_wall_ns() = 0;
  const int64_t cpu0 = measure ? ThreadCpuNanos() : 0;
  wt->PushBusy(slot.id);
  Status s = slot.inst->Call(req.handler, &host);
  wt->PopBusy();
  int64_t dt = CycleNanos() - t0;
  ++slot.requests;
  slot.exec_ns_total += dt;
  slot.last_exec_ns = dt;
  const int64_t own_wall = std::max<int64_t>(dt - wt->wait_wall_ns(), 0);
  if (measure) {
    const int64_t cpu = std::max<int64_t>(ThreadCpuNanos() - cpu0 - wt->wait_cpu_ns(), 0);
    slot.cpu_ns_total += cpu;
    if (own_wall > 0) {
      const double ratio = std::min(1.0, static_cast<double>(cpu) / static_cast<double>(own_wall));
      slot.cpu_per_wall = 0.75 * slot.cpu_per_wall + 0.25 * ratio;
    }
  } else {
    slot.cpu_ns_total += static_cast<int64_t>(static_cast<double>(own_wall) * slot.cpu_per_wall);
  }
  wt->wait_cpu_ns() = outer_wait;
  wt->wait_wall_ns() = outer_wait_wall;
  if (s.ok()) slot.reply_bytes_total += host.reply_bytes().size();
  // A reply left in guest memory goes out from there only to a caller that is done with
  // it before the instance runs again (reply_view_ok); others get a copy. What is kept
  // longer (the dedup table: a retry must get these bytes after the guest reused them)
  // copies it too. A durable instance's reply is copied first: it is journaled, and
  // the worker serves other requests while the keeper acknowledges.
  if (!(s.ok() && req.reply_view_ok && !slot.durable)) host.CopyReplyIn();
  const bool clean = s.ok() || host.IsGuestFailure(s);
  if (!s.ok()) {
    ++slot.failures;
    slot.last_error = s.ToString();
  }
  if (clean) {
    const bool ok = s.ok();
    if (slot.durable) {
      // No reply before what the request changed is durable on the keeper; if it cannot
      // be, the request is undone and fails.
      Status d = MakeDurable(wt, &slot, req, s.code(), ok ? host.reply() : std::string(s.message()));
      const int64_t end = CycleNanos();
      record_latency(end);
      if (!d.ok()) return InvokeResult{std::move(d), {}, id, end - t0};
    } else if (slot.service->manifest.stateful) {
      // The new state is the rollback point.
      Status snap = UpdateGoodState(&slot);
      if (!snap.ok()) TERN_LOG(ERROR) << "snapshot of " << slot.id << " failed: " << snap;
      record_latency(CycleNanos());
    } else {
      record_latency(t0 + dt);  // nothing after the guest: no clock read
    }
    if (req.idempotency_key != 0) {
      slot.Remember(req.idempotency_key, s.code(),
                    ok ? std::string(host.reply_bytes()) : std::string(s.message()));
    }
    if (ok && host.reply_view().data() != nullptr) {
      return InvokeResult{std::move(s), {}, id, dt, host.reply_view()};
    }
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
  } else if (wt->Nested()) {
    // Inside another request that is being terminated (its CPU limit hit during this
    // nested call): the instance stays unusable until that request has ended, then
    // goes back to its last good state.
    slot.rollback_pending = true;
    wt->Post([this, wt, id] {
      auto it = wt->slots().find(id);
      if (it != wt->slots().end()) (void)FinishRollback(wt, it->second.get());
    });
    msg += "; instance " + id + " will be rolled back to its last good state once the calling "
           "request has ended";
  } else {
    msg += "; rolling instance " + id + " back failed (" + rb.ToString() + ")";
    TERN_LOG(ERROR) << "rollback of " << id << " failed: " << rb;
  }
  record_latency(CycleNanos());
  return InvokeResult{Status(s.code(), msg), {}, id, dt};
}

Status Agent::FinishRollback(WorkerThread* wt, Slot* slot) {
  if (!slot->rollback_pending) return Status::Ok();
  Status rb = RestoreSlot(wt, slot, slot->good);
  if (rb.ok()) {
    slot->rollback_pending = false;
  } else {
    TERN_LOG(ERROR) << "deferred rollback of " << slot->id << " failed: " << rb;
  }
  return rb;
}

namespace {
// Defined with the migration target's code below.
void GrowWarm(MemoryReserve* reserve, wasm::Instance* inst, uint64_t bytes);
}  // namespace

Status Agent::RestoreSlot(WorkerThread* wt, Slot* slot, const wasm::Snapshot& snap) {
  // In place when the memory has not outgrown the snapshot: every byte and the stack
  // pointer are overwritten, and the pages are already faulted in (7-29 GB/s here,
  // against ~1 GB/s for first touches of a fresh instance's memory). A wasm memory
  // cannot shrink, so a larger one needs a fresh instance.
  slot->MigMarkAll();
  if (!slot->service->snapshotable) {
    // Stateless, with globals no snapshot holds: its pristine state is a new instance.
    TERN_ASSIGN_OR_RETURN(slot->inst, wt->worker()->Instantiate(slot->service->module,
                                                                slot->service->limits, true));
    return Status::Ok();
  }
  if (slot->inst->memory_bytes() <= snap.memory.size()) {
    GrowWarm(reserve_.get(), slot->inst.get(), snap.memory.size());
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
  GrowWarm(reserve_.get(), fresh.get(), snap.memory.size());
  TERN_RETURN_IF_ERROR(fresh->Restore(snap));
  slot->tracker.reset();  // before the memory it tracks goes away
  slot->tracked_base = nullptr;
  slot->inst = std::move(fresh);
  if (slot->service->manifest.stateful) StartTracking(slot);
  slot->MigMarkAll();
  return Status::Ok();
}

namespace {
constexpr size_t kTrackPage = 4096;
// Below this size a full copy of the memory (~10 µs) costs about what tracking does.
// Above it a request that writes a few pages is far cheaper tracked: a stateful
// counter/incr with 1 MiB of state took 45 µs copying the memory, 1.5 µs tracked (p50,
// foundation_bench on 2026-12-02), since a peek (PeekWritten) finds its one hot page.
constexpr uint64_t kTrackMinBytes = 256u << 10;
// But a service that rewrites most of a small memory on every request re-arms the
// tracker on nearly every request and then takes a write-protect fault per page: 1 MiB
// rewritten per request cost 170-250 µs tracked against 50 µs for memset and copy
// (a standalone loop). So below this size a slot whose tracker re-armed on more than
// one request in four over kTrackWindow requests goes back to copying for
// kUntrackedRequests requests, then tries tracking again. Above it copying is the
// dearer one whatever the writes.
constexpr uint64_t kTrackAlwaysBytes = 4u << 20;
constexpr uint32_t kTrackWindow = 64;
constexpr uint32_t kUntrackedRequests = 1024;
// Re-arming the tracker (write-protecting the written pages again) costs a TLB
// shootdown per 2 MiB that holds a written page whenever another thread of the agent
// runs on another CPU: ~15 µs each on this VM when that CPU is idle in user code, more
// when it is busy in the kernel (a migration's transfer). So after a request the
// tracker is only peeked (the pages written since it was last re-armed), each reported
// page compared with the rollback point (a page an earlier request wrote is equal to
// it), and the tracker re-armed once that set reaches this many pages: a request that
// writes a few hot pages never pays a shootdown, and random writes pay one per 2 MiB
// per re-arm instead of per request. docs/design/migration.md "The rollback point's
// dirty tracking".
constexpr size_t kRearmPages = 128;

}  // namespace

// The pages written since the slot's tracker was last re-armed (which includes every
// page the last request wrote); re-arms it when there are kRearmPages or more, and
// counts the re-arms for the small-memory rule above (TrackingCheck).
Result<std::vector<uint32_t>> Agent::PeekWritten(Slot* slot) {
  TERN_ASSIGN_OR_RETURN(std::vector<uint32_t> written, slot->tracker->Peek());
  const bool rearm = written.size() >= kRearmPages;
  if (rearm) TERN_RETURN_IF_ERROR(slot->tracker->Rearm());
  ++slot->track_requests;
  slot->track_rearms += rearm ? 1 : 0;
  return written;
}

// After a tracked request: a small memory whose tracker re-arms too often goes back to
// copying (not while it migrates: the migration's exact mode counts on the tracker).
void Agent::TrackingCheck(Slot* slot) {
  if (slot->track_requests < kTrackWindow) return;
  const bool dear = slot->track_rearms * 4 > slot->track_requests;
  slot->track_requests = slot->track_rearms = 0;
  if (!dear || slot->mig != nullptr || slot->tracker == nullptr ||
      slot->inst->memory_bytes() >= kTrackAlwaysBytes) {
    return;
  }
  TERN_LOG(DEBUG) << slot->id << " rewrites most of its memory per request: copying it for the next "
                  << kUntrackedRequests << " requests instead of tracking writes";
  slot->tracker.reset();
  slot->tracked_base = nullptr;
  slot->untracked_left = kUntrackedRequests;
}

void Agent::StartTracking(Slot* slot) {
  slot->MigMarkAll();  // a new tracker has not seen the writes so far
  slot->tracker.reset();
  slot->tracked_base = nullptr;
  slot->track_requests = slot->track_rearms = slot->untracked_left = 0;
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
    // Track from here if the memory is now big enough (or moved under a tracker), unless
    // it is small and went back to copying a while ago (TrackingCheck).
    bool track = slot->tracker != nullptr || bytes >= kTrackMinBytes;
    if (slot->untracked_left > 0 && slot->tracker == nullptr) {
      --slot->untracked_left;
      if (bytes < kTrackAlwaysBytes) track = false;
    }
    if (track) StartTracking(slot);
    return Status::Ok();
  }
  std::string& good = slot->good.memory;
  const size_t old_bytes = good.size();
  if (bytes > old_bytes) {
    // Pages added by memory.grow during the request were not tracked yet: take them all.
    good.append(reinterpret_cast<const char*>(base) + old_bytes, bytes - old_bytes);
    slot->pages_copied += (bytes - old_bytes) / kTrackPage;
    if (slot->mig != nullptr && slot->mig->exact) slot->mig->MarkRange(old_bytes / kTrackPage, bytes / kTrackPage);
    TERN_RETURN_IF_ERROR(slot->tracker->Grow(bytes));
  }
  TERN_ASSIGN_OR_RETURN(std::vector<uint32_t> written, PeekWritten(slot));
  const bool mark = slot->mig != nullptr && slot->mig->exact;
  for (uint32_t page : written) {
    size_t off = size_t{page} * kTrackPage;
    if (off >= old_bytes) continue;  // copied above
    // Equal: written by an earlier request (already here) or rewritten with the same bytes.
    if (std::memcmp(good.data() + off, base + off, kTrackPage) == 0) continue;
    std::memcpy(good.data() + off, base + off, kTrackPage);
    ++slot->pages_copied;
    if (mark) slot->mig->Mark(page);
  }
  TrackingCheck(slot);
  // The globals (heap pointers of AssemblyScript or TinyGo guests, ...): a few reads.
  return inst->SnapshotGlobals(&slot->good);
}

// ---------------------------------------------------------------------------------
// Durable instances: the journal (docs/design/migration.md "Durable instances").

Status Agent::WrittenPages(Slot* slot, std::vector<uint32_t>* dirty, std::vector<uint32_t>* changed,
                           bool* tracked) {
  wasm::Instance* inst = slot->inst.get();
  const uint8_t* base = inst->memory_data();
  const uint64_t bytes = inst->memory_bytes();
  const uint64_t old_bytes = slot->good.memory.size();
  const char* good = slot->good.memory.data();
  // What a request leaves below the stack pointer is dead (the next one overwrites it
  // before reading it): not state. Known only when the stack lies first in memory, below
  // every data segment (wasm-ld --stack-first); else every byte counts.
  uint64_t dead_end = 0;
  const std::optional<uint32_t> data_min = slot->service->module->info().data_min_offset;
  if (slot->good.stack_pointer && data_min && *slot->good.stack_pointer <= *data_min) {
    dead_end = *slot->good.stack_pointer;
  }
  // Whether page p (inside the old memory) differs from the rollback copy outside the
  // dead stack. Exact: the tracker reports writes, some of which rewrite the same bytes.
  auto differs = [&](uint64_t p) {
    const uint64_t lo = std::max(p * kTrackPage, dead_end), hi = (p + 1) * kTrackPage;
    return lo < hi && std::memcmp(base + lo, good + lo, hi - lo) != 0;
  };
  *tracked = slot->tracker != nullptr && base == slot->tracked_base && bytes >= old_bytes;
  if (*tracked) {
    if (bytes > old_bytes) TERN_RETURN_IF_ERROR(slot->tracker->Grow(bytes));
    TERN_ASSIGN_OR_RETURN(std::vector<uint32_t> written, PeekWritten(slot));
    for (uint32_t p : written) {
      const uint64_t off = uint64_t{p} * kTrackPage;
      if (off >= old_bytes) continue;  // grown: below
      // Equal: an earlier request's write (PeekWritten) or the same bytes rewritten.
      if (std::memcmp(base + off, good + off, kTrackPage) == 0) continue;
      dirty->push_back(p);
      if (differs(p)) changed->push_back(p);
    }
  } else {
    // No tracker (a memory below kTrackMinBytes, or one that moved): compare every page.
    const uint64_t common = std::min(bytes, old_bytes) / kTrackPage;
    for (uint64_t p = 0; p < common; ++p) {
      if (differs(p)) changed->push_back(static_cast<uint32_t>(p));
    }
  }
  // Pages added by memory.grow during the request: all of them (the size is state).
  for (uint64_t p = old_bytes / kTrackPage; p < bytes / kTrackPage; ++p) {
    changed->push_back(static_cast<uint32_t>(p));
  }
  return Status::Ok();
}

Status Agent::CommitGood(Slot* slot, const std::vector<uint32_t>& pages, bool tracked) {
  if (!tracked) return UpdateGoodState(slot);  // a full copy (small memories), as without durability
  const uint8_t* base = slot->inst->memory_data();
  const uint64_t bytes = slot->inst->memory_bytes();
  std::string& good = slot->good.memory;
  const size_t old_bytes = good.size();
  if (bytes > old_bytes) {
    good.append(reinterpret_cast<const char*>(base) + old_bytes, bytes - old_bytes);
    slot->pages_copied += (bytes - old_bytes) / kTrackPage;
  }
  for (uint32_t page : pages) {
    const size_t off = size_t{page} * kTrackPage;
    if (off < old_bytes) {
      std::memcpy(good.data() + off, base + off, kTrackPage);
      ++slot->pages_copied;
    }
  }
  if (slot->mig != nullptr && slot->mig->exact) {
    for (uint32_t page : pages) slot->mig->Mark(page);
    slot->mig->MarkRange(old_bytes / kTrackPage, bytes / kTrackPage);  // grown
  }
  TrackingCheck(slot);
  return slot->inst->SnapshotGlobals(&slot->good);
}

std::shared_ptr<Agent::OutCall> Agent::SendJournal(WorkerThread* wt, const JournalKeeper& keeper,
                                                   std::string payload) {
  dataplane::InstanceLocation loc;
  loc.instance = "$journal@" + keeper.device;
  loc.service = kJournalService;
  loc.agent = keeper.device;
  loc.tcp = keeper.tcp;
  auto call = std::make_shared<OutCall>();
  call->service = kJournalService;
  call->handler = "append";
  call->payload = std::move(payload);
  call->deadline_ns = MonoNanos() + options_.journal_timeout_ns;
  call->instance = loc.instance;
  call->tier = dataplane::Tier::kTcp;
  std::shared_ptr<OutCall> keep = call;
  SendRemote(wt, std::move(call), dataplane::Tier::kTcp, loc);
  return keep;
}

namespace {
// Why `device` did not take a journal record, for the log and the caller's error.
std::string KeeperFailure(const std::string& device, const Status& s, int64_t timeout_ns) {
  if (s.code() == StatusCode::kDeadlineExceeded) {
    return fmt::format("keeper {} did not acknowledge its journal record within {} ms", device,
                       timeout_ns / 1'000'000);
  }
  return fmt::format("the journal append to keeper {} failed: {}", device, s.message());
}
}  // namespace

Status Agent::AppendRecord(WorkerThread* wt, Slot* slot, const std::vector<uint32_t>& written,
                           const std::vector<wasm::GlobalValue>& globals,
                           const DedupEntry* current, AppendOutcome* outcome) {
  std::vector<JournalKeeper*> to;
  std::vector<std::string> names;
  for (JournalKeeper& k : slot->keepers) {
    names.push_back(k.device);
    if (!k.out) to.push_back(&k);
  }
  if (slot->keepers.empty()) {
    return UnavailableError("no keeper is assigned to its journal yet (the controller assigns "
                            "them with the instance's first checkpoint)");
  }
  if (to.empty()) {
    return UnavailableError(fmt::format(
        "every keeper of its journal ({}) failed; the controller assigns new ones",
        fmt::join(names, ", ")));
  }
  const bool strict = slot->service->manifest.durable_strict;
  if (strict && to.size() < slot->keepers.size()) {
    std::vector<std::string> out;
    for (const JournalKeeper& k : slot->keepers) {
      if (k.out) out.push_back(k.device);
    }
    return UnavailableError(fmt::format(
        "{} dropped out of its journal, and {} is `durable: strict`: its writes wait until "
        "the controller assigns its keepers again",
        fmt::join(out, " and "), slot->service->manifest.name));
  }
  const uint64_t seq = ++slot->journal_seq;  // never reused (Slot::journal_seq)
  const uint64_t bytes = slot->inst->memory_bytes();
  std::string framed[2];  // "<instance>\n" + the delta [0] or full [1] record, built once
  auto record = [&](bool full) -> const std::string& {
    std::string& out = framed[full ? 1 : 0];
    if (!out.empty()) return out;
    std::vector<uint32_t> all;
    std::vector<const DedupEntry*> dedup;
    if (full) {
      // Every page and the whole dedup table: the keeper's journal starts afresh here.
      all.resize(bytes / kTrackPage);
      for (size_t p = 0; p < all.size(); ++p) all[p] = static_cast<uint32_t>(p);
      for (uint64_t key : slot->dedup_order) dedup.push_back(&slot->dedup.at(key));
    }
    if (current != nullptr) dedup.push_back(current);
    out = slot->id + "\n";
    AppendJournalRecord(seq, full, slot->good.stack_pointer, globals, bytes, dedup,
                        slot->inst->memory_data(), full ? all : written, PageCodec::kLz4, &out);
    return out;
  };
  struct Append {
    JournalKeeper* keeper;
    bool full;
    std::shared_ptr<OutCall> call;
    Status status;
  };
  std::vector<Append> appends;
  for (JournalKeeper* k : to) appends.push_back({k, k->full, nullptr, Status::Ok()});
  // Round 0: every keeper its record, all in flight at once (the wait is the slower
  // acknowledgement, not the sum). Round 1: a full record to a keeper that refused a
  // delta (its journal does not end where ours does: it restarted without our last one).
  for (int round = 0; round < 2; ++round) {
    bool sent = false;
    for (Append& a : appends) {
      if (round == 1) {
        if (a.status.code() != StatusCode::kFailedPrecondition || a.full) continue;
        a.full = true;
      }
      const std::string& r = record(a.full);
      slot->journal_bytes += r.size();
      a.call = SendJournal(wt, *a.keeper, r);
      sent = true;
    }
    if (!sent) break;
    // Meanwhile the worker serves its other instances; this one's requests and control
    // tasks wait (it is busy), so nothing runs on a state that is not durable yet.
    wt->PushBusy(slot->id);
    for (Append& a : appends) {
      if (a.call != nullptr && !a.call->done.load(std::memory_order_acquire)) {
        wt->WaitCall(a.call.get());
      }
    }
    wt->PopBusy();
    for (Append& a : appends) {
      if (a.call == nullptr) continue;
      a.status = a.call->code == StatusCode::kOk ? Status::Ok() : Status(a.call->code, a.call->result);
      a.call.reset();
    }
  }
  if (outcome != nullptr && !framed[1].empty()) outcome->full_bytes = framed[1].size();
  std::vector<std::string> acked, why;
  bool timed_out = false;
  for (Append& a : appends) {
    // A keeper that did not acknowledge may hold this record or not: its next one is full.
    a.keeper->full = !a.status.ok();
    if (a.status.ok()) {
      acked.push_back(a.keeper->device);
      slot->journal_full_records += a.full ? 1 : 0;
      continue;
    }
    timed_out |= a.status.code() == StatusCode::kDeadlineExceeded;
    why.push_back(KeeperFailure(a.keeper->device, a.status, options_.journal_timeout_ns));
    if (outcome != nullptr) outcome->failed.emplace_back(a.keeper->device, a.status);
  }
  if (acked.empty()) {
    return Status(timed_out ? StatusCode::kDeadlineExceeded : StatusCode::kUnavailable,
                  fmt::format("{}", fmt::join(why, "; ")));
  }
  // Durable on fewer keepers than assigned: before anything is acknowledged so, the
  // controller records that the others drop out as of this record (the configuration
  // master of primary-backup replication), so that a restore that can read only a keeper
  // that dropped out knows its journal is not complete and says so. When the controller
  // cannot be told, nothing is acknowledged on the survivors alone: the request fails and
  // is undone, and the failed keepers do not drop out (the next request tries them again).
  std::vector<KeeperDrop> drops;
  std::vector<std::string> dropping;
  for (Append& a : appends) {
    if (a.status.ok()) continue;
    dropping.push_back(a.keeper->device);
    drops.push_back({slot->id, a.keeper->device,
                     KeeperFailure(a.keeper->device, a.status, options_.journal_timeout_ns), seq,
                     acked});
  }
  if (!drops.empty() && strict) {
    // `durable: strict`: fewer copies than assigned fail the request instead. The
    // controller is still told, so that it assigns the keepers again (a stalled keeper
    // is replaced too); until then the failed ones are out and writes fail at once.
    // Not told: they stay, and the next request tries them again.
    for (Append& a : appends) a.keeper->full = true;
    Status told = ReportKeeperDrops(wt, slot, std::move(drops));
    if (told.ok()) {
      for (Append& a : appends) a.keeper->out = a.keeper->out || !a.status.ok();
    }
    return DeadlineExceededError(fmt::format(
        "{}; the record is on {} alone, and {} is `durable: strict`, so it is not "
        "acknowledged with fewer copies{}",
        fmt::join(why, "; "), fmt::join(acked, ", "), slot->service->manifest.name,
        told.ok() ? fmt::format("; the controller assigns the keepers again")
                  : fmt::format(" (and the controller could not be told: {})", told.message())));
  }
  if (!drops.empty()) {
    Status told = ReportKeeperDrops(wt, slot, std::move(drops));
    if (!told.ok()) {
      // Those that took the record hold one that is undone: a full record next.
      for (Append& a : appends) a.keeper->full = true;
      // kDeadlineExceeded: the caller's error then says that a retry with the same
      // idempotency key is answered from the record if it surfaces in a restore.
      return DeadlineExceededError(fmt::format(
          "{}; the record is on {} alone, and the controller could not be told that {} drops "
          "out ({}), so it is not acknowledged with fewer copies",
          fmt::join(why, "; "), fmt::join(acked, ", "), fmt::join(dropping, " and "), told.message()));
    }
  }
  ++slot->journal_appends;
  for (Append& a : appends) {
    if (a.status.ok()) continue;
    // As a failed replica leaves a chain: the record is durable on the others, which go
    // on alone; this keeper's journal stops here, and it rejoins only with a full record
    // once the controller assigns the keepers again (a replacement, or this one).
    a.keeper->out = true;
    TERN_LOG(WARN) << "journal of " << slot->id << ": "
                   << KeeperFailure(a.keeper->device, a.status, options_.journal_timeout_ns)
                   << "; it drops out, and the journal is kept by " << fmt::format("{}", fmt::join(acked, ", "))
                   << " alone until the controller assigns its keepers again (degraded: "
                   << acked.size() << " of " << kJournalCopies << " copies)";
  }
  return Status::Ok();
}

void Agent::SetKeeperDropReporter(KeeperDropReporter reporter) {
  MutexLock l(&reporter_mu_);
  keeper_drop_reporter_ = std::move(reporter);
}

Status Agent::ReportKeeperDrops(WorkerThread* wt, Slot* slot, std::vector<KeeperDrop> drops) {
  auto call = std::make_shared<OutCall>();
  call->service = "controller";
  call->handler = "journal-out";
  // A backstop only: the reporter answers within the timeout. Its answer is completed on
  // this worker (a posted task), so that it cannot race the backstop.
  call->deadline_ns = MonoNanos() + 2 * options_.journal_timeout_ns;
  {
    // Called under the lock, so that the registrar's reporter cannot go meanwhile.
    MutexLock l(&reporter_mu_);
    if (!keeper_drop_reporter_) return Status::Ok();  // no controller: nobody to tell
    keeper_drop_reporter_(std::move(drops), options_.journal_timeout_ns, [wt, call](Status s) {
      wt->Post(
          [call, code = s.code(), msg = std::string(s.message())]() mutable {
            if (!call->done.load(std::memory_order_acquire)) call->Complete(code, std::move(msg));
          },
          {}, /*io=*/true);
    });
  }
  wt->PushBusy(slot->id);
  if (!call->done.load(std::memory_order_acquire)) wt->WaitCall(call.get());
  wt->PopBusy();
  return call->code == StatusCode::kOk ? Status::Ok() : Status(call->code, call->result);
}

Status Agent::MakeDurable(WorkerThread* wt, Slot* slot, const InvokeRequest& req, StatusCode code,
                          const std::string& answer) {
  std::vector<uint32_t> dirty, changed;
  bool tracked = false;
  Status st = WrittenPages(slot, &dirty, &changed, &tracked);
  wasm::Snapshot now;  // the globals as the request left them
  if (st.ok()) st = slot->inst->SnapshotGlobals(&now);
  const bool keyed = req.idempotency_key != 0;
  // A request that changed nothing needs no record, unless it has an idempotency key:
  // its answer must survive a restore too (a retry then gets the same answer).
  if (st.ok() && changed.empty() && now.globals == slot->good.globals && !keyed) {
    return CommitGood(slot, dirty, tracked);
  }
  const int64_t t0 = MonoNanos();
  const DedupEntry entry{req.idempotency_key, code, answer};
  if (st.ok()) st = AppendRecord(wt, slot, changed, now.globals, keyed ? &entry : nullptr);
  slot->journal_ns_total += MonoNanos() - t0;
  if (st.ok()) {
    // Acknowledged with fewer copies than a journal is meant to have (a keeper dropped
    // out, or only one is assigned): counted, reported, and in `tern ps`.
    const size_t copies = std::count_if(slot->keepers.begin(), slot->keepers.end(),
                                        [](const JournalKeeper& k) { return !k.out; });
    if (copies < kJournalCopies) ++slot->journal_degraded;
    return CommitGood(slot, dirty, tracked);
  }
  // Not durable on any keeper: the request never happened. Its writes are undone from
  // the rollback point, which still holds the state before it.
  ++slot->journal_failures;
  ++slot->rollbacks;
  Status rb = RestoreSlot(wt, slot, slot->good);
  if (!rb.ok()) TERN_LOG(ERROR) << "rollback of " << slot->id << " failed: " << rb;
  return UnavailableError(fmt::format(
      "the state of {} could not be made durable: {}{}; the request's effects were {} and it is "
      "not acknowledged",
      slot->id, st.message(),
      st.code() != StatusCode::kDeadlineExceeded ? ""
      : keyed ? " (it may still have it: retry with the same idempotency key)"
          // A restore before the next acknowledged write would replay the late record:
          // only a key lets a retry find out whether it took effect.
          : " (it may still have it: without an idempotency key a retry cannot tell "
            "whether the request took effect)",
      rb.ok() ? "rolled back" : "NOT rolled back (" + rb.ToString() + ")"));
}

Result<Agent::JournalCheckpointReport> Agent::JournalCheckpoint(const std::string& instance_id) {
  JournalCheckpointReport rep;
  TERN_RETURN_IF_ERROR(RunOnSlot(instance_id, [&](WorkerThread* wt, Slot* slot) -> Status {
    if (!slot->durable) {
      return FailedPreconditionError(
          fmt::format("instance {} is not durable (manifest `durable: true`)", instance_id));
    }
    // At a request boundary: the state is `good` plus nothing (requests commit theirs).
    slot->JournalStartAfresh();
    std::vector<std::string> names;
    for (const JournalKeeper& k : slot->keepers) names.push_back(k.device);
    AppendOutcome out;
    TERN_RETURN_IF_ERROR(AppendRecord(wt, slot, {}, slot->good.globals, nullptr, &out)
                             .WithPrefix(fmt::format("base checkpoint of {} on {}", instance_id,
                                                     fmt::join(names, " and "))));
    rep.seq = slot->journal_seq;
    rep.bytes = out.full_bytes;
    for (const JournalKeeper& k : slot->keepers) {
      if (!k.out) rep.keepers.push_back(k.device);
    }
    rep.failed = std::move(out.failed);
    return Status::Ok();
  }));
  return rep;
}

void Agent::ServeJournalFrame(transport::Frame f, std::function<void(transport::Frame)> reply) {
  const uint64_t id = f.request_id;
  auto fail = [&](const Status& s) { reply(transport::MakeErrorFrame(id, s)); };
  if (journals_ == nullptr) {
    fail(FailedPreconditionError(fmt::format(
        "agent {} keeps no journals (it keeps no datasets: start it with --data-dir or "
        "--datasets-dir)",
        options_.device)));
    return;
  }
  const size_t nl = f.payload.find('\n');
  if (f.handler != "append" || nl == std::string::npos) {
    fail(InvalidArgumentError(
        fmt::format("'{}' frames: handler 'append', payload \"<instance>\\n<record>\"", kJournalService)));
    return;
  }
  std::string instance = f.payload.substr(0, nl);
  f.payload.erase(0, nl + 1);
  journals_->Append(std::move(instance), std::move(f.payload), [id, reply](Status s) {
    if (!s.ok()) {
      reply(transport::MakeErrorFrame(id, s));
      return;
    }
    transport::Frame out;
    out.type = transport::FrameType::kReply;
    out.request_id = id;
    reply(std::move(out));
  });
}

Status Agent::SetKeepers(const std::string& instance_id,
                         const std::vector<JournalKeeper>& keepers) {
  if (keepers.empty() || keepers.size() > kJournalCopies) {
    return InvalidArgumentError(fmt::format("a journal has 1 to {} keepers, not {}",
                                            kJournalCopies, keepers.size()));
  }
  for (size_t i = 0; i < keepers.size(); ++i) {
    const JournalKeeper& k = keepers[i];
    if (k.device.empty() || k.tcp.empty()) {
      return InvalidArgumentError("a keeper needs a device and a frame address (\"ip:port\")");
    }
    if (k.device == options_.device) {
      return InvalidArgumentError(fmt::format(
          "{} cannot keep the journal of its own instance {}: it would die with it", k.device,
          instance_id));
    }
    for (size_t j = 0; j < i; ++j) {
      if (keepers[j].device == k.device) {
        return InvalidArgumentError(fmt::format("keeper {} is named twice: two copies of a "
                                                "journal on one device die together", k.device));
      }
    }
  }
  return RunOnSlot(instance_id, [&](WorkerThread*, Slot* slot) -> Status {
    if (!slot->durable) {
      return FailedPreconditionError(
          fmt::format("instance {} is not durable (manifest `durable: true`)", instance_id));
    }
    std::vector<JournalKeeper> next;
    bool same = keepers.size() == slot->keepers.size();
    for (const JournalKeeper& k : keepers) {
      JournalKeeper n{k.device, k.tcp};  // a new keeper: a full record first
      bool known = false;
      for (const JournalKeeper& o : slot->keepers) {
        // One already assigned keeps its place in the journal; one that dropped out
        // rejoins with a full record.
        if (o.device == k.device && o.tcp == k.tcp && !o.out) {
          n.full = o.full;
          known = true;
        }
      }
      same &= known;
      next.push_back(std::move(n));
    }
    if (!same) {
      std::vector<std::string> names;
      for (const JournalKeeper& k : next) names.push_back(k.device + " (" + k.tcp + ")");
      TERN_LOG(INFO) << "journal of " << instance_id << " kept by "
                     << fmt::format("{}", fmt::join(names, " and "));
    }
    slot->keepers = std::move(next);
    return Status::Ok();
  });
}

Result<Agent::ReplayReport> Agent::ReplayJournal(const std::string& instance_id, uint64_t base_seq,
                                                 std::string_view records) {
  TERN_ASSIGN_OR_RETURN(Route route, FindRoute(instance_id));
  const uint32_t max_pages = route.service->limits.max_memory_pages;
  ReplayReport rep;
  TERN_RETURN_IF_ERROR(RunOnSlot(instance_id, [&](WorkerThread* wt, Slot* slot) -> Status {
    wasm::Snapshot snap = slot->good;
    std::vector<DedupEntry> dedup;
    uint64_t seq = base_seq;
    JournalScan scan = ScanJournal(records, [&](const JournalRecordView& r) -> Status {
      if (r.memory_bytes / 65536 > max_pages) {
        return ResourceExhaustedError(fmt::format(
            "record {} has {} bytes of memory, more than the service's cap", r.seq, r.memory_bytes));
      }
      if (r.memory_bytes > snap.memory.size()) snap.memory.resize(r.memory_bytes, '\0');
      char* mem = snap.memory.data();
      TERN_RETURN_IF_ERROR(
          DecodePageBatch(r.batch, static_cast<uint32_t>(r.memory_bytes / kTrackPage),
                          [&](uint32_t page, const char* bytes) {
                            char* at = mem + size_t{page} * kTrackPage;
                            if (bytes == nullptr) {
                              std::memset(at, 0, kTrackPage);
                            } else {
                              std::memcpy(at, bytes, kTrackPage);
                            }
                          })
              .status());
      if (r.stack_pointer) snap.stack_pointer = r.stack_pointer;
      if (r.has_globals) snap.globals = r.globals;  // every record has them all
      if (r.full) dedup.clear();  // the record carries the whole table
      dedup.insert(dedup.end(), r.dedup.begin(), r.dedup.end());
      seq = r.seq;
      return Status::Ok();
    });
    if (!scan.tail.ok()) {
      TERN_LOG(WARN) << "journal of " << instance_id << ": " << scan.tail.message() << "; "
                     << scan.records << " whole records applied, the last "
                     << records.size() - scan.good_bytes << " bytes ignored";
    }
    TERN_RETURN_IF_ERROR(RestoreSlot(wt, slot, snap));
    slot->good = std::move(snap);
    TERN_RETURN_IF_ERROR(slot->inst->SnapshotGlobals(&slot->good));  // records may lack them
    for (DedupEntry& e : dedup) slot->Remember(e.key, e.code, std::move(e.reply));
    slot->journal_seq = seq;
    // One keeper's journal was just read; the keepers assigned next start afresh.
    slot->JournalStartAfresh();
    rep.records = scan.records;
    rep.seq = seq;
    rep.ignored_bytes = records.size() - scan.good_bytes;
    rep.dedup_entries = dedup.size();
    return Status::Ok();
  }));
  return rep;
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

Result<wasm::Snapshot> Agent::Snapshot(const std::string& instance_id, uint64_t* journal_seq) {
  wasm::Snapshot snap;
  TERN_RETURN_IF_ERROR(RunOnSlot(instance_id, [&](WorkerThread* wt, Slot* slot) {
    TERN_RETURN_IF_ERROR(FinishRollback(wt, slot));
    if (journal_seq != nullptr) *journal_seq = slot->journal_seq;
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
  if (!svc->snapshotable) {
    return FailedPreconditionError(
        fmt::format("instance {} cannot be restored from a snapshot: {}", instance_id,
                    wasm::CheckSnapshotable(svc->module->info()).message()));
  }
  if (snap.pages() > svc->limits.max_memory_pages) {
    return ResourceExhaustedError(
        fmt::format("snapshot has {} pages, more than the {} page memory cap of service '{}'",
                    snap.pages(), svc->limits.max_memory_pages, svc->manifest.name));
  }
  return RunOnSlot(instance_id, [&](WorkerThread* wt, Slot* slot) -> Status {
    TERN_RETURN_IF_ERROR(RestoreSlot(wt, slot, snap));
    ReserveWarmString(reserve_.get(), &slot->good.memory, snap.memory.size());
    slot->good = snap;
    // As the instance has them (a format-1 snapshot lists none; the stack pointer is one).
    TERN_RETURN_IF_ERROR(slot->inst->SnapshotGlobals(&slot->good));
    slot->JournalStartAfresh();  // the keepers' journals do not know this state
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
        is.deduplicated = slot->deduplicated;
        is.queued = slot->queued->load(std::memory_order_relaxed);
        is.exec_ns_total = slot->exec_ns_total;
        is.cpu_ns_total = slot->cpu_ns_total;
        is.reply_bytes_total = slot->reply_bytes_total;
        const auto& counts = slot->latency_hist.counts();
        for (int b = 0; b < LatencyHistogram::kBuckets; ++b) {
          if (counts[b] != 0) is.latency_hist.emplace_back(b, counts[b]);
        }
        is.last_error = slot->last_error;
        is.last_trace_id = slot->last_trace_id;
        is.last_idempotency_key = slot->last_idempotency_key;
        is.durable = slot->durable;
        for (const JournalKeeper& k : slot->keepers) {
          (k.out ? is.keepers_out : is.keepers).push_back(k.device);
        }
        is.journal_degraded = slot->journal_degraded;
        is.journal_seq = slot->journal_seq;
        is.journal_appends = slot->journal_appends;
        is.journal_failures = slot->journal_failures;
        is.journal_full = slot->journal_full_records;
        is.journal_bytes = slot->journal_bytes;
        is.journal_ns_total = slot->journal_ns_total;
        part.push_back(std::move(is));
      }
      return Status::Ok();
    });
    if (s.ok()) st.instances.insert(st.instances.end(), part.begin(), part.end());
  }
  MutexLock l(&mu_);
  for (InstanceStatus& is : st.instances) {
    auto it = data_counters_.find(is.id);
    if (it != data_counters_.end()) is.data = it->second;
  }
  return st;
}

void Agent::SetDatasetLocations(std::vector<DatasetLocation> locations) {
  MutexLock l(&mu_);
  dataset_locations_.clear();
  for (DatasetLocation& d : locations) {
    std::string name = d.dataset;
    dataset_locations_[name] = std::move(d);
  }
}

std::vector<DatasetLocation> Agent::DatasetLocations() {
  MutexLock l(&mu_);
  std::vector<DatasetLocation> out;
  for (const auto& [name, d] : dataset_locations_) out.push_back(d);
  return out;
}

std::map<std::string, uint64_t> Agent::RemoteDataBytesByHost() {
  MutexLock l(&mu_);
  return remote_data_by_host_;
}

void Agent::CountData(const std::string& instance, uint64_t local, uint64_t remote,
                      const std::string& remote_host) {
  MutexLock l(&mu_);
  DataCounters& c = data_counters_[instance];
  ++c.reads;
  c.local_bytes += local;
  c.remote_bytes += remote;
  if (remote > 0) remote_data_by_host_[remote_host] += remote;
}

Result<std::string> Agent::RemoteData(WorkerThread* wt, const InvokeRequest& caller,
                                      uint64_t trace_id, const std::string& instance,
                                      const std::string& op, const std::string& dataset,
                                      const std::string& key, uint64_t offset, uint32_t len) {
  DatasetLocation where;
  {
    MutexLock l(&mu_);
    auto it = dataset_locations_.find(dataset);
    if (it == dataset_locations_.end()) {
      return NotFoundError(fmt::format("no device known to agent {} keeps dataset '{}'",
                                       options_.device, dataset));
    }
    where = it->second;
  }
  if (where.agent == options_.device) {
    return NotFoundError(fmt::format("dataset '{}' is listed as kept here, but is not", dataset));
  }
  dataplane::InstanceLocation loc;
  loc.instance = "$data@" + where.agent;
  loc.service = kDataService;
  loc.agent = where.agent;
  loc.host = where.host;
  loc.tcp = where.tcp;
  loc.shm = where.shm;
  Result<dataplane::Tier> tier =
      dataplane::SelectTier(dataplane::Self{options_.device, options_.host}, loc,
                            options_.tier_policy == dataplane::TierPolicy::kForceInProcess
                                ? dataplane::TierPolicy::kAuto
                                : options_.tier_policy);
  if (!tier.ok()) return tier.status();
  auto call = std::make_shared<OutCall>();
  call->service = kDataService;
  call->handler = op;
  call->payload = fmt::format("{}\n{}\n{}\n{}", dataset, key, offset, len);
  call->tenant = caller.tenant;
  call->trace_id = trace_id;
  int64_t deadline = caller.deadline_ns;
  if (deadline == 0) deadline = MonoNanos() + options_.call_timeout_ns;
  call->deadline_ns = deadline;
  call->instance = loc.instance;
  call->tier = *tier;
  std::shared_ptr<OutCall> keep = call;
  call_counts_[static_cast<int>(*tier)].fetch_add(1, std::memory_order_relaxed);
  SendRemote(wt, std::move(call), *tier, loc);
  if (!keep->done.load(std::memory_order_acquire)) wt->WaitCall(keep.get());
  if (keep->code != StatusCode::kOk) return Status(keep->code, keep->result);
  if (op == "read") {
    CountData(instance, 0, keep->result.size(), where.host == options_.host ? "" : where.host);
  }
  return std::move(keep->result);
}

// ---------------------------------------------------------------------------------
// Live migration: the steps that touch slots (docs/design/migration.md). The driver
// (Agent::Migrate) and the migration server are in migration.cc.

namespace {
uint32_t PageCrc(const uint8_t* base, uint64_t page) {
  return Crc32c(base + page * kMigrationPageBytes, kMigrationPageBytes);
}
}  // namespace

bool Agent::IsFrozen(WorkerThread* wt, const std::string& id) {
  if (frozen_slots_.load(std::memory_order_acquire) == 0) return false;  // the common case
  auto it = wt->slots().find(id);
  return it != wt->slots().end() && it->second->mig != nullptr && it->second->mig->frozen;
}

bool Agent::HoldOrForward(WorkerThread* wt, const std::string& id, InvokeRequest& req,
                          std::function<void(InvokeResult)>& done) {
  if (!MayHold()) return false;
  auto it = wt->slots().find(id);
  if (it != wt->slots().end()) {
    Slot& slot = *it->second;
    if (slot.mig == nullptr || !slot.mig->frozen) return false;
    slot.mig->held.push_back(Held{std::move(req), std::move(done)});
    return true;
  }
  if (!has_moved_.load(std::memory_order_acquire)) return false;
  std::optional<MovedTo> to = MovedRecord(id, "");
  if (!to) return false;
  Forward(*to, std::move(req), std::move(done));
  return true;
}

std::optional<Agent::MovedTo> Agent::MovedRecord(const std::string& instance,
                                                 const std::string& service) {
  MutexLock l(&mu_);
  return MovedRecordLocked(instance, service);
}

std::optional<Agent::MovedTo> Agent::MovedRecordLocked(const std::string& instance,
                                                       const std::string& service) {
  if (!instance.empty()) {
    if (routes_.count(instance) != 0) return std::nullopt;
    auto it = moved_to_.find(instance);
    if (it == moved_to_.end()) return std::nullopt;
    return it->second;
  }
  if (!InstancesOf(service).empty()) return std::nullopt;
  const MovedTo* best = nullptr;
  for (const auto& [_, m] : moved_to_) {
    if (m.service == service && (best == nullptr || m.at_ns > best->at_ns)) best = &m;
  }
  if (best == nullptr) return std::nullopt;
  return *best;
}

bool Agent::RecentlyMoved(const std::string& service) {
  if (!has_moved_.load(std::memory_order_acquire)) return false;
  const int64_t now = MonoNanos();
  MutexLock l(&mu_);
  for (const auto& [_, m] : moved_to_) {
    if (m.service == service && now - m.at_ns < kForwardGraceNs) return true;
  }
  return false;
}

std::map<std::string, std::string> Agent::MovedInstances() {
  MutexLock l(&mu_);
  std::map<std::string, std::string> out;
  for (const auto& [id, m] : moved_to_) out[id] = m.device;
  return out;
}

Status Agent::MigStart(const std::string& id, int64_t timeout_ns, uint64_t* memory_bytes, bool* exact,
                       std::string* service, std::string* module_hash,
                       std::optional<uint32_t>* stack_pointer) {
  {
    MutexLock l(&mu_);
    if (routes_.count(id) == 0) return NotFoundError(fmt::format("no instance '{}'", id));
    if (!migrating_.insert(id).second) {
      return AlreadyExistsError(fmt::format("instance {} is already migrating", id));
    }
  }
  Status st = RunOnSlotWithin(id, timeout_ns, [&](WorkerThread*, Slot* slot) -> Status {
    auto m = std::make_unique<SlotMigration>();
    // Exact tracking needs the tracker that keeps the rollback point (stateful
    // services with a tracked memory); anything else is compared by checksums.
    m->exact = slot->tracker != nullptr && slot->tracked_base == slot->inst->memory_data();
    slot->mig = std::move(m);
    *memory_bytes = slot->inst->memory_bytes();
    *exact = slot->mig->exact;
    *module_hash = slot->service->module->hash();
    *service = slot->service->manifest.name;
    // The stack pointer between requests (the snapshot's; memory is not needed).
    *stack_pointer = slot->good.stack_pointer;
    return Status::Ok();
  });
  if (!st.ok()) {
    MutexLock l(&mu_);
    migrating_.erase(id);
  }
  return st;
}

Result<std::optional<std::vector<uint32_t>>> Agent::MigTakeDirty(const std::string& id,
                                                                int64_t timeout_ns,
                                                                uint32_t leave_if_at_most) {
  std::optional<std::vector<uint32_t>> out;
  TERN_RETURN_IF_ERROR(RunOnSlotWithin(id, timeout_ns, [&](WorkerThread*, Slot* slot) -> Status {
    if (slot->mig == nullptr) return FailedPreconditionError("not migrating");
    if (slot->mig->DirtyCount() <= leave_if_at_most) return Status::Ok();
    slot->mig->TakeDirty(UINT64_MAX, &out.emplace());
    return Status::Ok();
  }));
  return out;
}

namespace {
constexpr size_t kChunkBlock = size_t{2} << 20;  // the reserve's blocks: one huge page
// Chunk copying on the worker: makes room for the page batch's head (for at most
// `max_pages` pages) and the frame's memory size before the pages, without zero-filling.
// The pages start on a 2 MiB boundary of the buffer, and a buffer too small is replaced
// by one whose blocks there come from the agent's warm reserve (`reserve`, may be null):
// the chunk buffers are written in full, and fresh memory costs a page fault per 4 KiB
// on first touch (~0.7–2 GB/s on this VM: for the 24 MiB of buffers a migration's
// pipeline uses, more than its CRCs).
void StartChunk(MemoryReserve* reserve, Agent::MigChunk* c, size_t max_pages) {
  const size_t head = 8 + PageBatchHeadBytes(max_pages);
  if (c->slot != nullptr) {  // a slot of shared memory: room is laid out already
    CHECK(head <= kMigSlotHeadRoom && max_pages * kMigrationPageBytes <=
                                               kMigSlotBytes - kMigSlotHeadRoom);
    c->pages.clear();
    c->zero.clear();
    c->data_at = kMigSlotHeadRoom;
    c->data_crc = 0;
    return;
  }
  const size_t pages = max_pages * kMigrationPageBytes;
  auto aligned_at = [&] {
    const uintptr_t d = reinterpret_cast<uintptr_t>(c->data.data());
    return ((d + head + kChunkBlock - 1) & ~uintptr_t{kChunkBlock - 1}) - d;
  };
  if (c->data.capacity() < aligned_at() + pages) {
    std::string fresh;
    fresh.reserve(head + pages + kChunkBlock);  // untouched: a fresh mapping or free heap
    c->data.swap(fresh);
    if (reserve != nullptr) {
      const size_t at = aligned_at();
      const size_t blocks = (pages + kChunkBlock - 1) & ~(kChunkBlock - 1);
      reserve->MoveInto(reinterpret_cast<uint8_t*>(c->data.data()) + at,
                        std::min(blocks, c->data.capacity() - at));
    }
  }
  c->pages.clear();
  c->zero.clear();
  c->data_at = aligned_at();
  c->data_crc = 0;
  c->data.clear();  // keeps its capacity
  transport::GrowForOverwrite(&c->data, c->data_at + pages);
}
// Adds `page` (at `src`): listed as zero, or copied behind the pages so far and added
// to the chunk's checksum while the copy is in cache (the batch's checksum is then
// combined from it, instead of a pass over the whole 4 MiB chunk from memory later, on
// another CPU: 13% of a 64 MiB migration's CPU time over 10 Gbit/s, both sides).
void StreamFence();
void AddToChunk(Agent::MigChunk* c, uint32_t page, const uint8_t* src) {
  const char* p = reinterpret_cast<const char*>(src);
  if (IsZeroBlock(p, kMigrationPageBytes)) {
    c->zero.push_back(page);
    return;
  }
  char* dst = c->bytes() + c->data_at + c->pages.size() * kMigrationPageBytes;
  if (c->slot != nullptr) {
    // A slot of shared memory, which the target reads from another CPU: non-temporal
    // stores, so that writing does not first pull the lines the target read last time
    // into this cache, and the target then reads them from memory rather than out of
    // this CPU's cache (both cost ~4× the copy here, in profiles of a 64 MiB row). The
    // checksum is taken in the same pass over the instance's page (nothing writes it
    // meanwhile: this runs on its worker, between requests).
    c->data_crc = Crc32cCopyPage(p, dst, nullptr, c->data_crc);
  } else {
    std::memcpy(dst, p, kMigrationPageBytes);
    c->data_crc = Crc32c(dst, kMigrationPageBytes, c->data_crc);
  }
  c->pages.push_back(page);
}
void EndChunk(Agent::MigChunk* c) {
  if (c->slot == nullptr) {
    c->data.resize(c->data_at + c->pages.size() * kMigrationPageBytes);
  } else {
    StreamFence();  // the streamed pages are visible before the 'slot' frame names them
  }
}
}  // namespace

Status Agent::MigCopy(const std::string& id, int64_t timeout_ns, const std::vector<uint32_t>& pages,
                      MigChunk* out) {
  MigChunk& c = *out;
  StartChunk(reserve_.get(), &c, pages.size());
  return RunOnSlotWithin(id, timeout_ns, [&](WorkerThread*, Slot* slot) -> Status {
    const uint8_t* base = slot->inst->memory_data();
    c.memory_bytes = slot->inst->memory_bytes();
    const uint64_t n = c.memory_bytes / kMigrationPageBytes;
    for (uint32_t p : pages) {
      if (p < n) AddToChunk(&c, p, base + size_t{p} * kMigrationPageBytes);
    }
    EndChunk(&c);
    return Status::Ok();
  });
}

Status Agent::MigScan(const std::string& id, int64_t timeout_ns, uint32_t from, uint32_t count,
                      bool all, MigChunk* out) {
  MigChunk& c = *out;
  StartChunk(reserve_.get(), &c, count);
  return RunOnSlotWithin(id, timeout_ns, [&](WorkerThread*, Slot* slot) -> Status {
    if (slot->mig == nullptr) return FailedPreconditionError("not migrating");
    SlotMigration& m = *slot->mig;
    const uint8_t* base = slot->inst->memory_data();
    c.memory_bytes = slot->inst->memory_bytes();
    const uint64_t n = c.memory_bytes / kMigrationPageBytes;
    if (m.crc.size() < n) m.crc.resize(n, kNoCrc);
    const uint64_t end = std::min<uint64_t>(n, uint64_t{from} + count);
    for (uint64_t p = from; p < end; ++p) {
      if (m.exact) {
        // Exact mode copies everything once (round 0); later rounds use the bitmap.
      } else {
        uint32_t crc = PageCrc(base, p);
        if (!all && crc == m.crc[p]) continue;
        m.crc[p] = crc;
      }
      AddToChunk(&c, static_cast<uint32_t>(p), base + p * kMigrationPageBytes);
    }
    EndChunk(&c);
    return Status::Ok();
  });
}

Status Agent::MigFreeze(const std::string& id, int64_t timeout_ns, bool all, MigChunk* chunk,
                        uint32_t chunk_pages, std::vector<uint32_t>* rest, std::string* commit,
                        int64_t* frozen_ns) {
  rest->clear();
  StartChunk(reserve_.get(), chunk, chunk_pages);
  // A control task: it runs only when no guest on that worker waits in a call, i.e.
  // at a request boundary of every instance there.
  return RunOnSlotWithin(id, timeout_ns, [&](WorkerThread*, Slot* s) -> Status {
    if (s->mig == nullptr) return NotFoundError("instance " + id + " is not migrating");
    Slot& slot = *s;
    SlotMigration& m = *slot.mig;
    m.frozen = true;
    frozen_slots_.fetch_add(1, std::memory_order_release);
    *frozen_ns = MonoNanos();
    const uint8_t* base = slot.inst->memory_data();
    const uint64_t memory_bytes = slot.inst->memory_bytes();
    const uint64_t n = memory_bytes / kMigrationPageBytes;
    std::vector<uint32_t>& pages = *rest;
    if (all) {
      for (uint64_t p = 0; p < n; ++p) pages.push_back(static_cast<uint32_t>(p));
    } else if (m.exact) {
      m.TakeDirty(n, &pages);
    } else {
      if (m.crc.size() < n) m.crc.resize(n, kNoCrc);
      for (uint64_t p = 0; p < n; ++p) {
        uint32_t crc = PageCrc(base, p);
        if (crc == m.crc[p]) continue;
        m.crc[p] = crc;
        pages.push_back(static_cast<uint32_t>(p));
      }
    }
    chunk->memory_bytes = memory_bytes;
    if (pages.size() <= chunk_pages) {
      // Into the warm chunk (or slot): no fresh buffer to fault in while frozen.
      for (uint32_t p : pages) AddToChunk(chunk, p, base + size_t{p} * kMigrationPageBytes);
      pages.clear();
    }
    EndChunk(chunk);
    CommitState cs;
    cs.memory_bytes = memory_bytes;
    cs.stack_pointer = slot.good.stack_pointer;
    // The globals of the instance as it is (for a stateful one, those of `good`).
    wasm::Snapshot globals;
    TERN_RETURN_IF_ERROR(slot.inst->SnapshotGlobals(&globals));
    cs.globals = std::move(globals.globals);
    cs.requests = slot.requests;
    cs.keepers = slot.keepers;
    cs.journal_seq = slot.journal_seq;
    for (uint64_t key : slot.dedup_order) cs.dedup.push_back(slot.dedup.at(key));
    *commit = EncodeCommitState(cs);
    return Status::Ok();
  });
}

void Agent::MigAbort(const std::string& id) {
  // Not waited for: after a timeout the worker may not reach a boundary for a while. As
  // a task of the instance it runs as soon as that instance is not busy (tasks of a
  // worker run in order, so a later migration's first step comes after it).
  Result<Route> route = FindRoute(id);
  if (route.ok()) {
    WorkerThread* wt = workers_[route->worker].get();
    wt->Post(
        [this, wt, id] {
          auto it = wt->slots().find(id);
          if (it == wt->slots().end() || it->second->mig == nullptr) return;
          Slot* slot = it->second.get();
          std::vector<Held> held = std::move(slot->mig->held);
          if (slot->mig->frozen) frozen_slots_.fetch_sub(1, std::memory_order_release);
          slot->mig.reset();
          // The held requests run here, in their order, as if nothing had happened.
          for (Held& h : held) {
            wt->Post(
                [this, wt, id, h = std::move(h)]() mutable {
                  if (HoldOrForward(wt, id, h.req, h.done)) return;
                  h.done(Execute(wt, id, h.req));
                },
                id);
          }
        },
        id);
  }
  MutexLock l(&mu_);
  migrating_.erase(id);
}

std::vector<Agent::Held> Agent::MigFinish(const std::string& id, MovedTo to) {
  std::vector<Held> held;
  int w = -1;
  {
    MutexLock l(&mu_);
    auto it = routes_.find(id);
    if (it != routes_.end()) {
      w = it->second.worker;
      to.service = it->second.service->manifest.name;
      EraseRoute(id);
    }
    to.at_ns = MonoNanos();
    moved_to_[id] = to;
    RoutesChanged();
    has_moved_.store(true, std::memory_order_release);
    migrating_.erase(id);
  }
  if (w < 0) return held;
  WorkerThread* wt = workers_[w].get();
  (void)wt->RunAndWait([&]() -> Status {
    auto it = wt->slots().find(id);
    if (it == wt->slots().end()) return Status::Ok();
    if (it->second->mig != nullptr) {
      held = std::move(it->second->mig->held);
      if (it->second->mig->frozen) frozen_slots_.fetch_sub(1, std::memory_order_release);
    }
    // The old copy is torn down (its memory and its rollback point unmapped: a few ms
    // at 64 MiB) by a task of its own on this worker (its isolate's thread), after this
    // one: the held requests go to the target meanwhile instead of waiting for it. When
    // the worker is stopping the task is refused and the copy goes here.
    std::shared_ptr<Slot> old(std::move(it->second));
    wt->slots().erase(it);
    wt->Post([old] {});
    return Status::Ok();
  });
  return held;
}

// ---- target side

namespace {
constexpr size_t kHugePage = size_t{2} << 20;

// Asks for transparent huge pages over [p, p + n) (THP is "madvise" on common kernels).
// A migration target writes all of its memory and the rollback copy at once: with 4 KiB
// pages that is one fault per page (~2.4 µs each in this VM, more than the copy), with
// 2 MiB pages 512 times fewer. The userfaultfd write-protect tracker still tracks 4 KiB
// pages: a write to a protected huge page splits it (WP_ASYNC). Best effort.
void AdviseHugePages(uint8_t* p, size_t n) {
  if (n < kHugePage) return;
  const uintptr_t first = (reinterpret_cast<uintptr_t>(p) + 4095) & ~uintptr_t{4095};
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~uintptr_t{4095};
  if (end > first) ::madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
}
using Ranges = std::vector<Prefaulter::Range>;

// Moves warm blocks of `reserve` (may be null) under [p, p + n), memory nobody has
// written yet (fresh or unused capacity), and appends to `cold` what is left to fault
// in, positioned by its offset from `base` (the start of the memory, or of the rollback
// point, it is part of). Adds the bytes placed to `*warm`.
void MoveWarm(MemoryReserve* reserve, const uint8_t* base, uint8_t* p, size_t n, Ranges* cold,
              uint64_t* warm) {
  const size_t got = reserve != nullptr ? reserve->MoveInto(p, n) : 0;
  *warm += got;
  auto add = [&](uint8_t* q, size_t len) {
    cold->push_back(Prefaulter::Range{q, len, static_cast<uint64_t>(q - base)});
  };
  if (got == 0) {
    if (n > 0) add(p, n);
    return;
  }
  uint8_t* first = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + kHugePage - 1) &
                                              ~uintptr_t{kHugePage - 1});
  if (first > p) add(p, first - p);
  if (first + got < p + n) add(first + got, p + n - (first + got));
}

// Grows `inst`'s memory to `bytes` onto warm memory ahead of a restore that writes all of
// it (the grown part is untouched and not tracked yet). Best effort: the restore grows
// and faults in whatever this does not.
void GrowWarm(MemoryReserve* reserve, wasm::Instance* inst, uint64_t bytes) {
  const uint64_t have = inst->memory_bytes();
  if (reserve == nullptr || bytes < have + 2 * kHugePage || !inst->GrowMemory(bytes).ok()) return;
  Ranges cold;
  uint64_t warm = 0;
  MoveWarm(reserve, inst->memory_data(), inst->memory_data() + have, bytes - have, &cold, &warm);
}
}  // namespace

struct Agent::Incoming {
  std::string id;
  std::shared_ptr<const Service> svc;
  int worker = 0;
  std::unique_ptr<Slot> slot;  // created on the worker; routable only after the commit
  uint8_t* mem = nullptr;      // its memory (valid until it grows, on the worker)
  uint64_t bytes = 0;
  // Stateful: the rollback point to be, the same bytes as `mem` over [0, good.size()).
  // It grows by appending from `mem` behind the pages that arrive (in ascending order,
  // mostly), into capacity reserved at `begin`: so it is never zero-filled first.
  std::string good;
  std::vector<uint64_t> written;  // bitmap of the pages written into `mem` so far
  std::optional<uint32_t> sp;
  std::unique_ptr<Prefaulter> prefault;  // while the pages arrive
  // Keeps the agent's memory reserve from refilling (competing for the CPU) until the
  // instance is dropped or, committed, this goes (after the commit's reply is sent);
  // `warm`: the bytes it placed under mem and good.
  MemoryReserve::Hold hold;
  uint64_t warm = 0;
};

Result<std::shared_ptr<Agent::Incoming>> Agent::IncomingBegin(
    const std::string& instance, const std::string& service, const std::string& module_hash,
    uint64_t memory_bytes, std::optional<uint32_t> sp) {
  auto in = std::make_shared<Incoming>();
  in->id = instance;
  in->sp = sp;
  in->hold = MemoryReserve::Hold(reserve_.get());
  std::shared_ptr<Incoming> old;
  {
    MutexLock l(&mu_);
    auto sit = services_.find(service);
    if (sit == services_.end()) {
      return NotFoundError(fmt::format("service '{}' is not deployed on {}", service, options_.device));
    }
    if (sit->second->module->hash() != module_hash) {
      return FailedPreconditionError(fmt::format(
          "service '{}' on {} runs module {}, the migrating instance module {}: deploy the same "
          "version first",
          service, options_.device, sit->second->module->hash().substr(0, 12),
          module_hash.substr(0, 12)));
    }
    if (routes_.count(instance) != 0) {
      return AlreadyExistsError(fmt::format("instance {} already runs on {}", instance, options_.device));
    }
    in->svc = sit->second;
    if (memory_bytes % 65536 != 0 || memory_bytes / 65536 > in->svc->limits.max_memory_pages) {
      return InvalidArgumentError(fmt::format(
          "a memory of {} bytes does not fit service '{}' (a multiple of 64 KiB, at most {} pages)",
          memory_bytes, service, in->svc->limits.max_memory_pages));
    }
    in->worker = next_worker_++ % static_cast<int>(workers_.size());
    auto it = incoming_.find(instance);
    if (it != incoming_.end()) old = it->second;
    incoming_[instance] = in;
  }
  if (old != nullptr) IncomingDrop(old);
  WorkerThread* wt = workers_[in->worker].get();
  Status st = wt->RunAndWait([&]() -> Status {
    auto slot = std::make_unique<Slot>();
    slot->id = instance;
    slot->service = in->svc;
    slot->queued = std::make_shared<std::atomic<uint64_t>>(0);
    slot->durable = in->svc->manifest.durable;
    const bool stateful = in->svc->manifest.stateful;
    // A stateless instance's rollback point is its pristine state; a stateful one's is
    // the state that arrives.
    TERN_ASSIGN_OR_RETURN(slot->inst, wt->worker()->Instantiate(in->svc->module, in->svc->limits,
                                                                /*run_initialize=*/!stateful));
    if (!stateful) TERN_RETURN_IF_ERROR(slot->inst->SnapshotInto(&slot->good));
    if (sp) {
      // The source's stack pointer, set while the memory is still small (a fresh
      // instance's: ~100 KiB), so that the commit needs no restore.
      wasm::Snapshot s;
      TERN_RETURN_IF_ERROR(slot->inst->SnapshotInto(&s));
      if (s.stack_pointer != sp) {
        s.stack_pointer = sp;
        TERN_RETURN_IF_ERROR(slot->inst->Restore(s));
      }
    }
    // Grown in place, its new pages untouched: every page arrives in round 0, and the
    // kernel maps each on its first write (huge pages where it can). Restoring a zero
    // snapshot instead wrote the whole size twice (the snapshot, then the memory).
    const uint64_t initial = slot->inst->memory_bytes() / kMigrationPageBytes;
    TERN_RETURN_IF_ERROR(slot->inst->GrowMemory(memory_bytes));
    in->mem = slot->inst->memory_data();
    in->bytes = slot->inst->memory_bytes();
    // The grown part (untouched) onto warm memory from the reserve where it has some:
    // its page tables move into V8's reservation (memory_reserve.h). V8 keeps only the
    // reservation's bounds: it frees the whole range with one munmap, and grows by
    // changing the protection past the end. The write tracker starts at the commit,
    // after this. Then the rollback point to be, the same way.
    const size_t initial_bytes = initial * kMigrationPageBytes;
    Ranges cold{{in->mem, initial_bytes, 0}};
    MoveWarm(reserve_.get(), in->mem, in->mem + initial_bytes, in->bytes - initial_bytes, &cold,
             &in->warm);
    AdviseHugePages(in->mem, in->bytes);
    // The instance's initial pages hold its data segments; the grown ones are zero.
    in->written.assign((in->bytes / kMigrationPageBytes + 63) / 64, 0);
    for (uint64_t p = 0; p < initial; ++p) in->written[p / 64] |= uint64_t{1} << (p % 64);
    if (stateful) {
      std::string().swap(in->good);
      in->good.reserve(in->bytes);  // a fresh mapping for a large size, not yet touched
      AdviseHugePages(reinterpret_cast<uint8_t*>(in->good.data()), in->bytes);
      // MADV_POPULATE_WRITE needs 4 KiB-aligned starts: the rollback buffer (malloc's)
      // from its first whole page on (its first bytes: the string's terminator).
      if (in->bytes > 4096) {
        uint8_t* g = reinterpret_cast<uint8_t*>(
            (reinterpret_cast<uintptr_t>(in->good.data()) + 4095) & ~uintptr_t{4095});
        MoveWarm(reserve_.get(), reinterpret_cast<const uint8_t*>(in->good.data()), g,
                 in->bytes - 4096, &cold, &in->warm);
      }
    }
    in->prefault = std::make_unique<Prefaulter>(std::move(cold));
    in->slot = std::move(slot);
    return Status::Ok();
  });
  if (!st.ok()) {
    IncomingDrop(in);
    return st.WithPrefix("preparing the incoming instance " + instance);
  }
  return in;
}

uint32_t Agent::IncomingPages(const Incoming* in) const {
  return static_cast<uint32_t>(in->bytes / kMigrationPageBytes);
}

Status Agent::IncomingGrow(Incoming* in, uint64_t memory_bytes) {
  if (memory_bytes <= in->bytes) return Status::Ok();
  in->prefault.reset();  // the ranges it faults in may move
  if (memory_bytes % 65536 != 0 || memory_bytes / 65536 > in->svc->limits.max_memory_pages) {
    return InvalidArgumentError(fmt::format("memory of {} bytes exceeds the cap of service '{}'",
                                            memory_bytes, in->svc->manifest.name));
  }
  WorkerThread* wt = workers_[in->worker].get();
  return wt->RunAndWait([&]() -> Status {
    const uint64_t old = in->bytes;
    TERN_RETURN_IF_ERROR(in->slot->inst->GrowMemory(memory_bytes));
    in->mem = in->slot->inst->memory_data();
    in->bytes = in->slot->inst->memory_bytes();
    Ranges cold;  // faulted in by the copies (the prefaulter has stopped)
    MoveWarm(reserve_.get(), in->mem, in->mem + old, in->bytes - old, &cold, &in->warm);
    AdviseHugePages(in->mem + old, in->bytes - old);
    in->written.resize((in->bytes / kMigrationPageBytes + 63) / 64, 0);
    if (in->svc->manifest.stateful && in->good.capacity() < in->bytes) {
      in->good.reserve(in->bytes);  // moved: warm blocks past what it holds
      const size_t kept = in->good.size() + 1;  // and its terminator
      MoveWarm(reserve_.get(), reinterpret_cast<const uint8_t*>(in->good.data()),
               reinterpret_cast<uint8_t*>(in->good.data()) + kept, in->bytes - kept, &cold,
               &in->warm);
    }
    return Status::Ok();
  });
}

namespace {
// A migration target writes each page (Crc32cCopyPage) into memory that nothing reads
// soon (the hidden instance's memory and its rollback point) with non-temporal stores:
// its cache lines need not be read first (a plain store's read for ownership) nor evict
// what is in cache. They are weakly ordered, also against a lock's release: fence
// before another thread reads what was written.
void StreamFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}
}  // namespace

Result<uint32_t> Agent::IncomingPageBatch(Incoming* in, std::string_view batch, bool shared) {
  // The instance is not routable yet: nothing runs on its memory but this thread. A bad
  // batch drops it (MigrationServer::Serve; IncomingCommit's caller), so pages may be
  // applied before the batch's checksum is known to match: each page is checked and
  // then written into the memory and the rollback point while it is in cache.
  const bool stateful = in->svc->manifest.stateful;
  std::string& good = in->good;
  uint64_t end = 0;  // of the highest page written
  // `good` mirrors mem[0, good.size()); the rollback point's copy of the page at `off`,
  // growing `good` over it (and first over any pages it lacks before it, from mem).
  auto good_page = [&](size_t off) -> uint8_t* {
    if (off + kMigrationPageBytes > good.size()) {
      if (off > good.size()) {
        good.append(reinterpret_cast<const char*>(in->mem) + good.size(), off - good.size());
      }
      transport::GrowForOverwrite(&good, off + kMigrationPageBytes);  // within its capacity
    }
    return reinterpret_cast<uint8_t*>(good.data()) + off;
  };
  // Each data page is checksummed and written into the memory and the rollback point in
  // one pass (Crc32cCopyPage: read once, streamed twice).
  auto apply = [&](uint32_t page, const char* bytes, uint32_t crc) -> uint32_t {
    const size_t off = size_t{page} * kMigrationPageBytes;
    uint64_t& w = in->written[page / 64];
    const uint64_t bit = uint64_t{1} << (page % 64);
    if (bytes != nullptr) {
      crc = Crc32cCopyPage(bytes, in->mem + off, stateful ? good_page(off) : nullptr, crc);
    } else {
      if ((w & bit) != 0) std::memset(in->mem + off, 0, kMigrationPageBytes);
      // else: a zero page where the fresh memory is zero already; left untouched
      if (stateful && off < good.size()) std::memset(good.data() + off, 0, kMigrationPageBytes);
    }
    w |= bit;
    end = std::max<uint64_t>(end, off + kMigrationPageBytes);
    return crc;
  };
  Result<PageBatchStats> st =
      shared ? ApplySharedPageBatch(batch.data(), batch.size(), IncomingPages(in), apply)
             : ApplyPageBatchChecking(batch, IncomingPages(in), apply);
  StreamFence();  // before the commit's task reads them on the worker
  if (in->prefault != nullptr) in->prefault->Advance(end);
  TERN_RETURN_IF_ERROR(st.status());
  // Pages at or above good.size() that went into `mem` only (zero pages): `good`
  // catches up by appending.
  if (stateful && end > good.size()) {
    good.append(reinterpret_cast<const char*>(in->mem) + good.size(), end - good.size());
  }
  return st->zero_pages + st->data_pages;
}

Status Agent::IncomingCommit(const std::shared_ptr<Incoming>& in, std::string_view payload) {
  if (payload.size() < 4) return InvalidArgumentError("commit frame truncated");
  uint32_t state_len;
  std::memcpy(&state_len, payload.data(), 4);
  if (payload.size() - 4 < state_len) return InvalidArgumentError("commit frame truncated");
  TERN_ASSIGN_OR_RETURN(CommitState cs, DecodeCommitState(payload.substr(4, state_len)));
  in->prefault.reset();  // done before the write tracker starts (its writes would count)
  TERN_RETURN_IF_ERROR(IncomingGrow(in.get(), cs.memory_bytes));
  std::string_view batch = payload.substr(4 + state_len);
  if (!batch.empty()) TERN_RETURN_IF_ERROR(IncomingPageBatch(in.get(), batch).status());
  if (in->svc->manifest.stateful && in->good.size() < in->bytes) {
    // Pages never sent (none in practice: round 0 and stop-and-copy send every page).
    in->good.append(reinterpret_cast<const char*>(in->mem) + in->good.size(),
                    in->bytes - in->good.size());
  }
  WorkerThread* wt = workers_[in->worker].get();
  std::shared_ptr<std::atomic<uint64_t>> queued;
  TERN_RETURN_IF_ERROR(wt->RunAndWait([&]() -> Status {
    std::unique_ptr<Slot> slot = std::move(in->slot);
    if (slot == nullptr) return AbortedError("the incoming instance was dropped");
    // The stack pointer and the other mutable globals (memory is in place already).
    // A commit state without globals (an older source) is refused here for a module
    // that has some: the instance stays on the source.
    wasm::Snapshot g;
    g.stack_pointer = cs.stack_pointer;
    g.globals = cs.globals;
    TERN_RETURN_IF_ERROR(slot->inst->RestoreGlobals(g).WithPrefix("the instance's globals"));
    if (in->svc->manifest.stateful) {
      slot->good.module_hash = in->svc->module->hash();
      slot->good.memory = std::move(in->good);
      TERN_RETURN_IF_ERROR(slot->inst->SnapshotGlobals(&slot->good));
      StartTracking(slot.get());
    }
    slot->requests = cs.requests;
    for (DedupEntry& e : cs.dedup) slot->Remember(e.key, e.code, std::move(e.reply));
    // A durable instance goes on appending to its keepers where the source stopped;
    // but not to one on this very device, which cannot keep it (the controller assigns
    // another, whose journal starts with a full record).
    slot->journal_seq = cs.journal_seq;
    for (JournalKeeper& k : cs.keepers) {
      if (k.device != options_.device) slot->keepers.push_back(std::move(k));
    }
    queued = slot->queued;
    wt->slots()[in->id] = std::move(slot);
    return Status::Ok();
  }));
  MutexLock l(&mu_);
  incoming_.erase(in->id);
  auto sit = services_.find(in->svc->manifest.name);
  if (sit == services_.end() || sit->second != in->svc) {
    wt->Post([wt, id = in->id] { wt->slots().erase(id); });
    return AbortedError(fmt::format("service '{}' changed during the migration of {}",
                                    in->svc->manifest.name, in->id));
  }
  AddRoute(in->id, Route{in->worker, in->svc, queued});
  if (moved_to_.erase(in->id) != 0) {
    RoutesChanged();
    has_moved_.store(!moved_to_.empty(), std::memory_order_release);
  }
  // The reserve refills once `in` is gone: after the commit's reply is sent.
  return Status::Ok();
}

void Agent::IncomingDrop(const std::shared_ptr<Incoming>& in) {
  {
    MutexLock l(&mu_);
    auto it = incoming_.find(in->id);
    if (it != incoming_.end() && it->second == in) incoming_.erase(it);
  }
  // The instance dies on its own worker (its isolate's thread).
  WorkerThread* wt = workers_[in->worker].get();
  (void)wt->RunAndWait([&] {
    in->prefault.reset();
    in->slot.reset();
    in->good.clear();
    return Status::Ok();
  });
  in->hold.Release();
}

Result<std::string> Agent::MigrationDeployPayload(const std::string& instance) {
  MutexLock l(&mu_);
  auto it = routes_.find(instance);
  if (it == routes_.end()) return NotFoundError(fmt::format("no instance '{}'", instance));
  const Service& svc = *it->second.service;
  std::string yaml = ManifestToYaml(svc.manifest);
  std::string out;
  uint32_t n = static_cast<uint32_t>(yaml.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += yaml;
  out += svc.module_bytes;
  return out;
}

Status Agent::DeployFromMigration(std::string_view payload) {
  if (payload.size() < 4) return InvalidArgumentError("deploy frame truncated");
  uint32_t n;
  std::memcpy(&n, payload.data(), 4);
  if (payload.size() - 4 < n) return InvalidArgumentError("deploy frame truncated");
  TERN_ASSIGN_OR_RETURN(Manifest m, ParseManifest(std::string(payload.substr(4, n)), "migration"));
  return Deploy(m, std::string(payload.substr(4 + n)), /*start_instances=*/false).status();
}

Result<wasm::Snapshot> Agent::RollbackPointForTest(const std::string& instance_id) {
  wasm::Snapshot snap;
  TERN_RETURN_IF_ERROR(RunOnSlot(instance_id, [&](WorkerThread* wt, Slot* slot) {
    TERN_RETURN_IF_ERROR(FinishRollback(wt, slot));
    snap = slot->good;
    return Status::Ok();
  }));
  return snap;
}

Status Agent::RunOnInstanceForTest(const std::string& instance_id,
                                   const std::function<void(wasm::Instance*)>& fn) {
  return RunOnSlot(instance_id, [&](WorkerThread*, Slot* slot) {
    fn(slot->inst.get());
    return Status::Ok();
  });
}

}  // namespace tern::agent
