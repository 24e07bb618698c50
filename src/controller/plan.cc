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
    if (a == view.agents.end() || !Allowed(svc, device) || view.backoff.count({device, svc.name}) ||
        view.draining.count(device)) {
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
    if (view.draining.count(device)) {
      why.push_back(fmt::format("{}: draining", device));
      continue;
    }
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
  // The allowed devices without a live agent are reasons too: a drain that names only
  // the device it drains hides that the other one is down.
  for (const std::string& device : svc.devices) {
    if (view.agents.count(device) == 0) why.push_back(fmt::format("{}: dead", device));
  }
  return ResourceExhaustedError(fmt::format("no device fits: {}", fmt::join(why, "; ")));
}

Plan PlanReconcile(const ClusterView& view) {
  Plan plan;
  UseMap use;
  std::map</*service*/ std::string, std::vector<const PlacedInstance*>> alive;
  // Instances of dead agents that have a checkpoint: re-placed (same id) below, once the
  // use of every live instance is known.
  std::vector<const PlacedInstance*> to_restore;
  for (const auto& [id, p] : view.instances) {
    const InstanceRecord& r = p.record;
    auto sit = view.services.find(r.service);
    auto ait = view.agents.find(r.device);
    if (view.busy.count(id)) {
      // An operation moves it: leave it alone, but count it where it is.
      if (sit != view.services.end() && ait != view.agents.end()) {
        AddUse(&use, r.device, &sit->second, r.service);
      }
      if (sit != view.services.end() && !view.leaving.count(id)) alive[r.service].push_back(&p);
      continue;
    }
    if (sit == view.services.end()) {
      if (ait == view.agents.end()) {
        plan.actions.push_back({Action::Kind::kForget, id, r.service, r.device,
                                "its service was removed and its agent is gone"});
      } else {
        plan.actions.push_back(
            {Action::Kind::kStop, id, r.service, r.device, "its service was removed"});
      }
      continue;
    }
    bool checkpointed = sit->second.stateful && view.checkpoints.count(id) > 0;
    if (ait == view.agents.end()) {
      if (checkpointed) {
        to_restore.push_back(&p);
        alive[r.service].push_back(&p);
        continue;
      }
      plan.actions.push_back({Action::Kind::kForget, id, r.service, r.device,
                              fmt::format("agent {} is gone", r.device)});
      continue;
    }
    if (checkpointed && r.boot != ait->second.boot && view.backoff.count({r.device, r.service})) {
      // Starting it there failed recently: restore it somewhere else.
      to_restore.push_back(&p);
      alive[r.service].push_back(&p);
      continue;
    }
    AddUse(&use, r.device, &sit->second, r.service);
    if (!view.leaving.count(id)) alive[r.service].push_back(&p);
    if (r.boot != ait->second.boot) {
      plan.actions.push_back({Action::Kind::kStart, id, r.service, r.device,
                              r.boot.empty() ? "placed, not started"
                                             : fmt::format("agent {} restarted", r.device)});
    }
  }
  for (const PlacedInstance* p : to_restore) {
    const InstanceRecord& r = p->record;
    const ServiceRecord& svc = view.services.at(r.service);
    ClusterView others = view;  // never back onto the device it left
    others.backoff.insert({r.device, r.service});
    Result<std::string> d = ChooseDevice(others, svc, use);
    if (!d.ok()) {
      plan.unplaceable[r.service] =
          fmt::format("cannot restore {} from its checkpoint yet: {}", r.id, d.status().message());
      continue;
    }
    AddUse(&use, *d, &svc, r.service);
    plan.actions.push_back({Action::Kind::kRestore, r.id, r.service, *d,
                            view.agents.count(r.device)
                                ? fmt::format("starting it on {} failed", r.device)
                                : fmt::format("agent {} is gone", r.device)});
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
      // Instances an operation moves are not candidates.
      std::stable_partition(have.begin(), have.end(), [&](const PlacedInstance* p) {
        return !view.busy.count(p->record.id);
      });
      int movable = 0;
      for (const PlacedInstance* p : have) movable += !view.busy.count(p->record.id);
      for (int i = 0; i < std::min(n - svc.replicas, movable); ++i) {
        const InstanceRecord& r = have[i]->record;
        --use[r.device].instances;
        plan.actions.push_back({Action::Kind::kStop, r.id, name, r.device,
                                fmt::format("{} replicas wanted, {} running", svc.replicas, n)});
      }
    }
  }
  return plan;
}

UseMap UseOf(const ClusterView& view) {
  UseMap use;
  for (const auto& [id, p] : view.instances) {
    if (!view.agents.count(p.record.device)) continue;
    auto sit = view.services.find(p.record.service);
    AddUse(&use, p.record.device, sit == view.services.end() ? nullptr : &sit->second,
           p.record.service);
  }
  return use;
}

