#include "controller/model.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace tern::controller {

using nlohmann::json;

namespace {

Result<json> ParseObject(std::string_view text, std::string_view what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return DataLossError(fmt::format("{}: not a JSON object", what));
  }
  return j;
}

// Reads optional field `key` of `j` into `out`, checking its type.
template <typename T>
Status Field(const json& j, const char* key, T* out, std::string_view what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  bool ok;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = it->is_string();
  } else if constexpr (std::is_same_v<T, bool>) {
    ok = it->is_boolean();
  } else if constexpr (std::is_same_v<T, double>) {
    ok = it->is_number();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    ok = it->is_array();
    if (ok) {
      for (const json& e : *it) ok = ok && e.is_string();
    }
  } else {
    ok = it->is_number_integer() || it->is_number_unsigned();
  }
  if (!ok) return DataLossError(fmt::format("{}: field '{}' has the wrong type", what, key));
  *out = it->get<T>();
  return Status::Ok();
}

Status Require(const json& j, const char* key, std::string_view what) {
  if (!j.contains(key) || !j[key].is_string() || j[key].get<std::string>().empty()) {
    return DataLossError(fmt::format("{}: field '{}' is missing", what, key));
  }
  return Status::Ok();
}

}  // namespace

std::string ToJson(const AgentRecord& r) {
  return json{{"device", r.device},   {"host", r.host},
              {"kind", r.kind},       {"boot", r.boot},
              {"admin", r.admin},     {"tcp", r.tcp},
              {"shm", r.shm},         {"cores", r.cores},
              {"speed", r.speed},     {"memory_bytes", r.memory_bytes},
              {"registered_unix_ms", r.registered_unix_ms}}
      .dump();
}

std::string ToJson(const ServiceRecord& r) {
  return json{{"name", r.name},
              {"manifest", r.manifest_yaml},
              {"module_hash", r.module_hash},
              {"replicas", r.replicas},
              {"devices", r.devices},
              {"memory_bytes", r.memory_bytes},
              {"created_unix_ms", r.created_unix_ms},
              {"placement", r.placement},
              {"stateful", r.stateful},
              {"checkpoint_ms", r.checkpoint_ms},
              {"durable", r.durable},
              {"durable_strict", r.durable_strict},
              {"slo_p99_us", r.slo_p99_us}}
      .dump();
}

std::string ToJson(const InstanceRecord& r) {
  return json{{"id", r.id},
              {"service", r.service},
              {"device", r.device},
              {"boot", r.boot},
              {"module_hash", r.module_hash}}
      .dump();
}

std::string ToJson(const CheckpointRecord& r) {
  json copies = json::array();
  for (const CheckpointRecord::Copy& c : r.copies) {
    copies.push_back({{"device", c.device}, {"unix_ms", c.unix_ms}, {"bytes", c.bytes}});
  }
  return json{{"id", r.id},         {"service", r.service}, {"device", r.device},
              {"source", r.source}, {"unix_ms", r.unix_ms}, {"bytes", r.bytes},
              {"durable", r.durable}, {"journal_seq", r.journal_seq},
              {"copies", copies}}
      .dump();
}

Result<CheckpointRecord> CheckpointFromJson(std::string_view text, std::string_view what) {
  TERN_ASSIGN_OR_RETURN(json j, ParseObject(text, what));
  CheckpointRecord r;
  TERN_RETURN_IF_ERROR(Require(j, "id", what));
  TERN_RETURN_IF_ERROR(Require(j, "device", what));
  TERN_RETURN_IF_ERROR(Field(j, "id", &r.id, what));
  TERN_RETURN_IF_ERROR(Field(j, "service", &r.service, what));
  TERN_RETURN_IF_ERROR(Field(j, "device", &r.device, what));
  TERN_RETURN_IF_ERROR(Field(j, "source", &r.source, what));
  TERN_RETURN_IF_ERROR(Field(j, "unix_ms", &r.unix_ms, what));
  TERN_RETURN_IF_ERROR(Field(j, "bytes", &r.bytes, what));
  TERN_RETURN_IF_ERROR(Field(j, "durable", &r.durable, what));
  TERN_RETURN_IF_ERROR(Field(j, "journal_seq", &r.journal_seq, what));
  if (j.contains("copies") && !j["copies"].is_null()) {
    if (!j["copies"].is_array()) {
      return DataLossError(fmt::format("{}: field 'copies' has the wrong type", what));
    }
    for (const json& c : j["copies"]) {
      if (!c.is_object()) return DataLossError(fmt::format("{}: a copy is not an object", what));
      CheckpointRecord::Copy copy;
      TERN_RETURN_IF_ERROR(Require(c, "device", what));
      TERN_RETURN_IF_ERROR(Field(c, "device", &copy.device, what));
      TERN_RETURN_IF_ERROR(Field(c, "unix_ms", &copy.unix_ms, what));
      TERN_RETURN_IF_ERROR(Field(c, "bytes", &copy.bytes, what));
      r.copies.push_back(std::move(copy));
    }
  }
  if (r.copies.empty()) r.copies.push_back({r.device, r.unix_ms, r.bytes});
  return r;
}

