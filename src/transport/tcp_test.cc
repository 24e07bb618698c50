// FrameServer + FrameClient over 127.0.0.1 (port 0).
#include "transport/tcp.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/mutex.h"
#include "transport/frame_client.h"

namespace tern::transport {
namespace {

using namespace std::chrono_literals;

template <typename Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds timeout = 10000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

Frame Invoke(std::string handler, std::string payload) {
  Frame f;
  f.type = FrameType::kInvoke;
  f.tenant = "t1";
  f.service = "svc";
  f.handler = std::move(handler);
  f.payload = std::move(payload);
  return f;
}

// A FrameServer on its own loop thread. Handlers, by frame handler name:
//   echo   reply with the same frame (type kReply)
//   async  reply from a worker thread through FrameConnectionRef
//   silent never reply
//   close  close the connection
//   fail   reply with a kError (kNotFound)
//   flood  from a worker thread, send 400 replies of 64 KiB
//   when   reply with the frame's received_ns() in decimal
class FrameServerTest : public ::testing::Test {
 protected:
  void StartServer(FrameServerOptions options = {}) {
    auto t = EventLoopThread::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    loop_thread_ = std::move(t).value();
    auto s = FrameServer::Start(
        loop_thread_->loop(), options,
        [this](FrameConnection* c, Frame f) { Handle(c, std::move(f)); },
        [this](FrameConnection*, const Status& reason) {
          MutexLock lock(&mu_);
          closes_.push_back(reason);
        });
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(s).value();
    ASSERT_NE(server_->port(), 0);
    loop_thread_->Start();
  }

  void TearDown() override {
    if (loop_thread_) loop_thread_->Stop();  // no new workers after this
    {
      MutexLock lock(&mu_);
      for (auto& w : workers_) w.join();
      workers_.clear();
    }
    server_.reset();
    loop_thread_.reset();
  }

  void Handle(FrameConnection* c, Frame f) {
    if (f.handler == "echo") {
      f.type = FrameType::kReply;
      Status s = c->Send(f);
      EXPECT_TRUE(s.ok()) << s;
    } else if (f.handler == "async") {
      FrameConnectionRef ref = c->ref();
      MutexLock lock(&mu_);
      workers_.emplace_back([ref, f]() mutable {
        f.type = FrameType::kReply;
        f.payload += "!";
        ref.Send(std::move(f));
      });
    } else if (f.handler == "when") {
      f.type = FrameType::kReply;
      f.payload = std::to_string(c->received_ns());
      Status s = c->Send(f);
      EXPECT_TRUE(s.ok()) << s;
    } else if (f.handler == "close") {
      c->Close();
    } else if (f.handler == "fail") {
      Status s = c->Send(MakeErrorFrame(f.request_id, NotFoundError("no handler 'fail'")));
      EXPECT_TRUE(s.ok()) << s;
    } else if (f.handler == "flood") {
      FrameConnectionRef ref = c->ref();
      MutexLock lock(&mu_);
      workers_.emplace_back([ref, f]() mutable {
        f.type = FrameType::kReply;
        f.payload.assign(64 << 10, 'f');
        for (int i = 0; i < 400; ++i) ref.Send(f);
      });
    }
    // "silent": nothing
  }

  std::unique_ptr<FrameClient> Client() {
    auto c = FrameClient::Connect("127.0.0.1", server_->port(), 5s);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  size_t ConnectionCount() {
    size_t n = 0;
    loop_thread_->loop()->RunSync([&] { n = server_->connection_count(); });
    return n;
  }

  std::vector<Status> Closes() {
    MutexLock lock(&mu_);
    return closes_;
  }

  std::unique_ptr<EventLoopThread> loop_thread_;
  std::unique_ptr<FrameServer> server_;
  Mutex mu_;
  std::vector<std::thread> workers_ GUARDED_BY(mu_);
  std::vector<Status> closes_ GUARDED_BY(mu_);
};

TEST_F(FrameServerTest, EchoRoundTripKeepsAllFields) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  Frame req = Invoke("echo", "payload-1");
  req.epoch = 42;
  req.budget_us = 1234;
  Result<Frame> r = c->Call(req, 5s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->type, FrameType::kReply);
  EXPECT_EQ(r->request_id, 1u);
  EXPECT_EQ(r->epoch, 42u);
  EXPECT_EQ(r->budget_us, 1234u);
  EXPECT_EQ(r->tenant, "t1");
  EXPECT_EQ(r->service, "svc");
  EXPECT_EQ(r->handler, "echo");
  EXPECT_EQ(r->payload, "payload-1");
  // Empty payload.
  r = c->Call(Invoke("echo", ""), 5s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_id, 2u);
  EXPECT_EQ(r->payload, "");
}

TEST_F(FrameServerTest, PingIsAnsweredByTheServer) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  Result<std::chrono::nanoseconds> rtt = c->Ping(5s);
  ASSERT_TRUE(rtt.ok()) << rtt.status();
  EXPECT_GT(rtt->count(), 0);
}

// With date_frames, a frame that arrived while the loop was busy is dated by its arrival
// (the kernel's stamp), not by the read after the loop got free; without it, 0.
TEST_F(FrameServerTest, DatedFramesCarryTheirArrivalNotTheirRead) {
  FrameServerOptions options;
  options.connection.date_frames = true;
  StartServer(options);
  auto c = Client();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Ping(5s).ok());  // accepted: the server's socket asks for stamps
  std::atomic<bool> blocking{false};
  std::atomic<int64_t> unblocked_ns{0};
  loop_thread_->loop()->Post([&] {
    blocking = true;
    std::this_thread::sleep_for(100ms);
    unblocked_ns = MonoNanos();
  });
  ASSERT_TRUE(WaitUntil([&] { return blocking.load(); }));
  const int64_t sent_ns = MonoNanos();
  Result<Frame> r = c->Call(Invoke("when", ""), 5s);
  ASSERT_TRUE(r.ok()) << r.status();
  const int64_t received_ns = std::stoll(r->payload);
  EXPECT_GE(received_ns, sent_ns);
  EXPECT_LT(received_ns, unblocked_ns.load()) << "dated by the read, after the loop's stall";

