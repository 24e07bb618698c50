#include "placement/internal.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace tern::placement::internal {
namespace {

double NsPerByte(double bandwidth_bps) { return bandwidth_bps > 0 ? 8e9 / bandwidth_bps : 0; }

// A path between two endpoints: summed latency and energy, the bottleneck's ns/byte.
struct Path {
  Tier tier = Tier::kLocal;
  double lat_ns = 0;
  double nspb = 0;
  double j = 0;
};

Path DevToDev(const Compiled& c, int x, int y) {
  Path p;
  if (x == y) {
    p.tier = Tier::kInproc;
    return p;
  }
  const CDevice& a = c.dev[x];
  const CDevice& b = c.dev[y];
  p.lat_ns = a.link_lat_ns + b.link_lat_ns;
  p.nspb = std::max(a.link_ns_per_byte, b.link_ns_per_byte);
  p.j = a.link_j + b.link_j;
  if (a.host == b.host) {
    p.tier = Tier::kShm;
  } else {
    size_t k = c.HL(a.host, b.host);
    p.tier = Tier::kTcp;
    p.lat_ns += c.hl_lat[k];
    p.nspb = std::max(p.nspb, c.hl_nspb[k]);
    p.j += c.hl_j[k];
  }
  return p;
}

// From a process on host h (the gateway) to device y: always TCP.
Path HostToDev(const Compiled& c, int h, int y) {
  const CDevice& b = c.dev[y];
  Path p;
  p.tier = Tier::kTcp;
  p.lat_ns = b.link_lat_ns;
  p.nspb = b.link_ns_per_byte;
  p.j = b.link_j;
  if (h != b.host) {
    size_t k = c.HL(h, b.host);
    p.lat_ns += c.hl_lat[k];
    p.nspb = std::max(p.nspb, c.hl_nspb[k]);
    p.j += c.hl_j[k];
  }
  return p;
}

const TierCost& TierOf(const Compiled& c, Tier t) {
  const TransportCosts& tc = c.view->transports;
  switch (t) {
    case Tier::kInproc:
      return tc.inproc;
    case Tier::kShm:
      return tc.shm;
    default:
      return tc.tcp;
  }
}

// One request/response exchange carrying `bytes` in total: time (ns), energy, bytes moved.
struct Exchange {
  double ns = 0, j = 0, moved = 0;
};
Exchange Cost(const Compiled& c, const Path& p, double bytes) {
  Exchange e;
  if (p.tier == Tier::kLocal) return e;
  const TierCost& t = TierOf(c, p.tier);
  e.ns = t.fixed_ns + 2 * p.lat_ns + bytes * std::max(p.nspb, t.ns_per_byte);
  if (p.tier != Tier::kInproc) {
    e.j = bytes * p.j;
    e.moved = bytes;
  }
  return e;
}

std::string DescribePath(const Compiled& c, int from, int to, Tier tier) {
  if (from == to) return "local";
  const CDevice& a = c.dev[from];
  const CDevice& b = c.dev[to];
  const std::string& an = c.view->devices[from].name;
  const std::string& bn = c.view->devices[to].name;
  if (a.host == b.host) {
    return fmt::format("{} → {} → {} ({})", an, c.host_names[a.host], bn, TierName(tier));
  }
  return fmt::format("{} → {} → {} → {} ({})", an, c.host_names[a.host], c.host_names[b.host], bn,
                     TierName(tier));
}

}  // namespace

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kLocal:
      return "local";
    case Tier::kInproc:
      return "inproc";
    case Tier::kShm:
      return "shm";
    case Tier::kTcp:
      return "tcp";
  }
  return "?";
}

std::string FormatBytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.3g} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.3g} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.3g} KiB", b / 1024.0);
  return fmt::format("{:.0f} B", b);
}

std::string FormatUs(double us) {
  if (!std::isfinite(us)) return "∞";
  if (us >= 1e6) return fmt::format("{:.3g} s", us / 1e6);
  if (us >= 1e3) return fmt::format("{:.3g} ms", us / 1e3);
  return fmt::format("{:.3g} µs", us);
}

std::string FormatJ(double j) {
  if (j == 0) return "0 J";
  if (j >= 1) return fmt::format("{:.3g} J", j);
  if (j >= 1e-3) return fmt::format("{:.3g} mJ", j * 1e3);
  if (j >= 1e-6) return fmt::format("{:.3g} µJ", j * 1e6);
  return fmt::format("{:.3g} nJ", j * 1e9);
}

