// Section net: invoke over loopback TCP through the client library, against the real
// `tern agent` binary in a child process, next to a raw TCP ping-pong (the physical
// limit). See foundation.h and docs/benchmarks.md.
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <thread>

#include "client/agent_client.h"
#include "core/file.h"
#include "foundation.h"
#include "transport/frame_client.h"

namespace tern::bench {
namespace {

constexpr int kCpuA = 0;
constexpr int kCpuB = 1;
constexpr size_t kPayloadBytes = 64;

std::string PinText(bool pinned, int cpu) {
  return pinned ? fmt::format("cpu{}", cpu) : "unpinned";
}

// ------------------------------------------------------------------ the child agent

// `tern agent --port 0 --admin-port 0` in a child process. The child dies with us
// (PR_SET_PDEATHSIG) and is killed (SIGTERM, then SIGKILL) when this object goes.
class ChildAgent {
 public:
  static Result<std::unique_ptr<ChildAgent>> Start(const std::string& binary,
                                                   const std::string& log_path) {
    if (access(binary.c_str(), X_OK) != 0) {
      return NotFoundError("no tern binary at " + binary + " (build the `tern` target)");
    }
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return ErrnoError("pipe2", errno);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) return ErrnoError("fork", errno);
    if (pid == 0) {
      // Child: only async-signal-safe calls until exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      dup2(out[1], STDOUT_FILENO);
      int log = open(log_path.empty() ? "/dev/null" : log_path.c_str(),
                     O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (log >= 0) dup2(log, STDERR_FILENO);
      const char* argv[] = {binary.c_str(), "agent", "--port",      "0",    "--admin-port", "0",
                            "--device",     "bench", "--log-level", "warn", nullptr};
      execv(binary.c_str(), const_cast<char* const*>(argv));
      _exit(127);
    }
    close(out[1]);
    std::unique_ptr<ChildAgent> c(new ChildAgent(pid));
    // Read "listening frames=N admin=M" (the agent prints it once it serves).
    std::string buf;
    const int64_t deadline = NowNs() + 15'000'000'000;
    while (buf.find('\n') == std::string::npos) {
      int64_t left_ms = (deadline - NowNs()) / 1'000'000;
      pollfd p{out[0], POLLIN, 0};
      if (left_ms <= 0 || poll(&p, 1, static_cast<int>(left_ms)) <= 0) {
        close(out[0]);
        return DeadlineExceededError(
            "tern agent did not print its ports within 15 s (log: " + log_path + ")");
      }
      char tmp[256];
      ssize_t n = read(out[0], tmp, sizeof(tmp));
      if (n <= 0) {
        close(out[0]);
        return UnavailableError("tern agent exited before listening (log: " + log_path + ")");
      }
      buf.append(tmp, static_cast<size_t>(n));
    }
    close(out[0]);
    unsigned frames = 0, admin = 0;
    if (std::sscanf(buf.c_str(), "listening frames=%u admin=%u", &frames, &admin) != 2) {
      return InternalError("unexpected first line from tern agent: " + buf);
    }
    c->frame_port_ = static_cast<uint16_t>(frames);
    c->admin_port_ = static_cast<uint16_t>(admin);
    return c;
  }

