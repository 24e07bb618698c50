// Live migration between two real agents in this process, over real TCP: the page
// wire format, pre-copy and stop-and-copy with state checked byte for byte, the dedup
// table (exactly-once across a migration), zero lost increments under concurrent load
// across repeated migrations back and forth, forwarding of requests that reach the old
// agent, the target failing before the cut-over, and bad input on the migration port.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <thread>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "agent/memory_reserve.h"
#include "agent/migration_slots.h"
#include "agent/migration_wire.h"
#include "agent/test_node.h"
#include "agent/worker_gate.h"
#include "core/bytes.h"
#include "core/clock.h"
#include "core/crc32c.h"
#include "core/ids.h"
#include "core/manifest.h"
#include "testing/test_env.h"
#include "transport/frame.h"
#include "transport/frame_client.h"
#include "transport/http.h"
#include <nlohmann/json.hpp>
#include "transport/socket.h"

namespace tern::agent {
namespace {

using tern::testing::ReadWasm;
using tern::testing::SharedEngine;
using tern::testing::SourcePath;

// ---- the wire format

std::string Pages(size_t n, uint8_t seed) {
  std::string m(n * kMigrationPageBytes, '\0');
  for (size_t p = 0; p < n; ++p) {
    if (p % 3 == 0) continue;  // every third page stays zero
    for (size_t i = 0; i < kMigrationPageBytes; ++i) {
      m[p * kMigrationPageBytes + i] = static_cast<char>((p * 31 + i / 64 + seed) & 0xff);
    }
  }
  return m;
}

// Decodes a page batch into `out` (whole pages; zero pages cleared).
Result<PageBatchStats> DecodeInto(std::string_view batch, std::string* out) {
  return DecodePageBatch(batch, out->size() / kMigrationPageBytes, [&](uint32_t p, const char* b) {
    char* to = out->data() + size_t{p} * kMigrationPageBytes;
    if (b == nullptr) {
      std::memset(to, 0, kMigrationPageBytes);
    } else {
      std::memcpy(to, b, kMigrationPageBytes);
    }
  });
}

TEST(MigrationWireTest, PageBatchRoundTripsRawAndLz4WithZeroPagesAsIndicesOnly) {
  const std::string mem = Pages(12, 7);
  std::vector<uint32_t> idx = {0, 1, 2, 5, 6, 9, 11};
  for (PageCodec codec : {PageCodec::kRaw, PageCodec::kLz4}) {
    std::string batch =
        EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, codec);
    // Pages 0, 6 and 9 are zero: 4 data pages travel, and LZ4 squeezes these.
    if (codec == PageCodec::kRaw) {
      EXPECT_GE(batch.size(), 4 * kMigrationPageBytes);
      EXPECT_LT(batch.size(), 5 * kMigrationPageBytes);
    } else {
      EXPECT_LT(batch.size(), 2 * kMigrationPageBytes) << "LZ4 did not compress";
    }
    std::string out(12 * kMigrationPageBytes, '\x55');
    Result<PageBatchStats> st = DecodeInto(batch, &out);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->zero_pages, 3u);
    EXPECT_EQ(st->data_pages, 4u);
    for (uint32_t p : idx) {
      EXPECT_EQ(out.substr(p * kMigrationPageBytes, kMigrationPageBytes),
                mem.substr(p * kMigrationPageBytes, kMigrationPageBytes))
          << "page " << p << " codec " << PageCodecName(codec);
    }
    EXPECT_EQ(out[3 * kMigrationPageBytes], '\x55');  // not in the batch: untouched
  }
}

// The source's worker assembles a raw batch where it copies the pages (room for the head
// first) and LZ4 compresses pages already sorted: both decode to what EncodePageBatch's
// batch of the same pages decodes to, byte for byte the same batch when raw.
TEST(MigrationWireTest, BatchesAssembledInPlaceEqualEncodedOnes) {
  const std::string mem = Pages(12, 3);
  const std::vector<uint32_t> idx = {1, 2, 3, 4, 6, 8, 10};
  std::vector<uint32_t> zero, data;
  std::string gathered;
  for (uint32_t p : idx) {
    const std::string page = mem.substr(p * kMigrationPageBytes, kMigrationPageBytes);
    if (page == std::string(kMigrationPageBytes, '\0')) {
      zero.push_back(p);
    } else {
      data.push_back(p);
      gathered += page;
    }
  }
  ASSERT_EQ(zero.size(), 2u);  // every third page is zero: 3 and 6
  const std::string want = EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx,
                                           PageCodec::kRaw);
  std::string in_place(5, 'x');  // a prefix before the batch (the frame's memory size)
  in_place.append(PageBatchHeadBytes(idx.size()), '?');
  in_place += gathered;
  std::string with_crc = in_place;
  FinishRawPageBatch(&in_place, 5, zero, data);
  EXPECT_EQ(in_place.substr(0, 5), "xxxxx");
  EXPECT_EQ(in_place.substr(5), want);
  // The worker's checksum of the pages as it copied them, combined with the head's.
  FinishRawPageBatch(&with_crc, 5, zero, data, Crc32c(gathered.data(), gathered.size()));
  EXPECT_EQ(with_crc, in_place);
  std::string lz4 = "pfx";
  AppendSplitPages(gathered.data(), zero, data, PageCodec::kLz4, &lz4);
  ASSERT_EQ(lz4.substr(0, 3), "pfx");
  EXPECT_LT(lz4.size(), want.size()) << "LZ4 did not compress";
  std::string out(12 * kMigrationPageBytes, '\x55');
  Result<PageBatchStats> st = DecodeInto(std::string_view(lz4).substr(3), &out);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->zero_pages, 2u);
  for (uint32_t p : idx) {
    EXPECT_EQ(out.substr(p * kMigrationPageBytes, kMigrationPageBytes),
              mem.substr(p * kMigrationPageBytes, kMigrationPageBytes))
        << "page " << p;
  }
  EXPECT_EQ(out[0], '\x55');  // not in the batch: untouched
}

TEST(MigrationWireTest, DamagedBatchesAreRefusedBeforeAnyPageIsApplied) {
  const std::string mem = Pages(4, 1);
  std::string batch = EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), {1, 2},
                                      PageCodec::kLz4);
  int applied = 0;
  auto count = [&](uint32_t, const char*) { ++applied; };
  std::string flipped = batch;
  flipped[flipped.size() - 3] ^= 0x10;
  EXPECT_EQ(DecodePageBatch(flipped, 4, count).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodePageBatch(batch.substr(0, batch.size() - 1), 4, count).status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(DecodePageBatch("garbage", 4, count).status().code(), StatusCode::kInvalidArgument);
  Result<PageBatchStats> beyond = DecodePageBatch(batch, 2, count);  // page 2 ≥ 2 pages
  EXPECT_EQ(beyond.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(beyond.status().message().find("beyond the memory"), std::string_view::npos);
  EXPECT_EQ(applied, 0);
  EXPECT_TRUE(DecodePageBatch(batch, 4, count).ok());
  EXPECT_EQ(applied, 2);
}

// A plain `apply(page, bytes)` as the appliers' ChecksummingApply: the checksum, then it.
ChecksummingApply Checksumming(std::function<void(uint32_t, const char*)> apply) {
  return [apply = std::move(apply)](uint32_t page, const char* bytes, uint32_t crc) {
    if (bytes != nullptr) crc = Crc32c(bytes, kMigrationPageBytes, crc);
    apply(page, bytes);
    return crc;
  };
}

// The target's form (ApplyPageBatchChecking) applies what DecodePageBatch applies; it
// checks a raw batch's checksum page by page while applying, so damage anywhere under
// the checksum (indices, any page) is still kDataLoss, while a bad header, a truncated
// batch, an index beyond the memory or a damaged LZ4 batch are refused before any page
// is applied.
TEST(MigrationWireTest, CheckingWhileApplyingStillCatchesEveryDamagedByte) {
  const std::string mem = Pages(9, 4);
  const std::vector<uint32_t> idx = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  const std::string batch =
      EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, PageCodec::kRaw);
  int applied = 0;
  std::string out(9 * kMigrationPageBytes, '\x55');
  auto into_out = [&](uint32_t p, const char* b) {
    ++applied;
    char* to = out.data() + size_t{p} * kMigrationPageBytes;
    if (b == nullptr) {
      std::memset(to, 0, kMigrationPageBytes);
    } else {
      std::memcpy(to, b, kMigrationPageBytes);
    }
  };
  Result<PageBatchStats> st = ApplyPageBatchChecking(batch, 9, Checksumming(into_out));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->zero_pages, 3u);
  EXPECT_EQ(st->data_pages, 6u);
  EXPECT_EQ(out, mem);
  // One flipped bit in the index list, the first data page, a middle one, the last byte.
  const size_t section = batch.size() - 6 * kMigrationPageBytes;
  for (size_t at : {size_t{24 + 4 * 4}, section, section + 3 * kMigrationPageBytes + 77,
                    batch.size() - 1}) {
    std::string flipped = batch;
    flipped[at] ^= 0x01;  // the index 4 becomes 5: still within the memory
    Result<PageBatchStats> bad = ApplyPageBatchChecking(flipped, 9, Checksumming(into_out));
    EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss) << "flipped byte " << at;
  }
  applied = 0;
  auto count = [&](uint32_t, const char*) { ++applied; };
  EXPECT_EQ(ApplyPageBatchChecking(batch.substr(0, batch.size() - 1), 9, Checksumming(count)).status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(ApplyPageBatchChecking("garbage", 9, Checksumming(count)).status().code(),
            StatusCode::kInvalidArgument);
  std::string beyond = batch;
  beyond[24 + 4 * 8] = 9;  // the last index (page 8) becomes page 9 of a 9-page memory
  EXPECT_EQ(ApplyPageBatchChecking(beyond, 9, Checksumming(count)).status().code(),
            StatusCode::kInvalidArgument);
  std::string lz4 =
      EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, PageCodec::kLz4);
  lz4[lz4.size() - 3] ^= 0x10;
  EXPECT_EQ(ApplyPageBatchChecking(lz4, 9, Checksumming(count)).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(applied, 0);
}

