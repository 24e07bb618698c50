// The placement engine's view of the cluster and of a service: plain value types that the
// cost model (cost.h) and the policies (policy.h) read. The controller builds a
// ClusterView from the topology (cluster/topology.h), the live agents' telemetry and the
// placed instances; the simulator (sim.h) builds synthetic ones. docs/design/placement.md
// gives every formula that uses these fields, with units.
//
// Units: time in ns (latency_ns, cpu_ns_...), except SLOs and predictions, which are in
// µs; bandwidth in bits per second (0 = unlimited); energy in joules; power in watts;
// sizes in bytes; rates per second.
//
// Ownership: value types, copyable and comparable. Nothing here does I/O.
// Thread-safety: stateless functions; distinct objects may be used concurrently, and a
// const view may be read from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/manifest.h"
#include "core/status.h"

namespace tern::placement {

// The same kinds as cluster::DeviceKind (the placement library depends on tern_core only;
// the controller converts).
enum class DeviceKind { kCpu, kCsd, kCpm, kNic, kMem, kGpu };
// "cpu", "csd", "cpm", "nic", "mem", "gpu"; "unknown" outside the enum.
std::string_view DeviceKindName(DeviceKind kind);

// A link's costs: a device's link to its host (PCIe, CXL; zero for the host's own CPU) or
// a network link between two hosts.
struct LinkCost {
  int64_t latency_ns = 0;        // one way
  double bandwidth_bps = 0;      // bits per second; 0 = unlimited
  double energy_j_per_byte = 0;  // joules per byte carried

  bool operator==(const LinkCost&) const = default;
};

// One device as the placement engine sees it: its profile (from the topology) and its
// current state (from telemetry and the instances already placed on it).
struct DeviceView {
  std::string name;  // unique in the view
  std::string host;  // hosts are the distinct values of this field
  DeviceKind kind = DeviceKind::kCpu;
  double cores = 1;  // > 0, fractional allowed
  double speed = 1;  // per-core speed relative to a reference host core, > 0
  uint64_t memory_bytes = 0;
  double idle_w = 0;                  // power with nothing running
  double active_w = 0;                // power with every core busy
  double reserved = 0;                // share of `cores` kept for the device's main task, [0, 1)
  std::vector<std::string> datasets;  // datasets stored on (or next to) the device
  LinkCost link;                      // device <-> its host

  // State. `utilization` is the busy share of the non-reserved capacity
  // (cores × (1 − reserved)) caused by what already runs there, in [0, 1].
  double utilization = 0;
  uint64_t memory_committed_bytes = 0;  // memory of the instances already placed here

  bool operator==(const DeviceView&) const = default;
};

struct HostLinkView {
  std::string a, b;  // hosts, a != b; symmetric
  LinkCost cost;

  bool operator==(const HostLinkView&) const = default;
};

// The data plane's cost of one call on a transport tier, beyond the emulated links: a
// fixed cost per call (round trip, both sandbox crossings) and a software cost per byte.
// The defaults are measured on this machine (bench/results/calls.md, guest to guest,
// p50): in-process 1.32 µs at 64 B and 9.58 µs at 64 KiB; shared memory 2.94 / 25.3 µs;
// TCP over loopback 20.0 / 67.3 µs.
struct TierCost {
  double fixed_ns = 0;
  double ns_per_byte = 0;

  bool operator==(const TierCost&) const = default;
};
struct TransportCosts {
  TierCost inproc{1300, 0.13};  // caller and callee on one agent (device)
  TierCost shm{3000, 0.34};     // two devices on one host
  TierCost tcp{20000, 0.72};    // two hosts (and the gateway, which always uses TCP)

  bool operator==(const TransportCosts&) const = default;
};

// A tenant's quota; a negative value means "no limit".
struct TenantQuota {
  int64_t max_instances = -1;
  double max_cores = -1;  // core-equivalents busy (sum over its instances of rate × ns)

  bool operator==(const TenantQuota&) const = default;
};
// What a tenant uses already (before the placement being decided).
struct TenantUse {
  int64_t instances = 0;
  double cores = 0;

  bool operator==(const TenantUse&) const = default;
};

struct ClusterView {
  std::vector<DeviceView> devices;       // candidates, in a stable order (ties go to the first)
  std::vector<HostLinkView> host_links;  // every pair of distinct hosts, unless default set
  bool has_default_host_link = false;    // pairs without an entry use default_host_link
  LinkCost default_host_link;
  TransportCosts transports;
  std::map</*tenant*/ std::string, TenantQuota> quotas;  // tenants not listed: unlimited
  std::map</*tenant*/ std::string, TenantUse> tenant_use;

