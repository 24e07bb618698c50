// Tests of the V8 engine against real guests (tests/guests/*.c).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <new>
#include <thread>

#include <v8.h>

#include "wasm/engine.h"
#include "testing/globals_guest.h"
#include "wasm/test_util.h"

extern char** environ;

namespace tern::wasm {
namespace {

using testing::FakeHost;
using ::testing::HasSubstr;
using testing::LoadGuest;
using ::testing::Pair;
using testing::ReadU32;
using testing::SharedEngine;
using testing::U32s;

constexpr uint32_t kCap = 256;  // 16 MiB

std::shared_ptr<const Module> CompileGuest(std::string_view name, uint32_t cap = kCap) {
  Result<std::shared_ptr<const Module>> m = SharedEngine()->Compile(LoadGuest(name), cap);
  EXPECT_TRUE(m.ok()) << name << ": " << m.status();
  return m.ok() ? *m : nullptr;
}

InstanceLimits Limits(uint32_t cap = kCap) {
  InstanceLimits l;
  l.max_memory_pages = cap;
  l.cpu_ms = 1000;
  l.max_reply_bytes = 1024;
  return l;
}

// Calls `handler` with `request`; returns the status and fills `reply`.
Status CallWith(Instance& inst, std::string_view handler, std::string request = "",
                std::string* reply = nullptr) {
  FakeHost host(std::move(request));
  Status st = inst.Call(handler, &host);
  if (reply != nullptr) *reply = host.reply;
  return st;
}

uint32_t Counter(Instance& inst, std::string_view handler = "counter") {
  std::string reply;
  Status st = CallWith(inst, handler, "", &reply);
  EXPECT_TRUE(st.ok()) << st;
  return ReadU32(reply);
}

class V8EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(SharedEngine(), nullptr);
    Result<std::unique_ptr<Worker>> w = SharedEngine()->NewWorker();
    ASSERT_TRUE(w.ok()) << w.status();
    worker_ = std::move(*w);
  }

  std::unique_ptr<Instance> New(std::shared_ptr<const Module> m, InstanceLimits limits = Limits(),
                                bool init = true) {
    if (m == nullptr) return nullptr;
    Result<std::unique_ptr<Instance>> i = worker_->Instantiate(std::move(m), limits, init);
    EXPECT_TRUE(i.ok()) << i.status();
    return i.ok() ? std::move(*i) : nullptr;
  }

  std::unique_ptr<Worker> worker_;
};

TEST(V8EngineSingletonTest, ASecondEngineIsRefused) {
  ASSERT_NE(SharedEngine(), nullptr);
  Result<std::unique_ptr<Engine>> second = NewV8Engine(EngineOptions{});
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(V8EngineTest, CompileIsCachedByContentAndCap) {
  std::string bytes = LoadGuest("guest_stateful");
  Result<std::shared_ptr<const Module>> a = SharedEngine()->Compile(bytes, kCap);
  ASSERT_TRUE(a.ok()) << a.status();
  size_t count = SharedEngine()->CachedModuleCount();
  Result<std::shared_ptr<const Module>> b = SharedEngine()->Compile(std::string(bytes), kCap);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(SharedEngine()->CachedModuleCount(), count);
  Result<std::shared_ptr<const Module>> c = SharedEngine()->Compile(bytes, kCap / 2);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->get(), c->get());
  EXPECT_EQ(SharedEngine()->CachedModuleCount(), count + 1);
  EXPECT_EQ((*a)->hash(), (*c)->hash());
  EXPECT_EQ((*a)->max_memory_pages(), kCap);
  EXPECT_EQ((*a)->info().memory_max_pages, kCap);
  EXPECT_EQ((*c)->info().memory_max_pages, kCap / 2);
}

TEST_F(V8EngineTest, CompileRejectsBadModulesWithClearMessages) {
  Engine* e = SharedEngine();
  Result<std::shared_ptr<const Module>> r = e->Compile("#!/bin/sh\necho not wasm\n", kCap);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("bad magic"));

  std::string good = LoadGuest("guest_stateful");
  r = e->Compile(std::string_view(good).substr(0, good.size() / 2), kCap);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();

  // Structure fine, a code body broken (i32.add on an empty stack): V8's validation
  // reports it.
  using testing::Leb;
  using testing::WasmName;
  using testing::WasmSection;
  std::string body = Leb(0) + "\x6a\x0b";
  std::string bad_code = testing::WasmModule(
      {WasmSection(1, Leb(1) + "\x60" + Leb(0) + Leb(1) + "\x7f"), WasmSection(3, Leb(1) + Leb(0)),
       WasmSection(5, Leb(1) + '\x00' + Leb(1)),
       WasmSection(7, Leb(1) + WasmName("memory") + '\x02' + Leb(0)),
       WasmSection(10, Leb(1) + Leb(static_cast<uint32_t>(body.size())) + body)});
  r = e->Compile(bad_code, kCap);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("does not compile"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("CompileError"));

  r = e->Compile(LoadGuest("guest_badimport"), kCap);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("tern_v1.call"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("env.foo"));

  r = e->Compile(LoadGuest("guest_nomemory"), kCap);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("memory"));
  r = e->Compile(LoadGuest("guest_importmem"), kCap);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("imports memory env.memory"));

  r = e->Compile(good, 1);  // its memory starts above 1 page
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("above the cap"));
}