uint64_t HashString(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

Result<Compiled> Compile(const ClusterView& view) {
  TERN_RETURN_IF_ERROR(ValidateView(view));
  Compiled c;
  c.view = &view;
  c.dev.reserve(view.devices.size());
  for (size_t i = 0; i < view.devices.size(); ++i) {
    const DeviceView& d = view.devices[i];
    auto [it, inserted] = c.host_index.emplace(d.host, static_cast<int>(c.host_names.size()));
    if (inserted) c.host_names.push_back(d.host);
    c.device_index.emplace(d.name, static_cast<int>(i));
    for (const std::string& ds : d.datasets) c.dataset_devices[ds].push_back(static_cast<int>(i));
    CDevice cd;
    cd.host = it->second;
    cd.kind = d.kind;
    cd.speed = d.speed;
    cd.cores = d.cores;
    cd.offered = d.cores * (1 - d.reserved);
    cd.servers = std::max(1, static_cast<int>(std::floor(cd.offered)));
    cd.server_speed = d.speed * cd.offered / cd.servers;
    cd.watts_per_core = d.active_w / d.cores;
    cd.memory = d.memory_bytes;
    cd.committed = d.memory_committed_bytes;
    cd.used_cores = d.utilization * cd.offered;
    cd.link_lat_ns = static_cast<double>(d.link.latency_ns);
    cd.link_ns_per_byte = NsPerByte(d.link.bandwidth_bps);
    cd.link_j = d.link.energy_j_per_byte;
    c.dev.push_back(cd);
  }
  c.hosts = static_cast<int>(c.host_names.size());
  size_t n = static_cast<size_t>(c.hosts) * c.hosts;
  const LinkCost& def = view.default_host_link;
  c.hl_lat.assign(n, static_cast<double>(def.latency_ns));
  c.hl_nspb.assign(n, NsPerByte(def.bandwidth_bps));
  c.hl_j.assign(n, def.energy_j_per_byte);
  for (const HostLinkView& l : view.host_links) {
    int a = c.host_index.at(l.a);
    int b = c.host_index.at(l.b);
    for (size_t k : {c.HL(a, b), c.HL(b, a)}) {
      c.hl_lat[k] = static_cast<double>(l.cost.latency_ns);
      c.hl_nspb[k] = NsPerByte(l.cost.bandwidth_bps);
      c.hl_j[k] = l.cost.energy_j_per_byte;
    }
  }
  return c;
}

Result<CService> CompileService(const Compiled& c, const ServiceProfile& p) {
  TERN_RETURN_IF_ERROR(ValidateProfileAgainst(
      p, ProfileRefs{[&](const std::string& n) { return c.device_index.count(n) > 0; },
                     [&](const std::string& n) { return c.host_index.count(n) > 0; },
                     [&](const std::string& n) { return c.dataset_devices.count(n) > 0; }}));
  CService s;
  s.profile = &p;
  for (const DatasetRead& r : p.reads) {
    s.reads.push_back(CRead{c.dataset_devices.at(r.dataset), r.bytes_per_request});
  }
  if (!p.caller_device.empty()) {
    s.caller_device = c.device_index.at(p.caller_device);
  } else if (!p.caller_host.empty()) {
    s.caller_host = c.host_index.at(p.caller_host);
  }
  for (const CallEdge& e : p.calls) {
    CEdge ce;
    ce.calls = e.calls_per_request;
    ce.request_bytes = e.request_bytes;
    ce.reply_bytes = e.reply_bytes;
    for (const std::string& d : e.callee_devices) ce.callees.push_back(c.device_index.at(d));
    s.edges.push_back(std::move(ce));
  }
  if (!p.allowed_devices.empty()) {
    s.allowed.assign(c.dev.size(), 0);
    for (const std::string& d : p.allowed_devices) s.allowed[c.device_index.at(d)] = 1;
  }
  auto q = c.view->quotas.find(p.tenant);
  if (q != c.view->quotas.end()) {
    s.tenant_quota_instances = static_cast<int>(q->second.max_instances);
    s.tenant_quota_cores = q->second.max_cores;
  }
  return s;
}

Static EvalStatic(const Compiled& c, const CService& s, int d, std::vector<ReadPath>* reads_out) {
  const CDevice& dev = c.dev[d];
  const ServiceProfile& p = *s.profile;
  Static st;
  double core_ns = p.cpu_ns_per_request / dev.speed;  // one core of this device busy
  st.compute_ns = p.cpu_ns_per_request / dev.server_speed;
  st.load_cores = p.request_rate * core_ns * 1e-9;
  st.energy_j = dev.watts_per_core * core_ns * 1e-9;

  for (size_t i = 0; i < s.reads.size(); ++i) {
    const CRead& r = s.reads[i];
    Exchange best;
    best.ns = kInf;
    int from = -1;
    Tier tier = Tier::kLocal;
    for (int x : r.replicas) {
      Path path = DevToDev(c, x, d);
      if (x == d) path.tier = Tier::kLocal;  // reading local data is part of the CPU time
      Exchange e = Cost(c, path, r.bytes);
      if (e.ns < best.ns) {
        best = e;
        from = x;
        tier = path.tier;
      }
    }
    st.data_ns += best.ns;
    st.energy_j += best.j;
    st.bytes += best.moved;
    if (from == d) st.local_bytes += r.bytes;
    if (reads_out != nullptr) {
      reads_out->push_back(ReadPath{p.reads[i].dataset, c.view->devices[from].name,
                                    DescribePath(c, from, d, tier), r.bytes, best.ns / 1e3,
                                    best.j});
    }
  }

  double caller_bytes = p.request_bytes + p.reply_bytes;
  if (s.caller_device >= 0) {
    Exchange e = Cost(c, DevToDev(c, s.caller_device, d), caller_bytes);
    st.caller_ns = e.ns;
    st.energy_j += e.j;
    st.bytes += e.moved;
  } else if (s.caller_host >= 0) {
    Exchange e = Cost(c, HostToDev(c, s.caller_host, d), caller_bytes);
    st.caller_ns = e.ns;
    st.energy_j += e.j;
    st.bytes += e.moved;
  }

  for (const CEdge& e : s.edges) {
    if (e.callees.empty()) continue;
    double bytes = e.request_bytes + e.reply_bytes;
    Exchange best;
    best.ns = kInf;
    for (int y : e.callees) {
      Exchange x = Cost(c, DevToDev(c, d, y), bytes);
      if (x.ns < best.ns) best = x;
    }
    st.rpc_ns += e.calls * best.ns;
    st.energy_j += e.calls * best.j;
    st.bytes += e.calls * best.moved;
  }
  return st;
}

Dynamic EvalDynamic(const Compiled& c, const CService& s, int d, const Static& st,
                    double used_cores, uint64_t committed, const TenantState& tenant) {
  const CDevice& dev = c.dev[d];
  const ServiceProfile& p = *s.profile;
  Dynamic dy;
  dy.allowed = s.allowed.empty() || s.allowed[d] != 0;
  dy.memory_ok = committed + p.memory_bytes <= dev.memory;
  dy.util_after = (used_cores + st.load_cores) / dev.offered;
  dy.share_ok = dy.util_after < 1;
  dy.quota_ok =
      (s.tenant_quota_instances < 0 || tenant.instances + 1 <= s.tenant_quota_instances) &&
      (s.tenant_quota_cores < 0 || tenant.cores + st.load_cores <= s.tenant_quota_cores + 1e-12);
  dy.wait = MmcWait(dev.servers, dy.util_after, st.compute_ns, p.service_cv2);
  double fixed = st.fixed_ns();
  dy.p50_ns = fixed + dy.wait.p50_ns;
  dy.p99_ns = fixed + dy.wait.p99_ns;
  dy.slo_ok = p.slo_p99_us <= 0 || dy.p99_ns <= p.slo_p99_us * 1e3;
  return dy;
}

TenantState TenantOf(const ClusterView& view, const std::string& tenant) {
  TenantState t;
  auto it = view.tenant_use.find(tenant);
  if (it != view.tenant_use.end()) {
    t.instances = it->second.instances;
    t.cores = it->second.cores;
  }
  return t;
}

Prediction MakePrediction(const Compiled& c, const CService& s, int d, const Static& st,
                          const Dynamic& dy, double used_cores, uint64_t committed,
                          const TenantState& tenant, std::vector<ReadPath> reads) {
  const CDevice& dev = c.dev[d];
  const DeviceView& dv = c.view->devices[d];
  const ServiceProfile& p = *s.profile;
  Prediction pr;
  pr.device = dv.name;
  pr.kind = dv.kind;
  pr.fits = dy.fits();
  pr.meets_slo = dy.slo_ok;
  pr.feasible = pr.fits && pr.meets_slo;
  pr.latency_p50_us = dy.p50_ns / 1e3;
  pr.latency_p99_us = dy.p99_ns / 1e3;
  pr.energy_j_per_request = st.energy_j;
  pr.bytes_moved_per_request = st.bytes;
  pr.terms.compute_us = st.compute_ns / 1e3;
  pr.terms.data_us = st.data_ns / 1e3;
  pr.terms.caller_us = st.caller_ns / 1e3;
  pr.terms.rpc_us = st.rpc_ns / 1e3;
  pr.terms.queue_p50_us = dy.wait.p50_ns / 1e3;
  pr.terms.queue_p99_us = dy.wait.p99_ns / 1e3;
  pr.utilization_after = dy.util_after;
  pr.load_cores = st.load_cores;
  pr.local_bytes = st.local_bytes;
  pr.source = p.source;
  pr.reads = std::move(reads);

  std::vector<std::string> why;
  if (!dy.allowed) {
    why.push_back(fmt::format("not allowed: {} may run only on {}", p.name,
                              fmt::join(p.allowed_devices, ", ")));
  }
  if (!dy.memory_ok) {
    why.push_back(fmt::format("memory: needs {}, {} of {} already committed on {}",
                              FormatBytes(static_cast<double>(p.memory_bytes)),
                              FormatBytes(static_cast<double>(committed)),
                              FormatBytes(static_cast<double>(dev.memory)), dv.name));
  }
  if (!dy.share_ok) {
    why.push_back(fmt::format(
        "reserved share: {} would be {:.0f}% busy on the {:.3g} cores it offers ({:.3g} cores, "
        "{:.0f}% reserved for its main task; {:.3g} busy before, this instance adds {:.3g})",
        dv.name, dy.util_after * 100, dev.offered, dv.cores, dv.reserved * 100, used_cores,
        st.load_cores));
  }
  if (!dy.quota_ok) {
    if (s.tenant_quota_instances >= 0 && tenant.instances + 1 > s.tenant_quota_instances) {
      why.push_back(fmt::format("quota: tenant {} would have {} instances, quota {}", p.tenant,
                                tenant.instances + 1, s.tenant_quota_instances));
    } else {
      why.push_back(fmt::format("quota: tenant {} would use {:.3g} cores, quota {:.3g}", p.tenant,
                                tenant.cores + st.load_cores, s.tenant_quota_cores));
    }
  }
  if (!dy.slo_ok) {
    why.push_back(fmt::format("SLO: predicted p99 {} > target {}", FormatUs(dy.p99_ns / 1e3),
                              FormatUs(p.slo_p99_us)));
  }
  pr.why_not = fmt::format("{}", fmt::join(why, "; "));
  return pr;
}

}  // namespace tern::placement::internal

