#include "client/agent_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/base64.h"
#include "core/ids.h"
#include "transport/frame.h"
#include "transport/frame_client.h"
#include "transport/http.h"
#include "transport/json_api.h"

namespace tern::client {

AgentClient::AgentClient(std::string host, std::unique_ptr<transport::HttpClient> http,
                         std::chrono::milliseconds timeout)
    : host_(std::move(host)), http_(std::move(http)), timeout_(timeout) {}

AgentClient::~AgentClient() = default;

Result<std::unique_ptr<AgentClient>> AgentClient::Connect(const std::string& admin,
                                                          std::chrono::milliseconds timeout) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(admin, &host, &port));
  auto http = transport::HttpClient::Connect(host, port, timeout);
  if (!http.ok()) {
    return Status(http.status().code(),
                  fmt::format("cannot reach the agent's admin API at {} ({}); is `tern agent` "
                              "running? (--agent HOST:PORT or $TERN_AGENT)",
                              admin, http.status().message()));
  }
  return std::unique_ptr<AgentClient>(new AgentClient(host, std::move(*http), timeout));
}

Result<std::string> AgentClient::Admin(const std::string& method, const std::string& target,
                                       const std::string& body, const std::string& content_type) {
  TERN_ASSIGN_OR_RETURN(
      transport::HttpClientResponse r,
      http_->Request(method, target, body, content_type,
                     std::chrono::milliseconds(std::max<int64_t>(timeout_.count(), 60000))));
  if (r.status < 200 || r.status > 299) return transport::StatusFromErrorBody(r.status, r.body, "agent");
  return std::move(r.body);
}

Result<std::string> AgentClient::Info() { return Admin("GET", "/v1/info", "", ""); }

Status AgentClient::PutObject(const std::string& dataset, const std::string& key,
                              const std::string& bytes) {
  return Admin("PUT", "/v1/datasets/" + dataset + "/" + key, bytes, "application/octet-stream")
      .status();
}

Result<std::string> AgentClient::Datasets() { return Admin("GET", "/v1/datasets", "", ""); }

Result<std::string> AgentClient::ListDataset(const std::string& dataset) {
  return Admin("GET", "/v1/datasets/" + dataset, "", "");
}

Result<std::string> AgentClient::ReadObject(const std::string& dataset, const std::string& key,
                                            uint64_t offset, uint64_t len) {
  return Admin("GET", fmt::format("/v1/datasets/{}/{}?offset={}&len={}", dataset, key, offset, len),
               "", "");
}

Status AgentClient::RemoveObject(const std::string& dataset, const std::string& key) {
  return Admin("DELETE", "/v1/datasets/" + dataset + (key.empty() ? "" : "/" + key), "", "")
      .status();
}
Result<std::string> AgentClient::StatusJson() { return Admin("GET", "/v1/status", "", ""); }

Result<std::string> AgentClient::Locations() { return Admin("GET", "/v1/locations", "", ""); }

Result<std::string> AgentClient::SetLocations(const std::string& json, bool replace) {
  return Admin(replace ? "PUT" : "POST", "/v1/locations", json, "application/json");
}

Result<std::string> AgentClient::SetDatasetLocations(const std::string& json) {
  return Admin("PUT", "/v1/dataset-locations", json, "application/json");
}

Result<std::string> AgentClient::SetLinks(const std::string& json) {
  return Admin("PUT", "/v1/links", json, "application/json");
}

Result<std::string> AgentClient::Deploy(const std::string& manifest_yaml,
                                        const std::string& module_bytes, bool start_instances) {
  nlohmann::json j{{"manifest", manifest_yaml},
                   {"module_b64", Base64Encode(module_bytes)},
                   {"start", start_instances}};
  return Admin("POST", "/v1/services", j.dump(), "application/json");
}

Status AgentClient::Undeploy(const std::string& service) {
  return Admin("DELETE", "/v1/services/" + service, "", "").status();
}

Result<std::string> AgentClient::StartInstance(const std::string& service,
                                               const std::string& id) {
  std::string req = id.empty() ? std::string() : nlohmann::json{{"id", id}}.dump();
  TERN_ASSIGN_OR_RETURN(std::string body,
                        Admin("POST", "/v1/services/" + service + "/instances", req,
                              id.empty() ? "" : "application/json"));
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.contains("instance")) return InternalError("bad answer: " + body);
  return j["instance"].get<std::string>();
}

Status AgentClient::StopInstance(const std::string& instance) {
  return Admin("DELETE", "/v1/instances/" + instance, "", "").status();
}

Status AgentClient::SetKeepers(const std::string& instance,
                               const std::vector<std::pair<std::string, std::string>>& keepers) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [device, tcp] : keepers) list.push_back({{"device", device}, {"tcp", tcp}});
  return Admin("PUT", "/v1/instances/" + instance + "/keeper",
               nlohmann::json{{"keepers", list}}.dump(), "application/json")
      .status();
}

Result<std::string> AgentClient::JournalCheckpoint(const std::string& instance) {
  return Admin("POST", "/v1/instances/" + instance + "/checkpoint", "", "");
}

Result<std::string> AgentClient::ReadJournal(const std::string& instance, uint64_t after) {
  return Admin("GET", fmt::format("/v1/journals/{}?after={}", instance, after), "", "");
}

Status AgentClient::DropJournal(const std::string& instance) {
  return Admin("DELETE", "/v1/journals/" + instance, "", "").status();
}

Result<std::string> AgentClient::ReplayJournal(const std::string& instance, uint64_t base_seq,
                                               const std::string& records) {
  return Admin("POST", fmt::format("/v1/instances/{}/journal?base={}", instance, base_seq), records,
               "application/octet-stream");
}

Result<std::string> AgentClient::Snapshot(const std::string& instance) {
  return Admin("GET", "/v1/instances/" + instance + "/snapshot", "", "");
}

Status AgentClient::Restore(const std::string& instance, const std::string& snapshot_bytes) {
  return Admin("PUT", "/v1/instances/" + instance + "/snapshot", snapshot_bytes,
               "application/octet-stream")
      .status();
}

Result<transport::FrameClient*> AgentClient::Frames() {
  if (frames_ == nullptr || !frames_->error().ok()) {
    TERN_ASSIGN_OR_RETURN(std::string info, Info());
    nlohmann::json j = nlohmann::json::parse(info, nullptr, false);
    if (j.is_discarded() || !j.contains("frame_port") || !j["frame_port"].is_number_integer()) {
      return InternalError("agent info has no frame_port: " + info);
    }
    TERN_ASSIGN_OR_RETURN(
        frames_, transport::FrameClient::Connect(host_, j["frame_port"].get<uint16_t>(), timeout_));
  }
  return frames_.get();
}

Result<std::string> AgentClient::Invoke(const std::string& service, const std::string& handler,
                                        const std::string& payload,
                                        std::chrono::milliseconds timeout,
                                        const transport::CallIds& ids) {
  TERN_ASSIGN_OR_RETURN(transport::FrameClient * fc, Frames());
  transport::Frame f;
  f.type = transport::FrameType::kInvoke;
  f.trace_id = ids.trace_id;
  f.idempotency_key = ids.idempotency_key;
  f.service = service;
  f.handler = handler;
  f.payload = payload;
  // The agent drops the request unrun if it is still queued when we stop waiting.
  f.budget_us = static_cast<uint32_t>(
      std::min<int64_t>(std::chrono::microseconds(timeout).count(), UINT32_MAX));
  TERN_ASSIGN_OR_RETURN(transport::Frame reply, fc->Call(std::move(f), timeout));
  return std::move(reply.payload);
}

}  // namespace tern::client