// The checksumming form (the target's: Crc32cCopyPage takes each page's checksum as it
// copies it) applies the same pages, over a buffer and over shared memory, and a flipped
// byte in a page or an index is still kDataLoss.
TEST(MigrationWireTest, ApplyingThatChecksumsAsItCopiesCatchesDamageToo) {
  const std::string mem = Pages(9, 4);
  const std::vector<uint32_t> idx = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  const std::string batch =
      EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, PageCodec::kRaw);
  alignas(64) static char out[9 * kMigrationPageBytes];
  auto copy = [&](uint32_t p, const char* b, uint32_t crc) -> uint32_t {
    char* to = out + size_t{p} * kMigrationPageBytes;
    if (b == nullptr) {
      std::memset(to, 0, kMigrationPageBytes);
      return crc;
    }
    return Crc32cCopyPage(b, to, nullptr, crc);
  };
  for (bool shared : {false, true}) {
    std::memset(out, 0x55, sizeof(out));
    Result<PageBatchStats> st =
        shared ? ApplySharedPageBatch(batch.data(), batch.size(), 9, ChecksummingApply(copy))
               : ApplyPageBatchChecking(batch, 9, ChecksummingApply(copy));
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->data_pages, 6u);
    EXPECT_EQ(std::string(out, sizeof(out)), mem) << shared;
    const size_t section = batch.size() - 6 * kMigrationPageBytes;
    for (size_t at : {size_t{24 + 4 * 4}, section + 2 * kMigrationPageBytes + 3000}) {
      std::string flipped = batch;
      flipped[at] ^= 0x01;
      Result<PageBatchStats> bad =
          shared ? ApplySharedPageBatch(flipped.data(), flipped.size(), 9, ChecksummingApply(copy))
                 : ApplyPageBatchChecking(flipped, 9, ChecksummingApply(copy));
      EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss) << "flipped byte " << at << " " << shared;
    }
  }
}

TEST(MigrationWireTest, CommitStateRoundTripsAndDetectsDamage) {
  CommitState c;
  c.memory_bytes = 3 << 16;
  c.stack_pointer = 66560;
  c.requests = 42;
  c.keepers = {{"csd0", "127.0.0.1:7400", /*full=*/false, /*out=*/false},
               {"csd1", "127.0.0.2:7400", /*full=*/true, /*out=*/true}};
  c.journal_seq = 77;
  c.dedup = {{7, StatusCode::kOk, "1"}, {9, StatusCode::kInvalidArgument, "bad amount"},
             {11, StatusCode::kOk, std::string("\0\1binary", 8)}};
  c.globals = {{0, wasm::ValType::kI32, 66560},
               {1, wasm::ValType::kI32, 3},
               {2, wasm::ValType::kI64, 0xfedcba9876543210},
               {3, wasm::ValType::kF64, 0x3ff3000000000000}};
  std::string enc = EncodeCommitState(c);
  Result<CommitState> back = DecodeCommitState(enc);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, c);
  enc[20] ^= 1;
  EXPECT_EQ(DecodeCommitState(enc).status().code(), StatusCode::kDataLoss);
  EXPECT_FALSE(DecodeCommitState(enc.substr(0, 10)).ok());

  // Version 3 (a source from before globals were carried): the same bytes without the
  // globals. It decodes with none; the target then refuses it for a module that has
  // mutable globals besides the stack pointer (the engine's RestoreGlobals).
  auto reseal = [](std::string body) {
    const uint32_t crc = Crc32c(body.data(), body.size());
    body.append(reinterpret_cast<const char*>(&crc), 4);
    return body;
  };
  CommitState old = c;
  old.globals.clear();
  std::string v4 = EncodeCommitState(old);
  std::string v3 = v4.substr(0, v4.size() - 8);  // less the global count and the CRC
  v3[4] = 3;
  Result<CommitState> from_v3 = DecodeCommitState(reseal(v3));
  ASSERT_TRUE(from_v3.ok()) << from_v3.status();
  EXPECT_EQ(*from_v3, old);
  v3[4] = 2;
  Result<CommitState> from_v2 = DecodeCommitState(reseal(v3));
  EXPECT_EQ(from_v2.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(from_v2.status().message().find("version 2"), std::string_view::npos)
      << from_v2.status();
  // A damaged global entry (a v128 type) under a valid CRC.
  std::string bad = EncodeCommitState(c);
  bad = bad.substr(0, bad.size() - 4);
  bad[bad.size() - 4 * 16 + 4] = '\x7b';
  EXPECT_EQ(DecodeCommitState(reseal(bad)).status().code(), StatusCode::kDataLoss);
}

// ---- two agents

using Node = TestNode;

std::unique_ptr<Node> StartNode(const std::string& device, int workers = 2,
                                size_t max_queue = 1024, uint64_t memory_reserve_bytes = 0,
                                bool shm = true) {
  AgentOptions o;
  o.device = device;
  o.workers = workers;
  o.max_queue_per_instance = max_queue;
  o.memory_reserve_bytes = memory_reserve_bytes;
  // Every node has a shared-memory socket (as `tern agent` does), so migrations between
  // them take shared memory unless a test says otherwise.
  return TestNode::Start(
      o, shm ? tern::testing::TempDir("migshm-" + device) + "/shm.sock" : std::string());
}

// A frame client connected to an agent's TCP frame address ("host:port").
Result<std::unique_ptr<transport::FrameClient>> ConnectFrames(const std::string& tcp) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(tcp, &host, &port));
  return transport::FrameClient::Connect(host, port, std::chrono::seconds(2));
}

Manifest CounterManifest(uint32_t replicas) {
  Result<Manifest> m = LoadManifest(SourcePath("examples/counter/manifest.yaml"));
  EXPECT_TRUE(m.ok()) << m.status();
  m->replicas = replicas;
  return *m;
}

InvokeResult Call(Agent* a, const std::string& handler, const std::string& payload = "",
                  uint64_t key = 0, const std::string& instance = "") {
  InvokeRequest r;
  r.service = "counter";
  r.handler = handler;
  r.payload = payload;
  r.idempotency_key = key;
  r.instance = instance;
  r.deadline_ns = MonoNanos() + 20'000'000'000;
  return a->InvokeSync(std::move(r));
}

bool Runs(Agent* a, const std::string& id) {
  for (const InstanceStatus& i : a->GetStatus().instances) {
    if (i.id == id) return true;
  }
  return false;
}

InstanceStatus StatusOf(Agent* a, const std::string& id) {
  for (const InstanceStatus& i : a->GetStatus().instances) {
    if (i.id == id) return i;
  }
  return {};
}

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = StartNode("src");
    b_ = StartNode("dst");
    Result<ServiceStatus> s = a_->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
    ASSERT_TRUE(s.ok()) << s.status();
    id_ = s->instances.at(0);
  }
  MigrateOptions To(const Node& n) {
    MigrateOptions o;
    o.to_tcp = n.tcp;
    o.to_device = n.agent->options().device;
    return o;
  }
  std::unique_ptr<Node> a_, b_;
  std::string id_;
};

TEST_F(MigrationTest, PrecopyMovesStateDedupTableAndIdentity) {
  ASSERT_EQ(Call(a_->agent.get(), "incr", "5", /*key=*/1001).reply, "5");
  // 8 MiB of state: tracked exactly by userfaultfd where the kernel has it.
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "8192").status.ok());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Call(a_->agent.get(), "touch", "16").status.ok());
  InvokeResult sum = Call(a_->agent.get(), "check");
  ASSERT_TRUE(sum.status.ok()) << sum.status;

  // The target does not have the service: the migration deploys it there.
  Result<MigrationReport> r = a_->agent->Migrate(id_, To(*b_));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mode, "precopy");
  EXPECT_GE(r->rounds.size(), 1u);
  EXPECT_GE(r->memory_bytes, 8u << 20);
  // The fill area is random: it does not shrink (same host: through shared memory).
  EXPECT_EQ(r->transport, "shm");
  EXPECT_GT(r->bytes_sent + r->shm_bytes, 8u << 20);
  EXPECT_GT(r->downtime_ns, 0);
  EXPECT_LE(r->downtime_ns, r->total_ns);

  EXPECT_FALSE(Runs(a_->agent.get(), id_));
  ASSERT_TRUE(Runs(b_->agent.get(), id_));
  InvokeResult check = Call(b_->agent.get(), "check");
  ASSERT_TRUE(check.status.ok()) << check.status;
  EXPECT_EQ(check.reply, sum.reply) << "the fill area changed on the way";
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "15");  // 5 + 10 touches
  // A retry of an answered request (same key) gets the old answer, not a second run.
  InvokeResult retry = Call(b_->agent.get(), "incr", "5", 1001);
  ASSERT_TRUE(retry.status.ok()) << retry.status;
  EXPECT_EQ(retry.reply, "5");
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "15");
  EXPECT_EQ(StatusOf(b_->agent.get(), id_).deduplicated, 1u);
  // The old agent forwards what still reaches it, by instance or by service.
  EXPECT_EQ(Call(a_->agent.get(), "incr", "1", 0, id_).reply, "16");
  EXPECT_EQ(Call(a_->agent.get(), "get").reply, "16");
  EXPECT_EQ(a_->agent->MovedInstances().at(id_), "dst");
  // A caller routing by a (stale) location table: its frame carries an epoch. Right
  // after the move it is forwarded rather than bounced.
  Result<std::unique_ptr<transport::FrameClient>> c = ConnectFrames(a_->tcp);
  ASSERT_TRUE(c.ok()) << c.status();
  transport::Frame f;
  f.service = "counter";
  f.handler = "get";
  f.epoch = 7;
  Result<transport::Frame> got = (*c)->Call(f, std::chrono::seconds(5));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->type, transport::FrameType::kReply);
  EXPECT_EQ(got->payload, "16");
}

