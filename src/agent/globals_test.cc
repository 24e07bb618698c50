// A stateful service that keeps its state in wasm globals it does not export
// (tests/guests/globals.c: an i32, an i64 and an f64, as AssemblyScript or TinyGo guests
// keep heap pointers): every way the agent moves or keeps state carries them — the
// per-request rollback point, checkpoints (snapshot + restore on another agent), live
// migration between two real agents, and the journal of a durable instance. A module
// with a mutable global no snapshot can hold is refused as a stateful service.
#include <gtest/gtest.h>

#include <cstring>

#include "agent/agent.h"
#include "agent/test_node.h"
#include "core/clock.h"
#include "core/manifest.h"
#include "storage/journal.h"
#include "testing/globals_guest.h"
#include "testing/test_env.h"
#include "wasm/snapshot.h"

namespace tern::agent {
namespace {

using tern::testing::ReadWasm;
using tern::testing::SourcePath;

using GuestState = tern::testing::GlobalsGuestState;

Manifest GlobalsManifest(bool durable = false) {
  Result<Manifest> m = LoadManifest(SourcePath("src/agent/testdata/globals.yaml"));
  EXPECT_TRUE(m.ok()) << m.status();
  m->replicas = 1;
  if (durable) {
    m->durable = true;
    m->checkpoint_ms = 1000;
  }
  return *m;
}

InvokeResult Call(Agent* a, const std::string& handler, uint64_t key = 0) {
  InvokeRequest r;
  r.service = "globals";
  r.handler = handler;
  r.idempotency_key = key;
  r.deadline_ns = MonoNanos() + 20'000'000'000;
  return a->InvokeSync(std::move(r));
}

GuestState StateOf(Agent* a, const std::string& handler = "get") {
  InvokeResult r = Call(a, handler);
  EXPECT_TRUE(r.status.ok()) << handler << ": " << r.status;
  GuestState s;
  if (!tern::testing::ParseGlobalsGuestState(r.reply, &s)) {
    ADD_FAILURE() << handler << ": reply of " << r.reply.size() << " bytes";
  }
  return s;
}

std::unique_ptr<TestNode> StartNode(const std::string& device, const std::string& datasets_dir = "") {
  AgentOptions o;
  o.device = device;
  o.workers = 1;
  o.datasets_dir = datasets_dir;
  return TestNode::Start(o);
}

// A trap after the request changed the globals (and memory): the instance comes back
// with the globals of the last good state, both while its memory is copied whole after
// each request and once it is big enough to be tracked page by page.
TEST(AgentGlobalsTest, ARollbackAfterATrapRestoresTheGlobals) {
  std::unique_ptr<TestNode> n = StartNode("cpu0");
  Agent* a = n->agent.get();
  ASSERT_TRUE(a->Deploy(GlobalsManifest(), ReadWasm("guest_globals")).ok());
  for (bool grown : {false, true}) {
    if (grown) {
      ASSERT_TRUE(Call(a, "grow").status.ok());  // 5 MiB: tracked from here
    }
    StateOf(a, "bump");
    StateOf(a, "bump");
    const GuestState before = StateOf(a);
    InvokeResult bad = Call(a, "bump_then_trap");
    ASSERT_FALSE(bad.status.ok());
    EXPECT_NE(bad.status.message().find("rolled back"), std::string_view::npos) << bad.status;
    EXPECT_EQ(StateOf(a), before) << (grown ? "tracked" : "copied whole");
  }
  // A request that changes only a global is kept too (the rollback point follows it).
  const GuestState before = StateOf(a);
  ASSERT_TRUE(Call(a, "bump_globals_only").status.ok());
  ASSERT_FALSE(Call(a, "bump_then_trap").status.ok());
  EXPECT_EQ(StateOf(a).count, before.count + 100);
}

// What the controller's checkpoints do: the instance's snapshot (the file format) is
// restored into a new instance on another agent.
TEST(AgentGlobalsTest, ACheckpointRestoredOnAnotherAgentKeepsTheGlobals) {
  std::unique_ptr<TestNode> n0 = StartNode("cpu0"), n1 = StartNode("cpu1");
  Result<ServiceStatus> s = n0->agent->Deploy(GlobalsManifest(), ReadWasm("guest_globals"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  for (int i = 0; i < 4; ++i) StateOf(n0->agent.get(), "bump");
  const GuestState want = StateOf(n0->agent.get());
  Result<wasm::Snapshot> snap = n0->agent->Snapshot(id);
  ASSERT_TRUE(snap.ok()) << snap.status();
  Result<wasm::Snapshot> file = wasm::DecodeSnapshot(wasm::EncodeSnapshot(*snap));
  ASSERT_TRUE(file.ok()) << file.status();

  ASSERT_TRUE(n1->agent->Deploy(GlobalsManifest(), ReadWasm("guest_globals"), false).ok());
  ASSERT_TRUE(n1->agent->StartInstance("globals", id).ok());
  EXPECT_EQ(StateOf(n1->agent.get()).count, 0) << "a new instance";
  ASSERT_TRUE(n1->agent->Restore(id, *file).ok());
  EXPECT_EQ(StateOf(n1->agent.get()), want);
  // The restored state is the rollback point.
  ASSERT_FALSE(Call(n1->agent.get(), "bump_then_trap").status.ok());
  EXPECT_EQ(StateOf(n1->agent.get()), want);

  // A snapshot from before globals were carried is refused for this module, clearly.
  wasm::Snapshot old = *file;
  old.globals.clear();
  Status st = n1->agent->Restore(id, old);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("carries no globals"), std::string_view::npos) << st;
  EXPECT_EQ(StateOf(n1->agent.get()), want);
}

TEST(AgentGlobalsTest, LiveMigrationBetweenTwoAgentsCarriesTheGlobals) {
  std::unique_ptr<TestNode> src = StartNode("src"), dst = StartNode("dst");
  Result<ServiceStatus> s = src->agent->Deploy(GlobalsManifest(), ReadWasm("guest_globals"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  ASSERT_TRUE(Call(src->agent.get(), "grow").status.ok());  // tracked: pre-copy rounds
  for (int i = 0; i < 5; ++i) StateOf(src->agent.get(), "bump");
  ASSERT_TRUE(Call(src->agent.get(), "bump_globals_only").status.ok());
  const GuestState want = StateOf(src->agent.get());
  MigrateOptions o;
  o.to_tcp = dst->tcp;
  o.to_device = "dst";
  Result<MigrationReport> r = src->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(StateOf(dst->agent.get()), want);
  // The target's rollback point holds them as well.
  ASSERT_FALSE(Call(dst->agent.get(), "bump_then_trap").status.ok());
  EXPECT_EQ(StateOf(dst->agent.get()), want);
  EXPECT_EQ(StateOf(dst->agent.get(), "bump").count, want.count + 1);
}

// Durable: each record carries the globals; a request that changed only a global is
// journaled too. The keeper's journal alone restores them on a third agent.
TEST(AgentGlobalsTest, TheJournalOfADurableInstanceCarriesTheGlobals) {
  const std::string keeper_dir = tern::testing::TempDir("globals-keeper");
  std::unique_ptr<TestNode> cpu0 = StartNode("cpu0"), csd0 = StartNode("csd0", keeper_dir),
                            cpu1 = StartNode("cpu1");
  Result<ServiceStatus> s = cpu0->agent->Deploy(GlobalsManifest(true), ReadWasm("guest_globals"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  Agent* a = cpu0->agent.get();
  ASSERT_TRUE(a->SetKeeper(id, "csd0", csd0->tcp).ok());
  for (int i = 1; i <= 6; ++i) {
    ASSERT_TRUE(Call(a, "bump", 100 + i).status.ok()) << i;
    if (i == 2) {
      ASSERT_TRUE(a->JournalCheckpoint(id).ok());
    }
  }
  const uint64_t seq_before = csd0->agent->journals()->Info(id)->last_seq;
  ASSERT_TRUE(Call(a, "bump_globals_only").status.ok());
  EXPECT_EQ(csd0->agent->journals()->Info(id)->last_seq, seq_before + 1)
      << "a request that changed a global only was not journaled";
  const GuestState want = StateOf(a);
  cpu0->Stop();

  ASSERT_TRUE(cpu1->agent->Deploy(GlobalsManifest(true), ReadWasm("guest_globals"), false).ok());
  ASSERT_TRUE(cpu1->agent->StartInstance("globals", id).ok());
  Result<std::string> records = csd0->agent->journals()->Read(id, 0);
  ASSERT_TRUE(records.ok()) << records.status();
  Result<Agent::ReplayReport> rep = cpu1->agent->ReplayJournal(id, 0, *records);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(StateOf(cpu1->agent.get()), want);
}

// A hand-written module: memory, a mutable v128 global (state the engine cannot read
// from the host) and a handler `boom` that traps.
std::string V128GlobalModule() {
  auto section = [](uint8_t id, std::string payload) {
    std::string s(1, static_cast<char>(id));
    s += static_cast<char>(payload.size());  // every payload here is under 128 bytes
    return s + payload;
  };
  std::string m("\0asm\1\0\0\0", 8);
  m += section(1, std::string("\x01\x60\x00\x01\x7f", 5));  // type 0: () -> i32
  m += section(3, std::string("\x01\x00", 2));              // func 0: type 0
  m += section(5, std::string("\x01\x00\x01", 3));          // memory: 1 page
  m += section(6, std::string("\x01\x7b\x01\xfd\x0c", 5) + std::string(16, '\0') + '\x0b');
  m += section(7, std::string("\x02\x06memory\x02\x00\x04""boom\x00\x00", 17));
  m += section(10, std::string("\x01\x03\x00\x00\x0b", 5));  // unreachable
  return m;
}

TEST(AgentGlobalsTest, AStatefulServiceWithAGlobalNoSnapshotHoldsIsRefusedAtDeploy) {
  std::unique_ptr<TestNode> n = StartNode("cpu0");
  Manifest m = GlobalsManifest();
  m.name = "vec";
  m.handlers = {"boom"};
  Result<ServiceStatus> s = n->agent->Deploy(m, V128GlobalModule());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("stateful service 'vec'"), std::string_view::npos)
      << s.status();
  EXPECT_NE(s.status().message().find("global 0 (v128)"), std::string_view::npos) << s.status();
  EXPECT_TRUE(n->agent->GetStatus().instances.empty());

  // Stateless, it runs; a trap replaces the instance with a new one (no snapshot can
  // hold its state), so the next request runs again rather than finding it broken.
  m.stateful = false;
  s = n->agent->Deploy(m, V128GlobalModule());
  ASSERT_TRUE(s.ok()) << s.status();
  for (int i = 0; i < 2; ++i) {
    InvokeRequest r;
    r.service = "vec";
    r.handler = "boom";
    r.deadline_ns = MonoNanos() + 20'000'000'000;
    InvokeResult out = n->agent->InvokeSync(std::move(r));
    EXPECT_EQ(out.status.code(), StatusCode::kInternal) << i << ": " << out.status;
    EXPECT_NE(out.status.message().find("rolled back"), std::string_view::npos) << out.status;
  }
}

}  // namespace
}  // namespace tern::agent
