// Live migration: the driver on the source agent (Agent::Migrate), the migration
// server on the target (Agent::MigrationServer) and the forwarding of requests for
// instances that moved away (Agent::Forwarder). The steps that touch slots are in
// agent.cc. Design: docs/design/migration.md; wire format: docs/formats/migration.md.

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/agent.h"
#include "agent/memory_reserve.h"
#include "agent/migration_slots.h"
#include "agent/migration_wire.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/logging.h"
#include "transport/frame_client.h"

namespace tern::agent {

namespace {

constexpr char kMigrate[] = "$migrate";
// Pages copied per step on the instance's worker: 4 MiB, ~1 ms of memcpy here, so a
// round never stalls the instance's requests for long.
constexpr uint32_t kChunkPages = 1024;
// Page batches in flight on the migration connection.
constexpr size_t kWindow = 4;
// LZ4 compresses at roughly 2 Gbit/s per core here on memory-like data; below that link
// speed compressing pays.
constexpr uint64_t kLz4PaysBelowBps = 2'000'000'000;
constexpr auto kStepTimeout = std::chrono::seconds(30);
// Forwarded requests in flight to one agent.
constexpr size_t kForwardWindow = 128;
// A migration connection idle for this long is dropped (with its incoming instance).
constexpr int64_t kIdleNs = 120'000'000'000;

// One read from a migration connection into `decoder`: a large payload being received
// goes straight into its frame (the decoder's window), the rest through `buf`. Returns
// the bytes read, 0 at the end of the stream.
Result<size_t> ReadInto(int fd, transport::FrameDecoder* decoder, std::string& buf,
                        int64_t deadline) {
  for (;;) {
    const std::span<char> window = decoder->PayloadWindow();
    const size_t chunk = std::min(buf.size(), decoder->ReadLimit());
    iovec iov[2] = {{window.data(), window.size()}, {buf.data(), chunk}};
    msghdr msg{};
    msg.msg_iov = window.empty() ? iov + 1 : iov;
    msg.msg_iovlen = window.empty() ? 1 : 2;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        TERN_RETURN_IF_ERROR(transport::WaitFd(fd, /*for_write=*/false, deadline));
        continue;
      }
      return ErrnoError("recv (migration)", errno);
    }
    const size_t direct = std::min(static_cast<size_t>(n), window.size());
    decoder->PayloadReceived(direct);
    decoder->Feed(std::string_view(buf.data(), static_cast<size_t>(n) - direct));
    return static_cast<size_t>(n);
  }
}

transport::Frame MigrateFrame(const char* handler, std::string payload) {
  transport::Frame f;
  f.type = transport::FrameType::kInvoke;
  f.service = kMigrate;
  f.handler = handler;
  f.payload = std::move(payload);
  return f;
}

Result<std::unique_ptr<transport::FrameClient>> ConnectTo(const std::string& addr,
                                                          const std::string& what) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(addr, &host, &port).WithPrefix(what));
  Result<std::unique_ptr<transport::FrameClient>> c =
      transport::FrameClient::Connect(host, port, std::chrono::seconds(5));
  if (!c.ok()) return c.status().WithPrefix(fmt::format("{} at {}", what, addr));
  return c;
}

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

