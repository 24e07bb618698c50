// Gateway tests against real `tern agent` processes on 127.0.0.1: round trip, errors,
// replica spreading, locality, kMoved re-picks, agent death, saturation, deadlines,
// malformed HTTP, keep-alive, location updates from a fake controller (an HttpServer
// speaking the controller's long-poll protocol) and the `tern gateway` command.
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "client/agent_client.h"
#include "core/clock.h"
#include "core/file.h"
#include "core/ids.h"
#include "core/mutex.h"
#include "testing/process.h"
#include "testing/test_env.h"
#include "transport/event_loop.h"
#include "transport/http.h"
#include "transport/socket.h"

namespace tern::gateway {
namespace {

using dataplane::InstanceLocation;
using namespace std::chrono_literals;
using tern::testing::BinPath;
using tern::testing::ChildProcess;
using tern::testing::ReadWasm;
using tern::testing::SourcePath;
using transport::HttpClient;
using transport::HttpClientResponse;
using transport::HttpHeaders;

// Waits for `cond` (polled every few ms) until `timeout`; true if it held.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 10s) {
  const int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  while (MonoNanos() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
}

// A `tern agent` process.
struct Agent {
  std::unique_ptr<ChildProcess> proc;
  std::string device;
  std::string host;
  uint16_t frame_port = 0;
  uint16_t admin_port = 0;

  static std::unique_ptr<Agent> Start(const std::string& device, const std::string& host) {
    auto a = std::make_unique<Agent>();
    a->device = device;
    a->host = host;
    auto p = ChildProcess::Start({BinPath("tern"), "agent", "--port", "0", "--admin-port", "0",
                                  "--workers", "2", "--log-level", "error", "--device", device,
                                  "--host-id", host, "--shm-socket", "none"});
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return a;
    a->proc = std::move(*p);
    Result<std::string> line = a->proc->ReadLine(30s);
    EXPECT_TRUE(line.ok()) << line.status();
    unsigned f = 0, m = 0;
    if (line.ok() && std::sscanf(line->c_str(), "listening frames=%u admin=%u", &f, &m) == 2) {
      a->frame_port = static_cast<uint16_t>(f);
      a->admin_port = static_cast<uint16_t>(m);
    }
    EXPECT_NE(a->frame_port, 0) << (line.ok() ? *line : "");
    return a;
  }

