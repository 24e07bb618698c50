#include "dataplane/location.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "core/file.h"
#include "core/ids.h"

namespace tern::dataplane {

// ---------------------------------------------------------------------------------------
// LocationTable

namespace {

std::string Describe(const InstanceLocation& l) {
  return fmt::format("service={} agent={} host={} tcp={} shm={}", l.service, l.agent, l.host,
                     l.tcp.empty() ? "-" : l.tcp, l.shm.empty() ? "-" : l.shm);
}

}  // namespace

Result<bool> LocationTable::Upsert(const InstanceLocation& loc) {
  if (loc.instance.empty()) return InvalidArgumentError("location: instance id is empty");
  if (loc.service.empty()) {
    return InvalidArgumentError(fmt::format("location of {}: service is empty", loc.instance));
  }
  MutexLock lock(&mu_);
  if (auto ts = tombstones_.find(loc.instance); ts != tombstones_.end()) {
    if (loc.epoch <= ts->second) return false;  // removed at a later (or this) epoch
    tombstones_.erase(ts);
  }
  auto it = service_of_.find(loc.instance);
  if (it == service_of_.end()) {
    by_service_[loc.service][loc.instance] = loc;
    service_of_[loc.instance] = loc.service;
    Bump();
    return true;
  }
  InstanceLocation& cur = by_service_[it->second][loc.instance];
  if (loc.epoch < cur.epoch) return false;
  if (loc.epoch == cur.epoch) {
    if (loc == cur) return true;
    return FailedPreconditionError(
        fmt::format("two different locations for instance {} at epoch {}: stored [{}], new [{}]",
                    loc.instance, loc.epoch, Describe(cur), Describe(loc)));
  }
  if (cur.service == loc.service) {
    cur = loc;
  } else {
    Erase(loc.instance);
    by_service_[loc.service][loc.instance] = loc;
    service_of_[loc.instance] = loc.service;
  }
  Bump();
  return true;
}

void LocationTable::Erase(const std::string& instance) {
  auto it = service_of_.find(instance);
  if (it == service_of_.end()) return;
  auto svc = by_service_.find(it->second);
  if (svc != by_service_.end()) {
    svc->second.erase(instance);
    if (svc->second.empty()) by_service_.erase(svc);
  }
  service_of_.erase(it);
}

Status LocationTable::Remove(const std::string& instance, uint64_t epoch) {
  MutexLock lock(&mu_);
  auto it = service_of_.find(instance);
  if (it == service_of_.end()) {
    return NotFoundError(fmt::format("instance {} is not in the location table", instance));
  }
  const uint64_t stored = by_service_[it->second][instance].epoch;
  if (epoch < stored) {
    return FailedPreconditionError(
        fmt::format("remove of instance {} at epoch {} refused: the table holds epoch {}", instance,
                    epoch, stored));
  }
  Erase(instance);
  tombstones_[instance] = epoch;
  tombstone_order_.push_back(instance);
  while (tombstone_order_.size() > kMaxTombstones) {
    // The name may have been re-added and removed since; dropping its (newer) tombstone a
    // little early only weakens stale-update filtering, never correctness of the content.
    tombstones_.erase(tombstone_order_.front());
    tombstone_order_.pop_front();
  }
  Bump();
  return Status::Ok();
}

void LocationTable::Replace(std::vector<InstanceLocation> all) {
  MutexLock lock(&mu_);
  by_service_.clear();
  service_of_.clear();
  tombstones_.clear();
  tombstone_order_.clear();
  for (InstanceLocation& loc : all) {
    auto it = service_of_.find(loc.instance);
    if (it != service_of_.end()) {
      if (by_service_[it->second][loc.instance].epoch > loc.epoch) continue;
      Erase(loc.instance);
    }
    service_of_[loc.instance] = loc.service;
    std::string service = loc.service;
    std::string instance = loc.instance;
    by_service_[service][instance] = std::move(loc);
  }
  Bump();
}

std::vector<InstanceLocation> LocationTable::Lookup(const std::string& service) const {
  std::vector<InstanceLocation> out;
  MutexLock lock(&mu_);
  auto it = by_service_.find(service);
  if (it == by_service_.end()) return out;
  out.reserve(it->second.size());
  for (const auto& [instance, loc] : it->second) out.push_back(loc);
  return out;
}

std::optional<InstanceLocation> LocationTable::Find(const std::string& instance) const {
  MutexLock lock(&mu_);
  auto it = service_of_.find(instance);
  if (it == service_of_.end()) return std::nullopt;
  return by_service_.at(it->second).at(instance);
}

std::vector<InstanceLocation> LocationTable::All() const {
  std::vector<InstanceLocation> out;
  MutexLock lock(&mu_);
  out.reserve(service_of_.size());
  for (const auto& [service, instances] : by_service_) {
    for (const auto& [instance, loc] : instances) out.push_back(loc);
  }
  return out;
}

size_t LocationTable::size() const {
  MutexLock lock(&mu_);
  return service_of_.size();
}

// ---------------------------------------------------------------------------------------
// Parsing: YAML and JSON are read into RawEntry lists, then validated by one set of rules.

namespace {

constexpr const char* kFieldNames[] = {"instance", "service", "agent", "host",
                                       "tcp",      "shm",     "epoch"};
constexpr const char* kExpectedFields = "instance, service, agent, host, tcp, shm, epoch";
// sun_path holds 108 bytes including the terminating NUL.
constexpr size_t kMaxUnixPath = 107;

struct RawValue {
  enum class Kind { kScalar, kString, kInteger, kOther };
  Kind kind = Kind::kOther;
  std::string text;  // the scalar/string/integer as text; for kOther a description
  int line = 0;      // YAML line (1-based), 0 for JSON
};

struct RawEntry {
  int line = 0;  // YAML line of the entry, 0 for JSON
  std::vector<std::pair<std::string, RawValue>> fields;
};

// "origin:LINE: locations[I]" or "locations[I]": the start of an error message.
using WhereFn = std::function<std::string(size_t index, int line)>;

Status FieldError(const WhereFn& where, size_t index, int line, std::string_view field,
                  std::string_view what) {
  return InvalidArgumentError(fmt::format("{}: field '{}': {}", where(index, line), field, what));
}

Result<std::string> GetString(const WhereFn& where, size_t index, const std::string& field,
                              const RawValue& v) {
  if (v.kind == RawValue::Kind::kScalar || v.kind == RawValue::Kind::kString) return v.text;
  return FieldError(where, index, v.line, field, fmt::format("expected a string, got {}", v.text));
}

Status CheckName(const WhereFn& where, size_t index, const std::string& field, const RawValue& v,
                 const std::string& name) {
  if (IsValidName(name)) return Status::Ok();
  return FieldError(where, index, v.line, field,
                    fmt::format("'{}' is not a valid name ([a-z0-9._-], 1-63 characters, "
                                "starting with a letter or digit)",
                                name));
}

Result<InstanceLocation> BuildEntry(const RawEntry& e, size_t index, const WhereFn& where,
                                    std::string_view local_agent) {
  InstanceLocation loc;
  std::set<std::string> seen;
  bool has_host = false;
  for (const auto& [key, v] : e.fields) {
    bool known = false;
    for (const char* f : kFieldNames) known = known || key == f;
    if (!known) {
      return FieldError(where, index, v.line, key,
                        fmt::format("unknown field (expected one of: {})", kExpectedFields));
    }
    if (!seen.insert(key).second) return FieldError(where, index, v.line, key, "is given twice");
    if (key == "epoch") {
      if (v.kind != RawValue::Kind::kScalar && v.kind != RawValue::Kind::kInteger) {
        const std::string got =
            v.kind == RawValue::Kind::kString ? fmt::format("the string \"{}\"", v.text) : v.text;
        return FieldError(where, index, v.line, key,
                          fmt::format("expected an integer >= 1, got {}", got));
      }
      uint64_t epoch = 0;
      const char* b = v.text.data();
      const char* end = b + v.text.size();
      auto [p, ec] = std::from_chars(b, end, epoch);
      if (v.text.empty() || ec != std::errc() || p != end || epoch == 0 || v.text[0] == '+') {
        return FieldError(where, index, v.line, key,
                          fmt::format("expected an integer >= 1, got '{}'", v.text));
      }
      loc.epoch = epoch;
      continue;
    }
    TERN_ASSIGN_OR_RETURN(std::string s, GetString(where, index, key, v));
    if (key == "instance") {
      TERN_RETURN_IF_ERROR(CheckName(where, index, key, v, s));
      loc.instance = std::move(s);
    } else if (key == "service") {
      TERN_RETURN_IF_ERROR(CheckName(where, index, key, v, s));
      loc.service = std::move(s);
    } else if (key == "agent") {
      TERN_RETURN_IF_ERROR(CheckName(where, index, key, v, s));
      loc.agent = std::move(s);
    } else if (key == "host") {
      TERN_RETURN_IF_ERROR(CheckName(where, index, key, v, s));
      loc.host = std::move(s);
      has_host = true;
    } else if (key == "tcp") {
      if (!s.empty()) {
        std::string h;
        uint16_t port = 0;
        Status st = ParseHostPort(s, &h, &port);
        if (!st.ok()) return FieldError(where, index, v.line, key, st.message());
      }
      loc.tcp = std::move(s);
    } else if (key == "shm") {
      if (!s.empty()) {
        if (s[0] != '/' && s[0] != '@') {
          return FieldError(
              where, index, v.line, key,
              fmt::format("'{}' is not an absolute socket path (or @abstract name)", s));
        }
        if (s.size() > kMaxUnixPath) {
          return FieldError(
              where, index, v.line, key,
              fmt::format("socket path is {} bytes long, the limit is {}", s.size(), kMaxUnixPath));
        }
        for (unsigned char c : s) {
          if (c <= 0x20 || c > 0x7e) {
            return FieldError(where, index, v.line, key,
                              fmt::format("socket path must be printable ASCII without spaces "
                                          "(byte 0x{:02x} is not)",
                                          c));
          }
        }
      }
      loc.shm = std::move(s);
    }
  }
  for (const char* required : {"instance", "service", "agent"}) {
    if (!seen.count(required)) {
      return FieldError(where, index, e.line, required, "is missing");
    }
  }
  if (!has_host) loc.host = loc.agent;
  if (loc.tcp.empty() && loc.shm.empty() && (local_agent.empty() || loc.agent != local_agent)) {
    return FieldError(
        where, index, e.line, "tcp",
        fmt::format("instance {} on agent {} has neither a tcp nor a shm address (only "
                    "instances of the local agent{} may omit both)",
                    loc.instance, loc.agent,
                    local_agent.empty() ? "" : fmt::format(", {},", local_agent)));
  }
  return loc;
}

Result<std::vector<InstanceLocation>> BuildAll(const std::vector<RawEntry>& entries,
                                               const WhereFn& where, std::string_view local_agent) {
  std::vector<InstanceLocation> out;
  out.reserve(entries.size());
  std::unordered_map<std::string, size_t> first_index;
  for (size_t i = 0; i < entries.size(); ++i) {
    TERN_ASSIGN_OR_RETURN(InstanceLocation loc, BuildEntry(entries[i], i, where, local_agent));
    auto [it, inserted] = first_index.emplace(loc.instance, i);
    if (!inserted) {
      int line = entries[i].line;
      for (const auto& [key, v] : entries[i].fields) {
        if (key == "instance") line = v.line;
      }
      return FieldError(
          where, i, line, "instance",
          fmt::format("'{}' is listed twice (first at locations[{}])", loc.instance, it->second));
    }
    out.push_back(std::move(loc));
  }
  return out;
}

// --- YAML

RawValue YamlValue(const YAML::Node& n) {
  RawValue v;
  v.line = n.Mark().line + 1;
  if (n.IsScalar()) {
    v.kind = RawValue::Kind::kScalar;
    v.text = n.Scalar();
  } else if (n.IsNull()) {
    v.text = "nothing";
  } else if (n.IsSequence()) {
    v.text = "a list";
  } else {
    v.text = "a mapping";
  }
  return v;
}

}  // namespace

Result<std::vector<InstanceLocation>> ParseLocationsYaml(std::string_view text,
                                                         std::string_view origin,
                                                         std::string_view local_agent) {
  const std::string src(origin);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(fmt::format("{}:{}:{}: YAML syntax error: {}", src, e.mark.line + 1,
                                            e.mark.column + 1, e.msg));
  }
  if (root.IsNull()) return std::vector<InstanceLocation>{};
  if (!root.IsMap()) {
    return InvalidArgumentError(src + ": expected a mapping with a 'locations' list");
  }
  YAML::Node list;
  bool has_list = false;
  for (const auto& kv : root) {
    const int line = kv.first.Mark().line + 1;
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "?";
    if (key != "locations") {
      return InvalidArgumentError(
          fmt::format("{}:{}: unknown field '{}' (expected: locations)", src, line, key));
    }
    if (has_list) {
      return InvalidArgumentError(
          fmt::format("{}:{}: field 'locations' is given twice", src, line));
    }
    has_list = true;
    list = kv.second;
  }
  if (list.IsNull()) return std::vector<InstanceLocation>{};
  if (!list.IsSequence()) {
    return InvalidArgumentError(
        fmt::format("{}:{}: field 'locations': expected a list", src, list.Mark().line + 1));
  }
  std::vector<RawEntry> entries;
  for (const YAML::Node& item : list) {
    RawEntry e;
    e.line = item.Mark().line + 1;
    if (!item.IsMap()) {
      return InvalidArgumentError(
          fmt::format("{}:{}: locations[{}]: expected a mapping (instance: ..., service: ...)", src,
                      e.line, entries.size()));
    }
    for (const auto& kv : item) {
      RawValue v = YamlValue(kv.second);
      if (v.kind == RawValue::Kind::kOther && v.text == "nothing") {
        v.line = kv.first.Mark().line + 1;  // a null value has no position of its own
      }
      std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "?";
      if (!kv.first.IsScalar()) v.line = kv.first.Mark().line + 1;
      e.fields.emplace_back(std::move(key), std::move(v));
    }
    entries.push_back(std::move(e));
  }
  WhereFn where = [&src](size_t index, int line) {
    return fmt::format("{}:{}: locations[{}]", src, line, index);
  };
  return BuildAll(entries, where, local_agent);
}