// A connection that kept calling the old agent: the route its worker cached there must
// not outlive the move, so the next request on the same connection is forwarded to the
// target, as is one that routes by a location table (an epoch). (A stale route would
// still be forwarded by HoldOrForward, since the slot is gone: this checks the path as
// a whole; RoutingChangesReachTheNextRequestOnTheConnection checks the cache itself.)
TEST_F(MigrationTest, TheNextRequestOnAConnectionAfterTheMoveIsForwarded) {
  Result<std::unique_ptr<transport::FrameClient>> c = ConnectFrames(a_->tcp);
  ASSERT_TRUE(c.ok()) << c.status();
  auto call = [&](const std::string& handler, const std::string& payload, uint64_t epoch) {
    transport::Frame f;
    f.service = "counter";
    f.handler = handler;
    f.payload = payload;
    f.epoch = epoch;
    Result<transport::Frame> got = (*c)->Call(f, std::chrono::seconds(5));
    EXPECT_TRUE(got.ok()) << handler << ": " << got.status();
    return got.ok() ? got->payload : std::string("<failed>");
  };
  for (int i = 1; i <= 3; ++i) ASSERT_EQ(call("incr", "1", 0), std::to_string(i));
  ASSERT_EQ(call("get", "", 7), "3");
  ASSERT_EQ(call("get", "", 7), "3");
  Result<MigrationReport> r = a_->agent->Migrate(id_, To(*b_));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(Runs(a_->agent.get(), id_));
  EXPECT_EQ(call("incr", "1", 0), "4");
  EXPECT_EQ(call("get", "", 7), "4");
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "4");
  EXPECT_GE(StatusOf(b_->agent.get(), id_).requests, 3u);
}

// The target builds the rollback point of a stateful instance while the pages arrive
// (no copy at the commit): a request that traps there right after the move must roll
// back to exactly the state that arrived, heap included.
TEST(MigrationRollbackTest, TheTargetsRollbackPointIsTheStateThatArrived) {
  std::unique_ptr<Node> a = StartNode("src"), b = StartNode("dst");
  Result<Manifest> m = LoadManifest(SourcePath("src/agent/testdata/faulty.yaml"));
  ASSERT_TRUE(m.ok()) << m.status();
  m->replicas = 1;
  Result<ServiceStatus> s = a->agent->Deploy(*m, ReadWasm("guest_faulty"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  auto call = [&](Agent* at, const std::string& handler) {
    InvokeRequest r;
    r.service = "faulty";
    r.handler = handler;
    r.deadline_ns = MonoNanos() + 20'000'000'000;
    return at->InvokeSync(std::move(r));
  };
  for (int i = 1; i <= 5; ++i) ASSERT_EQ(call(a->agent.get(), "incr").reply, std::to_string(i));
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  Result<MigrationReport> r = a->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  InvokeResult bad = call(b->agent.get(), "incr_then_trap");
  EXPECT_FALSE(bad.status.ok());
  EXPECT_NE(bad.status.message().find("rolled back"), std::string_view::npos) << bad.status;
  InvokeResult get = call(b->agent.get(), "get");  // checks the heap blob, too
  ASSERT_TRUE(get.status.ok()) << get.status;
  EXPECT_EQ(get.reply, "5");
  EXPECT_EQ(call(b->agent.get(), "incr").reply, "6");
  EXPECT_EQ(StatusOf(b->agent.get(), id).rollbacks, 1u);
}

TEST_F(MigrationTest, StopAndCopySendsEverythingWhileFrozen) {
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "2048").status.ok());
  ASSERT_TRUE(Call(a_->agent.get(), "incr", "3").status.ok());
  MigrateOptions o = To(*b_);
  o.precopy = false;
  Result<MigrationReport> r = a_->agent->Migrate(id_, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mode, "stop-and-copy");
  EXPECT_TRUE(r->rounds.empty());
  EXPECT_EQ(uint64_t{r->final_pages} * kMigrationPageBytes, r->memory_bytes);
  // Same host: every page went through the slots, chunk by chunk while frozen; the
  // connection carried the steps and the commit.
  EXPECT_EQ(r->transport, "shm");
  EXPECT_GE(r->shm_bytes, 2u << 20);
  EXPECT_LT(r->bytes_sent, 256u << 10);
  EXPECT_TRUE(Call(b_->agent.get(), "check").status.ok());
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "3");
}

TEST_F(MigrationTest, StopAndCopyOfAMemoryLargerThanOneFrame) {
  // 66 MiB: more than a frame's payload (transport::kMaxPayloadBytes) and more than the
  // chunks in flight hold: the frozen pages are copied and sent chunk by chunk.
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "67584").status.ok());
  ASSERT_TRUE(Call(a_->agent.get(), "touch", "8").status.ok());
  const std::string sum = Call(a_->agent.get(), "check").reply;
  MigrateOptions o = To(*b_);
  o.precopy = false;
  o.transport = "tcp";
  Result<MigrationReport> r = a_->agent->Migrate(id_, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->memory_bytes, uint64_t{transport::kMaxPayloadBytes});
  EXPECT_GE(r->bytes_sent, 64u << 20);  // the pages, in batches over the connection
  EXPECT_EQ(uint64_t{r->final_pages} * kMigrationPageBytes, r->memory_bytes);
  InvokeResult check = Call(b_->agent.get(), "check");
  ASSERT_TRUE(check.status.ok()) << check.status;
  EXPECT_EQ(check.reply, sum);
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "1");
}

TEST_F(MigrationTest, NoIncrementLostOrDoubledUnderLoadAcrossMigrationsBackAndForth) {
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "6144").status.ok());  // 6 MiB
  ASSERT_TRUE(b_->agent->Deploy(CounterManifest(0), ReadWasm("counter")).ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acked{0}, retries{0};
  std::atomic<uint64_t> next_key{1};
  Node* nodes[2] = {a_.get(), b_.get()};
  std::atomic<int> home{0};  // where callers send (they may lag behind: forwarding)
  std::atomic<bool> moved{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&, c] {
      while (!stop.load()) {
        const uint64_t key = next_key.fetch_add(1);
        // Retry the same key until it is answered: at most once executed.
        const int64_t give_up = MonoNanos() + 10'000'000'000;
        for (;;) {
          // Client 2 calls the agent the instance is NOT at (forwarded there), once it
          // has moved at least once.
          const int h = home.load();
          Node* n = nodes[(h + (c == 2 && moved.load() ? 1 : 0)) % 2];
          InvokeResult r = Call(n->agent.get(), "touch", "4", key);
          if (r.status.ok()) break;
          retries.fetch_add(1);
          if (MonoNanos() > give_up) {
            ADD_FAILURE() << "key " << key << " never answered: " << r.status;
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        acked.fetch_add(1);
      }
    });
  }
  int from = 0;
  for (int m = 0; m < 6; ++m) {
    // Let some load run between migrations.
    const uint64_t before = acked.load();
    const int64_t until = MonoNanos() + 5'000'000'000;
    while (acked.load() < before + 50 && MonoNanos() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    Result<MigrationReport> r = nodes[from]->agent->Migrate(id_, To(*nodes[1 - from]));
    if (!r.ok()) {
      ADD_FAILURE() << "migration " << m << ": " << r.status();
      break;
    }
    from = 1 - from;
    home.store(from);
    moved.store(true);
  }
  stop.store(true);
  for (std::thread& t : clients) t.join();
  InvokeResult got = Call(nodes[from]->agent.get(), "get");
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.reply, std::to_string(acked.load()))
      << "acknowledged " << acked.load() << " increments, " << retries.load() << " retries";
  EXPECT_GT(acked.load(), 100u);
  EXPECT_TRUE(Call(nodes[from]->agent.get(), "check").status.ok());
}

TEST_F(MigrationTest, TargetDeathBeforeCutOverLeavesTheInstanceServingAtTheSource) {
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "4096").status.ok());
  ASSERT_TRUE(Call(a_->agent.get(), "incr", "9").status.ok());
  const std::string sum = Call(a_->agent.get(), "check").reply;
  MigrateOptions o = To(*b_);
  o.step_hook = [&](const std::string& step) {
    if (step == "freeze") b_->Stop();  // the target dies between the rounds and the freeze
    return Status::Ok();
  };
  Result<MigrationReport> r = a_->agent->Migrate(id_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("keeps serving here"), std::string_view::npos) << r.status();
  ASSERT_TRUE(Runs(a_->agent.get(), id_));
  EXPECT_EQ(Call(a_->agent.get(), "incr", "1").reply, "10");
  EXPECT_EQ(Call(a_->agent.get(), "check").reply, sum);
}

