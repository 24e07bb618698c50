// ModuleInfo: what tern reads from a wasm binary before handing it to an engine —
// imports, exports and memory limits — with validation that gives clear errors, and
// the rewrite that caps a module's memory.
//
// Pure functions over bytes; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::wasm {

enum class ExternKind : uint8_t { kFunction = 0, kTable = 1, kMemory = 2, kGlobal = 3, kTag = 4 };

struct ImportDesc {
  std::string module;
  std::string name;
  ExternKind kind;
  bool operator==(const ImportDesc&) const = default;
};

struct ExportDesc {
  std::string name;
  ExternKind kind;
  uint32_t index;
  bool operator==(const ExportDesc&) const = default;
};

struct ModuleInfo {
  std::vector<ImportDesc> imports;
  std::vector<ExportDesc> exports;
  // The module's own memory (index 0), if it defines one.
  bool has_memory = false;
  uint32_t memory_min_pages = 0;
  std::optional<uint32_t> memory_max_pages;

  const ExportDesc* FindExport(std::string_view name) const;
};

// Parses the module structure (magic, version, section order and sizes, the import,
// memory and export sections). Does not validate code bodies — the engine does.
Result<ModuleInfo> ParseModuleInfo(std::string_view wasm_bytes);

// Checks that every import is one the runtime provides (tern_v1.* and the WASI stubs)
// and that the module defines and exports `memory`. The error names each offending
// import as "module.name".
Status CheckImports(const ModuleInfo& info);

// Returns a copy of the module whose memory maximum is min(declared max, cap).
// Errors if the module's minimum already exceeds the cap.
Result<std::string> CapMemory(std::string_view wasm_bytes, uint32_t max_pages);

}  // namespace tern::wasm