// The first worker on a thread keeps its isolate and context entered between calls. If
// another isolate is entered on that thread meanwhile (an embedder's own), a call must
// still run in the worker's isolate, not in whatever is current.
TEST(V8WorkerEntryTest, ACallWorksAfterAnotherIsolateWasEnteredOnItsThread) {
  std::thread t([] {  // a fresh thread: this worker is its first
    Result<std::unique_ptr<Worker>> w = SharedEngine()->NewWorker();
    ASSERT_TRUE(w.ok()) << w.status();
    Result<std::unique_ptr<Instance>> inst =
        (*w)->Instantiate(CompileGuest("guest_stateful"), Limits(), true);
    ASSERT_TRUE(inst.ok()) << inst.status();
    EXPECT_EQ(Counter(**inst), 1u);
    std::unique_ptr<v8::ArrayBuffer::Allocator> alloc(
        v8::ArrayBuffer::Allocator::NewDefaultAllocator());
    v8::Isolate::CreateParams params;
    params.array_buffer_allocator = alloc.get();
    v8::Isolate* other = v8::Isolate::New(params);
    other->Enter();
    EXPECT_EQ(Counter(**inst), 2u);
    EXPECT_EQ(v8::Isolate::TryGetCurrent(), other) << "the call left the other isolate entered";
    other->Exit();
    other->Dispose();
    EXPECT_EQ(Counter(**inst), 3u);
  });
  t.join();
}

TEST_F(V8EngineTest, InstantiateAndCall) {
  auto inst = New(CompileGuest("guest_stateful"));
  ASSERT_NE(inst, nullptr);
  EXPECT_EQ(Counter(*inst), 1u);
  EXPECT_EQ(Counter(*inst), 2u);
  EXPECT_EQ(Counter(*inst, "get"), 2u);
  std::string reply;
  ASSERT_TRUE(CallWith(*inst, "echo", "hello, tern", &reply).ok());
  EXPECT_EQ(reply, "hello, tern");
  ASSERT_TRUE(CallWith(*inst, "echo", "", &reply).ok());
  EXPECT_EQ(reply, "");
  EXPECT_TRUE(CallWith(*inst, "noop").ok());
  EXPECT_GT(inst->memory_bytes(), 0u);
  EXPECT_NE(inst->memory_data(), nullptr);
  EXPECT_EQ(inst->memory_bytes() % kWasmPageBytes, 0u);

  // Two instances of one module are independent.
  auto other = New(CompileGuest("guest_stateful"));
  EXPECT_EQ(Counter(*other), 1u);
  EXPECT_EQ(Counter(*inst), 3u);
}

TEST_F(V8EngineTest, UnknownHandlerIsNotFound) {
  auto inst = New(CompileGuest("guest_stateful"));
  Status st = CallWith(*inst, "no_such_handler");
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.message()), HasSubstr("no_such_handler"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("counter"));
  // `memory` is an export but not a function.
  EXPECT_EQ(CallWith(*inst, "memory").code(), StatusCode::kNotFound);
  EXPECT_EQ(Counter(*inst), 1u);
}

TEST_F(V8EngineTest, HostCalls) {
  auto inst = New(CompileGuest("guest_stateful"));
  FakeHost host;
  ASSERT_TRUE(inst->Call("log", &host).ok());
  EXPECT_THAT(host.logs,
              ::testing::ElementsAre(Pair(1, "hello from guest"), Pair(2, "warning from guest")));

  FakeHost clock_host;
  ASSERT_TRUE(inst->Call("clock", &clock_host).ok());
  ASSERT_EQ(clock_host.reply.size(), 8u);
  int64_t t;
  std::memcpy(&t, clock_host.reply.data(), 8);
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  int64_t now_ns = now.tv_sec * 1'000'000'000LL + now.tv_nsec;
  EXPECT_GT(t, 0);
  EXPECT_LE(t, now_ns);
  EXPECT_GT(t, now_ns - 5'000'000'000LL);

  // tern_fail: the guest's code and message; the host hears about it too.
  FakeHost fail_host;
  Status st = inst->Call("fail", &fail_host);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_EQ(st.message(), "no such key: k1");
  EXPECT_EQ(fail_host.failure_code, StatusCode::kNotFound);
  EXPECT_EQ(fail_host.failure_message, "no such key: k1");

  // Non-zero return without tern_fail.
  FakeHost ret_host;
  st = inst->Call("ret11", &ret_host);
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(st.message()), HasSubstr("returned 11"));
  EXPECT_EQ(ret_host.failure_code, StatusCode::kOutOfRange);

  // The instance is fine after a guest-reported failure.
  EXPECT_EQ(Counter(*inst), 1u);
}

TEST_F(V8EngineTest, ReplyLimit) {
  auto inst = New(CompileGuest("guest_stateful"));  // max_reply_bytes = 1024
  std::string reply;
  ASSERT_TRUE(CallWith(*inst, "big_reply", U32s({1024}), &reply).ok());
  EXPECT_EQ(reply, std::string(1024, 'x'));
  ASSERT_TRUE(CallWith(*inst, "big_reply", U32s({1025}), &reply).ok());
  EXPECT_EQ(reply, "refused:8");  // TERN_RESOURCE_EXHAUSTED
}

