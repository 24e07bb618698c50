#include "transport/http.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <limits>

#include "core/clock.h"
#include "core/logging.h"
#include "transport/tcp.h"

namespace tern::transport {
namespace {

constexpr size_t kCompactInputBytes = 4096;
constexpr size_t kMaxBodyReserveBytes = 1u << 20;
constexpr size_t kClientMaxHeadBytes = 64u << 10;
constexpr size_t kClientReadChunkBytes = 64u << 10;

char LowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (LowerAscii(a[i]) != LowerAscii(b[i])) return false;
  }
  return true;
}

std::string ToLower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = LowerAscii(c);
  return r;
}

// RFC 9110 token characters.
bool IsTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsTokenChar(c)) return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// True if `list` (a comma-separated header value) contains `token`, ignoring case.
bool ListContains(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = TrimOws(list.substr(0, comma));
    if (EqualsIgnoreCase(item, token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// Parses a decimal Content-Length ("12", also the list form "12, 12"). Returns false
// if malformed; saturates at the maximum instead of overflowing.
bool ParseContentLength(std::string_view v, uint64_t* out) {
  bool have = false;
  uint64_t value = 0;
  while (true) {
    size_t comma = v.find(',');
    std::string_view item = TrimOws(v.substr(0, comma));
    if (item.empty()) return false;
    uint64_t n = 0;
    for (char c : item) {
      if (c < '0' || c > '9') return false;
      if (n > (std::numeric_limits<uint64_t>::max() - 9) / 10) {
        n = std::numeric_limits<uint64_t>::max();
      } else {
        n = n * 10 + static_cast<uint64_t>(c - '0');
      }
    }
    if (have && n != value) return false;
    value = n;
    have = true;
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  *out = value;
  return true;
}

// Header values must not smuggle line breaks into our output.
void AppendSanitized(std::string* out, std::string_view v) {
  for (char c : v) out->push_back((c == '\r' || c == '\n') ? ' ' : c);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Index just past the blank line ending a message head that starts at `from`, or npos.
// Accepts CRLF and bare LF line ends. `*resume` is where to continue scanning later.
size_t FindHeadEnd(const std::string& buf, size_t from, size_t* resume) {
  size_t i = from;
  while ((i = buf.find('\n', i)) != std::string::npos) {
    if (i + 1 >= buf.size()) break;
    if (buf[i + 1] == '\n') return i + 2;
    if (buf[i + 1] == '\r') {
      if (i + 2 >= buf.size()) break;
      if (buf[i + 2] == '\n') return i + 3;
    }
    ++i;
  }
  *resume = (i == std::string::npos) ? buf.size() : i;
  return std::string::npos;
}

// Splits a head into lines (without their CR LF), dropping the final empty line.
std::vector<std::string_view> SplitLines(std::string_view head) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    size_t nl = head.find('\n');
    std::string_view line = head.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (nl == std::string_view::npos) break;
    head.remove_prefix(nl + 1);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// Parses "Name: value" lines into `headers` (lower-cased names). Returns an error
// message, or "" on success.
std::string ParseHeaderLines(const std::vector<std::string_view>& lines, size_t first,
                             HttpHeaders* headers) {
  for (size_t i = first; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (line.empty()) return "empty header line";
    if (line.front() == ' ' || line.front() == '\t') {
      return "obsolete header line folding is not supported";
    }
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return "header line without ':'";
    std::string_view name = line.substr(0, colon);
    if (!IsToken(name)) return "malformed header name";
    std::string_view value = TrimOws(line.substr(colon + 1));
    for (char c : value) {
      auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f) return "control character in header value";
    }
    headers->emplace_back(ToLower(name), std::string(value));
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------- helpers

const std::string* FindHttpHeader(const HttpHeaders& headers, std::string_view name) {
  for (const auto& [k, v] : headers) {
    if (EqualsIgnoreCase(k, name)) return &v;
  }
  return nullptr;
}

HttpResponse HttpResponse::Text(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::Json(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = std::move(body);
  return r;
}

std::string_view HttpReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 499:
      return "Client Closed Request";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

int HttpStatusForCode(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kCancelled:
      return 499;
    case StatusCode::kInvalidArgument:
      return 400;
    case StatusCode::kDeadlineExceeded:
      return 504;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
      return 409;
    case StatusCode::kPermissionDenied:
      return 403;
    case StatusCode::kResourceExhausted:
      return 429;
    case StatusCode::kFailedPrecondition:
      return 400;
    case StatusCode::kAborted:
      return 409;
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kUnauthenticated:
      return 401;
    case StatusCode::kUnknown:
    case StatusCode::kInternal:
    case StatusCode::kDataLoss:
      return 500;
  }
  return 500;
}

std::string PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size()) {
      int hi = HexValue(s[i + 1]);
      int lo = HexValue(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && c == '+' ? ' ' : c);
  }
  return out;
}

std::map<std::string, std::string> ParseQueryString(std::string_view qs) {
  std::map<std::string, std::string> out;
  while (!qs.empty()) {
    size_t amp = qs.find('&');
    std::string_view pair = qs.substr(0, amp);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      std::string key = PercentDecode(pair.substr(0, eq), true);
      std::string value =
          eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1), true);
      out[std::move(key)] = std::move(value);
    }
    if (amp == std::string_view::npos) break;
    qs.remove_prefix(amp + 1);
  }
  return out;
}

// ---------------------------------------------------------------- HttpRouter

void HttpRouter::Handle(std::string method, std::string pattern, Handler handler) {
  Route r;
  r.method = std::move(method);
  r.prefix = !pattern.empty() && pattern.back() == '*';
  if (r.prefix) pattern.pop_back();
  r.pattern = std::move(pattern);
  r.handler = std::move(handler);
  routes_.push_back(std::move(r));
}

void HttpRouter::HandleAsync(std::string method, std::string pattern, AsyncHandler handler) {
  Route r;
  r.method = std::move(method);
  r.prefix = !pattern.empty() && pattern.back() == '*';
  if (r.prefix) pattern.pop_back();
  r.pattern = std::move(pattern);
  r.async_handler = std::move(handler);
  routes_.push_back(std::move(r));
}

const HttpRouter::Route* HttpRouter::Match(std::string_view method, std::string_view path,
                                           bool* path_matched) const {
  const Route* best = nullptr;
  size_t best_score = 0;
  *path_matched = false;
  for (const Route& r : routes_) {
    size_t score;
    if (!r.prefix && path == r.pattern) {
      score = std::numeric_limits<size_t>::max();
    } else if (r.prefix && path.substr(0, r.pattern.size()) == r.pattern) {
      score = r.pattern.size() + 1;
    } else {
      continue;
    }
    *path_matched = true;
    if (r.method != "*" && r.method != method) continue;
    if (best == nullptr || score > best_score) {
      best = &r;
      best_score = score;
    }
  }
  if (best == nullptr && method == "HEAD") {
    bool ignored;
    return Match("GET", path, &ignored);
  }
  return best;
}

// ---------------------------------------------------------------- server connection

namespace internal {

class HttpConnection final : public BufferedSocket {
 public:
  using CloseFn = std::function<void(HttpConnection*, const Status&)>;

  HttpConnection(EventLoop* loop, UniqueFd fd, uint64_t id, const HttpServerOptions* options,
                 const HttpRouter* router, CloseFn on_close)
      : BufferedSocket(loop, std::move(fd), options->limits),
        id_(id),
        options_(options),
        router_(router),
        peer_(PeerAddress(BufferedSocket::fd().get())),
        on_close_(std::move(on_close)) {}

  uint64_t id() const { return id_; }
  const std::string& peer() const { return peer_; }

  // Answers with `status` and closes; used for errors and for rejecting connections.
  void Fail(int status, std::string_view message);

  // Completes the asynchronous request number `seq` (loop thread).
  void CompleteAsync(uint64_t seq, const HttpResponse& response);

 private:
  void OnRead(const char* data, size_t n) override;
  void OnPeerEof() override;
  void OnClosed(const Status& reason) override {
    if (on_close_) on_close_(this, reason);
  }
  bool IsBusy() const override { return in_flight_; }

  void ProcessInput();
  // Parses a request head if complete. Returns true if one was parsed (the body phase
  // starts); false if more bytes are needed or the request was rejected (closing).
  bool ParseHead();
  void Dispatch();
  void WriteResponse(const HttpResponse& r);
  void AfterResponse();
  void CompactInput();

  const uint64_t id_;
  const HttpServerOptions* const options_;
  const HttpRouter* const router_;
  const std::string peer_;
  CloseFn on_close_;

  std::string in_;
  size_t pos_ = 0;        // start of unconsumed input
  size_t scan_from_ = 0;  // where the search for the end of the head resumes
  bool in_body_ = false;
  HttpRequest req_;
  uint64_t content_length_ = 0;
  bool keep_alive_ = true;  // of the current request
  int version_minor_ = 1;   // of the current request
  bool head_method_ = false;
  bool in_flight_ = false;  // an async handler has the current request
  uint64_t seq_ = 0;
  bool eof_seen_ = false;
};

}  // namespace internal

struct HttpResponder::State {
  State(EventLoop* l, internal::HttpConnection* c, std::shared_ptr<bool> a, uint64_t s)
      : loop(l), conn(c), alive(std::move(a)), seq(s) {}
  ~State() {
    if (!done.exchange(true)) {
      Deliver(HttpResponse::Text(500, "internal error: the handler dropped the request\n"));
    }
  }
  void Deliver(HttpResponse r) {
    auto task = [conn = conn, alive = alive, seq = seq, r = std::move(r)] {
      if (*alive) conn->CompleteAsync(seq, r);
    };
    if (loop->IsInLoopThread()) {
      loop->Defer(std::move(task));
    } else {
      loop->Post(std::move(task));
    }
  }

  EventLoop* const loop;
  internal::HttpConnection* const conn;
  const std::shared_ptr<bool> alive;  // read on the loop thread only
  const uint64_t seq;
  std::atomic<bool> done{false};
};

void HttpResponder::Respond(HttpResponse response) const {
  if (state_ == nullptr || state_->done.exchange(true)) return;
  state_->Deliver(std::move(response));
}

namespace internal {

void HttpConnection::OnRead(const char* data, size_t n) {
  in_.append(data, n);
  ProcessInput();
}

void HttpConnection::OnPeerEof() {
  eof_seen_ = true;
  // A request being served still gets its response; then we close.
  if (!in_flight_) CloseAfterFlush(Status::Ok());
}

void HttpConnection::ProcessInput() {
  while (!closing() && !in_flight_) {
    if (!in_body_ && !ParseHead()) break;
    const size_t have = in_.size() - pos_;
    const size_t need = static_cast<size_t>(content_length_) - req_.body.size();
    const size_t take = std::min(have, need);
    req_.body.append(in_, pos_, take);
    pos_ += take;
    if (req_.body.size() < content_length_) break;
    Dispatch();
  }
  CompactInput();
  if (eof_seen_ && !in_flight_ && !closing()) CloseAfterFlush(Status::Ok());
}

void HttpConnection::CompactInput() {
  if (pos_ == in_.size()) {
    in_.clear();
    pos_ = scan_from_ = 0;
  } else if (pos_ >= kCompactInputBytes && pos_ >= in_.size() / 2) {
    in_.erase(0, pos_);
    scan_from_ = scan_from_ > pos_ ? scan_from_ - pos_ : 0;
    pos_ = 0;
  }
}

bool HttpConnection::ParseHead() {
  // Tolerate empty lines before a request line (RFC 9112 section 2.2).
  while (pos_ < in_.size() && (in_[pos_] == '\r' || in_[pos_] == '\n')) ++pos_;
  if (scan_from_ < pos_) scan_from_ = pos_;
  const size_t max_head = options_->max_header_bytes;
  size_t resume = scan_from_;
  const size_t end = FindHeadEnd(in_, scan_from_, &resume);
  if (end == std::string::npos) {
    scan_from_ = resume;
    if (in_.size() - pos_ > max_head) {
      Fail(431, fmt::format("request head exceeds {} bytes", max_head));
    }
    return false;
  }
  if (end - pos_ > max_head) {
    Fail(431, fmt::format("request head exceeds {} bytes", max_head));
    return false;
  }
  const std::vector<std::string_view> lines =
      SplitLines(std::string_view(in_).substr(pos_, end - pos_));
  pos_ = end;
  scan_from_ = end;
  if (lines.empty()) {
    Fail(400, "empty request");
    return false;
  }

  // Request line: method SP target SP version.
  std::string_view rl = lines[0];
  size_t sp1 = rl.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : rl.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || rl.find(' ', sp2 + 1) != std::string_view::npos) {
    Fail(400, "malformed request line");
    return false;
  }
  std::string_view method = rl.substr(0, sp1);
  std::string_view target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = rl.substr(sp2 + 1);
  if (!IsToken(method)) {
    Fail(400, "malformed method");
    return false;
  }
  if (target.empty() || (target[0] != '/' && target != "*")) {
    Fail(400, "request target must be an absolute path");
    return false;
  }
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) {
      Fail(400, "control character in request target");
      return false;
    }
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
      version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9') {
    Fail(400, "malformed HTTP version");
    return false;
  }
  if (version[5] != '1') {
    Fail(505, "only HTTP/1.x is supported");
    return false;
  }

  req_ = HttpRequest();
  req_.method = std::string(method);
  req_.target = std::string(target);
  req_.version_minor = version[7] - '0';
  size_t q = target.find('?');
  req_.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) {
    req_.query_string = std::string(target.substr(q + 1));
    req_.query = ParseQueryString(req_.query_string);
  }
  std::string err = ParseHeaderLines(lines, 1, &req_.headers);
  if (!err.empty()) {
    Fail(400, err);
    return false;
  }

  if (const std::string* te = req_.FindHeader("transfer-encoding")) {
    if (ListContains(*te, "chunked")) {
      Fail(411,
           "chunked request bodies are not supported: send the body with a "
           "Content-Length header");
    } else {
      Fail(501, "unsupported Transfer-Encoding: " + *te);
    }
    return false;
  }
  content_length_ = 0;
  bool have_length = false;
  for (const auto& [name, value] : req_.headers) {
    if (name != "content-length") continue;
    uint64_t n;
    if (!ParseContentLength(value, &n) || (have_length && n != content_length_)) {
      Fail(400, "malformed Content-Length");
      return false;
    }
    content_length_ = n;
    have_length = true;
  }
  if (content_length_ > options_->max_body_bytes) {
    Fail(413, fmt::format("request body of {} bytes exceeds the limit of {} bytes", content_length_,
                          options_->max_body_bytes));
    return false;
  }

  const std::string* conn = req_.FindHeader("connection");
  if (req_.version_minor >= 1) {
    keep_alive_ = !(conn && ListContains(*conn, "close"));
  } else {
    keep_alive_ = conn && ListContains(*conn, "keep-alive");
  }
  head_method_ = req_.method == "HEAD";
  version_minor_ = req_.version_minor;

  req_.body.reserve(std::min<size_t>(content_length_, kMaxBodyReserveBytes));
  if (content_length_ > in_.size() - pos_ && req_.version_minor >= 1) {
    const std::string* expect = req_.FindHeader("expect");
    if (expect && EqualsIgnoreCase(*expect, "100-continue") && EnsureOutputRoom(32)) {
      output_buffer()->append("HTTP/1.1 100 Continue\r\n\r\n");
      CommitOutput();
    }
  }
  in_body_ = true;
  return true;
}

