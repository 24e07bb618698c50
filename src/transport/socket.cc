#include "transport/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>

#include "core/clock.h"
#include "core/logging.h"

namespace tern::transport {

Status UnixSocketAddress(std::string_view what, const std::string& path, sockaddr_un* addr) {
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) {
    return InvalidArgumentError(fmt::format("{} path '{}' is empty or longer than {}", what, path,
                                            sizeof(addr->sun_path) - 1));
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  return Status::Ok();
}

Result<UnixMessage> ReceiveUnixMessage(int sock, void* buf, size_t cap, bool wait) {
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerUnixMessage)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT));
  } while (n < 0 && errno == EINTR);
  UnixMessage r;
  if (n < 0) {
    if (!wait && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      r.would_block = true;
      return r;
    }
    return ErrnoError("recvmsg", errno);
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      r.fds.emplace_back(fd);
    }
  }
  r.bytes = static_cast<size_t>(n);
  r.eof = n == 0 && r.fds.empty();
  r.truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  return r;
}

Result<bool> SendUnixMessage(int sock, const void* data, size_t n, std::span<const int> fds,
                             bool wait) {
  if (fds.size() > kMaxFdsPerUnixMessage) {
    return InvalidArgumentError(fmt::format("sendmsg: {} descriptors in one message (at most {})",
                                            fds.size(), kMaxFdsPerUnixMessage));
  }
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerUnixMessage)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t r;
  do {
    r = sendmsg(sock, &msg, MSG_NOSIGNAL | (wait ? 0 : MSG_DONTWAIT));
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (!wait && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETOOMANYREFS)) return false;
    return ErrnoError("sendmsg", errno);
  }
  if (static_cast<size_t>(r) != n) return InternalError("sendmsg: short write on a Unix socket");
  return true;
}
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

Status EnableReceiveTimestamps(int fd) {
  const int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) != 0) {
    return ErrnoError("setsockopt(SO_TIMESTAMPNS)", errno);
  }
  return Status::Ok();
}

ssize_t RecvDated(int fd, const iovec* iov, int iovcnt, int64_t* received_ns) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n <= 0) return n;
  const int64_t mono = MonoNanos();
  *received_ns = mono;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_TIMESTAMPNS) continue;
    timespec ts;
    std::memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
    timespec real;
    ::clock_gettime(CLOCK_REALTIME, &real);
    const int64_t age = (int64_t{real.tv_sec} - ts.tv_sec) * 1'000'000'000 +
                        (int64_t{real.tv_nsec} - ts.tv_nsec);
    // A clock step could make the age negative or absurd: then the read time stands.
    if (age > 0 && age < 60'000'000'000) *received_ns = mono - age;
  }
  return n;
}

// Why (see socket.h): on a loaded machine, tcp_serving_test's DeadlineExpiresWhileQueued
// failed in bursts, one run in ten, while other processes started and stopped agents and
// with them the last stamping socket of the system.
void KeepReceiveTimestampsOn() {
  static std::once_flag once;
  std::call_once(once, [] {
    UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    auto* sa = reinterpret_cast<sockaddr*>(&addr);
    if (!listener.valid() || !client.valid() || ::bind(listener.get(), sa, sizeof(addr)) != 0 ||
        ::listen(listener.get(), 1) != 0 || ::getsockname(listener.get(), sa, &len) != 0 ||
        ::connect(client.get(), sa, sizeof(addr)) != 0) {
      TERN_LOG(WARN) << "receive timestamps not checked: " << ErrnoError("loopback probe", errno);
      return;
    }
    // Never closed: while it is open the kernel keeps stamping.
    const int held = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
    const int on = 1;
    if (held < 0 || ::setsockopt(held, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) != 0) {
      TERN_LOG(WARN) << "receive timestamps not kept on: " << ErrnoError("probe socket", errno);
      return;
    }
    const int64_t give_up = MonoNanos() + 2'000'000'000;
    for (;;) {
      char byte = 0;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
      iovec iov{&byte, 1};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      if (::write(client.get(), &byte, 1) != 1 || ::recvmsg(held, &msg, 0) != 1) {
        TERN_LOG(WARN) << "receive timestamps not checked: " << ErrnoError("probe", errno);
        return;
      }
      for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) return;
      }
      if (MonoNanos() >= give_up) {
        TERN_LOG(WARN) << "the kernel does not stamp received packets: TCP requests are "
                          "dated by their read, not their arrival";
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
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
