// Shared-memory transport: the same-host tier of tern's data plane. Two processes (two
// agents, or a client and an agent) exchange tern frames (frame.h) through rings in a
// memfd they both map, with a Unix-domain socket beside it for the handshake, for passing
// the memfds of large messages, and for noticing that the peer died.
//
//   Doorbell       a wake-up target: an eventfd plus a shared "sleeping" word. Its owner
//                  (one worker thread) sleeps on it; producers Ring() it after publishing.
//   ShmConnection  one end of a connection: Send() and Poll() frames, never blocking.
//   ShmListener    the server side: a listening Unix socket; Accept() hands out connections.
//   ShmConnect     the client side: connects and returns the client end.
//
// Wire protocol and byte layout (version 1, native byte order: both ends share one host).
// The connection memfd, created and sealed (no shrink/grow) by the server:
//
//   off   size              what
//   0     64                ShmConnHeader: magic "TSHM", version, ring_bytes, data_offset,
//                           closed flags (one per side)
//   64    2 x 256           ShmRingCtl for ring 0 (requests, client -> server) and ring 1
//                           (replies, server -> client): head, tail and space_wanted, each
//                           on its own cache line
//   4096  ring_bytes        ring 0 data
//   4096+ring_bytes ...     ring 1 data
//
// head and tail are free-running byte counts (multiples of 8); the ring is empty when they
// are equal. A record is an 8-byte ShmRecordHeader {kind, len} and `len` bytes, padded to a
// multiple of 8; it never wraps: a kPad record fills the end of the ring instead. kInline
// records hold one encoded frame (at most ring_bytes/4 bytes). kLarge records hold a
// ShmLargeRecord {seq, size}: the frame itself is in a sealed memfd (no write, shrink or
// grow) that the sender passed on the Unix socket, with a ShmLargeMessage {magic, seq, size},
// *before* committing the record, so the receiver never waits for it. A consumer that finds
// space_wanted set after freeing space clears it and rings the producer's doorbell.
//
// Handshake over the (SOCK_SEQPACKET) Unix socket: the client sends a ShmHello (magic,
// version, requested ring_bytes, hint) with its doorbell's eventfd and page memfd; the
// server answers with a ShmWelcome (status; on success ring_bytes) and, on success, the
// connection memfd plus the eventfd and page memfd of the doorbell it chose.
//
// Trust: the peer is untrusted. Every index and length read from shared memory is
// bounds-checked, records are copied out before decoding, memfds from the peer are mapped
// only if sealed against shrinking (so the peer cannot make us fault), and a violation kills
// only that connection (kDataLoss / kInvalidArgument). Known limits: a hostile peer can
// suppress or force wake-ups on a doorbell it shares (extra latency bounded by the owner's
// sleep timeout, no memory unsafety), and could make Ring() block only by racing to saturate
// its own eventfd after clearing O_NONBLOCK between our POLLOUT check and our write.
//
// Ownership: a ShmConnection owns its socket, mapping, peer doorbell attachment and overflow
// queue; ShmListener owns its socket, the socket file (unlinked on destruction) and the
// connections whose handshake is pending.
// Thread-safety: one thread uses one ShmConnection (Send and Poll from the same thread) and
// one ShmListener. Doorbell::Ring() may be called from any thread or process; the other
// Doorbell methods only by the owner thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/status.h"
#include "transport/frame.h"
#include "transport/socket.h"

namespace tern::transport {

// A wake-up target shared across processes: an eventfd plus a shared "sleeping" word in a
// small sealed memfd page. The owner thread announces it is about to sleep (PrepareSleep),
// re-checks its work sources, then sleeps (Sleep) or cancels (CancelSleep). Producers Ring()
// after publishing work; Ring() writes the eventfd only if the owner said it sleeps, so the
// hot path is one fence and one atomic load, no syscall.
//
//   owner loop:  spin polling sources; if idle:
//                  bell.PrepareSleep();
//                  if (any source has work) bell.CancelSleep(); else bell.Sleep(timeout, fds);
class Doorbell {
 public:
  // Owner side: a fresh eventfd and page.
  static Result<Doorbell> Create();
  // Remote side: attaches to another owner's doorbell (fds received over a Unix socket).
  // Checks that `eventfd` is an eventfd and that `page_memfd` is a sealed (no shrink) memfd
  // of at least one page holding a doorbell; kInvalidArgument otherwise.
  static Result<Doorbell> Attach(UniqueFd eventfd, UniqueFd page_memfd);

