// ModuleInfo: what tern reads from a wasm binary before handing it to an engine —
// imports, exports, globals and memory limits — with validation that gives clear
// errors, and the rewrites done before compilation: capping the memory, and exporting
// every mutable global under a reserved name so that snapshots can carry it.
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

// Value types as encoded in the binary (i32 = 0x7f, i64 = 0x7e, f32 = 0x7d, f64 = 0x7c,
// v128 = 0x7b, funcref = 0x70, externref = 0x6f).
enum class ValType : uint8_t {
  kI32 = 0x7f,
  kI64 = 0x7e,
  kF32 = 0x7d,
  kF64 = 0x7c,
  kV128 = 0x7b,
  kFuncRef = 0x70,
  kExternRef = 0x6f,
};

// A function signature from the type section.
struct FuncType {
  std::vector<ValType> params;
  std::vector<ValType> results;
  bool operator==(const FuncType&) const = default;
};

struct ImportDesc {
  std::string module;
  std::string name;
  ExternKind kind;
  // For kFunction: index into ModuleInfo::types.
  uint32_t type_index = 0;
  bool operator==(const ImportDesc&) const = default;
};

struct ExportDesc {
  std::string name;
  ExternKind kind;
  uint32_t index;
  bool operator==(const ExportDesc&) const = default;
};

// A global the module defines (its global section). Imported globals are refused
// (CheckImports), so the i-th entry is global index i.
struct GlobalDesc {
  ValType type;
  bool is_mutable = false;
  bool operator==(const GlobalDesc&) const = default;
};

// Snapshots carry a mutable global only if the engine can read and write its value
// from the host: i32, i64, f32, f64 (not v128, funcref, externref).
bool IsSnapshotableType(ValType t);
std::string_view ValTypeName(ValType t);

// Exports whose names start with this are added by ExportMutableGlobals; a module may
// not use the prefix itself (CheckImports).
inline constexpr std::string_view kReservedExportPrefix = "$tern_";
// The export name ExportMutableGlobals gives global `index`.
std::string GlobalExportName(uint32_t index);

struct ModuleInfo {
  std::vector<FuncType> types;
  std::vector<ImportDesc> imports;
  std::vector<ExportDesc> exports;
  std::vector<GlobalDesc> globals;
  // The module's own memory (index 0), if it defines one.
  bool has_memory = false;
  uint32_t memory_min_pages = 0;
  std::optional<uint32_t> memory_max_pages;
  // The lowest address an active data segment initializes, when every segment has a
  // constant offset (nullopt otherwise, or without data). A stack pointer that starts at
  // or below it means the shadow stack lies first in memory, below it (wasm-ld
  // --stack-first, the default of the SDK's toolchain): durable instances do not journal
  // what requests leave behind there (agent.cc, WrittenPages).
  std::optional<uint32_t> data_min_offset;

  const ExportDesc* FindExport(std::string_view name) const;
};

// Parses the module structure (magic, version, section order and sizes, the import,
// memory and export sections). Does not validate code bodies — the engine does.
Result<ModuleInfo> ParseModuleInfo(std::string_view wasm_bytes);

// Checks that every import is one the runtime provides (tern_v1.* and the WASI stubs),
// with the signature the runtime provides it with, and that the module defines and
// exports `memory`. The error (kInvalidArgument) names each offending import as
// "module.name" and lists what the runtime provides.
Status CheckImports(const ModuleInfo& info);

// The mutable globals whose values a snapshot cannot carry (IsSnapshotableType false),
// as an error naming each ("global 3 (v128)"); OK when there are none. A stateful
// service must have none: its state would not survive a restore, a rollback or a
// migration.
Status CheckSnapshotable(const ModuleInfo& info);

// Returns a copy of the module that also exports each of its mutable globals of a
// snapshotable type as GlobalExportName(index), so that the engine reaches every one,
// exported or not, by name (wasm has no other way in from the host). The new exports
// are appended to the export section (one is added if there is none); every other
// byte is kept. A module without such globals is returned unchanged.
Result<std::string> ExportMutableGlobals(std::string_view wasm_bytes);

// Returns a copy of the module whose memory maximum is min(declared max, cap); every
// other byte is kept. Errors (kInvalidArgument) if the module's minimum already exceeds
// the cap, if it imports its memory, or if the bytes do not parse. A module without a
// memory is returned unchanged.
Result<std::string> CapMemory(std::string_view wasm_bytes, uint32_t max_pages);

}  // namespace tern::wasm
