#include "placement/model.h"

#include <fmt/format.h>

#include <cmath>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "placement/internal.h"

namespace tern::placement {
namespace {

bool Finite(double v) { return std::isfinite(v); }

Status CheckLink(const LinkCost& l, const std::string& where) {
  if (l.latency_ns < 0) {
    return InvalidArgumentError(
        fmt::format("{}.latency_ns: expected >= 0, got {}", where, l.latency_ns));
  }
  if (!Finite(l.bandwidth_bps) || l.bandwidth_bps < 0) {
    return InvalidArgumentError(fmt::format(
        "{}.bandwidth_bps: expected >= 0 (0 = unlimited), got {}", where, l.bandwidth_bps));
  }
  if (!Finite(l.energy_j_per_byte) || l.energy_j_per_byte < 0) {
    return InvalidArgumentError(
        fmt::format("{}.energy_j_per_byte: expected >= 0, got {}", where, l.energy_j_per_byte));
  }
  return Status::Ok();
}

Status NonNegative(double v, const std::string& field) {
  if (!Finite(v) || v < 0) {
    return InvalidArgumentError(fmt::format("{}: expected a finite number >= 0, got {}", field, v));
  }
  return Status::Ok();
}

}  // namespace

std::string_view DeviceKindName(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::kCpu:
      return "cpu";
    case DeviceKind::kCsd:
      return "csd";
    case DeviceKind::kCpm:
      return "cpm";
    case DeviceKind::kNic:
      return "nic";
    case DeviceKind::kMem:
      return "mem";
    case DeviceKind::kGpu:
      return "gpu";
  }
  return "unknown";
}

std::string_view ProfileSourceName(ProfileSource source) {
  switch (source) {
    case ProfileSource::kEstimate:
      return "estimate";
    case ProfileSource::kMeasured:
      return "measured";
  }
  return "unknown";
}

ServiceProfile ProfileFromManifest(const Manifest& manifest, const ServiceHints& hints) {
  ServiceProfile p;
  p.name = manifest.name;
  p.tenant = manifest.tenant;
  p.replicas = static_cast<int>(manifest.replicas);
  p.memory_bytes = manifest.limits.memory_bytes();
  p.cpu_ns_per_request =
      hints.cpu_us_per_request > 0 ? hints.cpu_us_per_request * 1e3 : kDefaultCpuNsEstimate;
  p.source = ProfileSource::kEstimate;
  p.request_rate = hints.request_rate;
  p.reads = hints.reads;
  p.caller_host = hints.caller_host;
  p.request_bytes = hints.request_bytes;
  p.reply_bytes = hints.reply_bytes;
  // The deployer's hint overrides the manifest's `slo_p99_ms`.
  p.slo_p99_us =
      hints.slo_p99_us > 0 ? hints.slo_p99_us : static_cast<double>(manifest.slo_p99_us);
  return p;
}

Result<ServiceProfile> WithMeasurement(ServiceProfile profile, const Measurement& m) {
  if (!Finite(m.cpu_ns_per_request) || m.cpu_ns_per_request <= 0) {
    return InvalidArgumentError(
        fmt::format("measurement of {}: cpu_ns_per_request: expected a number > 0, got {}",
                    profile.name, m.cpu_ns_per_request));
  }
  if (!Finite(m.device_speed) || m.device_speed <= 0) {
    return InvalidArgumentError(
        fmt::format("measurement of {}: device_speed: expected a number > 0, got {}", profile.name,
                    m.device_speed));
  }
  for (const DatasetRead& r : m.reads) {
    TERN_RETURN_IF_ERROR(NonNegative(
        r.bytes_per_request,
        fmt::format("measurement of {}: reads[{}].bytes_per_request", profile.name, r.dataset)));
  }
  profile.cpu_ns_per_request = m.cpu_ns_per_request * m.device_speed;
  if (Finite(m.request_rate) && m.request_rate >= 0) profile.request_rate = m.request_rate;
  if (!m.reads.empty()) profile.reads = m.reads;
  profile.source = ProfileSource::kMeasured;
  return profile;
}

