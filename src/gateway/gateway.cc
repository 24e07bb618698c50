#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>
#include <random>
#include <unordered_map>

#include "core/clock.h"
#include "core/ids.h"
#include "core/logging.h"
#include "dataplane/picker.h"
#include "transport/event_loop.h"
#include "transport/frame.h"
#include "transport/http.h"
#include "transport/json_api.h"
#include "transport/socket.h"
#include "transport/tcp.h"

namespace tern::gateway {

using dataplane::InstanceLocation;
using transport::EventLoop;
using transport::Frame;
using transport::FrameType;
using transport::HttpRequest;
using transport::HttpResponder;
using transport::HttpResponse;
using transport::UniqueFd;

namespace {

constexpr char kTernVersion[] = "0.1.0";
constexpr size_t kLatencySamples = 1024;
constexpr int64_t kMaxTimeoutMs = 3'600'000;  // fits budget_us (u32 microseconds)

HttpResponse ErrorResponse(const Status& s) {
  return HttpResponse::Json(transport::HttpStatusForCode(s.code()), ErrorJson(s));
}

int64_t ToNanos(std::chrono::nanoseconds d) { return d.count(); }

// Splits "host:port" / "[v6]:port". kInvalidArgument naming `what` if malformed.
Status SplitHostPort(std::string_view addr, std::string_view what, std::string* host,
                     uint16_t* port) {
  size_t colon = addr.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == addr.size()) {
    return InvalidArgumentError(fmt::format("{} '{}': expected HOST:PORT", what, addr));
  }
  std::string_view h = addr.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  uint32_t p = 0;
  for (char c : addr.substr(colon + 1)) {
    if (c < '0' || c > '9' || p > 65535) {
      return InvalidArgumentError(fmt::format("{} '{}': bad port", what, addr));
    }
    p = p * 10 + static_cast<uint32_t>(c - '0');
  }
  if (p == 0 || p > 65535) {
    return InvalidArgumentError(fmt::format("{} '{}': port must be 1..65535", what, addr));
  }
  *host = std::string(h);
  *port = static_cast<uint16_t>(p);
  return Status::Ok();
}

// Resolves an agent's "ip:port" without blocking: numeric addresses (and "localhost")
// only, since name resolution would block the loop.
Status ResolveNumeric(const std::string& addr, sockaddr_storage* ss, socklen_t* len) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(SplitHostPort(addr, "agent address", &host, &port));
  if (host == "localhost") host = "127.0.0.1";
  *ss = sockaddr_storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
    return Status::Ok();
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
    return Status::Ok();
  }
  return InvalidArgumentError(
      fmt::format("agent address '{}': the gateway needs a numeric IP address", addr));
}

}  // namespace

std::string ErrorJson(const Status& s) {
  return nlohmann::json{{"error",
                         {{"code", std::string(StatusCodeName(s.code()))},
                          {"code_number", static_cast<int>(s.code())},
                          {"message", std::string(s.message())}}}}
      .dump();
}

Result<LocationsSnapshot> ParseLocationsReply(std::string_view text) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(fmt::format("controller locations: {}", e.what()));
  }
  if (!root.is_object()) {
    return InvalidArgumentError(
        "controller locations: expected {\"version\": N, \"locations\": []}");
  }
  auto v = root.find("version");
  if (v == root.end() || !v->is_number_unsigned()) {
    return InvalidArgumentError(
        "controller locations: field 'version' is missing or not an unsigned integer");
  }
  LocationsSnapshot out;
  out.version = v->get<uint64_t>();
  nlohmann::json rest = root;
  rest.erase("version");
  TERN_ASSIGN_OR_RETURN(out.locations, dataplane::ParseLocationsJson(rest.dump()));
  return out;
}

// ------------------------------------------------------------------------ Shared

struct Gateway::Shared {
  explicit Shared(const GatewayOptions& o) : options(o) {}

  const GatewayOptions options;
  dataplane::LocationTable table;
  std::atomic<uint64_t>* locations_version = nullptr;

  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> requests{0}, status_2xx{0}, status_4xx{0}, status_5xx{0}, retries{0},
      moved{0}, rejected{0}, upstream_connections{0};

