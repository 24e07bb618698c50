// BufferedSocket: the byte-stream half shared by FrameConnection and the HTTP server's
// connections. It owns a non-blocking connected socket registered with an EventLoop,
// reads in large chunks and hands them to OnRead(), buffers output and flushes it once
// per loop iteration (so all replies produced in one iteration leave in one send()),
// applies backpressure, an idle timeout and a graceful ("lingering") close.
//
// Backpressure: while more than `pause_reading_output_bytes` wait to be sent, the
// socket stops reading, so a peer that pipelines requests but does not read replies
// is slowed down by TCP flow control. Output that would exceed `max_output_bytes`
// (possible only when replies are produced asynchronously) closes the connection.
//
// Graceful close: CloseAfterFlush() stops delivering input, sends what is buffered,
// shuts down the write side and then discards input until the peer closes or the
// linger time passes. This lets a final error reply reach a peer that is still
// sending, instead of being destroyed by a TCP reset.
//
// Ownership: the owner holds it in a unique_ptr and must destroy it on the loop
// thread, typically with EventLoop::DeleteLater() from the OnClosed() path.
// Thread-safety: loop thread only, except alive_token() readers (see below).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "transport/event_loop.h"
#include "transport/socket.h"

namespace tern::transport::internal {

struct SocketLimits {
  // Output beyond this closes the connection (a single write larger than the limit is
  // allowed when nothing else is queued).
  size_t max_output_bytes = 128u << 20;
  // Reading pauses while more than this is queued for sending.
  size_t pause_reading_output_bytes = 4u << 20;
  // Close after this long without reading or writing anything (0 = never).
  std::chrono::nanoseconds idle_timeout{0};
  // How long a graceful close waits for the peer to close its side.
  std::chrono::nanoseconds linger{std::chrono::seconds(2)};
};

class BufferedSocket {
 public:
  BufferedSocket(EventLoop* loop, UniqueFd fd, const SocketLimits& limits);
  virtual ~BufferedSocket();
  BufferedSocket(const BufferedSocket&) = delete;
  BufferedSocket& operator=(const BufferedSocket&) = delete;

  // Registers with the loop and starts reading.
  Status StartIo();

  EventLoop* loop() const { return loop_; }
  // True once Close() ran (the fd is closed).
  bool closed() const { return state_ == State::kClosed; }
  // True once a close started: input is no longer delivered.
  bool closing() const { return state_ != State::kOpen; }
  size_t pending_output() const { return out_.size() - out_pos_; }

  // Output: call EnsureOutputRoom(n), append n bytes to *output_buffer(), then call
  // CommitOutput(), which schedules a flush at the end of the loop iteration.
  // EnsureOutputRoom returns false, and closes the connection with kResourceExhausted,
  // if queuing n more bytes would exceed max_output_bytes (a single write larger than
  // the limit is allowed when nothing is queued). Both return false once closed.
  bool EnsureOutputRoom(size_t n);
  std::string* output_buffer() { return &out_; }
  void CommitOutput();

  // Closes now: unregisters, closes the fd, drops buffered output, then calls
  // OnClosed(reason) once. Idempotent.
  void CloseNow(const Status& reason);
  // Graceful close (see the file comment); OnClosed(reason) runs at the end.
  void CloseAfterFlush(const Status& reason);
  // Stops (or resumes) delivering input, e.g. while a request is being served.
  void PauseReading(bool paused);

  // A token that is true while this object exists. Copies may be taken to other
  // threads, but the bool may only be read on the loop thread (where the object is
  // destroyed), e.g. inside a task posted to the loop.
  const std::shared_ptr<bool>& alive_token() const { return alive_; }

 protected:
  // `n` bytes arrived. Not called once closing() is true.
  virtual void OnRead(const char* data, size_t n) = 0;
  // The peer closed its sending side. Default: CloseAfterFlush(OK).
  virtual void OnPeerEof();
  // The connection closed (OK status for a clean close by either side).
  virtual void OnClosed(const Status& reason) = 0;
  // While true, the idle timeout does not fire (e.g. a request is being served).
  virtual bool IsBusy() const { return false; }

  const UniqueFd& fd() const { return fd_; }

  // Dates every read by when the kernel received its bytes (RecvDated), for OnRead to
  // look up with read_received_ns(). Off by default: it costs a recvmsg with a control
  // buffer and a clock read per read. Not fatal if the socket cannot be stamped (the
  // read's time is used then).
  void DateReads();
  // MonoNanos() when the bytes of the current (or last) read arrived; 0 unless DateReads().
  int64_t read_received_ns() const { return read_received_ns_; }

 private:
  enum class State { kOpen, kDraining, kClosed };

  void OnEvents(uint32_t events);
  void HandleRead();
  void Flush();
  void ScheduleFlush();
  void UpdateInterest();
  void ArmIdleTimer(std::chrono::nanoseconds after);
  void CancelTimers();

  EventLoop* const loop_;
  UniqueFd fd_;
  const SocketLimits limits_;
  State state_ = State::kOpen;
  Status close_reason_;
  bool registered_ = false;
  bool app_paused_ = false;
  bool peer_eof_ = false;
  bool shut_wr_ = false;
  bool flush_scheduled_ = false;
  bool in_read_ = false;
  bool flush_after_read_ = false;
  bool write_blocked_ = false;  // the last send() hit EAGAIN
  bool date_reads_ = false;
  int64_t read_received_ns_ = 0;
  uint32_t interest_ = 0;
  std::string out_;
  size_t out_pos_ = 0;
  int64_t last_activity_nanos_ = 0;
  EventLoop::TimerId idle_timer_ = 0;
  EventLoop::TimerId linger_timer_ = 0;
  std::shared_ptr<bool> alive_;
};

}  // namespace tern::transport::internal