// tern_reply_in_place (the echo example): the host gets a view of the guest's memory,
// not a copy, once the handler has returned (growth after the reply and traps: the
// agent's TcpServingTest.InPlace* tests, with the faulty guest).
TEST_F(V8EngineTest, InPlaceReplyIsAViewOfGuestMemory) {
  InstanceLimits l = Limits();
  l.max_reply_bytes = 1 << 20;
  auto inst = New(CompileGuest("echo"), l);
  for (size_t len : {size_t{5}, size_t{200000}}) {
    FakeHost host(std::string(len, static_cast<char>('a' + len % 26)));
    ASSERT_TRUE(inst->Call("echo", &host).ok());
    EXPECT_TRUE(host.reply == host.request) << len;
    ASSERT_NE(host.in_place.data(), nullptr) << "the reply was copied, not given in place";
    const char* base = reinterpret_cast<const char*>(inst->memory_data());
    EXPECT_GE(host.in_place.data(), base);
    EXPECT_LE(host.in_place.data() + host.in_place.size(), base + inst->memory_bytes());
    EXPECT_EQ(std::string_view(host.in_place), host.request);
  }
  // Over the limit: refused as tern_reply refuses, nothing handed over.
  FakeHost big(std::string(l.max_reply_bytes + 1, 'x'));
  Status st = inst->Call("echo", &big);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st;
  EXPECT_EQ(big.in_place.data(), nullptr);
  EXPECT_TRUE(big.reply.empty());
}

TEST_F(V8EngineTest, HostPointersAreBoundsChecked) {
  auto m = CompileGuest("guest_stateful");
  auto survivor = New(m);
  EXPECT_EQ(Counter(*survivor), 1u);
  for (const char* handler : {"read_oob", "reply_oob", "log_oob"}) {
    auto inst = New(m);
    Status st = CallWith(*inst, handler, "some request bytes");
    EXPECT_EQ(st.code(), StatusCode::kInternal) << handler << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("outside linear memory")) << handler;
    EXPECT_THAT(std::string(st.message()), HasSubstr("RuntimeError")) << handler;
  }
  EXPECT_EQ(Counter(*survivor), 2u);
}

TEST_F(V8EngineTest, ABrokenInstanceRefusesCallsUntilRestored) {
  auto inst = New(CompileGuest("guest_stateful"));
  EXPECT_EQ(Counter(*inst), 1u);
  Result<Snapshot> good = inst->TakeSnapshot();
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(Counter(*inst), 2u);
  EXPECT_EQ(CallWith(*inst, "reply_oob").code(), StatusCode::kInternal);
  Status st = CallWith(*inst, "counter");
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("outside linear memory"));
  ASSERT_TRUE(inst->Restore(*good).ok());
  EXPECT_EQ(Counter(*inst), 2u);
  // A failure the guest reports itself does not break the instance.
  EXPECT_EQ(CallWith(*inst, "fail").code(), StatusCode::kNotFound);
  EXPECT_EQ(Counter(*inst), 3u);
}

