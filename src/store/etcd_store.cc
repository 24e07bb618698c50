#include "store/etcd_store.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/base64.h"
#include "core/clock.h"
#include "core/logging.h"
#include "transport/http.h"
#include "transport/socket.h"

namespace tern::store {

using nlohmann::json;

namespace {

// An int64 field, which etcd's gateway sends as a string (or omits when 0).
int64_t Int(const json& j, const char* name) {
  if (!j.is_object()) return 0;
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) return std::strtoll(it->get_ref<const std::string&>().c_str(), nullptr, 10);
  return 0;
}

bool Bool(const json& j, const char* name) {
  if (!j.is_object()) return false;
  auto it = j.find(name);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

const json& Field(const json& j, const char* name) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(name);
  return it == j.end() ? kNull : *it;
}

Result<std::string> Bytes(const json& j, const char* name) {
  const json& v = Field(j, name);
  if (v.is_null()) return std::string();
  if (!v.is_string()) return DataLossError(std::string("etcd: field '") + name + "' is not a string");
  Result<std::string> d = Base64Decode(v.get_ref<const std::string&>());
  if (!d.ok()) return d.status().WithPrefix(std::string("etcd: field '") + name + "'");
  return d;
}

Result<KeyValue> ParseKv(const json& j) {
  KeyValue kv;
  TERN_ASSIGN_OR_RETURN(kv.key, Bytes(j, "key"));
  TERN_ASSIGN_OR_RETURN(kv.value, Bytes(j, "value"));
  kv.create_revision = Int(j, "create_revision");
  kv.mod_revision = Int(j, "mod_revision");
  kv.lease = Int(j, "lease");
  return kv;
}

Result<json> ParseJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return DataLossError("etcd: malformed JSON response: " + std::string(text.substr(0, 200)));
  }
  return j;
}

// An error object of the gateway: {"error": "...", "code": 5, "message": "..."} or,
// in a stream, {"error": {"grpc_code": 5, "message": "..."}}.
Status ErrorFromJson(const json& j, int http_status) {
  const json& e = Field(j, "error");
  int64_t code = Int(j, "code");
  std::string message;
  if (e.is_object()) {
    code = Int(e, "grpc_code");
    if (Field(e, "message").is_string()) message = Field(e, "message").get<std::string>();
  } else if (Field(j, "message").is_string()) {
    message = Field(j, "message").get<std::string>();
  } else if (e.is_string()) {
    message = e.get<std::string>();
  }
  if (message.empty()) message = "HTTP " + std::to_string(http_status);
  StatusCode sc = StatusCodeFromInt(static_cast<int32_t>(code));
  if (message.find("compacted") != std::string::npos) sc = StatusCode::kOutOfRange;
  if (sc == StatusCode::kOk) sc = StatusCode::kUnknown;
  return Status(sc, "etcd: " + message);
}

std::string Key64(std::string_view s) { return Base64Encode(s); }

json RangeRequest(std::string_view prefix) {
  json r;
  if (prefix.empty()) {
    r["key"] = Key64(std::string_view("\0", 1));
  } else {
    r["key"] = Key64(prefix);
  }
  r["range_end"] = Key64(PrefixRangeEnd(prefix));
  return r;
}

}  // namespace

std::string PrefixRangeEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& c = reinterpret_cast<unsigned char&>(end.back());
    if (c < 0xff) {
      ++c;
      return end;
    }
    end.pop_back();
  }
  return std::string("\0", 1);
}

// ---------------------------------------------------------------- connect / call

Result<std::unique_ptr<EtcdStore>> EtcdStore::Connect(const std::string& endpoint,
                                                      const EtcdStoreOptions& options) {
  std::string ep = endpoint;
  if (ep.rfind("http://", 0) == 0) ep = ep.substr(7);
  size_t colon = ep.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == ep.size()) {
    return InvalidArgumentError("etcd: endpoint '" + endpoint + "' is not host:port");
  }
  char* end = nullptr;
  long port = std::strtol(ep.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535) {
    return InvalidArgumentError("etcd: endpoint '" + endpoint + "' has a bad port");
  }
  std::string host = ep.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::unique_ptr<EtcdStore> s(new EtcdStore(host, static_cast<uint16_t>(port), options));
  Result<RangeResult> probe = s->Range("\x01probe");
  if (!probe.ok()) return probe.status();
  return s;
}