Status CheckMigrationTarget(const ClusterView& view, const std::string& id,
                            const std::string& device) {
  auto it = view.instances.find(id);
  if (it == view.instances.end()) return NotFoundError(fmt::format("no instance '{}'", id));
  const InstanceRecord& r = it->second.record;
  auto sit = view.services.find(r.service);
  if (sit == view.services.end()) {
    return FailedPreconditionError(
        fmt::format("instance {}: its service {} is being removed", id, r.service));
  }
  const ServiceRecord& svc = sit->second;
  auto src = view.agents.find(r.device);
  if (src == view.agents.end()) {
    return FailedPreconditionError(
        fmt::format("instance {}: its device {} is gone (the controller re-places it by itself)",
                    id, r.device));
  }
  if (r.boot.empty() || r.boot != src->second.boot) {
    return FailedPreconditionError(
        fmt::format("instance {} is not running on {} yet; try again shortly", id, r.device));
  }
  if (view.busy.count(id)) {
    return AbortedError(fmt::format("instance {} is already being moved", id));
  }
  if (device == r.device) {
    return InvalidArgumentError(fmt::format("instance {} already runs on {}", id, device));
  }
  auto dst = view.agents.find(device);
  if (dst == view.agents.end()) {
    return NotFoundError(
        fmt::format("device {} has no live agent (`tern ps` lists the devices)", device));
  }
  if (view.draining.count(device)) {
    return FailedPreconditionError(
        fmt::format("device {} is being drained (`tern undrain {}` first)", device, device));
  }
  if (!Allowed(svc, device)) {
    return FailedPreconditionError(fmt::format("service {} may not run on {} (its devices: {})",
                                               svc.name, device, fmt::join(svc.devices, ", ")));
  }
  UseMap use = UseOf(view);
  uint64_t taken = use.count(device) ? use.at(device).memory_bytes : 0;
  if (svc.memory_bytes > 0 && taken + svc.memory_bytes > dst->second.memory_bytes) {
    return ResourceExhaustedError(fmt::format(
        "device {} cannot take {}: {} MiB of its {} MiB memory are taken, the instance may "
        "use {} MiB",
        device, id, taken >> 20, dst->second.memory_bytes >> 20, svc.memory_bytes >> 20));
  }
  return Status::Ok();
}

Result<std::string> ChooseMigrationTarget(const ClusterView& view, const std::string& id) {
  auto it = view.instances.find(id);
  if (it == view.instances.end()) return NotFoundError(fmt::format("no instance '{}'", id));
  const InstanceRecord& r = it->second.record;
  auto sit = view.services.find(r.service);
  if (sit == view.services.end()) {
    return FailedPreconditionError(fmt::format("instance {}: its service is being removed", id));
  }
  ClusterView v = view;
  v.draining.insert(r.device);
  UseMap use = UseOf(view);
  // Spread counts the other replicas only: this one is leaving its device.
  if (use.count(r.device)) {
    DeviceUse& u = use[r.device];
    --u.instances;
    --u.of_service[r.service];
    u.memory_bytes -= std::min(u.memory_bytes, sit->second.memory_bytes);
  }
  return ChooseDevice(v, sit->second, use);
}

std::map<std::string, std::string> MovedInstances(const ClusterView& view,
                                                  const std::map<std::string, Sightings>& seen,
                                                  const std::map<std::string, int64_t>& since_ns) {
  std::map<std::string, std::string> out;
  for (const auto& [id, p] : view.instances) {
    const InstanceRecord& r = p.record;
    auto since = since_ns.find(id);
    if (since == since_ns.end()) continue;
    auto fresh = [&](const Sightings& s) { return s.two && s.previous_at_ns > since->second; };
    auto a = view.agents.find(r.device);
    if (a == view.agents.end() || r.boot.empty() || r.boot != a->second.boot ||
        view.busy.count(id)) {
      continue;
    }
    auto home = seen.find(r.device);
    if (home == seen.end() || !fresh(home->second) || home->second.last.count(id) ||
        home->second.previous.count(id)) {
      continue;
    }
    std::vector<std::string> at;
    for (const auto& [device, s] : seen) {
      if (device != r.device && view.agents.count(device) && fresh(s) && s.last.count(id) &&
          s.previous.count(id)) {
        at.push_back(device);
      }
    }
    if (at.size() == 1) out[id] = at[0];
  }
  return out;
}

