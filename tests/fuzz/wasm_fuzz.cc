// libFuzzer target: tern's wasm binary reader, its rewriters (memory cap, exports of the
// mutable globals) and the snapshot decoder must reject garbage with a Status, never
// crash or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string>

#include "wasm/module_info.h"
#include "wasm/snapshot.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  tern::Result<tern::wasm::ModuleInfo> info = tern::wasm::ParseModuleInfo(bytes);
  if (info.ok()) {
    (void)tern::wasm::CheckImports(*info);
    tern::Result<std::string> capped = tern::wasm::CapMemory(bytes, 16);
    // A capped module must still parse, with its maximum within the cap.
    if (capped.ok()) {
      tern::Result<tern::wasm::ModuleInfo> again = tern::wasm::ParseModuleInfo(*capped);
      if (!again.ok()) __builtin_trap();
      if (again->has_memory && (!again->memory_max_pages || *again->memory_max_pages > 16)) {
        __builtin_trap();
      }
    }
    (void)tern::wasm::CheckSnapshotable(*info);
    // With its mutable globals exported it must still parse, with the same globals and
    // one export more per mutable global of a snapshotable type.
    tern::Result<std::string> exported = tern::wasm::ExportMutableGlobals(bytes);
    if (exported.ok()) {
      tern::Result<tern::wasm::ModuleInfo> again = tern::wasm::ParseModuleInfo(*exported);
      if (!again.ok() || again->globals != info->globals) __builtin_trap();
      size_t added = 0;
      for (const tern::wasm::GlobalDesc& g : info->globals) {
        added += g.is_mutable && tern::wasm::IsSnapshotableType(g.type);
      }
      if (again->exports.size() != info->exports.size() + added) __builtin_trap();
    }
  }
  tern::Result<tern::wasm::Snapshot> snap = tern::wasm::DecodeSnapshot(bytes);
  if (snap.ok() && snap->memory.size() % 65536 != 0) __builtin_trap();
  return 0;
}
