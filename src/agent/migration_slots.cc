#include "agent/migration_slots.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/bytes.h"
#include "core/logging.h"
#include "core/clock.h"
#include "transport/socket.h"

namespace tern::agent {

namespace {

constexpr size_t kSetBytes = kMigSlots * kMigSlotBytes;

// Writes one byte of every 4 KiB page of [p, p + kSetBytes) (a zero where there is one).
// MADV_POPULATE_WRITE sets up the page tables, but on this VM (shadow page tables) the
// first access to each 4 KiB page still traps: measured, the first pass over a populated
// 24 MiB set copies at ~0.6 GB/s, later passes at 7-14 GB/s. Touched here, outside the
// copies, and once per mapping (sets and mappings are kept with a memory reserve).
void TouchPages(char* p) {
  for (size_t off = 0; off < kSetBytes; off += 4096) {
    volatile char* c = p + off;
    *c = *c;
  }
}
constexpr uint32_t kHelloMagic = 0x314C534D;  // "MSL1": a source's handshake
constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW;
// A handshake's messages are small and immediate; a peer that stalls is dropped.
constexpr int kHandshakeTimeoutMs = 5000;

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr;
  TERN_RETURN_IF_ERROR(transport::UnixSocketAddress("slot socket", path, &addr));
  return addr;
}

void SetTimeouts(int fd) {
  timeval tv{kHandshakeTimeoutMs / 1000, (kHandshakeTimeoutMs % 1000) * 1000};
  (void)::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// One message, with `fd` attached when it is >= 0 (blocking, bounded by SetTimeouts).
Status SendWithFd(int sock, std::string_view data, int fd) {
  const int fds[1] = {fd};
  return transport::SendUnixMessage(sock, data.data(), data.size(),
                                    std::span<const int>(fds, fd >= 0 ? 1 : 0), /*wait=*/true)
      .status();
}

// One message into `buf` (its size is set to what arrived), and the descriptor attached
// to it, if any (any others are closed).
Status RecvWithFd(int sock, std::string* buf, transport::UniqueFd* fd) {
  TERN_ASSIGN_OR_RETURN(transport::UnixMessage m,
                        transport::ReceiveUnixMessage(sock, buf->data(), buf->size(),
                                                      /*wait=*/true));
  if (!m.fds.empty()) *fd = std::move(m.fds.front());
  buf->resize(m.bytes);
  return Status::Ok();
}

// The answer to a handshake: u32 status code (0 = OK: the memfd is attached), u32
// message length, the message.
std::string Answer(const Status& st) {
  std::string out(8, '\0');
  const std::string_view text = st.message().substr(0, 200);
  StoreU32(out.data(), static_cast<uint32_t>(st.code()));
  StoreU32(out.data() + 4, static_cast<uint32_t>(text.size()));
  out.append(text);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------
// MigSlots

MigSlots::MigSlots(transport::UniqueFd fd, char* base) : fd_(std::move(fd)), base_(base) {
  struct stat st;
  if (::fstat(fd_.get(), &st) == 0) {
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
}

MigSlots::~MigSlots() { ::munmap(base_, kSetBytes); }

bool MigSlots::SameFile(int fd) const {
  struct stat st;
  return ino_ != 0 && ::fstat(fd, &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_;
}

Result<std::shared_ptr<MigSlots>> MigSlots::Create(bool populate) {
  transport::UniqueFd fd(::memfd_create("tern-mig-slots", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoError("memfd_create (migration slots)", errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(kSetBytes)) != 0) {
    return ErrnoError("ftruncate (migration slots)", errno);
  }
  // The source maps it: sealed, it cannot be shrunk under the source's copies (SIGBUS)
  // by anyone, nor unsealed.
  if (::fcntl(fd.get(), F_ADD_SEALS, kSeals | F_SEAL_SEAL) != 0) {
    return ErrnoError("fcntl(F_ADD_SEALS) (migration slots)", errno);
  }
  void* p = ::mmap(nullptr, kSetBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoError("mmap (migration slots)", errno);
  if (populate) {
    (void)::madvise(p, kSetBytes, MADV_POPULATE_WRITE);  // best effort
    TouchPages(static_cast<char*>(p));
  }
  return std::shared_ptr<MigSlots>(new MigSlots(std::move(fd), static_cast<char*>(p)));
}

Result<std::shared_ptr<MigSlots>> MigSlots::Attach(transport::UniqueFd fd) {
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("fstat (migration slots)", errno);
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError("the migration slots are not a memfd");
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < kSetBytes) {
    return InvalidArgumentError(fmt::format(
        "the migration slots' memfd has {} bytes, expected {}", st.st_size, kSetBytes));
  }
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return InvalidArgumentError("the migration slots' memfd is not sealed against shrinking");
  }
  void* p = ::mmap(nullptr, kSetBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoError("mmap (migration slots)", errno);
  // Every page table entry in one call rather than a fault per 4 KiB page on the worker's
  // first copies (6,144 of them, each a trap: slower here than the copies). Best effort.
  (void)::madvise(p, kSetBytes, MADV_POPULATE_WRITE);
  TouchPages(static_cast<char*>(p));
  return std::shared_ptr<MigSlots>(new MigSlots(std::move(fd), static_cast<char*>(p)));
}

// ---------------------------------------------------------------------------------
// MigSlotServer

Result<std::unique_ptr<MigSlotServer>> MigSlotServer::Start(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  transport::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoError("socket (slot socket)", errno);
  transport::UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) return ErrnoError("eventfd (slot socket)", errno);
  ::unlink(path.c_str());  // a stale one from an agent that died
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoError("bind " + path, errno);
  }
  if (::listen(fd.get(), 16) != 0) return ErrnoError("listen " + path, errno);
  auto s = std::unique_ptr<MigSlotServer>(new MigSlotServer(path));
  s->listen_ = std::move(fd);
  s->stop_ = std::move(stop);
  s->accept_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

MigSlotServer::~MigSlotServer() {
  const uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof(one));
  accept_.join();
  ::unlink(path_.c_str());
}

std::string MigSlotServer::Offer(std::shared_ptr<MigSlots> slots, pid_t peer) {
  std::string token(kMigSlotTokenBytes, '\0');
  size_t got = 0;
  while (got < token.size()) {
    const ssize_t n = ::getrandom(token.data() + got, token.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  MutexLock l(&mu_);
  offered_[token] = Offered{std::move(slots), peer};
  return token;
}

void MigSlotServer::Revoke(const std::string& token) {
  MutexLock l(&mu_);
  offered_.erase(token);
}

void MigSlotServer::AcceptLoop() {
  // Handshakes waiting for their hello, oldest first. A hello arrives right after the
  // connect, so a connection is served when it turns readable; one that stays silent is
  // dropped at its deadline without holding up the others.
  struct Pending {
    transport::UniqueFd fd;
    int64_t deadline;
  };
  constexpr size_t kMaxPending = 16;
  std::vector<Pending> pending;
  std::vector<pollfd> pfds;
  for (;;) {
    pfds.assign({{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}});
    int timeout = -1;
    const int64_t now = MonoNanos();
    for (const Pending& p : pending) {
      pfds.push_back({p.fd.get(), POLLIN, 0});
      const int64_t left_ms = std::max<int64_t>(0, (p.deadline - now + 999'999) / 1'000'000);
      if (timeout < 0 || left_ms < timeout) timeout = static_cast<int>(left_ms);
    }
    if (::poll(pfds.data(), pfds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      TERN_LOG(ERROR) << "migration slot socket " << path_ << ": poll: " << std::strerror(errno);
      return;
    }
    if (pfds[1].revents != 0) return;  // shut down
    const int64_t after = MonoNanos();
    for (size_t i = pending.size(); i-- > 0;) {
      if (pfds[2 + i].revents != 0) {
        Handshake(pending[i].fd.get());
      } else if (after < pending[i].deadline) {
        continue;
      } else {
        TERN_LOG(WARN) << "migration slot socket " << path_ << ": a peer sent no hello within "
                       << kHandshakeTimeoutMs << " ms; dropped";
      }
      pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if ((pfds[0].revents & POLLIN) == 0) continue;
    for (;;) {
      const int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        break;  // EAGAIN: none left (the listening socket does not block)
      }
      if (pending.size() == kMaxPending) pending.erase(pending.begin());
      SetTimeouts(fd);
      pending.push_back(Pending{transport::UniqueFd(fd), after + kHandshakeTimeoutMs * 1'000'000LL});
    }
  }
}

void MigSlotServer::Handshake(int fd) {
  std::string hello(64, '\0');
  transport::UniqueFd ignored;
  if (!RecvWithFd(fd, &hello, &ignored).ok()) return;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) cred.pid = -1;
  Status st = Status::Ok();
  std::shared_ptr<MigSlots> slots;
  if (hello.size() != 4 + kMigSlotTokenBytes || LoadU32(hello.data()) != kHelloMagic) {
    st = InvalidArgumentError("malformed slot handshake");
  } else {
    MutexLock l(&mu_);
    auto it = offered_.find(hello.substr(4));
    if (it == offered_.end()) {
      st = PermissionDeniedError("unknown or used slot token");
    } else if (it->second.peer != cred.pid) {
      st = PermissionDeniedError(fmt::format(
          "the slot token was issued to process {}, not to process {}", it->second.peer, cred.pid));
    } else {
      slots = it->second.slots;
    }
    if (it != offered_.end()) offered_.erase(it);  // single use, whoever presented it
  }
  if (!st.ok()) TERN_LOG(WARN) << "migration slot socket " << path_ << ": " << st;
  (void)SendWithFd(fd, Answer(st), slots != nullptr ? slots->fd() : -1);
}

Result<std::shared_ptr<MigSlots>> FetchMigSlots(const std::string& path, const std::string& token,
                                                std::shared_ptr<MigSlots> cached) {
  TERN_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  transport::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoError("socket (slot socket)", errno);
  SetTimeouts(fd.get());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("connect {}: {}", path, std::strerror(errno)));
  }
  std::string hello(4, '\0');
  StoreU32(hello.data(), kHelloMagic);
  hello += token;
  TERN_RETURN_IF_ERROR(SendWithFd(fd.get(), hello, -1));
  std::string answer(8 + 256, '\0');
  transport::UniqueFd memfd;
  TERN_RETURN_IF_ERROR(RecvWithFd(fd.get(), &answer, &memfd));
  if (answer.size() < 8 || answer.size() - 8 < LoadU32(answer.data() + 4)) {
    return Status(StatusCode::kUnavailable, "the slot socket's answer is truncated");
  }
  const auto code = static_cast<StatusCode>(LoadU32(answer.data()));
  if (code != StatusCode::kOk) {
    return Status(code, "the target refused the slots: " + answer.substr(8, LoadU32(answer.data() + 4)));
  }
  if (!memfd.valid()) return InvalidArgumentError("the target's slot answer carries no memfd");
  if (cached != nullptr && cached->SameFile(memfd.get())) return cached;
  return MigSlots::Attach(std::move(memfd));
}

// ---------------------------------------------------------------------------------
// The 'slot' frame

std::string EncodeSlotFrame(const SlotFrame& s) {
  std::string out(16, '\0');
  StoreU32(out.data(), s.index);
  StoreU32(out.data() + 4, s.offset);
  StoreU32(out.data() + 8, s.length);
  StoreU32(out.data() + 12, s.seq);
  return out;
}

Result<SlotFrame> DecodeSlotFrame(std::string_view p) {
  if (p.size() != 16) {
    return InvalidArgumentError(fmt::format("'slot' payload of {} bytes, expected 16", p.size()));
  }
  SlotFrame s;
  s.index = LoadU32(p.data());
  s.offset = LoadU32(p.data() + 4);
  s.length = LoadU32(p.data() + 8);
  s.seq = LoadU32(p.data() + 12);
  return s;
}

}  // namespace tern::agent
