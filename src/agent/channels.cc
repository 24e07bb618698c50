#include "agent/channels.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/clock.h"
#include "core/ids.h"
#include "transport/shm.h"

namespace tern::agent {
namespace {

using transport::Frame;

class TcpOutChannel final : public OutChannel {
 public:
  TcpOutChannel(transport::UniqueFd fd, std::string peer, const TcpChannelOptions& options)
      : fd_(std::move(fd)),
        peer_(std::move(peer)),
        options_(options),
        link_(options.link),
        shaped_(options.link.latency_ns > 0 || options.link.bandwidth_bps > 0),
        out_shaper_(options.link),
        in_shaper_(options.link),
        decoder_(options.max_payload_bytes) {}

  dataplane::Tier tier() const override { return dataplane::Tier::kTcp; }

  Status Send(const Frame& f) override {
    if (!error_.ok()) return error_;
    if (out_.size() - out_pos_ + delayed_bytes_ > options_.max_output_bytes) {
      return ResourceExhaustedError(fmt::format(
          "connection to {} has {} bytes waiting to be sent; back off", peer_,
          out_.size() - out_pos_ + delayed_bytes_));
    }
    if (!shaped_) {
      TERN_RETURN_IF_ERROR(transport::EncodeFrame(f, &out_));
      return Flush();
    }
    std::string bytes;
    TERN_RETURN_IF_ERROR(transport::EncodeFrame(f, &bytes));
    // The frame reaches the wire when the emulated link would have delivered it.
    int64_t due = out_shaper_.DeliverAt(MonoNanos(), bytes.size());
    delayed_bytes_ += bytes.size();
    delayed_out_.push_back({due, std::move(bytes)});
    return Status::Ok();
  }

  Status Poll(int64_t now_ns, std::vector<Frame>* out) override {
    if (!error_.ok()) return error_;
    // Delayed output that is due now goes to the socket buffer.
    while (!delayed_out_.empty() && delayed_out_.front().due <= now_ns) {
      delayed_bytes_ -= delayed_out_.front().bytes.size();
      out_.append(delayed_out_.front().bytes);
      delayed_out_.pop_front();
    }
    TERN_RETURN_IF_ERROR(Flush());
    TERN_RETURN_IF_ERROR(ReadAvailable(now_ns));
    while (!delayed_in_.empty() && delayed_in_.front().due <= now_ns) {
      out->push_back(std::move(delayed_in_.front().frame));
      delayed_in_.pop_front();
    }
    return Status::Ok();
  }

  void SetLink(const dataplane::LinkSpec& link) override {
    if (link == link_) return;
    link_ = link;
    shaped_ = link.latency_ns > 0 || link.bandwidth_bps > 0;
    out_shaper_ = dataplane::LinkShaper(link);
    in_shaper_ = dataplane::LinkShaper(link);
  }

  int wait_fd() const override { return fd_.get(); }
  bool wants_write() const override { return out_pos_ < out_.size(); }
  int64_t next_due_ns() const override {
    int64_t due = 0;
    if (!delayed_out_.empty()) due = delayed_out_.front().due;
    if (!delayed_in_.empty() && (due == 0 || delayed_in_.front().due < due)) {
      due = delayed_in_.front().due;
    }
    return due;
  }

 private:
  struct DelayedBytes {
    int64_t due;
    std::string bytes;
  };
  struct DelayedFrame {
    int64_t due;
    Frame frame;
  };

  Status Fail(Status s) {
    if (error_.ok()) error_ = std::move(s);
    fd_.reset();
    return error_;
  }

  Status Flush() {
    while (out_pos_ < out_.size()) {
      ssize_t n = ::send(fd_.get(), out_.data() + out_pos_, out_.size() - out_pos_,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        out_pos_ += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      return Fail(UnavailableError(
          fmt::format("connection to agent at {} lost: {}", peer_, std::strerror(errno))));
    }
    if (out_pos_ == out_.size()) {
      out_.clear();
      out_pos_ = 0;
    } else if (out_pos_ > (1u << 20)) {
      out_.erase(0, out_pos_);
      out_pos_ = 0;
    }
    return Status::Ok();
  }

  Status ReadAvailable(int64_t now_ns) {
    char buf[64 * 1024];
    for (;;) {
      ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
        if (static_cast<size_t>(n) < sizeof(buf)) break;
        continue;
      }
      if (n == 0) {
        return Fail(UnavailableError(fmt::format("agent at {} closed the connection", peer_)));
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return Fail(UnavailableError(
          fmt::format("connection to agent at {} lost: {}", peer_, std::strerror(errno))));
    }
    for (;;) {
      Frame f;
      Result<bool> got = decoder_.Next(&f);
      if (!got.ok()) {
        return Fail(UnavailableError(
            fmt::format("agent at {} sent a malformed frame ({}); connection closed", peer_,
                        got.status().message())));
      }
      if (!*got) break;
      int64_t due = shaped_ ? in_shaper_.DeliverAt(now_ns, transport::EncodedFrameSize(f)) : 0;
      delayed_in_.push_back({due, std::move(f)});
    }
    return Status::Ok();
  }

  transport::UniqueFd fd_;
  const std::string peer_;
  const TcpChannelOptions options_;
  dataplane::LinkSpec link_;
  bool shaped_;
  dataplane::LinkShaper out_shaper_;
  dataplane::LinkShaper in_shaper_;
  transport::FrameDecoder decoder_;
  std::string out_;
  size_t out_pos_ = 0;
  std::deque<DelayedBytes> delayed_out_;  // due times are non-decreasing (one shaper)
  size_t delayed_bytes_ = 0;
  std::deque<DelayedFrame> delayed_in_;
  Status error_;
};

class ShmOutChannel final : public OutChannel {
 public:
  explicit ShmOutChannel(std::unique_ptr<transport::ShmConnection> conn)
      : conn_(std::move(conn)) {}
  dataplane::Tier tier() const override { return dataplane::Tier::kSharedMemory; }
  Status Send(const Frame& f) override { return conn_->Send(f); }
  Status Poll(int64_t, std::vector<Frame>* out) override {
    Result<size_t> n = conn_->Poll(out);
    if (!n.ok()) return n.status();
    if (!conn_->PeerAlive()) {
      return UnavailableError("the agent at the other end of the shared-memory connection is gone");
    }
    return Status::Ok();
  }
  // Large messages arrive with an fd on the socket; its readability also wakes us.
  int wait_fd() const override { return conn_->socket_fd(); }

 private:
  std::unique_ptr<transport::ShmConnection> conn_;
};

}  // namespace

Result<std::unique_ptr<OutChannel>> ConnectTcpChannel(const std::string& host_port,
                                                      const TcpChannelOptions& options,
                                                      int64_t timeout_ns) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(host_port, &host, &port));
  Result<transport::UniqueFd> fd =
      transport::ConnectTcp(host, port, std::chrono::nanoseconds(timeout_ns));
  if (!fd.ok()) {
    return UnavailableError(
        fmt::format("cannot connect to agent at {}: {}", host_port, fd.status().message()));
  }
  TERN_RETURN_IF_ERROR(transport::SetNonBlocking(fd->get()));
  TERN_RETURN_IF_ERROR(transport::SetNoDelay(fd->get()));
  return std::unique_ptr<OutChannel>(new TcpOutChannel(std::move(*fd), host_port, options));
}

std::unique_ptr<OutChannel> MakeShmChannel(std::unique_ptr<transport::ShmConnection> conn) {
  return std::make_unique<ShmOutChannel>(std::move(conn));
}

}  // namespace tern::agent