TEST_F(V8EngineTest, ModulesAreSharedAcrossWorkerThreads) {
  // A cap no other test uses, so this compiles afresh.
  constexpr uint32_t kOwnCap = 300;
  std::string bytes = LoadGuest("guest_stateful");
  size_t before = SharedEngine()->CachedModuleCount();
  std::vector<std::shared_ptr<const Module>> compiled(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto m = SharedEngine()->Compile(bytes, kOwnCap);
      ASSERT_TRUE(m.ok()) << m.status();
      compiled[t] = *m;
      auto w = SharedEngine()->NewWorker();
      ASSERT_TRUE(w.ok());
      InstanceLimits l = Limits(kOwnCap);
      auto inst = (*w)->Instantiate(*m, l, true);
      ASSERT_TRUE(inst.ok()) << inst.status();
      for (uint32_t i = 1; i <= 2000; ++i) {
        FakeHost host;
        ASSERT_TRUE((*inst)->Call("counter", &host).ok());
        ASSERT_EQ(ReadU32(host.reply), i);
      }
      inst->reset();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(SharedEngine()->CachedModuleCount(), before + 1);
  for (int t = 1; t < 4; ++t) EXPECT_EQ(compiled[t].get(), compiled[0].get());
}

// tern_data_* through the V8 glue, with the host's side faked: bytes land in guest
// memory, errors come back as negative codes, a wild destination traps.
TEST_F(V8EngineTest, DatasetImports) {
  auto inst = New(CompileGuest("guest_data"));
  ASSERT_NE(inst, nullptr);
  std::string obj(70000, '\0');
  for (size_t i = 0; i < obj.size(); ++i) obj[i] = static_cast<char>(i * 7);
  auto host = [&](std::string request) {
    FakeHost h(std::move(request));
    h.objects[{"logs", "a"}] = obj;
    h.objects[{"logs", "b"}] = "bee";
    return h;
  };
  FakeHost r = host("logs|a|65000|1000");  // across a 64 KiB boundary; replies are capped at 1 KiB here
  ASSERT_TRUE(inst->Call("read", &r).ok());
  ASSERT_EQ(r.reply.size(), 1000u) << static_cast<int>(r.failure_code) << r.failure_message;
  EXPECT_TRUE(r.reply == obj.substr(65000, 1000));
  FakeHost end = host("logs|a|69990|100");
  ASSERT_TRUE(inst->Call("read", &end).ok());
  EXPECT_TRUE(end.reply == obj.substr(69990)) << end.reply.size();
  FakeHost missing = host("logs|zzz|0|10");
  // The guest fails the request with the code it got (tern_fail).
  EXPECT_EQ(inst->Call("read", &missing).code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.failure_code, StatusCode::kNotFound);
  FakeHost past = host("logs|b|4|1");
  EXPECT_EQ(inst->Call("read", &past).code(), StatusCode::kOutOfRange);
  FakeHost size = host("logs|a");
  ASSERT_TRUE(inst->Call("size", &size).ok());
  ASSERT_EQ(size.reply.size(), 8u);
  int64_t n = 0;
  std::memcpy(&n, size.reply.data(), 8);
  EXPECT_EQ(n, 70000);
  FakeHost list = host("logs");
  ASSERT_TRUE(inst->Call("list", &list).ok());
  EXPECT_EQ(list.reply, "a\t70000\nb\t3\n");
  FakeHost wild = host("");
  Status trap = inst->Call("wild", &wild);
  EXPECT_FALSE(trap.ok());
  EXPECT_NE(trap.message().find("outside linear memory"), std::string::npos) << trap;
  // A host without datasets (the default HostCalls) answers kUnimplemented.
  struct Plain : HostCalls {
    std::string_view Request() override { return "logs|a|0|1"; }
    void SetReply(std::string_view) override {}
    void SetFailure(StatusCode c, std::string_view) override { code = c; }
    void Log(int32_t, std::string_view) override {}
    StatusCode code = StatusCode::kOk;
  } plain;
  auto fresh = New(CompileGuest("guest_data"));
  EXPECT_EQ(fresh->Call("read", &plain).code(), StatusCode::kUnimplemented);
  EXPECT_EQ(plain.code, StatusCode::kUnimplemented);
}

TEST_F(V8EngineTest, WasiStubs) {
  auto inst = New(CompileGuest("guest_wasi"));
  ASSERT_NE(inst, nullptr);
  FakeHost hello;
  ASSERT_TRUE(inst->Call("hello", &hello).ok());
  EXPECT_THAT(hello.logs,
              ::testing::ElementsAre(Pair(1, "hello, stdout"), Pair(2, "hello, stderr")));

  FakeHost time;
  ASSERT_TRUE(inst->Call("time", &time).ok());
  ASSERT_EQ(time.reply.size(), 16u);
  int64_t ns[2];
  std::memcpy(ns, time.reply.data(), 16);
  EXPECT_GT(ns[0], 0);
  EXPECT_GT(ns[1], 1'600'000'000LL * 1'000'000'000LL);  // after 2020

  std::string a, b;
  ASSERT_TRUE(CallWith(*inst, "random", "", &a).ok());
  ASSERT_TRUE(CallWith(*inst, "random", "", &b).ok());
  EXPECT_EQ(a.size(), 32u);
  EXPECT_NE(a, b);

  std::string env;
  ASSERT_TRUE(CallWith(*inst, "env", "", &env).ok());
  EXPECT_EQ(env, "(none)");

  Status st = CallWith(*inst, "exit");
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_THAT(std::string(st.message()), HasSubstr("proc_exit(3)"));
}

// --- snapshots

struct Pattern {
  uint32_t addr, len, seed;
};

// Grows `inst` by `pages` and fills a pattern over the new pages; returns the range.
Pattern GrowAndFill(Instance& inst, uint32_t pages, uint32_t seed) {
  std::string reply;
  EXPECT_TRUE(CallWith(inst, "grow", U32s({pages}), &reply).ok());
  uint32_t old_pages = ReadU32(reply);
  EXPECT_NE(old_pages, 0xffffffffu);
  Pattern p{old_pages * kWasmPageBytes, pages * kWasmPageBytes - 100, seed};
  EXPECT_TRUE(CallWith(inst, "fill", U32s({p.addr, p.len, p.seed})).ok());
  return p;
}

uint32_t HashOf(Instance& inst, const Pattern& p) {
  std::string reply;
  EXPECT_TRUE(CallWith(inst, "hash", U32s({p.addr, p.len}), &reply).ok());
  return ReadU32(reply);
}

TEST_F(V8EngineTest, SnapshotRestoreOnAnotherWorkerThread) {
  auto m = CompileGuest("guest_stateful");
  auto inst = New(m);
  for (int i = 0; i < 3; ++i) Counter(*inst);
  Pattern pat = GrowAndFill(*inst, 20, 77);
  const uint32_t want_hash = HashOf(*inst, pat);
  Result<Snapshot> snap = inst->TakeSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->module_hash, m->hash());
  EXPECT_EQ(snap->memory.size(), inst->memory_bytes());
  ASSERT_TRUE(snap->stack_pointer.has_value());
  // Between requests the stack pointer is at its initial value in every instance.
  auto fresh = New(m);
  EXPECT_EQ(*fresh->TakeSnapshot()->stack_pointer, *snap->stack_pointer);

  std::thread t([&] {
    Result<std::unique_ptr<Worker>> w = SharedEngine()->NewWorker();
    ASSERT_TRUE(w.ok()) << w.status();
    Result<std::unique_ptr<Instance>> r = (*w)->Instantiate(m, Limits(), /*run_initialize=*/false);
    ASSERT_TRUE(r.ok()) << r.status();
    Instance& restored = **r;
    Status st = restored.Restore(*snap);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(restored.memory_bytes(), snap->memory.size());
    EXPECT_EQ(Counter(restored), 4u);
    EXPECT_EQ(HashOf(restored, pat), want_hash);
    Counter(restored);  // 5
    // And back: restore the newer state here into a fresh instance.
    Result<Snapshot> snap2 = restored.TakeSnapshot();
    ASSERT_TRUE(snap2.ok());
    *snap = std::move(*snap2);
    r->reset();
  });
  t.join();
  auto again = New(m, Limits(), false);
  ASSERT_TRUE(again->Restore(*snap).ok());
  EXPECT_EQ(Counter(*again), 6u);
  EXPECT_EQ(Counter(*inst), 4u);  // the original carries on independently
}

