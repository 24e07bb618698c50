#include "transport/shm.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/clock.h"
#include "transport/socket.h"

namespace tern::transport {

using internal::ShmConnHeader;
using internal::ShmLargeMessage;
using internal::ShmLargeRecord;
using internal::ShmRecordHeader;
using internal::ShmRingCtl;

namespace {

static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint32_t>::is_always_lock_free);

// Peer liveness: the Unix socket is polled at most this often by CheckPeer().
constexpr int64_t kPeerCheckIntervalNs = 1'000'000;
constexpr uint32_t kPeerClockEvery = 16;  // a power of two
// Large messages received ahead of their ring record (only legitimate in the short window
// between the sender's sendmsg and its commit).
constexpr size_t kMaxLargeAhead = 64;
constexpr uint64_t kMaxEncodedFrameBytes =
    kFrameHeaderBytes + 3 * kMaxNameBytes + uint64_t{kMaxPayloadBytes};

// A full (seq_cst) fence: the Dekker handshakes between a sleeping owner and its producers
// (Doorbell) and between a producer waiting for space and its consumer need store->load
// ordering, which acquire/release does not give. GCC warns that TSan does not model fences
// (-Wtsan); the fence still executes, and no data is handed over through it (records are
// published with release/acquire on head and tail), so TSan misses nothing that matters.
inline void FullFence() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__SANITIZE_THREAD__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#pragma GCC diagnostic pop
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

uint64_t LoadAcquire(uint64_t& v) {
  return std::atomic_ref<uint64_t>(v).load(std::memory_order_acquire);
}
void StoreRelease(uint64_t& v, uint64_t x) {
  std::atomic_ref<uint64_t>(v).store(x, std::memory_order_release);
}

// Bytes a record with `len` bytes of content occupies in the ring.
uint64_t RecordBytes(uint64_t len) { return sizeof(ShmRecordHeader) + ((len + 7) & ~uint64_t{7}); }

bool ValidRingBytes(size_t n, size_t max) {
  return n >= kMinShmRingBytes && n <= max && std::has_single_bit(n);
}

// A memfd of `size` bytes, sealed against shrinking and growing (so a peer that maps it
// can trust its size) and against further sealing.
Result<UniqueFd> CreateSealedMemfd(const char* name, size_t size) {
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoError("memfd_create", errno);
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) return ErrnoError("ftruncate", errno);
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoError("fcntl(F_ADD_SEALS)", errno);
  }
  return fd;
}

// Checks that `fd` from a peer is a memfd of at least `min_size` bytes carrying `seals`.
Status CheckSealedMemfd(int fd, uint64_t min_size, int seals, std::string_view what) {
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoError(fmt::format("{}: fstat", what), errno);
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError(fmt::format("{}: not a memfd", what));
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < min_size) {
    return InvalidArgumentError(
        fmt::format("{}: memfd has {} bytes, expected at least {}", what, st.st_size, min_size));
  }
  int got = fcntl(fd, F_GET_SEALS);
  if (got < 0) return InvalidArgumentError(fmt::format("{}: not a sealable memfd", what));
  if ((got & seals) != seals) {
    return InvalidArgumentError(
        fmt::format("{}: memfd seals 0x{:x} lack the required 0x{:x}", what, got, seals));
  }
  return Status::Ok();
}

bool IsEventFd(int fd) {
  char link[64];
  char target[64];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n <= 0) return false;
  return std::string_view(target, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr;
  TERN_RETURN_IF_ERROR(transport::UnixSocketAddress("shm: socket", path, &addr));
  return addr;
}

Status SendWelcomeError(int sock, const Status& s) {
  internal::ShmWelcome w{};
  w.magic = internal::kShmWelcomeMagic;
  w.version = internal::kShmVersion;
  w.status = static_cast<int32_t>(s.code());
  std::string_view text = s.message().substr(0, 200);
  w.message_len = static_cast<uint32_t>(text.size());
  std::string msg(reinterpret_cast<const char*>(&w), sizeof(w));
  msg.append(text);
  return SendUnixMessage(sock, msg.data(), msg.size(), {}, /*wait=*/false).status();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Doorbell

Doorbell::Doorbell(UniqueFd event_fd, UniqueFd page_fd, void* page, bool owner)
    : event_fd_(std::move(event_fd)), page_fd_(std::move(page_fd)), page_(page), owner_(owner) {}

Doorbell::Doorbell(Doorbell&& other) noexcept
    : event_fd_(std::move(other.event_fd_)),
      page_fd_(std::move(other.page_fd_)),
      page_(std::exchange(other.page_, nullptr)),
      owner_(other.owner_) {}

Doorbell& Doorbell::operator=(Doorbell&& other) noexcept {
  if (this != &other) {
    if (page_ != nullptr) munmap(page_, internal::kDoorbellPageBytes);
    event_fd_ = std::move(other.event_fd_);
    page_fd_ = std::move(other.page_fd_);
    page_ = std::exchange(other.page_, nullptr);
    owner_ = other.owner_;
  }
  return *this;
}

Doorbell::~Doorbell() {
  if (page_ != nullptr) munmap(page_, internal::kDoorbellPageBytes);
}

uint32_t* Doorbell::sleeping_word() const {
  return reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(page_) +
                                     internal::kDoorbellSleepingOffset);
}

Result<Doorbell> Doorbell::Create() {
  UniqueFd efd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!efd.valid()) return ErrnoError("eventfd", errno);
  TERN_ASSIGN_OR_RETURN(UniqueFd page,
                        CreateSealedMemfd("tern-doorbell", internal::kDoorbellPageBytes));
  void* p = mmap(nullptr, internal::kDoorbellPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                 page.get(), 0);
  if (p == MAP_FAILED) return ErrnoError("mmap(doorbell)", errno);
  const uint32_t head[2] = {internal::kDoorbellMagic, internal::kShmVersion};
  std::memcpy(p, head, sizeof(head));
  return Doorbell(std::move(efd), std::move(page), p, /*owner=*/true);
}