  // Off by default.
  TearDown();
  StartServer();
  c = Client();
  ASSERT_NE(c, nullptr);
  r = c->Call(Invoke("when", ""), 5s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->payload, "0");
}

TEST_F(FrameServerTest, LargePayloadEcho) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  std::string big(16 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 + 7);
  Result<Frame> r = c->Call(Invoke("echo", big), 30s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->payload == big);
}

TEST_F(FrameServerTest, CallIntoSendsFromAndReceivesIntoTheCallersBuffers) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  std::vector<char> reply(1 << 20);
  for (size_t size : {size_t{100}, size_t{64} << 10, size_t{64} << 10, size_t{700} << 10}) {
    std::string req(size, '\0');
    for (size_t i = 0; i < size; ++i) req[i] = static_cast<char>(i * 17 + size);
    Result<size_t> n = c->CallInto(Invoke("echo", ""), req, reply, 10s);
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, size);
    EXPECT_EQ(std::string_view(reply.data(), size), req) << size;
  }
  // A reply that does not fit: an error, and the connection still works.
  std::string req(300 << 10, 'q');
  Result<size_t> n = c->CallInto(Invoke("echo", ""), req, std::span<char>(reply.data(), 1000), 10s);
  EXPECT_EQ(n.status().code(), StatusCode::kResourceExhausted);
  n = c->CallInto(Invoke("echo", ""), "again", reply, 10s);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(std::string_view(reply.data(), *n), "again");
  // The plain Call with a borrowed payload.
  Result<Frame> f = c->Call(Invoke("echo", "ignored"), req, 10s);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->payload, req);
}

TEST_F(FrameServerTest, PipelinedSendThenReceive) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  std::set<uint64_t> ids;
  for (int i = 0; i < 500; ++i) {
    Result<uint64_t> id = c->Send(Invoke(i % 2 ? "echo" : "async", std::to_string(i)));
    ASSERT_TRUE(id.ok()) << id.status();
    ids.insert(*id);
  }
  EXPECT_EQ(c->in_flight(), 500u);
  for (int i = 0; i < 500; ++i) {
    Result<Frame> f = c->Receive(10s);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(ids.erase(f->request_id), 1u) << f->request_id;
  }
  EXPECT_TRUE(ids.empty());
  EXPECT_EQ(c->in_flight(), 0u);
}

TEST_F(FrameServerTest, CallManyKeepsAWindowAndReturnsInOrder) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  std::vector<Frame> reqs;
  for (int i = 0; i < 5000; ++i) {
    reqs.push_back(Invoke(i % 10 == 0 ? "fail" : "echo", std::to_string(i)));
  }
  reqs[77].handler.assign(kMaxNameBytes + 1, 'h');  // cannot be encoded
  auto results = c->CallMany(std::move(reqs), 64, 30s);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 5000u);
  for (int i = 0; i < 5000; ++i) {
    const Result<Frame>& r = (*results)[i];
    if (i == 77) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    } else if (i % 10 == 0) {
      EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
    } else {
      ASSERT_TRUE(r.ok()) << i << ": " << r.status();
      EXPECT_EQ(r->payload, std::to_string(i));
    }
  }
}

