#include "placement/cost.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "placement/test_cluster.h"

namespace tern::placement {
namespace {

using testing::kMiB;
using testing::Rack;
using testing::Scan;

Prediction MustPredict(const ClusterView& v, const ServiceProfile& s, const std::string& d) {
  Result<Prediction> p = Predict(v, s, d);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : Prediction{};
}

TEST(MmcWaitTest, MatchesMM1ClosedForm) {
  // M/M/1: P(wait) = ρ, mean wait = ρ S / (1 − ρ), P(W > t) = ρ e^{−(1−ρ)t/S}.
  WaitTimes w = MmcWait(1, 0.5, 1000);
  EXPECT_NEAR(w.p_wait, 0.5, 1e-12);
  EXPECT_NEAR(w.mean_ns, 1000, 1e-9);
  EXPECT_NEAR(w.p99_ns, std::log(0.5 / 0.01) / 0.5 * 1000, 1e-6);
  EXPECT_EQ(w.p50_ns, 0);  // half the requests do not wait at all
  EXPECT_TRUE(std::isinf(MmcWait(1, 1.0, 1000).p99_ns));
  EXPECT_EQ(MmcWait(4, 0, 1000).p99_ns, 0);
  // Deterministic service (cv² = 0) halves the waits (Allen–Cunneen), cv² = 3 doubles them.
  EXPECT_NEAR(MmcWait(1, 0.5, 1000, 0).p99_ns, w.p99_ns / 2, 1e-6);
  EXPECT_NEAR(MmcWait(1, 0.5, 1000, 3).mean_ns, 2 * w.mean_ns, 1e-6);
}

TEST(MmcWaitTest, ErlangCForTwoServers) {
  // c = 2, a = 1 (ρ = 0.5): Erlang C = 1/3.
  WaitTimes w = MmcWait(2, 0.5, 1000);
  EXPECT_NEAR(w.p_wait, 1.0 / 3, 1e-12);
  EXPECT_NEAR(w.mean_ns, (1.0 / 3) / (2 * 0.5 / 1000), 1e-9);
  // More servers at the same utilization wait less.
  EXPECT_LT(MmcWait(8, 0.5, 1000).p99_ns, w.p99_ns);
}

TEST(PredictTest, ScanTermsOnTheCsdAndOnTheHost) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  Prediction csd = MustPredict(v, s, "csd0");
  Prediction host = MustPredict(v, s, "s1-cpu");
  // Compute: 64 MiB × 0.2 ns/B = 13.4 ms at speed 1; on 0.25 core × 0.4 speed, 10× that.
  EXPECT_NEAR(host.terms.compute_us, 64 * kMiB * 0.2 / 1e3, 1e-6);
  EXPECT_NEAR(csd.terms.compute_us, 10 * host.terms.compute_us, 1e-6);
  // Data: local on the CSD; over the 1 Gbit/s link (8 ns/B) plus shm fixed and latency.
  EXPECT_EQ(csd.terms.data_us, 0);
  EXPECT_EQ(csd.local_bytes, 64 * kMiB);
  EXPECT_NEAR(host.terms.data_us, (3000 + 2 * 2000 + 64 * kMiB * 8) / 1e3, 1e-6);
  ASSERT_EQ(host.reads.size(), 1u);
  EXPECT_EQ(host.reads[0].from_device, "csd0");
  EXPECT_EQ(host.reads[0].path, "csd0 → s1 → s1-cpu (shm)");
  // Bytes moved: the reply (and request) to the gateway from the CSD; 64 MiB more on the host.
  EXPECT_NEAR(csd.bytes_moved_per_request, 256 + 64 * kMiB * 0.001, 1e-6);
  EXPECT_NEAR(host.bytes_moved_per_request - csd.bytes_moved_per_request, 64 * kMiB, 1e-6);
  // Energy: (12 W / 0.25 cores) × 33.5 core-ms on the CSD; (65 / 2) × 13.4 ms on the host.
  double csd_compute_j = 12 / 0.25 * 64 * kMiB * 0.2 / 0.4 * 1e-9;
  EXPECT_NEAR(csd.energy_j_per_request,
              csd_compute_j + csd.bytes_moved_per_request * (40e-12 + 1e-9), 1e-9);
  EXPECT_GT(host.energy_j_per_request, 64 * kMiB * 40e-12);
  // p50/p99 are the sum of their terms.
  for (const Prediction& p : {csd, host}) {
    EXPECT_NEAR(p.latency_p99_us,
                p.terms.compute_us + p.terms.data_us + p.terms.caller_us + p.terms.rpc_us +
                    p.terms.queue_p99_us,
                1e-6);
    EXPECT_TRUE(p.feasible) << p.why_not;
    EXPECT_EQ(p.source, ProfileSource::kMeasured);
  }
  EXPECT_LT(csd.latency_p99_us, host.latency_p99_us);
}

TEST(PredictTest, MemoryConstraintRejectsWithTheNumbers) {
  ClusterView v = Rack();
  v.devices[1].memory_committed_bytes = uint64_t{1900} << 20;  // csd0: 2 GiB
  ServiceProfile s = Scan();
  s.memory_bytes = 256 << 20;
  Prediction p = MustPredict(v, s, "csd0");
  EXPECT_FALSE(p.feasible);
  EXPECT_FALSE(p.fits);
  EXPECT_EQ(p.why_not, "memory: needs 256 MiB, 1.86 GiB of 2 GiB already committed on csd0");
  s.memory_bytes = 64 << 20;  // fits: 1900 + 64 <= 2048
  EXPECT_TRUE(MustPredict(v, s, "csd0").fits);
}

TEST(PredictTest, ReservedShareRejectsWhenTheOfferedCoresWouldSaturate) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  s.request_rate = 5;  // 5 × 33.5 core-ms = 0.168 cores of csd0's 0.25
  Prediction free = MustPredict(v, s, "csd0");
  EXPECT_TRUE(free.fits) << free.why_not;
  EXPECT_NEAR(free.load_cores, 5 * 64 * kMiB * 0.2 / 0.4 * 1e-9, 1e-12);
  EXPECT_NEAR(free.utilization_after, free.load_cores / 0.25, 1e-12);
  v.devices[1].reserved = 0.5;  // the drive keeps half its core for its FTL: 0.125 offered
  Prediction reserved = MustPredict(v, s, "csd0");
  EXPECT_FALSE(reserved.fits);
  EXPECT_TRUE(std::isinf(reserved.latency_p99_us));
  EXPECT_NE(reserved.why_not.find("reserved share: csd0 would be 134% busy on the 0.125 "
                                  "cores it offers (0.25 cores, 50% reserved"),
            std::string::npos)
      << reserved.why_not;
  // Utilization already there counts too.
  v.devices[1].reserved = 0;
  v.devices[1].utilization = 0.5;
  EXPECT_FALSE(MustPredict(v, s, "csd0").fits);
}

