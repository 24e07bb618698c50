#include "emu/netns.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <set>

#include "core/file.h"
#include "emu/command.h"

namespace tern::emu {

namespace {

constexpr uint64_t kMinRateBps = 8000;
constexpr uint64_t kEthernetFrameBytes = 1514;

Status Ip(const std::vector<std::string>& args) {
  TERN_ASSIGN_OR_RETURN(std::string ip, FindTool("ip"));
  std::vector<std::string> argv{ip};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunTool(argv).status();
}

Status IpIn(const std::string& netns, const std::vector<std::string>& args) {
  std::vector<std::string> a{"-n", netns};
  a.insert(a.end(), args.begin(), args.end());
  return Ip(a);
}

bool LinkExists(const std::string& ip, const std::string& name) {
  Result<CommandOutput> r = RunCommand({ip, "link", "show", "dev", name});
  return r.ok() && r->exit_code == 0;
}

}  // namespace

Status CheckNetworkSupport() {
  if (::geteuid() != 0) {
    return PermissionDeniedError(
        "the emulated network needs root (network namespaces, veth pairs, tc); not running "
        "as root");
  }
  TERN_RETURN_IF_ERROR(FindTool("ip").status());
  TERN_RETURN_IF_ERROR(FindTool("tc").status());
  return Status::Ok();
}

Result<HostNetwork> PlanHostNetwork(const NetworkPlan& plan) {
  TERN_RETURN_IF_ERROR(ValidateClusterName(plan.cluster));
  if (plan.hosts.size() > static_cast<size_t>(kMaxHosts)) {
    return InvalidArgumentError(fmt::format("cluster {}: {} hosts; at most {} fit in a /24",
                                            plan.cluster, plan.hosts.size(), kMaxHosts));
  }
  HostNetwork net;
  net.cluster = plan.cluster;
  net.subnet = ClusterSubnet(plan.cluster);
  net.bridge = BridgeName(plan.cluster);
  net.bridge_address = BridgeAddress(net.subnet);
  std::set<std::string> seen;
  for (size_t i = 0; i < plan.hosts.size(); ++i) {
    const HostSpec& h = plan.hosts[i];
    TERN_RETURN_IF_ERROR(
        ValidateHostName(h.name).WithPrefix(fmt::format("cluster {}: hosts[{}]", plan.cluster, i)));
    if (!seen.insert(h.name).second) {
      return InvalidArgumentError(
          fmt::format("cluster {}: hosts[{}]: host '{}' is listed twice", plan.cluster, i, h.name));
    }
    if (h.rate_bps != 0 && h.rate_bps < kMinRateBps) {
      return InvalidArgumentError(fmt::format("cluster {}: host {}: rate {} bit/s is below {}",
                                              plan.cluster, h.name, h.rate_bps, kMinRateBps));
    }
    HostEndpoint e;
    e.name = h.name;
    e.index = static_cast<int>(i);
    e.netns = NetnsName(plan.cluster, h.name);
    e.address = HostAddress(net.subnet, e.index);
    e.root_ifname = VethName(plan.cluster, e.index);
    net.hosts.push_back(std::move(e));
  }
  return net;
}

uint64_t TbfBurstBytes(uint64_t bits_per_second) {
  uint64_t ten_ms = (bits_per_second + 799) / 800;  // ceil(bps / 8 / 100)
  return std::max(ten_ms, 2 * kEthernetFrameBytes);
}

Status SetRate(const std::string& ifname, const std::string& netns, uint64_t bits_per_second,
               Ledger* ledger) {
  TERN_ASSIGN_OR_RETURN(std::string tc, FindTool("tc"));
  std::vector<std::string> argv{tc};
  if (!netns.empty()) {
    argv.push_back("-n");
    argv.push_back(netns);
  }
  if (bits_per_second == 0) {
    argv.insert(argv.end(), {"qdisc", "del", "dev", ifname, "root"});
    // Fails when there is no root qdisc to delete: that is the state we want.
    Result<CommandOutput> r = RunCommand(argv);
    if (!r.ok()) return r.status();
    if (ledger != nullptr) return ledger->Forget(LedgerEntry::Qdisc(ifname, netns));
    return Status::Ok();
  }
  if (bits_per_second < kMinRateBps) {
    return InvalidArgumentError(
        fmt::format("rate for {}: {} bit/s is below {}", ifname, bits_per_second, kMinRateBps));
  }
  if (ledger != nullptr) TERN_RETURN_IF_ERROR(ledger->Record(LedgerEntry::Qdisc(ifname, netns)));
  argv.insert(argv.end(), {"qdisc", "replace", "dev", ifname, "root", "tbf", "rate",
                           fmt::format("{}bit", bits_per_second), "burst",
                           std::to_string(TbfBurstBytes(bits_per_second)), "latency", "50ms"});
  return RunTool(argv).status();
}

Status SetHostRate(const HostEndpoint& host, uint64_t bits_per_second, Ledger* ledger) {
  TERN_RETURN_IF_ERROR(SetRate(host.ifname, host.netns, bits_per_second, ledger));
  return SetRate(host.root_ifname, "", bits_per_second, ledger);
}

Result<HostNetwork> CreateHostNetwork(const NetworkPlan& plan, Ledger* ledger) {
  TERN_ASSIGN_OR_RETURN(HostNetwork net, PlanHostNetwork(plan));
  TERN_RETURN_IF_ERROR(CheckNetworkSupport());
  if (ledger == nullptr || ledger->cluster() != plan.cluster) {
    return InvalidArgumentError(
        fmt::format("CreateHostNetwork: needs the ledger of cluster {}", plan.cluster));
  }
  TERN_ASSIGN_OR_RETURN(std::string ip, FindTool("ip"));
  const std::string cidr = SubnetCidr(net.subnet);

  // Refuse to build over an existing network: its resources would be shared by two runs.
  if (LinkExists(ip, net.bridge)) {
    return AlreadyExistsError(
        fmt::format("cluster {}: bridge {} exists already (a previous run not torn down?)",
                    plan.cluster, net.bridge));
  }
  for (const HostEndpoint& h : net.hosts) {
    if (FileExists("/run/netns/" + h.netns) || LinkExists(ip, h.root_ifname)) {
      return AlreadyExistsError(fmt::format(
          "cluster {}: network namespace {} or link {} exists already (a previous run not "
          "torn down?)",
          plan.cluster, h.netns, h.root_ifname));
    }
  }
  TERN_ASSIGN_OR_RETURN(std::string routes,
                        RunTool({ip, "-4", "-o", "route", "show", "to", "exact", cidr}));
  if (!routes.empty()) {
    return AlreadyExistsError(fmt::format(
        "cluster {}: its subnet {} is already routed on this machine ({}); another cluster "
        "hashes to the same subnet, choose another cluster name",
        plan.cluster, cidr, routes.substr(0, routes.find('\n'))));
  }

  const std::string prefix = fmt::format("{}/{}", net.bridge_address, kSubnetPrefixLength);
  TERN_RETURN_IF_ERROR(ledger->Record(LedgerEntry::Bridge(net.bridge)));
  TERN_RETURN_IF_ERROR(Ip({"link", "add", net.bridge, "type", "bridge"}));
  TERN_RETURN_IF_ERROR(Ip({"addr", "add", prefix, "dev", net.bridge}));
  TERN_RETURN_IF_ERROR(Ip({"link", "set", net.bridge, "up"}));

  for (const HostEndpoint& h : net.hosts) {
    const std::string peer = PeerName(plan.cluster, h.index);
    TERN_RETURN_IF_ERROR(ledger->Record(LedgerEntry::Netns(h.netns)));
    TERN_RETURN_IF_ERROR(Ip({"netns", "add", h.netns}));
    // Deleting either end of a veth deletes the pair; the root end is the one recorded.
    TERN_RETURN_IF_ERROR(ledger->Record(LedgerEntry::Veth(h.root_ifname)));
    TERN_RETURN_IF_ERROR(Ip({"link", "add", h.root_ifname, "type", "veth", "peer", "name", peer}));
    TERN_RETURN_IF_ERROR(Ip({"link", "set", peer, "netns", h.netns}));
    TERN_RETURN_IF_ERROR(IpIn(h.netns, {"link", "set", peer, "name", h.ifname}));
    TERN_RETURN_IF_ERROR(IpIn(
        h.netns,
        {"addr", "add", fmt::format("{}/{}", h.address, kSubnetPrefixLength), "dev", h.ifname}));
    TERN_RETURN_IF_ERROR(IpIn(h.netns, {"link", "set", "lo", "up"}));
    TERN_RETURN_IF_ERROR(IpIn(h.netns, {"link", "set", h.ifname, "up"}));
    TERN_RETURN_IF_ERROR(IpIn(h.netns, {"route", "add", "default", "via", net.bridge_address}));
    TERN_RETURN_IF_ERROR(Ip({"link", "set", h.root_ifname, "master", net.bridge}));
    TERN_RETURN_IF_ERROR(Ip({"link", "set", h.root_ifname, "up"}));
    const uint64_t rate = plan.hosts[static_cast<size_t>(h.index)].rate_bps;
    if (rate != 0) TERN_RETURN_IF_ERROR(SetHostRate(h, rate, ledger));
  }
  return net;
}

Status JoinNetns(const std::string& netns) {
  if (netns.empty() || netns.find('/') != std::string::npos || netns[0] == '.') {
    return InvalidArgumentError(fmt::format("'{}' is not a network namespace name", netns));
  }
  const std::string path = "/run/netns/" + netns;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("opening " + path, errno);
  const int rc = ::setns(fd, CLONE_NEWNET);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("joining network namespace " + netns + " (setns)", err);
  return Status::Ok();
}

}  // namespace tern::emu