  Mutex latency_mu;
  std::vector<int64_t> latency_nanos GUARDED_BY(latency_mu);  // a ring of kLatencySamples
  size_t latency_next GUARDED_BY(latency_mu) = 0;

  void CountStatus(int status) {
    if (status >= 200 && status < 300) {
      status_2xx.fetch_add(1, std::memory_order_relaxed);
    } else if (status >= 400 && status < 500) {
      status_4xx.fetch_add(1, std::memory_order_relaxed);
    } else if (status >= 500) {
      status_5xx.fetch_add(1, std::memory_order_relaxed);
    }
  }
  void RecordLatency(int64_t nanos) {
    MutexLock l(&latency_mu);
    if (latency_nanos.size() < kLatencySamples) {
      latency_nanos.push_back(nanos);
    } else {
      latency_nanos[latency_next] = nanos;
    }
    latency_next = (latency_next + 1) % kLatencySamples;
  }
};

// ------------------------------------------------------------------------ Worker

// One I/O thread: its loop, its HTTP server, its agent connections and the requests
// it serves. Everything but the constructor/destructor runs on the loop thread.
class Gateway::Worker {
 public:
  static Result<std::unique_ptr<Worker>> Start(Gateway* gateway, Shared* shared, uint16_t port,
                                               bool reuse_port) {
    std::unique_ptr<Worker> w(new Worker(gateway, shared));
    TERN_ASSIGN_OR_RETURN(w->thread_, transport::EventLoopThread::Create());
    w->loop_ = w->thread_->loop();
    transport::HttpServerOptions ho;
    ho.host = shared->options.listen_host;
    ho.port = port;
    ho.reuse_port = reuse_port;
    TERN_ASSIGN_OR_RETURN(w->http_, transport::HttpServer::Start(w->loop_, ho, w->Routes()));
    w->thread_->Start();
    return w;
  }

  ~Worker() {
    if (thread_ == nullptr) return;
    loop_->RunSync([this] { Teardown(); });
    thread_->Stop();
  }

  uint16_t port() const { return http_port_; }

 private:
  struct Upstream {
    enum class State { kIdle, kConnecting, kConnected, kBackoff };
    std::string address;
    State state = State::kIdle;
    UniqueFd connecting;  // while kConnecting
    bool connecting_registered = false;
    EventLoop::TimerId connect_timer = 0;
    std::unique_ptr<transport::FrameConnection> conn;  // while kConnected
    // Calls waiting for the connection: (call id, attempt number).
    std::vector<std::pair<uint64_t, int>> waiting;
    std::unordered_map</* request id */ uint64_t, /* call id */ uint64_t> sent;
    int64_t retry_at_nanos = 0;  // kBackoff: no connect before this
    int64_t backoff_nanos = 0;
    bool down_logged = false;
  };

  struct Call {
    uint64_t id = 0;
    HttpResponder responder;
    Frame frame;  // the request; kept for re-sends after kMoved
    int64_t start_nanos = 0;
    int64_t deadline_nanos = 0;
    EventLoop::TimerId timer = 0;
    int attempts = 0;
    std::vector<std::string> avoid;  // instances that failed this call
    Status last_error;
    // The current attempt.
    std::string instance;
    Upstream* upstream = nullptr;
    uint64_t request_id = 0;  // != 0 once sent on upstream->conn
    bool holds_outstanding = false;
  };

  Worker(Gateway* gateway, Shared* shared)
      : gateway_(gateway), shared_(shared), options_(shared->options) {
    std::random_device rd;
    rng_ = (uint64_t{rd()} << 32) ^ rd();
  }

  transport::HttpRouter Routes() {
    transport::HttpRouter r;
    r.Handle("GET", "/v1/health", [](const HttpRequest&) { return HttpResponse::Text(200, "ok"); });
    r.Handle("GET", "/v1/info",
             [this](const HttpRequest&) { return HttpResponse::Json(200, gateway_->InfoJson()); });
    r.HandleAsync("POST", "/v1/invoke/*", [this](HttpRequest req, HttpResponder resp) {
      OnInvoke(std::move(req), std::move(resp));
    });
    return r;
  }