TEST_F(MigrationTest, FailureAtCommitThawsAndRunsTheHeldRequests) {
  // Requests that arrive while frozen are held; when the commit fails they run here.
  ASSERT_TRUE(Call(a_->agent.get(), "incr", "1").status.ok());
  MigrateOptions o = To(*b_);
  std::vector<std::thread> late;
  std::atomic<int> ok{0};
  o.step_hook = [&](const std::string& step) -> Status {
    if (step != "commit") return Status::Ok();
    for (int i = 0; i < 4; ++i) {
      late.emplace_back([&] {
        if (Call(a_->agent.get(), "incr", "1").status.ok()) ok.fetch_add(1);
      });
    }
    // Give them time to be queued behind the freeze.
    const int64_t until = MonoNanos() + 200'000'000;
    while (MonoNanos() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return UnavailableError("injected: the target vanished at the commit");
  };
  Result<MigrationReport> r = a_->agent->Migrate(id_, o);
  ASSERT_FALSE(r.ok());
  for (std::thread& t : late) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(Call(a_->agent.get(), "get").reply, "5");
  EXPECT_FALSE(Runs(b_->agent.get(), id_));
  // And a second attempt succeeds.
  ASSERT_TRUE(a_->agent->Migrate(id_, To(*b_)).ok());
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "5");
}

TEST_F(MigrationTest, RefusesBadTargetsClearly) {
  MigrateOptions self = To(*a_);
  EXPECT_EQ(a_->agent->Migrate(id_, self).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a_->agent->Migrate("nope-1", To(*b_)).status().code(), StatusCode::kNotFound);
  Result<uint16_t> port = transport::PickFreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  MigrateOptions dead;
  dead.to_tcp = "127.0.0.1:" + std::to_string(*port);
  Result<MigrationReport> r = a_->agent->Migrate(id_, dead);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  // The same id already running at the target.
  ASSERT_TRUE(b_->agent->Deploy(CounterManifest(0), ReadWasm("counter")).ok());
  ASSERT_TRUE(b_->agent->StartInstance("counter", id_).ok());
  Result<MigrationReport> dup = a_->agent->Migrate(id_, To(*b_));
  EXPECT_EQ(dup.status().code(), StatusCode::kAlreadyExists) << dup.status();
  EXPECT_TRUE(Runs(a_->agent.get(), id_));
  EXPECT_TRUE(Call(a_->agent.get(), "incr", "1", 0, id_).status.ok());
}

TEST_F(MigrationTest, AdminApiMigratesAndReportsErrorsAsJson) {
  ASSERT_TRUE(Call(a_->agent.get(), "incr", "4").status.ok());
  Result<std::unique_ptr<transport::HttpClient>> http =
      transport::HttpClient::Connect("127.0.0.1", a_->server->admin_port());
  ASSERT_TRUE(http.ok()) << http.status();
  auto post = [&](const std::string& path, const std::string& body) {
    Result<transport::HttpClientResponse> r =
        (*http)->Request("POST", path, body, "application/json");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : transport::HttpClientResponse{};
  };
  transport::HttpClientResponse bad = post("/v1/instances/" + id_ + "/migrate", "{\"to\": 1}");
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_NE(bad.body.find("to_tcp"), std::string::npos) << bad.body;
  transport::HttpClientResponse mode =
      post("/v1/instances/" + id_ + "/migrate",
           nlohmann::json{{"to_tcp", b_->tcp}, {"mode", "teleport"}}.dump());
  EXPECT_EQ(mode.status, 400) << mode.body;
  transport::HttpClientResponse missing =
      post("/v1/instances/nope-9/migrate", nlohmann::json{{"to_tcp", b_->tcp}}.dump());
  EXPECT_EQ(missing.status, 404) << missing.body;
  transport::HttpClientResponse ok = post(
      "/v1/instances/" + id_ + "/migrate",
      nlohmann::json{{"to_tcp", b_->tcp}, {"to_device", "dst"}, {"codec", "lz4"}}.dump());
  ASSERT_EQ(ok.status, 200) << ok.body;
  nlohmann::json j = nlohmann::json::parse(ok.body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << ok.body;
  EXPECT_EQ(j["instance"], id_);
  EXPECT_EQ(j["to_device"], "dst");
  EXPECT_EQ(j["codec"], "lz4");
  EXPECT_GE(j["downtime_us"].get<int64_t>(), 0);
  EXPECT_LT(j["bytes_sent"].get<uint64_t>(), j["memory_bytes"].get<uint64_t>())
      << "zero pages and LZ4 should have shrunk a fresh counter's memory";
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "4");
}

