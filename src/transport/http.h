// A minimal HTTP/1.1 server on an EventLoop (the agent's JSON admin API, later the
// gateway), and a small blocking client (the CLI and tests).
//
// Server: request line + headers + Content-Length body; keep-alive (HTTP/1.1 default,
// HTTP/1.0 with "Connection: keep-alive"); pipelined requests are answered in order.
// Limits: request head over max_header_bytes -> 431; body over max_body_bytes -> 413;
// "Transfer-Encoding: chunked" -> 411 (send Content-Length); other transfer codings
// -> 501; malformed -> 400. Every error response closes the connection. Routes are
// fixed when the server starts (HttpRouter); a handler either returns the response
// (Handle) or gets an HttpResponder it completes later from any thread (HandleAsync),
// e.g. from the worker thread that ran an invocation.
//
// Ownership: HttpServer owns its listener and connections. The EventLoop must outlive
// the server and every HttpResponder. Requests are handed to sync handlers by const
// reference (valid during the call) and to async handlers by value.
//
// Thread-safety: the server and its handlers run on the loop thread; HttpResponder is
// copyable and Respond() may be called from any thread. HttpClient is not thread-safe
// (one thread at a time); distinct clients are independent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"
#include "transport/buffered_socket.h"
#include "transport/event_loop.h"
#include "transport/socket.h"

namespace tern::transport {

namespace internal {
class HttpConnection;
}
class TcpListener;

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// Finds the first header named `name` (ASCII case-insensitive); nullptr if absent.
const std::string* FindHttpHeader(const HttpHeaders& headers, std::string_view name);

struct HttpRequest {
  std::string method;        // as sent, e.g. "GET" (methods are case-sensitive)
  std::string target;        // raw request target: "/v1/instances?service=echo"
  std::string path;          // target up to '?', not percent-decoded
  std::string query_string;  // target after '?', raw
  // Decoded query parameters ('+' is a space); for a repeated key the last one wins.
  std::map<std::string, std::string> query;
  HttpHeaders headers;  // names lower-cased, in arrival order
  std::string body;
  int version_minor = 1;  // HTTP/1.<version_minor>
  uint64_t connection_id = 0;

  const std::string* FindHeader(std::string_view name) const {
    return FindHttpHeader(headers, name);
  }
  // The header's value, or "" if absent.
  std::string_view Header(std::string_view name) const {
    const std::string* v = FindHeader(name);
    return v ? std::string_view(*v) : std::string_view();
  }
  // The query parameter's value, or "" if absent.
  std::string_view Query(const std::string& key) const {
    auto it = query.find(key);
    return it == query.end() ? std::string_view() : std::string_view(it->second);
  }
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";  // "" = no Content-Type
  std::string body;
  // Extra headers. Content-Length and Connection are always set by the server.
  HttpHeaders headers;

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string body);
};

// "OK", "Not Found", ...; "Unknown" for codes it does not know.
std::string_view HttpReasonPhrase(int status);
// The HTTP status that best matches a tern status code (kNotFound -> 404,
// kInvalidArgument -> 400, kUnavailable -> 503, kDeadlineExceeded -> 504, ...).
int HttpStatusForCode(StatusCode code);
// Percent-decodes `s`; with `plus_is_space`, '+' becomes ' ' (query strings).
// Malformed escapes are kept as they are.
std::string PercentDecode(std::string_view s, bool plus_is_space);
// Parses "a=1&b=x%20y" into a map (decoded; last value of a repeated key wins).
std::map<std::string, std::string> ParseQueryString(std::string_view qs);

// Completes one asynchronous request. Copyable; Respond() may be called from any
// thread, and only the first call counts. If every copy is destroyed without a
// Respond(), the client gets a 500, so a forgotten request never hangs a connection.
// The response is dropped if the connection has closed meanwhile.
class HttpResponder {
 public:
  HttpResponder() = default;
  void Respond(HttpResponse response) const;
  bool valid() const { return state_ != nullptr; }

  struct State;  // defined in http.cc

 private:
  friend class internal::HttpConnection;
  explicit HttpResponder(std::shared_ptr<State> state) : state_(std::move(state)) {}
  // Shared by the copies handed to worker threads; it completes the request when
  // the last copy goes away, which is why this is a shared_ptr.
  std::shared_ptr<State> state_;
};

// The routing table. A value type: build it, then hand it to HttpServer::Start.
class HttpRouter {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  using AsyncHandler = std::function<void(HttpRequest, HttpResponder)>;