void HttpConnection::Dispatch() {
  in_body_ = false;
  HttpRequest req = std::move(req_);
  req_ = HttpRequest();
  req.connection_id = id_;
  bool path_matched = false;
  const HttpRouter::Route* route = router_->Match(req.method, req.path, &path_matched);
  if (route == nullptr) {
    WriteResponse(path_matched
                      ? HttpResponse::Text(405, fmt::format("method {} is not allowed for {}\n",
                                                            req.method, req.path))
                      : HttpResponse::Text(404, fmt::format("no route for {}\n", req.path)));
    AfterResponse();
    return;
  }
  if (route->handler) {
    WriteResponse(route->handler(req));
    AfterResponse();
    return;
  }
  in_flight_ = true;
  ++seq_;
  PauseReading(true);
  auto state = std::make_shared<HttpResponder::State>(loop(), this, alive_token(), seq_);
  route->async_handler(std::move(req), HttpResponder(std::move(state)));
}

void HttpConnection::CompleteAsync(uint64_t seq, const HttpResponse& response) {
  if (closing() || !in_flight_ || seq != seq_) return;
  in_flight_ = false;
  WriteResponse(response);
  AfterResponse();
  if (closing()) return;
  PauseReading(false);
  ProcessInput();  // requests that were pipelined behind this one
}