TEST(PredictTest, TenantQuotaRejectsInstancesAndCores) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  v.quotas["acme"] = TenantQuota{3, -1};
  v.tenant_use["acme"] = TenantUse{3, 0.1};
  Prediction p = MustPredict(v, s, "s1-cpu");
  EXPECT_FALSE(p.fits);
  EXPECT_EQ(p.why_not, "quota: tenant acme would have 4 instances, quota 3");
  v.quotas["acme"] = TenantQuota{-1, 0.11};  // 0.1 + 0.0134 cores > 0.11
  p = MustPredict(v, s, "s1-cpu");
  EXPECT_FALSE(p.fits);
  EXPECT_EQ(p.why_not, "quota: tenant acme would use 0.113 cores, quota 0.11");
  v.quotas["acme"] = TenantQuota{4, 0.2};
  EXPECT_TRUE(MustPredict(v, s, "s1-cpu").fits);
  v.quotas.erase("acme");  // other tenants' quotas do not apply
  v.quotas["other"] = TenantQuota{0, 0};
  EXPECT_TRUE(MustPredict(v, s, "s1-cpu").fits);
}

TEST(PredictTest, SloRejectsWhenPredictedP99ExceedsTheTarget) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  s.slo_p99_us = 400'000;  // 400 ms: the CSD makes it (~340 ms), the host (~550 ms) not
  Prediction csd = MustPredict(v, s, "csd0");
  Prediction host = MustPredict(v, s, "s1-cpu");
  EXPECT_TRUE(csd.feasible) << csd.why_not;
  EXPECT_TRUE(host.fits);
  EXPECT_FALSE(host.meets_slo);
  EXPECT_FALSE(host.feasible);
  EXPECT_EQ(host.why_not.rfind("SLO: predicted p99 5", 0), 0u) << host.why_not;
  EXPECT_NE(host.why_not.find("> target 400 ms"), std::string::npos) << host.why_not;
}