  // `method`: "GET", "POST", ... or "*" for any. `pattern`: an exact path
  // ("/v1/instances") or a prefix ending in '*' ("/v1/instances/*" matches
  // "/v1/instances/echo-1"). The exact pattern beats prefixes; longer prefixes beat
  // shorter ones. A path matched only with other methods gets 405, none gets 404.
  void Handle(std::string method, std::string pattern, Handler handler);
  void HandleAsync(std::string method, std::string pattern, AsyncHandler handler);

  struct Route {
    std::string method;
    std::string pattern;  // without the trailing '*'
    bool prefix = false;
    Handler handler;
    AsyncHandler async_handler;
  };
  // The best route for method + path, or nullptr; *path_matched tells 405 from 404.
  const Route* Match(std::string_view method, std::string_view path, bool* path_matched) const;

 private:
  std::vector<Route> routes_;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0 = any free port; see HttpServer::port()
  size_t max_header_bytes = 16u << 10;
  size_t max_body_bytes = 64u << 20;
  size_t max_connections = 1024;
  // SO_REUSEPORT: several servers (one per I/O thread) may listen on the same port.
  bool reuse_port = false;
  // Output backpressure, idle keep-alive timeout (closes idle connections; never one
  // with a request in progress) and linger on close.
  internal::SocketLimits limits = DefaultLimits();

  static internal::SocketLimits DefaultLimits() {
    internal::SocketLimits l;
    l.idle_timeout = std::chrono::seconds(60);
    return l;
  }
};

class HttpServer {
 public:
  // Listens and serves on `loop`, which must outlive the server. Loop thread or loop
  // not running.
  static Result<std::unique_ptr<HttpServer>> Start(EventLoop* loop,
                                                   const HttpServerOptions& options,
                                                   HttpRouter router);
  // Closes the listener and all connections. Loop thread or loop not running.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const;
  // Loop thread.
  size_t connection_count() const { return conns_.size(); }

 private:
  HttpServer(EventLoop* loop, const HttpServerOptions& options, HttpRouter router);
  void OnAccept(UniqueFd fd);

  EventLoop* const loop_;
  const HttpServerOptions options_;
  const HttpRouter router_;
  std::unique_ptr<TcpListener> listener_;
  uint64_t next_id_ = 1;
  std::unordered_map</* connection id */ uint64_t, std::unique_ptr<internal::HttpConnection>>
      conns_;
};

struct HttpClientResponse {
  int status = 0;
  HttpHeaders headers;  // names lower-cased
  std::string body;

  const std::string* FindHeader(std::string_view name) const {
    return FindHttpHeader(headers, name);
  }
};

// A blocking HTTP/1.1 client for one host:port, keeping its connection alive between
// requests and reconnecting when the server closed it. Responses may use
// Content-Length, chunked encoding or end-of-stream framing.
class HttpClient {
 public:
  // Connects now, so an unreachable server is reported here (kUnavailable,
  // kDeadlineExceeded).
  static Result<std::unique_ptr<HttpClient>> Connect(
      std::string_view host, uint16_t port,
      std::chrono::nanoseconds timeout = std::chrono::seconds(5));
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends one request and waits for the whole response. Any HTTP status is a
  // successful Result; errors are transport failures: kUnavailable (connection
  // refused/reset/closed), kDeadlineExceeded (`timeout` for the whole exchange),
  // kInvalidArgument (bad arguments), kDataLoss (malformed response). A request on a
  // reused connection that the server had already closed is retried once on a new one.
  Result<HttpClientResponse> Request(std::string_view method, std::string_view target,
                                     std::string_view body = {}, std::string_view content_type = {},
                                     std::chrono::nanoseconds timeout = std::chrono::seconds(30),
                                     const HttpHeaders& extra_headers = {});

 private:
  HttpClient(std::string host, uint16_t port, UniqueFd fd)
      : host_(std::move(host)), port_(port), fd_(std::move(fd)) {}
  Result<HttpClientResponse> RequestOnce(const std::string& wire, bool head, int64_t deadline,
                                         bool* retryable);
  Status ReadMore(int64_t deadline);
  Result<std::string> ReadLine(int64_t deadline);

  const std::string host_;
  const uint16_t port_;
  UniqueFd fd_;
  bool reused_ = false;  // fd_ has carried a request already
  std::string in_;       // received, not yet consumed
  size_t in_pos_ = 0;
  bool eof_ = false;
};

}  // namespace tern::transport
