// Shared-memory transport: real memfds, real Unix sockets in a temp dir, fork() for the
// cross-process cases.
#include "transport/shm.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "core/clock.h"

namespace tern::transport {
namespace {

using namespace std::chrono_literals;
using internal::ShmConnHeader;
using internal::ShmRecordHeader;

constexpr int64_t kMs = 1'000'000;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tern-shm-XXXXXX";
    char* d = mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    path_ = d != nullptr ? d : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string Sock(const std::string& name = "agent.sock") const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Deterministic bytes that differ by seed and position.
std::string Pattern(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&s[i], &x, 8);
  }
  for (; i < n; ++i) s[i] = static_cast<char>(seed + i);
  return s;
}

Frame MakeFrame(uint64_t id, size_t payload_bytes) {
  Frame f;
  f.type = FrameType::kInvoke;
  f.request_id = id;
  f.epoch = 7;
  f.budget_us = 1000;
  f.tenant = "tenant-a";
  f.service = "svc";
  f.handler = "h" + std::to_string(id % 10);
  f.payload = Pattern(payload_bytes, id);
  return f;
}

const Doorbell* Only(const Doorbell* bell) { return bell; }

// A connected pair in this process: the client connects from a helper thread while this
// thread accepts. Afterwards both ends are used from the test thread (each end is
// single-threaded; nothing requires the two ends to be on different threads).
struct Pair {
  std::unique_ptr<Doorbell> client_bell;
  std::unique_ptr<Doorbell> server_bell;
  std::unique_ptr<ShmListener> listener;
  std::unique_ptr<ShmConnection> client;
  std::unique_ptr<ShmConnection> server;
};

void MakePair(const std::string& path, Pair* p, ShmConnectOptions copts = {},
              ShmListener::Options lopts = {}) {
  auto cb = Doorbell::Create();
  auto sb = Doorbell::Create();
  ASSERT_TRUE(cb.ok()) << cb.status();
  ASSERT_TRUE(sb.ok()) << sb.status();
  p->client_bell = std::make_unique<Doorbell>(std::move(cb).value());
  p->server_bell = std::make_unique<Doorbell>(std::move(sb).value());
  auto l = ShmListener::Listen(path, lopts);
  ASSERT_TRUE(l.ok()) << l.status();
  p->listener = std::move(l).value();

  Result<std::unique_ptr<ShmConnection>> client = UnavailableError("not run");
  std::thread t([&] { client = ShmConnect(path, *p->client_bell, "instance-1", copts); });
  std::string hint;
  const int64_t deadline = MonoNanos() + 3000 * kMs;
  while (p->server == nullptr && MonoNanos() < deadline) {
    auto a =
        p->listener->Accept([&](std::string_view) { return Only(p->server_bell.get()); }, &hint);
    ASSERT_TRUE(a.ok()) << a.status();
    p->server = std::move(a).value();
    if (p->server == nullptr) std::this_thread::sleep_for(100us);
  }
  t.join();
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_NE(p->server, nullptr);
  p->client = std::move(client).value();
  EXPECT_EQ(hint, "instance-1");
}

// Polls `rx` (and flushes `tx`) until `n` frames have arrived or the deadline passes.
std::vector<Frame> Receive(ShmConnection* rx, ShmConnection* tx, size_t n,
                           int64_t timeout_ns = 3000 * kMs) {
  std::vector<Frame> got;
  const int64_t deadline = MonoNanos() + timeout_ns;
  while (got.size() < n && MonoNanos() < deadline) {
    if (tx != nullptr) {
      Status s = tx->Flush();
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) break;
    }
    auto r = rx->Poll(&got, 64);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) break;
  }
  return got;
}

// ---------------------------------------------------------------------------------------
// Doorbell

TEST(ShmDoorbellTest, RingWritesTheEventFdOnlyWhenTheOwnerSleeps) {
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok()) << bell.status();
  uint64_t v = 0;
  const uint64_t wakeups = DoorbellWakeupsOnThisThread();
  EXPECT_FALSE(bell->Ring());  // not sleeping: no syscall, nothing written
  EXPECT_EQ(read(bell->event_fd(), &v, sizeof(v)), -1);
  EXPECT_EQ(errno, EAGAIN);
  bell->PrepareSleep();
  EXPECT_TRUE(bell->Ring());
  EXPECT_FALSE(bell->Ring());  // the first ring cleared the word: one write only
  ASSERT_EQ(read(bell->event_fd(), &v, sizeof(v)), static_cast<ssize_t>(sizeof(v)));
  EXPECT_EQ(v, 1u);
  bell->PrepareSleep();
  bell->CancelSleep();
  EXPECT_FALSE(bell->Ring());
  EXPECT_EQ(read(bell->event_fd(), &v, sizeof(v)), -1);
  // Only the ring that woke the owner counts, and only on the thread that rang.
  EXPECT_EQ(DoorbellWakeupsOnThisThread(), wakeups + 1);
  bell->PrepareSleep();
  uint64_t other_thread = 0;
  std::thread([&] {
    EXPECT_TRUE(bell->Ring());
    other_thread = DoorbellWakeupsOnThisThread();
  }).join();
  EXPECT_EQ(other_thread, 1u);
  EXPECT_EQ(DoorbellWakeupsOnThisThread(), wakeups + 1);
}

