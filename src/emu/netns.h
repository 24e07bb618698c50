// The emulated datacenter network: one network namespace per emulated host, each joined
// to one bridge in the root namespace by a veth pair, with optional kernel rate limits.
//
//   root namespace:  bridge tb-<c> (10.X.Y.1/24, up)
//                     ├── tv-<c>-0  ── veth ──  eth0 in tern-<c>-<host0> (10.X.Y.2/24)
//                     └── tv-<c>-1  ── veth ──  eth0 in tern-<c>-<host1> (10.X.Y.3/24)
//   in each host namespace: lo up, eth0 up, default route via 10.X.Y.1
//
// Names and addresses: emu/naming.h. Hosts reach each other over the bridge (layer 2)
// and the root namespace (controller, gateway) reaches them through the bridge's own
// address: no IP forwarding, no NAT, no iptables rules, no sysctl changes are needed.
// Latency is NOT emulated here (this kernel has no netem): the runtime's transport does it
// in user space. Rates use tbf (see TbfBurstBytes), applied to both ends of a host's veth
// so both directions are limited.
//
// Every resource is recorded in the ledger before it is created. If CreateHostNetwork
// fails half-way, what it made stays (and is in the ledger): run emu::Teardown.
//
// Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces) and iproute2 (`ip`, `tc`),
// which it runs as child processes (fork + exec, no shell).
// Thread-safety: the functions are stateless apart from the ledger; calls for different
// clusters may run concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "emu/ledger.h"
#include "emu/naming.h"

namespace tern::emu {

struct HostSpec {
  std::string name;       // [a-z0-9_-], unique in the cluster
  uint64_t rate_bps = 0;  // bits per second in each direction; 0 = unshaped
};

struct NetworkPlan {
  std::string cluster;          // [a-z0-9]{1,8}
  std::vector<HostSpec> hosts;  // host i gets index i (address .i+2, veth tv-<c>-<i>)
};

struct HostEndpoint {
  std::string name;             // "host1"
  int index = 0;                // position in the plan
  std::string netns;            // "tern-demo-host1"
  std::string address;          // "10.X.Y.(index+2)"
  std::string root_ifname;      // "tv-demo-0": the bridge port in the root namespace
  std::string ifname = "eth0";  // inside the namespace
};

struct HostNetwork {
  std::string cluster;
  Subnet subnet;
  std::string bridge;          // "tb-demo"
  std::string bridge_address;  // "10.X.Y.1"
  std::vector<HostEndpoint> hosts;
};

// OK if this process can build the network: euid 0 (kPermissionDenied otherwise), and
// `ip` and `tc` are installed (kUnavailable otherwise). Either error means: run on
// loopback instead, unshaped, and say so.
Status CheckNetworkSupport();

// The names and addresses CreateHostNetwork would use, without touching the machine.
// kInvalidArgument for a bad cluster or host name, a host listed twice, too many hosts.
Result<HostNetwork> PlanHostNetwork(const NetworkPlan& plan);

// Builds the network of `plan` as described at the top, recording each resource in
// `ledger` (must be the ledger of plan.cluster and outlive the call) before creating it.
// Errors: those of PlanHostNetwork and CheckNetworkSupport; kAlreadyExists if the
// cluster's bridge or a namespace exists (tear the old one down first) or if another
// route already covers the cluster's subnet (another cluster hashed to it); a failed
// command (kFailedPrecondition) quoting the command and its stderr.
Result<HostNetwork> CreateHostNetwork(const NetworkPlan& plan, Ledger* ledger);

// tbf's bucket size for a rate: max(ceil(bps / 8 / 100), 2 * 1514) bytes, i.e. 10 ms of
// traffic (rate / HZ for HZ = 100, the largest tick a kernel may use, so the bucket can
// refill between ticks) but at least two full Ethernet frames (MTU 1500 + 14).
uint64_t TbfBurstBytes(uint64_t bits_per_second);

// Limits egress of `ifname` (in namespace `netns`; "" = root namespace) to
// `bits_per_second` with a root tbf qdisc (replacing any root qdisc): rate, burst from
// TbfBurstBytes, latency 50 ms (the queue holds 50 ms of traffic beyond the burst).
// bits_per_second = 0 removes the limit. Records a qdisc entry in `ledger` (if not null)
// first. kInvalidArgument for rates below 8000 bit/s.
Status SetRate(const std::string& ifname, const std::string& netns, uint64_t bits_per_second,
               Ledger* ledger);

// SetRate on both ends of a host's veth: eth0 in its namespace (what the host sends) and
// the bridge port (what it receives).
Status SetHostRate(const HostEndpoint& host, uint64_t bits_per_second, Ledger* ledger);

// Moves the CALLING THREAD into network namespace `netns` (one `ip netns` made, under
// /run/netns): sockets it creates from then on, and threads it starts, are in there.
// For in-process tools that run servers on several emulated hosts (a thread per host);
// other threads of the process are not affected. Needs root.
Status JoinNetns(const std::string& netns);

}  // namespace tern::emu