  ~ChildAgent() {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      usleep(10'000);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  ChildAgent(const ChildAgent&) = delete;
  ChildAgent& operator=(const ChildAgent&) = delete;

  pid_t pid() const { return pid_; }
  uint16_t admin_port() const { return admin_port_; }
  uint16_t frame_port() const { return frame_port_; }

 private:
  explicit ChildAgent(pid_t pid) : pid_(pid) {}
  const pid_t pid_;
  uint16_t frame_port_ = 0;
  uint16_t admin_port_ = 0;
};

// ------------------------------------------------------------------ raw TCP floor

bool ReadFull(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// 64 B request, 64 B answer over 127.0.0.1 with TCP_NODELAY and blocking read/write:
// a server thread (pinned to `server_cpu`) and the calling thread as the client
// (pinned to `client_cpu`; < 0 = unpinned). Returns the per-round-trip times.
Result<std::vector<int64_t>> RawTcpPingPong(size_t warmup, size_t n, int server_cpu, int client_cpu,
                                            bool* pinned) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ls < 0) return ErrnoError("socket", errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t alen = sizeof(addr);
  if (bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(ls, 1) != 0 ||
      getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) {
    Status st = ErrnoError("bind/listen", errno);
    close(ls);
    return st;
  }
  std::atomic<bool> server_pinned{false};
  std::thread server([&] {
    if (server_cpu >= 0) server_pinned = PinThisThread(server_cpu);
    int fd = accept(ls, nullptr, nullptr);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char buf[kPayloadBytes];
    while (ReadFull(fd, buf, sizeof(buf)) && WriteFull(fd, buf, sizeof(buf))) {
    }
    close(fd);
  });
  bool cp = client_cpu >= 0 && PinThisThread(client_cpu);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  Status st;
  std::vector<int64_t> v;
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    st = ErrnoError("connect", errno);
  } else {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char msg[kPayloadBytes];
    std::memset(msg, 'x', sizeof(msg));
    char back[kPayloadBytes];
    v.reserve(n);
    for (size_t i = 0; i < warmup + n; ++i) {
      int64_t t0 = NowNs();
      if (!WriteFull(fd, msg, sizeof(msg)) || !ReadFull(fd, back, sizeof(back))) {
        st = UnavailableError("raw TCP ping-pong broke");
        break;
      }
      if (i >= warmup) v.push_back(NowNs() - t0);
    }
  }
  if (fd >= 0) close(fd);  // the server sees EOF and ends
  if (!st.ok()) shutdown(ls, SHUT_RDWR);
  server.join();
  close(ls);
  UnpinThisThread();
  *pinned = cp && (server_cpu < 0 || server_pinned);
  if (!st.ok()) return st;
  return v;
}

// ------------------------------------------------------------------ the section

Result<std::unique_ptr<client::AgentClient>> Connect(const ChildAgent& agent) {
  return client::AgentClient::Connect(fmt::format("127.0.0.1:{}", agent.admin_port()),
                                      std::chrono::seconds(5));
}

Status RunNet(const Options& o, Report* rep) {
  const std::string sec = "net";
  rep->SetSectionInfo(
      sec, "5. Invoke over loopback TCP through the client library (real `tern agent` child)",
      "The agent is build/<preset>/src/bin/tern started as `tern agent --port 0 "
      "--admin-port 0` (default: one worker thread per vCPU), echo deployed through the "
      "admin API (1 instance). Clients are client::AgentClient (blocking FrameClient). "
      "'same vCPU': every agent thread and the client pinned to cpu0; 'cross vCPU': agent "
      "on cpu0, client on cpu1; 'unpinned': the scheduler decides (the agent's own "
      "event-loop → worker hop may then cross vCPUs too). The floor is a raw 64 B TCP "
      "ping-pong (blocking read/write, TCP_NODELAY) between two threads placed the same "
      "way. Throughput rows run for a fixed time, unpinned.");
  const int cpus = UsableCpus();
  Progress("starting " + o.tern_binary + " agent");
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<ChildAgent> agent,
                        ChildAgent::Start(o.tern_binary, o.agent_log));
  Progress(fmt::format("agent pid {} listening frames={} admin={}", agent->pid(),
                       agent->frame_port(), agent->admin_port()));
  TERN_ASSIGN_OR_RETURN(std::string manifest,
                        ReadFile(o.source_dir + "/examples/echo/manifest.yaml"));
  TERN_ASSIGN_OR_RETURN(std::string module, ReadFile(o.wasm_dir + "/echo.wasm"));
  {
    TERN_ASSIGN_OR_RETURN(auto admin, Connect(*agent));
    TERN_RETURN_IF_ERROR(admin->Deploy(manifest, module, true).status().WithPrefix("deploy echo"));
  }
  const std::string payload(kPayloadBytes, 'p');
  const size_t warm = o.N(1000, 100), n = o.N(20000, 1000);

  struct Placement {
    const char* label;
    int agent_cpu;
    int client_cpu;
  };
  std::vector<Placement> placements = {{"unpinned", -1, -1}, {"same vCPU", kCpuA, kCpuA}};
  if (cpus >= 2) placements.push_back({"cross vCPU", kCpuA, kCpuB});

