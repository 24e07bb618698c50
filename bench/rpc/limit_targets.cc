// The physical limits of a request/response between two processes on this machine,
// written for the benchmark with nothing of tern in them:
//
//   limit_shm  two ShmRings (shm_ring.h) in one memfd, one per direction; the client
//              copies the request in, the echo server copies it out into its own buffer
//              and back into the reply ring, the client copies the reply out. Waiting:
//              spin kLimitShmSpin, then futex — except in the pinned placement (both
//              ends on one vCPU), where it never spins (futex only).
//   limit_shm_v8  limit_shm with the echo guest (echo.wasm) in a bare V8 sandbox as the
//              echo (raw_echo.h): the floor of a shared-memory transport to a sandboxed
//              callee. The guest reads the request from the ring (ShmRing::Peek; given
//              back after the reply), so it copies as often as limit_shm. One call in
//              flight only.
//   limit_tcp  127.0.0.1, TCP_NODELAY, a uint32 length then the payload; blocking
//              writev/readv in the client; the echo server reads what has arrived and
//              writes back every complete message with one write. Also across the
//              emulated network (netns rows: the server host's 10.x address).
//
// Both also keep 16 calls in flight (pipelining on the same connection or ring pair):
// the throughput ceiling a transport could reach with that much concurrency.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/bench_util.h"
#include "core/file.h"
#include "raw_echo.h"
#include "rpc_target.h"
#include "shm_ring.h"
#include "wasm/engine.h"

