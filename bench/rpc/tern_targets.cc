// tern's own RPC paths as rpc_bench targets (group "tern"): a native client calling the
// `echo` guest (examples/echo, handler "echo") in a real tern agent running in a child
// process (`rpc_bench --serve=tern_shm|tern_tcp`: Agent + AgentServer, one worker, the guest in
// V8). The reply is the guest's copy of the request, so every call crosses the sandbox
// twice besides the transport.
//
//   tern_shm   tern's shared-memory transport (transport/shm.h): the client's frames go
//              into the ring of the connection the agent's worker owns, the worker runs
//              the guest and writes the reply into the other ring. The client spins ~50 µs
//              before sleeping on its doorbell (as limit_shm does), and not at all in the
//              pinned run. Like limit_shm's client, it copies the request from its buffer
//              into the ring (ShmConnection::Send(head, payload)) and a large reply from
//              the ring into its buffer (a payload sink); a small reply comes in a Frame
//              and is copied from there.
//   tern_tcp   tern's frame protocol on 127.0.0.1 through FrameClient::CallInto (blocking
//              reads, as limit_tcp): the request is written from the caller's buffer and a
//              large reply received into it, as limit_tcp's writev/readv do; in the agent
//              the worker that runs the guest owns the socket. Also across the emulated
//              network (netns rows: the agent in the server host's namespace).
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <memory>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "common/bench_util.h"
#include "core/clock.h"
#include "core/cpu.h"
#include "core/file.h"
#include "core/manifest.h"
#include "rpc_target.h"
#include "transport/frame_client.h"
#include "transport/shm.h"
#include "wasm/engine.h"

