// Tests of the emulation plumbing. The first half needs no privileges (names, addresses,
// ledger, commands, spawning); the second half (EmuRootTest) builds real namespaces,
// veths, qdiscs and cgroups and skips with a message unless running as root with
// iproute2 and cgroup v1.
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/file.h"
#include "emu/cgroup.h"
#include "emu/command.h"
#include "emu/ledger.h"
#include "emu/naming.h"
#include "emu/netns.h"
#include "emu/spawn.h"
#include "emu/teardown.h"
#include "testing/test_env.h"

namespace tern::emu {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Waits for a child of this process to exit; returns its exit code (-1 on timeout, after
// killing it; 128 + signal if it was killed).
int WaitChild(pid_t pid, milliseconds timeout) {
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    ::close(pidfd);
    if (n == 0) ::kill(pid, SIGKILL);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// --- Names and addresses (no root needed)

TEST(NamingTest, NamesFollowTheSchemeAndFitIfnamsiz) {
  EXPECT_EQ(NetnsName("demo", "host1"), "tern-demo-host1");
  EXPECT_EQ(NetnsPrefix("demo"), "tern-demo-");
  EXPECT_EQ(BridgeName("demo"), "tb-demo");
  EXPECT_EQ(VethName("demo", 3), "tv-demo-3");
  EXPECT_EQ(PeerName("demo", 3), "tp-demo-3");
  EXPECT_EQ(DeviceCgroupDir("/sys/fs/cgroup", "cpu", "demo", "host1-csd0"),
            "/sys/fs/cgroup/cpu/tern/demo/host1-csd0");
  EXPECT_EQ(ClusterCgroupDir("/sys/fs/cgroup", "memory", "demo"),
            "/sys/fs/cgroup/memory/tern/demo");
  // The longest cluster name with the largest host index still fits.
  const std::string longest(kMaxClusterNameLength, 'z');
  ASSERT_TRUE(ValidateClusterName(longest).ok());
  ASSERT_TRUE(ValidateHostIndex(kMaxHosts - 1).ok());
  for (const std::string& n :
       {BridgeName(longest), VethName(longest, kMaxHosts - 1), PeerName(longest, kMaxHosts - 1)}) {
    EXPECT_LE(n.size(), kMaxIfNameLength) << n;
  }
  EXPECT_EQ(VethName(longest, kMaxHosts - 1).size(), kMaxIfNameLength);
}

TEST(NamingTest, RejectsBadNamesWithTheReason) {
  EXPECT_TRUE(ValidateClusterName("a1").ok());
  Status s = ValidateClusterName("abcdefghi");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(s.message()), "longer than 8")) << s;
  s = ValidateClusterName("a-b");  // '-' would make "tern-a-" a prefix of "tern-a-b-"
  EXPECT_TRUE(Contains(std::string(s.message()), "'-'")) << s;
  EXPECT_FALSE(ValidateClusterName("").ok());
  EXPECT_FALSE(ValidateClusterName("Demo").ok());
  EXPECT_TRUE(ValidateHostName("host-1_a").ok());
  EXPECT_FALSE(ValidateHostName("-host").ok());
  EXPECT_FALSE(ValidateHostName("host/1").ok());
  EXPECT_FALSE(ValidateHostName(std::string(kMaxHostNameLength + 1, 'h')).ok());
  EXPECT_FALSE(ValidateDeviceName("").ok());
  EXPECT_FALSE(ValidateHostIndex(-1).ok());
  EXPECT_FALSE(ValidateHostIndex(kMaxHosts).ok());
}

TEST(NamingTest, VethMatchingUsesTheWholeClusterPrefix) {
  EXPECT_TRUE(IsVethOfCluster("tv-a-1", "a"));
  EXPECT_TRUE(IsVethOfCluster("tp-a-12", "a"));
  EXPECT_FALSE(IsVethOfCluster("tv-ab-1", "a"));
  EXPECT_FALSE(IsVethOfCluster("tv-a-", "a"));
  EXPECT_FALSE(IsVethOfCluster("tv-a-1x", "a"));
  EXPECT_FALSE(IsVethOfCluster("tb-a", "a"));
  EXPECT_FALSE(IsVethOfCluster("eth0", "a"));
}

TEST(AddressTest, SubnetIsStableAndAvoids10Dot0) {
  // Pinned: the subnet of a cluster must not change between releases (a running cluster
  // would no longer be found by its address).
  EXPECT_EQ(ClusterSubnet("demo"), (Subnet{25, 226}));
  EXPECT_EQ(ClusterSubnet("a"), (Subnet{71, 26}));
  Subnet s = ClusterSubnet("demo");
  EXPECT_EQ(SubnetCidr(s), "10.25.226.0/24");
  EXPECT_EQ(BridgeAddress(s), "10.25.226.1");
  EXPECT_EQ(HostAddress(s, 0), "10.25.226.2");
  EXPECT_EQ(HostAddress(s, kMaxHosts - 1), "10.25.226.254");
  std::set<std::pair<int, int>> seen;
  for (int i = 0; i < 2000; ++i) {
    Subnet t = ClusterSubnet(fmt::format("c{}", i));
    EXPECT_NE(t.x, 0) << i;
    seen.insert({t.x, t.y});
  }
  EXPECT_GE(seen.size(), 1960u);  // spread: few collisions among 2000 names
}

TEST(PlanTest, AssignsIndexesAndRejectsBadPlans) {
  NetworkPlan plan{"demo", {{"h0", 0}, {"h1", 100'000'000}}};
  Result<HostNetwork> net = PlanHostNetwork(plan);
  ASSERT_TRUE(net.ok()) << net.status();
  ASSERT_EQ(net->hosts.size(), 2u);
  EXPECT_EQ(net->bridge, "tb-demo");
  EXPECT_EQ(net->hosts[1].netns, "tern-demo-h1");
  EXPECT_EQ(net->hosts[1].address, "10.25.226.3");
  EXPECT_EQ(net->hosts[1].root_ifname, "tv-demo-1");

  plan.hosts.push_back({"h0", 0});
  Result<HostNetwork> dup = PlanHostNetwork(plan);
  EXPECT_EQ(dup.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(dup.status().message()), "hosts[2]")) << dup.status();