// ---- mutable globals (tests/guests/globals.c keeps its state in three non-exported
// globals: an i32, an i64 and an f64; plus a counter in memory).

using GuestGlobals = ::tern::testing::GlobalsGuestState;

GuestGlobals GlobalsOf(Instance& inst, std::string_view handler = "get") {
  std::string reply;
  Status st = CallWith(inst, handler, "", &reply);
  EXPECT_TRUE(st.ok()) << st;
  GuestGlobals g;
  if (!::tern::testing::ParseGlobalsGuestState(reply, &g)) {
    ADD_FAILURE() << "reply of " << reply.size() << " bytes";
  }
  return g;
}

TEST_F(V8EngineTest, NonExportedMutableGlobalsAreSnapshottedAndRestored) {
  auto m = CompileGuest("guest_globals");
  auto inst = New(m);
  for (int i = 0; i < 3; ++i) GlobalsOf(*inst, "bump");
  const GuestGlobals three = GlobalsOf(*inst);
  EXPECT_EQ(three.count, 3);
  EXPECT_EQ(three.wide, ((0x100000007 * 3) + 0x100000007) * 3 + 0x100000007);
  EXPECT_EQ(three.real, ((0.25 * 1.5) + 0.25) * 1.5 + 0.25);
  EXPECT_EQ(three.in_memory, 3u);
  Result<Snapshot> snap = inst->TakeSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_EQ(snap->globals.size(), 4u);  // __stack_pointer and the three
  EXPECT_EQ(snap->globals[0].bits, *snap->stack_pointer);
  EXPECT_EQ(snap->globals[1], (GlobalValue{1, ValType::kI32, 3}));
  EXPECT_EQ(snap->globals[2].type, ValType::kI64);
  EXPECT_EQ(snap->globals[3].type, ValType::kF64);
  Snapshot globals_only;
  ASSERT_TRUE(inst->SnapshotGlobals(&globals_only).ok());
  EXPECT_EQ(globals_only.globals, snap->globals);
  EXPECT_TRUE(globals_only.memory.empty());

  // In place, after more requests.
  GlobalsOf(*inst, "bump");
  GlobalsOf(*inst, "bump");
  ASSERT_NE(GlobalsOf(*inst), three);
  ASSERT_TRUE(inst->Restore(*snap).ok());
  EXPECT_EQ(GlobalsOf(*inst), three);
  // Into a fresh instance, through the file format.
  Result<Snapshot> decoded = DecodeSnapshot(EncodeSnapshot(*snap));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  auto fresh = New(m, Limits(), /*init=*/false);
  ASSERT_TRUE(fresh->Restore(*decoded).ok());
  EXPECT_EQ(GlobalsOf(*fresh), three);
  EXPECT_EQ(GlobalsOf(*fresh, "bump").count, 4);

  // A trap half-way through a request: restoring the snapshot undoes its globals too.
  Status trap = CallWith(*inst, "bump_then_trap");
  EXPECT_EQ(trap.code(), StatusCode::kInternal) << trap;
  ASSERT_TRUE(inst->Restore(*snap).ok());
  EXPECT_EQ(GlobalsOf(*inst), three);

  // RestoreGlobals sets the globals alone: memory stays as it is.
  GlobalsOf(*inst, "bump");
  ASSERT_TRUE(inst->RestoreGlobals(*snap).ok());
  GuestGlobals mixed = GlobalsOf(*inst);
  EXPECT_EQ(mixed.count, 3);
  EXPECT_EQ(mixed.in_memory, 4u);

  // What reading them costs after each request of a stateful instance (printed, not
  // asserted: the agent's per-request price for these four globals).
  constexpr int kReads = 5000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kReads; ++i) ASSERT_TRUE(inst->SnapshotGlobals(&globals_only).ok());
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ perf ] SnapshotGlobals of %zu globals: %.0f ns per call (mean of %d)\n",
              globals_only.globals.size(), ns / kReads, kReads);
}

TEST_F(V8EngineTest, ASnapshotWithoutTheModulesGlobalsIsRefusedAndChangesNothing) {
  auto m = CompileGuest("guest_globals");
  auto inst = New(m);
  GlobalsOf(*inst, "bump");
  Result<Snapshot> snap = inst->TakeSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  GlobalsOf(*inst, "bump");
  const GuestGlobals now = GlobalsOf(*inst);
  // As a format-1 snapshot (before globals were carried) would decode.
  Snapshot old = *snap;
  old.globals.clear();
  Status st = inst->Restore(old);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("carries no globals"));
  EXPECT_EQ(GlobalsOf(*inst), now) << "a refused restore changed the state";
  // Another module's layout of globals.
  Snapshot other = *snap;
  other.globals[2].type = ValType::kF64;
  st = inst->RestoreGlobals(other);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("global 2 (f64)"));
  other.globals.pop_back();
  EXPECT_EQ(inst->Restore(other).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(GlobalsOf(*inst), now);

  // A module whose only mutable global is __stack_pointer (every SDK guest) restores
  // snapshots without globals, as format 1 wrote them.
  auto plain = New(CompileGuest("guest_stateful"));
  EXPECT_EQ(Counter(*plain), 1u);
  Result<Snapshot> p = plain->TakeSnapshot();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->globals.size(), 1u);
  p->globals.clear();
  EXPECT_EQ(Counter(*plain), 2u);
  ASSERT_TRUE(plain->Restore(*p).ok());
  EXPECT_EQ(Counter(*plain), 2u);
}

