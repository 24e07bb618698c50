// Helpers shared by tests: where the built guests and the sources are, and the one
// V8 engine a test process may have. Test-only; thread-safe.
#pragma once

#include <string>

#include "core/status.h"

namespace tern::wasm {
class Engine;
}

namespace tern::testing {

// $TERN_WASM_DIR/<name>.wasm (set by ctest; falls back to build/dev/wasm).
std::string WasmPath(const std::string& name);
// $TERN_SOURCE_DIR/<rel>.
std::string SourcePath(const std::string& rel);
// $TERN_BIN_DIR/<name> (the built tern binaries).
std::string BinPath(const std::string& name);
// Reads a built guest; fails the calling test if it is missing.
std::string ReadWasm(const std::string& name);
// A fresh, empty temporary directory for this test.
std::string TempDir(const std::string& tag);
// The process-wide V8 engine (created on first use).
wasm::Engine* SharedEngine();

}  // namespace tern::testing