  NetworkPlan bad_name{"demo", {{"h0", 0}, {"H1", 0}}};
  Result<HostNetwork> r = PlanHostNetwork(bad_name);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "hosts[1]")) << r.status();

  NetworkPlan too_many{"demo", {}};
  for (int i = 0; i <= kMaxHosts; ++i) too_many.hosts.push_back({fmt::format("h{}", i), 0});
  EXPECT_EQ(PlanHostNetwork(too_many).status().code(), StatusCode::kInvalidArgument);

  NetworkPlan slow{"demo", {{"h0", 100}}};
  EXPECT_EQ(PlanHostNetwork(slow).status().code(), StatusCode::kInvalidArgument);
}

TEST(LimitsTest, TbfBurstAndCfsQuota) {
  EXPECT_EQ(TbfBurstBytes(100'000'000), 125'000u);  // 10 ms at 100 Mbit/s
  EXPECT_EQ(TbfBurstBytes(1'000'000'000), 1'250'000u);
  EXPECT_EQ(TbfBurstBytes(1'000'000), 3028u);  // two frames at least
  EXPECT_EQ(CfsQuotaUs(0.25, 2), 25'000);
  EXPECT_EQ(CfsQuotaUs(1.5, 2), 150'000);
  EXPECT_EQ(CfsQuotaUs(2, 2), -1);  // the whole machine: no quota
  EXPECT_EQ(CfsQuotaUs(0, 2), -1);
  EXPECT_EQ(CfsQuotaUs(0.001, 2), 1000);  // the kernel's minimum
}

TEST(CgroupTest, MissingV1MountsAreUnavailable) {
  std::string fake_root = tern::testing::TempDir("emu_cg");
  Status s = CheckCgroupV1(fake_root);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(std::string(s.message()), "cgroup v1 controller 'cpu'")) << s;
  Result<std::unique_ptr<DeviceCgroup>> cg =
      DeviceCgroup::Create({"demo", "dev0", 0.25, 0}, nullptr, fake_root);
  EXPECT_EQ(cg.status().code(), StatusCode::kUnavailable);
}

// --- Ledger

std::vector<LedgerEntry> SampleEntries() {
  return {LedgerEntry::Bridge("tb-demo"),
          LedgerEntry::Netns("tern-demo-h0"),
          LedgerEntry::Veth("tv-demo-0"),
          LedgerEntry::Qdisc("eth0", "tern-demo-h0"),
          LedgerEntry::Qdisc("tv-demo-0", ""),
          LedgerEntry::Cgroup("/sys/fs/cgroup/cpu/tern/demo/h0-csd0"),
          LedgerEntry::Process({4242, 81234, "/usr/bin/agent"}),
          LedgerEntry::Sysctl("/proc/sys/net/ipv4/ip_forward", "0")};
}

TEST(LedgerTest, RoundTripAndReopen) {
  std::string dir = tern::testing::TempDir("emu_ledger");
  Result<std::unique_ptr<Ledger>> ledger = Ledger::Open(dir, "demo");
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  EXPECT_EQ((*ledger)->path(), dir + "/demo/ledger.json");
  EXPECT_TRUE(FileExists((*ledger)->path()));  // an empty ledger is written at once
  for (const LedgerEntry& e : SampleEntries()) ASSERT_TRUE((*ledger)->Record(e).ok());
  ASSERT_TRUE((*ledger)->Record(SampleEntries()[0]).ok());  // a duplicate is a no-op
  EXPECT_EQ((*ledger)->entries(), SampleEntries());

  // What is on disk is what was recorded, before anything else happens.
  Result<std::vector<LedgerEntry>> loaded = Ledger::Load(dir, "demo");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, SampleEntries());

  ASSERT_TRUE((*ledger)->Forget(LedgerEntry::Veth("tv-demo-0")).ok());
  ASSERT_TRUE((*ledger)->Forget(LedgerEntry::Veth("not-there")).ok());
  ledger->reset();
  Result<std::unique_ptr<Ledger>> again = Ledger::Open(dir, "demo");
  ASSERT_TRUE(again.ok()) << again.status();
  std::vector<LedgerEntry> expected = SampleEntries();
  expected.erase(expected.begin() + 2);
  EXPECT_EQ((*again)->entries(), expected);

  EXPECT_EQ(Ledger::Load(dir, "other").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Ledger::Open(dir, "Bad!").status().code(), StatusCode::kInvalidArgument);
}

TEST(LedgerTest, TornFileIsDataLossNamingThePath) {
  const std::string text = LedgerToJson("demo", SampleEntries());
  // Every proper prefix of the document is rejected (the trailing newline is optional).
  for (size_t n = 0; n + 2 <= text.size(); n += 7) {
    Result<std::vector<LedgerEntry>> r = ParseLedger(text.substr(0, n), "L");
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << n << ": " << r.status();
  }
  ASSERT_TRUE(ParseLedger(text, "L").ok());

  std::string dir = tern::testing::TempDir("emu_torn");
  ASSERT_TRUE(MakeDirs(dir + "/demo").ok());
  // A crash inside WriteFileAtomic leaves a temporary next to an intact ledger: ignored.
  ASSERT_TRUE(WriteFileAtomic(dir + "/demo/ledger.json", text).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/demo/ledger.json.tmp.999", text.substr(0, 40)).ok());
  Result<std::vector<LedgerEntry>> ok = Ledger::Load(dir, "demo");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), SampleEntries().size());

  // A torn ledger (another writer, a full disk) is refused by Open, with the path.
  ASSERT_TRUE(WriteFileAtomic(dir + "/demo/ledger.json", text.substr(0, text.size() / 2)).ok());
  Result<std::unique_ptr<Ledger>> torn = Ledger::Open(dir, "demo");
  EXPECT_EQ(torn.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(torn.status().message()), dir + "/demo/ledger.json"))
      << torn.status();
}

TEST(LedgerTest, BadFieldsAreNamed) {
  Result<std::vector<LedgerEntry>> r = ParseLedger(R"({"version": 2, "entries": []})", "L");
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "'version'")) << r.status();
  r = ParseLedger(R"({"version": 1, "entries": [{"kind": "netns", "name": "x"},
                                                 {"kind": "wormhole", "name": "y"}]})",
                  "L");
  EXPECT_TRUE(Contains(std::string(r.status().message()), "entries[1]: field 'kind'"))
      << r.status();
  r = ParseLedger(R"({"version": 1, "entries": [{"kind": "process", "pid": 7}]})", "L");
  EXPECT_TRUE(Contains(std::string(r.status().message()), "'start_time'")) << r.status();
}

