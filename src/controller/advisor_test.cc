#include "controller/advisor.h"

#include <gtest/gtest.h>

namespace tern::controller {
namespace {

AgentRecord Agent(const std::string& device, const std::string& host, const std::string& kind,
                  double cores, double speed) {
  AgentRecord a;
  a.device = device;
  a.host = host;
  a.kind = kind;
  a.boot = "b";
  a.admin = a.tcp = "127.0.0.1:1";
  a.cores = cores;
  a.speed = speed;
  a.memory_bytes = uint64_t{1} << 30;
  return a;
}

const char* kTopology = R"(name: t
hosts:
  - name: h1
    devices:
      - {name: cpu0, kind: cpu, cores: 1}
  - name: h2
    devices:
      - {name: csd0, kind: csd, cores: 1, speed: 0.5, datasets: [logs]}
links:
  - {a: h1, b: h2, latency: 50us, bandwidth: 1gbit}
)";

ServiceRecord Scan(const std::string& hints) {
  ServiceRecord s;
  s.name = "scan";
  s.manifest_yaml = "name: scan\nversion: 1\nhandlers: [count]\n";
  s.module_hash = "h";
  s.replicas = 1;
  s.memory_bytes = 16 << 20;
  s.placement = hints;
  return s;
}

TEST(AdvisorTest, HintsRoundTripAndBadOnesAreNamed) {
  PlacementHints h{"latency", 120, 5, 2000, {{"logs", 1e6}}, 0.25};
  Result<PlacementHints> back = HintsFromJson(HintsToJson(h));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, h);
  EXPECT_NE(HintsFromJson(R"({"policy": "fastest"})").status().message().find("balanced"),
            std::string::npos);
  EXPECT_NE(HintsFromJson(R"({"cpu_us": -1})").status().message().find("cpu_us"),
            std::string::npos);
  EXPECT_NE(HintsFromJson(R"({"reads": [{"dataset": "x"}]})").status().message().find("reads[0]"),
            std::string::npos);
  EXPECT_NE(HintsFromJson(R"({"colour": 1})").status().message().find("colour"),
            std::string::npos);
}

// The offload decision both ways on the same two devices, from the topology's link: a
// scan of 50 MB per request at little CPU goes to the CSD holding the data; a CPU-heavy
// service over a few bytes stays on the host CPU.
TEST(AdvisorTest, OffloadsTheScanAndKeepsTheComputeOnTheHost) {
  Result<cluster::Topology> t = cluster::ParseTopology(kTopology, "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  ClusterView view;
  view.agents["cpu0"] = Agent("cpu0", "h1", "cpu", 1, 1);
  view.agents["csd0"] = Agent("csd0", "h2", "csd", 1, 0.5);
  placement::ClusterView pv = BuildPlacementView(&*t, view, {}, {});
  ASSERT_EQ(pv.devices.size(), 2u);
  EXPECT_EQ(pv.devices[1].datasets, std::vector<std::string>{"logs"});
  ServiceRecord scan = Scan(R"({"policy": "latency", "cpu_us": 1000, "rate": 1,
                               "reads": [{"dataset": "logs", "bytes": 50e6}]})");
  PlacementHints h = *HintsFromJson(scan.placement);
  Result<placement::Decision> d = Advise(scan, h, pv, std::nullopt);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->device, "csd0") << d->explanation;
  std::vector<std::string> ranked = RankedDevices(*d);
  EXPECT_EQ(ranked, (std::vector<std::string>{"csd0", "cpu0"}));

  ServiceRecord heavy = Scan(R"({"policy": "latency", "cpu_us": 200000, "rate": 1,
                                "reads": [{"dataset": "logs", "bytes": 100}]})");
  d = Advise(heavy, *HintsFromJson(heavy.placement), pv, std::nullopt);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->device, "cpu0") << d->explanation;

  // Measurements replace the hints: the "scan" turns out CPU-bound, so it moves home.
  ServiceMeasurement m{100, 400e6, 1000, 1};
  d = Advise(scan, h, pv, m);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->device, "cpu0") << d->explanation;
}

TEST(AdvisorTest, ThePlannerFollowsTheRankingWithinItsOwnChecks) {
  ClusterView view;
  view.agents["cpu0"] = Agent("cpu0", "h1", "cpu", 8, 1);
  view.agents["csd0"] = Agent("csd0", "h2", "csd", 0.25, 0.4);
  ServiceRecord s = Scan(R"({"policy": "latency"})");
  s.replicas = 2;
  view.services["scan"] = s;
  view.ranked["scan"] = {"csd0", "cpu0"};
  Plan p = PlanReconcile(view);
  ASSERT_EQ(p.actions.size(), 2u);
  EXPECT_EQ(p.actions[0].device, "csd0");  // the engine's first choice
  EXPECT_EQ(p.actions[1].device, "cpu0");  // the second replica spreads to the next
  view.backoff.insert({"csd0", "scan"});   // a failed start there: skipped
  p = PlanReconcile(view);
  EXPECT_EQ(p.actions[0].device, "cpu0");
}


// The utilization the engine sees is the guests' CPU over the offered cores: bench/ndp's
// csd0 (0.25 core, half reserved for serving its data) with 0.01 core of guests is 8%
// busy; the agent's own CPU is not passed in (it is the reserved share). On the idle
// drive, the full-selectivity filter goes to csd0 (placement_test has the numbers).
TEST(AdvisorTest, GuestCoresAreAShareOfTheOfferedCores) {
  Result<cluster::Topology> t = cluster::ParseTopology(R"(name: ndp
hosts:
  - name: h1
    devices:
      - {name: cpu0, kind: cpu, cores: 1}
  - name: h2
    devices:
      - {name: csd0, kind: csd, cores: 0.25, speed: 1.0, reserved: 0.5, datasets: [ndp]}
links:
  - {a: h1, b: h2, latency: 50us, bandwidth: 1gbit}
)",
                                                       "ndp.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  ClusterView view;
  view.agents["cpu0"] = Agent("cpu0", "h1", "cpu", 1, 1);
  view.agents["csd0"] = Agent("csd0", "h2", "csd", 0.25, 1);
  placement::ClusterView pv = BuildPlacementView(&*t, view, {{"csd0", 0.01}, {"cpu0", 0.5}}, {});
  ASSERT_EQ(pv.devices.size(), 2u);
  EXPECT_NEAR(pv.devices[0].utilization, 0.5, 1e-9);
  EXPECT_NEAR(pv.devices[1].utilization, 0.08, 1e-9);
  pv = BuildPlacementView(&*t, view, {{"csd0", 1.0}}, {});
  EXPECT_EQ(pv.devices[1].utilization, 1.0);  // clamped

  ServiceRecord filter = Scan(R"({"policy": "latency", "cpu_us": 8400, "rate": 1, "cv2": 0,
                                 "reads": [{"dataset": "ndp", "bytes": 16777216}]})");
  pv = BuildPlacementView(&*t, view, {}, {});
  Result<placement::Decision> d = Advise(filter, *HintsFromJson(filter.placement), pv, std::nullopt);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->device, "csd0") << d->explanation;
}

}  // namespace
}  // namespace tern::controller
