#include "placement/policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>
#include <utility>

#include "placement/internal.h"

namespace tern::placement {
namespace {

using internal::Compiled;
using internal::CService;
using internal::Dynamic;
using internal::Static;
using internal::TenantState;

// What the chooser needs to know about one device for one instance.
struct Eval {
  int d = -1;
  Dynamic dy;
};

// Lexicographic "better" on (objective, p99, index).
bool Better(double obj, double p99, int d, double best_obj, double best_p99, int best_d) {
  if (best_d < 0) return true;
  if (obj != best_obj) return obj < best_obj;
  if (p99 != best_p99) return p99 < best_p99;
  return d < best_d;
}

// The mutable state of a placement run.
struct State {
  std::vector<double> used;         // cores busy per device
  std::vector<uint64_t> committed;  // memory per device
  std::map<std::string, TenantState> tenants;
  // The highest utilization at which every instance this run placed on the device still
  // meets its SLO (1 = no such instance). Latency and balanced keep to it while they can.
  std::vector<double> cap;

  explicit State(const Compiled& c) {
    for (const internal::CDevice& d : c.dev) {
      used.push_back(d.used_cores);
      committed.push_back(d.committed);
      cap.push_back(1);
    }
    for (const auto& [name, use] : c.view->tenant_use) {
      tenants[name] = TenantState{use.instances, use.cores};
    }
  }
};

// A key to sort devices by; compared lexicographically, the device index last.
struct Key {
  double a = 0, b = 0, c = 0;
  int d = 0;
  bool operator<(const Key& o) const {
    if (a != o.a) return a < o.a;
    if (b != o.b) return b < o.b;
    if (c != o.c) return c < o.c;
    return d < o.d;
  }
};
bool Greater(const Key& x, const Key& y) { return y < x; }

// Lower bounds are shaded by this factor so that rounding never lifts one above the
// exact value it bounds.
constexpr double kShade = 1 - 1e-9;

// Service-independent facts per host, for the lower bounds.
struct HostFacts {
  std::vector<std::vector<int>> devices;     // per host, in view order
  std::vector<double> min_inv_speed;         // min over its devices of 1 / server_speed
  std::vector<double> min_inv_speed_cpu;     // the same over its host CPUs (inf: none)
  std::vector<double> min_j_per_ns;          // min of watts_per_core / speed × 1e-9
  std::vector<int> first_device, first_cpu;  // -1: none
};

HostFacts MakeHostFacts(const Compiled& c) {
  HostFacts f;
  size_t h = static_cast<size_t>(c.hosts);
  f.devices.resize(h);
  f.min_inv_speed.assign(h, internal::kInf);
  f.min_inv_speed_cpu.assign(h, internal::kInf);
  f.min_j_per_ns.assign(h, internal::kInf);
  f.first_device.assign(h, -1);
  f.first_cpu.assign(h, -1);
  for (size_t i = 0; i < c.dev.size(); ++i) {
    const internal::CDevice& d = c.dev[i];
    int d_i = static_cast<int>(i);
    f.devices[d.host].push_back(d_i);
    f.min_inv_speed[d.host] = std::min(f.min_inv_speed[d.host], 1 / d.server_speed);
    f.min_j_per_ns[d.host] = std::min(f.min_j_per_ns[d.host], d.watts_per_core / d.speed * 1e-9);
    if (f.first_device[d.host] < 0) f.first_device[d.host] = d_i;
    if (d.kind == DeviceKind::kCpu) {
      f.min_inv_speed_cpu[d.host] = std::min(f.min_inv_speed_cpu[d.host], 1 / d.server_speed);
      if (f.first_cpu[d.host] < 0) f.first_cpu[d.host] = d_i;
    }
  }
  return f;
}

enum class OrderBy { kFixed, kEnergy, kLocal };

// One service's work: compiled profile, per-device static costs evaluated on demand, and
// devices in key order produced lazily from lower bounds: a host's bound (the cheapest
// thing any of its devices could cost) is expanded into its devices' bounds, and a
// device's bound into its exact key, only when it could be next. So a scan that stops
// after a few devices evaluates only those near the front: O(hosts) per service plus a
// few exact evaluations, instead of O(devices).
struct ServiceWork {
  const Compiled* c = nullptr;
  const HostFacts* facts = nullptr;
  CService cs;
  std::vector<Static> st;
  std::vector<char> done;
  std::vector<double> lat_lb, energy_lb;  // per host: data + caller + rpc lower bounds
  std::unordered_map<int, double> local;  // device -> bytes per request read locally
  std::vector<double> host_local;         // per host: max over its devices
  double min_fixed_lb = internal::kInf;
  bool cpu_only = false;
  // The placement run's state, when set: devices that cannot take an instance of this
  // service any more (not allowed, memory full, offered cores full) leave the order
  // before their exact key is computed. Sound because a run only ever adds load and
  // memory (PlaceAll); the checks are Plausible's and EvalDynamic's, with the same
  // arithmetic, so the choices do not change. Without it, a greedy run over thousands
  // of services walked past the same full devices again and again.
  const State* state = nullptr;