TEST_F(FrameServerTest, ManyRequestsWithoutReadingDoNotDeadlock) {
  // 32 MiB of requests queued before reading any answer: the server pauses reading
  // while its replies back up, and the client keeps reading while it writes.
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  const std::string payload(16 << 10, 'p');
  for (int i = 0; i < 2000; ++i) ASSERT_TRUE(c->Send(Invoke("echo", payload)).ok());
  for (int i = 0; i < 2000; ++i) {
    Result<Frame> f = c->Receive(30s);
    ASSERT_TRUE(f.ok()) << i << ": " << f.status();
    ASSERT_EQ(f->payload.size(), payload.size());
  }
}

TEST_F(FrameServerTest, ConcurrentClients) {
  StartServer();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto c = FrameClient::Connect("127.0.0.1", server_->port(), 5s);
      ASSERT_TRUE(c.ok()) << c.status();
      for (int i = 0; i < 300; ++i) {
        std::string p = std::to_string(t) + ":" + std::to_string(i);
        Result<Frame> r = (*c)->Call(Invoke(i % 3 ? "echo" : "async", p), 10s);
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(r->payload, i % 3 ? p : p + "!");
        ++ok;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok, 1200);
}

TEST_F(FrameServerTest, GarbageClientIsDisconnectedWhileOthersKeepWorking) {
  StartServer();
  auto good = Client();
  ASSERT_NE(good, nullptr);
  ASSERT_TRUE(good->Call(Invoke("echo", "before"), 5s).ok());

  auto raw = ConnectTcp("127.0.0.1", server_->port(), 5s);
  ASSERT_TRUE(raw.ok()) << raw.status();
  const int64_t deadline = MonoNanos() + 10'000'000'000;
  ASSERT_TRUE(WriteAll(raw->get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", deadline).ok());
  // The server answers with a kError frame for the whole connection, then closes.
  std::string got;
  char buf[4096];
  for (;;) {
    Result<size_t> n = ReadSome(raw->get(), buf, sizeof(buf), deadline);
    ASSERT_TRUE(n.ok()) << n.status();
    if (*n == 0) break;
    got.append(buf, *n);
  }
  raw->reset();  // the server lingers until we close our side too
  FrameDecoder d;
  d.Feed(got);
  Frame err;
  Result<bool> r = d.Next(&err);
  ASSERT_TRUE(r.ok() && *r) << "server sent " << got.size() << " bytes";
  EXPECT_EQ(err.type, FrameType::kError);
  EXPECT_EQ(err.request_id, 0u);
  EXPECT_EQ(err.status, StatusCode::kInvalidArgument);
  EXPECT_NE(err.payload.find("bad magic"), std::string::npos) << err.payload;

  Result<Frame> after = good->Call(Invoke("echo", "after"), 5s);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->payload, "after");
  EXPECT_TRUE(WaitUntil([&] { return ConnectionCount() == 1; }));
}

TEST_F(FrameServerTest, ConnectionLimitRejectsWithResourceExhausted) {
  FrameServerOptions options;
  options.max_connections = 1;
  StartServer(options);
  auto first = Client();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->Call(Invoke("echo", "x"), 5s).ok());
  auto second = Client();
  ASSERT_NE(second, nullptr);
  Result<Frame> r = second->Call(Invoke("echo", "y"), 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status();
  EXPECT_EQ(second->error().code(), StatusCode::kResourceExhausted);
  // Once the first client leaves, a new one gets in.
  first.reset();
  ASSERT_TRUE(WaitUntil([&] { return ConnectionCount() == 0; }));
  auto third = Client();
  ASSERT_NE(third, nullptr);
  EXPECT_TRUE(third->Call(Invoke("echo", "z"), 5s).ok());
}

TEST_F(FrameServerTest, ConnectionRefusedIsUnavailable) {
  auto l = TcpListener::Listen("127.0.0.1", 0);
  ASSERT_TRUE(l.ok()) << l.status();
  uint16_t port = (*l)->port();
  l->reset();  // nobody listens there any more
  auto c = FrameClient::Connect("127.0.0.1", port, 5s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status();
}

TEST_F(FrameServerTest, TimeoutLeavesTheConnectionUsable) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  Result<Frame> r = c->Call(Invoke("silent", ""), 50ms);
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status();
  r = c->Call(Invoke("echo", "still here"), 5s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->payload, "still here");
}

TEST_F(FrameServerTest, ErrorRepliesBecomeStatuses) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  Result<Frame> r = c->Call(Invoke("fail", ""), 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), "no handler 'fail'");
  EXPECT_TRUE(c->Call(Invoke("echo", ""), 5s).ok());
}

