#include "rpc_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "common/bench_util.h"
#include "rpc_target.h"

namespace tern::bench::rpc {
namespace {

using nlohmann::json;

std::string PayloadName(size_t bytes) {
  if (bytes >= 1024 && bytes % 1024 == 0) return fmt::format("{} KiB", bytes / 1024);
  return fmt::format("{} B", bytes);
}

std::string PlacementText(const std::string& pinning) {
  if (pinning == "pinned") return "pinned: both processes on cpu0 (same vCPU)";
  if (pinning == "cross") return "cross: client on cpu0, server on cpu1";
  if (pinning == "unpinned") return "unpinned: the scheduler places both processes";
  return pinning;
}

// "loopback" or "netns"; rows of files written before the netns rows are loopback.
std::string Network(const json& r) { return r.value("network", std::string("loopback")); }

// The successful result of `target` at this payload, placement and network, or nullptr.
const json* Find(const json& doc, const std::string& target, size_t payload,
                 const std::string& pinning, const std::string& network = "loopback") {
  for (const json& r : doc["results"]) {
    if (r["target"] == target && r["payload"] == payload && r["pinning"] == pinning &&
        Network(r) == network && r.value("ok", false) && r.contains("latency")) {
      return &r;
    }
  }
  return nullptr;
}

std::optional<double> P50(const json* r) {
  if (r == nullptr || !r->contains("latency") || !(*r)["latency"].contains("p50")) {
    return std::nullopt;
  }
  return (*r)["latency"]["p50"].get<double>();
}

struct Best {
  std::optional<double> value;
  std::string where;  // "grpc_unary_sync" or "grpc_callback_async, unpinned, 16 in flight"
};

// The lowest p50 among the loopback rows of `group` at this payload and placement.
Best LowestP50(const json& doc, const std::string& group, size_t payload,
               const std::string& pinning) {
  Best b;
  for (const json& r : doc["results"]) {
    if (r["group"] != group || r["payload"] != payload || r["pinning"] != pinning) continue;
    if (Network(r) != "loopback") continue;
    std::optional<double> p = P50(&r);
    if (p && (!b.value || *p < *b.value)) {
      b.value = p;
      b.where = r["target"].get<std::string>();
    }
  }
  return b;
}

// The highest calls/s per core among the loopback rows of `group` (or of `target` when
// not empty) at this payload, any placement and in-flight count.
Best HighestPerCore(const json& doc, const std::string& group, const std::string& target,
                    size_t payload) {
  Best b;
  for (const json& r : doc["results"]) {
    if (r["payload"] != payload || !r.value("ok", false) || Network(r) != "loopback") continue;
    if (target.empty() ? r["group"] != group : r["target"] != target) continue;
    for (const json& t : r.value("throughput", json::array())) {
      if (!t.contains("calls_per_core_s")) continue;
      double v = t["calls_per_core_s"].get<double>();
      if (!b.value || v > *b.value) {
        b.value = v;
        b.where = fmt::format("{}, {}, {} in flight", r["target"].get<std::string>(),
                              r["pinning"].get<std::string>(), t["in_flight"].get<int>());
      }
    }
  }
  return b;
}

std::string NsOr(std::optional<double> v, const std::string& who) {
  if (!v) return "not measured";
  return who.empty() ? FormatNs(*v) : fmt::format("{} ({})", FormatNs(*v), who);
}

std::string RateOr(std::optional<double> v, const std::string& who) {
  if (!v) return "not measured";
  return fmt::format("{}/s per core ({})", FormatCount(*v), who);
}

// One summary line. `ratio` = value / reference as the goal states it; `at_most`: the
// goal is ratio <= goal (else ratio >= goal).
json Line(const std::string& goal, const std::string& placement, const std::string& payload,
          const std::string& tern, const std::string& reference, std::optional<double> ratio,
          const std::string& ratio_label, double goal_ratio, bool at_most) {
  json j = {{"goal", goal},
            {"placement", placement},
            {"payload", payload},
            {"tern", tern},
            {"reference", reference},
            {"ratio_label", ratio_label},
            {"target", fmt::format("{} {}×", at_most ? "≤" : "≥", Fmt3(goal_ratio))}};
  j["ratio"] = ratio ? json(*ratio) : json(nullptr);
  j["met"] = ratio ? json(at_most ? *ratio <= goal_ratio : *ratio >= goal_ratio) : json(nullptr);
  return j;
}

std::optional<double> Div(std::optional<double> a, std::optional<double> b) {
  if (!a || !b || *b <= 0) return std::nullopt;
  return *a / *b;
}

std::string Esc(std::string s) {
  for (size_t i = 0; (i = s.find('|', i)) != std::string::npos; i += 2) s.replace(i, 1, "\\|");
  return s;
}

void SummaryTable(std::ostringstream& md, const json& lines, const char* first_column) {
  md << "| " << first_column
     << " | placement | payload | measured | reference | ratio | goal | met? |\n";
  md << "|---|---|---|---|---|---|---|---|\n";
  for (const json& s : lines) {
    std::string ratio = s["ratio"].is_number()
                            ? fmt::format("{}× ({})", Fmt3(s["ratio"].get<double>()),
                                          s["ratio_label"].get<std::string>())
                            : "—";
    std::string met = s["met"].is_boolean() ? (s["met"].get<bool>() ? "yes" : "**no**") : "—";
    md << fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} |\n", Esc(s["goal"]),
                      s["placement"].get<std::string>(), s["payload"].get<std::string>(),
                      Esc(s["tern"]), Esc(s["reference"]), Esc(ratio),
                      s["target"].get<std::string>(), met);
  }
}

