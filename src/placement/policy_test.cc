#include "placement/policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

#include "placement/explain.h"
#include "placement/sim.h"
#include "placement/test_cluster.h"

namespace tern::placement {
namespace {

using testing::kMiB;
using testing::Rack;
using testing::Scan;

Decision MustPlace(const ClusterView& v, const ServiceProfile& s, Policy p,
                   const PlaceOptions& o = {}) {
  Result<Decision> d = Place(v, s, p, o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : Decision{};
}

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(PolicyNamesTest, RoundTrip) {
  for (Policy p : AllPolicies()) {
    Result<Policy> back = ParsePolicy(PolicyName(p));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, p);
  }
  Result<Policy> bad = ParsePolicy("fastest");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Has(std::string(bad.status().message()), "'fastest'"));
}

// The offload decision, one direction: a 0.1%-selective scan over 64 MiB behind a
// 1 Gbit/s link goes to the drive.
TEST(PlaceTest, SelectiveScanGoesToTheCsdByLatencyAndBalanced) {
  ClusterView v = Rack();
  ServiceProfile s = Scan(/*ns_per_byte=*/0.2, /*selectivity=*/0.001);
  s.slo_p99_us = 400'000;
  Decision lat = MustPlace(v, s, Policy::kLatency);
  EXPECT_EQ(lat.device, "csd0") << lat.explanation;
  Decision bal = MustPlace(v, s, Policy::kBalanced);
  EXPECT_EQ(bal.device, "csd0") << bal.explanation;
  EXPECT_TRUE(bal.slo_met);
  EXPECT_TRUE(Has(bal.explanation,
                  "balanced: scan on csd0 (csd) — the least energy per request "
                  "of the 1 devices that meet the SLO (p99 ≤ 400 ms)"))
      << bal.explanation;
  // The baselines: host-only keeps it on a host CPU.
  EXPECT_EQ(MustPlace(v, s, Policy::kHostOnly).device, "s1-cpu");
}

// The other direction: the same data, but 20 ns of CPU per byte. The CSD's 0.25 core ×
// 0.4 speed makes it 10× slower than a host core, which outweighs the 1 Gbit/s link.
TEST(PlaceTest, ComputeHeavyServiceOverTheSameDataStaysOnTheHost) {
  ClusterView v = Rack();
  ServiceProfile s = Scan(/*ns_per_byte=*/20, /*selectivity=*/0.001);
  s.request_rate = 0.05;  // 0.17 of csd0's 0.25 cores: it fits, it is just slow
  Decision lat = MustPlace(v, s, Policy::kLatency);
  EXPECT_EQ(lat.device, "s1-cpu") << lat.explanation;
  s.slo_p99_us = 5e6;
  Decision bal = MustPlace(v, s, Policy::kBalanced);
  EXPECT_EQ(bal.device, "s1-cpu") << bal.explanation;
  const Prediction& csd = bal.candidates[1].prediction;
  EXPECT_EQ(csd.device, "csd0");
  EXPECT_GT(csd.latency_p99_us, 5e6);
  EXPECT_TRUE(Has(bal.candidates[1].verdict, "fits, but SLO: predicted p99"))
      << bal.candidates[1].verdict;
}

// A low-power device wins on energy when the SLO leaves room, and balanced follows the SLO.
TEST(PlaceTest, EnergyPicksTheLowPowerDeviceWhenTheSloAllows) {
  ClusterView v = Rack();
  DeviceView nic;
  nic.name = "nic0";
  nic.host = "c1";
  nic.kind = DeviceKind::kNic;
  nic.cores = 1;
  nic.speed = 0.5;
  nic.memory_bytes = uint64_t{4} << 30;
  nic.idle_w = 2;
  nic.active_w = 4;  // 4 W per core at half speed: 8 W per reference core vs 32.5 W
  nic.link = LinkCost{1000, 128e9, 40e-12};
  v.devices.push_back(nic);
  ServiceProfile s;
  s.name = "thumb";
  s.cpu_ns_per_request = 1e6;  // 1 ms at speed 1, 2 ms on the NIC
  s.request_rate = 10;
  s.caller_host = "c1";
  s.memory_bytes = 16 << 20;
  s.slo_p99_us = 5000;
  EXPECT_EQ(MustPlace(v, s, Policy::kEnergy).device, "nic0");
  EXPECT_EQ(MustPlace(v, s, Policy::kBalanced).device, "nic0");
  EXPECT_EQ(MustPlace(v, s, Policy::kLatency).device, "c1-cpu");
  // A tighter SLO: only the host makes it. Balanced moves; energy does not care.
  s.slo_p99_us = 1500;
  Decision bal = MustPlace(v, s, Policy::kBalanced);
  EXPECT_EQ(bal.device, "c1-cpu") << bal.explanation;
  EXPECT_TRUE(bal.slo_met);
  Decision energy = MustPlace(v, s, Policy::kEnergy);
  EXPECT_EQ(energy.device, "nic0");
  EXPECT_FALSE(energy.slo_met);
  EXPECT_TRUE(Has(energy.explanation, "(MISSED)")) << energy.explanation;
}

TEST(PlaceTest, BalancedFallsBackToTheLowestP99WhenNothingMeetsTheSlo) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  s.slo_p99_us = 1000;  // 1 ms: nothing comes close
  Decision bal = MustPlace(v, s, Policy::kBalanced);
  Decision lat = MustPlace(v, s, Policy::kLatency);
  EXPECT_EQ(bal.device, lat.device);
  EXPECT_EQ(bal.device, "csd0");
  EXPECT_FALSE(bal.slo_met);
  EXPECT_TRUE(Has(bal.explanation,
                  "NO device meets the SLO (p99 ≤ 1 ms): the lowest predicted "
                  "p99 of the 3 that fit"))
      << bal.explanation;
}

