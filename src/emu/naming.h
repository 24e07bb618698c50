// Naming of everything the datacenter emulation creates on the machine: network
// namespaces, the bridge, veth pairs, cgroup directories and the 10.x subnet of a cluster.
//
// Every name is a pure function of (cluster, host index or name, device name), so that
// `tern down` can find what `tern up` made even when the ledger (emu/ledger.h) is lost:
//
//   network namespace   tern-<cluster>-<host>        e.g. tern-demo-host1
//   bridge (root ns)    tb-<cluster>                 e.g. tb-demo
//   veth, root end      tv-<cluster>-<i>             e.g. tv-demo-0   (i = host index)
//   veth, host end      tp-<cluster>-<i>, renamed to eth0 inside the host's namespace
//   cgroup (v1)         <root>/<ctrl>/tern/<cluster>/<device>, root = /sys/fs/cgroup
//
// A cluster name is 1..8 characters of [a-z0-9] (no '-': so the prefix "tern-<cluster>-"
// of one cluster is never the prefix of another cluster's names). With 8 characters and
// at most 3 digits of host index, link names stay within IFNAMSIZ (15 characters +
// NUL): "tv-abcdefgh-252" is 15.
//
// Addresses: a cluster gets the subnet 10.X.Y.0/24 where (X, Y) comes from a stable hash
// of its name (32-bit FNV-1a; X = 1 + h % 255, Y = (h / 255) % 256), so X is never 0 and
// 10.0/16 stays free. The bridge has 10.X.Y.1; host i has 10.X.Y.(i+2), i in [0, 252].
// Two clusters may hash to the same subnet (about 1 in 65280); CreateHostNetwork
// refuses to start a cluster whose subnet is already routed.
//
// Thread-safety: stateless functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace tern::emu {

inline constexpr size_t kMaxClusterNameLength = 8;
inline constexpr size_t kMaxHostNameLength = 32;
inline constexpr size_t kMaxDeviceNameLength = 64;
inline constexpr size_t kMaxIfNameLength = 15;  // IFNAMSIZ - 1
inline constexpr int kMaxHosts = 253;           // .2 .. .254 of a /24
inline constexpr std::string_view kDefaultCgroupRoot = "/sys/fs/cgroup";

// kInvalidArgument naming the problem unless `cluster` is 1..8 characters of [a-z0-9].
Status ValidateClusterName(std::string_view cluster);
// Host and device names: 1..32 (host) / 1..64 (device) characters of [a-z0-9_-] that start
// with a letter or digit. kInvalidArgument naming the problem otherwise.
Status ValidateHostName(std::string_view host);
Status ValidateDeviceName(std::string_view device);
// kInvalidArgument unless 0 <= index < kMaxHosts.
Status ValidateHostIndex(int index);

// The names below assume validated arguments (they do not check).
std::string NetnsName(std::string_view cluster, std::string_view host);  // tern-<c>-<host>
std::string NetnsPrefix(std::string_view cluster);                       // tern-<c>-
std::string BridgeName(std::string_view cluster);                        // tb-<c>
std::string VethName(std::string_view cluster, int index);               // tv-<c>-<i>
std::string PeerName(std::string_view cluster, int index);               // tp-<c>-<i>
// True for names VethName/PeerName give for `cluster` and some index (exact match of
// the prefix and digits only after it: "tv-a-1" matches cluster "a", "tv-ab-1" does not).
bool IsVethOfCluster(std::string_view ifname, std::string_view cluster);
// <cgroup_root>/<controller>/tern/<cluster>[/<device>].
std::string ClusterCgroupDir(std::string_view cgroup_root, std::string_view controller,
                             std::string_view cluster);
std::string DeviceCgroupDir(std::string_view cgroup_root, std::string_view controller,
                            std::string_view cluster, std::string_view device);

// The cluster's /24: 10.x.y.0.
struct Subnet {
  uint8_t x = 0;
  uint8_t y = 0;
  bool operator==(const Subnet&) const = default;
};
Subnet ClusterSubnet(std::string_view cluster);
std::string SubnetCidr(Subnet s);              // "10.x.y.0/24"
std::string BridgeAddress(Subnet s);           // "10.x.y.1"
std::string HostAddress(Subnet s, int index);  // "10.x.y.(index+2)"
inline constexpr int kSubnetPrefixLength = 24;

}  // namespace tern::emu
