// A small command-line parser for tern's subcommands: `--name value`, `--name=value`,
// boolean `--name`, `--` ending options, and positional arguments. Every flag is
// declared with a help line, so `--help` output and "unknown flag" errors come from
// one place. Value type; not thread-safe.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern::cli {

class Flags {
 public:
  // `usage` is the first help line, e.g. "tern deploy MANIFEST [flags]".
  Flags(std::string usage, std::string description);

  // Declares a flag taking a value, with its default.
  void Add(const std::string& name, const std::string& default_value, const std::string& help);
  // Declares a boolean flag (false unless given).
  void AddBool(const std::string& name, const std::string& help);
  // Makes `-short` (or `--short`) mean `--name`.
  void AddAlias(const std::string& short_name, const std::string& name) {
    aliases_[short_name] = name;
  }

  // Parses argv[first..]. Returns kInvalidArgument naming an unknown flag or a missing
  // value. `--help`/`-h` sets help_requested().
  Status Parse(int argc, char** argv, int first);

  std::string Get(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  Result<int64_t> GetInt(const std::string& name, int64_t lo, int64_t hi) const;
  bool IsSet(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  bool help_requested() const { return help_; }
  std::string Help() const;

 private:
  struct Def {
    std::string default_value;
    std::string help;
    bool is_bool = false;
  };
  std::string usage_;
  std::string description_;
  std::map<std::string, Def> defs_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> aliases_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

}  // namespace tern::cli