void HttpConnection::AfterResponse() {
  if (!keep_alive_) CloseAfterFlush(Status::Ok());
}

void HttpConnection::WriteResponse(const HttpResponse& r) {
  const bool no_body = r.status / 100 == 1 || r.status == 204 || r.status == 304;
  const bool send_body = !no_body && !head_method_;
  size_t estimate = 128 + r.content_type.size() + (send_body ? r.body.size() : 0);
  for (const auto& [k, v] : r.headers) estimate += k.size() + v.size() + 4;
  if (!EnsureOutputRoom(estimate)) return;
  std::string* out = output_buffer();
  fmt::format_to(std::back_inserter(*out), "HTTP/1.1 {} {}\r\n", r.status,
                 HttpReasonPhrase(r.status));
  if (!r.content_type.empty() && !no_body) {
    out->append("Content-Type: ");
    AppendSanitized(out, r.content_type);
    out->append("\r\n");
  }
  if (!no_body) fmt::format_to(std::back_inserter(*out), "Content-Length: {}\r\n", r.body.size());
  if (!keep_alive_) {
    out->append("Connection: close\r\n");
  } else if (version_minor_ == 0) {
    out->append("Connection: keep-alive\r\n");
  }
  for (const auto& [k, v] : r.headers) {
    if (!IsToken(k) || EqualsIgnoreCase(k, "content-length") || EqualsIgnoreCase(k, "connection") ||
        EqualsIgnoreCase(k, "transfer-encoding")) {
      continue;
    }
    out->append(k);
    out->append(": ");
    AppendSanitized(out, v);
    out->append("\r\n");
  }
  out->append("\r\n");
  if (send_body) out->append(r.body);
  CommitOutput();
}