  void Teardown() {
    http_.reset();
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : calls_) ids.push_back(id);
    for (uint64_t id : ids) {
      if (Call* c = FindCall(id)) Finish(c, ErrorResponse(UnavailableError("gateway stopping")));
    }
    for (auto& [addr, up] : upstreams_) {
      if (up->connect_timer != 0) loop_->CancelTimer(up->connect_timer);
      if (up->connecting_registered) loop_->RemoveFd(up->connecting.get());
      if (up->conn != nullptr) {
        shared_->upstream_connections.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    upstreams_.clear();
  }

  // ---- requests

  static HttpResponse Reject(const Status& s) { return ErrorResponse(s); }

  void Respond(const HttpResponder& responder, HttpResponse r) {
    shared_->CountStatus(r.status);
    responder.Respond(std::move(r));
  }

  void OnInvoke(HttpRequest req, HttpResponder responder) {
    shared_->requests.fetch_add(1, std::memory_order_relaxed);
    const int64_t now = MonoNanos();
    // "/v1/invoke/{service}/{handler}"
    std::string_view rest =
        std::string_view(req.path).substr(std::string_view("/v1/invoke/").size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 == rest.size() ||
        rest.find('/', slash + 1) != std::string_view::npos) {
      Respond(responder, Reject(InvalidArgumentError(fmt::format(
                             "path '{}': expected /v1/invoke/{{service}}/{{handler}}", req.path))));
      return;
    }
    Result<transport::CallIds> ids = transport::CallIdsFromHeaders(req);
    if (!ids.ok()) {
      Respond(responder, Reject(ids.status()));
      return;
    }
    // From here on, every answer names the trace.
    auto reject = [&](const Status& s) {
      HttpResponse r = Reject(s);
      r.headers.emplace_back(transport::kTraceIdHeader, TraceIdHex(ids->trace_id));
      Respond(responder, std::move(r));
    };
    Frame f;
    f.type = FrameType::kInvoke;
    f.trace_id = ids->trace_id;
    f.idempotency_key = ids->idempotency_key;
    f.service = transport::PercentDecode(rest.substr(0, slash), false);
    f.handler = transport::PercentDecode(rest.substr(slash + 1), false);
    f.tenant = std::string(req.Header("x-tern-tenant"));
    for (const auto& [what, value] :
         {std::pair<const char*, const std::string*>{"service", &f.service},
          {"handler", &f.handler},
          {"X-Tern-Tenant", &f.tenant}}) {
      if (value->size() > transport::kMaxNameBytes) {
        reject(InvalidArgumentError(fmt::format("{} is {} bytes long; the limit is {}", what,
                                                value->size(), transport::kMaxNameBytes)));
        return;
      }
    }
    int64_t timeout_nanos = ToNanos(options_.default_timeout);
    if (const std::string* t = req.FindHeader("x-tern-timeout-ms")) {
      int64_t ms = 0;
      bool ok = !t->empty() && t->size() <= 10;
      for (char c : *t) {
        if (c < '0' || c > '9') ok = false;
      }
      if (ok) ms = std::stoll(*t);
      if (!ok || ms < 1 || ms > kMaxTimeoutMs) {
        reject(InvalidArgumentError(fmt::format(
            "X-Tern-Timeout-Ms: expected milliseconds 1..{}, got '{}'", kMaxTimeoutMs, *t)));
        return;
      }
      timeout_nanos = ms * 1'000'000;
    }
    if (req.body.size() > transport::kMaxPayloadBytes) {
      reject(ResourceExhaustedError("request body exceeds the frame limit"));
      return;
    }
    // Bounded concurrency across all threads: reject at once, without queueing.
    if (shared_->in_flight.fetch_add(1, std::memory_order_acq_rel) >=
        static_cast<int64_t>(options_.max_inflight)) {
      shared_->in_flight.fetch_sub(1, std::memory_order_acq_rel);
      shared_->rejected.fetch_add(1, std::memory_order_relaxed);
      HttpResponse r = HttpResponse::Json(
          503, ErrorJson(ResourceExhaustedError(fmt::format(
                   "gateway saturated: {} requests in flight (--max-inflight); retry later",
                   options_.max_inflight))));
      r.headers.emplace_back("Retry-After", "1");
      r.headers.emplace_back(transport::kTraceIdHeader, TraceIdHex(f.trace_id));
      Respond(responder, std::move(r));
      return;
    }
    f.payload = std::move(req.body);

    auto call = std::make_unique<Call>();
    Call* c = call.get();
    c->id = next_call_id_++;
    c->responder = std::move(responder);
    c->frame = std::move(f);
    c->start_nanos = now;
    c->deadline_nanos = now + timeout_nanos;
    const uint64_t id = c->id;
    c->timer = loop_->RunAfter(std::chrono::nanoseconds(timeout_nanos), [this, id, timeout_nanos] {
      Call* expired = FindCall(id);
      if (expired == nullptr) return;
      expired->timer = 0;
      Finish(expired, ErrorResponse(DeadlineExceededError(
                          fmt::format("no answer within {} ms", timeout_nanos / 1'000'000))));
    });
    calls_.emplace(id, std::move(call));
    Attempt(c);
  }

  Call* FindCall(uint64_t id) {
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second.get();
  }

  // The instances of `service`, cached until the table changes.
  const std::vector<InstanceLocation>& Lookup(const std::string& service) {
    const uint64_t v = shared_->table.version();
    if (v != cache_version_) {
      cache_.clear();
      cache_version_ = v;
    }
    auto it = cache_.find(service);
    if (it == cache_.end()) it = cache_.emplace(service, shared_->table.Lookup(service)).first;
    return it->second;
  }

  Upstream* GetUpstream(const std::string& address) {
    std::unique_ptr<Upstream>& up = upstreams_[address];
    if (up == nullptr) {
      up = std::make_unique<Upstream>();
      up->address = address;
    }
    return up.get();
  }

  bool Usable(const std::string& address) const {
    auto it = upstreams_.find(address);
    if (it == upstreams_.end()) return true;
    const Upstream& up = *it->second;
    return up.state != Upstream::State::kBackoff || MonoNanos() >= up.retry_at_nanos;
  }

  uint64_t Outstanding(const std::string& instance) const {
    auto it = outstanding_.find(instance);
    return it == outstanding_.end() ? 0 : it->second;
  }

  void ReleaseOutstanding(Call* c) {
    if (!c->holds_outstanding) return;
    c->holds_outstanding = false;
    auto it = outstanding_.find(c->instance);
    if (it != outstanding_.end() && --it->second == 0) outstanding_.erase(it);
  }

  // Picks an instance for `c` and sends (or queues) the request.
  void Attempt(Call* c) {
    const std::string& service = c->frame.service;
    if (c->attempts >= options_.max_attempts) {
      Finish(c, ErrorResponse(UnavailableError(
                    fmt::format("no instance of '{}' answered after {} attempts; last: {}", service,
                                c->attempts, c->last_error.ToString()))));
      return;
    }
    const std::vector<InstanceLocation>& all = Lookup(service);
    if (all.empty() && c->attempts == 0) {
      Finish(c, ErrorResponse(NotFoundError(fmt::format("unknown service '{}'", service))));
      return;
    }
    std::vector<const InstanceLocation*> usable;
    for (const InstanceLocation& l : all) {
      if (l.tcp.empty()) continue;
      if (std::find(c->avoid.begin(), c->avoid.end(), l.instance) != c->avoid.end()) continue;
      if (!Usable(l.tcp)) continue;
      usable.push_back(&l);
    }
    if (usable.empty()) {
      std::string why = c->last_error.ok() ? "" : "; last: " + c->last_error.ToString();
      Finish(c, ErrorResponse(UnavailableError(fmt::format("no live instance of '{}' ({} known){}",
                                                           service, all.size(), why))));
      return;
    }
    // Locality: the instances on our host, unless all of them are overloaded.
    std::vector<const InstanceLocation*> local;
    if (!options_.host_id.empty()) {
      for (const InstanceLocation* l : usable) {
        if (l->host == options_.host_id &&
            Outstanding(l->instance) < options_.local_max_outstanding) {
          local.push_back(l);
        }
      }
    }
    const std::vector<const InstanceLocation*>& pool = local.empty() ? usable : local;
    std::optional<size_t> pick = dataplane::PickP2C(
        pool.size(), [&](size_t i) { return Outstanding(pool[i]->instance); }, {}, &rng_);
    const InstanceLocation& chosen = *pool[*pick];

    if (c->attempts > 0) shared_->retries.fetch_add(1, std::memory_order_relaxed);
    ++c->attempts;
    c->instance = chosen.instance;
    c->frame.epoch = chosen.epoch;
    ++outstanding_[chosen.instance];
    c->holds_outstanding = true;
    Upstream* up = GetUpstream(chosen.tcp);
    c->upstream = up;
    c->request_id = 0;
    if (up->state == Upstream::State::kConnected) {
      SendOn(up, c);
      return;
    }
    up->waiting.emplace_back(c->id, c->attempts);
    if (up->state != Upstream::State::kConnecting) StartConnect(up);
  }

  // The request of `c` was not sent (or was answered kMoved): try another instance.
  void Retry(Call* c, Status why) {
    ReleaseOutstanding(c);
    c->avoid.push_back(c->instance);
    c->last_error = std::move(why);
    c->upstream = nullptr;
    c->request_id = 0;
    Attempt(c);
  }

  void SendOn(Upstream* up, Call* c) {
    const int64_t left_us = (c->deadline_nanos - MonoNanos()) / 1000;
    c->frame.budget_us = static_cast<uint32_t>(std::clamp<int64_t>(left_us, 1, UINT32_MAX));
    c->frame.request_id = next_request_id_++;
    Status st = up->conn->Send(c->frame);
    if (!st.ok()) {
      if (st.code() == StatusCode::kInvalidArgument) {
        Finish(c, ErrorResponse(st));
      } else {
        Retry(c, st.WithPrefix("agent " + up->address));
      }
      return;
    }
    c->request_id = c->frame.request_id;
    up->sent.emplace(c->request_id, c->id);
  }

  // Answers `c` and forgets it.
  void Finish(Call* c, HttpResponse r) {
    if (c->timer != 0) loop_->CancelTimer(c->timer);
    if (c->request_id != 0 && c->upstream != nullptr) c->upstream->sent.erase(c->request_id);
    ReleaseOutstanding(c);
    if (!c->instance.empty()) r.headers.emplace_back("X-Tern-Instance", c->instance);
    r.headers.emplace_back(transport::kTraceIdHeader, TraceIdHex(c->frame.trace_id));
    shared_->RecordLatency(MonoNanos() - c->start_nanos);
    shared_->in_flight.fetch_sub(1, std::memory_order_acq_rel);
    Respond(c->responder, std::move(r));
    calls_.erase(c->id);
  }

  // ---- agent connections

  void StartConnect(Upstream* up) {
    sockaddr_storage ss;
    socklen_t len = 0;
    Status st = ResolveNumeric(up->address, &ss, &len);
    if (!st.ok()) {
      ConnectFailed(up, st);
      return;
    }
    UniqueFd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
      ConnectFailed(up, ErrnoError("socket", errno));
      return;
    }
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0) {
      Connected(up, std::move(fd));
      return;
    }
    if (errno != EINPROGRESS) {
      ConnectFailed(up, ErrnoError("connect " + up->address, errno));
      return;
    }
    up->state = Upstream::State::kConnecting;
    up->connecting = std::move(fd);
    Status add = loop_->AddFd(up->connecting.get(), EventLoop::kWritable,
                              [this, up](uint32_t) { OnConnectReady(up); });
    if (!add.ok()) {
      up->connecting.reset();
      ConnectFailed(up, add);
      return;
    }
    up->connecting_registered = true;
    up->connect_timer = loop_->RunAfter(options_.connect_timeout, [this, up] {
      up->connect_timer = 0;
      StopConnecting(up);
      ConnectFailed(
          up, DeadlineExceededError(fmt::format("connect {}: no answer within {} ms", up->address,
                                                options_.connect_timeout.count())));
    });
  }

  void StopConnecting(Upstream* up) {
    if (up->connect_timer != 0) {
      loop_->CancelTimer(up->connect_timer);
      up->connect_timer = 0;
    }
    if (up->connecting_registered) {
      loop_->RemoveFd(up->connecting.get());
      up->connecting_registered = false;
    }
  }

  void OnConnectReady(Upstream* up) {
    StopConnecting(up);
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(up->connecting.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    UniqueFd fd = std::move(up->connecting);
    if (err != 0) {
      ConnectFailed(up, ErrnoError("connect " + up->address, err));
      return;
    }
    Connected(up, std::move(fd));
  }

  void ConnectFailed(Upstream* up, const Status& why) {
    up->connecting.reset();
    up->state = Upstream::State::kBackoff;
    const int64_t first = ToNanos(options_.reconnect_backoff);
    up->backoff_nanos = up->backoff_nanos == 0 ? first
                                               : std::min(up->backoff_nanos * 2,
                                                          ToNanos(options_.reconnect_backoff_max));
    up->retry_at_nanos = MonoNanos() + up->backoff_nanos;
    if (!up->down_logged) {
      TERN_LOG(WARN) << "gateway: agent " << up->address << " unreachable: " << why
                     << "; sending its requests elsewhere, reconnecting with backoff";
      up->down_logged = true;
    }
    std::vector<std::pair<uint64_t, int>> waiting = std::move(up->waiting);
    up->waiting.clear();
    for (const auto& [id, attempt] : waiting) {
      Call* c = FindCall(id);
      if (c == nullptr || c->upstream != up || c->attempts != attempt || c->request_id != 0)
        continue;
      Retry(c, why);
    }
  }

  void Connected(Upstream* up, UniqueFd fd) {
    (void)transport::SetNoDelay(fd.get());
    transport::FrameConnectionOptions fo;
    up->conn = std::make_unique<transport::FrameConnection>(
        loop_, std::move(fd), next_conn_id_++, fo,
        [this, up](transport::FrameConnection*, Frame f) { OnFrame(up, std::move(f)); },
        [this, up](transport::FrameConnection*, const Status& s) { OnUpstreamClosed(up, s); });
    Status st = up->conn->Start();
    if (!st.ok()) {
      loop_->DeleteLater(std::move(up->conn));
      ConnectFailed(up, st);
      return;
    }
    up->state = Upstream::State::kConnected;
    up->backoff_nanos = 0;
    shared_->upstream_connections.fetch_add(1, std::memory_order_relaxed);
    if (up->down_logged) {
      TERN_LOG(INFO) << "gateway: agent " << up->address << " reachable again";
      up->down_logged = false;
    }
    std::vector<std::pair<uint64_t, int>> waiting = std::move(up->waiting);
    up->waiting.clear();
    for (const auto& [id, attempt] : waiting) {
      Call* c = FindCall(id);
      if (c == nullptr || c->upstream != up || c->attempts != attempt || c->request_id != 0)
        continue;
      if (up->state != Upstream::State::kConnected) {
        Retry(c, UnavailableError("connection to agent " + up->address + " closed"));
      } else {
        SendOn(up, c);
      }
    }
  }

  void OnUpstreamClosed(Upstream* up, const Status& reason) {
    shared_->upstream_connections.fetch_sub(1, std::memory_order_relaxed);
    loop_->DeleteLater(std::move(up->conn));
    up->state = Upstream::State::kIdle;
    if (!up->down_logged && (!reason.ok() || !up->sent.empty())) {
      TERN_LOG(WARN) << "gateway: connection to agent " << up->address << " closed: " << reason;
      up->down_logged = true;
    }
    std::unordered_map<uint64_t, uint64_t> sent = std::move(up->sent);
    up->sent.clear();
    for (const auto& [rid, id] : sent) {
      Call* c = FindCall(id);
      if (c == nullptr) continue;
      c->request_id = 0;  // no longer in up->sent
      Finish(c, ErrorResponse(UnavailableError(fmt::format(
                    "connection to agent {} (instance {}) broke after the request was sent ({}); "
                    "not retried: the invocation may have run",
                    up->address, c->instance,
                    reason.ok() ? "closed by the agent" : reason.ToString()))));
    }
  }

  void OnFrame(Upstream* up, Frame f) {
    if (f.request_id == 0) {
      // A connection-level error: the agent closes the connection next.
      if (f.type == FrameType::kError) {
        TERN_LOG(WARN) << "gateway: agent " << up->address << ": "
                       << transport::ErrorFrameStatus(f);
      }
      return;
    }
    auto it = up->sent.find(f.request_id);
    if (it == up->sent.end()) return;  // a late answer to a request that timed out
    Call* c = FindCall(it->second);
    up->sent.erase(it);
    if (c == nullptr) return;
    c->request_id = 0;
    switch (f.type) {
      case FrameType::kReply: {
        HttpResponse r;
        r.status = 200;
        r.content_type = "application/octet-stream";
        r.body = std::move(f.payload);
        Finish(c, std::move(r));
        return;
      }
      case FrameType::kError:
        Finish(c, ErrorResponse(transport::ErrorFrameStatus(f)));
        return;
      case FrameType::kMoved:
        shared_->moved.fetch_add(1, std::memory_order_relaxed);
        Retry(c, AbortedError(
                     fmt::format("instance {} moved (epoch {})", c->instance, c->frame.epoch)));
        return;
      default:
        Finish(c, ErrorResponse(UnavailableError(
                      fmt::format("agent {} answered with an unexpected '{}' frame", up->address,
                                  transport::FrameTypeName(f.type)))));
        return;
    }
  }

  Gateway* const gateway_;
  Shared* const shared_;
  const GatewayOptions& options_;
  std::unique_ptr<transport::EventLoopThread> thread_;
  EventLoop* loop_ = nullptr;
  std::unique_ptr<transport::HttpServer> http_;
  uint16_t http_port_ = 0;

  // Loop-thread state.
  uint64_t rng_ = 0;
  uint64_t next_call_id_ = 1;
  uint64_t next_request_id_ = 1;
  uint64_t next_conn_id_ = 1;
  std::unordered_map</* call id */ uint64_t, std::unique_ptr<Call>> calls_;
  std::unordered_map</* "ip:port" */ std::string, std::unique_ptr<Upstream>> upstreams_;
  std::unordered_map</* instance */ std::string, uint64_t> outstanding_;
  uint64_t cache_version_ = ~uint64_t{0};
  std::unordered_map</* service */ std::string, std::vector<InstanceLocation>> cache_;

  friend class Gateway;
};

