// TCP data plane: a listener, frame connections and a frame server on an EventLoop.
//
//   TcpListener      a listening socket; accepts on a loop and hands out connected fds.
//   FrameConnection  one accepted socket speaking frames (frame.h): reads in large
//                    chunks, decodes, calls the handler per frame; Send() queues replies
//                    which leave in one write per loop iteration. A malformed frame
//                    closes only that connection, after a kError frame with the reason.
//   FrameConnectionRef  a copyable handle for replying from worker threads.
//   FrameServer      accepts connections (up to a limit), assigns connection ids,
//                    answers kPing with kPong and passes every other frame to the
//                    handler.
//
// Ownership: FrameServer owns its listener and connections; a FrameConnection* passed
// to a handler is valid until that connection's close callback has returned (the
// object itself is freed at the end of that loop iteration). Keep a
// FrameConnectionRef, never the pointer, beyond the handler call.
//
// Thread-safety: everything runs on the loop thread, including the handlers, except
// FrameConnectionRef::Send() and FrameConnection::SendFromAnyThread(). Servers are
// created and destroyed on the loop thread or while the loop is not running.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/status.h"
#include "transport/buffered_socket.h"
#include "transport/event_loop.h"
#include "transport/frame.h"
#include "transport/socket.h"

namespace tern::transport {

// A listening TCP socket (SO_REUSEADDR, non-blocking).
class TcpListener {
 public:
  // Binds host:port ("" = all IPv4 addresses; port 0 = any free port) and listens.
  // `reuse_port`: see ListenTcp.
  static Result<std::unique_ptr<TcpListener>> Listen(std::string_view host, uint16_t port,
                                                     int backlog = 1024, bool reuse_port = false);
  ~TcpListener();
  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;

  // The bound port (the real one when 0 was asked for).
  uint16_t port() const { return port_; }
  int fd() const { return fd_.get(); }

  // Accepts one pending connection (non-blocking, close-on-exec, TCP_NODELAY).
  // Returns an invalid UniqueFd if none is pending.
  Result<UniqueFd> Accept();

  // Accepts on `loop` from now on, calling `on_accept` on the loop thread for each
  // connection. When the process runs out of fds, accepting pauses for 100 ms rather
  // than spinning. Loop thread; stopped by the destructor (also on the loop thread).
  Status StartAccepting(EventLoop* loop, std::function<void(UniqueFd)> on_accept);

 private:
  TcpListener(UniqueFd fd, uint16_t port) : fd_(std::move(fd)), port_(port) {}
  void OnReadable();

  UniqueFd fd_;
  uint16_t port_;
  EventLoop* loop_ = nullptr;
  std::function<void(UniqueFd)> on_accept_;
  EventLoop::TimerId resume_timer_ = 0;
};

struct FrameConnectionOptions {
  // Frames with a larger payload are rejected (kResourceExhausted) and the connection
  // closed.
  uint32_t max_payload_bytes = kMaxPayloadBytes;
  // Output buffering (backpressure) and timeouts; see buffered_socket.h.
  internal::SocketLimits limits;
  // Answer kPing frames with kPong without calling the handler.
  bool answer_pings = true;
  // Date each frame by when the kernel received its last bytes (received_ns()), e.g.
  // to charge the time a request waited in the socket to its deadline.
  bool date_frames = false;
};

class FrameConnection;

// A handle to a FrameConnection that can be copied to any thread and may outlive it.
// The EventLoop must outlive every Send() call.
class FrameConnectionRef {
 public:
  FrameConnectionRef() = default;
  // Queues `f` on the connection from any thread (posted to its loop); silently
  // dropped if the connection has closed by the time the task runs.
  void Send(Frame f) const;
  uint64_t connection_id() const { return id_; }
  bool valid() const { return conn_ != nullptr; }

 private:
  friend class FrameConnection;
  EventLoop* loop_ = nullptr;
  FrameConnection* conn_ = nullptr;
  std::shared_ptr<bool> alive_;
  uint64_t id_ = 0;
};

class FrameConnection final : private internal::BufferedSocket {
 public:
  // Called on the loop thread for each decoded frame.
  using FrameHandler = std::function<void(FrameConnection*, Frame)>;
  // Called once when the connection has closed (OK status for a clean close).
  using CloseHandler = std::function<void(FrameConnection*, const Status&)>;

