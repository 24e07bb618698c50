#include "emu/spawn.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "core/file.h"

extern char** environ;

namespace tern::emu {

namespace {

// Where in the child a step failed; reported with errno through the exec pipe.
enum ChildStage : int {
  kStageSetsid = 1,
  kStageCgroup,
  kStageSetns,
  kStageRedirect,
  kStageChdir,
  kStageWaitParent,
  kStageExec,
};

const char* StageName(int stage) {
  switch (stage) {
    case kStageSetsid:
      return "setsid";
    case kStageCgroup:
      return "joining the cgroup (write to tasks)";
    case kStageSetns:
      return "joining the network namespace (setns)";
    case kStageRedirect:
      return "redirecting stdin/stdout/stderr";
    case kStageChdir:
      return "changing to the working directory";
    case kStageWaitParent:
      return "waiting for the parent to record it";
    case kStageExec:
      return "exec";
    default:
      return "an unknown step";
  }
}

struct ChildError {
  int stage;
  int err;
};

// Async-signal-safe: reports and exits.
[[noreturn]] void ChildFail(int fd, int stage) {
  ChildError e{stage, errno};
  ssize_t ignored = ::write(fd, &e, sizeof(e));
  (void)ignored;
  ::_exit(127);
}

// Async-signal-safe decimal formatting.
size_t FormatPid(pid_t pid, char* buf) {
  char tmp[24];
  size_t n = 0;
  auto v = static_cast<unsigned long>(pid);
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (size_t i = 0; i < n; ++i) buf[i] = tmp[n - 1 - i];
  buf[n] = '\n';
  return n + 1;
}

struct ProcStat {
  uint64_t start_time = 0;
  char state = '?';
};

Result<ProcStat> ReadProcStat(pid_t pid) {
  std::string path = fmt::format("/proc/{}/stat", pid);
  Result<std::string> text = ReadFile(path);
  if (!text.ok()) return NotFoundError(fmt::format("no process {}", pid));
  // "pid (comm) S ppid ..."; comm may hold spaces and ')', so parse after the last ')'.
  size_t close = text->rfind(')');
  if (close == std::string::npos || close + 2 >= text->size()) {
    return InternalError(fmt::format("{}: unexpected format", path));
  }
  std::string_view rest(text->data() + close + 2, text->size() - close - 2);
  ProcStat st;
  st.state = rest[0];
  // Fields are numbered from 1; `rest` starts at field 3, the start time is field 22.
  int field = 3;
  size_t pos = 0;
  while (field < 22 && pos < rest.size()) {
    pos = rest.find(' ', pos);
    if (pos == std::string_view::npos) break;
    ++pos;
    ++field;
  }
  if (field != 22 || pos >= rest.size()) {
    return InternalError(fmt::format("{}: fewer than 22 fields", path));
  }
  uint64_t v = 0;
  for (; pos < rest.size() && rest[pos] >= '0' && rest[pos] <= '9'; ++pos) {
    v = v * 10 + static_cast<uint64_t>(rest[pos] - '0');
  }
  st.start_time = v;
  return st;
}

bool Matches(const ProcessRecord& r) {
  Result<ProcStat> st = ReadProcStat(r.pid);
  return st.ok() && st->start_time == r.start_time && st->state != 'Z' && st->state != 'X';
}

void CloseFds(std::initializer_list<int> fds) {
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
}

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int PidfdSignal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// Signals the process through its pidfd and, if it leads a process group (Spawn makes it
// a session leader), the rest of the group too: helpers it forked go with it. While the
// leader's pidfd shows it alive the group id cannot belong to anybody else.
int SignalProcessAndGroup(int pidfd, pid_t pid, int sig) {
  int rc = PidfdSignal(pidfd, sig);
  if (rc == 0 && ::getpgid(pid) == pid) ::kill(-pid, sig);
  return rc;
}

// Waits until every pidfd in `fds` (>= 0) is readable (its process exited) or `timeout`
// passes; sets exited fds to -1 after closing them and reaping our own children.
void WaitExits(std::vector<int>* fds, const std::vector<ProcessRecord>& records,
               std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::vector<pollfd> pfds;
    std::vector<size_t> index;
    for (size_t i = 0; i < fds->size(); ++i) {
      if ((*fds)[i] >= 0) {
        pfds.push_back({(*fds)[i], POLLIN, 0});
        index.push_back(i);
      }
    }
    if (pfds.empty()) return;
    // Rounded up: the grace period is a minimum.
    auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    int n = ::poll(pfds.data(), pfds.size(), static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return;
    for (size_t k = 0; k < pfds.size(); ++k) {
      if (pfds[k].revents == 0) continue;
      size_t i = index[k];
      ::close((*fds)[i]);
      (*fds)[i] = -1;
      ::waitpid(records[i].pid, nullptr, WNOHANG);  // ECHILD if not ours to reap: fine
    }
    if (n == 0) return;  // timed out
  }
}

}  // namespace

Result<ProcessRecord> ReadProcessRecord(pid_t pid) {
  TERN_ASSIGN_OR_RETURN(ProcStat st, ReadProcStat(pid));
  ProcessRecord r;
  r.pid = pid;
  r.start_time = st.start_time;
  char buf[4096];
  ssize_t n = ::readlink(fmt::format("/proc/{}/exe", pid).c_str(), buf, sizeof(buf) - 1);
  if (n > 0) r.exe.assign(buf, static_cast<size_t>(n));
  return r;
}

bool IsAlive(const ProcessRecord& record) { return record.pid > 0 && Matches(record); }

std::vector<Result<TerminateOutcome>> TerminateAll(const std::vector<ProcessRecord>& records,
                                                   std::chrono::milliseconds grace) {
  std::vector<Result<TerminateOutcome>> out(records.size(), TerminateOutcome::kNotRunning);
  std::vector<int> fds(records.size(), -1);
  // A pidfd pins the identity: once its start time checks out, signals sent through
  // it cannot reach a later process that reuses the pid.
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].pid <= 0) continue;
    int fd = PidfdOpen(records[i].pid);
    if (fd < 0) continue;  // ESRCH: gone
    if (!Matches(records[i])) {
      ::close(fd);
      continue;
    }
    if (SignalProcessAndGroup(fd, records[i].pid, SIGTERM) != 0) {
      ::close(fd);
      continue;
    }
    fds[i] = fd;
    out[i] = TerminateOutcome::kStopped;
  }
  WaitExits(&fds, records, grace);
  bool any_left = false;
  for (size_t i = 0; i < records.size(); ++i) {
    if (fds[i] < 0) continue;
    SignalProcessAndGroup(fds[i], records[i].pid, SIGKILL);
    out[i] = TerminateOutcome::kKilled;
    any_left = true;
  }
  if (!any_left) return out;
  WaitExits(&fds, records, std::chrono::seconds(5));
  for (size_t i = 0; i < records.size(); ++i) {
    if (fds[i] < 0) continue;
    ::close(fds[i]);
    out[i] = DeadlineExceededError(fmt::format("process {} ({}) is still alive 5 s after SIGKILL",
                                               records[i].pid, records[i].exe));
  }
  return out;
}