  std::unique_ptr<client::AgentClient> Admin() const {
    auto c = client::AgentClient::Connect("127.0.0.1:" + std::to_string(admin_port), 10000ms);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // Deploys examples/<example> under the name `service`, one instance.
  void Deploy(const std::string& service, const std::string& example) const {
    Result<std::string> m = ReadFile(SourcePath("examples/" + example + "/manifest.yaml"));
    ASSERT_TRUE(m.ok()) << m.status();
    std::string text = *m;
    size_t p = text.find("\nname: ");
    ASSERT_NE(p, std::string::npos);
    text.replace(p, text.find('\n', p + 1) - p, "\nname: " + service);
    auto admin = Admin();
    ASSERT_NE(admin, nullptr);
    Result<std::string> r = admin->Deploy(text, ReadWasm(example), true);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  // Requests served by the instances of `service` (from GET /v1/status).
  uint64_t Served(const std::string& service) const {
    auto admin = Admin();
    if (admin == nullptr) return 0;
    Result<std::string> st = admin->StatusJson();
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return 0;
    uint64_t n = 0;
    const nlohmann::json status = nlohmann::json::parse(*st);
    for (const auto& i : status["instances"]) {
      if (i["service"] == service) n += i["requests"].get<uint64_t>();
    }
    return n;
  }

  // The last trace id (hex, as in GET /v1/status) and idempotency key served by the
  // instance of `service`.
  std::pair<std::string, uint64_t> LastIds(const std::string& service) const {
    auto admin = Admin();
    if (admin == nullptr) return {};
    Result<std::string> st = admin->StatusJson();
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return {};
    const nlohmann::json status = nlohmann::json::parse(*st);
    for (const auto& i : status["instances"]) {
      if (i["service"] == service) {
        return {i["last_trace_id"].get<std::string>(), i["last_idempotency_key"].get<uint64_t>()};
      }
    }
    ADD_FAILURE() << "no instance of " << service;
    return {};
  }

  // A location entry for this agent's instance of `service`, named `instance`.
  InstanceLocation Loc(const std::string& instance, const std::string& service,
                       uint64_t epoch = 1) const {
    InstanceLocation l;
    l.instance = instance;
    l.service = service;
    l.agent = device;
    l.host = host;
    l.tcp = "127.0.0.1:" + std::to_string(frame_port);
    l.epoch = epoch;
    return l;
  }
};

std::unique_ptr<Gateway> StartGateway(GatewayOptions o = {}) {
  o.listen_port = 0;
  Result<std::unique_ptr<Gateway>> g = Gateway::Start(o);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? std::move(*g) : nullptr;
}

std::unique_ptr<HttpClient> Http(uint16_t port) {
  auto c = HttpClient::Connect("127.0.0.1", port, 5s);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

HttpClientResponse Invoke(HttpClient* c, const std::string& service, const std::string& handler,
                          const std::string& body, const HttpHeaders& headers = {}) {
  Result<HttpClientResponse> r = c->Request("POST", "/v1/invoke/" + service + "/" + handler, body,
                                            "application/octet-stream", 20s, headers);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::move(*r) : HttpClientResponse{};
}

std::string InstanceOf(const HttpClientResponse& r) {
  const std::string* h = r.FindHeader("x-tern-instance");
  return h ? *h : "";
}

// Two agents on different hosts, each with `echo` and `relay` (and `gone`, which the
// Moved test undeploys from `a`), shared by the tests that do not kill agents.
class GatewayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    a_ = Agent::Start("dev-a", "h1").release();
    b_ = Agent::Start("dev-b", "h2").release();
    for (Agent* x : {a_, b_}) {
      x->Deploy("echo", "echo");
      x->Deploy("relay", "relay");
      x->Deploy("gone", "echo");
    }
  }
  static void TearDownTestSuite() {
    delete a_;
    delete b_;
    a_ = b_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(a_->frame_port, 0);
    ASSERT_NE(b_->frame_port, 0);
  }

  static std::vector<InstanceLocation> Both(const std::string& service) {
    return {a_->Loc(service + "-a", service), b_->Loc(service + "-b", service)};
  }

  static Agent* a_;
  static Agent* b_;
};
Agent* GatewayTest::a_ = nullptr;
Agent* GatewayTest::b_ = nullptr;

TEST_F(GatewayTest, InvokeRoundTripHealthAndInfo) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations({a_->Loc("echo-a", "echo")}, 7);
  auto http = Http(gw->port());
  std::string payload("binary\0payload\xff", 15);
  HttpClientResponse r = Invoke(http.get(), "echo", "echo", payload, {{"X-Tern-Tenant", "t1"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, payload);
  ASSERT_NE(r.FindHeader("content-type"), nullptr);
  EXPECT_EQ(*r.FindHeader("content-type"), "application/octet-stream");
  EXPECT_EQ(InstanceOf(r), "echo-a");

  Result<HttpClientResponse> h = http->Request("GET", "/v1/health");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(h->body, "ok");
  Result<HttpClientResponse> info = http->Request("GET", "/v1/info");
  ASSERT_TRUE(info.ok()) << info.status();
  nlohmann::json j = nlohmann::json::parse(info->body);
  EXPECT_EQ(j["locations"]["version"], 7);
  EXPECT_EQ(j["requests"]["total"], 1);
  EXPECT_EQ(j["requests"]["2xx"], 1);
  EXPECT_EQ(j["upstream_connections"], 1);
  EXPECT_GT(j["latency_ms"]["p50"].get<double>(), 0.0);
}

std::string TraceOf(const HttpClientResponse& r) {
  const std::string* h = r.FindHeader("x-tern-trace-id");
  return h ? *h : "";
}

// X-Tern-Trace-Id goes to the instance and comes back; a guest's nested call carries it
// on (relay -> echo, in-process on agent a); Idempotency-Key goes along. Without the
// header, the gateway makes a fresh id per request; a malformed one is a 400.
TEST_F(GatewayTest, TraceIdAndIdempotencyKeyReachTheInstances) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations({a_->Loc("relay-a", "relay"), a_->Loc("echo-a", "echo")}, 1);
  auto http = Http(gw->port());
  HttpClientResponse r =
      Invoke(http.get(), "relay", "call", "echo|echo|0|traced",
             {{"X-Tern-Trace-Id", "4BF92F3577B34DA6"}, {"Idempotency-Key", "99"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "0|traced");
  EXPECT_EQ(TraceOf(r), "4bf92f3577b34da6");
  EXPECT_EQ(a_->LastIds("relay"), std::make_pair(std::string("4bf92f3577b34da6"), uint64_t{99}));
  EXPECT_EQ(a_->LastIds("echo").first, "4bf92f3577b34da6");
  EXPECT_EQ(a_->LastIds("echo").second, DeriveCallKey(99, 1, "echo", "echo"));

  // Errors name the trace too.
  r = Invoke(http.get(), "echo", "nohandler", "x", {{"X-Tern-Trace-Id", "77"}});
  EXPECT_GE(r.status, 400);
  EXPECT_EQ(TraceOf(r), "0000000000000077");

  // No header: a fresh random id per request, which the instance saw.
  HttpClientResponse r1 = Invoke(http.get(), "echo", "echo", "1");
  HttpClientResponse r2 = Invoke(http.get(), "echo", "echo", "2");
  ASSERT_EQ(r1.status, 200);
  ASSERT_EQ(r2.status, 200);
  EXPECT_EQ(TraceOf(r1).size(), 16u);
  EXPECT_NE(TraceOf(r1), TraceOf(r2));
  EXPECT_EQ(a_->LastIds("echo"), std::make_pair(TraceOf(r2), uint64_t{0}));

  // Malformed ids are the client's fault: 400, with a message naming the header, and
  // nothing runs.
  const uint64_t served = a_->Served("echo");
  for (const HttpHeaders& bad :
       {HttpHeaders{{"X-Tern-Trace-Id", "xyz"}}, HttpHeaders{{"X-Tern-Trace-Id", "0"}},
        HttpHeaders{{"X-Tern-Trace-Id", "4bf92f3577b34da6ff"}},
        HttpHeaders{{"Idempotency-Key", "-1"}}, HttpHeaders{{"Idempotency-Key", "abc"}}}) {
    r = Invoke(http.get(), "echo", "echo", "x", bad);
    EXPECT_EQ(r.status, 400) << bad[0].second << ": " << r.body;
    nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.body;
    EXPECT_EQ(j["error"]["code"], "invalid_argument");
    EXPECT_NE(j["error"]["message"].get<std::string>().find(bad[0].first), std::string::npos)
        << r.body;
  }
  EXPECT_EQ(a_->Served("echo"), served);
}

TEST_F(GatewayTest, UnknownServiceIs404AndAgentErrorsKeepTheirCode) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("echo"), 1);
  auto http = Http(gw->port());
  HttpClientResponse r = Invoke(http.get(), "nosuch", "echo", "x");
  EXPECT_EQ(r.status, 404);
  nlohmann::json j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["error"]["code"], "not_found");
  EXPECT_EQ(j["error"]["code_number"], 5);
  EXPECT_NE(j["error"]["message"].get<std::string>().find("nosuch"), std::string::npos);

