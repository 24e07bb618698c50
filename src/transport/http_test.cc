// HttpServer through real sockets on 127.0.0.1 (port 0), with HttpClient and raw bytes.
#include "transport/http.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/mutex.h"
#include "transport/tcp.h"

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

TEST(HttpHelpersTest, QueryStringAndPercentDecoding) {
  auto q = ParseQueryString("a=1&b=x%20y+z&empty=&flag&a=2&%41=%zz");
  EXPECT_EQ(q["a"], "2");  // last wins
  EXPECT_EQ(q["b"], "x y z");
  EXPECT_EQ(q["empty"], "");
  EXPECT_TRUE(q.count("flag"));
  EXPECT_EQ(q["A"], "%zz");  // malformed escapes are kept
  EXPECT_EQ(PercentDecode("a+b%2Fc", false), "a+b/c");
  EXPECT_EQ(PercentDecode("100%", true), "100%");
}

TEST(HttpHelpersTest, StatusMapping) {
  EXPECT_EQ(HttpStatusForCode(StatusCode::kOk), 200);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusForCode(StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpReasonPhrase(413), "Content Too Large");
}

TEST(HttpRouterTest, ExactBeatsPrefixAndLongerPrefixWins) {
  HttpRouter router;
  router.Handle("GET", "/v1/items", [](const HttpRequest&) { return HttpResponse(); });
  router.Handle("GET", "/v1/*", [](const HttpRequest&) { return HttpResponse(); });
  router.Handle("GET", "/v1/items/*", [](const HttpRequest&) { return HttpResponse(); });
  router.Handle("POST", "/v1/other", [](const HttpRequest&) { return HttpResponse(); });
  bool matched;
  const HttpRouter::Route* r = router.Match("GET", "/v1/items", &matched);
  ASSERT_NE(r, nullptr);
  EXPECT_FALSE(r->prefix);
  r = router.Match("GET", "/v1/items/abc", &matched);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->pattern, "/v1/items/");
  r = router.Match("GET", "/v1/zzz", &matched);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->pattern, "/v1/");
  EXPECT_EQ(router.Match("GET", "/v2", &matched), nullptr);
  EXPECT_FALSE(matched);
  EXPECT_EQ(router.Match("DELETE", "/v1/other", &matched), nullptr);
  EXPECT_TRUE(matched);
  EXPECT_NE(router.Match("HEAD", "/v1/items", &matched), nullptr);  // falls back to GET
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = {}) {
    auto t = EventLoopThread::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    loop_thread_ = std::move(t).value();
    HttpRouter router;
    router.Handle("GET", "/hello",
                  [](const HttpRequest&) { return HttpResponse::Text(200, "hi\n"); });
    router.Handle("POST", "/echo", [](const HttpRequest& req) {
      HttpResponse r = HttpResponse::Text(200, req.body);
      r.content_type = std::string(req.Header("Content-Type"));
      r.headers.emplace_back("X-Body-Bytes", std::to_string(req.body.size()));
      return r;
    });
    router.Handle("GET", "/query", [](const HttpRequest& req) {
      std::string out = req.path + "|" + req.query_string;
      for (const auto& [k, v] : req.query) out += "|" + k + "=" + v;
      return HttpResponse::Text(200, out);
    });
    router.Handle("GET", "/headers", [](const HttpRequest& req) {
      return HttpResponse::Text(200, std::string(req.Header("x-TEST")));
    });
    router.Handle("GET", "/items/*", [](const HttpRequest& req) {
      return HttpResponse::Json(200, "{\"path\":\"" + req.path + "\"}");
    });
    router.HandleAsync("GET", "/async", [this](HttpRequest req, HttpResponder responder) {
      MutexLock lock(&mu_);
      workers_.emplace_back([req = std::move(req), responder] {
        responder.Respond(HttpResponse::Text(202, "async " + std::string(req.Query("n"))));
        responder.Respond(HttpResponse::Text(500, "second response is ignored"));
      });
    });
    router.HandleAsync("GET", "/dropped", [](HttpRequest, HttpResponder) {
      // Forgets the responder: the client must get a 500, not hang.
    });
    auto s = HttpServer::Start(loop_thread_->loop(), options, std::move(router));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(s).value();
    loop_thread_->Start();
  }

  void TearDown() override {
    if (loop_thread_) loop_thread_->Stop();
    {
      MutexLock lock(&mu_);
      for (auto& w : workers_) w.join();
      workers_.clear();
    }
    server_.reset();
    loop_thread_.reset();
  }

  std::unique_ptr<HttpClient> Client() {
    auto c = HttpClient::Connect("127.0.0.1", server_->port(), 5s);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  size_t ConnectionCount() {
    size_t n = 0;
    loop_thread_->loop()->RunSync([&] { n = server_->connection_count(); });
    return n;
  }

  // Sends raw bytes on a new connection and reads until the server closes it or
  // `done(received)` says enough.
  std::string RawExchange(std::string_view request,
                          const std::function<bool(const std::string&)>& done = nullptr) {
    auto fd = ConnectTcp("127.0.0.1", server_->port(), 5s);
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (!fd.ok()) return "";
    const int64_t deadline = MonoNanos() + 10'000'000'000;
    Status w = WriteAll(fd->get(), request, deadline);
    EXPECT_TRUE(w.ok()) << w;
    std::string got;
    char buf[8192];
    while (!(done && done(got))) {
      Result<size_t> n = ReadSome(fd->get(), buf, sizeof(buf), deadline);
      if (!n.ok()) {
        ADD_FAILURE() << n.status() << " after receiving: " << got;
        break;
      }
      if (*n == 0) break;
      got.append(buf, *n);
    }
    return got;
  }

  std::unique_ptr<EventLoopThread> loop_thread_;
  std::unique_ptr<HttpServer> server_;
  Mutex mu_;
  std::vector<std::thread> workers_ GUARDED_BY(mu_);
};

