// Outgoing data-plane channels of an agent worker: how a guest's tern_call reaches an
// instance on another agent. One channel per (worker thread, peer agent, tier); the
// worker polls its channels in its loop and sleeps on its doorbell plus the channels'
// fds, so a reply is picked up by the very thread that waits for it (no hop).
//
//   TcpOutChannel   frames over a non-blocking TCP connection (TCP_NODELAY), many calls
//                   in flight (pipelined); optional user-space link emulation (latency
//                   and bandwidth per direction: this kernel has no netem).
//   ShmOutChannel   frames over a shared-memory connection (transport/shm.h) to an
//                   agent on the same host; the peer rings this worker's doorbell.
//   (RDMA would be a third implementation of OutChannel; there is no RDMA here.)
//
// Ownership: a channel is owned by one worker thread. Thread-safety: none; every
// method is called on the owning thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "dataplane/link.h"
#include "dataplane/picker.h"
#include "transport/frame.h"
#include "transport/socket.h"

namespace tern::transport {
class Doorbell;
class ShmConnection;
}  // namespace tern::transport

namespace tern::agent {

class OutChannel {
 public:
  virtual ~OutChannel() = default;
  virtual dataplane::Tier tier() const = 0;
  // Queues `f` for the peer without blocking. kResourceExhausted when the channel's
  // bounded output is full (backpressure: fail the call, the caller backs off);
  // kUnavailable when the channel is dead.
  virtual Status Send(const transport::Frame& f) = 0;
  // Moves what can move without blocking, and appends the frames received to `out`.
  // An error means the channel is dead (peer gone, garbage received): every call in
  // flight on it has failed.
  virtual Status Poll(int64_t now_ns, std::vector<transport::Frame>* out) = 0;
  // For sleeping: an fd to poll (-1 if the doorbell covers this channel) and whether
  // to wait for writability too.
  virtual int wait_fd() const { return -1; }
  virtual bool wants_write() const { return false; }
  // The earliest time something becomes due without any fd event (emulated link
  // delay), or 0 for none.
  virtual int64_t next_due_ns() const { return 0; }
  // The emulated link to the peer changed (TCP only; others ignore it). Frames already
  // delayed keep their times.
  virtual void SetLink(const dataplane::LinkSpec& link) { (void)link; }
};

struct TcpChannelOptions {
  // Emulated link, per direction (zero = a real network: no added delay).
  dataplane::LinkSpec link;
  size_t max_output_bytes = 64u << 20;
  uint32_t max_payload_bytes = transport::kMaxPayloadBytes;
};

// Connects (blocking, bounded by `timeout_ns`) to an agent's frame port.
Result<std::unique_ptr<OutChannel>> ConnectTcpChannel(const std::string& host_port,
                                                      const TcpChannelOptions& options,
                                                      int64_t timeout_ns);

// Wraps a connected shared-memory connection (client end).
std::unique_ptr<OutChannel> MakeShmChannel(std::unique_ptr<transport::ShmConnection> conn);

}  // namespace tern::agent
