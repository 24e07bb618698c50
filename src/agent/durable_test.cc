// Durable instances (manifest `durable`): the journal record format, and three real
// agents in this process over real TCP — one runs a durable counter, one keeps its
// journal, one restores it after the first is gone: every acknowledged increment is
// there, exactly; a request whose record the keeper could not take fails and is undone;
// a retry of the last acknowledged key after the restore is answered from the dedup
// table.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "agent/journal_record.h"
#include "agent/test_node.h"
#include "core/clock.h"
#include "core/manifest.h"
#include "storage/journal.h"
#include "testing/test_env.h"
#include "transport/frame_client.h"

namespace tern::agent {
namespace {

using tern::testing::ReadWasm;
using tern::testing::SharedEngine;
using tern::testing::SourcePath;

// ---- the record format

std::string Memory(size_t pages, uint8_t seed) {
  std::string m(pages * kMigrationPageBytes, '\0');
  for (size_t p = 0; p < pages; ++p) {
    if (p % 2 == 0) continue;  // every other page stays zero
    for (size_t i = 0; i < kMigrationPageBytes; ++i) {
      m[p * kMigrationPageBytes + i] = static_cast<char>((p * 7 + i + seed) & 0xff);
    }
  }
  return m;
}

std::string Record(uint64_t seq, bool full, const std::string& mem, std::vector<uint32_t> pages,
                   const DedupEntry* e, const std::vector<wasm::GlobalValue>& globals = {}) {
  std::string out;
  std::vector<const DedupEntry*> dedup;
  if (e != nullptr) dedup.push_back(e);
  AppendJournalRecord(seq, full, 66560, globals, mem.size(), dedup,
                      reinterpret_cast<const uint8_t*>(mem.data()), pages, PageCodec::kLz4, &out);
  return out;
}

TEST(JournalRecordTest, RoundTripsWithPagesStackPointerGlobalsAndDedupEntry) {
  const std::string mem = Memory(16, 3);  // 64 KiB: one wasm page
  DedupEntry e{42, StatusCode::kOk, "7"};
  const std::vector<wasm::GlobalValue> globals = {{0, wasm::ValType::kI32, 66560},
                                                  {2, wasm::ValType::kI64, 0xfedcba9876543210},
                                                  {5, wasm::ValType::kF64, 0x400921fb54442d18}};
  std::string bytes = Record(1, true, mem, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, nullptr) +
                      Record(2, false, mem, {3, 4}, &e, globals);
  std::vector<JournalRecordView> seen;
  std::string rebuilt(mem.size(), '\x55');
  JournalScan scan = ScanJournal(bytes, [&](const JournalRecordView& r) {
    seen.push_back(r);
    return DecodePageBatch(r.batch, 16, [&](uint32_t p, const char* b) {
             char* at = rebuilt.data() + p * kMigrationPageBytes;
             if (b == nullptr) std::memset(at, 0, kMigrationPageBytes);
             else std::memcpy(at, b, kMigrationPageBytes);
           })
        .status();
  });
  ASSERT_TRUE(scan.tail.ok()) << scan.tail;
  EXPECT_EQ(scan.records, 2u);
  EXPECT_EQ(scan.good_bytes, bytes.size());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[0].full);
  EXPECT_TRUE(seen[0].dedup.empty());
  EXPECT_FALSE(seen[0].has_globals);
  EXPECT_TRUE(seen[1].has_globals);
  EXPECT_EQ(seen[1].globals, globals);
  EXPECT_EQ(seen[1].seq, 2u);
  EXPECT_FALSE(seen[1].full);
  EXPECT_EQ(seen[1].stack_pointer, std::optional<uint32_t>(66560));
  EXPECT_EQ(seen[1].memory_bytes, mem.size());
  ASSERT_EQ(seen[1].dedup.size(), 1u);
  EXPECT_EQ(seen[1].dedup[0], e);
  EXPECT_EQ(rebuilt, mem);
  // The keeper reads the same header.
  Result<storage::RecordHeader> h = storage::ParseRecordHeader(Record(9, true, mem, {1}, nullptr));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->seq, 9u);
  EXPECT_TRUE(h->full());
}

TEST(JournalRecordTest, TornTailsAndDamageStopTheScanAtTheLastWholeRecord) {
  const std::string mem = Memory(16, 9);
  const std::string r1 = Record(1, true, mem, {0, 1, 2, 3}, nullptr);
  const std::string r2 = Record(2, false, mem, {5, 7}, nullptr);
  const std::string both = r1 + r2;
  // Every cut inside the second record: only the first is passed on.
  for (size_t cut = r1.size() + 1; cut < both.size(); cut += 7) {
    size_t n = 0;
    JournalScan scan = ScanJournal(std::string_view(both).substr(0, cut), [&](const JournalRecordView&) {
      ++n;
      return Status::Ok();
    });
    EXPECT_EQ(n, 1u) << cut;
    EXPECT_EQ(scan.good_bytes, r1.size());
    EXPECT_EQ(scan.tail.code(), StatusCode::kDataLoss) << cut;
  }
  // A flipped bit in the first record's pages: nothing at all is passed on.
  std::string bad = both;
  bad[r1.size() / 2] ^= 0x20;
  size_t n = 0;
  JournalScan scan = ScanJournal(bad, [&](const JournalRecordView&) {
    ++n;
    return Status::Ok();
  });
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(scan.good_bytes, 0u);
  EXPECT_NE(scan.tail.message().find("checksum"), std::string_view::npos) << scan.tail;
}

