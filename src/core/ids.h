// Identifiers: request ids (unique per process run, 64-bit), instance ids, and the
// end-to-end ids of a call: trace ids and idempotency keys (docs/formats/frame.md).
// Thread-safety: RequestIdGenerator::Next() is lock-free and safe from any thread;
// NewTraceId() may be called from any thread (a generator per thread).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

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

// A fresh random trace id, never 0 (0 means "none"). Seeded from std::random_device
// once per thread; cheap enough for every request.
uint64_t NewTraceId();
// A trace id as written in headers and logs: 16 lower-case hex digits.
std::string TraceIdHex(uint64_t id);
// Reads a trace id (the X-Tern-Trace-Id header, `--trace-id`): 1 to 16 hex digits, either
// case, optionally after "0x"; not 0. kInvalidArgument says what is wrong, naming `what`.
Result<uint64_t> ParseTraceId(std::string_view s, std::string_view what = "trace id");
// Reads an idempotency key (the Idempotency-Key header, `--idempotency-key`): a u64 in
// decimal (1 to 20 digits), or in hex after "0x" (1 to 16 digits); not 0.
Result<uint64_t> ParseIdempotencyKey(std::string_view s, std::string_view what = "idempotency key");

// The idempotency key of the `ordinal`-th (1, 2, ...) call to service.handler that a
// guest starts while serving a request with key `parent_key`: 0 if that is 0, else a
// mix of all four (never 0). A retry of the outer request that makes the same calls in
// the same order sends the same keys, so the callees can deduplicate them too.
uint64_t DeriveCallKey(uint64_t parent_key, uint64_t ordinal, std::string_view service,
                       std::string_view handler);

// "<service>-<n>", the instance naming scheme of one agent.
std::string MakeInstanceId(const std::string& service, uint64_t n);

// True for names made of [a-z0-9._-], 1..63 characters, starting with a letter or digit:
// the names tern accepts for services, handlers, instances and devices.
bool IsValidName(const std::string& name);

// Splits "host:port" (port required, 1..65535). kInvalidArgument says what is wrong.
Status ParseHostPort(const std::string& s, std::string* host, uint16_t* port);

}  // namespace tern
