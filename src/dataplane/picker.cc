#include "dataplane/picker.h"

#include <fmt/format.h>

#include <random>

namespace tern::dataplane {

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kInProcess:
      return "inproc";
    case Tier::kSharedMemory:
      return "shm";
    case Tier::kTcp:
      return "tcp";
    case Tier::kRdma:
      return "rdma";
  }
  return "?";
}

Result<Tier> ParseTier(std::string_view name) {
  if (name == "inproc") return Tier::kInProcess;
  if (name == "shm") return Tier::kSharedMemory;
  if (name == "tcp") return Tier::kTcp;
  if (name == "rdma") return UnimplementedError("tier rdma is reserved and not implemented");
  return InvalidArgumentError(fmt::format("unknown tier '{}' (expected inproc, shm or tcp)", name));
}

int TierRank(Tier tier) {
  switch (tier) {
    case Tier::kInProcess:
      return 0;
    case Tier::kSharedMemory:
      return 1;
    case Tier::kRdma:
      return 2;
    case Tier::kTcp:
      return 3;
  }
  return 4;
}

Result<TierPolicy> ParseTierPolicy(std::string_view name) {
  if (name == "auto") return TierPolicy::kAuto;
  if (name == "inproc") return TierPolicy::kForceInProcess;
  if (name == "shm") return TierPolicy::kForceShm;
  if (name == "tcp") return TierPolicy::kForceTcp;
  return InvalidArgumentError(
      fmt::format("unknown tier policy '{}' (expected auto, inproc, shm or tcp)", name));
}

std::string_view TierPolicyName(TierPolicy policy) {
  switch (policy) {
    case TierPolicy::kAuto:
      return "auto";
    case TierPolicy::kForceInProcess:
      return "inproc";
    case TierPolicy::kForceShm:
      return "shm";
    case TierPolicy::kForceTcp:
      return "tcp";
  }
  return "?";
}

Result<Tier> SelectTier(const Self& self, const InstanceLocation& loc, TierPolicy policy) {
  const bool same_agent = !self.agent.empty() && self.agent == loc.agent;
  const bool same_host = !self.host.empty() && self.host == loc.host;
  switch (policy) {
    case TierPolicy::kAuto:
      if (same_agent) return Tier::kInProcess;
      if (same_host && !loc.shm.empty()) return Tier::kSharedMemory;
      if (!loc.tcp.empty()) return Tier::kTcp;
      return FailedPreconditionError(fmt::format(
          "instance {} on agent {} (host {}) is unreachable from agent {} (host {}): {}",
          loc.instance, loc.agent, loc.host, self.agent, self.host,
          same_host ? "its agent has neither a shm listener nor a tcp address"
                    : "it is on another host and its agent has no tcp address"));
    case TierPolicy::kForceInProcess:
      if (same_agent) return Tier::kInProcess;
      return FailedPreconditionError(
          fmt::format("tier inproc forced but instance {} is on agent {}, not {}", loc.instance,
                      loc.agent, self.agent.empty() ? "(none)" : self.agent));
    case TierPolicy::kForceShm:
      if (!same_host) {
        return FailedPreconditionError(
            fmt::format("tier shm forced but instance {} is on host {}, not {}", loc.instance,
                        loc.host, self.host.empty() ? "(none)" : self.host));
      }
      if (loc.shm.empty()) {
        return FailedPreconditionError(
            fmt::format("tier shm forced but agent {} of instance {} has no shm listener",
                        loc.agent, loc.instance));
      }
      return Tier::kSharedMemory;
    case TierPolicy::kForceTcp:
      if (loc.tcp.empty()) {
        return FailedPreconditionError(
            fmt::format("tier tcp forced but agent {} of instance {} has no tcp address", loc.agent,
                        loc.instance));
      }
      return Tier::kTcp;
  }
  return InternalError("SelectTier: bad policy");
}

uint64_t NextRandom(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

namespace {

// A uniform integer in [0, n) from 64 random bits (Lemire's multiply-shift; the bias is
// below n / 2^64, negligible for replica counts).
size_t Below(uint64_t bits, size_t n) {
  return static_cast<size_t>((static_cast<unsigned __int128>(bits) * n) >> 64);
}

uint64_t* ThreadRngState() {
  thread_local uint64_t state = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  return &state;
}

}  // namespace

std::optional<size_t> PickP2C(size_t n, const std::function<uint64_t(size_t)>& outstanding,
                              const std::function<Tier(size_t)>& tier, uint64_t* rng_state) {
  if (n == 0) return std::nullopt;
  if (n == 1) return 0;
  uint64_t* rng = rng_state != nullptr ? rng_state : ThreadRngState();
  const size_t a = Below(NextRandom(rng), n);
  size_t b = Below(NextRandom(rng), n - 1);
  if (b >= a) ++b;  // uniform over the candidates other than a
  const uint64_t load_a = outstanding(a);
  const uint64_t load_b = outstanding(b);
  if (load_a != load_b) return load_a < load_b ? a : b;
  if (tier) {
    const int rank_a = TierRank(tier(a));
    const int rank_b = TierRank(tier(b));
    if (rank_a != rank_b) return rank_a < rank_b ? a : b;
  }
  // A full tie: (a, b) is a uniformly random ordered pair, so `a` is already a random
  // choice between the two.
  return a;
}

}  // namespace tern::dataplane
