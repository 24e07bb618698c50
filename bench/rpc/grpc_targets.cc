// The peer: gRPC C++ 1.51 (Debian's libgrpc++) unary echo over 127.0.0.1, insecure
// channel, default options (but no HTTP proxy lookup and no 4 MiB message limit), server
// in a child process.
//
//   grpc_unary_sync      sync server (Echo::Service) + blocking stub; one call in flight;
//                        also across the emulated network (netns rows)
//   grpc_callback_async  callback server (Echo::CallbackService, DefaultReactor) + async
//                        client on a CompletionQueue polled by the calling thread;
//                        1 call in flight (latency) and 16 (throughput)
//
// The request and reply messages are reused between calls (no allocation of our own
// per call); the payload is copied into the request and out of the reply, as for every
// other target.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/bench_util.h"
#include "echo.grpc.pb.h"
#include "rpc_target.h"

namespace tern::bench::rpc {
namespace {

std::chrono::system_clock::time_point CallDeadline() {
  return std::chrono::system_clock::now() + std::chrono::nanoseconds(kCallTimeoutNs);
}

Status FromGrpc(const grpc::Status& s, const char* what) {
  return UnavailableError(std::string(what) + ": gRPC status " +
                          std::to_string(static_cast<int>(s.error_code())) + " " +
                          s.error_message());
}

Status CheckReply(const EchoMessage& rep, std::span<uint8_t> reply) {
  if (rep.payload().size() != reply.size()) return DataLossError("reply of the wrong size");
  std::memcpy(reply.data(), rep.payload().data(), reply.size());
  return Status::Ok();
}

// Starts the server child for `name` and connects a channel to it.
class GrpcTargetBase : public RpcTarget {
 public:
  explicit GrpcTargetBase(std::string name) : name_(std::move(name)) {}

  Status Setup(const TargetConfig& config) override {
    std::vector<std::string> serve_args = {"--bind=" + ServerAddress(config)};
    if (config.netns != nullptr) {
      serve_args.push_back("--expect-peer=" + ClientAddress(config));
    }
    TERN_ASSIGN_OR_RETURN(server_, ServerProcess::Start(config.self_binary, name_, config.placement,
                                                        serve_args, {}, config.netns));
    const std::string where = ServerAddress(config) + ":" + server_->ready_info();
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
    args.SetMaxReceiveMessageSize(-1);  // payloads above gRPC's 4 MiB default
    // The connection is made while this thread is in the client host's namespace (netns
    // rows); the server refuses calls from any other address (--expect-peer), so a
    // connection gRPC made from another thread (in the root namespace) fails loudly.
    return RunAsClient(config, [&]() -> Status {
      channel_ = grpc::CreateCustomChannel(where, grpc::InsecureChannelCredentials(), args);
      if (!channel_->WaitForConnected(std::chrono::system_clock::now() +
                                      std::chrono::seconds(10))) {
        return UnavailableError("gRPC channel to " + where + " did not connect within 10 s");
      }
      stub_ = Echo::NewStub(channel_);
      return Status::Ok();
    });
  }

  pid_t ServerPid() const override { return server_ ? server_->pid() : 0; }

  Status Teardown() override {
    stub_.reset();
    channel_.reset();
    return server_ ? server_->Stop() : Status::Ok();
  }

 protected:
  const std::string name_;
  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Echo::Stub> stub_;
  EchoMessage req_;
  EchoMessage rep_;
};

class GrpcUnarySync final : public GrpcTargetBase {
 public:
  GrpcUnarySync() : GrpcTargetBase("grpc_unary_sync") {}

  Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(CallDeadline());
    req_.set_payload(request.data(), request.size());
    grpc::Status s = stub_->Call(&ctx, req_, &rep_);
    if (!s.ok()) return FromGrpc(s, "Echo.Call");
    return CheckReply(rep_, reply);
  }
};

class GrpcCallbackAsync final : public GrpcTargetBase {
 public:
  GrpcCallbackAsync() : GrpcTargetBase("grpc_callback_async") {}
  ~GrpcCallbackAsync() override { DrainQueue(); }

  Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(CallDeadline());
    req_.set_payload(request.data(), request.size());
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<EchoMessage>> rpc =
        stub_->AsyncCall(&ctx, req_, &cq_);
    rpc->Finish(&rep_, &status, &ctx);
    void* tag = nullptr;
    bool ok = false;
    if (!cq_.Next(&tag, &ok) || tag != &ctx || !ok) {
      return InternalError("completion queue returned an unexpected event");
    }
    if (!status.ok()) return FromGrpc(status, "async Echo.Call");
    return CheckReply(rep_, reply);
  }

