// DirtyTracker on the linear memory of a real V8 instance: does V8's memory survive
// userfaultfd write-protect registration, and is the tracking exact?
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "wasm/dirty_tracker.h"
#include "wasm/engine.h"
#include "wasm/test_util.h"

namespace tern::wasm {
namespace {

using ::testing::Contains;
using testing::FakeHost;
using testing::LoadGuest;
using testing::ReadU32;
using testing::SharedEngine;
using testing::U32s;

class V8DirtyTest : public ::testing::TestWithParam<DirtyTracker::Kind> {
 protected:
  void SetUp() override {
    auto w = SharedEngine()->NewWorker();
    ASSERT_TRUE(w.ok()) << w.status();
    worker_ = std::move(*w);
    auto m = SharedEngine()->Compile(LoadGuest("guest_stateful"), 1024);
    ASSERT_TRUE(m.ok()) << m.status();
    module_ = *m;
    InstanceLimits l;
    l.max_memory_pages = 1024;
    auto i = worker_->Instantiate(module_, l, true);
    ASSERT_TRUE(i.ok()) << i.status();
    inst_ = std::move(*i);
  }
  void TearDown() override {
    tracker_.reset();
    inst_.reset();
  }

  Status Call(std::string_view handler, std::string request = "", std::string* reply = nullptr) {
    FakeHost host(std::move(request));
    Status st = inst_->Call(handler, &host);
    if (reply != nullptr) *reply = host.reply;
    return st;
  }

  // Makes the tracker; false (test skipped) when the kernel lacks uffd-wp.
  bool Track() {
    auto t =
        GetParam() == DirtyTracker::Kind::kUffdWriteProtect
            ? DirtyTracker::CreateUffd(inst_->memory_data(), inst_->memory_bytes(), kWasmPageBytes)
            : DirtyTracker::CreateShadow(inst_->memory_data(), inst_->memory_bytes(),
                                         kWasmPageBytes);
    if (!t.ok() && t.status().code() == StatusCode::kUnimplemented) return false;
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return false;
    tracker_ = std::move(*t);
    return true;
  }

  // The agent's use: keep `copy` equal to memory by copying only the dirty pages.
  void SyncCopy(std::string* copy, std::vector<uint32_t>* dirty_out = nullptr) {
    uint8_t* mem = inst_->memory_data();
    uint64_t bytes = inst_->memory_bytes();
    if (bytes != tracker_->bytes()) {
      ASSERT_TRUE(tracker_->Grow(bytes).ok());
    }
    copy->resize(bytes);
    Result<std::vector<uint32_t>> d = tracker_->Collect();
    ASSERT_TRUE(d.ok()) << d.status();
    for (uint32_t p : *d) {
      std::memcpy(copy->data() + size_t{p} * kWasmPageBytes, mem + size_t{p} * kWasmPageBytes,
                  kWasmPageBytes);
    }
    if (dirty_out != nullptr) *dirty_out = *d;
  }