TEST(ShmDoorbellTest, SleepTimesOutWithoutRing) {
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok()) << bell.status();
  bell->PrepareSleep();
  const int64_t t0 = MonoNanos();
  ASSERT_TRUE(bell->Sleep(20 * kMs).ok());
  EXPECT_GE(MonoNanos() - t0, 15 * kMs);
}

TEST(ShmDoorbellTest, RingFromAnotherThreadWakesTheSleeper) {
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok()) << bell.status();
  bell->PrepareSleep();
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    bell->Ring();
  });
  const int64_t t0 = MonoNanos();
  ASSERT_TRUE(bell->Sleep(5000 * kMs).ok());
  const int64_t waited = MonoNanos() - t0;
  t.join();
  EXPECT_LT(waited, 1000 * kMs);
}

TEST(ShmDoorbellTest, RingFromAForkedProcessWakesTheSleeper) {
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok()) << bell.status();
  bell->PrepareSleep();  // before fork: the child cannot ring too early
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The remote side, attached through its own descriptors as after SCM_RIGHTS.
    auto remote = Doorbell::Attach(UniqueFd(dup(bell->event_fd())), UniqueFd(dup(bell->page_fd())));
    if (!remote.ok()) _exit(2);
    usleep(10'000);
    remote->Ring();
    _exit(0);
  }
  const int64_t t0 = MonoNanos();
  ASSERT_TRUE(bell->Sleep(5000 * kMs).ok());
  const int64_t waited = MonoNanos() - t0;
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_LT(waited, 1000 * kMs);
}

TEST(ShmDoorbellTest, AttachRejectsWrongDescriptors) {
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok()) << bell.status();
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  auto bad_event = Doorbell::Attach(std::move(w), UniqueFd(dup(bell->page_fd())));
  EXPECT_EQ(bad_event.status().code(), StatusCode::kInvalidArgument) << bad_event.status();
  // An unsealed memfd as the page: the owner could shrink it under us.
  UniqueFd unsealed(memfd_create("x", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(unsealed.get(), 4096), 0);
  auto bad_page = Doorbell::Attach(UniqueFd(dup(bell->event_fd())), std::move(unsealed));
  EXPECT_EQ(bad_page.status().code(), StatusCode::kInvalidArgument) << bad_page.status();
  // Sleep is for the owner only.
  auto remote = Doorbell::Attach(UniqueFd(dup(bell->event_fd())), UniqueFd(dup(bell->page_fd())));
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(remote->Sleep(0).code(), StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------------------------------
// Connections in one process

TEST(ShmConnectionTest, RoundTripsSmall4K64KAnd8MiBFramesByteExact) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  const size_t sizes[] = {0, 17, 4096, 64 << 10, 8 << 20};
  uint64_t id = 1;
  for (size_t size : sizes) {
    SCOPED_TRACE(size);
    Frame f = MakeFrame(id++, size);
    ASSERT_TRUE(p.client->Send(f).ok());
    std::vector<Frame> got = Receive(p.server.get(), nullptr, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0] == f);  // not EXPECT_EQ: no 8 MiB diff printed

    Frame reply = f;
    reply.type = FrameType::kReply;
    reply.payload = Pattern(size, id + 1000);
    ASSERT_TRUE(p.server->Send(reply).ok());
    got = Receive(p.client.get(), nullptr, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0] == reply);
  }
  // 2 MiB rings: only the 8 MiB frame exceeds ring/4 and takes the memfd path.
  EXPECT_EQ(p.client->stats().sent_large, 1u);
  EXPECT_EQ(p.client->stats().sent_inline, 4u);
  EXPECT_EQ(p.server->stats().sent_large, 1u);
  EXPECT_EQ(p.server->stats().received, 5u);
}

