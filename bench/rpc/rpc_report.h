// rpc_bench's result document (bench/results/rpc.json) and its Markdown rendering
// (rpc.md). rpc_bench.cc fills "results"; these functions derive the goal summary and
// the tables from it. The JSON layout:
//
//   machine, git_rev, mode ("full"|"quick"), seconds, ok, placements, payloads, notes,
//   networks: ["loopback", "netns"] (what was asked for)
//   targets:  [{name, group, description, in_flight, netns}]
//   results:  [{target, group, payload, pinning, network ("loopback"|"netns"), ok, error,
//               latency: {count, min, p50, p99, p999 (only with >= 10k samples), max,
//                         mean}                                              (ns)
//               throughput: [{in_flight, calls, seconds, calls_per_s, cpu_client_s,
//                             cpu_server_s, cores_used, calls_per_core_s}]}]
//   summary:  [{goal, placement, payload, tern, reference, ratio, ratio_label, target,
//               met}]                       (the goals; tern "not measured")
//   headroom: the same comparisons made with the limits in tern's place
//             (summary and headroom use the loopback rows only)
//   netns:    {status: "ok"|"skipped"|"off"|"failed", reason, cluster, state_dir,
//              bridge: {name, address}, server: {netns, address}, client: {netns, address},
//              teardown: {clean, removed, remaining}}
//   netns_overhead: [{target, payload, pinning, loopback_p50, netns_p50, overhead_p50,
//                     loopback_p99, netns_p99, overhead_p99}]   (ns; netns − loopback,
//                     for each netns row whose loopback row succeeded)
//
// A result without "network" (older files) is a loopback row.
// Thread-safety: pure functions of their arguments.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace tern::bench::rpc {

// Fills doc["summary"] and doc["headroom"] from doc["results"].
void AddGoalSummary(nlohmann::json& doc);

// Fills doc["netns_overhead"] from doc["results"].
void AddNetnsOverhead(nlohmann::json& doc);

// rpc.md: header, the goal summary, the headroom, the netns section (or why it was
// skipped), one table per payload and placement, the target list, failures.
std::string RenderMarkdown(const nlohmann::json& doc);

// The per-payload tables alone (what rpc_bench prints on stdout at the end).
std::string RenderTables(const nlohmann::json& doc);

}  // namespace tern::bench::rpc
