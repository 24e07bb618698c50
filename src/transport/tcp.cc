#include "transport/tcp.h"

#include <fmt/format.h>
#include <sys/socket.h>

#include <cerrno>
#include <utility>

#include "core/logging.h"

namespace tern::transport {
namespace {

constexpr int kMaxAcceptsPerEvent = 64;
constexpr auto kAcceptPauseOnFdExhaustion = std::chrono::milliseconds(100);

}  // namespace

// ---------------------------------------------------------------- TcpListener

Result<std::unique_ptr<TcpListener>> TcpListener::Listen(std::string_view host, uint16_t port,
                                                         int backlog, bool reuse_port) {
  TERN_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(host, port, backlog, reuse_port));
  TERN_ASSIGN_OR_RETURN(uint16_t bound, LocalPort(fd.get()));
  return std::unique_ptr<TcpListener>(new TcpListener(std::move(fd), bound));
}

TcpListener::~TcpListener() {
  if (loop_ != nullptr) {
    if (resume_timer_ != 0) loop_->CancelTimer(resume_timer_);
    loop_->RemoveFd(fd_.get());
  }
}

Result<UniqueFd> TcpListener::Accept() {
  for (;;) {
    int fd = accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      UniqueFd conn(fd);
      // Not fatal: the connection works, only with Nagle's delay.
      Status s = SetNoDelay(conn.get());
      if (!s.ok()) TERN_LOG(WARN) << "accept: " << s;
      return conn;
    }
    switch (errno) {
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
        continue;  // the peer gave up before we got to it; try the next one
      case EAGAIN:
#if EAGAIN != EWOULDBLOCK
      case EWOULDBLOCK:
#endif
        return UniqueFd();
      default:
        return ErrnoError("accept", errno);
    }
  }
}

Status TcpListener::StartAccepting(EventLoop* loop, std::function<void(UniqueFd)> on_accept) {
  if (loop_ != nullptr) return FailedPreconditionError("TcpListener: already accepting");
  on_accept_ = std::move(on_accept);
  TERN_RETURN_IF_ERROR(
      loop->AddFd(fd_.get(), EventLoop::kReadable, [this](uint32_t) { OnReadable(); }));
  loop_ = loop;
  return Status::Ok();
}

void TcpListener::OnReadable() {
  for (int i = 0; i < kMaxAcceptsPerEvent; ++i) {
    Result<UniqueFd> conn = Accept();
    if (!conn.ok()) {
      TERN_LOG(WARN) << "listener on port " << port_ << ": " << conn.status();
      if (conn.status().code() == StatusCode::kResourceExhausted && resume_timer_ == 0) {
        // Out of fds: stop polling the listener for a while instead of spinning.
        Status s = loop_->ModifyFd(fd_.get(), 0);
        if (!s.ok()) TERN_LOG(ERROR) << "listener: " << s;
        resume_timer_ = loop_->RunAfter(kAcceptPauseOnFdExhaustion, [this] {
          resume_timer_ = 0;
          Status r = loop_->ModifyFd(fd_.get(), EventLoop::kReadable);
          if (!r.ok()) TERN_LOG(ERROR) << "listener: " << r;
        });
      }
      return;
    }
    if (!conn->valid()) return;
    on_accept_(std::move(conn).value());
  }
}

// ---------------------------------------------------------------- FrameConnectionRef

void FrameConnectionRef::Send(Frame f) const {
  if (conn_ == nullptr) return;
  loop_->Post([conn = conn_, alive = alive_, f = std::move(f)] {
    if (!*alive) return;
    Status s = conn->Send(f);
    // kUnavailable: closed meanwhile; kResourceExhausted: closed (and logged) just now.
    if (!s.ok() && s.code() != StatusCode::kUnavailable &&
        s.code() != StatusCode::kResourceExhausted) {
      TERN_LOG(WARN) << "connection " << conn->id() << ": reply dropped: " << s;
    }
  });
}

// ---------------------------------------------------------------- FrameConnection

FrameConnection::FrameConnection(EventLoop* loop, UniqueFd fd, uint64_t id,
                                 const FrameConnectionOptions& options, FrameHandler on_frame,
                                 CloseHandler on_close)
    : BufferedSocket(loop, std::move(fd), options.limits),
      id_(id),
      answer_pings_(options.answer_pings),
      peer_(PeerAddress(BufferedSocket::fd().get())),
      decoder_(options.max_payload_bytes),
      on_frame_(std::move(on_frame)),
      on_close_(std::move(on_close)) {
  if (options.date_frames) DateReads();
}

