#include "controller/advisor.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/manifest.h"

namespace tern::controller {

using nlohmann::json;

std::string HintsToJson(const PlacementHints& h) {
  json reads = json::array();
  for (const placement::DatasetRead& r : h.reads) {
    reads.push_back({{"dataset", r.dataset}, {"bytes", r.bytes_per_request}});
  }
  return json{{"policy", h.policy}, {"cpu_us", h.cpu_us}, {"rate", h.rate},
              {"slo_p99_us", h.slo_p99_us}, {"cv2", h.cv2}, {"reads", reads}}
      .dump();
}

Result<PlacementHints> HintsFromJson(std::string_view text) {
  PlacementHints h;
  if (text.empty()) return h;
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError("placement: expected an object {\"policy\", \"cpu_us\", \"rate\", "
                                "\"slo_p99_us\", \"reads\": [{\"dataset\", \"bytes\"}]}");
  }
  auto number = [&](const char* k, double* out) -> Status {
    if (!j.contains(k)) return Status::Ok();
    if (!j[k].is_number() || !std::isfinite(j[k].get<double>()) || j[k].get<double>() < 0) {
      return InvalidArgumentError(fmt::format("placement.{}: expected a number >= 0", k));
    }
    *out = j[k].get<double>();
    return Status::Ok();
  };
  for (const auto& [key, value] : j.items()) {
    if (key != "policy" && key != "cpu_us" && key != "rate" && key != "slo_p99_us" &&
        key != "reads" && key != "cv2") {
      return InvalidArgumentError(fmt::format("placement: unknown field '{}'", key));
    }
  }
  if (j.contains("policy")) {
    if (!j["policy"].is_string()) return InvalidArgumentError("placement.policy: expected a name");
    h.policy = j["policy"].get<std::string>();
    if (!h.policy.empty()) {
      TERN_RETURN_IF_ERROR(placement::ParsePolicy(h.policy).status().WithPrefix("placement.policy"));
    }
  }
  TERN_RETURN_IF_ERROR(number("cpu_us", &h.cpu_us));
  TERN_RETURN_IF_ERROR(number("rate", &h.rate));
  TERN_RETURN_IF_ERROR(number("slo_p99_us", &h.slo_p99_us));
  TERN_RETURN_IF_ERROR(number("cv2", &h.cv2));
  if (j.contains("reads")) {
    if (!j["reads"].is_array()) return InvalidArgumentError("placement.reads: expected a list");
    for (size_t i = 0; i < j["reads"].size(); ++i) {
      const json& r = j["reads"][i];
      if (!r.is_object() || !r.contains("dataset") || !r["dataset"].is_string() ||
          !r.contains("bytes") || !r["bytes"].is_number() || r["bytes"].get<double>() < 0) {
        return InvalidArgumentError(
            fmt::format("placement.reads[{}]: expected {{\"dataset\": NAME, \"bytes\": N}}", i));
      }
      h.reads.push_back({r["dataset"].get<std::string>(), r["bytes"].get<double>()});
    }
  }
  return h;
}

namespace {

placement::DeviceKind KindOf(std::string_view name) {
  Result<cluster::DeviceKind> k = cluster::ParseDeviceKind(name);
  return k.ok() ? static_cast<placement::DeviceKind>(static_cast<int>(*k))
                : placement::DeviceKind::kCpu;
}

}  // namespace

placement::ClusterView BuildPlacementView(
    const cluster::Topology* topology, const ClusterView& view,
    const std::map<std::string, double>& guest_cores,
    const std::map<std::string, std::vector<std::string>>& datasets) {
  placement::ClusterView v;
  std::map<std::string, uint64_t> committed;
  for (const auto& [id, p] : view.instances) {
    auto s = view.services.find(p.record.service);
    if (s != view.services.end()) committed[p.record.device] += s->second.memory_bytes;
  }
  for (const auto& [device, a] : view.agents) {
    placement::DeviceView d;
    d.name = device;
    d.host = a.host;
    d.kind = KindOf(a.kind);
    d.cores = std::max(a.cores, 1e-3);
    d.speed = std::max(a.speed, 1e-3);
    d.memory_bytes = a.memory_bytes;
    const cluster::Device* t = topology ? topology->FindDevice(device) : nullptr;
    if (t != nullptr) {
      d.idle_w = t->power.idle_w;
      d.active_w = t->power.active_w;
      d.reserved = t->reserved;
      d.datasets = t->datasets;
      d.link = {t->link.latency_ns, t->link.bandwidth_bps, t->link.energy_j_per_byte};
    }
    auto ds = datasets.find(device);
    if (ds != datasets.end()) {
      for (const std::string& name : ds->second) {
        if (std::find(d.datasets.begin(), d.datasets.end(), name) == d.datasets.end()) {
          d.datasets.push_back(name);
        }
      }
    }
    auto u = guest_cores.find(device);
    const double offered = d.cores * (1 - d.reserved);
    d.utilization = u == guest_cores.end() ? 0 : std::clamp(u->second / offered, 0.0, 1.0);
    d.memory_committed_bytes = committed[device];
    v.devices.push_back(std::move(d));
  }
  if (topology != nullptr) {
    for (const cluster::HostLink& l : topology->links) {
      v.host_links.push_back({l.a, l.b, {l.latency_ns, l.bandwidth_bps, l.energy_j_per_byte}});
    }
  }
  // Hosts the topology does not link (or no topology): an unshaped link.
  v.has_default_host_link = true;
  return v;
}