Result<Doorbell> Doorbell::Attach(UniqueFd eventfd, UniqueFd page_memfd) {
  if (!eventfd.valid() || !IsEventFd(eventfd.get())) {
    return InvalidArgumentError("doorbell: the wake-up descriptor is not an eventfd");
  }
  TERN_RETURN_IF_ERROR(SetNonBlocking(eventfd.get()));
  TERN_RETURN_IF_ERROR(CheckSealedMemfd(page_memfd.get(), internal::kDoorbellPageBytes,
                                        F_SEAL_SHRINK, "doorbell page"));
  void* p = mmap(nullptr, internal::kDoorbellPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                 page_memfd.get(), 0);
  if (p == MAP_FAILED) return ErrnoError("mmap(doorbell)", errno);
  uint32_t head[2];
  std::memcpy(head, p, sizeof(head));
  if (head[0] != internal::kDoorbellMagic || head[1] != internal::kShmVersion) {
    munmap(p, internal::kDoorbellPageBytes);
    return InvalidArgumentError(
        fmt::format("doorbell: bad page header (magic 0x{:08x}, version {})", head[0], head[1]));
  }
  return Doorbell(std::move(eventfd), std::move(page_memfd), p, /*owner=*/false);
}

namespace {
thread_local uint64_t doorbell_wakeups = 0;
}  // namespace

uint64_t DoorbellWakeupsOnThisThread() { return doorbell_wakeups; }

bool Doorbell::Ring() const {
  if (page_ == nullptr) return false;
  // Pairs with the fence in PrepareSleep: either the owner sees our published work when it
  // re-checks, or we see its sleeping word.
  FullFence();
  std::atomic_ref<uint32_t> word(*sleeping_word());
  if (word.load(std::memory_order_relaxed) == 0) return false;
  if (word.exchange(0, std::memory_order_acq_rel) == 0) return false;  // another producer rang
  if (!owner_) {
    // The remote owner controls the eventfd's flags: write only when it cannot block.
    pollfd p{event_fd_.get(), POLLOUT, 0};
    if (poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0) return false;
  }
  const uint64_t one = 1;
  ssize_t r = write(event_fd_.get(), &one, sizeof(one));
  (void)r;  // EAGAIN: the counter is saturated, the owner wakes anyway
  ++doorbell_wakeups;
  return true;
}

void Doorbell::PrepareSleep() {
  std::atomic_ref<uint32_t>(*sleeping_word()).store(1, std::memory_order_relaxed);
  FullFence();
}

void Doorbell::CancelSleep() {
  std::atomic_ref<uint32_t>(*sleeping_word()).store(0, std::memory_order_relaxed);
}

Status Doorbell::Sleep(int64_t timeout_ns, std::span<const int> extra_fds) {
  if (!owner_ || page_ == nullptr) {
    return FailedPreconditionError("doorbell: only the owner may sleep on it");
  }
  constexpr size_t kInline = 16;
  pollfd inline_fds[kInline];
  std::vector<pollfd> heap_fds;
  pollfd* fds = inline_fds;
  const size_t n = 1 + extra_fds.size();
  if (n > kInline) {
    heap_fds.resize(n);
    fds = heap_fds.data();
  }
  fds[0] = pollfd{event_fd_.get(), POLLIN, 0};
  for (size_t i = 0; i < extra_fds.size(); ++i) fds[i + 1] = pollfd{extra_fds[i], POLLIN, 0};
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
    tsp = &ts;
  }
  int rc = ppoll(fds, n, tsp, nullptr);
  const int err = errno;
  uint64_t count;
  ssize_t r = read(event_fd_.get(), &count, sizeof(count));  // drain; EAGAIN if not rung
  (void)r;
  std::atomic_ref<uint32_t>(*sleeping_word()).store(0, std::memory_order_relaxed);
  if (rc < 0 && err != EINTR) return ErrnoError("ppoll", err);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------
// ShmConnection

ShmConnection::ShmConnection(UniqueFd sock, uint8_t* base, size_t map_bytes, size_t ring_bytes,
                             bool server, Doorbell peer_bell)
    : sock_(std::move(sock)),
      base_(base),
      map_bytes_(map_bytes),
      ring_bytes_(ring_bytes),
      server_(server),
      peer_bell_(std::move(peer_bell)),
      decoder_(kMaxPayloadBytes) {}

ShmConnection::~ShmConnection() {
  Close();
  if (borrow_map_ != nullptr) munmap(borrow_map_, borrow_map_bytes_);
  munmap(base_, map_bytes_);
}

ShmConnHeader* ShmConnection::header() const { return reinterpret_cast<ShmConnHeader*>(base_); }
ShmRingCtl& ShmConnection::out_ctl() const { return header()->ring[server_ ? 1 : 0]; }
ShmRingCtl& ShmConnection::in_ctl() const { return header()->ring[server_ ? 0 : 1]; }
uint8_t* ShmConnection::out_data() const {
  return base_ + internal::kShmHeaderBytes + (server_ ? ring_bytes_ : 0);
}
uint8_t* ShmConnection::in_data() const {
  return base_ + internal::kShmHeaderBytes + (server_ ? 0 : ring_bytes_);
}

Status ShmConnection::Fail(Status s) {
  if (error_.ok()) {
    error_ = std::move(s);
    // The peer learns through the closed flag and the socket.
    std::atomic_ref<uint32_t>(header()->closed[server_ ? 1 : 0])
        .store(1, std::memory_order_release);
    shutdown(sock_.get(), SHUT_RDWR);
    peer_bell_.Ring();
    overflow_.clear();
    stats_.overflow_bytes = 0;
    received_large_.clear();
  }
  return error_;
}

