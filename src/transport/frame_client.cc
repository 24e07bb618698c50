#include "transport/frame_client.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "core/clock.h"

namespace tern::transport {
namespace {

constexpr size_t kReadChunkBytes = 64u << 10;

}  // namespace

Result<std::unique_ptr<FrameClient>> FrameClient::Connect(std::string_view host, uint16_t port,
                                                          std::chrono::nanoseconds timeout,
                                                          const FrameClientOptions& options) {
  TERN_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp(host, port, timeout));
  return std::unique_ptr<FrameClient>(new FrameClient(std::move(fd), options));
}

FrameClient::FrameClient(UniqueFd fd, const FrameClientOptions& options)
    : fd_(std::move(fd)),
      decoder_(options.max_payload_bytes),
      read_buf_(new char[kReadChunkBytes]),
      busy_poll_nanos_(options.busy_poll.count() > 0 ? options.busy_poll.count() : 0) {
  // The socket blocks (bounded by SO_RCVTIMEO) when we only wait for answers, which
  // saves a poll() per call; everything else passes MSG_DONTWAIT.
  int flags = fcntl(fd_.get(), F_GETFL);
  if (flags >= 0) fcntl(fd_.get(), F_SETFL, flags & ~O_NONBLOCK);
}

Status FrameClient::Break(Status s) {
  if (broken_.ok()) {
    broken_ = std::move(s);
    fd_.reset();
    out_.Clear();
  }
  return broken_;
}

Status FrameClient::WriteSome() {
  Result<size_t> w = out_.WriteTo(fd_.get());
  if (!w.ok()) return Break(w.status().WithPrefix("frame client"));
  return Status::Ok();
}

ssize_t FrameClient::RecvIntoDecoder(int flags) {
  const std::span<char> window = decoder_.PayloadWindow();
  // Header-first after a large answer: its successor's payload then lands in its frame.
  const size_t chunk = std::min(kReadChunkBytes, decoder_.ReadLimit());
  ssize_t n;
  if (window.empty()) {
    n = recv(fd_.get(), read_buf_.get(), chunk, flags);
  } else {
    iovec iov[2] = {{window.data(), window.size()}, {read_buf_.get(), chunk}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    n = recvmsg(fd_.get(), &msg, flags);
  }
  if (n > 0) {
    const size_t direct = std::min(static_cast<size_t>(n), window.size());
    decoder_.PayloadReceived(direct);
    decoder_.Feed(std::string_view(read_buf_.get(), static_cast<size_t>(n) - direct));
  }
  return n;
}

Status FrameClient::ReadSomeInput() {
  for (;;) {
    ssize_t n = RecvIntoDecoder(MSG_DONTWAIT);
    if (n > 0) return Status::Ok();
    if (n == 0) return Break(UnavailableError("frame client: server closed the connection"));
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::Ok();
    return Break(ErrnoError("frame client: recv", errno));
  }
}

Status FrameClient::WaitAndRead(int64_t deadline) {
  int64_t want = 0;  // SO_RCVTIMEO to use; 0 = wait forever
  if (deadline > 0) {
    want = deadline - MonoNanos();
    if (want <= 0) return DeadlineExceededError("frame client: timed out");
  }
  if (busy_poll_nanos_ > 0) {
    const int64_t start = MonoNanos();
    int64_t spin_until = start + busy_poll_nanos_;
    if (deadline > 0 && deadline < spin_until) spin_until = deadline;
    do {
      ssize_t n = RecvIntoDecoder(MSG_DONTWAIT);
      if (n > 0) return Status::Ok();
      if (n == 0) return Break(UnavailableError("frame client: server closed the connection"));
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return Break(ErrnoError("frame client: recv", errno));
      }
    } while (MonoNanos() < spin_until);
    if (deadline > 0) {
      want = deadline - MonoNanos();
      if (want <= 0) return DeadlineExceededError("frame client: timed out");
    }
  }
  // Re-arm the receive timeout only when it is far off the time left, so a run of
  // calls with the same timeout costs no extra system call.
  const bool rearm = want == 0 ? rcv_timeout_nanos_ != 0
                               : (rcv_timeout_nanos_ == 0 || rcv_timeout_nanos_ > want + want / 8 ||
                                  rcv_timeout_nanos_ < want / 2);
  if (rearm) {
    int64_t us = (want + 999) / 1000;
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(us / 1'000'000);
    tv.tv_usec = static_cast<suseconds_t>(us % 1'000'000);
    if (setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
      return Break(ErrnoError("frame client: setsockopt(SO_RCVTIMEO)", errno));
    }
    rcv_timeout_nanos_ = want;
  }
  ssize_t n = RecvIntoDecoder(0);
  if (n > 0) return Status::Ok();
  if (n == 0) return Break(UnavailableError("frame client: server closed the connection"));
  if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
    if (deadline > 0 && MonoNanos() >= deadline) {
      return DeadlineExceededError("frame client: timed out");
    }
    return Status::Ok();  // the caller loops
  }
  return Break(ErrnoError("frame client: recv", errno));
}