TEST_F(V8EngineTest, AMutableGlobalTheEngineCannotReadFailsTheSnapshotClearly) {
  using testing::Leb;
  using testing::WasmName;
  using testing::WasmSection;
  // memory 1 page; global 0: mutable v128; global 1: mutable i32; exports memory.
  std::string bytes = testing::WasmModule(
      {WasmSection(5, Leb(1) + '\x00' + Leb(1)),
       WasmSection(6, Leb(2) + std::string("\x7b\x01\xfd\x0c", 4) + std::string(16, '\0') +
                          '\x0b' + std::string("\x7f\x01\x41\x05\x0b", 5)),
       WasmSection(7, Leb(1) + WasmName("memory") + '\x02' + Leb(0))});
  Result<std::shared_ptr<const Module>> m = SharedEngine()->Compile(bytes, kCap);
  ASSERT_TRUE(m.ok()) << m.status();  // a stateless service may have such a global
  auto inst = New(*m);
  ASSERT_NE(inst, nullptr);
  Result<Snapshot> snap = inst->TakeSnapshot();
  EXPECT_EQ(snap.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(snap.status().message()), HasSubstr("global 0 (v128)"));
  Snapshot g;
  EXPECT_EQ(inst->SnapshotGlobals(&g).code(), StatusCode::kFailedPrecondition);
}

TEST_F(V8EngineTest, SnapshotIntoReusesTheBufferAndRestoreChecks) {
  auto m = CompileGuest("guest_stateful");
  auto inst = New(m);
  Counter(*inst);
  Snapshot s;
  ASSERT_TRUE(inst->SnapshotInto(&s).ok());
  const char* buf = s.memory.data();
  Counter(*inst);
  ASSERT_TRUE(inst->SnapshotInto(&s).ok());
  EXPECT_EQ(s.memory.data(), buf);  // same size: no reallocation
  // Restoring an older state of the same size in place works.
  Snapshot s1;
  ASSERT_TRUE(inst->SnapshotInto(&s1).ok());
  Counter(*inst);
  Counter(*inst);
  ASSERT_TRUE(inst->Restore(s1).ok());
  EXPECT_EQ(Counter(*inst), 3u);

  Snapshot wrong = s1;
  wrong.module_hash = "0123";
  EXPECT_EQ(inst->Restore(wrong).code(), StatusCode::kInvalidArgument);
  GrowAndFill(*inst, 2, 1);
  Status st = inst->Restore(s1);  // smaller than the grown memory
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st;
  Snapshot huge = s1;
  huge.memory.resize(size_t{kCap + 1} * kWasmPageBytes);
  auto fresh = New(m, Limits(), false);
  st = fresh->Restore(huge);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st;
}