TEST_F(MigrationTest, GarbageOnTheMigrationPortClosesThatConnectionOnly) {
  Result<std::string> addr = b_->agent->MigrationAddress();
  ASSERT_TRUE(addr.ok()) << addr.status();
  std::string host;
  uint16_t port = 0;
  ASSERT_TRUE(ParseHostPort(*addr, &host, &port).ok());
  {
    Result<transport::UniqueFd> fd = transport::ConnectTcp(host, port, std::chrono::seconds(2));
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(transport::WriteAll(fd->get(), std::string(200, 'x'), MonoNanos() + 2'000'000'000).ok());
    char buf[512];
    Result<size_t> n = transport::ReadSome(fd->get(), buf, sizeof(buf), MonoNanos() + 5'000'000'000);
    ASSERT_TRUE(n.ok()) << n.status();  // an error frame, then the close
  }
  {
    Result<std::unique_ptr<transport::FrameClient>> c =
        transport::FrameClient::Connect(host, port, std::chrono::seconds(2));
    ASSERT_TRUE(c.ok());
    transport::Frame f;
    f.service = "$migrate";
    f.handler = "begin";
    f.payload = "{not json";
    Result<transport::Frame> r = (*c)->Call(f, std::chrono::seconds(5));
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
    f.handler = "pages";
    f.payload = "12345678";
    r = (*c)->Call(f, std::chrono::seconds(5));
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status();
  }
  // The migration itself still works.
  ASSERT_TRUE(a_->agent->Migrate(id_, To(*b_)).ok());
  EXPECT_TRUE(Runs(b_->agent.get(), id_));
}

// The target writes a raw batch's pages into the incoming instance while it checks the
// batch's checksum: a batch damaged in transit is refused (kDataLoss) and the incoming
// instance it went into is dropped — a commit after it finds no 'begin', and the
// instance never runs there — so no damaged byte is ever served. A real migration
// afterwards arrives whole.
TEST_F(MigrationTest, ADamagedBatchDropsTheIncomingInstanceItWasWrittenInto) {
  Manifest none = CounterManifest(0);
  Result<ServiceStatus> dep = b_->agent->Deploy(none, ReadWasm("counter"));
  ASSERT_TRUE(dep.ok()) << dep.status();
  Result<std::string> addr = b_->agent->MigrationAddress();
  ASSERT_TRUE(addr.ok()) << addr.status();
  Result<std::unique_ptr<transport::FrameClient>> c = ConnectFrames(*addr);
  ASSERT_TRUE(c.ok()) << c.status();
  auto step = [&](const char* handler, std::string payload) {
    transport::Frame f;
    f.service = "$migrate";
    f.handler = handler;
    f.payload = std::move(payload);
    return (*c)->Call(f, std::chrono::seconds(10));
  };
  const uint64_t bytes = 1 << 20;
  nlohmann::json begin = {{"instance", "counter-damaged"},
                          {"service", "counter"},
                          {"module_hash", dep->module_hash},
                          {"memory_bytes", bytes}};
  Result<transport::Frame> r = step("begin", begin.dump());
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string mem = Pages(16, 9);
  std::vector<uint32_t> idx(16);
  for (uint32_t p = 0; p < 16; ++p) idx[p] = p;
  std::string pages(reinterpret_cast<const char*>(&bytes), 8);
  pages += EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, PageCodec::kRaw);
  pages[pages.size() - 5000] ^= 0x01;  // in the last data page but one
  r = step("pages", pages);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status();
  r = step("commit", std::string(4, '\0'));
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status();
  EXPECT_FALSE(Runs(b_->agent.get(), "counter-damaged"));

  ASSERT_TRUE(Call(a_->agent.get(), "fill", "2048").status.ok());
  InvokeResult sum = Call(a_->agent.get(), "check");
  ASSERT_TRUE(sum.status.ok()) << sum.status;
  ASSERT_TRUE(a_->agent->Migrate(id_, To(*b_)).ok());
  InvokeResult check = Call(b_->agent.get(), "check");
  ASSERT_TRUE(check.status.ok()) << check.status;
  EXPECT_EQ(check.reply, sum.reply);
}

// ---- same-host migration through shared memory (migration_slots.h)

TEST(MigrationWireTest, SharedBatchesApplyAsFramedOnesAndBadOnesAreRefusedFirst) {
  const std::string mem = Pages(12, 5);
  const std::vector<uint32_t> idx = {0, 1, 2, 4, 7, 11};
  const std::string batch =
      EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, PageCodec::kRaw);
  std::string framed(12 * kMigrationPageBytes, '\x55'), shared = framed;
  auto into = [](std::string* out) {
    return [out](uint32_t p, const char* b) {
      char* to = out->data() + size_t{p} * kMigrationPageBytes;
      if (b == nullptr) {
        std::memset(to, 0, kMigrationPageBytes);
      } else {
        std::memcpy(to, b, kMigrationPageBytes);
      }
    };
  };
  ASSERT_TRUE(ApplyPageBatchChecking(batch, 12, Checksumming(into(&framed))).ok());
  Result<PageBatchStats> st = ApplySharedPageBatch(batch.data(), batch.size(), 12, Checksumming(into(&shared)));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->zero_pages + st->data_pages, idx.size());
  EXPECT_EQ(shared, framed);
  // An index past the memory, a length the header does not say, an LZ4 batch: refused
  // before any page is applied.
  int applied = 0;
  auto count = [&](uint32_t, const char*) { ++applied; };
  EXPECT_EQ(ApplySharedPageBatch(batch.data(), batch.size(), 11, Checksumming(count)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplySharedPageBatch(batch.data(), batch.size() - 1, 12, Checksumming(count)).status().code(),
            StatusCode::kDataLoss);
  EXPECT_FALSE(ApplySharedPageBatch(batch.data(), 20, 12, Checksumming(count)).ok());
  const std::string lz4 =
      EncodePageBatch(reinterpret_cast<const uint8_t*>(mem.data()), idx, PageCodec::kLz4);
  EXPECT_EQ(ApplySharedPageBatch(lz4.data(), lz4.size(), 12, Checksumming(count)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(applied, 0);
  std::string damaged = batch;
  damaged[damaged.size() - 100] ^= 0x10;
  EXPECT_EQ(ApplySharedPageBatch(damaged.data(), damaged.size(), 12, Checksumming(count)).status().code(),
            StatusCode::kDataLoss);
}

// Two agents of one host (the same `host`, each with a shared-memory socket): the pages go
// through the target's slots, under load, back and forth, and every increment is counted
// once; then over TCP when told so.
TEST_F(MigrationTest, SameHostMigrationGoesThroughSharedMemoryUnderLoad) {
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "8192").status.ok());  // 8 MiB
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acked{0}, next_key{1};
  Node* nodes[2] = {a_.get(), b_.get()};
  std::atomic<int> home{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 2; ++c) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        const uint64_t key = next_key.fetch_add(1);
        const int64_t give_up = MonoNanos() + 10'000'000'000;
        for (;;) {  // the same key until answered: at most once executed
          InvokeResult r = Call(nodes[home.load()]->agent.get(), "touch", "4", key);
          if (r.status.ok()) break;
          if (MonoNanos() > give_up) {
            ADD_FAILURE() << "key " << key << " never answered: " << r.status;
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        acked.fetch_add(1);
      }
    });
  }
  int from = 0;
  for (int m = 0; m < 4; ++m) {
    const uint64_t before = acked.load();
    const int64_t until = MonoNanos() + 5'000'000'000;
    while (acked.load() < before + 30 && MonoNanos() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    MigrateOptions o = To(*nodes[1 - from]);
    o.transport = m < 3 ? "shm" : "tcp";
    Result<MigrationReport> r = nodes[from]->agent->Migrate(id_, o);
    if (!r.ok()) {
      ADD_FAILURE() << "migration " << m << ": " << r.status();
      break;
    }
    if (m < 3) {
      EXPECT_EQ(r->transport, "shm");
      EXPECT_TRUE(r->transport_note.empty()) << r->transport_note;
      // Every page went through the slots; the connection carried frames of 16 bytes
      // and the commit.
      EXPECT_GE(r->shm_bytes, 8u << 20);
      EXPECT_LT(r->bytes_sent, r->shm_bytes / 4);
    } else {
      EXPECT_EQ(r->transport, "tcp");
      EXPECT_EQ(r->shm_bytes, 0u);
      EXPECT_GT(r->bytes_sent, 8u << 20);
    }
    from = 1 - from;
    home.store(from);
  }
  stop.store(true);
  for (std::thread& t : clients) t.join();
  InvokeResult got = Call(nodes[from]->agent.get(), "get");
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.reply, std::to_string(acked.load()));
  EXPECT_GT(acked.load(), 60u);
  EXPECT_TRUE(Call(nodes[from]->agent.get(), "check").status.ok());
  EXPECT_FALSE(Runs(nodes[1 - from]->agent.get(), id_));
}

// The pages dirtied up to the freeze go as one batch from a chunk buffer, through a slot
// over shared memory (they used to ride in the commit frame, over the connection, inside
// the downtime), and arrive whole.
TEST_F(MigrationTest, TheFreezesPagesGoThroughTheSlotsToo) {
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "8192").status.ok());  // 8 MiB
  for (const char* transport : {"shm", "tcp"}) {
    Node* from = transport == std::string("shm") ? a_.get() : b_.get();
    Node* to = from == a_.get() ? b_.get() : a_.get();
    const std::string count = Call(from->agent.get(), "get").reply;
    MigrateOptions o = To(*to);
    o.transport = transport;
    o.step_hook = [&](const std::string& step) {
      // ~520 pages dirtied after the last round: what the freeze sends.
      if (step == "freeze") {
        EXPECT_TRUE(Call(from->agent.get(), "touch", "600").status.ok());
      }
      return Status::Ok();
    };
    Result<MigrationReport> r = from->agent->Migrate(id_, o);
    ASSERT_TRUE(r.ok()) << transport << ": " << r.status();
    EXPECT_EQ(r->transport, transport);
    EXPECT_GE(r->final_pages, 300u) << transport;
    if (r->transport == "shm") {
      EXPECT_LT(r->bytes_sent, 256u << 10) << "the freeze's pages went over the connection";
    } else {
      EXPECT_GE(r->bytes_sent, (8u << 20) + r->final_pages * 4096u - (1u << 20));
    }
    InvokeResult check = Call(to->agent.get(), "check");
    EXPECT_TRUE(check.status.ok()) << transport << ": " << check.status;
    EXPECT_EQ(Call(to->agent.get(), "get").reply, std::to_string(std::stoull(count) + 1));
  }
}

// The freeze's batch goes ahead of the commit without waiting for its answer: when the
// target refuses it, the migration fails with that refusal (not the commit's), and the
// instance thaws and keeps serving at the source with every write it took.
TEST_F(MigrationTest, ARefusedFreezeBatchFailsTheMigrationAndTheInstanceStays) {
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "8192").status.ok());
  const std::string count = Call(a_->agent.get(), "get").reply;
  bool frozen = false;
  MigrateOptions o = To(*b_);
  o.transport = "shm";
  o.step_hook = [&](const std::string& step) {
    if (step == "freeze") {
      EXPECT_TRUE(Call(a_->agent.get(), "touch", "600").status.ok());
      frozen = true;
    }
    return Status::Ok();
  };
  o.shm_hook_for_test = [&](const std::string& what, std::string* bytes) {
    if (what == "slot" && frozen) StoreU32(bytes->data() + 12, 999);  // out of sequence
  };
  Result<MigrationReport> r = a_->agent->Migrate(id_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("out of sequence"), std::string_view::npos) << r.status();
  EXPECT_NE(r.status().message().find("keeps serving here"), std::string_view::npos)
      << r.status();
  ASSERT_TRUE(Runs(a_->agent.get(), id_));
  EXPECT_FALSE(Runs(b_->agent.get(), id_));
  EXPECT_TRUE(Call(a_->agent.get(), "check").status.ok());
  EXPECT_EQ(Call(a_->agent.get(), "get").reply, std::to_string(std::stoull(count) + 1));
  Result<MigrationReport> good = a_->agent->Migrate(id_, To(*b_));
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE(Call(b_->agent.get(), "check").status.ok());
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, std::to_string(std::stoull(count) + 1));
}

