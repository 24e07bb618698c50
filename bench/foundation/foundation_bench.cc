// foundation_bench: the foundation benchmarks of issue #2 (see foundation.h and
// docs/benchmarks.md). bench/run.sh drives it; by hand:
//
//   foundation_bench [--quick] [--sections=invoke,instantiate,snapshot,kernels,net]
//                    [--json=FILE] [--source-dir=DIR] [--wasm-dir=DIR] [--tern=BIN]
//                    [--agent-log=FILE]
//   foundation_bench --report=OUT_PREFIX IN.json...   (writes OUT_PREFIX.{json,md})
//
// Exit code: 0 when every requested section ran, 1 when one failed, 2 on bad flags.
#include <cstdio>
#include <cstring>
#include <sstream>

#include "foundation.h"

#ifndef TERN_BENCH_SOURCE_DIR
#define TERN_BENCH_SOURCE_DIR ""
#endif
#ifndef TERN_BENCH_BUILD_DIR
#define TERN_BENCH_BUILD_DIR ""
#endif

namespace tern::bench {

bool Options::Wants(const std::string& section) const {
  if (sections.empty()) return true;
  for (const std::string& s : sections) {
    if (s == section) return true;
  }
  return false;
}

namespace {

constexpr const char* kUsage =
    "usage: foundation_bench [--quick] [--sections=a,b,...] [--json=FILE]\n"
    "                        [--source-dir=DIR] [--wasm-dir=DIR] [--tern=BIN] [--agent-log=FILE]\n"
    "       foundation_bench --report=OUT_PREFIX IN.json...\n"
    "sections: invoke instantiate snapshot kernels (one process, V8) and net (client only)\n";

bool Flag(const char* arg, const char* name, std::string* value) {
  size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

int Main(int argc, char** argv) {
  SetProgressName("foundation");
  Options o;
  o.source_dir = TERN_BENCH_SOURCE_DIR;
  const std::string build_dir = TERN_BENCH_BUILD_DIR;
  o.wasm_dir = build_dir + "/wasm";
  o.tern_binary = build_dir + "/src/bin/tern";
  std::string report_prefix, sections;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    std::string v;
    if (std::strcmp(a, "--quick") == 0)
      o.quick = true;
    else if (Flag(a, "--sections", &sections)) {
    } else if (Flag(a, "--json", &o.json_out)) {
    } else if (Flag(a, "--source-dir", &o.source_dir)) {
    } else if (Flag(a, "--wasm-dir", &o.wasm_dir)) {
    } else if (Flag(a, "--tern", &o.tern_binary)) {
    } else if (Flag(a, "--agent-log", &o.agent_log)) {
    } else if (Flag(a, "--report", &report_prefix)) {
    } else if (std::strcmp(a, "--help") == 0 || std::strcmp(a, "-h") == 0) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a[0] != '-' && !report_prefix.empty()) {
      inputs.push_back(a);
    } else {
      std::fprintf(stderr, "foundation_bench: unknown argument '%s'\n%s", a, kUsage);
      return 2;
    }
  }
  if (!report_prefix.empty()) {
    if (inputs.empty()) {
      std::fprintf(stderr, "foundation_bench: --report needs input files\n%s", kUsage);
      return 2;
    }
    bool ok = WriteFoundationReport(inputs, report_prefix, o.source_dir);
    if (ok) Progress("wrote " + report_prefix + ".md and " + report_prefix + ".json");
    return ok ? 0 : 1;
  }
  std::stringstream ss(sections);
  for (std::string s; std::getline(ss, s, ',');) {
    if (s.empty()) continue;
    if (s != "invoke" && s != "instantiate" && s != "snapshot" && s != "kernels" && s != "net") {
      std::fprintf(stderr, "foundation_bench: unknown section '%s'\n%s", s.c_str(), kUsage);
      return 2;
    }
    o.sections.push_back(s);
  }

  Report report;
  const int64_t t0 = NowNs();
  report.json()["machine"] = MachineInfo("");
  report.json()["machine"]["timer_overhead_ns"] = TimerOverheadNs();
  report.json()["mode"] = o.quick ? "quick" : "full";
  report.json()["sections_requested"] = sections.empty() ? "all" : sections;
  bool ok = true;
  const bool any_inproc =
      o.Wants("invoke") || o.Wants("instantiate") || o.Wants("snapshot") || o.Wants("kernels");
  if (any_inproc) ok = RunInProcessSections(o, &report) && ok;
  if (o.Wants("net")) ok = RunNetSection(o, &report) && ok;
  report.json()["ok"] = ok;
  report.json()["seconds"] = static_cast<double>(NowNs() - t0) / 1e9;
  if (!o.json_out.empty()) {
    if (!report.WriteTo(o.json_out)) return 1;
    Progress("wrote " + o.json_out);
  } else {
    std::puts(report.json().dump(2).c_str());
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
