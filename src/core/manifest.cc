#include "core/manifest.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>

#include "core/file.h"
#include "core/ids.h"

namespace tern {
namespace {

Status FieldError(const std::string& source, const YAML::Node& node, const std::string& field,
                  const std::string& what) {
  const YAML::Mark m = node.Mark();
  if (m.line >= 0) {
    return InvalidArgumentError(
        fmt::format("{}:{}: field '{}': {}", source, m.line + 1, field, what));
  }
  return InvalidArgumentError(fmt::format("{}: field '{}': {}", source, field, what));
}

Result<std::string> GetString(const std::string& src, const YAML::Node& n, const std::string& f) {
  if (!n.IsScalar()) return FieldError(src, n, f, "expected a string");
  return n.Scalar();
}

Result<uint32_t> GetUint(const std::string& src, const YAML::Node& n, const std::string& f,
                         uint32_t lo, uint32_t hi) {
  if (!n.IsScalar()) return FieldError(src, n, f, "expected an integer");
  const std::string& s = n.Scalar();
  if (s.empty() || s.size() > 10 || !std::all_of(s.begin(), s.end(), ::isdigit)) {
    return FieldError(src, n, f,
                      fmt::format("expected an integer in [{}, {}], got '{}'", lo, hi, s));
  }
  uint64_t v = std::stoull(s);
  if (v < lo || v > hi) {
    return FieldError(src, n, f, fmt::format("expected an integer in [{}, {}], got {}", lo, hi, v));
  }
  return static_cast<uint32_t>(v);
}

// A duration in ms with at most 3 decimals ("2.5", "0.25", "40"), as whole µs in
// [0, hi_us]: decimal text, so it round-trips exactly (no binary floating point).
Result<uint64_t> GetMillisAsMicros(const std::string& src, const YAML::Node& n,
                                   const std::string& f, uint64_t hi_us) {
  const std::string what = fmt::format(
      "expected milliseconds in [0, {}] with at most 3 decimals (e.g. 2.5)", hi_us / 1000);
  if (!n.IsScalar()) return FieldError(src, n, f, what);
  const std::string& s = n.Scalar();
  size_t dot = s.find('.');
  std::string whole = s.substr(0, dot);
  std::string frac = dot == std::string::npos ? "" : s.substr(dot + 1);
  auto digits = [](const std::string& x) {
    return std::all_of(x.begin(), x.end(), ::isdigit);
  };
  if (whole.empty() || whole.size() > 10 || !digits(whole) ||
      (dot != std::string::npos && (frac.empty() || frac.size() > 3 || !digits(frac)))) {
    return FieldError(src, n, f, fmt::format("{}, got '{}'", what, s));
  }
  frac.resize(3, '0');
  uint64_t us = std::stoull(whole) * 1000 + std::stoull(frac);
  if (us > hi_us) return FieldError(src, n, f, fmt::format("{}, got {}", what, s));
  return us;
}

// Printable ASCII only: versions and paths travel through YAML, JSON, logs and HTTP.
Status CheckPrintable(const std::string& src, const YAML::Node& n, const std::string& f,
                      const std::string& v) {
  for (unsigned char c : v) {
    if (c < 0x20 || c > 0x7e) {
      return FieldError(src, n, f, fmt::format("must be printable ASCII (byte 0x{:02x} is not)", c));
    }
  }
  return Status::Ok();
}

Result<bool> GetBool(const std::string& src, const YAML::Node& n, const std::string& f) {
  if (!n.IsScalar()) return FieldError(src, n, f, "expected true or false");
  const std::string& s = n.Scalar();
  if (s == "true" || s == "yes") return true;
  if (s == "false" || s == "no") return false;
  return FieldError(src, n, f, fmt::format("expected true or false, got '{}'", s));
}

Status ParseLimits(const std::string& src, const YAML::Node& n, ServiceLimits* out) {
  if (!n.IsMap()) return FieldError(src, n, "limits", "expected a mapping");
  std::set<std::string> keys_seen;
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar();
    if (!keys_seen.insert(key).second) return FieldError(src, kv.first, "limits." + key, "is given twice");
    const YAML::Node& v = kv.second;
    if (key == "memory_mib") {
      TERN_ASSIGN_OR_RETURN(out->memory_mib,
                            GetUint(src, v, "limits.memory_mib", 1, kMaxMemoryMib));
    } else if (key == "cpu_ms") {
      TERN_ASSIGN_OR_RETURN(out->cpu_ms, GetUint(src, v, "limits.cpu_ms", 1, kMaxCpuMs));
    } else if (key == "request_kib") {
      TERN_ASSIGN_OR_RETURN(out->request_kib,
                            GetUint(src, v, "limits.request_kib", 1, kMaxPayloadKib));
    } else if (key == "response_kib") {
      TERN_ASSIGN_OR_RETURN(out->response_kib,
                            GetUint(src, v, "limits.response_kib", 1, kMaxPayloadKib));
    } else {
      return FieldError(src, kv.first, "limits." + key,
                        "unknown field (expected memory_mib, cpu_ms, request_kib, response_kib)");
    }
  }
  return Status::Ok();
}

Result<Manifest> ParseNode(const YAML::Node& root, const std::string& src) {
  if (!root.IsMap()) {
    return InvalidArgumentError(src +
                                ": a manifest must be a YAML mapping (name: ..., version: ...)");
  }
  Manifest m;
  bool has_name = false, has_version = false, has_handlers = false;
  std::set<std::string> keys_seen;
  for (const auto& kv : root) {
    if (!kv.first.IsScalar()) return FieldError(src, kv.first, "?", "keys must be strings");
    const std::string key = kv.first.Scalar();
    if (!keys_seen.insert(key).second) return FieldError(src, kv.first, key, "is given twice");
    const YAML::Node& v = kv.second;
    if (key == "name") {
      TERN_ASSIGN_OR_RETURN(m.name, GetString(src, v, key));
      if (!IsValidName(m.name)) {
        return FieldError(src, v, key,
                          fmt::format("'{}' is not a valid name ([a-z0-9._-], 1-63 "
                                      "characters, starting with a letter or digit)",
                                      m.name));
      }
      has_name = true;
    } else if (key == "version") {
      TERN_ASSIGN_OR_RETURN(m.version, GetString(src, v, key));
      if (m.version.empty() || m.version.size() > 64) {
        return FieldError(src, v, key, "expected 1-64 characters");
      }
      TERN_RETURN_IF_ERROR(CheckPrintable(src, v, key, m.version));
      has_version = true;
    } else if (key == "module") {
      TERN_ASSIGN_OR_RETURN(m.module, GetString(src, v, key));
      if (m.module.size() > 4096) return FieldError(src, v, key, "longer than 4096 characters");
      TERN_RETURN_IF_ERROR(CheckPrintable(src, v, key, m.module));
    } else if (key == "stateful") {
      TERN_ASSIGN_OR_RETURN(m.stateful, GetBool(src, v, key));
    } else if (key == "checkpoint_ms") {
      TERN_ASSIGN_OR_RETURN(m.checkpoint_ms, GetUint(src, v, key, 0, kMaxCheckpointMs));
      if (m.checkpoint_ms != 0 && m.checkpoint_ms < kMinCheckpointMs) {
        return FieldError(src, v, key, fmt::format("0 (off) or at least {} ms", kMinCheckpointMs));
      }
    } else if (key == "durable") {
      if (v.IsScalar() && v.Scalar() == "strict") {
        m.durable = m.durable_strict = true;
      } else {
        Result<bool> b = GetBool(src, v, key);
        if (!b.ok()) {
          return FieldError(src, v, key,
                            fmt::format("expected true, false or strict, got '{}'",
                                        v.IsScalar() ? v.Scalar() : std::string("a non-scalar")));
        }
        m.durable = *b;
      }
    } else if (key == "slo_p99_ms") {
      TERN_ASSIGN_OR_RETURN(m.slo_p99_us, GetMillisAsMicros(src, v, key, kMaxSloP99Us));
    } else if (key == "tenant") {
      TERN_ASSIGN_OR_RETURN(m.tenant, GetString(src, v, key));
      if (!IsValidName(m.tenant)) return FieldError(src, v, key, "not a valid name");
    } else if (key == "replicas") {
      TERN_ASSIGN_OR_RETURN(m.replicas, GetUint(src, v, key, 1, 10000));
    } else if (key == "handlers") {
      if (!v.IsSequence() || v.size() == 0) {
        return FieldError(src, v, key, "expected a non-empty list of handler names, e.g. [handle]");
      }
      std::set<std::string> seen;
      for (const auto& h : v) {
        TERN_ASSIGN_OR_RETURN(std::string name, GetString(src, h, "handlers[]"));
        if (name.empty() || name.size() > 63 || ::isdigit(static_cast<unsigned char>(name[0])) ||
            name.find_first_not_of(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") !=
                std::string::npos) {
          return FieldError(src, h, "handlers[]",
                            fmt::format("'{}' is not a valid handler name", name));
        }
        if (name.rfind("tern_", 0) == 0 || name == "memory" || name == "_initialize" ||
            name == "_start") {
          return FieldError(src, h, "handlers[]",
                            fmt::format("'{}' is reserved by the runtime", name));
        }
        if (!seen.insert(name).second) {
          return FieldError(src, h, "handlers[]", fmt::format("'{}' is listed twice", name));
        }
        m.handlers.push_back(name);
      }
      has_handlers = true;
    } else if (key == "limits") {
      TERN_RETURN_IF_ERROR(ParseLimits(src, v, &m.limits));
    } else {
      return FieldError(src, kv.first, key,
                        "unknown field (expected name, version, module, stateful, checkpoint_ms, "
                        "durable, slo_p99_ms, handlers, tenant, replicas, limits)");
    }
  }
  if (!has_name) return InvalidArgumentError(src + ": required field 'name' is missing");
  if (!has_version) return InvalidArgumentError(src + ": required field 'version' is missing");
  if (!has_handlers) return InvalidArgumentError(src + ": required field 'handlers' is missing");
  if (m.checkpoint_ms != 0 && !m.stateful) {
    return InvalidArgumentError(
        src + ": 'checkpoint_ms' is for stateful services (add 'stateful: true')");
  }
  if (m.durable && !m.stateful) {
    return InvalidArgumentError(
        src + ": 'durable' is for stateful services: a stateless service has no state to "
              "lose (add 'stateful: true', or remove 'durable')");
  }
  // A durable service's journal is truncated after each base checkpoint: it needs them.
  if (m.durable && m.checkpoint_ms == 0) m.checkpoint_ms = kDurableCheckpointMs;
  return m;
}

}  // namespace

bool Manifest::HasHandler(const std::string& h) const {
  return std::find(handlers.begin(), handlers.end(), h) != handlers.end();
}

Result<Manifest> ParseManifest(const std::string& yaml_text, const std::string& source) {
  try {
    YAML::Node root = YAML::Load(yaml_text);
    return ParseNode(root, source);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(fmt::format("{}:{}:{}: YAML syntax error: {}", source,
                                            e.mark.line + 1, e.mark.column + 1, e.msg));
  }
}

Result<Manifest> LoadManifest(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseManifest(text, path);
}

std::string ManifestToYaml(const Manifest& m) {
  // yaml-cpp's emitter quotes and escapes whatever needs it, so any accepted manifest
  // round-trips (checked by tests/fuzz/manifest_fuzz.cc).
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << YAML::DoubleQuoted << m.name;
  out << YAML::Key << "version" << YAML::Value << YAML::DoubleQuoted << m.version;
  if (!m.module.empty()) out << YAML::Key << "module" << YAML::Value << YAML::DoubleQuoted << m.module;
  out << YAML::Key << "stateful" << YAML::Value << (m.stateful ? "true" : "false");
  if (m.checkpoint_ms != 0) out << YAML::Key << "checkpoint_ms" << YAML::Value << m.checkpoint_ms;
  if (m.durable) {
    out << YAML::Key << "durable" << YAML::Value << (m.durable_strict ? "strict" : "true");
  }
  if (m.slo_p99_us != 0) {
    std::string ms = fmt::format("{}.{:03}", m.slo_p99_us / 1000, m.slo_p99_us % 1000);
    while (ms.back() == '0') ms.pop_back();
    if (ms.back() == '.') ms.pop_back();
    out << YAML::Key << "slo_p99_ms" << YAML::Value << ms;
  }
  out << YAML::Key << "handlers" << YAML::Value << YAML::Flow << m.handlers;
  out << YAML::Key << "tenant" << YAML::Value << YAML::DoubleQuoted << m.tenant;
  out << YAML::Key << "replicas" << YAML::Value << m.replicas;
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "memory_mib" << YAML::Value << m.limits.memory_mib;
  out << YAML::Key << "cpu_ms" << YAML::Value << m.limits.cpu_ms;
  out << YAML::Key << "request_kib" << YAML::Value << m.limits.request_kib;
  out << YAML::Key << "response_kib" << YAML::Value << m.limits.response_kib;
  out << YAML::EndMap << YAML::EndMap;
  return std::string(out.c_str(), out.size()) + "\n";
}

}  // namespace tern
