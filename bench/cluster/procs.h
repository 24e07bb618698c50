// The processes cluster_bench runs: a child process handle (stdout readable line by
// line, stderr to a log file, optional CPU pinning, killed with the benchmark), a
// run-to-completion helper for wrk, and the start-up of tern's cluster roles (controller,
// agent, gateway) and of a real etcd, each waited for on the line it prints when ready.
// Everything binds 127.0.0.1 with port 0 (etcd: ports that were free a moment ago).
//
// Ownership: a Child owns its process: the destructor sends SIGKILL and reaps it, and
// the child gets SIGKILL too if the benchmark dies first (PR_SET_PDEATHSIG).
// Thread-safety: none; cluster_bench drives everything from its main thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern::bench::cluster {

class Child {
 public:
  // Starts argv[0] (an absolute path) with stdout on a pipe and stderr appended to
  // `log_path` ("" = /dev/null). `cpu` >= 0 pins the process to that CPU before exec
  // (what `taskset -c CPU` does).
  static Result<std::unique_ptr<Child>> Start(const std::vector<std::string>& argv,
                                              const std::string& log_path, int cpu = -1);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // The next line of stdout without '\n', waiting at most `timeout`; kUnavailable when
  // the process closed stdout (exited), kDeadlineExceeded on timeout.
  Result<std::string> ReadLine(std::chrono::milliseconds timeout);
  // SIGKILL and reap (idempotent).
  void Kill();
  // SIGTERM, then SIGKILL after `grace`; reaps.
  void Stop(std::chrono::milliseconds grace);
  pid_t pid() const { return pid_; }
  bool exited() const { return exited_; }

 private:
  Child(pid_t pid, int out_fd) : pid_(pid), out_fd_(out_fd) {}
  bool Reap(std::chrono::milliseconds timeout);
  pid_t pid_;
  int out_fd_;
  std::string buf_;
  bool exited_ = false;
};

// Runs argv to completion with stdout and stderr captured, killing it after `timeout`.
struct Captured {
  int exit_code = -1;  // -1 when killed or not started
  std::string output;
};
Captured RunCaptured(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                     int cpu = -1);

// Resident set size (VmRSS) and virtual size (VmSize) of a process, bytes; 0 when
// unreadable.
uint64_t RssBytes(pid_t pid);
uint64_t VirtualBytes(pid_t pid);
// Number of memory mappings of a process (lines of /proc/PID/maps; the kernel caps
// them at vm.max_map_count).
size_t MapCount(pid_t pid);

// A started cluster role and where it listens.
struct Role {
  std::unique_ptr<Child> child;
  std::string name;     // "controller", the agent's device, "gateway"
  uint16_t port = 0;    // HTTP port (the agent's admin port)
  uint16_t frames = 0;  // an agent's frame-protocol port
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

struct ControllerFlags {
  std::string store = "embedded";  // or "etcd:HOST:PORT"
  std::string data_dir;            // for the embedded store
  int agent_ttl_ms = 3000;
  int heartbeat_ms = 1000;
};
Result<Role> StartController(const std::string& tern, const ControllerFlags& flags,
                             const std::string& log_path);

struct AgentFlags {
  std::string device;
  std::string host_id = "h1";
  int memory_mib = 1024;
  int cores = 1;
  int workers = 1;
};
Result<Role> StartAgent(const std::string& tern, const std::string& controller,
                        const AgentFlags& flags, const std::string& log_path);

Result<Role> StartGateway(const std::string& tern, const std::string& controller,
                          const std::string& log_path);

// A single-member etcd (/usr/bin/etcd) with its data and log in `dir`, started with
// the flags of tests/testing/etcd.h (heartbeat 50 ms, election timeout 500 ms), waited
// for (/health) at most 15 s.
struct Etcd {
  std::unique_ptr<Child> child;
  uint16_t client_port = 0;
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port); }
};
bool EtcdAvailable();
Result<Etcd> StartEtcd(const std::string& dir);

}  // namespace tern::bench::cluster