namespace tern::bench::rpc {
namespace {

// The shared-memory rows' rings hold this many calls in flight (plus one).
constexpr int kRingInFlight = 16;

size_t NextPow2(size_t v) {
  size_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// ------------------------------------------------------------------------ limit_shm

// The memfd: request ring (client -> server) at 0, reply ring at RingBytes.
struct ShmLayout {
  size_t capacity = 0;
  size_t ring_bytes = 0;  // ShmRing::Bytes(capacity), rounded to a page
  size_t total = 0;
  static ShmLayout ForCapacity(size_t capacity) {
    ShmLayout l;
    l.capacity = capacity;
    l.ring_bytes = (ShmRing::Bytes(capacity) + 4095) & ~size_t{4095};
    l.total = 2 * l.ring_bytes;
    return l;
  }
};

class LimitShm final : public RpcTarget {
 public:
  // `serve_name`: limit_shm, or limit_shm_v8 (the echo guest behind the same ring).
  explicit LimitShm(std::string serve_name) : serve_name_(std::move(serve_name)) {}
  ~LimitShm() override { Release(); }

  Status Setup(const TargetConfig& config) override {
    payload_ = config.payload_bytes;
    spin_ = config.placement == Placement::kPinned ? 0 : kLimitShmSpin;
    max_in_flight_ = config.max_in_flight;
    // Both rows get the rings limit_shm needs for 16 calls in flight (2 MiB at 64 KiB),
    // whatever they measure: the ring's size alone moves a 64 KiB round trip by several
    // µs here (a 256 KiB ring made limit_shm_v8 19 µs where limit_shm took 6.8).
    layout_ = ShmLayout::ForCapacity(NextPow2(std::max<size_t>(
        64 * 1024,
        static_cast<size_t>(std::max(config.max_in_flight, kRingInFlight) + 1) *
            ShmRing::RecordBytes(payload_))));
    fd_ = memfd_create("tern-bench-limit-shm", MFD_CLOEXEC);
    if (fd_ < 0) return ErrnoError("memfd_create", errno);
    if (ftruncate(fd_, static_cast<off_t>(layout_.total)) != 0) {
      return ErrnoError("ftruncate", errno);
    }
    void* p =
        mmap(nullptr, layout_.total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, 0);
    if (p == MAP_FAILED) return ErrnoError("mmap", errno);
    base_ = static_cast<uint8_t*>(p);
    ShmRing::Init(base_, layout_.capacity);
    ShmRing::Init(base_ + layout_.ring_bytes, layout_.capacity);
    TERN_ASSIGN_OR_RETURN(request_, ShmRing::Attach(base_, layout_.ring_bytes));
    TERN_ASSIGN_OR_RETURN(reply_, ShmRing::Attach(base_ + layout_.ring_bytes, layout_.ring_bytes));
    std::vector<std::string> args = {"--fd=" + std::to_string(fd_),
                                     "--spin=" + std::to_string(spin_),
                                     "--payload=" + std::to_string(payload_)};
    if (serve_name_ == kLimitShmV8) args.push_back("--wasm=" + EchoWasmNextTo(config.self_binary));
    TERN_ASSIGN_OR_RETURN(server_, ServerProcess::Start(config.self_binary, serve_name_,
                                                        config.placement, args, {fd_}));
    return Status::Ok();
  }

  Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) override {
    if (!request_->TryPush(request.data(), static_cast<uint32_t>(request.size()))) {
      return InternalError("request ring full with one call in flight");
    }
    TERN_ASSIGN_OR_RETURN(uint32_t len,
                          reply_->Pop(reply.data(), reply.size(), spin_, NowNs() + kCallTimeoutNs));
    if (len != reply.size()) return DataLossError("reply of the wrong size");
    return Status::Ok();
  }

  Result<uint64_t> RunInFlight(int in_flight, std::span<const uint8_t> request,
                               int64_t deadline_ns) override {
    if (in_flight == 1) return RpcTarget::RunInFlight(1, request, deadline_ns);
    if (in_flight > max_in_flight_ || !request_->Fits(in_flight, request.size())) {
      return InvalidArgumentError("more calls in flight than the rings were sized for");
    }
    std::vector<uint8_t> reply(request.size());
    uint64_t done = 0;
    int outstanding = 0;
    bool stopping = false;
    while (true) {
      while (!stopping && outstanding < in_flight) {
        if (!request_->TryPush(request.data(), static_cast<uint32_t>(request.size()))) {
          return InternalError("request ring full");
        }
        ++outstanding;
      }
      if (outstanding == 0) break;
      TERN_ASSIGN_OR_RETURN(
          uint32_t len, reply_->Pop(reply.data(), reply.size(), spin_, NowNs() + kCallTimeoutNs));
      if (len != reply.size()) return DataLossError("reply of the wrong size");
      --outstanding;
      ++done;
      if ((done & 63) == 0 && NowNs() >= deadline_ns) stopping = true;
    }
    return done;
  }

  pid_t ServerPid() const override { return server_ ? server_->pid() : 0; }

  Status Teardown() override {
    Status st = server_ ? server_->Stop() : Status::Ok();
    Release();
    return st;
  }

 private:
  void Release() {
    server_.reset();
    if (base_ != nullptr) munmap(base_, layout_.total);
    base_ = nullptr;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  std::string serve_name_;
  size_t payload_ = 0;
  int spin_ = 0;
  int max_in_flight_ = 1;
  ShmLayout layout_;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  std::optional<ShmRing> request_;
  std::optional<ShmRing> reply_;
  std::unique_ptr<ServerProcess> server_;
};

// The echo server of limit_shm (echo == nullptr: the payload is copied out of one ring
// into its own buffer and into the other) and limit_shm_v8 (the echo guest copies it
// into its memory and replies from there).
int ServeShmEcho(const ServeArgs& args, const RawEchoFn* echo) {
  const int fd = static_cast<int>(args.Int("fd", -1));
  const int spin = static_cast<int>(args.Int("spin", 0));
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    std::perror("limit_shm server: --fd");
    return 1;
  }
  const size_t total = static_cast<size_t>(st.st_size);
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) {
    std::perror("limit_shm server: mmap");
    return 1;
  }
  auto* base = static_cast<uint8_t*>(p);
  const size_t ring_bytes = total / 2;
  Result<ShmRing> request = ShmRing::Attach(base, ring_bytes);
  Result<ShmRing> reply = ShmRing::Attach(base + ring_bytes, ring_bytes);
  if (!request.ok() || !reply.ok()) {
    std::fprintf(stderr, "limit_shm server: %s\n", request.status().ToString().c_str());
    return 1;
  }
  std::vector<uint8_t> buf(request->capacity());
  ReportReady("");
  while (true) {
    if (echo != nullptr) {
      // The guest reads the request from the ring (as tern's agent has it read a large
      // one): one copy into its memory; the record is given back after the reply.
      Result<ShmRing::Peeked> in = request->Peek(spin, NowNs() + 10'000'000'000);
      if (!in.ok()) continue;  // idle; we end by SIGTERM or with our parent
      Result<std::span<const uint8_t>> r = (*echo)(in->first, in->second);
      if (!r.ok()) {
        std::fprintf(stderr, "limit_shm_v8 server: %s\n", r.status().ToString().c_str());
        return 1;
      }
      while (!reply->TryPush(r->data(), static_cast<uint32_t>(r->size()))) sched_yield();
      request->Consume(in->len);
      continue;
    }
    Result<uint32_t> len = request->Pop(buf.data(), buf.size(), spin, NowNs() + 10'000'000'000);
    if (!len.ok()) continue;  // idle; we end by SIGTERM or with our parent
    while (!reply->TryPush(buf.data(), *len)) sched_yield();
  }
}

int ServeLimitShm(const ServeArgs& args) { return ServeShmEcho(args, nullptr); }

int ServeLimitShmV8(const ServeArgs& args) {
  auto it = args.values.find("wasm");
  Result<std::string> wasm =
      it == args.values.end() ? InvalidArgumentError("--wasm=PATH missing") : ReadFile(it->second);
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine({});  // initializes V8
  if (!wasm.ok() || !engine.ok()) {
    std::fprintf(stderr, "limit_shm_v8 server: %s\n",
                 (wasm.ok() ? engine.status() : wasm.status()).ToString().c_str());
    return 1;
  }
  int rc = 0;
  Status st = WithRawEcho(*wasm, [&](const RawEchoFn& echo) {
    rc = ServeShmEcho(args, &echo);
    return Status::Ok();
  });
  if (!st.ok()) {
    std::fprintf(stderr, "limit_shm_v8 server: %s\n", st.ToString().c_str());
    return 1;
  }
  return rc;
}

// ------------------------------------------------------------------------ limit_tcp

Status WriteFullV(int fd, iovec* iov, int count) {
  while (count > 0) {
    ssize_t r = writev(fd, iov, count);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("writev", errno);
    }
    auto n = static_cast<size_t>(r);
    while (count > 0 && n >= iov->iov_len) {
      n -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + n;
      iov->iov_len -= n;
    }
  }
  return Status::Ok();
}

Status ReadFullV(int fd, iovec* iov, int count) {
  while (count > 0) {
    ssize_t r = readv(fd, iov, count);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return r == 0 ? UnavailableError("connection closed") : ErrnoError("readv", errno);
    }
    auto n = static_cast<size_t>(r);
    while (count > 0 && n >= iov->iov_len) {
      n -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + n;
      iov->iov_len -= n;
    }
  }
  return Status::Ok();
}

void NoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

class LimitTcp final : public RpcTarget {
 public:
  ~LimitTcp() override {
    if (fd_ >= 0) close(fd_);
  }

