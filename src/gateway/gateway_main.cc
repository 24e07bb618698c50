#include "gateway/gateway_main.h"

#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "cli/flags.h"
#include "cli/main_util.h"
#include "core/logging.h"
#include "dataplane/location.h"
#include "gateway/gateway.h"

namespace tern::gateway {
namespace {

int Usage(const cli::Flags& f, const std::string& message) {
  return cli::UsageError(f, "tern gateway", message);
}

}  // namespace

int RunGatewayCommand(int argc, char** argv) {
  cli::Flags f("tern gateway [flags]",
               "Runs the HTTP ingress of a cluster: POST /v1/invoke/{service}/{handler} with the\n"
               "request as the body is forwarded to an instance of the service (picked from the\n"
               "location table: same host first, then the less loaded of two random replicas)\n"
               "and answered with its reply. Headers: X-Tern-Tenant, X-Tern-Timeout-Ms (default\n"
               "30000); the response names the instance in X-Tern-Instance. Errors are JSON:\n"
               "{\"error\": {\"code\", \"code_number\", \"message\"}}. Also GET /v1/health and\n"
               "GET /v1/info. Locations come from a controller (--controller, long-polled) or a\n"
               "YAML file (--locations). Stops on SIGINT/SIGTERM.");
  f.Add("listen", "127.0.0.1:8080", "HOST:PORT to serve HTTP on; port 0 = any free port");
  f.Add("controller", "", "HOST:PORT of the controller whose /v1/locations to follow");
  f.Add("locations", "", "YAML location file (static; see docs/design/dataplane.md)");
  f.Add("host-id", "", "the host this gateway runs on: its instances are preferred");
  f.Add("max-inflight", "1024", "requests in flight; beyond it, 503 with Retry-After: 1");
  f.Add("threads", "1", "I/O threads (each with its own listener and agent connections)");
  f.Add("log-level", "info", "debug, info, warn or error");
  if (int rc = cli::ParseFlagsOrExit(&f, argc, argv, "tern gateway"); rc >= 0) return rc;
  if (!f.positional().empty()) return Usage(f, "unexpected argument '" + f.positional()[0] + "'");
  LogLevel level;
  if (!ParseLogLevel(f.Get("log-level"), &level)) {
    return Usage(
        f, "--log-level must be debug, info, warn or error, not '" + f.Get("log-level") + "'");
  }
  SetMinLogLevel(level);

  GatewayOptions o;
  const std::string listen = f.Get("listen");
  size_t colon = listen.rfind(':');
  int64_t port = -1;
  if (colon != std::string::npos && colon + 1 < listen.size() && listen.size() - colon <= 6) {
    port = 0;
    for (char c : listen.substr(colon + 1)) {
      port = (c >= '0' && c <= '9' && port >= 0) ? port * 10 + (c - '0') : -1;
    }
  }
  if (colon == std::string::npos || colon == 0 || port < 0 || port > 65535) {
    return Usage(f, "--listen must be HOST:PORT (port 0..65535), not '" + listen + "'");
  }
  o.listen_host = listen.substr(0, colon);
  o.listen_port = static_cast<uint16_t>(port);
  o.controller = f.Get("controller");
  o.host_id = f.Get("host-id");
  Result<int64_t> max_inflight = f.GetInt("max-inflight", 1, 1 << 20);
  if (!max_inflight.ok()) return Usage(f, std::string(max_inflight.status().message()));
  o.max_inflight = static_cast<size_t>(*max_inflight);
  Result<int64_t> threads = f.GetInt("threads", 1, 64);
  if (!threads.ok()) return Usage(f, std::string(threads.status().message()));
  o.threads = static_cast<int>(*threads);
  if (o.controller.empty() == f.Get("locations").empty()) {
    return Usage(f, "give exactly one location source: --controller HOST:PORT or --locations FILE");
  }
  std::vector<dataplane::InstanceLocation> initial;
  if (!f.Get("locations").empty()) {
    Result<std::vector<dataplane::InstanceLocation>> locs =
        dataplane::LoadLocationsFile(f.Get("locations"));
    if (!locs.ok()) {
      std::fprintf(stderr, "tern gateway: %s\n", locs.status().ToString().c_str());
      return 2;
    }
    initial = std::move(*locs);
  }

  // Block the stop signals in every thread; main waits for them with sigwait.
  cli::BlockStopSignals();

  Result<std::unique_ptr<Gateway>> gw = Gateway::Start(o);
  if (!gw.ok()) {
    TERN_LOG(ERROR) << "gateway: " << gw.status();
    return 1;
  }
  if (o.controller.empty()) (*gw)->SetLocations(std::move(initial), 1);
  TERN_LOG(INFO) << "gateway ready: " << o.threads << " I/O thread(s), max " << o.max_inflight
                 << " in flight, locations from "
                 << (o.controller.empty() ? f.Get("locations") : "controller " + o.controller)
                 << (o.host_id.empty() ? "" : ", host " + o.host_id);
  std::printf("gateway listening on http://%s:%u\n", o.listen_host.c_str(), (*gw)->port());
  std::fflush(stdout);

  std::string sig = cli::WaitForStopSignal();
  TERN_LOG(INFO) << "gateway stopping (" << sig << ")";
  gw->reset();
  return 0;
}

}  // namespace tern::gateway
