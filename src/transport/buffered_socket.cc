#include "transport/buffered_socket.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>

#include "core/logging.h"

namespace tern::transport::internal {
namespace {

constexpr size_t kReadChunkBytes = 64 << 10;
// Reads per readiness event before yielding to other fds (level-triggered epoll
// brings us back).
constexpr int kMaxReadsPerEvent = 16;
constexpr size_t kShrinkOutputBytes = 4u << 20;
constexpr size_t kCompactOutputBytes = 1u << 20;

// One read buffer per thread: the loop thread reads one socket at a time, and the
// bytes are consumed (copied into a decoder or a request) before the next read.
char* ReadScratch() {
  thread_local std::unique_ptr<char[]> buf(new char[kReadChunkBytes]);
  return buf.get();
}

}  // namespace

BufferedSocket::BufferedSocket(EventLoop* loop, UniqueFd fd, const SocketLimits& limits)
    : loop_(loop), fd_(std::move(fd)), limits_(limits), alive_(std::make_shared<bool>(true)) {}

BufferedSocket::~BufferedSocket() {
  *alive_ = false;
  CancelTimers();
  if (registered_) loop_->RemoveFd(fd_.get());
}

Status BufferedSocket::StartIo() {
  TERN_RETURN_IF_ERROR(
      loop_->AddFd(fd_.get(), EventLoop::kReadable, [this](uint32_t ev) { OnEvents(ev); }));
  registered_ = true;
  interest_ = EventLoop::kReadable;
  last_activity_nanos_ = loop_->NowNanos();
  if (limits_.idle_timeout.count() > 0) ArmIdleTimer(limits_.idle_timeout);
  return Status::Ok();
}

void BufferedSocket::ArmIdleTimer(std::chrono::nanoseconds after) {
  idle_timer_ = loop_->RunAfter(after, [this] {
    idle_timer_ = 0;
    if (closed()) return;
    int64_t idle = limits_.idle_timeout.count();
    int64_t elapsed = loop_->NowNanos() - last_activity_nanos_;
    if (elapsed >= idle && !IsBusy()) {
      CloseNow(DeadlineExceededError(
          fmt::format("idle for {} ms", limits_.idle_timeout.count() / 1'000'000)));
      return;
    }
    ArmIdleTimer(std::chrono::nanoseconds(elapsed >= idle ? idle : idle - elapsed));
  });
}

void BufferedSocket::CancelTimers() {
  if (idle_timer_ != 0) loop_->CancelTimer(idle_timer_);
  if (linger_timer_ != 0) loop_->CancelTimer(linger_timer_);
  idle_timer_ = linger_timer_ = 0;
}

bool BufferedSocket::EnsureOutputRoom(size_t n) {
  if (closed()) return false;
  if (pending_output() == 0 || pending_output() + n <= limits_.max_output_bytes) return true;
  Status s = ResourceExhaustedError(fmt::format(
      "peer is not reading: {} bytes queued for sending, {} more would exceed the limit "
      "of {}",
      pending_output(), n, limits_.max_output_bytes));
  TERN_LOG(WARN) << "closing connection to " << PeerAddress(fd_.get()) << ": " << s;
  CloseNow(s);
  return false;
}

void BufferedSocket::CommitOutput() {
  if (closed()) {
    out_.clear();
    out_pos_ = 0;
    return;
  }
  if (in_read_) {
    flush_after_read_ = true;
    return;
  }
  ScheduleFlush();
}

void BufferedSocket::ScheduleFlush() {
  if (flush_scheduled_ || pending_output() == 0) return;
  flush_scheduled_ = true;
  loop_->Defer([this, alive = alive_] {
    if (!*alive) return;
    flush_scheduled_ = false;
    Flush();
  });
}

void BufferedSocket::PauseReading(bool paused) {
  if (app_paused_ == paused) return;
  app_paused_ = paused;
  UpdateInterest();
}

void BufferedSocket::UpdateInterest() {
  if (closed() || !registered_) return;
  bool reading =
      !peer_eof_ && (state_ == State::kDraining ||
                     (!app_paused_ && pending_output() <= limits_.pause_reading_output_bytes));
  uint32_t want = reading ? EventLoop::kReadable : 0;
  // Ask for writability only once the kernel refused bytes; output queued during this
  // iteration is flushed at its end anyway.
  if (write_blocked_ && pending_output() > 0) want |= EventLoop::kWritable;
  if (want == interest_) return;
  Status s = loop_->ModifyFd(fd_.get(), want);
  if (!s.ok()) {
    CloseNow(s);
    return;
  }
  interest_ = want;
}

void BufferedSocket::OnEvents(uint32_t events) {
  if (events & EventLoop::kWritable) {
    Flush();
    if (closed()) return;
  }
  if (events & EventLoop::kError) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      CloseNow(ErrnoError("connection", err));
      return;
    }
    if (!(interest_ & EventLoop::kReadable)) {
      // Hung up while we were not reading: nothing more can be exchanged.
      CloseNow(state_ == State::kDraining ? close_reason_ : UnavailableError("connection hung up"));
      return;
    }
  }
  if (events & (EventLoop::kReadable | EventLoop::kError)) HandleRead();
}