namespace tern::placement {

WaitTimes MmcWait(int servers, double utilization, double service_ns, double cv2) {
  WaitTimes w;
  if (utilization <= 0 || service_ns <= 0) return w;
  if (utilization >= 1) {
    w.p50_ns = w.p99_ns = w.mean_ns = internal::kInf;
    w.p_wait = 1;
    return w;
  }
  int c = std::max(1, servers);
  double a = utilization * c;  // offered load in servers
  // Erlang B by the stable recurrence on its reciprocal (1/B_k = 1 + (k/a)/B_{k-1}: no
  // division in the loop), then Erlang C.
  double inv_a = 1 / a, inv_b = 1;
  for (int k = 1; k <= c; ++k) inv_b = 1 + k * inv_a * inv_b;
  double b = 1 / inv_b;
  double pw = b / (1 - utilization * (1 - b));
  double decay = c * (1 - utilization) / (service_ns * (1 + cv2) / 2);  // per ns
  w.p_wait = pw;
  w.mean_ns = pw / decay;
  auto quantile = [&](double q) { return pw > 1 - q ? std::log(pw / (1 - q)) / decay : 0.0; };
  w.p50_ns = quantile(0.5);
  w.p99_ns = quantile(0.99);
  return w;
}

Result<Prediction> Predict(const ClusterView& view, const ServiceProfile& service,
                           std::string_view device) {
  TERN_ASSIGN_OR_RETURN(internal::Compiled c, internal::Compile(view));
  TERN_ASSIGN_OR_RETURN(internal::CService s, internal::CompileService(c, service));
  auto it = c.device_index.find(std::string(device));
  if (it == c.device_index.end()) {
    return NotFoundError(
        fmt::format("predict {}: no device '{}' in the view", service.name, device));
  }
  int d = it->second;
  std::vector<ReadPath> reads;
  internal::Static st = internal::EvalStatic(c, s, d, &reads);
  internal::TenantState tenant = internal::TenantOf(view, service.tenant);
  internal::Dynamic dy =
      internal::EvalDynamic(c, s, d, st, c.dev[d].used_cores, c.dev[d].committed, tenant);
  return internal::MakePrediction(c, s, d, st, dy, c.dev[d].used_cores, c.dev[d].committed, tenant,
                                  std::move(reads));
}

}  // namespace tern::placement
