#include "cluster/topology.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "core/file.h"
#include "dataplane/link.h"

namespace tern::cluster {

// ---------------------------------------------------------------------------------------
// Kinds and their defaults

namespace {

struct KindEntry {
  DeviceKind kind;
  std::string_view name;
};
constexpr KindEntry kKinds[] = {
    {DeviceKind::kCpu, "cpu"}, {DeviceKind::kCsd, "csd"}, {DeviceKind::kCpm, "cpm"},
    {DeviceKind::kNic, "nic"}, {DeviceKind::kMem, "mem"}, {DeviceKind::kGpu, "gpu"},
};
constexpr const char* kKindList = "cpu, csd, cpm, nic, mem, gpu";

// Rough, order-of-magnitude figures (docs/formats/topology.md says where they come from).
constexpr double kPcieEnergy = 40e-12;  // ~5 pJ/bit over a PCIe/CXL link
constexpr double kPcie3x4 = 4e9 * 8;    // bits/s
constexpr double kPcie4x8 = 16e9 * 8;
constexpr double kPcie4x16 = 32e9 * 8;
constexpr double kCxlX8 = 32e9 * 8;
constexpr double kDefaultHostLinkEnergy = 1e-9;  // NICs plus a switch, ~125 pJ/bit

}  // namespace

std::string_view DeviceKindName(DeviceKind kind) {
  for (const KindEntry& k : kKinds) {
    if (k.kind == kind) return k.name;
  }
  return "unknown";
}

Result<DeviceKind> ParseDeviceKind(std::string_view name) {
  for (const KindEntry& k : kKinds) {
    if (k.name == name) return k.kind;
  }
  return InvalidArgumentError(
      fmt::format("unknown device kind '{}' (expected one of {})", name, kKindList));
}

KindDefaults DefaultsFor(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::kCpu:  // the host's own processor: no link to cross
      return {"x86_64", {20, 65}, {0, 0, 0}};
    case DeviceKind::kCsd:  // a computational storage drive on PCIe 3.0 x4
      return {"aarch64", {5, 12}, {2'000, kPcie3x4, kPcieEnergy}};
    case DeviceKind::kCpm:  // computational persistent memory on CXL
      return {"aarch64", {4, 10}, {300, kCxlX8, kPcieEnergy}};
    case DeviceKind::kNic:  // a SmartNIC on PCIe 4.0 x8
      return {"aarch64", {15, 35}, {1'000, kPcie4x8, kPcieEnergy}};
    case DeviceKind::kMem:  // a memory node (CXL expander with a few cores)
      return {"aarch64", {3, 8}, {300, kCxlX8, kPcieEnergy}};
    case DeviceKind::kGpu:  // an accelerator on PCIe 4.0 x16
      return {"aarch64", {30, 250}, {1'000, kPcie4x16, kPcieEnergy}};
  }
  return {"aarch64", {0, 0}, {0, 0, 0}};
}

// ---------------------------------------------------------------------------------------
// Topology

const Device* Topology::FindDevice(std::string_view name) const {
  for (const Host& h : hosts) {
    for (const Device& d : h.devices) {
      if (d.name == name) return &d;
    }
  }
  return nullptr;
}

const Host* Topology::FindHost(std::string_view name) const {
  for (const Host& h : hosts) {
    if (h.name == name) return &h;
  }
  return nullptr;
}

const HostLink* Topology::FindLink(std::string_view a, std::string_view b) const {
  for (const HostLink& l : links) {
    if ((l.a == a && l.b == b) || (l.a == b && l.b == a)) return &l;
  }
  return nullptr;
}

std::vector<const Device*> Topology::Devices() const {
  std::vector<const Device*> out;
  for (const Host& h : hosts) {
    for (const Device& d : h.devices) out.push_back(&d);
  }
  return out;
}

size_t Topology::device_count() const {
  size_t n = 0;
  for (const Host& h : hosts) n += h.devices.size();
  return n;
}

// ---------------------------------------------------------------------------------------
// Units

namespace {

// Splits "1.5GiB" into "1.5" and "GiB": digits with at most one dot, at least one digit.
bool SplitDecimal(std::string_view text, std::string_view* number, std::string_view* unit) {
  size_t i = 0;
  bool digits = false, dot = false;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      digits = true;
    } else if (c == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  *number = text.substr(0, i);
  *unit = text.substr(i);
  return digits;
}

// The double nearest to `number` * 10^`exponent` (one correct rounding: the decimal
// exponent is applied in the text, not by a multiplication).
double ScaledDecimal(std::string_view number, int exponent) {
  const std::string text = fmt::format("{}e{}", number, exponent);
  double v = 0;
  std::from_chars(text.data(), text.data() + text.size(), v, std::chars_format::scientific);
  return v;
}

}  // namespace

Result<uint64_t> ParseByteSize(std::string_view text) {
  std::string_view number, unit;
  if (!SplitDecimal(text, &number, &unit)) {
    return InvalidArgumentError(
        fmt::format("size '{}': expected a non-negative number with a unit, like 4GiB", text));
  }
  struct UnitEntry {
    std::string_view name;
    uint64_t bytes;
  };
  static constexpr UnitEntry kUnits[] = {
      {"B", 1},
      {"KiB", uint64_t{1} << 10},
      {"MiB", uint64_t{1} << 20},
      {"GiB", uint64_t{1} << 30},
      {"TiB", uint64_t{1} << 40},
      {"kB", 1'000},
      {"KB", 1'000},
      {"MB", 1'000'000},
      {"GB", 1'000'000'000},
      {"TB", 1'000'000'000'000},
  };
  uint64_t scale = 0;
  for (const UnitEntry& u : kUnits) {
    if (u.name == unit) scale = u.bytes;
  }
  if (scale == 0) {
    return InvalidArgumentError(
        fmt::format("size '{}': {} '{}' (expected B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)", text,
                    unit.empty() ? "needs a unit" : "unknown unit", unit));
  }
  // Exact: mantissa * scale / 10^fraction_digits in 128-bit integers.
  unsigned __int128 mantissa = 0, divisor = 1;
  bool fraction = false;
  size_t significant = 0;
  for (char c : number) {
    if (c == '.') {
      fraction = true;
      continue;
    }
    if (mantissa != 0 || c != '0') ++significant;
    if (significant > 19) {
      return InvalidArgumentError(fmt::format("size '{}': too many digits", text));
    }
    mantissa = mantissa * 10 + static_cast<unsigned>(c - '0');
    if (fraction) divisor *= 10;
  }
  const unsigned __int128 scaled = mantissa * scale;
  if (scaled % divisor != 0) {
    return InvalidArgumentError(fmt::format("size '{}': not a whole number of bytes", text));
  }
  const unsigned __int128 bytes = scaled / divisor;
  if (bytes > static_cast<unsigned __int128>(UINT64_MAX)) {
    return InvalidArgumentError(fmt::format("size '{}': too large", text));
  }
  return static_cast<uint64_t>(bytes);
}

Result<double> ParseEnergyPerByte(std::string_view text) {
  std::string_view number, unit;
  if (!SplitDecimal(text, &number, &unit)) {
    return InvalidArgumentError(
        fmt::format("energy '{}': expected a non-negative number with a unit, like 5pJ/B", text));
  }
  int exponent = 0;
  if (unit == "fJ/B") {
    exponent = -15;
  } else if (unit == "pJ/B") {
    exponent = -12;
  } else if (unit == "nJ/B") {
    exponent = -9;
  } else if (unit == "uJ/B" || unit == "\xC2\xB5J/B") {  // µJ/B
    exponent = -6;
  } else if (unit.empty() && ScaledDecimal(number, 0) == 0) {
    return 0.0;
  } else {
    return InvalidArgumentError(
        fmt::format("energy '{}': {} '{}' (expected fJ/B, pJ/B, nJ/B or uJ/B)", text,
                    unit.empty() ? "needs a unit" : "unknown unit", unit));
  }
  return ScaledDecimal(number, exponent);
}

Result<double> ParsePower(std::string_view text) {
  std::string_view number, unit;
  if (!SplitDecimal(text, &number, &unit)) {
    return InvalidArgumentError(
        fmt::format("power '{}': expected a non-negative number with a unit, like 65W", text));
  }
  int exponent = 0;
  if (unit == "mW") {
    exponent = -3;
  } else if (unit == "W") {
    exponent = 0;
  } else if (unit == "kW") {
    exponent = 3;
  } else if (unit.empty() && ScaledDecimal(number, 0) == 0) {
    return 0.0;
  } else {
    return InvalidArgumentError(fmt::format("power '{}': {} '{}' (expected mW, W or kW)", text,
                                            unit.empty() ? "needs a unit" : "unknown unit", unit));
  }
  return ScaledDecimal(number, exponent);
}

// ---------------------------------------------------------------------------------------
// Validation, shared by the YAML and the JSON readers

namespace {

constexpr double kMaxCores = 1024;
constexpr double kMaxSpeed = 1000;
constexpr uint64_t kMinMemory = uint64_t{1} << 20;
constexpr uint64_t kMaxMemory = uint64_t{64} << 40;
constexpr double kMaxPowerW = 100e3;
constexpr int64_t kMaxLatencyNs = int64_t{3600} * 1'000'000'000;
constexpr double kMaxBandwidthBps = 1e15;
constexpr double kMaxEnergy = 1e-6;
constexpr size_t kMaxIsaLength = 32;
constexpr size_t kMaxDatasetLength = 63;

// What each field expects, in the words of the error messages.
constexpr const char* kExpectCores = "a number > 0 (at most 1024)";
constexpr const char* kExpectSpeed = "a number > 0 (at most 1000)";
constexpr const char* kExpectReserved = "a number >= 0 and < 1";
constexpr const char* kExpectMemory = "a size from 1MiB to 64TiB, like 4GiB";

// Where the values of a parsed text came from: for each field path
// ("hosts[1].devices[0].cores") the line and the text written there. Errors about a
// field that was not written point at the closest enclosing one that was.
class Sites {
 public:
  explicit Sites(std::string origin) : origin_(std::move(origin)) {}

  void Note(const std::string& path, int line, std::string text = {}) {
    sites_[path] = Site{line, std::move(text)};
  }
  bool Given(const std::string& path) const { return sites_.count(path) != 0; }

  // "origin:LINE: path: what" (no LINE when unknown, no path for the whole document).
  Status Error(std::string_view path, std::string_view what) const {
    const int line = LineOf(std::string(path));
    std::string where = line > 0 ? fmt::format("{}:{}", origin_, line) : origin_;
    if (path.empty()) return InvalidArgumentError(fmt::format("{}: {}", where, what));
    return InvalidArgumentError(fmt::format("{}: {}: {}", where, path, what));
  }

  // The text written at `path`, quoted; `fallback` if none was (JSON, defaults).
  std::string Got(const std::string& path, std::string fallback) const {
    auto it = sites_.find(path);
    if (it == sites_.end() || it->second.text.empty()) return fallback;
    return fmt::format("\"{}\"", it->second.text);
  }

 private:
  struct Site {
    int line = 0;
    std::string text;
  };

  int LineOf(std::string path) const {
    while (true) {
      auto it = sites_.find(path);
      if (it != sites_.end() && it->second.line > 0) return it->second.line;
      if (path.empty()) return 0;
      const size_t cut = path.find_last_of(".[");
      path.resize(cut == std::string::npos ? 0 : cut);
    }
  }

  std::string origin_;
  std::map<std::string, Site> sites_;
};

std::string Quote(std::string_view s) { return fmt::format("\"{}\"", s); }
std::string Num(double v) { return fmt::format("{}", v); }

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// [a-z][a-z0-9]* (cluster) or [a-z][a-z0-9-]* (hosts, devices), 1..max characters.
bool IsValidTopologyName(std::string_view s, size_t max, bool dashes) {
  if (s.empty() || s.size() > max || !IsLower(s[0])) return false;
  return std::all_of(s.begin(), s.end(),
                     [&](char c) { return IsLower(c) || IsDigit(c) || (dashes && c == '-'); });
}

bool IsValidDataset(std::string_view s) {
  if (s.empty() || s.size() > kMaxDatasetLength) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return IsLower(c) || IsDigit(c) || c == '.' || c == '_' || c == '-';
  });
}

bool IsValidIsa(std::string_view s) {
  if (s.empty() || s.size() > kMaxIsaLength) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return IsLower(c) || IsDigit(c) || (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == '-';
  });
}

std::string FormatWatts(double w) { return fmt::format("{:.6g}W", w); }

Status CheckLinkValues(const Sites& s, const std::string& path, int64_t latency_ns,
                       double bandwidth_bps, double energy) {
  if (latency_ns < 0 || latency_ns > kMaxLatencyNs) {
    return s.Error(path + ".latency",
                   fmt::format("expected a latency from 0 to 1 hour, got {}",
                               s.Got(path + ".latency", fmt::format("{}ns", latency_ns))));
  }
  if (!(bandwidth_bps == 0 || (bandwidth_bps >= 1 && bandwidth_bps <= kMaxBandwidthBps))) {
    return s.Error(path + ".bandwidth",
                   fmt::format("expected 'unlimited' or a bandwidth from 1 bit/s to 1000 "
                               "tbit/s, got {}",
                               s.Got(path + ".bandwidth", Num(bandwidth_bps) + " bit/s")));
  }
  if (!(energy >= 0 && energy <= kMaxEnergy)) {
    return s.Error(path + ".energy",
                   fmt::format("expected an energy per byte from 0 to 1uJ/B, got {}",
                               s.Got(path + ".energy", Num(energy) + " J/B")));
  }
  return Status::Ok();
}

Status CheckDevice(const Sites& s, const std::string& p, const Device& d, const Host& host) {
  if (!IsValidTopologyName(d.name, kMaxDeviceNameLength, true)) {
    return s.Error(p + ".name",
                   fmt::format("expected a device name of 1-16 characters [a-z][a-z0-9-]*, "
                               "got {}",
                               s.Got(p + ".name", Quote(d.name))));
  }
  if (d.host != host.name) {
    return s.Error(p + ".host", fmt::format("device '{}' says it is on host '{}' but is listed "
                                            "under host '{}'",
                                            d.name, d.host, host.name));
  }
  if (DeviceKindName(d.kind) == "unknown") {
    return s.Error(p + ".kind", fmt::format("expected one of {}", kKindList));
  }
  if (!IsValidIsa(d.isa)) {
    return s.Error(p + ".isa", fmt::format("expected a label of 1-32 characters "
                                           "[A-Za-z0-9._-], like x86_64, got {}",
                                           s.Got(p + ".isa", Quote(d.isa))));
  }
  if (!(d.cores > 0 && d.cores <= kMaxCores)) {
    return s.Error(p + ".cores", fmt::format("expected {}, got {}", kExpectCores,
                                             s.Got(p + ".cores", Num(d.cores))));
  }
  if (!(d.speed > 0 && d.speed <= kMaxSpeed)) {
    return s.Error(p + ".speed", fmt::format("expected {}, got {}", kExpectSpeed,
                                             s.Got(p + ".speed", Num(d.speed))));
  }
  if (d.memory_bytes < kMinMemory || d.memory_bytes > kMaxMemory) {
    return s.Error(p + ".memory",
                   fmt::format("expected {}, got {}", kExpectMemory,
                               s.Got(p + ".memory", fmt::format("{} bytes", d.memory_bytes))));
  }
  if (!(d.power.idle_w >= 0 && d.power.idle_w <= kMaxPowerW)) {
    return s.Error(p + ".power.idle",
                   fmt::format("expected a power from 0 to 100kW, got {}",
                               s.Got(p + ".power.idle", FormatWatts(d.power.idle_w))));
  }
  if (!(d.power.active_w >= d.power.idle_w && d.power.active_w <= kMaxPowerW)) {
    const bool idle_given = s.Given(p + ".power.idle");
    const bool active_given = s.Given(p + ".power.active");
    const std::string kind(DeviceKindName(d.kind));
    if (d.power.active_w > kMaxPowerW) {
      return s.Error(p + ".power.active",
                     fmt::format("expected a power up to 100kW, got {}",
                                 s.Got(p + ".power.active", FormatWatts(d.power.active_w))));
    }
    return s.Error(
        p + ".power.active",
        fmt::format("expected a power >= idle ({}{}), got {}{}", FormatWatts(d.power.idle_w),
                    idle_given ? "" : ", the default for " + kind,
                    s.Got(p + ".power.active", FormatWatts(d.power.active_w)),
                    active_given ? "" : " (the default for " + kind + ")"));
  }
  if (!(d.reserved >= 0 && d.reserved < 1)) {
    return s.Error(p + ".reserved", fmt::format("expected {}, got {}", kExpectReserved,
                                                s.Got(p + ".reserved", Num(d.reserved))));
  }
  std::map<std::string, size_t> datasets;
  for (size_t k = 0; k < d.datasets.size(); ++k) {
    const std::string dp = fmt::format("{}.datasets[{}]", p, k);
    if (!IsValidDataset(d.datasets[k])) {
      return s.Error(dp, fmt::format("expected a dataset name of 1-63 characters [a-z0-9._-], "
                                     "got {}",
                                     s.Got(dp, Quote(d.datasets[k]))));
    }
    auto [it, inserted] = datasets.emplace(d.datasets[k], k);
    if (!inserted) {
      return s.Error(dp, fmt::format("dataset '{}' is listed twice (first at datasets[{}])",
                                     d.datasets[k], it->second));
    }
  }
  return CheckLinkValues(s, p + ".link", d.link.latency_ns, d.link.bandwidth_bps,
                         d.link.energy_j_per_byte);
}

Status Validate(const Topology& t, const Sites& s) {
  if (!IsValidTopologyName(t.name, kMaxClusterNameLength, false)) {
    return s.Error("name", fmt::format("expected a cluster name of 1-8 characters [a-z][a-z0-9]*, "
                                       "got {}",
                                       s.Got("name", Quote(t.name))));
  }
  if (t.hosts.empty()) return s.Error("hosts", "expected at least one host");
  std::map<std::string, size_t> hosts;         // name -> index
  std::map<std::string, std::string> devices;  // name -> path
  size_t device_count = 0;
  for (size_t i = 0; i < t.hosts.size(); ++i) {
    const Host& h = t.hosts[i];
    const std::string hp = fmt::format("hosts[{}]", i);
    if (!IsValidTopologyName(h.name, kMaxHostNameLength, true)) {
      return s.Error(hp + ".name",
                     fmt::format("expected a host name of 1-12 characters [a-z][a-z0-9-]*, got {}",
                                 s.Got(hp + ".name", Quote(h.name))));
    }
    auto [it, inserted] = hosts.emplace(h.name, i);
    if (!inserted) {
      return s.Error(hp + ".name",
                     fmt::format("host '{}' is already defined at hosts[{}]", h.name, it->second));
    }
    if (h.devices.empty()) {
      return s.Error(hp + ".devices",
                     fmt::format("host '{}' has no devices; expected at least one", h.name));
    }
    for (size_t j = 0; j < h.devices.size(); ++j) {
      const Device& d = h.devices[j];
      const std::string dp = fmt::format("{}.devices[{}]", hp, j);
      TERN_RETURN_IF_ERROR(CheckDevice(s, dp, d, h));
      auto [dit, dinserted] = devices.emplace(d.name, dp);
      if (!dinserted) {
        return s.Error(dp + ".name", fmt::format("device '{}' is already defined at {} (device "
                                                 "names are unique in the whole topology)",
                                                 d.name, dit->second));
      }
      if (++device_count > kMaxDevices) {
        return s.Error(dp, fmt::format("is device number {}; a topology holds at most {} devices",
                                       device_count, kMaxDevices));
      }
    }
  }
  std::map<std::pair<std::string, std::string>, size_t> pairs;  // (min, max) -> index
  for (size_t k = 0; k < t.links.size(); ++k) {
    const HostLink& l = t.links[k];
    const std::string lp = fmt::format("links[{}]", k);
    for (const auto& [end, name] : {std::pair{"a", &l.a}, std::pair{"b", &l.b}}) {
      if (hosts.count(*name) == 0) {
        std::string known;
        for (const Host& h : t.hosts) known += (known.empty() ? "" : ", ") + h.name;
        return s.Error(lp + "." + end, fmt::format("unknown host {} (hosts: {})",
                                                   s.Got(lp + "." + end, Quote(*name)), known));
      }
    }
    if (l.a == l.b) {
      return s.Error(lp + ".b", fmt::format("a link from host '{}' to itself", l.a));
    }
    const auto key = std::minmax(l.a, l.b);
    auto [it, inserted] = pairs.emplace(std::pair{key.first, key.second}, k);
    if (!inserted) {
      const HostLink& first = t.links[it->second];
      return s.Error(lp, fmt::format("{}-{} is the same link as links[{}] ({}-{})", l.a, l.b,
                                     it->second, first.a, first.b));
    }
    TERN_RETURN_IF_ERROR(
        CheckLinkValues(s, lp, l.latency_ns, l.bandwidth_bps, l.energy_j_per_byte));
  }
  std::vector<std::string> missing;
  for (size_t i = 0; i < t.hosts.size(); ++i) {
    for (size_t j = i + 1; j < t.hosts.size(); ++j) {
      const auto key = std::minmax(t.hosts[i].name, t.hosts[j].name);
      if (pairs.count(std::pair{key.first, key.second}) == 0) {
        missing.push_back(t.hosts[i].name + "-" + t.hosts[j].name);
      }
    }
  }
  if (!missing.empty()) {
    const std::string& first = missing.front();
    const size_t dash = first.find('-', 1);
    std::string list;
    for (size_t m = 0; m < missing.size() && m < 8; ++m) list += (m ? ", " : "") + missing[m];
    if (missing.size() > 8) list += fmt::format(" and {} more", missing.size() - 8);
    return s.Error("links",
                   fmt::format("every pair of hosts needs a link; missing: {} (add e.g. {{a: {}, "
                               "b: {}, latency: 50us, bandwidth: 10gbit}})",
                               list, first.substr(0, dash), first.substr(dash + 1)));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------
// YAML

// Edit distance, for "did you mean" hints on misspelt keys.
size_t Distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string Describe(const YAML::Node& n) {
  if (n.IsNull()) return "nothing";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  if (n.IsScalar()) return Quote(n.Scalar());
  return "an undefined value";
}

int LineOf(const YAML::Node& n) { return n.Mark().line >= 0 ? n.Mark().line + 1 : 0; }

// Reads the YAML tree into a Topology, checking structure, keys, types and units; value
// ranges and cross-references are left to Validate(). Records every field's line and
// text in `sites`.
class YamlReader {
 public:
  explicit YamlReader(Sites* sites) : s_(*sites) {}

  Result<Topology> Read(const YAML::Node& root) {
    s_.Note("", LineOf(root));
    if (root.IsNull()) {
      return s_.Error("", "empty topology; expected a mapping with name, hosts and links");
    }
    if (!root.IsMap()) {
      return s_.Error(
          "", fmt::format("expected a mapping with name, hosts and links, got {}", Describe(root)));
    }
    Topology t;
    TERN_ASSIGN_OR_RETURN(Fields f, ReadFields(root, "", {"version", "name", "hosts", "links"}));
    if (const YAML::Node* v = Find(f, "version")) {
      if (!v->IsScalar() || v->Scalar() != "1") {
        return s_.Error("version", fmt::format("expected 1 (the only version of the format), "
                                               "got {}",
                                               Describe(*v)));
      }
    }
    TERN_ASSIGN_OR_RETURN(t.name, RequiredString(f, "", "name", "a cluster name"));
    const YAML::Node* hosts = Find(f, "hosts");
    if (hosts == nullptr) return s_.Error("hosts", "is missing; expected a list of hosts");
    TERN_RETURN_IF_ERROR(ExpectList(*hosts, "hosts", "a list of hosts"));
    size_t i = 0;
    for (const YAML::Node& h : *hosts) {
      TERN_ASSIGN_OR_RETURN(Host host, ReadHost(h, fmt::format("hosts[{}]", i++)));
      t.hosts.push_back(std::move(host));
    }
    if (const YAML::Node* links = Find(f, "links")) {
      TERN_RETURN_IF_ERROR(ExpectList(*links, "links", "a list of links between hosts"));
      size_t k = 0;
      for (const YAML::Node& l : *links) {
        TERN_ASSIGN_OR_RETURN(HostLink link, ReadLink(l, fmt::format("links[{}]", k++)));
        t.links.push_back(std::move(link));
      }
    }
    return t;
  }

 private:
  using Fields = std::vector<std::pair<std::string, YAML::Node>>;

  static const YAML::Node* Find(const Fields& f, std::string_view key) {
    for (const auto& [k, v] : f) {
      if (k == key) return &v;
    }
    return nullptr;
  }

  static std::string Join(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }

  // The fields of mapping `node` at `path`, in order. Rejects keys that are not plain
  // scalars, repeated keys and keys outside `allowed`. Notes each field's line and text.
  Result<Fields> ReadFields(const YAML::Node& node, const std::string& path,
                            std::initializer_list<std::string_view> allowed) {
    Fields out;
    std::map<std::string, int> lines;
    for (const auto& kv : node) {
      const int line = LineOf(kv.first);
      if (!kv.first.IsScalar()) {
        s_.Note(Join(path, "?"), line);
        return s_.Error(Join(path, "?"),
                        fmt::format("expected a field name, got {}", Describe(kv.first)));
      }
      const std::string key = kv.first.Scalar();
      const std::string field = Join(path, key);
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        s_.Note(field, line);
        std::string expected, hint;
        size_t best = 3;
        for (std::string_view a : allowed) {
          expected += (expected.empty() ? "" : ", ") + std::string(a);
          if (const size_t d = Distance(key, a); d < best) {
            best = d;
            hint = fmt::format("did you mean '{}'? ", a);
          }
        }
        return s_.Error(field, fmt::format("unknown field; {}expected one of: {}", hint, expected));
      }
      auto [it, inserted] = lines.emplace(key, line);
      if (!inserted) {
        s_.Note(field, line);
        return s_.Error(field, fmt::format("is given twice (first at line {})", it->second));
      }
      s_.Note(field, line, kv.second.IsScalar() ? kv.second.Scalar() : std::string());
      out.emplace_back(key, kv.second);
    }
    return out;
  }

  Status ExpectMap(const YAML::Node& n, const std::string& path, std::string_view what) {
    if (n.IsMap()) return Status::Ok();
    return s_.Error(path, fmt::format("expected {}, got {}", what, Describe(n)));
  }

  Status ExpectList(const YAML::Node& n, const std::string& path, std::string_view what) {
    if (n.IsSequence()) return Status::Ok();
    return s_.Error(path, fmt::format("expected {}, got {}", what, Describe(n)));
  }

  Result<std::string> String(const YAML::Node& n, const std::string& path, std::string_view what) {
    if (n.IsScalar()) return n.Scalar();
    return s_.Error(path, fmt::format("expected {}, got {}", what, Describe(n)));
  }

  Result<std::string> RequiredString(const Fields& f, const std::string& path, std::string_view key,
                                     std::string_view what) {
    const YAML::Node* n = Find(f, key);
    if (n == nullptr)
      return s_.Error(Join(path, key), fmt::format("is missing; expected {}", what));
    return String(*n, Join(path, key), what);
  }

  // A plain decimal ("2", "0.25", "-1"; no exponent, hex, inf or nan). The range is
  // checked by Validate(), which quotes the text.
  Result<double> Decimal(const YAML::Node& n, const std::string& path, std::string_view what) {
    if (n.IsScalar()) {
      const std::string& text = n.Scalar();
      const char* b = text.data();
      const char* e = b + text.size();
      std::string_view number, unit;
      const std::string_view digits =
          !text.empty() && text[0] == '-' ? std::string_view(text).substr(1) : text;
      double v = 0;
      if (SplitDecimal(digits, &number, &unit) && unit.empty()) {
        auto [p, ec] = std::from_chars(b, e, v, std::chars_format::fixed);
        if (ec == std::errc() && p == e && std::isfinite(v)) return v;
      }
    }
    return s_.Error(path, fmt::format("expected {}, got {}", what, Describe(n)));
  }

  // A scalar parsed by one of the unit parsers; its error follows the field path.
  template <typename T>
  Result<T> Unit(const YAML::Node& n, const std::string& path, std::string_view what,
                 Result<T> (*parse)(std::string_view)) {
    if (!n.IsScalar()) return s_.Error(path, fmt::format("expected {}, got {}", what, Describe(n)));
    Result<T> r = parse(n.Scalar());
    if (!r.ok()) return s_.Error(path, r.status().message());
    return r;
  }

  Result<Host> ReadHost(const YAML::Node& n, const std::string& path) {
    s_.Note(path, LineOf(n));
    TERN_RETURN_IF_ERROR(ExpectMap(n, path, "a host (a mapping with name and devices)"));
    TERN_ASSIGN_OR_RETURN(Fields f, ReadFields(n, path, {"name", "devices"}));
    Host host;
    TERN_ASSIGN_OR_RETURN(host.name, RequiredString(f, path, "name", "a host name"));
    const YAML::Node* devices = Find(f, "devices");
    if (devices == nullptr) {
      return s_.Error(path + ".devices", "is missing; expected a list of devices");
    }
    TERN_RETURN_IF_ERROR(ExpectList(*devices, path + ".devices", "a list of devices"));
    size_t j = 0;
    for (const YAML::Node& d : *devices) {
      TERN_ASSIGN_OR_RETURN(Device device,
                            ReadDevice(d, fmt::format("{}.devices[{}]", path, j++), host.name));
      host.devices.push_back(std::move(device));
    }
    return host;
  }

  Result<Device> ReadDevice(const YAML::Node& n, const std::string& path, const std::string& host) {
    s_.Note(path, LineOf(n));
    TERN_RETURN_IF_ERROR(ExpectMap(n, path, "a device (a mapping with name, kind, ...)"));
    TERN_ASSIGN_OR_RETURN(Fields f, ReadFields(n, path,
                                               {"name", "kind", "isa", "cores", "speed", "memory",
                                                "power", "reserved", "datasets", "link"}));
    Device d;
    d.host = host;
    TERN_ASSIGN_OR_RETURN(d.name, RequiredString(f, path, "name", "a device name"));
    TERN_ASSIGN_OR_RETURN(
        const std::string kind,
        RequiredString(f, path, "kind", fmt::format("a device kind ({})", kKindList)));
    Result<DeviceKind> k = ParseDeviceKind(kind);
    if (!k.ok()) {
      return s_.Error(path + ".kind",
                      fmt::format("expected one of {}, got {}", kKindList, Quote(kind)));
    }
    d.kind = *k;
    const KindDefaults defaults = DefaultsFor(d.kind);
    d.isa = std::string(defaults.isa);
    d.cores = 1;
    d.speed = 1;
    d.memory_bytes = kDefaultMemoryBytes;
    d.power = defaults.power;
    d.reserved = 0;
    d.link = defaults.link;
    for (const auto& [key, v] : f) {
      const std::string p = path + "." + key;
      if (key == "isa") {
        TERN_ASSIGN_OR_RETURN(d.isa, String(v, p, "an ISA label, like x86_64"));
      } else if (key == "cores") {
        TERN_ASSIGN_OR_RETURN(d.cores, Decimal(v, p, kExpectCores));
      } else if (key == "speed") {
        TERN_ASSIGN_OR_RETURN(d.speed, Decimal(v, p, kExpectSpeed));
      } else if (key == "reserved") {
        TERN_ASSIGN_OR_RETURN(d.reserved, Decimal(v, p, kExpectReserved));
      } else if (key == "memory") {
        TERN_ASSIGN_OR_RETURN(d.memory_bytes, Unit(v, p, kExpectMemory, &ParseByteSize));
      } else if (key == "power") {
        TERN_RETURN_IF_ERROR(ExpectMap(v, p, "a mapping {idle: ..W, active: ..W}"));
        TERN_ASSIGN_OR_RETURN(Fields pf, ReadFields(v, p, {"idle", "active"}));
        for (const auto& [pk, pv] : pf) {
          double* w = pk == "idle" ? &d.power.idle_w : &d.power.active_w;
          TERN_ASSIGN_OR_RETURN(*w, Unit(pv, p + "." + pk, "a power, like 20W", &ParsePower));
        }
      } else if (key == "datasets") {
        TERN_RETURN_IF_ERROR(ExpectList(v, p, "a list of dataset names, like [logs, orders]"));
        size_t k = 0;
        for (const YAML::Node& ds : v) {
          const std::string dp = fmt::format("{}[{}]", p, k++);
          s_.Note(dp, LineOf(ds), ds.IsScalar() ? ds.Scalar() : std::string());
          TERN_ASSIGN_OR_RETURN(std::string name, String(ds, dp, "a dataset name"));
          d.datasets.push_back(std::move(name));
        }
      } else if (key == "link") {
        TERN_RETURN_IF_ERROR(ExpectMap(v, p, "a mapping {latency: .., bandwidth: .., energy: ..}"));
        TERN_ASSIGN_OR_RETURN(Fields lf, ReadFields(v, p, {"latency", "bandwidth", "energy"}));
        TERN_RETURN_IF_ERROR(ReadLinkValues(lf, p, &d.link.latency_ns, &d.link.bandwidth_bps,
                                            &d.link.energy_j_per_byte));
      }
    }
    return d;
  }

  // Overwrites the values of the fields present in `f`.
  Status ReadLinkValues(const Fields& f, const std::string& path, int64_t* latency_ns,
                        double* bandwidth_bps, double* energy) {
    for (const auto& [key, v] : f) {
      const std::string p = path + "." + key;
      if (key == "latency") {
        TERN_ASSIGN_OR_RETURN(*latency_ns,
                              Unit(v, p, "a latency, like 50us", &dataplane::ParseLatency));
      } else if (key == "bandwidth") {
        TERN_ASSIGN_OR_RETURN(*bandwidth_bps, Unit(v, p, "a bandwidth, like 10gbit or 16GB/s",
                                                   &dataplane::ParseBandwidth));
      } else if (key == "energy") {
        TERN_ASSIGN_OR_RETURN(*energy,
                              Unit(v, p, "an energy per byte, like 5pJ/B", &ParseEnergyPerByte));
      }
    }
    return Status::Ok();
  }

  Result<HostLink> ReadLink(const YAML::Node& n, const std::string& path) {
    s_.Note(path, LineOf(n));
    TERN_RETURN_IF_ERROR(
        ExpectMap(n, path, "a link (a mapping {a: .., b: .., latency: .., bandwidth: ..})"));
    TERN_ASSIGN_OR_RETURN(Fields f,
                          ReadFields(n, path, {"a", "b", "latency", "bandwidth", "energy"}));
    HostLink l;
    TERN_ASSIGN_OR_RETURN(l.a, RequiredString(f, path, "a", "a host name"));
    TERN_ASSIGN_OR_RETURN(l.b, RequiredString(f, path, "b", "a host name"));
    for (std::string_view required : {"latency", "bandwidth"}) {
      if (Find(f, required) == nullptr) {
        return s_.Error(Join(path, required),
                        required == "latency" ? "is missing; expected a latency, like 50us"
                                              : "is missing; expected a bandwidth, like 10gbit");
      }
    }
    l.energy_j_per_byte = kDefaultHostLinkEnergy;
    TERN_RETURN_IF_ERROR(
        ReadLinkValues(f, path, &l.latency_ns, &l.bandwidth_bps, &l.energy_j_per_byte));
    return l;
  }

  Sites& s_;
};

}  // namespace

Result<Topology> ParseTopology(std::string_view yaml, std::string_view origin) {
  Sites sites{std::string(origin)};
  Result<Topology> t = InvalidArgumentError("unreachable");
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    t = YamlReader(&sites).Read(root);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(fmt::format("{}:{}:{}: YAML syntax error: {}", origin,
                                            e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (!t.ok()) return t.status();
  TERN_RETURN_IF_ERROR(Validate(*t, sites));
  return t;
}

Result<Topology> LoadTopologyFile(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseTopology(text, path);
}

// ---------------------------------------------------------------------------------------
// JSON

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kJsonOrigin = "topology JSON";

ordered_json LinkJson(int64_t latency_ns, double bandwidth_bps, double energy) {
  ordered_json j;
  j["latency_ns"] = latency_ns;
  j["bandwidth_bps"] = bandwidth_bps;
  j["energy_j_per_byte"] = energy;
  return j;
}

std::string JsonType(const json& j) {
  if (j.is_string()) return Quote(j.get<std::string>());
  if (j.is_number()) return j.dump();
  return std::string(j.type_name());
}

// Reads the JSON tree with types checked; every field is required.
class JsonReader {
 public:
  explicit JsonReader(const Sites& sites) : s_(sites) {}

  Result<Topology> Read(const json& root) {
    TERN_RETURN_IF_ERROR(Keys(root, "", {"name", "hosts", "links"}));
    Topology t;
    TERN_ASSIGN_OR_RETURN(t.name, Str(root, "", "name"));
    TERN_ASSIGN_OR_RETURN(const json* hosts, List(root, "", "hosts"));
    for (size_t i = 0; i < hosts->size(); ++i) {
      const json& h = (*hosts)[i];
      const std::string hp = fmt::format("hosts[{}]", i);
      TERN_RETURN_IF_ERROR(Keys(h, hp, {"name", "devices"}));
      Host host;
      TERN_ASSIGN_OR_RETURN(host.name, Str(h, hp, "name"));
      TERN_ASSIGN_OR_RETURN(const json* devices, List(h, hp, "devices"));
      for (size_t j = 0; j < devices->size(); ++j) {
        TERN_ASSIGN_OR_RETURN(Device d,
                              ReadDevice((*devices)[j], fmt::format("{}.devices[{}]", hp, j)));
        d.host = host.name;
        host.devices.push_back(std::move(d));
      }
      t.hosts.push_back(std::move(host));
    }
    TERN_ASSIGN_OR_RETURN(const json* links, List(root, "", "links"));
    for (size_t k = 0; k < links->size(); ++k) {
      const json& l = (*links)[k];
      const std::string lp = fmt::format("links[{}]", k);
      TERN_RETURN_IF_ERROR(
          Keys(l, lp, {"a", "b", "latency_ns", "bandwidth_bps", "energy_j_per_byte"}));
      HostLink link;
      TERN_ASSIGN_OR_RETURN(link.a, Str(l, lp, "a"));
      TERN_ASSIGN_OR_RETURN(link.b, Str(l, lp, "b"));
      TERN_ASSIGN_OR_RETURN(link.latency_ns, Int(l, lp, "latency_ns"));
      TERN_ASSIGN_OR_RETURN(link.bandwidth_bps, Number(l, lp, "bandwidth_bps"));
      TERN_ASSIGN_OR_RETURN(link.energy_j_per_byte, Number(l, lp, "energy_j_per_byte"));
      t.links.push_back(std::move(link));
    }
    return t;
  }

 private:
  static std::string Join(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }

  Status Keys(const json& j, const std::string& path,
              std::initializer_list<std::string_view> keys) {
    if (!j.is_object()) {
      return s_.Error(path, fmt::format("expected an object, got {}", JsonType(j)));
    }
    for (const auto& [key, value] : j.items()) {
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
        return s_.Error(Join(path, key), "unknown field");
      }
    }
    for (std::string_view key : keys) {
      if (!j.contains(key)) return s_.Error(Join(path, key), "is missing");
    }
    return Status::Ok();
  }

  Result<std::string> Str(const json& j, const std::string& path, std::string_view key) {
    const json& v = j.at(key);
    if (!v.is_string()) {
      return s_.Error(Join(path, key), fmt::format("expected a string, got {}", JsonType(v)));
    }
    return v.get<std::string>();
  }

  Result<double> Number(const json& j, const std::string& path, std::string_view key) {
    const json& v = j.at(key);
    if (!v.is_number()) {
      return s_.Error(Join(path, key), fmt::format("expected a number, got {}", JsonType(v)));
    }
    return v.get<double>();
  }

  Result<int64_t> Int(const json& j, const std::string& path, std::string_view key) {
    const json& v = j.at(key);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) {
      return s_.Error(Join(path, key), fmt::format("expected an integer, got {}", JsonType(v)));
    }
    return v.get<int64_t>();
  }

  Result<uint64_t> Unsigned(const json& j, const std::string& path, std::string_view key) {
    const json& v = j.at(key);
    if (!v.is_number_unsigned()) {
      return s_.Error(Join(path, key),
                      fmt::format("expected a non-negative integer, got {}", JsonType(v)));
    }
    return v.get<uint64_t>();
  }

  Result<const json*> List(const json& j, const std::string& path, std::string_view key) {
    const json& v = j.at(key);
    if (!v.is_array()) {
      return s_.Error(Join(path, key), fmt::format("expected an array, got {}", JsonType(v)));
    }
    return &v;
  }

  Result<Device> ReadDevice(const json& j, const std::string& p) {
    TERN_RETURN_IF_ERROR(Keys(j, p,
                              {"name", "kind", "isa", "cores", "speed", "memory_bytes", "power",
                               "reserved", "datasets", "link"}));
    Device d;
    TERN_ASSIGN_OR_RETURN(d.name, Str(j, p, "name"));
    TERN_ASSIGN_OR_RETURN(const std::string kind, Str(j, p, "kind"));
    Result<DeviceKind> k = ParseDeviceKind(kind);
    if (!k.ok()) {
      return s_.Error(p + ".kind",
                      fmt::format("expected one of {}, got {}", kKindList, Quote(kind)));
    }
    d.kind = *k;
    TERN_ASSIGN_OR_RETURN(d.isa, Str(j, p, "isa"));
    TERN_ASSIGN_OR_RETURN(d.cores, Number(j, p, "cores"));
    TERN_ASSIGN_OR_RETURN(d.speed, Number(j, p, "speed"));
    TERN_ASSIGN_OR_RETURN(d.memory_bytes, Unsigned(j, p, "memory_bytes"));
    TERN_ASSIGN_OR_RETURN(d.reserved, Number(j, p, "reserved"));
    const json& power = j.at("power");
    TERN_RETURN_IF_ERROR(Keys(power, p + ".power", {"idle_w", "active_w"}));
    TERN_ASSIGN_OR_RETURN(d.power.idle_w, Number(power, p + ".power", "idle_w"));
    TERN_ASSIGN_OR_RETURN(d.power.active_w, Number(power, p + ".power", "active_w"));
    TERN_ASSIGN_OR_RETURN(const json* datasets, List(j, p, "datasets"));
    for (size_t k = 0; k < datasets->size(); ++k) {
      const json& ds = (*datasets)[k];
      if (!ds.is_string()) {
        return s_.Error(fmt::format("{}.datasets[{}]", p, k),
                        fmt::format("expected a string, got {}", JsonType(ds)));
      }
      d.datasets.push_back(ds.get<std::string>());
    }
    const json& link = j.at("link");
    const std::string lp = p + ".link";
    TERN_RETURN_IF_ERROR(Keys(link, lp, {"latency_ns", "bandwidth_bps", "energy_j_per_byte"}));
    TERN_ASSIGN_OR_RETURN(d.link.latency_ns, Int(link, lp, "latency_ns"));
    TERN_ASSIGN_OR_RETURN(d.link.bandwidth_bps, Number(link, lp, "bandwidth_bps"));
    TERN_ASSIGN_OR_RETURN(d.link.energy_j_per_byte, Number(link, lp, "energy_j_per_byte"));
    return d;
  }

  const Sites& s_;
};

}  // namespace

std::string TopologyToJson(const Topology& t) {
  ordered_json root;
  root["name"] = t.name;
  ordered_json hosts = ordered_json::array();
  for (const Host& h : t.hosts) {
    ordered_json host;
    host["name"] = h.name;
    ordered_json devices = ordered_json::array();
    for (const Device& d : h.devices) {
      ordered_json dev;
      dev["name"] = d.name;
      dev["kind"] = std::string(DeviceKindName(d.kind));
      dev["isa"] = d.isa;
      dev["cores"] = d.cores;
      dev["speed"] = d.speed;
      dev["memory_bytes"] = d.memory_bytes;
      dev["power"] = ordered_json{{"idle_w", d.power.idle_w}, {"active_w", d.power.active_w}};
      dev["reserved"] = d.reserved;
      dev["datasets"] = d.datasets;
      dev["link"] = LinkJson(d.link.latency_ns, d.link.bandwidth_bps, d.link.energy_j_per_byte);
      devices.push_back(std::move(dev));
    }
    host["devices"] = std::move(devices);
    hosts.push_back(std::move(host));
  }
  root["hosts"] = std::move(hosts);
  ordered_json links = ordered_json::array();
  for (const HostLink& l : t.links) {
    ordered_json link;
    link["a"] = l.a;
    link["b"] = l.b;
    link.update(LinkJson(l.latency_ns, l.bandwidth_bps, l.energy_j_per_byte));
    links.push_back(std::move(link));
  }
  root["links"] = std::move(links);
  return root.dump();
}

Result<Topology> TopologyFromJson(std::string_view text) {
  Sites sites{kJsonOrigin};
  // nlohmann keeps the last of repeated keys silently; the callback sees every key, so a
  // stack of the keys of the open objects finds repeats.
  std::vector<std::set<std::string>> open;
  std::string repeated;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second &&
            repeated.empty()) {
          repeated = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json root = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return InvalidArgumentError(fmt::format("{}: not valid JSON", kJsonOrigin));
  }
  if (!repeated.empty()) {
    return InvalidArgumentError(
        fmt::format("{}: field '{}' is given twice in one object", kJsonOrigin, repeated));
  }
  TERN_ASSIGN_OR_RETURN(Topology t, JsonReader(sites).Read(root));
  TERN_RETURN_IF_ERROR(Validate(t, sites));
  return t;
}

// ---------------------------------------------------------------------------------------
// Description

namespace {

std::string FormatSize(uint64_t bytes) {
  static constexpr std::pair<uint64_t, const char*> kUnits[] = {
      {uint64_t{1} << 40, "TiB"}, {uint64_t{1} << 30, "GiB"},
      {uint64_t{1} << 20, "MiB"}, {uint64_t{1} << 10, "KiB"},
      {1'000'000'000'000, "TB"},  {1'000'000'000, "GB"},
      {1'000'000, "MB"},          {1'000, "kB"}};
  for (const auto& [scale, name] : kUnits) {
    if (bytes != 0 && bytes % scale == 0) return fmt::format("{}{}", bytes / scale, name);
  }
  return fmt::format("{}B", bytes);
}

std::string FormatLatency(int64_t ns) {
  if (ns == 0) return "0";
  if (ns >= 1'000'000'000) return fmt::format("{}s", ns / 1e9);
  if (ns >= 1'000'000) return fmt::format("{}ms", ns / 1e6);
  if (ns >= 1'000) return fmt::format("{}us", ns / 1e3);
  return fmt::format("{}ns", ns);
}

std::string FormatBandwidth(double bps) {
  if (bps == 0) return "unlimited";
  if (bps >= 1e12) return fmt::format("{:.6g}tbit", bps / 1e12);
  if (bps >= 1e9) return fmt::format("{:.6g}gbit", bps / 1e9);
  if (bps >= 1e6) return fmt::format("{:.6g}mbit", bps / 1e6);
  if (bps >= 1e3) return fmt::format("{:.6g}kbit", bps / 1e3);
  return fmt::format("{:.6g}bit", bps);
}

std::string FormatEnergy(double j) {
  if (j == 0) return "0";
  if (j >= 1e-6) return fmt::format("{:.6g}uJ/B", j * 1e6);
  if (j >= 1e-9) return fmt::format("{:.6g}nJ/B", j * 1e9);
  if (j >= 1e-12) return fmt::format("{:.6g}pJ/B", j * 1e12);
  return fmt::format("{:.6g}fJ/B", j * 1e15);
}

std::string FormatLink(int64_t latency_ns, double bandwidth_bps, double energy) {
  if (latency_ns == 0 && bandwidth_bps == 0 && energy == 0) return "local";
  return fmt::format("{} {} {}", FormatLatency(latency_ns), FormatBandwidth(bandwidth_bps),
                     FormatEnergy(energy));
}

// Rows of cells, columns padded to their widest cell, two spaces apart.
std::string Table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(widths[c] - row[c].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace

std::string DescribeTopology(const Topology& t) {
  std::string out =
      fmt::format("topology {}: {} host{}, {} device{}, {} host link{}\n", t.name, t.hosts.size(),
                  t.hosts.size() == 1 ? "" : "s", t.device_count(),
                  t.device_count() == 1 ? "" : "s", t.links.size(), t.links.size() == 1 ? "" : "s");
  std::vector<std::vector<std::string>> rows = {{"HOST", "DEVICE", "KIND", "ISA", "CORES", "SPEED",
                                                 "MEMORY", "POWER idle/active", "RESERVED",
                                                 "LINK TO HOST", "DATASETS"}};
  for (const Host& h : t.hosts) {
    for (const Device& d : h.devices) {
      std::string datasets;
      for (const std::string& ds : d.datasets) datasets += (datasets.empty() ? "" : ",") + ds;
      rows.push_back(
          {h.name, d.name, std::string(DeviceKindName(d.kind)), d.isa,
           fmt::format("{:.6g}", d.cores), fmt::format("{:.6g}", d.speed),
           FormatSize(d.memory_bytes),
           fmt::format("{}/{}", FormatWatts(d.power.idle_w), FormatWatts(d.power.active_w)),
           fmt::format("{:.6g}", d.reserved),
           FormatLink(d.link.latency_ns, d.link.bandwidth_bps, d.link.energy_j_per_byte),
           datasets.empty() ? "-" : datasets});
    }
  }
  out += "\n" + Table(rows);
  if (!t.links.empty()) {
    std::vector<std::vector<std::string>> links = {{"LINK", "LATENCY", "BANDWIDTH", "ENERGY"}};
    for (const HostLink& l : t.links) {
      links.push_back({l.a + "-" + l.b, FormatLatency(l.latency_ns),
                       FormatBandwidth(l.bandwidth_bps), FormatEnergy(l.energy_j_per_byte)});
    }
    out += "\n" + Table(links);
  }
  return out;
}

}  // namespace tern::cluster
