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
  s.stateful = true;
  s.durable = true;
  s.checkpoint_ms = 10000;
  EXPECT_EQ(*ServiceFromJson(ToJson(s), "k"), s);
  s.durable_strict = true;
  EXPECT_EQ(*ServiceFromJson(ToJson(s), "k"), s);
  CheckpointRecord ck{"counter-1", "counter", "csd0", "cpu0", 1234, 5678};
  ck.copies = {{"csd0", 1234, 5678}};
  ck.durable = true;
  ck.journal_seq = 42;
  Result<CheckpointRecord> ck2 = CheckpointFromJson(ToJson(ck), "k");
  ASSERT_TRUE(ck2.ok()) << ck2.status();
  EXPECT_EQ(*ck2, ck);
  // A record written before durable checkpoints existed reads as not durable.
  Result<CheckpointRecord> old = CheckpointFromJson(
      R"({"id": "c-1", "device": "csd0", "unix_ms": 5, "bytes": 9})", "k");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_FALSE(old->durable);
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

TEST(ModelTest, CheckpointRecordsKeepEveryCopyAndReadTheOldFormat) {
  CheckpointRecord ck{"counter-1", "counter", "csd0", "cpu0", 2000, 64};
  ck.copies = {{"csd0", 2000, 64}, {"csd1", 1500, 60}};
  Result<CheckpointRecord> ck2 = CheckpointFromJson(ToJson(ck), "k");
  ASSERT_TRUE(ck2.ok()) << ck2.status();
  EXPECT_EQ(*ck2, ck);
  // Written before copies were kept twice: its one copy is the record's device.
  Result<CheckpointRecord> old = CheckpointFromJson(
      R"({"id": "c-1", "service": "c", "device": "csd0", "source": "cpu0", "unix_ms": 7,
          "bytes": 9})",
      "k");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->copies, (std::vector<CheckpointRecord::Copy>{{"csd0", 7, 9}}));
  Result<CheckpointRecord> bad =
      CheckpointFromJson(R"({"id": "c-1", "device": "csd0", "copies": [{"unix_ms": 7}]})", "k");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("device"), std::string::npos) << bad.status();
}

// ---- drains, moves, checkpoints (issue #6) ---------------------------------------------

TEST(PlanTest, ADrainingDeviceGetsNoNewPlacements) {
  ClusterView v;
  for (const char* d : {"a", "b"}) v.agents[d] = Agent(d);
  v.services["echo"] = Service("echo", 2);
  v.draining.insert("a");
  Plan p = PlanReconcile(v);
  EXPECT_EQ(CreatedOn(p), (std::vector<std::string>{"b", "b"}));
  v.draining.insert("b");
  p = PlanReconcile(v);
  EXPECT_EQ(Count(p, Action::Kind::kCreate), 0);
  ASSERT_EQ(p.unplaceable.count("echo"), 1u);
  EXPECT_NE(p.unplaceable["echo"].find("a: draining"), std::string::npos) << p.unplaceable["echo"];
  // The ranked (placement engine) path skips it too.
  v.draining = {"a"};
  v.ranked["echo"] = {"a", "b"};
  p = PlanReconcile(v);
  EXPECT_EQ(CreatedOn(p), (std::vector<std::string>{"b", "b"}));
}

TEST(PlanTest, InstancesBeingMovedAreLeftAlone) {
  ClusterView v;
  for (const char* d : {"a", "b"}) v.agents[d] = Agent(d);
  v.services["echo"] = Service("echo", 1);
  // Two replicas where one is wanted: normally the newer one stops; not while it moves.
  Place(&v, "echo-1", "echo", "a", 5);
  Place(&v, "echo-2", "echo", "b", 9);
  v.busy = {"echo-2"};
  Plan p = PlanReconcile(v);
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].kind, Action::Kind::kStop);
  EXPECT_EQ(p.actions[0].instance, "echo-1");
  // Both busy: nothing stops.
  v.busy = {"echo-1", "echo-2"};
  EXPECT_TRUE(PlanReconcile(v).actions.empty());
  // A busy instance whose agent is gone is not forgotten (the operation decides), nor
  // one whose agent restarted started again.
  ClusterView w;
  w.agents["b"] = Agent("b");
  w.services["echo"] = Service("echo", 2);
  Place(&w, "echo-1", "echo", "a", 5);
  Place(&w, "echo-2", "echo", "b", 6);
  w.instances["echo-2"].record.boot = "old-boot";
  w.busy = {"echo-1", "echo-2"};
  p = PlanReconcile(w);
  EXPECT_EQ(Count(p, Action::Kind::kForget), 0);
  EXPECT_EQ(Count(p, Action::Kind::kStart), 0);
  EXPECT_EQ(Count(p, Action::Kind::kCreate), 0);  // both still count
}

