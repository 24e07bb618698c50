// `tern up` / `tern down` with the real binaries: a 3-host topology in network
// namespaces (as root) and on loopback; deploy and invoke through the CLI and the
// gateway's HTTP API; an agent killed and its stateless replicas served elsewhere; bad
// topology files; nothing left behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/clock.h"
#include "core/ids.h"
#include "testing/process.h"
#include "testing/test_env.h"
#include "transport/http.h"
#include "transport/json_api.h"

namespace tern {
namespace {

using nlohmann::json;
using testing::BinPath;
using testing::CommandResult;
using testing::RunCommand;
using testing::SourcePath;
using testing::TempDir;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Root() { return ::geteuid() == 0; }

// One cluster under a private $TERN_HOME, torn down by the destructor whatever happens.
class Cluster {
 public:
  Cluster(std::string name, std::string isolation) : name_(std::move(name)), iso_(isolation) {
    home_ = TempDir("home-" + name_);
    ::setenv("TERN_HOME", home_.c_str(), 1);
  }
  ~Cluster() { Tern({"down", name_}); }

  CommandResult Tern(std::vector<std::string> args) {
    args.insert(args.begin(), BinPath("tern"));
    return RunCommand(args);
  }
  CommandResult Up(const std::string& topology) {
    return Tern({"up", topology, "--name", name_, "--isolation", iso_});
  }
  json Record() {
    return json::parse(Slurp(home_ + "/clusters/" + name_ + "/cluster.json"), nullptr, false);
  }
  const std::string& home() const { return home_; }

