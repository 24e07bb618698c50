// ChildProcess: starts a real binary for integration tests, with its stdout readable
// line by line and its lifetime tied to the test process (SIGKILL on parent death and
// in the destructor). Test-only; not thread-safe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern::testing {

class ChildProcess {
 public:
  // Starts argv[0] with the given arguments; stderr goes to `stderr_path` ("" = inherit).
  static Result<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                     const std::string& stderr_path = "");
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Next line of stdout (without '\n'), waiting at most `timeout`.
  Result<std::string> ReadLine(std::chrono::milliseconds timeout);
  // Sends `sig` and waits for exit; returns the wait status.
  Result<int> Stop(int sig, std::chrono::milliseconds timeout);
  pid_t pid() const { return pid_; }

 private:
  ChildProcess(pid_t pid, int out_fd) : pid_(pid), out_fd_(out_fd) {}
  pid_t pid_;
  int out_fd_;
  std::string buf_;
  bool exited_ = false;
};

// Runs a command to completion (stdin closed), capturing stdout+stderr.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data = "");

}  // namespace tern::testing