TEST(PredictTest, AllowedDevices) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  s.allowed_devices = {"c1-cpu"};
  Prediction p = MustPredict(v, s, "csd0");
  EXPECT_FALSE(p.fits);
  EXPECT_EQ(p.why_not, "not allowed: scan may run only on c1-cpu");
  EXPECT_TRUE(MustPredict(v, s, "c1-cpu").fits);
}

TEST(PredictTest, MonotoneInBytesRateCpuAndLink) {
  ClusterView v = Rack();
  double last = 0;
  for (double mib : {1.0, 4.0, 16.0, 64.0}) {
    ServiceProfile s = Scan();
    s.reads[0].bytes_per_request = mib * kMiB;
    Prediction p = MustPredict(v, s, "c1-cpu");
    EXPECT_GT(p.latency_p50_us, last) << mib;
    last = p.latency_p50_us;
  }
  last = 0;
  for (double rate : {1.0, 10.0, 50.0, 100.0}) {  // queueing on s1-cpu grows with the rate
    ServiceProfile s = Scan();
    s.request_rate = rate;
    Prediction p = MustPredict(v, s, "s1-cpu");
    EXPECT_GE(p.latency_p99_us, last) << rate;
    EXPECT_GE(p.terms.queue_p99_us, 0);
    last = p.latency_p99_us;
  }
  EXPECT_GT(last, MustPredict(v, Scan(), "s1-cpu").latency_p99_us);
  ServiceProfile light = Scan(0.1), heavy = Scan(0.4);
  EXPECT_GT(MustPredict(v, heavy, "csd0").energy_j_per_request,
            MustPredict(v, light, "csd0").energy_j_per_request);
  ClusterView slow = Rack();
  slow.devices[1].link.bandwidth_bps = 0.5e9;
  EXPECT_GT(MustPredict(slow, Scan(), "s1-cpu").latency_p50_us,
            MustPredict(v, Scan(), "s1-cpu").latency_p50_us);
}

TEST(PredictTest, CallEdgesUseTheTierThePlacementImplies) {
  ClusterView v = Rack();
  ServiceProfile s;
  s.name = "front";
  s.cpu_ns_per_request = 10'000;
  s.calls = {CallEdge{"db", 2, 100, 100, {"s1-cpu"}}};
  const TransportCosts& t = v.transports;
  // Same device: in-process.
  EXPECT_NEAR(MustPredict(v, s, "s1-cpu").terms.rpc_us,
              2 * (t.inproc.fixed_ns + 200 * t.inproc.ns_per_byte) / 1e3, 1e-9);
  // Same host, other device: shared memory across csd0's link (1 Gbit/s: 8 ns/B).
  EXPECT_NEAR(MustPredict(v, s, "csd0").terms.rpc_us,
              2 * (t.shm.fixed_ns + 2 * 2000 + 200 * 8.0) / 1e3, 1e-9);
  // Other host: TCP over the host link (20 µs one way, 10 Gbit/s < TCP's own 0.72 ns/B).
  EXPECT_NEAR(MustPredict(v, s, "c1-cpu").terms.rpc_us,
              2 * (t.tcp.fixed_ns + 2 * 20000 + 200 * 0.8) / 1e3, 1e-9);
  // The nearest callee instance counts.
  s.calls[0].callee_devices.push_back("c1-cpu");
  EXPECT_NEAR(MustPredict(v, s, "c1-cpu").terms.rpc_us,
              2 * (t.inproc.fixed_ns + 200 * t.inproc.ns_per_byte) / 1e3, 1e-9);
}

