#include "http_load.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "core/file.h"
#include "procs.h"

namespace tern::bench::cluster {

namespace {

// "52.31us", "1.23ms", "2.00s", "1.50m" → microseconds; < 0 if not a time.
double ParseDurationUs(const std::string& token) {
  char* end = nullptr;
  double v = std::strtod(token.c_str(), &end);
  if (end == token.c_str()) return -1;
  std::string unit(end);
  if (unit == "us") return v;
  if (unit == "ms") return v * 1e3;
  if (unit == "s") return v * 1e6;
  if (unit == "m") return v * 60e6;
  if (unit == "h") return v * 3600e6;
  return -1;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

}  // namespace

Result<WrkResult> ParseWrkOutput(std::string_view text) {
  WrkResult r;
  bool have_rate = false, have_p50 = false, have_p99 = false, have_count = false;
  bool in_distribution = false;
  std::istringstream in{std::string(text)};
  for (std::string raw; std::getline(in, raw);) {
    std::string line = Trim(raw);
    if (line.rfind("Latency Distribution", 0) == 0) {
      in_distribution = true;
      continue;
    }
    if (in_distribution) {
      // "50%  123.00us"
      if (!line.empty() && line.find('%') != std::string::npos && line.find('%') < 4) {
        int pct = std::atoi(line.c_str());
        std::string value = Trim(line.substr(line.find('%') + 1));
        double us = ParseDurationUs(value);
        if (us < 0) {
          return InvalidArgumentError("wrk output: bad latency percentile line '" + line + "'");
        }
        if (pct == 50) r.p50_us = us, have_p50 = true;
        if (pct == 75) r.p75_us = us;
        if (pct == 90) r.p90_us = us;
        if (pct == 99) r.p99_us = us, have_p99 = true;
        continue;
      }
      in_distribution = false;
    }
    if (line.rfind("Latency ", 0) == 0) {  // Latency  avg  stdev  max  +/-
      std::istringstream f(line.substr(8));
      std::string avg, stdev, max;
      f >> avg >> stdev >> max;
      r.mean_us = std::max(0.0, ParseDurationUs(avg));
      r.max_us = std::max(0.0, ParseDurationUs(max));
    } else if (line.rfind("Requests/sec:", 0) == 0) {
      r.requests_per_s = std::strtod(line.c_str() + 13, nullptr);
      have_rate = true;
    } else if (line.find(" requests in ") != std::string::npos) {
      r.requests = std::strtoull(line.c_str(), nullptr, 10);
      have_count = true;
    } else if (line.rfind("Non-2xx or 3xx responses:", 0) == 0) {
      r.non_2xx = std::strtoull(line.c_str() + 25, nullptr, 10);
    } else if (line.rfind("Socket errors:", 0) == 0) {
      unsigned long long c = 0, rd = 0, w = 0, t = 0;
      if (std::sscanf(line.c_str(),
                      "Socket errors: connect %llu, read %llu, write %llu, timeout %llu", &c, &rd,
                      &w, &t) == 4) {
        r.socket_errors = c + rd + w + t;
      }
    }
  }
  if (!have_rate) return InvalidArgumentError("wrk output has no 'Requests/sec:' line");
  if (!have_count) return InvalidArgumentError("wrk output has no 'N requests in' line");
  if (!have_p50 || !have_p99) {
    return InvalidArgumentError("wrk output has no latency distribution (run with --latency)");
  }
  return r;
}

Status WriteWrkScript(const std::string& path, size_t body_bytes) {
  std::string lua = fmt::format(
      "-- written by cluster_bench: every request is a POST with a {} B body\n"
      "wrk.method = \"POST\"\n"
      "wrk.body = string.rep(\"x\", {})\n"
      "wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n",
      body_bytes, body_bytes);
  return WriteFileAtomic(path, lua);
}

Result<WrkResult> RunWrk(const WrkRun& run) {
  std::vector<std::string> argv = {kWrk,
                                   "-t" + std::to_string(run.threads),
                                   "-c" + std::to_string(run.connections),
                                   "-d" + std::to_string(run.seconds) + "s",
                                   "--timeout",
                                   "5s",
                                   "--latency",
                                   "-s",
                                   run.script,
                                   run.url};
  Captured c = RunCaptured(argv, std::chrono::seconds(run.seconds + 20), run.cpu);
  if (c.exit_code != 0) {
    return UnavailableError(fmt::format("wrk exited with {}: {}", c.exit_code, c.output));
  }
  Result<WrkResult> r = ParseWrkOutput(c.output);
  if (!r.ok()) return r.status().WithPrefix(c.output);
  return r;
}

// ------------------------------------------------------------------- limit responder

namespace {

constexpr size_t kReplyBody = 64;

struct Conn {
  std::string in;
  std::string out;
  size_t out_pos = 0;
  bool want_out = false;  // EPOLLOUT is in the interest set
};

// Content-Length of the header block [p, p + len) (case-insensitive); 0 when absent.
size_t ContentLength(const char* p, size_t len) {
  static constexpr char kName[] = "content-length:";
  const size_t n = sizeof(kName) - 1;
  for (size_t i = 0; i + n <= len; ++i) {
    if (i != 0 && p[i - 1] != '\n') continue;
    if (strncasecmp(p + i, kName, n) == 0) return std::strtoull(p + i + n, nullptr, 10);
  }
  return 0;
}

// Writes what is pending; false when the connection is dead.
bool Flush(int fd, Conn& c) {
  while (c.out_pos < c.out.size()) {
    ssize_t n = ::send(fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    c.out_pos += static_cast<size_t>(n);
  }
  c.out.clear();
  c.out_pos = 0;
  return true;
}

}  // namespace

Result<std::pair<int, uint16_t>> ListenLimit() {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) return ErrnoError("socket", errno);
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(lfd, 1024) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    int err = errno;
    ::close(lfd);
    return ErrnoError("limit responder: bind/listen 127.0.0.1:0", err);
  }
  return std::make_pair(lfd, static_cast<uint16_t>(ntohs(a.sin_port)));
}

int ServeLimit() {
  ::alarm(kServeLimitMaxSeconds);  // never outlives a benchmark run by much
  Result<std::pair<int, uint16_t>> l = ListenLimit();
  if (!l.ok()) {
    std::fprintf(stderr, "%s\n", l.status().ToString().c_str());
    return 1;
  }
  std::printf("listening %u\n", l->second);
  std::fflush(stdout);
  ServeLimitOn(l->first);
  return 1;
}

void ServeLimitOn(int lfd) {
  const int one = 1;
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = lfd;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

  const std::string reply = fmt::format(
      "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n{}",
      kReplyBody, std::string(kReplyBody, 'x'));
  std::unordered_map<int, Conn> conns;
  std::vector<epoll_event> events(256);
  char buf[65536];
  auto close_conn = [&](int fd) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    conns.erase(fd);
  };
  while (true) {
    int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == lfd) {
        while (true) {
          int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          ::setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          epoll_event cev{};
          cev.events = EPOLLIN;
          cev.data.fd = cfd;
          ::epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
          conns[cfd];
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      bool dead = false;
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        while (true) {
          ssize_t got = ::recv(fd, buf, sizeof(buf), 0);
          if (got < 0 && errno == EINTR) continue;
          if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          if (got <= 0) {
            dead = true;
            break;
          }
          c.in.append(buf, static_cast<size_t>(got));
        }
        // Every complete request (pipelined ones too) gets the fixed reply.
        size_t pos = 0;
        while (true) {
          size_t he = c.in.find("\r\n\r\n", pos);
          if (he == std::string::npos) break;
          size_t body = ContentLength(c.in.data() + pos, he - pos);
          if (c.in.size() < he + 4 + body) break;
          pos = he + 4 + body;
          c.out += reply;
        }
        c.in.erase(0, pos);
      }
      if (!dead && !Flush(fd, c)) dead = true;
      if (dead) {
        close_conn(fd);
        continue;
      }
      if (c.want_out != !c.out.empty()) {
        c.want_out = !c.out.empty();
        epoll_event cev{};
        cev.events = EPOLLIN | (c.want_out ? static_cast<uint32_t>(EPOLLOUT) : 0u);
        cev.data.fd = fd;
        ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &cev);
      }
    }
  }
}

}  // namespace tern::bench::cluster