FrameConnection::~FrameConnection() = default;

FrameConnectionRef FrameConnection::ref() {
  FrameConnectionRef r;
  r.loop_ = loop();
  r.conn_ = this;
  r.alive_ = alive_token();
  r.id_ = id_;
  return r;
}

Status FrameConnection::Send(const Frame& f) {
  if (closing()) {
    return UnavailableError(fmt::format("connection {} is closed", id_));
  }
  if (!EnsureOutputRoom(EncodedFrameSize(f))) {
    return ResourceExhaustedError(
        fmt::format("connection {}: peer is not reading its replies; closed", id_));
  }
  TERN_RETURN_IF_ERROR(EncodeFrame(f, output_buffer()));
  CommitOutput();
  return Status::Ok();
}

void FrameConnection::CloseWithError(const Status& reason) {
  if (closing()) return;
  Status s = Send(MakeErrorFrame(0, reason));
  (void)s;  // best effort: we close either way
  CloseAfterFlush(reason);
}

void FrameConnection::OnRead(const char* data, size_t n) {
  decoder_.Feed(std::string_view(data, n));
  while (!closing()) {
    Frame f;
    Result<bool> got = decoder_.Next(&f);
    if (!got.ok()) {
      TERN_LOG(INFO) << "connection " << id_ << " from " << peer_
                     << ": malformed input, closing: " << got.status();
      CloseWithError(got.status());
      return;
    }
    if (!*got) return;
    if (f.type == FrameType::kPing && answer_pings_) {
      f.type = FrameType::kPong;
      Status s = Send(f);
      (void)s;  // fails only when closing or over the output limit (then closed)
      continue;
    }
    on_frame_(this, std::move(f));
  }
}

void FrameConnection::OnClosed(const Status& reason) {
  if (on_close_) on_close_(this, reason);
}

// ---------------------------------------------------------------- FrameServer

FrameServer::FrameServer(EventLoop* loop, const FrameServerOptions& options, Handler handler,
                         CloseHandler on_close)
    : loop_(loop),
      options_(options),
      handler_(std::move(handler)),
      on_close_(std::move(on_close)) {}

Result<std::unique_ptr<FrameServer>> FrameServer::Start(EventLoop* loop,
                                                        const FrameServerOptions& options,
                                                        Handler handler, CloseHandler on_close) {
  if (!handler) return InvalidArgumentError("FrameServer: a handler is required");
  if (options.connection.date_frames) KeepReceiveTimestampsOn();
  std::unique_ptr<FrameServer> server(
      new FrameServer(loop, options, std::move(handler), std::move(on_close)));
  TERN_ASSIGN_OR_RETURN(server->listener_, TcpListener::Listen(options.host, options.port));
  FrameServer* s = server.get();
  TERN_RETURN_IF_ERROR(
      server->listener_->StartAccepting(loop, [s](UniqueFd fd) { s->OnAccept(std::move(fd)); }));
  return server;
}

FrameServer::~FrameServer() {
  listener_.reset();
  conns_.clear();  // connections unregister themselves; no close callbacks
}

FrameConnection* FrameServer::FindConnection(uint64_t id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second.get();
}

void FrameServer::OnAccept(UniqueFd fd) {
  const uint64_t id = next_id_++;
  const bool over_limit = conns_.size() >= options_.max_connections;
  auto on_close = [this, over_limit](FrameConnection* c, const Status& reason) {
    if (!reason.ok()) {
      TERN_LOG(DEBUG) << "connection " << c->id() << " from " << c->peer() << " closed: " << reason;
    }
    if (!over_limit && on_close_) on_close_(c, reason);
    auto it = conns_.find(c->id());
    if (it != conns_.end()) {
      loop_->DeleteLater(std::move(it->second));
      conns_.erase(it);
    }
  };
  auto conn = std::make_unique<FrameConnection>(loop_, std::move(fd), id, options_.connection,
                                                handler_, std::move(on_close));
  FrameConnection* c = conn.get();
  conns_.emplace(id, std::move(conn));
  Status s = c->Start();
  if (!s.ok()) {
    TERN_LOG(WARN) << "connection " << id << ": " << s;
    conns_.erase(id);
    return;
  }
  if (over_limit) {
    ++rejected_;
    Status reason = ResourceExhaustedError(fmt::format(
        "server has too many connections (limit {}); try later", options_.max_connections));
    TERN_LOG(WARN) << "rejecting connection from " << c->peer() << ": " << reason;
    c->CloseWithError(reason);
  }
}

}  // namespace tern::transport