Status ValidateView(const ClusterView& view) {
  std::unordered_set<std::string> names;
  std::set<std::string> hosts;
  for (size_t i = 0; i < view.devices.size(); ++i) {
    const DeviceView& d = view.devices[i];
    std::string where = fmt::format("devices[{}] ({})", i, d.name);
    if (d.name.empty()) return InvalidArgumentError(fmt::format("devices[{}].name: empty", i));
    if (d.host.empty()) return InvalidArgumentError(where + ".host: empty");
    if (!names.insert(d.name).second) {
      return InvalidArgumentError(where + ".name: a second device of that name");
    }
    hosts.insert(d.host);
    if (!Finite(d.cores) || d.cores <= 0) {
      return InvalidArgumentError(fmt::format("{}.cores: expected > 0, got {}", where, d.cores));
    }
    if (!Finite(d.speed) || d.speed <= 0) {
      return InvalidArgumentError(fmt::format("{}.speed: expected > 0, got {}", where, d.speed));
    }
    if (!Finite(d.reserved) || d.reserved < 0 || d.reserved >= 1) {
      return InvalidArgumentError(
          fmt::format("{}.reserved: expected a value in [0, 1), got {}", where, d.reserved));
    }
    if (!Finite(d.idle_w) || !Finite(d.active_w) || d.idle_w < 0 || d.active_w < d.idle_w) {
      return InvalidArgumentError(
          fmt::format("{}.power: expected 0 <= idle_w <= active_w, got idle {} W, active {} W",
                      where, d.idle_w, d.active_w));
    }
    if (!Finite(d.utilization) || d.utilization < 0 || d.utilization > 1) {
      return InvalidArgumentError(
          fmt::format("{}.utilization: expected a value in [0, 1], got {}", where, d.utilization));
    }
    TERN_RETURN_IF_ERROR(CheckLink(d.link, where + ".link"));
  }
  std::set<std::pair<std::string, std::string>> linked;
  for (size_t i = 0; i < view.host_links.size(); ++i) {
    const HostLinkView& l = view.host_links[i];
    std::string where = fmt::format("host_links[{}] ({}-{})", i, l.a, l.b);
    if (!hosts.count(l.a) || !hosts.count(l.b)) {
      return InvalidArgumentError(where + ": names a host no device is on");
    }
    if (l.a == l.b) return InvalidArgumentError(where + ": a link from a host to itself");
    auto key = l.a < l.b ? std::make_pair(l.a, l.b) : std::make_pair(l.b, l.a);
    if (!linked.insert(key).second) return InvalidArgumentError(where + ": listed twice");
    TERN_RETURN_IF_ERROR(CheckLink(l.cost, where));
  }
  if (view.has_default_host_link) {
    TERN_RETURN_IF_ERROR(CheckLink(view.default_host_link, "default_host_link"));
  } else if (linked.size() != hosts.size() * (hosts.size() - 1) / 2) {
    for (auto a = hosts.begin(); a != hosts.end(); ++a) {
      for (auto b = std::next(a); b != hosts.end(); ++b) {
        if (!linked.count({*a, *b})) {
          return InvalidArgumentError(fmt::format(
              "host_links: hosts {} and {} have no link (and no default_host_link is set)", *a,
              *b));
        }
      }
    }
  }
  const TransportCosts& t = view.transports;
  for (auto [name, tier] : {std::pair<const char*, const TierCost*>{"inproc", &t.inproc},
                            {"shm", &t.shm},
                            {"tcp", &t.tcp}}) {
    TERN_RETURN_IF_ERROR(NonNegative(tier->fixed_ns, fmt::format("transports.{}.fixed_ns", name)));
    TERN_RETURN_IF_ERROR(
        NonNegative(tier->ns_per_byte, fmt::format("transports.{}.ns_per_byte", name)));
  }
  for (const auto& [tenant, use] : view.tenant_use) {
    if (use.instances < 0) {
      return InvalidArgumentError(fmt::format("tenant_use[{}].instances: expected >= 0", tenant));
    }
    TERN_RETURN_IF_ERROR(NonNegative(use.cores, fmt::format("tenant_use[{}].cores", tenant)));
  }
  return Status::Ok();
}

