#include "agent/agent.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <thread>

#include "core/clock.h"
#include "core/latency_histogram.h"
#include "core/file.h"
#include "core/manifest.h"
#include "testing/test_env.h"
#include "wasm/dirty_tracker.h"
#include "wasm/engine.h"
#include "wasm/snapshot.h"

namespace tern::agent {
namespace {

using tern::testing::ReadWasm;
using tern::testing::SharedEngine;
using tern::testing::SourcePath;

Manifest ExampleManifest(const std::string& name) {
  Result<Manifest> m = LoadManifest(SourcePath("examples/" + name + "/manifest.yaml"));
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : Manifest{};
}

Manifest FaultyManifest() {
  Result<Manifest> m = LoadManifest(SourcePath("src/agent/testdata/faulty.yaml"));
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

std::unique_ptr<Agent> NewAgent(const std::string& data_dir = "", int workers = 2) {
  AgentOptions o;
  o.workers = workers;
  o.data_dir = data_dir;
  Result<std::unique_ptr<Agent>> a = Agent::Create(o, SharedEngine());
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? std::move(*a) : nullptr;
}

InvokeResult Call(Agent* a, const std::string& svc, const std::string& handler,
                  const std::string& payload = "", const std::string& instance = "") {
  InvokeRequest r;
  r.service = svc;
  r.handler = handler;
  r.payload = payload;
  r.instance = instance;
  return a->InvokeSync(std::move(r));
}

TEST(AgentTest, DeploysAndInvokesEcho) {
  auto a = NewAgent();
  Result<ServiceStatus> s = a->Deploy(ExampleManifest("echo"), ReadWasm("echo"));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->instances.size(), 1u);
  InvokeResult r = Call(a.get(), "echo", "echo", "hello tern");
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.reply, "hello tern");
  EXPECT_EQ(r.instance, s->instances[0]);
  std::string big(100000, 'x');
  r = Call(a.get(), "echo", "echo", big);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.reply, big);
}

TEST(AgentTest, InstanceCpuTimeCoversEveryRequestMeasuredOrNot) {
  // The thread's CPU clock is read around one request in 16 (and after long ones);
  // the others are charged their wall time times the measured CPU/wall ratio. Charging
  // them nothing would leave ~3 of 48 requests counted.
  auto a = NewAgent("", 1);
  ASSERT_TRUE(a->Deploy(ExampleManifest("echo"), ReadWasm("echo")).ok());
  const std::string payload(2000, 'c');
  for (int i = 0; i < 48; ++i) ASSERT_TRUE(Call(a.get(), "echo", "echo", payload).status.ok());
  AgentStatus st = a->GetStatus();
  ASSERT_EQ(st.instances.size(), 1u);
  const InstanceStatus& is = st.instances[0];
  EXPECT_EQ(is.requests, 48u);
  EXPECT_GT(is.cpu_ns_total, 0);
  // CPU time within the requests' wall time (each measured window closes one clock read
  // after the wall time's: a little slack), and not a small share of it (the worker
  // only runs the guest meanwhile; preemption on a loaded machine lowers it some).
  EXPECT_LE(is.cpu_ns_total, is.exec_ns_total + 48 * 5000);
  EXPECT_GE(is.cpu_ns_total, is.exec_ns_total / 6)
      << "cpu " << is.cpu_ns_total << " ns, exec " << is.exec_ns_total << " ns";
}

TEST(AgentTest, UnknownServiceAndHandlerAreNotFound) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(ExampleManifest("echo"), ReadWasm("echo")).ok());
  InvokeResult r = Call(a.get(), "nope", "echo");
  EXPECT_EQ(r.status.code(), StatusCode::kNotFound);
  EXPECT_NE(r.status.message().find("deployed: echo"), std::string_view::npos) << r.status;
  r = Call(a.get(), "echo", "missing");
  EXPECT_EQ(r.status.code(), StatusCode::kNotFound);
  EXPECT_NE(r.status.message().find("handlers: echo"), std::string_view::npos) << r.status;
  EXPECT_TRUE(Call(a.get(), "echo", "echo", "still fine").status.ok());
}