TEST(PlanTest, AReplacementAndTheInstanceItReplacesCountOnce) {
  ClusterView v;
  for (const char* d : {"a", "b"}) v.agents[d] = Agent(d);
  v.services["echo"] = Service("echo", 1);
  Place(&v, "echo-1", "echo", "a", 5);
  Place(&v, "echo-2", "echo", "b", 9, /*started=*/false);
  v.busy = {"echo-1", "echo-2"};
  v.leaving = {"echo-1"};
  EXPECT_TRUE(PlanReconcile(v).actions.empty());
  // The replacement is up and no longer busy; the old one still leaves: nothing to do.
  Place(&v, "echo-2", "echo", "b", 10);
  v.busy = {"echo-1"};
  EXPECT_TRUE(PlanReconcile(v).actions.empty());
}

TEST(PlanTest, ACheckpointedInstanceOfADeadAgentIsRestoredElsewhereUnderItsId) {
  ClusterView v;
  for (const char* d : {"b", "c"}) v.agents[d] = Agent(d);
  v.services["counter"] = Service("counter", 1);
  v.services["counter"].stateful = true;
  v.services["counter"].checkpoint_ms = 1000;
  Place(&v, "counter-1", "counter", "a", 5);  // a is dead
  v.checkpoints["counter-1"] = CheckpointRecord{"counter-1", "counter", "c", "a", 1000, 64};
  Plan p = PlanReconcile(v);
  ASSERT_EQ(p.actions.size(), 1u) << p.actions[0].reason;
  EXPECT_EQ(p.actions[0].kind, Action::Kind::kRestore);
  EXPECT_EQ(p.actions[0].instance, "counter-1");
  EXPECT_TRUE(p.actions[0].device == "b" || p.actions[0].device == "c");
  EXPECT_NE(p.actions[0].reason.find("agent a is gone"), std::string::npos);
  // Without a checkpoint: forgotten and replaced by a fresh instance, as before.
  v.checkpoints.clear();
  p = PlanReconcile(v);
  EXPECT_EQ(Count(p, Action::Kind::kForget), 1);
  EXPECT_EQ(Count(p, Action::Kind::kCreate), 1);
  // Starting it again on its (restarted) device failed recently: restored elsewhere.
  v.checkpoints["counter-1"] = CheckpointRecord{"counter-1", "counter", "c", "b", 1000, 64};
  Place(&v, "counter-1", "counter", "b", 6, /*started=*/false);
  v.backoff.insert({"b", "counter"});
  p = PlanReconcile(v);
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].kind, Action::Kind::kRestore);
  EXPECT_EQ(p.actions[0].device, "c");
  // No device can take it: it waits (the record stays) and the service says why.
  v.draining = {"c"};
  p = PlanReconcile(v);
  EXPECT_TRUE(p.actions.empty());
  ASSERT_EQ(p.unplaceable.count("counter"), 1u);
  EXPECT_NE(p.unplaceable["counter"].find("cannot restore counter-1"), std::string::npos);
}