std::vector<int> InFlightColumns(const json& doc) {
  std::set<int> s;
  for (const json& t : doc["targets"]) {
    for (const json& n : t["in_flight"]) s.insert(n.get<int>());
  }
  return {s.begin(), s.end()};
}

std::string LatencyCell(const json& lat, const char* key) {
  return lat.contains(key) ? FormatNs(lat[key].get<double>()) : "—";
}

std::string SignedNs(double ns) { return (ns < 0 ? "−" : "+") + FormatNs(ns < 0 ? -ns : ns); }

// The section on the netns rows: where they ran and netns − loopback per row, or why
// there are none.
void NetnsSection(std::ostringstream& md, const json& doc) {
  md << "\n## TCP across two network namespaces\n\n";
  const json n = doc.value("netns", json::object());
  const std::string status = n.value("status", std::string("off"));
  if (status == "skipped") {
    md << "**skipped: " << Esc(n.value("reason", std::string("?"))) << "**\n";
    return;
  }
  if (status == "off") {
    md << "Not measured: " << Esc(n.value("reason", std::string("not requested"))) << ".\n";
    return;
  }
  if (status != "ok") {
    md << "**failed**: " << Esc(n.value("reason", std::string("?"))) << "\n";
    return;
  }
  md << fmt::format(
      "The netns rows (`· netns` in the tables below) run the server in network namespace "
      "`{}` ({}) and create the client's socket in `{}` ({}), two hosts of an emulated "
      "network (`src/emu`, cluster `{}`) whose veth pairs meet at the bridge `{}` in the "
      "root namespace: every message crosses veth → bridge → veth, where a loopback row "
      "crosses the loopback device. Unshaped, no emulated latency (this kernel has no "
      "netem); same client thread, servers, placements and budgets as the loopback rows.\n\n",
      n["server"]["netns"].get<std::string>(), n["server"]["address"].get<std::string>(),
      n["client"]["netns"].get<std::string>(), n["client"]["address"].get<std::string>(),
      n.value("cluster", std::string("?")), n["bridge"]["name"].get<std::string>());
  const json overhead = doc.value("netns_overhead", json::array());
  if (overhead.empty()) {
    md << "No netns row has a loopback row to compare with.\n";
  } else {
    md << "| target | placement | payload | p50 loopback | p50 netns | **overhead p50** | "
          "p99 loopback | p99 netns | overhead p99 |\n";
    md << "|---|---|---|---|---|---|---|---|---|\n";
    std::optional<double> lo, hi;
    for (const json& o : overhead) {
      const double d = o["overhead_p50"].get<double>();
      lo = lo ? std::min(*lo, d) : d;
      hi = hi ? std::max(*hi, d) : d;
      md << fmt::format(
          "| {} | {} | {} | {} | {} | **{}** | {} | {} | {} |\n", o["target"].get<std::string>(),
          o["pinning"].get<std::string>(), PayloadName(o["payload"].get<size_t>()),
          FormatNs(o["loopback_p50"].get<double>()), FormatNs(o["netns_p50"].get<double>()),
          SignedNs(d), FormatNs(o["loopback_p99"].get<double>()),
          FormatNs(o["netns_p99"].get<double>()), SignedNs(o["overhead_p99"].get<double>()));
    }
    // The sentence: the raw TCP ping-pong is the veth/bridge cost with nothing else in it.
    std::string raw;
    for (const json& o : overhead) {
      if (o["target"] != "limit_tcp") continue;
      raw += fmt::format("{}{} {} {}", raw.empty() ? "" : ", ",
                         SignedNs(o["overhead_p50"].get<double>()),
                         PayloadName(o["payload"].get<size_t>()), o["pinning"].get<std::string>());
    }
    md << fmt::format(
        "\n**veth + bridge overhead** = netns − loopback p50, per round trip (request and "
        "reply each cross veth → bridge → veth): {}{} rows.\n",
        raw.empty() ? "" : "raw TCP (limit_tcp) " + raw + "; ",
        fmt::format("from {} to {} over all netns", SignedNs(*lo), SignedNs(*hi)));
  }
  if (n.contains("teardown")) {
    const json& t = n["teardown"];
    if (t.value("clean", false)) {
      md << fmt::format("\nThe network was torn down after the run ({} resources removed).\n",
                        t.value("removed", 0));
    } else {
      md << "\n**Teardown left**: " << Esc(t["remaining"].dump()) << "\n";
    }
  }
}

}  // namespace

