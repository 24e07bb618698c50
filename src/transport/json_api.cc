#include "transport/json_api.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/ids.h"

namespace tern::transport {

std::string ErrorToJson(const Status& s) {
  return nlohmann::json{{"error",
                         {{"code", std::string(StatusCodeName(s.code()))},
                          {"code_number", static_cast<int>(s.code())},
                          {"message", std::string(s.message())}}}}
      .dump();
}

HttpResponse ErrorResponse(const Status& s) {
  return HttpResponse::Json(HttpStatusForCode(s.code()), ErrorToJson(s));
}

Status StatusFromErrorBody(int http_status, std::string_view body, std::string_view who) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object()) {
    const auto& e = j["error"];
    int code = static_cast<int>(StatusCode::kUnknown);
    if (e.contains("code_number") && e["code_number"].is_number_integer()) {
      code = e["code_number"].get<int>();
    }
    std::string message = "(no message)";
    if (e.contains("message") && e["message"].is_string()) message = e["message"];
    return Status(StatusCodeFromInt(code), message);
  }
  return Status(StatusCode::kUnknown, fmt::format("{} answered HTTP {}: {}", who, http_status,
                                                  body.substr(0, 200)));
}

Result<CallIds> CallIdsFromHeaders(const HttpRequest& req) {
  CallIds ids;
  if (const std::string* t = req.FindHeader(kTraceIdHeader)) {
    TERN_ASSIGN_OR_RETURN(ids.trace_id, ParseTraceId(*t, kTraceIdHeader));
  } else {
    ids.trace_id = NewTraceId();
  }
  if (const std::string* k = req.FindHeader(kIdempotencyKeyHeader)) {
    TERN_ASSIGN_OR_RETURN(ids.idempotency_key, ParseIdempotencyKey(*k, kIdempotencyKeyHeader));
  }
  return ids;
}

Result<std::unique_ptr<JsonApiClient>> JsonApiClient::Connect(const std::string& address,
                                                              std::string who,
                                                              std::chrono::milliseconds timeout) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(address, &host, &port).WithPrefix(who + " address"));
  Result<std::unique_ptr<HttpClient>> http = HttpClient::Connect(host, port, timeout);
  if (!http.ok()) {
    return Status(http.status().code(),
                  fmt::format("cannot reach the {} at {}: {}", who, address,
                              http.status().message()));
  }
  return std::unique_ptr<JsonApiClient>(
      new JsonApiClient(address, std::move(who), std::move(*http)));
}

Result<HttpClientResponse> JsonApiClient::Raw(std::string_view method, std::string_view target,
                                              std::string_view body,
                                              std::chrono::nanoseconds timeout) {
  return http_->Request(method, target, body, body.empty() ? "" : "application/json", timeout);
}

Result<std::string> JsonApiClient::Call(std::string_view method, std::string_view target,
                                        std::string_view body, std::chrono::nanoseconds timeout) {
  Result<HttpClientResponse> r = Raw(method, target, body, timeout);
  if (!r.ok()) {
    return Status(r.status().code(), fmt::format("{} at {}: {}", who_, address_,
                                                 r.status().message()));
  }
  if (r->status < 200 || r->status > 299) return StatusFromErrorBody(r->status, r->body, who_);
  return std::move(r->body);
}

}  // namespace tern::transport
