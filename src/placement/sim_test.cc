#include "placement/sim.h"

#include <gtest/gtest.h>

#include <map>

#include "placement/policy.h"

namespace tern::placement {
namespace {

TEST(SimTest, GeneratesAValidDeterministicMix) {
  Result<SimCluster> a = GenerateCluster(SimSpec{1000, 10000, 1000, 7});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(ValidateView(a->view).ok());
  EXPECT_EQ(a->view.devices.size(), 1000u);
  EXPECT_EQ(a->services.size(), 1000u);
  int instances = 0;
  for (const ServiceProfile& s : a->services) {
    instances += s.replicas;
    EXPECT_TRUE(ValidateProfile(a->view, s).ok()) << s.name;
  }
  EXPECT_EQ(instances, 10000);
  std::map<DeviceKind, int> kinds;
  for (const DeviceView& d : a->view.devices) ++kinds[d.kind];
  EXPECT_EQ(kinds[DeviceKind::kCpu], 250);
  EXPECT_GT(kinds[DeviceKind::kCsd], 300);
  EXPECT_GT(kinds[DeviceKind::kNic], 100);
  Result<SimCluster> b = GenerateCluster(SimSpec{1000, 10000, 1000, 7});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->view, b->view);
  EXPECT_EQ(a->services, b->services);
  Result<SimCluster> c = GenerateCluster(SimSpec{1000, 10000, 1000, 8});
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->services, c->services);
  EXPECT_EQ(GenerateCluster(SimSpec{1, 1, 1, 1}).status().code(), StatusCode::kInvalidArgument);
}

// Every policy keeps every hard constraint at the final state, places everything the
// quota allows, and is deterministic.
TEST(SimTest, PlaceAllRespectsConstraintsAndIsDeterministic) {
  Result<SimCluster> sim = GenerateCluster(SimSpec{200, 2000, 200, 3});
  ASSERT_TRUE(sim.ok()) << sim.status();
  int t0 = 0;
  for (const ServiceProfile& s : sim->services) {
    if (s.tenant == "t0") t0 += s.replicas;
  }
  int64_t quota = sim->view.quotas.at("t0").max_instances;
  std::map<Policy, Quality> q;
  for (Policy p : AllPolicies()) {
    Result<PlaceAllResult> r = PlaceAll(sim->view, sim->services, p);
    ASSERT_TRUE(r.ok()) << r.status();
    Result<PlaceAllResult> again = PlaceAll(sim->view, sim->services, p);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*r, *again) << PolicyName(p);
    EXPECT_EQ(r->placed + r->unplaced, 2000);
    EXPECT_GE(r->unplaced, t0 - quota) << PolicyName(p);
    Result<Quality> qq = Evaluate(sim->view, sim->services, *r);
    ASSERT_TRUE(qq.ok()) << qq.status();
    EXPECT_EQ(qq->overloaded, 0) << PolicyName(p);
    EXPECT_LT(qq->max_utilization, 1.0) << PolicyName(p);
    q[p] = *qq;
  }
  // The cost model's own objectives beat the baselines on their own terms.
  EXPECT_LT(q[Policy::kLatency].mean_p99_us, q[Policy::kRandom].mean_p99_us);
  EXPECT_LT(q[Policy::kLatency].mean_p99_us, q[Policy::kDataLocal].mean_p99_us);
  EXPECT_LT(q[Policy::kEnergy].mean_energy_j, q[Policy::kHostOnly].mean_energy_j);
  EXPECT_LE(q[Policy::kBalanced].slo_misses, q[Policy::kEnergy].slo_misses);
  EXPECT_EQ(q[Policy::kHostOnly].offloaded, 0);
  EXPECT_GT(q[Policy::kLatency].offloaded, 0);
}

TEST(SimTest, ExhaustiveOracleIsNoWorseThanAnyPolicy) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    Result<SimCluster> sim = GenerateCluster(SimSpec{5, 6, 3, seed, 0.4, false});
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim->view.quotas.clear();
    for (Policy objective : {Policy::kLatency, Policy::kEnergy, Policy::kBalanced}) {
      Result<PlaceAllResult> best = SolveExhaustive(sim->view, sim->services, objective);
      ASSERT_TRUE(best.ok()) << best.status();
      Result<Quality> ob = Evaluate(sim->view, sim->services, *best);
      ASSERT_TRUE(ob.ok());
      EXPECT_EQ(ob->overloaded, 0);
      for (Policy p : AllPolicies()) {
        Result<PlaceAllResult> r = PlaceAll(sim->view, sim->services, p);
        ASSERT_TRUE(r.ok());
        Result<Quality> g = Evaluate(sim->view, sim->services, *r);
        ASSERT_TRUE(g.ok());
        if (g->unplaced > 0) continue;
        if (objective == Policy::kLatency) {
          EXPECT_LE(ob->mean_p99_us, g->mean_p99_us * (1 + 1e-9)) << PolicyName(p);
        } else if (objective == Policy::kEnergy) {
          EXPECT_LE(ob->mean_energy_j, g->mean_energy_j * (1 + 1e-9)) << PolicyName(p);
        } else {
          EXPECT_LE(ob->slo_misses, g->slo_misses) << PolicyName(p);
        }
      }
    }
  }
  Result<SimCluster> big = GenerateCluster(SimSpec{40, 40, 10, 1, 0.4, false});
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(SolveExhaustive(big->view, big->services, Policy::kLatency).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tern::placement