EtcdStore::EtcdStore(std::string host, uint16_t port, const EtcdStoreOptions& options)
    : host_(std::move(host)), port_(port), options_(options) {}

EtcdStore::~EtcdStore() = default;

std::string EtcdStore::Describe() const {
  return "etcd (" + host_ + ":" + std::to_string(port_) + ")";
}

Result<std::string> EtcdStore::Call(const std::string& path, const std::string& json_body) {
  std::unique_ptr<transport::HttpClient> client;
  {
    MutexLock l(&mu_);
    if (!idle_.empty()) {
      client = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  const std::string where = "etcd " + host_ + ":" + std::to_string(port_) + path;
  if (!client) {
    Result<std::unique_ptr<transport::HttpClient>> c =
        transport::HttpClient::Connect(host_, port_, options_.connect_timeout);
    if (!c.ok()) return c.status().WithPrefix(where);
    client = std::move(c).value();
  }
  Result<transport::HttpClientResponse> r = client->Request(
      "POST", path, json_body, "application/json", options_.request_timeout);
  if (!r.ok()) return r.status().WithPrefix(where);
  {
    MutexLock l(&mu_);
    if (idle_.size() < options_.max_idle_connections) idle_.push_back(std::move(client));
  }
  if (r->status != 200) {
    Result<json> j = ParseJson(r->body);
    if (!j.ok()) {
      return Status(r->status == 503 ? StatusCode::kUnavailable : StatusCode::kUnknown,
                    where + ": HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 200));
    }
    return ErrorFromJson(*j, r->status);
  }
  return std::move(r->body);
}

// ---------------------------------------------------------------- kv

Result<int64_t> EtcdStore::Put(std::string_view key, std::string_view value, LeaseId lease) {
  json req = {{"key", Key64(key)}, {"value", Key64(value)}};
  if (lease != 0) req["lease"] = std::to_string(lease);
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/kv/put", req.dump()));
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(body));
  return Int(Field(j, "header"), "revision");
}

Result<std::optional<KeyValue>> EtcdStore::Get(std::string_view key) {
  json req = {{"key", Key64(key)}};
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/kv/range", req.dump()));
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(body));
  const json& kvs = Field(j, "kvs");
  if (!kvs.is_array() || kvs.empty()) return std::optional<KeyValue>();
  TERN_ASSIGN_OR_RETURN(KeyValue kv, ParseKv(kvs[0]));
  return std::optional<KeyValue>(std::move(kv));
}

Result<RangeResult> EtcdStore::Range(std::string_view prefix) {
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/kv/range", RangeRequest(prefix).dump()));
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(body));
  RangeResult r;
  r.revision = Int(Field(j, "header"), "revision");
  const json& kvs = Field(j, "kvs");
  if (kvs.is_array()) {
    for (const json& e : kvs) {
      TERN_ASSIGN_OR_RETURN(KeyValue kv, ParseKv(e));
      r.kvs.push_back(std::move(kv));
    }
  }
  return r;
}

Result<int64_t> EtcdStore::Delete(std::string_view key) {
  json req = {{"key", Key64(key)}};
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/kv/deleterange", req.dump()));
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(body));
  return Int(j, "deleted");
}

Result<ClusterStore::ApplyResult> EtcdStore::Apply(const std::vector<Compare>& compares,
                                                   const std::vector<Op>& ops) {
  json cmp = json::array();
  for (const Compare& c : compares) {
    cmp.push_back({{"key", Key64(c.key)},
                   {"result", "EQUAL"},
                   {"target", "MOD"},
                   {"mod_revision", std::to_string(c.mod_revision)}});
  }
  json success = json::array();
  for (const Op& op : ops) {
    switch (op.type) {
      case Op::Type::kPut: {
        json put = {{"key", Key64(op.key)}, {"value", Key64(op.value)}};
        if (op.lease != 0) put["lease"] = std::to_string(op.lease);
        success.push_back({{"request_put", put}});
        break;
      }
      case Op::Type::kDelete:
        success.push_back({{"request_delete_range", {{"key", Key64(op.key)}}}});
        break;
      case Op::Type::kDeletePrefix:
        success.push_back({{"request_delete_range", RangeRequest(op.key)}});
        break;
    }
  }
  json req = {{"compare", cmp}, {"success", success}};
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/kv/txn", req.dump()));
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(body));
  return ApplyResult{Bool(j, "succeeded"), Int(Field(j, "header"), "revision")};
}