  // An unknown handler: the agent's error, mapped to HTTP, same JSON shape.
  r = Invoke(http.get(), "echo", "nohandler", "x");
  EXPECT_GE(r.status, 400) << r.body;
  j = nlohmann::json::parse(r.body);
  EXPECT_EQ(r.status,
            transport::HttpStatusForCode(StatusCodeFromInt(j["error"]["code_number"].get<int>())));
  EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());

  // Bad paths and headers are the client's fault: 400 with a message.
  r = Invoke(http.get(), "echo", "echo/extra", "x");
  EXPECT_EQ(r.status, 400) << r.body;
  r = Invoke(http.get(), "echo", "echo", "x", {{"X-Tern-Timeout-Ms", "soon"}});
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("X-Tern-Timeout-Ms"), std::string::npos) << r.body;

  // Known service, but no instance with an address: 503.
  InstanceLocation noaddr = a_->Loc("echo-x", "echo");
  noaddr.tcp.clear();
  noaddr.shm = "/tmp/none.sock";
  gw->SetLocations({noaddr}, 2);
  r = Invoke(http.get(), "echo", "echo", "x");
  EXPECT_EQ(r.status, 503) << r.body;
}

TEST_F(GatewayTest, PowerOfTwoChoicesSpreadsOverReplicas) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("echo"), 1);
  const uint64_t served_a = a_->Served("echo"), served_b = b_->Served("echo");
  auto http = Http(gw->port());
  std::map<std::string, int> by_instance;
  for (int i = 0; i < 40; ++i) {
    HttpClientResponse r = Invoke(http.get(), "echo", "echo", "p" + std::to_string(i));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body, "p" + std::to_string(i));
    ++by_instance[InstanceOf(r)];
  }
  // Equal load -> a random pick each time: both serve (P(miss) = 2^-39).
  EXPECT_EQ(by_instance.size(), 2u);
  EXPECT_GT(by_instance["echo-a"], 0);
  EXPECT_GT(by_instance["echo-b"], 0);
  // ... and the agents agree.
  const uint64_t now_a = a_->Served("echo"), now_b = b_->Served("echo");
  EXPECT_EQ(now_a - served_a, static_cast<uint64_t>(by_instance["echo-a"]));
  EXPECT_EQ(now_b - served_b, static_cast<uint64_t>(by_instance["echo-b"]));
}

