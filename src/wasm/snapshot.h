// Snapshot: the engine-independent state of an instance between requests.
//
// Value type. ISA-neutral by construction: linear memory bytes, the stack pointer and
// the hash of the module it belongs to. The file format is in docs/formats/snapshot.md:
// a header with magic and version, then only the non-zero pages (zero pages are
// recorded in a bitmap), then a CRC-protected trailer.
// Thread-safety: value type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace tern::wasm {

struct Snapshot {
  std::string module_hash;                // hex SHA-256 of the module bytes
  std::string memory;                     // linear memory, a whole number of 64 KiB pages
                                          // (EncodeSnapshot pads a partial last page)
  std::optional<uint32_t> stack_pointer;  // __stack_pointer, when the module exports it

  uint32_t pages() const { return static_cast<uint32_t>(memory.size() / 65536); }
  bool operator==(const Snapshot&) const = default;
};

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