TEST(AgentTest, ManifestHandlerMustBeExported) {
  auto a = NewAgent();
  Manifest m = ExampleManifest("echo");
  m.handlers.push_back("not_there");
  Result<ServiceStatus> s = a->Deploy(m, ReadWasm("echo"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("not_there"), std::string_view::npos) << s.status();
}

TEST(AgentTest, MalformedModulesAreRejectedAndAgentLivesOn) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(ExampleManifest("echo"), ReadWasm("echo")).ok());
  Manifest m = ExampleManifest("echo");
  m.name = "bad";
  std::string good = ReadWasm("echo");
  for (const std::string& bytes :
       {std::string("not wasm at all"), std::string(), good.substr(0, good.size() / 2),
        std::string("\0asm\x02\0\0\0", 8)}) {
    Result<ServiceStatus> s = a->Deploy(m, bytes);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << s.status();
  }
  EXPECT_EQ(Call(a.get(), "echo", "echo", "ok").reply, "ok");
}

TEST(AgentTest, OversizedRequestIsRejectedBeforeTheGuestRuns) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  InvokeResult r = Call(a.get(), "faulty", "incr", std::string(5000, 'x'));  // limit 4 KiB
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status.message().find("request_kib"), std::string_view::npos) << r.status;
  EXPECT_EQ(Call(a.get(), "faulty", "get").reply, "0");  // the guest never ran
}

TEST(AgentTest, OversizedReplyFailsTheRequest) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  InvokeResult r = Call(a.get(), "faulty", "big_reply");  // 256 KiB > 64 KiB
  EXPECT_EQ(r.status.code(), StatusCode::kResourceExhausted) << r.status;
}

struct Misbehaviour {
  const char* handler;
  StatusCode code;
  const char* words;  // expected in the message
};

class RollbackTest : public ::testing::TestWithParam<Misbehaviour> {};

TEST_P(RollbackTest, FailureRollsBackToLastGoodStateAndOthersCarryOn) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  ASSERT_TRUE(a->Deploy(ExampleManifest("counter"), ReadWasm("counter")).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Call(a.get(), "faulty", "incr").status.ok());
  ASSERT_EQ(Call(a.get(), "counter", "incr", "7").reply, "7");

  InvokeResult bad = Call(a.get(), "faulty", GetParam().handler);
  EXPECT_EQ(bad.status.code(), GetParam().code) << bad.status;
  EXPECT_NE(bad.status.message().find(GetParam().words), std::string_view::npos) << bad.status;
  EXPECT_NE(bad.status.message().find("rolled back"), std::string_view::npos) << bad.status;

  // The failed request's state change is gone, earlier ones are intact, heap consistent.
  InvokeResult get = Call(a.get(), "faulty", "get");
  ASSERT_TRUE(get.status.ok()) << get.status;
  EXPECT_EQ(get.reply, "3");
  EXPECT_EQ(Call(a.get(), "faulty", "incr").reply, "4");
  // Another service's state is untouched.
  EXPECT_EQ(Call(a.get(), "counter", "get").reply, "7");
  AgentStatus st = a->GetStatus();
  for (const auto& i : st.instances) {
    if (i.service == "faulty") {
      EXPECT_EQ(i.rollbacks, 1u);
    }
    if (i.service == "counter") {
      EXPECT_EQ(i.rollbacks, 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Guests, RollbackTest,
    ::testing::Values(Misbehaviour{"incr_then_trap", StatusCode::kInternal, "unreachable"},
                      Misbehaviour{"incr_then_oob", StatusCode::kInternal, "out of bounds"},
                      Misbehaviour{"incr_then_loop", StatusCode::kDeadlineExceeded, "CPU"},
                      // Guests link --stack-first: the shadow stack overflows below
                      // address 0 and traps, before the engine's own stack runs out
                      // (it used to grow down into the guest's data first).
                      Misbehaviour{"incr_then_recurse", StatusCode::kInternal, "out of bounds"},
                      Misbehaviour{"incr_then_oom", StatusCode::kResourceExhausted, "memory cap"}),
    [](const ::testing::TestParamInfo<Misbehaviour>& info) {
      return std::string(info.param.handler);
    });

TEST(AgentTest, InterleavedFailuresNeverLoseOrCorruptState) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  const char* bad[] = {"incr_then_trap", "incr_then_oob", "incr_then_recurse"};
  for (int i = 1; i <= 60; ++i) {
    ASSERT_EQ(Call(a.get(), "faulty", "incr").reply, std::to_string(i));
    if (i % 3 == 0) {
      EXPECT_FALSE(Call(a.get(), "faulty", bad[(i / 3) % 3]).status.ok());
    }
  }
  InvokeResult get = Call(a.get(), "faulty", "get");  // also verifies the heap blob
  ASSERT_TRUE(get.status.ok()) << get.status;
  EXPECT_EQ(get.reply, "60");
  AgentStatus st = a->GetStatus();
  ASSERT_EQ(st.instances.size(), 1u);
  EXPECT_EQ(st.instances[0].rollbacks, 20u);
}

TEST(AgentTest, RollbackPointCopiesOnlyWrittenPagesWhenTracked) {
  auto a = NewAgent();
  Result<ServiceStatus> s = a->Deploy(ExampleManifest("counter"), ReadWasm("counter"));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(Call(a.get(), "counter", "fill", "8192").status.ok());  // 8 MiB of state
  AgentStatus before = a->GetStatus();
  ASSERT_EQ(before.instances.size(), 1u);
  EXPECT_GE(before.instances[0].memory_bytes, 8u << 20);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Call(a.get(), "counter", "incr").status.ok());
  AgentStatus after = a->GetStatus();
  uint64_t copied = after.instances[0].pages_copied - before.instances[0].pages_copied;
  if (!after.instances[0].dirty_tracking) {
    GTEST_SKIP() << "no userfaultfd write-protect here: the agent copies all "
                 << after.instances[0].memory_bytes / 4096 << " pages per request";
  }
  EXPECT_LT(copied, 20u * 16) << "an incr writes a few pages, not 8 MiB";
  EXPECT_TRUE(Call(a.get(), "counter", "check").status.ok());
  // The tracked rollback point is exact: a rollback restores all 8 MiB correctly.
  Result<wasm::Snapshot> snap = a->Snapshot(s->instances[0]);
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(a->Restore(s->instances[0], *snap).ok());
  EXPECT_TRUE(Call(a.get(), "counter", "check").status.ok());
  EXPECT_EQ(Call(a.get(), "counter", "get").reply, "20");
}