TEST(PlanTest, MigrationTargetsAreCheckedWithErrorsNamingTheDevice) {
  ClusterView v;
  v.agents["a"] = Agent("a");
  v.agents["b"] = Agent("b", 1, /*memory_mib=*/100);
  v.agents["c"] = Agent("c");
  v.services["counter"] = Service("counter", 2, /*memory_mib=*/64);
  Place(&v, "counter-1", "counter", "a", 5);
  Place(&v, "counter-2", "counter", "b", 6);
  EXPECT_TRUE(CheckMigrationTarget(v, "counter-1", "c").ok());
  Status s = CheckMigrationTarget(v, "nope-1", "c");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("nope-1"), std::string::npos);
  s = CheckMigrationTarget(v, "counter-1", "a");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("already runs on a"), std::string::npos) << s;
  s = CheckMigrationTarget(v, "counter-1", "zz");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("device zz"), std::string::npos) << s;
  s = CheckMigrationTarget(v, "counter-1", "b");  // 64 of 100 MiB taken, needs 64 more
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("device b cannot take counter-1"), std::string::npos) << s;
  v.draining = {"c"};
  s = CheckMigrationTarget(v, "counter-1", "c");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("c is being drained"), std::string::npos) << s;
  v.draining.clear();
  v.services["counter"].devices = {"a", "b"};
  s = CheckMigrationTarget(v, "counter-1", "c");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("may not run on c"), std::string::npos) << s;
  v.services["counter"].devices.clear();
  v.busy = {"counter-1"};
  EXPECT_EQ(CheckMigrationTarget(v, "counter-1", "c").code(), StatusCode::kAborted);
  v.busy.clear();
  v.agents.erase("a");  // the source is dead
  s = CheckMigrationTarget(v, "counter-1", "c");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("device a is gone"), std::string::npos) << s;
}

TEST(PlanTest, AMigrationTargetIsNeverTheDeviceItLeaves) {
  ClusterView v;
  v.agents["a"] = Agent("a", 8);  // by far the most compute
  v.agents["b"] = Agent("b", 1);
  v.agents["c"] = Agent("c", 2);
  v.services["echo"] = Service("echo", 2);
  Place(&v, "echo-1", "echo", "a", 5);
  Place(&v, "echo-2", "echo", "b", 6);
  Result<std::string> t = ChooseMigrationTarget(v, "echo-1");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "c");  // spread: b has a replica already
  v.agents.erase("c");
  t = ChooseMigrationTarget(v, "echo-1");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "b");
  v.agents.erase("b");
  EXPECT_EQ(ChooseMigrationTarget(v, "echo-1").status().code(), StatusCode::kResourceExhausted);
}

// `tern drain nic0` of an instance whose only other allowed device is dead: the reason
// names both, not only the device being drained.
TEST(PlanTest, NoMigrationTargetNamesTheDeadAllowedDevicesToo) {
  ClusterView v;
  v.agents["nic0"] = Agent("nic0");
  v.agents["cpu0"] = Agent("cpu0");  // alive, but not allowed
  v.services["counter"] = Service("counter", 1);
  v.services["counter"].devices = {"nic0", "cpu1"};
  Place(&v, "counter-1", "counter", "nic0", 5);
  v.draining.insert("nic0");
  Result<std::string> t = ChooseMigrationTarget(v, "counter-1");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(t.status().message(), "no device fits: nic0: draining; cpu1: dead");
}

// ---- the rebalancer's decisions ----------------------------------------------------------

ClusterView ThreeDevicesTwoEchos() {
  ClusterView v;
  for (const char* d : {"a", "b", "c"}) v.agents[d] = Agent(d);
  v.services["echo"] = Service("echo", 2);
  Place(&v, "echo-1", "echo", "a", 5);
  Place(&v, "echo-2", "echo", "a", 6);
  return v;
}

TEST(PlanTest, RebalanceMovesOffASustainedOverloadOnly) {
  ClusterView v = ThreeDevicesTwoEchos();
  RebalanceOptions o;
  o.overload_samples = 3;
  RebalanceInput in;
  in.now_ms = 100000;
  in.rate = {{"echo-1", 10}, {"echo-2", 500}};
  in.util = {{"a", {0.2, 0.95, 0.97}}, {"b", {0.1, 0.1, 0.1}}, {"c", {0.65, 0.65, 0.65}}};
  // One sample below the threshold in the window: no move (a spike is not an overload).
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
  in.util["a"] = {0.9, 0.95, 0.97};
  std::optional<Move> m = PlanRebalance(v, in, o);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->instance, "echo-2");  // the busiest
  EXPECT_EQ(m->from, "a");
  EXPECT_EQ(m->to, "b");  // c has no headroom (0.65 >= 0.85 - 0.25)
  EXPECT_NE(m->reason.find("a at 85% CPU or more"), std::string::npos) << m->reason;
  // Cooling down (it moved 10 s ago): the next busiest goes instead.
  in.last_moved_ms["echo-2"] = in.now_ms - 10000;
  m = PlanRebalance(v, in, o);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->instance, "echo-1");
  // Busy instances never move; nowhere with headroom: nothing.
  v.busy = {"echo-1"};
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
  v.busy.clear();
  in.util["b"] = {0.7, 0.7, 0.7};
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
}

