#include "placement/sim.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <utility>

#include "placement/internal.h"

namespace tern::placement {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr int kRackSize = 16;

// A small seeded generator over splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x2545F4914F6CDD1DULL + 1) {}
  uint64_t Next() { return internal::SplitMix64(state_); }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  double Range(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  // Log-uniform in [lo, hi).
  double LogRange(double lo, double hi) { return lo * std::pow(hi / lo, Uniform()); }
  int Int(int n) { return static_cast<int>(Next() % static_cast<uint64_t>(n)); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Next() % v.size()];
  }

 private:
  uint64_t state_;
};

DeviceView Cpu(Rng& rng, const std::string& host) {
  DeviceView d;
  d.name = host + "-cpu";
  d.host = host;
  d.kind = DeviceKind::kCpu;
  d.cores = rng.Pick(std::vector<double>{8, 16, 32});
  d.speed = 1;
  d.memory_bytes = static_cast<uint64_t>(d.cores) * 4 * kGiB;
  d.idle_w = 10 + 2.5 * d.cores;
  d.active_w = 20 + 11 * d.cores;
  d.utilization = rng.Range(0, 0.3);
  return d;
}

DeviceView Csd(Rng& rng, const std::string& host, int n) {
  DeviceView d;
  d.name = fmt::format("{}-csd{}", host, n);
  d.host = host;
  d.kind = DeviceKind::kCsd;
  d.cores = rng.Pick(std::vector<double>{0.5, 1, 2});
  d.speed = rng.Pick(std::vector<double>{0.3, 0.4, 0.5});
  d.reserved = rng.Pick(std::vector<double>{0.25, 0.5});
  d.memory_bytes = rng.Pick(std::vector<uint64_t>{4 * kGiB, 8 * kGiB});
  d.idle_w = 5;
  d.active_w = 12;
  d.link = LinkCost{2000, 32e9, 40e-12};  // PCIe 3.0 x4: 2 µs, 4 GB/s, 40 pJ/B
  d.utilization = rng.Range(0, 0.2);
  return d;
}

DeviceView Nic(Rng& rng, const std::string& host) {
  DeviceView d;
  d.name = host + "-nic";
  d.host = host;
  d.kind = DeviceKind::kNic;
  d.cores = rng.Pick(std::vector<double>{4, 8});
  d.speed = 0.5;
  d.reserved = 0.5;
  d.memory_bytes = 16 * kGiB;
  d.idle_w = 15;
  d.active_w = 35;
  d.link = LinkCost{1000, 128e9, 40e-12};  // PCIe 4.0 x8
  d.utilization = rng.Range(0, 0.2);
  return d;
}

}  // namespace