void ShmConnection::Close() {
  if (closed_) return;
  closed_ = true;
  if (error_.ok()) {
    std::atomic_ref<uint32_t>(header()->closed[server_ ? 1 : 0])
        .store(1, std::memory_order_release);
    shutdown(sock_.get(), SHUT_RDWR);
    peer_bell_.Ring();
  }
  overflow_.clear();
  stats_.overflow_bytes = 0;
  received_large_.clear();
}

// --- producer ---

void ShmConnection::Publish(uint64_t new_head) {
  head_ = new_head;
  StoreRelease(out_ctl().head.value, head_);
  peer_bell_.Ring();
}

Status ShmConnection::RefreshTail() {
  const uint64_t t = LoadAcquire(out_ctl().tail.value);
  if (t < peer_tail_ || t > head_ || t % 8 != 0) {
    return Fail(DataLossError(fmt::format(
        "shm: the peer's read index {} is outside [{}, {}] or misaligned; connection closed", t,
        peer_tail_, head_)));
  }
  peer_tail_ = t;
  while (!inflight_large_.empty() && inflight_large_.front().end_pos <= peer_tail_) {
    inflight_large_bytes_ -= inflight_large_.front().bytes;
    inflight_large_.pop_front();
  }
  return Status::Ok();
}

Result<bool> ShmConnection::HasSpace(uint64_t need) {
  if (ring_bytes_ - (head_ - peer_tail_) >= need) return true;
  TERN_RETURN_IF_ERROR(RefreshTail());
  return ring_bytes_ - (head_ - peer_tail_) >= need;
}

void ShmConnection::WantSpace() {
  std::atomic_ref<uint64_t>(out_ctl().space_wanted.value).store(1, std::memory_order_relaxed);
  FullFence();  // pairs with PublishTail
}

Result<bool> ShmConnection::SendLargeFd(std::string_view head, std::string_view rest,
                                        uint64_t seq) {
  UniqueFd fd(memfd_create("tern-shm-msg", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoError("shm: memfd_create for a large message", errno);
  for (std::string_view piece : {head, rest}) {
    size_t off = 0;
    while (off < piece.size()) {
      ssize_t w = write(fd.get(), piece.data() + off, piece.size() - off);
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("shm: writing a large message", errno);
      }
      off += static_cast<size_t>(w);
    }
  }
  const size_t encoded_size = head.size() + rest.size();
  // Immutable from now on: the receiver maps it without fear of SIGBUS or changes.
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    return ErrnoError("shm: sealing a large message", errno);
  }
  ShmLargeMessage m{internal::kShmLargeMagic, 0, seq, encoded_size};
  const int fds[1] = {fd.get()};
  return SendUnixMessage(sock_.get(), &m, sizeof(m), fds, /*wait=*/false);
}

Result<bool> ShmConnection::TryCommit(std::string_view head, std::string_view rest,
                                      bool large) {
  const size_t encoded_size = head.size() + rest.size();
  const uint64_t len = large ? sizeof(ShmLargeRecord) : encoded_size;
  const uint64_t need = RecordBytes(len);
  const uint64_t pos = head_ & (ring_bytes_ - 1);
  const uint64_t to_end = ring_bytes_ - pos;
  const uint64_t total = need <= to_end ? need : to_end + need;
  TERN_ASSIGN_OR_RETURN(bool fits, HasSpace(total));
  if (!fits) return false;

  if (large) {
    if (!inflight_large_.empty() &&
        inflight_large_bytes_ + encoded_size > limits_.max_inflight_large_bytes) {
      TERN_RETURN_IF_ERROR(RefreshTail());
      if (!inflight_large_.empty() &&
          inflight_large_bytes_ + encoded_size > limits_.max_inflight_large_bytes) {
        return false;
      }
    }
    pollfd p{sock_.get(), POLLOUT, 0};
    if (poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0) return false;
    Result<bool> sent = SendLargeFd(head, rest, next_large_seq_);
    if (!sent.ok()) {
      if (sent.status().code() == StatusCode::kUnavailable) peer_gone_ = true;
      return sent.status();
    }
    if (!*sent) return false;  // socket full: retried by a later Flush
  }

  uint8_t* d = out_data();
  uint64_t at = pos;
  if (need > to_end) {
    ShmRecordHeader pad{internal::kShmRecordPad, static_cast<uint32_t>(to_end - 8)};
    std::memcpy(d + at, &pad, sizeof(pad));
    at = 0;
  }
  ShmRecordHeader h{large ? internal::kShmRecordLarge : internal::kShmRecordInline,
                    static_cast<uint32_t>(len)};
  std::memcpy(d + at, &h, sizeof(h));
  if (large) {
    ShmLargeRecord rec{next_large_seq_++, encoded_size};
    std::memcpy(d + at + sizeof(h), &rec, sizeof(rec));
    inflight_large_.push_back({head_ + total, encoded_size});
    inflight_large_bytes_ += encoded_size;
    ++stats_.sent_large;
  } else {
    // The encoding goes straight into the ring: the payload is copied once.
    std::memcpy(d + at + sizeof(h), head.data(), head.size());
    if (!rest.empty()) std::memcpy(d + at + sizeof(h) + head.size(), rest.data(), rest.size());
    ++stats_.sent_inline;
  }
  Publish(head_ + total);
  return true;
}

Status ShmConnection::Flush() {
  if (!error_.ok()) return error_;
  if (closed_) return FailedPreconditionError("shm: connection closed");
  bool announced = false;
  while (!overflow_.empty()) {
    Queued& q = overflow_.front();
    TERN_ASSIGN_OR_RETURN(bool done, TryCommit(q.bytes, {}, q.large));
    if (!done) {
      if (announced) break;
      // Ask the consumer to ring us when it frees space, then look once more (it may have
      // freed space before it could see the request).
      WantSpace();
      announced = true;
      continue;
    }
    stats_.overflow_bytes -= q.bytes.size();
    overflow_.pop_front();
  }
  return Status::Ok();
}

Status ShmConnection::Send(const Frame& f) { return Send(f, f.payload); }