Result<std::vector<InstanceLocation>> LoadLocationsFile(const std::string& path,
                                                        std::string_view local_agent) {
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseLocationsYaml(text, path, local_agent);
}

// --- JSON

namespace {

using nlohmann::json;

RawValue JsonValue(const json& j) {
  RawValue v;
  if (j.is_string()) {
    v.kind = RawValue::Kind::kString;
    v.text = j.get<std::string>();
  } else if (j.is_number_unsigned() || j.is_number_integer()) {
    v.kind = RawValue::Kind::kInteger;
    v.text = j.dump();
  } else if (j.is_number_float()) {
    v.text = "the number " + j.dump();
  } else if (j.is_boolean()) {
    v.text = j.dump();
  } else if (j.is_null()) {
    v.text = "null";
  } else if (j.is_array()) {
    v.text = "a list";
  } else {
    v.text = "an object";
  }
  return v;
}

}  // namespace

Result<std::vector<InstanceLocation>> ParseLocationsJson(std::string_view text,
                                                         std::string_view local_agent) {
  // nlohmann keeps the last of repeated keys silently; a parser callback catches them.
  std::vector<std::set<std::string>> open_objects;
  std::string repeated_key;
  json::parser_callback_t track_keys = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty() && parsed.is_string()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second && repeated_key.empty()) {
        repeated_key = parsed.get<std::string>();
      }
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text.begin(), text.end(), track_keys);
  } catch (const json::exception& e) {
    std::string_view what = e.what();
    if (size_t p = what.find("] "); p != std::string_view::npos) what.remove_prefix(p + 2);
    return InvalidArgumentError(fmt::format("locations JSON: {}", what));
  }
  if (!repeated_key.empty()) {
    return InvalidArgumentError(
        fmt::format("locations JSON: key '{}' is given twice in one object", repeated_key));
  }
  if (!root.is_object()) {
    return InvalidArgumentError("locations JSON: expected an object {\"locations\": [...]}");
  }
  for (const auto& [key, value] : root.items()) {
    if (key != "locations") {
      return InvalidArgumentError(
          fmt::format("locations JSON: unknown field '{}' (expected: locations)", key));
    }
  }
  std::vector<RawEntry> entries;
  auto list = root.find("locations");
  if (list != root.end() && !list->is_null()) {
    if (!list->is_array()) {
      return InvalidArgumentError("locations JSON: field 'locations': expected a list");
    }
    for (const json& item : *list) {
      if (!item.is_object()) {
        return InvalidArgumentError(
            fmt::format("locations[{}]: expected an object", entries.size()));
      }
      RawEntry e;
      for (const auto& [key, value] : item.items()) e.fields.emplace_back(key, JsonValue(value));
      entries.push_back(std::move(e));
    }
  }
  WhereFn where = [](size_t index, int /*line*/) { return fmt::format("locations[{}]", index); };
  return BuildAll(entries, where, local_agent);
}

std::string LocationsToJson(const std::vector<InstanceLocation>& locations) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const InstanceLocation& l : locations) {
    nlohmann::ordered_json o;
    o["instance"] = l.instance;
    o["service"] = l.service;
    o["agent"] = l.agent;
    o["host"] = l.host;
    if (!l.tcp.empty()) o["tcp"] = l.tcp;
    if (!l.shm.empty()) o["shm"] = l.shm;
    o["epoch"] = l.epoch;
    list.push_back(std::move(o));
  }
  nlohmann::ordered_json root;
  root["locations"] = std::move(list);
  // Replace invalid UTF-8 instead of throwing: our code does not throw.
  return root.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace tern::dataplane