// With memory reserves the target's slots are faulted in at start and both sides keep
// them for the next migration between the same agents: the state stays whole across
// migrations that reuse them.
// A peer that connects to the `.mig` socket and says nothing holds up no other handshake
// (the server used to serve one connection at a time, each for up to 5 s), and is dropped.
TEST(MigrationSlotsTest, ASilentPeerHoldsUpNoHandshakeAndIsDropped) {
  char dir[] = "/tmp/tern-slots-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/agent.shm.mig";
  Result<std::unique_ptr<MigSlotServer>> server = MigSlotServer::Start(path);
  ASSERT_TRUE(server.ok()) << server.status();
  auto connect_silent = [&] {
    transport::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr;
    EXPECT_TRUE(transport::UnixSocketAddress("test", path, &addr).ok());
    EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    return fd;
  };
  transport::UniqueFd silent1 = connect_silent();
  transport::UniqueFd silent2 = connect_silent();
  Result<std::shared_ptr<MigSlots>> set = MigSlots::Create(/*populate=*/false);
  ASSERT_TRUE(set.ok()) << set.status();
  const int64_t t0 = MonoNanos();
  for (int i = 0; i < 3; ++i) {
    const std::string token = (*server)->Offer(*set, ::getpid());
    Result<std::shared_ptr<MigSlots>> got = FetchMigSlots(path, token, nullptr);
    ASSERT_TRUE(got.ok()) << "handshake " << i << ": " << got.status();
    EXPECT_TRUE((*got)->SameFile((*set)->fd()));
  }
  // Served at once, not after the silent peers' 5 s each.
  EXPECT_LT(MonoNanos() - t0, 2'500'000'000) << "the handshakes waited behind the silent peers";
  // A garbage hello is refused with an answer; the server goes on serving.
  ASSERT_EQ(::send(silent2.get(), "garbage", 7, 0), 7);
  char answer[300];
  const ssize_t n = ::recv(silent2.get(), answer, sizeof(answer), 0);
  ASSERT_GE(n, 8);
  EXPECT_EQ(LoadU32(answer), static_cast<uint32_t>(StatusCode::kInvalidArgument));
  // A silent peer is closed by the server at its deadline: a read sees the end.
  char b;
  timeval tv{10, 0};
  ASSERT_EQ(::setsockopt(silent1.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  const int64_t t1 = MonoNanos();
  EXPECT_EQ(::recv(silent1.get(), &b, 1, 0), 0) << std::strerror(errno);
  EXPECT_LT(MonoNanos() - t1, 8'000'000'000);
  const std::string token = (*server)->Offer(*set, ::getpid());
  EXPECT_TRUE(FetchMigSlots(path, token, nullptr).ok());
  server->reset();
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "the socket file outlived the server";
  ::rmdir(dir);
}

TEST(MigrationSlotsTest, WarmSlotsAreReusedAcrossMigrations) {
  std::unique_ptr<Node> a = StartNode("src", 2, 1024, 48u << 20);
  std::unique_ptr<Node> b = StartNode("dst", 2, 1024, 48u << 20);
  Result<ServiceStatus> s = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  ASSERT_TRUE(Call(a->agent.get(), "fill", "6144").status.ok());
  Node* nodes[2] = {a.get(), b.get()};
  for (int m = 0; m < 4; ++m) {
    Node* from = nodes[m % 2];
    Node* to = nodes[1 - m % 2];
    ASSERT_EQ(Call(from->agent.get(), "incr", "1").reply, std::to_string(m + 1));
    const std::string sum = Call(from->agent.get(), "check").reply;
    MigrateOptions o;
    o.to_tcp = to->tcp;
    o.to_device = to->agent->options().device;
    Result<MigrationReport> r = from->agent->Migrate(id, o);
    ASSERT_TRUE(r.ok()) << "migration " << m << ": " << r.status();
    EXPECT_EQ(r->transport, "shm");
    EXPECT_GE(r->shm_bytes, 6u << 20);
    InvokeResult check = Call(to->agent.get(), "check");
    ASSERT_TRUE(check.status.ok()) << check.status;
    EXPECT_EQ(check.reply, sum);
  }
  EXPECT_EQ(Call(a->agent.get(), "get").reply, "4");
}

TEST_F(MigrationTest, AutoFallsBackToTcpWithANoteAndShmFailsClearly) {
  ASSERT_TRUE(Call(a_->agent.get(), "incr", "3").status.ok());
  // The target's slot socket is gone (its listener started with the migration port).
  ASSERT_TRUE(b_->agent->MigrationAddress().ok());
  const std::string slot_socket = b_->agent->options().shm_path + ".mig";
  ASSERT_EQ(::unlink(slot_socket.c_str()), 0) << slot_socket;
  MigrateOptions shm = To(*b_);
  shm.transport = "shm";
  Result<MigrationReport> r = a_->agent->Migrate(id_, shm);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find(slot_socket), std::string_view::npos) << r.status();
  EXPECT_NE(r.status().message().find("keeps serving here"), std::string_view::npos)
      << r.status();
  ASSERT_TRUE(Runs(a_->agent.get(), id_));
  EXPECT_EQ(Call(a_->agent.get(), "incr", "1").reply, "4");
  Result<MigrationReport> fell = a_->agent->Migrate(id_, To(*b_));  // auto
  ASSERT_TRUE(fell.ok()) << fell.status();
  EXPECT_EQ(fell->transport, "tcp");
  EXPECT_EQ(fell->shm_bytes, 0u);
  EXPECT_NE(fell->transport_note.find(slot_socket), std::string::npos) << fell->transport_note;
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "4");
  // A target without a shared-memory socket, and one on another host.
  std::unique_ptr<Node> plain = StartNode("plain", 2, 1024, 0, /*shm=*/false);
  Result<MigrationReport> r2 = b_->agent->Migrate(id_, To(*plain));
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r2->transport, "tcp");
  EXPECT_NE(r2->transport_note.find("no shared-memory socket"), std::string::npos)
      << r2->transport_note;
  AgentOptions far_options;
  far_options.device = "far";
  far_options.host = "elsewhere";
  std::unique_ptr<Node> far =
      TestNode::Start(far_options, tern::testing::TempDir("migshm-far") + "/shm.sock");
  MigrateOptions to_far = To(*far);
  to_far.transport = "shm";
  Result<MigrationReport> r3 = plain->agent->Migrate(id_, to_far);
  EXPECT_EQ(r3.status().code(), StatusCode::kFailedPrecondition) << r3.status();
  EXPECT_NE(r3.status().message().find("host"), std::string_view::npos) << r3.status();
  to_far.transport = "auto";
  Result<MigrationReport> r4 = plain->agent->Migrate(id_, to_far);
  ASSERT_TRUE(r4.ok()) << r4.status();
  EXPECT_EQ(r4->transport, "tcp");
  EXPECT_NE(r4->transport_note.find("elsewhere"), std::string::npos) << r4->transport_note;
  EXPECT_EQ(Call(far->agent.get(), "get").reply, "4");
  MigrateOptions bad = To(*b_);
  bad.transport = "carrier-pigeon";
  EXPECT_EQ(far->agent->Migrate(id_, bad).status().code(), StatusCode::kInvalidArgument);
}

// A source that sends bad 'slot' frames, or presents a bad token: the target refuses
// them with what is wrong, the migration fails, and the instance keeps serving at the
// source with its state (both agents live; a good migration follows).
TEST_F(MigrationTest, BadSlotFramesAndTokensAreRefusedAndTheInstanceStays) {
  // 16 MiB: round 0 alone takes more than four slot frames. The target has the service,
  // so that the frames are numbered from the first 'begin' on (no deploy and resend).
  ASSERT_TRUE(b_->agent->Deploy(CounterManifest(0), ReadWasm("counter")).ok());
  ASSERT_TRUE(Call(a_->agent.get(), "fill", "16384").status.ok());
  ASSERT_TRUE(Call(a_->agent.get(), "incr", "7").status.ok());
  const std::string sum = Call(a_->agent.get(), "check").reply;
  struct Case {
    const char* name;
    std::function<void(const std::string&, std::string*)> hook;
    StatusCode code;
    const char* says;
  };
  auto on_slot = [](int frame, std::function<void(char*)> change) {
    auto n = std::make_shared<int>(0);
    return [=](const std::string& what, std::string* bytes) {
      if (what == "slot" && (*n)++ == frame) change(bytes->data());
    };
  };
  const std::vector<Case> cases = {
      {"index out of range", on_slot(2, [](char* p) { StoreU32(p, 6); }),
       StatusCode::kInvalidArgument, "slot 6 out of range"},
      {"length past the slot", on_slot(0, [](char* p) { StoreU32(p + 8, 5u << 20); }),
       StatusCode::kInvalidArgument, "does not fit a slot"},
      {"offset past the slot",
       on_slot(1, [](char* p) { StoreU32(p + 4, static_cast<uint32_t>(kMigSlotBytes)); }),
       StatusCode::kInvalidArgument, "does not fit a slot"},
      {"frame replayed", on_slot(3, [](char* p) { StoreU32(p + 12, 2); }),
       StatusCode::kInvalidArgument, "out of sequence"},
      {"bad token",
       [](const std::string& what, std::string* bytes) {
         if (what == "token") (*bytes)[0] ^= 1;
       },
       StatusCode::kPermissionDenied, "unknown or used slot token"},
  };
  for (const Case& c : cases) {
    MigrateOptions o = To(*b_);
    o.transport = "shm";
    o.shm_hook_for_test = c.hook;
    Result<MigrationReport> r = a_->agent->Migrate(id_, o);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), c.code) << c.name << ": " << r.status();
    EXPECT_NE(r.status().message().find(c.says), std::string_view::npos)
        << c.name << ": " << r.status();
    EXPECT_NE(r.status().message().find("keeps serving here"), std::string_view::npos)
        << c.name << ": " << r.status();
    ASSERT_TRUE(Runs(a_->agent.get(), id_)) << c.name;
    EXPECT_FALSE(Runs(b_->agent.get(), id_)) << c.name;
    EXPECT_EQ(Call(a_->agent.get(), "check").reply, sum) << c.name;
  }
  EXPECT_EQ(Call(a_->agent.get(), "incr", "1").reply, "8");
  Result<MigrationReport> good = a_->agent->Migrate(id_, To(*b_));
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->transport, "shm");
  EXPECT_EQ(Call(b_->agent.get(), "check").reply, sum);
  EXPECT_EQ(Call(b_->agent.get(), "get").reply, "8");
}

