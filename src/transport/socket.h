// Socket helpers shared by the event-loop servers and the blocking clients: an owning
// fd wrapper, TCP listen/connect with name resolution, and deadline-bounded blocking
// reads and writes on non-blocking sockets.
//
// Ownership: UniqueFd owns one descriptor and closes it on destruction.
// Thread-safety: functions are stateless; a UniqueFd is used by one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include <sys/types.h>
#include <sys/uio.h>

#include "core/status.h"

struct sockaddr_un;

namespace tern::transport {

// Fills `*addr` with the Unix socket address of `path` (a filesystem path);
// InvalidArgument naming `what` if the path is empty or does not fit sun_path.
Status UnixSocketAddress(std::string_view what, const std::string& path, sockaddr_un* addr);

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes the current fd (if any) and takes `fd`.
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// One message on a Unix socket (SOCK_SEQPACKET or SOCK_DGRAM) with descriptors passed
// over SCM_RIGHTS: the shared-memory transport's handshake and the migration slots'.
inline constexpr size_t kMaxFdsPerUnixMessage = 4;
struct UnixMessage {
  size_t bytes = 0;         // of the message, into the caller's buffer
  bool would_block = false; // only without `wait`: nothing was there
  bool eof = false;         // the peer closed (no bytes, no descriptors)
  bool truncated = false;   // data or descriptors did not fit (the extra ones were closed)
  std::vector<UniqueFd> fds;
};
// recvmsg of one message into [buf, buf + cap), descriptors close-on-exec. With `wait`
// it blocks (bounded by the socket's SO_RCVTIMEO, if set); else it returns would_block.
Result<UnixMessage> ReceiveUnixMessage(int sock, void* buf, size_t cap, bool wait);
// sendmsg of one message with `fds` attached (at most kMaxFdsPerUnixMessage). Without
// `wait`, false when the socket has no room now (or too many descriptors are in flight
// for this user, ETOOMANYREFS: as good as full). A short write is an error.
Result<bool> SendUnixMessage(int sock, const void* data, size_t n, std::span<const int> fds,
                             bool wait);

// Creates a non-blocking listening TCP socket bound to host:port with SO_REUSEADDR.
// `host` is a name or literal address; "" and "*" mean all IPv4 addresses. Port 0
// picks a free port (see LocalPort). With `reuse_port`, SO_REUSEPORT is set too, so several
// sockets (one per I/O thread) can listen on one port and the kernel spreads connections.
Result<UniqueFd> ListenTcp(std::string_view host, uint16_t port, int backlog,
                           bool reuse_port = false);
// The local port a socket is bound to.
Result<uint16_t> LocalPort(int fd);
// A loopback TCP port that was free a moment ago (bound to port 0, then released), for
// programs that must be told their port before they start (etcd). Racy by nature.
Result<uint16_t> PickFreeLoopbackPort();
// "ip:port" of the peer, or "?" if unknown (for logs).
std::string PeerAddress(int fd);

// Connects to host:port, trying each resolved address until `timeout` runs out.
// Returns a non-blocking socket with TCP_NODELAY set. Errors: kUnavailable (refused,
// unreachable, name resolution failed temporarily), kDeadlineExceeded, kNotFound
// (no such host).
Result<UniqueFd> ConnectTcp(std::string_view host, uint16_t port, std::chrono::nanoseconds timeout);

Status SetNonBlocking(int fd);
Status SetNoDelay(int fd);
// Asks the kernel to stamp what this socket receives (SO_TIMESTAMPNS), for RecvDated.
Status EnableReceiveTimestamps(int fd);
// recvmsg(MSG_DONTWAIT) into `iov` that also tells when the data arrived: the kernel's
// receive time of the bytes read (SCM_TIMESTAMPNS, on CLOCK_REALTIME, moved to
// MonoNanos()'s clock), or the time of the read if the socket has no stamps or the clock
// stepped. `*received_ns` is set only when bytes were read. Returns what recvmsg does.
ssize_t RecvDated(int fd, const iovec* iov, int iovcnt, int64_t* received_ns);
// Keeps the kernel's receive timestamps on for this process, and waits (bounded, 2 s)
// until they are. Linux stamps packets only while some socket of the system asks for
// it, and switches that on lazily: the first such socket (or the first after the last
// one closed) schedules a work item, and what arrives before it ran carries no time, so
// a request that waited in its socket would be dated by its read. The first call holds
// one stamping socket open for good and checks that its own byte gets a stamp; later
// calls return at once. A server that dates its reads calls it before accepting.
void KeepReceiveTimestampsOn();

// Waits until `fd` is readable (or writable if `for_write`) or MonoNanos() reaches
// `deadline_nanos` (kDeadlineExceeded). A deadline of 0 or less means no deadline.
Status WaitFd(int fd, bool for_write, int64_t deadline_nanos);
// Writes all of `data` to a non-blocking socket before the deadline. kUnavailable if
// the peer is gone.
Status WriteAll(int fd, std::string_view data, int64_t deadline_nanos);
// Reads at least one byte (up to `n`) before the deadline; returns 0 at end of stream.
Result<size_t> ReadSome(int fd, char* buf, size_t n, int64_t deadline_nanos);

// MonoNanos() + timeout, saturating; a non-positive timeout means "no deadline" (0).
int64_t DeadlineFromTimeout(std::chrono::nanoseconds timeout);

}  // namespace tern::transport
