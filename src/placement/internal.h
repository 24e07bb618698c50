// Internal to tern_placement: the view compiled into indices and arrays, so that the
// policies can evaluate millions of (service, device) pairs without string lookups, and
// the evaluation itself, shared by Predict, Place, PlaceAll and the simulator so that
// every entry point computes exactly the same numbers.
//
// Ownership: a Compiled keeps a pointer to its view, which must outlive it; a CService
// keeps one to its profile. Thread-safety: read-only after construction.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "placement/cost.h"
#include "placement/model.h"

namespace tern::placement::internal {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

enum class Tier { kLocal, kInproc, kShm, kTcp };
const char* TierName(Tier tier);

struct CDevice {
  int host = 0;
  DeviceKind kind = DeviceKind::kCpu;
  double speed = 1;
  double cores = 1;
  double offered = 1;       // cores × (1 − reserved)
  int servers = 1;          // max(1, ⌊offered⌋)
  double server_speed = 1;  // speed × offered / servers
  double watts_per_core = 0;
  uint64_t memory = 0;
  uint64_t committed = 0;
  double used_cores = 0;  // utilization × offered
  double link_lat_ns = 0;
  double link_ns_per_byte = 0;  // 8e9 / bandwidth; 0 = unlimited
  double link_j = 0;
};

struct Compiled {
  const ClusterView* view = nullptr;
  std::vector<CDevice> dev;
  int hosts = 0;
  std::vector<std::string> host_names;
  std::vector<double> hl_lat, hl_nspb, hl_j;  // hosts × hosts, row-major
  std::unordered_map<std::string, int> device_index, host_index;
  std::unordered_map<std::string, std::vector<int>> dataset_devices;

  size_t HL(int a, int b) const { return static_cast<size_t>(a) * hosts + b; }
};
// Validates (ValidateView) and compiles.
Result<Compiled> Compile(const ClusterView& view);

// ValidateProfile with the view's names looked up by the caller (Compile's indices).
struct ProfileRefs {
  std::function<bool(const std::string&)> device, host, dataset;
};
Status ValidateProfileAgainst(const ServiceProfile& service, const ProfileRefs& refs);

struct CRead {
  std::vector<int> replicas;
  double bytes = 0;
};
struct CEdge {
  std::vector<int> callees;  // devices; empty = callee not placed (no cost counted)
  double calls = 1, request_bytes = 0, reply_bytes = 0;
};
struct CService {
  const ServiceProfile* profile = nullptr;
  std::vector<CRead> reads;
  int caller_host = -1;    // gateway on this host (TCP)
  int caller_device = -1;  // or an instance on this device
  std::vector<CEdge> edges;
  std::vector<char> allowed;  // per device; empty = all allowed
  int tenant_quota_instances = -1;
  double tenant_quota_cores = -1;
};
// Validates (ValidateProfile) and compiles.
Result<CService> CompileService(const Compiled& c, const ServiceProfile& service);

// The placement-independent-of-load part of a prediction.
struct Static {
  double compute_ns = 0, data_ns = 0, caller_ns = 0, rpc_ns = 0;
  double energy_j = 0;
  double bytes = 0;
  double load_cores = 0;
  double local_bytes = 0;
  double fixed_ns() const { return compute_ns + data_ns + caller_ns + rpc_ns; }
};
// `reads_out`, when given, receives each read's path (for Predict's explanation).
Static EvalStatic(const Compiled& c, const CService& s, int d,
                  std::vector<ReadPath>* reads_out = nullptr);

// Mutable placement state: per device used cores and committed memory, the tenant's use.
struct TenantState {
  int64_t instances = 0;
  double cores = 0;
};

// The constraint checks and queueing for `st` on device d, given the device's used cores
// and committed memory *without* this instance and the tenant's use without it.
struct Dynamic {
  bool allowed = true, memory_ok = true, share_ok = true, quota_ok = true, slo_ok = true;
  double util_after = 0;
  WaitTimes wait;
  double p50_ns = 0, p99_ns = 0;
  bool fits() const { return allowed && memory_ok && share_ok && quota_ok; }
};
Dynamic EvalDynamic(const Compiled& c, const CService& s, int d, const Static& st,
                    double used_cores, uint64_t committed, const TenantState& tenant);

// The public Prediction (with the constraint messages) from the two parts.
Prediction MakePrediction(const Compiled& c, const CService& s, int d, const Static& st,
                          const Dynamic& dy, double used_cores, uint64_t committed,
                          const TenantState& tenant, std::vector<ReadPath> reads);

// The tenant's use from the view.
TenantState TenantOf(const ClusterView& view, const std::string& tenant);

// splitmix64: the deterministic generator of kRandom and the simulator.
inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
uint64_t HashString(const std::string& s);

// "812 µs", "1.2 ms", "3.4 s", "∞"; "1.5 mJ"; "64 MiB" (3 significant digits).
std::string FormatUs(double us);
std::string FormatJ(double joules);
std::string FormatBytes(double bytes);

}  // namespace tern::placement::internal