// The target's side of the protocol, frame by frame: a 'slot' frame before any slots, a
// 'slots' request from another host or malformed, a 'slot' frame without a 'begin' or of
// the wrong size, and a token presented twice.
TEST_F(MigrationTest, TheTargetRefusesSlotStepsOutOfOrder) {
  Result<std::string> addr = b_->agent->MigrationAddress();
  ASSERT_TRUE(addr.ok()) << addr.status();
  Result<std::unique_ptr<transport::FrameClient>> c = ConnectFrames(*addr);
  ASSERT_TRUE(c.ok()) << c.status();
  auto step = [&](const char* handler, std::string payload) {
    transport::Frame f;
    f.service = "$migrate";
    f.handler = handler;
    f.payload = std::move(payload);
    return (*c)->Call(f, std::chrono::seconds(10));
  };
  Result<transport::Frame> r = step("slot", EncodeSlotFrame(SlotFrame{}));
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("before any slots"), std::string_view::npos) << r.status();
  r = step("slots", nlohmann::json{{"host", "elsewhere"}, {"pid", ::getpid()}}.dump());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status();
  r = step("slots", "{\"host\": 3}");
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
  r = step("slots", nlohmann::json{{"host", "local"}, {"pid", ::getpid()}}.dump());
  ASSERT_TRUE(r.ok()) << r.status();
  nlohmann::json j = nlohmann::json::parse(r->payload);
  EXPECT_EQ(j["path"], b_->agent->options().shm_path + ".mig");
  EXPECT_EQ(j["slots"], kMigSlots);
  r = step("slot", std::string(15, '\0'));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
  r = step("slot", EncodeSlotFrame(SlotFrame{0, 0, 4096, 0}));
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("without a 'begin'"), std::string_view::npos)
      << r.status();
  // The token works once, for this process.
  std::string token;
  for (size_t i = 0; i < j["token"].get<std::string>().size(); i += 2) {
    token += static_cast<char>(std::stoi(j["token"].get<std::string>().substr(i, 2), nullptr, 16));
  }
  Result<std::shared_ptr<MigSlots>> got = FetchMigSlots(j["path"], token, nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  std::memset((*got)->slot(kMigSlots - 1), 0x5a, kMigSlotBytes);  // all of it is mapped
  Result<std::shared_ptr<MigSlots>> again = FetchMigSlots(j["path"], token, nullptr);
  EXPECT_EQ(again.status().code(), StatusCode::kPermissionDenied) << again.status();
}

TEST(MigrationNestedTest, WaitsForTheRequestBoundaryThenFailsClearlyAtTheTimeout) {
  // One worker on the source: a relay request waiting in a nested call (to a slow callee
  // on another agent) holds back every control step on that worker. The callee runs on
  // a third agent: its worker is held (below), and the target's must stay free.
  std::unique_ptr<Node> a = StartNode("src", /*workers=*/1);
  std::unique_ptr<Node> b = StartNode("dst");
  std::unique_ptr<Node> far = StartNode("far", /*workers=*/1);
  Result<ServiceStatus> c = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string id = c->instances.at(0);
  Result<Manifest> relay = LoadManifest(SourcePath("examples/relay/manifest.yaml"));
  ASSERT_TRUE(relay.ok());
  relay->replicas = 1;
  relay->name = "relay-a";
  ASSERT_TRUE(a->agent->Deploy(*relay, ReadWasm("relay")).ok());
  relay->name = "relay-b";
  Result<ServiceStatus> rb = far->agent->Deploy(*relay, ReadWasm("relay"));
  ASSERT_TRUE(rb.ok());
  dataplane::InstanceLocation l;
  l.instance = rb->instances.at(0);
  l.service = "relay-b";
  l.agent = "far";
  l.host = "h2";
  l.tcp = far->tcp;
  l.epoch = 1;
  ASSERT_TRUE(a->agent->locations().Upsert(l).ok());
  ASSERT_EQ(Call(a->agent.get(), "incr", "2").reply, "2");

  // relay-b's worker is held: the nested call cannot be answered until the gate opens
  // (a callee that spun 1.2 s instead was done early when the test thread stalled).
  // Declared in this order so that a failed assertion opens the gate, then joins.
  std::jthread slow;
  std::optional<WorkerGate> callee_busy(std::in_place, far->agent.get(), l.instance);
  const uint64_t tcp_calls = a->agent->calls_by_tier(dataplane::Tier::kTcp);
  slow = std::jthread([&] {
    InvokeRequest r;
    r.service = "relay-a";
    r.handler = "call";
    r.payload = "relay-b|echo|10000|answered";
    InvokeResult res = a->agent->InvokeSync(std::move(r));
    EXPECT_TRUE(res.status.ok()) << res.status;
    EXPECT_EQ(res.reply, "0|answered");
  });
  // Wait until the relay request is in its nested call (counted when it is sent).
  const int64_t give_up = MonoNanos() + 10'000'000'000;
  while (a->agent->calls_by_tier(dataplane::Tier::kTcp) == tcp_calls && MonoNanos() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_GT(a->agent->calls_by_tier(dataplane::Tier::kTcp), tcp_calls) << "the relay never called";
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  o.freeze_timeout_ns = 300'000'000;
  Result<MigrationReport> r = a->agent->Migrate(id, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_NE(r.status().message().find("request boundary"), std::string_view::npos) << r.status();
  EXPECT_NE(r.status().message().find("keeps serving here"), std::string_view::npos) << r.status();
  // Requests still run on that worker while the relay waits, and the state is intact.
  EXPECT_EQ(Call(a->agent.get(), "incr", "1").reply, "3");
  EXPECT_TRUE(callee_busy->ReleasedByTest())
      << "the migration waited for the nested call instead of timing out";
  callee_busy.reset();
  slow.join();
  // At the boundary, the same migration goes through.
  o.freeze_timeout_ns = 5'000'000'000;
  Result<MigrationReport> again = a->agent->Migrate(id, o);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Call(b->agent.get(), "get").reply, "3");
}

TEST(MigrationBurstTest, RequestsHeldDuringTheFreezeAreForwardedWithinTheTargetsQueue) {
  // The target queues at most 16 requests per instance; 200 arrive during the freeze.
  std::unique_ptr<Node> a = StartNode("src");
  std::unique_ptr<Node> b = StartNode("dst", 2, /*max_queue=*/16);
  Result<ServiceStatus> c = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string id = c->instances.at(0);
  std::atomic<int> ok{0}, failed{0};
  std::string first_error;
  Mutex mu;
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  o.step_hook = [&](const std::string& step) -> Status {
    if (step != "commit") return Status::Ok();
    for (int i = 0; i < 200; ++i) {
      InvokeRequest r;
      r.service = "counter";
      r.handler = "incr";
      r.payload = "1";
      a->agent->Invoke(std::move(r), [&](InvokeResult res) {
        if (res.status.ok()) {
          ok.fetch_add(1);
        } else {
          MutexLock l(&mu);
          if (first_error.empty()) first_error = res.status.ToString();
          failed.fetch_add(1);
        }
      });
    }
    return Status::Ok();
  };
  Result<MigrationReport> r = a->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->held, 200u);
  const int64_t until = MonoNanos() + 20'000'000'000;
  while (ok.load() + failed.load() < 200 && MonoNanos() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(failed.load(), 0) << first_error;
  EXPECT_EQ(ok.load(), 200);
  EXPECT_EQ(Call(b->agent.get(), "get").reply, "200");
}

TEST(MigrationBacklogTest, TheStepsGoAheadOfAnOverloadedInstancesQueuedRequests) {
  // 200 requests are queued on the source's only worker (a gate holds it) when the
  // migration starts: its steps must not wait behind them (under overload each round
  // waited for the whole backlog, seconds). The queued requests run at the source until
  // the freeze, then are held and forwarded: each answered once, in order.
  std::unique_ptr<Node> a = StartNode("src", /*workers=*/1);
  std::unique_ptr<Node> b = StartNode("dst");
  Result<ServiceStatus> c = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string id = c->instances.at(0);
  // A 4 MiB fill: each `check` reads all of it (milliseconds), a backlog of 100 of them
  // is hundreds of ms of work.
  ASSERT_TRUE(Call(a->agent.get(), "fill", "4096").status.ok());
  const InvokeResult sum = Call(a->agent.get(), "check");
  ASSERT_TRUE(sum.status.ok()) << sum.status;

  constexpr int kQueued = 200;
  std::atomic<int> done{0}, failed{0};
  Mutex mu;
  std::vector<int64_t> incr_replies;
  std::string first_error;
  std::optional<WorkerGate> gate(std::in_place, a->agent.get(), id);
  for (int i = 0; i < kQueued; ++i) {
    InvokeRequest r;
    r.service = "counter";
    r.handler = i % 2 == 0 ? "check" : "incr";
    r.payload = i % 2 == 0 ? "" : "1";
    const bool incr = i % 2 != 0;
    a->agent->Invoke(std::move(r), [&, incr](InvokeResult res) {
      MutexLock l(&mu);
      if (!res.status.ok()) {
        if (first_error.empty()) first_error = res.status.ToString();
        failed.fetch_add(1);
      } else if (incr) {
        incr_replies.push_back(std::stoll(res.reply));
      } else if (res.reply != sum.reply) {
        if (first_error.empty()) first_error = "check answered " + res.reply;
        failed.fetch_add(1);
      }
      done.fetch_add(1);
    });
  }
  int done_at_begin = -1;
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  o.step_hook = [&](const std::string& step) -> Status {
    // Right after the first step (MigStart) ran on the worker.
    if (step == "begin") done_at_begin = done.load();
    return Status::Ok();
  };
  Result<MigrationReport> r = UnavailableError("not run");
  std::thread mig([&] { r = a->agent->Migrate(id, o); });
  // Let the migration post its first step behind the gate, then open it.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  gate->Release();
  EXPECT_TRUE(gate->ReleasedByTest());
  mig.join();
  gate.reset();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(done_at_begin, 0);
  EXPECT_LT(done_at_begin, kQueued) << "the migration's first step waited for the whole backlog";
  const int64_t until = MonoNanos() + 30'000'000'000;
  while (done.load() < kQueued && MonoNanos() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(done.load(), kQueued);
  EXPECT_EQ(failed.load(), 0) << first_error;
  {
    MutexLock l(&mu);
    std::sort(incr_replies.begin(), incr_replies.end());
    ASSERT_EQ(incr_replies.size(), size_t{kQueued / 2});
    for (int i = 0; i < kQueued / 2; ++i) EXPECT_EQ(incr_replies[i], i + 1);
  }
  EXPECT_EQ(Call(b->agent.get(), "get").reply, std::to_string(kQueued / 2));
  EXPECT_EQ(Call(b->agent.get(), "check").reply, sum.reply);
}

// ---- the warm memory reserve (agent/memory_reserve.h)

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr int64_t kReserveWait = 30'000'000'000;

// The target's rollback point must equal its memory between requests, byte for byte:
// the pages moved under both from the reserve hold what arrived, and the write
// tracker (registered over the moved pages at the commit) sees every later write.
void ExpectRollbackPointIsTheState(Agent* a, const std::string& id) {
  Result<wasm::Snapshot> now = a->Snapshot(id);
  Result<wasm::Snapshot> good = a->RollbackPointForTest(id);
  ASSERT_TRUE(now.ok()) << now.status();
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_EQ(good->memory.size(), now->memory.size());
  EXPECT_TRUE(good->memory == now->memory) << "the rollback point differs from the memory";
}

// The instance at `a` holds the state whose `check` was `sum`, its rollback point is
// that state, and stays it after a request that writes.
void ExpectStateAndRollbackPoint(Agent* a, const std::string& id, const std::string& sum) {
  InvokeResult check = Call(a, "check");
  ASSERT_TRUE(check.status.ok()) << check.status;
  EXPECT_EQ(check.reply, sum);
  ExpectRollbackPointIsTheState(a, id);
  ASSERT_TRUE(Call(a, "touch", "64").status.ok());
  ExpectRollbackPointIsTheState(a, id);
}

TEST(MigrationReserveTest, PrecopyLandsOnWarmMemoryAndTheStateStaysWhole) {
  std::unique_ptr<Node> a = StartNode("src", 2, 1024, 48 * kMiB);
  std::unique_ptr<Node> b = StartNode("dst", 2, 1024, 48 * kMiB);
  Result<ServiceStatus> s = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  ASSERT_TRUE(Call(a->agent.get(), "fill", "16384").status.ok());  // 16 MiB of state
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Call(a->agent.get(), "touch", "16").status.ok());
  const std::string sum = Call(a->agent.get(), "check").reply;
  const bool tracked = StatusOf(a->agent.get(), id).dirty_tracking;
  MemoryReserve* rb = b->agent->memory_reserve();
  ASSERT_NE(rb, nullptr);
  ASSERT_TRUE(rb->WaitFull(kReserveWait));
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  Result<MigrationReport> r = a->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  // Both copies (the memory and the rollback point, 16+ MiB each) took whole 2 MiB
  // blocks from the reserve: all but the partial blocks at their ends.
  const MemoryReserve::Stats st = rb->stats();
  EXPECT_GE(st.moved_bytes, 2 * 12 * kMiB);
  EXPECT_LE(st.moved_bytes, 48 * kMiB);
  EXPECT_EQ(st.failed_moves, 0u);

  InvokeResult check = Call(b->agent.get(), "check");
  ASSERT_TRUE(check.status.ok()) << check.status;
  EXPECT_EQ(check.reply, sum);
  EXPECT_EQ(Call(b->agent.get(), "get").reply, "10");
  EXPECT_EQ(StatusOf(b->agent.get(), id).dirty_tracking, tracked)
      << "the write tracker must register over the moved pages as over fresh ones";
  ExpectRollbackPointIsTheState(b->agent.get(), id);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Call(b->agent.get(), "touch", "64").status.ok());
  ExpectRollbackPointIsTheState(b->agent.get(), id);
  // memory.grow after the move (V8 extends its reservation past the moved pages).
  const uint64_t before = StatusOf(b->agent.get(), id).memory_bytes;
  ASSERT_TRUE(Call(b->agent.get(), "fill", "8192").status.ok());
  EXPECT_GT(StatusOf(b->agent.get(), id).memory_bytes, before);
  const std::string sum2 = Call(b->agent.get(), "check").reply;
  ASSERT_FALSE(sum2.empty());
  ExpectRollbackPointIsTheState(b->agent.get(), id);
  // Refilled once the instance is in, and the way back lands on the source's reserve.
  EXPECT_TRUE(rb->WaitFull(kReserveWait));
  ASSERT_TRUE(a->agent->memory_reserve()->WaitFull(kReserveWait));
  o.to_tcp = a->tcp;
  o.to_device = "src";
  r = b->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(a->agent->memory_reserve()->stats().moved_bytes, 2 * 20 * kMiB);
  InvokeResult back = Call(a->agent.get(), "check");
  ASSERT_TRUE(back.status.ok()) << back.status;
  EXPECT_EQ(back.reply, sum2);
  EXPECT_EQ(Call(a->agent.get(), "get").reply, "30");
  ExpectRollbackPointIsTheState(a->agent.get(), id);
}