TEST(PlanTest, RebalanceTakesACheaperPlacementOnlyBeyondTheMarginAndTheMoveCost) {
  ClusterView v = ThreeDevicesTwoEchos();
  RebalanceOptions o;
  o.margin = 0.2;
  o.migration_cost = 5;
  RebalanceInput in;
  in.now_ms = 100000;
  // Saves 15 of 100: under the 20% margin.
  in.cheaper["echo-1"] = {100, "b", 85};
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
  // Saves 22: above the margin (20) but not margin + move (25).
  in.cheaper["echo-1"] = {100, "b", 78};
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
  // Saves 40: moves; of two candidates the larger saving wins.
  in.cheaper["echo-1"] = {100, "b", 60};
  in.cheaper["echo-2"] = {100, "c", 30};
  std::optional<Move> m = PlanRebalance(v, in, o);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->instance, "echo-2");
  EXPECT_EQ(m->to, "c");
  // Hysteresis: once moved, the reverse saving (now the other way) does not bring it back
  // within the cool-down.
  Place(&v, "echo-2", "echo", "c", 7);
  in.cheaper.erase("echo-1");
  in.cheaper["echo-2"] = {100, "a", 50};
  in.last_moved_ms["echo-2"] = in.now_ms - 1000;
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
  in.now_ms += o.cooldown_ms;
  m = PlanRebalance(v, in, o);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->to, "a");
}

TEST(PlanTest, RebalanceMovesAnSloViolatorOnlyAfterTheWholeWindow) {
  ClusterView v = ThreeDevicesTwoEchos();
  RebalanceOptions o;
  o.slo_samples = 3;
  RebalanceInput in;
  in.now_ms = 100000;
  // Target 1 ms; b is predicted at 0.4 ms, c at 2 ms.
  RebalanceInput::Slo& slo = in.slo["echo-1"];
  slo.target_us = 1000;
  slo.predicted = {{"b", 400, ""}, {"a", 900, ""}, {"c", 2000, ""}};
  // A spike (one sample of the window within the target): no move, and not stuck.
  slo.p99_us = {5000, 5000, 800, 5000};
  std::map<std::string, std::string> stuck;
  EXPECT_FALSE(PlanRebalance(v, in, o, &stuck).has_value());
  EXPECT_TRUE(stuck.empty());
  // Fewer samples than the window: no move either.
  slo.p99_us = {5000, 5000};
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
  // Every sample of the window above the target: to b, the device predicted to meet it
  // (a, its own device, is skipped whatever its prediction).
  slo.p99_us = {800, 1200, 3000, 1100};
  std::optional<Move> m = PlanRebalance(v, in, o, &stuck);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(*m, (Move{"echo-1", "a", "b", m->reason}));
  EXPECT_NE(m->reason.find("above its SLO of 1 ms in each of its last 3 samples (the lowest "
                           "1.1 ms); b is predicted at 0.4 ms"),
            std::string::npos)
      << m->reason;
  // Of two violators the worse (against its target) goes first.
  in.slo["echo-2"] = slo;
  in.slo["echo-2"].p99_us = {9000, 9000, 9000};
  m = PlanRebalance(v, in, o);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->instance, "echo-2");
  in.slo.erase("echo-2");
  // The device predicted to meet it has no headroom: no move, and why.
  in.util["b"] = {0.7};
  EXPECT_FALSE(PlanRebalance(v, in, o, &stuck).has_value());
  ASSERT_EQ(stuck.count("echo-1"), 1u);
  EXPECT_NE(stuck["echo-1"].find("no other device is predicted to meet it and can take it: b: "
                                 "no headroom (70% CPU); c: predicted p99 2 ms"),
            std::string::npos)
      << stuck["echo-1"];
  in.util.clear();
  // No device is predicted to meet it: no move, and why.
  slo.predicted = {{"a", 900, ""}, {"b", 1500, ""}, {"c", 2000, "memory: needs 64 MiB"}};
  stuck.clear();
  EXPECT_FALSE(PlanRebalance(v, in, o, &stuck).has_value());
  EXPECT_NE(stuck["echo-1"].find("it misses its SLO of 1 ms on a (p99 at least 1.1 ms in "
                                 "each of its last 3 samples)"),
            std::string::npos)
      << stuck["echo-1"];
  EXPECT_NE(stuck["echo-1"].find("b: predicted p99 1.5 ms; c: memory: needs 64 MiB"),
            std::string::npos)
      << stuck["echo-1"];
  // A device that meets it but may not take it (not among the service's devices).
  slo.predicted = {{"c", 300, ""}};
  v.services["echo"].devices = {"a", "b"};
  stuck.clear();
  EXPECT_FALSE(PlanRebalance(v, in, o, &stuck).has_value());
  EXPECT_NE(stuck["echo-1"].find("may not run on c"), std::string::npos) << stuck["echo-1"];
  v.services["echo"].devices.clear();
  // Cooling down (moved 10 s ago, cool-down 30 s): neither moved nor reported stuck; once
  // the cool-down is over, it moves.
  in.last_moved_ms["echo-1"] = in.now_ms - 10000;
  stuck.clear();
  EXPECT_FALSE(PlanRebalance(v, in, o, &stuck).has_value());
  EXPECT_TRUE(stuck.empty());
  in.now_ms += o.cooldown_ms;
  m = PlanRebalance(v, in, o);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->to, "c");
  // Busy or leaving instances never move.
  v.busy = {"echo-1"};
  EXPECT_FALSE(PlanRebalance(v, in, o).has_value());
}

