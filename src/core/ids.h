// Identifiers: request ids (unique per process run, 64-bit) and instance ids.
// Thread-safety: RequestIdGenerator::Next() is lock-free and safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace tern {

// Request ids are (random 24-bit process salt << 40) | counter, so ids from two
// processes rarely collide and ids from one process never do (for 2^40 requests).
class RequestIdGenerator {
 public:
  RequestIdGenerator();
  uint64_t Next() { return salt_ | (counter_.fetch_add(1, std::memory_order_relaxed) + 1); }

 private:
  uint64_t salt_;
  std::atomic<uint64_t> counter_{0};
};

// "<service>-<n>", the instance naming scheme of one agent.
std::string MakeInstanceId(const std::string& service, uint64_t n);

// True for names made of [a-z0-9._-], 1..63 characters, starting with a letter or digit:
// the names tern accepts for services, handlers, instances and devices.
bool IsValidName(const std::string& name);

// Splits "host:port" (port required, 1..65535). kInvalidArgument says what is wrong.
Status ParseHostPort(const std::string& s, std::string* host, uint16_t* port);

}  // namespace tern