// --- Commands

TEST(CommandTest, FailureQuotesTheCommandAndItsStderr) {
  Result<std::string> r = RunTool({"/bin/sh", "-c", "echo oops >&2; exit 3"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  std::string msg(r.status().message());
  EXPECT_TRUE(Contains(msg, "`/bin/sh -c echo oops >&2; exit 3`")) << msg;
  EXPECT_TRUE(Contains(msg, "exit 3")) << msg;
  EXPECT_TRUE(Contains(msg, "oops")) << msg;

  Result<std::string> out = RunTool({"/bin/sh", "-c", "echo hello"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "hello\n");
  EXPECT_EQ(RunTool({"/nonexistent/tool"}).status().code(), StatusCode::kNotFound);
  Result<std::string> slow = RunTool({"/bin/sleep", "5"}, milliseconds(100));
  EXPECT_EQ(slow.status().code(), StatusCode::kDeadlineExceeded);
}

// --- Spawning (no root needed without netns/cgroups)

TEST(SpawnTest, RedirectsOutputWithEnvAndWorkingDir) {
  std::string dir = tern::testing::TempDir("emu_spawn");
  Result<std::unique_ptr<Ledger>> ledger = Ledger::Open(dir, "demo");
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  SpawnSpec spec;
  spec.argv = {"/bin/sh", "-c", "echo \"$TERN_X\"; pwd; echo err >&2; ls /proc/self/fd"};
  spec.env = {{"TERN_X", "value-42"}};
  spec.working_dir = dir;
  spec.stdout_path = dir + "/out.log";
  spec.stderr_path = dir + "/err.log";
  Result<ProcessRecord> p = Spawn(spec, ledger->get());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_GT(p->start_time, 0u);
  // Recorded in the ledger before it ran.
  std::vector<LedgerEntry> entries = (*ledger)->entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0], LedgerEntry::Process(*p));
  ASSERT_EQ(WaitChild(p->pid, seconds(10)), 0);
  Result<std::string> out = ReadFile(dir + "/out.log");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(Contains(*out, "value-42\n" + dir + "\n")) << *out;
  // Only stdin, stdout, stderr (and ls's own directory fd) are open in the child.
  EXPECT_FALSE(Contains(*out, "\n4\n")) << *out;
  EXPECT_EQ(ReadFile(dir + "/err.log").value_or(""), "err\n");
}

TEST(SpawnTest, ExecFailureIsAnErrorAndIsNotRecorded) {
  std::string dir = tern::testing::TempDir("emu_spawn_bad");
  Result<std::unique_ptr<Ledger>> ledger = Ledger::Open(dir, "demo");
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  SpawnSpec spec;
  spec.argv = {"/nonexistent/agent", "--flag"};
  Result<ProcessRecord> p = Spawn(spec, ledger->get());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound) << p.status();
  EXPECT_TRUE(Contains(std::string(p.status().message()), "/nonexistent/agent")) << p.status();
  EXPECT_TRUE(Contains(std::string(p.status().message()), "exec")) << p.status();
  EXPECT_TRUE((*ledger)->entries().empty());

  spec.argv = {"/bin/true"};
  spec.netns = "tern-no-such-ns";
  p = Spawn(spec, nullptr);
  EXPECT_TRUE(Contains(std::string(p.status().message()), "/run/netns/tern-no-such-ns"))
      << p.status();
  spec.netns = "";
  spec.cgroup_dirs = {dir + "/no-cgroup"};
  p = Spawn(spec, nullptr);
  EXPECT_TRUE(Contains(std::string(p.status().message()), dir + "/no-cgroup/tasks")) << p.status();
  spec.cgroup_dirs.clear();
  spec.working_dir = dir + "/missing";
  p = Spawn(spec, nullptr);
  EXPECT_TRUE(Contains(std::string(p.status().message()), "working directory")) << p.status();
}

TEST(SpawnTest, SurvivesInItsOwnSessionAndTerminates) {
  SpawnSpec spec;
  spec.argv = {"/bin/sleep", "30"};
  Result<ProcessRecord> p = Spawn(spec, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(IsAlive(*p));
  EXPECT_EQ(::getsid(p->pid), p->pid);  // a session leader: outlives our session
  Result<ProcessRecord> read = ReadProcessRecord(p->pid);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->start_time, p->start_time);
  EXPECT_EQ(read->exe, "/usr/bin/sleep") << "exe after exec";

  // A record whose start time does not match is someone else: not signalled.
  ProcessRecord impostor = *p;
  impostor.start_time += 1;
  EXPECT_FALSE(IsAlive(impostor));
  Result<TerminateOutcome> t = Terminate(impostor, milliseconds(100));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, TerminateOutcome::kNotRunning);
  EXPECT_TRUE(IsAlive(*p));

  t = Terminate(*p, seconds(5));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, TerminateOutcome::kStopped);
  EXPECT_FALSE(IsAlive(*p));
  EXPECT_EQ(*Terminate(*p, seconds(1)), TerminateOutcome::kNotRunning);  // idempotent
}

