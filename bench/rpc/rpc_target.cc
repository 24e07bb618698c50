#include "rpc_target.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/bench_util.h"
#include "emu/spawn.h"
#include "netns_site.h"

namespace tern::bench::rpc {

std::string EchoWasmNextTo(const std::string& self_binary) {
  std::string dir = self_binary.substr(0, self_binary.rfind('/'));  // .../bench/rpc
  return dir + "/../../wasm/echo.wasm";
}

const char* PlacementName(Placement placement) {
  switch (placement) {
    case Placement::kPinned:
      return "pinned";
    case Placement::kUnpinned:
      return "unpinned";
    case Placement::kCross:
      return "cross";
  }
  return "?";
}

int ClientCpu(Placement placement) { return placement == Placement::kUnpinned ? -1 : 0; }

int ServerCpu(Placement placement) {
  switch (placement) {
    case Placement::kPinned:
      return 0;
    case Placement::kCross:
      return 1;
    case Placement::kUnpinned:
      return -1;
  }
  return -1;
}

Result<uint64_t> RpcTarget::RunInFlight(int in_flight, std::span<const uint8_t> request,
                                        int64_t deadline_ns) {
  if (in_flight != 1) return UnimplementedError("only one call in flight");
  std::vector<uint8_t> reply(request.size());
  uint64_t calls = 0;
  do {
    TERN_RETURN_IF_ERROR(RoundTrip(request, reply));
    ++calls;
  } while (NowNs() < deadline_ns);
  return calls;
}

std::string ServerAddress(const TargetConfig& config) {
  return config.netns != nullptr ? config.netns->server_address() : "127.0.0.1";
}

std::string ClientAddress(const TargetConfig& config) {
  return config.netns != nullptr ? config.netns->client_address() : "127.0.0.1";
}

Status RunAsClient(const TargetConfig& config, const std::function<Status()>& fn) {
  return config.netns != nullptr ? config.netns->RunInClient(fn) : fn();
}

std::string ServeArgs::bind_address() const {
  auto it = values.find("bind");
  return it == values.end() || it->second.empty() ? "127.0.0.1" : it->second;
}

int64_t ServeArgs::Int(const std::string& key, int64_t fallback) const {
  auto it = values.find(key);
  if (it == values.end() || it->second.empty()) return fallback;
  char* end = nullptr;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  return (end != nullptr && *end == '\0') ? v : fallback;
}

const TargetInfo* TargetList::Find(const std::string& name) const {
  for (const TargetInfo& t : targets_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// ------------------------------------------------------------------ ServerProcess

namespace {

// Reads the child's first stdout line from `fd` (closed on return) for up to 15 s;
// returns what follows "ready ". Stops `p` if it exited before.
Result<std::string> ReadReadyLine(int fd, const std::string& target, ServerProcess* p) {
  std::string buf;
  const int64_t deadline = NowNs() + 15'000'000'000;
  while (buf.find('\n') == std::string::npos) {
    int64_t left_ms = (deadline - NowNs()) / 1'000'000;
    pollfd pfd{fd, POLLIN, 0};
    int r = left_ms > 0 ? poll(&pfd, 1, static_cast<int>(left_ms)) : 0;
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      close(fd);
      return DeadlineExceededError("server '" + target + "' was not ready within 15 s");
    }
    char tmp[256];
    ssize_t n = read(fd, tmp, sizeof(tmp));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      Status st = p->Stop();
      return UnavailableError("server '" + target + "' exited before it was ready" +
                              (st.ok() ? "" : " (" + st.ToString() + ")"));
    }
    buf.append(tmp, static_cast<size_t>(n));
  }
  close(fd);
  buf.resize(buf.find('\n'));
  if (buf.rfind("ready", 0) != 0) {
    return InternalError("unexpected first line from server '" + target + "': " + buf);
  }
  return buf.size() > 6 ? buf.substr(6) : "";
}

}  // namespace

Result<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& self_binary, const std::string& target, Placement placement,
    const std::vector<std::string>& args, const std::vector<int>& pass_fds, const NetnsSite* site) {
  if (site != nullptr) {
    if (!pass_fds.empty()) return InvalidArgumentError("a server in a netns inherits no fds");
    return SpawnInNetns(self_binary, target, placement, args, *site);
  }
  // Everything the child needs is prepared before fork: between fork and exec only
  // async-signal-safe calls (the parent may have gRPC threads).
  std::vector<std::string> strings = {self_binary, "--serve=" + target};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int cpu = ServerCpu(placement);
  if (cpu >= 0) {
    CPU_SET(cpu, &cpus);
  } else {
    long n = sysconf(_SC_NPROCESSORS_CONF);
    for (long i = 0; i < n && i < CPU_SETSIZE; ++i) CPU_SET(i, &cpus);
  }

  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return ErrnoError("pipe2", errno);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    Status st = ErrnoError("fork", errno);
    close(out[0]);
    close(out[1]);
    return st;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sched_setaffinity(0, sizeof(cpus), &cpus);
    dup2(out[1], STDOUT_FILENO);  // dup2 clears FD_CLOEXEC on the copy
    for (int fd : pass_fds) fcntl(fd, F_SETFD, 0);
    alarm(kServeMaxSeconds);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  std::unique_ptr<ServerProcess> p(new ServerProcess(pid));
  TERN_ASSIGN_OR_RETURN(p->ready_info_, ReadReadyLine(out[0], target, p.get()));
  return p;
}