Result<placement::ServiceProfile> BuildProfile(const ServiceRecord& svc,
                                               const PlacementHints& hints,
                                               const placement::ClusterView& view,
                                               const std::optional<ServiceMeasurement>& m) {
  TERN_ASSIGN_OR_RETURN(Manifest manifest, ParseManifest(svc.manifest_yaml, svc.name));
  placement::ServiceHints h;
  h.cpu_us_per_request = hints.cpu_us;
  h.request_rate = hints.rate;
  h.slo_p99_us = hints.slo_p99_us;
  // Only datasets some device of the view holds can be priced.
  for (const placement::DatasetRead& r : hints.reads) {
    for (const placement::DeviceView& d : view.devices) {
      if (std::find(d.datasets.begin(), d.datasets.end(), r.dataset) != d.datasets.end()) {
        h.reads.push_back(r);
        break;
      }
    }
  }
  placement::ServiceProfile p = placement::ProfileFromManifest(manifest, h);
  p.name = svc.name;
  p.replicas = std::max(svc.replicas, 1);
  p.allowed_devices = svc.devices;
  p.service_cv2 = hints.cv2;
  if (m && m->requests > 0 && m->cpu_ns_speed1 > 0) {
    placement::Measurement meas;
    meas.cpu_ns_per_request = m->cpu_ns_speed1;
    meas.device_speed = 1;
    meas.request_rate = m->rate > 0 ? m->rate : -1;
    // Telemetry counts dataset bytes per instance, not per dataset: spread them over the
    // hinted datasets in the hints' proportions.
    double hinted = 0;
    for (const placement::DatasetRead& r : p.reads) hinted += r.bytes_per_request;
    for (const placement::DatasetRead& r : p.reads) {
      double share = hinted > 0 ? r.bytes_per_request / hinted : 1.0 / p.reads.size();
      meas.reads.push_back({r.dataset, m->data_bytes * share});
    }
    Result<placement::ServiceProfile> mp = placement::WithMeasurement(p, meas);
    if (mp.ok()) p = std::move(*mp);
  }
  return p;
}

Result<placement::Decision> Advise(const ServiceRecord& svc, const PlacementHints& hints,
                                   const placement::ClusterView& view,
                                   const std::optional<ServiceMeasurement>& m) {
  TERN_ASSIGN_OR_RETURN(placement::Policy policy,
                        placement::ParsePolicy(hints.policy.empty() ? "balanced" : hints.policy));
  TERN_ASSIGN_OR_RETURN(placement::ServiceProfile p, BuildProfile(svc, hints, view, m));
  return placement::Place(view, p, policy);
}

std::vector<std::string> RankedDevices(const placement::Decision& d) {
  std::vector<const placement::Candidate*> ok;
  for (const placement::Candidate& c : d.candidates) {
    if (c.prediction.fits && c.prediction.device != d.device) ok.push_back(&c);
  }
  auto key = [&](const placement::Candidate* c) {
    const placement::Prediction& p = c->prediction;
    switch (d.policy) {
      case placement::Policy::kEnergy:
        return std::make_tuple(false, p.energy_j_per_request, p.latency_p99_us);
      case placement::Policy::kBalanced:
        return std::make_tuple(!p.meets_slo, p.energy_j_per_request, p.latency_p99_us);
      default:
        return std::make_tuple(false, p.latency_p99_us, p.energy_j_per_request);
    }
  };
  std::stable_sort(ok.begin(), ok.end(), [&](auto* a, auto* b) { return key(a) < key(b); });
  std::vector<std::string> out;
  if (!d.device.empty()) out.push_back(d.device);
  for (const placement::Candidate* c : ok) out.push_back(c->prediction.device);
  return out;
}

}  // namespace tern::controller