Status ShmConnection::Send(const Frame& head, std::string_view payload) {
  if (!error_.ok()) return error_;
  if (closed_) return FailedPreconditionError("shm: connection closed");
  if (peer_gone_ || std::atomic_ref<uint32_t>(header()->closed[server_ ? 0 : 1])
                        .load(std::memory_order_acquire)) {
    peer_gone_ = true;
    return UnavailableError("shm: the peer closed the connection");
  }
  // Only the header and names are encoded here; the payload is copied from where it
  // is into the ring (or, when it must wait, into the overflow queue).
  scratch_.clear();
  TERN_RETURN_IF_ERROR(EncodeFrameHead(head, payload.size(), &scratch_));
  const size_t encoded_size = scratch_.size() + payload.size();
  const bool large = encoded_size > ring_bytes_ / 4;
  if (!overflow_.empty()) TERN_RETURN_IF_ERROR(Flush());
  if (overflow_.empty()) {
    TERN_ASSIGN_OR_RETURN(bool done, TryCommit(scratch_, payload, large));
    if (done) return Status::Ok();
  }
  if (!overflow_.empty() && stats_.overflow_bytes + encoded_size > limits_.max_overflow_bytes) {
    return ResourceExhaustedError(
        fmt::format("shm: send queue full ({} bytes queued, limit {}); back off",
                    stats_.overflow_bytes, limits_.max_overflow_bytes));
  }
  scratch_.append(payload);
  stats_.overflow_bytes += scratch_.size();
  ++stats_.queued;
  overflow_.push_back({std::move(scratch_), large});
  scratch_ = std::string();
  return Flush();
}

// --- consumer ---

void ShmConnection::PublishTail() {
  // A borrowed record (PollBorrowed) and what follows stay ours until it is released.
  const uint64_t t = borrowing_ ? borrow_start_ : tail_;
  if (t == published_tail_) return;
  StoreRelease(in_ctl().tail.value, t);
  published_tail_ = t;
  FullFence();  // pairs with WantSpace
  std::atomic_ref<uint64_t> wanted(in_ctl().space_wanted.value);
  if (wanted.load(std::memory_order_relaxed) != 0 &&
      wanted.exchange(0, std::memory_order_acq_rel) != 0) {
    peer_bell_.Ring();
  }
}

Status ShmConnection::DecodeRecord(std::string_view bytes, std::vector<Frame>* out) {
  if (borrow_out_ != nullptr && bytes.size() >= borrow_min_) {
    // PollBorrowed: the header and names are copied out and checked, the payload stays
    // where it is (the reader copies it from there, once) and so does the record.
    Frame& f = out->emplace_back();
    Result<std::string_view> payload =
        FrameDecoder::DecodeWholeBorrowed(bytes, kMaxPayloadBytes, &f);
    if (!payload.ok()) {
      out->pop_back();
      return Fail(payload.status().WithPrefix("shm: corrupt record"));
    }
    *borrow_out_ = *payload;
    borrow_out_ = nullptr;
    borrowing_ = true;
    borrow_start_ = record_start_;
    ++stats_.received;
    ++stats_.borrowed;
    return Status::Ok();
  }
  if (bytes.size() < kLargePayloadBytes) {
    // A small frame: header and names are copied out and checked, then the payload is
    // copied once, from the ring into the frame or the payload sink.
    Frame& f = out->emplace_back();
    Status s = decoder_.DecodeWholeIntoSink(bytes, kMaxPayloadBytes, &f);
    if (!s.ok()) {
      out->pop_back();
      return Fail(s.WithPrefix("shm: corrupt record"));
    }
    ++stats_.received;
    return Status::Ok();
  }
  // The peer may change the shared bytes under us, so nothing is parsed in place: the
  // header and names are copied out first (Feed of a private copy), and the large
  // payload is then copied once, straight into its frame (PayloadWindow) or the sink.
  constexpr size_t kMaxHead = kFrameHeaderBytes + 3 * kMaxNameBytes;
  char head[kMaxHead];
  const size_t prefix = std::min(bytes.size(), kMaxHead);
  std::memcpy(head, bytes.data(), prefix);
  decoder_.Feed(std::string_view(head, prefix));
  for (size_t off = prefix; off < bytes.size();) {
    const std::span<char> window = decoder_.PayloadWindow();
    if (window.empty()) {
      decoder_.Feed(bytes.substr(off));
      break;
    }
    const size_t n = std::min(window.size(), bytes.size() - off);
    std::memcpy(window.data(), bytes.data() + off, n);
    decoder_.PayloadReceived(n);
    off += n;
  }
  Frame f;
  Result<bool> got = decoder_.Next(&f);
  if (!got.ok()) return Fail(got.status().WithPrefix("shm: corrupt record"));
  if (!*got) return Fail(DataLossError("shm: corrupt record: it holds a partial frame"));
  if (decoder_.buffered() != 0) {
    return Fail(DataLossError("shm: corrupt record: bytes after the frame"));
  }
  out->push_back(std::move(f));
  ++stats_.received;
  return Status::Ok();
}

Status ShmConnection::DrainSocket() {
  for (;;) {
    alignas(8) char buf[64];
    Result<UnixMessage> r = ReceiveUnixMessage(sock_.get(), buf, sizeof(buf), /*wait=*/false);
    if (!r.ok()) {  // ECONNRESET and the like: the peer is gone
      peer_gone_ = true;
      return Status::Ok();
    }
    if (r->would_block) return Status::Ok();
    if (r->eof) {
      peer_gone_ = true;
      return Status::Ok();
    }
    ShmLargeMessage m;
    std::memcpy(&m, buf, sizeof(m));
    if (r->truncated || r->bytes != sizeof(m) || m.magic != internal::kShmLargeMagic ||
        r->fds.size() != 1) {
      return Fail(DataLossError(
          fmt::format("shm: malformed message on the socket ({} bytes, {} descriptors)", r->bytes,
                      r->fds.size())));
    }
    if (received_large_.size() >= kMaxLargeAhead) {
      return Fail(DataLossError("shm: too many large messages without ring records"));
    }
    received_large_.push_back({std::move(r->fds[0]), m.seq, m.size});
  }
}

