#include "procs.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <thread>

#include "core/clock.h"
#include "core/file.h"
#include "transport/http.h"

namespace tern::bench::cluster {

namespace {

constexpr std::chrono::milliseconds kStartTimeout{20000};

int64_t DeadlineAfter(std::chrono::milliseconds t) {
  return MonoNanos() + std::chrono::nanoseconds(t).count();
}

int RemainingMs(int64_t deadline) {
  int64_t left = (deadline - MonoNanos()) / 1000000;
  return left < 0 ? 0 : static_cast<int>(left);
}

// fork + exec with stdout (and optionally stderr) on a pipe. Everything the child
// needs is prepared before fork: between fork and exec only async-signal-safe calls.
Result<std::pair<pid_t, int>> Spawn(const std::vector<std::string>& argv,
                                    const std::string& log_path, bool stderr_to_pipe, int cpu) {
  if (argv.empty()) return InvalidArgumentError("spawn: empty argv");
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int log_fd = -1;
  if (!stderr_to_pipe) {
    log_fd = ::open(log_path.empty() ? "/dev/null" : log_path.c_str(),
                    O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return ErrnoError("open " + log_path, errno);
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    int err = errno;
    if (log_fd >= 0) ::close(log_fd);
    return ErrnoError("pipe", err);
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) CPU_SET(cpu, &set);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(p[0]);
    ::close(p[1]);
    if (log_fd >= 0) ::close(log_fd);
    return ErrnoError("fork", err);
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
    ::dup2(p[1], STDOUT_FILENO);
    ::dup2(stderr_to_pipe ? p[1] : log_fd, STDERR_FILENO);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    if (cpu >= 0) ::sched_setaffinity(0, sizeof(set), &set);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(p[1]);
  if (log_fd >= 0) ::close(log_fd);
  return std::make_pair(pid, p[0]);
}

// "…http://HOST:PORT" → PORT; 0 if absent.
uint16_t PortAfterColon(const std::string& line) {
  size_t colon = line.rfind(':');
  if (colon == std::string::npos) return 0;
  return static_cast<uint16_t>(std::strtoul(line.c_str() + colon + 1, nullptr, 10));
}

// Waits for the first line of `role` that contains `marker`; other lines are skipped.
Result<std::string> WaitForLine(Child* c, const std::string& role, const std::string& marker) {
  const int64_t deadline = DeadlineAfter(kStartTimeout);
  while (true) {
    Result<std::string> line = c->ReadLine(std::chrono::milliseconds(RemainingMs(deadline)));
    if (!line.ok()) return line.status().WithPrefix(role + " did not start");
    if (line->find(marker) != std::string::npos) return *line;
  }
}

}  // namespace

// ------------------------------------------------------------------------------ Child

Result<std::unique_ptr<Child>> Child::Start(const std::vector<std::string>& argv,
                                            const std::string& log_path, int cpu) {
  TERN_ASSIGN_OR_RETURN(auto spawned, Spawn(argv, log_path, /*stderr_to_pipe=*/false, cpu));
  return std::unique_ptr<Child>(new Child(spawned.first, spawned.second));
}

Child::~Child() {
  Kill();
  if (out_fd_ >= 0) ::close(out_fd_);
}

Result<std::string> Child::ReadLine(std::chrono::milliseconds timeout) {
  const int64_t deadline = DeadlineAfter(timeout);
  while (true) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    if (out_fd_ < 0) return UnavailableError("the process closed its stdout");
    pollfd p{out_fd_, POLLIN, 0};
    int n = ::poll(&p, 1, RemainingMs(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("poll", errno);
    if (n == 0) return DeadlineExceededError("no line on stdout in time");
    char chunk[4096];
    ssize_t got = ::read(out_fd_, chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      ::close(out_fd_);
      out_fd_ = -1;
      continue;
    }
    buf_.append(chunk, static_cast<size_t>(got));
  }
}

bool Child::Reap(std::chrono::milliseconds timeout) {
  if (exited_) return true;
  const int64_t deadline = DeadlineAfter(timeout);
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      exited_ = true;
      return true;
    }
    if (MonoNanos() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

void Child::Kill() {
  if (exited_) return;
  ::kill(pid_, SIGKILL);
  (void)Reap(std::chrono::seconds(10));
}

void Child::Stop(std::chrono::milliseconds grace) {
  if (exited_) return;
  ::kill(pid_, SIGTERM);
  if (!Reap(grace)) Kill();
}

// ------------------------------------------------------------------------ RunCaptured

Captured RunCaptured(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                     int cpu) {
  Captured out;
  Result<std::pair<pid_t, int>> spawned = Spawn(argv, "", /*stderr_to_pipe=*/true, cpu);
  if (!spawned.ok()) {
    out.output = spawned.status().ToString();
    return out;
  }
  auto [pid, fd] = *spawned;
  const int64_t deadline = DeadlineAfter(timeout);
  bool killed = false;
  while (true) {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, RemainingMs(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {  // timeout (or a poll error): stop it
      ::kill(pid, SIGKILL);
      killed = true;
      break;
    }
    char chunk[4096];
    ssize_t got = ::read(fd, chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    out.output.append(chunk, static_cast<size_t>(got));
  }
  ::close(fd);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!killed && WIFEXITED(status)) out.exit_code = WEXITSTATUS(status);
  if (killed) out.output += fmt::format("\n(killed after {} ms)", timeout.count());
  return out;
}

namespace {
// A "Name:  1234 kB" line of /proc/PID/status, in bytes.
uint64_t StatusKb(pid_t pid, const std::string& name) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) == 0) {
      return std::strtoull(line.c_str() + name.size(), nullptr, 10) * 1024;
    }
  }
  return 0;
}
}  // namespace

uint64_t RssBytes(pid_t pid) { return StatusKb(pid, "VmRSS:"); }
uint64_t VirtualBytes(pid_t pid) { return StatusKb(pid, "VmSize:"); }

size_t MapCount(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/maps", pid));
  size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

// ---------------------------------------------------------------------- cluster roles

Result<Role> StartController(const std::string& tern, const ControllerFlags& flags,
                             const std::string& log_path) {
  std::vector<std::string> argv = {tern,
                                   "controller",
                                   "--listen=127.0.0.1:0",
                                   "--store=" + flags.store,
                                   "--agent-ttl-ms=" + std::to_string(flags.agent_ttl_ms),
                                   "--heartbeat-ms=" + std::to_string(flags.heartbeat_ms),
                                   "--log-level=info"};
  if (flags.store == "embedded") argv.push_back("--data-dir=" + flags.data_dir);
  Role r;
  r.name = "controller";
  TERN_ASSIGN_OR_RETURN(r.child, Child::Start(argv, log_path));
  TERN_ASSIGN_OR_RETURN(std::string line,
                        WaitForLine(r.child.get(), "the controller", "controller listening on"));
  r.port = PortAfterColon(line);
  if (r.port == 0) return InternalError("controller: no port in '" + line + "'");
  return r;
}

Result<Role> StartAgent(const std::string& tern, const std::string& controller,
                        const AgentFlags& flags, const std::string& log_path) {
  std::vector<std::string> argv = {tern,
                                   "agent",
                                   "--controller=" + controller,
                                   "--port=0",
                                   "--admin-port=0",
                                   "--device=" + flags.device,
                                   "--host-id=" + flags.host_id,
                                   "--memory-mib=" + std::to_string(flags.memory_mib),
                                   "--cores=" + std::to_string(flags.cores),
                                   "--workers=" + std::to_string(flags.workers),
                                   "--shm-socket=none",
                                   "--log-level=warn"};
  Role r;
  r.name = flags.device;
  TERN_ASSIGN_OR_RETURN(r.child, Child::Start(argv, log_path));
  TERN_ASSIGN_OR_RETURN(std::string line,
                        WaitForLine(r.child.get(), "agent " + flags.device, "listening frames="));
  unsigned fp = 0, ap = 0;
  if (std::sscanf(line.c_str(), "listening frames=%u admin=%u", &fp, &ap) != 2) {
    return InternalError("agent: unexpected start line '" + line + "'");
  }
  r.frames = static_cast<uint16_t>(fp);
  r.port = static_cast<uint16_t>(ap);
  return r;
}

Result<Role> StartGateway(const std::string& tern, const std::string& controller,
                          const std::string& log_path) {
  std::vector<std::string> argv = {tern, "gateway", "--listen=127.0.0.1:0",
                                   "--controller=" + controller, "--log-level=warn"};
  Role r;
  r.name = "gateway";
  TERN_ASSIGN_OR_RETURN(r.child, Child::Start(argv, log_path));
  TERN_ASSIGN_OR_RETURN(std::string line,
                        WaitForLine(r.child.get(), "the gateway", "gateway listening on"));
  r.port = PortAfterColon(line);
  if (r.port == 0) return InternalError("gateway: no port in '" + line + "'");
  return r;
}

// ------------------------------------------------------------------------------- etcd

namespace {
constexpr const char* kEtcd = "/usr/bin/etcd";

Status WaitEtcdHealthy(uint16_t port, Child* child) {
  const int64_t deadline = DeadlineAfter(std::chrono::seconds(15));
  Status last = UnavailableError("no answer yet");
  while (MonoNanos() < deadline) {
    int status = 0;
    if (::waitpid(child->pid(), &status, WNOHANG) == child->pid()) {
      return UnavailableError("etcd exited during start-up");
    }
    auto c = transport::HttpClient::Connect("127.0.0.1", port, std::chrono::milliseconds(500));
    if (c.ok()) {
      auto r = (*c)->Request("GET", "/health", {}, {}, std::chrono::seconds(2));
      if (r.ok() && r->status == 200 && r->body.find("true") != std::string::npos) {
        return Status::Ok();
      }
      last = r.ok() ? UnavailableError("/health: " + r->body) : r.status();
    } else {
      last = c.status();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return DeadlineExceededError("etcd /health: " + last.ToString());
}
}  // namespace

bool EtcdAvailable() { return ::access(kEtcd, X_OK) == 0; }

Result<Etcd> StartEtcd(const std::string& dir) {
  if (!EtcdAvailable()) {
    return NotFoundError(std::string(kEtcd) + " is not installed (Debian package etcd-server)");
  }
  TERN_RETURN_IF_ERROR(MakeDirs(dir));
  Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {  // a port may be taken meanwhile
    TERN_ASSIGN_OR_RETURN(uint16_t client, transport::PickFreeLoopbackPort());
    TERN_ASSIGN_OR_RETURN(uint16_t peer, transport::PickFreeLoopbackPort());
    if (client == peer) continue;
    const std::string c = fmt::format("http://127.0.0.1:{}", client);
    const std::string p = fmt::format("http://127.0.0.1:{}", peer);
    std::vector<std::string> argv = {kEtcd,
                                     "--name=tern-bench",
                                     "--data-dir=" + JoinPath(dir, "etcd.data"),
                                     "--listen-client-urls=" + c,
                                     "--advertise-client-urls=" + c,
                                     "--listen-peer-urls=" + p,
                                     "--initial-advertise-peer-urls=" + p,
                                     "--initial-cluster=tern-bench=" + p,
                                     "--heartbeat-interval=50",
                                     "--election-timeout=500",
                                     "--log-level=error",
                                     "--max-request-bytes=8388608"};
    Etcd e;
    e.client_port = client;
    TERN_ASSIGN_OR_RETURN(e.child, Child::Start(argv, JoinPath(dir, "etcd.log")));
    last = WaitEtcdHealthy(client, e.child.get());
    if (last.ok()) return e;
    e.child->Kill();
  }
  return last.WithPrefix("etcd did not come up (see " + JoinPath(dir, "etcd.log") + ")");
}

}  // namespace tern::bench::cluster
