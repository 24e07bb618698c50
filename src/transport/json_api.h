// The conventions of tern's HTTP/JSON APIs (agent admin API, controller, gateway),
// shared by their servers and clients: an error is a non-2xx answer with the body
//   {"error": {"code": "not_found", "code_number": 5, "message": "..."}}
// and its HTTP status from HttpStatusForCode().
//
// JsonApiClient: a blocking client of such an API at one "host:port" that turns error
// answers back into the Status they carry.
//
// Thread-safety: the functions are stateless; JsonApiClient is not thread-safe (one per
// thread). Ownership: JsonApiClient owns its connection.
#pragma once

#include <chrono>
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