// ---------------------------------------------------------------- leases

Result<LeaseId> EtcdStore::GrantLease(std::chrono::milliseconds ttl) {
  if (ttl.count() <= 0) return InvalidArgumentError("etcd: lease TTL must be > 0");
  const int64_t seconds = std::max<int64_t>(1, (ttl.count() + 999) / 1000);
  json req = {{"TTL", std::to_string(seconds)}};
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/lease/grant", req.dump()));
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(body));
  if (Field(j, "error").is_string() && !Field(j, "error").get<std::string>().empty()) {
    return UnavailableError("etcd: lease grant: " + Field(j, "error").get<std::string>());
  }
  const LeaseId id = Int(j, "ID");
  if (id == 0) return DataLossError("etcd: lease grant returned no ID");
  if (Int(j, "TTL") != seconds) {
    TERN_LOG(DEBUG) << "etcd granted lease " << id << " a TTL of " << Int(j, "TTL")
                    << " s (asked for " << seconds << " s)";
  }
  return id;
}

Status EtcdStore::KeepAlive(LeaseId lease) {
  json req = {{"ID", std::to_string(lease)}};
  TERN_ASSIGN_OR_RETURN(std::string body, Call("/v3/lease/keepalive", req.dump()));
  // A stream of responses; we sent one request, so the first line is ours.
  TERN_ASSIGN_OR_RETURN(json j, ParseJson(std::string_view(body).substr(0, body.find('\n'))));
  if (!Field(j, "error").is_null()) return ErrorFromJson(j, 200);
  if (Int(Field(j, "result"), "TTL") <= 0) {
    return NotFoundError("etcd: lease " + std::to_string(lease) + " not found");
  }
  return Status::Ok();
}

Status EtcdStore::Revoke(LeaseId lease) {
  json req = {{"ID", std::to_string(lease)}};
  Result<std::string> body = Call("/v3/lease/revoke", req.dump());
  return body.ok() ? Status::Ok() : body.status();
}

Status EtcdStore::CompactForTest(int64_t revision) {
  json req = {{"revision", std::to_string(revision)}, {"physical", true}};
  Result<std::string> body = Call("/v3/kv/compaction", req.dump());
  return body.ok() ? Status::Ok() : body.status();
}

// ---------------------------------------------------------------- watch

namespace {

// Reads one HTTP response with a chunked (or close-delimited) body from a socket and
// hands out the body's newline-separated JSON messages as they arrive. Reads can be
// interrupted through `wake_fd`.
class StreamReader {
 public:
  StreamReader(int fd, int wake_fd) : fd_(fd), wake_fd_(wake_fd) {}

  // Reads the status line and headers. kUnavailable on a closed stream or non-200.
  Status ReadHead(int64_t deadline) {
    for (;;) {
      size_t end = in_.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = in_.substr(0, end);
        in_.erase(0, end + 4);
        if (head.compare(0, 9, "HTTP/1.1 ") != 0 && head.compare(0, 9, "HTTP/1.0 ") != 0) {
          return DataLossError("etcd watch: malformed response");
        }
        if (head.compare(9, 3, "200") != 0) {
          return UnavailableError("etcd watch: HTTP " + head.substr(9, 3));
        }
        std::string lower = head;
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        chunked_ = lower.find("transfer-encoding: chunked") != std::string::npos;
        return Status::Ok();
      }
      if (in_.size() > 64 * 1024) return DataLossError("etcd watch: response head too large");
      TERN_RETURN_IF_ERROR(Fill(deadline));
    }
  }

  // The next message (one line of the body); kUnavailable when the stream ends,
  // kCancelled when woken.
  Result<std::string> Next() {
    for (;;) {
      size_t nl = body_.find('\n');
      if (nl != std::string::npos) {
        std::string line = body_.substr(0, nl);
        body_.erase(0, nl + 1);
        return line;
      }
      TERN_RETURN_IF_ERROR(Decode());
    }
  }

