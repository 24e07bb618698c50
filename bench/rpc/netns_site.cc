#include "netns_site.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>

#include "core/logging.h"

namespace tern::bench::rpc {
namespace {

// The write end of the pipe the SIGINT/SIGTERM handler wakes the watcher thread with.
// A signal handler can reach nothing else, hence this one process-wide variable; at most
// one NetnsSite with teardown_on_signal exists at a time (Create() refuses a second).
std::atomic<int> g_signal_wake_fd{-1};
struct sigaction g_old_int;
struct sigaction g_old_term;

void OnStopSignal(int sig) {
  const int saved = errno;
  const int fd = g_signal_wake_fd.load(std::memory_order_relaxed);
  if (fd >= 0) {
    const auto b = static_cast<unsigned char>(sig);
    (void)!::write(fd, &b, 1);
  }
  errno = saved;
}

}  // namespace

Status RunInNetns(const std::string& netns, const std::function<Status()>& fn) {
  const int self = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) return ErrnoError("open /proc/thread-self/ns/net", errno);
  const std::string path = "/run/netns/" + netns;
  const int target = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    const int e = errno;
    ::close(self);
    return ErrnoError("open network namespace " + path, e);
  }
  if (::setns(target, CLONE_NEWNET) != 0) {
    const int e = errno;
    ::close(self);
    ::close(target);
    return ErrnoError("setns into " + netns, e);
  }
  ::close(target);
  Status st = fn();
  const bool back = ::setns(self, CLONE_NEWNET) == 0;
  const int e = errno;
  ::close(self);
  // A thread left in the wrong namespace would silently measure something else.
  CHECK(back) << "cannot return the thread from network namespace " << netns << ": "
              << ErrnoError("setns", e).ToString();
  return st;
}

Result<std::unique_ptr<NetnsSite>> NetnsSite::Create(const NetnsSiteOptions& options) {
  TERN_RETURN_IF_ERROR(emu::CheckNetworkSupport());
  TERN_RETURN_IF_ERROR(emu::ValidateClusterName(options.cluster));
  if (options.teardown_on_signal && g_signal_wake_fd.load() >= 0) {
    return FailedPreconditionError("another NetnsSite already tears down on signals");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.state_dir, ec);
  if (ec) {
    return UnavailableError("cannot create the state dir " + options.state_dir + ": " +
                            ec.message());
  }
  const std::string lock_path = options.state_dir + "/lock";
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0) return ErrnoError("open " + lock_path, errno);
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(lock_fd);
    if (e == EWOULDBLOCK) {
      return UnavailableError("another rpc_bench run holds " + lock_path +
                              " (it is using the emulated network of cluster " + options.cluster +
                              ")");
    }
    return ErrnoError("flock " + lock_path, e);
  }
  std::unique_ptr<NetnsSite> site(new NetnsSite(options, lock_fd));

  // What a crashed run left (we hold the lock: nobody else is using it).
  TERN_ASSIGN_OR_RETURN(emu::TeardownReport stale,
                        emu::Teardown(options.state_dir, options.cluster));
  if (!stale.clean()) {
    std::string what;
    for (const std::string& r : stale.remaining) what += (what.empty() ? "" : "; ") + r;
    return FailedPreconditionError("cannot remove what an earlier run left of cluster " +
                                   options.cluster + ": " + what);
  }
  TERN_ASSIGN_OR_RETURN(site->ledger_, emu::Ledger::Open(options.state_dir, options.cluster));
  emu::NetworkPlan plan;
  plan.cluster = options.cluster;
  plan.hosts = {{.name = "srv"}, {.name = "cli"}};
  Result<emu::HostNetwork> net = emu::CreateHostNetwork(plan, site->ledger_.get());
  if (!net.ok()) {
    (void)site->Teardown();  // what was made is in the ledger
    return net.status().WithPrefix("building the emulated network");
  }
  site->network_ = std::move(*net);
  if (options.teardown_on_signal) site->StartSignalWatcher();
  return site;
}

NetnsSite::~NetnsSite() {
  (void)Teardown();
  StopSignalWatcher();
}

Status NetnsSite::RunInClient(const std::function<Status()>& fn) const {
  return RunInNetns(client_netns(), fn);
}

emu::TeardownReport NetnsSite::Teardown() {
  MutexLock lock(&mu_);
  if (torn_down_) return report_;
  torn_down_ = true;
  Result<emu::TeardownReport> r = emu::Teardown(options_.state_dir, options_.cluster);
  if (r.ok()) {
    report_ = std::move(*r);
  } else {
    report_.remaining.push_back(r.status().ToString());
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
  lock_fd_ = -1;
  return report_;
}

void NetnsSite::StartSignalWatcher() {
  if (::pipe2(wake_fds_, O_CLOEXEC) != 0) {
    wake_fds_[0] = wake_fds_[1] = -1;
    return;  // no signal teardown; the next run removes what a killed run leaves
  }
  watcher_ = std::thread([this] {
    unsigned char sig = 0;
    ssize_t n;
    do {
      n = ::read(wake_fds_[0], &sig, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || sig == 0) return;  // StopSignalWatcher
    const char msg[] = "rpc_bench: signal received: tearing down the emulated network\n";
    (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)Teardown();
    ::_exit(128 + sig);
  });
  g_signal_wake_fd.store(wake_fds_[1]);
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

void NetnsSite::StopSignalWatcher() {
  if (!watcher_.joinable()) return;
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  g_signal_wake_fd.store(-1);
  const unsigned char quit = 0;
  (void)!::write(wake_fds_[1], &quit, 1);
  watcher_.join();
  ::close(wake_fds_[0]);
  ::close(wake_fds_[1]);
  wake_fds_[0] = wake_fds_[1] = -1;
}

}  // namespace tern::bench::rpc