// The tracker is only peeked after a request and re-armed once 128 written pages have
// piled up (agent.cc, PeekWritten): across many re-arms, requests that each write ~24
// scattered pages of a 5 MiB area and traps that roll back, the rollback point must stay
// exactly the state after the last successful request.
TEST(AgentTest, RollbackPointStaysExactAcrossPeeksAndRearms) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  ASSERT_TRUE(Call(a.get(), "faulty", "scatter", "1").status.ok());  // allocates the area
  int traps = 0;
  for (int i = 0; i < 60; ++i) {
    if (i % 5 == 4) {
      EXPECT_FALSE(Call(a.get(), "faulty", "scatter_then_trap", "24").status.ok());
      ++traps;
      InvokeResult c = Call(a.get(), "faulty", "scatter_check");
      ASSERT_TRUE(c.status.ok()) << "after the trap of request " << i << ": " << c.status;
    } else {
      ASSERT_TRUE(Call(a.get(), "faulty", "scatter", "24").status.ok());
    }
  }
  AgentStatus st = a->GetStatus();
  ASSERT_EQ(st.instances.size(), 1u);
  EXPECT_EQ(st.instances[0].rollbacks, static_cast<uint64_t>(traps));
  if (!st.instances[0].dirty_tracking) {
    GTEST_SKIP() << "no userfaultfd write-protect here: every page is copied per request";
  }
  // ~48 successful requests of ~24 pages: far fewer pages copied than 48 x 1,280.
  EXPECT_LT(st.instances[0].pages_copied, 48u * 1280 / 4);
  EXPECT_TRUE(Call(a.get(), "faulty", "scatter_check").status.ok());
  EXPECT_TRUE(Call(a.get(), "faulty", "get").status.ok());  // the heap blob too
}

// Whether this kernel lets the agent track writes with userfaultfd (else it copies).
bool KernelTracksWrites() {
  constexpr size_t kBytes = 1 << 20;
  void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  bool ok = wasm::DirtyTracker::CreateUffd(static_cast<uint8_t*>(p), kBytes, 4096).ok();
  munmap(p, kBytes);
  return ok;
}