Result<SimCluster> GenerateCluster(const SimSpec& spec) {
  if (spec.devices < 2 || spec.services < 1 || spec.instances < spec.services || !(spec.load > 0)) {
    return InvalidArgumentError(fmt::format(
        "sim spec: expected devices >= 2, services >= 1, instances >= services and load > 0; "
        "got {} devices, {} services, {} instances, load {}",
        spec.devices, spec.services, spec.instances, spec.load));
  }
  Rng rng(spec.seed);
  SimCluster out;
  ClusterView& v = out.view;
  int hosts = spec.devices >= 4 ? std::max(2, spec.devices / 4) : 1;
  out.hosts = hosts;
  out.racks = (hosts + kRackSize - 1) / kRackSize;
  std::vector<std::string> host_names;
  std::vector<bool> storage;
  std::vector<std::vector<int>> on_host(hosts);
  for (int h = 0; h < hosts; ++h) {
    host_names.push_back(fmt::format("r{}h{}", h / kRackSize, h % kRackSize));
    storage.push_back(h % 5 < 2);
  }
  // One CPU per host, then the other devices round-robin over the hosts.
  for (int h = 0; h < hosts && static_cast<int>(v.devices.size()) < spec.devices; ++h) {
    on_host[h].push_back(static_cast<int>(v.devices.size()));
    v.devices.push_back(Cpu(rng, host_names[h]));
  }
  std::vector<int> csd_count(hosts, 0);
  std::vector<bool> has_nic(hosts, false);
  for (int i = 0; static_cast<int>(v.devices.size()) < spec.devices; ++i) {
    int h = i % hosts;
    on_host[h].push_back(static_cast<int>(v.devices.size()));
    if (!storage[h] && !has_nic[h]) {
      has_nic[h] = true;
      v.devices.push_back(Nic(rng, host_names[h]));
    } else {
      v.devices.push_back(Csd(rng, host_names[h], csd_count[h]++));
    }
  }
  // Datasets: two per CSD on average, 30% of them on a second CSD too.
  std::vector<int> csds;
  for (size_t i = 0; i < v.devices.size(); ++i) {
    if (v.devices[i].kind == DeviceKind::kCsd) csds.push_back(static_cast<int>(i));
  }
  if (csds.empty()) {  // tiny clusters: make the last device a CSD
    DeviceView& last = v.devices.back();
    std::string host = last.host;
    last = Csd(rng, host, 0);
    csds.push_back(static_cast<int>(v.devices.size()) - 1);
  }
  std::vector<std::string> datasets;
  for (size_t k = 0; k < csds.size() * 2; ++k) {
    std::string name = fmt::format("ds{}", k);
    datasets.push_back(name);
    int first = csds[k % csds.size()];
    v.devices[first].datasets.push_back(name);
    if (csds.size() > 1 && rng.Uniform() < 0.3) {
      int second =
          csds[(k % csds.size() + 1 + rng.Int(static_cast<int>(csds.size()) - 1)) % csds.size()];
      if (second != first) v.devices[second].datasets.push_back(name);
    }
  }
  // Links: explicit inside a rack, the default between racks.
  for (int a = 0; a < hosts; ++a) {
    for (int b = a + 1; b < hosts && b / kRackSize == a / kRackSize; ++b) {
      v.host_links.push_back(
          HostLinkView{host_names[a], host_names[b], LinkCost{5000, 25e9, 0.6e-9}});
    }
  }
  v.has_default_host_link = true;
  v.default_host_link = LinkCost{20000, 10e9, 1e-9};

  std::vector<std::string> compute_hosts;
  for (int h = 0; h < hosts; ++h) {
    if (!storage[h]) compute_hosts.push_back(host_names[h]);
  }
  if (compute_hosts.empty()) compute_hosts.push_back(host_names[0]);

  // Services.
  const int tenants = 10;
  int base = spec.instances / spec.services;
  int extra = spec.instances % spec.services;
  std::vector<double> demand;  // ref-core-seconds per request × weight, for scaling rates
  for (int i = 0; i < spec.services; ++i) {
    ServiceProfile p;
    p.name = fmt::format("svc{}", i);
    p.tenant = fmt::format("t{}", i % tenants);
    p.replicas = base + (i < extra ? 1 : 0);
    p.source = ProfileSource::kMeasured;
    p.caller_host = rng.Pick(compute_hosts);
    p.request_bytes = 1024;
    p.memory_bytes = static_cast<uint64_t>(rng.Pick(std::vector<int>{32, 64, 128, 256})) * kMiB;
    double u = rng.Uniform();
    double base_ns = 0;
    if (u < 0.4) {  // scan-heavy
      int n = 1 + rng.Int(2);
      double total = 0;
      for (int k = 0; k < n; ++k) {
        double bytes = std::round(rng.LogRange(1, 64)) * kMiB;
        p.reads.push_back(DatasetRead{rng.Pick(datasets), bytes});
        total += bytes;
      }
      p.cpu_ns_per_request = total * rng.Range(0.1, 0.3);
      p.reply_bytes = std::round(total * rng.LogRange(0.001, 0.05));
      base_ns = p.cpu_ns_per_request + total * 0.4;
    } else if (u < 0.7) {  // compute-heavy
      p.cpu_ns_per_request = rng.LogRange(1e6, 20e6);
      p.reads.push_back(DatasetRead{rng.Pick(datasets), std::round(rng.LogRange(64e3, 1e6))});
      p.reply_bytes = rng.Pick(std::vector<double>{1024, 4096});
      base_ns = p.cpu_ns_per_request + 1e5;
    } else {  // call chain
      p.cpu_ns_per_request = rng.LogRange(50e3, 500e3);
      p.reply_bytes = rng.Pick(std::vector<double>{256, 1024, 4096});
      int callees = spec.batch_call_edges ? std::min(i, 1 + rng.Int(3)) : 1 + rng.Int(3);
      for (int k = 0; k < callees; ++k) {
        CallEdge e;
        int callee = i - 1 - rng.Int(std::max(1, std::min(i, 20)));
        // Without batch edges, the callee is a service already running elsewhere.
        e.callee = fmt::format("{}{}", spec.batch_call_edges ? "svc" : "ext", callee);
        e.calls_per_request = 1 + rng.Int(4);
        e.request_bytes = rng.Pick(std::vector<double>{256, 1024, 16384});
        e.reply_bytes = rng.Pick(std::vector<double>{256, 1024, 16384});
        if (!spec.batch_call_edges) {
          e.callee_devices.push_back(v.devices[rng.Int(static_cast<int>(v.devices.size()))].name);
        }
        base_ns += e.calls_per_request * 50e3;
        p.calls.push_back(std::move(e));
      }
      base_ns += p.cpu_ns_per_request + 40e3;
    }
    if (rng.Uniform() < 0.7) p.slo_p99_us = std::round(base_ns * rng.Range(1.5, 5) / 1e3);
    demand.push_back(p.cpu_ns_per_request * 1e-9 * p.replicas);
    out.services.push_back(std::move(p));
  }
  // Request rates: random weights, scaled so the total demand is `load` of the free
  // capacity.
  double capacity = 0;
  for (const DeviceView& d : v.devices) {
    capacity += d.cores * (1 - d.reserved) * d.speed * (1 - d.utilization);
  }
  std::vector<double> weight;
  double total = 0;
  for (size_t i = 0; i < out.services.size(); ++i) {
    weight.push_back(rng.LogRange(0.2, 5));
    total += weight.back() * demand[i];
  }
  double scale = spec.load * capacity / total;
  for (size_t i = 0; i < out.services.size(); ++i) {
    out.services[i].request_rate = weight[i] * scale;
  }
  // Quotas: generous for all but one tenant, which gets 90% of its instances.
  int64_t t0 = 0;
  for (const ServiceProfile& p : out.services) {
    if (p.tenant == "t0") t0 += p.replicas;
  }
  if (t0 > 1) v.quotas["t0"] = TenantQuota{t0 * 9 / 10, -1};
  return out;
}