void AddGoalSummary(json& doc) {
  json summary = json::array();
  json headroom = json::array();
  std::vector<std::string> placements = doc["placements"].get<std::vector<std::string>>();
  std::vector<size_t> payloads = doc["payloads"].get<std::vector<size_t>>();

  // 1. tern shm within 2× of the raw shared-memory limit.
  for (const std::string& pin : placements) {
    for (size_t payload : payloads) {
      std::optional<double> tern = P50(Find(doc, kTernShm, payload, pin));
      std::optional<double> limit = P50(Find(doc, "limit_shm", payload, pin));
      summary.push_back(Line("tern_shm p50 vs raw shm (limit_shm)", pin, PayloadName(payload),
                             NsOr(tern, ""), NsOr(limit, ""), Div(tern, limit), "tern / limit", 2.0,
                             true));
      // The same goal for the ring with a sandboxed callee and nothing else: whether a
      // V8 guest in the path leaves room for 2× at all; and tern against that floor.
      std::optional<double> v8 = P50(Find(doc, kLimitShmV8, payload, pin));
      if (v8) {
        headroom.push_back(Line("limit_shm_v8 p50 vs raw shm (limit_shm)", pin,
                                PayloadName(payload), NsOr(v8, ""), NsOr(limit, ""),
                                Div(v8, limit), "sandboxed / limit", 2.0, true));
        headroom.push_back(Line("tern_shm p50 vs the sandboxed ring (limit_shm_v8)", pin,
                                PayloadName(payload), NsOr(tern, ""), NsOr(v8, ""), Div(tern, v8),
                                "tern / sandboxed", 2.0, true));
      }
    }
  }
  // 2. tern shm at least 30× lower p50 than gRPC unary (gRPC's lower of its two).
  for (const std::string& pin : placements) {
    for (size_t payload : payloads) {
      std::optional<double> tern = P50(Find(doc, kTernShm, payload, pin));
      Best grpc = LowestP50(doc, "peer", payload, pin);
      summary.push_back(Line("tern_shm p50 vs gRPC unary p50", pin, PayloadName(payload),
                             NsOr(tern, ""), NsOr(grpc.value, grpc.where), Div(grpc.value, tern),
                             "gRPC / tern", 30.0, false));
      std::optional<double> limit = P50(Find(doc, "limit_shm", payload, pin));
      headroom.push_back(Line("limit_shm p50 vs gRPC unary p50", pin, PayloadName(payload),
                              NsOr(limit, ""), NsOr(grpc.value, grpc.where), Div(grpc.value, limit),
                              "gRPC / limit", 30.0, false));
    }
  }
  // 3. tern TCP within 1.3× of raw TCP.
  for (const std::string& pin : placements) {
    for (size_t payload : payloads) {
      std::optional<double> tern = P50(Find(doc, kTernTcp, payload, pin));
      std::optional<double> limit = P50(Find(doc, "limit_tcp", payload, pin));
      summary.push_back(Line("tern_tcp p50 vs raw TCP (limit_tcp)", pin, PayloadName(payload),
                             NsOr(tern, ""), NsOr(limit, ""), Div(tern, limit), "tern / limit", 1.3,
                             true));
    }
  }
  // 4. Small-call throughput per core: tern's best at least 10× gRPC's best.
  constexpr size_t kSmall = 64;
  bool small = false;
  for (size_t p : payloads) small = small || p == kSmall;
  if (small) {
    Best tern = HighestPerCore(doc, "tern", "", kSmall);
    Best grpc = HighestPerCore(doc, "peer", "", kSmall);
    summary.push_back(Line("64 B calls/s per CPU core: tern's best vs gRPC's best", "best of all",
                           PayloadName(kSmall), RateOr(tern.value, tern.where),
                           RateOr(grpc.value, grpc.where), Div(tern.value, grpc.value),
                           "tern / gRPC", 10.0, false));
    for (const char* limit_name : {"limit_shm", "limit_tcp"}) {
      Best limit = HighestPerCore(doc, "", limit_name, kSmall);
      headroom.push_back(Line(
          fmt::format("64 B calls/s per CPU core: {} vs gRPC's best", limit_name), "best of all",
          PayloadName(kSmall), RateOr(limit.value, limit.where), RateOr(grpc.value, grpc.where),
          Div(limit.value, grpc.value), "limit / gRPC", 10.0, false));
    }
  }
  doc["summary"] = std::move(summary);
  doc["headroom"] = std::move(headroom);
}