  bool Hopeless(int d) const {
    if (state == nullptr) return false;
    if (!cs.allowed.empty() && cs.allowed[d] == 0) return true;
    const internal::CDevice& dev = c->dev[d];
    const ServiceProfile& p = *cs.profile;
    if (state->committed[d] + p.memory_bytes > dev.memory) return true;
    double load = p.request_rate * (p.cpu_ns_per_request / dev.speed) * 1e-9;
    return !((state->used[d] + load) / dev.offered < 1);
  }

  const Static& Get(int d) {
    if (!done[d]) {
      st[d] = internal::EvalStatic(*c, cs, d);
      done[d] = 1;
    }
    return st[d];
  }

  // The lazily sorted order by one kind of key.
  class Order {
   public:
    void Reset(ServiceWork* w, OrderBy by) {
      w_ = w;
      by_ = by;
      hosts_.clear();
      devs_.clear();
      exact_.clear();
      sorted_.clear();
      for (int h = 0; h < w->c->hosts; ++h) {
        Key k;
        if (w->HostKey(h, by, &k)) hosts_.push_back(k);
      }
      std::make_heap(hosts_.begin(), hosts_.end(), Greater);
    }
    // The i-th key in order; false past the end.
    bool At(size_t i, Key* out) {
      while (sorted_.size() <= i) {
        const Key* best = exact_.empty() ? nullptr : &exact_.front();
        bool host_first = !hosts_.empty() && (best == nullptr || hosts_.front() < *best) &&
                          (devs_.empty() || hosts_.front() < devs_.front());
        if (host_first) {
          std::pop_heap(hosts_.begin(), hosts_.end(), Greater);
          int h = w_->c->dev[hosts_.back().d].host;
          hosts_.pop_back();
          for (int d : w_->facts->devices[h]) {
            Key k;
            if (!w_->Hopeless(d) && w_->DeviceKey(d, by_, &k)) {
              devs_.push_back(k);
              std::push_heap(devs_.begin(), devs_.end(), Greater);
            }
          }
          continue;
        }
        if (!devs_.empty() && (best == nullptr || devs_.front() < *best)) {
          std::pop_heap(devs_.begin(), devs_.end(), Greater);
          int d = devs_.back().d;
          devs_.pop_back();
          if (w_->Hopeless(d)) continue;  // filled up since its host was expanded
          exact_.push_back(w_->ExactKey(d, by_));
          std::push_heap(exact_.begin(), exact_.end(), Greater);
          continue;
        }
        if (best == nullptr) return false;
        std::pop_heap(exact_.begin(), exact_.end(), Greater);
        sorted_.push_back(exact_.back());
        exact_.pop_back();
      }
      *out = sorted_[i];
      return true;
    }

   private:
    ServiceWork* w_ = nullptr;
    OrderBy by_ = OrderBy::kFixed;
    std::vector<Key> hosts_, devs_, exact_, sorted_;
  };
  Order by_fixed, by_energy, by_local;

  double Cpu() const { return cs.profile->cpu_ns_per_request; }

