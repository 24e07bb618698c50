#include "dataplane/link.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <limits>

namespace tern::dataplane {

// ---------------------------------------------------------------------------------------
// LinkTable

void LinkTable::Set(const std::string& a, const std::string& b, LinkSpec spec) {
  MutexLock lock(&mu_);
  links_[Key(a, b)] = spec;
}

std::optional<LinkSpec> LinkTable::Find(const std::string& a, const std::string& b) const {
  MutexLock lock(&mu_);
  auto it = links_.find(Key(a, b));
  if (it == links_.end()) return std::nullopt;
  return it->second;
}

size_t LinkTable::size() const {
  MutexLock lock(&mu_);
  return links_.size();
}

// ---------------------------------------------------------------------------------------
// LinkShaper

namespace {

constexpr int64_t kMaxNanos = std::numeric_limits<int64_t>::max();

int64_t SaturatingAdd(int64_t a, uint64_t b) {
  if (a >= 0 && b > static_cast<uint64_t>(kMaxNanos - a)) return kMaxNanos;
  if (a < 0 && b > static_cast<uint64_t>(kMaxNanos) + static_cast<uint64_t>(-(a + 1)) + 1) {
    return kMaxNanos;
  }
  return static_cast<int64_t>(static_cast<uint64_t>(a) + b);  // wraps into range
}

}  // namespace

LinkShaper::LinkShaper(LinkSpec spec) : spec_(spec) {
  latency_ns_ = std::max<int64_t>(spec.latency_ns, 0);
  if (spec.bandwidth_bps > 0) {  // false for NaN too: unlimited
    const double capped = std::min(spec.bandwidth_bps, 1e18);
    rate_bps_ = std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(capped)));
  }
}

int64_t LinkShaper::DeliverAt(int64_t now_ns, size_t bytes) {
  int64_t start = now_ns;
  if (busy_until_ >= now_ns) {
    start = busy_until_;  // queue behind the previous message
  } else {
    carry_ = 0;  // the link went idle: the fractional nanosecond is gone
  }
  uint64_t serialize_ns = 0;
  if (rate_bps_ != 0) {
    const unsigned __int128 num =
        static_cast<unsigned __int128>(bytes) * 8u * 1'000'000'000u + carry_;
    const unsigned __int128 ns = num / rate_bps_;
    carry_ = static_cast<uint64_t>(num % rate_bps_);
    serialize_ns = ns > static_cast<unsigned __int128>(kMaxNanos) ? static_cast<uint64_t>(kMaxNanos)
                                                                  : static_cast<uint64_t>(ns);
  }
  busy_until_ = SaturatingAdd(start, serialize_ns);
  return SaturatingAdd(busy_until_, static_cast<uint64_t>(latency_ns_));
}

// ---------------------------------------------------------------------------------------
// Parsing