void AddNetnsOverhead(json& doc) {
  json out = json::array();
  for (const json& r : doc["results"]) {
    if (Network(r) != "netns" || !r.value("ok", false) || !r.contains("latency")) continue;
    const std::string target = r["target"].get<std::string>();
    const std::string pin = r["pinning"].get<std::string>();
    const size_t payload = r["payload"].get<size_t>();
    const json* loop = Find(doc, target, payload, pin, "loopback");
    if (loop == nullptr) continue;
    const json& a = (*loop)["latency"];
    const json& b = r["latency"];
    out.push_back({{"target", target},
                   {"payload", payload},
                   {"pinning", pin},
                   {"loopback_p50", a["p50"]},
                   {"netns_p50", b["p50"]},
                   {"overhead_p50", b["p50"].get<double>() - a["p50"].get<double>()},
                   {"loopback_p99", a["p99"]},
                   {"netns_p99", b["p99"]},
                   {"overhead_p99", b["p99"].get<double>() - a["p99"].get<double>()}});
  }
  doc["netns_overhead"] = std::move(out);
}

std::string RenderTables(const json& doc) {
  std::ostringstream md;
  const std::vector<int> columns = InFlightColumns(doc);
  for (const json& payload_j : doc["payloads"]) {
    const size_t payload = payload_j.get<size_t>();
    md << "\n## " << PayloadName(payload) << " payload\n";
    for (const json& pin_j : doc["placements"]) {
      const std::string pin = pin_j.get<std::string>();
      md << "\n### " << PlacementText(pin) << "\n\n";
      md << "| target | group | n | p50 | p99 | p99.9 |";
      for (int n : columns)
        md << fmt::format(" calls/s, {} in flight | per core (cores used) |", n);
      md << "\n|---|---|---|---|---|---|";
      for (size_t i = 0; i < columns.size(); ++i) md << "---|---|";
      md << "\n";
      for (const json& r : doc["results"]) {
        if (r["payload"] != payload || r["pinning"] != pin) continue;
        md << fmt::format("| {}{} | {} |", r["target"].get<std::string>(),
                          Network(r) == "netns" ? " · **netns**" : "",
                          r["group"].get<std::string>());
        if (!r.value("ok", false) && !r.contains("latency")) {
          md << fmt::format(" **failed**: {} |", Esc(r.value("error", "?")));
          md << "\n";
          continue;
        }
        const json& lat = r["latency"];
        md << fmt::format(" {} | {} | {} | {} |", lat["count"].get<size_t>(),
                          LatencyCell(lat, "p50"), LatencyCell(lat, "p99"),
                          LatencyCell(lat, "p999"));
        for (int n : columns) {
          const json* t = nullptr;
          if (r.contains("throughput")) {
            for (const json& x : r["throughput"]) {
              if (x["in_flight"] == n) t = &x;
            }
          }
          if (t == nullptr) {
            md << " — | — |";
          } else {
            md << fmt::format(" {} | {} ({}) |", FormatCount((*t)["calls_per_s"].get<double>()),
                              FormatCount((*t)["calls_per_core_s"].get<double>()),
                              Fmt3((*t)["cores_used"].get<double>()));
          }
        }
        if (!r.value("ok", false))
          md << fmt::format(" **failed later**: {}", Esc(r.value("error", "?")));
        md << "\n";
      }
    }
  }
  return md.str();
}

