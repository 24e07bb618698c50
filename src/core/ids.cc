#include "core/ids.h"

#include <fmt/format.h>

#include <cstdlib>
#include <random>

#include "core/hash.h"

namespace tern {

RequestIdGenerator::RequestIdGenerator() {
  std::random_device rd;
  salt_ = (static_cast<uint64_t>(rd()) & 0xFFFFFFull) << 40;
}

uint64_t NewTraceId() {
  // splitmix64 over a per-thread random start.
  thread_local uint64_t state = [] {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
  }();
  for (;;) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    if (z != 0) return z;
  }
}

std::string TraceIdHex(uint64_t id) { return fmt::format("{:016x}", id); }

namespace {

// Digits of `s` in `base` (10 or 16) into *out; false on an empty string, another
// character or overflow.
bool ParseDigits(std::string_view s, int base, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    if (v > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) return false;
    v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

bool HasHexPrefix(std::string_view s) {
  return s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
}

std::string Quoted(std::string_view s) {
  return s.size() > 40 ? fmt::format("'{}...' ({} bytes)", s.substr(0, 40), s.size())
                       : fmt::format("'{}'", s);
}

}  // namespace

Result<uint64_t> ParseTraceId(std::string_view s, std::string_view what) {
  std::string_view digits = HasHexPrefix(s) ? s.substr(2) : s;
  uint64_t v = 0;
  if (digits.size() > 16 || !ParseDigits(digits, 16, &v)) {
    return InvalidArgumentError(
        fmt::format("{} {}: expected 1 to 16 hex digits (e.g. 4bf92f3577b34da6)", what, Quoted(s)));
  }
  if (v == 0) {
    return InvalidArgumentError(
        fmt::format("{} {}: 0 means none; leave it out to get a fresh one", what, Quoted(s)));
  }
  return v;
}

Result<uint64_t> ParseIdempotencyKey(std::string_view s, std::string_view what) {
  uint64_t v = 0;
  const bool ok = HasHexPrefix(s) ? s.size() <= 18 && ParseDigits(s.substr(2), 16, &v)
                                  : s.size() <= 20 && ParseDigits(s, 10, &v);
  if (!ok) {
    return InvalidArgumentError(
        fmt::format("{} {}: expected an unsigned 64-bit number, decimal (e.g. 42) or hex after 0x "
                    "(e.g. 0x2a)",
                    what, Quoted(s)));
  }
  if (v == 0) {
    return InvalidArgumentError(fmt::format("{} {}: 0 means none; leave it out", what, Quoted(s)));
  }
  return v;
}

uint64_t DeriveCallKey(uint64_t parent_key, uint64_t ordinal, std::string_view service,
                       std::string_view handler) {
  if (parent_key == 0) return 0;
  auto mix = [](uint64_t z) {  // splitmix64's finalizer
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  uint64_t k = mix(parent_key + 0x9E3779B97F4A7C15ull * ordinal);
  k = mix(k ^ Hash64(service.data(), service.size()));
  k = mix(k ^ Hash64(handler.data(), handler.size()));
  return k != 0 ? k : 1;
}

std::string MakeInstanceId(const std::string& service, uint64_t n) {
  return service + "-" + std::to_string(n);
}

bool IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (i == 0 && !alnum) return false;
    if (!alnum && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

Status ParseHostPort(const std::string& s, std::string* host, uint16_t* port) {
  size_t c = s.rfind(':');
  if (c == std::string::npos || c == 0 || c + 1 >= s.size()) {
    return InvalidArgumentError("'" + s + "' is not HOST:PORT (e.g. 127.0.0.1:7401)");
  }
  std::string p = s.substr(c + 1);
  char* end = nullptr;
  long v = std::strtol(p.c_str(), &end, 10);
  if (p[0] < '0' || p[0] > '9' || *end != '\0' || v < 1 || v > 65535) {
    return InvalidArgumentError("'" + s + "': port must be 1-65535");
  }
  *host = s.substr(0, c);
  *port = static_cast<uint16_t>(v);
  return Status::Ok();
}

}  // namespace tern
