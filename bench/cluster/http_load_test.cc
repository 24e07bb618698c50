// What cluster_bench's numbers rest on: wrk's output parsed right (and refused when a
// part is missing), and the limit responder answering every request, pipelined ones and
// bodies split over writes included.
#include "http_load.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "core/clock.h"

namespace tern::bench::cluster {
namespace {

// Output of `wrk -t2 -c16 -d2s --latency -s post.lua URL` (wrk 4.1), lightly edited.
constexpr const char* kWrkOutput =
    "Running 2s test @ http://127.0.0.1:40000/v1/invoke/echo/echo\n"
    "  2 threads and 16 connections\n"
    "  Thread Stats   Avg      Stdev     Max   +/- Stdev\n"
    "    Latency   350.12us  210.50us   2.31ms   88.20%\n"
    "    Req/Sec    22.10k     1.20k   24.00k    70.00%\n"
    "  Latency Distribution\n"
    "     50%  321.00us\n"
    "     75%  420.00us\n"
    "     90%  610.00us\n"
    "     99%    1.92ms\n"
    "  88212 requests in 2.00s, 11.20MB read\n"
    "  Socket errors: connect 0, read 1, write 0, timeout 2\n"
    "  Non-2xx or 3xx responses: 7\n"
    "Requests/sec:  44105.91\n"
    "Transfer/sec:      5.60MB\n";

TEST(WrkOutputTest, ParsesRateCountPercentilesAndErrors) {
  Result<WrkResult> r = ParseWrkOutput(kWrkOutput);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->requests_per_s, 44105.91);
  EXPECT_EQ(r->requests, 88212u);
  EXPECT_DOUBLE_EQ(r->p50_us, 321.0);
  EXPECT_DOUBLE_EQ(r->p75_us, 420.0);
  EXPECT_DOUBLE_EQ(r->p90_us, 610.0);
  EXPECT_DOUBLE_EQ(r->p99_us, 1920.0);
  EXPECT_DOUBLE_EQ(r->mean_us, 350.12);
  EXPECT_DOUBLE_EQ(r->max_us, 2310.0);
  EXPECT_EQ(r->non_2xx, 7u);
  EXPECT_EQ(r->socket_errors, 3u);
}

TEST(WrkOutputTest, SecondsAreMicroseconds) {
  std::string text = kWrkOutput;
  text.replace(text.find("1.92ms"), 6, "1.50s");
  Result<WrkResult> r = ParseWrkOutput(text);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->p99_us, 1.5e6);
}

TEST(WrkOutputTest, MissingPartsAreErrorsThatSayWhat) {
  std::string no_dist = kWrkOutput;
  no_dist.erase(no_dist.find("  Latency Distribution"),
                no_dist.find("  88212") - no_dist.find("  Latency Distribution"));
  Result<WrkResult> r = ParseWrkOutput(no_dist);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--latency"), std::string::npos) << r.status();

  r = ParseWrkOutput("unable to connect to 127.0.0.1:1 Connection refused\n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("Requests/sec"), std::string::npos) << r.status();

  std::string bad_unit = kWrkOutput;
  bad_unit.replace(bad_unit.find("321.00us"), 8, "321.00xx");
  r = ParseWrkOutput(bad_unit);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("321.00xx"), std::string::npos) << r.status();
}

// Reads from `fd` until `want` bytes arrived or 5 s passed.
std::string ReadAtLeast(int fd, size_t want) {
  std::string got;
  const int64_t deadline = MonoNanos() + int64_t{5} * 1000000000;
  while (got.size() < want && MonoNanos() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

TEST(LimitResponderTest, AnswersPipelinedRequestsAndWaitsForSplitBodies) {
  Result<std::pair<int, uint16_t>> l = ListenLimit();
  ASSERT_TRUE(l.ok()) << l.status();
  // The responder runs until the test process exits.
  std::thread([fd = l->first] { ServeLimitOn(fd); }).detach();

  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(l->second);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);

  const std::string reply =
      "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 64\r\n\r\n" +
      std::string(64, 'x');
  const std::string post =
      "POST /v1/invoke/echo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
  // Two pipelined requests in one write, then a third whose body comes later.
  std::string two = post + post;
  ASSERT_EQ(::send(fd, two.data(), two.size(), 0), static_cast<ssize_t>(two.size()));
  EXPECT_EQ(ReadAtLeast(fd, 2 * reply.size()), reply + reply);

  const std::string head = "POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nab";
  ASSERT_EQ(::send(fd, head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
  pollfd p{fd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 100), 0) << "answered before the body was complete";
  ASSERT_EQ(::send(fd, "cd", 2, 0), 2);
  EXPECT_EQ(ReadAtLeast(fd, reply.size()), reply);
  ::close(fd);
}

}  // namespace
}  // namespace tern::bench::cluster