  Doorbell(Doorbell&& other) noexcept;
  Doorbell& operator=(Doorbell&& other) noexcept;
  Doorbell(const Doorbell&) = delete;
  Doorbell& operator=(const Doorbell&) = delete;
  ~Doorbell();

  // Wakes the owner if it announced sleep. Call after publishing the work (the release
  // store that makes it visible); includes the full fence that pairs with PrepareSleep.
  // Any thread or process; never blocks (see the trust note at the top of this file).
  // Returns true if the owner was asleep and this call woke it (wrote the eventfd); each
  // such call also counts in DoorbellWakeupsOnThisThread().
  bool Ring() const;

  // Owner only. PrepareSleep() sets the sleeping word (followed by a full fence); the owner
  // must then re-check its work sources and either CancelSleep() or Sleep().
  void PrepareSleep();
  void CancelSleep();
  // Owner only, after PrepareSleep(): waits until Ring(), until one of `extra_fds` has
  // POLLIN/POLLHUP/POLLERR, or `timeout_ns` (< 0: no timeout; 0: just check). Then drains
  // the eventfd and clears the sleeping word. Returns OK whether woken or timed out;
  // kFailedPrecondition on a remote (attached) doorbell; an errno error if ppoll fails.
  Status Sleep(int64_t timeout_ns, std::span<const int> extra_fds = {});

  // The descriptors to pass (SCM_RIGHTS) to a remote side. Owned by this object.
  int event_fd() const { return event_fd_.get(); }
  int page_fd() const { return page_fd_.get(); }
  bool is_owner() const { return owner_; }

 private:
  Doorbell(UniqueFd event_fd, UniqueFd page_fd, void* page, bool owner);
  uint32_t* sleeping_word() const;