 private:
  std::string name_, iso_, home_;
};

// POST /v1/invoke/{service}/{handler} on the gateway.
Result<transport::HttpClientResponse> Invoke(const std::string& gateway, const std::string& svc,
                                             const std::string& handler, const std::string& body) {
  std::string host;
  uint16_t port = 0;
  TERN_RETURN_IF_ERROR(ParseHostPort(gateway, &host, &port));
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::HttpClient> c,
                        transport::HttpClient::Connect(host, port, std::chrono::seconds(2)));
  return c->Request("POST", "/v1/invoke/" + svc + "/" + handler, body, "application/octet-stream",
                    std::chrono::seconds(10));
}

// Shell commands (RunCommand does not search PATH).
CommandResult Sh(const std::string& cmd) { return RunCommand({"/bin/sh", "-c", cmd}); }
std::string NetnsList() { return Sh("ip netns list").output; }

void UpDeployInvokeKillDown(const std::string& name, const std::string& isolation) {
  {
    Cluster c(name, isolation);
    CommandResult up = c.Up(SourcePath("examples/topologies/rack.yaml"));
    ASSERT_EQ(up.exit_code, 0) << up.output;
    EXPECT_NE(up.output.find("cluster " + name + " is up (" + isolation + ")"), std::string::npos)
        << up.output;
    json rec = c.Record();
    ASSERT_FALSE(rec.is_discarded());
    ASSERT_EQ(rec["agents"].size(), 5u);  // 3 hosts: c1, c2, s1 (with two CSDs)
    if (isolation == "netns") {
      for (const char* h : {"c1", "c2", "s1"}) {
        EXPECT_NE(NetnsList().find("tern-" + name + "-" + h), std::string::npos) << h;
      }
      // csd0 runs at half a core.
      EXPECT_EQ(Slurp("/sys/fs/cgroup/cpu/tern/" + name + "/csd0/cpu.cfs_quota_us"), "50000\n");
    }
    // A second `tern up` of the same cluster is refused.
    CommandResult again = c.Up(SourcePath("examples/topologies/rack.yaml"));
    EXPECT_EQ(again.exit_code, 1);
    EXPECT_NE(again.output.find("already up"), std::string::npos) << again.output;

    CommandResult dep = c.Tern({"deploy", SourcePath("examples/echo/manifest.yaml"), "--module",
                                testing::WasmPath("echo"), "--replicas", "2", "--devices",
                                "c1-cpu,c2-cpu"});
    ASSERT_EQ(dep.exit_code, 0) << dep.output;
    EXPECT_NE(dep.output.find("2 of 2 replicas"), std::string::npos) << dep.output;
    CommandResult inv = c.Tern({"invoke", "echo", "echo", "through the gateway"});
    ASSERT_EQ(inv.exit_code, 0) << inv.output;
    EXPECT_EQ(inv.output, "through the gateway");

    std::string gw = rec["gateway"];
    std::set<std::string> served;
    for (int i = 0; i < 40; ++i) {
      Result<transport::HttpClientResponse> r = Invoke(gw, "echo", "echo", "x" + std::to_string(i));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->status, 200) << r->body;
      EXPECT_EQ(r->body, "x" + std::to_string(i));
      if (const std::string* who = r->FindHeader("x-tern-instance")) served.insert(*who);
    }
    EXPECT_EQ(served.size(), 2u) << "both replicas serve";
    Result<transport::HttpClientResponse> missing = Invoke(gw, "nope", "echo", "");
    ASSERT_TRUE(missing.ok());
    EXPECT_EQ(missing->status, 404) << missing->body;

    // Kill the agent of c2-cpu: the controller sees it go and places the replica on
    // c1-cpu (the only other allowed device); the gateway follows.
    int pid = rec["agents"]["c2-cpu"]["pid"];
    ASSERT_GT(pid, 0);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int64_t killed = MonoNanos();
    bool moved = false;
    while (MonoNanos() - killed < int64_t{15} * 1000000000) {
      CommandResult ps = c.Tern({"ps", "--json"});
      json j = json::parse(ps.output, nullptr, false);
      if (!j.is_discarded() && j.contains("services")) {
        int on_cpu0 = 0, total = 0;
        for (const json& s : j["services"]) {
          for (const json& i : s["instances"]) {
            ++total;
            on_cpu0 += i["device"] == "c1-cpu" && i["state"] == "running";
          }
        }
        if (total == 2 && on_cpu0 == 2) {
          moved = true;
          break;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ASSERT_TRUE(moved) << c.Tern({"ps"}).output;
    std::printf("agent killed: replica running elsewhere after %.2f s\n",
                static_cast<double>(MonoNanos() - killed) / 1e9);
    // The gateway serves every request again (it may need a moment to get the new table).
    bool ok = false;
    for (int i = 0; i < 50 && !ok; ++i) {
      Result<transport::HttpClientResponse> r = Invoke(gw, "echo", "echo", "after");
      ok = r.ok() && r->status == 200 && r->body == "after";
      if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(ok);
    for (int i = 0; i < 20; ++i) {
      Result<transport::HttpClientResponse> r = Invoke(gw, "echo", "echo", "y");
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(r->status, 200) << r->body;
    }
    CommandResult ps = c.Tern({"ps"});
    EXPECT_NE(ps.output.find("agent c2-cpu is gone"), std::string::npos) << ps.output;
    CommandResult logs = c.Tern({"logs", "controller", "--lines", "200"});
    EXPECT_EQ(logs.exit_code, 0);
    EXPECT_NE(logs.output.find("placed echo-"), std::string::npos) << logs.output;

    CommandResult down = c.Tern({"down", name});
    ASSERT_EQ(down.exit_code, 0) << down.output;
    EXPECT_NE(down.output.find("is down"), std::string::npos) << down.output;
  }
  EXPECT_EQ(NetnsList().find("tern-" + name + "-"), std::string::npos);
  EXPECT_NE(::access(("/sys/fs/cgroup/cpu/tern/" + name).c_str(), F_OK), 0);
  CommandResult links = Sh("ip link");
  EXPECT_EQ(links.output.find("tb-" + name), std::string::npos);
}

TEST(ClusterTest, LoopbackUpDeployInvokeAgentDeathDown) {
  UpDeployInvokeKillDown("itlo", "loopback");
}

TEST(ClusterTest, NamespacesUpDeployInvokeAgentDeathDown) {
  if (!Root()) GTEST_SKIP() << "needs root (network namespaces, veth, tc, cgroups)";
  if (Sh("ip -V").exit_code != 0) GTEST_SKIP() << "iproute2 (`ip`) is missing";
  UpDeployInvokeKillDown("itns", "netns");
}

TEST(ClusterTest, BadTopologiesAreClearErrorsAndNothingIsStarted) {
  std::string dir = TempDir("badtopo");
  Cluster c("itbad", "loopback");
  struct Case {
    std::string yaml;
    std::string expect;
  } cases[] = {
      {"name: x\nhosts:\n  - name: h1\n    devices:\n      - name: d0\n        kind: quantum\n",
       ":6:"},
      {"name: x\nhosts:\n  - name: h1\n    devices:\n      - name: d0\n        kind: cpu\n"
       "        cores: -1\n",
       "cores"},
      {"name: x\nhosts: []\n", "hosts"},
      {"name: x\nhosts:\n  - name: h1\n    devices: [{name: a, kind: cpu}]\n  - name: h2\n"
       "    devices: [{name: b, kind: cpu}]\n",
       "link"},
      {"name: [unclosed\n", "t.yaml"},
  };
  for (const Case& k : cases) {
    std::string path = dir + "/t.yaml";
    std::ofstream(path) << k.yaml;
    CommandResult check = c.Tern({"topology", "check", path});
    EXPECT_EQ(check.exit_code, 1) << k.yaml;
    EXPECT_NE(check.output.find(k.expect), std::string::npos) << check.output;
    CommandResult up = c.Tern({"up", path, "--name", "itbad", "--isolation", "loopback"});
    EXPECT_EQ(up.exit_code, 1) << up.output;
    EXPECT_NE(up.output.find(k.expect), std::string::npos) << up.output;
  }
  EXPECT_NE(::access((c.home() + "/clusters/itbad/cluster.json").c_str(), F_OK), 0);
  CommandResult good = c.Tern({"topology", "check", SourcePath("examples/topologies/rack.yaml")});
  EXPECT_EQ(good.exit_code, 0) << good.output;
  CommandResult down = c.Tern({"down", "itbad"});
  EXPECT_NE(down.output.find("nothing to remove"), std::string::npos) << down.output;
}

// Waits (15 s at most) until instance `id` runs on a device other than `device` (its
// agent was killed); returns that device, or "" if it did not happen.
std::string WaitRunningElsewhere(Cluster& c, const std::string& id, const std::string& device) {
  const int64_t deadline = MonoNanos() + int64_t{15} * 1000000000;
  while (MonoNanos() < deadline) {
    json j = json::parse(c.Tern({"ps", "--json"}).output, nullptr, false);
    if (!j.is_discarded()) {
      for (const json& s : j["services"]) {
        for (const json& i : s["instances"]) {
          if (i["id"] == id && i["device"] != device && i["state"] == "running") return i["device"];
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return "";
}

// The counter's value through the gateway, once it answers (5 s at most).
Result<std::string> CounterThroughGateway(const std::string& gw) {
  Result<transport::HttpClientResponse> r = UnavailableError("no answer");
  for (int i = 0; i < 50; ++i) {
    r = Invoke(gw, "counter", "get", "");
    if (r.ok() && r->status == 200) return r->body;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return r.ok() ? UnavailableError("the gateway answers " + std::to_string(r->status) + ": " + r->body)
                : r.status();
}

// Issue #6 through the CLI on a loopback cluster: `tern drain` replaces a stateless
// replica while the gateway keeps answering, `tern ps` shows the drain and each
// instance's checkpoint, and a checkpointed counter whose agent is SIGKILLed comes back
// elsewhere, under its id, with its checkpointed count.
void DrainMigrateAndRestoreThroughTheCli(const std::string& name, const std::string& isolation) {
  Cluster c(name, isolation);
  CommandResult up = c.Up(SourcePath("examples/topologies/rack.yaml"));
  ASSERT_EQ(up.exit_code, 0) << up.output;
  json rec = c.Record();
  std::string gw = rec["gateway"];
  CommandResult dep =
      c.Tern({"deploy", SourcePath("examples/echo/manifest.yaml"), "--module",
              testing::WasmPath("echo"), "--replicas", "2", "--devices", "c1-cpu,c2-cpu"});
  ASSERT_EQ(dep.exit_code, 0) << dep.output;

  // The gateway has the table (it long-polls the controller).
  bool serving = false;
  for (int i = 0; i < 100 && !serving; ++i) {
    Result<transport::HttpClientResponse> r = Invoke(gw, "echo", "echo", "x");
    serving = r.ok() && r->status == 200;
    if (!serving) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(serving);
  // Calls through the gateway all along the drain.
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0}, failures{0};
  std::string last_failure;
  std::thread caller([&] {
    while (!stop.load()) {
      Result<transport::HttpClientResponse> r = Invoke(gw, "echo", "echo", "x");
      ++calls;
      if (!r.ok() || r->status != 200) {
        ++failures;
        last_failure = r.ok() ? r->body : std::string(r.status().message());
      }
    }
  });
  CommandResult drain = c.Tern({"drain", "c1-cpu"});
  stop = true;
  caller.join();
  ASSERT_EQ(drain.exit_code, 0) << drain.output;
  EXPECT_NE(drain.output.find("replaced by echo-"), std::string::npos) << drain.output;
  EXPECT_NE(drain.output.find("drained c1-cpu: 1 of 1 instance(s) moved"), std::string::npos)
      << drain.output;
  EXPECT_GT(calls.load(), 0);
  EXPECT_EQ(failures.load(), 0) << "of " << calls.load() << "; last: " << last_failure;
  CommandResult ps = c.Tern({"ps"});
  EXPECT_NE(ps.output.find("c1-cpu (drain)"), std::string::npos) << ps.output;
  CommandResult undrain = c.Tern({"undrain", "c1-cpu"});
  EXPECT_EQ(undrain.exit_code, 0) << undrain.output;
  CommandResult bad = c.Tern({"drain", "nope"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("device nope has no live agent"), std::string::npos) << bad.output;
  CommandResult badm = c.Tern({"migrate", "echo-1", "--to", "gpu9"});
  EXPECT_EQ(badm.exit_code, 1);

  // A checkpointed counter.
  dep = c.Tern({"deploy", SourcePath("examples/counter/manifest.yaml"), "--module",
                testing::WasmPath("counter"), "--replicas", "1", "--devices", "c1-cpu,c2-cpu",
                "--checkpoint-ms", "300"});
  ASSERT_EQ(dep.exit_code, 0) << dep.output;
  for (int i = 1; i <= 3; ++i) {
    CommandResult inv = c.Tern({"invoke", "counter", "incr"});
    ASSERT_EQ(inv.exit_code, 0) << inv.output;
    EXPECT_EQ(inv.output, std::to_string(i));
  }
  int64_t after_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  std::string id, device;
  int64_t deadline = MonoNanos() + int64_t{10} * 1000000000;
  while (MonoNanos() < deadline && id.empty()) {
    json j = json::parse(c.Tern({"ps", "--json"}).output, nullptr, false);
    if (!j.is_discarded()) {
      for (const json& s : j["services"]) {
        if (s["name"] != "counter") continue;
        for (const json& i : s["instances"]) {
          if (i.contains("checkpoint") && i["checkpoint"]["unix_ms"].get<int64_t>() > after_ms) {
            id = i["id"];
            device = i["device"];
          }
        }
      }
    }
    if (id.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(id.empty()) << c.Tern({"ps"}).output;
  ps = c.Tern({"ps"});
  EXPECT_NE(ps.output.find("ago on csd"), std::string::npos) << ps.output;
  // `tern migrate` it to the other device, count intact.
  std::string other = device == "c1-cpu" ? "c2-cpu" : "c1-cpu";
  CommandResult mig = c.Tern({"migrate", id, "--to", other});
  ASSERT_EQ(mig.exit_code, 0) << mig.output;
  EXPECT_NE(mig.output.find(id + " migrated from " + device + " to " + other + ": downtime "),
            std::string::npos)
      << mig.output;
  EXPECT_NE(mig.output.find("round(s)"), std::string::npos) << mig.output;
  CommandResult get = c.Tern({"invoke", "counter", "get"});
  EXPECT_EQ(get.output, "3");
  {
    // `tern load` across a live migration of another counter: open-loop through the
    // gateway, every answer accounted for in the counter's own count.
    CommandResult dep2 =
        c.Tern({"deploy", SourcePath("examples/counter/manifest.yaml"), "--module",
                testing::WasmPath("counter"), "--name", "tally", "--devices", "c1-cpu,c2-cpu"});
    ASSERT_EQ(dep2.exit_code, 0) << dep2.output;
    const std::string from = dep2.output.find("on c1-cpu") != std::string::npos ? "c1-cpu" : "c2-cpu";
    const std::string to = from == "c1-cpu" ? "c2-cpu" : "c1-cpu";
    CommandResult load;
    std::thread loader([&] {
      load = c.Tern({"load", "tally", "touch", "--rate", "200", "--duration-ms", "2500", "--counter",
                     "--quiet"});
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    CommandResult mig2 = c.Tern({"migrate", "tally-1", "--to", to});
    loader.join();
    EXPECT_EQ(mig2.exit_code, 0) << mig2.output;
    EXPECT_EQ(load.exit_code, 0) << load.output;
    EXPECT_NE(load.output.find("500 sent, 500 answered, 0 lost"), std::string::npos) << load.output;
    EXPECT_NE(load.output.find("none lost, none executed twice"), std::string::npos) << load.output;
    CommandResult bad = c.Tern({"load", "tally", "touch", "--rate", "0"});
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
  }
  device = other;
  int pid = rec["agents"][device]["pid"];
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  std::string now_on = WaitRunningElsewhere(c, id, device);
  ASSERT_FALSE(now_on.empty()) << c.Tern({"ps"}).output;
  Result<std::string> count = CounterThroughGateway(gw);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, "3");
  ps = c.Tern({"ps", "--json"});  // every recent event
  EXPECT_NE(ps.output.find("restored " + id + " on " + now_on + " from the checkpoint of"),
            std::string::npos)
      << ps.output;
}

TEST(ClusterTest, LoopbackDrainMigrateAndCheckpointRestoreThroughTheCli) {
  DrainMigrateAndRestoreThroughTheCli("itmig", "loopback");
}

// The same across network namespaces: migrations and checkpoints cross the emulated
// hosts' links.
// Issue #6 point 5 through the CLI: a durable counter (`tern deploy --durable`) whose
// agent is SIGKILLed comes back elsewhere with every acknowledged increment — none of
// them were in its last base checkpoint — and a retry of the last one (same
// Idempotency-Key) is answered from the dedup table, not run twice.
TEST(ClusterTest, LoopbackDurableCounterLosesNoAcknowledgedRequestWhenItsAgentDies) {
  Cluster c("itdur", "loopback");
  CommandResult up = c.Up(SourcePath("examples/topologies/rack.yaml"));
  ASSERT_EQ(up.exit_code, 0) << up.output;
  json rec = c.Record();
  std::string gw = rec["gateway"];
  CommandResult dep = c.Tern({"deploy", SourcePath("examples/counter/manifest.yaml"), "--module",
                              testing::WasmPath("counter"), "--replicas", "1", "--devices",
                              "c1-cpu,c2-cpu", "--durable", "--checkpoint-ms", "600000"});
  ASSERT_EQ(dep.exit_code, 0) << dep.output;
  // The deploy returns once its first base checkpoint gave the journal its two keepers,
  // and names them.
  EXPECT_NE(dep.output.find("journals: counter-1 on "), std::string::npos) << dep.output;
  EXPECT_EQ(dep.output.find("one copy"), std::string::npos) << dep.output;
  std::string id, device;
  size_t keepers = 0;
  int64_t deadline = MonoNanos() + int64_t{10} * 1000000000;
  while (MonoNanos() < deadline && id.empty()) {
    json j = json::parse(c.Tern({"ps", "--json"}).output, nullptr, false);
    if (!j.is_discarded()) {
      for (const json& s : j["services"]) {
        for (const json& i : s["instances"]) {
          if (s["name"] == "counter" && i.contains("checkpoint") &&
              i["checkpoint"].value("durable", false) && i["state"] == "running") {
            id = i["id"];
            device = i["device"];
            keepers = i["checkpoint"]["keepers"].size();
          }
        }
      }
    }
    if (id.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(id.empty()) << c.Tern({"ps"}).output;
  EXPECT_EQ(keepers, 2u) << c.Tern({"ps", "--json"}).output;
  CommandResult ps = c.Tern({"ps"});
  EXPECT_NE(ps.output.find("+journal (durable)"), std::string::npos) << ps.output;
  EXPECT_EQ(ps.output.find("DEGRADED"), std::string::npos) << ps.output;
  std::string host;
  uint16_t port = 0;
  ASSERT_TRUE(ParseHostPort(gw, &host, &port).ok());
  auto incr = [&](uint64_t key) -> Result<transport::HttpClientResponse> {
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::HttpClient> h,
                          transport::HttpClient::Connect(host, port, std::chrono::seconds(2)));
    return h->Request("POST", "/v1/invoke/counter/incr", "1", "application/octet-stream",
                      std::chrono::seconds(10),
                      {{transport::kIdempotencyKeyHeader, std::to_string(key)}});
  };
  constexpr int kN = 25;
  for (int i = 1; i <= kN; ++i) {
    Result<transport::HttpClientResponse> r = incr(5000 + i);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 200) << r->body;
    ASSERT_EQ(r->body, std::to_string(i));
  }
  int pid = rec["agents"][device]["pid"];
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  std::string now_on = WaitRunningElsewhere(c, id, device);
  ASSERT_FALSE(now_on.empty()) << c.Tern({"ps"}).output;
  Result<std::string> count = CounterThroughGateway(gw);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, std::to_string(kN)) << "acknowledged increments were lost";
  // The client of the last increment retries it: the recorded answer, no second run.
  Result<transport::HttpClientResponse> retry = incr(5000 + kN);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->status, 200) << retry->body;
  EXPECT_EQ(retry->body, std::to_string(kN));
  Result<transport::HttpClientResponse> after = Invoke(gw, "counter", "get", "");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->body, std::to_string(kN));
  // It keeps serving durably on its new device.
  Result<transport::HttpClientResponse> more = incr(6000);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(more->body, std::to_string(kN + 1)) << more->body;
  ps = c.Tern({"ps", "--json"});  // every recent event
  EXPECT_NE(ps.output.find("restored " + id + " on " + now_on + " from its journal on"),
            std::string::npos)
      << ps.output;
  EXPECT_NE(ps.output.find("durable: 0 acknowledged requests lost"), std::string::npos)
      << ps.output;
}

TEST(ClusterTest, NamespacesDrainMigrateAndCheckpointRestoreThroughTheCli) {
  if (!Root()) GTEST_SKIP() << "needs root (network namespaces, veth, tc, cgroups)";
  if (Sh("ip -V").exit_code != 0) GTEST_SKIP() << "iproute2 (`ip`) is missing";
  DrainMigrateAndRestoreThroughTheCli("itmns", "netns");
}

}  // namespace
}  // namespace tern