TEST(ShmConnectionTest, PayloadFromTheCallersBytesAndReplyIntoTheCallersBuffer) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  std::vector<char> sink(1 << 20);
  uint64_t id = 1;
  // Small (64 B: decoded whole, FrameDecoder::DecodeWholeIntoSink), inline (64 KiB),
  // inline at the limit of the sink, and the memfd path (600 KiB).
  for (size_t size : {size_t{64}, size_t{64} << 10, size_t{200} << 10, size_t{600} << 10}) {
    SCOPED_TRACE(size);
    Frame head = MakeFrame(id, 0);
    head.payload = "ignored";
    const std::string payload = Pattern(size, id);
    ASSERT_TRUE(p.client->Send(head, payload).ok());
    std::vector<Frame> got = Receive(p.server.get(), nullptr, 1);
    ASSERT_EQ(got.size(), 1u);
    Frame want = head;
    want.payload = payload;
    EXPECT_TRUE(got[0] == want);

    // A reply to another id first (not for the sink), then ours (into the sink).
    Frame other = want;
    other.type = FrameType::kReply;
    other.request_id = id + 100;
    Frame reply = other;
    reply.request_id = id;
    reply.payload = Pattern(size, id + 1000);
    p.client->SetPayloadSink(id, sink);
    ASSERT_TRUE(p.server->Send(other).ok());
    ASSERT_TRUE(p.server->Send(reply).ok());
    got = Receive(p.client.get(), nullptr, 2);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_TRUE(got[0] == other);
    EXPECT_TRUE(got[1].payload.empty());
    EXPECT_EQ(got[1].request_id, id);
    ASSERT_EQ(p.client->PayloadInSink(), size);
    EXPECT_TRUE(std::string_view(sink.data(), size) == reply.payload);
    p.client->ClearPayloadSink();
    ++id;
  }
  EXPECT_EQ(p.client->stats().sent_large, 1u);
}

TEST(ShmConnectionTest, ManyFramesInFlightGoThroughTheOverflowQueueInOrder) {
  TempDir dir;
  Pair p;
  ShmConnectOptions opts;
  opts.ring_bytes = 4096;  // inline up to 1024 bytes
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p, opts));
  constexpr int kFrames = 3000;
  std::vector<Frame> sent;
  for (int i = 0; i < kFrames; ++i) {
    // Mostly small frames of varying size, every 50th over the inline limit.
    size_t size = (i % 50 == 49) ? 3000 : (static_cast<size_t>(i) * 37) % 900;
    sent.push_back(MakeFrame(static_cast<uint64_t>(i + 1), size));
    ASSERT_TRUE(p.client->Send(sent.back()).ok()) << i;
  }
  EXPECT_TRUE(p.client->HasOverflow());
  EXPECT_GT(p.client->stats().queued, 0u);

  std::vector<Frame> got = Receive(p.server.get(), p.client.get(), kFrames);
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(got[i] == sent[i]) << "frame " << i << " id " << got[i].request_id;
  }
  EXPECT_FALSE(p.client->HasOverflow());
  EXPECT_EQ(p.client->stats().sent_large, static_cast<uint64_t>(kFrames / 50));
  EXPECT_EQ(p.client->stats().overflow_bytes, 0u);
}

TEST(ShmConnectionTest, SendReturnsResourceExhaustedWhenTheOverflowBoundIsHit) {
  TempDir dir;
  Pair p;
  ShmConnectOptions opts;
  opts.ring_bytes = 4096;
  opts.limits.max_overflow_bytes = 32 << 10;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p, opts));
  uint64_t accepted = 0;
  Status last;
  for (int i = 0; i < 10000; ++i) {
    last = p.client->Send(MakeFrame(accepted + 1, 500));
    if (!last.ok()) break;
    ++accepted;
  }
  ASSERT_EQ(last.code(), StatusCode::kResourceExhausted) << last;
  EXPECT_LE(p.client->stats().overflow_bytes, size_t{32 << 10});
  EXPECT_GT(accepted, 60u);  // 4 KiB ring + 32 KiB queue of ~560-byte frames
  EXPECT_LT(accepted, 100u);
  // Nothing of the refused frame was queued: exactly the accepted frames arrive, in order.
  std::vector<Frame> got = Receive(p.server.get(), p.client.get(), accepted);
  ASSERT_EQ(got.size(), accepted);
  for (uint64_t i = 0; i < accepted; ++i) ASSERT_EQ(got[i].request_id, i + 1);
  std::vector<Frame> extra;
  auto r = p.server->Poll(&extra);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 0u);
  // Drained: sending works again.
  EXPECT_TRUE(p.client->Send(MakeFrame(accepted + 1, 500)).ok());
}

TEST(ShmConnectionTest, SendRingsThePeersDoorbell) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  // The server's worker goes to sleep with nothing to do...
  p.server_bell->PrepareSleep();
  ASSERT_FALSE(p.server->HasWork());
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(p.client->Send(MakeFrame(1, 100)).ok());
  });
  const int64_t t0 = MonoNanos();
  ASSERT_TRUE(p.server_bell->Sleep(5000 * kMs, std::array{p.server->socket_fd()}).ok());
  EXPECT_LT(MonoNanos() - t0, 1000 * kMs);
  t.join();
  EXPECT_TRUE(p.server->HasWork());
  std::vector<Frame> got;
  auto r = p.server->Poll(&got);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 1u);
}

TEST(ShmConnectionTest, ConsumerRingsAProducerWaitingForSpace) {
  TempDir dir;
  Pair p;
  ShmConnectOptions opts;
  opts.ring_bytes = 4096;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p, opts));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(p.client->Send(MakeFrame(i + 1, 500)).ok());
  ASSERT_TRUE(p.client->HasOverflow());
  p.client_bell->PrepareSleep();
  ASSERT_FALSE(p.client->HasWork());  // ring full, nothing to read
  std::vector<Frame> got;
  ASSERT_TRUE(p.server->Poll(&got).ok());  // frees space: must ring the client
  ASSERT_FALSE(got.empty());
  uint64_t v = 0;
  EXPECT_EQ(read(p.client_bell->event_fd(), &v, sizeof(v)), static_cast<ssize_t>(sizeof(v)));
  p.client_bell->CancelSleep();
  EXPECT_TRUE(p.client->HasWork());
}