TEST(SpawnTest, TerminateTakesTheProcessGroupAlong) {
  SpawnSpec spec;
  spec.argv = {"/bin/sh", "-c", "/bin/sleep 30 & wait"};
  Result<ProcessRecord> p = Spawn(spec, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string children = fmt::format("/proc/{}/task/{}/children", p->pid, p->pid);
  pid_t helper = 0;
  for (auto deadline = steady_clock::now() + seconds(5);
       helper == 0 && steady_clock::now() < deadline;) {
    helper = static_cast<pid_t>(std::atoi(ReadFile(children).value_or("0").c_str()));
  }
  ASSERT_GT(helper, 0) << "the shell did not start its helper";
  Result<ProcessRecord> helper_record = ReadProcessRecord(helper);
  ASSERT_TRUE(helper_record.ok()) << helper_record.status();
  ASSERT_TRUE(Terminate(*p, seconds(2)).ok());
  EXPECT_FALSE(IsAlive(*p));
  bool helper_gone = false;
  for (auto deadline = steady_clock::now() + seconds(5);
       !helper_gone && steady_clock::now() < deadline;) {
    helper_gone = !IsAlive(*helper_record);
  }
  EXPECT_TRUE(helper_gone) << "the helper of a terminated process survived";
  if (!helper_gone) ::kill(helper, SIGKILL);
}

TEST(SpawnTest, SigkillAfterGrace) {
  SpawnSpec spec;
  spec.argv = {"/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"};
  std::string dir = tern::testing::TempDir("emu_kill");
  spec.stdout_path = dir + "/out";
  Result<ProcessRecord> p = Spawn(spec, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  // The trap is set once the shell runs its script; wait until it ignores SIGTERM.
  auto deadline = steady_clock::now() + seconds(5);
  bool ignoring = false;
  while (!ignoring && steady_clock::now() < deadline) {
    Result<std::string> status = ReadFile(fmt::format("/proc/{}/status", p->pid));
    // SigIgn is a hex mask; SIGTERM (15) is bit 14. Other bits may be set by whatever
    // started the test (ctest, make, a CI shell ignoring SIGPIPE or SIGHUP).
    size_t at = status.ok() ? status->find("SigIgn:\t") : std::string::npos;
    ignoring = at != std::string::npos &&
               (std::strtoull(status->c_str() + at + 8, nullptr, 16) & (1ull << (SIGTERM - 1))) != 0;
  }
  ASSERT_TRUE(ignoring);
  auto start = steady_clock::now();
  Result<TerminateOutcome> t = Terminate(*p, milliseconds(200));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, TerminateOutcome::kKilled);
  EXPECT_GE(steady_clock::now() - start, milliseconds(200));
  EXPECT_FALSE(IsAlive(*p));
}

// --- With root: real namespaces, links, qdiscs, cgroups

// A TCP echo server running in a child process inside `netns`: accepts `connections`
// connections one after the other and echoes what each sends until it closes.
struct Server {
  pid_t pid = -1;
  int port = 0;
};

void JoinNetnsOrDie(const std::string& netns) {
  int fd = ::open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) ::_exit(90);
  ::close(fd);
}

// Forks a child that joins `netns` and runs `fn`; the child's exit code is fn's.
pid_t ForkInNetns(const std::string& netns, const std::function<int()>& fn) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(20);  // never outlive a hung test
    JoinNetnsOrDie(netns);
    ::_exit(fn());
  }
  return pid;
}

int ConnectTo(const std::string& addr, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));  // bounds connect()
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string LocalAddress(int fd) {
  sockaddr_in sa{};
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &sa.sin_addr, buf, sizeof(buf));
  return buf;
}

// Sends `msg` and expects it back; returns the echo ("" on failure).
std::string EchoOnce(int fd, const std::string& msg) {
  if (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size())) {
    return "";
  }
  std::string got;
  char buf[256];
  while (got.size() < msg.size()) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

// Starts a server in `netns` on addr:0. `handler(conn_fd)` serves one connection.
Server StartServer(const std::string& netns, const std::string& addr, int connections,
                   std::function<void(int)> handler) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return {};
  Server s;
  s.pid = ForkInNetns(netns, [&]() -> int {
    ::close(pipe_fds[0]);
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) return 91;
    if (::listen(lfd, 8) != 0) return 92;
    socklen_t len = sizeof(sa);
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len);
    int port = ntohs(sa.sin_port);
    if (::write(pipe_fds[1], &port, sizeof(port)) != sizeof(port)) return 93;
    ::close(pipe_fds[1]);
    for (int i = 0; i < connections; ++i) {
      int c = ::accept(lfd, nullptr, nullptr);
      if (c < 0) return 94;
      handler(c);
      ::close(c);
    }
    return 0;
  });
  ::close(pipe_fds[1]);
  pollfd p{pipe_fds[0], POLLIN, 0};
  if (::poll(&p, 1, 5000) == 1 && ::read(pipe_fds[0], &s.port, sizeof(s.port)) == sizeof(s.port)) {
    ::close(pipe_fds[0]);
    return s;
  }
  ::close(pipe_fds[0]);
  s.port = 0;
  return s;
}

