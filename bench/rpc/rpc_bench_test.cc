// rpc_bench's netns rows: the emulated network they run across (NetnsSite: a socket
// made in RunInClient really is the client host's, teardown removes everything, a second
// run is refused, a crashed run's leftovers are cleared) and their report (netns −
// loopback per row; the goals ignore netns rows; "skipped: needs root").
// The NetnsSite tests need root and iproute2 and skip without them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>

#include "emu/netns.h"
#include "emu/teardown.h"
#include "netns_site.h"
#include "rpc_report.h"
#include "testing/test_env.h"

namespace tern::bench::rpc {
namespace {

using nlohmann::json;

// ------------------------------------------------------------------------ report

json Row(const std::string& target, const std::string& group, const std::string& network,
         double p50, double p99, bool ok = true) {
  json r = {{"target", target},    {"group", group},     {"payload", 64},
            {"pinning", "pinned"}, {"network", network}, {"ok", ok}};
  if (ok)
    r["latency"] = {{"count", 1000}, {"min", p50}, {"p50", p50},
                    {"p99", p99},    {"max", p99}, {"mean", p50}};
  r["throughput"] = json::array();
  return r;
}

json Doc() {
  json doc = {{"machine", json::object()}, {"placements", {"pinned"}},
              {"payloads", {64}},          {"networks", {"loopback", "netns"}},
              {"notes", json::array()},    {"targets", json::array()},
              {"results", json::array()}};
  for (const char* t : {"limit_tcp", "tern_tcp", "grpc_unary_sync"}) {
    doc["targets"].push_back(
        {{"name", t}, {"group", "x"}, {"description", "d"}, {"in_flight", {1}}, {"netns", true}});
  }
  return doc;
}

TEST(RpcReportTest, OverheadIsNetnsMinusLoopbackOfTheSameRow) {
  json doc = Doc();
  doc["results"].push_back(Row("limit_tcp", "limit", "loopback", 10'000, 20'000));
  doc["results"].push_back(Row("limit_tcp", "limit", "netns", 14'500, 31'000));
  doc["results"].push_back(Row("tern_tcp", "tern", "netns", 30'000, 40'000));  // no loopback
  doc["results"].push_back(Row("grpc_unary_sync", "peer", "loopback", 50'000, 60'000));
  doc["results"].push_back(Row("grpc_unary_sync", "peer", "netns", 0, 0, /*ok=*/false));
  doc["netns"] = {{"status", "ok"},
                  {"cluster", "rpcb"},
                  {"bridge", {{"name", "tb-rpcb"}, {"address", "10.1.2.1"}}},
                  {"server", {{"netns", "tern-rpcb-srv"}, {"address", "10.1.2.2"}}},
                  {"client", {{"netns", "tern-rpcb-cli"}, {"address", "10.1.2.3"}}},
                  {"teardown", {{"clean", true}, {"removed", 5}, {"remaining", json::array()}}}};
  AddNetnsOverhead(doc);
  ASSERT_EQ(doc["netns_overhead"].size(), 1u) << doc["netns_overhead"].dump();
  const json& o = doc["netns_overhead"][0];
  EXPECT_EQ(o["target"], "limit_tcp");
  EXPECT_DOUBLE_EQ(o["overhead_p50"].get<double>(), 4'500);
  EXPECT_DOUBLE_EQ(o["overhead_p99"].get<double>(), 11'000);

  AddGoalSummary(doc);
  std::string md = RenderMarkdown(doc);
  EXPECT_NE(md.find("## TCP across two network namespaces"), std::string::npos);
  EXPECT_NE(md.find("`tern-rpcb-srv` (10.1.2.2)"), std::string::npos);
  EXPECT_NE(md.find("| limit_tcp | pinned | 64 B | 10.0 µs | 14.5 µs | **+4.50 µs** |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("raw TCP (limit_tcp) +4.50 µs 64 B pinned"), std::string::npos) << md;
  EXPECT_NE(md.find("| limit_tcp · **netns** |"), std::string::npos);
  EXPECT_NE(md.find("5 resources removed"), std::string::npos);
}

TEST(RpcReportTest, GoalsUseTheLoopbackRowsOnly) {
  json doc = Doc();
  doc["results"].push_back(Row("limit_tcp", "limit", "loopback", 10'000, 20'000));
  doc["results"].push_back(Row("tern_tcp", "tern", "netns", 12'000, 20'000));
  doc["netns"] = {{"status", "off"}, {"reason", "test"}};
  AddGoalSummary(doc);
  bool found = false;
  for (const json& s : doc["summary"]) {
    if (s["goal"] != "tern_tcp p50 vs raw TCP (limit_tcp)") continue;
    found = true;
    EXPECT_EQ(s["tern"], "not measured") << s.dump();  // the netns row is no loopback row
  }
  EXPECT_TRUE(found);
}

TEST(RpcReportTest, SkippedSectionSaysWhy) {
  json doc = Doc();
  doc["netns"] = {{"status", "skipped"},
                  {"reason", "needs root: permission denied: not running as root"}};
  AddGoalSummary(doc);
  AddNetnsOverhead(doc);
  EXPECT_TRUE(doc["netns_overhead"].empty());
  std::string md = RenderMarkdown(doc);
  EXPECT_NE(md.find("**skipped: needs root: permission denied"), std::string::npos) << md;
}

// ------------------------------------------------------------------- NetnsSite

class NetnsSiteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, veth pairs)";
    Status st = emu::CheckNetworkSupport();
    if (!st.ok()) GTEST_SKIP() << "emulated network unavailable: " << st;
    options_.state_dir = tern::testing::TempDir("rpc-netns");
    // One cluster per test: ctest may run the tests at the same time.
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    options_.cluster = name.rfind("ClientSockets", 0) == 0 ? "rpcta"
                       : name.rfind("ASecond", 0) == 0     ? "rpctb"
                                                           : "rpctc";
  }
  void TearDown() override {
    if (!options_.state_dir.empty()) (void)emu::Teardown(options_.state_dir, options_.cluster);
  }
  NetnsSiteOptions options_;
};

// A listening socket made in `netns` on `address`, port 0; returns the fd and the port.
int ListenIn(const std::string& netns, const std::string& address, uint16_t* port) {
  int fd = -1;
  Status st = RunInNetns(netns, [&]() -> Status {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
    socklen_t len = sizeof(a);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        ::listen(fd, 4) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return ErrnoError("listen", errno);
    }
    *port = ntohs(a.sin_port);
    return Status::Ok();
  });
  EXPECT_TRUE(st.ok()) << st;
  return fd;
}

// Connects a socket to address:port; returns the socket's own address ("" on failure).
std::string ConnectFrom(int* fd, const std::string& address, uint16_t port) {
  *fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  if (*fd < 0 || ::connect(*fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return "";
  socklen_t len = sizeof(a);
  ::getsockname(*fd, reinterpret_cast<sockaddr*>(&a), &len);
  char text[INET_ADDRSTRLEN] = "";
  ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof(text));
  return text;
}

std::string ThreadNetns() {
  char buf[128] = "";
  ssize_t n = ::readlink("/proc/thread-self/ns/net", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

TEST_F(NetnsSiteTest, ClientSocketsCrossTheBridgeAndTeardownRemovesEverything) {
  const std::string root_ns = ThreadNetns();
  Result<std::unique_ptr<NetnsSite>> site = NetnsSite::Create(options_);
  ASSERT_TRUE(site.ok()) << site.status();
  NetnsSite& s = **site;
  EXPECT_EQ(s.server_netns(), "tern-rpcta-srv");
  EXPECT_EQ(s.client_netns(), "tern-rpcta-cli");
  EXPECT_FALSE(emu::FindClusterResources(options_.cluster).empty());

  uint16_t port = 0;
  const int ls = ListenIn(s.server_netns(), s.server_address(), &port);
  ASSERT_GE(ls, 0);
  EXPECT_EQ(ThreadNetns(), root_ns);  // back where it was

  // From the client host: its own address, and the bytes go through.
  int c = -1;
  std::string local;
  ASSERT_TRUE(s.RunInClient([&]() -> Status {
                 local = ConnectFrom(&c, s.server_address(), port);
                 return local.empty() ? UnavailableError("connect") : Status::Ok();
               }).ok());
  EXPECT_EQ(ThreadNetns(), root_ns);
  EXPECT_EQ(local, s.client_address());
  pollfd p{ls, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  int a = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(a, 0);
  ASSERT_EQ(::write(c, "ping", 4), 4);
  char buf[4] = {};
  ASSERT_EQ(::read(a, buf, 4), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");

  // The same connect from the root namespace is a different path: the bridge's address.
  int r = -1;
  EXPECT_EQ(ConnectFrom(&r, s.server_address(), port), s.network().bridge_address);

  // An error inside RunInClient is passed on, and the thread still comes back.
  Status failed = s.RunInClient([] { return InternalError("inside"); });
  EXPECT_EQ(failed.code(), StatusCode::kInternal);
  EXPECT_EQ(ThreadNetns(), root_ns);
  for (int fd : {ls, c, a, r}) {
    if (fd >= 0) ::close(fd);
  }

  emu::TeardownReport down = s.Teardown();
  EXPECT_TRUE(down.clean());
  EXPECT_FALSE(down.removed.empty());
  EXPECT_TRUE(emu::FindClusterResources(options_.cluster).empty());
  // Idempotent: the same report, nothing touched.
  EXPECT_EQ(s.Teardown().removed, down.removed);
}

TEST_F(NetnsSiteTest, ASecondRunOnTheSameStateDirIsRefusedUntilTheFirstEnds) {
  Result<std::unique_ptr<NetnsSite>> first = NetnsSite::Create(options_);
  ASSERT_TRUE(first.ok()) << first.status();
  Result<std::unique_ptr<NetnsSite>> second = NetnsSite::Create(options_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable) << second.status();
  EXPECT_NE(second.status().message().find("/lock"), std::string::npos) << second.status();
  // The refused run touched nothing of the first one's.
  EXPECT_FALSE(emu::FindClusterResources(options_.cluster).empty());
  first->reset();
  EXPECT_TRUE(emu::FindClusterResources(options_.cluster).empty());
  Result<std::unique_ptr<NetnsSite>> third = NetnsSite::Create(options_);
  EXPECT_TRUE(third.ok()) << third.status();
}

TEST_F(NetnsSiteTest, CreateClearsWhatACrashedRunLeft) {
  // A run that crashed after building its network: the namespaces and the ledger stay.
  {
    Result<std::unique_ptr<emu::Ledger>> ledger =
        emu::Ledger::Open(options_.state_dir, options_.cluster);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    emu::NetworkPlan plan{options_.cluster, {{.name = "srv"}, {.name = "cli"}}};
    ASSERT_TRUE(emu::CreateHostNetwork(plan, ledger->get()).ok());
  }
  ASSERT_FALSE(emu::FindClusterResources(options_.cluster).empty());
  Result<std::unique_ptr<NetnsSite>> site = NetnsSite::Create(options_);
  ASSERT_TRUE(site.ok()) << site.status();
  EXPECT_TRUE((*site)->Teardown().clean());
  EXPECT_TRUE(emu::FindClusterResources(options_.cluster).empty());
}

}  // namespace
}  // namespace tern::bench::rpc