void BufferedSocket::DateReads() {
  if (Status st = EnableReceiveTimestamps(fd_.get()); !st.ok()) {
    TERN_LOG(DEBUG) << "reads dated by the time of the read: " << st;
  }
  date_reads_ = true;
}

void BufferedSocket::HandleRead() {
  char* buf = ReadScratch();
  // Output produced while handling this read is flushed once at the end, without
  // going through the deferred queue.
  in_read_ = true;
  for (int i = 0; i < kMaxReadsPerEvent; ++i) {
    if (closed() || peer_eof_) break;
    if (state_ == State::kOpen && !(interest_ & EventLoop::kReadable)) break;  // paused
    ssize_t n;
    if (date_reads_) {
      const iovec iov{buf, kReadChunkBytes};
      n = RecvDated(fd_.get(), &iov, 1, &read_received_ns_);
    } else {
      n = recv(fd_.get(), buf, kReadChunkBytes, 0);
    }
    if (n > 0) {
      last_activity_nanos_ = loop_->NowNanos();
      if (state_ == State::kOpen) {
        OnRead(buf, static_cast<size_t>(n));  // may pause, close or queue output
        // Re-evaluate interest (backpressure) before reading more.
        UpdateInterest();
      }
      // While draining, input is discarded.
      if (static_cast<size_t>(n) < kReadChunkBytes) break;  // most likely drained
      continue;
    }
    if (n == 0) {
      peer_eof_ = true;
      if (state_ == State::kDraining) {
        if (pending_output() == 0) CloseNow(close_reason_);
      } else {
        OnPeerEof();
      }
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    CloseNow(ErrnoError("recv", errno));
    break;
  }
  in_read_ = false;
  if (closed()) return;
  if (flush_after_read_) {
    flush_after_read_ = false;
    Flush();  // also updates the interest set
    return;
  }
  UpdateInterest();
}

void BufferedSocket::OnPeerEof() { CloseAfterFlush(Status::Ok()); }

void BufferedSocket::Flush() {
  if (closed()) return;
  while (out_pos_ < out_.size()) {
    ssize_t n = send(fd_.get(), out_.data() + out_pos_, out_.size() - out_pos_,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      out_pos_ += static_cast<size_t>(n);
      last_activity_nanos_ = loop_->NowNanos();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    CloseNow(ErrnoError("send", n < 0 ? errno : EPIPE));
    return;
  }
  write_blocked_ = out_pos_ < out_.size();
  if (out_pos_ == out_.size()) {
    out_pos_ = 0;
    if (out_.capacity() > kShrinkOutputBytes) {
      std::string().swap(out_);
    } else {
      out_.clear();
    }
    if (state_ == State::kDraining) {
      if (!shut_wr_) {
        shutdown(fd_.get(), SHUT_WR);
        shut_wr_ = true;
      }
      if (peer_eof_) {
        CloseNow(close_reason_);
        return;
      }
    }
  } else if (out_pos_ >= kCompactOutputBytes && out_pos_ >= out_.size() / 2) {
    out_.erase(0, out_pos_);
    out_pos_ = 0;
  }
  UpdateInterest();
}

void BufferedSocket::CloseAfterFlush(const Status& reason) {
  if (state_ != State::kOpen) return;
  state_ = State::kDraining;
  close_reason_ = reason;
  linger_timer_ = loop_->RunAfter(limits_.linger, [this] {
    linger_timer_ = 0;
    CloseNow(close_reason_);
  });
  // Flush now if possible (this also shuts down the write side once empty).
  Flush();
}

void BufferedSocket::CloseNow(const Status& reason) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  CancelTimers();
  if (registered_) {
    loop_->RemoveFd(fd_.get());
    registered_ = false;
  }
  fd_.reset();
  std::string().swap(out_);
  out_pos_ = 0;
  OnClosed(reason);
}

}  // namespace tern::transport::internal