Status ShmConnection::ReadLarge(const ShmLargeRecord& rec, std::vector<Frame>* out) {
  if (rec.seq != expected_large_seq_) {
    return Fail(
        DataLossError(fmt::format("shm: corrupt record: large message {} where {} was expected",
                                  rec.seq, expected_large_seq_)));
  }
  if (rec.size < kFrameHeaderBytes || rec.size > kMaxEncodedFrameBytes) {
    return Fail(
        DataLossError(fmt::format("shm: corrupt record: large message of {} bytes", rec.size)));
  }
  if (received_large_.empty()) {
    // The sender passes the descriptor before it commits the record: it must be there.
    alignas(8) char buf[64];
    Result<UnixMessage> r = ReceiveUnixMessage(sock_.get(), buf, sizeof(buf), /*wait=*/false);
    if (!r.ok() || r->would_block || r->eof) {
      return Fail(DataLossError(
          fmt::format("shm: large message {} has no descriptor on the socket", rec.seq)));
    }
    ShmLargeMessage m;
    std::memcpy(&m, buf, sizeof(m));
    if (r->truncated || r->bytes != sizeof(m) || m.magic != internal::kShmLargeMagic ||
        r->fds.size() != 1) {
      return Fail(DataLossError("shm: malformed message on the socket"));
    }
    received_large_.push_back({std::move(r->fds[0]), m.seq, m.size});
  }
  ReceivedLarge m = std::move(received_large_.front());
  received_large_.pop_front();
  if (m.seq != rec.seq || m.size != rec.size) {
    return Fail(DataLossError(fmt::format(
        "shm: large message mismatch: ring says #{} ({} bytes), socket says #{} ({} bytes)",
        rec.seq, rec.size, m.seq, m.size)));
  }
  ++expected_large_seq_;
  Status s =
      CheckSealedMemfd(m.fd.get(), rec.size, F_SEAL_SHRINK | F_SEAL_WRITE, "shm: large message");
  if (!s.ok()) return Fail(DataLossError(s.message()));
  void* p = mmap(nullptr, rec.size, PROT_READ, MAP_SHARED | MAP_POPULATE, m.fd.get(), 0);
  if (p == MAP_FAILED) return Fail(ErrnoError("shm: mmap of a large message", errno));
  const bool borrowed_before = borrowing_;
  s = DecodeRecord(std::string_view(static_cast<const char*>(p), rec.size), out);
  if (s.ok() && borrowing_ && !borrowed_before) {
    // Its payload was borrowed: mapped until ReleaseBorrowed (sealed: it cannot change).
    borrow_map_ = p;
    borrow_map_bytes_ = rec.size;
  } else {
    munmap(p, rec.size);
  }
  return s;
}

Result<bool> ShmConnection::ReadOne(std::vector<Frame>* out) {
  for (;;) {
    if (tail_ == peer_head_) {
      const uint64_t h = LoadAcquire(in_ctl().head.value);
      if (h == tail_) return false;
      if (h < peer_head_ || h - tail_ > ring_bytes_ || h % 8 != 0) {
        return Fail(DataLossError(
            fmt::format("shm: the peer's write index {} is outside [{}, {}] or misaligned", h,
                        tail_, tail_ + ring_bytes_)));
      }
      peer_head_ = h;
    }
    const uint64_t pos = tail_ & (ring_bytes_ - 1);
    const uint64_t to_end = ring_bytes_ - pos;
    const uint64_t avail = peer_head_ - tail_;  // > 0, a multiple of 8
    record_start_ = tail_;
    const uint8_t* rec = in_data() + pos;
    ShmRecordHeader h;
    std::memcpy(&h, rec, sizeof(h));  // read once: the peer may change it under us
    const uint64_t size = RecordBytes(h.len);
    switch (h.kind) {
      case internal::kShmRecordPad:
        if (size != to_end || size > avail) {
          return Fail(DataLossError(
              fmt::format("shm: corrupt record: padding of {} bytes at offset {} of {}", h.len, pos,
                          ring_bytes_)));
        }
        tail_ += size;
        continue;
      case internal::kShmRecordInline: {
        if (h.len < kFrameHeaderBytes || h.len > ring_bytes_ / 4 || size > to_end || size > avail) {
          return Fail(DataLossError(fmt::format(
              "shm: corrupt record: inline frame of {} bytes at offset {} ({} committed)", h.len,
              pos, avail)));
        }
        std::string_view bytes(reinterpret_cast<const char*>(rec + sizeof(h)), h.len);
        tail_ += size;
        TERN_RETURN_IF_ERROR(DecodeRecord(bytes, out));
        break;
      }
      case internal::kShmRecordLarge: {
        if (h.len != sizeof(ShmLargeRecord) || size > to_end || size > avail) {
          return Fail(DataLossError(fmt::format(
              "shm: corrupt record: large-message record of {} bytes at offset {}", h.len, pos)));
        }
        ShmLargeRecord lr;
        std::memcpy(&lr, rec + sizeof(h), sizeof(lr));
        tail_ += size;
        TERN_RETURN_IF_ERROR(ReadLarge(lr, out));
        break;
      }
      default:
        return Fail(DataLossError(
            fmt::format("shm: corrupt record: unknown kind {} at offset {}", h.kind, pos)));
    }
    if (tail_ - published_tail_ >= ring_bytes_ / 4) PublishTail();
    return true;
  }
}

