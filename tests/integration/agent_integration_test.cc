// Integration tests: the real `tern` binary as an agent on 127.0.0.1, driven by the
// client library, the CLI binary and raw sockets.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <random>

#include "client/agent_client.h"
#include "core/file.h"
#include "testing/process.h"
#include "testing/test_env.h"
#include "transport/frame.h"
#include "transport/frame_client.h"
#include "transport/http.h"

namespace tern {
namespace {

using testing::BinPath;
using testing::ChildProcess;
using testing::CommandResult;
using testing::ReadWasm;
using testing::RunCommand;
using testing::SourcePath;
using testing::WasmPath;
using namespace std::chrono_literals;

// A running `tern agent` with its ports.
struct RunningAgent {
  std::unique_ptr<ChildProcess> proc;
  uint16_t frame_port = 0;
  uint16_t admin_port = 0;
  std::string admin() const { return "127.0.0.1:" + std::to_string(admin_port); }
};

RunningAgent StartAgent(const std::string& data_dir) {
  RunningAgent a;
  std::vector<std::string> argv = {BinPath("tern"), "agent", "--port",    "0",
                                   "--admin-port",  "0",     "--workers", "2",
                                   "--log-level",   "warn"};
  if (!data_dir.empty()) {
    argv.push_back("--data-dir");
    argv.push_back(data_dir);
  }
  auto p = ChildProcess::Start(argv);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return a;
  a.proc = std::move(*p);
  Result<std::string> line = a.proc->ReadLine(20s);
  EXPECT_TRUE(line.ok()) << line.status();
  if (line.ok()) {
    unsigned f = 0, m = 0;
    EXPECT_EQ(std::sscanf(line->c_str(), "listening frames=%u admin=%u", &f, &m), 2) << *line;
    a.frame_port = static_cast<uint16_t>(f);
    a.admin_port = static_cast<uint16_t>(m);
  }
  return a;
}

std::unique_ptr<client::AgentClient> Client(const RunningAgent& a) {
  auto c = client::AgentClient::Connect(a.admin(), 10000ms);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

std::string ManifestText(const std::string& example) {
  Result<std::string> m = ReadFile(SourcePath("examples/" + example + "/manifest.yaml"));
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : "";
}

CommandResult Cli(const RunningAgent& a, std::vector<std::string> args,
                  const std::string& in = "") {
  args.insert(args.begin(), BinPath("tern"));
  args.push_back("--agent");
  args.push_back(a.admin());
  return RunCommand(args, in);
}

TEST(AgentIntegrationTest, CliDeployInvokePsSnapshotRestoreAcrossRestart) {
  std::string dir = testing::TempDir("integ");
  RunningAgent a = StartAgent(dir + "/agent");
  ASSERT_NE(a.admin_port, 0);

  CommandResult r = Cli(
      a, {"deploy", SourcePath("examples/counter/manifest.yaml"), "--module", WasmPath("counter")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("instances: counter-1"), std::string::npos) << r.output;
  for (int i = 1; i <= 4; ++i) {
    r = Cli(a, {"invoke", "counter", "incr"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output, std::to_string(i));
  }
  r = Cli(a, {"invoke", "counter", "incr", "-"}, "10");
  EXPECT_EQ(r.output, "14");
  r = Cli(a, {"ps"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("counter-1"), std::string::npos) << r.output;
  // The ids `tern invoke` sends reach the instance (tern ps --json shows them).
  r = Cli(a, {"invoke", "counter", "get", "--trace-id", "C0FFEE", "--idempotency-key", "0x10"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "14");
  r = Cli(a, {"ps", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"last_trace_id\":\"0000000000c0ffee\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"last_idempotency_key\":16"), std::string::npos) << r.output;
  r = Cli(a, {"invoke", "counter", "get", "--trace-id", "c0ffee!"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--trace-id 'c0ffee!': expected 1 to 16 hex digits"), std::string::npos)
      << r.output;
  r = Cli(a, {"invoke", "counter", "get", "--idempotency-key", "ten"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--idempotency-key 'ten'"), std::string::npos) << r.output;

  std::string snap = dir + "/counter.snap";
  r = Cli(a, {"snapshot", "counter-1", "-o", snap});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(FileExists(snap));

  // A clean stop (SIGTERM) and a crash (SIGKILL): the service comes back both times.
  for (int sig : {SIGTERM, SIGKILL}) {
    Result<int> st = a.proc->Stop(sig, 10s);
    ASSERT_TRUE(st.ok()) << st.status();
    if (sig == SIGTERM) {
      EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "status " << *st;
    }
    a = StartAgent(dir + "/agent");
    r = Cli(a, {"invoke", "counter", "get"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output, "0") << "a restarted agent starts fresh instances";
    r = Cli(a, {"restore", "counter-1", snap});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = Cli(a, {"invoke", "counter", "incr"});
    EXPECT_EQ(r.output, "15") << "state survived snapshot, agent restart and restore";
  }
}

TEST(AgentIntegrationTest, CliErrorsSayWhatToDo) {
  RunningAgent a = StartAgent("");
  CommandResult r = Cli(a, {"invoke", "nope", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("no service 'nope'"), std::string::npos) << r.output;
  r = RunCommand({BinPath("tern"), "invoke"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("usage: tern invoke"), std::string::npos) << r.output;
  r = RunCommand({BinPath("tern"), "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = RunCommand({BinPath("tern"), "ps", "--agent", "127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is `tern agent` running?"), std::string::npos) << r.output;
  r = Cli(a, {"deploy", "/nonexistent/manifest.yaml"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("/nonexistent/manifest.yaml"), std::string::npos) << r.output;
  for (const char* cmd :
       {"agent", "deploy", "invoke", "ps", "snapshot", "restore", "start", "stop"}) {
    r = RunCommand({BinPath("tern"), cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("usage: tern"), std::string::npos) << cmd;
  }
}

TEST(AgentIntegrationTest, ConfigFileSetsDefaultsAndFlagsWin) {
  std::string dir = testing::TempDir("config");
  ASSERT_TRUE(
      WriteFileAtomic(dir + "/agent.yaml", "device: csd7\nworkers: 1\nport: 1\nlog_level: warn\n")
          .ok());
  // --port 0 on the command line wins over `port: 1` in the file.
  auto p = ChildProcess::Start({BinPath("tern"), "agent", "--config", dir + "/agent.yaml", "--port",
                                "0", "--admin-port", "0"});
  ASSERT_TRUE(p.ok());
  RunningAgent a;
  a.proc = std::move(*p);
  Result<std::string> line = a.proc->ReadLine(20s);
  ASSERT_TRUE(line.ok()) << line.status();
  unsigned fp = 0, ap = 0;
  ASSERT_EQ(std::sscanf(line->c_str(), "listening frames=%u admin=%u", &fp, &ap), 2) << *line;
  a.admin_port = static_cast<uint16_t>(ap);
  auto c = Client(a);
  ASSERT_NE(c, nullptr);
  Result<std::string> info = c->Info();
  ASSERT_TRUE(info.ok());
  nlohmann::json j = nlohmann::json::parse(*info);
  EXPECT_EQ(j["device"], "csd7");
  EXPECT_EQ(j["workers"], 1);

  ASSERT_TRUE(WriteFileAtomic(dir + "/bad.yaml", "device: x\nworkers: lots\n").ok());
  CommandResult r = RunCommand({BinPath("tern"), "agent", "--config", dir + "/bad.yaml"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("bad.yaml:2: field 'workers'"), std::string::npos) << r.output;
  ASSERT_TRUE(WriteFileAtomic(dir + "/typo.yaml", "devcie: x\n").ok());
  r = RunCommand({BinPath("tern"), "agent", "--config", dir + "/typo.yaml"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown field 'devcie'"), std::string::npos) << r.output;
}

TEST(AgentIntegrationTest, BadDeploymentsGetClearErrorsAndLoseNothing) {
  RunningAgent a = StartAgent("");
  auto c = Client(a);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Deploy(ManifestText("counter"), ReadWasm("counter"), true).ok());
  ASSERT_EQ(*c->Invoke("counter", "incr", "41"), "41");

  struct Case {
    std::string manifest, module, expect;
    StatusCode code;
  };
  std::string m = "name: bad\nversion: 1\nhandlers: [handle]\n";
  std::vector<Case> cases = {
      {m, "definitely not wasm", "magic", StatusCode::kInvalidArgument},
      {m, ReadWasm("counter").substr(0, 300), "", StatusCode::kInvalidArgument},
      {m, ReadWasm("guest_badimport"), "does not provide", StatusCode::kInvalidArgument},
      {"name: bad\nversion: 1\n", ReadWasm("echo"), "'handlers' is missing",
       StatusCode::kInvalidArgument},
      {"name: [oops\n", ReadWasm("echo"), "YAML syntax error", StatusCode::kInvalidArgument},
      {"name: bad\nversion: 1\nhandlers: [echo]\nlimits: {memory_mib: lots}\n", ReadWasm("echo"),
       "limits.memory_mib", StatusCode::kInvalidArgument},
      {"name: bad\nversion: 1\nhandlers: [nothere]\n", ReadWasm("echo"), "nothere",
       StatusCode::kInvalidArgument},
  };
  for (const Case& k : cases) {
    Result<std::string> r = c->Deploy(k.manifest, k.module, true);
    ASSERT_FALSE(r.ok()) << k.manifest;
    EXPECT_EQ(r.status().code(), k.code) << r.status();
    EXPECT_NE(r.status().message().find(k.expect), std::string_view::npos) << r.status();
  }
  // Raw HTTP garbage to the admin API.
  auto http = transport::HttpClient::Connect("127.0.0.1", a.admin_port, 5s);
  ASSERT_TRUE(http.ok());
  for (const std::string& body :
       {std::string("{not json"), std::string("[1,2]"), std::string(R"({"manifest": 5})"),
        std::string(R"({"manifest": "name: x", "module_b64": "@@@"})")}) {
    auto r = (*http)->Request("POST", "/v1/services", body, "application/json", 5s);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 400) << body << " -> " << r->body;
    EXPECT_NE(r->body.find("\"error\""), std::string::npos) << r->body;
  }
  auto r404 = (*http)->Request("GET", "/v1/instances/nope/snapshot", "", "", 5s);
  ASSERT_TRUE(r404.ok());
  EXPECT_EQ(r404->status, 404);
  auto bad_snap = (*http)->Request("PUT", "/v1/instances/counter-1/snapshot", "garbage", "", 5s);
  ASSERT_TRUE(bad_snap.ok());
  EXPECT_EQ(bad_snap->status / 100, 4) << bad_snap->body;
  // Nothing was lost.
  EXPECT_EQ(*c->Invoke("counter", "incr", ""), "42");
}

// Opens a raw TCP connection to the frame port.
int RawConnect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Reads until EOF (or the 5 s receive timeout); true if the peer closed.
bool ReadUntilClosed(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

TEST(AgentIntegrationTest, GarbageAndTruncatedFramesCloseOnlyThatConnection) {
  RunningAgent a = StartAgent("");
  auto c = Client(a);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Deploy(ManifestText("counter"), ReadWasm("counter"), true).ok());
  auto good = transport::FrameClient::Connect("127.0.0.1", a.frame_port, 5s);
  ASSERT_TRUE(good.ok());
  auto incr = [&]() {
    transport::Frame f;
    f.service = "counter";
    f.handler = "incr";
    return (*good)->Call(f, 5s);
  };
  ASSERT_TRUE(incr().ok());

  std::mt19937 rng(7);
  // 1. Random garbage.
  for (int i = 0; i < 5; ++i) {
    int fd = RawConnect(a.frame_port);
    ASSERT_GE(fd, 0);
    std::string junk(4096, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    ASSERT_GT(write(fd, junk.data(), junk.size()), 0);
    EXPECT_TRUE(ReadUntilClosed(fd)) << "the agent should close a garbage connection";
    close(fd);
  }
  // 2. A valid header announcing a payload that never comes, then a hang-up.
  transport::Frame f;
  f.service = "counter";
  f.handler = "incr";
  f.payload = std::string(1000, '1');
  std::string wire;
  ASSERT_TRUE(transport::EncodeFrame(f, &wire).ok());
  int fd = RawConnect(a.frame_port);
  ASSERT_GT(write(fd, wire.data(), wire.size() / 2), 0);
  close(fd);
  // 3. A header with a corrupted CRC, and one claiming a 4 GiB payload.
  for (size_t offset : {size_t{45}, size_t{40}}) {
    std::string bad = wire;
    bad[offset] = static_cast<char>(0xFF);
    bad[offset + 1] = static_cast<char>(0xFF);
    fd = RawConnect(a.frame_port);
    ASSERT_GT(write(fd, bad.data(), bad.size()), 0);
    EXPECT_TRUE(ReadUntilClosed(fd));
    close(fd);
  }
  // The well-behaved connection and the counter are untouched: 1 + 1 increments.
  Result<transport::Frame> r = incr();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->payload, "2");
  Result<std::string> st = c->StatusJson();
  ASSERT_TRUE(st.ok());
}

TEST(AgentIntegrationTest, RunawayGuestsFailTheirRequestOnly) {
  RunningAgent a = StartAgent("");
  auto c = Client(a);
  ASSERT_NE(c, nullptr);
  Result<std::string> faulty_manifest = ReadFile(SourcePath("src/agent/testdata/faulty.yaml"));
  ASSERT_TRUE(faulty_manifest.ok());
  ASSERT_TRUE(c->Deploy(*faulty_manifest, ReadWasm("guest_faulty"), true).ok());
  ASSERT_TRUE(c->Deploy(ManifestText("echo"), ReadWasm("echo"), true).ok());
  ASSERT_EQ(*c->Invoke("faulty", "incr", ""), "1");
  for (const char* h : {"incr_then_loop", "incr_then_recurse", "incr_then_oob", "incr_then_trap",
                        "incr_then_oom"}) {
    Result<std::string> r = c->Invoke("faulty", h, "");
    EXPECT_FALSE(r.ok()) << h;
    EXPECT_NE(r.status().message().find("rolled back"), std::string_view::npos) << r.status();
    EXPECT_EQ(*c->Invoke("echo", "echo", h), h);
  }
  EXPECT_EQ(*c->Invoke("faulty", "get", ""), "1");
  Result<std::string> big = c->Invoke("faulty", "incr", std::string(8192, 'x'));
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument) << big.status();
}

}  // namespace
}  // namespace tern