TEST(ShmConnectionTest, CloseDeliversCommittedFramesThenUnavailable) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(p.client->Send(MakeFrame(i + 1, (size_t{8} << 20) >> i)).ok());
  p.client->Close();
  EXPECT_EQ(p.client->Send(MakeFrame(9, 1)).code(), StatusCode::kFailedPrecondition);
  std::vector<Frame> got;
  Result<size_t> r = size_t{0};
  const int64_t deadline = MonoNanos() + 2000 * kMs;
  while (MonoNanos() < deadline) {
    r = p.server->Poll(&got);
    if (!r.ok()) break;
  }
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i].payload.size(), (size_t{8} << 20) >> i);
  EXPECT_FALSE(p.server->PeerAlive());
  EXPECT_EQ(p.server->Send(MakeFrame(10, 1)).code(), StatusCode::kUnavailable);
}

// ---------------------------------------------------------------------------------------
// A hostile peer writing into shared memory

ShmConnHeader* Header(ShmConnection* c) {
  return reinterpret_cast<ShmConnHeader*>(c->SharedMemoryForTest().data());
}
uint8_t* RequestRing(ShmConnection* c) {
  return c->SharedMemoryForTest().data() + internal::kShmHeaderBytes;
}
void PutRecord(uint8_t* at, uint32_t kind, uint32_t len) {
  ShmRecordHeader h{kind, len};
  std::memcpy(at, &h, sizeof(h));
}

struct Corruption {
  const char* name;
  std::function<void(ShmConnection* client)> apply;
};

TEST(ShmConnectionTest, CorruptRingIsAClearErrorNotACrash) {
  const uint32_t kRing = 4096;
  const Corruption cases[] = {
      {"head far beyond the ring",
       [](ShmConnection* c) { Header(c)->ring[0].head.value = 1ull << 40; }},
      {"misaligned head", [](ShmConnection* c) { Header(c)->ring[0].head.value = 13; }},
      {"length past the ring end",
       [](ShmConnection* c) {
         PutRecord(RequestRing(c), internal::kShmRecordInline, 0xFFFFFFF0u);
         Header(c)->ring[0].head.value = 64;
       }},
      {"length past the committed bytes",
       [](ShmConnection* c) {
         PutRecord(RequestRing(c), internal::kShmRecordInline, 512);
         Header(c)->ring[0].head.value = 64;
       }},
      {"unknown kind",
       [](ShmConnection* c) {
         PutRecord(RequestRing(c), 77, 8);
         Header(c)->ring[0].head.value = 16;
       }},
      {"padding that does not end at the ring end",
       [](ShmConnection* c) {
         PutRecord(RequestRing(c), internal::kShmRecordPad, 100);
         Header(c)->ring[0].head.value = 4096;
       }},
      {"random frame bytes",
       [](ShmConnection* c) {
         PutRecord(RequestRing(c), internal::kShmRecordInline, 200);
         std::string junk = Pattern(200, 5);
         std::memcpy(RequestRing(c) + 8, junk.data(), junk.size());
         Header(c)->ring[0].head.value = 208;
       }},
      {"large message record without a descriptor",
       [](ShmConnection* c) {
         PutRecord(RequestRing(c), internal::kShmRecordLarge, 16);
         const uint64_t rec[2] = {1, 1 << 20};
         std::memcpy(RequestRing(c) + 8, rec, sizeof(rec));
         Header(c)->ring[0].head.value = 24;
       }},
  };
  TempDir dir;
  for (const Corruption& k : cases) {
    SCOPED_TRACE(k.name);
    Pair p;
    ShmConnectOptions opts;
    opts.ring_bytes = kRing;
    ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p, opts));
    k.apply(p.client.get());
    std::vector<Frame> got;
    Result<size_t> r = p.server->Poll(&got);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.status().code() == StatusCode::kDataLoss ||
                r.status().code() == StatusCode::kInvalidArgument)
        << r.status();
    EXPECT_TRUE(got.empty());
    // Sticky, and the connection is dead for the peer too.
    EXPECT_EQ(p.server->Poll(&got).status(), r.status());
    EXPECT_FALSE(p.server->PeerAlive());
    EXPECT_EQ(p.client->Send(MakeFrame(1, 10)).code(), StatusCode::kUnavailable);
  }
}

TEST(ShmConnectionTest, CorruptReadIndexStopsTheProducer) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  // The server consumes ring 0; a lying read index must not let the client overwrite.
  Header(p.server.get())->ring[0].tail.value = 1ull << 30;
  // The client only reads the index when its cached free space runs out.
  Status s;
  for (int i = 0; i < 100 && s.ok(); ++i) s = p.client->Send(MakeFrame(i + 1, 60 << 10));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s;
}