  UniqueFd event_fd_;
  UniqueFd page_fd_;
  void* page_ = nullptr;  // mapping of kDoorbellPageBytes
  bool owner_ = false;
};

// How many times Doorbell::Ring() on the calling thread woke a sleeping owner. A thread
// that spins while idle compares it before and after its work: if it rose, a thread it
// just woke may be waiting for this very vCPU (both pinned to it, or stacked there by
// the scheduler), and a spinner should give the vCPU up once (sched_yield) rather than
// spin on while the woken thread waits for the end of its timeslice.
uint64_t DoorbellWakeupsOnThisThread();

namespace internal {

// Byte layout (see the top of this file). Everything is trivially copyable, fixed-width and
// accessed with std::atomic_ref where both sides write.
inline constexpr uint32_t kShmConnMagic = 0x4D485354;     // "TSHM"
inline constexpr uint32_t kShmHelloMagic = 0x48485354;    // "TSHH"
inline constexpr uint32_t kShmWelcomeMagic = 0x57485354;  // "TSHW"
inline constexpr uint32_t kShmLargeMagic = 0x4C485354;    // "TSHL"
inline constexpr uint32_t kDoorbellMagic = 0x42445354;    // "TSDB"
inline constexpr uint32_t kShmVersion = 1;
inline constexpr size_t kShmHeaderBytes = 4096;  // header page; ring data starts here
inline constexpr size_t kDoorbellPageBytes = 4096;
inline constexpr size_t kDoorbellSleepingOffset = 64;

struct alignas(64) ShmCacheLine {
  uint64_t value;
  uint8_t pad[56];
};
struct ShmRingCtl {
  ShmCacheLine head;          // written by the producer (release)
  ShmCacheLine tail;          // written by the consumer (release)
  ShmCacheLine space_wanted;  // set by a producer with queued frames; cleared by consumer
  ShmCacheLine reserved;
};
struct ShmConnHeader {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;
  uint64_t data_offset;  // kShmHeaderBytes
  uint32_t closed[2];    // [0] client closed, [1] server closed
  uint8_t reserved[32];
  ShmRingCtl ring[2];  // [0] requests (client -> server), [1] replies
};
static_assert(std::is_trivially_copyable_v<ShmConnHeader>);
static_assert(sizeof(ShmCacheLine) == 64);
static_assert(sizeof(ShmRingCtl) == 256);
static_assert(offsetof(ShmConnHeader, closed) == 24);
static_assert(offsetof(ShmConnHeader, ring) == 64);
static_assert(sizeof(ShmConnHeader) == 64 + 2 * 256);
static_assert(sizeof(ShmConnHeader) <= kShmHeaderBytes);

enum ShmRecordKind : uint32_t { kShmRecordInline = 1, kShmRecordLarge = 2, kShmRecordPad = 3 };
struct ShmRecordHeader {
  uint32_t kind;
  uint32_t len;  // bytes after this header, before padding to 8
};
struct ShmLargeRecord {
  uint64_t seq;   // 1, 2, ... per direction
  uint64_t size;  // bytes of the encoded frame in the memfd
};
struct ShmLargeMessage {  // on the Unix socket, with one memfd
  uint32_t magic;         // kShmLargeMagic
  uint32_t reserved;
  uint64_t seq;
  uint64_t size;
};
struct ShmHello {  // client -> server, followed by hint_len bytes; fds: eventfd, page
  uint32_t magic;  // kShmHelloMagic
  uint32_t version;
  uint64_t ring_bytes;
  uint32_t hint_len;  // <= kMaxShmHintBytes
  uint32_t reserved;
};
struct ShmWelcome {  // server -> client, followed by message_len bytes (error text)
  uint32_t magic;    // kShmWelcomeMagic
  uint32_t version;
  int32_t status;  // StatusCode; 0 = accepted, fds: connection memfd, eventfd, page
  uint32_t message_len;
  uint64_t ring_bytes;
};
static_assert(sizeof(ShmRecordHeader) == 8 && sizeof(ShmLargeRecord) == 16);
static_assert(sizeof(ShmLargeMessage) == 24 && sizeof(ShmHello) == 24 && sizeof(ShmWelcome) == 24);

}  // namespace internal

inline constexpr size_t kMaxShmHintBytes = 255;
inline constexpr size_t kMinShmRingBytes = 4096;
inline constexpr size_t kMaxShmRingBytes = 256u << 20;

// Local limits of one connection end (not negotiated).
struct ShmLimits {
  // Bound on the bytes of encoded frames waiting in the local overflow queue. Send() beyond
  // it returns kResourceExhausted. A frame is always accepted into an empty queue.
  size_t max_overflow_bytes = 64u << 20;
  // Bound on the bytes of large messages sent but not yet taken by the peer; beyond it
  // large frames wait in the overflow queue. One is always allowed in flight.
  size_t max_inflight_large_bytes = 256u << 20;
};

// Counters of one connection end, for tests and metrics.
struct ShmStats {
  uint64_t sent_inline = 0;   // frames committed inline
  uint64_t sent_large = 0;    // frames committed through the memfd path
  uint64_t queued = 0;        // frames that went through the overflow queue
  uint64_t received = 0;      // frames returned by Poll
  uint64_t borrowed = 0;      // of them, returned by PollBorrowed with the payload left in place
  size_t overflow_bytes = 0;  // bytes in the overflow queue now
};

struct ShmConnectOptions {
  // Per direction; a power of two >= kMinShmRingBytes. 2 MiB: a 64 KiB round trip
  // between two vCPUs took ~11 µs with 1 MiB rings and ~7.7 µs with 2 MiB here (the
  // same copies; docs/design/dataplane.md, "Requests read from shared memory").
  size_t ring_bytes = 2u << 20;
  std::chrono::milliseconds timeout{2000};  // for connect + handshake
  ShmLimits limits;
};

class ShmConnection;

// Client side: connects to `path` (blocking, bounded by options.timeout), sends
// `my_doorbell`'s fds and `hint` (<= kMaxShmHintBytes), and returns the client end.
// `my_doorbell` is the client's own (owner) doorbell: the server rings it. Errors:
// kUnavailable (no server, or it hung up), kDeadlineExceeded, kInvalidArgument (bad
// arguments or a malformed answer), or the server's refusal.
Result<std::unique_ptr<ShmConnection>> ShmConnect(const std::string& path,
                                                  const Doorbell& my_doorbell,
                                                  std::string_view hint,
                                                  const ShmConnectOptions& options = {});

// One end of a shared-memory connection. Created by ShmListener::Accept (server end) or
// ShmConnect (client end). One thread uses it; destruction closes it.
class ShmConnection {
 public:
  ~ShmConnection();
  ShmConnection(const ShmConnection&) = delete;
  ShmConnection& operator=(const ShmConnection&) = delete;

