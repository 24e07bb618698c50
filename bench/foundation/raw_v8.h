// RawV8: the floor for the in-process measurements — the same guest driven directly
// through V8's embedder API (v8.h), with no tern code in between: its own isolate and
// context, WasmModuleObject::Compile, `new WebAssembly.Instance` with stub imports,
// and Function::Call of an export in a loop.
//
// Thread-safety: Run() starts its own thread (an isolate is single-threaded) and joins
// it. V8 must already be initialized in this process (tern's engine does it:
// wasm::NewV8Engine); Run() creates and disposes its own isolate.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::bench {

struct RawV8Options {
  std::string export_name = "nop";  // signature () -> i32
  size_t warmup_calls = 10000;
  size_t calls = 100000;            // each timed on its own
  size_t batch_calls = 1000000;     // timed as one batch (mean without timer overhead)
  size_t warmup_instantiations = 100;
  size_t instantiations = 2000;     // each of: with _initialize, without
  int cpu = -1;                     // pin the thread to this CPU; < 0 = unpinned
};

struct RawV8Results {
  std::vector<int64_t> call_ns;              // per call
  double batch_mean_ns = 0;                  // per call, from one timed batch
  std::vector<int64_t> instantiate_init_ns;  // new Instance + _initialize
  std::vector<int64_t> instantiate_ns;       // new Instance only
  bool pinned = false;
};

// Compiles `wasm_bytes` (every import stubbed by a function that returns 0), then
// measures. Errors: the module does not compile or instantiate, the export is missing,
// or a call throws.
Result<RawV8Results> RunRawV8(std::string_view wasm_bytes, const RawV8Options& options);

}  // namespace tern::bench
