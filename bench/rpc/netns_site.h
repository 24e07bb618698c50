// NetnsSite: the emulated network that rpc_bench's `netns` rows run across. It is two
// hosts of a tern emulated datacenter (emu::CreateHostNetwork, docs/design/emulation.md):
//
//   root namespace:  bridge tb-<c> (10.X.Y.1)
//                     ├── veth ── eth0 in tern-<c>-srv  10.X.Y.2   the server child
//                     └── veth ── eth0 in tern-<c>-cli  10.X.Y.3   the client's sockets
//
// unshaped and without emulated latency (this kernel has no netem): a netns call pays
// veth → bridge → veth each way, where a loopback call pays the loopback device.
//
// The server child is spawned into the server host's namespace (emu::Spawn, recorded in
// the ledger, so a teardown stops it even after a crash). The client stays rpc_bench's
// main thread: RunInClient() moves the calling thread into the client host's namespace
// just long enough to create and connect its sockets. A socket belongs to the namespace
// it was created in, so every later call on it crosses the emulated network while the
// thread is back in the root namespace (its timers, pinning and CPU clock untouched).
//
// Lifetime: Create() takes an exclusive lock on <state_dir>/lock (another rpc_bench on
// the same state dir: kUnavailable), removes whatever a crashed earlier run left
// (emu::Teardown: its ledger, then a sweep by name), then builds the network.
// Teardown() removes everything again; the destructor calls it. With
// teardown_on_signal, SIGINT and SIGTERM (e.g. bench/run.sh's `timeout`) tear the network
// down from a watcher thread before the process exits with 128 + signal. A SIGKILLed run
// leaves the network (its servers die with it, PR_SET_PDEATHSIG) until the next
// Create() on the same state dir and cluster.
//
// Needs root and iproute2 (emu::CheckNetworkSupport): kPermissionDenied / kUnavailable
// otherwise, which rpc_bench reports as "skipped".
// Thread-safety: RunInClient() affects only the calling thread; Teardown() may be called
// from any thread (one mutex); the accessors are immutable after Create().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "core/mutex.h"
#include "core/status.h"
#include "emu/ledger.h"
#include "emu/netns.h"
#include "emu/teardown.h"

namespace tern::bench::rpc {

struct NetnsSiteOptions {
  std::string state_dir = "/tmp/tern-rpc-bench-netns";  // ledger and lock; created
  std::string cluster = "rpcb";                         // emu cluster name ([a-z0-9]{1,8})
  bool teardown_on_signal = false;  // install the SIGINT/SIGTERM handler described above
};

class NetnsSite {
 public:
  static Result<std::unique_ptr<NetnsSite>> Create(const NetnsSiteOptions& options);
  ~NetnsSite();
  NetnsSite(const NetnsSite&) = delete;
  NetnsSite& operator=(const NetnsSite&) = delete;

  const std::string& server_netns() const { return network_.hosts[0].netns; }
  const std::string& server_address() const { return network_.hosts[0].address; }
  const std::string& client_netns() const { return network_.hosts[1].netns; }
  const std::string& client_address() const { return network_.hosts[1].address; }
  const emu::HostNetwork& network() const { return network_; }
  // Records processes spawned into the server namespace (ServerProcess). Valid until
  // Teardown().
  emu::Ledger* ledger() const { return ledger_.get(); }

  // Runs `fn` with the calling thread in the client host's namespace, then returns the
  // thread to the namespace it was in. An error if the namespace cannot be entered
  // (fn does not run); aborts if the thread cannot return (a broken invariant).
  Status RunInClient(const std::function<Status()>& fn) const;

  // Stops the processes in the ledger and removes the namespaces, veths and bridge, then
  // releases the lock. Returns what emu::Teardown reported (the first call's report;
  // later calls return it again without touching anything).
  emu::TeardownReport Teardown() EXCLUDES(mu_);

 private:
  NetnsSite(NetnsSiteOptions options, int lock_fd)
      : options_(std::move(options)), lock_fd_(lock_fd) {}
  void StartSignalWatcher();
  void StopSignalWatcher();

  const NetnsSiteOptions options_;
  int lock_fd_ = -1;
  emu::HostNetwork network_;
  std::unique_ptr<emu::Ledger> ledger_;
  std::thread watcher_;
  int wake_fds_[2] = {-1, -1};  // the signal handler's pipe to watcher_
  Mutex mu_;
  bool torn_down_ GUARDED_BY(mu_) = false;
  emu::TeardownReport report_ GUARDED_BY(mu_);
};

// Runs `fn` with the calling thread in network namespace `netns` (a name under
// /run/netns), as NetnsSite::RunInClient does.
Status RunInNetns(const std::string& netns, const std::function<Status()>& fn);

}  // namespace tern::bench::rpc