  // Sends one frame without blocking. Frames up to ring_bytes/4 encoded bytes go inline
  // into the ring; larger ones (payload up to kMaxPayloadBytes) through a sealed memfd
  // passed on the Unix socket. When the ring (or the socket) lacks space, or frames are
  // already queued, the frame goes to the overflow queue, flushed in order by later
  // Send/Poll/Flush calls. Errors: kInvalidArgument (frame too big / name too long),
  // kResourceExhausted (overflow queue full: nothing was queued, back off), kUnavailable
  // (the peer is gone), kFailedPrecondition (this end was closed), the sticky error of a
  // broken connection, or an errno error creating a large message's memfd.
  Status Send(const Frame& f);
  // The same for a frame whose payload is elsewhere: `head`'s own payload is ignored,
  // `payload` is sent in its place. The payload's bytes are copied once, into the ring
  // (or the memfd); nothing is kept after the call returns.
  Status Send(const Frame& head, std::string_view payload);
  // Receiving a large reply into the caller's memory (FrameDecoder::SetPayloadSink):
  // the payload of the next kReply frame with `request_id` whose payload fits `dst`
  // (small or large) is copied from the ring (or memfd) into `dst`
  // instead of its Frame, whose payload is then empty; PayloadInSink() gives its size
  // once Poll() has returned that frame (SIZE_MAX otherwise). `dst` must stay valid
  // until then or ClearPayloadSink().
  void SetPayloadSink(uint64_t request_id, std::span<char> dst) {
    decoder_.SetPayloadSink(request_id, dst);
  }
  void ClearPayloadSink() { decoder_.ClearPayloadSink(); }
  size_t PayloadInSink() const { return decoder_.PayloadInSink(); }
  // Moves queued frames into the ring as space allows; never blocks. OK if some remain.
  Status Flush();
  // Non-blocking: flushes the overflow queue, then decodes up to `max` received frames and
  // appends them to `out`. Returns how many were appended. kUnavailable once the peer is
  // gone (its Close, or socket EOF/HUP/error, checked at most every ~1 ms) and every frame
  // it committed has been returned; kDataLoss / kInvalidArgument for a corrupt record, after
  // which the connection is closed and every call returns that error. Frames appended
  // before an error stay in `out`.
  Result<size_t> Poll(std::vector<Frame>* out, size_t max = 64);

  // Receiving a request without copying its payload: Poll(out, 1), except that a frame
  // whose record is at least `min_bytes` long (inline in the ring, or a large message's
  // memfd) is appended with an empty payload and `*borrowed` is set to its payload where
  // it lies in shared memory (left empty otherwise). The space stays the receiver's until
  // ReleaseBorrowed(): the peer cannot reuse that part of the ring, and a large message
  // stays mapped. Meanwhile Poll() may take later frames (they are copied as always;
  // the ring's read index the peer sees stops at the borrowed record). The header and
  // names were copied out and checked, but the payload's bytes in the ring are the
  // peer's to write: read each once and rely on nothing in them (a large message's are
  // sealed). One borrow at a time: kFailedPrecondition while one is held.
  Result<size_t> PollBorrowed(std::vector<Frame>* out, size_t min_bytes,
                              std::string_view* borrowed);
  // Gives the borrowed space back (and publishes the read index past it). No-op when
  // nothing is borrowed.
  void ReleaseBorrowed();