TEST_F(GatewayTest, PrefersInstancesOnItsOwnHost) {
  GatewayOptions o;
  o.host_id = "h2";
  auto gw = StartGateway(o);
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("echo"), 1);
  auto http = Http(gw->port());
  for (int i = 0; i < 20; ++i) {
    HttpClientResponse r = Invoke(http.get(), "echo", "echo", "x");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(InstanceOf(r), "echo-b");
  }
}

TEST_F(GatewayTest, OverloadedLocalInstanceSpillsToRemote) {
  GatewayOptions o;
  o.host_id = "h1";
  o.local_max_outstanding = 1;
  auto gw = StartGateway(o);
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("relay"), 1);
  // A slow request keeps the local instance at its limit; the next goes remote.
  HttpClientResponse slow;
  std::thread t([&] {
    auto c = Http(gw->port());
    slow = Invoke(c.get(), "relay", "sleep", "700");
  });
  ASSERT_TRUE(WaitFor([&] { return gw->stats().in_flight == 1; }));
  auto http = Http(gw->port());
  HttpClientResponse r = Invoke(http.get(), "relay", "echo", "x");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(InstanceOf(r), "relay-b");
  t.join();
  EXPECT_EQ(slow.status, 200) << slow.body;
  EXPECT_EQ(InstanceOf(slow), "relay-a");
}

TEST_F(GatewayTest, MovedAnswerRepicksAnotherReplica) {
  // `gone` was undeployed from a; the table still lists it there (epoch >= 1).
  auto admin = a_->Admin();
  ASSERT_NE(admin, nullptr);
  ASSERT_TRUE(admin->Undeploy("gone").ok());
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations({a_->Loc("gone-a", "gone", 3), b_->Loc("gone-b", "gone", 1)}, 1);
  auto http = Http(gw->port());
  for (int i = 0; i < 12; ++i) {
    HttpClientResponse r = Invoke(http.get(), "gone", "echo", "m");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(InstanceOf(r), "gone-b");
  }
  GatewayStats s = gw->stats();
  EXPECT_GT(s.moved, 0u);  // P(a never drawn in 12) = 2^-12
  EXPECT_EQ(s.retries, s.moved);

  // Only the moved instance: 503 after the re-pick finds nothing.
  gw->SetLocations({a_->Loc("gone-a", "gone", 3)}, 2);
  HttpClientResponse r = Invoke(http.get(), "gone", "echo", "m");
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("moved"), std::string::npos) << r.body;
}

