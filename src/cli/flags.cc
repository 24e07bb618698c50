#include "cli/flags.h"

#include <fmt/format.h>

#include <cstdlib>

namespace tern::cli {

Flags::Flags(std::string usage, std::string description)
    : usage_(std::move(usage)), description_(std::move(description)) {}

void Flags::Add(const std::string& name, const std::string& default_value,
                const std::string& help) {
  defs_[name] = Def{default_value, help, false};
  order_.push_back(name);
}

void Flags::AddBool(const std::string& name, const std::string& help) {
  defs_[name] = Def{"false", help, true};
  order_.push_back(name);
}

Status Flags::Parse(int argc, char** argv, int first) {
  bool only_positional = false;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (only_positional || a.size() < 2 || a[0] != '-' || a == "-") {
      positional_.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    std::string name = a.substr(a[1] == '-' ? 2 : 1);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (auto al = aliases_.find(name); al != aliases_.end()) name = al->second;
    auto it = defs_.find(name);
    if (it == defs_.end()) {
      return InvalidArgumentError(fmt::format("unknown flag --{} (see --help)", name));
    }
    if (it->second.is_bool) {
      if (has_value && value != "true" && value != "false") {
        return InvalidArgumentError(fmt::format("--{} takes no value, or =true/=false", name));
      }
      values_[name] = has_value ? value : "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return InvalidArgumentError(fmt::format("--{} needs a value", name));
      value = argv[++i];
    }
    values_[name] = value;
  }
  return Status::Ok();
}

std::string Flags::Get(const std::string& name) const {
  auto v = values_.find(name);
  if (v != values_.end()) return v->second;
  auto d = defs_.find(name);
  return d == defs_.end() ? std::string() : d->second.default_value;
}

bool Flags::GetBool(const std::string& name) const { return Get(name) == "true"; }

bool Flags::IsSet(const std::string& name) const { return values_.count(name) > 0; }

Result<int64_t> Flags::GetInt(const std::string& name, int64_t lo, int64_t hi) const {
  std::string s = Get(name);
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    return InvalidArgumentError(
        fmt::format("--{} must be an integer in [{}, {}], got '{}'", name, lo, hi, s));
  }
  return static_cast<int64_t>(v);
}

std::string Flags::Help() const {
  std::string s = "usage: " + usage_ + "\n\n" + description_ + "\n";
  if (!order_.empty()) s += "\nflags:\n";
  for (const auto& n : order_) {
    const Def& d = defs_.at(n);
    std::string left = d.is_bool ? "  --" + n : "  --" + n + " VALUE";
    s += fmt::format("{:<28} {}", left, d.help);
    if (!d.is_bool && !d.default_value.empty()) s += fmt::format(" (default: {})", d.default_value);
    s += "\n";
  }
  s += fmt::format("{:<28} {}\n", "  -h, --help", "show this help");
  return s;
}

}  // namespace tern::cli