namespace {

// Splits "1.5ms" into 1.5 and "ms". Accepts plain decimals only (no sign, exponent, hex,
// inf or nan).
Status SplitNumber(std::string_view what, std::string_view text, double* value,
                   std::string_view* unit) {
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
  if (!digits) {
    return InvalidArgumentError(
        fmt::format("{} '{}': expected a non-negative number with a unit", what, text));
  }
  auto [p, ec] = std::from_chars(text.data(), text.data() + i, *value, std::chars_format::fixed);
  if (ec != std::errc() || p != text.data() + i || !std::isfinite(*value)) {
    return InvalidArgumentError(fmt::format("{} '{}': bad number", what, text));
  }
  *unit = text.substr(i);
  return Status::Ok();
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

// Bytes per unit for a bytes-per-second unit ("GB/s" -> 1e9, "MiB/s" -> 2^20), 0 if
// `unit` is not one. Case-sensitive.
double ByteRateScale(std::string_view unit) {
  constexpr std::string_view kSuffix = "B/s";
  if (unit.size() < kSuffix.size() || unit.substr(unit.size() - kSuffix.size()) != kSuffix) {
    return 0;
  }
  const std::string_view prefix = unit.substr(0, unit.size() - kSuffix.size());
  if (prefix.empty()) return 1;
  if (prefix == "k" || prefix == "K") return 1e3;
  if (prefix == "M") return 1e6;
  if (prefix == "G") return 1e9;
  if (prefix == "T") return 1e12;
  if (prefix == "Ki") return 0x1p10;
  if (prefix == "Mi") return 0x1p20;
  if (prefix == "Gi") return 0x1p30;
  if (prefix == "Ti") return 0x1p40;
  return 0;
}

constexpr double kMaxLatencyNs = 3600e9;
constexpr double kMaxBandwidthBps = 1e15;

// The range check shared by bit and byte units.
Result<double> CheckBandwidth(std::string_view text, double bps) {
  if (bps < 1) {
    return InvalidArgumentError(fmt::format(
        "bandwidth '{}': must be at least 1 bit/s (write 'unlimited' for no limit)", text));
  }
  if (bps > kMaxBandwidthBps) {
    return InvalidArgumentError(fmt::format("bandwidth '{}': more than 1000 tbit/s", text));
  }
  return bps;
}

}  // namespace

Result<int64_t> ParseLatency(std::string_view text) {
  double value = 0;
  std::string_view unit_text;
  TERN_RETURN_IF_ERROR(SplitNumber("latency", text, &value, &unit_text));
  const std::string unit = Lower(unit_text);
  double scale = 0;
  if (unit == "ns") {
    scale = 1;
  } else if (unit == "us" || unit == "\xC2\xB5s") {  // µs
    scale = 1e3;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit == "s") {
    scale = 1e9;
  } else if (unit.empty() && value == 0) {
    return int64_t{0};
  } else if (unit.empty()) {
    return InvalidArgumentError(fmt::format("latency '{}': needs a unit (ns, us, ms or s)", text));
  } else {
    return InvalidArgumentError(
        fmt::format("latency '{}': unknown unit '{}' (expected ns, us, ms or s)", text, unit_text));
  }
  const double ns = value * scale;
  if (ns > kMaxLatencyNs) {
    return InvalidArgumentError(fmt::format("latency '{}': more than one hour", text));
  }
  return static_cast<int64_t>(std::llround(ns));
}

Result<double> ParseBandwidth(std::string_view text) {
  if (Lower(text) == "unlimited") return 0.0;
  double value = 0;
  std::string_view unit_text;
  TERN_RETURN_IF_ERROR(SplitNumber("bandwidth", text, &value, &unit_text));
  // Bytes per second: case-sensitive, a capital B and a mandatory "/s" ("16GB/s"), so
  // that neither "Gb/s" (bits by convention) nor a size ("16GB") is taken for it.
  if (const double bytes = ByteRateScale(unit_text); bytes > 0) {
    return CheckBandwidth(text, value * bytes * 8);
  }
  std::string unit = Lower(unit_text);
  if (unit.size() > 2 && unit.compare(unit.size() - 2, 2, "/s") == 0) {
    unit.resize(unit.size() - 2);
  }
  double scale = 0;
  if (unit == "bit") {
    scale = 1;
  } else if (unit == "kbit") {
    scale = 1e3;
  } else if (unit == "mbit") {
    scale = 1e6;
  } else if (unit == "gbit") {
    scale = 1e9;
  } else if (unit == "tbit") {
    scale = 1e12;
  } else if (unit == "bps" || unit == "kbps" || unit == "mbps" || unit == "gbps" ||
             unit == "tbps") {
    const std::string bits = unit.substr(0, unit.size() - 3) + "bit";
    return InvalidArgumentError(fmt::format(
        "bandwidth '{}': ambiguous unit '{}' (tc reads it as bytes per second); write '{}' "
        "or '{}/s' for bits per second",
        text, unit_text, bits, bits));
  } else if (unit == "b" || unit == "kb" || unit == "mb" || unit == "gb" || unit == "tb") {
    const std::string prefix = unit.substr(0, unit.size() - 1);
    std::string bytes = prefix == "k" ? "kB/s" : Upper(prefix) + "B/s";
    return InvalidArgumentError(fmt::format(
        "bandwidth '{}': ambiguous unit '{}'; write '{}bit' for bits or '{}' for bytes per "
        "second",
        text, unit_text, prefix, bytes));
  } else if (unit.empty()) {
    return InvalidArgumentError(fmt::format(
        "bandwidth '{}': needs a unit (bit, kbit, mbit, gbit or tbit, or B/s, kB/s, MB/s, "
        "GB/s, TB/s, KiB/s, MiB/s, GiB/s, TiB/s) or 'unlimited'",
        text));
  } else {
    return InvalidArgumentError(
        fmt::format("bandwidth '{}': unknown unit '{}' (expected bit, kbit, mbit, gbit or "
                    "tbit, optionally with /s; B/s, kB/s, MB/s, GB/s, TB/s, KiB/s, MiB/s, "
                    "GiB/s or TiB/s; or 'unlimited')",
                    text, unit_text));
  }
  return CheckBandwidth(text, value * scale);
}

Result<LinkSpec> ParseLinkSpec(std::string_view latency, std::string_view bandwidth) {
  LinkSpec spec;
  TERN_ASSIGN_OR_RETURN(spec.latency_ns, ParseLatency(latency));
  TERN_ASSIGN_OR_RETURN(spec.bandwidth_bps, ParseBandwidth(bandwidth));
  return spec;
}

}  // namespace tern::dataplane
