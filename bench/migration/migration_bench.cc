// migration_bench: live migration of a stateful instance under open-loop load (issue #6,
// docs/design/migration.md).
//
//   migration_bench [--quick] [--out=DIR] [--wasm-dir=DIR] [--source-dir=DIR]
//                   [--sizes=1,16,64,256] [--rate=1000] [--words=8] [--before-ms=1000]
//                   [--after-ms=1000] [--plot-mib=64] [--fill-pct=50]
//                   [--links=1000,10000] [--link-sizes=64,256] [--stop-and-copy=1]
//                   [--memory-reserve-mb=0] [--transports=tcp,shm] [--warm-slots=1]
//
// Two agents run in this process (Agent + AgentServer each, real TCP on 127.0.0.1, as in
// src/agent/migration_test.cc). For each state size and mode (pre-copy, then
// stop-and-copy, the naive baseline), on fresh agents:
//   1. examples/counter is deployed on the source (and, with no instance, on the target,
//      so that the migration does not compile the module there) and `fill`ed to the size;
//   2. an open-loop generator sends `touch <words>` invoke frames to the instance
//      ("touch@<instance>") at a constant rate over one TCP connection, pipelined: a
//      sender thread sends each request at its scheduled time, a receiver thread per
//      connection takes the answers, and latency counts from the SCHEDULED send time
//      (no coordinated omission);
//   3. after --before-ms, Agent::Migrate moves the instance to the target; when it returns,
//      the generator opens a connection to the target and sends there from then on (a
//      client whose location table was updated); answers still owed on the old connection
//      come back through the source's forwarding;
//   4. after --after-ms more, sending stops, every answer is waited for (a drain period),
//      and the books are checked: lost = requests without a successful answer; duplicated
//      = executions beyond one per request. `touch` returns the new counter value, so the
//      answers must be exactly {1..N} with no repeats and the final `get` must equal N;
//   5. `check` at the target must pass (every byte of the fill area intact).
// The state is --fill-pct % compressible (counter's `fill N P`: that share of every 4 KiB
// is a repeated word, the rest pseudo-random).
//
// --memory-reserve-mb=N gives both agents a warm memory reserve of N MiB
// (agent/memory_reserve.h; 0, the default, = none, as an embedder's AgentOptions): the
// target then moves it under the incoming memory and rollback point instead of
// faulting fresh pages in. Each row waits for both reserves to be full before the load.
//
// --transports: how the pages travel on the loopback rows (MigrateOptions::transport):
// tcp (the migration connection carries them), shm (through the target's slots of shared
// memory: both agents run on one host, each with a shared-memory socket). Each pre-copy
// row runs once per transport; the stop-and-copy baseline and the link rows (two hosts)
// take tcp. --warm-slots=1 (default): an shm row first migrates a throwaway instance to
// the target, as agents that migrated between each other before have their slots mapped
// and faulted in; 0 measures the first migration between two fresh agents.
//
// Then, with root, the same over an emulated link (--links, Mbit/s; none with --quick):
// the two agents on two hosts of an emulated network made by src/emu (a network namespace
// each, veths on a bridge, tbf on both ends), pre-copy of --link-sizes with `link_bps` set
// (LZ4 below ~2 Gbit/s), next to the TCP throughput measured through the same link.
// Without root these rows are skipped, and the report says why.
//
// Latency percentiles are given before (scheduled before the migration started), during
// (from its start to its return + 50 ms) and after. The limits of this machine come from
// the same run: memcpy of the state (memory) and a raw TCP loopback transfer of it between
// two threads (the link), for the "total time ≤ 1.5 × state / link bandwidth" goal.
//
// Why not transport::FrameClient for the load: its Receive(timeout) rides SO_RCVTIMEO,
// which the kernel rounds up to scheduler ticks (~10 ms here), so a single-thread loop
// waiting for an answer until the next send time oversleeps by up to a tick whenever an
// answer is late; a sender thread with clock_nanosleep and a blocking receiver per
// connection keep the schedule to a few µs. The frames are the same (frame.h).
//
// Writes DIR/migration.json, DIR/migration.md and DIR/migration.svg (latency over time,
// 64 MiB — 16 MiB with --quick — pre-copy vs stop-and-copy). Exit code 1 if a row failed
// (a migration error, lost or duplicated requests, or a failed state check), 2 on usage.
#include <fmt/format.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "agent/memory_reserve.h"
#include "common/bench_util.h"
#include "core/file.h"
#include "core/ids.h"
#include "core/manifest.h"
#include "core/mutex.h"
#include "core/status.h"
#include "emu/ledger.h"
#include "emu/netns.h"
#include "emu/teardown.h"
#include "transport/frame.h"
#include "transport/socket.h"
#include "wasm/engine.h"