// ---- three agents

using Node = TestNode;

std::unique_ptr<Node> StartNode(const std::string& device, const std::string& datasets_dir,
                                int64_t journal_timeout_ns = 2'000'000'000) {
  AgentOptions o;
  o.device = device;
  o.workers = 2;
  o.datasets_dir = datasets_dir;
  o.journal_timeout_ns = journal_timeout_ns;
  return TestNode::Start(o);
}

Manifest DurableCounter(bool strict = false) {
  Result<Manifest> m = LoadManifest(SourcePath("examples/counter/manifest.yaml"));
  EXPECT_TRUE(m.ok()) << m.status();
  m->durable = true;
  m->durable_strict = strict;
  m->checkpoint_ms = 1000;
  m->replicas = 1;
  return *m;
}

InvokeResult Call(Agent* a, const std::string& handler, const std::string& payload = "",
                  uint64_t key = 0) {
  InvokeRequest r;
  r.service = "counter";
  r.handler = handler;
  r.payload = payload;
  r.idempotency_key = key;
  r.deadline_ns = MonoNanos() + 20'000'000'000;
  return a->InvokeSync(std::move(r));
}

InstanceStatus StatusOf(Agent* a, const std::string& id) {
  for (const InstanceStatus& i : a->GetStatus().instances) {
    if (i.id == id) return i;
  }
  return {};
}

class DurableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keeper_dir_ = tern::testing::TempDir("durable-keeper");
    cpu0_ = StartNode("cpu0", "");
    csd0_ = StartNode("csd0", keeper_dir_);
    cpu1_ = StartNode("cpu1", "");
    Result<ServiceStatus> s = cpu0_->agent->Deploy(DurableCounter(), ReadWasm("counter"));
    ASSERT_TRUE(s.ok()) << s.status();
    id_ = s->instances.at(0);
  }
  // What the controller's restore does: a new instance with the same id on `to`, then
  // the keeper's journal (its base checkpoint, a full record, and the records after it).
  Agent::ReplayReport RestoreOn(Node* to) {
    Result<ServiceStatus> d = to->agent->Deploy(DurableCounter(), ReadWasm("counter"), false);
    EXPECT_TRUE(d.ok()) << d.status();
    Result<std::string> id = to->agent->StartInstance("counter", id_);
    EXPECT_TRUE(id.ok()) << id.status();
    Result<std::string> records = csd0_->agent->journals()->Read(id_, 0);
    EXPECT_TRUE(records.ok()) << records.status();
    Result<Agent::ReplayReport> r = to->agent->ReplayJournal(id_, 0, records.value_or(""));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.value_or(Agent::ReplayReport{});
  }
  std::string keeper_dir_;
  std::unique_ptr<Node> cpu0_, csd0_, cpu1_;
  std::string id_;
};