bool ShmConnection::CheckPeer() {
  if (peer_gone_) return false;
  if (std::atomic_ref<uint32_t>(header()->closed[server_ ? 0 : 1])
          .load(std::memory_order_acquire) != 0) {
    peer_gone_ = true;
    return false;
  }
  // An idle consumer calls this on every poll: the clock (a vDSO read, ~40 ns here, as
  // much as the rest of an empty poll) is read only on every kPeerClockEvery-th call.
  if ((++peer_checks_ & (kPeerClockEvery - 1)) != 0) return true;
  const int64_t now = MonoNanos();
  if (now < next_peer_check_ns_) return true;
  next_peer_check_ns_ = now + kPeerCheckIntervalNs;
  pollfd p{sock_.get(), POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) < 0) return true;
  if ((p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0) {
    peer_gone_ = true;
    return false;
  }
  // Readable with an empty ring: descriptors ahead of their records (normal for a moment)
  // or junk; take them so the socket does not stay readable and spin the owner's loop.
  if ((p.revents & POLLIN) != 0 && LoadAcquire(in_ctl().head.value) == tail_) {
    if (!DrainSocket().ok()) return false;
  }
  return !peer_gone_;
}

Result<size_t> ShmConnection::Poll(std::vector<Frame>* out, size_t max) {
  if (!error_.ok()) return error_;
  if (closed_) return FailedPreconditionError("shm: connection closed");
  if (max == 0) return size_t{0};
  if (!overflow_.empty()) {
    (void)Flush();  // a failure to create a large message is reported by Send/Flush
    if (!error_.ok()) return error_;
  }
  size_t n = 0;
  for (int pass = 0; pass < 2; ++pass) {
    while (n < max) {
      Result<bool> got = ReadOne(out);
      if (!got.ok()) return got.status();
      if (!*got) break;
      ++n;
    }
    PublishTail();
    if (n > 0 || pass == 1) break;
    if (CheckPeer()) break;
    if (!error_.ok()) return error_;
    // The peer is gone: one more pass takes what it committed before going.
  }
  if (n == 0 && peer_gone_) return UnavailableError("shm: the peer closed the connection");
  return n;
}

Result<size_t> ShmConnection::PollBorrowed(std::vector<Frame>* out, size_t min_bytes,
                                           std::string_view* borrowed) {
  *borrowed = {};
  if (borrowing_) {
    return FailedPreconditionError("shm: a borrowed record has not been released");
  }
  borrow_min_ = min_bytes;
  borrow_out_ = borrowed;
  Result<size_t> n = Poll(out, 1);
  borrow_min_ = SIZE_MAX;
  borrow_out_ = nullptr;
  return n;
}

void ShmConnection::ReleaseBorrowed() {
  if (!borrowing_) return;
  borrowing_ = false;
  if (borrow_map_ != nullptr) {
    munmap(borrow_map_, borrow_map_bytes_);
    borrow_map_ = nullptr;
    borrow_map_bytes_ = 0;
  }
  if (error_.ok() && !closed_) PublishTail();
}

bool ShmConnection::HasWork() const {
  if (!error_.ok()) return true;
  if (closed_) return false;
  if (peer_gone_) return true;
  if (std::atomic_ref<uint32_t>(header()->closed[server_ ? 0 : 1])
          .load(std::memory_order_acquire) != 0) {
    return true;
  }
  if (LoadAcquire(in_ctl().head.value) != tail_) return true;
  if (overflow_.empty()) return false;
  const Queued& q = overflow_.front();
  const uint64_t need = RecordBytes(q.large ? sizeof(ShmLargeRecord) : q.bytes.size());
  const uint64_t to_end = ring_bytes_ - (head_ & (ring_bytes_ - 1));
  const uint64_t total = need <= to_end ? need : to_end + need;
  const uint64_t t = LoadAcquire(out_ctl().tail.value);
  if (t < peer_tail_ || t > head_) return true;  // Flush will report it
  if (ring_bytes_ - (head_ - t) < total) return false;
  if (q.large) {
    size_t inflight = 0;
    for (const InflightLarge& l : inflight_large_) {
      if (l.end_pos > t) inflight += l.bytes;
    }
    if (inflight > 0 && inflight + q.bytes.size() > limits_.max_inflight_large_bytes) {
      return false;
    }
  }
  return true;
}

bool ShmConnection::PeerAlive() {
  if (closed_ || !error_.ok()) return false;
  return CheckPeer();
}

// ---------------------------------------------------------------------------------------
// ShmListener

ShmListener::ShmListener(std::string path, UniqueFd sock, UniqueFd epoll, uint64_t inode,
                         const Options& options)
    : path_(std::move(path)),
      sock_(std::move(sock)),
      epoll_(std::move(epoll)),
      inode_(inode),
      options_(options) {}

ShmListener::~ShmListener() {
  struct stat st;
  if (lstat(path_.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_ino) == inode_) {
    unlink(path_.c_str());
  }
}

Result<std::unique_ptr<ShmListener>> ShmListener::Listen(const std::string& path) {
  return Listen(path, Options());
}

Result<std::unique_ptr<ShmListener>> ShmListener::Listen(const std::string& path,
                                                         const Options& options) {
  TERN_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return AlreadyExistsError(fmt::format("shm listen {}: exists and is not a socket", path));
    }
    // A socket file: stale unless someone still listens on it.
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (probe.valid() &&
        connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      return AlreadyExistsError(fmt::format("shm listen {}: another server listens there", path));
    }
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(fmt::format("shm listen {}: unlink stale socket", path), errno);
    }
  }
  UniqueFd sock(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return ErrnoError("socket(AF_UNIX)", errno);
  if (bind(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoError(fmt::format("shm listen {}: bind", path), errno);
  }
  // Nobody can connect before listen(), so tightening the mode here leaves no window.
  if (chmod(path.c_str(), 0600) != 0 || lstat(path.c_str(), &st) != 0) {
    Status s = ErrnoError(fmt::format("shm listen {}: chmod", path), errno);
    unlink(path.c_str());
    return s;
  }
  if (listen(sock.get(), 128) != 0) {
    Status s = ErrnoError(fmt::format("shm listen {}: listen", path), errno);
    unlink(path.c_str());
    return s;
  }
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = sock.get();
  if (!ep.valid() || epoll_ctl(ep.get(), EPOLL_CTL_ADD, sock.get(), &ev) != 0) {
    Status s = ErrnoError("epoll", errno);
    unlink(path.c_str());
    return s;
  }
  return std::unique_ptr<ShmListener>(new ShmListener(path, std::move(sock), std::move(ep),
                                                      static_cast<uint64_t>(st.st_ino), options));
}

void ShmListener::DropPending(size_t i) {
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, pending_[i].fd.get(), nullptr);
  pending_.erase(pending_.begin() + static_cast<ptrdiff_t>(i));
}

