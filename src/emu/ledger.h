// Ledger: the crash-safe record of what the emulation created on this machine for one
// cluster, kept in <state_dir>/<cluster>/ledger.json.
//
// The rule: the INTENT to create a resource is written (atomically, with fsync) before
// the resource is created. A crash at any point therefore leaves a ledger that lists
// everything that may exist (and maybe a few things that were never made, which teardown
// shrugs off). Teardown (emu/teardown.h) reads it, removes each entry, and forgets it.
//
// The file (version 1):
//   {"version": 1, "cluster": "demo", "entries": [
//     {"kind": "bridge", "name": "tb-demo"},
//     {"kind": "netns", "name": "tern-demo-host1"},
//     {"kind": "veth", "name": "tv-demo-0"},                 // root end; the pair goes with it
//     {"kind": "qdisc", "name": "eth0", "netns": "tern-demo-host1"},   // root qdisc of a link
//     {"kind": "cgroup", "name": "/sys/fs/cgroup/cpu/tern/demo/host1-csd0"},
//     {"kind": "process", "pid": 4242, "start_time": 81234, "exe": "/usr/bin/agent"},
//     {"kind": "sysctl", "name": "/proc/sys/net/ipv4/ip_forward", "value": "0"}]}
// A process is identified by pid AND start time (field 22 of /proc/<pid>/stat, clock
// ticks after boot), so a pid reused by an unrelated process is never mistaken for ours.
// A sysctl entry holds the value to restore.
//
// Ownership: a Ledger owns its in-memory copy; the file is the truth across processes.
// Two Ledger objects for the same cluster in one or two processes are not coordinated:
// `tern up` and `tern down` of one cluster must not run at the same time.
// Thread-safety: a Ledger is safe to use from any thread (one mutex).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"

namespace tern::emu {

// Identifies one process for its whole life: a pid alone may be reused.
struct ProcessRecord {
  pid_t pid = 0;
  uint64_t start_time = 0;  // /proc/<pid>/stat field 22, clock ticks after boot
  std::string exe;          // the executable's path, for reports (readlink /proc/<pid>/exe)
  bool operator==(const ProcessRecord&) const = default;
};

enum class ResourceKind { kBridge, kNetns, kVeth, kQdisc, kCgroup, kProcess, kSysctl };
// "bridge", "netns", ...; ParseResourceKind is its inverse (false if unknown).
const char* ResourceKindName(ResourceKind kind);
bool ParseResourceKind(const std::string& s, ResourceKind* out);

struct LedgerEntry {
  ResourceKind kind = ResourceKind::kNetns;
  std::string name;       // netns, link or qdisc device name, cgroup dir, sysctl path
  std::string netns;      // kQdisc: the namespace of the device ("" = root namespace)
  std::string value;      // kSysctl: the value to restore
  ProcessRecord process;  // kProcess only
  bool operator==(const LedgerEntry&) const = default;

  static LedgerEntry Bridge(std::string name);
  static LedgerEntry Netns(std::string name);
  static LedgerEntry Veth(std::string name);
  static LedgerEntry Qdisc(std::string ifname, std::string netns);
  static LedgerEntry Cgroup(std::string dir);
  static LedgerEntry Process(ProcessRecord p);
  static LedgerEntry Sysctl(std::string path, std::string old_value);
  // "netns tern-demo-host1", "process 4242 (/usr/bin/agent)", for reports.
  std::string ToString() const;
};

// <state_dir>/<cluster>/ledger.json
std::string LedgerPath(const std::string& state_dir, const std::string& cluster);

// Encoding of the file; ParseLedger(LedgerToJson(c, e)) gives back e. Errors name `origin`
// (kDataLoss for a file that is not valid JSON, e.g. torn by a crash of a non-atomic
// writer or a full disk; kInvalidArgument for a wrong version, kind or field).
std::string LedgerToJson(const std::string& cluster, const std::vector<LedgerEntry>& entries);
Result<std::vector<LedgerEntry>> ParseLedger(const std::string& text, const std::string& origin);

class Ledger {
 public:
  // Opens the ledger of `cluster` under `state_dir`, creating the directory and an empty
  // ledger if there is none, or loading the entries of an existing one (a previous run
  // that was not torn down: new entries are added to the old ones).
  // Errors: invalid cluster name; the file is unreadable or corrupt (kDataLoss: run
  // teardown, which sweeps by name, before starting again).
  static Result<std::unique_ptr<Ledger>> Open(const std::string& state_dir,
                                              const std::string& cluster);
  // Reads the entries of an existing ledger. kNotFound if there is none.
  static Result<std::vector<LedgerEntry>> Load(const std::string& state_dir,
                                               const std::string& cluster);

  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Adds `e` and rewrites the file atomically before returning; call it BEFORE creating
  // the resource. Recording an entry that is already there is a no-op (no write).
  Status Record(const LedgerEntry& e) EXCLUDES(mu_);
  // Removes `e` (after the resource is gone) and rewrites the file. Absent: no-op.
  Status Forget(const LedgerEntry& e) EXCLUDES(mu_);
  std::vector<LedgerEntry> entries() const EXCLUDES(mu_);
  const std::string& path() const { return path_; }
  const std::string& cluster() const { return cluster_; }

 private:
  Ledger(std::string cluster, std::string path, std::vector<LedgerEntry> entries)
      : cluster_(std::move(cluster)), path_(std::move(path)), entries_(std::move(entries)) {}
  Status WriteLocked() REQUIRES(mu_);

  const std::string cluster_;
  const std::string path_;
  mutable Mutex mu_;
  std::vector<LedgerEntry> entries_ GUARDED_BY(mu_);
};

}  // namespace tern::emu