TEST(MigrationReserveTest, AReserveSmallerThanTheInstanceFallsBackToFreshPages) {
  std::unique_ptr<Node> a = StartNode("src");
  std::unique_ptr<Node> b = StartNode("dst", 2, 1024, 4 * kMiB);
  Result<ServiceStatus> s = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  ASSERT_TRUE(Call(a->agent.get(), "fill", "16384").status.ok());
  const std::string sum = Call(a->agent.get(), "check").reply;
  ASSERT_TRUE(b->agent->memory_reserve()->WaitFull(kReserveWait));
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  Result<MigrationReport> r = a->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(b->agent->memory_reserve()->stats().moved_bytes, 4 * kMiB) << "all it had";
  ExpectStateAndRollbackPoint(b->agent.get(), id, sum);
}

// A restore from a snapshot (and a rollback or journal replay, the same code) grows the
// memory onto warm blocks too, and its rollback point.
TEST(MigrationReserveTest, ARestoreLandsOnWarmMemory) {
  std::unique_ptr<Node> a = StartNode("src");
  std::unique_ptr<Node> b = StartNode("dst", 2, 1024, 48 * kMiB);
  Result<ServiceStatus> s = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(Call(a->agent.get(), "fill", "16384").status.ok());
  ASSERT_TRUE(Call(a->agent.get(), "incr", "7").status.ok());
  const std::string sum = Call(a->agent.get(), "check").reply;
  Result<wasm::Snapshot> snap = a->agent->Snapshot(s->instances.at(0));
  ASSERT_TRUE(snap.ok()) << snap.status();
  Result<ServiceStatus> t = b->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string id = t->instances.at(0);
  ASSERT_TRUE(b->agent->memory_reserve()->WaitFull(kReserveWait));
  ASSERT_TRUE(b->agent->Restore(id, *snap).ok());
  EXPECT_GE(b->agent->memory_reserve()->stats().moved_bytes, 2 * 12 * kMiB);
  EXPECT_EQ(Call(b->agent.get(), "get").reply, "7");
  ExpectStateAndRollbackPoint(b->agent.get(), id, sum);
}

// The memory grows on the source after `begin` (a request during pre-copy): the target
// grows its copy and the rollback point's capacity onto warm blocks too.
TEST(MigrationReserveTest, MemoryGrownDuringPrecopyLandsOnWarmMemoryToo) {
  std::unique_ptr<Node> a = StartNode("src");
  std::unique_ptr<Node> b = StartNode("dst", 2, 1024, 96 * kMiB);
  Result<ServiceStatus> s = a->agent->Deploy(CounterManifest(1), ReadWasm("counter"));
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string id = s->instances.at(0);
  ASSERT_TRUE(Call(a->agent.get(), "fill", "8192").status.ok());
  const uint64_t begin_bytes = StatusOf(a->agent.get(), id).memory_bytes;
  ASSERT_TRUE(b->agent->memory_reserve()->WaitFull(kReserveWait));
  MigrateOptions o;
  o.to_tcp = b->tcp;
  o.to_device = "dst";
  std::string grown_sum;
  o.step_hook = [&](const std::string& step) {
    if (step == "round 0") grown_sum = Call(a->agent.get(), "fill", "16384").reply;
    return Status::Ok();
  };
  Result<MigrationReport> r = a->agent->Migrate(id, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(grown_sum.empty());
  EXPECT_GE(StatusOf(b->agent.get(), id).memory_bytes, begin_bytes + 16 * kMiB)
      << "the memory grew after begin";
  // Both copies of ~24+ MiB, all but partial blocks, the grown parts included.
  EXPECT_GE(b->agent->memory_reserve()->stats().moved_bytes, 2 * 20 * kMiB);
  ExpectStateAndRollbackPoint(b->agent.get(), id, grown_sum);
}

}  // namespace
}  // namespace tern::agent
