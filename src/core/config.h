// Config: a strict reader for tern's YAML configuration files — a mapping of scalar
// fields, e.g. an agent's:
//
//   device: csd0
//   port: 7400
//   data_dir: /var/lib/tern/csd0
//
// Unknown keys, wrong types and out-of-range values are errors naming the file, the
// line and the field, so a typo never silently falls back to a default.
// Value type; thread-compatible.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern {

class Config {
 public:
  // Parses `yaml` (named `source` in errors). Every key must be in `allowed_keys`.
  static Result<Config> Parse(const std::string& yaml, const std::string& source,
                              const std::vector<std::string>& allowed_keys);
  static Result<Config> Load(const std::string& path, const std::vector<std::string>& allowed_keys);

  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  // The field's value; kNotFound if absent.
  Result<std::string> String(const std::string& key) const;
  Result<int64_t> Int(const std::string& key, int64_t lo, int64_t hi) const;
  Result<bool> Bool(const std::string& key) const;

 private:
  struct Value {
    std::string text;
    int line = 0;
  };
  Status Error(const std::string& key, const std::string& what) const;
  std::string source_;
  std::map<std::string, Value> values_;
};

}  // namespace tern