// A small stateful memory (512 KiB of state) is tracked too: requests that write a page
// or two copy a page or two into the rollback point, not the whole memory.
TEST(AgentTest, ASmallStatefulMemoryIsTrackedToo) {
  if (!KernelTracksWrites()) GTEST_SKIP() << "no userfaultfd write-protect tracking here";
  auto a = NewAgent();
  Result<ServiceStatus> s = a->Deploy(ExampleManifest("counter"), ReadWasm("counter"));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(Call(a.get(), "counter", "fill", "512").status.ok());
  AgentStatus before = a->GetStatus();
  ASSERT_EQ(before.instances.size(), 1u);
  EXPECT_LT(before.instances[0].memory_bytes, 4u << 20);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Call(a.get(), "counter", "incr").status.ok());
  AgentStatus after = a->GetStatus();
  ASSERT_TRUE(after.instances[0].dirty_tracking) << "a 512 KiB state is copied whole";
  const uint64_t copied = after.instances[0].pages_copied - before.instances[0].pages_copied;
  EXPECT_LT(copied, 20u * 4) << "an incr writes a page or two, not "
                             << after.instances[0].memory_bytes / 4096 << " pages";
  EXPECT_TRUE(Call(a.get(), "counter", "check").status.ok());
  EXPECT_EQ(Call(a.get(), "counter", "get").reply, "20");
}

// A small memory that every request rewrites whole is cheaper copied than tracked (each
// request would re-arm the tracker and fault on every page): after a window of such
// requests the agent copies it instead, the state stays exact across rollbacks, and
// 1,024 requests later, the requests now writing one page, tracking is back.
TEST(AgentTest, ASmallMemoryRewrittenWholeGoesBackToCopyingThenTrackingReturns) {
  if (!KernelTracksWrites()) GTEST_SKIP() << "no userfaultfd write-protect tracking here";
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  ASSERT_TRUE(Call(a.get(), "faulty", "incr").status.ok());
  AgentStatus st = a->GetStatus();
  ASSERT_EQ(st.instances.size(), 1u);
  ASSERT_TRUE(st.instances[0].dirty_tracking);
  ASSERT_LT(st.instances[0].memory_bytes, 4u << 20);
  for (int i = 1; i <= 80; ++i) {
    if (i % 10 == 0) {
      EXPECT_FALSE(Call(a.get(), "faulty", "rewrite_then_trap").status.ok());
      InvokeResult c = Call(a.get(), "faulty", "rewrite_check");
      ASSERT_TRUE(c.status.ok()) << "after the trap of request " << i << ": " << c.status;
    } else {
      ASSERT_TRUE(Call(a.get(), "faulty", "rewrite").status.ok());
    }
  }
  st = a->GetStatus();
  EXPECT_FALSE(st.instances[0].dirty_tracking) << "still tracking a memory rewritten whole";
  EXPECT_EQ(st.instances[0].rollbacks, 8u);
  EXPECT_TRUE(Call(a.get(), "faulty", "rewrite_check").status.ok());
  EXPECT_FALSE(Call(a.get(), "faulty", "rewrite_then_trap").status.ok());  // copied: exact too
  EXPECT_TRUE(Call(a.get(), "faulty", "rewrite_check").status.ok());
  for (int i = 0; i < 1100; ++i) ASSERT_TRUE(Call(a.get(), "faulty", "incr").status.ok());
  st = a->GetStatus();
  EXPECT_TRUE(st.instances[0].dirty_tracking) << "tracking did not come back";
  EXPECT_TRUE(Call(a.get(), "faulty", "rewrite_check").status.ok());
  EXPECT_TRUE(Call(a.get(), "faulty", "get").status.ok());  // the heap blob
}

TEST(AgentTest, CleanGuestFailureKeepsState) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  InvokeResult r = Call(a.get(), "faulty", "fail_cleanly");
  EXPECT_EQ(r.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status.message().find("not today"), std::string_view::npos) << r.status;
  EXPECT_EQ(Call(a.get(), "faulty", "get").reply, "1");  // a deliberate failure is a clean boundary
}