TEST(PlaceTest, EachConstraintRejectsWithAClearReason) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  // Memory on the CSD: the scan goes to the host instead, and csd0 says why.
  v.devices[1].memory_committed_bytes = v.devices[1].memory_bytes;
  Decision d = MustPlace(v, s, Policy::kLatency);
  EXPECT_EQ(d.device, "s1-cpu");
  EXPECT_EQ(d.candidates[1].verdict.rfind("rejected: memory: needs 64 MiB", 0), 0u)
      << d.candidates[1].verdict;
  // The reserved share.
  v = Rack();
  v.devices[1].reserved = 0.9;
  s.request_rate = 1;
  d = MustPlace(v, s, Policy::kLatency);
  EXPECT_EQ(d.device, "s1-cpu");
  EXPECT_TRUE(Has(d.candidates[1].verdict, "rejected: reserved share: csd0 would be"))
      << d.candidates[1].verdict;
  // The quota: nothing fits anywhere.
  v = Rack();
  v.quotas["acme"] = TenantQuota{1, -1};
  v.tenant_use["acme"] = TenantUse{1, 0};
  d = MustPlace(v, s, Policy::kBalanced);
  EXPECT_EQ(d.device, "");
  EXPECT_EQ(d.explanation,
            "balanced: scan cannot be placed: none of the 3 devices meets the hard constraints "
            "(quota 3).");
  for (const Candidate& c : d.candidates) {
    EXPECT_EQ(c.verdict, "rejected: quota: tenant acme would have 2 instances, quota 1");
  }
}

TEST(PlaceTest, EstimateThenMeasurementSwitchesTheDecision) {
  ClusterView v = Rack();
  Manifest m;
  m.name = "scan";
  ServiceHints h;
  h.cpu_us_per_request = 64 * kMiB * 0.2 / 1e3;  // the deployer's hint: a light filter
  h.request_rate = 1;
  h.reads = {DatasetRead{"logs", 64 * kMiB}};
  h.caller_host = "c1";
  h.reply_bytes = 64 * 1024;
  ServiceProfile est = ProfileFromManifest(m, h);
  Decision before = MustPlace(v, est, Policy::kLatency);
  EXPECT_EQ(before.device, "csd0");
  EXPECT_TRUE(Has(before.explanation, "CPU figure: estimate")) << before.explanation;
  // Telemetry: it really takes 200 ms of CPU per request on csd0's 0.4-speed core (80 ms
  // at speed 1.0, 6× the hint) — now the host is faster despite the link.
  Result<ServiceProfile> meas = WithMeasurement(est, Measurement{2e8, 0.4, -1, {}});
  ASSERT_TRUE(meas.ok());
  Decision after = MustPlace(v, *meas, Policy::kLatency);
  EXPECT_EQ(after.device, "s1-cpu") << after.explanation;
  EXPECT_TRUE(Has(after.explanation, "CPU figure: measured")) << after.explanation;
}

