// The foundation benchmarks (issue #2): what each section measures is described in
// docs/benchmarks.md. foundation_bench.cc parses the flags and calls these.
//
// Sections:
//   invoke       warm no-op invoke: agent in-process path vs Instance::Call vs a raw V8
//                export call vs native code; the cross-thread Agent::InvokeSync path
//   instantiate  new instance from a cached module (with and without _initialize), vs
//                raw V8 `new WebAssembly.Instance`
//   snapshot     SnapshotInto / Restore throughput at 1, 16, 64 MiB vs memcpy;
//                EncodeSnapshot / DecodeSnapshot speed and size
//   kernels      sum_filter and sha256 in wasm (Instance::Call) vs the native build
//   net          invoke over loopback TCP through the client library against the real
//                `tern agent` binary in a child process, vs a raw TCP ping-pong
//
// Thread-safety: each Run* function runs on the calling (main) thread and starts and
// joins its own threads. The first four need the process's single V8 engine, so they
// run in one process; `net` needs no V8 and is best run in a process of its own.
#pragma once

#include <string>
#include <vector>

#include "common/bench_util.h"

namespace tern::bench {

struct Options {
  bool quick = false;                 // smoke run: few iterations, < 20 s in all
  std::vector<std::string> sections;  // empty = all
  std::string source_dir;             // the tern checkout (examples/*/manifest.yaml)
  std::string wasm_dir;               // build/<preset>/wasm
  std::string tern_binary;            // build/<preset>/src/bin/tern
  std::string agent_log;              // the child agent's stderr; "" = /dev/null
  std::string json_out;               // where the run's Report goes

  bool Wants(const std::string& section) const;
  // Picks the normal or the --quick count.
  size_t N(size_t normal, size_t quick_count) const { return quick ? quick_count : normal; }
};

// Sections invoke, instantiate, snapshot, kernels (those of them Options::Wants).
// Returns false on a failure that makes the results meaningless (printed to stderr).
bool RunInProcessSections(const Options& options, Report* report);
// Section net.
bool RunNetSection(const Options& options, Report* report);

// Merges the Reports in `inputs` into <out_prefix>.json and <out_prefix>.md.
bool WriteFoundationReport(const std::vector<std::string>& inputs, const std::string& out_prefix,
                           const std::string& source_dir);

}  // namespace tern::bench