TEST(AgentTest, CounterStateSurvivesSnapshotAndRestoreIntoAnotherAgent) {
  auto a = NewAgent();
  Result<ServiceStatus> s = a->Deploy(ExampleManifest("counter"), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances[0];
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Call(a.get(), "counter", "incr").status.ok());
  Result<wasm::Snapshot> snap = a->Snapshot(id);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(Call(a.get(), "counter", "incr").reply, "4");
  ASSERT_TRUE(a->Restore(id, *snap).ok());
  EXPECT_EQ(Call(a.get(), "counter", "get").reply, "3");

  // Through the file format, into a different agent (other threads, other isolates).
  std::string dir = tern::testing::TempDir("snap");
  ASSERT_TRUE(wasm::WriteSnapshotFile(dir + "/c.snap", *snap).ok());
  auto b = NewAgent("", 1);
  Result<ServiceStatus> s2 = b->Deploy(ExampleManifest("counter"), ReadWasm("counter"));
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ(Call(b.get(), "counter", "get").reply, "0");
  Result<wasm::Snapshot> back = wasm::ReadSnapshotFile(dir + "/c.snap");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(b->Restore(s2->instances[0], *back).ok());
  EXPECT_EQ(Call(b.get(), "counter", "incr").reply, "4");
}

TEST(AgentTest, RestoreRefusesSnapshotOfAnotherModule) {
  auto a = NewAgent();
  Result<ServiceStatus> c = a->Deploy(ExampleManifest("counter"), ReadWasm("counter"));
  Result<ServiceStatus> e = a->Deploy(ExampleManifest("echo"), ReadWasm("echo"));
  ASSERT_TRUE(c.ok() && e.ok());
  Result<wasm::Snapshot> snap = a->Snapshot(e->instances[0]);
  ASSERT_TRUE(snap.ok());
  Status st = a->Restore(c->instances[0], *snap);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st;
}

TEST(AgentTest, ServicesPersistAcrossAgentRestart) {
  std::string dir = tern::testing::TempDir("agentdata");
  std::string snap_path = dir + "/counter.snap";
  {
    auto a = NewAgent(dir);
    Result<ServiceStatus> s = a->Deploy(ExampleManifest("counter"), ReadWasm("counter"));
    ASSERT_TRUE(s.ok());
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(Call(a.get(), "counter", "incr").status.ok());
    Result<wasm::Snapshot> snap = a->Snapshot(s->instances[0]);
    ASSERT_TRUE(snap.ok());
    ASSERT_TRUE(wasm::WriteSnapshotFile(snap_path, *snap).ok());
  }
  auto b = NewAgent(dir);
  AgentStatus st = b->GetStatus();
  ASSERT_EQ(st.services.size(), 1u);
  ASSERT_EQ(st.instances.size(), 1u);
  EXPECT_EQ(Call(b.get(), "counter", "get").reply, "0");  // a fresh instance
  Result<wasm::Snapshot> snap = wasm::ReadSnapshotFile(snap_path);
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(b->Restore(st.instances[0].id, *snap).ok());
  EXPECT_EQ(Call(b.get(), "counter", "incr").reply, "6");
}

TEST(AgentTest, ManyConcurrentCallersAcrossInstances) {
  auto a = NewAgent();
  Manifest m = ExampleManifest("counter");
  m.replicas = 1;
  ASSERT_TRUE(a->Deploy(m, ReadWasm("counter")).ok());
  Result<ServiceStatus> e = a->Deploy(ExampleManifest("echo"), ReadWasm("echo"));
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(a->StartInstance("echo").ok());
  constexpr int kThreads = 4, kCalls = 200;
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        if (!Call(a.get(), "counter", "incr").status.ok()) failures++;
        std::string p = std::to_string(t * 1000 + i);
        if (Call(a.get(), "echo", "echo", p).reply != p) failures++;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
  // Actor semantics: no lost increments.
  EXPECT_EQ(Call(a.get(), "counter", "get").reply, std::to_string(kThreads * kCalls));
}