size_t Count(const std::string& s, std::string_view what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST_F(HttpServerTest, GetAndPostThroughTheClient) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  auto r = c->Request("GET", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hi\n");
  ASSERT_NE(r->FindHeader("content-type"), nullptr);
  EXPECT_EQ(*r->FindHeader("Content-Type"), "text/plain; charset=utf-8");

  r = c->Request("POST", "/echo", "{\"x\":1}", "application/json");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "{\"x\":1}");
  EXPECT_EQ(*r->FindHeader("content-type"), "application/json");
  EXPECT_EQ(*r->FindHeader("x-body-bytes"), "7");

  // Both requests went over one kept-alive connection.
  EXPECT_EQ(ConnectionCount(), 1u);
}

TEST_F(HttpServerTest, QueryHeadersAndPrefixRoutes) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  auto r = c->Request("GET", "/query?a=1&b=x%20y+z");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "/query|a=1&b=x%20y+z|a=1|b=x y z");
  r = c->Request("GET", "/headers", "", "", 5s, {{"X-Test", "value-1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "value-1");
  r = c->Request("GET", "/items/abc");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "{\"path\":\"/items/abc\"}");
  EXPECT_EQ(*r->FindHeader("content-type"), "application/json");
  r = c->Request("GET", "/nope");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  r = c->Request("DELETE", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 405);
  r = c->Request("HEAD", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "");
  EXPECT_EQ(*r->FindHeader("content-length"), "3");
  // Still one connection, still in step.
  r = c->Request("GET", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "hi\n");
}

TEST_F(HttpServerTest, AsyncHandlersAndDroppedResponders) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 20; ++i) {
    auto r = c->Request("GET", "/async?n=" + std::to_string(i));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 202);
    EXPECT_EQ(r->body, "async " + std::to_string(i));
  }
  auto r = c->Request("GET", "/dropped");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 500);
  r = c->Request("GET", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, KeepAliveTwoPipelinedRequestsOnOneConnection) {
  StartServer();
  std::string got = RawExchange(
      "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /async?n=7 HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde",
      [](const std::string& s) { return s.find("abcde") != std::string::npos; });
  EXPECT_EQ(Count(got, "HTTP/1.1 200 OK"), 2u) << got;
  EXPECT_EQ(Count(got, "HTTP/1.1 202 Accepted"), 1u) << got;
  // In order.
  size_t a = got.find("hi\n"), b = got.find("async 7"), e = got.find("abcde");
  EXPECT_LT(a, b);
  EXPECT_LT(b, e);
  EXPECT_EQ(got.find("Connection: close"), std::string::npos) << got;
}

TEST_F(HttpServerTest, Http10ClosesUnlessKeepAlive) {
  StartServer();
  std::string got = RawExchange("GET /hello HTTP/1.0\r\n\r\n");  // read to EOF
  EXPECT_EQ(got.substr(0, 15), "HTTP/1.1 200 OK") << got;
  EXPECT_NE(got.find("Connection: close"), std::string::npos) << got;
  got = RawExchange("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                    [](const std::string& s) { return s.find("hi\n") != std::string::npos; });
  EXPECT_NE(got.find("Connection: keep-alive"), std::string::npos) << got;
}

TEST_F(HttpServerTest, GarbageGets400AndClose) {
  StartServer();
  std::string got = RawExchange("\x16\x03\x01 this is not http\r\n\r\n");
  EXPECT_EQ(got.substr(0, 24), "HTTP/1.1 400 Bad Request") << got;
  EXPECT_NE(got.find("Connection: close"), std::string::npos);
  got = RawExchange("GET /hello HTTP/1.1\r\nBad Header\r\n\r\n");
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 400") << got;
  got = RawExchange("GET /hello HTTP/1.1\r\nContent-Length: 12x\r\n\r\n");
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 400") << got;
  got = RawExchange("GET /hello HTTP/2.0\r\n\r\n");
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 505") << got;
  // The server is fine afterwards.
  auto c = Client();
  ASSERT_NE(c, nullptr);
  auto r = c->Request("GET", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, OversizeBodyGets413) {
  HttpServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  std::string req = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n";
  req += std::string(4096, 'b');
  std::string got = RawExchange(req);
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 413") << got;
  EXPECT_NE(got.find("exceeds the limit of 1024"), std::string::npos) << got;
  // Through the client as well; exactly at the limit is fine.
  auto c = Client();
  ASSERT_NE(c, nullptr);
  auto r = c->Request("POST", "/echo", std::string(1025, 'x'));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 413);
  r = c->Request("POST", "/echo", std::string(1024, 'x'));  // reconnects
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.size(), 1024u);
}