  bool HostKey(int h, OrderBy by, Key* k) const {
    int first = cpu_only ? facts->first_cpu[h] : facts->first_device[h];
    if (first < 0) return false;
    double inv = cpu_only ? facts->min_inv_speed_cpu[h] : facts->min_inv_speed[h];
    double fixed = (lat_lb[h] + Cpu() * inv) * kShade;
    switch (by) {
      case OrderBy::kFixed:
        *k = Key{fixed, 0, 0, first};
        break;
      case OrderBy::kEnergy:
        *k = Key{(energy_lb[h] + Cpu() * facts->min_j_per_ns[h]) * kShade, fixed, 0, first};
        break;
      case OrderBy::kLocal:
        *k = Key{-host_local[h], facts->first_cpu[h] >= 0 ? 0.0 : 1.0, fixed, first};
        break;
    }
    return true;
  }
  bool DeviceKey(int d, OrderBy by, Key* k) const {
    const internal::CDevice& dev = c->dev[d];
    if (cpu_only && dev.kind != DeviceKind::kCpu) return false;
    double fixed = (lat_lb[dev.host] + Cpu() / dev.server_speed) * kShade;
    switch (by) {
      case OrderBy::kFixed:
        *k = Key{fixed, 0, 0, d};
        break;
      case OrderBy::kEnergy:
        *k = Key{(energy_lb[dev.host] + Cpu() * dev.watts_per_core / dev.speed * 1e-9) * kShade,
                 fixed, 0, d};
        break;
      case OrderBy::kLocal: {
        auto it = local.find(d);
        *k = Key{it == local.end() ? 0.0 : -it->second, dev.kind == DeviceKind::kCpu ? 0.0 : 1.0,
                 fixed, d};
        break;
      }
    }
    return true;
  }
  Key ExactKey(int d, OrderBy by) {
    const Static& x = Get(d);
    switch (by) {
      case OrderBy::kFixed:
        return Key{x.fixed_ns(), 0, 0, d};
      case OrderBy::kEnergy:
        return Key{x.energy_j, x.fixed_ns(), 0, d};
      case OrderBy::kLocal:
        return Key{-x.local_bytes, c->dev[d].kind == DeviceKind::kCpu ? 0.0 : 1.0, x.fixed_ns(), d};
    }
    return Key{};
  }

  // Lower bounds per host of what a device there pays for data, caller and calls: a
  // replica, caller or callee on another host costs at least the TCP tier over the host
  // link; on the same host, at least nothing.
  void Bounds() {
    const Compiled& cc = *c;
    const TierCost& tcp = cc.view->transports.tcp;
    size_t nh = static_cast<size_t>(cc.hosts);
    lat_lb.assign(nh, 0);
    energy_lb.assign(nh, 0);
    host_local.assign(nh, 0);
    local.clear();
    std::vector<int> src;
    auto add_remote = [&](const std::vector<int>& src_hosts, double bytes, double times) {
      for (size_t h = 0; h < nh; ++h) {
        double best_t = internal::kInf, best_j = internal::kInf;
        for (int x : src_hosts) {
          if (static_cast<size_t>(x) == h) {
            best_t = best_j = 0;
            break;
          }
          size_t k = cc.HL(x, static_cast<int>(h));
          best_t = std::min(best_t, tcp.fixed_ns + 2 * cc.hl_lat[k] +
                                        bytes * std::max(cc.hl_nspb[k], tcp.ns_per_byte));
          best_j = std::min(best_j, bytes * cc.hl_j[k]);
        }
        lat_lb[h] += times * best_t;
        energy_lb[h] += times * best_j;
      }
    };
    auto hosts_of = [&](const std::vector<int>& devices) {
      src.clear();
      for (int d : devices) {
        int h = cc.dev[d].host;
        if (std::find(src.begin(), src.end(), h) == src.end()) src.push_back(h);
      }
      return src;
    };
    for (const internal::CRead& r : cs.reads) {
      add_remote(hosts_of(r.replicas), r.bytes, 1);
      for (int x : r.replicas) local[x] += r.bytes;
    }
    for (const auto& [d, bytes] : local) {
      host_local[cc.dev[d].host] = std::max(host_local[cc.dev[d].host], bytes);
    }
    const ServiceProfile& p = *cs.profile;
    double caller_bytes = p.request_bytes + p.reply_bytes;
    if (cs.caller_device >= 0) {
      add_remote({cc.dev[cs.caller_device].host}, caller_bytes, 1);
    } else if (cs.caller_host >= 0) {
      // The gateway pays TCP even on its own host.
      for (size_t h = 0; h < nh; ++h) {
        double t = tcp.fixed_ns + caller_bytes * tcp.ns_per_byte;
        double j = 0;
        if (static_cast<int>(h) != cs.caller_host) {
          size_t k = cc.HL(cs.caller_host, static_cast<int>(h));
          t = tcp.fixed_ns + 2 * cc.hl_lat[k] +
              caller_bytes * std::max(cc.hl_nspb[k], tcp.ns_per_byte);
          j = caller_bytes * cc.hl_j[k];
        }
        lat_lb[h] += t;
        energy_lb[h] += j;
      }
    }
    for (const internal::CEdge& e : cs.edges) {
      if (e.callees.empty()) continue;
      add_remote(hosts_of(e.callees), e.request_bytes + e.reply_bytes, e.calls);
    }
  }