TEST_F(V8EngineTest, GrowMemoryKeepsTheContentsAndAddsZeroPagesTheGuestCanUse) {
  auto m = CompileGuest("guest_stateful");
  auto inst = New(m);
  Counter(*inst);
  Counter(*inst);
  const uint64_t before = inst->memory_bytes();
  std::string old(reinterpret_cast<const char*>(inst->memory_data()), before);
  const uint64_t want = before + 5 * kWasmPageBytes;
  ASSERT_TRUE(inst->GrowMemory(want).ok());
  ASSERT_EQ(inst->memory_bytes(), want);
  EXPECT_EQ(std::memcmp(inst->memory_data(), old.data(), before), 0);
  const uint8_t* mem = inst->memory_data();
  EXPECT_TRUE(std::all_of(mem + before, mem + want, [](uint8_t b) { return b == 0; }));
  // The guest sees the grown memory (its grow() answers the old size in pages) and
  // keeps its state.
  EXPECT_EQ(Counter(*inst), 3u);
  Pattern p = GrowAndFill(*inst, 1, 9);
  EXPECT_EQ(p.addr, want);
  // Same size: nothing to do. Smaller, not whole pages, above the cap: refused, unchanged.
  const uint64_t now = inst->memory_bytes();
  EXPECT_TRUE(inst->GrowMemory(now).ok());
  EXPECT_EQ(inst->GrowMemory(now - kWasmPageBytes).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(inst->GrowMemory(now + 100).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(inst->GrowMemory(uint64_t{kCap + 1} * kWasmPageBytes).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(inst->memory_bytes(), now);
  EXPECT_EQ(Counter(*inst), 4u);
}

TEST_F(V8EngineTest, SnapshotFileRestoresInAFreshWorkerAndAnotherProcess) {
  auto m = CompileGuest("guest_stateful");
  auto inst = New(m);
  for (int i = 0; i < 3; ++i) Counter(*inst);
  Pattern pat = GrowAndFill(*inst, 8, 5);
  char dir[] = "/tmp/tern_v8_snapshot_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/counter.snap";
  ASSERT_TRUE(WriteSnapshotFile(path, *inst->TakeSnapshot()).ok());

  // Fresh worker on another thread, from the file.
  std::thread t([&] {
    auto w = SharedEngine()->NewWorker();
    ASSERT_TRUE(w.ok());
    Result<Snapshot> snap = ReadSnapshotFile(path);
    ASSERT_TRUE(snap.ok()) << snap.status();
    auto r = (*w)->Instantiate(m, Limits(), false);
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE((*r)->Restore(*snap).ok());
    EXPECT_EQ(Counter(**r), 4u);
    r->reset();
  });
  t.join();

  // Another process: this test binary, running only the child test below.
  std::string filter = "--gtest_filter=V8ChildProcessTest.RestoreFromFile";
  std::string self = "/proc/self/exe";
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back("TERN_TEST_SNAPSHOT=" + path);
  env_strings.push_back("TERN_TEST_EXPECT_COUNTER=4");
  env_strings.push_back("TERN_TEST_PATTERN=" + std::to_string(pat.addr) + "," +
                        std::to_string(pat.len) + "," + std::to_string(HashOf(*inst, pat)));
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  char* argv[] = {self.data(), filter.data(), nullptr};
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, envp.data()), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << "child status " << wstatus;
  unlink(path.c_str());
  rmdir(dir);
}

TEST(V8ChildProcessTest, RestoreFromFile) {
  const char* path = std::getenv("TERN_TEST_SNAPSHOT");
  if (path == nullptr) GTEST_SKIP() << "runs only as the child of SnapshotFileRestores...";
  auto m = CompileGuest("guest_stateful");
  auto w = SharedEngine()->NewWorker();
  ASSERT_TRUE(w.ok());
  Result<Snapshot> snap = ReadSnapshotFile(path);
  ASSERT_TRUE(snap.ok()) << snap.status();
  auto r = (*w)->Instantiate(m, Limits(), false);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->Restore(*snap).ok());
  EXPECT_EQ(Counter(**r),
            static_cast<uint32_t>(std::atoi(std::getenv("TERN_TEST_EXPECT_COUNTER"))));
  unsigned addr, len, hash;
  ASSERT_EQ(std::sscanf(std::getenv("TERN_TEST_PATTERN"), "%u,%u,%u", &addr, &len, &hash), 3);
  EXPECT_EQ(HashOf(**r, Pattern{addr, len, 0}), hash);
  std::printf("[ child ] pid %d restored the snapshot: counter and pattern carried on\n", getpid());
  r->reset();
}

// --- bad guests: each fails with the right code and message, and the engine keeps
// serving the other instances (their state intact).

class BadGuestTest : public V8EngineTest {
 protected:
  void SetUp() override {
    V8EngineTest::SetUp();
    survivor_ = New(CompileGuest("guest_stateful"));
    ASSERT_NE(survivor_, nullptr);
    EXPECT_EQ(Counter(*survivor_), 1u);
    EXPECT_EQ(Counter(*survivor_), 2u);
  }
  void TearDown() override {
    // The survivor in the same worker still works and kept its state.
    if (survivor_ != nullptr) {
      EXPECT_EQ(Counter(*survivor_), 3u);
    }
    survivor_.reset();
  }
  std::unique_ptr<Instance> survivor_;
};

TEST_F(BadGuestTest, InfiniteLoopHitsTheCpuLimit) {
  InstanceLimits l = Limits();
  l.cpu_ms = 100;
  auto inst = New(CompileGuest("guest_loop"), l);
  auto t0 = std::chrono::steady_clock::now();
  Status st = CallWith(*inst, "spin");
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("CPU-time limit of 100 ms"));
  EXPECT_GE(ms, 90);
  EXPECT_LT(ms, 3000);
  std::printf("[ info ] spin terminated after %.0f ms (limit 100 ms CPU)\n", ms);
  // A fresh instance of the same module in the same worker is not hit by a stale
  // termination.
  auto next = New(CompileGuest("guest_loop"), l);
  EXPECT_TRUE(CallWith(*next, "noop").ok());
}

TEST_F(BadGuestTest, UnboundedRecursionIsResourceExhausted) {
  auto inst = New(CompileGuest("guest_recurse"));
  Status st = CallWith(*inst, "recurse");
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("Maximum call stack size exceeded"));
}

TEST_F(BadGuestTest, OutOfBoundsStoreIsAborted) {
  auto inst = New(CompileGuest("guest_oob"));
  Status st = CallWith(*inst, "oob");
  EXPECT_EQ(st.code(), StatusCode::kInternal) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("memory access out of bounds"));
  auto inst2 = New(CompileGuest("guest_oob"));
  st = CallWith(*inst2, "trap");
  EXPECT_EQ(st.code(), StatusCode::kInternal) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("unreachable"));
}

TEST_F(BadGuestTest, AllocatingPastTheCapIsResourceExhausted) {
  constexpr uint32_t kSmallCap = 64;  // 4 MiB
  auto inst = New(CompileGuest("guest_oom", kSmallCap), Limits(kSmallCap));
  Status st = CallWith(*inst, "oom");
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("memory cap of 4 MiB reached"));
  EXPECT_LE(inst->memory_bytes(), uint64_t{kSmallCap} * kWasmPageBytes);
}