  // True if Poll() or Flush() would make progress now: the receive ring is not empty, the
  // peer has closed, or queued frames fit. Cheap (a few loads); call it between
  // Doorbell::PrepareSleep() and Sleep(). A dead peer that did not close (crash) shows up on
  // socket_fd() instead: pass it to Sleep() as an extra fd.
  bool HasWork() const;
  bool HasOverflow() const { return !overflow_.empty(); }
  // True while the peer is alive as far as we know: false after the peer closed or died
  // (socket checked with a non-blocking poll at most every ~1 ms), after Close() or after
  // an error. Cheap to call in a loop.
  bool PeerAlive();
  // The Unix socket: POLLHUP means the peer died; POLLIN means a large message is pending
  // (its ring record is, or will be, there too).
  int socket_fd() const { return sock_.get(); }
  // Marks this end closed in shared memory, shuts the socket down and rings the peer; the
  // peer's Poll returns kUnavailable after taking what was committed. Drops queued frames.
  void Close();

  bool is_server() const { return server_; }
  size_t ring_bytes() const { return ring_bytes_; }
  const ShmStats& stats() const { return stats_; }
  void set_limits(const ShmLimits& limits) { limits_ = limits; }

  // The whole shared mapping (header page + both rings), for tests that corrupt it.
  std::span<uint8_t> SharedMemoryForTest() { return {base_, map_bytes_}; }

 private:
  friend class ShmListener;
  friend Result<std::unique_ptr<ShmConnection>> ShmConnect(const std::string& path,
                                                           const Doorbell& my_doorbell,
                                                           std::string_view hint,
                                                           const ShmConnectOptions& options);
  struct Queued {
    std::string bytes;  // the encoded frame
    bool large;
  };
  struct InflightLarge {
    uint64_t end_pos;  // ring position after its record
    size_t bytes;
  };
  struct ReceivedLarge {
    UniqueFd fd;
    uint64_t seq;
    uint64_t size;
  };

  ShmConnection(UniqueFd sock, uint8_t* base, size_t map_bytes, size_t ring_bytes, bool server,
                Doorbell peer_bell);

  internal::ShmConnHeader* header() const;
  internal::ShmRingCtl& out_ctl() const;
  internal::ShmRingCtl& in_ctl() const;
  uint8_t* out_data() const;
  uint8_t* in_data() const;

  // Tries to commit one encoded frame, given as its head (header and names) and the
  // rest (its payload; empty when `head` holds the whole encoding); false if it must
  // wait (ring/socket/in-flight limit).
  Result<bool> TryCommit(std::string_view head, std::string_view rest, bool large);
  // Producer free space, refreshing the peer's tail if `need` does not fit the cached one.
  Result<bool> HasSpace(uint64_t need);
  Status RefreshTail();
  void Publish(uint64_t new_head);
  void WantSpace();
  // Passes head + rest (one encoded frame) in a sealed memfd; false if the socket has
  // no room now.
  Result<bool> SendLargeFd(std::string_view head, std::string_view rest, uint64_t seq);

  // Consumer side.
  Result<bool> ReadOne(std::vector<Frame>* out);
  Status DecodeRecord(std::string_view bytes, std::vector<Frame>* out);
  Status ReadLarge(const internal::ShmLargeRecord& rec, std::vector<Frame>* out);
  Status DrainSocket();
  void PublishTail();
  bool CheckPeer();  // socket/closed-flag check, rate-limited; false = peer gone
  Status Fail(Status s);

  UniqueFd sock_;
  uint8_t* base_;
  size_t map_bytes_;
  size_t ring_bytes_;
  bool server_;
  Doorbell peer_bell_;
  ShmLimits limits_;
  ShmStats stats_;

