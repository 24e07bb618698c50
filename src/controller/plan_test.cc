#include "controller/plan.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace tern::controller {
namespace {

AgentRecord Agent(const std::string& device, double cores = 1, uint64_t memory_mib = 1024,
                  const std::string& host = "h1") {
  AgentRecord a;
  a.device = device;
  a.host = host;
  a.boot = "boot-" + device;
  a.admin = "127.0.0.1:1";
  a.tcp = "127.0.0.1:2";
  a.cores = cores;
  a.memory_bytes = memory_mib << 20;
  return a;
}

ServiceRecord Service(const std::string& name, int replicas, uint64_t memory_mib = 64) {
  ServiceRecord s;
  s.name = name;
  s.manifest_yaml = "name: " + name;
  s.module_hash = "hash-" + name;
  s.replicas = replicas;
  s.memory_bytes = memory_mib << 20;
  return s;
}

void Place(ClusterView* v, const std::string& id, const std::string& service,
           const std::string& device, int64_t epoch, bool started = true) {
  InstanceRecord r{id, service, device, started ? "boot-" + device : "", "hash-" + service};
  v->instances[id] = PlacedInstance{r, epoch};
}

std::vector<std::string> CreatedOn(const Plan& p) {
  std::vector<std::string> out;
  for (const Action& a : p.actions) {
    if (a.kind == Action::Kind::kCreate) out.push_back(a.device);
  }
  std::sort(out.begin(), out.end());
  return out;
}

int Count(const Plan& p, Action::Kind k) {
  return static_cast<int>(std::count_if(p.actions.begin(), p.actions.end(),
                                        [k](const Action& a) { return a.kind == k; }));
}

TEST(PlanTest, SpreadsReplicasOverDevices) {
  ClusterView v;
  for (const char* d : {"a", "b", "c"}) v.agents[d] = Agent(d);
  v.services["echo"] = Service("echo", 3);
  Plan p = PlanReconcile(v);
  EXPECT_EQ(CreatedOn(p), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(p.unplaceable.empty());
}

TEST(PlanTest, PrefersTheDeviceWithMoreComputePerInstance) {
  ClusterView v;
  v.agents["big"] = Agent("big", 4);
  v.agents["small"] = Agent("small", 0.25);
  v.services["a"] = Service("a", 1);
  v.services["b"] = Service("b", 1);
  v.services["c"] = Service("c", 1);
  Plan p = PlanReconcile(v);
  // 3 instances on 4 cores beat 1 on a quarter core.
  EXPECT_EQ(CreatedOn(p), (std::vector<std::string>{"big", "big", "big"}));
}

TEST(PlanTest, RespectsMemoryAndSaysWhyWhenNothingFits) {
  ClusterView v;
  v.agents["a"] = Agent("a", 1, /*memory_mib=*/100);
  v.services["fat"] = Service("fat", 2, /*memory_mib=*/64);
  Plan p = PlanReconcile(v);
  EXPECT_EQ(CreatedOn(p), (std::vector<std::string>{"a"}));
  ASSERT_EQ(p.unplaceable.count("fat"), 1u);
  EXPECT_NE(p.unplaceable["fat"].find("1 of 2 replicas placed"), std::string::npos)
      << p.unplaceable["fat"];
  EXPECT_NE(p.unplaceable["fat"].find("memory"), std::string::npos) << p.unplaceable["fat"];
}

TEST(PlanTest, AllowedDevicesOnly) {
  ClusterView v;
  v.agents["cpu0"] = Agent("cpu0", 8);
  v.agents["csd0"] = Agent("csd0", 0.25);
  ServiceRecord s = Service("scan", 1);
  s.devices = {"csd0"};
  v.services["scan"] = s;
  EXPECT_EQ(CreatedOn(PlanReconcile(v)), (std::vector<std::string>{"csd0"}));
  v.agents.erase("csd0");
  Plan p = PlanReconcile(v);
  EXPECT_TRUE(CreatedOn(p).empty());
  EXPECT_NE(p.unplaceable["scan"].find("csd0"), std::string::npos) << p.unplaceable["scan"];
}

TEST(PlanTest, InstancesOfADeadAgentAreForgottenAndReplacedElsewhere) {
  ClusterView v;
  v.agents["a"] = Agent("a");
  v.agents["b"] = Agent("b");
  v.services["echo"] = Service("echo", 2);
  Place(&v, "echo-1", "echo", "a", 10);
  Place(&v, "echo-2", "echo", "dead", 11);
  Plan p = PlanReconcile(v);
  ASSERT_EQ(Count(p, Action::Kind::kForget), 1);
  EXPECT_EQ(p.actions[0].instance, "echo-2");
  // The replacement goes to b (a already has one).
  EXPECT_EQ(CreatedOn(p), (std::vector<std::string>{"b"}));
}

TEST(PlanTest, RestartedAgentGetsItsInstancesStartedAgain) {
  ClusterView v;
  v.agents["a"] = Agent("a");
  v.services["echo"] = Service("echo", 1);
  Place(&v, "echo-1", "echo", "a", 10);
  EXPECT_TRUE(PlanReconcile(v).actions.empty());  // steady state: nothing to do
  v.agents["a"].boot = "boot-new";
  Plan p = PlanReconcile(v);
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].kind, Action::Kind::kStart);
  EXPECT_EQ(p.actions[0].instance, "echo-1");
}