Result<std::unique_ptr<ServerProcess>> ServerProcess::SpawnInNetns(
    const std::string& self_binary, const std::string& target, Placement placement,
    const std::vector<std::string>& args, const NetnsSite& site) {
  emu::SpawnSpec spec;
  spec.argv = {self_binary, "--serve=" + target};
  spec.argv.insert(spec.argv.end(), args.begin(), args.end());
  spec.argv.push_back("--cpu=" + std::to_string(ServerCpu(placement)));
  spec.argv.push_back("--parent=" + std::to_string(getpid()));
  spec.argv.push_back("--max-seconds=" + std::to_string(kServeMaxSeconds));
  spec.netns = site.server_netns();
  // Spawn takes paths: /proc/self/fd/N opens our pipe (stdout) and our stderr again.
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return ErrnoError("pipe2", errno);
  spec.stdout_path = "/proc/self/fd/" + std::to_string(out[1]);
  const int err = open("/proc/self/fd/2", O_WRONLY | O_CLOEXEC);
  if (err >= 0) {
    close(err);
    spec.stderr_path = "/proc/self/fd/2";
  }
  Result<emu::ProcessRecord> rec = emu::Spawn(spec, site.ledger());
  close(out[1]);
  if (!rec.ok()) {
    close(out[0]);
    return rec.status();
  }
  std::unique_ptr<ServerProcess> p(new ServerProcess(rec->pid));
  p->ledger_ = site.ledger();
  p->start_time_ = rec->start_time;
  p->exe_ = rec->exe;
  TERN_ASSIGN_OR_RETURN(p->ready_info_, ReadReadyLine(out[0], target, p.get()));
  return p;
}

ServerProcess::~ServerProcess() { (void)Stop(); }

bool ServerProcess::Alive() const {
  if (reaped_) return false;
  siginfo_t info{};
  if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
  return info.si_pid == 0;
}

Status ServerProcess::Stop() {
  if (reaped_) return Status::Ok();
  Status st = Reap();
  if (ledger_ != nullptr) {
    (void)ledger_->Forget(emu::LedgerEntry::Process({pid_, start_time_, exe_}));
  }
  return st;
}

Status ServerProcess::Reap() {
  int status = 0;
  // Exited by itself (crashed, or failed)?
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r < 0 && errno == ECHILD) {  // reaped already (a site teardown on a signal)
    reaped_ = true;
    return Status::Ok();
  }
  bool by_itself = r == pid_;
  if (!by_itself) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 200 && r != pid_; ++i) {
      usleep(10'000);
      r = waitpid(pid_, &status, WNOHANG);
    }
    if (r != pid_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      reaped_ = true;
      return DeadlineExceededError("server did not stop within 2 s of SIGTERM; killed");
    }
  }
  reaped_ = true;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  if (!by_itself && WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) return Status::Ok();
  if (WIFEXITED(status)) {
    return InternalError("server exited with code " + std::to_string(WEXITSTATUS(status)));
  }
  return InternalError("server died of signal " + std::to_string(WTERMSIG(status)));
}

void PrepareServeProcess(const ServeArgs& args) {
  if (args.values.count("cpu") != 0) {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    const int cpu = static_cast<int>(args.Int("cpu", -1));
    if (cpu >= 0) {
      CPU_SET(cpu, &cpus);
    } else {
      long n = sysconf(_SC_NPROCESSORS_CONF);
      for (long i = 0; i < n && i < CPU_SETSIZE; ++i) CPU_SET(i, &cpus);
    }
    sched_setaffinity(0, sizeof(cpus), &cpus);
  }
  if (args.values.count("parent") != 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != static_cast<pid_t>(args.Int("parent", -1))) _exit(127);
  }
  if (args.values.count("max-seconds") != 0) {
    alarm(static_cast<unsigned>(args.Int("max-seconds", ServerProcess::kServeMaxSeconds)));
  }
}

void ReportReady(const std::string& info) {
  std::string line = "ready " + info + "\n";
  (void)!write(STDOUT_FILENO, line.data(), line.size());
}

}  // namespace tern::bench::rpc
