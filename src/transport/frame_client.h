// FrameClient: a blocking client for tern's frame protocol (frame.h) over TCP, for the
// CLI, the client library and benchmarks.
//
//   auto c = FrameClient::Connect("127.0.0.1", port, std::chrono::seconds(2));
//   Result<Frame> reply = (*c)->Call(request, std::chrono::seconds(5));
//
// Call() assigns the request id, sends, and waits for the answer with that id.
// Pipelining: Send() + Receive() keep many requests in flight; CallMany() does it with
// a bounded window and returns the answers in request order. Reading and writing are
// interleaved, so a long pipeline cannot deadlock against a server that stops reading
// while its replies are not being read.
//
// Errors follow STYLE.md: kUnavailable when the connection is refused, reset or closed
// (connect again; the client is then unusable, see error()), kDeadlineExceeded when an
// answer does not arrive in time (the connection stays usable; the late answer is
// discarded by Call()), and for kError answers the code and message they carry.
//
// Ownership: owns its socket. Thread-safety: not thread-safe; use one client per
// thread (or serialize calls).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "transport/frame.h"
#include "transport/socket.h"

namespace tern::transport {

struct FrameClientOptions {
  // Answers with larger payloads break the connection (kUnavailable).
  uint32_t max_payload_bytes = kMaxPayloadBytes;
  // Poll for an answer (non-blocking reads) for up to this long before blocking: saves
  // the cross-CPU wake-up on a fast server, burns CPU meanwhile. 0 = never spin.
  std::chrono::nanoseconds busy_poll{0};
};

class FrameClient {
 public:
  static Result<std::unique_ptr<FrameClient>> Connect(
      std::string_view host, uint16_t port,
      std::chrono::nanoseconds timeout = std::chrono::seconds(5),
      const FrameClientOptions& options = {});
  FrameClient(const FrameClient&) = delete;
  FrameClient& operator=(const FrameClient&) = delete;

  // Sends `request` (its request_id is replaced by a fresh one) and waits up to
  // `timeout` (0 = forever) for the answer. Returns kReply, kMoved and kPong frames;
  // a kError answer becomes its Status.
  Result<Frame> Call(Frame request, std::chrono::nanoseconds timeout);
  // The same with the request's payload in the caller's memory (`head`'s own payload is
  // ignored): a large payload is written to the socket from there, not copied into the
  // client first (whatever the socket has not taken when Call returns is copied then).
  Result<Frame> Call(Frame head, std::string_view payload, std::chrono::nanoseconds timeout);
  // The same, with the answer's payload put into `reply` as well: returns its size. A
  // large payload is received from the socket straight into `reply`, a small one is
  // copied there; so the payload crosses user space once each way, as with plain
  // send/recv on buffers of the caller. Errors: Call's, kFailedPrecondition for an
  // answer that is not kReply (kMoved), kResourceExhausted for a payload larger than
  // `reply` (the connection stays usable).
  Result<size_t> CallInto(Frame head, std::string_view payload, std::span<char> reply,
                          std::chrono::nanoseconds timeout);
  // Call() with a kPing frame; returns the round-trip time.
  Result<std::chrono::nanoseconds> Ping(std::chrono::nanoseconds timeout);

  // Pipelining. Send() assigns a fresh request id, queues the frame and writes what
  // the socket takes without blocking; returns the id. Receive() waits up to `timeout`
  // for the next incoming frame, whatever its id (kError frames included: see
  // ErrorFrameStatus), writing queued requests meanwhile.
  Result<uint64_t> Send(Frame request);
  // Send() with the payload in the caller's memory (`head`'s own payload is ignored): a
  // large payload is written from there, not copied, and the caller can reuse its buffer
  // rather than allocate a new one per request. The caller keeps those bytes unchanged
  // until the request's answer has been received — by then a server that answers a
  // request once it has arrived whole has been sent all of it — or error() is set.
  Result<uint64_t> SendBorrowed(Frame head, std::string_view payload);
  Result<Frame> Receive(std::chrono::nanoseconds timeout);
  // Writes all queued requests (reading answers into the buffer meanwhile).
  Status Flush(std::chrono::nanoseconds timeout);

  // Sends every request keeping at most `window` unanswered, and returns one result
  // per request, in request order (a kError answer, or a request that cannot be
  // encoded, becomes its Status). A transport failure or the `timeout` for the whole
  // batch fails the batch.
  Result<std::vector<Result<Frame>>> CallMany(std::vector<Frame> requests, size_t window,
                                              std::chrono::nanoseconds timeout);

  // Sent but not yet answered requests (as seen by Receive/Call/CallMany).
  size_t in_flight() const { return in_flight_; }
  // The error that broke the connection; OK while it is usable.
  const Status& error() const { return broken_; }

 private:
  FrameClient(UniqueFd fd, const FrameClientOptions& options);
  // Assigns the next request id to *request and queues its encoding (no I/O; a large
  // payload is taken over, not copied).
  Result<uint64_t> Enqueue(Frame* request);
  // Waits for the answer to request `id` (Call's loop; late answers are dropped).
  Result<Frame> AwaitAnswer(uint64_t id, int64_t deadline, std::chrono::nanoseconds timeout);
  // Next decoded frame, pumping the socket until `deadline` (0 = none).
  Result<Frame> NextFrame(int64_t deadline);
  // Writes what the socket takes; with `block`, then waits (until `deadline`) for the
  // socket to become readable or writable and reads or writes once more.
  Status PumpOnce(int64_t deadline, bool block);
  // Blocks in recv() until input arrives or the deadline passes.
  Status WaitAndRead(int64_t deadline);
  Status WriteSome();
  Status ReadSomeInput();
  // One recv (`flags`: MSG_DONTWAIT or 0) into the decoder: a large payload being
  // received straight into its frame, the rest through read_buf_. Returns recv's result.
  ssize_t RecvIntoDecoder(int flags);
  Status Break(Status s);

  UniqueFd fd_;
  FrameDecoder decoder_;
  FrameOutput out_;
  uint64_t next_id_ = 1;
  size_t in_flight_ = 0;
  Status broken_;
  std::unique_ptr<char[]> read_buf_;
  int64_t rcv_timeout_nanos_ = 0;  // current SO_RCVTIMEO, 0 = none
  const int64_t busy_poll_nanos_;
};

}  // namespace tern::transport
