// placement_bench: the placement engine in simulation mode (issue #5, point 5): solve
// time of PlaceAll for every policy on a synthetic cluster of 1,000 devices and 10,000
// instances (median of a few runs), the quality of each policy at the final state
// (mean predicted p50/p99, energy per request, SLO misses, offload share) against the
// baselines, and against an exhaustive oracle on tiny inputs where brute force is
// possible. Writes placement.{json,md} into --out (default bench/results).
//
// usage: placement_bench [--quick] [--out=DIR] [--source-dir=DIR] [--seed=N]
//   --quick  fewer runs and oracle cases (the ctest smoke run)
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/bench_util.h"
#include "placement/explain.h"
#include "placement/policy.h"
#include "placement/sim.h"
#include "placement/test_cluster.h"

namespace tern::placement {
namespace {

constexpr double kGoalMs = 100;

struct Args {
  bool quick = false;
  std::string out;
  std::string source_dir = TERN_BENCH_SOURCE_DIR;
  uint64_t seed = 1;
};

struct Scale {
  std::string name;
  SimSpec spec;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string Row(const std::vector<std::string>& cells) {
  return "| " + fmt::format("{}", fmt::join(cells, " | ")) + " |\n";
}

int Run(const Args& args) {
  bench::SetProgressName("placement");
  nlohmann::json doc;
  doc["machine"] = bench::MachineInfo(args.source_dir);
  doc["quick"] = args.quick;
  std::string md = "# Placement engine in simulation (bench/placement)\n\n";
  md += fmt::format(
      "PlaceAll (greedy, lazily sorted bounded scans; src/placement/policy.h) on synthetic "
      "clusters from placement::GenerateCluster (seed {}), timed on this machine; quality "
      "from placement::Evaluate at the final state (every instance with the load of all "
      "others). Build: the benchmark's build type; {}.\n\n",
      args.seed, args.quick ? "**quick run** (fewer repetitions)" : "full run");

  // 1. Solve time and quality at scale.
  std::vector<Scale> scales = {
      {"1,000 devices / 10,000 instances (1,000 services × 10)",
       SimSpec{1000, 10000, 1000, args.seed}},
      {"1,000 devices / 10,000 instances (10,000 services × 1)",
       SimSpec{1000, 10000, 10000, args.seed}},
  };
  int runs = args.quick ? 3 : 7;
  bool all_met = true;
  doc["scales"] = nlohmann::json::array();
  for (const Scale& sc : scales) {
    bench::Progress("generating " + sc.name);
    Result<SimCluster> sim = GenerateCluster(sc.spec);
    if (!sim.ok()) {
      fmt::print(stderr, "generate: {}\n", sim.status().ToString());
      return 1;
    }
    nlohmann::json js = {{"name", sc.name},
                         {"devices", sc.spec.devices},
                         {"instances", sc.spec.instances},
                         {"services", sc.spec.services},
                         {"hosts", sim->hosts},
                         {"racks", sim->racks},
                         {"policies", nlohmann::json::array()}};
    std::map<DeviceKind, int> kinds;
    for (const DeviceView& d : sim->view.devices) ++kinds[d.kind];
    md += fmt::format(
        "## {}\n\n{} hosts in {} racks; devices: {} cpu, {} csd, {} nic. Solve "
        "time = the median of {} runs of PlaceAll (compiling the view included), as "
        "process CPU time (the 2 vCPUs are shared, so wall time is inflated by "
        "other load: see the wall columns); goal ≤ {} ms of CPU time.\n\n",
        sc.name, sim->hosts, sim->racks, kinds[DeviceKind::kCpu], kinds[DeviceKind::kCsd],
        kinds[DeviceKind::kNic], runs, kGoalMs);
    md += Row({"policy", "solve CPU p50", "wall p50", "wall min", "goal met", "placed", "unplaced",
               "SLO misses", "mean p50", "mean p99", "mean J/req", "mean moved/req", "offloaded"});
    md += Row({"---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---",
               "---"});
    std::map<Policy, Quality> quality;
    for (Policy p : AllPolicies()) {
      std::vector<double> ms, cpu_ms;
      Result<PlaceAllResult> r = InvalidArgumentError("not run");
      for (int i = 0; i < runs; ++i) {
        double c0 = bench::ProcessCpuSeconds();
        int64_t t0 = bench::NowNs();
        r = PlaceAll(sim->view, sim->services, p);
        ms.push_back((bench::NowNs() - t0) / 1e6);
        cpu_ms.push_back((bench::ProcessCpuSeconds() - c0) * 1e3);
        if (!r.ok()) {
          fmt::print(stderr, "PlaceAll {}: {}\n", PolicyName(p), r.status().ToString());
          return 1;
        }
      }
      Result<Quality> q = Evaluate(sim->view, sim->services, *r);
      if (!q.ok()) {
        fmt::print(stderr, "Evaluate: {}\n", q.status().ToString());
        return 1;
      }
      quality[p] = *q;
      double med = Median(ms);
      double cpu_med = Median(cpu_ms);
      bool met = cpu_med <= kGoalMs;
      all_met = all_met && met;
      bench::Progress(fmt::format(
          "{}: {} solve {:.1f} ms wall, {:.1f} ms CPU, p99 {}, {} J/req", sc.name, PolicyName(p),
          med, cpu_med, bench::FormatNs(q->mean_p99_us * 1e3), bench::Fmt3(q->mean_energy_j)));
      md += Row({std::string(PolicyName(p)), fmt::format("{:.1f} ms", cpu_med),
                 fmt::format("{:.1f} ms", med),
                 fmt::format("{:.1f} ms", *std::min_element(ms.begin(), ms.end())),
                 met ? "yes" : "**no**", std::to_string(q->placed), std::to_string(q->unplaced),
                 std::to_string(q->slo_misses), bench::FormatNs(q->mean_p50_us * 1e3),
                 bench::FormatNs(q->mean_p99_us * 1e3), bench::Fmt3(q->mean_energy_j) + " J",
                 bench::Fmt3(q->mean_bytes_moved / 1048576.0) + " MiB",
                 fmt::format("{:.1f}%", q->offloaded * 100)});
      js["policies"].push_back({{"policy", PolicyName(p)},
                                {"solve_ms_runs", ms},
                                {"solve_ms_median", med},
                                {"solve_cpu_ms_runs", cpu_ms},
                                {"solve_cpu_ms_median", cpu_med},
                                {"goal_ms", kGoalMs},
                                {"goal_met", met},
                                {"placed", q->placed},
                                {"unplaced", q->unplaced},
                                {"slo_misses", q->slo_misses},
                                {"overloaded", q->overloaded},
                                {"mean_p50_us", q->mean_p50_us},
                                {"mean_p99_us", q->mean_p99_us},
                                {"mean_energy_j", q->mean_energy_j},
                                {"mean_bytes_moved", q->mean_bytes_moved},
                                {"offloaded_share", q->offloaded},
                                {"max_utilization", q->max_utilization}});
    }
    // Versus the baselines.
    const Quality& host = quality[Policy::kHostOnly];
    md += "\nRelative to host-only (< 1 is better):\n\n";
    md += Row({"policy", "mean p99", "mean J/req", "SLO misses"});
    md += Row({"---", "---", "---", "---"});
    for (Policy p : AllPolicies()) {
      const Quality& q = quality[p];
      md += Row({std::string(PolicyName(p)), bench::Fmt3(q.mean_p99_us / host.mean_p99_us),
                 bench::Fmt3(q.mean_energy_j / host.mean_energy_j),
                 fmt::format("{} vs {}", q.slo_misses, host.slo_misses)});
    }
    md += "\n";
    doc["scales"].push_back(std::move(js));
  }

  // 2. Against the exhaustive oracle on tiny inputs.
  int cases = args.quick ? 5 : 30;
  SimSpec tiny{5, 6, 3, 0, 0.4, /*batch_call_edges=*/false};
  md += fmt::format(
      "## Against an exhaustive oracle ({} devices, {} instances of {} services; {} seeds)\n\n"
      "For each objective the oracle tries all {}^{} assignments and keeps the best at the "
      "final state (latency: least mean p99; energy: least mean energy; balanced: fewest SLO "
      "misses, then least energy). Ratio = policy / oracle, mean over the seeds where the "
      "policy placed everything (1.00 = optimal).\n\n",
      tiny.devices, tiny.instances, tiny.services, cases, tiny.devices, tiny.instances);
  std::map<std::pair<Policy, Policy>, std::vector<double>> ratio;
  std::map<std::pair<Policy, Policy>, int> optimal, extra_misses;
  int solved = 0;
  for (int k = 0; k < cases; ++k) {
    tiny.seed = args.seed * 1000 + static_cast<uint64_t>(k);
    Result<SimCluster> sim = GenerateCluster(tiny);
    if (!sim.ok()) return 1;
    sim->view.quotas.clear();
    bool ok = true;
    for (Policy obj : {Policy::kLatency, Policy::kEnergy, Policy::kBalanced}) {
      Result<PlaceAllResult> best = SolveExhaustive(sim->view, sim->services, obj);
      if (!best.ok()) {
        ok = false;
        break;
      }
      Quality o = *Evaluate(sim->view, sim->services, *best);
      for (Policy p : AllPolicies()) {
        Result<PlaceAllResult> r = PlaceAll(sim->view, sim->services, p);
        if (!r.ok()) return 1;
        Quality g = *Evaluate(sim->view, sim->services, *r);
        if (g.unplaced > 0) continue;
        double v = obj == Policy::kLatency ? g.mean_p99_us / o.mean_p99_us
                   : obj == Policy::kEnergy
                       ? g.mean_energy_j / o.mean_energy_j
                       : (g.slo_misses == o.slo_misses ? g.mean_energy_j / o.mean_energy_j : -1);
        if (obj == Policy::kBalanced && v < 0) {
          ++extra_misses[{obj, p}];
          continue;
        }
        ratio[{obj, p}].push_back(v);
        if (v <= 1 + 1e-9) ++optimal[{obj, p}];
      }
    }
    if (ok) ++solved;
  }
  md += Row({"objective", "policy", "mean ratio", "worst", "optimal", "more SLO misses"});
  md += Row({"---", "---", "---", "---", "---", "---"});
  doc["oracle"] = nlohmann::json::array();
  for (Policy obj : {Policy::kLatency, Policy::kEnergy, Policy::kBalanced}) {
    for (Policy p : AllPolicies()) {
      const std::vector<double>& v = ratio[{obj, p}];
      double mean = 0, worst = 0;
      for (double x : v) {
        mean += x;
        worst = std::max(worst, x);
      }
      if (!v.empty()) mean /= v.size();
      md += Row({std::string(PolicyName(obj)), std::string(PolicyName(p)),
                 v.empty() ? "—" : bench::Fmt3(mean), v.empty() ? "—" : bench::Fmt3(worst),
                 fmt::format("{}/{}", optimal[{obj, p}], v.size()),
                 obj == Policy::kBalanced ? std::to_string(extra_misses[{obj, p}]) : "—"});
      doc["oracle"].push_back({{"objective", PolicyName(obj)},
                               {"policy", PolicyName(p)},
                               {"cases", v.size()},
                               {"mean_ratio", mean},
                               {"worst_ratio", worst},
                               {"optimal", optimal[{obj, p}]},
                               {"more_slo_misses", extra_misses[{obj, p}]}});
    }
  }
  md += fmt::format("\n{} of {} tiny cases had a feasible assignment.\n\n", solved, cases);

  // 3. What `tern explain` prints, on the rack of the unit tests.
  ClusterView rack = testing::Rack();
  ServiceProfile scan = testing::Scan();
  scan.slo_p99_us = 400'000;
  md +=
      "## Example: `tern explain scan` (balanced)\n\nThe unit tests' rack: a CSD (0.25 core "
      "× 0.4 speed) behind 1 Gbit/s holding 64 MiB read per request, 0.1% returned to a "
      "gateway on another host, SLO p99 ≤ 400 ms.\n\n```\n";
  Result<Decision> d = Place(rack, scan, Policy::kBalanced);
  if (d.ok()) md += ExplainDecision(*d);
  md += "```\n";

  doc["goal_ms"] = kGoalMs;
  doc["goal_met"] = all_met;
  std::error_code ec;
  std::filesystem::create_directories(args.out, ec);
  std::string base = args.out + "/placement";
  std::ofstream json_file(base + ".json");
  json_file << doc.dump(2) << "\n";
  std::ofstream md_file(base + ".md");
  md_file << md;
  if (!json_file.good() || !md_file.good()) {
    fmt::print(stderr, "cannot write {}.{{json,md}}\n", base);
    return 1;
  }
  std::fputs(md.c_str(), stdout);
  bench::Progress("wrote " + base + ".{json,md}");
  return 0;
}

}  // namespace
}  // namespace tern::placement

int main(int argc, char** argv) {
  tern::placement::Args args;
  args.out = std::string(TERN_BENCH_SOURCE_DIR) + "/bench/results";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      args.quick = true;
    } else if (a.rfind("--out=", 0) == 0) {
      args.out = a.substr(6);
    } else if (a.rfind("--source-dir=", 0) == 0) {
      args.source_dir = a.substr(13);
    } else if (a.rfind("--seed=", 0) == 0) {
      const char* first = a.data() + 7;
      const char* last = a.data() + a.size();
      auto [ptr, ec] = std::from_chars(first, last, args.seed);
      if (ec != std::errc() || ptr != last || first == last) {
        std::fprintf(stderr, "--seed: expected an unsigned integer, got '%s'\n", first);
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: placement_bench [--quick] [--out=DIR] [--source-dir=DIR] [--seed=N]\n");
      return 2;
    }
  }
  return tern::placement::Run(args);
}