TEST_F(GatewayTest, SaturationRejectsAtOnceWithRetryAfter) {
  GatewayOptions o;
  o.max_inflight = 2;
  auto gw = StartGateway(o);
  ASSERT_NE(gw, nullptr);
  // One agent, two workers: two slow requests run side by side.
  gw->SetLocations({a_->Loc("relay-a", "relay")}, 1);
  std::vector<HttpClientResponse> slow(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      auto c = Http(gw->port());
      slow[i] = Invoke(c.get(), "relay", "sleep", "800");
    });
  }
  ASSERT_TRUE(WaitFor([&] { return gw->stats().in_flight == 2; }));
  auto http = Http(gw->port());
  const int64_t t0 = MonoNanos();
  HttpClientResponse r = Invoke(http.get(), "relay", "echo", "x");
  const int64_t took_ms = (MonoNanos() - t0) / 1'000'000;
  EXPECT_EQ(r.status, 503) << r.body;
  ASSERT_NE(r.FindHeader("retry-after"), nullptr);
  EXPECT_EQ(*r.FindHeader("retry-after"), "1");
  EXPECT_EQ(nlohmann::json::parse(r.body)["error"]["code"], "resource_exhausted");
  EXPECT_LT(took_ms, 400) << "the rejection must not wait for a slot";
  for (auto& t : threads) t.join();
  for (const auto& s : slow) EXPECT_EQ(s.status, 200) << s.body;
  EXPECT_EQ(gw->stats().rejected_saturation, 1u);
  // Slots free again.
  EXPECT_EQ(Invoke(http.get(), "relay", "echo", "x").status, 200);
}

TEST_F(GatewayTest, DeadlineAnswers504) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations({b_->Loc("relay-b", "relay")}, 1);
  auto http = Http(gw->port());
  const int64_t t0 = MonoNanos();
  HttpClientResponse r =
      Invoke(http.get(), "relay", "sleep", "2000", {{"X-Tern-Timeout-Ms", "50"}});
  const int64_t took_ms = (MonoNanos() - t0) / 1'000'000;
  EXPECT_EQ(r.status, 504) << r.body;
  EXPECT_EQ(nlohmann::json::parse(r.body)["error"]["code"], "deadline_exceeded");
  EXPECT_LT(took_ms, 1500);
  // The connection and the gateway go on (the late reply, if any, is dropped).
  EXPECT_EQ(Invoke(http.get(), "echo", "echo", "x").status, 404);  // not in this table
  gw->SetLocations({b_->Loc("relay-b", "relay"), b_->Loc("echo-b", "echo")}, 2);
  EXPECT_EQ(Invoke(http.get(), "echo", "echo", "x").status, 200);
}

TEST_F(GatewayTest, MalformedHttpIs400AndTheGatewayLives) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("echo"), 1);
  Result<transport::UniqueFd> fd = transport::ConnectTcp("127.0.0.1", gw->port(), 5s);
  ASSERT_TRUE(fd.ok()) << fd.status();
  const int64_t deadline = transport::DeadlineFromTimeout(5s);
  ASSERT_TRUE(transport::WriteAll(fd->get(), "GARBAGE\x01 / HTTP/9\r\n\r\n", deadline).ok());
  std::string got;
  char buf[4096];
  for (;;) {
    Result<size_t> n = transport::ReadSome(fd->get(), buf, sizeof(buf), deadline);
    ASSERT_TRUE(n.ok()) << n.status();
    if (*n == 0) break;
    got.append(buf, *n);
  }
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  auto http = Http(gw->port());
  HttpClientResponse r = Invoke(http.get(), "echo", "echo", "alive");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "alive");
}