namespace tern::bench {
namespace {

using agent::Agent;
using agent::AgentOptions;
using agent::AgentServer;
using agent::AgentServerOptions;

constexpr int64_t kMs = 1'000'000;
constexpr double kMiB = 1024.0 * 1024.0;
// Goals of issue #6.
constexpr double kDowntimeGoalMs = 5;
constexpr uint32_t kDowntimeGoalMiB = 64;
constexpr double kTotalGoalRatio = 1.5;
// "during" extends this far past Migrate's return (answers forwarded by the source).
constexpr int64_t kDuringTailNs = 50 * kMs;

struct Args {
  bool quick = false;
  std::string out = std::string(TERN_BENCH_SOURCE_DIR) + "/bench/results";
  std::string wasm_dir = std::string(TERN_BENCH_BUILD_DIR) + "/wasm";
  std::string source_dir = TERN_BENCH_SOURCE_DIR;
  std::vector<uint32_t> sizes_mib = {1, 16, 64, 256};
  double rate = 1000;  // requests per second
  uint32_t words = 8;  // `touch` argument: 8-byte words rewritten per request
  int64_t before_ns = 1000 * kMs;
  int64_t after_ns = 1000 * kMs;
  uint32_t plot_mib = 0;  // the size plotted; 0 = 64 MiB (16 MiB with --quick)
  // Share (%) of each 4 KiB of the state that compresses well (counter's `fill N P`).
  uint32_t fill_pct = 50;
  // Emulated links (Mbit/s) for the rows between two network namespaces (root only),
  // and the state sizes migrated over each. None with --quick.
  std::vector<uint32_t> links_mbps = {1000, 10000};
  std::vector<uint32_t> link_sizes_mib = {64, 256};
  bool sizes_given = false, before_given = false, after_given = false, links_given = false;
  // Whether the loopback rows include stop-and-copy (--stop-and-copy=0: pre-copy only,
  // for quicker A/B and profiling runs of the default mode).
  bool stop_and_copy = true;
  // Both agents' warm memory reserve (AgentOptions::memory_reserve_bytes), MiB; 0 = none.
  uint32_t reserve_mib = 0;
  // The loopback pre-copy rows' transports ("tcp", "shm"), in this order.
  std::vector<std::string> transports = {"tcp", "shm"};
  // shm rows: before the load, migrate a small throwaway instance from the source to the
  // target over shared memory, so that the timed migration finds the slots as agents that
  // migrated between each other before do (kept and mapped: design/migration.md "Warm
  // slots"). 0: the first migration between fresh agents (the source maps the slots).
  bool warm_slots = true;
  // Where the agents' shared-memory sockets go (made at start).
  std::string shm_dir;
};

std::string LinkName(uint64_t bps) {
  return bps % 1'000'000'000 == 0 ? fmt::format("{} Gbit/s", bps / 1'000'000'000)
                                  : fmt::format("{} Mbit/s", bps / 1'000'000);
}

// ---------------------------------------------------------------------------------
// Two agents.

struct Node {
  std::unique_ptr<Agent> agent;
  std::unique_ptr<AgentServer> server;
  std::string tcp;
  void Stop() {
    server.reset();
    agent.reset();
  }
};

Result<Node> StartNode(wasm::Engine* engine, const std::string& device, const std::string& ip,
                       uint32_t reserve_mib, const std::string& shm_dir) {
  Node n;
  AgentOptions o;
  o.device = device;
  o.workers = 2;
  o.memory_reserve_bytes = uint64_t{reserve_mib} << 20;
  TERN_ASSIGN_OR_RETURN(n.agent, Agent::Create(o, engine));
  AgentServerOptions so;
  so.host = ip;
  so.frame_port = 0;
  so.admin_port = 0;
  // A shared-memory socket, as `tern agent` has: same-host migrations go through its
  // `.mig` sibling.
  if (!shm_dir.empty()) so.shm_path = shm_dir + "/" + device + ".sock";
  TERN_ASSIGN_OR_RETURN(n.server, AgentServer::Start(n.agent.get(), so));
  n.tcp = n.agent->options().tcp_address;
  return n;
}

agent::InvokeResult Call(Agent* a, const std::string& id, const std::string& handler,
                         const std::string& payload = "") {
  agent::InvokeRequest r;
  r.service = "counter";
  r.handler = handler;
  r.payload = payload;
  r.instance = id;
  r.deadline_ns = NowNs() + 120'000 * kMs;
  return a->InvokeSync(std::move(r));
}

std::optional<agent::InstanceStatus> StatusOf(Agent* a, const std::string& id) {
  for (const agent::InstanceStatus& i : a->GetStatus().instances) {
    if (i.id == id) return i;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------
// The open-loop load.

// One request of the load. The sender writes sched/sent/conn before it publishes the
// request (sent_count_); a receiver writes value/code and then done_ns.
struct Rec {
  int64_t sched_ns = 0;
  int64_t sent_ns = 0;
  std::atomic<int64_t> done_ns{0};  // 0: no answer (yet)
  int64_t value = -1;               // the counter value answered
  int32_t code = -1;                // StatusCode of the answer; kMovedCode for kMoved
  int32_t conn = 0;                 // 0: sent to the source, 1: to the target
};
constexpr int32_t kMovedCode = 1000;

class LoadGen;

// One frame connection of the generator: the sender thread writes, a receiver thread
// reads. Closed (and its receiver joined) by Stop().
class LoadConn {
 public:
  static Result<std::unique_ptr<LoadConn>> Open(const std::string& addr, LoadGen* gen) {
    std::string host;
    uint16_t port = 0;
    TERN_RETURN_IF_ERROR(ParseHostPort(addr, &host, &port));
    TERN_ASSIGN_OR_RETURN(transport::UniqueFd fd,
                          transport::ConnectTcp(host, port, std::chrono::seconds(5)));
    auto c = std::unique_ptr<LoadConn>(new LoadConn(std::move(fd), gen));
    c->reader_ = std::thread([p = c.get()] { p->ReadLoop(); });
    return c;
  }
  ~LoadConn() { Stop(); }
  LoadConn(const LoadConn&) = delete;
  LoadConn& operator=(const LoadConn&) = delete;

  // Sender thread only.
  Status Send(const std::string& bytes) {
    return transport::WriteAll(fd_.get(), bytes, NowNs() + 5'000 * kMs);
  }
  void Stop() {
    stop_.store(true);
    if (reader_.joinable()) reader_.join();
  }
  // The receiver's end: "" while it reads, else why it stopped.
  std::string broken() const { return broken_set_.load(std::memory_order_acquire) ? broken_ : ""; }

 private:
  LoadConn(transport::UniqueFd fd, LoadGen* gen) : fd_(std::move(fd)), gen_(gen) {}
  void ReadLoop();

  transport::UniqueFd fd_;
  LoadGen* const gen_;
  std::thread reader_;
  std::atomic<bool> stop_{false};
  std::string broken_;
  std::atomic<bool> broken_set_{false};
};

class LoadGen {
 public:
  LoadGen(std::string handler, std::string payload, double rate, size_t capacity)
      : handler_(std::move(handler)),
        payload_(std::move(payload)),
        rate_(rate),
        capacity_(capacity),
        recs_(new Rec[capacity]) {}
  ~LoadGen() { Finish(); }

  // Connects to `source` and starts sending (the first request now).
  Status Start(const std::string& source) {
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<LoadConn> c, LoadConn::Open(source, this));
    conns_.push_back(std::move(c));
    start_ns_ = NowNs();
    sender_ = std::thread([this] { SendLoop(); });
    return Status::Ok();
  }
  // From the next request on, send to `target` over a new connection.
  void SwitchTo(const std::string& target) {
    {
      MutexLock l(&mu_);
      target_ = target;
    }
    switch_.store(true, std::memory_order_release);
  }
  // Stops sending, waits up to `drain_ns` for the answers still owed, then closes the
  // connections. Returns true if every request sent got an answer.
  bool StopAndDrain(int64_t drain_ns) {
    stop_.store(true);
    if (sender_.joinable()) sender_.join();
    const int64_t until = NowNs() + drain_ns;
    while (answered_.load() < sent_.load() && NowNs() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const bool drained = answered_.load() >= sent_.load();
    Finish();
    return drained;
  }

  // After StopAndDrain.
  size_t sent() const { return sent_.load(); }
  const Rec& rec(size_t i) const { return recs_[i]; }
  uint64_t extra_answers() const { return extra_answers_.load(); }
  uint64_t send_errors() const { return send_errors_; }
  std::vector<std::string> conn_errors() const { return conn_errors_; }
  std::string switch_error() const { return switch_error_; }
  // The first error message answered per status code.
  std::map<int32_t, std::string> first_errors() {
    MutexLock l(&mu_);
    return first_error_;
  }

  // Receiver threads.
  void Answer(const transport::Frame& f) {
    const uint64_t id = f.request_id;
    if (id == 0 || id > capacity_) {
      extra_answers_.fetch_add(1);
      return;
    }
    Rec& r = recs_[id - 1];
    if (r.done_ns.load(std::memory_order_acquire) != 0) {
      extra_answers_.fetch_add(1);  // a second answer to one request
      return;
    }
    if (f.type == transport::FrameType::kReply) {
      int64_t v = -1;
      auto [p, ec] = std::from_chars(f.payload.data(), f.payload.data() + f.payload.size(), v);
      r.value = ec == std::errc() ? v : -1;
      r.code = ec == std::errc() ? 0 : static_cast<int32_t>(StatusCode::kInternal);
    } else if (f.type == transport::FrameType::kMoved) {
      r.code = kMovedCode;
    } else {
      r.code = static_cast<int32_t>(f.status == StatusCode::kOk ? StatusCode::kUnknown : f.status);
      MutexLock l(&mu_);
      auto [it, fresh] = first_error_.emplace(r.code, f.payload);
      (void)it;
      (void)fresh;
    }
    r.done_ns.store(NowNs(), std::memory_order_release);
    answered_.fetch_add(1);
  }

 private:
  void SendLoop() {
    transport::Frame f;
    f.type = transport::FrameType::kInvoke;
    f.service = "counter";
    f.handler = handler_;
    f.payload = payload_;
    std::string bytes;
    size_t current = 0;
    const double interval = 1e9 / rate_;
    for (size_t i = 0; i < capacity_; ++i) {
      const int64_t sched =
          start_ns_ + static_cast<int64_t>(std::llround(interval * static_cast<double>(i)));
      if (stop_.load()) break;
      if (NowNs() < sched) {
        timespec ts{static_cast<time_t>(sched / 1'000'000'000),
                    static_cast<long>(sched % 1'000'000'000)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
        }
      }
      if (stop_.load()) break;
      if (current == 0 && switch_.load(std::memory_order_acquire)) {
        std::string target;
        {
          MutexLock l(&mu_);
          target = target_;
        }
        Result<std::unique_ptr<LoadConn>> c = LoadConn::Open(target, this);
        if (c.ok()) {
          conns_.push_back(std::move(*c));
          current = 1;
        } else if (switch_error_.empty()) {
          switch_error_ = c.status().ToString();  // keep sending to the source (forwarded)
        }
      }
      Rec& r = recs_[i];
      r.sched_ns = sched;
      r.conn = static_cast<int32_t>(current);
      f.request_id = i + 1;
      bytes.clear();
      Status st = transport::EncodeFrame(f, &bytes);
      if (st.ok()) st = conns_[current]->Send(bytes);
      r.sent_ns = NowNs();
      if (!st.ok()) ++send_errors_;
      sent_.store(i + 1);
    }
  }
  void Finish() {
    stop_.store(true);
    if (sender_.joinable()) sender_.join();
    for (auto& c : conns_) {
      c->Stop();
      if (!c->broken().empty()) conn_errors_.push_back(c->broken());
    }
    conns_.clear();
  }

  const std::string handler_, payload_;
  const double rate_;
  const size_t capacity_;
  std::unique_ptr<Rec[]> recs_;
  int64_t start_ns_ = 0;
  std::thread sender_;
  std::vector<std::unique_ptr<LoadConn>> conns_;  // the sender's; joined by Finish
  std::atomic<bool> stop_{false};
  std::atomic<bool> switch_{false};
  Mutex mu_;
  std::string target_ GUARDED_BY(mu_);
  std::map<int32_t, std::string> first_error_ GUARDED_BY(mu_);
  std::atomic<size_t> sent_{0};
  std::atomic<size_t> answered_{0};
  std::atomic<uint64_t> extra_answers_{0};
  uint64_t send_errors_ = 0;  // sender thread, read after it is joined
  std::string switch_error_;  // sender thread, read after it is joined
  std::vector<std::string> conn_errors_;
};

void LoadConn::ReadLoop() {
  transport::FrameDecoder decoder;
  std::string buf(256 << 10, '\0');
  transport::Frame f;
  auto fail = [&](std::string why) {
    broken_ = std::move(why);
    broken_set_.store(true, std::memory_order_release);
  };
  while (!stop_.load()) {
    Result<size_t> n = transport::ReadSome(fd_.get(), buf.data(), buf.size(), NowNs() + 20 * kMs);
    if (!n.ok()) {
      if (n.status().code() == StatusCode::kDeadlineExceeded) continue;
      return fail(n.status().ToString());
    }
    if (*n == 0) return fail("the agent closed the connection");
    decoder.Feed(std::string_view(buf.data(), *n));
    for (;;) {
      Result<bool> got = decoder.Next(&f);
      if (!got.ok()) return fail(got.status().ToString());
      if (!*got) break;
      gen_->Answer(f);
    }
  }
}

// ---------------------------------------------------------------------------------
// The limits.

// memcpy of `bytes` between two buffers already touched: the best of three.
int64_t MemcpyNs(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  int64_t best = INT64_MAX;
  for (int i = 0; i < 3; ++i) {
    a[static_cast<size_t>(i) * 4096 % bytes] = static_cast<char>(i);
    const int64_t t = NowNs();
    std::memcpy(b.data(), a.data(), bytes);
    best = std::min(best, NowNs() - t);
    if (b[bytes / 2] != a[bytes / 2]) return -1;  // keeps the copy observable
  }
  return best;
}

// `bytes` of fresh anonymous memory, 2 MiB-aligned (so that it can be huge pages),
// unmapped when it goes; at() is null when the mmap failed.
class FreshMapping {
 public:
  explicit FreshMapping(size_t bytes) : len_(bytes + kHuge) {
    m_ = ::mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m_ == MAP_FAILED) m_ = nullptr;
  }
  ~FreshMapping() {
    if (m_ != nullptr) ::munmap(m_, len_);
  }
  FreshMapping(const FreshMapping&) = delete;
  FreshMapping& operator=(const FreshMapping&) = delete;
  char* at() const {
    if (m_ == nullptr) return nullptr;
    return reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(m_) + kHuge - 1) & ~(kHuge - 1));
  }
  static constexpr size_t kHuge = size_t{2} << 20;

 private:
  size_t len_;
  void* m_;
};

// memcpy of `bytes` into memory never touched before (fresh anonymous pages, as a
// migration target's instance memory is): the page faults are the cost. `huge`: the
// memory is madvise(MADV_HUGEPAGE)d first (2 MiB-aligned), as the target's is. The best
// of three.
// Best of three; `first` (if given) gets the first of them, which on this VM may be
// memory the host no longer backs (its balloon takes free 2 MiB blocks back after a few
// seconds: huge pages then fault in at ~0.3-0.6 GB/s instead of 3-8).
int64_t FirstTouchNs(size_t bytes, bool huge, int64_t* first = nullptr) {
  std::vector<char> a(bytes, 1);
  int64_t best = INT64_MAX;
  for (int i = 0; i < 3; ++i) {
    FreshMapping fresh(bytes);
    char* b = fresh.at();
    if (b == nullptr) return -1;
    const int64_t t = NowNs();
    if (huge) ::madvise(b, bytes, MADV_HUGEPAGE);
    std::memcpy(b, a.data(), bytes);
    best = std::min(best, NowNs() - t);
    if (i == 0 && first != nullptr) *first = NowNs() - t;
    if (b[bytes / 2] != a[bytes / 2]) return -1;
  }
  return best;
}

// Touching (one byte per 4 KiB) `bytes` of huge pages already touched, right after each
// was split into 4 KiB entries (an mprotect of its first page, and back): what the write
// tracker's first write to each huge page of a migrated instance costs it (the kernel
// splits a write-protected huge page on its first write). On a bare host it is close to
// nothing; under a hypervisor with shadow page tables each 4 KiB entry is rebuilt on its
// next access. The best of three; -1 if no huge pages could be had.
int64_t SplitTouchNs(size_t bytes) {
  constexpr size_t kHuge = FreshMapping::kHuge;
  bytes &= ~(kHuge - 1);
  if (bytes == 0) return -1;
  auto touch = [](char* p, size_t n) {
    for (size_t o = 0; o < n; o += 4096) {
      __atomic_fetch_or(reinterpret_cast<char*>(p + o), 0, __ATOMIC_RELAXED);
    }
  };
  int64_t best = INT64_MAX;
  for (int i = 0; i < 3; ++i) {
    FreshMapping fresh(bytes);
    char* b = fresh.at();
    if (b == nullptr) return -1;
    ::madvise(b, bytes, MADV_HUGEPAGE);
    touch(b, bytes);
    touch(b, bytes);
    for (size_t o = 0; o < bytes; o += kHuge) ::mprotect(b + o, 4096, PROT_READ);
    for (size_t o = 0; o < bytes; o += kHuge) ::mprotect(b + o, 4096, PROT_READ | PROT_WRITE);
    const int64_t t = NowNs();
    touch(b, bytes);
    best = std::min(best, NowNs() - t);
  }
  return best;
}

// The least work a migration of `bytes` between two agents of one host does, with
// nothing else running: one thread copies the state 4 MiB at a time into a ring of six
// buffers of a shared mapping (`tcp` false: the target's slots) or into a buffer it sends
// over a loopback TCP connection (`tcp`), while a second thread copies each chunk into
// two destinations (the target's memory and its rollback point, already touched, as the
// warm reserve has them). No checksums, no dirty tracking, no load, no protocol: the
// floor of this design on this machine. The best of three; -1 if it could not be set up.
int64_t SameHostFloorNs(size_t bytes, bool tcp) {
  constexpr size_t kRing = 6;
  if (bytes == 0 || bytes % (size_t{1} << 20) != 0) return -1;
  const size_t kChunk = bytes % (size_t{4} << 20) == 0 ? size_t{4} << 20 : size_t{1} << 20;
  const size_t chunks = bytes / kChunk;
  std::vector<char> src(bytes, 3), mem(bytes, 0), good(bytes, 0);
  const size_t ring_bytes = kRing * kChunk;
  void* ring = ::mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                      -1, 0);
  if (ring == MAP_FAILED) return -1;
  char* const slots = static_cast<char*>(ring);
  std::memset(slots, 0, ring_bytes);
  int64_t best = INT64_MAX;
  for (int rep = 0; rep < 3 && best >= 0; ++rep) {
    src[static_cast<size_t>(rep) * 4096] = static_cast<char>(rep);
    transport::UniqueFd w, r;
    if (tcp) {
      Result<transport::UniqueFd> ls = transport::ListenTcp("127.0.0.1", 0, 1);
      Result<uint16_t> port = ls.ok() ? transport::LocalPort(ls->get()) : ls.status();
      Result<transport::UniqueFd> c =
          port.ok() ? transport::ConnectTcp("127.0.0.1", *port, std::chrono::seconds(2))
                    : port.status();
      if (!c.ok()) {
        best = -1;
        break;
      }
      w = std::move(*c);
      r = transport::UniqueFd(::accept4(ls->get(), nullptr, nullptr, SOCK_CLOEXEC));
      // Blocking sends, as the link limit's (ConnectTcp's socket is non-blocking).
      if (r.get() < 0 || ::fcntl(w.get(), F_SETFL, ::fcntl(w.get(), F_GETFL) & ~O_NONBLOCK) != 0) {
        best = -1;
        break;
      }
    }
    Mutex mu;
    CondVar cv;
    size_t produced = 0, consumed = 0;  // chunks (shared ring)
    bool failed = false;
    const int64_t t0 = NowNs();
    std::thread consumer([&] {
      std::vector<char> buf(tcp ? kChunk : 0);
      for (size_t c = 0; c < chunks; ++c) {
        const char* from;
        if (tcp) {
          size_t got = 0;
          while (got < kChunk) {
            ssize_t n = ::recv(r.get(), buf.data() + got, kChunk - got, 0);
            if (n <= 0) {
              if (n < 0 && errno == EINTR) continue;
              MutexLock l(&mu);
              failed = true;
              return;
            }
            got += static_cast<size_t>(n);
          }
          from = buf.data();
        } else {
          MutexLock l(&mu);
          while (produced <= c) cv.Wait(&mu);
          from = slots + (c % kRing) * kChunk;
        }
        std::memcpy(mem.data() + c * kChunk, from, kChunk);
        std::memcpy(good.data() + c * kChunk, from, kChunk);
        if (!tcp) {
          MutexLock l(&mu);
          ++consumed;
          cv.SignalAll();
        }
      }
    });
    std::vector<char> out(tcp ? kChunk : 0);
    for (size_t c = 0; c < chunks && !failed; ++c) {
      if (tcp) {
        std::memcpy(out.data(), src.data() + c * kChunk, kChunk);
        size_t off = 0;
        while (off < kChunk) {
          ssize_t n = ::send(w.get(), out.data() + off, kChunk - off, MSG_NOSIGNAL);
          if (n < 0) {
            if (errno == EINTR) continue;
            failed = true;
            break;
          }
          off += static_cast<size_t>(n);
        }
      } else {
        {
          MutexLock l(&mu);
          while (c >= consumed + kRing) cv.Wait(&mu);
        }
        std::memcpy(slots + (c % kRing) * kChunk, src.data() + c * kChunk, kChunk);
        MutexLock l(&mu);
        ++produced;
        cv.SignalAll();
      }
    }
    if (failed && tcp) ::shutdown(w.get(), SHUT_RDWR);
    consumer.join();
    if (failed || good[bytes / 2] != src[bytes / 2] || mem[rep * 4096] != src[rep * 4096]) {
      best = -1;
      break;
    }
    best = std::min(best, NowNs() - t0);
  }
  ::munmap(ring, ring_bytes);
  return best;
}

// Runs `fn` on a thread of its own inside network namespace `netns` ("" = this one):
// sockets it creates, and threads it starts, are in there (emu::JoinNetns).
Status RunInNetns(const std::string& netns, const std::function<void()>& fn) {
  if (netns.empty()) {
    fn();
    return Status::Ok();
  }
  Status st = Status::Ok();
  std::thread t([&] {
    st = emu::JoinNetns(netns);
    if (st.ok()) fn();
  });
  t.join();
  return st;
}

// `bytes` from one thread to another over one TCP connection (blocking sockets, 1 MiB
// writes): from the first write to the last byte read; the best of `reps`. The reader
// listens on `ip` inside `reader_ns`, the writer connects from `writer_ns` ("" = this
// namespace; loopback: 127.0.0.1 in both).
Result<int64_t> TcpTransferNs(size_t bytes, int reps, const std::string& ip,
                              const std::string& reader_ns, const std::string& writer_ns) {
  std::vector<char> data(bytes, 7);
  int64_t best = INT64_MAX;
  for (int rep = 0; rep < reps; ++rep) {
    transport::UniqueFd ls;
    sockaddr_in sa{};
    Status setup = RunInNetns(reader_ns, [&] {
      ls = transport::UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sa.sin_family = AF_INET;
      socklen_t len = sizeof(sa);
      if (ls.get() < 0 || ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr) != 1 ||
          ::bind(ls.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
          ::listen(ls.get(), 1) != 0 ||
          ::getsockname(ls.get(), reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
        ls.reset();
      }
    });
    TERN_RETURN_IF_ERROR(setup);
    if (ls.get() < 0) return ErrnoError("bind/listen on " + ip, errno);
    std::atomic<int64_t> end{0};
    std::atomic<bool> reader_ok{false};
    std::thread reader([&] {
      transport::UniqueFd c(::accept4(ls.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (c.get() < 0) return;
      std::vector<char> buf(1 << 20);
      size_t got = 0;
      while (got < bytes) {
        ssize_t n = ::recv(c.get(), buf.data(), buf.size(), 0);
        if (n <= 0) {
          if (n < 0 && errno == EINTR) continue;
          return;
        }
        got += static_cast<size_t>(n);
      }
      end.store(NowNs());
      reader_ok.store(true);
    });
    Status st = Status::Ok();
    int64_t start = 0;
    Status ns = RunInNetns(writer_ns, [&] {
      transport::UniqueFd w(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (w.get() < 0 || ::connect(w.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
        st = ErrnoError("connect to " + ip, errno);
        return;
      }
      start = NowNs();
      size_t off = 0;
      while (off < bytes) {
        ssize_t n = ::send(w.get(), data.data() + off, std::min<size_t>(1 << 20, bytes - off),
                           MSG_NOSIGNAL);
        if (n < 0) {
          if (errno == EINTR) continue;
          st = ErrnoError("send", errno);
          break;
        }
        off += static_cast<size_t>(n);
      }
    });
    if (st.ok()) st = ns;
    if (!st.ok()) ::shutdown(ls.get(), SHUT_RDWR);
    reader.join();
    TERN_RETURN_IF_ERROR(st);
    if (!reader_ok.load()) return UnavailableError("the reader did not get every byte");
    best = std::min(best, end.load() - start);
  }
  return best;
}

struct Limits {
  uint32_t size_mib = 0;
  int64_t memcpy_ns = 0;
  int64_t first_touch_ns = 0;
  int64_t first_touch_huge_ns = 0;
  int64_t first_touch_huge_first_ns = 0;  // the first of the three tries
  int64_t split_touch_ns = 0;             // SplitTouchNs
  int64_t floor_shm_ns = 0;               // SameHostFloorNs(shared ring)
  int64_t floor_tcp_ns = 0;               // SameHostFloorNs(loopback TCP)
  int64_t tcp_ns = 0;
  double tcp_bps() const { return size_mib * kMiB / (static_cast<double>(tcp_ns) / 1e9); }
  double memcpy_bps() const { return size_mib * kMiB / (static_cast<double>(memcpy_ns) / 1e9); }
};

// ---------------------------------------------------------------------------------
// One migration under load.

struct Window {
  Stats stats;  // latencies of the successful requests scheduled in the window (ns)
  size_t requests = 0;
};

// Where the two agents run: both on loopback in this namespace, or each on an emulated
// host (its own network namespace, src/emu) with a tbf-limited veth between them.
struct Place {
  std::string src_netns, dst_netns;  // "" = this namespace
  std::string src_ip = "127.0.0.1", dst_ip = "127.0.0.1";
  uint64_t link_bps = 0;  // the emulated link's rate; 0 = loopback
};

struct Row {
  uint32_t size_mib = 0;
  bool precopy = true;
  std::string transport = "tcp";  // asked for (report.transport: used)
  bool slots_warmed = false;      // a throwaway shm migration ran first (--warm-slots)
  uint64_t link_bps = 0;  // 0 = loopback
  std::string error;  // why the row failed; "" if it passed
  std::string tracking;
  agent::MigrationReport report;
  int64_t migrate_start_ns = 0;  // Migrate() called (NowNs)
  uint64_t reserve_ready_bytes = 0;  // the target's warm reserve when Migrate was called
  uint64_t warm_bytes = 0;           // what the target took from it
  double loadavg = 0;                // 1-minute load average when Migrate was called
  int64_t migrate_end_ns = 0;    // Migrate() returned
  // CPU time of this whole process (both agents, the load) while Migrate ran: the work
  // a migration costs, which the wall time shows only divided by this VM's share.
  int64_t cpu_ns = 0;
  // The process's CPU use per second of wall time over the end of the before window
  // (the load alone: the generator, the source serving it); × Migrate's wall time, the
  // share of cpu_ns that is not the migration's.
  double load_cpu_per_s = 0;
  int64_t LoadCpuNs() const {
    return static_cast<int64_t>(load_cpu_per_s * static_cast<double>(migrate_end_ns - migrate_start_ns));
  }
  int64_t freeze_ns = 0;         // frozen (NowNs), from the freeze step + freeze wait
  int64_t cutover_ns = 0;        // active at the target: freeze + downtime
  // When Migrate's steps began (NowNs): "round N", "freeze", "commit" (the commit frame
  // about to be sent: the source's part of the downtime is over).
  std::vector<std::pair<std::string, int64_t>> steps;
  int64_t setup_ns = 0;    // Migrate's start → its first round (or the freeze): connect, begin
  int64_t connect_ns = 0;  // Migrate's start → "begin": the target's migration port, MigStart
  int64_t begin_ns = 0;    // "begin" → the first round: the target prepares the instance
  Window before, during, after;
  int64_t max_latency_ns = 0;  // over every successful request (the client-observed stall)
  size_t sent = 0, ok = 0, errors = 0, unanswered = 0, lost = 0, duplicated = 0;
  size_t via_target = 0;       // sent on the connection to the target
  std::string error_answers;   // "N × code (first message)", for each code answered
  std::string baseline_lost;   // stop-and-copy: why requests were lost (not a failure)
  int64_t final_value = -1;    // `get` at the end
  bool values_exact = false;   // answers are exactly {1..ok}, no repeats
  uint64_t extra_answers = 0;  // second answers to one request id
  std::string check;           // "ok" or why not
  int64_t check_ns = 0;
  int64_t fill_ns = 0;
  // The timeline (for the plot): scheduled time relative to the migration start, latency;
  // latency < 0 for requests without a successful answer.
  std::vector<std::pair<double, double>> timeline_ms;

  // The source's part of the downtime: frozen → the commit frame sent (the rest is the
  // commit's round trip: the target applies the last pages and activates the instance).
  int64_t DowntimeSourceNs() const {
    for (auto& [n, t] : steps) {
      if (n == "commit" && freeze_ns != 0) return t - freeze_ns;
    }
    return 0;
  }
};

double LoadAvg1() {
  double l = 0;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = 0;
    std::fclose(f);
  }
  return l;
}

int64_t ProcessCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The instance's memory, and what the target drew from its warm reserve, if any.
std::string MemoryCell(const Row& r) {
  std::string s = fmt::format("{:.1f} MiB", static_cast<double>(r.report.memory_bytes) / kMiB);
  if (r.reserve_ready_bytes > 0) {
    s += fmt::format(" (warm {:.0f})", static_cast<double>(r.warm_bytes) / kMiB);
  }
  return s;
}

std::string ModeName(bool precopy) { return precopy ? "pre-copy" : "stop-and-copy"; }

Row RunOne(const Args& args, wasm::Engine* engine, const std::string& wasm,
           const Manifest& manifest, uint32_t size_mib, bool precopy, const Place& place,
           const std::string& transport) {
  Row row;
  row.size_mib = size_mib;
  row.precopy = precopy;
  row.link_bps = place.link_bps;
  row.transport = transport;
  const std::string label =
      fmt::format("{} MiB {} {}{}", size_mib, ModeName(precopy), transport,
                  place.link_bps == 0 ? "" : fmt::format(" over {}", LinkName(place.link_bps)));
  Result<Node> src = InternalError("not started");
  Result<Node> dst = InternalError("not started");
  if (Status ns = RunInNetns(place.src_netns,
                             [&] { src = StartNode(engine, "src", place.src_ip, args.reserve_mib, args.shm_dir); });
      !ns.ok()) {
    src = ns;
  }
  if (!src.ok()) {
    row.error = "starting the source agent: " + src.status().ToString();
    return row;
  }
  if (Status ns = RunInNetns(place.dst_netns,
                             [&] { dst = StartNode(engine, "dst", place.dst_ip, args.reserve_mib, args.shm_dir); });
      !ns.ok()) {
    dst = ns;
  }
  if (!dst.ok()) {
    row.error = "starting the target agent: " + dst.status().ToString();
    return row;
  }
  auto stop_nodes = [&] {
    src->Stop();
    dst->Stop();
  };
  Manifest one = manifest;
  one.replicas = 1;
  Result<agent::ServiceStatus> dep = src->agent->Deploy(one, wasm);
  Manifest none = manifest;
  none.replicas = 0;
  Status dep0 = dep.ok() ? dst->agent->Deploy(none, wasm).status() : dep.status();
  if (!dep0.ok() || dep->instances.empty()) {
    row.error = "deploying counter: " + dep0.ToString();
    stop_nodes();
    return row;
  }
  const std::string id = dep->instances.at(0);

  // Fill in 16 MiB steps (a request has a CPU limit).
  const int64_t tf = NowNs();
  for (uint32_t done = 0; done < size_mib;) {
    const uint32_t step = std::min<uint32_t>(16, size_mib - done);
    agent::InvokeResult r =
        Call(src->agent.get(), id, "fill", fmt::format("{} {}", step * 1024, args.fill_pct));
    if (!r.status.ok()) {
      row.error = "fill: " + r.status.ToString();
      stop_nodes();
      return row;
    }
    done += step;
    if (size_mib >= 64 && done % 64 == 0) Progress(fmt::format("{}: filled {} MiB", label, done));
  }
  row.fill_ns = NowNs() - tf;
  std::optional<agent::InstanceStatus> st = StatusOf(src->agent.get(), id);
  row.tracking = st && st->dirty_tracking ? "userfaultfd (exact)" : "page checksums";
  if (transport == "shm" && args.warm_slots) {
    Result<std::string> w = src->agent->StartInstance(manifest.name);
    agent::MigrateOptions wo;
    wo.to_tcp = dst->tcp;
    wo.to_device = "dst";
    wo.transport = "shm";
    Result<agent::MigrationReport> wr =
        w.ok() ? src->agent->Migrate(*w, wo) : Result<agent::MigrationReport>(w.status());
    if (wr.ok()) {
      (void)dst->agent->StopInstance(*w);
      row.slots_warmed = true;
    } else {
      Progress(fmt::format("{}: warming the slots failed: {}", label, wr.status().ToString()));
    }
  }
  // Both reserves full before the load: what an agent that has been idle a moment holds.
  for (Node* n : {&*src, &*dst}) {
    if (agent::MemoryReserve* r = n->agent->memory_reserve(); r != nullptr) {
      if (!r->WaitFull(60'000 * kMs)) Progress(fmt::format("{}: a reserve did not fill in 60 s", label));
    }
  }

  // The load, then the migration in the middle of it.
  const int64_t drain_ns = 10'000 * kMs;
  const double expected_s =
      static_cast<double>(args.before_ns + args.after_ns) / 1e9 + 60.0;  // generous
  LoadGen gen("touch@" + id, std::to_string(args.words), args.rate,
              static_cast<size_t>(args.rate * expected_s) + 1000);
  if (Status s = gen.Start(src->tcp); !s.ok()) {
    row.error = "connecting the load: " + s.ToString();
    stop_nodes();
    return row;
  }
  {
    // The load's own CPU use, over the last half of the before window.
    std::this_thread::sleep_for(std::chrono::nanoseconds(args.before_ns / 2));
    const int64_t c0 = ProcessCpuNs(), w0 = NowNs();
    std::this_thread::sleep_for(std::chrono::nanoseconds(args.before_ns - args.before_ns / 2));
    const int64_t dw = NowNs() - w0;
    if (dw > 0) row.load_cpu_per_s = static_cast<double>(ProcessCpuNs() - c0) / static_cast<double>(dw);
  }
  agent::MigrateOptions o;
  o.to_tcp = dst->tcp;
  o.to_device = "dst";
  o.precopy = precopy;
  o.link_bps = place.link_bps;  // codec "auto": LZ4 on a link slower than LZ4 compresses
  o.transport = transport;
  Mutex steps_mu;
  std::vector<std::pair<std::string, int64_t>> steps;
  o.step_hook = [&](const std::string& step) {
    MutexLock l(&steps_mu);
    steps.emplace_back(step, NowNs());
    return Status::Ok();
  };
  Progress(fmt::format("{}: migrating under {} req/s", label, args.rate));
  Result<agent::MigrationReport> rep = InternalError("not run");
  // The source's outgoing connections (to the target, forwarding) start in its namespace.
  Status in_ns = RunInNetns(place.src_netns, [&] {
    agent::MemoryReserve* r = dst->agent->memory_reserve();
    const agent::MemoryReserve::Stats r0 = r != nullptr ? r->stats() : agent::MemoryReserve::Stats{};
    row.reserve_ready_bytes = r0.ready_bytes;
    row.loadavg = LoadAvg1();
    const int64_t cpu0 = ProcessCpuNs();
    row.migrate_start_ns = NowNs();
    rep = src->agent->Migrate(id, o);
    row.migrate_end_ns = NowNs();
    row.cpu_ns = ProcessCpuNs() - cpu0;
    if (r != nullptr) row.warm_bytes = r->stats().moved_bytes - r0.moved_bytes;
  });
  if (!in_ns.ok()) rep = in_ns;
  Agent* home = src->agent.get();
  {
    MutexLock l(&steps_mu);
    row.steps = steps;
  }
  auto step_at = [&](const std::string& name) -> int64_t {
    for (auto& [n, t] : row.steps) {
      if (n == name) return t;
    }
    return 0;
  };
  if (const int64_t first = step_at(precopy ? "round 0" : "freeze"); first != 0) {
    row.setup_ns = first - row.migrate_start_ns;
    if (const int64_t begin = step_at("begin"); begin != 0) {
      row.connect_ns = begin - row.migrate_start_ns;
      row.begin_ns = first - begin;
    }
  }
  if (rep.ok()) {
    gen.SwitchTo(dst->tcp);
    row.report = *rep;
    row.freeze_ns = step_at("freeze") + rep->freeze_wait_ns;
    row.cutover_ns = row.freeze_ns + rep->downtime_ns;
    home = dst->agent.get();
  } else {
    row.error = "migrate: " + rep.status().ToString();
  }
  std::this_thread::sleep_until(std::chrono::steady_clock::time_point(
      std::chrono::nanoseconds(row.migrate_end_ns + kDuringTailNs + args.after_ns)));
  const bool drained = gen.StopAndDrain(drain_ns);

  // The books.
  row.sent = gen.sent();
  row.extra_answers = gen.extra_answers();
  std::vector<int64_t> values;
  std::vector<int64_t> lat_before, lat_during, lat_after;
  std::map<int32_t, size_t> error_codes;
  const int64_t during_end = row.migrate_end_ns + kDuringTailNs;
  for (size_t i = 0; i < row.sent; ++i) {
    const Rec& r = gen.rec(i);
    const int64_t done = r.done_ns.load(std::memory_order_acquire);
    const double x_ms = static_cast<double>(r.sched_ns - row.migrate_start_ns) / 1e6;
    if (r.conn == 1) ++row.via_target;
    if (done == 0) {
      ++row.unanswered;
      row.timeline_ms.emplace_back(x_ms, -1);
      continue;
    }
    if (r.code != 0) {
      ++row.errors;
      ++error_codes[r.code];
      row.timeline_ms.emplace_back(x_ms, -1);
      continue;
    }
    ++row.ok;
    values.push_back(r.value);
    const int64_t lat = done - r.sched_ns;
    row.max_latency_ns = std::max(row.max_latency_ns, lat);
    row.timeline_ms.emplace_back(x_ms, static_cast<double>(lat) / 1e6);
    if (r.sched_ns < row.migrate_start_ns) {
      lat_before.push_back(lat);
    } else if (r.sched_ns < during_end) {
      lat_during.push_back(lat);
    } else {
      lat_after.push_back(lat);
    }
  }
  row.before = {Summarize(lat_before), lat_before.size()};
  row.during = {Summarize(lat_during), lat_during.size()};
  row.after = {Summarize(lat_after), lat_after.size()};
  row.lost = row.sent - row.ok;
  {
    std::map<int32_t, std::string> first = gen.first_errors();
    std::vector<std::string> parts;
    for (auto [code, n] : error_codes) {
      const std::string name = code == kMovedCode
                                   ? std::string("moved")
                                   : std::string(StatusCodeName(static_cast<StatusCode>(code)));
      parts.push_back(first.count(code) != 0 ? fmt::format("{} × {} (\"{}\")", n, name, first[code])
                                             : fmt::format("{} × {}", n, name));
    }
    row.error_answers = fmt::format("{}", fmt::join(parts, "; "));
  }
  std::sort(values.begin(), values.end());
  const size_t distinct =
      static_cast<size_t>(std::unique(values.begin(), values.end()) - values.begin());
  values.resize(distinct);
  row.values_exact =
      distinct == row.ok &&
      (values.empty() || (values.front() == 1 && values.back() == static_cast<int64_t>(row.ok)));
  agent::InvokeResult got = Call(home, id, "get");
  if (got.status.ok()) {
    std::from_chars(got.reply.data(), got.reply.data() + got.reply.size(), row.final_value);
  }
  // Executions beyond one per request: more executions than requests sent, plus
  // answers repeating a value (a request run twice, or state rolled back).
  const size_t executions = row.final_value < 0 ? 0 : static_cast<size_t>(row.final_value);
  row.duplicated =
      (executions > row.sent ? executions - row.sent : 0) + (row.ok - distinct) + row.extra_answers;
  const int64_t tc = NowNs();
  agent::InvokeResult check = Call(home, id, "check");
  row.check_ns = NowNs() - tc;
  row.check = check.status.ok() ? "ok" : check.status.ToString();

  std::vector<std::string> problems;
  if (!row.error.empty()) problems.push_back(row.error);
  if (!drained)
    problems.push_back(fmt::format("{} answers still missing after the drain", row.unanswered));
  // Lost requests fail a pre-copy row. The stop-and-copy baseline may lose some for a
  // reason of its own (a long freeze: the held requests reach the target in one burst,
  // beyond its per-instance queue, and are refused with kResourceExhausted); that is
  // reported, with the books still checked (no refused request may have run).
  if (row.lost != 0 && !precopy) {
    row.baseline_lost =
        fmt::format("lost {} ({} unanswered; error answers: {})", row.lost, row.unanswered,
                    row.error_answers.empty() ? "none" : row.error_answers);
  } else if (row.lost != 0) {
    problems.push_back(fmt::format("lost {} ({} unanswered; error answers: {})", row.lost,
                                   row.unanswered,
                                   row.error_answers.empty() ? "none" : row.error_answers));
  }
  if (row.duplicated != 0) problems.push_back(fmt::format("duplicated {}", row.duplicated));
  if (!got.status.ok()) problems.push_back("get: " + got.status.ToString());
  if (row.final_value != static_cast<int64_t>(row.ok)) {
    problems.push_back(
        fmt::format("final value {} != {} successful answers", row.final_value, row.ok));
  }
  if (!row.values_exact) problems.push_back("the answers are not exactly {1..N}");
  if (row.check != "ok") problems.push_back("check: " + row.check);
  if (gen.send_errors() != 0) problems.push_back(fmt::format("{} sends failed", gen.send_errors()));
  if (!gen.switch_error().empty())
    problems.push_back("switching to the target: " + gen.switch_error());
  for (const std::string& e : gen.conn_errors()) problems.push_back("load connection: " + e);
  if (row.sent == 0) problems.push_back("no load was sent");
  row.error = fmt::format("{}", fmt::join(problems, "; "));
  stop_nodes();
  return row;
}

// ---------------------------------------------------------------------------------
// Output.

std::string Ms(int64_t ns) { return fmt::format("{:.2f} ms", static_cast<double>(ns) / 1e6); }
std::string LatMs(double ns) {
  const double ms = ns / 1e6;
  return ms < 10    ? fmt::format("{:.2f}", ms)
         : ms < 100 ? fmt::format("{:.1f}", ms)
                    : fmt::format("{:.0f}", ms);
}
std::string Rounds(const agent::MigrationReport& r) {
  if (r.rounds.empty()) return "0";
  std::vector<std::string> p;
  for (const agent::MigrationRound& x : r.rounds) p.push_back(std::to_string(x.pages));
  return fmt::format("{} ({})", r.rounds.size(), fmt::join(p, "+"));
}
std::string TableRow(const std::vector<std::string>& cells) {
  return "| " + fmt::format("{}", fmt::join(cells, " | ")) + " |\n";
}

nlohmann::json StatsJson(const Window& w) {
  return {{"count", w.requests},
          {"p50_ns", w.stats.p50},
          {"p99_ns", w.stats.p99},
          {"max_ns", w.stats.max}};
}

// Latency over time, one series per row; log-scale y.
std::string PlotSvg(const std::vector<const Row*>& rows, const std::string& title) {
  // The legend (one line per row) sits between the title and the plot.
  const double W = 960, L = 70, R = 20, T = 40 + 16.0 * static_cast<double>(rows.size()), B = 60;
  const double H = T + 380 + B;
  double xmin = -250, xmax = 0, ymax_ms = 1;
  for (const Row* r : rows) {
    xmax = std::max(xmax, static_cast<double>(r->migrate_end_ns - r->migrate_start_ns) / 1e6 + 400);
    for (auto [x, y] : r->timeline_ms) {
      if (x >= xmin && x <= xmax) ymax_ms = std::max(ymax_ms, y);
    }
  }
  const double ylo = std::log10(0.01);                      // 10 µs
  const double yhi = std::ceil(std::log10(ymax_ms * 1.5));  // a decade above the max
  auto X = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
  auto Y = [&](double ms) {
    double v = std::clamp(std::log10(std::max(ms, 1e-3)), ylo, yhi);
    return T + (yhi - v) / (yhi - ylo) * (H - T - B);
  };
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n",
      W, H, L, title);
  // Axes and grid.
  for (double d = ylo; d <= yhi + 1e-9; d += 1) {
    const double ms = std::pow(10, d);
    const std::string lab = ms < 1      ? fmt::format("{:.0f} µs", ms * 1000)
                            : ms < 1000 ? fmt::format("{:.0f} ms", ms)
                                        : fmt::format("{:.0f} s", ms / 1000);
    s += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
        L, Y(ms), W - R, Y(ms), L - 6, Y(ms) + 4, lab);
  }
  const double span = xmax - xmin;
  const double step = span > 4000 ? 1000 : span > 2000 ? 500 : span > 800 ? 200 : 100;
  for (double x = std::ceil(xmin / step) * step; x <= xmax; x += step) {
    s += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:.0f}</text>\n",
        X(x), T, X(x), H - B, X(x), H - B + 16, std::abs(x) < 1e-9 ? 0.0 : x);
  }
  s += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ms from the start of the migration "
      "(scheduled send time)</text>\n<text transform=\"translate(16,{}) rotate(-90)\" "
      "text-anchor=\"middle\">latency from the scheduled send (log)</text>\n",
      L, T, W - L - R, H - T - B, (L + W - R) / 2, H - 20, (T + H - B) / 2);
  const char* colors[] = {"#1f77b4", "#e6550d", "#2ca02c", "#9467bd"};
  int k = 0;
  double legend_y = 42;
  for (const Row* r : rows) {
    const char* c = colors[k++ % 4];
    const double freeze = static_cast<double>(r->freeze_ns - r->migrate_start_ns) / 1e6;
    const double cut = static_cast<double>(r->cutover_ns - r->migrate_start_ns) / 1e6;
    const double end = static_cast<double>(r->migrate_end_ns - r->migrate_start_ns) / 1e6;
    s += fmt::format("<g fill=\"{}\" fill-opacity=\"0.65\">\n", c);
    for (auto [x, y] : r->timeline_ms) {
      if (x < xmin || x > xmax) continue;
      if (y < 0) {
        s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" fill=\"red\">×</text>", X(x) - 3, T + 10);
      } else {
        s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"1.6\"/>", X(x), Y(y));
      }
    }
    s += "\n</g>\n";
    if (r->freeze_ns != 0) {
      s += fmt::format(
          "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"{3}\" "
          "stroke-dasharray=\"4,3\"/>\n<line x1=\"{4:.1f}\" y1=\"{1}\" x2=\"{4:.1f}\" y2=\"{2}\" "
          "stroke=\"{3}\" stroke-width=\"1.5\"/>\n",
          X(freeze), T, H - B, c, X(cut));
    }
    s += fmt::format(
        "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}: freeze "
        "(dashed) at {:.1f} ms, serving at the target (solid) at {:.1f} ms, Migrate returned at "
        "{:.1f} ms</text>\n",
        L + 6, legend_y - 4, c, L + 16, legend_y, ModeName(r->precopy), freeze, cut, end);
    legend_y += 16;
  }
  s += "</svg>\n";
  return s;
}

std::string SetupCell(const Row& r) {
  return r.connect_ns == 0 ? Ms(r.setup_ns)
                           : fmt::format("{} ({:.1f} + {:.1f})", Ms(r.setup_ns),
                                         static_cast<double>(r.connect_ns) / 1e6,
                                         static_cast<double>(r.begin_ns) / 1e6);
}
// The process's CPU time while Migrate ran (both agents, the load, loopback or veth
// packet processing) and, in brackets, the load's estimated share of it.
std::string CpuCell(const Row& r) {
  return fmt::format("{} ({:.0f})", Ms(r.cpu_ns), static_cast<double>(r.LoadCpuNs()) / 1e6);
}
std::string Round0Cell(const Row& r) {
  return r.precopy && !r.report.rounds.empty() ? Ms(r.report.rounds.front().ns) : "—";
}

// The measured limit of one emulated link: one TCP connection from the source host to
// the target host, through both tbf qdiscs.
struct LinkLimit {
  uint64_t bps = 0;  // nominal (tbf rate)
  size_t probe_bytes = 0;
  int64_t ns = 0;
  std::string error;
  double measured_bps() const {
    return ns > 0 ? static_cast<double>(probe_bytes) / (static_cast<double>(ns) / 1e9) : 0;
  }
};

// The emulated network of the link rows: two hosts ("src", "dst") of cluster "migbench",
// made by src/emu as `tern up` makes its hosts (a namespace each, veths on a bridge, tbf
// on both ends of each veth), torn down when this goes (and first, if a crashed run left
// one behind: the ledger is in a fixed place).
class LinkNet {
 public:
  static Result<std::unique_ptr<LinkNet>> Create() {
    TERN_RETURN_IF_ERROR(emu::CheckNetworkSupport().WithPrefix(
        "the emulated link needs root, `ip` and `tc`"));
    auto n = std::unique_ptr<LinkNet>(new LinkNet());
    TERN_RETURN_IF_ERROR(n->Teardown());  // what an earlier run may have left
    TERN_ASSIGN_OR_RETURN(n->ledger_, emu::Ledger::Open(kStateDir, kCluster));
    TERN_ASSIGN_OR_RETURN(n->net_,
                          emu::CreateHostNetwork({kCluster, {{"src", 0}, {"dst", 0}}}, n->ledger_.get()));
    return n;
  }
  ~LinkNet() {
    if (Status st = Teardown(); !st.ok()) Progress("tearing the emulated link down: " + st.ToString());
  }
  // Both hosts send and receive at most `bps`.
  Status SetRate(uint64_t bps) {
    for (const emu::HostEndpoint& h : net_.hosts) {
      TERN_RETURN_IF_ERROR(emu::SetHostRate(h, bps, ledger_.get()));
    }
    return Status::Ok();
  }
  Place PlaceAt(uint64_t bps) const {
    Place p;
    p.src_netns = net_.hosts[0].netns;
    p.src_ip = net_.hosts[0].address;
    p.dst_netns = net_.hosts[1].netns;
    p.dst_ip = net_.hosts[1].address;
    p.link_bps = bps;
    return p;
  }