  struct Pair {
    double tern = 0, raw = 0;
  };
  std::map<std::string, Pair> nop_p50, echo_p50;
  for (const Placement& pl : placements) {
    int changed = PinProcess(agent->pid(), pl.agent_cpu);
    // One-at-a-time invokes: echo/nop and echo/echo with 64 B.
    for (int which = 0; which < 2; ++which) {
      const bool is_nop = which == 0;
      std::vector<int64_t> lat;
      Status st;
      bool cp = false;
      std::thread t([&] {
        cp = pl.client_cpu >= 0 && PinThisThread(pl.client_cpu);
        Result<std::unique_ptr<client::AgentClient>> c = Connect(*agent);
        if (!c.ok()) {
          st = c.status();
          return;
        }
        const std::string handler = is_nop ? "nop" : "echo";
        const std::string& body = is_nop ? std::string() : payload;
        lat.reserve(n);
        for (size_t i = 0; i < warm + n && st.ok(); ++i) {
          int64_t t0 = NowNs();
          Result<std::string> r = (*c)->Invoke("echo", handler, body);
          int64_t dt = NowNs() - t0;
          if (!r.ok())
            st = r.status();
          else if (!is_nop && *r != payload)
            st = DataLossError("echo reply differs");
          if (i >= warm) lat.push_back(dt);
        }
      });
      t.join();
      TERN_RETURN_IF_ERROR(st.WithPrefix("invoke"));
      std::string where = pl.agent_cpu < 0
                              ? "unpinned"
                              : fmt::format("{}: agent ({} threads) cpu{}, client {}", pl.label,
                                            changed, pl.agent_cpu, PinText(cp, pl.client_cpu));
      double p50 = Summarize(lat).p50;
      (is_nop ? nop_p50 : echo_p50)[pl.label].tern = p50;
      rep->AddSamples(sec,
                      is_nop ? "AgentClient::Invoke(\"echo\", \"nop\"), one at a time"
                             : "AgentClient::Invoke(\"echo\", \"echo\", 64 B), one at a time",
                      where, std::move(lat));
    }
    // The floor, placed the same way.
    bool rp = false;
    TERN_ASSIGN_OR_RETURN(std::vector<int64_t> raw,
                          RawTcpPingPong(warm, n, pl.agent_cpu, pl.client_cpu, &rp));
    double raw_p50 = Summarize(raw).p50;
    nop_p50[pl.label].raw = raw_p50;
    echo_p50[pl.label].raw = raw_p50;
    rep->AddSamples(sec, "floor: raw TCP ping-pong, 64 B each way",
                    pl.agent_cpu < 0
                        ? "unpinned"
                        : fmt::format("{}: server cpu{}, client cpu{}{}", pl.label, pl.agent_cpu,
                                      pl.client_cpu, rp ? "" : " (pinning failed)"),
                    std::move(raw));
  }
  PinProcess(agent->pid(), -1);

  // Throughput: C client threads, each with its own AgentClient, for a fixed time.
  const int64_t dur_ns = o.quick ? 300'000'000 : 1'500'000'000;
  std::vector<int> concurrency = {1, 4, 16};
  double best_tput = 0;
  for (int c : concurrency) {
    std::vector<std::vector<int64_t>> lat(static_cast<size_t>(c));
    std::vector<Status> sts(static_cast<size_t>(c));
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::atomic<int64_t> start{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < c; ++i) {
      threads.emplace_back([&, i] {
        Result<std::unique_ptr<client::AgentClient>> cl = Connect(*agent);
        Status& st = sts[static_cast<size_t>(i)];
        if (!cl.ok()) st = cl.status();
        for (int w = 0; w < 200 && st.ok(); ++w)
          st = (*cl)->Invoke("echo", "echo", payload).status();
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
        const int64_t end = start.load() + dur_ns;
        auto& v = lat[static_cast<size_t>(i)];
        while (st.ok()) {
          int64_t t0 = NowNs();
          if (t0 >= end) break;
          Result<std::string> r = (*cl)->Invoke("echo", "echo", payload);
          if (!r.ok()) st = r.status();
          v.push_back(NowNs() - t0);
        }
      });
    }
    while (ready.load() < c) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    start = NowNs();
    go = true;
    for (auto& t : threads) t.join();
    const int64_t wall = NowNs() - start.load();
    std::vector<int64_t> all;
    for (size_t i = 0; i < lat.size(); ++i) {
      TERN_RETURN_IF_ERROR(sts[i].WithPrefix(fmt::format("client {}", i)));
      all.insert(all.end(), lat[i].begin(), lat[i].end());
    }
    const double tput = static_cast<double>(all.size()) * 1e9 / static_cast<double>(wall);
    best_tput = std::max(best_tput, tput);
    rep->AddSamples(sec,
                    fmt::format("throughput, {} client thread{} (echo/echo 64 B, blocking)", c,
                                c == 1 ? "" : "s"),
                    "unpinned", std::move(all), FormatCount(tput) + " req/s",
                    {{"req_per_s", tput}, {"clients", c}});
    rep->AddSummary({fmt::format("5. throughput, {} concurrent client{} (echo/echo 64 B)", c,
                                 c == 1 ? "" : "s"),
                     FormatCount(tput) + " req/s", "", std::nullopt, "", std::nullopt});
  }