void EchoHandler(int c) {
  char buf[256];
  for (;;) {
    ssize_t n = ::recv(c, buf, sizeof(buf), 0);
    if (n <= 0) return;
    if (::send(c, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
  }
}

std::string NetnsInode(const std::string& netns) {
  struct stat st;
  if (::stat(("/run/netns/" + netns).c_str(), &st) != 0) return "?";
  return fmt::format("net:[{}]", st.st_ino);
}

std::string ProcNetns(pid_t pid) {
  char buf[64] = {};
  ssize_t n = ::readlink(fmt::format("/proc/{}/ns/net", pid).c_str(), buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

class EmuRootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, veth, tc, cgroups)";
    Status net = CheckNetworkSupport();
    if (!net.ok()) GTEST_SKIP() << "emulated network unavailable: " << net;
    Status cg = CheckCgroupV1();
    if (!cg.ok()) GTEST_SKIP() << cg;
    state_dir_ = tern::testing::TempDir("emu_state");
  }

  // Always removes what the test made, even when it failed half-way.
  void TearDown() override {
    for (const ProcessRecord& p : strays_) {
      Result<TerminateOutcome> t = Terminate(p, seconds(1));
      (void)t;
    }
    for (const std::string& c : clusters_) {
      Result<TeardownReport> r = Teardown(state_dir_, c);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_TRUE(r->clean()) << c << ": " << ::testing::PrintToString(r->remaining);
      EXPECT_TRUE(FindClusterResources(c).empty())
          << c << ": " << ::testing::PrintToString(FindClusterResources(c));
    }
  }

  // A cluster name unique to this process and test: "e<pid%100000><tag>".
  std::string Cluster(const std::string& tag) {
    std::string c = fmt::format("e{}{}", ::getpid() % 100000, tag);
    clusters_.push_back(c);
    return c;
  }

  std::unique_ptr<Ledger> OpenLedger(const std::string& cluster) {
    Result<std::unique_ptr<Ledger>> l = Ledger::Open(state_dir_, cluster);
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? std::move(*l) : nullptr;
  }

  std::string state_dir_;
  std::vector<std::string> clusters_;
  std::vector<ProcessRecord> strays_;  // started outside any ledger
};

TEST_F(EmuRootTest, HostsReachEachOtherAndTheRootNamespace) {
  const std::string c = Cluster("n");
  std::unique_ptr<Ledger> ledger = OpenLedger(c);
  ASSERT_NE(ledger, nullptr);
  Result<HostNetwork> net = CreateHostNetwork({c, {{"ha", 0}, {"hb", 0}}}, ledger.get());
  ASSERT_TRUE(net.ok()) << net.status();
  const HostEndpoint& a = net->hosts[0];
  const HostEndpoint& b = net->hosts[1];

  // A second network for the same cluster is refused while the first exists.
  EXPECT_EQ(CreateHostNetwork({c, {{"ha", 0}}}, ledger.get()).status().code(),
            StatusCode::kAlreadyExists);

  // Processes spawned into each namespace run there, in their own session.
  for (const HostEndpoint& h : net->hosts) {
    Result<ProcessRecord> p = Spawn({{"/bin/sleep", "30"}, h.netns}, ledger.get());
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(ProcNetns(p->pid), NetnsInode(h.netns));
    EXPECT_NE(ProcNetns(p->pid), ProcNetns(::getpid()));
  }

  Server sa = StartServer(a.netns, a.address, 1, EchoHandler);
  Server sb = StartServer(b.netns, b.address, 2, EchoHandler);
  ASSERT_GT(sa.port, 0);
  ASSERT_GT(sb.port, 0);

  // Root namespace -> both hosts, through the bridge address.
  for (const auto& [host, server] : {std::pair{&a, sa}, std::pair{&b, sb}}) {
    int fd = ConnectTo(host->address, server.port);
    ASSERT_GE(fd, 0) << "root ns cannot reach " << host->address << ": " << strerror(errno);
    EXPECT_EQ(LocalAddress(fd), net->bridge_address);
    EXPECT_EQ(EchoOnce(fd, "from-root"), "from-root");
    ::close(fd);
  }
  // Host A -> host B.
  const std::string b_addr = b.address;
  const std::string a_addr = a.address;
  const int b_port = sb.port;
  pid_t client = ForkInNetns(a.netns, [&]() -> int {
    int fd = ConnectTo(b_addr, b_port);
    if (fd < 0) return 1;
    if (LocalAddress(fd) != a_addr) return 2;  // really from inside A
    return EchoOnce(fd, "from-a") == "from-a" ? 0 : 3;
  });
  EXPECT_EQ(WaitChild(client, seconds(10)), 0);
  EXPECT_EQ(WaitChild(sa.pid, seconds(10)), 0);
  EXPECT_EQ(WaitChild(sb.pid, seconds(10)), 0);

  // JoinNetns moves one thread of this process (what in-process tools use); the others
  // stay where they are.
  const std::string here = ProcNetns(::getpid());
  std::string joined, bound;
  std::thread t([&] {
    Status st = JoinNetns(b.netns);
    if (!st.ok()) {
      joined = st.ToString();
      return;
    }
    char buf[64] = {};
    ssize_t n = ::readlink("/proc/thread-self/ns/net", buf, sizeof(buf) - 1);
    joined = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    // Its address is local there only.
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, b_addr.c_str(), &sa.sin_addr);
    bound = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 ? "yes" : strerror(errno);
    ::close(fd);
  });
  t.join();
  EXPECT_EQ(joined, NetnsInode(b.netns));
  EXPECT_EQ(bound, "yes");
  EXPECT_EQ(ProcNetns(::getpid()), here);
  EXPECT_EQ(JoinNetns("tern-no-such-netns").code(), StatusCode::kNotFound);
  EXPECT_EQ(JoinNetns("../x").code(), StatusCode::kInvalidArgument);
}

