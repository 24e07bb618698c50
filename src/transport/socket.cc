#include "transport/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <limits>
#include <memory>

#include "core/clock.h"

namespace tern::transport {
namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

Result<AddrInfoPtr> Resolve(std::string_view host, uint16_t port, bool passive) {
  std::string h(host);
  if (h.empty() || h == "*") h = "0.0.0.0";
  // Accept "[::1]" as well as "::1".
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(h.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    std::string msg = fmt::format("resolve {}: {}", h, gai_strerror(rc));
    if (rc == EAI_AGAIN) return UnavailableError(msg);
    if (rc == EAI_NONAME) return NotFoundError(msg);
    if (rc == EAI_SYSTEM) return ErrnoError(msg, errno);
    return InvalidArgumentError(msg);
  }
  return AddrInfoPtr(res);
}

std::string AddrToString(const sockaddr* sa) {
  char ip[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    port = ntohs(in->sin_port);
    return fmt::format("{}:{}", ip, port);
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    port = ntohs(in6->sin6_port);
    return fmt::format("[{}]:{}", ip, port);
  }
  return "?";
}

}  // namespace

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

int64_t DeadlineFromTimeout(std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return 0;
  int64_t now = MonoNanos();
  if (timeout.count() > std::numeric_limits<int64_t>::max() - now) return 0;
  return now + timeout.count();
}

Status SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError("fcntl(O_NONBLOCK)", errno);
  }
  return Status::Ok();
}

Status SetNoDelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return ErrnoError("setsockopt(TCP_NODELAY)", errno);
  }
  return Status::Ok();
}

Result<uint16_t> PickFreeLoopbackPort() {
  TERN_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp("127.0.0.1", 0, 1));
  return LocalPort(fd.get());
}

Result<UniqueFd> ListenTcp(std::string_view host, uint16_t port, int backlog, bool reuse_port) {
  TERN_ASSIGN_OR_RETURN(AddrInfoPtr res, Resolve(host, port, /*passive=*/true));
  Status last = UnavailableError(fmt::format("listen {}:{}: no usable address", host, port));
  for (addrinfo* ai = res.get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoError("socket", errno);
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuse_port && setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
      last = ErrnoError("setsockopt(SO_REUSEPORT)", errno);
      continue;
    }
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = ErrnoError(fmt::format("bind {}", AddrToString(ai->ai_addr)), errno);
      continue;
    }
    if (listen(fd.get(), backlog) != 0) {
      last = ErrnoError(fmt::format("listen {}", AddrToString(ai->ai_addr)), errno);
      continue;
    }
    return fd;
  }
  return last;
}

Result<uint16_t> LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return ErrnoError("getsockname", errno);
  }
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  }
  return InternalError("getsockname: not an IP socket");
}

std::string PeerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return AddrToString(reinterpret_cast<sockaddr*>(&ss));
}

Status WaitFd(int fd, bool for_write, int64_t deadline_nanos) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline_nanos > 0) {
      int64_t left = deadline_nanos - MonoNanos();
      if (left <= 0) return DeadlineExceededError("timed out");
      int64_t ms = (left + 999'999) / 1'000'000;
      timeout_ms = ms > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(ms);
    }
    pollfd p{};
    p.fd = fd;
    p.events = for_write ? POLLOUT : POLLIN;
    int rc = poll(&p, 1, timeout_ms);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll", errno);
    }
    // Errors and hang-ups count as ready: the following read/write reports them.
    if (rc > 0) return Status::Ok();
  }
}

Result<UniqueFd> ConnectTcp(std::string_view host, uint16_t port,
                            std::chrono::nanoseconds timeout) {
  const int64_t deadline = DeadlineFromTimeout(timeout);
  TERN_ASSIGN_OR_RETURN(AddrInfoPtr res, Resolve(host, port, /*passive=*/false));
  Status last = UnavailableError(fmt::format("connect {}:{}: no usable address", host, port));
  for (addrinfo* ai = res.get(); ai != nullptr; ai = ai->ai_next) {
    const std::string where =
        fmt::format("connect {}:{} ({})", host, port, AddrToString(ai->ai_addr));
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoError("socket", errno);
      continue;
    }
    int rc = connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno != EINPROGRESS) {
      last = ErrnoError(where, errno);
      continue;
    }
    if (rc != 0) {
      Status w = WaitFd(fd.get(), /*for_write=*/true, deadline);
      if (!w.ok()) {
        if (w.code() == StatusCode::kDeadlineExceeded) {
          return DeadlineExceededError(where + ": timed out");
        }
        return w.WithPrefix(where);
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = ErrnoError(where, err);
        continue;
      }
    }
    TERN_RETURN_IF_ERROR(SetNoDelay(fd.get()));
    return fd;
  }
  return last;
}

Status WriteAll(int fd, std::string_view data, int64_t deadline_nanos) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      TERN_RETURN_IF_ERROR(WaitFd(fd, /*for_write=*/true, deadline_nanos));
      continue;
    }
    return ErrnoError("send", n < 0 ? errno : EPIPE);
  }
  return Status::Ok();
}

Result<size_t> ReadSome(int fd, char* buf, size_t n, int64_t deadline_nanos) {
  for (;;) {
    ssize_t r = recv(fd, buf, n, 0);
    if (r >= 0) return static_cast<size_t>(r);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      TERN_RETURN_IF_ERROR(WaitFd(fd, /*for_write=*/false, deadline_nanos));
      continue;
    }
    return ErrnoError("recv", errno);
  }
}

}  // namespace tern::transport