  // Pipelining: one connection, CallMany with a window of 16.
  {
    TERN_ASSIGN_OR_RETURN(auto cl, Connect(*agent));
    TERN_ASSIGN_OR_RETURN(transport::FrameClient * fc, cl->Frames());
    constexpr size_t kBatch = 1024, kWindow = 16;
    auto batch = [&] {
      std::vector<transport::Frame> v(kBatch);
      for (auto& f : v) {
        f.type = transport::FrameType::kInvoke;
        f.service = "echo";
        f.handler = "echo";
        f.payload = payload;
      }
      return v;
    };
    TERN_RETURN_IF_ERROR(fc->CallMany(batch(), kWindow, std::chrono::seconds(30)).status());
    std::vector<int64_t> per_batch;
    size_t done = 0;
    const int64_t start = NowNs();
    while (NowNs() - start < dur_ns) {
      std::vector<transport::Frame> reqs = batch();  // built outside the timed call
      int64_t t0 = NowNs();
      TERN_ASSIGN_OR_RETURN(std::vector<Result<transport::Frame>> out,
                            fc->CallMany(std::move(reqs), kWindow, std::chrono::seconds(30)));
      per_batch.push_back(NowNs() - t0);
      for (auto& r : out) {
        if (!r.ok()) return r.status().WithPrefix("pipelined invoke");
        if (r->payload != payload) return DataLossError("pipelined echo reply differs");
      }
      done += kBatch;
    }
    long double busy = 0;
    for (int64_t b : per_batch) busy += b;
    const double tput = static_cast<double>(done) * 1e9 / static_cast<double>(busy);
    rep->AddSamples(
        sec,
        fmt::format("pipelined: 1 connection, CallMany window {} (time per batch of {})", kWindow,
                    kBatch),
        "unpinned", std::move(per_batch), FormatCount(tput) + " req/s",
        {{"req_per_s", tput}, {"window", kWindow}, {"batch", kBatch}});
    rep->AddSummary({"5. throughput, pipelined (1 connection, window 16, echo/echo 64 B)",
                     FormatCount(tput) + " req/s", "", std::nullopt, "", std::nullopt});
  }

  for (const Placement& pl : placements) {
    const Pair& p = nop_p50[pl.label];
    rep->AddSummary({fmt::format("5. invoke over loopback TCP, echo/nop, {}, p50", pl.label),
                     FormatNs(p.tern), "raw TCP 64 B ping-pong " + FormatNs(p.raw), p.tern / p.raw,
                     "", std::nullopt});
  }
  const Pair& e = echo_p50["unpinned"];
  rep->AddSummary({"5. invoke over loopback TCP, echo/echo 64 B, unpinned, p50", FormatNs(e.tern),
                   "raw TCP 64 B ping-pong " + FormatNs(e.raw), e.tern / e.raw, "", std::nullopt});
  return Status::Ok();
}

}  // namespace

bool RunNetSection(const Options& o, Report* report) {
  if (!o.Wants("net")) return true;
  signal(SIGPIPE, SIG_IGN);
  Progress("section net");
  Status st = RunNet(o, report);
  if (!st.ok()) {
    report->AddNote("net", "FAILED: " + st.ToString());
    Progress("FAILED net: " + st.ToString());
    return false;
  }
  return true;
}

}  // namespace tern::bench