  Status Setup(const TargetConfig& config) override {
    const std::string address = ServerAddress(config);
    TERN_ASSIGN_OR_RETURN(server_,
                          ServerProcess::Start(config.self_binary, "limit_tcp", config.placement,
                                               {"--bind=" + address}, {}, config.netns));
    const int port = std::atoi(server_->ready_info().c_str());
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1) {
      return InvalidArgumentError("bad server address '" + address + "'");
    }
    TERN_RETURN_IF_ERROR(RunAsClient(config, [&]() -> Status {
      fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd_ < 0) return ErrnoError("socket", errno);
      if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        return ErrnoError("connect to the limit_tcp server at " + address, errno);
      }
      return Status::Ok();
    }));
    NoDelay(fd_);
    if (config.netns != nullptr) {
      // The socket must be the client host's, not the root namespace's (which reaches
      // the server host through the bridge too, over one veth instead of two).
      sockaddr_in local{};
      socklen_t len = sizeof(local);
      char text[INET_ADDRSTRLEN] = "?";
      if (getsockname(fd_, reinterpret_cast<sockaddr*>(&local), &len) != 0) {
        return ErrnoError("getsockname", errno);
      }
      inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text));
      if (ClientAddress(config) != text) {
        return InternalError(std::string("the client socket's address is ") + text +
                             ", not the client host's " + ClientAddress(config));
      }
    }
    return Status::Ok();
  }

  Status RoundTrip(std::span<const uint8_t> request, std::span<uint8_t> reply) override {
    uint32_t len = static_cast<uint32_t>(request.size());
    iovec out[2] = {{&len, sizeof(len)}, {const_cast<uint8_t*>(request.data()), request.size()}};
    TERN_RETURN_IF_ERROR(WriteFullV(fd_, out, 2));
    uint32_t back = 0;
    iovec in[2] = {{&back, sizeof(back)}, {reply.data(), reply.size()}};
    TERN_RETURN_IF_ERROR(ReadFullV(fd_, in, 2));
    if (back != reply.size()) return DataLossError("reply of the wrong size");
    return Status::Ok();
  }

  // Pipelining on the one connection: non-blocking writes of whole messages while fewer
  // than `in_flight` are outstanding, reads of whatever has arrived, poll when neither
  // can progress.
  Result<uint64_t> RunInFlight(int in_flight, std::span<const uint8_t> request,
                               int64_t deadline_ns) override {
    if (in_flight == 1) return RpcTarget::RunInFlight(1, request, deadline_ns);
    const int flags = fcntl(fd_, F_GETFL);
    fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    Result<uint64_t> r = Pipeline(in_flight, request, deadline_ns);
    fcntl(fd_, F_SETFL, flags);
    return r;
  }

  pid_t ServerPid() const override { return server_ ? server_->pid() : 0; }

  Status Teardown() override {
    if (fd_ >= 0) close(fd_);  // the server sees EOF and exits 0
    fd_ = -1;
    if (!server_) return Status::Ok();
    for (int i = 0; i < 100 && server_->Alive(); ++i) usleep(1000);
    return server_->Stop();
  }

 private:
  Result<uint64_t> Pipeline(int in_flight, std::span<const uint8_t> request, int64_t deadline_ns) {
    const uint32_t len = static_cast<uint32_t>(request.size());
    const size_t message = sizeof(len) + request.size();
    std::vector<uint8_t> in(std::max<size_t>(1 << 20, 4 * message));
    size_t have = 0;
    size_t out_off = 0;  // bytes of the current message written (0: none in progress)
    int outstanding = 0;
    uint64_t done = 0;
    bool stopping = false;
    const int64_t hard_deadline = deadline_ns + kCallTimeoutNs;
    while (!stopping || outstanding > 0) {
      bool progress = false;
      while (out_off > 0 || (!stopping && outstanding < in_flight)) {
        iovec iov[2] = {{const_cast<uint32_t*>(&len), sizeof(len)},
                        {const_cast<uint8_t*>(request.data()), request.size()}};
        int first = 0;
        size_t skip = out_off;
        if (skip >= sizeof(len)) {
          skip -= sizeof(len);
          first = 1;
        }
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + skip;
        iov[first].iov_len -= skip;
        ssize_t w = writev(fd_, iov + first, 2 - first);
        if (w < 0) {
          if (errno == EAGAIN || errno == EINTR) break;
          return ErrnoError("writev", errno);
        }
        progress = true;
        if (out_off == 0) ++outstanding;
        out_off += static_cast<size_t>(w);
        if (out_off == message) out_off = 0;
      }
      ssize_t r = read(fd_, in.data() + have, in.size() - have);
      if (r == 0) return UnavailableError("limit_tcp server closed the connection");
      if (r < 0 && errno != EAGAIN && errno != EINTR) return ErrnoError("read", errno);
      if (r > 0) {
        progress = true;
        have += static_cast<size_t>(r);
        size_t off = 0;
        while (have - off >= sizeof(uint32_t)) {
          uint32_t n;
          std::memcpy(&n, in.data() + off, sizeof(n));
          if (n != len) return DataLossError("reply of the wrong size");
          if (have - off < sizeof(n) + n) break;
          off += sizeof(n) + n;
          --outstanding;
          ++done;
        }
        std::memmove(in.data(), in.data() + off, have - off);
        have -= off;
      }
      const int64_t now = NowNs();
      if (now >= deadline_ns) stopping = true;
      if (now >= hard_deadline) return DeadlineExceededError("pipelined calls did not complete");
      if (!progress) {
        const bool want_write = out_off > 0 || (!stopping && outstanding < in_flight);
        pollfd p{fd_, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0};
        poll(&p, 1, 100);
      }
    }
    return done;
  }

  int fd_ = -1;
  std::unique_ptr<ServerProcess> server_;
};