  std::unique_ptr<Worker> worker_;
  std::shared_ptr<const Module> module_;
  std::unique_ptr<Instance> inst_;
  std::unique_ptr<DirtyTracker> tracker_;
};

TEST_P(V8DirtyTest, TracksGuestWritesExactly) {
  std::string reply;
  ASSERT_TRUE(Call("grow", U32s({40}), &reply).ok());
  const uint32_t base_page = ReadU32(reply);
  std::string copy(reinterpret_cast<const char*>(inst_->memory_data()), inst_->memory_bytes());
  if (!Track()) GTEST_SKIP() << "userfaultfd write-protect unavailable";
  const uint8_t* mem_before = inst_->memory_data();

  std::vector<uint32_t> dirty;
  for (int round = 0; round < 20; ++round) {
    uint32_t page = base_page + (round * 7) % 40;
    ASSERT_TRUE(Call("fill", U32s({page * kWasmPageBytes + 1000, 5000, uint32_t(round)})).ok());
    ASSERT_TRUE(Call("counter").ok());
    SyncCopy(&copy, &dirty);
    EXPECT_THAT(dirty, Contains(page));
    // Besides the filled page only the guest's statics/stack page(s) change.
    EXPECT_LE(dirty.size(), 4u) << ::testing::PrintToString(dirty);
    ASSERT_EQ(copy.size(), inst_->memory_bytes());
    ASSERT_EQ(std::memcmp(copy.data(), inst_->memory_data(), copy.size()), 0) << round;
  }
  EXPECT_EQ(inst_->memory_data(), mem_before);

  // Growth in place (V8 reserves the whole range up front): the tracker follows.
  ASSERT_TRUE(Call("grow", U32s({10}), &reply).ok());
  EXPECT_EQ(inst_->memory_data(), mem_before);
  uint32_t new_page = ReadU32(reply) + 3;
  ASSERT_TRUE(Call("fill", U32s({new_page * kWasmPageBytes, 100, 9})).ok());
  SyncCopy(&copy, &dirty);
  EXPECT_THAT(dirty, Contains(new_page));
  EXPECT_LE(dirty.size(), 4u) << "grown but untouched pages must not count: "
                              << ::testing::PrintToString(dirty);
  ASSERT_EQ(std::memcmp(copy.data(), inst_->memory_data(), copy.size()), 0);

  // The copy is a good snapshot: restore it into a fresh instance and carry on.
  Snapshot snap;
  snap.module_hash = module_->hash();
  snap.memory = copy;
  snap.stack_pointer = inst_->TakeSnapshot()->stack_pointer;
  InstanceLimits l;
  auto fresh = worker_->Instantiate(module_, l, false);
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->Restore(snap).ok());
  FakeHost host;
  ASSERT_TRUE((*fresh)->Call("counter", &host).ok());
  EXPECT_EQ(ReadU32(host.reply), 21u);
}

TEST_P(V8DirtyTest, TrapsStillWorkWhileTracked) {
  if (!Track()) GTEST_SKIP() << "userfaultfd write-protect unavailable";
  // An out-of-bounds access in another instance (guard-page SIGSEGV handled by V8's
  // trap handler) and a host-call bounds check in this one.
  auto oob_module = SharedEngine()->Compile(LoadGuest("guest_oob"), 1024);
  ASSERT_TRUE(oob_module.ok());
  InstanceLimits l;
  auto oob = worker_->Instantiate(*oob_module, l, true);
  ASSERT_TRUE(oob.ok());
  FakeHost h;
  EXPECT_EQ((*oob)->Call("oob", &h).code(), StatusCode::kInternal);
  oob->reset();
  ASSERT_TRUE(Call("counter").ok());
  Result<std::vector<uint32_t>> d = tracker_->Collect();
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->empty());
}

TEST_P(V8DirtyTest, CostPerRequest) {
  std::string reply;
  ASSERT_TRUE(Call("grow", U32s({1000}), &reply).ok());  // ~64 MiB
  std::string copy(reinterpret_cast<const char*>(inst_->memory_data()), inst_->memory_bytes());
  if (!Track()) GTEST_SKIP() << "userfaultfd write-protect unavailable";
  constexpr int kN = 50;
  std::vector<double> us;
  size_t dirty_pages = 0;
  for (int i = 0; i < kN; ++i) {
    ASSERT_TRUE(Call("counter").ok());
    std::vector<uint32_t> dirty;
    auto t0 = std::chrono::steady_clock::now();
    SyncCopy(&copy, &dirty);
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    dirty_pages += dirty.size();
  }
  std::sort(us.begin(), us.end());
  std::printf(
      "[ perf ] %s on V8 memory (%zu MiB): collect + copy of the dirty 64 KiB pages "
      "(%.1f per request): median %.0f us, min %.0f us\n",
      std::string(DirtyTrackerKindName(tracker_->kind())).c_str(), copy.size() >> 20,
      double(dirty_pages) / kN, us[kN / 2], us[0]);
}

INSTANTIATE_TEST_SUITE_P(Kinds, V8DirtyTest,
                         ::testing::Values(DirtyTracker::Kind::kUffdWriteProtect,
                                           DirtyTracker::Kind::kShadowCompare),
                         [](const auto& info) {
                           return info.param == DirtyTracker::Kind::kUffdWriteProtect ? "Uffd"
                                                                                      : "Shadow";
                         });

}  // namespace
}  // namespace tern::wasm