 private:
  // Moves decoded body bytes from in_ to body_, reading more as needed.
  Status Decode() {
    if (!chunked_) {
      if (in_.empty()) TERN_RETURN_IF_ERROR(Fill(0));
      body_.append(in_);
      in_.clear();
      return Status::Ok();
    }
    for (;;) {
      if (chunk_left_ > 0) {
        if (in_.empty()) TERN_RETURN_IF_ERROR(Fill(0));
        size_t take = std::min(chunk_left_, in_.size());
        body_.append(in_, 0, take);
        in_.erase(0, take);
        chunk_left_ -= take;
        if (chunk_left_ == 0) need_crlf_ = true;
        return Status::Ok();
      }
      if (need_crlf_) {
        while (in_.size() < 2) TERN_RETURN_IF_ERROR(Fill(0));
        in_.erase(0, 2);
        need_crlf_ = false;
      }
      size_t eol = in_.find("\r\n");
      if (eol == std::string::npos) {
        if (in_.size() > 64) return DataLossError("etcd watch: malformed chunk size");
        TERN_RETURN_IF_ERROR(Fill(0));
        continue;
      }
      char* end = nullptr;
      unsigned long n = std::strtoul(in_.c_str(), &end, 16);
      in_.erase(0, eol + 2);
      if (n == 0) return UnavailableError("etcd watch: stream ended");
      chunk_left_ = n;
    }
  }

  Status Fill(int64_t deadline) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    for (;;) {
      int wait_ms = -1;
      if (deadline > 0) {
        int64_t left = (deadline - MonoNanos()) / 1'000'000;
        if (left <= 0) return DeadlineExceededError("etcd watch: no response in time");
        wait_ms = static_cast<int>(std::min<int64_t>(left, 60'000));
      }
      int r = ::poll(p, 2, wait_ms);
      if (r < 0 && errno != EINTR) return ErrnoError("etcd watch: poll", errno);
      if (r <= 0) continue;
      if (p[1].revents != 0) return Status(StatusCode::kCancelled, "etcd watch: cancelled");
      char buf[16384];
      ssize_t n = ::read(fd_, buf, sizeof(buf));
      if (n == 0) return UnavailableError("etcd watch: connection closed");
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return ErrnoError("etcd watch: read", errno);
      }
      in_.append(buf, static_cast<size_t>(n));
      return Status::Ok();
    }
  }

  const int fd_;
  const int wake_fd_;
  std::string in_;
  std::string body_;
  bool chunked_ = false;
  size_t chunk_left_ = 0;
  bool need_crlf_ = false;
};

}  // namespace

// One watch: a thread that keeps a /v3/watch stream open and reopens it from the last
// delivered revision when it drops.
class EtcdStore::EtcdWatch final : public Watch {
 public:
  EtcdWatch(EtcdStore* store, std::string prefix, int64_t after, WatchCallback cb)
      : store_(store), prefix_(std::move(prefix)), last_rev_(after), cb_(std::move(cb)) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
      wake_read_ = p[0];
      wake_write_ = p[1];
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~EtcdWatch() override {
    stop_.store(true);
    char c = 1;
    ssize_t ignored = ::write(wake_write_, &c, 1);
    (void)ignored;
    thread_.join();
    ::close(wake_read_);
    ::close(wake_write_);
  }

 private:
  bool Sleep(std::chrono::milliseconds d) {  // false when stopped
    pollfd p{wake_read_, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(d.count()));
    return !stop_.load();
  }

  void Run() {
    int64_t down_since = 0;  // 0 = the stream is (or was last) up
    auto backoff = std::chrono::milliseconds(50);
    while (!stop_.load()) {
      bool created = false;
      Status s = Stream(&created);
      if (stop_.load()) return;
      if (s.code() == StatusCode::kOutOfRange || s.code() == StatusCode::kInternal) {
        cb_(s, {});
        return;
      }
      if (created) {
        down_since = 0;
        backoff = std::chrono::milliseconds(50);
      }
      const int64_t now = MonoNanos();
      if (down_since == 0) down_since = now;
      const int64_t limit =
          std::chrono::nanoseconds(store_->options_.watch_unavailable_timeout).count();
      if (now - down_since >= limit) {
        cb_(UnavailableError("etcd watch on '" + prefix_ + "': etcd unreachable for " +
                             std::to_string(limit / 1'000'000) + " ms (" + s.ToString() + ")"),
            {});
        return;
      }
      TERN_LOG(DEBUG) << "etcd watch on '" << prefix_ << "' reconnecting after: " << s;
      if (!Sleep(backoff)) return;
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
    }
  }

