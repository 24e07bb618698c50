// The picker: how a caller reaches an instance. SelectTier() chooses the transport tier
// from the two endpoints' locations (in-process, shared memory, TCP), and PickP2C()
// chooses one replica among candidates by the power of two choices, preferring the
// cheaper tier on equal load.
//
// Ownership: value types and pure functions; nothing is retained.
// Thread-safety: all functions are safe from any thread. PickP2C() with a null
// `rng_state` uses a per-thread generator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"
#include "dataplane/location.h"

namespace tern::dataplane {

// Transport tiers, cheapest first in TierRank() order. The numbers may appear in
// telemetry; do not renumber.
enum class Tier : int {
  kInProcess = 0,     // same agent: a queue hand-off
  kSharedMemory = 1,  // same host, another agent: shm rings
  kTcp = 2,           // across hosts: frames over TCP
  // Reserved: RDMA (ibverbs) is the planned fourth tier. Nothing here selects it and
  // there is no implementation; it exists so that interfaces keyed by Tier fit it.
  kRdma = 3,
};

// "inproc", "shm", "tcp", "rdma"; "?" for values out of range.
std::string_view TierName(Tier tier);
// Parses "inproc" | "shm" | "tcp". "rdma" is kUnimplemented; anything else
// kInvalidArgument.
Result<Tier> ParseTier(std::string_view name);
// Cost order used for tie-breaks: in-process 0 < shm 1 < rdma 2 < tcp 3.
int TierRank(Tier tier);

enum class TierPolicy { kAuto, kForceInProcess, kForceShm, kForceTcp };
// Parses "auto" | "inproc" | "shm" | "tcp"; kInvalidArgument otherwise.
Result<TierPolicy> ParseTierPolicy(std::string_view name);
std::string_view TierPolicyName(TierPolicy policy);

// Where the caller runs. An empty agent (e.g. a gateway that hosts no instances) never
// matches an instance's agent; an empty host never matches a host.
struct Self {
  std::string agent;
  std::string host;
};

// The tier a caller at `self` uses to reach `loc`.
// kAuto: same agent -> in-process; else same host and loc.shm set -> shared memory;
// else TCP, which needs loc.tcp (kFailedPrecondition if there is none).
// Forced policies return that tier if it is possible for this location, else
// kFailedPrecondition saying why: in-process needs the same agent; shm needs the same
// host and loc.shm; tcp needs loc.tcp (same-agent or same-host loopback is allowed).
Result<Tier> SelectTier(const Self& self, const InstanceLocation& loc, TierPolicy policy);

// Advances a splitmix64 state and returns the next 64 random bits. Cheap, not
// cryptographic. Any seed (including 0) is fine.
uint64_t NextRandom(uint64_t* state);

// Power of two choices over candidates 0..n-1: draws two distinct candidates uniformly
// at random and returns the one with fewer outstanding calls; on equal load the one
// with the cheaper tier (TierRank); then either at random. One candidate -> 0 (the
// callbacks are not called); none -> nullopt.
// `outstanding(i)` gives the in-flight calls to candidate i; `tier(i)` its tier (may be
// empty: no tier tie-break). Both are called only during the call, for the two drawn
// candidates. `rng_state` is advanced; pass a seeded state for reproducible tests, or
// nullptr for a per-thread generator seeded from std::random_device.
std::optional<size_t> PickP2C(size_t n, const std::function<uint64_t(size_t)>& outstanding,
                              const std::function<Tier(size_t)>& tier, uint64_t* rng_state);

}  // namespace tern::dataplane
