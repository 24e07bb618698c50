// The topology of an emulated disaggregated datacenter: which hosts exist, which devices
// (host CPUs, computational storage drives, SmartNICs, memory nodes, ...) each host holds,
// what each device can do (cores, relative speed, memory, power, datasets), and the links
// that join a device to its host (PCIe/CXL) and the hosts to each other (network).
// `tern up TOPOLOGY.yaml` starts one agent per device from it; the controller serves it
// as JSON.
//
// The file format (YAML) is documented field by field in docs/formats/topology.md;
// examples are in examples/topologies/. In short:
//
//   name: rack1
//   hosts:
//     - name: h1
//       devices:
//         - {name: cpu0, kind: cpu, cores: 2, memory: 4GiB}
//         - {name: csd0, kind: csd, cores: 0.5, speed: 0.4, datasets: [logs]}
//     - name: h2
//       devices: [{name: cpu1, kind: cpu, cores: 2}]
//   links:
//     - {a: h1, b: h2, latency: 50us, bandwidth: 10gbit}
//
// Parsing is strict: unknown or repeated keys, bad names, out-of-range values, duplicate
// names or links and missing host pairs are errors (kInvalidArgument) naming the file,
// the line and the field path, e.g.
//   rack.yaml:12: hosts[1].devices[0].cores: expected a number > 0, got "-1"
//
// Ownership: everything here is a value type. Pointers returned by Topology's Find*/
// Devices() point into that Topology and live as long as it is neither destroyed nor
// modified.
// Thread-safety: the functions are stateless; a Topology may be read from many threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::cluster {

// Limits of the format. Names become parts of network namespace, bridge, veth and cgroup
// names, whose kernel limits (15 bytes for an interface) are tight.
inline constexpr size_t kMaxDevices = 64;  // in the whole topology
inline constexpr size_t kMaxClusterNameLength = 8;
inline constexpr size_t kMaxHostNameLength = 12;
inline constexpr size_t kMaxDeviceNameLength = 16;

enum class DeviceKind { kCpu, kCsd, kCpm, kNic, kMem, kGpu };

// "cpu", "csd", "cpm", "nic", "mem", "gpu"; "unknown" for a value outside the enum.
std::string_view DeviceKindName(DeviceKind kind);
// The inverse of DeviceKindName (exact, lower case); kInvalidArgument naming the kinds.
Result<DeviceKind> ParseDeviceKind(std::string_view name);

// Electrical power of a device: idle (no task running) and fully active, in watts.
struct PowerModel {
  double idle_w = 0;
  double active_w = 0;

  bool operator==(const PowerModel&) const = default;
};

// The link between a device and its host (PCIe, CXL, or none for the host's own CPU).
struct DeviceLink {
  int64_t latency_ns = 0;        // one way
  double bandwidth_bps = 0;      // bits per second; 0 = unlimited
  double energy_j_per_byte = 0;  // joules per byte moved

  bool operator==(const DeviceLink&) const = default;
};

struct Device {
  std::string name;  // unique in the whole topology; the agent's id
  std::string host;  // the name of the host holding it
  DeviceKind kind = DeviceKind::kCpu;
  std::string isa;                    // free label: "x86_64", "aarch64", "riscv64", ...
  double cores = 1;                   // > 0, may be fractional (a cgroup cpu.max share)
  double speed = 1;                   // per-core speed relative to a reference host core, > 0
  uint64_t memory_bytes = 0;          // > 0
  PowerModel power;                   // 0 <= idle_w <= active_w
  double reserved = 0;                // share of `cores` kept for the device's own task, [0, 1)
  std::vector<std::string> datasets;  // datasets stored on or next to the device
  DeviceLink link;                    // to its host

  bool operator==(const Device&) const = default;
};

struct Host {
  std::string name;
  std::vector<Device> devices;  // at least one

  bool operator==(const Host&) const = default;
};

// A network link between two hosts, symmetric.
struct HostLink {
  std::string a, b;  // host names, a != b
  int64_t latency_ns = 0;
  double bandwidth_bps = 0;  // 0 = unlimited
  double energy_j_per_byte = 0;

  bool operator==(const HostLink&) const = default;
};

struct Topology {
  std::string name;
  std::vector<Host> hosts;
  std::vector<HostLink> links;  // every pair of distinct hosts exactly once

  // The device / host of that name, nullptr if none.
  const Device* FindDevice(std::string_view name) const;
  const Host* FindHost(std::string_view name) const;
  // The link between hosts `a` and `b` in either order; nullptr if none (or a == b).
  const HostLink* FindLink(std::string_view a, std::string_view b) const;
  // All devices, host by host in file order.
  std::vector<const Device*> Devices() const;
  size_t device_count() const;

  bool operator==(const Topology&) const = default;
};

// What a device of a kind gets for the fields the file leaves out (memory is 1 GiB for
// every kind; speed 1, reserved 0, no datasets).
struct KindDefaults {
  std::string_view isa;
  PowerModel power;
  DeviceLink link;
};
KindDefaults DefaultsFor(DeviceKind kind);
inline constexpr uint64_t kDefaultMemoryBytes = uint64_t{1} << 30;

// Parses and validates the YAML format. `origin` names the text in errors
// ("origin:LINE: path: what"). All errors are kInvalidArgument.
Result<Topology> ParseTopology(std::string_view yaml, std::string_view origin);
// Reads and parses a file; errors name the path as given.
Result<Topology> LoadTopologyFile(const std::string& path);

// The JSON form, for the controller's API: the same structure with every quantity as a
// number in base units (latency_ns, bandwidth_bps, energy_j_per_byte, memory_bytes,
// idle_w/active_w) and no defaults. TopologyFromJson(TopologyToJson(t)) == t for every
// valid t. TopologyFromJson applies the same validation as ParseTopology (errors name
// the field path, without lines), and also rejects unknown and repeated keys.
std::string TopologyToJson(const Topology& topology);
Result<Topology> TopologyFromJson(std::string_view json);

// A human summary for `tern topology check`: a header line, a table of devices (host,
// name, kind, isa, cores, speed, memory, power, reserved, link to host, datasets) and a
// table of host links, columns aligned. Ends with a newline.
std::string DescribeTopology(const Topology& topology);

// The unit parsers of the format, exposed for tools and tests. All are exact for decimal
// input (the result is the double nearest to the decimal value written) and refuse
// negative numbers, exponents and missing units with kInvalidArgument.
//  - sizes: B, KiB, MiB, GiB, TiB, and decimal kB (or KB), MB, GB, TB; must come to a
//    whole number of bytes: "4GiB", "1.5GB", "512MiB".
Result<uint64_t> ParseByteSize(std::string_view text);
//  - energy per byte, in joules: fJ/B, pJ/B, nJ/B, uJ/B (or µJ/B), or "0": "5pJ/B".
Result<double> ParseEnergyPerByte(std::string_view text);
//  - power, in watts: mW, W, kW, or "0": "65W", "500mW".
Result<double> ParsePower(std::string_view text);

}  // namespace tern::cluster
