// rpc_bench's result document (bench/results/rpc.json) and its Markdown rendering
// (rpc.md). rpc_bench.cc fills "results"; these functions derive the goal summary and
// the tables from it. The JSON layout:
//
//   machine, git_rev, mode ("full"|"quick"), seconds, ok, placements, payloads, notes,
//   targets:  [{name, group, description, in_flight}]
//   results:  [{target, group, payload, pinning, ok, error,
//               latency: {count, min, p50, p99, p999 (only with >= 10k samples), max,
//                         mean}                                              (ns)
//               throughput: [{in_flight, calls, seconds, calls_per_s, cpu_client_s,
//                             cpu_server_s, cores_used, calls_per_core_s}]}]
//   summary:  [{goal, placement, payload, tern, reference, ratio, ratio_label, target,
//               met}]                       (the goals; tern "not measured")
//   headroom: the same comparisons made with the limits in tern's place
//
// Thread-safety: pure functions of their arguments.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace tern::bench::rpc {

// Fills doc["summary"] and doc["headroom"] from doc["results"].
void AddGoalSummary(nlohmann::json& doc);

// rpc.md: header, the goal summary, the headroom, one table per payload and placement,
// the target list, failures.
std::string RenderMarkdown(const nlohmann::json& doc);

// The per-payload tables alone (what rpc_bench prints on stdout at the end).
std::string RenderTables(const nlohmann::json& doc);

}  // namespace tern::bench::rpc
