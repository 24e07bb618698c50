// TCP frame connections of an agent, served by its workers (TcpServing::kWorker, the
// default) or by the I/O thread (kLoop): pipelining, malformed input, peers that stop
// reading, deadlines of queued requests, moving a connection to its service's worker,
// shutdown with connections open. The behaviour both modes share runs on both.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <thread>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "agent/worker_gate.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/manifest.h"
#include "testing/test_env.h"
#include "transport/frame.h"
#include "transport/frame_client.h"
#include "transport/http.h"
#include "transport/json_api.h"
#include "transport/socket.h"

namespace tern::agent {
namespace {

using tern::testing::ReadWasm;
using tern::testing::SharedEngine;
using tern::testing::SourcePath;
using transport::Frame;
using transport::FrameType;

constexpr auto kTimeout = std::chrono::seconds(10);

// Waits until `cond` holds or `seconds` pass; returns whether it held.
template <typename Cond>
bool WaitFor(Cond cond, int seconds = 10) {
  const int64_t deadline = MonoNanos() + int64_t{seconds} * 1'000'000'000;
  while (!cond()) {
    if (MonoNanos() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

struct Server {
  std::unique_ptr<Agent> agent;
  std::unique_ptr<AgentServer> server;

  static Server Start(TcpServing serving, int workers, const TcpConnLimits& limits = {},
                      size_t max_connections = 4096) {
    Server s;
    AgentOptions o;
    o.device = "tcp-test";
    o.workers = workers;
    Result<std::unique_ptr<Agent>> a = Agent::Create(o, SharedEngine());
    EXPECT_TRUE(a.ok()) << a.status();
    s.agent = std::move(*a);
    AgentServerOptions so;
    so.frame_port = 0;
    so.admin_port = 0;
    so.tcp_serving = serving;
    so.tcp_limits = limits;
    so.max_frame_connections = max_connections;
    Result<std::unique_ptr<AgentServer>> srv = AgentServer::Start(s.agent.get(), so);
    EXPECT_TRUE(srv.ok()) << srv.status();
    s.server = std::move(*srv);
    return s;
  }

  void Deploy(const std::string& name, uint32_t replicas = 1) {
    Result<Manifest> m = LoadManifest(SourcePath("examples/relay/manifest.yaml"));
    ASSERT_TRUE(m.ok()) << m.status();
    m->name = name;
    m->replicas = replicas;
    Result<ServiceStatus> st = agent->Deploy(*m, ReadWasm("relay"));
    ASSERT_TRUE(st.ok()) << st.status();
  }

  std::unique_ptr<transport::FrameClient> Connect() {
    Result<std::unique_ptr<transport::FrameClient>> c =
        transport::FrameClient::Connect("127.0.0.1", server->frame_port());
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // A raw connected socket (blocking) to the frame port.
  transport::UniqueFd RawConnect(int rcvbuf = 0) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(server->frame_port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    return transport::UniqueFd(fd);
  }
};

Frame Invoke(const std::string& svc, const std::string& handler, const std::string& payload,
             uint32_t budget_us = 0) {
  Frame f;
  f.type = FrameType::kInvoke;
  f.service = svc;
  f.handler = handler;
  f.payload = payload;
  f.budget_us = budget_us;
  return f;
}

// Echo through `c`; true if the reply is right.
bool EchoWorks(transport::FrameClient* c, const std::string& svc, const std::string& body) {
  Result<Frame> r = c->Call(Invoke(svc, "echo", body), kTimeout);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() && r->type == FrameType::kReply && r->payload == body;
}

class TcpServingTest : public ::testing::TestWithParam<TcpServing> {};

INSTANTIATE_TEST_SUITE_P(Modes, TcpServingTest,
                         ::testing::Values(TcpServing::kWorker, TcpServing::kLoop),
                         [](const ::testing::TestParamInfo<TcpServing>& i) {
                           return std::string(TcpServingName(i.param));
                         });

// Many requests in flight on one connection, to two instances on two workers (one of
// them slow at first), plus pings: every answer comes back once, matched by its id.
TEST_P(TcpServingTest, PipelinedRequestsAreAnsweredById) {
  Server s = Server::Start(GetParam(), /*workers=*/2);
  s.Deploy("svc", /*replicas=*/2);
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  std::map<uint64_t, std::string> want;
  // A slow request first: later ones overtake it on the other instance.
  Result<uint64_t> slow = c->Send(Invoke("svc", "sleep", "50"));
  ASSERT_TRUE(slow.ok()) << slow.status();
  want[*slow] = "slept";
  constexpr int kRequests = 300;
  for (int i = 0; i < kRequests; ++i) {
    Frame f = i % 50 == 7 ? Frame{} : Invoke("svc", "echo", "req-" + std::to_string(i));
    if (i % 50 == 7) {
      f.type = FrameType::kPing;
      f.payload = "ping-" + std::to_string(i);
    }
    Result<uint64_t> id = c->Send(f);
    ASSERT_TRUE(id.ok()) << id.status();
    want[*id] = f.payload.empty() ? "" : f.payload;
  }
  std::vector<uint64_t> order;
  while (!want.empty()) {
    Result<Frame> r = c->Receive(kTimeout);
    ASSERT_TRUE(r.ok()) << r.status() << " with " << want.size() << " answers missing";
    auto it = want.find(r->request_id);
    ASSERT_NE(it, want.end()) << "an answer for unknown or already answered id " << r->request_id;
    EXPECT_TRUE(r->type == FrameType::kReply || r->type == FrameType::kPong)
        << transport::FrameTypeName(r->type) << ": " << r->payload;
    EXPECT_EQ(r->payload, it->second) << "id " << r->request_id;
    order.push_back(r->request_id);
    want.erase(it);
  }
  if (GetParam() == TcpServing::kLoop) {
    // The slow request did not hold the others up: it is not the first answer. (With
    // worker serving, the connection's owner is the worker running the slow request:
    // the others run on the other worker, but their replies are written by the owner
    // once it is done; see docs/design/dataplane.md.)
    EXPECT_NE(order.front(), *slow);
  } else {
    EXPECT_EQ(s.agent->tcp_stats().accepted, 1u);
    EXPECT_EQ(s.agent->tcp_stats().open, 1u);
  }
}

// The instance of `service` in the agent's status.
InstanceStatus StatusOf(Agent* a, const std::string& service) {
  for (InstanceStatus& i : a->GetStatus().instances) {
    if (i.service == service) return i;
  }
  ADD_FAILURE() << "no instance of " << service;
  return {};
}

// The ids of an invoke frame reach the request (RequestFromFrame), whoever serves the
// connection; answers carry none.
TEST_P(TcpServingTest, TraceIdAndIdempotencyKeyReachTheInstance) {
  Server s = Server::Start(GetParam(), /*workers=*/2);
  s.Deploy("svc");
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  Frame f = Invoke("svc", "echo", "traced");
  f.trace_id = 0x4bf92f3577b34da6ull;
  f.idempotency_key = 0xfeedull;
  Result<Frame> r = c->Call(f, kTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->payload, "traced");
  EXPECT_EQ(r->trace_id, 0u);
  EXPECT_EQ(r->idempotency_key, 0u);
  InstanceStatus st = StatusOf(s.agent.get(), "svc");
  EXPECT_EQ(st.last_trace_id, 0x4bf92f3577b34da6ull);
  EXPECT_EQ(st.last_idempotency_key, 0xfeedull);
  // An invoke without a trace id starts a trace of its own at the agent.
  ASSERT_TRUE(c->Call(Invoke("svc", "echo", "untraced"), kTimeout).ok());
  st = StatusOf(s.agent.get(), "svc");
  EXPECT_NE(st.last_trace_id, 0u);
  EXPECT_NE(st.last_trace_id, 0x4bf92f3577b34da6ull);
  EXPECT_EQ(st.last_idempotency_key, 0u);
}

// Replies left in guest memory (tern_reply_in_place; the `faulty` test guest's
// `inplace` handler: "LEN SEED [MODE]").
std::string InPlacePattern(size_t len, unsigned seed) {
  std::string s(len, '\0');
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<char>(seed + i);
  return s;
}

void DeployFaulty(Server& s) {
  Result<Manifest> m = LoadManifest(SourcePath("src/agent/testdata/faulty.yaml"));
  ASSERT_TRUE(m.ok()) << m.status();
  Result<ServiceStatus> st = s.agent->Deploy(*m, ReadWasm("guest_faulty"));
  ASSERT_TRUE(st.ok()) << st.status();
}

// Each mode's answer: the reply as the guest's buffer was when the handler returned,
// the last reply set, or the failure (and for a trap, the state rolled back).
TEST_P(TcpServingTest, InPlaceRepliesAreReadWhenTheHandlerReturns) {
  Server s = Server::Start(GetParam(), /*workers=*/1);
  DeployFaulty(s);
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  auto call = [&](const std::string& req) {
    Result<Frame> r = c->Call(Invoke("faulty", "inplace", req), kTimeout);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : Frame{};
  };
  auto failure = [&](const std::string& req) {  // FrameClient turns kError into a Status
    Result<Frame> r = c->Call(Invoke("faulty", "inplace", req), kTimeout);
    EXPECT_FALSE(r.ok()) << req << " answered " << r->payload.substr(0, 100);
    return r.ok() ? Status::Ok() : r.status();
  };
  for (size_t len : {size_t{0}, size_t{100}, size_t{60} << 10}) {
    Frame r = call(std::to_string(len) + " 7");
    EXPECT_EQ(r.type, FrameType::kReply);
    EXPECT_TRUE(r.payload == InPlacePattern(len, 7)) << len << " bytes";
  }
  const uint64_t mem0 = StatusOf(s.agent.get(), "faulty").memory_bytes;
  Frame grown = call("50000 9 grow");  // memory.grow after tern_reply_in_place
  EXPECT_EQ(grown.type, FrameType::kReply);
  EXPECT_TRUE(grown.payload == InPlacePattern(50000, 9));
  EXPECT_EQ(StatusOf(s.agent.get(), "faulty").memory_bytes, mem0 + (1u << 20));
  EXPECT_EQ(call("40000 1 copy").payload, "copy");  // the last reply wins
  EXPECT_EQ(call("40000 1 again").payload, InPlacePattern(3, 1));
  EXPECT_EQ(call("40000 1 overwrite").payload, std::string(40000, 'z'));
  Status failed = failure("40000 1 fail");
  EXPECT_EQ(failed.code(), StatusCode::kAborted);
  EXPECT_EQ(failed.message().find(InPlacePattern(64, 1)), std::string::npos);
  Status oob = failure("10 1 oob");
  EXPECT_EQ(oob.code(), StatusCode::kInternal);
  EXPECT_NE(oob.message().find("outside linear memory"), std::string::npos) << oob;
  // A trap after the reply was set: no reply, and the state change is rolled back.
  Result<Frame> count0 = c->Call(Invoke("faulty", "get", ""), kTimeout);
  ASSERT_TRUE(count0.ok()) << count0.status();
  Status trapped = failure("40000 3 trap");
  EXPECT_EQ(trapped.code(), StatusCode::kInternal);
  EXPECT_NE(trapped.message().find("rolled back"), std::string::npos) << trapped;
  Result<Frame> count1 = c->Call(Invoke("faulty", "get", ""), kTimeout);
  ASSERT_TRUE(count1.ok()) << count1.status();
  EXPECT_EQ(count1->payload, count0->payload);
  EXPECT_TRUE(call("30000 4").payload == InPlacePattern(30000, 4));
}

// A large in-place reply the socket does not take at once: the rest is copied before
// the guest runs again, so the next request (which rewrites the guest's buffer) does
// not change it. Replies to an idempotency key come from the dedup table with the bytes
// of the first answer, whatever the guest's buffer holds by then.
TEST_P(TcpServingTest, InPlaceRepliesSurviveTheGuestsNextRequest) {
  Server s = Server::Start(GetParam(), /*workers=*/1);
  DeployFaulty(s);
  const uint64_t ran0 = StatusOf(s.agent.get(), "faulty").requests;
  transport::UniqueFd fd = s.RawConnect(/*rcvbuf=*/4096);
  constexpr size_t kLen = 60 << 10;
  // 6 MiB of replies: more than the socket takes (its send buffer grows to 4 MiB here),
  // less than the output at which the agent stops reading (4 MiB queued).
  constexpr unsigned kRequests = 100;
  std::string wire;
  for (unsigned seed = 1; seed <= kRequests; ++seed) {
    Frame f = Invoke("faulty", "inplace", std::to_string(kLen) + " " + std::to_string(seed));
    f.request_id = seed;
    if (seed == 1) f.idempotency_key = 0xabcull;
    ASSERT_TRUE(transport::EncodeFrame(f, &wire).ok());
  }
  ASSERT_EQ(::send(fd.get(), wire.data(), wire.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(wire.size()));
  // All ran before we read a byte: what the socket did not take waits in the agent.
  ASSERT_TRUE(WaitFor(
      [&] { return StatusOf(s.agent.get(), "faulty").requests >= ran0 + kRequests; }));
  if (GetParam() == TcpServing::kWorker) {
    EXPECT_GT(s.agent->tcp_stats().output_bytes, 0u)
        << "the kernel took every reply: this test does not see a partial write";
  }
  transport::FrameDecoder dec;
  std::map<uint64_t, std::string> got;
  std::string buf(64 << 10, '\0');
  while (got.size() < kRequests) {
    ssize_t n = ::recv(fd.get(), buf.data(), buf.size(), 0);
    ASSERT_GT(n, 0) << "connection closed with " << got.size() << " replies";
    dec.Feed(std::string_view(buf.data(), static_cast<size_t>(n)));
    Frame f;
    for (;;) {
      Result<bool> next = dec.Next(&f);
      ASSERT_TRUE(next.ok()) << next.status();
      if (!*next) break;
      ASSERT_EQ(f.type, FrameType::kReply) << f.payload;
      got[f.request_id] = f.payload;
    }
  }
  for (unsigned seed = 1; seed <= kRequests; ++seed) {
    EXPECT_TRUE(got[seed] == InPlacePattern(kLen, seed)) << "reply " << seed << " changed";
  }
  // The retry of key 0xabc: the first answer again, not the guest's buffer (seed 12 now).
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  Frame retry = Invoke("faulty", "inplace", std::to_string(kLen) + " 44");
  retry.idempotency_key = 0xabcull;
  Result<Frame> r = c->Call(retry, kTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->payload == InPlacePattern(kLen, 1));
  EXPECT_EQ(StatusOf(s.agent.get(), "faulty").deduplicated, 1u);
  // Through the in-process path too (a copy, since the caller keeps the reply).
  InvokeRequest again;
  again.service = "faulty";
  again.handler = "inplace";
  again.payload = "5 1";
  again.idempotency_key = 0xabcull;
  InvokeResult ir = s.agent->InvokeSync(std::move(again));
  ASSERT_TRUE(ir.status.ok()) << ir.status;
  EXPECT_TRUE(ir.reply == InPlacePattern(kLen, 1));
  EXPECT_EQ(ir.reply_view.data(), nullptr);
}

// The admin API's invoke takes the same headers as the gateway's.
TEST(AgentAdminInvokeTest, TraceAndIdempotencyHeaders) {
  Server s = Server::Start(TcpServing::kWorker, /*workers=*/1);
  s.Deploy("svc");
  auto http = transport::HttpClient::Connect("127.0.0.1", s.server->admin_port(), kTimeout);
  ASSERT_TRUE(http.ok()) << http.status();
  auto post = [&](const transport::HttpHeaders& h) {
    Result<transport::HttpClientResponse> r = (*http)->Request(
        "POST", "/v1/invoke/svc/echo", "hi", "application/octet-stream", kTimeout, h);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : transport::HttpClientResponse{};
  };
  transport::HttpClientResponse r =
      post({{"X-Tern-Trace-Id", "00ABCDEF12345678"}, {"Idempotency-Key", "0x2a"}});
  EXPECT_EQ(r.status, 200) << r.body;
  ASSERT_NE(r.FindHeader("x-tern-trace-id"), nullptr);
  EXPECT_EQ(*r.FindHeader("x-tern-trace-id"), "00abcdef12345678");
  InstanceStatus st = StatusOf(s.agent.get(), "svc");
  EXPECT_EQ(st.last_trace_id, 0x00abcdef12345678ull);
  EXPECT_EQ(st.last_idempotency_key, 42u);
  // Without the header: a fresh trace id, returned.
  r = post({});
  EXPECT_EQ(r.status, 200) << r.body;
  ASSERT_NE(r.FindHeader("x-tern-trace-id"), nullptr);
  Result<uint64_t> fresh = ParseTraceId(*r.FindHeader("x-tern-trace-id"));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(StatusOf(s.agent.get(), "svc").last_trace_id, *fresh);
  // Malformed: 400, naming the header; the request does not run.
  const uint64_t served = StatusOf(s.agent.get(), "svc").requests;
  for (const transport::HttpHeaders& bad :
       {transport::HttpHeaders{{"X-Tern-Trace-Id", "not-hex"}},
        transport::HttpHeaders{{"Idempotency-Key", "twelve"}}}) {
    r = post(bad);
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_NE(r.body.find(bad[0].first), std::string::npos) << r.body;
  }
  EXPECT_EQ(StatusOf(s.agent.get(), "svc").requests, served);
}

TEST_P(TcpServingTest, MalformedFrameClosesOnlyThatConnection) {
  Server s = Server::Start(GetParam(), /*workers=*/1);
  s.Deploy("svc");
  auto good = s.Connect();
  ASSERT_NE(good, nullptr);
  ASSERT_TRUE(EchoWorks(good.get(), "svc", "before"));

  transport::UniqueFd bad = s.RawConnect();
  const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(bad.get(), junk, sizeof(junk) - 1, MSG_NOSIGNAL),
            static_cast<ssize_t>(sizeof(junk) - 1));
  timeval tv{10, 0};
  ::setsockopt(bad.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  // The peer gets a kError frame for the whole connection (request id 0), then EOF.
  std::string got;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(bad.get(), buf, sizeof(buf), 0);
    if (n <= 0) {
      ASSERT_EQ(n, 0) << "expected EOF, got errno " << errno;
      break;
    }
    got.append(buf, static_cast<size_t>(n));
  }
  transport::FrameDecoder d;
  d.Feed(got);
  Frame f;
  Result<bool> one = d.Next(&f);
  ASSERT_TRUE(one.ok() && *one) << "no frame before the close (" << got.size() << " bytes)";
  EXPECT_EQ(f.type, FrameType::kError);
  EXPECT_EQ(f.request_id, 0u);
  EXPECT_EQ(transport::ErrorFrameStatus(f).code(), StatusCode::kInvalidArgument);
  EXPECT_NE(f.payload.find("magic"), std::string::npos) << f.payload;

  EXPECT_TRUE(EchoWorks(good.get(), "svc", "after"));
  auto fresh = s.Connect();
  ASSERT_NE(fresh, nullptr);
  EXPECT_TRUE(EchoWorks(fresh.get(), "svc", "new connection"));
  if (GetParam() == TcpServing::kWorker) {
    EXPECT_EQ(s.agent->tcp_stats().closed_malformed, 1u);
    EXPECT_TRUE(WaitFor([&] { return s.agent->tcp_stats().open == 2; }));
  }
}

// A request still queued at its deadline (budget_us) is answered kDeadlineExceeded and
// never runs; the one ahead of it is answered normally. The worker is held (WorkerGate)
// until the late request's budget has passed for certain: with a guest that ran 200 ms
// ahead of it instead, a test thread stalled that long sent it after the worker was
// free again.
TEST_P(TcpServingTest, DeadlineExpiresWhileQueued) {
  Server s = Server::Start(GetParam(), /*workers=*/1);
  s.Deploy("svc");
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  // Bytes that reach the agent before it accepted the connection are dated by their
  // read (the kernel timestamps them only once the socket asks): start with a ping.
  ASSERT_TRUE(c->Ping(kTimeout).ok());
  uint64_t ahead = 0, late = 0;
  {
    WorkerGate busy(s.agent.get(), s.agent->GetStatus().instances.at(0).id);
    Result<uint64_t> sent = c->Send(Invoke("svc", "echo", "ahead"));
    ASSERT_TRUE(sent.ok()) << sent.status();
    ahead = *sent;
    sent = c->Send(Invoke("svc", "echo", "too late", /*budget_us=*/20'000));
    ASSERT_TRUE(sent.ok()) << sent.status();
    late = *sent;
    ASSERT_TRUE(c->Flush(kTimeout).ok());
    if (GetParam() == TcpServing::kLoop) {
      // The I/O thread dates a request when it reads it, and answers pings itself: the
      // pong of a ping sent behind the late request says it has been read.
      Frame ping;
      ping.type = FrameType::kPing;
      ASSERT_TRUE(c->Send(ping).ok());
      Result<Frame> pong = c->Receive(kTimeout);
      ASSERT_TRUE(pong.ok()) << pong.status();
      ASSERT_EQ(pong->type, FrameType::kPong);
    }
    // With worker serving, the requests wait in the socket, dated by the kernel at
    // their arrival (before Flush returned). Either way the budget is over after this.
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    ASSERT_TRUE(busy.ReleasedByTest());
  }
  std::map<uint64_t, Frame> got;
  while (got.size() < 2) {
    Result<Frame> r = c->Receive(kTimeout);
    ASSERT_TRUE(r.ok()) << r.status();
    got[r->request_id] = *r;
  }
  EXPECT_EQ(got[ahead].type, FrameType::kReply);
  EXPECT_EQ(got[ahead].payload, "ahead");
  Status st = transport::ErrorFrameStatus(got[late]);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st;
  EXPECT_NE(st.message().find("not run"), std::string_view::npos) << st;
  EXPECT_EQ(s.agent->GetStatus().instances.at(0).expired, 1u);
}

// Destroying the server with connections open (one with a request running) closes
// them: every client sees the connection end, and the shutdown does not hang.
TEST_P(TcpServingTest, ShutdownWithConnectionsOpen) {
  Server s = Server::Start(GetParam(), /*workers=*/2);
  s.Deploy("svc", 2);
  std::vector<std::unique_ptr<transport::FrameClient>> clients;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(s.Connect());
    ASSERT_NE(clients.back(), nullptr);
    ASSERT_TRUE(EchoWorks(clients.back().get(), "svc", "hi"));
  }
  ASSERT_TRUE(clients[0]->Send(Invoke("svc", "sleep", "100")).ok());
  ASSERT_TRUE(clients[0]->Flush(kTimeout).ok());
  const int64_t t0 = MonoNanos();
  s.server.reset();
  s.agent.reset();
  EXPECT_LT(MonoNanos() - t0, 5'000'000'000) << "shutdown took too long";
  for (size_t i = 0; i < clients.size(); ++i) {
    // The running request may have been answered before the close; after that, or for
    // the idle ones at once, the connection is gone.
    Result<Frame> r = clients[i]->Receive(kTimeout);
    if (i == 0 && r.ok()) {
      // Answered before the close: run, or refused as the agent stopped.
      if (r->type == FrameType::kReply) {
        EXPECT_EQ(r->payload, "slept");
      } else {
        EXPECT_EQ(transport::ErrorFrameStatus(*r).code(), StatusCode::kUnavailable);
      }
      r = clients[i]->Receive(kTimeout);
    }
    ASSERT_FALSE(r.ok()) << "client " << i << " got a frame after shutdown";
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << "client " << i << ": " << r.status();
  }
}

// Worker serving: a connection starts on a worker picked round-robin and moves, at its
// first invoke, to the worker of the service it calls.
TEST(TcpWorkerServingTest, ConnectionMovesToTheWorkerOfItsService) {
  Server s = Server::Start(TcpServing::kWorker, /*workers=*/2);
  s.Deploy("first");   // worker 0
  s.Deploy("second");  // worker 1
  auto c0 = s.Connect();  // connections go to worker 0, then 1
  auto c1 = s.Connect();
  ASSERT_NE(c0, nullptr);
  ASSERT_NE(c1, nullptr);
  ASSERT_TRUE(WaitFor([&] { return s.agent->tcp_stats().accepted == 2; }));
  // c0 starts on worker 0 and calls `second` (worker 1): it moves. c1 starts on worker
  // 1 and also calls `second`: it stays.
  ASSERT_TRUE(c0->Ping(kTimeout).ok());
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(EchoWorks(c0.get(), "second", "c0-" + std::to_string(i)));
    ASSERT_TRUE(EchoWorks(c1.get(), "second", "c1-" + std::to_string(i)));
  }
  EXPECT_EQ(s.agent->tcp_stats().moved, 1u);
  // Once placed, a connection stays: other services are still served from there.
  EXPECT_TRUE(EchoWorks(c0.get(), "first", "elsewhere"));
  EXPECT_EQ(s.agent->tcp_stats().moved, 1u);
  ASSERT_TRUE(c0->Ping(kTimeout).ok());
}

// A worker's route cache (Agent::InvokeWith) sends a request where the same service and
// handler went before, without a lookup, while the routing tables are unchanged: every
// change must reach the very next request on the connection. A stale route would send
// it to a stopped instance ("instance ... was stopped") or past a handler or limit that
// is gone; each step checks the answer the tables give.
TEST_P(TcpServingTest, RoutingChangesReachTheNextRequestOnTheConnection) {
  Server s = Server::Start(GetParam(), /*workers=*/1);
  s.Deploy("svc");
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  auto failure = [&](const std::string& handler, const std::string& body) {
    Result<Frame> r = c->Call(Invoke("svc", handler, body), kTimeout);
    EXPECT_FALSE(r.ok()) << handler << " answered " << r->payload.substr(0, 100);
    return r.ok() ? Status::Ok() : r.status();
  };
  auto instances = [&] {
    std::vector<std::string> ids;
    for (const InstanceStatus& i : s.agent->GetStatus().instances) {
      if (i.service == "svc") ids.push_back(i.id);
    }
    return ids;
  };
  ASSERT_EQ(instances().size(), 1u);
  const std::string first = instances()[0];
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(EchoWorks(c.get(), "svc", "warm"));

  // The instance is replaced: the next request goes to the new one.
  Result<std::string> second = s.agent->StartInstance("svc");
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(s.agent->StopInstance(first).ok());
  EXPECT_TRUE(EchoWorks(c.get(), "svc", "to the second"));
  // Addressed by name, then stopped: that name is gone, the service is not.
  Result<Frame> named = c->Call(Invoke("svc", "echo@" + *second, "named"), kTimeout);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(named->payload, "named");
  Result<std::string> third = s.agent->StartInstance("svc");
  ASSERT_TRUE(third.ok()) << third.status();
  ASSERT_TRUE(s.agent->StopInstance(*second).ok());
  Status gone = failure("echo@" + *second, "named");
  EXPECT_EQ(gone.code(), StatusCode::kNotFound) << gone;
  EXPECT_TRUE(EchoWorks(c.get(), "svc", "to the third"));
  EXPECT_TRUE(EchoWorks(c.get(), "svc", "to the third again"));
  // No instance left.
  ASSERT_TRUE(s.agent->StopInstance(*third).ok());
  Status none = failure("echo", "x");
  EXPECT_EQ(none.code(), StatusCode::kUnavailable) << none;
  EXPECT_NE(none.message().find("no running instance"), std::string_view::npos) << none;
  // A redeploy without the handler, then with a smaller request limit.
  Result<Manifest> m = LoadManifest(SourcePath("examples/relay/manifest.yaml"));
  ASSERT_TRUE(m.ok()) << m.status();
  m->name = "svc";
  Manifest echo_only = *m;
  m->handlers = {"chain"};
  ASSERT_TRUE(s.agent->Deploy(*m, ReadWasm("relay")).ok());
  Status no_handler = failure("echo", "x");
  EXPECT_EQ(no_handler.code(), StatusCode::kNotFound) << no_handler;
  echo_only.limits.request_kib = 1;
  ASSERT_TRUE(s.agent->Deploy(echo_only, ReadWasm("relay")).ok());
  EXPECT_TRUE(EchoWorks(c.get(), "svc", "small"));
  EXPECT_TRUE(EchoWorks(c.get(), "svc", "small again"));
  Status too_big = failure("echo", std::string(2000, 'b'));
  EXPECT_EQ(too_big.code(), StatusCode::kInvalidArgument) << too_big;
  EXPECT_TRUE(EchoWorks(c.get(), "svc", "small after"));
}

// Worker serving: a peer that sends requests and never reads the replies. The worker
// stops reading it once its output passes the limit (so TCP flow control stops the
// peer and memory stays bounded), other connections keep working, and after
// write_stall_ns without progress the connection is closed.
TEST(TcpWorkerServingTest, PeerThatStopsReadingIsPausedThenClosed) {
  TcpConnLimits limits;
  limits.pause_reading_output_bytes = 256u << 10;
  limits.max_output_bytes = 8u << 20;
  limits.write_stall_ns = 1'000'000'000;
  Server s = Server::Start(TcpServing::kWorker, /*workers=*/1, limits);
  s.Deploy("svc");
  transport::UniqueFd hog = s.RawConnect(/*rcvbuf=*/64 << 10);
  ASSERT_TRUE(transport::SetNonBlocking(hog.get()).ok());
  std::string frame;
  ASSERT_TRUE(transport::EncodeFrame(Invoke("svc", "echo", std::string(32 << 10, 'h')), &frame).ok());
  // Send until the agent has not taken a byte for 300 ms (it stopped reading), with a
  // cap far above what kernel buffers plus the agent's limits can hold.
  constexpr size_t kCap = 256u << 20;
  size_t sent = 0, off = 0;
  int64_t last_progress = MonoNanos();
  while (MonoNanos() - last_progress < 300'000'000) {
    ASSERT_LT(sent, kCap) << "the agent kept reading from a peer that reads nothing";
    ssize_t n = ::send(hog.get(), frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      off = (off + static_cast<size_t>(n)) % frame.size();
      last_progress = MonoNanos();
      continue;
    }
    ASSERT_TRUE(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) << "send: errno " << errno;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const TcpConnStats paused = s.agent->tcp_stats();
  EXPECT_LE(paused.output_bytes, limits.max_output_bytes)
      << "replies buffered for a peer that does not read";
  EXPECT_GE(paused.output_bytes, limits.pause_reading_output_bytes)
      << "reading stopped before the output limit was reached (sent " << sent << " bytes)";
  EXPECT_EQ(paused.closed_slow, 0u);
  // Another connection is served meanwhile.
  auto other = s.Connect();
  ASSERT_NE(other, nullptr);
  EXPECT_TRUE(EchoWorks(other.get(), "svc", "still here"));
  // The stalled peer is closed after write_stall_ns.
  ASSERT_TRUE(WaitFor([&] { return s.agent->tcp_stats().closed_slow == 1; }))
      << "a peer that read nothing for long was not closed";
  EXPECT_TRUE(WaitFor([&] { return s.agent->tcp_stats().open == 1; }));
  EXPECT_EQ(s.agent->tcp_stats().output_bytes, 0u);
  EXPECT_TRUE(EchoWorks(other.get(), "svc", "after the close"));
}

// Beyond max_frame_connections, a new connection gets a kResourceExhausted kError frame
// (request id 0) and is closed; the open ones keep working.
TEST_P(TcpServingTest, ConnectionsBeyondTheLimitAreRefused) {
  Server s = Server::Start(GetParam(), /*workers=*/1, {}, /*max_connections=*/2);
  s.Deploy("svc");
  auto a = s.Connect();
  auto b = s.Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(EchoWorks(a.get(), "svc", "a"));
  ASSERT_TRUE(EchoWorks(b.get(), "svc", "b"));
  auto c = s.Connect();
  ASSERT_NE(c, nullptr);
  // FrameClient turns a connection-wide kError frame into the connection's error.
  Result<Frame> r = c->Receive(kTimeout);
  ASSERT_FALSE(r.ok()) << transport::FrameTypeName(r->type);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("too many connections"), std::string_view::npos);
  EXPECT_TRUE(EchoWorks(a.get(), "svc", "a again"));
}

TEST(TcpServingNamesTest, ParseAndName) {
  EXPECT_EQ(*ParseTcpServing("worker"), TcpServing::kWorker);
  EXPECT_EQ(*ParseTcpServing("loop"), TcpServing::kLoop);
  Result<TcpServing> bad = ParseTcpServing("threads");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'threads'"), std::string_view::npos);
  EXPECT_EQ(TcpServingName(TcpServing::kWorker), "worker");
}

}  // namespace
}  // namespace tern::agent