  void Prepare(const Compiled& cc, const HostFacts& f, Policy policy) {
    c = &cc;
    facts = &f;
    st.resize(cc.dev.size());
    done.assign(cc.dev.size(), 0);
    cpu_only = policy == Policy::kHostOnly;
    Bounds();
    min_fixed_lb = internal::kInf;
    for (int h = 0; h < cc.hosts; ++h) {
      Key k;
      if (HostKey(h, OrderBy::kFixed, &k)) min_fixed_lb = std::min(min_fixed_lb, k.a);
    }
    if (policy == Policy::kLatency || policy == Policy::kHostOnly || policy == Policy::kBalanced) {
      by_fixed.Reset(this, OrderBy::kFixed);
    }
    if (policy == Policy::kEnergy || policy == Policy::kBalanced) {
      by_energy.Reset(this, OrderBy::kEnergy);
    }
    if (policy == Policy::kDataLocal) by_local.Reset(this, OrderBy::kLocal);
  }
};

Dynamic Dyn(const Compiled& c, ServiceWork& w, int d, const State& s, const TenantState& t) {
  return internal::EvalDynamic(c, w.cs, d, w.Get(d), s.used[d], s.committed[d], t);
}

// The cheap half of the hard constraints (memory, the reserved share) and the SLO-cap of
// earlier instances, checked before the queueing model runs: false = skip the device.
bool Plausible(const Compiled& c, ServiceWork& w, int d, const State& s, bool protect) {
  const internal::CDevice& dev = c.dev[d];
  if (s.committed[d] + w.cs.profile->memory_bytes > dev.memory) return false;
  double util = (s.used[d] + w.Get(d).load_cores) / dev.offered;
  return util < 1 && !(protect && util > s.cap[d]);
}

// The lowest (p99, index) among fitting devices in `order` (sorted by a lower bound of
// p99 in key.a, or grouped by key.a/key.b with p99's lower bound in key.c when `grouped`).
Eval ScanLatency(const Compiled& c, ServiceWork& w, ServiceWork::Order& order, const State& s,
                 const TenantState& t, bool grouped, bool protect = false) {
  Eval best;
  double best_p99 = internal::kInf;
  Key k, group;
  for (size_t i = 0; order.At(i, &k); ++i) {
    if (grouped) {
      if (best.d >= 0 && (k.a != group.a || k.b != group.b)) break;
      if (best.d >= 0 && k.c > best_p99) break;
    } else if (best.d >= 0 && k.a > best_p99) {
      break;
    }
    if (!Plausible(c, w, k.d, s, protect)) continue;
    Dynamic dy = Dyn(c, w, k.d, s, t);
    if (!dy.fits() || (protect && dy.util_after > s.cap[k.d])) continue;
    if (Better(dy.p99_ns, dy.p99_ns, k.d, best_p99, best_p99, best.d)) {
      best = Eval{k.d, dy};
      best_p99 = dy.p99_ns;
      group = k;
    }
  }
  return best;
}

// The least (energy, p99, index) among devices that fit (and meet the SLO if `need_slo`).
Eval ScanEnergy(const Compiled& c, ServiceWork& w, ServiceWork::Order& order, const State& s,
                const TenantState& t, bool need_slo, bool protect = false) {
  Eval best;
  double best_e = 0, best_p99 = 0;
  double slo_ns = w.cs.profile->slo_p99_us * 1e3;
  Key k;
  for (size_t i = 0; order.At(i, &k); ++i) {
    if (best.d >= 0 && k.a > best_e) break;
    // p99 >= the fixed terms: a device whose fixed terms already miss the SLO cannot meet it.
    if (need_slo && slo_ns > 0 && k.b > slo_ns) continue;
    if (!Plausible(c, w, k.d, s, protect)) continue;
    Dynamic dy = Dyn(c, w, k.d, s, t);
    if (!dy.fits() || (need_slo && !dy.slo_ok)) continue;
    if (protect && dy.util_after > s.cap[k.d]) continue;
    if (Better(k.a, dy.p99_ns, k.d, best_e, best_p99, best.d)) {
      best = Eval{k.d, dy};
      best_e = k.a;
      best_p99 = dy.p99_ns;
    }
  }
  return best;
}

Eval PickRandom(const Compiled& c, ServiceWork& w, const State& s, const TenantState& t,
                uint64_t seed, int replica) {
  uint64_t rng = seed ^ internal::HashString(w.cs.profile->name) ^
                 (static_cast<uint64_t>(replica) * 0x9e3779b97f4a7c15ULL);
  int n = static_cast<int>(c.dev.size());
  if (n == 0) return Eval{};
  // Rejection sampling is uniform over the fitting devices; after 64 misses, draw from
  // the full list of fitting devices (uniform too).
  for (int attempt = 0; attempt < 64; ++attempt) {
    int d = static_cast<int>(internal::SplitMix64(rng) % static_cast<uint64_t>(n));
    Dynamic dy = Dyn(c, w, d, s, t);
    if (dy.fits()) return Eval{d, dy};
  }
  std::vector<int> fit;
  for (int d = 0; d < n; ++d) {
    if (Dyn(c, w, d, s, t).fits()) fit.push_back(d);
  }
  if (fit.empty()) return Eval{};
  int d = fit[internal::SplitMix64(rng) % fit.size()];
  return Eval{d, Dyn(c, w, d, s, t)};
}

// Chooses one device for one instance of the service in `w` on state `s`.
Eval Choose(const Compiled& c, ServiceWork& w, const State& s, Policy policy,
            const PlaceOptions& options, int replica) {
  TenantState t;
  auto it = s.tenants.find(w.cs.profile->tenant);
  if (it != s.tenants.end()) t = it->second;
  switch (policy) {
    case Policy::kLatency: {
      // First without pushing instances placed earlier past their SLOs, then regardless.
      Eval e = ScanLatency(c, w, w.by_fixed, s, t, /*grouped=*/false, /*protect=*/true);
      if (e.d >= 0) return e;
      return ScanLatency(c, w, w.by_fixed, s, t, /*grouped=*/false);
    }
    case Policy::kHostOnly:
      return ScanLatency(c, w, w.by_fixed, s, t, /*grouped=*/false);
    case Policy::kEnergy:
      return ScanEnergy(c, w, w.by_energy, s, t, /*need_slo=*/false);
    case Policy::kBalanced: {
      double slo_ns = w.cs.profile->slo_p99_us * 1e3;
      if (slo_ns <= 0 || w.min_fixed_lb <= slo_ns) {
        Eval e = ScanEnergy(c, w, w.by_energy, s, t, /*need_slo=*/true, /*protect=*/true);
        if (e.d >= 0) return e;
      }
      Eval e = ScanLatency(c, w, w.by_fixed, s, t, /*grouped=*/false, /*protect=*/true);
      if (e.d >= 0) return e;
      return ScanLatency(c, w, w.by_fixed, s, t, /*grouped=*/false);
    }
    case Policy::kRandom:
      return PickRandom(c, w, s, t, options.seed, replica);
    case Policy::kDataLocal:
      return ScanLatency(c, w, w.by_local, s, t, /*grouped=*/true);
  }
  return Eval{};
}

// The highest utilization of device d at which an instance with these static costs still
// meets its SLO; 1 without an SLO, `from` if it misses already.
double SloCap(const Compiled& c, ServiceWork& w, int d, double from) {
  const ServiceProfile& p = *w.cs.profile;
  double slo_ns = p.slo_p99_us * 1e3;
  if (slo_ns <= 0) return 1;
  const Static& st = w.Get(d);
  auto meets = [&](double rho) {
    return st.fixed_ns() + MmcWait(c.dev[d].servers, rho, st.compute_ns, p.service_cv2).p99_ns <=
           slo_ns;
  };
  if (!meets(from)) return from;
  double lo = from, hi = 1;
  for (int i = 0; i < 16; ++i) {  // to 1.5e-5 of the utilization
    double mid = (lo + hi) / 2;
    (meets(mid) ? lo : hi) = mid;
  }
  return lo;
}

void Commit(const Compiled& c, ServiceWork& w, int d, Policy policy, State& s) {
  if (policy == Policy::kLatency || policy == Policy::kBalanced) {
    double util = (s.used[d] + w.Get(d).load_cores) / c.dev[d].offered;
    s.cap[d] = std::min(s.cap[d], SloCap(c, w, d, util));
  }
  s.used[d] += w.Get(d).load_cores;
  s.committed[d] += w.cs.profile->memory_bytes;
  TenantState& t = s.tenants[w.cs.profile->tenant];
  t.instances += 1;
  t.cores += w.Get(d).load_cores;
}

std::string Why(const std::string& why_not) {
  // The first constraint's name: "memory", "reserved share", "quota", "SLO", "not allowed".
  size_t colon = why_not.find(':');
  return colon == std::string::npos ? why_not : why_not.substr(0, colon);
}

std::string Explain(const Decision& d, const ServiceProfile& s) {
  using internal::FormatJ;
  using internal::FormatUs;
  std::string policy(PolicyName(d.policy));
  int fit = 0, slo = 0;
  std::map<std::string, int> rejected;
  for (const Candidate& c : d.candidates) {
    if (c.prediction.fits) {
      ++fit;
      if (c.prediction.meets_slo) ++slo;
    } else {
      ++rejected[Why(c.prediction.why_not)];
    }
  }
  std::string rej;
  for (const auto& [why, n] : rejected) {
    rej += fmt::format("{}{} {}", rej.empty() ? "" : ", ", why, n);
  }
  size_t total = d.candidates.size();
  std::string slo_text =
      s.slo_p99_us > 0 ? fmt::format("p99 ≤ {}", FormatUs(s.slo_p99_us)) : std::string("none");
  if (d.device.empty()) {
    return fmt::format(
        "{}: {} cannot be placed: none of the {} devices meets the hard constraints ({}).", policy,
        s.name, total, rej.empty() ? "no devices" : rej);
  }
  const Prediction& p = d.prediction;
  std::string why;
  switch (d.policy) {
    case Policy::kLatency:
      why = fmt::format("the lowest predicted p99 of the {} devices that fit", fit);
      break;
    case Policy::kHostOnly:
      why = "the lowest predicted p99 among the host CPUs that fit (baseline: host only)";
      break;
    case Policy::kEnergy:
      why = fmt::format(
          "the least energy per request of the {} devices that fit (SLO not "
          "considered)",
          fit);
      break;
    case Policy::kBalanced:
      why = slo > 0 ? fmt::format(
                          "the least energy per request of the {} devices that meet "
                          "the SLO ({})",
                          slo, slo_text)
                    : fmt::format(
                          "NO device meets the SLO ({}): the lowest predicted p99 of "
                          "the {} that fit",
                          slo_text, fit);
      break;
    case Policy::kRandom:
      why = fmt::format("drawn at random among the {} devices that fit (baseline)", fit);
      break;
    case Policy::kDataLocal:
      why = fmt::format("it holds the most bytes read per request ({}; baseline: data-local)",
                        internal::FormatBytes(p.local_bytes));
      break;
  }
  std::string out = fmt::format(
      "{}: {} on {} ({}) — {}. Predicted p50 {}, p99 {} (compute {}, data {}, caller {}, "
      "rpc {}, queueing {}), {} per request, {} moved; SLO {}{}; CPU figure: {}.",
      policy, s.name, d.device, DeviceKindName(p.kind), why, FormatUs(p.latency_p50_us),
      FormatUs(p.latency_p99_us), FormatUs(p.terms.compute_us), FormatUs(p.terms.data_us),
      FormatUs(p.terms.caller_us), FormatUs(p.terms.rpc_us), FormatUs(p.terms.queue_p99_us),
      FormatJ(p.energy_j_per_request), internal::FormatBytes(p.bytes_moved_per_request), slo_text,
      s.slo_p99_us > 0 ? (p.meets_slo ? " (met)" : " (MISSED)") : "", ProfileSourceName(p.source));
  if (!rej.empty()) {
    out += fmt::format(" {} of {} devices rejected ({}).", total - fit, total, rej);
  }
  return out;
}

std::string Verdict(const Decision& d, const Prediction& p, const Prediction& chosen) {
  using internal::FormatJ;
  using internal::FormatUs;
  if (p.device == d.device) return "chosen";
  if (!p.fits) return "rejected: " + p.why_not;
  switch (d.policy) {
    case Policy::kLatency:
      return fmt::format("fits: higher p99 ({} vs {})", FormatUs(p.latency_p99_us),
                         FormatUs(chosen.latency_p99_us));
    case Policy::kHostOnly:
      if (p.kind != DeviceKind::kCpu) return "excluded: host-only uses host CPUs only";
      return fmt::format("fits: higher p99 ({} vs {})", FormatUs(p.latency_p99_us),
                         FormatUs(chosen.latency_p99_us));
    case Policy::kEnergy:
      return fmt::format("fits: more energy ({} vs {})", FormatJ(p.energy_j_per_request),
                         FormatJ(chosen.energy_j_per_request));
    case Policy::kBalanced:
      if (!p.meets_slo) return "fits, but " + p.why_not;
      return fmt::format("fits, meets SLO: more energy ({} vs {})", FormatJ(p.energy_j_per_request),
                         FormatJ(chosen.energy_j_per_request));
    case Policy::kRandom:
      return "fits: not drawn";
    case Policy::kDataLocal:
      if (p.local_bytes < chosen.local_bytes) {
        return fmt::format("fits: fewer local bytes ({} vs {})",
                           internal::FormatBytes(p.local_bytes),
                           internal::FormatBytes(chosen.local_bytes));
      }
      return fmt::format("fits: same local bytes, {}",
                         p.kind != DeviceKind::kCpu && chosen.kind == DeviceKind::kCpu
                             ? std::string("ties go to host CPUs")
                             : fmt::format("higher p99 ({} vs {})", FormatUs(p.latency_p99_us),
                                           FormatUs(chosen.latency_p99_us)));
  }
  return "";
}

// Callees first: depth-first post-order over the batch's call edges.
std::vector<int> CalleesFirst(const std::vector<ServiceProfile>& services,
                              const std::unordered_map<std::string, int>& index) {
  std::vector<int> order;
  std::vector<char> state(services.size(), 0);  // 0 new, 1 on the stack, 2 done
  std::vector<std::pair<int, size_t>> stack;
  for (size_t root = 0; root < services.size(); ++root) {
    if (state[root] != 0) continue;
    stack.push_back({static_cast<int>(root), 0});
    state[root] = 1;
    while (!stack.empty()) {
      auto& [v, next] = stack.back();
      const std::vector<CallEdge>& calls = services[v].calls;
      if (next < calls.size()) {
        auto it = index.find(calls[next++].callee);
        if (it != index.end() && state[it->second] == 0) {
          state[it->second] = 1;
          stack.push_back({it->second, 0});
        }
        continue;
      }
      state[v] = 2;
      order.push_back(v);
      stack.pop_back();
    }
  }
  return order;
}

}  // namespace

std::string_view PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kLatency:
      return "latency";
    case Policy::kEnergy:
      return "energy";
    case Policy::kBalanced:
      return "balanced";
    case Policy::kHostOnly:
      return "host-only";
    case Policy::kRandom:
      return "random";
    case Policy::kDataLocal:
      return "data-local";
  }
  return "unknown";
}