Status FrameClient::PumpOnce(int64_t deadline, bool block) {
  TERN_RETURN_IF_ERROR(WriteSome());
  if (!block) return Status::Ok();
  // Nothing left to write: just wait for input.
  if (out_.empty()) return WaitAndRead(deadline);
  int timeout_ms = -1;
  if (deadline > 0) {
    int64_t left = deadline - MonoNanos();
    if (left <= 0) return DeadlineExceededError("frame client: timed out");
    int64_t ms = (left + 999'999) / 1'000'000;
    timeout_ms = ms > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(ms);
  }
  pollfd p{};
  p.fd = fd_.get();
  p.events = POLLIN | POLLOUT;
  int rc = poll(&p, 1, timeout_ms);
  if (rc < 0) {
    if (errno == EINTR) return Status::Ok();
    return Break(ErrnoError("frame client: poll", errno));
  }
  if (rc == 0) return DeadlineExceededError("frame client: timed out");
  if (p.revents & (POLLIN | POLLERR | POLLHUP)) TERN_RETURN_IF_ERROR(ReadSomeInput());
  if (p.revents & POLLOUT) TERN_RETURN_IF_ERROR(WriteSome());
  return Status::Ok();
}

Result<Frame> FrameClient::NextFrame(int64_t deadline) {
  if (!broken_.ok()) return broken_;
  for (;;) {
    Frame f;
    Result<bool> got = decoder_.Next(&f);
    if (!got.ok()) {
      return Break(UnavailableError(
          fmt::format("frame client: malformed answer from server: {}", got.status().message())));
    }
    if (*got) {
      if (f.type == FrameType::kError && f.request_id == 0) {
        // The server rejects the whole connection (e.g. too many connections).
        return Break(ErrorFrameStatus(f));
      }
      if (in_flight_ > 0) --in_flight_;
      return f;
    }
    TERN_RETURN_IF_ERROR(PumpOnce(deadline, /*block=*/true));
  }
}

Result<uint64_t> FrameClient::Enqueue(Frame* request) {
  if (!broken_.ok()) return broken_;
  request->request_id = next_id_;
  TERN_RETURN_IF_ERROR(out_.Append(std::move(*request)));  // a large payload is taken over
  ++next_id_;
  ++in_flight_;
  return request->request_id;
}

Result<uint64_t> FrameClient::Send(Frame request) {
  TERN_ASSIGN_OR_RETURN(uint64_t id, Enqueue(&request));
  TERN_RETURN_IF_ERROR(WriteSome());
  return id;
}

Result<uint64_t> FrameClient::SendBorrowed(Frame head, std::string_view payload) {
  if (!broken_.ok()) return broken_;
  head.request_id = next_id_;
  TERN_RETURN_IF_ERROR(out_.AppendBorrowed(head, payload));
  ++next_id_;
  ++in_flight_;
  TERN_RETURN_IF_ERROR(WriteSome());
  return head.request_id;
}

Result<Frame> FrameClient::Receive(std::chrono::nanoseconds timeout) {
  return NextFrame(DeadlineFromTimeout(timeout));
}

Status FrameClient::Flush(std::chrono::nanoseconds timeout) {
  if (!broken_.ok()) return broken_;
  const int64_t deadline = DeadlineFromTimeout(timeout);
  while (!out_.empty()) TERN_RETURN_IF_ERROR(PumpOnce(deadline, /*block=*/true));
  return Status::Ok();
}

Result<Frame> FrameClient::Call(Frame request, std::chrono::nanoseconds timeout) {
  const int64_t deadline = DeadlineFromTimeout(timeout);
  TERN_ASSIGN_OR_RETURN(uint64_t id, Send(std::move(request)));
  return AwaitAnswer(id, deadline, timeout);
}

Result<Frame> FrameClient::Call(Frame head, std::string_view payload,
                                std::chrono::nanoseconds timeout) {
  if (!broken_.ok()) return broken_;
  const int64_t deadline = DeadlineFromTimeout(timeout);
  head.request_id = next_id_;
  TERN_RETURN_IF_ERROR(out_.AppendBorrowed(head, payload));
  ++next_id_;
  ++in_flight_;
  Status st = WriteSome();
  Result<Frame> answer = st.ok() ? AwaitAnswer(head.request_id, deadline, timeout) : Result<Frame>(st);
  // The caller's bytes may change once we return: keep what the socket has not taken.
  out_.OwnBorrowed();
  return answer;
}

Result<size_t> FrameClient::CallInto(Frame head, std::string_view payload, std::span<char> reply,
                                     std::chrono::nanoseconds timeout) {
  if (!broken_.ok()) return broken_;
  decoder_.SetPayloadSink(next_id_, reply);  // Call gives the request this id
  Result<Frame> f = Call(std::move(head), payload, timeout);
  const size_t in_reply = decoder_.PayloadInSink();  // about the answer, if there is one
  decoder_.ClearPayloadSink();
  if (!f.ok()) return f.status();
  if (f->type != FrameType::kReply) {
    return FailedPreconditionError(
        fmt::format("frame client: answered with a {} frame", FrameTypeName(f->type)));
  }
  if (in_reply != SIZE_MAX) return in_reply;
  if (f->payload.size() > reply.size()) {
    return ResourceExhaustedError(fmt::format("frame client: a reply of {} bytes does not fit {}",
                                              f->payload.size(), reply.size()));
  }
  std::memcpy(reply.data(), f->payload.data(), f->payload.size());
  return f->payload.size();
}

Result<Frame> FrameClient::AwaitAnswer(uint64_t id, int64_t deadline,
                                       std::chrono::nanoseconds timeout) {
  for (;;) {
    Result<Frame> f = NextFrame(deadline);
    if (!f.ok()) {
      if (f.status().code() == StatusCode::kDeadlineExceeded) {
        return DeadlineExceededError(fmt::format(
            "frame client: no answer to request {} within {} ms", id, timeout.count() / 1'000'000));
      }
      return f.status();
    }
    if (f->request_id != id) continue;  // a late answer to an abandoned request
    if (f->type == FrameType::kError) return ErrorFrameStatus(*f);
    return f;
  }
}

Result<std::chrono::nanoseconds> FrameClient::Ping(std::chrono::nanoseconds timeout) {
  Frame ping;
  ping.type = FrameType::kPing;
  const int64_t start = MonoNanos();
  TERN_ASSIGN_OR_RETURN(Frame pong, Call(std::move(ping), timeout));
  if (pong.type != FrameType::kPong) {
    return InternalError(
        fmt::format("frame client: ping answered with a {} frame", FrameTypeName(pong.type)));
  }
  return std::chrono::nanoseconds(MonoNanos() - start);
}

Result<std::vector<Result<Frame>>> FrameClient::CallMany(std::vector<Frame> requests, size_t window,
                                                         std::chrono::nanoseconds timeout) {
  if (window == 0) window = 1;
  const int64_t deadline = DeadlineFromTimeout(timeout);
  const size_t n = requests.size();
  const uint64_t base_id = next_id_;
  std::vector<std::optional<Result<Frame>>> slots(n);
  std::vector<size_t> slot_of;  // [request id - base_id] -> index into slots
  slot_of.reserve(n);
  size_t next = 0;     // next request to queue
  size_t pending = 0;  // queued, not answered
  size_t done = 0;
  while (done < n) {
    // Queue the whole window; it leaves in as few writes as the socket allows.
    while (next < n && pending < window) {
      Result<uint64_t> id = Enqueue(&requests[next]);
      if (id.ok()) {
        slot_of.push_back(next);  // ids are consecutive within this call
        ++pending;
      } else if (broken_.ok()) {
        slots[next].emplace(id.status());  // this request cannot be encoded
        ++done;
      } else {
        return id.status();
      }
      ++next;
    }
    if (done == n) break;
    Result<Frame> f = NextFrame(deadline);
    if (!f.ok()) return f.status();
    if (f->request_id < base_id || f->request_id - base_id >= slot_of.size()) {
      continue;  // a late answer from before this call
    }
    std::optional<Result<Frame>>& slot = slots[slot_of[f->request_id - base_id]];
    if (slot.has_value()) continue;  // duplicate answer: keep the first
    if (f->type == FrameType::kError) {
      slot.emplace(ErrorFrameStatus(*f));
    } else {
      slot.emplace(std::move(f).value());
    }
    --pending;
    ++done;
  }
  std::vector<Result<Frame>> results;
  results.reserve(n);
  for (auto& s : slots) results.push_back(std::move(*s));
  return results;
}

}  // namespace tern::transport
