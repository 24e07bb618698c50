// What every `tern` subcommand's main does the same way: parse flags (print --help, or a
// usage error and exit 2), report a failed operation (exit 1), and, for the long-running
// roles (agent, controller, gateway), wait for SIGINT/SIGTERM.
// Single-threaded use (main()), except WaitForStopSignal's effect on other threads.
#pragma once

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::cli {

class Flags;

// Prints "<prog>: <message>", a blank line and the help; returns 2 (the usage exit code).
int UsageError(const Flags& f, std::string_view prog, std::string_view message);
// Prints "tern: <status>"; returns 1 (the operation failed).
int CommandFailed(const Status& s);
// Parses argv[2..] into `f` (argv[1] is the subcommand). Returns -1 to go on, or the
// exit code: 0 after printing the help, 2 after a usage error (bad flag, or a number of
// positional arguments outside [min_pos, max_pos]).
int ParseFlagsOrExit(Flags* f, int argc, char** argv, std::string_view prog, size_t min_pos = 0,
                     size_t max_pos = std::numeric_limits<size_t>::max());

// Writes a reply's bytes to stdout as they are, plus a newline on a terminal.
void PrintReply(std::string_view bytes);
// `tern invoke --repeat`: "N calls<where> in S s (R calls/s, one at a time)" and the
// latency percentiles of `ns` (one per call; sorted here).
void PrintLatencySummary(std::vector<int64_t> ns, double seconds, std::string_view where);

// For the long-running roles: blocks SIGINT and SIGTERM (call before starting threads,
// which inherit the mask) and ignores SIGPIPE.
void BlockStopSignals();
// Waits until SIGINT or SIGTERM arrives; returns the signal's description.
std::string WaitForStopSignal();

}  // namespace tern::cli
