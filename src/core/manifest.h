// Manifest: the description of a service that comes with its wasm module.
//
//   name: counter              # [a-z0-9._-], required
//   version: 1.0.0             # required
//   module: counter.wasm       # path relative to the manifest file
//   stateful: true             # default false
//   checkpoint_ms: 2000        # stateful only: the controller snapshots each instance
//                              # this often to a storage device (0 = off, the default)
//   durable: true              # stateful only: no acknowledged request is ever lost. Each
//                              # reply waits until what the request wrote is appended to
//                              # the instance's journal on its checkpoint keeper (fdatasync);
//                              # implies checkpoints (checkpoint_ms defaults to 10000).
//                              # `durable: strict`: a request whose record an assigned
//                              # keeper fails to take fails (rolled back) instead of being
//                              # acknowledged with fewer copies (degraded)
//   slo_p99_ms: 2.5            # the p99 latency target of one request, ms (at most 3
//                              # decimals; 0 = none, the default): the placement engine
//                              # places by it and the rebalancer moves an instance whose
//                              # measured p99 stays above it
//   handlers: [incr, get]      # exported functions callable from outside, required
//   tenant: default
//   replicas: 1
//   limits:
//     memory_mib: 16           # linear-memory cap (default 64)
//     cpu_ms: 200              # CPU time per request (default 1000)
//     request_kib: 1024        # max request payload (default 1024)
//     response_kib: 1024       # max reply payload (default 1024)
//
// Value type: copyable, comparable. Parsing is strict: unknown keys, wrong types and
// out-of-range values are errors that name the line and the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern {

struct ServiceLimits {
  uint32_t memory_mib = 64;
  uint32_t cpu_ms = 1000;
  uint32_t request_kib = 1024;
  uint32_t response_kib = 1024;

  uint64_t memory_bytes() const { return uint64_t{memory_mib} << 20; }
  uint64_t request_bytes() const { return uint64_t{request_kib} << 10; }
  uint64_t response_bytes() const { return uint64_t{response_kib} << 10; }
  bool operator==(const ServiceLimits&) const = default;
};

struct Manifest {
  std::string name;
  std::string version;
  std::string module;  // path of the .wasm, as written in the file
  bool stateful = false;
  uint32_t checkpoint_ms = 0;  // 0 = no periodic checkpoints
  bool durable = false;        // journal every write before its reply (stateful only)
  bool durable_strict = false;  // `durable: strict`: never acknowledged with fewer copies
  uint64_t slo_p99_us = 0;     // `slo_p99_ms` in µs; 0 = no SLO
  std::vector<std::string> handlers;
  std::string tenant = "default";
  uint32_t replicas = 1;
  ServiceLimits limits;

  bool HasHandler(const std::string& h) const;
  bool operator==(const Manifest&) const = default;
};

// Hard bounds that a manifest may not exceed.
inline constexpr uint32_t kMaxMemoryMib = 4096;
inline constexpr uint32_t kMaxCpuMs = 600'000;
inline constexpr uint32_t kMinCheckpointMs = 100;
inline constexpr uint32_t kMaxCheckpointMs = 86'400'000;
// The base-checkpoint period of a durable service that sets none (its journal is
// truncated after each base checkpoint).
inline constexpr uint32_t kDurableCheckpointMs = 10'000;
inline constexpr uint32_t kMaxPayloadKib = 64 * 1024;
inline constexpr uint64_t kMaxSloP99Us = 3'600'000'000;  // an hour

// Parses YAML text. `source` names the text in error messages (a path, or "request").
Result<Manifest> ParseManifest(const std::string& yaml_text, const std::string& source);
// Reads and parses a manifest file.
Result<Manifest> LoadManifest(const std::string& path);
// Renders a manifest back to YAML (round-trips through ParseManifest).
std::string ManifestToYaml(const Manifest& m);

}  // namespace tern