Status ValidateProfile(const ClusterView& view, const ServiceProfile& s) {
  std::unordered_set<std::string> devices, hosts, datasets;
  for (const DeviceView& d : view.devices) {
    devices.insert(d.name);
    hosts.insert(d.host);
    for (const std::string& ds : d.datasets) datasets.insert(ds);
  }
  return internal::ValidateProfileAgainst(
      s, internal::ProfileRefs{[&](const std::string& n) { return devices.count(n) > 0; },
                               [&](const std::string& n) { return hosts.count(n) > 0; },
                               [&](const std::string& n) { return datasets.count(n) > 0; }});
}

namespace internal {

Status ValidateProfileAgainst(const ServiceProfile& s, const ProfileRefs& refs) {
  std::string where = fmt::format("service {}", s.name);
  if (s.name.empty()) return InvalidArgumentError("service: name: empty");
  if (s.replicas < 1) {
    return InvalidArgumentError(
        fmt::format("{}: replicas: expected >= 1, got {}", where, s.replicas));
  }
  TERN_RETURN_IF_ERROR(NonNegative(s.request_rate, where + ": request_rate"));
  TERN_RETURN_IF_ERROR(NonNegative(s.cpu_ns_per_request, where + ": cpu_ns_per_request"));
  TERN_RETURN_IF_ERROR(NonNegative(s.request_bytes, where + ": request_bytes"));
  TERN_RETURN_IF_ERROR(NonNegative(s.reply_bytes, where + ": reply_bytes"));
  TERN_RETURN_IF_ERROR(NonNegative(s.slo_p99_us, where + ": slo_p99_us"));
  TERN_RETURN_IF_ERROR(NonNegative(s.service_cv2, where + ": service_cv2"));
  for (size_t i = 0; i < s.reads.size(); ++i) {
    const DatasetRead& r = s.reads[i];
    std::string rw = fmt::format("{}: reads[{}] ({})", where, i, r.dataset);
    TERN_RETURN_IF_ERROR(NonNegative(r.bytes_per_request, rw + ".bytes_per_request"));
    if (!refs.dataset(r.dataset)) {
      return InvalidArgumentError(rw + ": no device holds this dataset");
    }
  }
  if (!s.caller_host.empty() && !refs.host(s.caller_host)) {
    return InvalidArgumentError(
        fmt::format("{}: caller_host: no device is on host '{}'", where, s.caller_host));
  }
  if (!s.caller_device.empty() && !refs.device(s.caller_device)) {
    return InvalidArgumentError(
        fmt::format("{}: caller_device: no device '{}'", where, s.caller_device));
  }
  for (size_t i = 0; i < s.calls.size(); ++i) {
    const CallEdge& e = s.calls[i];
    std::string ew = fmt::format("{}: calls[{}] ({})", where, i, e.callee);
    TERN_RETURN_IF_ERROR(NonNegative(e.calls_per_request, ew + ".calls_per_request"));
    TERN_RETURN_IF_ERROR(NonNegative(e.request_bytes, ew + ".request_bytes"));
    TERN_RETURN_IF_ERROR(NonNegative(e.reply_bytes, ew + ".reply_bytes"));
    for (const std::string& d : e.callee_devices) {
      if (!refs.device(d)) {
        return InvalidArgumentError(fmt::format("{}.callee_devices: no device '{}'", ew, d));
      }
    }
  }
  for (const std::string& d : s.allowed_devices) {
    if (!refs.device(d)) {
      return InvalidArgumentError(fmt::format("{}: allowed_devices: no device '{}'", where, d));
    }
  }
  return Status::Ok();
}

}  // namespace internal
}  // namespace tern::placement