TEST_F(GatewayTest, KeepAliveConnectionServesManyRequests) {
  auto gw = StartGateway();
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("echo"), 1);
  Result<transport::UniqueFd> fd = transport::ConnectTcp("127.0.0.1", gw->port(), 5s);
  ASSERT_TRUE(fd.ok()) << fd.status();
  const int64_t deadline = transport::DeadlineFromTimeout(20s);
  std::string in;
  char buf[4096];
  for (int i = 0; i < 100; ++i) {
    std::string body = "req" + std::to_string(i);
    std::string req = "POST /v1/invoke/echo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    ASSERT_TRUE(transport::WriteAll(fd->get(), req, deadline).ok());
    // Read one response on the same connection: head, then Content-Length bytes.
    size_t head_end;
    while ((head_end = in.find("\r\n\r\n")) == std::string::npos) {
      Result<size_t> n = transport::ReadSome(fd->get(), buf, sizeof(buf), deadline);
      ASSERT_TRUE(n.ok()) << n.status();
      ASSERT_GT(*n, 0u) << "the gateway closed the connection after " << i << " requests";
      in.append(buf, *n);
    }
    ASSERT_EQ(in.rfind("HTTP/1.1 200", 0), 0u) << in;
    size_t cl = in.find("Content-Length: ");
    ASSERT_LT(cl, head_end);
    size_t len = std::stoul(in.substr(cl + 16));
    while (in.size() < head_end + 4 + len) {
      Result<size_t> n = transport::ReadSome(fd->get(), buf, sizeof(buf), deadline);
      ASSERT_TRUE(n.ok() && *n > 0);
      in.append(buf, *n);
    }
    EXPECT_EQ(in.substr(head_end + 4, len), body);
    in.erase(0, head_end + 4 + len);
  }
  EXPECT_EQ(gw->stats().status_2xx, 100u);
}