TEST(PlaceTest, DataLocalPicksByBytesEvenWhenItIsWrong) {
  ClusterView v = Rack();
  ServiceProfile s = Scan(/*ns_per_byte=*/20);
  s.request_rate = 0.05;
  Decision local = MustPlace(v, s, Policy::kDataLocal);
  Decision lat = MustPlace(v, s, Policy::kLatency);
  EXPECT_EQ(local.device, "csd0");
  EXPECT_EQ(lat.device, "s1-cpu");
  EXPECT_GT(local.prediction.latency_p99_us, 5 * lat.prediction.latency_p99_us);
  EXPECT_TRUE(Has(local.explanation, "it holds the most bytes read per request (64 MiB"))
      << local.explanation;
  // No bytes read: every device ties at 0, and ties go to host CPUs.
  ServiceProfile pure = s;
  pure.reads.clear();
  Decision tie = MustPlace(v, pure, Policy::kDataLocal);
  EXPECT_EQ(tie.prediction.kind, DeviceKind::kCpu);
}

TEST(PlaceTest, HostOnlyNeverOffloads) {
  ClusterView v = Rack();
  Decision d = MustPlace(v, Scan(), Policy::kHostOnly);
  EXPECT_EQ(d.prediction.kind, DeviceKind::kCpu);
  EXPECT_EQ(d.candidates[1].verdict, "excluded: host-only uses host CPUs only");
}

TEST(PlaceTest, RandomIsSeededAndOnlyPicksDevicesThatFit) {
  ClusterView v = Rack();
  v.devices[2].memory_committed_bytes = v.devices[2].memory_bytes;  // c1-cpu full
  std::set<std::string> seen;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    Decision a = MustPlace(v, Scan(), Policy::kRandom, PlaceOptions{seed});
    Decision b = MustPlace(v, Scan(), Policy::kRandom, PlaceOptions{seed});
    EXPECT_EQ(a.device, b.device);
    EXPECT_NE(a.device, "c1-cpu");
    seen.insert(a.device);
  }
  EXPECT_EQ(seen, (std::set<std::string>{"s1-cpu", "csd0"}));
}

TEST(PlaceTest, DeterministicDecisionsAndExplanations) {
  ClusterView v = Rack();
  for (Policy p : AllPolicies()) {
    Decision a = MustPlace(v, Scan(), p);
    Decision b = MustPlace(v, Scan(), p);
    EXPECT_EQ(a, b) << PolicyName(p);
    EXPECT_EQ(a.candidates.size(), 3u);
  }
}

TEST(ExplainTest, TableListsEveryCandidateWithItsVerdict) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  s.slo_p99_us = 400'000;
  std::string text = ExplainDecision(MustPlace(v, s, Policy::kBalanced));
  EXPECT_TRUE(Has(text, "balanced: scan on csd0")) << text;
  EXPECT_TRUE(Has(text, "\n\ncandidate  kind  p50")) << text;
  EXPECT_TRUE(Has(text, "\ncsd0       csd   ")) << text;
  EXPECT_TRUE(Has(text, "chosen\n")) << text;
  EXPECT_TRUE(Has(text, "\ns1-cpu     cpu   ")) << text;
  EXPECT_TRUE(Has(text, "fits, but SLO: predicted p99")) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2 + 1 + 3);
}

