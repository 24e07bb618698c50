// Resource partitioning: the cpu cgroup path parser, the guests' quota, and the child
// cgroup written in a temporary directory laid out like /sys/fs/cgroup; as root, a real
// cgroup v1 child that holds a spinning thread to its quota.
#include "agent/partition.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/clock.h"
#include "testing/test_env.h"

namespace tern::agent {
namespace {

using tern::testing::TempDir;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(PartitionTest, FindsTheCpuControllersPath) {
  EXPECT_EQ(*CpuCgroupPath("12:pids:/x\n4:cpu,cpuacct:/tern/ndp/csd0\n3:memory:/y\n"),
            "/tern/ndp/csd0");
  EXPECT_EQ(*CpuCgroupPath("5:cpuacct:/a\n6:cpu:/b\n"), "/b");  // not fooled by cpuacct
  EXPECT_EQ(*CpuCgroupPath("2:cpuset,cpu:/\n"), "/");
  EXPECT_EQ(CpuCgroupPath("0::/user.slice\n").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(CpuCgroupPath("garbage").status().code(), StatusCode::kNotFound);
}

TEST(PartitionTest, GuestsGetWhatIsNotReserved) {
  EXPECT_EQ(GuestQuotaUs(0.25, 0.25), 18750);
  EXPECT_EQ(GuestQuotaUs(1, 0.5), 50000);
  EXPECT_EQ(GuestQuotaUs(4, 0.1), 360000);
  EXPECT_EQ(GuestQuotaUs(0.001, 0.5), 1000);  // the kernel's minimum
}

TEST(PartitionTest, WritesTheChildCgroupAndMovesTheGuestThreads) {
  std::string root = TempDir("cgroot");
  std::string dev = root + "/cpu/tern/ndp/csd0";
  ASSERT_EQ(std::system(("mkdir -p " + dev).c_str()), 0);
  std::string proc = root + "/self-cgroup";
  std::ofstream(proc) << "7:memory:/tern/ndp/csd0\n4:cpu,cpuacct:/tern/ndp/csd0\n";
  PartitionSpec s;
  s.cores = 0.25;
  s.reserved = 0.25;
  s.guest_tids = {1234, 5678};
  s.cgroup_root = root;
  s.proc_self_cgroup = proc;
  Result<Partition> p = PartitionGuests(s);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->mode, "cgroup");
  EXPECT_EQ(p->dir, dev + "/guests");
  EXPECT_EQ(p->quota_us, 18750);
  EXPECT_DOUBLE_EQ(p->guest_cores, 0.1875);
  EXPECT_EQ(Slurp(dev + "/guests/cpu.cfs_quota_us"), "18750");
  EXPECT_EQ(Slurp(dev + "/guests/cpu.cfs_period_us"), "100000");
  EXPECT_EQ(Slurp(dev + "/guests/tasks"), "1234\n5678\n");
  // Again (an agent restarted in the same cgroup): the directory is reused.
  EXPECT_TRUE(PartitionGuests(s).ok());
}

TEST(PartitionTest, OffWithoutAReservedShare) {
  std::string root = TempDir("cgnone");
  PartitionSpec s;
  s.cores = 1;
  s.reserved = 0;
  s.cgroup_root = root;
  Result<Partition> p = PartitionGuests(s);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->mode.rfind("none: no share", 0), 0u) << p->mode;
  s.reserved = 1.5;
  EXPECT_EQ(PartitionGuests(s).status().code(), StatusCode::kInvalidArgument);
}

// Without cgroup v1 the guest threads yield to the device's main task by nice value.
TEST(PartitionTest, WithoutCgroupsGuestThreadsAreLoweredInPriority) {
  errno = 0;
  const int before = ::getpriority(PRIO_PROCESS, 0);  // the test may run under `nice`
  std::atomic<pid_t> tid{0};
  std::atomic<bool> stop{false};
  std::thread guest([&] {
    tid.store(static_cast<pid_t>(::gettid()));
    while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (tid.load() == 0) std::this_thread::yield();
  PartitionSpec s;
  s.cores = 1;
  s.reserved = 0.5;
  s.guest_tids = {tid.load()};
  s.cgroup_root = TempDir("cgnocpu");  // no <root>/cpu
  Result<Partition> p = PartitionGuests(s);
  errno = 0;
  int nice_guest = ::getpriority(PRIO_PROCESS, static_cast<id_t>(tid.load()));
  int nice_self = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
  stop.store(true);
  guest.join();
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->mode.rfind("nice: ", 0), 0u) << p->mode;
  EXPECT_NE(p->mode.find("no cgroup v1 cpu controller"), std::string::npos) << p->mode;
  EXPECT_EQ(nice_guest, std::max(kGuestNice, before));
  EXPECT_EQ(nice_self, before);  // only the guest threads
  EXPECT_EQ(p->guest_cores, 0);
}

// As root with cgroup v1: a thread moved into the guests' cgroup gets no more than its
// quota (0.1 core here) however hard it spins.
TEST(PartitionTest, RealCgroupHoldsAThreadToItsQuota) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to write cgroup v1";
  struct stat st;
  if (::stat("/sys/fs/cgroup/cpu/cgroup.procs", &st) != 0) {
    GTEST_SKIP() << "no cgroup v1 cpu controller at /sys/fs/cgroup/cpu";
  }
  const std::string parent_rel = "/tern-partition-test-" + std::to_string(::getpid());
  const std::string parent = "/sys/fs/cgroup/cpu" + parent_rel;
  ASSERT_EQ(::mkdir(parent.c_str(), 0755), 0);
  std::string proc = TempDir("cgreal") + "/self-cgroup";
  std::ofstream(proc) << "4:cpu,cpuacct:" << parent_rel << "\n";

  std::atomic<pid_t> tid{0};
  std::atomic<bool> go{false}, stop{false};
  std::atomic<int64_t> cpu_ns{0}, wall_ns{0};
  std::thread spinner([&] {
    tid.store(static_cast<pid_t>(::gettid()));
    while (!go.load()) std::this_thread::yield();
    int64_t c0 = ThreadCpuNanos(), w0 = MonoNanos();
    while (MonoNanos() - w0 < 600'000'000) {
    }
    cpu_ns.store(ThreadCpuNanos() - c0);
    wall_ns.store(MonoNanos() - w0);
    while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (tid.load() == 0) std::this_thread::yield();
  PartitionSpec s;
  s.cores = 0.2;
  s.reserved = 0.5;
  s.guest_tids = {tid.load()};
  s.proc_self_cgroup = proc;
  Result<Partition> p = PartitionGuests(s);
  go.store(true);
  while (wall_ns.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // Back to the root cgroup before cleaning up.
  std::ofstream("/sys/fs/cgroup/cpu/tasks") << tid.load() << "\n";
  stop.store(true);
  spinner.join();
  ::rmdir((parent + "/guests").c_str());
  ::rmdir(parent.c_str());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->mode, "cgroup");
  EXPECT_EQ(p->quota_us, 10000);
  // 0.1 core over 0.6 s is 60 ms; allow the first period's slack.
  EXPECT_LT(cpu_ns.load(), wall_ns.load() / 5)
      << "spun " << cpu_ns.load() / 1000000 << " ms of CPU in " << wall_ns.load() / 1000000
      << " ms";
}

}  // namespace
}  // namespace tern::agent