  // Producer state (our outgoing ring).
  uint64_t head_ = 0;       // our next write position (== published head)
  uint64_t peer_tail_ = 0;  // last validated tail read from the peer
  uint64_t next_large_seq_ = 1;
  std::deque<Queued> overflow_;
  std::deque<InflightLarge> inflight_large_;
  size_t inflight_large_bytes_ = 0;
  std::string scratch_;

  // Consumer state (the incoming ring).
  uint64_t tail_ = 0;            // our read position
  uint64_t published_tail_ = 0;  // last tail stored to shared memory
  uint64_t peer_head_ = 0;       // last validated head read from the peer
  uint64_t expected_large_seq_ = 1;
  std::deque<ReceivedLarge> received_large_;
  FrameDecoder decoder_;
  // PollBorrowed: what it asks for while it runs, and what is held until ReleaseBorrowed.
  size_t borrow_min_ = SIZE_MAX;
  std::string_view* borrow_out_ = nullptr;
  uint64_t record_start_ = 0;  // ring position of the record being decoded
  bool borrowing_ = false;
  uint64_t borrow_start_ = 0;        // the borrowed record's position: PublishTail stops there
  void* borrow_map_ = nullptr;       // a borrowed large message's mapping
  size_t borrow_map_bytes_ = 0;

  bool closed_ = false;     // Close() was called
  bool peer_gone_ = false;  // peer closed or died
  int64_t next_peer_check_ns_ = 0;
  uint32_t peer_checks_ = 0;  // CheckPeer calls (it reads the clock on every 16th)
  Status error_;  // sticky
};

// Server side: a Unix-domain SOCK_SEQPACKET listening socket.
class ShmListener {
 public:
  struct Options {
    size_t max_ring_bytes = 64u << 20;                  // larger client requests are refused
    std::chrono::milliseconds handshake_timeout{1000};  // for the client's hello
    size_t max_pending = 64;                            // accepted sockets awaiting their hello
    ShmLimits limits;                                   // given to accepted connections
  };

  // Listens at `path` (mode 0600). A stale socket file there is removed first; any other
  // kind of file is kAlreadyExists.
  static Result<std::unique_ptr<ShmListener>> Listen(const std::string& path);
  static Result<std::unique_ptr<ShmListener>> Listen(const std::string& path,
                                                     const Options& options);
  ~ShmListener();  // closes pending sockets and unlinks the socket file
  ShmListener(const ShmListener&) = delete;
  ShmListener& operator=(const ShmListener&) = delete;

  // An epoll fd that is readable when Accept() may have something to do (a new connection
  // or a pending hello). Poll it for POLLIN in the owner's loop.
  int fd() const { return epoll_.get(); }
  const std::string& path() const { return path_; }

  // Non-blocking accept + handshake. Returns nullptr when no handshake can complete now.
  // `pick(hint)` chooses the doorbell (of the worker that will own the connection) to hand
  // to the client; the client gets its own copies of the descriptors, so the pointer only
  // needs to be valid during the call. nullptr refuses the client (kUnavailable). `hint_out` (may
  // be null) receives the hint. An error concerns one client only (bad hello, handshake timeout,
  // ...): that client is dropped and the listener keeps working; call Accept again.
  Result<std::unique_ptr<ShmConnection>> Accept(
      const std::function<const Doorbell*(std::string_view hint)>& pick, std::string* hint_out);

 private:
  struct Pending {
    UniqueFd fd;
    int64_t deadline_ns;
  };
  ShmListener(std::string path, UniqueFd sock, UniqueFd epoll, uint64_t inode,
              const Options& options);
  Result<std::unique_ptr<ShmConnection>> Handshake(
      UniqueFd sock, const std::function<const Doorbell*(std::string_view hint)>& pick,
      std::string* hint_out);
  void DropPending(size_t i);

  std::string path_;
  UniqueFd sock_;
  UniqueFd epoll_;
  uint64_t inode_;
  Options options_;
  std::vector<Pending> pending_;
};

}  // namespace tern::transport