TEST_F(FrameServerTest, ServerClosingTheConnectionIsUnavailable) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  Result<Frame> r = c->Call(Invoke("close", ""), 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  r = c->Call(Invoke("echo", ""), 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_TRUE(WaitUntil([&] { return Closes().size() == 1; }));
}

TEST_F(FrameServerTest, PeerThatStopsReadingIsDisconnected) {
  FrameServerOptions options;
  options.connection.limits.max_output_bytes = 1 << 20;
  StartServer(options);
  auto raw = ConnectTcp("127.0.0.1", server_->port(), 5s);
  ASSERT_TRUE(raw.ok()) << raw.status();
  // A small, fixed receive buffer (no autotuning), so the kernel cannot absorb much.
  int rcvbuf = 64 << 10;
  ASSERT_EQ(setsockopt(raw->get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
  std::string req;
  ASSERT_TRUE(EncodeFrame(Invoke("flood", ""), &req).ok());
  ASSERT_TRUE(WriteAll(raw->get(), req, MonoNanos() + 5'000'000'000).ok());
  // Never read: ~25 MiB of replies overflow the socket buffers and the 1 MiB limit.
  ASSERT_TRUE(WaitUntil([&] { return !Closes().empty(); }));
  Status reason = Closes()[0];
  EXPECT_EQ(reason.code(), StatusCode::kResourceExhausted) << reason;
  EXPECT_NE(reason.message().find("not reading"), std::string_view::npos) << reason;
}

TEST_F(FrameServerTest, IdleConnectionsAreClosed) {
  FrameServerOptions options;
  options.connection.limits.idle_timeout = 100ms;
  StartServer(options);
  auto c = Client();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Call(Invoke("echo", ""), 5s).ok());
  const int64_t start = MonoNanos();
  Result<Frame> f = c->Receive(10s);  // nothing is coming: the server closes
  EXPECT_EQ(f.status().code(), StatusCode::kUnavailable) << f.status();
  EXPECT_GE(MonoNanos() - start, 90'000'000);
  ASSERT_TRUE(WaitUntil([&] { return Closes().size() == 1; }));
  EXPECT_EQ(Closes()[0].code(), StatusCode::kDeadlineExceeded);
}

TEST_F(FrameServerTest, RepliesToClosedConnectionsAreDropped) {
  StartServer();
  FrameConnectionRef ref;
  {
    auto c = Client();
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Ping(5s).ok());
    loop_thread_->loop()->RunSync([&] {
      for (uint64_t id = 1; id < 10; ++id) {
        if (FrameConnection* conn = server_->FindConnection(id)) ref = conn->ref();
      }
    });
  }
  ASSERT_TRUE(ref.valid());
  ASSERT_TRUE(WaitUntil([&] { return ConnectionCount() == 0; }));
  ref.Send(Invoke("late", ""));  // must be a harmless no-op
  loop_thread_->loop()->RunSync([] {});
}

// The SCM_RIGHTS helpers shared by the shm transport's and the migration slots'
// handshakes: descriptors arrive usable, a full receive buffer or too many
// descriptors is reported, not hidden, and a closed peer is eof.
TEST(UnixMessageTest, CarriesDescriptorsAndReportsTruncationAndEof) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  char buf[16];

  Result<UnixMessage> none = ReceiveUnixMessage(b.get(), buf, sizeof(buf), /*wait=*/false);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->would_block);

  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd pr(p[0]), pw(p[1]);
  const int fds[1] = {pr.get()};
  Result<bool> sent = SendUnixMessage(a.get(), "hello", 5, fds, /*wait=*/true);
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_TRUE(*sent);
  Result<UnixMessage> got = ReceiveUnixMessage(b.get(), buf, sizeof(buf), /*wait=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::string(buf, got->bytes), "hello");
  EXPECT_FALSE(got->truncated);
  ASSERT_EQ(got->fds.size(), 1u);
  ASSERT_EQ(::write(pw.get(), "x", 1), 1);  // the received descriptor is the pipe's end
  char c = 0;
  EXPECT_EQ(::read(got->fds[0].get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');
  EXPECT_NE(::fcntl(got->fds[0].get(), F_GETFD) & FD_CLOEXEC, 0);

  const std::string big(40, 'y');
  ASSERT_TRUE(SendUnixMessage(a.get(), big.data(), big.size(), {}, /*wait=*/false).ok());
  got = ReceiveUnixMessage(b.get(), buf, sizeof(buf), /*wait=*/false);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->truncated);
  EXPECT_EQ(got->bytes, sizeof(buf));

  const int five[5] = {pr.get(), pr.get(), pr.get(), pr.get(), pr.get()};
  Result<bool> too_many = SendUnixMessage(a.get(), "z", 1, five, /*wait=*/false);
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument) << too_many.status();

  a.reset();
  got = ReceiveUnixMessage(b.get(), buf, sizeof(buf), /*wait=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->eof);
}

}  // namespace
}  // namespace tern::transport