TEST(PlanTest, InstancesAreFollowedWhereBothAgentsSayTheyMoved) {
  ClusterView v;
  for (const char* d : {"a", "b", "c"}) v.agents[d] = Agent(d);
  v.services["counter"] = Service("counter", 1);
  Place(&v, "counter-1", "counter", "a", 5);
  std::map<std::string, int64_t> since = {{"counter-1", 100}};
  auto sight = [](std::set<std::string> last, std::set<std::string> prev, int64_t at = 200) {
    return Sightings{std::move(last), std::move(prev), true, at};
  };
  std::map<std::string, Sightings> seen = {{"a", sight({}, {})},
                                           {"b", sight({"counter-1"}, {"counter-1"})},
                                           {"c", sight({}, {})}};
  EXPECT_EQ(MovedInstances(v, seen, since),
            (std::map<std::string, std::string>{{"counter-1", "b"}}));
  // Not when the recorded device still listed it in either heartbeat...
  seen["a"] = sight({}, {"counter-1"});
  EXPECT_TRUE(MovedInstances(v, seen, since).empty());
  seen["a"] = sight({}, {});
  // ... nor when the other device listed it only once, or two devices list it...
  seen["b"] = sight({"counter-1"}, {});
  EXPECT_TRUE(MovedInstances(v, seen, since).empty());
  seen["b"] = sight({"counter-1"}, {"counter-1"});
  seen["c"] = sight({"counter-1"}, {"counter-1"});
  EXPECT_TRUE(MovedInstances(v, seen, since).empty());
  seen["c"] = sight({}, {});
  // ... nor on reports older than the record (a move the controller just recorded)...
  seen["a"] = sight({}, {}, /*at=*/50);
  EXPECT_TRUE(MovedInstances(v, seen, since).empty());
  seen["a"] = sight({}, {});
  // ... nor while it is busy, or not started.
  v.busy = {"counter-1"};
  EXPECT_TRUE(MovedInstances(v, seen, since).empty());
  v.busy.clear();
  Place(&v, "counter-1", "counter", "a", 5, /*started=*/false);
  EXPECT_TRUE(MovedInstances(v, seen, since).empty());
}

}  // namespace
}  // namespace tern::controller