TEST(ShmConnectionTest, RandomGarbageAnywhereNeverCrashes) {
  TempDir dir;
  std::mt19937_64 rng(42);
  int errors = 0;
  for (int iter = 0; iter < 60; ++iter) {
    Pair p;
    ShmConnectOptions opts;
    opts.ring_bytes = 4096;
    ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p, opts));
    // Some real traffic in both rings, some of it through the large path.
    for (int i = 0; i < 4; ++i) {
      (void)p.client->Send(MakeFrame(i + 1, rng() % 2000));
      (void)p.server->Send(MakeFrame(i + 1, rng() % 2000));
    }
    std::span<uint8_t> mem = p.client->SharedMemoryForTest();
    const int flips = 1 + static_cast<int>(rng() % 16);
    for (int i = 0; i < flips; ++i) {
      // Half the time aim at the header page (indices, flags), else anywhere.
      size_t off = (rng() % 2 == 0) ? rng() % internal::kShmHeaderBytes : rng() % mem.size();
      mem[off] = static_cast<uint8_t>(rng());
    }
    for (int round = 0; round < 5; ++round) {
      for (ShmConnection* c : {p.server.get(), p.client.get()}) {
        std::vector<Frame> got;
        // Every other iteration the server borrows what it can (as an agent's worker
        // does), then gives it back.
        std::string_view borrowed;
        Result<size_t> r = c == p.server.get() && iter % 2 == 1
                               ? c->PollBorrowed(&got, 256, &borrowed)
                               : c->Poll(&got);
        if (borrowed.data() != nullptr) {
          volatile char sink = 0;
          for (char ch : borrowed) sink = static_cast<char>(sink + ch);
          c->ReleaseBorrowed();
        }
        if (r.ok()) continue;
        const StatusCode code = r.status().code();
        EXPECT_TRUE(code == StatusCode::kDataLoss || code == StatusCode::kInvalidArgument ||
                    code == StatusCode::kResourceExhausted || code == StatusCode::kUnavailable)
            << r.status();
        ++errors;
      }
    }
  }
  EXPECT_GT(errors, 0);
}

// PollBorrowed until a frame comes (or the deadline passes).
Result<size_t> PollBorrowedOne(ShmConnection* rx, std::vector<Frame>* out, size_t min_bytes,
                               std::string_view* borrowed) {
  const int64_t deadline = MonoNanos() + 3000 * kMs;
  Result<size_t> r = size_t{0};
  while (out->empty() && MonoNanos() < deadline) {
    r = rx->PollBorrowed(out, min_bytes, borrowed);
    if (!r.ok()) break;
  }
  return r;
}

bool InMapping(ShmConnection* c, std::string_view bytes) {
  std::span<uint8_t> m = c->SharedMemoryForTest();
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  return p >= m.data() && p + bytes.size() <= m.data() + m.size();
}

// A large request's payload is left where it arrived: in the ring (inline records) or
// in its sealed memfd (larger ones), and the ring's read index the producer sees stops
// at the borrowed record until it is released; small records are copied as by Poll.
TEST(ShmConnectionTest, PollBorrowedLeavesLargePayloadsInSharedMemoryUntilReleased) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  uint64_t id = 1;
  uint64_t borrowed_frames = 0;
  for (size_t size : {size_t{64}, size_t{4} << 10, size_t{64} << 10, size_t{600} << 10}) {
    SCOPED_TRACE(size);
    const Frame f = MakeFrame(id++, size);
    const Frame next = MakeFrame(id++, 100);
    ASSERT_TRUE(p.client->Send(f).ok());
    ASSERT_TRUE(p.client->Send(next).ok());
    const uint64_t tail_before = Header(p.server.get())->ring[0].tail.value;
    std::vector<Frame> got;
    std::string_view borrowed;
    ASSERT_TRUE(PollBorrowedOne(p.server.get(), &got, 2048, &borrowed).ok());
    ASSERT_EQ(got.size(), 1u);  // one frame at a time
    Frame want = f;
    if (size < 2048) {
      EXPECT_EQ(borrowed.data(), nullptr);
      EXPECT_TRUE(got[0] == want);
    } else {
      ++borrowed_frames;
      ASSERT_NE(borrowed.data(), nullptr);
      EXPECT_TRUE(borrowed == f.payload);
      // Inline records stay in the ring; the 600 KiB one (> ring/4 of the default 2 MiB)
      // in its memfd.
      EXPECT_EQ(InMapping(p.server.get(), borrowed), size < (512u << 10));
      want.payload.clear();
      EXPECT_TRUE(got[0] == want);
      EXPECT_EQ(Header(p.server.get())->ring[0].tail.value, tail_before)
          << "the producer may reuse a borrowed record";
      std::string_view again;
      std::vector<Frame> more;
      EXPECT_EQ(p.server->PollBorrowed(&more, 2048, &again).status().code(),
                StatusCode::kFailedPrecondition);
      // Later frames can be taken meanwhile (copied); the index still stops there.
      ASSERT_TRUE(p.server->Poll(&more).ok());
      ASSERT_EQ(more.size(), 1u);
      EXPECT_TRUE(more[0] == next);
      EXPECT_EQ(Header(p.server.get())->ring[0].tail.value, tail_before);
      EXPECT_TRUE(borrowed == f.payload);
      p.server->ReleaseBorrowed();
      p.server->ReleaseBorrowed();  // a no-op
      EXPECT_EQ(Header(p.server.get())->ring[0].tail.value,
                Header(p.server.get())->ring[0].head.value);
      continue;
    }
    got = Receive(p.server.get(), nullptr, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0] == next);
  }
  EXPECT_EQ(p.server->stats().borrowed, borrowed_frames);
  EXPECT_EQ(p.server->stats().received, 8u);
}