std::optional<Move> PlanRebalance(const ClusterView& view, const RebalanceInput& in,
                                  const RebalanceOptions& options,
                                  std::map<std::string, std::string>* stuck) {
  auto movable = [&](const std::string& id, const PlacedInstance& p) {
    auto a = view.agents.find(p.record.device);
    if (a == view.agents.end() || p.record.boot != a->second.boot) return false;
    if (view.busy.count(id) || view.leaving.count(id) || !view.services.count(p.record.service)) {
      return false;
    }
    auto last = in.last_moved_ms.find(id);
    return last == in.last_moved_ms.end() || in.now_ms - last->second >= options.cooldown_ms;
  };
  auto recent = [&](const std::string& device) -> double {
    auto u = in.util.find(device);
    return u == in.util.end() || u->second.empty() ? 0 : u->second.back();
  };
  // 1. Sustained overload: every sample of the window at or above the threshold.
  std::vector<std::pair<double, std::string>> overloaded;
  for (const auto& [device, samples] : in.util) {
    if (!view.agents.count(device) || options.overload_samples <= 0 ||
        samples.size() < static_cast<size_t>(options.overload_samples)) {
      continue;
    }
    bool all = true;
    double sum = 0;
    for (size_t i = samples.size() - options.overload_samples; i < samples.size(); ++i) {
      all = all && samples[i] >= options.overload_util;
      sum += samples[i];
    }
    if (all) overloaded.emplace_back(sum / options.overload_samples, device);
  }
  std::sort(overloaded.rbegin(), overloaded.rend());
  for (const auto& [util, device] : overloaded) {
    std::vector<std::pair<double, std::string>> here;  // (rate, id), busiest first
    for (const auto& [id, p] : view.instances) {
      if (p.record.device != device || !movable(id, p)) continue;
      auto r = in.rate.find(id);
      here.emplace_back(r == in.rate.end() ? 0 : r->second, id);
    }
    std::sort(here.begin(), here.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (const auto& [rate, id] : here) {
      ClusterView v = view;
      for (const auto& [d, samples] : in.util) {
        if (recent(d) >= options.overload_util - options.headroom) v.draining.insert(d);
      }
      Result<std::string> to = ChooseMigrationTarget(v, id);
      if (!to.ok() || !CheckMigrationTarget(v, id, *to).ok()) continue;
      return Move{
          id, device, *to,
          fmt::format("{} at {:.0f}% CPU or more for its last {} samples (mean {:.0f}%)", device,
                      options.overload_util * 100, options.overload_samples, util * 100)};
    }
  }
  // 2. Sustained SLO violation: every sample of the window above the target. The worst
  // violator (its best sample against its target) goes first.
  auto ms = [](double us) { return fmt::format("{:.3g} ms", us / 1000); };
  std::vector<std::tuple<double, std::string, double>> violators;  // (ratio, id, best p99)
  for (const auto& [id, slo] : in.slo) {
    auto it = view.instances.find(id);
    if (it == view.instances.end() || !movable(id, it->second) || slo.target_us <= 0 ||
        options.slo_samples <= 0 || slo.p99_us.size() < static_cast<size_t>(options.slo_samples)) {
      continue;
    }
    double best = slo.p99_us.back();
    for (size_t i = slo.p99_us.size() - options.slo_samples; i < slo.p99_us.size(); ++i) {
      best = std::min(best, slo.p99_us[i]);
    }
    if (best > slo.target_us) violators.emplace_back(best / slo.target_us, id, best);
  }
  std::sort(violators.begin(), violators.end(),
            [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  for (const auto& [ratio, id, best] : violators) {
    const RebalanceInput::Slo& slo = in.slo.at(id);
    const std::string& from = view.instances.at(id).record.device;
    std::vector<std::string> why;
    for (const auto& [device, p99, why_not] : slo.predicted) {
      if (device == from) continue;
      if (!why_not.empty()) {
        why.push_back(fmt::format("{}: {}", device, why_not));
        continue;
      }
      if (p99 > slo.target_us) {
        why.push_back(fmt::format("{}: predicted p99 {}", device, ms(p99)));
        continue;
      }
      if (Status c = CheckMigrationTarget(view, id, device); !c.ok()) {
        why.push_back(std::string(c.message()));
        continue;
      }
      if (recent(device) >= options.overload_util - options.headroom) {
        why.push_back(fmt::format("{}: no headroom ({:.0f}% CPU)", device, recent(device) * 100));
        continue;
      }
      return Move{id, from, device,
                  fmt::format("its p99 was above its SLO of {} in each of its last {} samples "
                              "(the lowest {}); {} is predicted at {}",
                              ms(slo.target_us), options.slo_samples, ms(best), device, ms(p99))};
    }
    if (stuck != nullptr) {
      (*stuck)[id] = fmt::format(
          "it misses its SLO of {} on {} (p99 at least {} in each of its last {} samples), "
          "and no other device is predicted to meet it and can take it{}{}",
          ms(slo.target_us), from, ms(best), options.slo_samples, why.empty() ? "" : ": ",
          fmt::format("{}", fmt::join(why, "; ")));
    }
  }
  // 3. A cheaper placement, by enough to pay for the move.
  std::optional<Move> best;
  double best_saving = 0;
  for (const auto& [id, alt] : in.cheaper) {
    auto it = view.instances.find(id);
    if (it == view.instances.end() || !movable(id, it->second) || alt.device.empty() ||
        alt.device == it->second.record.device) {
      continue;
    }
    double saving = alt.current - alt.cost;
    if (saving <= options.margin * alt.current + options.migration_cost || saving <= best_saving) {
      continue;
    }
    if (!CheckMigrationTarget(view, id, alt.device).ok()) continue;
    if (recent(alt.device) >= options.overload_util - options.headroom) continue;
    best_saving = saving;
    best = Move{id, it->second.record.device, alt.device,
                fmt::format("{} is cheaper: {:.3g} instead of {:.3g} (saves {:.0f}%, more than "
                            "the {:.0f}% margin plus the move)",
                            alt.device, alt.cost, alt.current, 100 * saving / alt.current,
                            100 * options.margin)};
  }
  return best;
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