TEST_F(DurableTest, EveryAcknowledgedIncrementSurvivesTheAgentAndRetriesAreAnsweredOnce) {
  Agent* a = cpu0_->agent.get();
  // No keeper yet: a write cannot be made durable, fails, and is undone.
  InvokeResult early = Call(a, "incr", "1", 900);
  ASSERT_FALSE(early.status.ok());
  EXPECT_EQ(early.status.code(), StatusCode::kUnavailable);
  EXPECT_NE(early.status.message().find("could not be made durable"), std::string_view::npos)
      << early.status;
  EXPECT_NE(early.status.message().find("no keeper"), std::string_view::npos) << early.status;
  EXPECT_EQ(Call(a, "get").reply, "0");
  EXPECT_FALSE(cpu0_->agent->SetKeeper(id_, "cpu0", cpu0_->tcp).ok()) << "its own device";
  ASSERT_TRUE(a->SetKeeper(id_, "csd0", csd0_->tcp).ok());

  constexpr int kN = 40;
  uint64_t base_seq = 0;
  for (int i = 1; i <= kN; ++i) {
    InvokeResult r = Call(a, "incr", "1", /*key=*/1000 + i);
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status;
    ASSERT_EQ(r.reply, std::to_string(i));
    if (i == 10) {
      // A base checkpoint, as the controller takes it: a full record (every page and the
      // dedup table); the keeper drops what came before it.
      Result<Agent::JournalCheckpointReport> ck = a->JournalCheckpoint(id_);
      ASSERT_TRUE(ck.ok()) << ck.status();
      base_seq = ck->seq;
      EXPECT_EQ(ck->keepers, std::vector<std::string>{"csd0"});
      EXPECT_TRUE(ck->failed.empty());
    }
  }
  const uint64_t last = StatusOf(a, id_).journal_seq;
  EXPECT_EQ(last, base_seq + (kN - 10));
  InstanceStatus st = StatusOf(a, id_);
  EXPECT_TRUE(st.durable);
  EXPECT_EQ(st.keepers, std::vector<std::string>{"csd0"});
  EXPECT_EQ(st.journal_degraded, static_cast<uint64_t>(kN)) << "one keeper: one copy";
  EXPECT_EQ(st.journal_full, 2u) << "the first record and the base checkpoint";
  EXPECT_EQ(st.journal_failures, 1u);  // the one before the keeper
  std::optional<storage::JournalInfo> info = csd0_->agent->journals()->Info(id_);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->full_seq, std::optional<uint64_t>(base_seq));
  EXPECT_EQ(info->last_seq, last);
  EXPECT_EQ(info->records, last - base_seq + 1) << "records before the base were not dropped";

  cpu0_->Stop();  // the instance's agent is gone, and its memory with it

  Agent::ReplayReport rep = RestoreOn(cpu1_.get());
  EXPECT_EQ(rep.records, last - base_seq + 1);
  EXPECT_EQ(rep.seq, last);
  EXPECT_EQ(rep.ignored_bytes, 0u);
  Agent* b = cpu1_->agent.get();
  EXPECT_EQ(Call(b, "get").reply, std::to_string(kN)) << "an acknowledged increment was lost";
  // The client that sent the last increment retries it (it never saw the reply): the
  // recorded answer, not a second increment.
  InvokeResult retry = Call(b, "incr", "1", 1000 + kN);
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_EQ(retry.reply, std::to_string(kN));
  EXPECT_EQ(Call(b, "get").reply, std::to_string(kN));
  // A key answered before the base checkpoint: from the table the full record carried.
  EXPECT_EQ(Call(b, "incr", "1", 1005).reply, "5");
  EXPECT_EQ(Call(b, "get").reply, std::to_string(kN));
  EXPECT_EQ(StatusOf(b, id_).deduplicated, 2u);

  // It goes on with a keeper; its first record carries every page.
  ASSERT_TRUE(b->SetKeeper(id_, "csd0", csd0_->tcp).ok());
  ASSERT_EQ(Call(b, "incr", "1", 2001).reply, std::to_string(kN + 1));
  EXPECT_EQ(StatusOf(b, id_).journal_full, 1u);
  EXPECT_EQ(csd0_->agent->journals()->Info(id_)->full_seq, std::optional<uint64_t>(last + 1));

  // The keeper dies: a write fails with the reason and is undone; reads go on.
  csd0_->Stop();
  InvokeResult down = Call(b, "incr", "1", 2002);
  ASSERT_FALSE(down.status.ok());
  EXPECT_EQ(down.status.code(), StatusCode::kUnavailable) << down.status;
  EXPECT_NE(down.status.message().find("could not be made durable"), std::string_view::npos)
      << down.status;
  EXPECT_NE(down.status.message().find("rolled back"), std::string_view::npos) << down.status;
  EXPECT_EQ(Call(b, "get").reply, std::to_string(kN + 1)) << "the failed increment counted";

  // The keeper comes back (a new process on the same disk, a new port): the journal
  // reads back, and the instance keeps serving durably.
  csd0_ = StartNode("csd0", keeper_dir_);
  ASSERT_TRUE(b->SetKeeper(id_, "csd0", csd0_->tcp).ok());
  InvokeResult again = Call(b, "incr", "1", 2002);  // the client's retry
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(again.reply, std::to_string(kN + 2));
  EXPECT_EQ(csd0_->agent->journals()->Info(id_)->last_seq, StatusOf(b, id_).journal_seq);

  // And what the keeper has restores exactly that, once more, on a third agent.
  cpu1_->Stop();
  auto cpu2 = StartNode("cpu2", "");
  std::swap(cpu1_, cpu2);
  rep = RestoreOn(cpu1_.get());
  EXPECT_EQ(Call(cpu1_->agent.get(), "get").reply, std::to_string(kN + 2));
  EXPECT_EQ(Call(cpu1_->agent.get(), "incr", "1", 1040).reply, "40");
  EXPECT_EQ(Call(cpu1_->agent.get(), "incr", "1", 2002).reply, std::to_string(kN + 2));
}

