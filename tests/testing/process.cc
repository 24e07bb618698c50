#include "testing/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/clock.h"

namespace tern::testing {

namespace {
std::vector<char*> Argv(const std::vector<std::string>& argv) {
  std::vector<char*> a;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  return a;
}
}  // namespace

Result<std::unique_ptr<ChildProcess>> ChildProcess::Start(const std::vector<std::string>& argv,
                                                          const std::string& stderr_path) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return ErrnoError("pipe", errno);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork", errno);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(out[1], STDOUT_FILENO);
    if (!stderr_path.empty()) {
      int fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, STDERR_FILENO);
    }
    std::vector<char*> a = Argv(argv);
    execv(a[0], a.data());
    _exit(127);
  }
  close(out[1]);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, out[0]));
}

ChildProcess::~ChildProcess() {
  if (!exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  close(out_fd_);
}

Result<std::string> ChildProcess::ReadLine(std::chrono::milliseconds timeout) {
  int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    int64_t left_ms = (deadline - MonoNanos()) / 1'000'000;
    if (left_ms <= 0) return DeadlineExceededError("no line from child within the timeout");
    pollfd p{out_fd_, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left_ms));
    if (r < 0 && errno != EINTR) return ErrnoError("poll", errno);
    if (r <= 0) continue;
    char tmp[4096];
    ssize_t n = read(out_fd_, tmp, sizeof(tmp));
    if (n == 0) return UnavailableError("child closed stdout");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoError("read", errno);
    }
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

Result<int> ChildProcess::Stop(int sig, std::chrono::milliseconds timeout) {
  if (exited_) return FailedPreconditionError("already stopped");
  kill(pid_, sig);
  int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      return st;
    }
    if (MonoNanos() > deadline) return DeadlineExceededError("child did not exit in time");
    usleep(2000);
  }
}

CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data) {
  CommandResult res;
  int out[2], in[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(in, O_CLOEXEC) != 0) return res;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    std::vector<char*> a = Argv(argv);
    execv(a[0], a.data());
    _exit(127);
  }
  close(out[1]);
  close(in[0]);
  if (!stdin_data.empty()) {
    ssize_t ignored = write(in[1], stdin_data.data(), stdin_data.size());
    (void)ignored;
  }
  close(in[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) res.output.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  res.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return res;
}

}  // namespace tern::testing