  Result<uint64_t> RunInFlight(int in_flight, std::span<const uint8_t> request,
                               int64_t deadline_ns) override {
    struct Slot {
      std::unique_ptr<grpc::ClientContext> ctx;
      std::unique_ptr<grpc::ClientAsyncResponseReader<EchoMessage>> rpc;
      EchoMessage reply;
      grpc::Status status;
    };
    std::vector<Slot> slots(static_cast<size_t>(in_flight));
    req_.set_payload(request.data(), request.size());
    auto start = [&](Slot& s) {
      s.ctx = std::make_unique<grpc::ClientContext>();
      s.ctx->set_deadline(CallDeadline());
      s.rpc = stub_->AsyncCall(s.ctx.get(), req_, &cq_);
      s.rpc->Finish(&s.reply, &s.status, &s);
    };
    for (Slot& s : slots) start(s);
    int outstanding = in_flight;
    uint64_t done = 0;
    Status failed;
    while (outstanding > 0) {
      void* tag = nullptr;
      bool ok = false;
      if (!cq_.Next(&tag, &ok)) return InternalError("completion queue shut down");
      Slot* s = static_cast<Slot*>(tag);
      if (failed.ok() && (!ok || !s->status.ok() || s->reply.payload().size() != request.size())) {
        failed = !ok               ? InternalError("completion with ok=false")
                 : !s->status.ok() ? FromGrpc(s->status, "async Echo.Call")
                                   : DataLossError("reply of the wrong size");
        for (Slot& other : slots) other.ctx->TryCancel();  // drain the rest, then fail
      }
      ++done;
      if (failed.ok() && NowNs() < deadline_ns) {
        start(*s);
      } else {
        --outstanding;
      }
    }
    if (!failed.ok()) return failed;
    return done;
  }

  Status Teardown() override {
    Status st = GrpcTargetBase::Teardown();
    DrainQueue();
    return st;
  }

 private:
  void DrainQueue() {
    if (drained_) return;
    drained_ = true;
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  grpc::CompletionQueue cq_;
  bool drained_ = false;
};

// ------------------------------------------------------------------ servers

class SyncEcho final : public Echo::Service {
 public:
  // expect_peer: "" or the only client address served (the netns rows' check that the
  // client's connection comes from the client host).
  explicit SyncEcho(std::string expect_peer) : expect_peer_(std::move(expect_peer)) {}

  grpc::Status Call(grpc::ServerContext* ctx, const EchoMessage* req, EchoMessage* rep) override {
    if (!expect_peer_.empty() && !peer_checked_.load(std::memory_order_relaxed)) {
      const std::string peer = ctx->peer();  // "ipv4:10.1.2.3:45678"
      if (peer.rfind("ipv4:" + expect_peer_ + ":", 0) != 0) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "call from " + peer + ", not from the client host " + expect_peer_);
      }
      peer_checked_.store(true, std::memory_order_relaxed);
    }
    rep->set_payload(req->payload());
    return grpc::Status::OK;
  }

 private:
  const std::string expect_peer_;
  std::atomic<bool> peer_checked_{false};  // one channel, one connection: check it once
};

class CallbackEcho final : public Echo::CallbackService {
  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* ctx, const EchoMessage* req,
                                 EchoMessage* rep) override {
    rep->set_payload(req->payload());
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// Serves until SIGTERM (or until rpc_bench dies).
int ServeGrpc(grpc::Service* service, const ServeArgs& args) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(args.bind_address() + ":0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(-1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "gRPC server: could not listen on %s\n", args.bind_address().c_str());
    return 1;
  }
  ReportReady(std::to_string(port));
  server->Wait();
  return 0;
}

}  // namespace

void RegisterGrpcTargets(TargetList* list) {
  list->Add({.name = "grpc_unary_sync",
             .group = "peer",
             .description = "gRPC 1.51 unary echo (bytes): sync server, blocking stub, "
                            "1 call in flight",
             .in_flight = {1},
             .make = [] { return std::make_unique<GrpcUnarySync>(); },
             .serve =
                 [](const ServeArgs& args) {
                   auto it = args.values.find("expect-peer");
                   SyncEcho service(it == args.values.end() ? "" : it->second);
                   return ServeGrpc(&service, args);
                 },
             .netns = true});
  list->Add({.name = "grpc_callback_async",
             .group = "peer",
             .description = "gRPC 1.51 unary echo (bytes): callback server, async client on a "
                            "CompletionQueue, 1 and 16 calls in flight",
             .in_flight = {1, 16},
             .make = [] { return std::make_unique<GrpcCallbackAsync>(); },
             .serve =
                 [](const ServeArgs& args) {
                   CallbackEcho service;
                   return ServeGrpc(&service, args);
                 }});
}

}  // namespace tern::bench::rpc