TEST(PlanTest, ExtraReplicasStopNewestOnBusiestDeviceFirst) {
  ClusterView v;
  v.agents["a"] = Agent("a");
  v.agents["b"] = Agent("b");
  v.services["echo"] = Service("echo", 1);
  v.services["other"] = Service("other", 1);
  Place(&v, "echo-1", "echo", "a", 10);
  Place(&v, "echo-2", "echo", "b", 11);
  Place(&v, "other-1", "other", "b", 12);
  Plan p = PlanReconcile(v);
  ASSERT_EQ(Count(p, Action::Kind::kStop), 1);
  EXPECT_EQ(p.actions[0].instance, "echo-2");
}

TEST(PlanTest, RemovedServiceStopsItsInstances) {
  ClusterView v;
  v.agents["a"] = Agent("a");
  Place(&v, "old-1", "old", "a", 3);
  Place(&v, "old-2", "old", "gone", 4);
  Plan p = PlanReconcile(v);
  EXPECT_EQ(Count(p, Action::Kind::kStop), 1);
  EXPECT_EQ(Count(p, Action::Kind::kForget), 1);
}

TEST(PlanTest, BackoffKeepsAFailedDeviceOutForAWhile) {
  ClusterView v;
  v.agents["a"] = Agent("a", 8);
  v.agents["b"] = Agent("b", 1);
  v.services["echo"] = Service("echo", 1);
  v.backoff.insert({"a", "echo"});
  EXPECT_EQ(CreatedOn(PlanReconcile(v)), (std::vector<std::string>{"b"}));
}

TEST(PlanTest, LocationsListOnlyStartedInstancesOfLiveAgents) {
  ClusterView v;
  v.agents["a"] = Agent("a", 1, 1024, "h1");
  v.services["echo"] = Service("echo", 3);
  Place(&v, "echo-1", "echo", "a", 7);
  Place(&v, "echo-2", "echo", "a", 8, /*started=*/false);
  Place(&v, "echo-3", "echo", "dead", 9);
  std::vector<dataplane::InstanceLocation> locs = LocationsOf(v);
  ASSERT_EQ(locs.size(), 1u);
  EXPECT_EQ(locs[0].instance, "echo-1");
  EXPECT_EQ(locs[0].agent, "a");
  EXPECT_EQ(locs[0].host, "h1");
  EXPECT_EQ(locs[0].tcp, "127.0.0.1:2");
  EXPECT_EQ(locs[0].epoch, 7u);
}

TEST(ModelTest, RecordsRoundTripAndBadOnesAreErrors) {
  AgentRecord a = Agent("csd0", 0.25);
  Result<AgentRecord> a2 = AgentFromJson(ToJson(a), "k");
  ASSERT_TRUE(a2.ok()) << a2.status();
  EXPECT_EQ(*a2, a);
  ServiceRecord s = Service("echo", 2);
  s.devices = {"cpu0"};
  Result<ServiceRecord> s2 = ServiceFromJson(ToJson(s), "k");
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_EQ(*s2, s);
  InstanceRecord i{"echo-1", "echo", "cpu0", "b", "h"};
  Result<InstanceRecord> i2 = InstanceFromJson(ToJson(i), "k");
  ASSERT_TRUE(i2.ok()) << i2.status();
  EXPECT_EQ(*i2, i);
  EXPECT_FALSE(AgentFromJson("[1]", "k").ok());
  EXPECT_FALSE(AgentFromJson("{\"host\": \"h\"}", "k").ok());
  Result<ServiceRecord> bad = ServiceFromJson(
      R"({"name": "x", "manifest": "m", "module_hash": "h", "replicas": "two"})", "/tern/services/x");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("replicas"), std::string::npos);
  EXPECT_NE(bad.status().message().find("/tern/services/x"), std::string::npos);
  EXPECT_EQ(KeyName("/tern/agents/csd0"), "csd0");
}

}  // namespace
}  // namespace tern::controller