// ------------------------------------------------------------------------ Gateway

Gateway::Gateway(const GatewayOptions& options)
    : options_(options), shared_(std::make_unique<Shared>(options)) {
  shared_->locations_version = &locations_version_;
}

Result<std::unique_ptr<Gateway>> Gateway::Start(const GatewayOptions& options) {
  if (options.threads < 1 || options.threads > 64) {
    return InvalidArgumentError(fmt::format("threads must be 1..64, not {}", options.threads));
  }
  if (options.max_inflight < 1) return InvalidArgumentError("max_inflight must be at least 1");
  if (options.max_attempts < 1) return InvalidArgumentError("max_attempts must be at least 1");
  std::string controller_host;
  uint16_t controller_port = 0;
  if (!options.controller.empty()) {
    TERN_RETURN_IF_ERROR(
        SplitHostPort(options.controller, "controller", &controller_host, &controller_port));
  }
  std::unique_ptr<Gateway> g(new Gateway(options));
  const bool reuse_port = options.threads > 1;
  uint16_t port = options.listen_port;
  for (int i = 0; i < options.threads; ++i) {
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<Worker> w,
                          Worker::Start(g.get(), g->shared_.get(), port, reuse_port));
    // The first listener decides the port (port 0 = any); the others share it.
    if (i == 0) port = w->http_->port();
    w->http_port_ = port;
    g->workers_.push_back(std::move(w));
  }
  g->port_ = port;
  if (!options.controller.empty()) {
    g->poller_ = std::thread([gw = g.get(), controller_host, controller_port] {
      gw->PollController(controller_host, controller_port);
    });
  }
  return g;
}

