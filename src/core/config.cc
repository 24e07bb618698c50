#include "core/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>

#include "core/file.h"

namespace tern {

Result<Config> Config::Parse(const std::string& yaml, const std::string& source,
                             const std::vector<std::string>& allowed_keys) {
  Config c;
  c.source_ = source;
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(fmt::format("{}:{}:{}: YAML syntax error: {}", source,
                                            e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (root.IsNull()) return c;  // an empty file: all defaults
  if (!root.IsMap())
    return InvalidArgumentError(source + ": expected a mapping of fields (key: value)");
  for (const auto& kv : root) {
    const int line = kv.first.Mark().line + 1;
    if (!kv.first.IsScalar()) {
      return InvalidArgumentError(fmt::format("{}:{}: keys must be plain names", source, line));
    }
    const std::string key = kv.first.Scalar();
    if (std::find(allowed_keys.begin(), allowed_keys.end(), key) == allowed_keys.end()) {
      std::string allowed;
      for (const auto& k : allowed_keys) allowed += (allowed.empty() ? "" : ", ") + k;
      return InvalidArgumentError(fmt::format("{}:{}: unknown field '{}' (expected one of: {})",
                                              source, line, key, allowed));
    }
    if (!kv.second.IsScalar()) {
      return InvalidArgumentError(fmt::format("{}:{}: field '{}': expected a single value", source,
                                              kv.second.Mark().line + 1, key));
    }
    if (c.values_.count(key)) {
      return InvalidArgumentError(
          fmt::format("{}:{}: field '{}' is given twice", source, line, key));
    }
    c.values_[key] = Value{kv.second.Scalar(), kv.second.Mark().line + 1};
  }
  return c;
}

Result<Config> Config::Load(const std::string& path, const std::vector<std::string>& allowed_keys) {
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return Parse(text, path, allowed_keys);
}

Status Config::Error(const std::string& key, const std::string& what) const {
  auto it = values_.find(key);
  int line = it == values_.end() ? 0 : it->second.line;
  return InvalidArgumentError(fmt::format("{}:{}: field '{}': {}", source_, line, key, what));
}

Result<std::string> Config::String(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return NotFoundError(fmt::format("{}: no field '{}'", source_, key));
  return it->second.text;
}

Result<int64_t> Config::Int(const std::string& key, int64_t lo, int64_t hi) const {
  TERN_ASSIGN_OR_RETURN(std::string s, String(key));
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    return Error(key, fmt::format("expected an integer in [{}, {}], got '{}'", lo, hi, s));
  }
  return static_cast<int64_t>(v);
}

Result<bool> Config::Bool(const std::string& key) const {
  TERN_ASSIGN_OR_RETURN(std::string s, String(key));
  if (s == "true" || s == "yes") return true;
  if (s == "false" || s == "no") return false;
  return Error(key, fmt::format("expected true or false, got '{}'", s));
}

}  // namespace tern