  bool operator==(const ClusterView&) const = default;
};

// Where the profile's CPU figure comes from.
enum class ProfileSource {
  kEstimate,  // a manifest hint or the default, before any measurement
  kMeasured,  // telemetry of running instances
};
std::string_view ProfileSourceName(ProfileSource source);  // "estimate", "measured"

struct DatasetRead {
  std::string dataset;
  double bytes_per_request = 0;

  bool operator==(const DatasetRead&) const = default;
};

// A call the service makes to another service, on every request.
struct CallEdge {
  std::string callee;
  double calls_per_request = 1;
  double request_bytes = 0;  // per call, each way below
  double reply_bytes = 0;
  std::vector<std::string> callee_devices;  // where the callee runs now; the nearest is used

  bool operator==(const CallEdge&) const = default;
};

// What one instance of a service needs. Rates and bytes are per instance.
struct ServiceProfile {
  std::string name;
  std::string tenant = "default";
  int replicas = 1;               // instances to place (PlaceAll); Place places one
  double request_rate = 0;        // requests per second arriving at one instance
  double cpu_ns_per_request = 0;  // CPU time of one request on one core of speed 1.0
  ProfileSource source = ProfileSource::kEstimate;
  std::vector<DatasetRead> reads;  // bytes read per request, per dataset
  // The caller: a gateway process on `caller_host` (TCP), or, when `caller_device` is
  // set, another service's instance there (tier by location). Both empty: no caller
  // traffic is counted.
  std::string caller_host;
  std::string caller_device;
  double request_bytes = 0;  // from the caller, per request
  double reply_bytes = 0;    // to the caller, per request
  std::vector<CallEdge> calls;
  uint64_t memory_bytes = 0;  // per instance
  double slo_p99_us = 0;      // target p99 latency; 0 = none
  // Squared coefficient of variation of the CPU time per request (variance / mean²):
  // 1 = exponential (plain M/M/c, the conservative default), 0 = deterministic. Waiting
  // times scale by (1 + cv²) / 2 (Allen–Cunneen). Telemetry can measure it.
  double service_cv2 = 1;
  std::vector<std::string> allowed_devices;  // empty = any

  bool operator==(const ServiceProfile&) const = default;
};

// Before any measurement: what the manifest and its deployer say.
struct ServiceHints {
  double cpu_us_per_request = 0;  // 0: kDefaultCpuNsEstimate
  double request_rate = 0;
  std::vector<DatasetRead> reads;
  std::string caller_host;
  double request_bytes = 0;
  double reply_bytes = 0;
  double slo_p99_us = 0;
};
// The estimate used when a service gives no CPU hint: 1 ms per request at speed 1.0
// (a deliberately pessimistic figure, so an unmeasured service is not offloaded to a weak
// device on a guess; measurements replace it within one telemetry period).
inline constexpr double kDefaultCpuNsEstimate = 1e6;

// A profile with source kEstimate: name, tenant, replicas and the per-instance memory cap
// from the manifest; the rest from the hints.
ServiceProfile ProfileFromManifest(const Manifest& manifest, const ServiceHints& hints);

// Telemetry of running instances of the service, aggregated by the controller.
struct Measurement {
  double cpu_ns_per_request = 0;  // measured on a device of speed `device_speed`
  double device_speed = 1;
  double request_rate = 0;         // per instance; < 0 keeps the profile's
  std::vector<DatasetRead> reads;  // measured bytes per dataset; empty keeps the profile's
};
// The profile with the measured values in place of the estimates and source kMeasured.
// CPU time is normalised to speed 1.0 (cpu × device_speed). kInvalidArgument when the
// measurement is not positive and finite.
Result<ServiceProfile> WithMeasurement(ServiceProfile profile, const Measurement& m);

// Checks a view: unique device names, numbers in range (cores, speed > 0; reserved in
// [0, 1); 0 <= idle <= active; utilization in [0, 1]; non-negative links), every pair of
// hosts linked (or a default), no link twice. kInvalidArgument naming the field, e.g.
// "devices[3] (csd0).reserved: expected a value in [0, 1), got 1.5".
Status ValidateView(const ClusterView& view);
// Checks a profile against a view: numbers non-negative and finite, replicas >= 1, every
// dataset read held by some device, callee devices, caller and allowed devices known.
Status ValidateProfile(const ClusterView& view, const ServiceProfile& service);

}  // namespace tern::placement