void HttpConnection::Fail(int status, std::string_view message) {
  TERN_LOG(DEBUG) << "http connection " << id_ << " from " << peer_ << ": " << status << " "
                  << message;
  keep_alive_ = false;
  head_method_ = false;
  in_body_ = false;
  WriteResponse(HttpResponse::Text(status, std::string(message) + "\n"));
  CloseAfterFlush(InvalidArgumentError(fmt::format("HTTP {}: {}", status, message)));
}

}  // namespace internal

// ---------------------------------------------------------------- HttpServer

HttpServer::HttpServer(EventLoop* loop, const HttpServerOptions& options, HttpRouter router)
    : loop_(loop), options_(options), router_(std::move(router)) {}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(EventLoop* loop,
                                                      const HttpServerOptions& options,
                                                      HttpRouter router) {
  std::unique_ptr<HttpServer> server(new HttpServer(loop, options, std::move(router)));
  TERN_ASSIGN_OR_RETURN(server->listener_,
                        TcpListener::Listen(options.host, options.port, 1024, options.reuse_port));
  HttpServer* s = server.get();
  TERN_RETURN_IF_ERROR(
      server->listener_->StartAccepting(loop, [s](UniqueFd fd) { s->OnAccept(std::move(fd)); }));
  return server;
}

HttpServer::~HttpServer() {
  listener_.reset();
  conns_.clear();
}