// A durable instance's reply left in guest memory (tern_reply_in_place; the faulty test
// guest's `inplace` handler), asked for over TCP, where it could go out from guest
// memory: it is journaled with its bytes, so the retry of its key after a restore on
// another agent gets them, although the guest rewrote its buffer meanwhile.
TEST_F(DurableTest, AnInPlaceReplyIsJournaledWithItsBytes) {
  Result<Manifest> m = LoadManifest(SourcePath("src/agent/testdata/faulty.yaml"));
  ASSERT_TRUE(m.ok()) << m.status();
  m->durable = true;
  m->checkpoint_ms = 1000;
  m->replicas = 1;
  Result<ServiceStatus> s = cpu0_->agent->Deploy(*m, ReadWasm("guest_faulty"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  ASSERT_TRUE(cpu0_->agent->SetKeeper(id, "csd0", csd0_->tcp).ok());
  const size_t colon = cpu0_->tcp.rfind(':');
  Result<std::unique_ptr<transport::FrameClient>> c = transport::FrameClient::Connect(
      cpu0_->tcp.substr(0, colon), static_cast<uint16_t>(std::stoi(cpu0_->tcp.substr(colon + 1))));
  ASSERT_TRUE(c.ok()) << c.status();
  auto pattern = [](size_t len, unsigned seed) {
    std::string p(len, '\0');
    for (size_t i = 0; i < len; ++i) p[i] = static_cast<char>(seed + i);
    return p;
  };
  for (unsigned seed : {7u, 8u}) {
    transport::Frame f;
    f.type = transport::FrameType::kInvoke;
    f.service = "faulty";
    f.handler = "inplace";
    f.payload = "60000 " + std::to_string(seed);
    f.idempotency_key = 700 + seed;
    Result<transport::Frame> r = (*c)->Call(f, std::chrono::seconds(20));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->payload == pattern(60000, seed)) << seed;
  }
  (*c).reset();
  cpu0_->Stop();
  Result<ServiceStatus> d = cpu1_->agent->Deploy(*m, ReadWasm("guest_faulty"), false);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(cpu1_->agent->StartInstance("faulty", id).ok());
  Result<std::string> records = csd0_->agent->journals()->Read(id, 0);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_TRUE(cpu1_->agent->ReplayJournal(id, 0, *records).ok());
  InvokeRequest retry;
  retry.service = "faulty";
  retry.handler = "inplace";
  retry.payload = "10 1";
  retry.idempotency_key = 707;
  InvokeResult r = cpu1_->agent->InvokeSync(std::move(retry));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.reply == pattern(60000, 7)) << "the journaled answer is not the reply sent ("
                                             << r.reply.size() << " bytes)";
  EXPECT_EQ(StatusOf(cpu1_->agent.get(), id).deduplicated, 1u);
}

TEST_F(DurableTest, LargeStateTrackedPagesRestoreByteForByte) {
  Agent* a = cpu0_->agent.get();
  ASSERT_TRUE(a->SetKeeper(id_, "csd0", csd0_->tcp).ok());
  // 6 MiB of state: above the size where the rollback point is kept by write tracking.
  ASSERT_TRUE(Call(a, "fill", "6144", 1).status.ok());
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Call(a, "touch", "8", 100 + i).status.ok()) << i;
  ASSERT_TRUE(Call(a, "incr", "3").status.ok());
  InvokeResult sum = Call(a, "check");
  ASSERT_TRUE(sum.status.ok()) << sum.status;
  const std::string value = Call(a, "get").reply;
  EXPECT_EQ(value, "23");  // each touch counts one
  InstanceStatus st = StatusOf(a, id_);
  if (!st.dirty_tracking) {
    std::fprintf(stderr, "note: no userfaultfd tracker here; the pages came from comparisons\n");
  }
  EXPECT_GE(st.journal_appends, 22u);
  cpu0_->Stop();
  Agent::ReplayReport rep = RestoreOn(cpu1_.get());
  // The journal starts with the full record of "fill" (the instance's first).
  EXPECT_EQ(rep.records, st.journal_appends);
  EXPECT_EQ(rep.seq, st.journal_seq);
  InvokeResult check = Call(cpu1_->agent.get(), "check");
  ASSERT_TRUE(check.status.ok()) << check.status;
  EXPECT_EQ(check.reply, sum.reply);
  EXPECT_EQ(Call(cpu1_->agent.get(), "get").reply, value);
}

TEST_F(DurableTest, AMigratedInstanceGoesOnAppendingWhereItsSourceStopped) {
  Agent* a = cpu0_->agent.get();
  ASSERT_TRUE(a->SetKeeper(id_, "csd0", csd0_->tcp).ok());
  for (int i = 1; i <= 10; ++i) ASSERT_EQ(Call(a, "incr", "1", 300 + i).reply, std::to_string(i));
  MigrateOptions o;
  o.to_tcp = cpu1_->tcp;
  o.to_device = "cpu1";
  Result<MigrationReport> m = a->Migrate(id_, o);
  ASSERT_TRUE(m.ok()) << m.status();
  Agent* b = cpu1_->agent.get();
  // No keeper to push: the journal's place came with the state.
  InstanceStatus st = StatusOf(b, id_);
  EXPECT_EQ(st.keepers, std::vector<std::string>{"csd0"});
  EXPECT_EQ(st.journal_seq, 10u);
  for (int i = 11; i <= 20; ++i) ASSERT_EQ(Call(b, "incr", "1", 300 + i).reply, std::to_string(i));
  EXPECT_EQ(StatusOf(b, id_).journal_full, 0u) << "the target sent deltas, no full record";
  EXPECT_EQ(csd0_->agent->journals()->Info(id_)->records, 20u);
  cpu1_->Stop();
  auto cpu2 = StartNode("cpu2", "");
  std::swap(cpu1_, cpu2);
  Agent::ReplayReport rep = RestoreOn(cpu1_.get());
  EXPECT_EQ(rep.seq, 20u);
  EXPECT_EQ(Call(cpu1_->agent.get(), "get").reply, "20");
  EXPECT_EQ(Call(cpu1_->agent.get(), "incr", "1", 305).reply, "5") << "a key from before the move";
}

