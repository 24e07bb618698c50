// rpc_bench's targets: one RpcTarget per way of making a request/response call (a raw
// shared-memory ring, raw TCP, gRPC, tern's transports), driven the same way by
// rpc_bench.cc for each payload size and placement. docs/benchmarks.md says what the
// rows mean.
//
// ---------------------------------------------------------------- adding a target
// 1. Write a class derived from RpcTarget (below) in a .cc file of bench/rpc/ —
//    tern's targets go in tern_targets.cc. Setup() starts the server side: in a child
//    process (ServerProcess::Start runs `rpc_bench --serve=<name> ARGS...`, which calls
//    your TargetInfo::serve in the child), or in this process (ServerPid() then returns
//    0, and the throughput per core counts this process's CPU only).
// 2. Implement RoundTrip() (one call, one request in flight: the latency rows) and, if
//    the target can keep several calls outstanding, RunInFlight() (the throughput rows).
//    The default RunInFlight() handles in_flight == 1 by calling RoundTrip() in a loop.
// 3. Add a TargetInfo to the TargetList in your Register*Targets() function: name (the
//    row label and the --targets= name), group ("limit", "tern" or "peer"), a one-line
//    description, the in-flight counts to measure, a factory, and the serve function.
//    Register*Targets() is called from rpc_bench.cc's main(); a new file needs a call
//    there and a line in CMakeLists.txt.
// 4. The summary table looks up the targets named kTernShm and kTernTcp (below), and
//    every target of the group "tern" for the throughput goal; any name works for the
//    per-payload tables.
//
// 5. A TCP target may also run across the emulated network (the `netns` rows): set
//    TargetInfo::netns, have the server listen on ServeArgs bind_address (the --bind=
//    argument), and in Setup() start the server with config.netns, listen/connect to
//    ServerAddress(config), and create the client's sockets inside RunAsClient(config, …).
//
// A target must echo: the reply has the request's size and bytes (the driver checks
// the bytes during warm-up and a sequence number in the first 8 bytes on every call).
// Everything is bounded: a call that does not complete within kCallTimeoutNs returns
// kDeadlineExceeded, and a server child dies with the benchmark (PR_SET_PDEATHSIG).
//
// Ownership: the driver owns each RpcTarget (one per target × payload × placement) and
// calls Setup() once, then RoundTrip()/RunInFlight() any number of times, then
// Teardown() once, then destroys it; the destructor must also clean up after a failed
// Setup(). Thread-safety: every method is called on the driver's main thread.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

// Declared only: this header is included next to gRPC's, whose absl thread annotations
// clash with core/mutex.h (which emu/ledger.h and netns_site.h include).
namespace tern::emu {
class Ledger;
}

namespace tern::bench::rpc {

class NetnsSite;  // netns_site.h

// Where the two ends run. kPinned: the client and every thread of the server on cpu0
// (same vCPU: every exchange is a context switch, nothing runs in parallel). kUnpinned:
// the scheduler decides. kCross: client on cpu0, server on cpu1 (every blocking
// exchange pays the VM's cross-vCPU wake-up, ~35 µs each way).
enum class Placement { kPinned, kUnpinned, kCross };
const char* PlacementName(Placement placement);  // "pinned", "unpinned", "cross"
// The CPU the client / the server runs on, or -1 for any.
int ClientCpu(Placement placement);
int ServerCpu(Placement placement);

// A call that takes longer than this fails with kDeadlineExceeded.
inline constexpr int64_t kCallTimeoutNs = 5'000'000'000;

// Names the summary table looks for (the tern rows of the goals).
inline constexpr const char* kTernShm = "tern_shm";
inline constexpr const char* kTernTcp = "tern_tcp";
// The raw ring with a sandboxed callee (limit_targets.cc): the headroom section's floor.
inline constexpr const char* kLimitShmV8 = "limit_shm_v8";

// The echo guest next to the benchmark: <build>/bench/rpc/rpc_bench → <build>/wasm/echo.wasm.
std::string EchoWasmNextTo(const std::string& self_binary);

struct TargetConfig {
  size_t payload_bytes = 64;  // request and reply size; at least 8
  Placement placement = Placement::kUnpinned;
  int max_in_flight = 1;    // the largest count RunInFlight() will be called with
  std::string self_binary;  // this rpc_bench binary (for ServerProcess::Start)
  // The `netns` rows: the server runs in the emulated network's server host, the client's
  // sockets are created in its client host (netns_site.h). Null: both on loopback.
  const NetnsSite* netns = nullptr;
};

// The address the server listens on and the client connects to: 127.0.0.1, or the
// server host's address on the emulated network.
std::string ServerAddress(const TargetConfig& config);
// The address the client's connections come from in the netns rows (the client host's),
// "127.0.0.1" on loopback.
std::string ClientAddress(const TargetConfig& config);
// Runs `fn` (which creates and connects the client's sockets) in the client host's
// network namespace for the netns rows, else simply runs it.
Status RunAsClient(const TargetConfig& config, const std::function<Status()>& fn);

class RpcTarget {
 public:
  virtual ~RpcTarget() = default;

  // Starts the server side and connects to it. Called with the calling thread (and the
  // whole process) already placed per config.placement; the driver re-applies the
  // placement to threads created here.
  virtual Status Setup(const TargetConfig& config) = 0;

  // One call: sends `request` and waits for the echo, copied into `reply` (both
  // config.payload_bytes long; they live until the call returns).
  virtual Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) = 0;