int ServeLimitTcp(const ServeArgs& args) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  socklen_t alen = sizeof(addr);
  if (inet_pton(AF_INET, args.bind_address().c_str(), &addr.sin_addr) != 1) {
    std::fprintf(stderr, "limit_tcp server: bad --bind=%s\n", args.bind_address().c_str());
    return 2;
  }
  if (ls < 0 || bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(ls, 1) != 0 || getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) {
    std::perror("limit_tcp server: listen");
    return 1;
  }
  ReportReady(std::to_string(ntohs(addr.sin_port)));
  int fd = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  close(ls);
  if (fd < 0) {
    std::perror("limit_tcp server: accept");
    return 1;
  }
  NoDelay(fd);
  // Echo every complete message back with one write per read.
  std::vector<uint8_t> buf(4 << 20);
  size_t have = 0;
  while (true) {
    ssize_t r = read(fd, buf.data() + have, buf.size() - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r == 0 ? 0 : 1;
    have += static_cast<size_t>(r);
    size_t off = 0;
    while (have - off >= sizeof(uint32_t)) {
      uint32_t n;
      std::memcpy(&n, buf.data() + off, sizeof(n));
      if (sizeof(n) + n > buf.size()) buf.resize(sizeof(n) + n);
      if (have - off < sizeof(n) + n) break;
      off += sizeof(n) + n;
    }
    if (off > 0) {
      iovec iov{buf.data(), off};
      if (!WriteFullV(fd, &iov, 1).ok()) return 1;
      std::memmove(buf.data(), buf.data() + off, have - off);
      have -= off;
    }
  }
}

}  // namespace

void RegisterLimitTargets(TargetList* list) {
  list->Add({.name = "limit_shm",
             .group = "limit",
             .description = "raw shared-memory ping-pong: an SPSC ring per direction in a memfd, "
                            "echo process; spin 2000 then futex (pinned: futex only)",
             .in_flight = {1, 16},
             .make = [] { return std::make_unique<LimitShm>("limit_shm"); },
             .serve = ServeLimitShm});
  list->Add({.name = kLimitShmV8,
             .group = "limit",
             .description = "limit_shm with the callee sandboxed: the same ring and echo "
                            "process, each request answered by the echo guest (echo.wasm) "
                            "called through V8's API alone (3 host calls, no tern code)",
             .in_flight = {1},
             .make = [] { return std::make_unique<LimitShm>(kLimitShmV8); },
             .serve = ServeLimitShmV8});
  list->Add({.name = "limit_tcp",
             .group = "limit",
             .description = "raw TCP ping-pong on 127.0.0.1: TCP_NODELAY, length-prefixed "
                            "messages, blocking read/write, echo process",
             .in_flight = {1, 16},
             .make = [] { return std::make_unique<LimitTcp>(); },
             .serve = ServeLimitTcp,
             .netns = true});
}

}  // namespace tern::bench::rpc
