// Running the iproute2 tools (`ip`, `tc`) for the emulation: fork + exec without a shell,
// stdin from /dev/null, stdout and stderr captured, a time limit. Failures become a
// Status that quotes the command line and what the tool printed on stderr.
//
// Not a hot path: a call costs a fork and an exec (a few ms).
// Thread-safety: stateless functions; safe from any thread.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern::emu {

struct CommandOutput {
  int exit_code = -1;  // the exit status; 128 + signal number if killed by a signal
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs argv (argv[0] is looked up in PATH if it has no '/') and waits for it.
// Errors: kNotFound if argv[0] cannot be executed; kDeadlineExceeded (the child is
// killed) after `timeout`. A non-zero exit is NOT an error here: see RunTool.
Result<CommandOutput> RunCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Like RunCommand, but a non-zero exit is an error:
//   "command `ip link add tb-x type bridge` failed (exit 2): RTNETLINK answers: File exists"
// with code kFailedPrecondition. Returns stdout on success.
Result<std::string> RunTool(const std::vector<std::string>& argv,
                            std::chrono::milliseconds timeout = std::chrono::seconds(10));

// The command line as shown in errors: arguments joined by spaces.
std::string CommandLine(const std::vector<std::string>& argv);

// The path of an iproute2 tool ("ip", "tc"): /usr/sbin, /sbin, /usr/bin, /bin, then PATH
// (services often run with a PATH that lacks the sbin directories). kUnavailable with
// "iproute2 is not installed" if absent.
Result<std::string> FindTool(const std::string& name);

}  // namespace tern::emu
