// Snapshot: the engine-independent state of an instance between requests.
//
// Value type. ISA-neutral by construction: linear memory bytes, the values of the
// module's mutable globals (the stack pointer among them) and the hash of the module
// it belongs to. The file format is in docs/formats/snapshot.md:
// a header with magic and version, then only the non-zero pages (zero pages are
// recorded in a bitmap), then a CRC-protected trailer.
// Thread-safety: value type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <vector>

#include "core/status.h"
#include "wasm/module_info.h"

namespace tern::wasm {

// The value of one mutable global: its index among the module's globals, its type
// (i32, i64, f32 or f64) and its bits (an i32 or f32 in the low 32 bits).
struct GlobalValue {
  uint32_t index = 0;
  ValType type = ValType::kI32;
  uint64_t bits = 0;
  bool operator==(const GlobalValue&) const = default;
};

struct Snapshot {
  std::string module_hash;                // hex SHA-256 of the module bytes
  std::string memory;                     // linear memory, a whole number of 64 KiB pages
                                          // (EncodeSnapshot pads a partial last page)
  std::optional<uint32_t> stack_pointer;  // __stack_pointer, when the module exports it
  // Every mutable global the module defines, in index order (__stack_pointer included:
  // it is also in `stack_pointer`, which older formats carry alone). Empty in a snapshot
  // written before globals were carried (format 1): restoring one is refused for a module
  // with mutable globals other than the stack pointer (Instance::Restore).
  std::vector<GlobalValue> globals;

  uint32_t pages() const { return static_cast<uint32_t>(memory.size() / 65536); }
  bool operator==(const Snapshot&) const = default;
};

// The encoding of global values shared by the snapshot file, the migration commit state
// and journal records: 16 bytes each, little-endian: u32 index, u8 type (the binary's
// value type byte), 3 bytes 0, u64 bits. Appends `globals` to `out`.
inline constexpr size_t kGlobalValueBytes = 16;
void AppendGlobalValues(const std::vector<GlobalValue>& globals, std::string* out);
// Decodes `count` entries from `bytes` (at least count × 16 bytes) into `*out`;
// kDataLoss for an unknown type, non-zero padding or indices not strictly ascending.
Status DecodeGlobalValues(std::string_view bytes, uint32_t count, std::vector<GlobalValue>* out);

// Serializes to the snapshot file format (zero pages elided).
std::string EncodeSnapshot(const Snapshot& snap);
// Parses the format; a damaged, truncated or foreign buffer is kDataLoss or
// kInvalidArgument with a message saying what is wrong.
Result<Snapshot> DecodeSnapshot(std::string_view bytes);

// CRC32C (Castagnoli) of `data`, the checksum the snapshot format uses.
uint32_t Crc32c(std::string_view data);

// Writes atomically (temporary file + rename); errors name the path.
Status WriteSnapshotFile(const std::string& path, const Snapshot& snap);
Result<Snapshot> ReadSnapshotFile(const std::string& path);

}  // namespace tern::wasm