Result<AgentRecord> AgentFromJson(std::string_view text, std::string_view what) {
  TERN_ASSIGN_OR_RETURN(json j, ParseObject(text, what));
  AgentRecord r;
  TERN_RETURN_IF_ERROR(Require(j, "device", what));
  TERN_RETURN_IF_ERROR(Field(j, "device", &r.device, what));
  TERN_RETURN_IF_ERROR(Field(j, "host", &r.host, what));
  TERN_RETURN_IF_ERROR(Field(j, "kind", &r.kind, what));
  TERN_RETURN_IF_ERROR(Field(j, "boot", &r.boot, what));
  TERN_RETURN_IF_ERROR(Field(j, "admin", &r.admin, what));
  TERN_RETURN_IF_ERROR(Field(j, "tcp", &r.tcp, what));
  TERN_RETURN_IF_ERROR(Field(j, "shm", &r.shm, what));
  TERN_RETURN_IF_ERROR(Field(j, "cores", &r.cores, what));
  TERN_RETURN_IF_ERROR(Field(j, "speed", &r.speed, what));
  TERN_RETURN_IF_ERROR(Field(j, "memory_bytes", &r.memory_bytes, what));
  TERN_RETURN_IF_ERROR(Field(j, "registered_unix_ms", &r.registered_unix_ms, what));
  if (r.host.empty()) r.host = r.device;
  return r;
}

Result<ServiceRecord> ServiceFromJson(std::string_view text, std::string_view what) {
  TERN_ASSIGN_OR_RETURN(json j, ParseObject(text, what));
  ServiceRecord r;
  TERN_RETURN_IF_ERROR(Require(j, "name", what));
  TERN_RETURN_IF_ERROR(Require(j, "manifest", what));
  TERN_RETURN_IF_ERROR(Require(j, "module_hash", what));
  TERN_RETURN_IF_ERROR(Field(j, "name", &r.name, what));
  TERN_RETURN_IF_ERROR(Field(j, "manifest", &r.manifest_yaml, what));
  TERN_RETURN_IF_ERROR(Field(j, "module_hash", &r.module_hash, what));
  TERN_RETURN_IF_ERROR(Field(j, "replicas", &r.replicas, what));
  TERN_RETURN_IF_ERROR(Field(j, "devices", &r.devices, what));
  TERN_RETURN_IF_ERROR(Field(j, "memory_bytes", &r.memory_bytes, what));
  TERN_RETURN_IF_ERROR(Field(j, "created_unix_ms", &r.created_unix_ms, what));
  TERN_RETURN_IF_ERROR(Field(j, "placement", &r.placement, what));
  TERN_RETURN_IF_ERROR(Field(j, "stateful", &r.stateful, what));
  TERN_RETURN_IF_ERROR(Field(j, "checkpoint_ms", &r.checkpoint_ms, what));
  TERN_RETURN_IF_ERROR(Field(j, "durable", &r.durable, what));
  TERN_RETURN_IF_ERROR(Field(j, "durable_strict", &r.durable_strict, what));
  TERN_RETURN_IF_ERROR(Field(j, "slo_p99_us", &r.slo_p99_us, what));
  return r;
}

Result<InstanceRecord> InstanceFromJson(std::string_view text, std::string_view what) {
  TERN_ASSIGN_OR_RETURN(json j, ParseObject(text, what));
  InstanceRecord r;
  TERN_RETURN_IF_ERROR(Require(j, "id", what));
  TERN_RETURN_IF_ERROR(Require(j, "service", what));
  TERN_RETURN_IF_ERROR(Require(j, "device", what));
  TERN_RETURN_IF_ERROR(Field(j, "id", &r.id, what));
  TERN_RETURN_IF_ERROR(Field(j, "service", &r.service, what));
  TERN_RETURN_IF_ERROR(Field(j, "device", &r.device, what));
  TERN_RETURN_IF_ERROR(Field(j, "boot", &r.boot, what));
  TERN_RETURN_IF_ERROR(Field(j, "module_hash", &r.module_hash, what));
  return r;
}

std::string_view KeyName(std::string_view key) {
  size_t slash = key.rfind('/');
  return slash == std::string_view::npos ? key : key.substr(slash + 1);
}

}  // namespace tern::controller