// While a record is borrowed the producer must not write over it, however much the
// consumer takes after it: with a 4 KiB ring, frames queue on the producer's side until
// the release, then all arrive, in order, and the borrowed bytes were never touched.
TEST(ShmConnectionTest, AProducerNeverOverwritesABorrowedRecord) {
  TempDir dir;
  Pair p;
  ShmConnectOptions opts;
  opts.ring_bytes = 4096;  // inline up to 1024 bytes
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p, opts));
  const Frame big = MakeFrame(1, 900);
  ASSERT_TRUE(p.client->Send(big).ok());
  std::vector<Frame> got;
  std::string_view borrowed;
  ASSERT_TRUE(PollBorrowedOne(p.server.get(), &got, 512, &borrowed).ok());
  ASSERT_EQ(got.size(), 1u);
  ASSERT_TRUE(borrowed == big.payload);
  std::vector<Frame> sent;
  for (int i = 0; i < 40; ++i) {
    sent.push_back(MakeFrame(static_cast<uint64_t>(i + 2), 400));
    ASSERT_TRUE(p.client->Send(sent.back()).ok());
  }
  // The consumer takes all it can; the producer keeps refilling what it sees free.
  std::vector<Frame> rest;
  for (int round = 0; round < 50; ++round) {
    ASSERT_TRUE(p.client->Flush().ok());
    ASSERT_TRUE(p.server->Poll(&rest).ok());
  }
  EXPECT_TRUE(borrowed == big.payload) << "the producer wrote over a borrowed record";
  EXPECT_LT(rest.size(), sent.size());
  EXPECT_TRUE(p.client->HasOverflow());
  p.server->ReleaseBorrowed();
  std::vector<Frame> tail = Receive(p.server.get(), p.client.get(), sent.size() - rest.size());
  rest.insert(rest.end(), tail.begin(), tail.end());
  ASSERT_EQ(rest.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) ASSERT_TRUE(rest[i] == sent[i]) << i;
}

// A peer that scribbles over a record the consumer has borrowed (its header, the
// frame's header and names, the payload) changes only the payload bytes the reader
// sees: what was decoded was copied out and checked first, the ring position is the
// consumer's own, and the connection goes on after the release.
TEST(ShmConnectionTest, ScribblingOverABorrowedRecordChangesOnlyItsPayload) {
  TempDir dir;
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(dir.Sock(), &p));
  const Frame f = MakeFrame(1, 64 << 10);
  ASSERT_TRUE(p.client->Send(f).ok());
  std::vector<Frame> got;
  std::string_view borrowed;
  ASSERT_TRUE(PollBorrowedOne(p.server.get(), &got, 2048, &borrowed).ok());
  ASSERT_EQ(got.size(), 1u);
  Frame want = f;
  want.payload.clear();
  // The record starts at ring offset 0: all of it, 8 bytes of record header first.
  std::memset(RequestRing(p.client.get()), 0xA5, 8 + EncodedFrameSize(f));
  EXPECT_TRUE(got[0] == want);
  ASSERT_EQ(borrowed.size(), f.payload.size());
  EXPECT_EQ(static_cast<uint8_t>(borrowed[100]), 0xA5);  // the peer's bytes, as they are now
  p.server->ReleaseBorrowed();
  for (uint64_t id = 2; id < 6; ++id) {
    const Frame next = MakeFrame(id, (id % 2) != 0 ? 64 << 10 : 64);
    ASSERT_TRUE(p.client->Send(next).ok());
    std::vector<Frame> more = Receive(p.server.get(), nullptr, 1);
    ASSERT_EQ(more.size(), 1u);
    EXPECT_TRUE(more[0] == next);
  }
}

// ---------------------------------------------------------------------------------------
// Handshake and listener

