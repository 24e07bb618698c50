#include "agent/agent_main.h"

#include <signal.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <thread>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "agent/registrar.h"
#include "cli/flags.h"
#include "cli/main_util.h"
#include "core/config.h"
#include "core/logging.h"
#include "wasm/engine.h"

namespace tern::agent {

int RunAgentCommand(int argc, char** argv) {
  cli::Flags f("tern agent [flags]",
               "Runs the agent of one device: hosts service instances in V8 isolates, serves\n"
               "invocations over the frame protocol and an HTTP/JSON admin API. Stops on\n"
               "SIGINT/SIGTERM. Binds to loopback unless --host says otherwise.");
  f.Add("host", "127.0.0.1", "address to listen on");
  f.Add("port", "7400", "frame-protocol (data plane) port; 0 = any free port");
  f.Add("admin-port", "7401", "HTTP/JSON admin port; 0 = any free port");
  f.Add("device", "dev0", "this device's name");
  f.Add("data-dir", "", "keep deployed services here and redeploy them on restart");
  f.Add("workers", std::to_string(std::max(1u, std::thread::hardware_concurrency())),
        "worker threads (one V8 isolate each)");
  f.Add("log-level", "info", "debug, info, warn or error");
  f.Add("v8-flags", "", "extra V8 flags, for experiments (e.g. --no-liftoff)");
  f.Add("host-id", "local",
        "the (emulated) host this agent runs on: agents with the same host id call each "
        "other over shared memory");
  f.Add("shm-socket", "",
        "Unix socket for shared-memory calls from agents on this host (default: "
        "<data-dir>/shm.sock, else /tmp/tern-<device>-<pid>.sock; 'none' disables)");
  f.Add("call-transport", "auto",
        "transport for calls between services: auto (the fastest the locations allow), "
        "inproc, shm or tcp (forced, for benchmarks and debugging)");
  f.Add("tcp-serving", "worker",
        "who serves TCP frame connections: worker (the worker that runs the service reads, "
        "runs and answers them: no thread hop) or loop (the I/O thread reads and writes "
        "them and hands each request to a worker)");
  f.Add("locations", "",
        "YAML file with the location table (where other agents' instances run); see "
        "docs/design/dataplane.md");
  f.Add("datasets-dir", "",
        "where this device keeps its datasets (default: <data-dir>/datasets; none without "
        "a data dir)");
  f.Add("controller", "",
        "join a cluster: register with the controller(s) at HOST:PORT[,HOST:PORT...] and "
        "heartbeat; the controller then places instances here");
  f.Add("kind", "cpu", "device kind reported to the controller: cpu, csd, cpm, nic, mem, gpu");
  f.Add("cores", "1", "cores this device offers (fractional allowed, e.g. 0.25)");
  f.Add("speed", "1", "speed per core relative to a reference host core");
  f.Add("reserved", "0",
        "share of the cores kept for the device's main task (serving its datasets), in "
        "[0, 1): guests then run in a child cgroup limited to the rest (cgroup v1)");
  f.Add("memory-mib", "1024", "memory this device offers to instances, MiB");
  f.Add("memory-reserve-mb", "128",
        "warm memory (MiB) kept faulted in, in 2 MiB huge pages, filled by a thread paced "
        "to a quarter of a CPU, "
        "for incoming migrations to land on instead of fresh pages (refilled after use); "
        "it stays in the agent's RSS. 0 = none. Unless given, at most --memory-mib / 8");
  f.Add("journal-timeout-ms", "2000",
        "how long a durable instance's reply waits for a keeper to acknowledge its journal "
        "record before the keeper drops out (docs/design/migration.md, \"A keeper fails\")");
  f.Add("advertise", "",
        "address other agents and the controller reach this agent at (default: --host)");
  f.Add("config", "",
        "YAML file with any of: device, host, port, admin_port, data_dir, "
        "workers, log_level, v8_flags, host_id, shm_socket, call_transport, tcp_serving, "
        "locations, memory_reserve_mb "
        "(flags given on the command line win)");
  if (int rc = cli::ParseFlagsOrExit(&f, argc, argv, "tern agent", 0, 0); rc >= 0) return rc;
  Config cfg;
  if (f.IsSet("config")) {
    Result<Config> c = Config::Load(
        f.Get("config"),
        {"device", "host", "port", "admin_port", "data_dir", "workers", "log_level", "v8_flags",
         "host_id", "shm_socket", "call_transport", "tcp_serving", "locations", "controller",
         "kind",
         "cores", "speed", "reserved", "memory_mib", "memory_reserve_mb", "advertise",
         "datasets_dir", "journal_timeout_ms"});
    if (!c.ok()) {
      std::fprintf(stderr, "tern agent: %s\n", c.status().ToString().c_str());
      return 2;
    }
    cfg = std::move(*c);
  }
  // A flag given on the command line wins over the config file, which wins over defaults.
  auto str = [&](const std::string& flag) -> std::string {
    std::string key = flag;
    std::replace(key.begin(), key.end(), '-', '_');
    if (!f.IsSet(flag) && cfg.Has(key)) return *cfg.String(key);
    return f.Get(flag);
  };
  auto num = [&](const std::string& flag, int64_t lo, int64_t hi) -> Result<int64_t> {
    std::string key = flag;
    std::replace(key.begin(), key.end(), '-', '_');
    if (!f.IsSet(flag) && cfg.Has(key)) return cfg.Int(key, lo, hi);
    return f.GetInt(flag, lo, hi);
  };
  LogLevel level;
  if (!ParseLogLevel(str("log-level"), &level)) {
    std::fprintf(stderr, "tern agent: log level must be debug, info, warn or error, not '%s'\n",
                 str("log-level").c_str());
    return 2;
  }
  SetMinLogLevel(level);
  Result<int64_t> port = num("port", 0, 65535);
  Result<int64_t> admin_port = num("admin-port", 0, 65535);
  Result<int64_t> workers = num("workers", 1, 256);
  Result<int64_t> memory_mib = num("memory-mib", 1, int64_t{1} << 30);
  Result<int64_t> memory_reserve_mb = num("memory-reserve-mb", 0, int64_t{1} << 20);
  Result<int64_t> journal_timeout_ms = num("journal-timeout-ms", 10, 600'000);
  auto positive = [&](const std::string& flag) -> Result<double> {
    std::string v = str(flag);
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(d > 0) || d > 4096) {
      return InvalidArgumentError(
          fmt::format("--{} must be a number > 0 (like 0.25 or 2), not '{}'", flag, v));
    }
    return d;
  };
  Result<double> cores = positive("cores");
  Result<double> speed = positive("speed");
  Result<double> reserved = [&]() -> Result<double> {
    std::string v = str("reserved");
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(d >= 0 && d < 1)) {
      return InvalidArgumentError(
          fmt::format("--reserved must be a share in [0, 1) (like 0.25), not '{}'", v));
    }
    return d;
  }();
  for (const Status& s :
       {port.status(), admin_port.status(), workers.status(), memory_mib.status(),
        memory_reserve_mb.status(), journal_timeout_ms.status(), cores.status(),
        speed.status(), reserved.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "tern agent: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }

  // Block the stop signals in every thread; main waits for them.
  cli::BlockStopSignals();

  wasm::EngineOptions eo;
  eo.engine_flags = str("v8-flags");
  Result<std::unique_ptr<wasm::Engine>> engine = wasm::NewV8Engine(eo);
  if (!engine.ok()) {
    TERN_LOG(ERROR) << "wasm engine: " << engine.status();
    return 1;
  }
  AgentOptions ao;
  ao.device = str("device");
  ao.data_dir = str("data-dir");
  ao.workers = static_cast<int>(*workers);
  ao.host = str("host-id");
  ao.datasets_dir = str("datasets-dir");
  ao.cores = *cores;
  ao.reserved = *reserved;
  // The default reserve covers a default-sized stateful instance (64 MiB cap: its memory
  // and its rollback point) but never more than an eighth of what the device offers:
  // `tern up` limits the agent's cgroup to that memory, and the reserve counts in it.
  int64_t reserve_mb = *memory_reserve_mb;
  if (!f.IsSet("memory-reserve-mb") && !cfg.Has("memory_reserve_mb")) {
    reserve_mb = std::min<int64_t>(reserve_mb, *memory_mib / 8);
  }
  ao.memory_reserve_bytes = static_cast<uint64_t>(reserve_mb) << 20;
  ao.journal_timeout_ns = *journal_timeout_ms * 1'000'000;
  Result<dataplane::TierPolicy> policy = dataplane::ParseTierPolicy(str("call-transport"));
  if (!policy.ok()) {
    std::fprintf(stderr, "tern agent: --call-transport: %s\n",
                 std::string(policy.status().message()).c_str());
    return 2;
  }
  ao.tier_policy = *policy;
  Result<TcpServing> tcp_serving = ParseTcpServing(str("tcp-serving"));
  if (!tcp_serving.ok()) {
    std::fprintf(stderr, "tern agent: --tcp-serving: %s\n",
                 std::string(tcp_serving.status().message()).c_str());
    return 2;
  }
  std::vector<dataplane::InstanceLocation> initial_locations;
  if (!str("locations").empty()) {
    Result<std::vector<dataplane::InstanceLocation>> locs =
        dataplane::LoadLocationsFile(str("locations"));
    if (!locs.ok()) {
      std::fprintf(stderr, "tern agent: %s\n", locs.status().ToString().c_str());
      return 2;
    }
    initial_locations = std::move(*locs);
  }
  std::string shm_socket = str("shm-socket");
  if (shm_socket.empty()) {
    // Without a data dir, the pid keeps two agents with the same device name (tests,
    // several demos) from fighting over one socket; /v1/info tells the path.
    shm_socket = ao.data_dir.empty()
                     ? "/tmp/tern-" + ao.device + "-" + std::to_string(::getpid()) + ".sock"
                     : ao.data_dir + "/shm.sock";
  } else if (shm_socket == "none") {
    shm_socket.clear();
  }
  TuneMallocForAgentProcess();
  Result<std::unique_ptr<Agent>> agent = Agent::Create(ao, engine->get());
  if (!agent.ok()) {
    TERN_LOG(ERROR) << "agent: " << agent.status();
    return 1;
  }
  AgentServerOptions so;
  so.host = str("host");
  so.frame_port = static_cast<uint16_t>(*port);
  so.admin_port = static_cast<uint16_t>(*admin_port);
  so.shm_path = shm_socket;
  so.tcp_serving = *tcp_serving;
  (*agent)->locations().Replace(std::move(initial_locations));
  Result<std::unique_ptr<AgentServer>> server = AgentServer::Start(agent->get(), so);
  if (!server.ok()) {
    TERN_LOG(ERROR) << "agent: " << server.status()
                    << " (is another agent running? pick ports with --port/--admin-port)";
    return 1;
  }
  TERN_LOG(INFO) << "agent " << ao.device << " ready: frames on " << so.host << ":"
                 << (*server)->frame_port() << ", admin on http://" << so.host << ":"
                 << (*server)->admin_port() << ", " << ao.workers << " workers"
                 << (shm_socket.empty() ? "" : ", shared memory on " + shm_socket)
                 << ", host " << ao.host << ", calls " << dataplane::TierPolicyName(ao.tier_policy)
                 << ", TCP served by " << TcpServingName(so.tcp_serving)
                 << (ao.data_dir.empty() ? "" : ", data in " + ao.data_dir)
                 << fmt::format(", memory reserve {} MiB", ao.memory_reserve_bytes >> 20);
  std::unique_ptr<Registrar> registrar;
  if (!str("controller").empty()) {
    RegistrarOptions ro;
    for (size_t i = 0; i <= str("controller").size();) {
      size_t j = str("controller").find(',', i);
      if (j == std::string::npos) j = str("controller").size();
      if (j > i) ro.controllers.push_back(str("controller").substr(i, j - i));
      i = j + 1;
    }
    std::string advertise = str("advertise").empty() ? so.host : str("advertise");
    ro.kind = str("kind");
    ro.cores = *cores;
    ro.speed = *speed;
    ro.memory_bytes = static_cast<uint64_t>(*memory_mib) << 20;
    ro.admin = fmt::format("{}:{}", advertise, (*server)->admin_port());
    ro.tcp = fmt::format("{}:{}", advertise, (*server)->frame_port());
    ro.shm = shm_socket;
    Result<std::unique_ptr<Registrar>> r = Registrar::Start(agent->get(), ro);
    if (!r.ok()) {
      std::fprintf(stderr, "tern agent: --controller: %s\n", std::string(r.status().message()).c_str());
      return 2;
    }
    registrar = std::move(*r);
  }
  // A line for scripts that started us with port 0.
  std::printf("listening frames=%u admin=%u\n", (*server)->frame_port(), (*server)->admin_port());
  std::fflush(stdout);

  std::string sig = cli::WaitForStopSignal();
  TERN_LOG(INFO) << "agent " << ao.device << " stopping (" << sig << ")";
  registrar.reset();
  server->reset();
  agent->reset();
  return 0;
}

}  // namespace tern::agent