TEST(DurableTimeoutTest, AKeeperThatDoesNotAnswerInTimeFailsTheRequestAndUndoesIt) {
  const std::string dir = tern::testing::TempDir("durable-slow");
  auto cpu0 = StartNode("cpu0", "", /*journal_timeout_ns=*/300'000'000);
  auto csd0 = StartNode("csd0", dir);
  Result<ServiceStatus> s = cpu0->agent->Deploy(DurableCounter(), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  Agent* a = cpu0->agent.get();
  ASSERT_TRUE(a->SetKeeper(id, "csd0", csd0->tcp).ok());
  ASSERT_EQ(Call(a, "incr", "5", 1).reply, "5");
  csd0->agent->journals()->SetSyncDelayForTest(1'000'000'000);  // a disk that stalls
  InvokeResult slow = Call(a, "incr", "1", 2);
  ASSERT_FALSE(slow.status.ok());
  EXPECT_EQ(slow.status.code(), StatusCode::kUnavailable);
  EXPECT_NE(slow.status.message().find("did not acknowledge"), std::string_view::npos) << slow.status;
  EXPECT_NE(slow.status.message().find("same idempotency key"), std::string_view::npos) << slow.status;
  EXPECT_EQ(Call(a, "get").reply, "5");
  csd0->agent->journals()->SetSyncDelayForTest(0);
  // The keeper did write it in the end (the client was told it may have).
  for (int i = 0; i < 300 && csd0->agent->journals()->stats().appends < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(csd0->agent->journals()->stats().appends, 2u);
  // The retry gets a new record number, and a full record: the keeper did not
  // acknowledge the last one, so what its journal holds is not known to the agent. The
  // journal restarts there; the slow record is not in it twice.
  InvokeResult retry = Call(a, "incr", "1", 2);
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_EQ(retry.reply, "6");
  std::optional<storage::JournalInfo> info = csd0->agent->journals()->Info(id);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->last_seq, 3u);
  EXPECT_EQ(info->full_seq, std::optional<uint64_t>(3));
  EXPECT_EQ(info->records, 1u);
  // Without a key the client cannot retry safely; the error says so instead.
  csd0->agent->journals()->SetSyncDelayForTest(1'000'000'000);
  InvokeResult keyless = Call(a, "incr", "1");
  ASSERT_FALSE(keyless.status.ok());
  EXPECT_NE(keyless.status.message().find("without an idempotency key"), std::string_view::npos)
      << keyless.status;
  csd0->agent->journals()->SetSyncDelayForTest(0);
  EXPECT_EQ(Call(a, "get").reply, "6");
}


// ---- two keepers: the journal on two devices, each reply waits for both

class TwoKeepersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      dirs_[i] = tern::testing::TempDir("durable-k" + std::to_string(i));
      csd_[i] = StartNode("csd" + std::to_string(i), dirs_[i]);
    }
    cpu0_ = StartNode("cpu0", "", JournalTimeoutNs());
    cpu1_ = StartNode("cpu1", "");
    Result<ServiceStatus> s = cpu0_->agent->Deploy(DurableCounter(Strict()), ReadWasm("counter"));
    ASSERT_TRUE(s.ok()) << s.status();
    id_ = s->instances.at(0);
    ASSERT_TRUE(cpu0_->agent->SetKeepers(id_, {{"csd0", csd_[0]->tcp}, {"csd1", csd_[1]->tcp}}).ok());
  }
  virtual int64_t JournalTimeoutNs() const { return 2'000'000'000; }
  virtual bool Strict() const { return false; }
  storage::JournalStore* Journals(int i) { return csd_[i]->agent->journals(); }
  uint64_t LastSeq(int i) {
    std::optional<storage::JournalInfo> info = Journals(i)->Info(id_);
    return info ? info->last_seq : 0;
  }
  // What the controller's restore does: a new instance on `to`, then the journal of the
  // keeper (of `from`) whose last record has the highest number. Returns that keeper.
  int RestoreOn(Node* to, std::vector<int> from) {
    Result<ServiceStatus> d =
        to->agent->Deploy(DurableCounter(Strict()), ReadWasm("counter"), false);
    EXPECT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(to->agent->StartInstance("counter", id_).ok());
    int best = from.at(0);
    for (int i : from) best = LastSeq(i) > LastSeq(best) ? i : best;
    Result<std::string> records = Journals(best)->Read(id_, 0);
    EXPECT_TRUE(records.ok()) << records.status();
    Result<Agent::ReplayReport> r = to->agent->ReplayJournal(id_, 0, records.value_or(""));
    EXPECT_TRUE(r.ok()) << r.status();
    return best;
  }
  std::string dirs_[3];
  std::unique_ptr<Node> csd_[3], cpu0_, cpu1_;
  std::string id_;
};

// Every acknowledged record is on both keepers: the instance's device and either keeper
// can die together, and the other keeper's journal restores every increment.
TEST_F(TwoKeepersTest, EveryAcknowledgedRecordIsOnBothAndEitherRestoresIt) {
  Agent* a = cpu0_->agent.get();
  constexpr int kN = 20;
  for (int i = 1; i <= kN; ++i) ASSERT_EQ(Call(a, "incr", "1", 100 + i).reply, std::to_string(i));
  InstanceStatus st = StatusOf(a, id_);
  EXPECT_EQ(st.keepers, (std::vector<std::string>{"csd0", "csd1"}));
  EXPECT_TRUE(st.keepers_out.empty());
  EXPECT_EQ(st.journal_degraded, 0u);
  EXPECT_EQ(st.journal_full, 2u) << "one full record per keeper, the first";
  EXPECT_EQ(LastSeq(0), st.journal_seq);
  EXPECT_EQ(LastSeq(1), st.journal_seq);
  EXPECT_EQ(Journals(0)->Info(id_)->records, static_cast<uint64_t>(kN));
  EXPECT_EQ(Journals(1)->Info(id_)->records, static_cast<uint64_t>(kN));
  cpu0_->Stop();
  csd_[0]->Stop();
  EXPECT_EQ(RestoreOn(cpu1_.get(), {1}), 1);
  Agent* b = cpu1_->agent.get();
  EXPECT_EQ(Call(b, "get").reply, std::to_string(kN)) << "an acknowledged increment was lost";
  EXPECT_EQ(Call(b, "incr", "1", 100 + kN).reply, std::to_string(kN)) << "the retry ran twice";
  EXPECT_EQ(Call(b, "get").reply, std::to_string(kN));
}

// A keeper dies: the next request is acknowledged by the other alone (degraded, in the
// status and the log), the dead one is no longer waited for; keepers assigned again
// (as the controller does: a replacement, then a base checkpoint) both get a full
// record, and from then on the replacement's journal alone restores everything.
TEST_F(TwoKeepersTest, AKeeperThatDiesDropsOutAndAReplacementStartsWithAFullRecord) {
  Agent* a = cpu0_->agent.get();
  for (int i = 1; i <= 5; ++i) ASSERT_EQ(Call(a, "incr", "1", 100 + i).reply, std::to_string(i));
  csd_[1]->Stop();
  ASSERT_EQ(Call(a, "incr", "1", 106).reply, "6");
  ASSERT_EQ(Call(a, "incr", "1", 107).reply, "7");
  InstanceStatus st = StatusOf(a, id_);
  EXPECT_EQ(st.keepers, std::vector<std::string>{"csd0"});
  EXPECT_EQ(st.keepers_out, std::vector<std::string>{"csd1"});
  EXPECT_EQ(st.journal_degraded, 2u);
  EXPECT_EQ(st.journal_failures, 0u) << "a request failed although one keeper had it";
  EXPECT_EQ(LastSeq(0), st.journal_seq);

  ASSERT_TRUE(a->SetKeepers(id_, {{"csd0", csd_[0]->tcp}, {"csd2", csd_[2]->tcp}}).ok());
  Result<Agent::JournalCheckpointReport> ck = a->JournalCheckpoint(id_);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->keepers, (std::vector<std::string>{"csd0", "csd2"}));
  EXPECT_TRUE(ck->failed.empty());
  EXPECT_EQ(Journals(2)->Info(id_)->full_seq, std::optional<uint64_t>(ck->seq));
  EXPECT_EQ(Journals(0)->Info(id_)->full_seq, std::optional<uint64_t>(ck->seq));
  for (int i = 8; i <= 10; ++i) ASSERT_EQ(Call(a, "incr", "1", 100 + i).reply, std::to_string(i));
  st = StatusOf(a, id_);
  EXPECT_TRUE(st.keepers_out.empty());
  EXPECT_EQ(st.journal_degraded, 2u) << "acknowledged with two copies again";
  EXPECT_EQ(LastSeq(2), st.journal_seq);

  // The instance's device and the first keeper die; the dropped keeper is back (its
  // journal stops at #5): the restore takes the replacement's, the highest.
  cpu0_->Stop();
  csd_[0]->Stop();
  csd_[1] = StartNode("csd1", dirs_[1]);
  EXPECT_EQ(LastSeq(1), 5u);
  EXPECT_EQ(RestoreOn(cpu1_.get(), {1, 2}), 2);
  Agent* b = cpu1_->agent.get();
  EXPECT_EQ(Call(b, "get").reply, "10");
  EXPECT_EQ(Call(b, "incr", "1", 107).reply, "7") << "a degraded-mode key ran twice";
  EXPECT_EQ(Call(b, "incr", "1", 103).reply, "3") << "a key from before the base ran twice";
  EXPECT_EQ(Call(b, "get").reply, "10");
}

