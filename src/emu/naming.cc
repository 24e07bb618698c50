#include "emu/naming.h"

#include <fmt/format.h>

namespace tern::emu {

namespace {

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

Status ValidateName(std::string_view what, std::string_view name, size_t max_len) {
  if (name.empty()) return InvalidArgumentError(fmt::format("{} name is empty", what));
  if (name.size() > max_len) {
    return InvalidArgumentError(
        fmt::format("{} name '{}' is longer than {} characters", what, name, max_len));
  }
  if (!IsLowerAlnum(name[0])) {
    return InvalidArgumentError(fmt::format("{} name '{}' must start with [a-z0-9]", what, name));
  }
  for (char c : name) {
    if (!IsLowerAlnum(c) && c != '-' && c != '_') {
      return InvalidArgumentError(fmt::format(
          "{} name '{}' has the character '{}'; allowed are [a-z0-9_-]", what, name, c));
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateClusterName(std::string_view cluster) {
  if (cluster.empty()) return InvalidArgumentError("cluster name is empty");
  if (cluster.size() > kMaxClusterNameLength) {
    return InvalidArgumentError(fmt::format("cluster name '{}' is longer than {} characters",
                                            cluster, kMaxClusterNameLength));
  }
  for (char c : cluster) {
    if (!IsLowerAlnum(c)) {
      return InvalidArgumentError(fmt::format(
          "cluster name '{}' has the character '{}'; allowed are [a-z0-9]", cluster, c));
    }
  }
  return Status::Ok();
}

Status ValidateHostName(std::string_view host) {
  return ValidateName("host", host, kMaxHostNameLength);
}

Status ValidateDeviceName(std::string_view device) {
  return ValidateName("device", device, kMaxDeviceNameLength);
}

Status ValidateHostIndex(int index) {
  if (index < 0 || index >= kMaxHosts) {
    return InvalidArgumentError(
        fmt::format("host index {} is out of range [0, {})", index, kMaxHosts));
  }
  return Status::Ok();
}

std::string NetnsName(std::string_view cluster, std::string_view host) {
  return fmt::format("tern-{}-{}", cluster, host);
}

std::string NetnsPrefix(std::string_view cluster) { return fmt::format("tern-{}-", cluster); }

std::string BridgeName(std::string_view cluster) { return fmt::format("tb-{}", cluster); }

std::string VethName(std::string_view cluster, int index) {
  return fmt::format("tv-{}-{}", cluster, index);
}

std::string PeerName(std::string_view cluster, int index) {
  return fmt::format("tp-{}-{}", cluster, index);
}

bool IsVethOfCluster(std::string_view ifname, std::string_view cluster) {
  for (std::string_view kind : {"tv-", "tp-"}) {
    std::string prefix = fmt::format("{}{}-", kind, cluster);
    if (ifname.size() <= prefix.size() || ifname.substr(0, prefix.size()) != prefix) continue;
    std::string_view rest = ifname.substr(prefix.size());
    bool digits = true;
    for (char c : rest) digits = digits && c >= '0' && c <= '9';
    if (digits) return true;
  }
  return false;
}

std::string ClusterCgroupDir(std::string_view cgroup_root, std::string_view controller,
                             std::string_view cluster) {
  return fmt::format("{}/{}/tern/{}", cgroup_root, controller, cluster);
}

std::string DeviceCgroupDir(std::string_view cgroup_root, std::string_view controller,
                            std::string_view cluster, std::string_view device) {
  return fmt::format("{}/{}", ClusterCgroupDir(cgroup_root, controller, cluster), device);
}

Subnet ClusterSubnet(std::string_view cluster) {
  uint32_t h = 2166136261u;  // FNV-1a, 32 bit
  for (char c : cluster) {
    h ^= static_cast<uint8_t>(c);
    h *= 16777619u;
  }
  Subnet s;
  s.x = static_cast<uint8_t>(1 + h % 255);
  s.y = static_cast<uint8_t>((h / 255) % 256);
  return s;
}

std::string SubnetCidr(Subnet s) { return fmt::format("10.{}.{}.0/24", s.x, s.y); }

std::string BridgeAddress(Subnet s) { return fmt::format("10.{}.{}.1", s.x, s.y); }

std::string HostAddress(Subnet s, int index) {
  return fmt::format("10.{}.{}.{}", s.x, s.y, index + 2);
}

}  // namespace tern::emu
