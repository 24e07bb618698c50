// Starting the processes of an emulated cluster (agents, controller, gateway) inside a
// host's network namespace and a device's cgroups, and stopping them again.
//
// A spawned process runs in its own session (setsid), so it outlives the caller: `tern up`
// returns while the cluster keeps running, and `tern down` stops it by its
// ProcessRecord (pid + start time), never by pid alone, so a pid reused by an unrelated
// process is never signalled.
//
// Crash safety: with a Ledger, the child is held between fork and exec until the parent
// has recorded it; if the parent dies before that, the child exits without running the
// program. So every process that runs is in the ledger.
//
// Ownership: the caller owns nothing but the returned record; the process is detached.
// The spawned process is still the caller's child until the caller exits: IsAlive treats
// a zombie as dead, and Terminate reaps it if it can.
// Thread-safety: the functions may be called from any thread. Spawn forks; the child only
// makes async-signal-safe calls before exec.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "emu/ledger.h"

namespace tern::emu {

struct SpawnSpec {
  std::vector<std::string> argv;         // argv[0]: a path, or a name looked up in PATH
  std::string netns;                     // "" = stay in the caller's network namespace
  std::vector<std::string> cgroup_dirs;  // cgroup v1 dirs to join (their `tasks` file)
  std::string stdout_path;               // appended to; "" = /dev/null
  std::string stderr_path;               // appended to; "" = /dev/null
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing in) ours
  std::string working_dir;                               // "" = the caller's
};

// Starts spec.argv as described above. Before forking it opens the namespace
// (/run/netns/<netns>), the cgroups' `tasks` files and the log files, so a bad name or
// path is an error naming it. The child: setsid, joins the cgroups and the namespace,
// redirects stdin (/dev/null), stdout and stderr, changes directory, waits until the
// parent recorded it in `ledger` (if not null), closes every other fd, execs. If any
// step fails (e.g. argv[0] does not exist), the child reports errno through a CLOEXEC
// pipe and Spawn returns an error naming the step and the program: a bad path is an
// error, not a silently dead child. The ledger entry of a failed spawn is forgotten.
// `ledger` must outlive the call.
Result<ProcessRecord> Spawn(const SpawnSpec& spec, Ledger* ledger);

// The record of a running process read from /proc: pid, start time, exe.
// kNotFound if there is no such process.
Result<ProcessRecord> ReadProcessRecord(pid_t pid);

// True if a process with this pid and this start time runs (zombies do not count).
bool IsAlive(const ProcessRecord& record);

enum class TerminateOutcome {
  kNotRunning,  // no such process, or the pid now belongs to another process: untouched
  kStopped,     // it exited after SIGTERM within the grace period
  kKilled,      // it had to be sent SIGKILL
};

// Stops the process if pid and start time still match: SIGTERM, waits up to `grace` for
// it to go, then SIGKILL and waits (up to 5 s) until it is gone. The identity is pinned
// with a pidfd, so a signal never reaches a process that reused the pid. If the process
// leads a process group (every Spawn()ed process does), the group gets the signals too.
// Only the process itself is waited for. kDeadlineExceeded if it survives SIGKILL.
Result<TerminateOutcome> Terminate(const ProcessRecord& record, std::chrono::milliseconds grace);

// Terminate for many processes at once: SIGTERM to all, one shared grace period, then
// SIGKILL to those left. Returns the outcome of each, in order.
std::vector<Result<TerminateOutcome>> TerminateAll(const std::vector<ProcessRecord>& records,
                                                   std::chrono::milliseconds grace);

}  // namespace tern::emu