namespace tern::bench::rpc {
namespace {

using transport::Frame;
using transport::FrameType;

int ServeTernAgent(const ServeArgs& args) {
  auto it = args.values.find("wasm");
  if (it == args.values.end()) {
    std::fprintf(stderr, "tern_agent server: --wasm=PATH missing\n");
    return 2;
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  Result<std::string> wasm = ReadFile(it->second);
  Result<Manifest> m = LoadManifest(std::string(TERN_BENCH_SOURCE_DIR) +
                                    "/examples/echo/manifest.yaml");
  if (!wasm.ok() || !m.ok()) {
    std::fprintf(stderr, "tern_agent server: %s\n",
                 (wasm.ok() ? m.status() : wasm.status()).ToString().c_str());
    return 1;
  }
  m->limits.memory_mib = 64;
  m->limits.request_kib = 1024;
  m->limits.response_kib = 1024;
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine({});
  if (!engine.ok()) return 1;
  agent::AgentOptions ao;
  ao.device = "bench";
  ao.workers = 1;
  agent::TuneMallocForAgentProcess();  // as `tern agent` does
  Result<std::unique_ptr<agent::Agent>> a = agent::Agent::Create(ao, engine->get());
  if (!a.ok()) return 1;
  Result<agent::ServiceStatus> dep = (*a)->Deploy(*m, *wasm);
  if (!dep.ok()) {
    std::fprintf(stderr, "tern_agent server: deploy: %s\n", dep.status().ToString().c_str());
    return 1;
  }
  char tmpl[] = "/tmp/tern-rpc-bench.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  agent::AgentServerOptions so;
  so.host = args.bind_address();
  so.frame_port = 0;
  so.admin_port = 0;
  so.shm_path = dir + "/shm.sock";
  Result<std::unique_ptr<agent::AgentServer>> server = agent::AgentServer::Start(a->get(), so);
  if (!server.ok()) {
    std::fprintf(stderr, "tern_agent server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  ReportReady(fmt::format("{} {} {}", (*server)->frame_port(), so.shm_path, dep->instances[0]));
  int sig = 0;
  sigwait(&stop, &sig);
  server->reset();
  a->reset();
  ::unlink(so.shm_path.c_str());
  ::rmdir(dir.c_str());
  return 0;
}

struct AgentInfo {
  int port = 0;
  std::string shm_path;
  std::string instance;
};

// `target` names the registered target whose serve function (ServeTernAgent) runs.
Result<AgentInfo> StartAgent(const TargetConfig& config, const char* target,
                             std::unique_ptr<ServerProcess>* out) {
  TERN_ASSIGN_OR_RETURN(*out, ServerProcess::Start(config.self_binary, target, config.placement,
                                                   {"--wasm=" + EchoWasmNextTo(config.self_binary),
                                                    "--bind=" + ServerAddress(config)},
                                                   {}, config.netns));
  AgentInfo info;
  char path[PATH_MAX], inst[256];
  if (std::sscanf((*out)->ready_info().c_str(), "%d %4095s %255s", &info.port, path, inst) != 3) {
    return InternalError("tern_agent server: bad ready line '" + (*out)->ready_info() + "'");
  }
  info.shm_path = path;
  info.instance = inst;
  return info;
}

// The request's header; its payload stays in the caller's buffer (AsChars), which the
// clients send from: ShmConnection::Send copies it once, into the ring, and
// FrameClient::Call writes a large one to the socket from there (as limit_tcp's writev).
Frame EchoHead(uint64_t id) {
  Frame f;
  f.type = FrameType::kInvoke;
  f.request_id = id;
  f.service = "echo";
  f.handler = "echo";
  return f;
}

std::string_view AsChars(std::span<const uint8_t> bytes) {
  return std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Frame EchoFrame(uint64_t id, std::span<const uint8_t> request) {
  Frame f = EchoHead(id);
  f.payload.assign(AsChars(request));
  return f;
}

class TernShm final : public RpcTarget {
 public:
  Status Setup(const TargetConfig& config) override {
    spin_ns_ = config.placement == Placement::kPinned ? 0 : 50'000;
    TERN_ASSIGN_OR_RETURN(AgentInfo info, StartAgent(config, kTernShm, &server_));
    TERN_ASSIGN_OR_RETURN(transport::Doorbell bell, transport::Doorbell::Create());
    bell_ = std::make_unique<transport::Doorbell>(std::move(bell));
    // tern's default rings (2 MiB per direction, as limit_shm's at 64 KiB).
    TERN_ASSIGN_OR_RETURN(conn_, transport::ShmConnect(info.shm_path, *bell_, info.instance));
    return Status::Ok();
  }

  Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) override {
    // A large reply is copied from the ring straight into `reply` (as limit_shm's Pop).
    conn_->SetPayloadSink(next_id_ + 1,
                          std::span<char>(reinterpret_cast<char*>(reply.data()), reply.size()));
    TERN_RETURN_IF_ERROR(conn_->Send(EchoHead(++next_id_), AsChars(request)));
    frames_.clear();
    Status st = WaitFor(1, NowNs() + kCallTimeoutNs);
    const size_t in_reply = conn_->PayloadInSink();
    conn_->ClearPayloadSink();
    TERN_RETURN_IF_ERROR(st);
    Frame& f = frames_[0];
    if (f.type != FrameType::kReply) return transport::ErrorFrameStatus(f);
    if (in_reply != SIZE_MAX) {
      return in_reply == reply.size() ? Status::Ok() : DataLossError("reply of the wrong size");
    }
    if (f.payload.size() != reply.size()) return DataLossError("reply of the wrong size");
    std::memcpy(reply.data(), f.payload.data(), reply.size());
    return Status::Ok();
  }

  Result<uint64_t> RunInFlight(int in_flight, std::span<const uint8_t> request,
                               int64_t deadline_ns) override {
    uint64_t done = 0;
    int outstanding = 0;
    while (outstanding < in_flight) {
      TERN_RETURN_IF_ERROR(conn_->Send(EchoHead(++next_id_), AsChars(request)));
      ++outstanding;
    }
    while (outstanding > 0) {
      frames_.clear();
      TERN_RETURN_IF_ERROR(WaitFor(1, NowNs() + kCallTimeoutNs));
      for (const Frame& f : frames_) {
        if (f.type != FrameType::kReply) return transport::ErrorFrameStatus(f);
        --outstanding;
        ++done;
        if (NowNs() < deadline_ns) {
          TERN_RETURN_IF_ERROR(conn_->Send(EchoHead(++next_id_), AsChars(request)));
          ++outstanding;
        }
      }
    }
    return done;
  }

  pid_t ServerPid() const override { return server_ ? server_->pid() : 0; }

  Status Teardown() override {
    if (conn_) conn_->Close();
    conn_.reset();
    return server_ ? server_->Stop() : Status::Ok();
  }

 private:
  // Polls until at least `n` frames are in frames_: spins spin_ns_, then sleeps on the
  // doorbell (the agent's worker rings it after writing a reply). While spinning it
  // reads the clock on every 16th poll only (a read is ~60 ns here, longer than a
  // poll of an empty ring; limit_shm's spin reads none).
  Status WaitFor(size_t n, int64_t deadline) {
    int64_t spin_until = NowNs() + spin_ns_;
    for (uint32_t polls = 1;; ++polls) {
      TERN_ASSIGN_OR_RETURN(size_t got, conn_->Poll(&frames_));
      (void)got;
      if (frames_.size() >= n) return Status::Ok();
      if (spin_ns_ > 0 && polls % 16 != 0) {
        CpuRelax();
        continue;
      }
      int64_t now = NowNs();
      if (now >= deadline) return DeadlineExceededError("tern_shm: no reply");
      if (now < spin_until) {
        CpuRelax();
        continue;
      }
      bell_->PrepareSleep();
      if (conn_->HasWork()) {
        bell_->CancelSleep();
        continue;
      }
      const int fd = conn_->socket_fd();
      TERN_RETURN_IF_ERROR(bell_->Sleep(10'000'000, std::span<const int>(&fd, 1)));
    }
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<transport::Doorbell> bell_;
  std::unique_ptr<transport::ShmConnection> conn_;
  std::vector<Frame> frames_;
  uint64_t next_id_ = 0;
  int64_t spin_ns_ = 0;
};

class TernTcp final : public RpcTarget {
 public:
  Status Setup(const TargetConfig& config) override {
    TERN_ASSIGN_OR_RETURN(AgentInfo info, StartAgent(config, kTernTcp, &server_));
    return RunAsClient(config, [&]() -> Status {
      TERN_ASSIGN_OR_RETURN(client_, transport::FrameClient::Connect(
                                         ServerAddress(config), static_cast<uint16_t>(info.port)));
      return Status::Ok();
    });
  }

  Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) override {
    TERN_ASSIGN_OR_RETURN(
        size_t n, client_->CallInto(EchoHead(0), AsChars(request),
                                    std::span<char>(reinterpret_cast<char*>(reply.data()), reply.size()),
                                    std::chrono::nanoseconds(kCallTimeoutNs)));
    if (n != reply.size()) return DataLossError("reply of the wrong size");
    return Status::Ok();
  }

  Result<uint64_t> RunInFlight(int in_flight, std::span<const uint8_t> request,
                               int64_t deadline_ns) override {
    if (in_flight == 1) return RpcTarget::RunInFlight(1, request, deadline_ns);
    uint64_t done = 0;
    int outstanding = 0;
    while (outstanding < in_flight) {
      TERN_RETURN_IF_ERROR(client_->Send(EchoFrame(0, request)).status());
      ++outstanding;
    }
    while (outstanding > 0) {
      TERN_ASSIGN_OR_RETURN(Frame f, client_->Receive(std::chrono::nanoseconds(kCallTimeoutNs)));
      if (f.type != FrameType::kReply) return transport::ErrorFrameStatus(f);
      --outstanding;
      ++done;
      if (NowNs() < deadline_ns) {
        TERN_RETURN_IF_ERROR(client_->Send(EchoFrame(0, request)).status());
        ++outstanding;
      }
    }
    return done;
  }

  pid_t ServerPid() const override { return server_ ? server_->pid() : 0; }

  Status Teardown() override {
    client_.reset();
    return server_ ? server_->Stop() : Status::Ok();
  }

 private:
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<transport::FrameClient> client_;
};

}  // namespace

void RegisterTernTargets(TargetList* list) {
  list->Add({.name = kTernShm,
             .group = "tern",
             .description = "tern shared memory: native client → agent (1 worker) → echo guest "
                            "in V8 → reply ring; client spins 50 µs then sleeps (pinned: no spin); "
                            "request copied from, large reply into the caller's buffer",
             .in_flight = {1, 16},
             .make = [] { return std::make_unique<TernShm>(); },
             .serve = ServeTernAgent});
  list->Add({.name = kTernTcp,
             .group = "tern",
             .description = "tern TCP on 127.0.0.1: FrameClient::CallInto (blocking; request "
                            "from, reply into the caller's buffer) → agent worker (owns the "
                            "socket) → echo guest → worker",
             .in_flight = {1, 16},
             .make = [] { return std::make_unique<TernTcp>(); },
             .serve = ServeTernAgent,
             .netns = true});
}

}  // namespace tern::bench::rpc