// Place's choice is the documented rule applied to its own candidate list (the lazy,
// bounded scans inside agree with the exhaustive argmin), on synthetic clusters.
TEST(PlaceTest, ChoiceMatchesTheRuleOverAllCandidates) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    Result<SimCluster> sim = GenerateCluster(SimSpec{48, 60, 30, seed, 0.5, false});
    ASSERT_TRUE(sim.ok()) << sim.status();
    for (const ServiceProfile& s : sim->services) {
      for (Policy p : {Policy::kLatency, Policy::kEnergy, Policy::kBalanced, Policy::kHostOnly,
                       Policy::kDataLocal}) {
        Decision d = MustPlace(sim->view, s, p);
        const Prediction* best = nullptr;
        bool any_slo = false;
        for (const Candidate& c : d.candidates)
          any_slo |= c.prediction.fits && c.prediction.meets_slo;
        auto key = [&](const Prediction& x) {
          switch (p) {
            case Policy::kEnergy:
              return std::make_tuple(x.energy_j_per_request, 0.0, x.latency_p99_us);
            case Policy::kBalanced:
              return any_slo ? std::make_tuple(x.energy_j_per_request, 0.0, x.latency_p99_us)
                             : std::make_tuple(x.latency_p99_us, 0.0, 0.0);
            case Policy::kDataLocal:
              return std::make_tuple(-x.local_bytes, x.kind == DeviceKind::kCpu ? 0.0 : 1.0,
                                     x.latency_p99_us);
            default:
              return std::make_tuple(x.latency_p99_us, 0.0, 0.0);
          }
        };
        for (const Candidate& c : d.candidates) {
          const Prediction& x = c.prediction;
          if (!x.fits) continue;
          if (p == Policy::kHostOnly && x.kind != DeviceKind::kCpu) continue;
          if (p == Policy::kBalanced && any_slo && !x.meets_slo) continue;
          if (best == nullptr || key(x) < key(*best)) best = &x;
        }
        ASSERT_NE(best, nullptr);
        EXPECT_EQ(d.device, best->device) << s.name << " " << PolicyName(p) << "\n"
                                          << ExplainDecision(d);
      }
    }
  }
}


// bench/ndp's near-tie (docs/benchmarks.md): a filter returning 100% of a 16 MiB object,
// 8.4 ms of CPU per query, one query a second (cv² = 0), cpu0 (1 core, h1) or csd0
// (0.25 core, half reserved, on h2 behind 1 Gbit/s). On an idle csd0 the drive wins by
// p99 (compute 67 ms on its 0.125 core + the M/D/1 tail at 7% vs 134 ms of the host's
// data path), as it does end to end (1.7× faster). Counting the agent's own CPU (8% of
// csd0, what the controller used to report as its utilization) as guests' flips it to
// the host: that CPU is the device's main task, in the reserved share.
ClusterView NdpView(double csd_utilization) {
  ClusterView v;
  DeviceView cpu;
  cpu.name = "cpu0";
  cpu.host = "h1";
  cpu.kind = DeviceKind::kCpu;
  cpu.cores = 1;
  cpu.memory_bytes = uint64_t{1} << 30;
  cpu.active_w = 65;
  DeviceView csd;
  csd.name = "csd0";
  csd.host = "h2";
  csd.kind = DeviceKind::kCsd;
  csd.cores = 0.25;
  csd.reserved = 0.5;
  csd.memory_bytes = uint64_t{1} << 30;
  csd.active_w = 12;
  csd.datasets = {"ndp"};
  csd.link = {2000, 32e9, 40e-12};
  csd.utilization = csd_utilization;
  v.devices = {cpu, csd};
  v.host_links.push_back({"h1", "h2", {50'000, 1e9, 1e-9}});
  return v;
}

TEST(PlaceTest, NdpFullSelectivityFilterGoesToTheIdleCsd) {
  ServiceProfile s;
  s.name = "filter100";
  s.request_rate = 1;
  s.cpu_ns_per_request = 8.4e6;
  s.reads = {{"ndp", 16.0 * kMiB}};
  s.memory_bytes = 64 << 20;
  s.service_cv2 = 0;
  Decision idle = MustPlace(NdpView(0), s, Policy::kLatency);
  EXPECT_EQ(idle.device, "csd0") << idle.explanation;
  const Prediction& csd = idle.candidates[1].prediction;
  const Prediction& cpu = idle.candidates[0].prediction;
  EXPECT_NEAR(csd.terms.compute_us, 67'200, 1);
  EXPECT_NEAR(cpu.terms.data_us, 134'400, 200);  // 16 MiB at 1 Gbit/s + TCP
  EXPECT_LT(csd.latency_p99_us, 0.97 * cpu.latency_p99_us);
  // The same drive with 8% of its offered cores busy before this instance: the host.
  Decision busy = MustPlace(NdpView(0.08), s, Policy::kLatency);
  EXPECT_EQ(busy.device, "cpu0") << busy.explanation;
}

}  // namespace
}  // namespace tern::placement