// A raw SEQPACKET connection to the listener.
UniqueFd RawConnect(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

Result<std::unique_ptr<ShmConnection>> AcceptWithin(ShmListener* l, const Doorbell* bell,
                                                    int64_t timeout_ns = 2000 * kMs) {
  const int64_t deadline = MonoNanos() + timeout_ns;
  for (;;) {
    auto a = l->Accept([&](std::string_view) { return bell; }, nullptr);
    if (!a.ok() || *a != nullptr || MonoNanos() > deadline) return a;
    std::this_thread::sleep_for(100us);
  }
}

TEST(ShmListenerTest, BadHellosAreRejectedAndTheListenerKeepsWorking) {
  TempDir dir;
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok());
  ShmListener::Options lopts;
  lopts.handshake_timeout = 50ms;
  auto l = ShmListener::Listen(dir.Sock(), lopts);
  ASSERT_TRUE(l.ok()) << l.status();
  struct stat st;
  ASSERT_EQ(stat(dir.Sock().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // Junk bytes.
  UniqueFd junk = RawConnect(dir.Sock());
  const std::string http = "GET /index.html HTTP/1.1\r\nHost: agent\r\n\r\n";
  ASSERT_EQ(send(junk.get(), http.data(), http.size(), 0), static_cast<ssize_t>(http.size()));
  auto a = AcceptWithin(l->get(), &*bell);
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument) << a.status();
  char answer[256];
  ssize_t n = recv(junk.get(), answer, sizeof(answer), 0);  // the refusal, with a reason
  ASSERT_GE(n, static_cast<ssize_t>(sizeof(internal::ShmWelcome)));
  internal::ShmWelcome w;
  std::memcpy(&w, answer, sizeof(w));
  EXPECT_EQ(w.status, static_cast<int32_t>(StatusCode::kInvalidArgument));

  // A well-formed hello without the doorbell descriptors.
  UniqueFd nofds = RawConnect(dir.Sock());
  internal::ShmHello h{internal::kShmHelloMagic, internal::kShmVersion, 4096, 0, 0};
  ASSERT_EQ(send(nofds.get(), &h, sizeof(h), 0), static_cast<ssize_t>(sizeof(h)));
  a = AcceptWithin(l->get(), &*bell);
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument) << a.status();

  // A silent client neither blocks Accept nor the next client, and times out.
  UniqueFd silent = RawConnect(dir.Sock());
  a = (*l)->Accept([&](std::string_view) { return &*bell; }, nullptr);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a, nullptr);
  a = AcceptWithin(l->get(), &*bell);
  EXPECT_EQ(a.status().code(), StatusCode::kDeadlineExceeded) << a.status();

  // A good client is still served.
  auto cbell = Doorbell::Create();
  ASSERT_TRUE(cbell.ok());
  Result<std::unique_ptr<ShmConnection>> client = UnavailableError("not run");
  std::thread t([&] { client = ShmConnect(dir.Sock(), *cbell, "good"); });
  a = AcceptWithin(l->get(), &*bell);
  t.join();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_NE(*a, nullptr);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Send(MakeFrame(1, 10)).ok());
  std::vector<Frame> got = Receive(a->get(), nullptr, 1);
  EXPECT_EQ(got.size(), 1u);
}

TEST(ShmListenerTest, PickBindsTheConnectionToADoorbellOrRefuses) {
  TempDir dir;
  auto w1 = Doorbell::Create();
  auto w2 = Doorbell::Create();
  auto cbell = Doorbell::Create();
  ASSERT_TRUE(w1.ok() && w2.ok() && cbell.ok());
  auto l = ShmListener::Listen(dir.Sock());
  ASSERT_TRUE(l.ok()) << l.status();
  auto pick = [&](std::string_view hint) -> const Doorbell* {
    if (hint == "w1") return &*w1;
    if (hint == "w2") return &*w2;
    return nullptr;
  };
  auto connect_and_accept = [&](std::string hint, Result<std::unique_ptr<ShmConnection>>* client,
                                Result<std::unique_ptr<ShmConnection>>* server) {
    std::thread t([&] { *client = ShmConnect(dir.Sock(), *cbell, hint); });
    const int64_t deadline = MonoNanos() + 2000 * kMs;
    std::string got_hint;
    do {
      *server = (*l)->Accept(pick, &got_hint);
    } while (server->ok() && **server == nullptr && MonoNanos() < deadline);
    t.join();
  };
  Result<std::unique_ptr<ShmConnection>> client = UnavailableError("");
  Result<std::unique_ptr<ShmConnection>> server = UnavailableError("");
  connect_and_accept("nobody", &client, &server);
  EXPECT_EQ(server.status().code(), StatusCode::kUnavailable) << server.status();
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable) << client.status();
  EXPECT_NE(client.status().message().find("refused"), std::string_view::npos);

  connect_and_accept("w2", &client, &server);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(server.ok()) << server.status();
  w1->PrepareSleep();
  w2->PrepareSleep();
  ASSERT_TRUE((*client)->Send(MakeFrame(1, 10)).ok());
  uint64_t v = 0;
  EXPECT_EQ(read(w2->event_fd(), &v, sizeof(v)), static_cast<ssize_t>(sizeof(v)));
  EXPECT_EQ(read(w1->event_fd(), &v, sizeof(v)), -1);
}