Gateway::~Gateway() {
  {
    MutexLock l(&poll_mu_);
    stopping_ = true;
    poll_cv_.SignalAll();
  }
  if (poller_.joinable()) poller_.join();
  workers_.clear();
}

void Gateway::SetLocations(std::vector<InstanceLocation> all, uint64_t version) {
  shared_->table.Replace(std::move(all));
  locations_version_.store(version);
}

void Gateway::PollController(const std::string& host, uint16_t port) {
  std::unique_ptr<transport::HttpClient> client;
  bool have = false;
  uint64_t version = 0;
  bool down = false;
  std::chrono::milliseconds backoff(100);
  auto stopping = [this] {
    MutexLock l(&poll_mu_);
    return stopping_;
  };
  auto fail = [&](const Status& why) {
    if (!down) {
      TERN_LOG(WARN) << "gateway: controller " << options_.controller << ": " << why
                     << "; keeping the last location table (version " << version
                     << "), retrying with backoff";
      down = true;
    }
    client.reset();
    MutexLock l(&poll_mu_);
    if (!stopping_) poll_cv_.WaitFor(&poll_mu_, backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  };
  while (!stopping()) {
    if (client == nullptr) {
      Result<std::unique_ptr<transport::HttpClient>> c =
          transport::HttpClient::Connect(host, port, std::chrono::seconds(2));
      if (!c.ok()) {
        fail(c.status());
        continue;
      }
      client = std::move(*c);
    }
    std::string target = fmt::format("/v1/locations?after={}&wait_ms={}", have ? version : 0,
                                     options_.controller_wait.count());
    Result<transport::HttpClientResponse> r =
        client->Request("GET", target, {}, {}, options_.controller_wait + std::chrono::seconds(5));
    if (!r.ok()) {
      fail(r.status());
      continue;
    }
    if (r->status != 200) {
      fail(UnavailableError(
          fmt::format("GET /v1/locations answered {}: {}", r->status, r->body.substr(0, 200))));
      continue;
    }
    Result<LocationsSnapshot> snap = ParseLocationsReply(r->body);
    if (!snap.ok()) {
      fail(snap.status());
      continue;
    }
    if (down) {
      TERN_LOG(INFO) << "gateway: controller " << options_.controller << " reachable again";
      down = false;
    }
    backoff = std::chrono::milliseconds(100);
    if (!have || snap->version != version) {
      version = snap->version;
      have = true;
      SetLocations(std::move(snap->locations), version);
    }
  }
}

GatewayStats Gateway::stats() const {
  GatewayStats s;
  const Shared& sh = *shared_;
  s.requests = sh.requests.load();
  s.status_2xx = sh.status_2xx.load();
  s.status_4xx = sh.status_4xx.load();
  s.status_5xx = sh.status_5xx.load();
  s.retries = sh.retries.load();
  s.moved = sh.moved.load();
  s.rejected_saturation = sh.rejected.load();
  s.in_flight = static_cast<uint64_t>(std::max<int64_t>(0, sh.in_flight.load()));
  s.upstream_connections = sh.upstream_connections.load();
  s.locations_version = locations_version_.load();
  s.locations = sh.table.size();
  std::vector<int64_t> lat;
  {
    MutexLock l(&shared_->latency_mu);
    lat = shared_->latency_nanos;
  }
  if (!lat.empty()) {
    auto at = [&](double q) {
      size_t k = std::min(lat.size() - 1, static_cast<size_t>(q * static_cast<double>(lat.size())));
      std::nth_element(lat.begin(), lat.begin() + static_cast<ptrdiff_t>(k), lat.end());
      return static_cast<double>(lat[k]) / 1e6;
    };
    s.latency_p50_ms = at(0.50);
    s.latency_p99_ms = at(0.99);
  }
  return s;
}

std::string Gateway::InfoJson() const {
  GatewayStats s = stats();
  nlohmann::json j{{"version", kTernVersion},
                   {"host", options_.host_id},
                   {"listen", fmt::format("{}:{}", options_.listen_host, port_)},
                   {"threads", options_.threads},
                   {"max_inflight", options_.max_inflight},
                   {"controller", options_.controller},
                   {"locations", {{"version", s.locations_version}, {"entries", s.locations}}},
                   {"requests",
                    {{"total", s.requests},
                     {"2xx", s.status_2xx},
                     {"4xx", s.status_4xx},
                     {"5xx", s.status_5xx},
                     {"retries", s.retries},
                     {"moved", s.moved},
                     {"rejected_saturation", s.rejected_saturation},
                     {"in_flight", s.in_flight}}},
                   {"latency_ms", {{"p50", s.latency_p50_ms}, {"p99", s.latency_p99_ms}}},
                   {"upstream_connections", s.upstream_connections}};
  return j.dump();
}

}  // namespace tern::gateway