TEST_F(EmuRootTest, TbfLimitsTheRate) {
  const std::string c = Cluster("r");
  std::unique_ptr<Ledger> ledger = OpenLedger(c);
  ASSERT_NE(ledger, nullptr);
  constexpr uint64_t kRate = 100'000'000;
  Result<HostNetwork> net = CreateHostNetwork({c, {{"ha", kRate}, {"hb", kRate}}}, ledger.get());
  ASSERT_TRUE(net.ok()) << net.status();
  // tbf is on both ends of each veth, and recorded.
  for (const HostEndpoint& h : net->hosts) {
    Result<std::string> inside =
        RunTool({*FindTool("tc"), "-n", h.netns, "qdisc", "show", "dev", "eth0"});
    ASSERT_TRUE(inside.ok()) << inside.status();
    EXPECT_TRUE(Contains(*inside, "tbf")) << *inside;
    EXPECT_TRUE(Contains(*inside, "rate 100Mbit")) << *inside;
    Result<std::string> root = RunTool({*FindTool("tc"), "qdisc", "show", "dev", h.root_ifname});
    ASSERT_TRUE(root.ok()) << root.status();
    EXPECT_TRUE(Contains(*root, "tbf")) << *root;
  }
  std::vector<LedgerEntry> entries = ledger->entries();
  EXPECT_NE(
      std::find(entries.begin(), entries.end(), LedgerEntry::Qdisc("eth0", net->hosts[0].netns)),
      entries.end());

  constexpr size_t kBytes = 4 << 20;
  Server sb = StartServer(net->hosts[1].netns, net->hosts[1].address, 1, [](int c) {
    std::vector<char> buf(1 << 16);
    size_t total = 0;
    while (total < kBytes) {
      ssize_t n = ::recv(c, buf.data(), buf.size(), 0);
      if (n <= 0) return;
      total += static_cast<size_t>(n);
    }
    char ack = 'k';
    ::send(c, &ack, 1, MSG_NOSIGNAL);
  });
  ASSERT_GT(sb.port, 0);
  int result_pipe[2];
  ASSERT_EQ(::pipe(result_pipe), 0);
  const std::string b_addr = net->hosts[1].address;
  const int b_port = sb.port;
  pid_t client = ForkInNetns(net->hosts[0].netns, [&]() -> int {
    int fd = ConnectTo(b_addr, b_port);
    if (fd < 0) return 1;
    std::vector<char> data(kBytes, 'x');
    auto start = steady_clock::now();
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return 2;
      off += static_cast<size_t>(n);
    }
    char ack = 0;
    timeval tv{15, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (::recv(fd, &ack, 1, 0) != 1) return 3;
    int64_t ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(steady_clock::now() - start).count();
    return ::write(result_pipe[1], &ns, sizeof(ns)) == sizeof(ns) ? 0 : 4;
  });
  ::close(result_pipe[1]);
  ASSERT_EQ(WaitChild(client, seconds(20)), 0);
  int64_t elapsed_ns = 0;
  ASSERT_EQ(::read(result_pipe[0], &elapsed_ns, sizeof(elapsed_ns)),
            static_cast<ssize_t>(sizeof(elapsed_ns)));
  ::close(result_pipe[0]);
  EXPECT_EQ(WaitChild(sb.pid, seconds(5)), 0);
  const double theoretical_s = kBytes * 8.0 / kRate;  // 0.336 s
  const double elapsed_s = elapsed_ns / 1e9;
  RecordProperty("elapsed_s", std::to_string(elapsed_s));
  EXPECT_GE(elapsed_s, 0.8 * theoretical_s)
      << "4 MiB at 100 Mbit/s took only " << elapsed_s << " s";
  EXPECT_LE(elapsed_s, 5 * theoretical_s) << "far slower than the limit: " << elapsed_s << " s";

  // Rate 0 removes the limit and its ledger entry.
  ASSERT_TRUE(SetRate("eth0", net->hosts[0].netns, 0, ledger.get()).ok());
  Result<std::string> after =
      RunTool({*FindTool("tc"), "-n", net->hosts[0].netns, "qdisc", "show", "dev", "eth0"});
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(Contains(*after, "tbf")) << *after;
  entries = ledger->entries();
  EXPECT_EQ(
      std::find(entries.begin(), entries.end(), LedgerEntry::Qdisc("eth0", net->hosts[0].netns)),
      entries.end());
}