TEST(ShmListenerTest, ReplacesAStaleSocketButNotALiveOneOrAFile) {
  TempDir dir;
  {
    // A socket file left behind by a dead server.
    UniqueFd s(socket(AF_UNIX, SOCK_SEQPACKET, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, dir.Sock().c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  auto l = ShmListener::Listen(dir.Sock());
  ASSERT_TRUE(l.ok()) << l.status();
  auto again = ShmListener::Listen(dir.Sock());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists) << again.status();
  l->reset();
  EXPECT_NE(access(dir.Sock().c_str(), F_OK), 0);  // unlinked by the destructor

  const std::string file = dir.Sock("plain-file");
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  EXPECT_EQ(ShmListener::Listen(file).status().code(), StatusCode::kAlreadyExists);
}

// ---------------------------------------------------------------------------------------
// Across processes

// Child: connects, sends frames of each size, checks the echoes byte for byte, sleeping
// on its doorbell between polls. Exit code 0 = all good.
int EchoClientChild(const std::string& path) {
  alarm(20);  // never outlive a broken parent
  auto bell = Doorbell::Create();
  if (!bell.ok()) return 10;
  auto c = ShmConnect(path, *bell, "child");
  if (!c.ok()) return 11;
  const size_t sizes[] = {17, 4096, 64 << 10, 8 << 20, 100};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    Frame f = MakeFrame(i + 1, sizes[i]);
    if (!(*c)->Send(f).ok()) return 12;
    std::vector<Frame> got;
    const int64_t deadline = MonoNanos() + 5000 * kMs;
    while (got.empty()) {
      if (MonoNanos() > deadline) return 13;
      auto r = (*c)->Poll(&got);
      if (!r.ok()) return 14;
      if (!got.empty()) break;
      bell->PrepareSleep();
      if ((*c)->HasWork()) {
        bell->CancelSleep();
      } else if (!bell->Sleep(100 * kMs).ok()) {
        return 15;
      }
    }
    if (got.size() != 1) return 16;
    f.type = FrameType::kReply;
    if (!(got[0] == f)) return 17;
  }
  (*c)->Close();
  return 0;
}

TEST(ShmCrossProcessTest, EchoesAllSizesWithAForkedClient) {
  TempDir dir;
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok());
  auto l = ShmListener::Listen(dir.Sock());
  ASSERT_TRUE(l.ok()) << l.status();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(EchoClientChild(dir.Sock()));

  auto a = AcceptWithin(l->get(), &*bell, 3000 * kMs);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_NE(*a, nullptr);
  ShmConnection* server = a->get();
  int echoed = 0;
  Status end;
  const int64_t deadline = MonoNanos() + 10000 * kMs;
  while (MonoNanos() < deadline) {
    std::vector<Frame> got;
    auto r = server->Poll(&got);
    if (!r.ok()) {
      end = r.status();
      break;
    }
    for (Frame& f : got) {
      f.type = FrameType::kReply;
      ASSERT_TRUE(server->Send(f).ok());
      ++echoed;
    }
    if (got.empty()) {
      bell->PrepareSleep();
      if (server->HasWork()) {
        bell->CancelSleep();
      } else {
        ASSERT_TRUE(bell->Sleep(100 * kMs, std::array{server->socket_fd()}).ok());
      }
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(echoed, 5);
  EXPECT_EQ(end.code(), StatusCode::kUnavailable) << end;
}

TEST(ShmCrossProcessTest, KilledPeerIsDetectedPromptly) {
  TempDir dir;
  auto bell = Doorbell::Create();
  ASSERT_TRUE(bell.ok());
  auto l = ShmListener::Listen(dir.Sock());
  ASSERT_TRUE(l.ok()) << l.status();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);
    auto cb = Doorbell::Create();
    if (!cb.ok()) _exit(10);
    auto c = ShmConnect(dir.Sock(), *cb, "doomed");
    if (!c.ok()) _exit(11);
    if (!(*c)->Send(MakeFrame(1, 1000)).ok()) _exit(12);
    for (;;) pause();  // until SIGKILL
  }
  auto a = AcceptWithin(l->get(), &*bell, 3000 * kMs);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_NE(*a, nullptr);
  ShmConnection* server = a->get();
  std::vector<Frame> got = Receive(server, nullptr, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(server->PeerAlive());

  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  const int64_t t0 = MonoNanos();
  // A sleeping worker wakes on the socket's hang-up...
  bell->PrepareSleep();
  ASSERT_TRUE(bell->Sleep(5000 * kMs, std::array{server->socket_fd()}).ok());
  EXPECT_LT(MonoNanos() - t0, 1000 * kMs);
  // ...and Poll reports the death within a bounded time.
  Result<size_t> r = size_t{0};
  while (MonoNanos() - t0 < 2000 * kMs) {
    r = server->Poll(&got);
    if (!r.ok()) break;
  }
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_LT(MonoNanos() - t0, 1000 * kMs);
  EXPECT_FALSE(server->PeerAlive());
}

}  // namespace
}  // namespace tern::transport