TEST_F(GatewayTest, SeveralIoThreadsShareThePort) {
  GatewayOptions o;
  o.threads = 2;
  auto gw = StartGateway(o);
  ASSERT_NE(gw, nullptr);
  gw->SetLocations(Both("echo"), 1);
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int c = 0; c < 6; ++c) {
    clients.emplace_back([&, c] {
      auto http = Http(gw->port());
      for (int i = 0; i < 10; ++i) {
        std::string body = std::to_string(c) + "/" + std::to_string(i);
        HttpClientResponse r = Invoke(http.get(), "echo", "echo", body);
        if (r.status == 200 && r.body == body) ++ok;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 60);
  EXPECT_EQ(gw->stats().status_2xx, 60u);
}

// The controller's long-poll protocol, faked: GET /v1/locations?after=V&wait_ms=N
// answers as soon as the version is above V, or after wait_ms with the same version.
class FakeController {
 public:
  FakeController() {
    auto t = transport::EventLoopThread::Create();
    EXPECT_TRUE(t.ok());
    thread_ = std::move(*t);
    transport::HttpRouter r;
    r.HandleAsync("GET", "/v1/locations",
                  [this](transport::HttpRequest req, transport::HttpResponder resp) {
                    ++polls_;
                    uint64_t after = std::stoull(std::string(req.Query("after")));
                    int wait_ms = std::stoi(std::string(req.Query("wait_ms")));
                    if (version_ > after) {
                      resp.Respond(Answer());
                      return;
                    }
                    parked_.push_back(resp);
                    thread_->loop()->RunAfter(std::chrono::milliseconds(wait_ms),
                                              [this, resp] { resp.Respond(Answer()); });
                  });
    auto s = transport::HttpServer::Start(thread_->loop(), {}, std::move(r));
    EXPECT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    thread_->Start();
  }
  ~FakeController() {
    // Answer parked polls first, so no responder outlives the loop unanswered.
    thread_->loop()->RunSync([this] {
      for (const auto& p : parked_) p.Respond(Answer());
      parked_.clear();
      server_.reset();
    });
    thread_->Stop();
  }
  uint16_t port() const { return server_->port(); }
  int polls() const { return polls_.load(); }

  // Publishes a new table: parked polls are answered at once.
  void Publish(uint64_t version, std::vector<InstanceLocation> locs) {
    thread_->loop()->RunSync([&] {
      version_ = version;
      locations_ = std::move(locs);
      for (const auto& p : parked_) p.Respond(Answer());
      parked_.clear();
    });
  }

 private:
  transport::HttpResponse Answer() const {
    nlohmann::json j = nlohmann::json::parse(dataplane::LocationsToJson(locations_));
    j["version"] = version_;
    return transport::HttpResponse::Json(200, j.dump());
  }

  std::unique_ptr<transport::EventLoopThread> thread_;
  std::unique_ptr<transport::HttpServer> server_;
  // Loop-thread state.
  uint64_t version_ = 0;
  std::vector<InstanceLocation> locations_;
  std::vector<transport::HttpResponder> parked_;
  std::atomic<int> polls_{0};
};

TEST_F(GatewayTest, FollowsLocationUpdatesFromTheController) {
  auto controller = std::make_unique<FakeController>();
  controller->Publish(1, {a_->Loc("echo-a", "echo")});
  GatewayOptions o;
  o.controller = "127.0.0.1:" + std::to_string(controller->port());
  o.controller_wait = 300ms;
  auto gw = StartGateway(o);
  ASSERT_NE(gw, nullptr);
  ASSERT_TRUE(WaitFor([&] { return gw->locations_version() == 1; }));
  auto http = Http(gw->port());
  HttpClientResponse r = Invoke(http.get(), "echo", "echo", "v1");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(InstanceOf(r), "echo-a");

  // A new version replaces the table (echo-a is gone, not merged).
  controller->Publish(2, {b_->Loc("echo-b", "echo")});
  ASSERT_TRUE(WaitFor([&] { return gw->locations_version() == 2; }));
  for (int i = 0; i < 5; ++i) {
    r = Invoke(http.get(), "echo", "echo", "v2");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(InstanceOf(r), "echo-b");
  }
  // Long polls with no change come back after wait_ms and are renewed.
  const int polls = controller->polls();
  ASSERT_TRUE(WaitFor([&] { return controller->polls() >= polls + 2; }));

  // The controller goes away: the gateway keeps serving from the last table.
  controller.reset();
  std::this_thread::yield();
  r = Invoke(http.get(), "echo", "echo", "still");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(gw->locations_version(), 2u);
  EXPECT_EQ(gw->stats().locations, 1u);
}

TEST(ParseLocationsReplyTest, AcceptsTheControllerDocumentAndNamesErrors) {
  Result<LocationsSnapshot> s = ParseLocationsReply(
      R"({"version": 4, "locations": [{"instance": "e-1", "service": "e", "agent": "a",
          "tcp": "127.0.0.1:1", "epoch": 2}]})");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->version, 4u);
  ASSERT_EQ(s->locations.size(), 1u);
  EXPECT_EQ(s->locations[0].epoch, 2u);
  Result<LocationsSnapshot> bad = ParseLocationsReply(R"({"locations": []})");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("version"), std::string_view::npos);
  bad = ParseLocationsReply(R"({"version": 1, "locations": [{"instance": "x"}]})");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("locations[0]"), std::string_view::npos) << bad.status();
  EXPECT_FALSE(ParseLocationsReply("not json").ok());
}