std::string RenderMarkdown(const json& doc) {
  std::ostringstream md;
  const json& m = doc["machine"];
  md << "# tern RPC benchmark: physical limits, tern, gRPC\n\n";
  md << "Generated by `rpc_bench` (`bench/run.sh`); what each row measures and how to read "
        "it: [docs/benchmarks.md](../../docs/benchmarks.md#rpc-benchmark-benchrpc).\n\n";
  md << fmt::format("- git {} · {} · {} vCPUs · kernel {} · clocksource {}\n",
                    doc.value("git_rev", "?"), m.value("cpu_model", "?"), m.value("online_cpus", 0),
                    m.value("kernel", "?"), m.value("clocksource", "?"));
  md << fmt::format(
      "- {} run at {}, took {:.1f} s, {}; load average before: {}; "
      "clock_gettime costs {} (included once in every latency sample)\n",
      doc.value("mode", "?"), m.value("date_utc", "?"), doc.value("seconds", 0.0),
      doc.value("ok", false) ? "ok" : "**SOME TARGETS FAILED**", m.value("loadavg", "?"),
      FormatNs(m.value("timer_overhead_ns", 0.0)));
  for (const json& n : doc["notes"]) md << "- " << n.get<std::string>() << "\n";

  md << "\n## The issue's goals\n\n";
  SummaryTable(md, doc["summary"], "goal");
  md << "\ngRPC's p50 is the lower of grpc_unary_sync and grpc_callback_async (1 in flight) in the "
        "same placement; per core = calls/s ÷ CPU cores both processes consumed.\n";
  md << "\n## Headroom: the same comparisons with the physical limits in tern's place\n\n";
  SummaryTable(md, doc["headroom"], "comparison");
  md << "\nWhat any transport on this machine could reach at best; a goal the limit itself "
        "misses cannot be met by tern in that placement.\n";

  NetnsSection(md, doc);

  md << RenderTables(doc);
  md << "\nn = latency samples (one call in flight); p99.9 only with ≥ " << kMinSamplesForP999
     << " samples. calls/s = completed calls ÷ wall time; per core = calls ÷ (client + server "
        "CPU seconds); cores used = (client + server CPU seconds) ÷ wall time.\n";

  md << "\n## Targets\n\n| target | group | what |\n|---|---|---|\n";
  for (const json& t : doc["targets"]) {
    md << fmt::format("| {} | {} | {} |\n", t["name"].get<std::string>(),
                      t["group"].get<std::string>(), Esc(t["description"]));
  }
  bool any_failed = false;
  for (const json& r : doc["results"]) any_failed = any_failed || !r.value("ok", false);
  if (any_failed) {
    md << "\n## Failures\n\n";
    for (const json& r : doc["results"]) {
      if (r.value("ok", false)) continue;
      md << fmt::format("- {} {} {}{}: {}\n", r["target"].get<std::string>(),
                        PayloadName(r["payload"].get<size_t>()), r["pinning"].get<std::string>(),
                        Network(r) == "netns" ? " netns" : "", Esc(r.value("error", "?")));
    }
  }
  return md.str();
}

}  // namespace tern::bench::rpc