  // Wraps a connected socket. Call Start() to begin reading. Loop thread.
  FrameConnection(EventLoop* loop, UniqueFd fd, uint64_t id, const FrameConnectionOptions& options,
                  FrameHandler on_frame, CloseHandler on_close);
  ~FrameConnection() override;

  Status Start() { return StartIo(); }

  uint64_t id() const { return id_; }
  // "ip:port" of the peer, for logs.
  const std::string& peer() const { return peer_; }
  using BufferedSocket::closed;
  using BufferedSocket::closing;
  using BufferedSocket::loop;
  using BufferedSocket::pending_output;
  // In the frame handler: MonoNanos() when the kernel received the frame's last bytes
  // (the read that completed it); 0 unless FrameConnectionOptions::date_frames.
  int64_t received_ns() const { return read_received_ns(); }

  // Queues `f` for sending at the end of this loop iteration. Loop thread. Errors:
  // kInvalidArgument (frame cannot be encoded), kUnavailable (connection closed or
  // closing), kResourceExhausted (output limit exceeded: the connection is closed).
  Status Send(const Frame& f);
  // Posts Send(f) to the loop. Any thread, but the connection must still exist at the
  // time of the call; from worker threads prefer ref().Send().
  void SendFromAnyThread(Frame f) { ref().Send(std::move(f)); }
  FrameConnectionRef ref();

  // Sends a kError frame for the whole connection (request id 0) carrying `reason`,
  // then closes gracefully. Loop thread.
  void CloseWithError(const Status& reason);
  // Closes gracefully after sending what is queued. Loop thread.
  void Close() { CloseAfterFlush(Status::Ok()); }

 private:
  void OnRead(const char* data, size_t n) override;
  void OnClosed(const Status& reason) override;

  const uint64_t id_;
  const bool answer_pings_;
  const std::string peer_;
  FrameDecoder decoder_;
  FrameHandler on_frame_;
  CloseHandler on_close_;
  Frame scratch_;  // reused for pongs
};

struct FrameServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0 = any free port; see FrameServer::port()
  // Connections beyond this are sent a kResourceExhausted kError frame and closed.
  size_t max_connections = 4096;
  FrameConnectionOptions connection;
};

class FrameServer {
 public:
  using Handler = FrameConnection::FrameHandler;
  using CloseHandler = FrameConnection::CloseHandler;

  // Listens and accepts on `loop` (which must outlive the server). `handler` gets every
  // frame except pings; `on_close` (optional) hears about every closed connection,
  // e.g. to cancel its in-flight work. Loop thread or loop not running.
  static Result<std::unique_ptr<FrameServer>> Start(EventLoop* loop,
                                                    const FrameServerOptions& options,
                                                    Handler handler,
                                                    CloseHandler on_close = nullptr);
  // Closes the listener and all connections (without calling on_close). Loop thread
  // or loop not running.
  ~FrameServer();
  FrameServer(const FrameServer&) = delete;
  FrameServer& operator=(const FrameServer&) = delete;

  uint16_t port() const { return listener_->port(); }
  // Loop thread.
  size_t connection_count() const { return conns_.size(); }
  FrameConnection* FindConnection(uint64_t id) const;
  uint64_t rejected_connections() const { return rejected_; }

 private:
  FrameServer(EventLoop* loop, const FrameServerOptions& options, Handler handler,
              CloseHandler on_close);
  void OnAccept(UniqueFd fd);

  EventLoop* const loop_;
  const FrameServerOptions options_;
  Handler handler_;
  CloseHandler on_close_;
  std::unique_ptr<TcpListener> listener_;
  uint64_t next_id_ = 1;
  uint64_t rejected_ = 0;
  std::unordered_map</* connection id */ uint64_t, std::unique_ptr<FrameConnection>> conns_;
};

}  // namespace tern::transport
