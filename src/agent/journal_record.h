// Journal records of durable instances (docs/formats/journal.md): what an agent appends
// to the instance's journal on its keeper before it sends a reply, and what a restore
// applies on top of the base checkpoint. Pure encoding, decoding and scanning; no I/O.
// The keeper reads only the fixed header (storage/journal.h).
//
//   framed record = magic "TJR1" | body length u32 | CRC-32C of the body u32 | body
//   body          = seq u64 | flags u8 | 0 u8 × 3 | stack pointer u32 | memory bytes u64
//                   | [dedup entries (flag 4): count u32, then count × (key u64 | code u32
//                      | length u32 | reply)]
//                   | [globals (flag 8): count u32, then count × 16 bytes (wasm/snapshot.h:
//                      the value of every mutable global after the request)]
//   A delta record carries the dedup entry of its request (if it had a key); a full
//   record (flag 1: every page; the journal starts afresh there) the whole dedup table,
//   oldest first, so that the journal alone restores the instance.
//                   | page batch (docs/formats/migration.md: zero pages as indices,
//                     LZ4 or raw, its own CRC)
//
// Value types; thread-safe as values are.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/migration_wire.h"
#include "core/status.h"

namespace tern::agent {

struct JournalRecordView {
  uint64_t seq = 0;
  bool full = false;  // every page of the memory: a base by itself
  std::optional<uint32_t> stack_pointer;
  uint64_t memory_bytes = 0;
  std::vector<DedupEntry> dedup;  // oldest first
  // Flag 8: the value of every mutable global (absent from older records, and from a
  // module without mutable globals).
  bool has_globals = false;
  std::vector<wasm::GlobalValue> globals;
  std::string_view batch;  // the page batch
};

// Appends the framed record with pages `pages` (indices of 4 KiB pages, each below
// memory_bytes / 4096) read from `base`, the dedup entries `dedup` (none: empty) and
// the values of the module's mutable globals `globals` (none: empty).
void AppendJournalRecord(uint64_t seq, bool full, std::optional<uint32_t> stack_pointer,
                         const std::vector<wasm::GlobalValue>& globals, uint64_t memory_bytes, const std::vector<const DedupEntry*>& dedup,
                         const uint8_t* base, const std::vector<uint32_t>& pages, PageCodec codec,
                         std::string* out);

// Decodes one record's body (after the frame's checks). kDataLoss/kInvalidArgument on
// damage; the page batch is checked when applied (DecodePageBatch).
Result<JournalRecordView> DecodeJournalRecord(std::string_view body);

struct JournalScan {
  size_t records = 0;     // whole, valid records passed to the callback
  size_t good_bytes = 0;  // their bytes: the valid prefix
  Status tail;            // why the scan stopped early (a torn or damaged tail); OK at the end
};
// Calls `fn` on each whole record of concatenated framed records, in order, and stops
// at the first that is partial, damaged or that `fn` refuses (a non-OK status): nothing
// of it or after it is passed on. Every record's page batch is verified (CRC, size)
// before `fn` sees it.
JournalScan ScanJournal(std::string_view bytes,
                        const std::function<Status(const JournalRecordView&)>& fn);

}  // namespace tern::agent