 private:
  static constexpr char kStateDir[] = "/tmp/tern-migration-bench";
  static constexpr char kCluster[] = "migbench";
  LinkNet() = default;
  Status Teardown() {
    Result<emu::TeardownReport> r = emu::Teardown(kStateDir, kCluster);
    if (!r.ok()) return r.status();
    if (!r->clean()) {
      return InternalError(fmt::format("could not remove: {}", fmt::join(r->remaining, "; ")));
    }
    return Status::Ok();
  }
  std::unique_ptr<emu::Ledger> ledger_;
  emu::HostNetwork net_;
};

int Run(const Args& args) {
  SetProgressName("migration");
  agent::TuneMallocForAgentProcess();  // the agents run in this process, as in `tern agent`
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine({});
  if (!engine.ok()) {
    std::fprintf(stderr, "migration_bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  Result<std::string> wasm = ReadFile(args.wasm_dir + "/counter.wasm");
  Result<Manifest> manifest = LoadManifest(args.source_dir + "/examples/counter/manifest.yaml");
  if (!wasm.ok() || !manifest.ok()) {
    std::fprintf(stderr, "migration_bench: %s (build the counter guest first)\n",
                 (wasm.ok() ? manifest.status() : wasm.status()).ToString().c_str());
    return 1;
  }
  nlohmann::json doc;
  doc["benchmark"] = "migration";
  doc["machine"] = MachineInfo(args.source_dir);
  doc["quick"] = args.quick;
  doc["memory_reserve_mib"] = args.reserve_mib;
  doc["transports"] = args.transports;
  doc["load"] = {{"rate_per_s", args.rate},
                 {"handler", fmt::format("touch {}", args.words)},
                 {"before_ms", args.before_ns / kMs},
                 {"after_ms", args.after_ns / kMs}};

  // The limits first (no agents running yet).
  std::map<uint32_t, Limits> limits;
  for (uint32_t mib : args.sizes_mib) {
    Progress(fmt::format("limits: memcpy and TCP loopback of {} MiB", mib));
    Limits l;
    l.size_mib = mib;
    l.memcpy_ns = MemcpyNs(size_t{mib} << 20);
    l.first_touch_ns = FirstTouchNs(size_t{mib} << 20, /*huge=*/false);
    l.first_touch_huge_ns =
        FirstTouchNs(size_t{mib} << 20, /*huge=*/true, &l.first_touch_huge_first_ns);
    l.split_touch_ns = SplitTouchNs(size_t{mib} << 20);
    l.floor_shm_ns = SameHostFloorNs(size_t{mib} << 20, /*tcp=*/false);
    l.floor_tcp_ns = SameHostFloorNs(size_t{mib} << 20, /*tcp=*/true);
    Result<int64_t> tcp = TcpTransferNs(size_t{mib} << 20, 3, "127.0.0.1", "", "");
    if (!tcp.ok()) {
      std::fprintf(stderr, "migration_bench: TCP loopback limit: %s\n",
                   tcp.status().ToString().c_str());
      return 1;
    }
    l.tcp_ns = *tcp;
    limits[mib] = l;
  }

  std::vector<Row> rows;
  auto run = [&](uint32_t mib, bool precopy, const Place& place, const std::string& transport) {
    Row r = RunOne(args, engine->get(), *wasm, *manifest, mib, precopy, place, transport);
    Progress(fmt::format(
        "{} MiB {} {}{}: downtime {}, total {}, p99 before/during/after {}/{}/{} ms, max {} ms, "
        "sent {}, lost {}, dup {}{}",
        mib, ModeName(precopy), transport,
        place.link_bps == 0 ? "" : fmt::format(" over {}", LinkName(place.link_bps)),
        Ms(r.report.downtime_ns), Ms(r.report.total_ns), LatMs(r.before.stats.p99),
        LatMs(r.during.stats.p99), LatMs(r.after.stats.p99),
        LatMs(static_cast<double>(r.max_latency_ns)), r.sent, r.lost, r.duplicated,
        r.error.empty() ? "" : " — FAILED: " + r.error));
    rows.push_back(std::move(r));
  };
  for (uint32_t mib : args.sizes_mib) {
    for (const std::string& t : args.transports) run(mib, /*precopy=*/true, Place{}, t);
    if (args.stop_and_copy) run(mib, /*precopy=*/false, Place{}, "tcp");
  }

  // Over an emulated link: the two agents on two hosts of an emulated network.
  std::vector<LinkLimit> link_limits;
  std::string link_skipped;
  if (!args.links_mbps.empty()) {
    Result<std::unique_ptr<LinkNet>> net = LinkNet::Create();
    if (!net.ok()) {
      link_skipped = net.status().ToString();
      Progress("link rows skipped: " + link_skipped);
    }
    for (uint32_t mbps : net.ok() ? args.links_mbps : std::vector<uint32_t>{}) {
      const uint64_t bps = uint64_t{mbps} * 1'000'000;
      const Place place = (*net)->PlaceAt(bps);
      LinkLimit ll;
      ll.bps = bps;
      Status st = (*net)->SetRate(bps);
      // Enough bytes for ~1/4 s at the nominal rate (16..128 MiB).
      ll.probe_bytes = std::clamp<size_t>(bps / 8 / 4, size_t{16} << 20, size_t{128} << 20);
      Progress(fmt::format("limits: TCP over the emulated {} link ({} MiB)", LinkName(bps),
                           ll.probe_bytes >> 20));
      Result<int64_t> t = st.ok() ? TcpTransferNs(ll.probe_bytes, 2, place.dst_ip, place.dst_netns,
                                                  place.src_netns)
                                  : Result<int64_t>(st);
      if (!t.ok()) {
        ll.error = t.status().ToString();
        link_limits.push_back(ll);
        continue;
      }
      ll.ns = *t;
      link_limits.push_back(ll);
      // Two hosts: TCP (their Unix sockets would reach each other through the file system).
      for (uint32_t mib : args.link_sizes_mib) run(mib, /*precopy=*/true, place, "tcp");
    }
  }

  // ---- the report
  const uint32_t plot_mib = args.plot_mib != 0 ? args.plot_mib : args.quick ? 16 : 64;
  // A loopback row; the first transport's unless told.
  auto find = [&](uint32_t mib, bool precopy, const std::string& transport = "") -> const Row* {
    for (const Row& r : rows) {
      if (r.size_mib == mib && r.precopy == precopy && r.link_bps == 0 &&
          (precopy ? r.transport == (transport.empty() ? args.transports.front() : transport)
                   : true)) {
        return &r;
      }
    }
    return nullptr;
  };
  auto link_limit = [&](uint64_t bps) -> const LinkLimit* {
    for (const LinkLimit& l : link_limits) {
      if (l.bps == bps && l.ns > 0) return &l;
    }
    return nullptr;
  };
  // The time the instance's memory takes over the link: loopback TCP as measured; an
  // emulated link as measured through it (one TCP connection).
  auto link_ns = [&](const Row& r) {
    if (r.link_bps != 0) {
      const LinkLimit* l = link_limit(r.link_bps);
      return l == nullptr ? 0.0 : static_cast<double>(r.report.memory_bytes) / l->measured_bps() * 1e9;
    }
    const Limits& l = limits.at(r.size_mib);
    return static_cast<double>(r.report.memory_bytes) / l.tcp_bps() * 1e9;
  };
  // The same at the link's nominal rate (emulated links only).
  auto nominal_ns = [&](const Row& r) {
    return static_cast<double>(r.report.memory_bytes) * 8 / static_cast<double>(r.link_bps) * 1e9;
  };
  bool all_ok = true;
  for (const Row& r : rows) {
    if (!r.error.empty()) all_ok = false;
    nlohmann::json rounds = nlohmann::json::array();
    for (const agent::MigrationRound& x : r.report.rounds) {
      rounds.push_back({{"pages", x.pages}, {"bytes", x.bytes}, {"ns", x.ns}});
    }
    nlohmann::json steps = nlohmann::json::object();
    for (auto& [n, t] : r.steps) steps[n] = static_cast<double>(t - r.migrate_start_ns) / 1e6;
    nlohmann::json j = {
        {"size_mib", r.size_mib},
        {"mode", ModeName(r.precopy)},
        {"link", r.link_bps == 0 ? "loopback" : LinkName(r.link_bps)},
        {"link_bps", r.link_bps},
        {"ok", r.error.empty()},
        {"error", r.error},
        {"dirty_tracking", r.tracking},
        {"memory_bytes", r.report.memory_bytes},
        {"codec", r.report.codec},
        {"transport", r.report.transport.empty() ? r.transport : r.report.transport},
        {"transport_note", r.report.transport_note},
        {"shm_bytes", r.report.shm_bytes},
        {"slots_warmed", r.slots_warmed},
        {"downtime_ns", r.report.downtime_ns},
        {"total_ns", r.report.total_ns},
        {"freeze_wait_ns", r.report.freeze_wait_ns},
        {"rounds", rounds},
        {"final_pages", r.report.final_pages},
        {"bytes_sent", r.report.bytes_sent},
        {"bytes_raw", r.report.bytes_raw},
        {"zero_pages", r.report.zero_pages},
        {"held", r.report.held},
        {"migrate_call_ns", r.migrate_end_ns - r.migrate_start_ns},
        // CLOCK_MONOTONIC, as `perf record -k mono` stamps samples: the window to keep
        // with `perf script --time`.
        {"migrate_start_mono_ns", r.migrate_start_ns},
        {"migrate_end_mono_ns", r.migrate_end_ns},
        {"process_cpu_ns", r.cpu_ns},
        {"load_cpu_ns", r.LoadCpuNs()},
        {"load_cpu_per_s", r.load_cpu_per_s},
        {"setup_ns", r.setup_ns},
        {"connect_ns", r.connect_ns},
        {"begin_ns", r.begin_ns},
        {"downtime_source_ns", r.DowntimeSourceNs()},
        {"steps_ms", steps},
        {"latency_before", StatsJson(r.before)},
        {"latency_during", StatsJson(r.during)},
        {"latency_after", StatsJson(r.after)},
        {"max_latency_ns", r.max_latency_ns},
        {"sent", r.sent},
        {"ok", r.ok},
        {"via_target", r.via_target},
        {"errors", r.errors},
        {"error_answers", r.error_answers},
        {"baseline_lost", r.baseline_lost},
        {"unanswered", r.unanswered},
        {"lost", r.lost},
        {"duplicated", r.duplicated},
        {"final_value", r.final_value},
        {"answers_exactly_1_to_n", r.values_exact},
        {"check", r.check},
        {"check_ns", r.check_ns},
        {"fill_ns", r.fill_ns},
        {"link_limit_ns", r.report.memory_bytes != 0 ? link_ns(r) : 0.0},
        {"reserve_ready_bytes", r.reserve_ready_bytes},
        {"warm_bytes", r.warm_bytes},
        {"loadavg_1m", r.loadavg},
    };
    if (r.link_bps != 0 && r.report.memory_bytes != 0) j["link_nominal_ns"] = nominal_ns(r);
    if (r.size_mib == plot_mib) {
      nlohmann::json tl = nlohmann::json::array();
      for (auto [x, y] : r.timeline_ms)
        tl.push_back({std::round(x * 1000) / 1000, std::round(y * 1000) / 1000});
      j["timeline_ms"] = tl;  // [scheduled ms from the migration start, latency ms or -1]
      j["freeze_ms"] = static_cast<double>(r.freeze_ns - r.migrate_start_ns) / 1e6;
      j["cutover_ms"] = static_cast<double>(r.cutover_ns - r.migrate_start_ns) / 1e6;
    }
    doc["rows"].push_back(j);
  }
  for (auto& [mib, l] : limits) {
    doc["limits"].push_back({{"size_mib", mib},
                             {"memcpy_ns", l.memcpy_ns},
                             {"memcpy_gb_per_s", l.memcpy_bps() / 1e9},
                             {"first_touch_memcpy_ns", l.first_touch_ns},
                             {"first_touch_huge_pages_memcpy_ns", l.first_touch_huge_ns},
                             {"first_touch_huge_pages_first_try_ns", l.first_touch_huge_first_ns},
                             {"touch_after_huge_page_split_ns", l.split_touch_ns},
                             {"same_host_floor_shm_ns", l.floor_shm_ns},
                             {"same_host_floor_tcp_ns", l.floor_tcp_ns},
                             {"tcp_loopback_ns", l.tcp_ns},
                             {"tcp_loopback_gbit_per_s", l.tcp_bps() * 8 / 1e9}});
  }

  std::string md = "# Live migration (bench/migration)\n\n";
  const nlohmann::json& m = doc["machine"];
  md += fmt::format("{} · {} vCPUs · kernel {} · git {} · load average at the start {} · {}{}\n\n",
                    m.value("cpu_model", "?"), m.value("online_cpus", 0), m.value("kernel", "?"),
                    m.value("git_rev", "?"), m.value("loadavg", "?"), m.value("date_utc", ""),
                    args.quick ? " · **quick run: short windows, 1 and 16 MiB only**" : "");
  md += fmt::format(
      "examples/counter `fill`ed to the state size, then open-loop load: `touch {}` (the "
      "counter + {} random 8-byte words of the fill area rewritten per request) at {:.0f} "
      "req/s, one pipelined TCP connection, latency from the scheduled send. {:.0f} ms of "
      "load, then `Agent::Migrate` to a second agent, then {:.0f} ms more; *during* = from "
      "the migration's start to its return + 50 ms. Lost and duplicated are counted (answers "
      "must be exactly 1..N, the final `get` = N); `check` verifies every byte at the target.\n\n",
      args.words, args.words, args.rate, static_cast<double>(args.before_ns) / 1e6,
      static_cast<double>(args.after_ns) / 1e6);
  md += args.reserve_mib == 0
            ? "Memory reserve: **off** (`--memory-reserve-mb=0`): the target faults fresh "
              "pages in under the instance's memory and its rollback point.\n\n"
            : fmt::format("Memory reserve: **{} MiB** per agent (`--memory-reserve-mb`), full "
                          "before each row's load; *memory* says how much of it the target "
                          "took (warm).\n\n",
                          args.reserve_mib);

  // Summary.
  md += "## Summary (goals of issue #6)\n\n";
  md += TableRow({"metric", "tern", "limit / baseline", "ratio", "goal", "met"});
  md += TableRow({"---", "---", "---", "---", "---", "---"});
  nlohmann::json summary = nlohmann::json::array();
  auto add_summary = [&](const std::string& metric, const std::string& tern,
                         const std::string& base, std::optional<double> ratio,
                         const std::string& goal, std::optional<bool> met) {
    md += TableRow({metric, tern, base, ratio ? fmt::format("{:.2f}", *ratio) : "—", goal,
                    met ? (*met ? "yes" : "**no**") : "—"});
    nlohmann::json j = {{"metric", metric}, {"tern", tern}, {"baseline", base}, {"goal", goal}};
    if (ratio) j["ratio"] = *ratio;
    if (met) j["met"] = *met;
    summary.push_back(j);
  };
  const uint32_t goal_mib = find(kDowntimeGoalMiB, true) != nullptr ? kDowntimeGoalMiB : plot_mib;
  for (const std::string& t : args.transports) {
    const Row* p = find(goal_mib, true, t);
    if (p == nullptr || !p->error.empty()) continue;
    const Row* s = find(goal_mib, false);
    const double ms = static_cast<double>(p->report.downtime_ns) / 1e6;
    add_summary(
        fmt::format("downtime, pre-copy {}, {} MiB at {:.0f} req/s × {} words", t, goal_mib,
                    args.rate, args.words),
        Ms(p->report.downtime_ns),
        s != nullptr && s->error.empty() ? "stop-and-copy " + Ms(s->report.downtime_ns) : "—",
        ms / kDowntimeGoalMs,
        goal_mib == kDowntimeGoalMiB ? "≤ 5 ms" : "≤ 5 ms (at 64 MiB; not run)",
        goal_mib == kDowntimeGoalMiB ? std::optional<bool>(ms <= kDowntimeGoalMs) : std::nullopt);
  }
  for (const Row& r : rows) {
    if (!r.error.empty() || r.report.memory_bytes == 0 || link_ns(r) <= 0) continue;
    const double ratio = static_cast<double>(r.report.total_ns) / link_ns(r);
    const std::string base =
        r.link_bps == 0 ? fmt::format("TCP loopback {:.1f} ms", link_ns(r) / 1e6)
                        : fmt::format("TCP over the link {:.1f} ms (nominal {:.1f} ms)",
                                      link_ns(r) / 1e6, nominal_ns(r) / 1e6);
    add_summary(fmt::format("total time / (memory / link bandwidth), {} MiB {}, {}{}{}", r.size_mib,
                            ModeName(r.precopy),
                            r.link_bps == 0 ? "loopback" : LinkName(r.link_bps) + " link",
                            r.link_bps == 0 ? "" : ", codec " + r.report.codec,
                            ", " + (r.report.transport.empty() ? r.transport : r.report.transport)),
                Ms(r.report.total_ns), base, ratio, r.precopy ? "≤ 1.5×" : "— (baseline)",
                r.precopy ? std::optional<bool>(ratio <= kTotalGoalRatio) : std::nullopt);
  }
  for (bool precopy : {true, false}) {
    size_t lost = 0, dup = 0, sent = 0;
    for (const Row& r : rows) {
      if (r.precopy != precopy) continue;
      lost += r.lost;
      dup += r.duplicated;
      sent += r.sent;
    }
    add_summary(fmt::format("lost / duplicated requests, {} (all sizes, {} requests)",
                            ModeName(precopy), sent),
                fmt::format("{} / {}", lost, dup), "—", std::nullopt,
                precopy ? "0 / 0" : "— (baseline; duplicated must be 0)",
                precopy ? std::optional<bool>(lost == 0 && dup == 0) : std::nullopt);
  }
  doc["summary"] = summary;
  for (const LinkLimit& l : link_limits) {
    doc["links"].push_back({{"nominal_bps", l.bps},
                            {"probe_bytes", l.probe_bytes},
                            {"tcp_ns", l.ns},
                            {"tcp_gbit_per_s", l.measured_bps() * 8 / 1e9},
                            {"error", l.error}});
  }
  if (!link_skipped.empty()) doc["links_skipped"] = link_skipped;

  // Per mode.
  for (bool precopy : {true, false}) {
    md += precopy ? "\n## Pre-copy\n\n" : "\n## Stop-and-copy (the naive baseline)\n\n";
    md += TableRow({"state", "transport", "memory", "tracking", "downtime (source + commit)", "total",
                    "CPU (load's share)", "setup (connect + begin)", "round 0", "freeze wait", "rounds (pages)",
                    "final pages", "sent / shm / raw MiB", "held", "p50 / p99 before (ms)", "p99 during",
                    "p99 after", "max (stall)", "requests", "lost", "dup", "check"});
    md += TableRow({"---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---",
                    "---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---"});
    for (const Row& r : rows) {
      if (r.precopy != precopy || r.link_bps != 0) continue;
      if (r.report.memory_bytes == 0) {
        md += TableRow({fmt::format("{} MiB", r.size_mib), r.transport, "**FAILED**: " + r.error,
                        "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""});
        continue;
      }
      md += TableRow(
          {fmt::format("{} MiB", r.size_mib),
           r.report.transport == r.transport
               ? r.report.transport + (r.report.transport != "shm" ? ""
                                       : r.slots_warmed           ? " (warm slots)"
                                                                  : " (cold slots)")
               : fmt::format("{} (asked {}: {})", r.report.transport, r.transport,
                             r.report.transport_note),
           MemoryCell(r), r.tracking == "page checksums" ? "checksums" : "uffd",
           fmt::format("{} ({:.2f} + {:.2f})", Ms(r.report.downtime_ns),
                       static_cast<double>(r.DowntimeSourceNs()) / 1e6,
                       static_cast<double>(r.report.downtime_ns - r.DowntimeSourceNs()) / 1e6),
           Ms(r.report.total_ns), CpuCell(r), SetupCell(r), Round0Cell(r),
           Ms(r.report.freeze_wait_ns),
           Rounds(r.report),
           std::to_string(r.report.final_pages),
           fmt::format("{:.1f} / {:.1f} / {:.1f}", static_cast<double>(r.report.bytes_sent) / kMiB,
                       static_cast<double>(r.report.shm_bytes) / kMiB,
                       static_cast<double>(r.report.bytes_raw) / kMiB),
           std::to_string(r.report.held),
           fmt::format("{} / {}", LatMs(r.before.stats.p50), LatMs(r.before.stats.p99)),
           LatMs(r.during.stats.p99), LatMs(r.after.stats.p99),
           LatMs(static_cast<double>(r.max_latency_ns)),
           fmt::format("{} ({} to the target)", r.sent, r.via_target), std::to_string(r.lost),
           std::to_string(r.duplicated), r.check == "ok" ? "ok" : "**" + r.check + "**"});
    }
  }
  std::vector<std::string> failures;
  for (const Row& r : rows) {
    if (!r.error.empty()) {
      failures.push_back(fmt::format("- {} MiB {}{}: {}", r.size_mib, ModeName(r.precopy),
                                     r.link_bps == 0 ? "" : " over " + LinkName(r.link_bps),
                                     r.error));
    }
  }
  if (!failures.empty()) md += fmt::format("\n**Failures:**\n\n{}\n", fmt::join(failures, "\n"));
  for (const Row& r : rows) {
    if (!r.baseline_lost.empty()) {
      md += fmt::format(
          "\nStop-and-copy, {} MiB: {}. The instance was frozen for {}; the "
          "requests held meanwhile were forwarded to the target at once.\n",
          r.size_mib, r.baseline_lost, Ms(r.report.downtime_ns));
    }
  }

  // Limits.
  md += "\n## Limits on this machine (same run)\n\n";
  md += TableRow({"state", "memcpy", "memcpy into fresh memory (first touch)",
                  "first touch, huge pages (MADV_HUGEPAGE): best of 3 (first)",
                  "touch after each huge page is split (per 2 MiB)",
                  "TCP loopback (one connection, two threads)",
                  "same-host floor: shm / TCP (a copy in ‖ two copies out)",
                  "pre-copy total / link time, / memcpy, / floor (per transport)",
                  "stop-and-copy total / link time"});
  md += TableRow({"---", "---", "---", "---", "---", "---", "---", "---", "---"});
  for (auto& [mib, l] : limits) {
    auto ratio_of = [&](const Row* r) {
      if (r == nullptr || r->report.memory_bytes == 0) return std::string("—");
      // A limit measured on `mib` MiB, scaled to the instance's memory.
      auto scaled = [&](int64_t ns) {
        return static_cast<double>(ns) * static_cast<double>(r->report.memory_bytes) /
               (static_cast<double>(mib) * kMiB);
      };
      const int64_t floor = r->report.transport == "shm" ? l.floor_shm_ns : l.floor_tcp_ns;
      std::string out = fmt::format(
          "{:.2f}× ({:.1f} ms), {:.1f}× memcpy", static_cast<double>(r->report.total_ns) / link_ns(*r),
          link_ns(*r) / 1e6, static_cast<double>(r->report.total_ns) / scaled(l.memcpy_ns));
      if (r->precopy && floor > 0) {
        out += fmt::format(", {:.2f}× floor", static_cast<double>(r->report.total_ns) / scaled(floor));
      }
      return out;
    };
    auto ratio = [&](bool precopy) {
      if (!precopy) return ratio_of(find(mib, false));
      std::vector<std::string> per;
      for (const std::string& t : args.transports) per.push_back(t + " " + ratio_of(find(mib, true, t)));
      return fmt::format("{}", fmt::join(per, "; "));
    };
    md += TableRow({fmt::format("{} MiB", mib),
                    fmt::format("{} ({:.1f} GB/s)", Ms(l.memcpy_ns), l.memcpy_bps() / 1e9),
                    fmt::format("{} ({:.2f} GB/s)", Ms(l.first_touch_ns),
                                mib * kMiB / (static_cast<double>(l.first_touch_ns) / 1e9) / 1e9),
                    fmt::format("{} ({:.2f} GB/s; first {:.2f} GB/s)", Ms(l.first_touch_huge_ns),
                                mib * kMiB / (static_cast<double>(l.first_touch_huge_ns) / 1e9) / 1e9,
                                mib * kMiB / (static_cast<double>(l.first_touch_huge_first_ns) / 1e9) / 1e9),
                    l.split_touch_ns < 0
                        ? std::string("— (no huge pages)")
                        : fmt::format("{} ({:.2f} ms)", Ms(l.split_touch_ns),
                                      static_cast<double>(l.split_touch_ns) / 1e6 /
                                          static_cast<double>(std::max<uint32_t>(1, mib / 2))),
                    fmt::format("{} ({:.1f} Gbit/s)", Ms(l.tcp_ns), l.tcp_bps() * 8 / 1e9),
                    fmt::format("{} / {}", l.floor_shm_ns < 0 ? "—" : Ms(l.floor_shm_ns),
                                l.floor_tcp_ns < 0 ? "—" : Ms(l.floor_tcp_ns)),
                    ratio(true), ratio(false)});
  }
  md +=
      "\nLink time = the instance's memory (what must cross) / the loopback bandwidth "
      "measured above; memcpy = the memcpy of the instance's memory at the rate measured "
      "above. Over shared memory no byte crosses the loopback: the TCP link time is the "
      "baseline it is compared with. *Touch after each huge page is split*: what a "
      "migrated stateful instance pays, outside the downtime, as its first writes make "
      "the write tracker split its huge pages (1 MiB rows: under one huge page, —). "
      "*Same-host floor*: the least a migration between two agents of one host does, "
      "with nothing else running: one thread copies the state 4 MiB at a time into a "
      "ring of six shared buffers (shm) or sends it over a loopback TCP connection from "
      "one buffer (TCP), while another copies each chunk into two destinations already "
      "touched (the target's memory and its rollback point); no checksums, no tracking, "
      "no load. *× floor* compares a pre-copy row with it.\n";

  // The emulated links.
  md += "\n## Over an emulated link (two network namespaces, tbf)\n\n";
  if (args.links_mbps.empty()) {
    md += "Not run (`--links=` empty; `--quick` runs none).\n";
  } else if (!link_skipped.empty()) {
    md += fmt::format("**Skipped**: {}. These rows need root (CI runs as root).\n", link_skipped);
  } else {
    md += fmt::format(
        "The two agents on two emulated hosts (network namespaces joined by veths on a bridge, "
        "src/emu as `tern up` builds them), a tbf rate limit on both ends of each veth; the "
        "load generator in the root namespace. Pre-copy with `link_bps` = the rate: codec "
        "`auto` compresses with LZ4 below ~2 Gbit/s. The state is {}% compressible (`fill N "
        "{}`). *link time* = memory / the TCP throughput measured through the link (one "
        "connection, same run); *nominal* = memory / the tbf rate.\n\n",
        args.fill_pct, args.fill_pct);
    md += TableRow({"link", "TCP through it", "state", "codec", "downtime", "total",
                    "CPU (load's share)", "setup (connect + begin)", "rounds (pages)", "sent / raw MiB",
                    "link time (nominal)", "total / link time", "total / nominal",
                    "p99 before / during (ms)", "lost", "dup", "check"});
    md += TableRow({"---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---",
                    "---", "---", "---", "---", "---", "---"});
    for (const LinkLimit& l : link_limits) {
      const std::string measured =
          l.ns > 0 ? fmt::format("{:.2f} Gbit/s", l.measured_bps() * 8 / 1e9) : "**" + l.error + "**";
      bool any = false;
      for (const Row& r : rows) {
        if (r.link_bps != l.bps) continue;
        any = true;
        if (r.report.memory_bytes == 0) {
          md += TableRow({LinkName(l.bps), measured, fmt::format("{} MiB", r.size_mib),
                          "**FAILED**: " + r.error, "", "", "", "", "", "", "", "", "", "", "", "",
                          ""});
          continue;
        }
        const double ln = link_ns(r), nn = nominal_ns(r);
        md += TableRow(
            {LinkName(l.bps), measured,
             fmt::format("{} MiB{}", r.size_mib,
                         r.reserve_ready_bytes > 0
                             ? fmt::format(" (warm {:.0f})", static_cast<double>(r.warm_bytes) / kMiB)
                             : ""),
             r.report.codec,
             Ms(r.report.downtime_ns), Ms(r.report.total_ns), CpuCell(r), SetupCell(r),
             Rounds(r.report),
             fmt::format("{:.1f} / {:.1f}", static_cast<double>(r.report.bytes_sent) / kMiB,
                         static_cast<double>(r.report.bytes_raw) / kMiB),
             fmt::format("{:.0f} ms ({:.0f} ms)", ln / 1e6, nn / 1e6),
             ln > 0 ? fmt::format("{:.2f}×", static_cast<double>(r.report.total_ns) / ln) : "—",
             fmt::format("{:.2f}×", static_cast<double>(r.report.total_ns) / nn),
             fmt::format("{} / {}", LatMs(r.before.stats.p99), LatMs(r.during.stats.p99)),
             std::to_string(r.lost), std::to_string(r.duplicated),
             r.check == "ok" ? "ok" : "**" + r.check + "**"});
      }
      if (!any) {
        md += TableRow({LinkName(l.bps), measured, "—", "", "", "", "", "", "", "", "", "", "",
                        "", "", "", ""});
      }
    }
  }

  // The plot.
  std::vector<const Row*> plotted;
  for (bool precopy : {true, false}) {
    const Row* r = find(plot_mib, precopy);
    if (r != nullptr && r->report.memory_bytes != 0) plotted.push_back(r);
  }
  std::string svg;
  if (!plotted.empty()) {
    svg =
        PlotSvg(plotted, fmt::format("{} MiB of state, {:.0f} req/s of touch {}: latency over time",
                                     plot_mib, args.rate, args.words));
    md += fmt::format(
        "\n## Latency over time, {} MiB\n\n![latency over time](migration.svg)\n\n"
        "Each dot is one request at its scheduled send time (x, ms from the start of the "
        "migration) and its latency (y, log scale); a red × marks a request without a "
        "successful answer. Dashed line: the instance froze; solid line: it serves at the "
        "target.\n",
        plot_mib);
  }

  // Notes.
  std::set<std::string> tracking;
  for (const Row& r : rows) {
    if (!r.tracking.empty()) tracking.insert(r.tracking);
  }
  md += fmt::format(
      "\n## Notes\n\n"
      "- Both agents run in this process (2 workers each, their own TCP frame servers and "
      "migration ports on 127.0.0.1), on {} shared vCPUs with the load generator; the "
      "\"link\" is loopback TCP, so the transfer competes with the instance, the generator "
      "and the target for the same two CPUs. Other jobs on this VM move the numbers.\n"
      "- Dirty tracking on the source (column *tracking*): {} — userfaultfd write-protect "
      "(exact pages) where the kernel has it and the memory is large enough to track, "
      "else page checksums (every round scans the whole memory). Codec: {} (the link is "
      "fast; LZ4 pays below ~2 Gbit/s).\n"
      "- On this VM, memory touched for the first time is several times slower to write "
      "than memory already mapped (page faults: the *first touch* column), and a "
      "migration target has to fill fresh memory twice (the instance's memory and its "
      "rollback copy): for the larger states that, not the loopback link, is the floor. "
      "How slow depends on the VM: a virtio balloon with free page reporting gives free "
      "2 MiB blocks back to the host after a few seconds, and huge pages drawn from "
      "those fault in at ~0.3-0.6 GB/s (the huge-page column's *first* try), from blocks "
      "freed just before at 3-8 GB/s (its best); 4 KiB pages come from smaller free "
      "blocks the balloon never reports, ~1-2 GB/s.\n"
      "- Small states are dominated by fixed costs (*setup*: connecting, the target's "
      "migration port, `begin`), so their ratio to the link time says little.\n"
      "- The target has the service deployed (no instance) before the migration, so its "
      "module is not compiled inside the measured time.\n"
      "- *downtime* is the agent's own (frozen → active at the target); *max (stall)* is "
      "the worst latency a client saw, which also holds the time the request waited in "
      "the hold queue and its forwarding.\n"
      "- *CPU* is this process's CPU time while `Migrate` ran (both agents, the load, and "
      "the loopback or veth packet processing done in its threads); in brackets the load's "
      "share, from the process's CPU use over the second half of the before window. CPU "
      "time above the wall time ran on the second vCPU; on 2 vCPUs the wall time cannot "
      "fall below half of it.\n"
      "- The instance's memory is larger than the fill (the guest's heap and stack); the "
      "wasm memory never shrinks, and pages never written go as zero pages (indices "
      "only).\n",
      m.value("online_cpus", 0), fmt::join(tracking, ", "),
      rows.empty() ? "?" : rows.front().report.codec);

  Status st = MakeDirs(args.out);
  if (st.ok()) st = WriteFileAtomic(args.out + "/migration.json", doc.dump(1) + "\n");
  if (st.ok()) st = WriteFileAtomic(args.out + "/migration.md", md);
  if (st.ok() && !svg.empty()) st = WriteFileAtomic(args.out + "/migration.svg", svg);
  if (!st.ok()) {
    std::fprintf(stderr, "migration_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  std::fputs(md.c_str(), stdout);
  return all_ok ? 0 : 1;
}

bool ParseU32List(const std::string& s, std::vector<uint32_t>* out) {
  out->clear();
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(',', at);
    if (comma == std::string::npos) comma = s.size();
    uint32_t v = 0;
    auto [p, ec] = std::from_chars(s.data() + at, s.data() + comma, v);
    if (ec != std::errc() || p != s.data() + comma || v == 0) return false;
    out->push_back(v);
    at = comma + 1;
  }
  return !out->empty();
}

bool ParseTransports(const std::string& s, std::vector<std::string>* out) {
  out->clear();
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(',', at);
    if (comma == std::string::npos) comma = s.size();
    const std::string t = s.substr(at, comma - at);
    if (t != "tcp" && t != "shm") return false;
    out->push_back(t);
    at = comma + 1;
  }
  return !out->empty();
}

int Main(int argc, char** argv) {
  Args args;
  const char* usage =
      "usage: migration_bench [--quick] [--out=DIR] [--wasm-dir=DIR] [--source-dir=DIR]\n"
      "                       [--sizes=1,16,64,256] [--rate=1000] [--words=8]\n"
      "                       [--before-ms=1000] [--after-ms=1000] [--plot-mib=64]\n"
      "                       [--fill-pct=50] [--links=1000,10000] [--link-sizes=64,256]\n"
      "                       [--stop-and-copy=1] [--memory-reserve-mb=0]\n"
      "                       [--transports=tcp,shm] [--warm-slots=1]\n";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* flag) { return FlagValue(a, flag); };
    int64_t ms = 0;
    double rate = 0;
    if (a == "--quick") {
      args.quick = true;
    } else if (auto v = val("--out")) {
      args.out = *v;
    } else if (auto v = val("--wasm-dir")) {
      args.wasm_dir = *v;
    } else if (auto v = val("--source-dir")) {
      args.source_dir = *v;
    } else if (auto v = val("--sizes"); v && ParseU32List(*v, &args.sizes_mib)) {
      args.sizes_given = true;
    } else if (auto v = val("--rate"); v && ParseNum(*v, &rate) && rate > 0 && rate <= 100000) {
      args.rate = rate;
    } else if (auto v = val("--words"); v && ParseNum(*v, &args.words) && args.words <= 4096) {
    } else if (auto v = val("--plot-mib"); v && ParseNum(*v, &args.plot_mib)) {
    } else if (auto v = val("--fill-pct"); v && ParseNum(*v, &args.fill_pct) && args.fill_pct <= 100) {
    } else if (auto v = val("--links"); v && (v->empty() || ParseU32List(*v, &args.links_mbps))) {
      if (v->empty()) args.links_mbps.clear();
      args.links_given = true;
    } else if (auto v = val("--link-sizes"); v && ParseU32List(*v, &args.link_sizes_mib)) {
    } else if (auto v = val("--memory-reserve-mb"); v && ParseNum(*v, &args.reserve_mib) &&
                                                       args.reserve_mib <= 65536) {
    } else if (auto v = val("--transports"); v && ParseTransports(*v, &args.transports)) {
    } else if (auto v = val("--warm-slots"); v && (*v == "0" || *v == "1")) {
      args.warm_slots = *v == "1";
    } else if (auto v = val("--stop-and-copy"); v && (*v == "0" || *v == "1")) {
      args.stop_and_copy = *v == "1";
    } else if (auto v = val("--before-ms"); v && ParseNum(*v, &ms) && ms >= 0) {
      args.before_ns = ms * kMs;
      args.before_given = true;
    } else if (auto v = val("--after-ms"); v && ParseNum(*v, &ms) && ms >= 0) {
      args.after_ns = ms * kMs;
      args.after_given = true;
    } else {
      std::fputs(usage, stderr);
      return 2;
    }
  }
  char shm_dir[] = "/tmp/tern-migbench-shm-XXXXXX";
  if (::mkdtemp(shm_dir) == nullptr) {
    std::perror("migration_bench: mkdtemp");
    return 1;
  }
  args.shm_dir = shm_dir;
  if (args.quick) {
    if (!args.sizes_given) args.sizes_mib = {1, 16};
    if (!args.before_given) args.before_ns = 300 * kMs;
    if (!args.after_given) args.after_ns = 300 * kMs;
    if (!args.links_given) args.links_mbps.clear();
  }
  const int rc = Run(args);
  std::error_code ignored;
  std::filesystem::remove_all(args.shm_dir, ignored);
  return rc;
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
