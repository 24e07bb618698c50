// The conventions of tern's HTTP/JSON APIs (agent admin API, controller, gateway),
// shared by their servers and clients: an error is a non-2xx answer with the body
//   {"error": {"code": "not_found", "code_number": 5, "message": "..."}}
// and its HTTP status from HttpStatusForCode().
//
// JsonApiClient: a blocking client of such an API at one "host:port" that turns error
// answers back into the Status they carry.
//
// The end-to-end ids of an invoke (docs/formats/frame.md) travel in the headers
//   X-Tern-Trace-Id: 1-16 hex digits (answers carry the one used, 16 digits)
//   Idempotency-Key: a u64, decimal or hex after 0x
// of the invoke endpoints of the gateway and the agent's admin API.
//
// Thread-safety: the functions are stateless; JsonApiClient is not thread-safe (one per
// thread). Ownership: JsonApiClient owns its connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"
#include "transport/http.h"

namespace tern::transport {

// The error body for `s`.
std::string ErrorToJson(const Status& s);
// The JSON error response for `s` (which should not be OK).
HttpResponse ErrorResponse(const Status& s);
// The Status an error answer carries; a body that is not an error document becomes
// kUnknown quoting `who`, the status and the start of the body.
Status StatusFromErrorBody(int http_status, std::string_view body, std::string_view who);

inline constexpr char kTraceIdHeader[] = "X-Tern-Trace-Id";
inline constexpr char kIdempotencyKeyHeader[] = "Idempotency-Key";

struct CallIds {
  uint64_t trace_id = 0;
  uint64_t idempotency_key = 0;  // 0 = none
};
// The ids of an invoke request: its X-Tern-Trace-Id, or a fresh random trace id when it
// has none; its Idempotency-Key, or 0. A malformed header is kInvalidArgument, naming
// the header (the caller answers 400).
Result<CallIds> CallIdsFromHeaders(const HttpRequest& req);

class JsonApiClient {
 public:
  // `address` is "host:port"; connects now. `who` names the server in errors
  // ("controller", "agent").
  static Result<std::unique_ptr<JsonApiClient>> Connect(const std::string& address,
                                                        std::string who,
                                                        std::chrono::milliseconds timeout);
  JsonApiClient(const JsonApiClient&) = delete;
  JsonApiClient& operator=(const JsonApiClient&) = delete;

  // Sends one request; a 2xx answer's body, or the Status of an error answer, or the
  // transport's error (kUnavailable, kDeadlineExceeded).
  Result<std::string> Call(std::string_view method, std::string_view target,
                           std::string_view body = {},
                           std::chrono::nanoseconds timeout = std::chrono::seconds(60));
  // The whole answer (any HTTP status), for callers that look at headers or codes.
  Result<HttpClientResponse> Raw(std::string_view method, std::string_view target,
                                 std::string_view body = {},
                                 std::chrono::nanoseconds timeout = std::chrono::seconds(60));
  const std::string& address() const { return address_; }

 private:
  JsonApiClient(std::string address, std::string who, std::unique_ptr<HttpClient> http)
      : address_(std::move(address)), who_(std::move(who)), http_(std::move(http)) {}
  const std::string address_;
  const std::string who_;
  std::unique_ptr<HttpClient> http_;
};

}  // namespace tern::transport
