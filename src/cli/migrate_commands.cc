// `tern migrate`, `tern drain`, `tern undrain`: thin clients of the controller's
// migration and drain API (controller/controller.h).
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/cluster_commands.h"
#include "cli/flags.h"
#include "cli/main_util.h"
#include "core/clock.h"
#include "transport/json_api.h"

namespace tern::cli {

using nlohmann::json;

namespace {

// The cluster's controller client, or the exit code to return.
Result<std::unique_ptr<transport::JsonApiClient>> ControllerOf(const Flags& f) {
  TERN_ASSIGN_OR_RETURN(std::optional<ClusterRecord> c, ResolveCluster(f));
  if (!c || c->controller.empty()) {
    return FailedPreconditionError("no cluster: `tern up` first, or --controller");
  }
  Result<std::unique_ptr<transport::JsonApiClient>> r =
      transport::JsonApiClient::Connect(c->controller, "controller", std::chrono::seconds(5));
  if (!r.ok()) {
    return Status(r.status().code(),
                  fmt::format("{} (is the cluster up? `tern up TOPOLOGY`, or --controller)",
                              r.status().message()));
  }
  return r;
}

std::string Size(uint64_t b) {
  if (b >= (1u << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20));
  if (b >= (1u << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(b) / (1 << 10));
  return fmt::format("{} B", b);
}

// One line for a migration report (the controller's answer).
std::string ReportLine(const json& r) {
  if (r.contains("after_failure")) {
    return fmt::format(
        "{} moved from {} to {}: the source failed after the cut-over ({}); {} "
        "is authoritative (epoch {})",
        r.value("instance", "?"), r.value("from", "?"), r.value("to", "?"),
        r.value("after_failure", ""), r.value("to", "?"), r.value("epoch", int64_t{0}));
  }
  std::string line = fmt::format(
      "{} migrated from {} to {}: downtime {:.2f} ms, total {:.1f} ms, {} sent ({} of state), "
      "{} round(s), {} request(s) forwarded, epoch {}",
      r.value("instance", "?"), r.value("from", "?"), r.value("to", "?"),
      r.value("downtime_us", 0.0) / 1000, r.value("total_us", 0.0) / 1000,
      Size(r.value("bytes_sent", uint64_t{0})), Size(r.value("bytes_raw", uint64_t{0})),
      r.value("rounds", 0), r.value("forwarded", 0), r.value("epoch", int64_t{0}));
  if (r.value("transport", "") == "shm") {
    line += fmt::format("; over shared memory ({} through slots)",
                        Size(r.value("shm_bytes", uint64_t{0})));
  } else if (!r.value("transport_note", "").empty()) {
    line += fmt::format("; over TCP ({})", r.value("transport_note", ""));
  }
  return line;
}

}  // namespace

int CmdMigrate(int argc, char** argv) {
  Flags f("tern migrate INSTANCE --to DEVICE [flags]",
          "Moves a running instance, with its state, to another device of the cluster: the\n"
          "instance keeps its id and serves at the target from the cut-over on. Prints the\n"
          "downtime, the total time, the bytes sent and the copy rounds. If the target fails\n"
          "before the cut-over, the instance keeps serving where it was.");
  f.Add("to", "", "the device to move it to (required)");
  f.Add("mode", "", "precopy (default: copy while it serves, then the rest) or stop-and-copy");
  f.Add("transport", "",
        "how the pages travel: auto (default: shared memory to a target on the same host, "
        "else TCP; the report says which and why), tcp, or shm (fails if it cannot be had; "
        "the instance stays)");
  f.Add("max-rounds", "", "precopy: at most this many copy rounds before the freeze");
  f.Add("freeze-timeout-ms", "",
        "give up (and keep it at the source) if no request boundary comes within this long");
  f.Add("timeout-ms", "120000", "give up waiting for the controller after this long");
  AddClusterFlags(&f);
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern migrate", 1, 1); rc >= 0) return rc;
  if (f.Get("to").empty()) return UsageError(f, "tern migrate", "--to DEVICE is required");
  json req{{"to", f.Get("to")}};
  if (!f.Get("mode").empty()) req["mode"] = f.Get("mode");
  if (const std::string t = f.Get("transport"); !t.empty()) {
    if (t != "auto" && t != "tcp" && t != "shm") {
      return UsageError(f, "tern migrate", "--transport must be auto, tcp or shm");
    }
    req["transport"] = t;
  }
  for (const char* k : {"max-rounds", "freeze-timeout-ms"}) {
    if (f.Get(k).empty()) continue;
    Result<int64_t> v = f.GetInt(k, 1, 600000);
    if (!v.ok()) return UsageError(f, "tern migrate", v.status().message());
    req[std::string(k) == "max-rounds" ? "max_rounds" : "freeze_timeout_ms"] = *v;
  }
  Result<int64_t> tmo = f.GetInt("timeout-ms", 1, 3'600'000);
  if (!tmo.ok()) return UsageError(f, "tern migrate", tmo.status().message());
  auto ctl = ControllerOf(f);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  Result<std::string> r = (*ctl)->Call("POST", "/v1/instances/" + f.positional()[0] + "/migrate",
                                       req.dump(), std::chrono::milliseconds(*tmo));
  if (!r.ok()) return CommandFailed(r.status());
  json j = json::parse(*r, nullptr, false);
  if (j.is_discarded()) return CommandFailed(InternalError("the controller sent malformed JSON"));
  std::printf("%s\n", ReportLine(j).c_str());
  return 0;
}

int CmdDrain(int argc, char** argv) {
  Flags f("tern drain DEVICE",
          "Moves every instance off a device and keeps new ones off it (until `tern\n"
          "undrain`): stateful instances migrate with their state to the device the\n"
          "placement policy picks; stateless ones are replaced (the new one serves before\n"
          "the old one stops). Prints each move as it happens and a summary.");
  f.Add("timeout-ms", "600000", "stop waiting after this long (the drain goes on)");
  AddClusterFlags(&f);
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern drain", 1, 1); rc >= 0) return rc;
  Result<int64_t> tmo = f.GetInt("timeout-ms", 1, 86'400'000);
  if (!tmo.ok()) return UsageError(f, "tern drain", tmo.status().message());
  const std::string device = f.positional()[0];
  auto ctl = ControllerOf(f);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  std::string path = "/v1/devices/" + device + "/drain";
  Result<std::string> r = (*ctl)->Call("POST", path, "{}");
  if (!r.ok()) return CommandFailed(r.status());
  std::printf("draining %s: no new placements on it\n", device.c_str());
  std::fflush(stdout);
  int64_t deadline = MonoNanos() + *tmo * 1'000'000;
  size_t printed = 0;
  bool announced = false;
  for (;;) {
    Result<std::string> g = (*ctl)->Call("GET", path);
    if (!g.ok()) return CommandFailed(g.status());
    json j = json::parse(*g, nullptr, false);
    if (j.is_discarded()) return CommandFailed(InternalError("the controller sent malformed JSON"));
    if (!announced && (j.value("total", 0) > 0 || j.value("done", false))) {
      std::printf("%d instance(s) to move\n", j.value("total", 0));
      announced = true;
    }
    const json& steps = j["steps"];
    for (; printed < steps.size(); ++printed) {
      const json& s = steps[printed];
      if (!s.value("ok", false)) {
        std::printf("  %s: FAILED: %s\n", s.value("instance", "?").c_str(),
                    s.value("error", "").c_str());
      } else if (s.contains("report")) {
        std::printf("  %s\n", ReportLine(s["report"]).c_str());
      } else {
        std::printf("  %s on %s %s on %s\n", s.value("instance", "?").c_str(),
                    s.value("from", "?").c_str(), s.value("how", "").c_str(),
                    s.value("to", "?").c_str());
      }
      std::fflush(stdout);
    }
    if (j.value("done", false)) {
      int ok = 0;
      for (const json& s : steps) ok += s.value("ok", false);
      std::printf("drained %s: %d of %zu instance(s) moved%s\n", device.c_str(), ok, steps.size(),
                  ok == static_cast<int>(steps.size()) ? "" : "; the others are still on it");
      return ok == static_cast<int>(steps.size()) ? 0 : 1;
    }
    if (MonoNanos() > deadline) {
      return CommandFailed(DeadlineExceededError(
          fmt::format("the drain of {} goes on; `tern ps` shows where things are", device)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int CmdUndrain(int argc, char** argv) {
  Flags f("tern undrain DEVICE", "Lets the controller place instances on a drained device again.");
  AddClusterFlags(&f);
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern undrain", 1, 1); rc >= 0) return rc;
  auto ctl = ControllerOf(f);
  if (!ctl.ok()) return CommandFailed(ctl.status());
  Result<std::string> r = (*ctl)->Call("DELETE", "/v1/devices/" + f.positional()[0] + "/drain");
  if (!r.ok()) return CommandFailed(r.status());
  std::printf("%s takes placements again\n", f.positional()[0].c_str());
  return 0;
}

}  // namespace tern::cli