std::vector<Policy> AllPolicies() {
  return {Policy::kLatency,  Policy::kEnergy, Policy::kBalanced,
          Policy::kHostOnly, Policy::kRandom, Policy::kDataLocal};
}

Result<Policy> ParsePolicy(std::string_view name) {
  for (Policy p : AllPolicies()) {
    if (PolicyName(p) == name) return p;
  }
  return InvalidArgumentError(fmt::format(
      "unknown placement policy '{}': expected one of latency, energy, balanced, host-only, "
      "random, data-local",
      name));
}

Result<Decision> Place(const ClusterView& view, const ServiceProfile& service, Policy policy,
                       const PlaceOptions& options) {
  TERN_ASSIGN_OR_RETURN(Compiled c, internal::Compile(view));
  ServiceWork w;
  TERN_ASSIGN_OR_RETURN(w.cs, internal::CompileService(c, service));
  HostFacts facts = MakeHostFacts(c);
  w.Prepare(c, facts, policy);
  State s(c);
  Eval chosen = Choose(c, w, s, policy, options, /*replica=*/0);

  Decision d;
  d.policy = policy;
  TenantState t = internal::TenantOf(view, service.tenant);
  for (size_t i = 0; i < c.dev.size(); ++i) {
    int dev = static_cast<int>(i);
    std::vector<ReadPath> reads;
    Static st = internal::EvalStatic(c, w.cs, dev, &reads);
    Dynamic dy = internal::EvalDynamic(c, w.cs, dev, st, s.used[i], s.committed[i], t);
    d.candidates.push_back(Candidate{internal::MakePrediction(c, w.cs, dev, st, dy, s.used[i],
                                                              s.committed[i], t, std::move(reads)),
                                     ""});
  }
  if (chosen.d >= 0) {
    d.device = view.devices[chosen.d].name;
    d.prediction = d.candidates[chosen.d].prediction;
    d.slo_met = d.prediction.meets_slo;
  }
  for (Candidate& cand : d.candidates) cand.verdict = Verdict(d, cand.prediction, d.prediction);
  d.explanation = Explain(d, service);
  return d;
}