// A keeper that does not answer within journal_timeout drops out: the request is
// acknowledged by the other (after the timeout), the next ones do not wait for it. Both
// timing out fails the request and rolls it back; the record's number is not reused,
// and both keepers' journals restart with a full record, so neither holds the undone
// request as history.
class TwoKeepersTimeoutTest : public TwoKeepersTest {
 protected:
  int64_t JournalTimeoutNs() const override { return 500'000'000; }
};

TEST_F(TwoKeepersTimeoutTest, AKeeperTimeoutDropsItAndTwoTimeoutsFailTheRequest) {
  Agent* a = cpu0_->agent.get();
  ASSERT_EQ(Call(a, "incr", "1", 1).reply, "1");
  Journals(1)->SetSyncDelayForTest(1'500'000'000);  // a disk that stalls
  InvokeResult slow = Call(a, "incr", "1", 2);
  ASSERT_TRUE(slow.status.ok()) << slow.status;
  EXPECT_EQ(slow.reply, "2");
  EXPECT_EQ(StatusOf(a, id_).keepers_out, std::vector<std::string>{"csd1"});
  ASSERT_EQ(Call(a, "incr", "1", 3).reply, "3");
  Journals(1)->SetSyncDelayForTest(0);
  for (int i = 0; i < 300 && Journals(1)->stats().appends < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(LastSeq(1), 2u) << "the late record lands, the next one never went there";
  EXPECT_EQ(LastSeq(0), 3u);

  // Both keepers again; both stall.
  ASSERT_TRUE(a->SetKeepers(id_, {{"csd0", csd_[0]->tcp}, {"csd1", csd_[1]->tcp}}).ok());
  Journals(0)->SetSyncDelayForTest(1'500'000'000);
  Journals(1)->SetSyncDelayForTest(1'500'000'000);
  InvokeResult both = Call(a, "incr", "1", 4);
  ASSERT_FALSE(both.status.ok());
  EXPECT_EQ(both.status.code(), StatusCode::kUnavailable);
  EXPECT_NE(both.status.message().find("keeper csd0 did not acknowledge"), std::string_view::npos)
      << both.status;
  EXPECT_NE(both.status.message().find("keeper csd1 did not acknowledge"), std::string_view::npos)
      << both.status;
  EXPECT_NE(both.status.message().find("rolled back"), std::string_view::npos) << both.status;
  Journals(0)->SetSyncDelayForTest(0);
  Journals(1)->SetSyncDelayForTest(0);
  EXPECT_EQ(Call(a, "get").reply, "3");
  for (int i = 0; i < 300 && (LastSeq(0) < 4 || LastSeq(1) < 4); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(LastSeq(0), 4u) << "the undone record landed late";
  ASSERT_EQ(Call(a, "incr", "1", 4).reply, "4");  // the client's retry
  EXPECT_EQ(StatusOf(a, id_).journal_seq, 5u);
  EXPECT_EQ(Journals(0)->Info(id_)->full_seq, std::optional<uint64_t>(5));
  EXPECT_EQ(Journals(1)->Info(id_)->full_seq, std::optional<uint64_t>(5));
  cpu0_->Stop();
  RestoreOn(cpu1_.get(), {0, 1});
  Agent* b = cpu1_->agent.get();
  EXPECT_EQ(Call(b, "get").reply, "4");
  EXPECT_EQ(Call(b, "incr", "1", 4).reply, "4") << "the retried request ran twice";
  EXPECT_EQ(Call(b, "get").reply, "4");
}

// Before the first reply durable on one keeper alone, the controller is told that the
// other drops out, as of that record (here a recorder stands in for the registrar's
// report). When it cannot be told, nothing is acknowledged with one copy: the request
// fails and is undone, the keeper does not drop out, and the keeper that took the undone
// record gets a full one next, so that its journal never holds the undone request as
// history.
TEST_F(TwoKeepersTimeoutTest, AKeeperDropsOutOnlyOnceTheControllerKnows) {
  Agent* a = cpu0_->agent.get();
  Mutex mu;
  std::vector<Agent::KeeperDrop> told;
  std::atomic<bool> reachable{false};
  a->SetKeeperDropReporter([&](std::vector<Agent::KeeperDrop> drops, int64_t timeout_ns,
                               std::function<void(Status)> done) {
    EXPECT_EQ(timeout_ns, JournalTimeoutNs());
    if (!reachable) return done(UnavailableError("connection refused"));
    {
      MutexLock l(&mu);
      for (Agent::KeeperDrop& d : drops) told.push_back(std::move(d));
    }
    // As the registrar answers: from another thread.
    std::thread([done] { done(Status::Ok()); }).detach();
  });
  ASSERT_EQ(Call(a, "incr", "1", 1).reply, "1");
  Journals(1)->SetSyncDelayForTest(1'500'000'000);  // a disk that stalls
  InvokeResult failed = Call(a, "incr", "1", 2);
  ASSERT_FALSE(failed.status.ok());
  EXPECT_EQ(failed.status.code(), StatusCode::kUnavailable);
  EXPECT_NE(failed.status.message().find("the controller could not be told that csd1 drops out "
                                         "(connection refused)"),
            std::string_view::npos)
      << failed.status;
  EXPECT_NE(failed.status.message().find("rolled back"), std::string_view::npos) << failed.status;
  EXPECT_EQ(Call(a, "get").reply, "1");
  InstanceStatus st = StatusOf(a, id_);
  EXPECT_EQ(st.keepers, (std::vector<std::string>{"csd0", "csd1"}));
  EXPECT_TRUE(st.keepers_out.empty());
  EXPECT_EQ(st.journal_degraded, 0u);

  reachable = true;
  InvokeResult retry = Call(a, "incr", "1", 2);  // csd1 still stalls
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_EQ(retry.reply, "2");
  st = StatusOf(a, id_);
  {
    MutexLock l(&mu);
    ASSERT_EQ(told.size(), 1u) << "told before the degraded reply, once";
    EXPECT_EQ(told[0].instance, id_);
    EXPECT_EQ(told[0].keeper, "csd1");
    EXPECT_EQ(told[0].seq, st.journal_seq) << "as of the record of that reply";
    EXPECT_EQ(told[0].kept_by, std::vector<std::string>{"csd0"});
    EXPECT_NE(told[0].why.find("did not acknowledge"), std::string::npos) << told[0].why;
  }
  EXPECT_EQ(st.keepers_out, std::vector<std::string>{"csd1"});
  EXPECT_EQ(st.journal_degraded, 1u);
  EXPECT_EQ(Journals(0)->Info(id_)->full_seq, std::optional<uint64_t>(st.journal_seq))
      << "csd0 held the undone record: the next one to it is full";
  ASSERT_EQ(Call(a, "incr", "1", 3).reply, "3");
  {
    MutexLock l(&mu);
    EXPECT_EQ(told.size(), 1u) << "a keeper that dropped out is not reported again";
  }
  a->SetKeeperDropReporter(nullptr);
  Journals(1)->SetSyncDelayForTest(0);
  cpu0_->Stop();
  RestoreOn(cpu1_.get(), {0});
  Agent* b = cpu1_->agent.get();
  EXPECT_EQ(Call(b, "get").reply, "3");
  EXPECT_EQ(Call(b, "incr", "1", 2).reply, "2") << "the retried request ran twice";
}

// `durable: strict`: a keeper that dies fails the request (rolled back, `unavailable`)
// instead of being left behind; nothing is acknowledged with one copy. The controller
// is told, so that it assigns the keepers again, and until it has, writes fail at once;
// when it cannot be told, the keeper stays and the next request tries it again. Once
// the keepers are assigned anew, writes succeed and the new journal restores them.
class StrictKeepersTest : public TwoKeepersTest {
 protected:
  int64_t JournalTimeoutNs() const override { return 500'000'000; }
  bool Strict() const override { return true; }
};

TEST_F(StrictKeepersTest, AFailedKeeperFailsTheRequestInsteadOfDroppingOut) {
  Agent* a = cpu0_->agent.get();
  std::atomic<int> asked{0};
  std::atomic<bool> reachable{false};
  a->SetKeeperDropReporter(
      [&](std::vector<Agent::KeeperDrop> drops, int64_t, std::function<void(Status)> done) {
        ++asked;
        EXPECT_EQ(drops.size(), 1u);
        if (!drops.empty()) {
          EXPECT_EQ(drops[0].keeper, "csd1");
        }
        done(reachable ? Status::Ok() : UnavailableError("connection refused"));
      });
  ASSERT_EQ(Call(a, "incr", "1", 1).reply, "1");
  csd_[1]->Stop();
  auto expect_failed = [&](uint64_t key, std::string_view says) {
    InvokeResult failed = Call(a, "incr", "1", key);
    ASSERT_FALSE(failed.status.ok());
    EXPECT_EQ(failed.status.code(), StatusCode::kUnavailable);
    EXPECT_NE(failed.status.message().find(says), std::string_view::npos) << failed.status;
    EXPECT_NE(failed.status.message().find("rolled back"), std::string_view::npos)
        << failed.status;
  };
  // The controller cannot be told: csd1 stays a keeper, and is tried again.
  expect_failed(2, "the controller could not be told: connection refused");
  EXPECT_EQ(asked.load(), 1);
  EXPECT_TRUE(StatusOf(a, id_).keepers_out.empty());
  reachable = true;
  expect_failed(2, "the record is on csd0 alone, and counter is `durable: strict`, so it is "
                   "not acknowledged with fewer copies; the controller assigns");
  EXPECT_EQ(asked.load(), 2);
  // Out until the keepers are assigned again: the next write fails without a record.
  const uint64_t seq = StatusOf(a, id_).journal_seq;
  expect_failed(3, "csd1 dropped out of its journal, and counter is `durable: strict`");
  EXPECT_EQ(asked.load(), 2);
  EXPECT_EQ(Call(a, "get").reply, "1");
  InstanceStatus st = StatusOf(a, id_);
  EXPECT_EQ(st.journal_seq, seq) << "no record is sent while a keeper is out";
  EXPECT_EQ(st.keepers_out, std::vector<std::string>{"csd1"});
  EXPECT_EQ(st.journal_degraded, 0u) << "acknowledged with one copy";
  EXPECT_EQ(st.journal_failures, 3u);

  ASSERT_TRUE(a->SetKeepers(id_, {{"csd0", csd_[0]->tcp}, {"csd2", csd_[2]->tcp}}).ok());
  ASSERT_TRUE(a->JournalCheckpoint(id_).ok());
  ASSERT_EQ(Call(a, "incr", "1", 2).reply, "2");  // the client's retry
  EXPECT_EQ(StatusOf(a, id_).journal_degraded, 0u);
  a->SetKeeperDropReporter(nullptr);
  cpu0_->Stop();
  csd_[0]->Stop();
  EXPECT_EQ(RestoreOn(cpu1_.get(), {2}), 2);
  Agent* b = cpu1_->agent.get();
  EXPECT_EQ(Call(b, "get").reply, "2");
  EXPECT_EQ(Call(b, "incr", "1", 2).reply, "2") << "the retried request ran twice";
}

}  // namespace
}  // namespace tern::agent