Result<std::unique_ptr<ShmConnection>> ShmListener::Accept(
    const std::function<const Doorbell*(std::string_view hint)>& pick, std::string* hint_out) {
  const int64_t now = MonoNanos();
  for (size_t i = 0; i < pending_.size(); ++i) {
    if (pending_[i].deadline_ns <= now) {
      DropPending(i);
      return DeadlineExceededError("shm handshake: the client sent no hello in time");
    }
  }
  for (;;) {
    int fd = accept4(sock_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return ErrnoError("shm accept", errno);
    }
    UniqueFd c(fd);
    if (pending_.size() >= options_.max_pending) DropPending(0);  // the oldest
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = c.get();
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.get(), &ev) != 0) {
      return ErrnoError("shm accept: epoll_ctl", errno);
    }
    const int64_t timeout_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(options_.handshake_timeout).count();
    pending_.push_back({std::move(c), now + timeout_ns});
  }
  if (pending_.empty()) return std::unique_ptr<ShmConnection>();
  std::vector<pollfd> fds(pending_.size());
  for (size_t i = 0; i < pending_.size(); ++i) fds[i] = pollfd{pending_[i].fd.get(), POLLIN, 0};
  if (poll(fds.data(), fds.size(), 0) <= 0) return std::unique_ptr<ShmConnection>();
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].revents == 0) continue;
    UniqueFd c = std::move(pending_[i].fd);
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.get(), nullptr);
    pending_.erase(pending_.begin() + static_cast<ptrdiff_t>(i));
    return Handshake(std::move(c), pick, hint_out);
  }
  return std::unique_ptr<ShmConnection>();
}

Result<std::unique_ptr<ShmConnection>> ShmListener::Handshake(
    UniqueFd sock, const std::function<const Doorbell*(std::string_view hint)>& pick,
    std::string* hint_out) {
  using internal::ShmHello;
  auto reject = [&](Status s) -> Status {
    (void)SendWelcomeError(sock.get(), s);  // best effort: tell the client why
    return s.WithPrefix("shm handshake");
  };
  alignas(8) char buf[sizeof(ShmHello) + kMaxShmHintBytes + 1];
  TERN_ASSIGN_OR_RETURN(UnixMessage r,
                        ReceiveUnixMessage(sock.get(), buf, sizeof(buf), /*wait=*/false));
  if (r.would_block || r.eof) {
    return UnavailableError("shm handshake: the client hung up before its hello");
  }
  if (r.truncated) return reject(InvalidArgumentError("hello too long or with too many fds"));
  if (r.bytes < sizeof(ShmHello)) {
    return reject(InvalidArgumentError(fmt::format("hello of {} bytes is too short", r.bytes)));
  }
  ShmHello hello;
  std::memcpy(&hello, buf, sizeof(hello));
  if (hello.magic != internal::kShmHelloMagic) {
    return reject(InvalidArgumentError(
        fmt::format("bad hello magic 0x{:08x}: not a tern shm client", hello.magic)));
  }
  if (hello.version != internal::kShmVersion) {
    return reject(UnimplementedError(fmt::format("hello version {}, this server speaks {}",
                                                 hello.version, internal::kShmVersion)));
  }
  if (hello.hint_len > kMaxShmHintBytes || r.bytes != sizeof(ShmHello) + hello.hint_len) {
    return reject(InvalidArgumentError(fmt::format(
        "hello of {} bytes does not match its hint length {}", r.bytes, hello.hint_len)));
  }
  if (r.fds.size() != 2) {
    return reject(InvalidArgumentError(
        fmt::format("hello carries {} descriptors, expected 2 (doorbell)", r.fds.size())));
  }
  if (!ValidRingBytes(hello.ring_bytes, options_.max_ring_bytes)) {
    return reject(InvalidArgumentError(
        fmt::format("ring of {} bytes: must be a power of two in [{}, {}]", hello.ring_bytes,
                    kMinShmRingBytes, options_.max_ring_bytes)));
  }
  const std::string_view hint(buf + sizeof(ShmHello), hello.hint_len);
  Result<Doorbell> client_bell = Doorbell::Attach(std::move(r.fds[0]), std::move(r.fds[1]));
  if (!client_bell.ok()) return reject(client_bell.status());
  const Doorbell* bell = pick(hint);
  if (bell == nullptr) return reject(UnavailableError("no worker takes this client"));

  const size_t ring_bytes = hello.ring_bytes;
  const size_t map_bytes = internal::kShmHeaderBytes + 2 * ring_bytes;
  Result<UniqueFd> memfd = CreateSealedMemfd("tern-shm-conn", map_bytes);
  if (!memfd.ok()) return reject(memfd.status());
  void* p =
      mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, memfd->get(), 0);
  if (p == MAP_FAILED) return reject(ErrnoError("mmap", errno));
  auto* base = static_cast<uint8_t*>(p);
  auto* h = reinterpret_cast<ShmConnHeader*>(base);
  h->magic = internal::kShmConnMagic;
  h->version = internal::kShmVersion;
  h->ring_bytes = ring_bytes;
  h->data_offset = internal::kShmHeaderBytes;

  internal::ShmWelcome w{};
  w.magic = internal::kShmWelcomeMagic;
  w.version = internal::kShmVersion;
  w.ring_bytes = ring_bytes;
  const int fds[3] = {memfd->get(), bell->event_fd(), bell->page_fd()};
  Result<bool> sent = SendUnixMessage(sock.get(), &w, sizeof(w), fds, /*wait=*/false);
  if (!sent.ok() || !*sent) {
    munmap(p, map_bytes);
    return UnavailableError("shm handshake: could not answer the client");
  }
  if (hint_out != nullptr) hint_out->assign(hint);
  auto conn = std::unique_ptr<ShmConnection>(new ShmConnection(
      std::move(sock), base, map_bytes, ring_bytes, /*server=*/true, std::move(*client_bell)));
  conn->set_limits(options_.limits);
  return conn;
}