uint16_t HttpServer::port() const { return listener_->port(); }

void HttpServer::OnAccept(UniqueFd fd) {
  const uint64_t id = next_id_++;
  const bool over_limit = conns_.size() >= options_.max_connections;
  auto conn = std::make_unique<internal::HttpConnection>(
      loop_, std::move(fd), id, &options_, &router_,
      [this](internal::HttpConnection* c, const Status& reason) {
        if (!reason.ok()) {
          TERN_LOG(DEBUG) << "http connection " << c->id() << " from " << c->peer()
                          << " closed: " << reason;
        }
        auto it = conns_.find(c->id());
        if (it != conns_.end()) {
          loop_->DeleteLater(std::move(it->second));
          conns_.erase(it);
        }
      });
  internal::HttpConnection* c = conn.get();
  conns_.emplace(id, std::move(conn));
  Status s = c->StartIo();
  if (!s.ok()) {
    TERN_LOG(WARN) << "http connection " << id << ": " << s;
    conns_.erase(id);
    return;
  }
  if (over_limit) {
    TERN_LOG(WARN) << "rejecting http connection from " << c->peer()
                   << ": too many connections (limit " << options_.max_connections << ")";
    c->Fail(503, "too many connections; try later");
  }
}

// ---------------------------------------------------------------- HttpClient

Result<std::unique_ptr<HttpClient>> HttpClient::Connect(std::string_view host, uint16_t port,
                                                        std::chrono::nanoseconds timeout) {
  TERN_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp(host, port, timeout));
  return std::unique_ptr<HttpClient>(new HttpClient(std::string(host), port, std::move(fd)));
}