  // Opens the stream and delivers events until it fails. kOutOfRange (compacted) and
  // kInternal (cancelled by etcd) are final.
  Status Stream(bool* created) {
    const int64_t deadline = transport::DeadlineFromTimeout(store_->options_.request_timeout);
    TERN_ASSIGN_OR_RETURN(transport::UniqueFd fd,
                          transport::ConnectTcp(store_->host_, store_->port_,
                                                store_->options_.connect_timeout));
    json create = RangeRequest(prefix_);
    create["start_revision"] = std::to_string(last_rev_ + 1);
    const std::string body = json{{"create_request", create}}.dump();
    std::string req = "POST /v3/watch HTTP/1.1\r\nHost: " + store_->host_ + ":" +
                      std::to_string(store_->port_) +
                      "\r\nContent-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    TERN_RETURN_IF_ERROR(transport::WriteAll(fd.get(), req, deadline));
    StreamReader reader(fd.get(), wake_read_);
    TERN_RETURN_IF_ERROR(reader.ReadHead(deadline));
    for (;;) {
      TERN_ASSIGN_OR_RETURN(std::string line, reader.Next());
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      TERN_ASSIGN_OR_RETURN(json j, ParseJson(line));
      if (!Field(j, "error").is_null()) return ErrorFromJson(j, 200);
      const json& r = Field(j, "result");
      if (Bool(r, "created")) *created = true;
      if (Bool(r, "canceled")) {
        const int64_t compact = Int(r, "compact_revision");
        if (compact > 0) {
          return OutOfRangeError("etcd watch on '" + prefix_ + "': revision " +
                                 std::to_string(last_rev_ + 1) + " has been compacted (etcd keeps " +
                                 "revisions from " + std::to_string(compact) + ")");
        }
        std::string reason = Field(r, "cancel_reason").is_string()
                                 ? Field(r, "cancel_reason").get<std::string>()
                                 : "no reason given";
        // Cancelled by a server that is going away: try again.
        return UnavailableError("etcd watch cancelled: " + reason);
      }
      const json& events = Field(r, "events");
      if (!events.is_array() || events.empty()) continue;
      std::vector<WatchEvent> batch;
      for (const json& e : events) {
        WatchEvent we;
        const json& type = Field(e, "type");
        we.type = type.is_string() && type.get<std::string>() == "DELETE"
                      ? WatchEvent::Type::kDelete
                      : WatchEvent::Type::kPut;
        Result<KeyValue> kv = ParseKv(Field(e, "kv"));
        if (!kv.ok()) return InternalError(kv.status().ToString());
        we.kv = std::move(kv).value();
        if (we.kv.mod_revision <= last_rev_) continue;  // never repeat an event
        batch.push_back(std::move(we));
      }
      if (batch.empty()) continue;
      const int64_t rev = batch.back().kv.mod_revision;
      if (stop_.load()) return Status(StatusCode::kCancelled, "stopped");
      cb_(Status::Ok(), std::move(batch));
      last_rev_ = rev;
    }
  }

  EtcdStore* const store_;
  const std::string prefix_;
  int64_t last_rev_;  // watch thread only
  WatchCallback cb_;
  int wake_read_ = -1;
  int wake_write_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

Result<std::unique_ptr<Watch>> EtcdStore::WatchPrefix(std::string_view prefix,
                                                      int64_t after_revision,
                                                      WatchCallback callback) {
  if (after_revision < 0) return InvalidArgumentError("etcd: after_revision must be >= 0");
  if (!callback) return InvalidArgumentError("etcd: a watch needs a callback");
  // Resolves "from now" to a revision, and tells a compacted start revision up front.
  json req = RangeRequest(prefix);
  req["count_only"] = true;
  if (after_revision > 0) req["revision"] = std::to_string(after_revision + 1);
  Result<std::string> body = Call("/v3/kv/range", req.dump());
  if (!body.ok()) {
    if (body.status().code() == StatusCode::kOutOfRange &&
        body.status().message().find("compacted") != std::string_view::npos) {
      return OutOfRangeError("etcd: watch from revision " + std::to_string(after_revision + 1) +
                             ": " + std::string(body.status().message()));
    }
    // A future revision is fine for a watch; other errors are real.
    if (body.status().code() != StatusCode::kOutOfRange) return body.status();
  } else if (after_revision == 0) {
    TERN_ASSIGN_OR_RETURN(json j, ParseJson(*body));
    after_revision = Int(Field(j, "header"), "revision");
  }
  return std::unique_ptr<Watch>(
      new EtcdWatch(this, std::string(prefix), after_revision, std::move(callback)));
}

}  // namespace tern::store