// ---------------------------------------------------------------------------------------
// ShmConnect

Result<std::unique_ptr<ShmConnection>> ShmConnect(const std::string& path,
                                                  const Doorbell& my_doorbell,
                                                  std::string_view hint,
                                                  const ShmConnectOptions& options) {
  using internal::ShmWelcome;
  if (hint.size() > kMaxShmHintBytes) {
    return InvalidArgumentError(
        fmt::format("shm connect: hint of {} bytes, max {}", hint.size(), kMaxShmHintBytes));
  }
  if (!ValidRingBytes(options.ring_bytes, kMaxShmRingBytes)) {
    return InvalidArgumentError(
        fmt::format("shm connect: ring of {} bytes: must be a power of two in [{}, {}]",
                    options.ring_bytes, kMinShmRingBytes, kMaxShmRingBytes));
  }
  if (!my_doorbell.is_owner()) {
    return InvalidArgumentError("shm connect: pass the caller's own doorbell");
  }
  TERN_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  const int64_t deadline = DeadlineFromTimeout(options.timeout);
  UniqueFd sock(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return ErrnoError("socket(AF_UNIX)", errno);
  for (;;) {
    if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {  // the listener's backlog is full
      if (deadline > 0 && MonoNanos() >= deadline) {
        return DeadlineExceededError(fmt::format("shm connect {}: backlog full", path));
      }
      usleep(1000);
      continue;
    }
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return UnavailableError(fmt::format("shm connect {}: {}", path, std::strerror(errno)));
    }
    return ErrnoError(fmt::format("shm connect {}", path), errno);
  }

  std::string hello(sizeof(internal::ShmHello), '\0');
  internal::ShmHello h{};
  h.magic = internal::kShmHelloMagic;
  h.version = internal::kShmVersion;
  h.ring_bytes = options.ring_bytes;
  h.hint_len = static_cast<uint32_t>(hint.size());
  std::memcpy(hello.data(), &h, sizeof(h));
  hello.append(hint);
  const int my_fds[2] = {my_doorbell.event_fd(), my_doorbell.page_fd()};
  TERN_ASSIGN_OR_RETURN(bool sent, SendUnixMessage(sock.get(), hello.data(), hello.size(), my_fds,
                                                   /*wait=*/false));
  if (!sent) return UnavailableError("shm connect: could not send the hello");

  alignas(8) char buf[sizeof(ShmWelcome) + 256];
  UnixMessage r;
  for (;;) {
    TERN_RETURN_IF_ERROR(
        WaitFd(sock.get(), /*for_write=*/false, deadline).WithPrefix("shm connect: handshake"));
    TERN_ASSIGN_OR_RETURN(r, ReceiveUnixMessage(sock.get(), buf, sizeof(buf), /*wait=*/false));
    if (!r.would_block) break;
  }
  if (r.eof) return UnavailableError("shm connect: the server hung up during the handshake");
  ShmWelcome w;
  if (r.bytes < sizeof(w)) return InvalidArgumentError("shm connect: short answer from server");
  std::memcpy(&w, buf, sizeof(w));
  if (w.magic != internal::kShmWelcomeMagic || w.version != internal::kShmVersion) {
    return InvalidArgumentError("shm connect: the server's answer has a bad magic or version");
  }
  if (w.status != 0) {
    const size_t len = std::min<size_t>(w.message_len, r.bytes - sizeof(w));
    return Status(StatusCodeFromInt(w.status), fmt::format("shm connect: the server refused: {}",
                                                           std::string_view(buf + sizeof(w), len)));
  }
  if (r.truncated || r.fds.size() != 3 || w.ring_bytes != options.ring_bytes) {
    return InvalidArgumentError(
        fmt::format("shm connect: malformed answer ({} descriptors, ring {} bytes)", r.fds.size(),
                    w.ring_bytes));
  }
  const size_t map_bytes = internal::kShmHeaderBytes + 2 * options.ring_bytes;
  TERN_RETURN_IF_ERROR(
      CheckSealedMemfd(r.fds[0].get(), map_bytes, F_SEAL_SHRINK, "shm connect: connection"));
  TERN_ASSIGN_OR_RETURN(Doorbell server_bell,
                        Doorbell::Attach(std::move(r.fds[1]), std::move(r.fds[2])));
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                 r.fds[0].get(), 0);
  if (p == MAP_FAILED) return ErrnoError("shm connect: mmap", errno);
  auto* base = static_cast<uint8_t*>(p);
  ShmConnHeader hdr;
  std::memcpy(&hdr, base, offsetof(ShmConnHeader, closed));
  if (hdr.magic != internal::kShmConnMagic || hdr.version != internal::kShmVersion ||
      hdr.ring_bytes != options.ring_bytes || hdr.data_offset != internal::kShmHeaderBytes) {
    munmap(p, map_bytes);
    return InvalidArgumentError("shm connect: the connection memory has a bad header");
  }
  auto conn = std::unique_ptr<ShmConnection>(new ShmConnection(std::move(sock), base, map_bytes,
                                                               options.ring_bytes, /*server=*/false,
                                                               std::move(server_bell)));
  conn->set_limits(options.limits);
  return conn;
}

}  // namespace tern::transport