// An agent dies: requests in flight on it get 503 at once (not retried), the next ones
// go to the other replica.
TEST(GatewayFailureTest, KilledAgentFailsInFlightAndTrafficMovesToTheOtherReplica) {
  auto a = Agent::Start("dev-k1", "h1");
  auto b = Agent::Start("dev-k2", "h2");
  ASSERT_NE(a->frame_port, 0);
  ASSERT_NE(b->frame_port, 0);
  a->Deploy("relay", "relay");
  b->Deploy("relay", "relay");
  GatewayOptions o;
  o.host_id = "h1";  // everything goes to a while it lives
  auto gw = StartGateway(o);
  ASSERT_NE(gw, nullptr);
  gw->SetLocations({a->Loc("relay-a", "relay"), b->Loc("relay-b", "relay")}, 1);

  // A first request opens the connection to a, so the slow one is sent at once.
  {
    auto c = Http(gw->port());
    HttpClientResponse r = Invoke(c.get(), "relay", "echo", "warm");
    ASSERT_EQ(r.status, 200) << r.body;
    ASSERT_EQ(InstanceOf(r), "relay-a");
  }
  HttpClientResponse slow;
  std::thread t([&] {
    auto c = Http(gw->port());
    slow = Invoke(c.get(), "relay", "sleep", "5000");
  });
  ASSERT_TRUE(WaitFor([&] { return gw->stats().in_flight == 1; }));
  const int64_t t0 = MonoNanos();
  Result<int> st = a->proc->Stop(SIGKILL, 10s);
  ASSERT_TRUE(st.ok()) << st.status();
  t.join();
  EXPECT_LT((MonoNanos() - t0) / 1'000'000, 3000);
  EXPECT_EQ(slow.status, 503) << slow.body;
  EXPECT_NE(slow.body.find("not retried"), std::string::npos) << slow.body;

  ASSERT_TRUE(WaitFor([&] { return gw->stats().upstream_connections == 0; }));
  auto http = Http(gw->port());
  for (int i = 0; i < 10; ++i) {
    const int64_t t1 = MonoNanos();
    HttpClientResponse r = Invoke(http.get(), "relay", "echo", "after");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(InstanceOf(r), "relay-b");
    EXPECT_LT((MonoNanos() - t1) / 1'000'000, 2000);
  }
  EXPECT_GE(gw->stats().retries, 1u);  // the first one found a refused
}

// The `tern gateway` command with a static location file.
TEST(GatewayCommandTest, ServesFromALocationsFileAndStopsOnSigterm) {
  auto a = Agent::Start("dev-c", "h1");
  ASSERT_NE(a->frame_port, 0);
  a->Deploy("echo", "echo");
  std::string dir = tern::testing::TempDir("gwcmd");
  std::string file = dir + "/locations.yaml";
  ASSERT_TRUE(WriteFileAtomic(file,
                              "locations:\n  - instance: echo-1\n    service: echo\n"
                              "    agent: dev-c\n    tcp: 127.0.0.1:" +
                                  std::to_string(a->frame_port) + "\n")
                  .ok());
  auto p = ChildProcess::Start({BinPath("tern"), "gateway", "--listen", "127.0.0.1:0",
                                "--locations", file, "--log-level", "warn"});
  ASSERT_TRUE(p.ok()) << p.status();
  Result<std::string> line = (*p)->ReadLine(20s);
  ASSERT_TRUE(line.ok()) << line.status();
  unsigned port = 0;
  ASSERT_EQ(std::sscanf(line->c_str(), "gateway listening on http://127.0.0.1:%u", &port), 1)
      << *line;
  auto http = Http(static_cast<uint16_t>(port));
  HttpClientResponse r = Invoke(http.get(), "echo", "echo", "cmd");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "cmd");
  EXPECT_EQ(InstanceOf(r), "echo-1");
  Result<int> st = (*p)->Stop(SIGTERM, 10s);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "status " << *st;

  // Bad flags: exit 2 with a message naming the problem.
  tern::testing::CommandResult bad =
      tern::testing::RunCommand({BinPath("tern"), "gateway", "--listen", "nowhere"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("--listen"), std::string::npos) << bad.output;
  bad = tern::testing::RunCommand({BinPath("tern"), "gateway"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("--controller"), std::string::npos) << bad.output;
  tern::testing::CommandResult help =
      tern::testing::RunCommand({BinPath("tern"), "gateway", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--max-inflight"), std::string::npos) << help.output;
}

}  // namespace
}  // namespace tern::gateway