std::optional<std::string> Unhex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = digit(hex[i]), lo = digit(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------
// Forwarder: sends requests for an instance that moved away to the agent it moved to,
// over one pipelined frame connection, and completes them with the answers.

class Agent::Forwarder {
 public:
  explicit Forwarder(std::string tcp) : tcp_(std::move(tcp)), thread_([this] { Loop(); }) {}
  ~Forwarder() {
    {
      MutexLock l(&mu_);
      stopping_ = true;
      cv_.Signal();
    }
    thread_.join();
  }

  // Opens the connection now (on the forwarder's thread) rather than with the first
  // request: a migration calls this before its freeze, so the held requests do not wait
  // for a connect after the cut-over.
  void Connect() {
    MutexLock l(&mu_);
    connect_ = true;
    cv_.Signal();
  }

  void Submit(InvokeRequest req, std::function<void(InvokeResult)> done) {
    {
      MutexLock l(&mu_);
      if (!stopping_) {
        queue_.push_back(Held{std::move(req), std::move(done)});
        cv_.Signal();
        return;
      }
    }
    done(InvokeResult{UnavailableError("agent is shutting down"), {}, req.instance, 0});
  }

 private:
  void Loop() {
    std::unique_ptr<transport::FrameClient> client;
    for (;;) {
      std::deque<Held> batch;
      {
        MutexLock l(&mu_);
        while (queue_.empty() && !stopping_ && !connect_) cv_.Wait(&mu_);
        connect_ = false;
        batch.swap(queue_);
        if (stopping_) {
          for (Held& h : batch) {
            h.done(InvokeResult{UnavailableError("agent is shutting down"), {}, {}, 0});
          }
          return;
        }
      }
      if (batch.empty() && client != nullptr && client->error().ok()) continue;
      if (client == nullptr || !client->error().ok()) {
        Result<std::unique_ptr<transport::FrameClient>> c = ConnectTo(tcp_, "forwarding to");
        if (batch.empty()) {  // connecting ahead (Connect): a failure waits for a request
          if (c.ok()) client = std::move(*c);
          continue;
        }
        if (!c.ok()) {
          for (Held& h : batch) h.done(InvokeResult{c.status(), {}, h.req.instance, 0});
          client.reset();
          continue;
        }
        client = std::move(*c);
      }
      std::map<uint64_t, Held> pending;
      int64_t deadline = 0;
      std::deque<Held> retry;  // refused for a full queue: sent again
      bool broken = false;
      // One answer; false (and every waiting request failed) if the connection broke
      // or the answers stopped coming.
      auto receive_one = [&]() -> bool {
        int64_t left = deadline - MonoNanos();
        Result<transport::Frame> f =
            client->Receive(std::chrono::nanoseconds(std::max<int64_t>(left, 1)));
        if (!f.ok()) {
          // Its caller retries with the same idempotency key where it cares.
          Status st = f.status().WithPrefix("forwarded to " + tcp_);
          for (auto& [_, h] : pending) h.done(InvokeResult{st, {}, h.req.instance, 0});
          pending.clear();
          client.reset();
          return false;
        }
        auto it = pending.find(f->request_id);
        if (it == pending.end()) return true;
        Held h = std::move(it->second);
        pending.erase(it);
        InvokeResult r;
        r.instance = h.req.instance;
        if (f->type == transport::FrameType::kReply) {
          r.reply = std::move(f->payload);
        } else if (f->type == transport::FrameType::kMoved) {
          r.status =
              UnavailableError(fmt::format("instance {} moved on from {}", h.req.instance, tcp_));
        } else {
          r.status = transport::ErrorFrameStatus(*f);
          if (r.status.code() == StatusCode::kResourceExhausted &&
              (h.req.deadline_ns == 0 || MonoNanos() < h.req.deadline_ns)) {
            // Refused before it was queued (the instance's queue is full): never ran,
            // so sending it again is safe. After the others.
            retry.push_back(std::move(h));
            return true;
          }
        }
        h.done(std::move(r));
        return true;
      };
      for (int pass = 0; !batch.empty(); ++pass) {
        if (pass > 0)
          std::this_thread::sleep_for(std::chrono::microseconds(200 * std::min(pass, 50)));
        for (Held& h : batch) {
          if (broken) {
            h.done(InvokeResult{
                UnavailableError("forwarding to " + tcp_ + " failed"), {}, h.req.instance, 0});
            continue;
          }
          transport::Frame f;
          f.type = transport::FrameType::kInvoke;
          f.service = h.req.service;
          f.handler = h.req.instance.empty() ? h.req.handler : h.req.handler + "@" + h.req.instance;
          f.payload = h.req.payload;
          f.tenant = h.req.tenant;
          f.trace_id = h.req.trace_id;
          f.idempotency_key = h.req.idempotency_key;
          const int64_t now = MonoNanos();
          int64_t until = h.req.deadline_ns != 0 ? h.req.deadline_ns : now + 30'000'000'000;
          if (h.req.deadline_ns != 0) {
            f.budget_us =
                static_cast<uint32_t>(std::clamp<int64_t>((until - now) / 1000, 1, UINT32_MAX));
          }
          deadline = std::max(deadline, until);
          // A window, not the whole burst: the target's queue per instance is bounded
          // (requests held during a long freeze would overflow it).
          while (!broken && pending.size() >= kForwardWindow) broken = !receive_one();
          if (broken) {
            h.done(InvokeResult{
                UnavailableError("forwarding to " + tcp_ + " failed"), {}, h.req.instance, 0});
            continue;
          }
          Result<uint64_t> id = client->Send(std::move(f));
          if (!id.ok()) {
            h.done(InvokeResult{id.status(), {}, h.req.instance, 0});
            continue;
          }
          pending.emplace(*id, std::move(h));
        }
        while (!pending.empty() && receive_one()) {
        }
        batch.clear();
        batch.swap(retry);
      }
    }
  }

  const std::string tcp_;
  Mutex mu_;
  CondVar cv_;
  std::deque<Held> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  bool connect_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

std::shared_ptr<Agent::Forwarder> Agent::ForwarderTo(const std::string& tcp) {
  MutexLock l(&mig_mu_);
  std::shared_ptr<Forwarder>& slot = forwarders_[tcp];
  if (slot == nullptr) slot = std::make_shared<Forwarder>(tcp);
  return slot;
}

void Agent::Forward(const MovedTo& to, InvokeRequest req, std::function<void(InvokeResult)> done) {
  ForwarderTo(to.tcp)->Submit(std::move(req), std::move(done));
}

// ---------------------------------------------------------------------------------
// MigrationServer: the target side. One listening socket; one thread per incoming
// migration connection, which blocks on it (bulk transfer, not latency-critical, and
// off the workers and the I/O thread).

class Agent::MigrationServer {
 public:
  static Result<std::unique_ptr<MigrationServer>> Start(Agent* agent, const std::string& ip) {
    TERN_ASSIGN_OR_RETURN(transport::UniqueFd fd, transport::ListenTcp(ip, 0, 16));
    TERN_ASSIGN_OR_RETURN(uint16_t port, transport::LocalPort(fd.get()));
    // Blocking accepts on a thread of its own (ListenTcp makes sockets for epoll);
    // shutdown() wakes it.
    const int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) != 0) {
      return ErrnoError("fcntl(migration listener)", errno);
    }
    auto s = std::unique_ptr<MigrationServer>(new MigrationServer(agent));
    s->listen_ = std::move(fd);
    s->address_ = fmt::format("{}:{}", ip, port);
    // Agents of this host reach the shared-memory listener's socket: its `.mig` sibling
    // hands out migration slots. Without it, migrations in arrive over TCP only.
    if (const std::string& shm = agent->options().shm_path; !shm.empty()) {
      Result<std::unique_ptr<MigSlotServer>> slots = MigSlotServer::Start(shm + ".mig");
      if (slots.ok()) {
        s->slots_ = std::move(*slots);
      } else {
        TERN_LOG(WARN) << "no shared-memory migrations into this agent: " << slots.status();
      }
    }
    s->accept_ = std::thread([p = s.get()] { p->AcceptLoop(); });
    return s;
  }
  ~MigrationServer() {
    {
      MutexLock l(&mu_);
      stopping_ = true;
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    ::shutdown(listen_.get(), SHUT_RDWR);
    accept_.join();
    std::vector<std::thread> conns;
    {
      MutexLock l(&mu_);
      conns.swap(conns_);
    }
    for (std::thread& t : conns) t.join();
    slots_.reset();  // after the connections, which revoke their tokens there
  }
  const std::string& address() const { return address_; }

 private:
  explicit MigrationServer(Agent* agent) : agent_(agent) {}

  void AcceptLoop() {
    for (;;) {
      int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // shut down
      }
      MutexLock l(&mu_);
      if (stopping_) {
        ::close(fd);
        return;
      }
      fds_.insert(fd);
      conns_.emplace_back([this, fd] { Serve(transport::UniqueFd(fd)); });
    }
  }

  void Serve(transport::UniqueFd fd) {
    (void)transport::SetNoDelay(fd.get());
    const std::string peer = transport::PeerAddress(fd.get());
    transport::FrameDecoder decoder;
    Conn conn;
    std::shared_ptr<Incoming>& in = conn.in;
    // Headers and small frames (a batch's payload goes straight into its frame): 64 KiB
    // from the heap. A fresh 1 MiB here was an mmap and 256 first touches: 1.5–13 ms of
    // a same-host migration's setup, measured in the bench's process.
    std::string buf(64 << 10, '\0');
    transport::Frame f;  // reused: a 4 MiB payload buffer is faulted in once
    bool open = true;
    auto reply = [&](const transport::Frame& f) {
      std::string out;
      (void)transport::EncodeFrame(f, &out);
      if (!transport::WriteAll(fd.get(), out, MonoNanos() + 30'000'000'000).ok()) open = false;
    };
    while (open) {
      // A page batch's payload is received straight into its frame (header first, then
      // the payload window), not into `buf` and copied from there.
      Result<size_t> n = ReadInto(fd.get(), &decoder, buf, MonoNanos() + kIdleNs);
      if (!n.ok() || *n == 0) break;
      for (;;) {
        Result<bool> got = decoder.Next(&f);
        if (!got.ok()) {
          reply(transport::MakeErrorFrame(0, got.status()));
          open = false;
          break;
        }
        if (!*got) break;
        Status st = Handle(f, &conn, reply);
        if (st.ok() && f.handler == "begin" && conn.slots == nullptr) {
          WarmBatchBuffers(&decoder, &f);
        }
        if (!st.ok()) {
          TERN_LOG(WARN) << "incoming migration from " << peer << ": " << st;
          reply(transport::MakeErrorFrame(f.request_id, st));
          if (f.handler == "pages" || f.handler == "slot" || f.handler == "commit") {
            // The stream is broken for this instance: start over or give up.
            if (in != nullptr) agent_->IncomingDrop(in);
            in.reset();
          }
        }
      }
    }
    if (in != nullptr) {
      TERN_LOG(WARN) << "incoming migration of "
                     << "an instance from " << peer
                     << " ended before its commit; dropped (the source keeps it)";
      agent_->IncomingDrop(in);
    }
    ReleaseSlots(&conn);
    MutexLock l(&mu_);
    fds_.erase(fd.get());
  }

  // What one migration connection holds.
  struct Conn {
    std::shared_ptr<Incoming> in;
    // Shared-memory transport ('slots'): the set handed over, the token that names it on
    // the slot socket, the process it was offered to, and the next 'slot' frame's number.
    std::shared_ptr<MigSlots> slots;
    std::string token;
    pid_t pid = 0;
    uint32_t next_seq = 0;
  };

  // 'slots' {"host", "pid"}: a set of slots for the source process `pid` of this host, and
  // a token for it on the slot socket.
  Result<std::string> OfferSlots(std::string_view payload, Conn* conn) {
    if (slots_ == nullptr) {
      return UnavailableError(fmt::format(
          "{} takes no shared-memory migrations (it has no shared-memory socket)",
          agent_->options_.device));
    }
    nlohmann::json j = nlohmann::json::parse(payload, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("host") || !j["host"].is_string() ||
        !j.contains("pid") || !j["pid"].is_number_integer()) {
      return InvalidArgumentError("malformed 'slots' (want host, pid)");
    }
    const std::string host = j["host"].get<std::string>();
    if (host != agent_->options_.host) {
      return FailedPreconditionError(fmt::format("{} runs on host '{}', the source on '{}'",
                                                 agent_->options_.device,
                                                 agent_->options_.host, host));
    }
    ReleaseSlots(conn);
    conn->pid = j["pid"].get<pid_t>();
    TERN_ASSIGN_OR_RETURN(conn->slots, agent_->SlotsFor(conn->pid));
    conn->token = slots_->Offer(conn->slots, conn->pid);
    conn->next_seq = 0;
    return nlohmann::json{{"path", slots_->path()},
                          {"token", Hex(conn->token)},
                          {"slots", kMigSlots},
                          {"slot_bytes", kMigSlotBytes}}
        .dump();
  }

  void ReleaseSlots(Conn* conn) {
    if (conn->slots == nullptr) return;
    slots_->Revoke(conn->token);
    agent_->SlotsDone(conn->pid, std::move(conn->slots));
    conn->slots.reset();
  }

  // 'slot': the batch in a slot, checked as a 'pages' payload is (the slot's bytes are
  // the source's to write: ApplySharedPageBatch copies the head out before checking it).
  Result<uint32_t> SlotBatch(std::string_view payload, Conn* conn) {
    TERN_ASSIGN_OR_RETURN(SlotFrame s, DecodeSlotFrame(payload));
    if (s.seq != conn->next_seq) {
      return InvalidArgumentError(
          fmt::format("'slot' frame number {} out of sequence (expected {})", s.seq,
                      conn->next_seq));
    }
    ++conn->next_seq;
    if (s.index >= kMigSlots) {
      return InvalidArgumentError(
          fmt::format("slot {} out of range (there are {})", s.index, kMigSlots));
    }
    if (s.length < 8 || uint64_t{s.offset} + s.length > kMigSlotBytes) {
      return InvalidArgumentError(fmt::format(
          "'slot' frame of {} bytes at offset {} does not fit a slot of {} bytes (or is "
          "shorter than 8)",
          s.length, s.offset, kMigSlotBytes));
    }
    if (conn->in == nullptr) return FailedPreconditionError("'slot' without a 'begin'");
    const char* p = conn->slots->slot(s.index) + s.offset;
    uint64_t bytes;
    std::memcpy(&bytes, p, 8);
    TERN_RETURN_IF_ERROR(agent_->IncomingGrow(conn->in.get(), bytes));
    return agent_->IncomingPageBatch(conn->in.get(), std::string_view(p + 8, s.length - 8),
                                     /*shared=*/true);
  }

  // The page batches that follow a 'begin' are received into two buffers in turn (the
  // frame's payload and the decoder's spare: FrameDecoder::Next): both get warm memory
  // from the agent's reserve, after the instance's memory and rollback point took
  // theirs, so that receiving them costs no page faults (a fresh 4 MiB buffer: ~1,000).
  void WarmBatchBuffers(transport::FrameDecoder* decoder, transport::Frame* f) {
    MemoryReserve* r = agent_->memory_reserve();
    if (r == nullptr) return;
    const size_t batch = 8 + PageBatchHeadBytes(kChunkPages) + kChunkPages * kMigrationPageBytes;
    std::string spare;
    ReserveWarmString(r, &spare, batch);
    decoder->GiveSpare(std::move(spare));
    ReserveWarmString(r, &f->payload, batch);  // the begin's, handled
  }

  template <typename Reply>
  Status Handle(const transport::Frame& f, Conn* conn, Reply& reply) {
    std::shared_ptr<Incoming>* in = &conn->in;
    if (f.type != transport::FrameType::kInvoke || f.service != kMigrate) {
      return InvalidArgumentError("the migration port takes '$migrate' invoke frames only");
    }
    transport::Frame ok;
    ok.type = transport::FrameType::kReply;
    ok.request_id = f.request_id;
    if (f.handler == "begin") {
      nlohmann::json j = nlohmann::json::parse(f.payload, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("instance") || !j.contains("service") ||
          !j.contains("module_hash") || !j.contains("memory_bytes")) {
        return InvalidArgumentError(
            "malformed 'begin' (want instance, service, module_hash, memory_bytes)");
      }
      std::optional<uint32_t> sp;
      try {
        if (j.contains("stack_pointer")) sp = j["stack_pointer"].get<uint32_t>();
        if (*in != nullptr) agent_->IncomingDrop(*in);
        in->reset();
        TERN_ASSIGN_OR_RETURN(*in, agent_->IncomingBegin(j["instance"].get<std::string>(),
                                                         j["service"].get<std::string>(),
                                                         j["module_hash"].get<std::string>(),
                                                         j["memory_bytes"].get<uint64_t>(), sp));
      } catch (const nlohmann::json::exception& e) {
        return InvalidArgumentError(std::string("malformed 'begin': ") + e.what());
      }
      reply(ok);
      return Status::Ok();
    }
    if (f.handler == "deploy") {
      TERN_RETURN_IF_ERROR(agent_->DeployFromMigration(f.payload));
      reply(ok);
      return Status::Ok();
    }
    if (f.handler == "slots") {
      TERN_ASSIGN_OR_RETURN(ok.payload, OfferSlots(f.payload, conn));
      reply(ok);
      return Status::Ok();
    }
    if (f.handler == "slot") {
      if (conn->slots == nullptr) {
        return FailedPreconditionError(
            "'slot' before any slots were set up on this connection (send 'slots' first)");
      }
      TERN_ASSIGN_OR_RETURN(uint32_t pages, SlotBatch(f.payload, conn));
      ok.payload = std::to_string(pages);
      reply(ok);
      return Status::Ok();
    }
    if (*in == nullptr) {
      return FailedPreconditionError(fmt::format("'{}' without a 'begin'", f.handler));
    }
    if (f.handler == "pages") {
      if (f.payload.size() < 8) return InvalidArgumentError("'pages' truncated");
      uint64_t bytes;
      std::memcpy(&bytes, f.payload.data(), 8);
      TERN_RETURN_IF_ERROR(agent_->IncomingGrow(in->get(), bytes));
      TERN_ASSIGN_OR_RETURN(uint32_t pages,
                            agent_->IncomingPageBatch(in->get(), std::string_view(f.payload).substr(8)));
      ok.payload = std::to_string(pages);
      reply(ok);
      return Status::Ok();
    }
    if (f.handler == "commit") {
      std::shared_ptr<Incoming> taken = std::move(*in);
      Status st = agent_->IncomingCommit(taken, f.payload);
      if (!st.ok()) {
        agent_->IncomingDrop(taken);
        return st;
      }
      reply(ok);
      return Status::Ok();
    }
    if (f.handler == "abort") {
      agent_->IncomingDrop(*in);
      in->reset();
      reply(ok);
      return Status::Ok();
    }
    return InvalidArgumentError(fmt::format("unknown migration step '{}'", f.handler));
  }

  Agent* const agent_;
  transport::UniqueFd listen_;
  std::string address_;
  std::thread accept_;
  std::unique_ptr<MigSlotServer> slots_;  // null: no shared-memory socket
  Mutex mu_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::set<int> fds_ GUARDED_BY(mu_);
  std::vector<std::thread> conns_ GUARDED_BY(mu_);
};

Result<std::string> Agent::MigrationAddress() {
  MutexLock l(&mig_mu_);
  if (mig_server_ == nullptr) {
    std::string ip = "127.0.0.1";
    if (!options_.tcp_address.empty()) {
      std::string host;
      uint16_t port;
      if (ParseHostPort(options_.tcp_address, &host, &port).ok()) ip = host;
    }
    if (ip == "0.0.0.0" || ip.empty()) ip = "127.0.0.1";
    TERN_ASSIGN_OR_RETURN(mig_server_, MigrationServer::Start(this, ip));
    TERN_LOG(INFO) << "accepting migrations on " << mig_server_->address();
  }
  return mig_server_->address();
}

void Agent::WarmMigrationSlots() {
  Result<std::shared_ptr<MigSlots>> s = MigSlots::Create(/*populate=*/true);
  if (!s.ok()) {
    TERN_LOG(WARN) << "no warm migration slots: " << s.status();
    return;
  }
  MutexLock l(&mig_mu_);
  warm_slots_ = std::move(*s);
}

Result<std::shared_ptr<MigSlots>> Agent::SlotsFor(int pid) {
  {
    MutexLock l(&mig_mu_);
    if (auto it = kept_slots_.find(pid); it != kept_slots_.end()) {
      std::shared_ptr<MigSlots> s = std::move(it->second);
      kept_slots_.erase(it);
      return s;
    }
    // Never handed to anyone yet: a set another process has mapped is not given to a
    // second one (the first could write into the second's batches).
    if (warm_slots_ != nullptr) return std::move(warm_slots_);
  }
  return MigSlots::Create(/*populate=*/false);
}

void Agent::SlotsDone(int pid, std::shared_ptr<MigSlots> slots) {
  // Kept for the next migration from the same process (which keeps its mapping: no
  // faults on either side), for a few processes at most (24 MiB each).
  constexpr size_t kKeptSets = 4;
  if (reserve_ == nullptr) return;
  MutexLock l(&mig_mu_);
  if (kept_slots_.count(pid) != 0 || kept_slots_.size() < kKeptSets) {
    kept_slots_[pid] = std::move(slots);
  }
}

void Agent::ShutdownMigration() {
  std::shared_ptr<MigrationServer> server;
  std::map<std::string, std::shared_ptr<Forwarder>> fwd;
  {
    MutexLock l(&mig_mu_);
    server = std::move(mig_server_);
    fwd.swap(forwarders_);
  }
  server.reset();
  fwd.clear();
  std::map<std::string, std::shared_ptr<Incoming>> left;
  {
    MutexLock l(&mu_);
    left = incoming_;
  }
  for (auto& [_, in] : left) IncomingDrop(in);
}

// ---------------------------------------------------------------------------------
// The driver (source side).

namespace {

// The migration connection: page batches go out pipelined, `kWindow` unacknowledged.
class Stream {
 public:
  // `returned(chunk)`: a chunk lent to the connection by SendChunk was answered (its
  // buffer may be reused).
  Stream(std::unique_ptr<transport::FrameClient> c, std::function<void(Agent::MigChunk*)> returned)
      : c_(std::move(c)), returned_(std::move(returned)) {}

  Result<transport::Frame> Call(const char* step, std::string payload) {
    TERN_RETURN_IF_ERROR(Drain());
    bytes_ += payload.size();
    return c_->Call(MigrateFrame(step, std::move(payload)), kStepTimeout);
  }
  // Sends a step without waiting for its answer: what is sent behind it is pipelined,
  // and its answer (the first of those to come back) is kept: step_answer().
  Status SendStep(const char* step, std::string payload) {
    TERN_RETURN_IF_ERROR(Drain());
    bytes_ += payload.size();
    TERN_ASSIGN_OR_RETURN(step_id_, c_->Send(MigrateFrame(step, std::move(payload))));
    step_answer_.reset();
    return Status::Ok();
  }
  // Sends `step` behind what is in flight (no round trip for their answers first) and
  // waits for every answer: the first refusal among them, else the step's answer.
  Result<transport::Frame> CallBehind(const char* step, std::string payload) {
    bytes_ += payload.size();
    TERN_ASSIGN_OR_RETURN(const uint64_t id, c_->Send(MigrateFrame(step, std::move(payload))));
    for (;;) {
      TERN_ASSIGN_OR_RETURN(transport::Frame f, Receive());
      TERN_RETURN_IF_ERROR(transport::ErrorFrameStatus(f));  // the step's or a batch's
      if (f.request_id == id) return f;
    }
  }
  // The answer to SendStep's step once it came back (its error, or OK).
  const std::optional<Status>& step_answer() const { return step_answer_; }
  // Takes every answer still owed, refusals included (what followed a failed step);
  // fails only when the connection does.
  Status DrainRefused() {
    Status refused;
    while (c_->in_flight() > 0) TERN_RETURN_IF_ERROR(Answer(&refused));
    return Status::Ok();
  }
  // Sends a chunk as MigScan/MigCopy left it, as one batch. Raw, the batch is finished
  // where the worker copied the pages (its head goes into the room left before them,
  // its checksum is combined from the one the worker took) and sent from the chunk's
  // buffer: the pages are not copied again, and the chunk is lent to the connection
  // until the batch is answered (`*lent`; then `returned` gets it back), so that its
  // buffer (warm memory: StartChunk) is reused for the next chunks instead of a new
  // one per batch. LZ4: compressed into a payload of its own.
  Result<size_t> SendChunk(Agent::MigChunk& c, PageCodec codec, bool* lent) {
    *lent = false;
    if (c.slot != nullptr) return SendSlot(c, lent);
    if (codec == PageCodec::kRaw) {
      const size_t head = 8 + PageBatchHeadBytes(c.zero.size() + c.pages.size());
      // Fewer pages than room was made for (the memory's end; checksum mode): the batch
      // starts later in the buffer.
      const size_t start = c.data_at - head;
      std::memcpy(c.data.data() + start, &c.memory_bytes, 8);
      FinishRawPageBatch(&c.data, start + 8, c.zero, c.pages, c.data_crc);
      const size_t size = c.data.size() - start;
      bytes_ += size;
      TERN_ASSIGN_OR_RETURN(uint64_t id, c_->SendBorrowed(MigrateFrame("pages", ""),
                                                          std::string_view(c.data).substr(start)));
      lent_[id] = &c;
      *lent = true;
      TERN_RETURN_IF_ERROR(Window());
      return size;
    }
    std::string payload(reinterpret_cast<const char*>(&c.memory_bytes), 8);
    AppendSplitPages(c.data.data() + c.data_at, c.zero, c.pages, codec, &payload);
    return SendPayload(std::move(payload));
  }
  // Shared memory: the chunk was copied into a slot of the target's (ChunkPipe::UseSlots);
  // its batch is finished there, and a 'slot' frame names it. The slot is lent until the
  // frame is answered, as a raw chunk's buffer is.
  Result<size_t> SendSlot(Agent::MigChunk& c, bool* lent) {
    const size_t head = 8 + PageBatchHeadBytes(c.zero.size() + c.pages.size());
    const size_t start = c.data_at - head;
    std::memcpy(c.slot + start, &c.memory_bytes, 8);
    FinishRawPageBatch(c.slot + start + 8, c.zero, c.pages, c.data_crc);
    const size_t size = c.end() - start;
    std::string payload = EncodeSlotFrame(SlotFrame{c.slot_index, static_cast<uint32_t>(start),
                                                    static_cast<uint32_t>(size), slot_seq_++});
    if (shm_hook_) shm_hook_("slot", &payload);
    bytes_ += payload.size();
    shm_bytes_ += size;
    TERN_ASSIGN_OR_RETURN(uint64_t id, c_->Send(MigrateFrame("slot", std::move(payload))));
    lent_[id] = &c;
    *lent = true;
    TERN_RETURN_IF_ERROR(Window());
    return size;
  }
  // From now on chunks in slots go as 'slot' frames, `window` of them unanswered.
  void UseSlots(size_t window,
                std::function<void(const std::string&, std::string*)> hook) {
    window_ = window;
    shm_hook_ = std::move(hook);
  }
  uint64_t shm_bytes() const { return shm_bytes_; }
  Result<size_t> SendPayload(std::string payload) {
    const size_t size = payload.size();
    bytes_ += size;
    TERN_RETURN_IF_ERROR(c_->Send(MigrateFrame("pages", std::move(payload))).status());
    TERN_RETURN_IF_ERROR(Window());
    return size;
  }
  Status Drain() {
    while (c_->in_flight() > 0) TERN_RETURN_IF_ERROR(Ack());
    return Status::Ok();
  }
  uint64_t bytes() const { return bytes_; }

 private:
  Status Window() {
    while (c_->in_flight() >= window_) TERN_RETURN_IF_ERROR(Ack());
    return Status::Ok();
  }
  Status Ack() {
    Status answer;
    TERN_RETURN_IF_ERROR(Answer(&answer));
    return answer;
  }
  // Receives the next answer into `*answer` (its error, or OK); fails when the
  // connection does.
  Status Answer(Status* answer) {
    TERN_ASSIGN_OR_RETURN(transport::Frame f, Receive());
    *answer = transport::ErrorFrameStatus(f);
    if (f.request_id == step_id_) step_answer_ = *answer;
    return Status::Ok();
  }
  // The next answer; a chunk it answers is given back.
  Result<transport::Frame> Receive() {
    TERN_ASSIGN_OR_RETURN(transport::Frame f, c_->Receive(kStepTimeout));
    if (auto it = lent_.find(f.request_id); it != lent_.end()) {
      returned_(it->second);
      lent_.erase(it);
    }
    return f;
  }
  std::unique_ptr<transport::FrameClient> c_;
  std::function<void(Agent::MigChunk*)> returned_;
  std::map<uint64_t, Agent::MigChunk*> lent_;  // by request id
  uint64_t step_id_ = 0;
  std::optional<Status> step_answer_;
  uint64_t bytes_ = 0;
  size_t window_ = kWindow;
  uint32_t slot_seq_ = 0;
  uint64_t shm_bytes_ = 0;
  std::function<void(const std::string&, std::string*)> shm_hook_;
};

// Copies the chunks of a round on the instance's worker one step ahead of the sender:
// while the migrating thread encodes and sends chunk i, a thread of this pipe has the
// worker copy chunk i + 1 (kChunkBuffers buffers, reused across rounds: the ones in
// flight on the connection come back when answered). `copy(chunk)` fills the next
// chunk and returns false when the round has no more.
class ChunkPipe {
 public:
  using Copy = std::function<Result<bool>(Agent::MigChunk*)>;

  // Starts copying with `copy`; the previous round must have been finished (Finish).
  void Start(Copy copy) {
    {
      MutexLock l(&mu_);
      copy_ = std::move(copy);
      ready_.clear();
      free_.clear();
      for (Agent::MigChunk& b : bufs_) free_.push_back(&b);
      done_ = stop_ = false;
      error_ = Status::Ok();
    }
    thread_ = std::thread([this] { Loop(); });
  }
  // The next chunk in order, null after the last one, or the copy's error.
  Result<Agent::MigChunk*> Next() {
    MutexLock l(&mu_);
    while (ready_.empty() && !done_) cv_.Wait(&mu_);
    if (!ready_.empty()) {
      Agent::MigChunk* c = ready_.front();
      ready_.pop_front();
      return c;
    }
    if (!error_.ok()) return error_;
    return static_cast<Agent::MigChunk*>(nullptr);
  }
  // The chunks are assembled in `slots` (one buffer per slot) from the next Start on.
  // `slots` must outlive the pipe's use of them.
  void UseSlots(const MigSlots& slots) {
    static_assert(kChunkBuffers == kMigSlots, "a chunk buffer per slot");
    for (size_t i = 0; i < kChunkBuffers; ++i) {
      bufs_[i].slot = slots.slot(i);
      bufs_[i].slot_index = static_cast<uint32_t>(i);
    }
  }
  // A buffer for a copy outside the pipe, between rounds: once Finish()ed, with every
  // chunk given back (the stream drained).
  Agent::MigChunk* Spare() { return &bufs_[0]; }
  // Gives a chunk from Next back for the next copy (any thread).
  void Release(Agent::MigChunk* c) {
    MutexLock l(&mu_);
    free_.push_back(c);
    cv_.SignalAll();
  }
  // Stops the copying (after the last chunk, or early on an error) and waits for it.
  void Finish() {
    {
      MutexLock l(&mu_);
      stop_ = true;
      cv_.SignalAll();
    }
    if (thread_.joinable()) thread_.join();
  }
  ~ChunkPipe() { Finish(); }

 private:
  void Loop() {
    for (;;) {
      Agent::MigChunk* c;
      {
        MutexLock l(&mu_);
        while (free_.empty() && !stop_) cv_.Wait(&mu_);
        if (stop_) break;
        c = free_.front();
        free_.pop_front();
      }
      Result<bool> more = copy_(c);
      MutexLock l(&mu_);
      if (!more.ok() || !*more) {
        error_ = more.ok() ? Status::Ok() : more.status();
        break;
      }
      ready_.push_back(c);
      cv_.SignalAll();
    }
    MutexLock l(&mu_);
    done_ = true;
    cv_.SignalAll();
  }

  // The sender's window, the chunk it sends and the one being copied.
  static constexpr size_t kChunkBuffers = kWindow + 2;
  Agent::MigChunk bufs_[kChunkBuffers];
  Copy copy_;
  std::thread thread_;
  Mutex mu_;
  CondVar cv_;
  std::deque<Agent::MigChunk*> ready_ GUARDED_BY(mu_);
  std::deque<Agent::MigChunk*> free_ GUARDED_BY(mu_);
  bool done_ GUARDED_BY(mu_) = false;
  bool stop_ GUARDED_BY(mu_) = false;
  Status error_ GUARDED_BY(mu_);
};

}  // namespace

Result<MigrationReport> Agent::Migrate(const std::string& id, const MigrateOptions& o) {
  const int64_t t0 = MonoNanos();
  MigrationReport rep;
  rep.instance = id;
  rep.to_device = o.to_device.empty() ? o.to_tcp : o.to_device;
  rep.mode = o.precopy ? "precopy" : "stop-and-copy";
  PageCodec codec = PageCodec::kRaw;
  if (o.codec == "lz4" || (o.codec == "auto" && o.link_bps != 0 && o.link_bps < kLz4PaysBelowBps)) {
    codec = PageCodec::kLz4;
  } else if (o.codec != "auto" && o.codec != "none") {
    return InvalidArgumentError(fmt::format("codec '{}': expected auto, lz4 or none", o.codec));
  }
  rep.codec = PageCodecName(codec);
  if (o.transport != "auto" && o.transport != "tcp" && o.transport != "shm") {
    return InvalidArgumentError(
        fmt::format("transport '{}': expected auto, tcp or shm", o.transport));
  }
  if (o.transport == "shm" && codec != PageCodec::kRaw) {
    return InvalidArgumentError("transport shm carries raw pages: codec lz4 needs transport tcp");
  }
  if (o.to_tcp.empty()) return InvalidArgumentError("no target address (to_tcp)");
  if (o.to_tcp == options_.tcp_address) {
    return InvalidArgumentError(fmt::format("{} is this agent's own address", o.to_tcp));
  }
  auto hook = [&](const std::string& step) {
    return o.step_hook ? o.step_hook(step) : Status::Ok();
  };
  const std::string target = fmt::format("target {} ({})", rep.to_device, o.to_tcp);

  // Where the target takes migrations, asked on its data-plane port.
  std::string addr;
  {
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::FrameClient> dp, ConnectTo(o.to_tcp, target));
    Result<transport::Frame> a = dp->Call(MigrateFrame("address", ""), kStepTimeout);
    if (!a.ok()) return a.status().WithPrefix(target + " has no migration port");
    addr = a->payload;
  }
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::FrameClient> mc,
                        ConnectTo(addr, target + " migration port"));
  // The chunk buffers come from the warm reserve (StartChunk): it refills afterwards,
  // not while the migration runs.
  MemoryReserve::Hold hold(reserve_.get());
  // Round 0's progress (its copies may start before `begin` is answered: below).
  uint64_t r0_pages = 0, r0_from = 0;
  // The target's slots (shared-memory transport), declared before the pipe that copies
  // into them; the pipe before the stream, which may hold chunks of it until it is gone.
  std::shared_ptr<MigSlots> slots;
  ChunkPipe pipe;
  Stream stream(std::move(mc), [&pipe](MigChunk* c) { pipe.Release(c); });

  // Same host: the pages go through slots of shared memory the target hands over on its
  // slot socket, asked for on the migration connection ('slots').
  rep.transport = "tcp";
  if (o.transport != "tcp") {
    Result<std::shared_ptr<MigSlots>> got = [&]() -> Result<std::shared_ptr<MigSlots>> {
      if (codec != PageCodec::kRaw) {
        return FailedPreconditionError("codec lz4: shared memory carries raw pages");
      }
      Result<transport::Frame> a = stream.Call(
          "slots", nlohmann::json{{"host", options_.host}, {"pid", ::getpid()}}.dump());
      if (!a.ok()) return a.status();
      nlohmann::json j = nlohmann::json::parse(a->payload, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("path") || !j["path"].is_string() ||
          !j.contains("token") || !j["token"].is_string() || j.value("slots", size_t{0}) != kMigSlots ||
          j.value("slot_bytes", size_t{0}) != kMigSlotBytes) {
        return FailedPreconditionError("the target's 'slots' answer is not for this version: " +
                                       a->payload.substr(0, 200));
      }
      std::optional<std::string> token = Unhex(j["token"].get<std::string>());
      if (!token.has_value()) return InvalidArgumentError("the target's slot token is not hex");
      if (o.shm_hook_for_test) o.shm_hook_for_test("token", &*token);
      const std::string path = j["path"].get<std::string>();
      std::shared_ptr<MigSlots> cached;
      if (reserve_ != nullptr) {
        MutexLock l(&mig_mu_);
        if (auto it = target_slots_.find(path); it != target_slots_.end()) cached = it->second;
      }
      Result<std::shared_ptr<MigSlots>> s = FetchMigSlots(path, *token, cached);
      if (!s.ok()) return s.status().WithPrefix("the target's slot socket " + path);
      if (reserve_ != nullptr) {
        // Kept: the next migration to this target maps nothing and faults nothing.
        MutexLock l(&mig_mu_);
        target_slots_[path] = *s;
      }
      return s;
    }();
    if (got.ok()) {
      slots = std::move(*got);
      rep.transport = "shm";
      pipe.UseSlots(*slots);
      stream.UseSlots(kMigSlots, o.shm_hook_for_test);
    } else if (o.transport == "shm") {
      return got.status().WithPrefix(fmt::format(
          "migrating {} to {} over shared memory: cannot have it; it keeps serving here", id,
          target));
    } else {
      rep.transport_note = fmt::format("shared memory not used: {}", got.status().message());
      TERN_LOG(INFO) << "migrating " << id << " to " << target << " over TCP: "
                     << rep.transport_note;
    }
  }

  uint64_t memory_bytes = 0;
  bool exact = false;
  std::string hash, service;
  std::optional<uint32_t> sp;
  if (Status st = MigStart(id, o.freeze_timeout_ns, &memory_bytes, &exact, &service, &hash, &sp);
      !st.ok()) {
    return st.code() == StatusCode::kDeadlineExceeded
               ? st.WithPrefix(fmt::format(
                     "migrating {} to {} did not start; it keeps serving here", id, target))
               : st;
  }
  rep.memory_bytes = memory_bytes;
  bool finished = false;
  // Any failure before the cut-over: the instance thaws and keeps serving here.
  struct Guard {
    Agent* a;
    const std::string& id;
    bool& finished;
    ~Guard() {
      if (!finished) a->MigAbort(id);
    }
  } guard{this, id, finished};
  auto fail = [&](const Status& st) {
    return st.WithPrefix(fmt::format(
        "migrating {} to {} failed before the cut-over; it keeps serving here", id, target));
  };
  // The target or the connection failed (whatever the transport called it).
  auto net_fail = [&](const Status& st) {
    return fail(st.code() == StatusCode::kDeadlineExceeded
                    ? Status(StatusCode::kUnavailable, st.message())
                    : st);
  };

  // begin (deploying the service there first if it lacks it)
  nlohmann::json begin = {{"instance", id},
                          {"service", service},
                          {"module_hash", hash},
                          {"memory_bytes", memory_bytes}};
  if (sp) begin["stack_pointer"] = *sp;
  if (Status h = hook("begin"); !h.ok()) return fail(h);
  // Round 0 copies every page in order: the worker starts on its first chunks while the
  // target prepares the instance (1–10 ms), as many as the pipe has buffers for.
  r0_pages = memory_bytes / kMigrationPageBytes;
  ChunkPipe::Copy round0 = [&](MigChunk* c) -> Result<bool> {
    if (r0_from >= r0_pages) return false;
    TERN_RETURN_IF_ERROR(MigScan(id, o.freeze_timeout_ns, static_cast<uint32_t>(r0_from),
                                 kChunkPages, /*all=*/true, c));
    r0_pages = std::max<uint64_t>(r0_pages, c->memory_bytes / kMigrationPageBytes);
    r0_from += kChunkPages;
    return true;
  };
  auto begin_and_wait = [&]() -> Status {
    Result<transport::Frame> b = stream.Call("begin", begin.dump());
    if (!b.ok() && b.status().code() == StatusCode::kNotFound) {
      TERN_ASSIGN_OR_RETURN(std::string dep, MigrationDeployPayload(id));
      Result<transport::Frame> d = stream.Call("deploy", std::move(dep));
      if (!d.ok()) return net_fail(d.status().WithPrefix("deploying the service there"));
      b = stream.Call("begin", begin.dump());
    }
    return b.ok() ? Status::Ok() : net_fail(b.status());
  };
  if (o.precopy) {
    // Round 0's batches follow `begin` without waiting for its answer: the link carries
    // them (into the target's socket buffers) while the target prepares the instance,
    // instead of idling for those 1–10 ms. Round 0 checks the answer (below).
    pipe.Start(round0);
    if (Status st = stream.SendStep("begin", begin.dump()); !st.ok()) return net_fail(st);
  } else {
    TERN_RETURN_IF_ERROR(begin_and_wait());
  }
  // The held requests will be forwarded there: connect now, not after the cut-over.
  ForwarderTo(o.to_tcp)->Connect();

  auto send_chunk = [&](MigChunk& c, MigrationRound* round) -> Status {
    const size_t pages = c.pages.size() + c.zero.size();
    if (pages == 0) {
      pipe.Release(&c);
      return Status::Ok();
    }
    bool lent = false;
    Result<size_t> sent = stream.SendChunk(c, codec, &lent);
    if (!lent) pipe.Release(&c);
    TERN_RETURN_IF_ERROR(sent.status());
    round->pages += static_cast<uint32_t>(pages);
    round->bytes += *sent;
    rep.bytes_raw += pages * kMigrationPageBytes;
    return Status::Ok();
  };

  // Sends every chunk `copy` produces (copied one step ahead of the sending).
  // (Round 0's copying started already: `copy` is empty.)
  auto send_round = [&](ChunkPipe::Copy copy, MigrationRound* round) -> Status {
    if (copy) pipe.Start(std::move(copy));
    Status st = Status::Ok();
    for (;;) {
      Result<MigChunk*> c = pipe.Next();
      if (!c.ok()) {
        st = fail(c.status());
        break;
      }
      if (*c == nullptr) break;
      memory_bytes = std::max(memory_bytes, (*c)->memory_bytes);
      st = send_chunk(**c, round);  // gives the chunk back (now or when answered)
      if (!st.ok()) {
        st = net_fail(st);
        break;
      }
    }
    pipe.Finish();
    return st;
  };

  // Copies the pages `*list` names (ascending; it outlives the round), a chunk at a time.
  auto copy_listed = [&](const std::vector<uint32_t>* list) -> ChunkPipe::Copy {
    return [&, list, i = size_t{0}, part = std::vector<uint32_t>()](MigChunk* c) mutable
           -> Result<bool> {
      if (i >= list->size()) return false;
      const size_t end = std::min(list->size(), i + kChunkPages);
      part.assign(list->begin() + static_cast<std::ptrdiff_t>(i),
                  list->begin() + static_cast<std::ptrdiff_t>(end));
      i = end;
      TERN_RETURN_IF_ERROR(MigCopy(id, o.freeze_timeout_ns, part, c));
      return true;
    };
  };

  if (o.precopy) {
    uint64_t last = UINT64_MAX;
    for (int r = 0; r < std::max(1, o.max_rounds); ++r) {
      if (Status h = hook(fmt::format("round {}", r)); !h.ok()) return fail(h);
      const int64_t rt = MonoNanos();
      MigrationRound round;
      if (r == 0) {
        // Behind a `begin` not answered yet: when it failed, that is the error (the
        // target refused the batches behind it). A target without the service gets it
        // deployed, and round 0 is sent again.
        const uint64_t raw_before = rep.bytes_raw;
        Status st = send_round(nullptr, &round);
        Status drained = st.ok() ? stream.Drain() : Status::Ok();
        const std::optional<Status> begun = stream.step_answer();
        if (begun.has_value() && begun->code() == StatusCode::kNotFound) {
          if (Status d = stream.DrainRefused(); !d.ok()) return net_fail(d);
          TERN_RETURN_IF_ERROR(begin_and_wait());
          round = MigrationRound();
          rep.bytes_raw = raw_before;
          r0_from = 0;
          r0_pages = memory_bytes / kMigrationPageBytes;
          st = send_round(round0, &round);
          drained = st.ok() ? stream.Drain() : Status::Ok();
        } else if (begun.has_value() && !begun->ok()) {
          return net_fail(*begun);
        }
        if (!st.ok()) return st;
        if (!drained.ok()) return net_fail(drained);
      } else if (!exact) {
        // In checksum mode every round scans everything.
        uint64_t pages = memory_bytes / kMigrationPageBytes;
        uint64_t from = 0;
        TERN_RETURN_IF_ERROR(send_round(
            [&](MigChunk* c) -> Result<bool> {
              if (from >= pages) return false;
              TERN_RETURN_IF_ERROR(MigScan(id, o.freeze_timeout_ns, static_cast<uint32_t>(from),
                                           kChunkPages, /*all=*/false, c));
              pages = std::max<uint64_t>(pages, c->memory_bytes / kMigrationPageBytes);
              from += kChunkPages;
              return true;
            },
            &round));
      } else {
        // Few enough dirty pages are left in place: they go with the freeze.
        Result<std::optional<std::vector<uint32_t>>> taken =
            MigTakeDirty(id, o.freeze_timeout_ns, o.stop_pages);
        if (!taken.ok()) return fail(taken.status());
        if (!taken->has_value()) break;
        TERN_RETURN_IF_ERROR(send_round(copy_listed(&**taken), &round));
      }
      Status st = stream.Drain();
      if (!st.ok()) return net_fail(st);
      round.ns = MonoNanos() - rt;
      rep.rounds.push_back(round);
      if (r > 0 && (round.pages <= o.stop_pages || round.pages >= last)) break;
      last = round.pages;
    }
  }

  // Cut-over.
  if (Status h = hook("freeze"); !h.ok()) return fail(h);
  const int64_t tf = MonoNanos();
  std::string commit;
  int64_t frozen_at = 0;
  // The last pages go into a chunk buffer of the pipe's (warm; shared memory: a slot) and
  // from there as one batch, as a round's do. More than a chunk holds (stop-and-copy:
  // every page) are copied chunk by chunk while the instance stays frozen, one step ahead
  // of the sending, as a round is.
  MigChunk* last = pipe.Spare();
  std::vector<uint32_t> rest;
  if (Status st = MigFreeze(id, o.freeze_timeout_ns, /*all=*/!o.precopy, last, kChunkPages,
                            &rest, &commit, &frozen_at);
      !st.ok()) {
    return fail(st);
  }
  rep.freeze_wait_ns = frozen_at - tf;
  MigrationRound frozen;  // counted in the report's final pages, not as a round
  if (rest.empty()) {
    if (Status st = send_chunk(*last, &frozen); !st.ok()) return net_fail(st);
  } else {
    TERN_RETURN_IF_ERROR(send_round(copy_listed(&rest), &frozen));
  }
  rep.final_pages = frozen.pages;
  std::string payload;
  uint32_t n = static_cast<uint32_t>(commit.size());
  payload.append(reinterpret_cast<const char*>(&n), 4);
  payload += commit;
  if (Status h = hook("commit"); !h.ok()) return fail(h);
  // Behind the last batches, without a round trip for their answers first.
  Result<transport::Frame> c = stream.CallBehind("commit", std::move(payload));
  if (!c.ok()) return net_fail(c.status());
  const int64_t active = MonoNanos();

  finished = true;
  MovedTo to;
  to.device = rep.to_device;
  to.tcp = o.to_tcp;
  std::vector<Held> held = MigFinish(id, to);
  rep.held = held.size();
  to = MovedRecord(id, "").value_or(to);
  for (Held& h : held) Forward(to, std::move(h.req), std::move(h.done));
  rep.downtime_ns = active - frozen_at;
  rep.bytes_sent = stream.bytes();
  rep.shm_bytes = stream.shm_bytes();
  rep.total_ns = MonoNanos() - t0;
  TERN_LOG(INFO) << fmt::format(
      "migrated {} to {} over {}: {} rounds, {} final pages, {:.1f} MiB sent ({:.1f} MiB "
      "through shared memory, {:.1f} MiB raw), downtime {:.2f} ms, total {:.1f} ms, {} "
      "requests held and forwarded",
      id, rep.to_device, rep.transport, rep.rounds.size(), rep.final_pages,
      rep.bytes_sent / 1048576.0, rep.shm_bytes / 1048576.0, rep.bytes_raw / 1048576.0,
      rep.downtime_ns / 1e6, rep.total_ns / 1e6, rep.held);
  return rep;
}

}  // namespace tern::agent