Status HttpClient::ReadMore(int64_t deadline) {
  if (in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  } else if (in_pos_ > 0 && in_pos_ >= in_.size() / 2) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
  const size_t old = in_.size();
  in_.resize(old + kClientReadChunkBytes);
  Result<size_t> n = ReadSome(fd_.get(), in_.data() + old, kClientReadChunkBytes, deadline);
  in_.resize(old + (n.ok() ? *n : 0));
  if (!n.ok()) return n.status();
  if (*n == 0) eof_ = true;
  return Status::Ok();
}

Result<std::string> HttpClient::ReadLine(int64_t deadline) {
  for (;;) {
    size_t nl = in_.find('\n', in_pos_);
    if (nl != std::string::npos) {
      std::string line = in_.substr(in_pos_, nl - in_pos_);
      in_pos_ = nl + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    if (in_.size() - in_pos_ > kClientMaxHeadBytes) {
      return DataLossError("http: response line too long");
    }
    if (eof_) return UnavailableError("http: connection closed in the middle of a response");
    TERN_RETURN_IF_ERROR(ReadMore(deadline));
  }
}

Result<HttpClientResponse> HttpClient::Request(std::string_view method, std::string_view target,
                                               std::string_view body, std::string_view content_type,
                                               std::chrono::nanoseconds timeout,
                                               const HttpHeaders& extra_headers) {
  if (!IsToken(method)) return InvalidArgumentError("http: malformed method");
  if (target.empty() || target[0] != '/') {
    return InvalidArgumentError("http: target must start with '/'");
  }
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return InvalidArgumentError("http: bad character in target");
  }
  std::string wire;
  wire.reserve(256 + body.size());
  const bool bracket = host_.find(':') != std::string::npos && host_.front() != '[';
  fmt::format_to(std::back_inserter(wire), "{} {} HTTP/1.1\r\nHost: {}{}{}:{}\r\n", method, target,
                 bracket ? "[" : "", host_, bracket ? "]" : "", port_);
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
    fmt::format_to(std::back_inserter(wire), "Content-Length: {}\r\n", body.size());
  }
  if (!content_type.empty()) {
    wire.append("Content-Type: ");
    AppendSanitized(&wire, content_type);
    wire.append("\r\n");
  }
  for (const auto& [k, v] : extra_headers) {
    if (!IsToken(k)) return InvalidArgumentError("http: malformed header name '" + k + "'");
    wire.append(k);
    wire.append(": ");
    AppendSanitized(&wire, v);
    wire.append("\r\n");
  }
  wire.append("\r\n");
  wire.append(body);

  const int64_t deadline = DeadlineFromTimeout(timeout);
  for (int attempt = 0;; ++attempt) {
    if (!fd_.valid()) {
      std::chrono::nanoseconds left = timeout;
      if (deadline > 0) {
        left = std::chrono::nanoseconds(std::max<int64_t>(deadline - MonoNanos(), 1));
      }
      TERN_ASSIGN_OR_RETURN(fd_, ConnectTcp(host_, port_, left));
      reused_ = false;
      in_.clear();
      in_pos_ = 0;
      eof_ = false;
    }
    const bool was_reused = reused_;
    bool retryable = false;
    Result<HttpClientResponse> r = RequestOnce(wire, method == "HEAD", deadline, &retryable);
    if (r.ok()) return r;
    fd_.reset();
    if (!(retryable && was_reused && attempt == 0)) return r.status();
  }
}