Result<PlaceAllResult> PlaceAll(const ClusterView& view,
                                const std::vector<ServiceProfile>& services, Policy policy,
                                const PlaceOptions& options) {
  TERN_ASSIGN_OR_RETURN(Compiled c, internal::Compile(view));
  std::unordered_map<std::string, int> index;
  for (size_t i = 0; i < services.size(); ++i) {
    index.emplace(services[i].name, static_cast<int>(i));
  }
  // Validate everything before placing anything.
  std::vector<CService> compiled;
  compiled.reserve(services.size());
  for (const ServiceProfile& p : services) {
    TERN_ASSIGN_OR_RETURN(CService cs, internal::CompileService(c, p));
    compiled.push_back(std::move(cs));
  }
  std::vector<std::vector<int>> placed_on(services.size());
  State s(c);
  PlaceAllResult out;
  HostFacts facts = MakeHostFacts(c);
  ServiceWork w;
  w.state = &s;
  for (int si : CalleesFirst(services, index)) {
    w.cs = compiled[si];
    const ServiceProfile& p = services[si];
    for (size_t e = 0; e < p.calls.size(); ++e) {
      auto it = index.find(p.calls[e].callee);
      if (it == index.end()) continue;
      std::vector<int>& callees = w.cs.edges[e].callees;
      for (int d : placed_on[it->second]) {
        if (std::find(callees.begin(), callees.end(), d) == callees.end()) callees.push_back(d);
      }
    }
    w.Prepare(c, facts, policy);
    for (int r = 0; r < p.replicas; ++r) {
      Eval e = Choose(c, w, s, policy, options, r);
      InstancePlacement ip;
      ip.service = si;
      ip.replica = r;
      if (e.d < 0) {
        ++out.unplaced;
        // Say why on the device with the lowest fixed costs.
        Key first;
        w.state = nullptr;  // every device, full or not
        w.by_fixed.Reset(&w, OrderBy::kFixed);
        bool any = w.by_fixed.At(0, &first);
        w.state = &s;
        if (any) {
          int d = first.d;
          TenantState t = s.tenants[p.tenant];
          Dynamic dy = Dyn(c, w, d, s, t);
          ip.why_not = fmt::format(
              "no device fits; e.g. {}: {}", view.devices[d].name,
              internal::MakePrediction(c, w.cs, d, w.Get(d), dy, s.used[d], s.committed[d], t, {})
                  .why_not);
        } else {
          ip.why_not = "no devices";
        }
        out.instances.push_back(std::move(ip));
        continue;
      }
      ip.device = view.devices[e.d].name;
      ip.latency_p50_us = e.dy.p50_ns / 1e3;
      ip.latency_p99_us = e.dy.p99_ns / 1e3;
      ip.energy_j_per_request = w.Get(e.d).energy_j;
      ip.bytes_moved_per_request = w.Get(e.d).bytes;
      ip.meets_slo = e.dy.slo_ok;
      ++out.placed;
      if (!e.dy.slo_ok) ++out.slo_misses;
      Commit(c, w, e.d, policy, s);
      placed_on[si].push_back(e.d);
      out.instances.push_back(std::move(ip));
    }
  }
  return out;
}

}  // namespace tern::placement