  // Keeps `in_flight` calls outstanding (each with the bytes of `request`) until
  // NowNs() >= deadline_ns, then waits for the outstanding ones; returns how many calls
  // completed. in_flight is one of TargetInfo::in_flight. The default implementation
  // supports in_flight == 1 only (RoundTrip in a loop).
  virtual Result<uint64_t> RunInFlight(int in_flight, std::span<const uint8_t> request,
                                       int64_t deadline_ns);

  // The server's process id, for its CPU time; 0 when the server runs in this process.
  virtual pid_t ServerPid() const = 0;

  // Stops the server; reports a server that failed.
  virtual Status Teardown() = 0;
};

// Arguments of `rpc_bench --serve=<name> --key=value...` as a map ("key" -> "value").
struct ServeArgs {
  std::map<std::string, std::string> values;
  // The value of `key` as an integer, or `fallback` when it is missing or malformed.
  int64_t Int(const std::string& key, int64_t fallback) const;
  // --bind=ADDR: the address a TCP server listens on (ServerAddress); 127.0.0.1 if absent.
  std::string bind_address() const;
};

struct TargetInfo {
  std::string name;                  // "limit_shm": row label and --targets= name
  std::string group;                 // "limit" | "tern" | "peer"
  std::string description;           // one line for the report
  std::vector<int> in_flight = {1};  // counts RunInFlight() is measured with
  std::function<std::unique_ptr<RpcTarget>()> make;
  // The server side, run in the child process `rpc_bench --serve=<name> ...`; returns
  // the process's exit code. Null when the target starts no child of rpc_bench.
  std::function<int(const ServeArgs&)> serve;
  // Also measured across the emulated network (a `netns` row after each loopback row)
  // when rpc_bench runs as root; the target must follow step 5 above.
  bool netns = false;
};

// The targets one rpc_bench run knows about, in registration order (= row order).
class TargetList {
 public:
  void Add(TargetInfo info) { targets_.push_back(std::move(info)); }
  const std::vector<TargetInfo>& all() const { return targets_; }
  // nullptr when there is no target of that name.
  const TargetInfo* Find(const std::string& name) const;

 private:
  std::vector<TargetInfo> targets_;
};

// limit_shm, limit_tcp (limit_targets.cc).
void RegisterLimitTargets(TargetList* list);
// grpc_unary_sync, grpc_callback_async (grpc_targets.cc).
void RegisterGrpcTargets(TargetList* list);
// tern's own transports (tern_targets.cc).
void RegisterTernTargets(TargetList* list);

// ------------------------------------------------------------- the server process

// A server child: `self_binary --serve=<target> args...`, its CPU affinity set for the
// placement before exec (so every thread it creates inherits it), the listed fds
// inherited under the same numbers, stdout a pipe on which it prints one line
// "ready <info>" once it serves (ReportReady), stderr shared with rpc_bench. It dies
// with rpc_bench (PR_SET_PDEATHSIG) and after kServeMaxSeconds in any case.
// With a NetnsSite, the child is started by emu::Spawn in the site's server namespace
// and recorded in its ledger (so the site's teardown stops it even if rpc_bench
// crashed); its affinity, PR_SET_PDEATHSIG and time limit are then applied by the child
// itself (--cpu=, --parent=, --max-seconds=: PrepareServeProcess), before it starts any
// thread; pass_fds must be empty (Spawn closes every other fd).
// Thread-safety: one thread uses a ServerProcess.
class ServerProcess {
 public:
  static constexpr int kServeMaxSeconds = 300;

  // Starts it and waits (up to 15 s) for its "ready" line.
  static Result<std::unique_ptr<ServerProcess>> Start(const std::string& self_binary,
                                                      const std::string& target,
                                                      Placement placement,
                                                      const std::vector<std::string>& args,
                                                      const std::vector<int>& pass_fds = {},
                                                      const NetnsSite* site = nullptr);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The text after "ready " (a port number, or empty).
  const std::string& ready_info() const { return ready_info_; }
  // True while the child has not exited.
  bool Alive() const;
  // SIGTERM, up to 2 s, then SIGKILL. An error if it had exited by itself with a
  // failure before. Idempotent.
  Status Stop();

 private:
  explicit ServerProcess(pid_t pid) : pid_(pid) {}
  static Result<std::unique_ptr<ServerProcess>> SpawnInNetns(const std::string& self_binary,
                                                             const std::string& target,
                                                             Placement placement,
                                                             const std::vector<std::string>& args,
                                                             const NetnsSite& site);
  Status Reap();  // Stop() without the ledger
  pid_t pid_;
  emu::Ledger* ledger_ = nullptr;  // the site's, for a spawned child: forgotten when reaped
  uint64_t start_time_ = 0;        // with pid_, its emu::ProcessRecord in the ledger
  std::string exe_;
  bool reaped_ = false;
  std::string ready_info_;
};

// In the server child: prints "ready <info>" on stdout (the pipe ServerProcess reads).
void ReportReady(const std::string& info);

// In the server child, before anything else: applies --cpu=N (-1: every CPU),
// --parent=PID (PR_SET_PDEATHSIG; exits at once if PID is no longer its parent) and
// --max-seconds=S (alarm), where present. Only spawned children get them.
void PrepareServeProcess(const ServeArgs& args);

}  // namespace tern::bench::rpc