TEST_F(HttpServerTest, OversizeHeadGets431) {
  StartServer();
  std::string req = "GET /hello HTTP/1.1\r\nX-Big: " + std::string(20 << 10, 'h');
  std::string got = RawExchange(req);  // never finishes the head
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 431") << got.substr(0, 100);
}

TEST_F(HttpServerTest, ChunkedRequestGets411) {
  StartServer();
  std::string got = RawExchange(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n0\r\n\r\n");
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 411") << got;
  EXPECT_NE(got.find("Content-Length"), std::string::npos) << got;
}

TEST_F(HttpServerTest, ExpectContinue) {
  StartServer();
  auto fd = ConnectTcp("127.0.0.1", server_->port(), 5s);
  ASSERT_TRUE(fd.ok()) << fd.status();
  const int64_t deadline = MonoNanos() + 10'000'000'000;
  ASSERT_TRUE(WriteAll(fd->get(),
                       "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       "Content-Length: 3\r\n\r\n",
                       deadline)
                  .ok());
  std::string got;
  char buf[1024];
  while (got.find("\r\n\r\n") == std::string::npos) {
    Result<size_t> n = ReadSome(fd->get(), buf, sizeof(buf), deadline);
    ASSERT_TRUE(n.ok() && *n > 0);
    got.append(buf, *n);
  }
  EXPECT_EQ(got, "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(WriteAll(fd->get(), "xyz", deadline).ok());
  got.clear();
  while (got.find("xyz") == std::string::npos) {
    Result<size_t> n = ReadSome(fd->get(), buf, sizeof(buf), deadline);
    ASSERT_TRUE(n.ok() && *n > 0);
    got.append(buf, *n);
  }
  EXPECT_EQ(got.substr(0, 15), "HTTP/1.1 200 OK");
}

TEST_F(HttpServerTest, LargeBodyRoundTrip) {
  StartServer();
  auto c = Client();
  ASSERT_NE(c, nullptr);
  std::string body(8 << 20, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>('a' + i % 26);
  auto r = c->Request("POST", "/echo", body, "application/octet-stream", 30s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->body == body);
}

TEST_F(HttpServerTest, ClientReconnectsAfterServerClosedIdleConnection) {
  HttpServerOptions options;
  options.limits.idle_timeout = 50ms;
  StartServer(options);
  auto c = Client();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Request("GET", "/hello").ok());
  ASSERT_TRUE(WaitUntil([&] { return ConnectionCount() == 0; }));
  auto r = c->Request("GET", "/hello");  // the kept-alive connection is gone: retried
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, ConcurrentClients) {
  StartServer();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto c = HttpClient::Connect("127.0.0.1", server_->port(), 5s);
      ASSERT_TRUE(c.ok()) << c.status();
      for (int i = 0; i < 100; ++i) {
        std::string body = std::to_string(t * 1000 + i);
        auto r = (*c)->Request(i % 2 ? "POST" : "GET", i % 2 ? "/echo" : "/async?n=" + body,
                               i % 2 ? body : "");
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(r->body, i % 2 ? body : "async " + body);
        ++ok;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok, 400);
}

TEST_F(HttpServerTest, ConnectionLimitGets503) {
  HttpServerOptions options;
  options.max_connections = 1;
  StartServer(options);
  auto first = Client();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->Request("GET", "/hello").ok());
  std::string got = RawExchange("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 503") << got;
  auto r = first->Request("GET", "/hello");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST(HttpClientTest, ConnectionRefusedIsUnavailable) {
  auto l = TcpListener::Listen("127.0.0.1", 0);
  ASSERT_TRUE(l.ok());
  uint16_t port = (*l)->port();
  l->reset();
  auto c = HttpClient::Connect("127.0.0.1", port, 5s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status();
}

}  // namespace
}  // namespace tern::transport
