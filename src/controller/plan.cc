#include "controller/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <tuple>

namespace tern::controller {

namespace {

bool Allowed(const ServiceRecord& svc, const std::string& device) {
  return svc.devices.empty() ||
         std::find(svc.devices.begin(), svc.devices.end(), device) != svc.devices.end();
}

void AddUse(UseMap* use, const std::string& device, const ServiceRecord* svc,
            const std::string& service) {
  DeviceUse& u = (*use)[device];
  ++u.instances;
  ++u.of_service[service];
  if (svc) u.memory_bytes += svc->memory_bytes;
}

}  // namespace

namespace {

// The engine's ranking (view.ranked) applied within the planner's own checks.
std::optional<std::string> ChooseRanked(const ClusterView& view, const ServiceRecord& svc,
                                        const UseMap& use) {
  auto r = view.ranked.find(svc.name);
  if (r == view.ranked.end()) return std::nullopt;
  const std::string* fallback = nullptr;
  for (const std::string& device : r->second) {
    auto a = view.agents.find(device);
    if (a == view.agents.end() || !Allowed(svc, device) || view.backoff.count({device, svc.name})) {
      continue;
    }
    auto it = use.find(device);
    const DeviceUse empty;
    const DeviceUse& u = it == use.end() ? empty : it->second;
    if (svc.memory_bytes > 0 && u.memory_bytes + svc.memory_bytes > a->second.memory_bytes) continue;
    auto same = u.of_service.find(svc.name);
    if (same == u.of_service.end() || same->second == 0) return device;
    if (fallback == nullptr) fallback = &device;
  }
  if (fallback != nullptr) return *fallback;
  return std::nullopt;
}

}  // namespace

Result<std::string> ChooseDevice(const ClusterView& view, const ServiceRecord& svc,
                                 const UseMap& use) {
  if (std::optional<std::string> d = ChooseRanked(view, svc, use)) return *d;
  const std::string* best = nullptr;
  std::tuple<int, double, std::string> best_key;
  std::vector<std::string> why;
  for (const auto& [device, agent] : view.agents) {
    if (!Allowed(svc, device)) continue;
    if (view.backoff.count({device, svc.name})) {
      why.push_back(fmt::format("{}: failed recently", device));
      continue;
    }
    auto it = use.find(device);
    const DeviceUse empty;
    const DeviceUse& u = it == use.end() ? empty : it->second;
    if (svc.memory_bytes > 0 && u.memory_bytes + svc.memory_bytes > agent.memory_bytes) {
      why.push_back(fmt::format("{}: {} MiB of {} MiB memory taken, needs {} MiB", device,
                                u.memory_bytes >> 20, agent.memory_bytes >> 20,
                                svc.memory_bytes >> 20));
      continue;
    }
    auto sit = u.of_service.find(svc.name);
    int same = sit == u.of_service.end() ? 0 : sit->second;
    double capacity = std::max(agent.cores * agent.speed, 1e-3);
    auto key = std::make_tuple(same, (u.instances + 1) / capacity, device);
    if (!best || key < best_key) {
      best = &device;
      best_key = key;
    }
  }
  if (best) return *best;
  if (view.agents.empty()) return ResourceExhaustedError("no agent is registered");
  if (why.empty()) {
    return ResourceExhaustedError(
        fmt::format("none of its allowed devices ({}) has a live agent",
                    fmt::join(svc.devices, ", ")));
  }
  return ResourceExhaustedError(fmt::format("no device fits: {}", fmt::join(why, "; ")));
}

Plan PlanReconcile(const ClusterView& view) {
  Plan plan;
  UseMap use;
  std::map</*service*/ std::string, std::vector<const PlacedInstance*>> alive;
  for (const auto& [id, p] : view.instances) {
    const InstanceRecord& r = p.record;
    auto sit = view.services.find(r.service);
    if (sit == view.services.end()) {
      auto ait = view.agents.find(r.device);
      if (ait == view.agents.end()) {
        plan.actions.push_back({Action::Kind::kForget, id, r.service, r.device,
                                "its service was removed and its agent is gone"});
      } else {
        plan.actions.push_back(
            {Action::Kind::kStop, id, r.service, r.device, "its service was removed"});
      }
      continue;
    }
    auto ait = view.agents.find(r.device);
    if (ait == view.agents.end()) {
      plan.actions.push_back({Action::Kind::kForget, id, r.service, r.device,
                              fmt::format("agent {} is gone", r.device)});
      continue;
    }
    AddUse(&use, r.device, &sit->second, r.service);
    alive[r.service].push_back(&p);
    if (r.boot != ait->second.boot) {
      plan.actions.push_back({Action::Kind::kStart, id, r.service, r.device,
                              r.boot.empty() ? "placed, not started"
                                             : fmt::format("agent {} restarted", r.device)});
    }
  }
  for (const auto& [name, svc] : view.services) {
    std::vector<const PlacedInstance*>& have = alive[name];
    int n = static_cast<int>(have.size());
    for (; n < svc.replicas; ++n) {
      Result<std::string> d = ChooseDevice(view, svc, use);
      if (!d.ok()) {
        plan.unplaceable[name] =
            fmt::format("{} of {} replicas placed: {}", n, svc.replicas, d.status().message());
        break;
      }
      AddUse(&use, *d, &svc, name);
      plan.actions.push_back({Action::Kind::kCreate, "", name, *d,
                              fmt::format("replica {} of {}", n + 1, svc.replicas)});
    }
    if (n > svc.replicas) {
      // Stop the extra ones: on the busiest devices first, newest first.
      std::sort(have.begin(), have.end(), [&](const PlacedInstance* a, const PlacedInstance* b) {
        int ua = use[a->record.device].instances, ub = use[b->record.device].instances;
        if (ua != ub) return ua > ub;
        return a->epoch > b->epoch;
      });
      for (int i = 0; i < n - svc.replicas; ++i) {
        const InstanceRecord& r = have[i]->record;
        --use[r.device].instances;
        plan.actions.push_back({Action::Kind::kStop, r.id, name, r.device,
                                fmt::format("{} replicas wanted, {} running", svc.replicas, n)});
      }
    }
  }
  return plan;
}

std::vector<dataplane::InstanceLocation> LocationsOf(const ClusterView& view) {
  std::vector<dataplane::InstanceLocation> out;
  for (const auto& [id, p] : view.instances) {
    auto ait = view.agents.find(p.record.device);
    if (ait == view.agents.end() || p.record.boot.empty() || p.record.boot != ait->second.boot) {
      continue;
    }
    if (view.services.count(p.record.service) == 0) continue;
    dataplane::InstanceLocation loc;
    loc.instance = id;
    loc.service = p.record.service;
    loc.agent = p.record.device;
    loc.host = ait->second.host;
    loc.tcp = ait->second.tcp;
    loc.shm = ait->second.shm;
    loc.epoch = static_cast<uint64_t>(std::max<int64_t>(p.epoch, 1));
    out.push_back(std::move(loc));
  }
  return out;
}

}  // namespace tern::controller