TEST_F(EmuRootTest, CpuQuotaAndMemoryLimit) {
  const std::string c = Cluster("c");
  std::unique_ptr<Ledger> ledger = OpenLedger(c);
  ASSERT_NE(ledger, nullptr);
  Result<std::unique_ptr<DeviceCgroup>> cg =
      DeviceCgroup::Create({c, "h0-csd0", 0.25, 64 << 20}, ledger.get());
  ASSERT_TRUE(cg.ok()) << cg.status();
  const std::vector<std::string>& dirs = (*cg)->dirs();
  ASSERT_EQ(dirs.size(), 3u);
  EXPECT_EQ(dirs[0], DeviceCgroupDir(kDefaultCgroupRoot, "cpu", c, "h0-csd0"));
  EXPECT_EQ(ReadFile(dirs[0] + "/cpu.cfs_period_us").value_or(""), "100000\n");
  EXPECT_EQ(ReadFile(dirs[0] + "/cpu.cfs_quota_us").value_or(""), "25000\n");
  EXPECT_EQ(ReadFile(dirs[2] + "/memory.limit_in_bytes").value_or(""),
            std::to_string(64 << 20) + "\n");
  // Intent before creation: the cluster dirs and the device dirs are all in the ledger.
  EXPECT_EQ(ledger->entries().size(), 6u);

  Result<ProcessRecord> spinner =
      Spawn({{"/bin/sh", "-c", "while :; do :; done"}, "", dirs}, ledger.get());
  ASSERT_TRUE(spinner.ok()) << spinner.status();
  Result<std::vector<pid_t>> pids = (*cg)->Pids();
  ASSERT_TRUE(pids.ok()) << pids.status();
  EXPECT_EQ(*pids, std::vector<pid_t>{spinner->pid});

  // A measurement window of ~1 s (not a wait for a condition): CPU time over wall time.
  Result<uint64_t> u0 = (*cg)->CpuUsageNs();
  ASSERT_TRUE(u0.ok()) << u0.status();
  auto t0 = steady_clock::now();
  std::this_thread::sleep_for(milliseconds(1000));
  Result<uint64_t> u1 = (*cg)->CpuUsageNs();
  auto wall_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(steady_clock::now() - t0).count();
  ASSERT_TRUE(u1.ok());
  double share = static_cast<double>(*u1 - *u0) / static_cast<double>(wall_ns);
  RecordProperty("cpu_share", std::to_string(share));
  EXPECT_LE(share, 0.35) << "a 0.25-core cgroup used " << share << " of a core";
  EXPECT_GE(share, 0.05) << "the spinner hardly ran: " << share;
  Result<uint64_t> mem = (*cg)->MemoryUsage();
  ASSERT_TRUE(mem.ok()) << mem.status();
  EXPECT_GT(*mem, 0u);

  // AddProcess moves a running process in.
  Result<ProcessRecord> sleeper = Spawn({{"/bin/sleep", "30"}}, ledger.get());
  ASSERT_TRUE(sleeper.ok()) << sleeper.status();
  ASSERT_TRUE((*cg)->AddProcess(sleeper->pid).ok());
  pids = (*cg)->Pids();
  ASSERT_TRUE(pids.ok());
  EXPECT_EQ(pids->size(), 2u);

  // Removal stops our tasks (in the ledger) and deletes the directories.
  Status removed = (*cg)->Remove(ledger.get(), seconds(2));
  ASSERT_TRUE(removed.ok()) << removed;
  EXPECT_FALSE(IsAlive(*spinner));
  EXPECT_FALSE(IsAlive(*sleeper));
  for (const std::string& d : dirs) EXPECT_FALSE(FileExists(d)) << d;
}

TEST_F(EmuRootTest, TeardownRemovesEverythingAndIsIdempotent) {
  const std::string c = Cluster("t");
  std::unique_ptr<Ledger> ledger = OpenLedger(c);
  ASSERT_NE(ledger, nullptr);
  Result<HostNetwork> net = CreateHostNetwork({c, {{"ha", 50'000'000}, {"hb", 0}}}, ledger.get());
  ASSERT_TRUE(net.ok()) << net.status();
  Result<std::unique_ptr<DeviceCgroup>> cg =
      DeviceCgroup::Create({c, "ha-cpu0", 0.5, 0}, ledger.get());
  ASSERT_TRUE(cg.ok()) << cg.status();
  Result<ProcessRecord> p =
      Spawn({{"/bin/sleep", "30"}, net->hosts[0].netns, (*cg)->dirs()}, ledger.get());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(FindClusterResources(c).size(), 2u /*netns*/ + 3u /*links*/ + 6u /*cgroups*/)
      << ::testing::PrintToString(FindClusterResources(c));

  Result<TeardownReport> r = Teardown(state_dir_, c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->clean()) << ::testing::PrintToString(r->remaining);
  EXPECT_FALSE(IsAlive(*p));
  EXPECT_TRUE(FindClusterResources(c).empty());
  Result<std::string> ns_list = RunTool({*FindTool("ip"), "netns", "list"});
  ASSERT_TRUE(ns_list.ok());
  EXPECT_FALSE(Contains(*ns_list, NetnsPrefix(c))) << *ns_list;
  Result<std::string> links = RunTool({*FindTool("ip"), "-o", "link", "show"});
  ASSERT_TRUE(links.ok());
  EXPECT_FALSE(Contains(*links, BridgeName(c) + ":")) << *links;
  EXPECT_FALSE(Contains(*links, "tv-" + c + "-")) << *links;
  for (const std::string& d : (*cg)->dirs()) EXPECT_FALSE(FileExists(d)) << d;
  EXPECT_FALSE(FileExists(ClusterCgroupDir(kDefaultCgroupRoot, "cpu", c)));
  EXPECT_FALSE(FileExists(ledger->path())) << "the ledger goes when everything is gone";
  std::set<std::string> removed(r->removed.begin(), r->removed.end());
  EXPECT_TRUE(removed.count("netns " + net->hosts[0].netns)) << ::testing::PrintToString(removed);
  EXPECT_TRUE(removed.count("link " + BridgeName(c))) << ::testing::PrintToString(removed);
  EXPECT_TRUE(removed.count(LedgerEntry::Process(*p).ToString()))
      << ::testing::PrintToString(removed);

  Result<TeardownReport> again = Teardown(state_dir_, c);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->clean());
  EXPECT_TRUE(again->removed.empty()) << ::testing::PrintToString(again->removed);
}

TEST_F(EmuRootTest, TeardownAfterACrashOfTernUp) {
  const std::string c = Cluster("k");
  // A child plays `tern up` and dies without cleaning anything up.
  std::string state_dir = state_dir_;
  pid_t up = ::fork();
  if (up == 0) {
    ::alarm(20);
    Result<std::unique_ptr<Ledger>> ledger = Ledger::Open(state_dir, c);
    if (!ledger.ok()) ::_exit(1);
    Result<HostNetwork> net =
        CreateHostNetwork({c, {{"ha", 10'000'000}, {"hb", 0}}}, ledger->get());
    if (!net.ok()) ::_exit(2);
    Result<std::unique_ptr<DeviceCgroup>> cg =
        DeviceCgroup::Create({c, "hb-csd0", 0.25, 32 << 20}, ledger->get());
    if (!cg.ok()) ::_exit(3);
    Result<ProcessRecord> p =
        Spawn({{"/bin/sleep", "30"}, net->hosts[1].netns, (*cg)->dirs()}, ledger->get());
    ::_exit(p.ok() ? 0 : 4);  // the crash: no destructors, no teardown
  }
  ASSERT_EQ(WaitChild(up, seconds(20)), 0);
  Result<std::vector<LedgerEntry>> entries = Ledger::Load(state_dir_, c);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ProcessRecord orphan;
  for (const LedgerEntry& e : *entries) {
    if (e.kind == ResourceKind::kProcess) orphan = e.process;
  }
  ASSERT_TRUE(IsAlive(orphan)) << "the agent outlives the crashed `tern up`";
  ASSERT_FALSE(FindClusterResources(c).empty());

  Result<TeardownReport> r = Teardown(state_dir_, c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->clean()) << ::testing::PrintToString(r->remaining);
  EXPECT_FALSE(IsAlive(orphan));
  EXPECT_TRUE(FindClusterResources(c).empty()) << ::testing::PrintToString(FindClusterResources(c));
}