Result<Quality> Evaluate(const ClusterView& view, const std::vector<ServiceProfile>& services,
                         const PlaceAllResult& result) {
  TERN_ASSIGN_OR_RETURN(internal::Compiled c, internal::Compile(view));
  std::unordered_map<std::string, int> index;
  for (size_t i = 0; i < services.size(); ++i) index.emplace(services[i].name, static_cast<int>(i));
  std::vector<std::vector<int>> placed_on(services.size());
  for (const InstancePlacement& ip : result.instances) {
    if (ip.service < 0 || static_cast<size_t>(ip.service) >= services.size()) {
      return InvalidArgumentError(
          fmt::format("evaluate: instance of service #{} out of range", ip.service));
    }
    if (ip.device.empty()) continue;
    auto it = c.device_index.find(ip.device);
    if (it == c.device_index.end()) {
      return InvalidArgumentError(fmt::format("evaluate: no device '{}'", ip.device));
    }
    placed_on[ip.service].push_back(it->second);
  }
  std::vector<internal::CService> cs;
  for (size_t i = 0; i < services.size(); ++i) {
    TERN_ASSIGN_OR_RETURN(internal::CService s, internal::CompileService(c, services[i]));
    for (size_t e = 0; e < services[i].calls.size(); ++e) {
      auto it = index.find(services[i].calls[e].callee);
      if (it == index.end()) continue;
      for (int d : placed_on[it->second]) s.edges[e].callees.push_back(d);
    }
    cs.push_back(std::move(s));
  }
  // Final state.
  std::vector<double> used;
  std::vector<uint64_t> committed;
  for (const internal::CDevice& d : c.dev) {
    used.push_back(d.used_cores);
    committed.push_back(d.committed);
  }
  std::unordered_map<std::string, internal::TenantState> tenants;
  for (const auto& [name, use] : view.tenant_use) tenants[name] = {use.instances, use.cores};
  struct Placed {
    int s, d;
    internal::Static st;
  };
  std::vector<Placed> placed;
  Quality q;
  for (const InstancePlacement& ip : result.instances) {
    if (ip.device.empty()) {
      ++q.unplaced;
      continue;
    }
    int d = c.device_index.at(ip.device);
    internal::Static st = internal::EvalStatic(c, cs[ip.service], d);
    used[d] += st.load_cores;
    committed[d] += services[ip.service].memory_bytes;
    internal::TenantState& t = tenants[services[ip.service].tenant];
    t.instances += 1;
    t.cores += st.load_cores;
    placed.push_back(Placed{ip.service, d, st});
  }
  int finite = 0, offloaded = 0;
  for (const Placed& p : placed) {
    const ServiceProfile& sp = services[p.s];
    internal::TenantState t = tenants[sp.tenant];
    t.instances -= 1;
    t.cores -= p.st.load_cores;
    internal::Dynamic dy = internal::EvalDynamic(c, cs[p.s], p.d, p.st, used[p.d] - p.st.load_cores,
                                                 committed[p.d] - sp.memory_bytes, t);
    ++q.placed;
    if (!dy.fits()) ++q.overloaded;
    if (!dy.slo_ok) ++q.slo_misses;
    if (std::isfinite(dy.p99_ns)) {
      ++finite;
      q.mean_p50_us += dy.p50_ns / 1e3;
      q.mean_p99_us += dy.p99_ns / 1e3;
    }
    q.mean_energy_j += p.st.energy_j;
    q.mean_bytes_moved += p.st.bytes;
    if (c.dev[p.d].kind != DeviceKind::kCpu) ++offloaded;
    q.max_utilization = std::max(q.max_utilization, dy.util_after);
  }
  if (finite > 0) {
    q.mean_p50_us /= finite;
    q.mean_p99_us /= finite;
  }
  if (q.placed > 0) {
    q.mean_energy_j /= q.placed;
    q.mean_bytes_moved /= q.placed;
    q.offloaded = static_cast<double>(offloaded) / q.placed;
  }
  return q;
}