TEST(PredictTest, BadInputIsNamed) {
  ClusterView v = Rack();
  ServiceProfile s = Scan();
  Result<Prediction> p = Predict(v, s, "nope");
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(p.status().message(), "predict scan: no device 'nope' in the view");

  ClusterView bad = v;
  bad.devices[1].reserved = 1.5;
  p = Predict(bad, s, "csd0");
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(p.status().message(),
            "devices[1] (csd0).reserved: expected a value in [0, 1), got 1.5");

  bad = v;
  bad.devices[2].name = "csd0";
  EXPECT_EQ(Predict(bad, s, "csd0").status().message(),
            "devices[2] (csd0).name: a second device of that name");

  bad = v;
  bad.host_links.clear();
  EXPECT_EQ(Predict(bad, s, "csd0").status().message(),
            "host_links: hosts c1 and s1 have no link (and no default_host_link is set)");
  bad.has_default_host_link = true;
  EXPECT_TRUE(Predict(bad, s, "csd0").ok());

  ServiceProfile bs = s;
  bs.reads[0].dataset = "metrics";
  EXPECT_EQ(Predict(v, bs, "csd0").status().message(),
            "service scan: reads[0] (metrics): no device holds this dataset");
  bs = s;
  bs.cpu_ns_per_request = -1;
  EXPECT_EQ(Predict(v, bs, "csd0").status().message(),
            "service scan: cpu_ns_per_request: expected a finite number >= 0, got -1");
  bs = s;
  bs.caller_host = "h9";
  EXPECT_EQ(Predict(v, bs, "csd0").status().message(),
            "service scan: caller_host: no device is on host 'h9'");
}

TEST(ProfileTest, EstimateFromManifestThenMeasured) {
  Manifest m;
  m.name = "scan";
  m.tenant = "acme";
  m.replicas = 2;
  m.limits.memory_mib = 32;
  ServiceHints h;
  h.reads = {DatasetRead{"logs", 1000}};
  ServiceProfile p = ProfileFromManifest(m, h);
  EXPECT_EQ(p.source, ProfileSource::kEstimate);
  EXPECT_EQ(p.cpu_ns_per_request, kDefaultCpuNsEstimate);
  EXPECT_EQ(p.memory_bytes, uint64_t{32} << 20);
  EXPECT_EQ(p.replicas, 2);
  h.cpu_us_per_request = 250;
  EXPECT_EQ(ProfileFromManifest(m, h).cpu_ns_per_request, 250'000);

  // 100 ms measured on a device of speed 0.4 is 40 ms at speed 1.0.
  Result<ServiceProfile> measured = WithMeasurement(p, Measurement{100e6, 0.4, 3, {}});
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_EQ(measured->source, ProfileSource::kMeasured);
  EXPECT_NEAR(measured->cpu_ns_per_request, 40e6, 1e-6);
  EXPECT_EQ(measured->request_rate, 3);
  EXPECT_EQ(measured->reads, p.reads);  // not measured: kept
  EXPECT_EQ(WithMeasurement(p, Measurement{0, 1, -1, {}}).status().message(),
            "measurement of scan: cpu_ns_per_request: expected a number > 0, got 0");
}

}  // namespace
}  // namespace tern::placement