Result<HttpClientResponse> HttpClient::RequestOnce(const std::string& wire, bool head,
                                                   int64_t deadline, bool* retryable) {
  // Leftover bytes from a previous response mean the stream is out of step.
  if (in_pos_ != in_.size() || eof_) {
    *retryable = true;
    return UnavailableError("http: connection is not reusable");
  }
  Status w = WriteAll(fd_.get(), wire, deadline);
  if (!w.ok()) {
    *retryable = w.code() == StatusCode::kUnavailable;
    return w.code() == StatusCode::kDeadlineExceeded
               ? DeadlineExceededError("http: timed out sending the request")
               : w;
  }
  reused_ = true;
  auto timeout_error = [](const Status& s) {
    return s.code() == StatusCode::kDeadlineExceeded
               ? DeadlineExceededError("http: timed out waiting for the response")
               : s;
  };

  HttpClientResponse resp;
  bool close_after = false;
  for (;;) {  // skips interim (1xx) responses
    if (in_pos_ == in_.size() && !eof_) {
      Status s = ReadMore(deadline);
      if (!s.ok()) {
        *retryable = s.code() == StatusCode::kUnavailable;
        return timeout_error(s);
      }
    }
    if (in_pos_ == in_.size() && eof_) {
      *retryable = true;  // closed before answering: a stale keep-alive connection
      return UnavailableError("http: server closed the connection without a response");
    }
    Result<std::string> status_line = ReadLine(deadline);
    if (!status_line.ok()) return timeout_error(status_line.status());
    std::string_view sl = *status_line;
    if (sl.size() < 12 || sl.substr(0, 7) != "HTTP/1." || sl[8] != ' ') {
      return DataLossError("http: malformed status line '" + std::string(sl.substr(0, 64)) + "'");
    }
    int code = 0;
    for (size_t i = 9; i < 12; ++i) {
      if (sl[i] < '0' || sl[i] > '9') return DataLossError("http: malformed status code");
      code = code * 10 + (sl[i] - '0');
    }
    const bool http10 = sl[7] == '0';
    std::vector<std::string> raw_lines;
    size_t head_bytes = 0;
    for (;;) {
      Result<std::string> line = ReadLine(deadline);
      if (!line.ok()) return timeout_error(line.status());
      if (line->empty()) break;
      head_bytes += line->size();
      if (head_bytes > kClientMaxHeadBytes) return DataLossError("http: response head too large");
      raw_lines.push_back(std::move(line).value());
    }
    std::vector<std::string_view> views(raw_lines.begin(), raw_lines.end());
    resp = HttpClientResponse();
    resp.status = code;
    std::string err = ParseHeaderLines(views, 0, &resp.headers);
    if (!err.empty()) return DataLossError("http: " + err);
    if (code / 100 == 1) continue;
    const std::string* conn = resp.FindHeader("connection");
    close_after = http10 ? !(conn && ListContains(*conn, "keep-alive"))
                         : (conn && ListContains(*conn, "close"));
    break;
  }

  const bool no_body = head || resp.status == 204 || resp.status == 304;
  const std::string* te = resp.FindHeader("transfer-encoding");
  const std::string* cl = resp.FindHeader("content-length");
  if (no_body) {
    // nothing to read
  } else if (te != nullptr && ListContains(*te, "chunked")) {
    for (;;) {
      Result<std::string> size_line = ReadLine(deadline);
      if (!size_line.ok()) return timeout_error(size_line.status());
      std::string_view sv = TrimOws(std::string_view(*size_line).substr(0, size_line->find(';')));
      if (sv.empty() || sv.size() > 15) return DataLossError("http: malformed chunk size");
      size_t n = 0;
      for (char c : sv) {
        int h = HexValue(c);
        if (h < 0) return DataLossError("http: malformed chunk size");
        n = n * 16 + static_cast<size_t>(h);
      }
      if (n == 0) {
        for (;;) {  // trailers
          Result<std::string> t = ReadLine(deadline);
          if (!t.ok()) return timeout_error(t.status());
          if (t->empty()) break;
        }
        break;
      }
      while (in_.size() - in_pos_ < n + 2) {
        if (eof_) return UnavailableError("http: connection closed in the middle of a body");
        Status s = ReadMore(deadline);
        if (!s.ok()) return timeout_error(s);
      }
      resp.body.append(in_, in_pos_, n);
      in_pos_ += n + 2;
    }
  } else if (cl != nullptr) {
    uint64_t n;
    if (!ParseContentLength(*cl, &n)) return DataLossError("http: malformed Content-Length");
    if (n > (uint64_t{1} << 34)) return DataLossError("http: response body too large");
    resp.body.reserve(static_cast<size_t>(n));
    while (resp.body.size() < n) {
      if (in_pos_ == in_.size()) {
        if (eof_) return UnavailableError("http: connection closed in the middle of a body");
        Status s = ReadMore(deadline);
        if (!s.ok()) return timeout_error(s);
        continue;
      }
      size_t take = std::min<size_t>(in_.size() - in_pos_, n - resp.body.size());
      resp.body.append(in_, in_pos_, take);
      in_pos_ += take;
    }
  } else {
    // Body runs to the end of the stream.
    close_after = true;
    for (;;) {
      resp.body.append(in_, in_pos_, in_.size() - in_pos_);
      in_pos_ = in_.size();
      if (eof_) break;
      Status s = ReadMore(deadline);
      if (!s.ok()) return timeout_error(s);
    }
  }
  if (close_after) {
    fd_.reset();
    in_.clear();
    in_pos_ = 0;
  }
  return resp;
}

}  // namespace tern::transport