Result<PlaceAllResult> SolveExhaustive(const ClusterView& view,
                                       const std::vector<ServiceProfile>& services,
                                       Policy objective, uint64_t max_assignments) {
  if (objective != Policy::kLatency && objective != Policy::kEnergy &&
      objective != Policy::kBalanced) {
    return InvalidArgumentError(
        fmt::format("exhaustive: objective must be latency, energy or balanced, not {}",
                    PolicyName(objective)));
  }
  TERN_ASSIGN_OR_RETURN(internal::Compiled c, internal::Compile(view));
  std::unordered_map<std::string, int> index;
  for (size_t i = 0; i < services.size(); ++i) index.emplace(services[i].name, static_cast<int>(i));
  std::vector<internal::CService> cs;
  std::vector<int> inst_service;
  for (size_t i = 0; i < services.size(); ++i) {
    for (const CallEdge& e : services[i].calls) {
      if (index.count(e.callee)) {
        return InvalidArgumentError(
            fmt::format("exhaustive: {} calls {} in the same batch (not supported)",
                        services[i].name, e.callee));
      }
    }
    TERN_ASSIGN_OR_RETURN(internal::CService s, internal::CompileService(c, services[i]));
    cs.push_back(std::move(s));
    for (int r = 0; r < services[i].replicas; ++r) inst_service.push_back(static_cast<int>(i));
  }
  size_t n = inst_service.size();
  size_t nd = c.dev.size();
  double space = std::pow(static_cast<double>(nd), static_cast<double>(n));
  if (space > static_cast<double>(max_assignments)) {
    return InvalidArgumentError(
        fmt::format("exhaustive: {} devices ^ {} instances = {:.3g} assignments, more than {}", nd,
                    n, space, max_assignments));
  }
  std::vector<std::vector<internal::Static>> st(services.size());
  for (size_t s = 0; s < services.size(); ++s) {
    for (size_t d = 0; d < nd; ++d)
      st[s].push_back(internal::EvalStatic(c, cs[s], static_cast<int>(d)));
  }
  std::vector<int> assign(n, 0), best;
  double best_a = internal::kInf, best_b = internal::kInf;
  std::vector<double> used(nd);
  std::vector<uint64_t> committed(nd);
  std::unordered_map<std::string, internal::TenantState> base_tenants;
  for (const auto& [name, use] : view.tenant_use) base_tenants[name] = {use.instances, use.cores};
  while (true) {
    for (size_t d = 0; d < nd; ++d) {
      used[d] = c.dev[d].used_cores;
      committed[d] = c.dev[d].committed;
    }
    auto tenants = base_tenants;
    for (size_t i = 0; i < n; ++i) {
      int s = inst_service[i];
      used[assign[i]] += st[s][assign[i]].load_cores;
      committed[assign[i]] += services[s].memory_bytes;
      internal::TenantState& t = tenants[services[s].tenant];
      t.instances += 1;
      t.cores += st[s][assign[i]].load_cores;
    }
    bool ok = true;
    double misses = 0, sum_p99 = 0, sum_e = 0;
    for (size_t i = 0; i < n && ok; ++i) {
      int s = inst_service[i];
      int d = assign[i];
      const internal::Static& x = st[s][d];
      internal::TenantState t = tenants[services[s].tenant];
      t.instances -= 1;
      t.cores -= x.load_cores;
      internal::Dynamic dy = internal::EvalDynamic(c, cs[s], d, x, used[d] - x.load_cores,
                                                   committed[d] - services[s].memory_bytes, t);
      if (!dy.fits()) ok = false;
      misses += dy.slo_ok ? 0 : 1;
      sum_p99 += dy.p99_ns;
      sum_e += x.energy_j;
    }
    if (ok) {
      double a = objective == Policy::kLatency  ? sum_p99
                 : objective == Policy::kEnergy ? sum_e
                                                : misses;
      double b = objective == Policy::kBalanced ? sum_e : sum_p99;
      if (a < best_a || (a == best_a && b < best_b)) {
        best_a = a;
        best_b = b;
        best = assign;
      }
    }
    size_t k = 0;
    while (k < n && ++assign[k] == static_cast<int>(nd)) assign[k++] = 0;
    if (k == n) break;
  }
  if (best.empty() && n > 0) {
    return ResourceExhaustedError("exhaustive: no assignment meets the hard constraints");
  }
  PlaceAllResult out;
  std::vector<int> replica(services.size(), 0);
  for (size_t i = 0; i < n; ++i) {
    InstancePlacement ip;
    ip.service = inst_service[i];
    ip.replica = replica[ip.service]++;
    ip.device = view.devices[best[i]].name;
    ip.energy_j_per_request = st[ip.service][best[i]].energy_j;
    ip.bytes_moved_per_request = st[ip.service][best[i]].bytes;
    out.instances.push_back(std::move(ip));
    ++out.placed;
  }
  return out;
}

Result<std::vector<SimOutcome>> RunPolicies(const SimCluster& cluster,
                                            const std::vector<Policy>& policies,
                                            const PlaceOptions& options) {
  std::vector<SimOutcome> out;
  for (Policy p : policies) {
    SimOutcome o;
    o.policy = p;
    TERN_ASSIGN_OR_RETURN(o.result, PlaceAll(cluster.view, cluster.services, p, options));
    TERN_ASSIGN_OR_RETURN(o.quality, Evaluate(cluster.view, cluster.services, o.result));
    out.push_back(std::move(o));
  }
  return out;
}

}  // namespace tern::placement