Result<TerminateOutcome> Terminate(const ProcessRecord& record, std::chrono::milliseconds grace) {
  return std::move(TerminateAll({record}, grace)[0]);
}

Result<ProcessRecord> Spawn(const SpawnSpec& spec, Ledger* ledger) {
  if (spec.argv.empty() || spec.argv[0].empty()) {
    return InvalidArgumentError("spawn: argv is empty");
  }
  const std::string& prog = spec.argv[0];
  // Everything the child needs is prepared here: after fork it must not allocate.
  std::vector<char*> argv;
  for (const std::string& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    std::string_view key = kv.substr(0, kv.find('='));
    bool replaced = false;
    for (const auto& [k, v] : spec.env) replaced = replaced || k == key;
    if (!replaced) env_strings.emplace_back(kv);
  }
  for (const auto& [k, v] : spec.env) {
    if (k.empty() || k.find('=') != std::string::npos) {
      return InvalidArgumentError(fmt::format("spawn {}: bad environment name '{}'", prog, k));
    }
    env_strings.push_back(k + "=" + v);
  }
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  // Open everything that can fail because of a bad name before forking.
  std::vector<int> owned;
  auto close_owned = [&owned] {
    for (int fd : owned) ::close(fd);
    owned.clear();
  };
  auto open_fd = [&](const std::string& path, int flags, const char* what) -> Result<int> {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd < 0) {
      int e = errno;
      close_owned();
      return ErrnoError(fmt::format("spawn {}: open {} {}", prog, what, path), e);
    }
    owned.push_back(fd);
    return fd;
  };
  int netns_fd = -1;
  if (!spec.netns.empty()) {
    TERN_ASSIGN_OR_RETURN(netns_fd,
                          open_fd("/run/netns/" + spec.netns, O_RDONLY, "network namespace"));
  }
  std::vector<int> task_fds;
  for (const std::string& dir : spec.cgroup_dirs) {
    TERN_ASSIGN_OR_RETURN(int fd, open_fd(JoinPath(dir, "tasks"), O_WRONLY, "cgroup"));
    task_fds.push_back(fd);
  }
  TERN_ASSIGN_OR_RETURN(int null_fd, open_fd("/dev/null", O_RDWR, "null device"));
  int out_fd = null_fd;
  int err_fd = null_fd;
  if (!spec.stdout_path.empty()) {
    TERN_ASSIGN_OR_RETURN(out_fd,
                          open_fd(spec.stdout_path, O_WRONLY | O_CREAT | O_APPEND, "stdout log"));
  }
  if (!spec.stderr_path.empty()) {
    if (spec.stderr_path == spec.stdout_path) {
      err_fd = out_fd;
    } else {
      TERN_ASSIGN_OR_RETURN(err_fd,
                            open_fd(spec.stderr_path, O_WRONLY | O_CREAT | O_APPEND, "stderr log"));
    }
  }
  int go_pipe[2];    // parent -> child: "you are recorded, go on"
  int exec_pipe[2];  // child -> parent: a ChildError, or EOF when exec succeeded
  if (::pipe2(go_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    close_owned();
    return ErrnoError("spawn: pipe", e);
  }
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    CloseFds({go_pipe[0], go_pipe[1]});
    close_owned();
    return ErrnoError("spawn: pipe", e);
  }

  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    CloseFds({go_pipe[0], go_pipe[1], exec_pipe[0], exec_pipe[1]});
    close_owned();
    return ErrnoError("spawn " + prog + ": fork", e);
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    const int report = exec_pipe[1];
    ::close(go_pipe[1]);  // else a dead parent would not be seen as EOF
    ::close(exec_pipe[0]);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::signal(sig, SIG_DFL);
    }
    if (::setsid() < 0) ChildFail(report, kStageSetsid);
    char pid_buf[32];
    size_t pid_len = FormatPid(::getpid(), pid_buf);
    for (int fd : task_fds) {
      if (::write(fd, pid_buf, pid_len) != static_cast<ssize_t>(pid_len)) {
        ChildFail(report, kStageCgroup);
      }
    }
    if (netns_fd >= 0 && ::setns(netns_fd, CLONE_NEWNET) != 0) ChildFail(report, kStageSetns);
    if (::dup2(null_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) {
      ChildFail(report, kStageRedirect);
    }
    if (!spec.working_dir.empty() && ::chdir(spec.working_dir.c_str()) != 0) {
      ChildFail(report, kStageChdir);
    }
    char go = 0;
    ssize_t r;
    do {
      r = ::read(go_pipe[0], &go, 1);
    } while (r < 0 && errno == EINTR);
    if (r != 1) {
      errno = ECANCELED;
      ChildFail(report, kStageWaitParent);  // the parent died before recording us
    }
    // Close everything but stdio and the report pipe (CLOEXEC: closes at exec).
    if (report > 3) ::close_range(3, static_cast<unsigned>(report - 1), 0);
    ::close_range(static_cast<unsigned>(report + 1), std::numeric_limits<unsigned>::max(), 0);
    ::execvpe(argv[0], argv.data(), envp.data());
    ChildFail(report, kStageExec);
  }

  // Parent.
  ::close(go_pipe[0]);
  ::close(exec_pipe[1]);
  close_owned();
  auto abandon = [&](Status why) -> Status {
    ::kill(pid, SIGKILL);
    ::close(go_pipe[1]);
    ::close(exec_pipe[0]);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return why;
  };
  ProcessRecord record;
  record.pid = pid;
  record.exe = prog;
  Result<ProcStat> st = ReadProcStat(pid);
  if (!st.ok()) return abandon(st.status().WithPrefix("spawn " + prog));
  record.start_time = st->start_time;
  if (ledger != nullptr) {
    Status s = ledger->Record(LedgerEntry::Process(record));
    if (!s.ok()) return abandon(s.WithPrefix("spawn " + prog + ": recording it"));
  }
  char go = 1;
  ssize_t w = ::write(go_pipe[1], &go, 1);
  ::close(go_pipe[1]);
  ChildError child_error{0, 0};
  size_t got = 0;
  while (got < sizeof(child_error)) {
    ssize_t r = ::read(exec_pipe[0], reinterpret_cast<char*>(&child_error) + got,
                       sizeof(child_error) - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(exec_pipe[0]);
  if (got == 0 && w == 1) return record;  // EOF: exec succeeded
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  if (ledger != nullptr) {
    Status s = ledger->Forget(LedgerEntry::Process(record));
    (void)s;  // the process is gone either way; a stale entry is harmless
  }
  if (got != sizeof(child_error)) {
    return InternalError(fmt::format("spawn {}: the child died before exec", prog));
  }
  std::string where = spec.netns.empty() ? "" : " in netns " + spec.netns;
  return ErrnoError(fmt::format("spawn {}{}: {} failed", prog, where, StageName(child_error.stage)),
                    child_error.err);
}

}  // namespace tern::emu