TEST_F(BadGuestTest, AllBadGuestsInOneWorkerInARow) {
  InstanceLimits l = Limits(64);
  l.cpu_ms = 50;
  for (int round = 0; round < 2; ++round) {
    auto loop = New(CompileGuest("guest_loop", 64), l);
    EXPECT_EQ(CallWith(*loop, "spin").code(), StatusCode::kDeadlineExceeded);
    auto rec = New(CompileGuest("guest_recurse", 64), l);
    EXPECT_EQ(CallWith(*rec, "recurse").code(), StatusCode::kResourceExhausted);
    auto oob = New(CompileGuest("guest_oob", 64), l);
    EXPECT_EQ(CallWith(*oob, "oob").code(), StatusCode::kInternal);
    auto oom = New(CompileGuest("guest_oom", 64), l);
    EXPECT_EQ(CallWith(*oom, "oom").code(), StatusCode::kResourceExhausted);
  }
}

TEST_F(V8EngineTest, ShortCallsUnderATightCpuLimitDoNotTripTheWatchdog) {
  InstanceLimits l = Limits();
  l.cpu_ms = 10;  // five watchdog periods
  auto inst = New(CompileGuest("guest_stateful"), l);
  for (int i = 0; i < 20000; ++i) {
    Status st = CallWith(*inst, "noop");
    ASSERT_TRUE(st.ok()) << i << ": " << st;
  }
}

TEST_F(V8EngineTest, InstanceLimitBelowModuleCapIsRefused) {
  auto m = CompileGuest("guest_stateful");
  Result<std::unique_ptr<Instance>> r = worker_->Instantiate(m, Limits(kCap / 2), true);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(V8EngineTest, TheCallFastPathDoesNotAllocate) {
  if (!testing::CanCountAllocations()) GTEST_SKIP() << "sanitizer build";
  auto inst = New(CompileGuest("guest_stateful"));
  FakeHost host("some request");
  host.reply.reserve(64);
  // Warm-up allocates inside V8, once: the generic JS-to-wasm wrapper is replaced by a
  // compiled one per signature, and hot functions tier up from Liftoff to TurboFan (in
  // the background; the calls that request it walk the stack). Once the code is
  // stable, a call allocates nothing.
  uint64_t allocations = 1;
  for (int round = 0; round < 50 && allocations != 0; ++round) {
    testing::StartCountingAllocations();
    for (int i = 0; i < 5000; ++i) {
      (void)inst->Call("noop", &host);
      (void)inst->Call("echo", &host);
    }
    allocations = testing::StopCountingAllocations();
    if (allocations != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(allocations, 0u);
  EXPECT_EQ(host.reply, "some request");
}

// --- performance (numbers printed; thresholds loose: the machine is shared)

TEST_F(V8EngineTest, FastPathPerformance) {
  auto m = CompileGuest("guest_stateful");
  auto inst = New(m);
  FakeHost host;
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(inst->Call("noop", &host).ok());
  constexpr int kCalls = 200000;
  double best_call_ns = 1e18;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i) (void)inst->Call("noop", &host);
    best_call_ns = std::min(
        best_call_ns,
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
            kCalls);
  }
  FakeHost echo_host("0123456789abcdef0123456789abcdef");
  auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) (void)inst->Call("echo", &echo_host);
  double echo_ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t1).count() /
      kCalls;

  constexpr int kInstances = 2000;
  double best_inst_us = 1e18, sum_us = 0;
  std::vector<double> samples;
  for (int i = 0; i < kInstances; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = worker_->Instantiate(m, Limits(), /*run_initialize=*/true);
    double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    samples.push_back(us);
    best_inst_us = std::min(best_inst_us, us);
    sum_us += us;
  }
  std::sort(samples.begin(), samples.end());
  std::printf("[ perf ] no-op call: %.0f ns (best of 3 x %d); echo 32 B: %.0f ns\n", best_call_ns,
              kCalls, echo_ns);
  std::printf(
      "[ perf ] instantiate from cached module (+_initialize): best %.1f us, median %.1f us, "
      "p99 %.1f us, mean %.1f us (%d)\n",
      best_inst_us, samples[samples.size() / 2], samples[samples.size() * 99 / 100],
      sum_us / kInstances, kInstances);
  EXPECT_LT(best_call_ns, 20000);
  EXPECT_LT(samples[samples.size() / 2], 2000);
}

TEST_F(V8EngineTest, RestorePerformance) {
  // Instantiate + restore a small state: what the agent does after a failed request.
  auto m = CompileGuest("guest_stateful");
  auto inst = New(m);
  Counter(*inst);
  Result<Snapshot> snap = inst->TakeSnapshot();
  ASSERT_TRUE(snap.ok());
  constexpr int kRestores = 500;
  double inst_us = 0, restore_us = 0;
  for (int i = 0; i < kRestores; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = worker_->Instantiate(m, Limits(), false);
    auto t1 = std::chrono::steady_clock::now();
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE((*r)->Restore(*snap).ok());
    auto t2 = std::chrono::steady_clock::now();
    inst_us += std::chrono::duration<double, std::micro>(t1 - t0).count();
    restore_us += std::chrono::duration<double, std::micro>(t2 - t1).count();
  }
  std::printf(
      "[ perf ] fresh instance (no _initialize): %.1f us + restore of %zu KiB: %.1f us (mean of "
      "%d)\n",
      inst_us / kRestores, snap->memory.size() / 1024, restore_us / kRestores, kRestores);
}

}  // namespace
}  // namespace tern::wasm