TEST_F(EmuRootTest, TeardownWithADroppedLostOrTornLedger) {
  for (const char* mode : {"dropped", "deleted", "torn"}) {
    SCOPED_TRACE(mode);
    const std::string c = Cluster(std::string("l") + mode[2]);  // lo, ll, lr
    {
      std::unique_ptr<Ledger> ledger = OpenLedger(c);
      ASSERT_NE(ledger, nullptr);
      Result<HostNetwork> net =
          CreateHostNetwork({c, {{"h0", 20'000'000}, {"h1", 0}}}, ledger.get());
      ASSERT_TRUE(net.ok()) << net.status();
      ASSERT_TRUE(DeviceCgroup::Create({c, "h0-cpu0", 1, 0}, ledger.get()).ok());
      // The ledger object goes away without any cleanup.
    }
    const std::string path = LedgerPath(state_dir_, c);
    if (std::string(mode) == "deleted") {
      ASSERT_EQ(::unlink(path.c_str()), 0);
    }
    if (std::string(mode) == "torn") {
      ASSERT_TRUE(WriteFileAtomic(path, "{\"version\": 1, \"ent").ok());
    }
    ASSERT_EQ(FindClusterResources(c).size(), 2u + 3u + 6u)
        << ::testing::PrintToString(FindClusterResources(c));
    Result<TeardownReport> r = Teardown(state_dir_, c);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->clean()) << ::testing::PrintToString(r->remaining);
    EXPECT_TRUE(FindClusterResources(c).empty())
        << ::testing::PrintToString(FindClusterResources(c));
    EXPECT_FALSE(FileExists(path));
    if (std::string(mode) != "dropped") {
      ASSERT_FALSE(r->notes.empty());
      EXPECT_TRUE(Contains(r->notes[0], "swept by name")) << r->notes[0];
    }
  }
}

TEST_F(EmuRootTest, AProcessWithAWrongStartTimeIsNotKilled) {
  const std::string c = Cluster("w");
  std::unique_ptr<Ledger> ledger = OpenLedger(c);
  ASSERT_NE(ledger, nullptr);
  Result<std::unique_ptr<DeviceCgroup>> cg = DeviceCgroup::Create({c, "dev0", 0, 0}, ledger.get());
  ASSERT_TRUE(cg.ok()) << cg.status();
  // Not spawned through the ledger; the ledger has its pid with another start time, as if
  // the pid had been reused after our process died.
  Result<ProcessRecord> p = Spawn({{"/bin/sleep", "30"}, "", (*cg)->dirs()}, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  strays_.push_back(*p);
  ProcessRecord reused = *p;
  reused.start_time -= 1;
  ASSERT_TRUE(ledger->Record(LedgerEntry::Process(reused)).ok());

  Result<TeardownReport> r = Teardown(state_dir_, c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(IsAlive(*p)) << "a process that is not ours was killed";
  ASSERT_FALSE(r->clean());
  EXPECT_TRUE(Contains(::testing::PrintToString(r->remaining), std::to_string(p->pid)))
      << ::testing::PrintToString(r->remaining);
  EXPECT_TRUE(FileExists((*cg)->dirs()[0])) << "its cgroup is left in place";
  // The ledger keeps what remains, so a later teardown can finish the job.
  Result<std::vector<LedgerEntry>> kept = Ledger::Load(state_dir_, c);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_FALSE(kept->empty());

  ASSERT_EQ(*Terminate(*p, seconds(2)), TerminateOutcome::kStopped);
  r = Teardown(state_dir_, c);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->clean()) << ::testing::PrintToString(r->remaining);
}

TEST_F(EmuRootTest, AnotherClustersResourcesSurvive) {
  const std::string mine = Cluster("p");
  const std::string other = mine + "q";  // "tern-<mine>-" is not a prefix of its names
  clusters_.push_back(other);
  for (const std::string& c : {mine, other}) {
    std::unique_ptr<Ledger> ledger = OpenLedger(c);
    ASSERT_NE(ledger, nullptr);
    Result<HostNetwork> net = CreateHostNetwork({c, {{"h0", 0}}}, ledger.get());
    ASSERT_TRUE(net.ok()) << net.status();
    ASSERT_TRUE(DeviceCgroup::Create({c, "h0-cpu0", 0, 0}, ledger.get()).ok());
  }
  std::vector<std::string> before = FindClusterResources(other);
  ASSERT_EQ(before.size(), 1u + 2u + 6u) << ::testing::PrintToString(before);
  // Lose my ledger, so only the sweep by name can find my resources.
  ASSERT_EQ(::unlink(LedgerPath(state_dir_, mine).c_str()), 0);
  Result<TeardownReport> r = Teardown(state_dir_, mine);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->clean()) << ::testing::PrintToString(r->remaining);
  EXPECT_TRUE(FindClusterResources(mine).empty());
  EXPECT_EQ(FindClusterResources(other), before);
  EXPECT_TRUE(Ledger::Load(state_dir_, other).ok());
}

}  // namespace
}  // namespace tern::emu