TEST(AgentTest, RequestsPastTheirDeadlineAreNotRun) {
  auto a = NewAgent("", 1);
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  // A slow request (100 ms CPU limit) occupies the instance; one queued behind it with
  // a 10 ms budget expires before it can run, and must not change the state.
  std::atomic<bool> slow_done{false};
  InvokeRequest slow;
  slow.service = "faulty";
  slow.handler = "incr_then_loop";
  a->Invoke(slow, [&](InvokeResult) { slow_done = true; });
  InvokeRequest late;
  late.service = "faulty";
  late.handler = "incr";
  late.deadline_ns = MonoNanos() + 10'000'000;
  InvokeResult r = a->InvokeSync(late);
  EXPECT_TRUE(slow_done.load());
  EXPECT_EQ(r.status.code(), StatusCode::kDeadlineExceeded) << r.status;
  EXPECT_NE(r.status.message().find("not run"), std::string_view::npos) << r.status;
  EXPECT_EQ(Call(a.get(), "faulty", "get").reply, "0");
  EXPECT_EQ(a->GetStatus().instances[0].expired, 1u);
}

TEST(AgentTest, LatencyHistogramCountsTheWaitInTheQueue) {
  // The SLO's measure is the latency at the agent, not the time in the guest: requests
  // queued behind a slow one (100 ms CPU limit) count their wait, although each runs
  // for microseconds.
  auto a = NewAgent("", 1);
  ASSERT_TRUE(a->Deploy(FaultyManifest(), ReadWasm("guest_faulty")).ok());
  std::atomic<int> done{0};
  InvokeRequest slow;
  slow.service = "faulty";
  slow.handler = "incr_then_loop";
  a->Invoke(slow, [&](InvokeResult) { ++done; });
  constexpr int kQueued = 3;
  for (int i = 0; i < kQueued; ++i) {
    InvokeRequest get;
    get.service = "faulty";
    get.handler = "get";
    a->Invoke(get, [&](InvokeResult r) {
      EXPECT_TRUE(r.status.ok()) << r.status;
      ++done;
    });
  }
  for (int i = 0; i < 3000 && done.load() < kQueued + 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(done.load(), kQueued + 1);
  uint64_t total = 0, slow_ones = 0;
  const AgentStatus status = a->GetStatus();
  for (const auto& [bucket, count] : status.instances.at(0).latency_hist) {
    total += count;
    if (LatencyHistogram::LowerBoundNs(bucket) >= 50'000'000) slow_ones += count;
  }
  EXPECT_EQ(total, kQueued + 1u);
  EXPECT_EQ(slow_ones, kQueued + 1u) << "the queued requests' wait is missing";
}

TEST(AgentTest, StopAndUndeploy) {
  auto a = NewAgent();
  Result<ServiceStatus> s = a->Deploy(ExampleManifest("echo"), ReadWasm("echo"));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(a->StopInstance(s->instances[0]).ok());
  EXPECT_EQ(Call(a.get(), "echo", "echo").status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(a->StopInstance(s->instances[0]).code(), StatusCode::kNotFound);
  Result<std::string> id = a->StartInstance("echo");
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(Call(a.get(), "echo", "echo", "x").reply, "x");
  ASSERT_TRUE(a->Undeploy("echo").ok());
  EXPECT_EQ(Call(a.get(), "echo", "echo").status.code(), StatusCode::kNotFound);
  EXPECT_EQ(a->GetStatus().instances.size(), 0u);
}

TEST(AgentTest, InstancesCanBeNamedByTheCaller) {
  auto a = NewAgent();
  ASSERT_TRUE(a->Deploy(ExampleManifest("echo"), ReadWasm("echo"), false).ok());
  Result<std::string> id = a->StartInstance("echo", "echo-c7");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, "echo-c7");
  EXPECT_EQ(a->StartInstance("echo", "echo-c7").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(a->StartInstance("echo", "Bad Name").status().code(),
            StatusCode::kInvalidArgument);
  InvokeRequest req{.service = "echo", .handler = "echo", .payload = "hi", .instance = "echo-c7"};
  InvokeResult r = a->InvokeSync(req);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.instance, "echo-c7");
  // Agent-picked ids skip names already taken by callers.
  Result<std::string> next = a->StartInstance("echo", "echo-1");
  ASSERT_TRUE(next.ok());
  Result<std::string> picked = a->StartInstance("echo");
  ASSERT_TRUE(picked.ok());
  EXPECT_NE(*picked, "echo-1");
  EXPECT_EQ(a->GetStatus().instances.size(), 3u);
}

}  // namespace
}  // namespace tern::agent
