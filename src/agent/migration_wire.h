// The wire format of live migration (docs/formats/migration.md): what a source agent
// sends a target agent over the migration connection, as payloads of "$migrate"
// invoke frames. Pure encoding and decoding; no I/O.
//
//   PageBatch   a set of 4 KiB pages of linear memory: zero pages as indices only,
//               the others raw or LZ4-compressed, CRC-32C over the encoded bytes.
//   CommitState what the target needs besides memory to take over at a request
//               boundary: memory size, stack pointer, the mutable globals, the dedup
//               table.
//
// Value types; thread-safe as values are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "wasm/snapshot.h"

namespace tern::agent {

inline constexpr size_t kMigrationPageBytes = 4096;

enum class PageCodec : uint8_t {
  kRaw = 0,
  kLz4 = 1,
};
// "none" | "lz4" | "auto"; auto compresses when the link is slower than LZ4 (see
// ChooseCodec).
const char* PageCodecName(PageCodec c);

// Encodes the pages `indices` (ascending or not; each < memory_bytes / 4096) read from
// `base`. Zero pages are sent as their index only. Returns the payload.
std::string EncodePageBatch(const uint8_t* base, const std::vector<uint32_t>& indices,
                            PageCodec codec);
// Same, appended to `out` (which may hold a prefix).
void AppendPageBatch(const uint8_t* base, const std::vector<uint32_t>& indices, PageCodec codec,
                     std::string* out);
// Same, from pages already gathered contiguously: page i of `indices` is at
// data + i * 4096.
std::string EncodeGatheredPages(const char* data, const std::vector<uint32_t>& indices,
                                PageCodec codec);
// Same, appended to `out` (which may hold a prefix): no intermediate copy of the pages.
void AppendGatheredPages(const char* data, const std::vector<uint32_t>& indices, PageCodec codec,
                         std::string* out);

// Batches assembled where the pages are copied (the source's worker writes them straight
// into the frame payload): the header and the indices of a batch of n pages take
// PageBatchHeadBytes(n) bytes before its section.
size_t PageBatchHeadBytes(size_t pages);
// `out` holds, from `at`, PageBatchHeadBytes(zero.size() + data.size()) bytes of room
// and then the data pages (4 KiB each, in `data`'s order) up to its end: fills the head
// and the checksum, making it a raw batch (zero pages as indices only). `data_crc`, when
// given, is Crc32c of the data pages' bytes (computed where they were copied, while
// each page was in cache): the pages are then not read again.
void FinishRawPageBatch(std::string* out, size_t at, const std::vector<uint32_t>& zero,
                        const std::vector<uint32_t>& data,
                        std::optional<uint32_t> data_crc = std::nullopt);
// The same, for a batch assembled in a buffer that is not a string (a migration slot in
// shared memory): its head goes at `at`, the data pages follow it.
void FinishRawPageBatch(char* at, const std::vector<uint32_t>& zero,
                        const std::vector<uint32_t>& data,
                        std::optional<uint32_t> data_crc = std::nullopt);
// Appends a batch of pages already sorted into zero pages and data pages gathered at
// `data_pages` (4 KiB each, in `data`'s order). LZ4 compresses straight from there.
void AppendSplitPages(const char* data_pages, const std::vector<uint32_t>& zero,
                      const std::vector<uint32_t>& data, PageCodec codec, std::string* out);

struct PageBatchStats {
  uint32_t zero_pages = 0;
  uint32_t data_pages = 0;
  uint64_t raw_bytes = 0;  // data pages × 4096
};
// Decodes a batch and calls `apply(page, bytes)` for every page (`bytes` = nullptr for
// a zero page). Every page index must be < max_pages. A damaged, truncated or foreign
// batch is kDataLoss/kInvalidArgument with what is wrong; `apply` is then not called
// at all (the batch is checked before any page is applied).
Result<PageBatchStats> DecodePageBatch(std::string_view payload, uint32_t max_pages,
                                       const std::function<void(uint32_t, const char*)>& apply);
// An `apply` that also takes each data page's checksum, in the same pass as its copy:
// it returns Crc32c(bytes, kMigrationPageBytes, crc) for a data page (Crc32cCopyPage
// does both), anything for a zero page (bytes = nullptr; the value is not used).
using ChecksummingApply =
    std::function<uint32_t(uint32_t page, const char* bytes, uint32_t crc)>;
// DecodePageBatch for a destination that is thrown away whole when a batch is bad (a
// migration target's hidden instance): the header, the size and every index are checked
// before any page is applied, but a raw batch's checksum is taken page by page by
// `apply` as it copies each page (one read of the section from memory instead of two).
// On a checksum mismatch (kDataLoss) pages have been applied: the caller must discard
// the destination. LZ4 batches are checked first, as DecodePageBatch does (`apply`'s
// checksum of their pages is not used).
Result<PageBatchStats> ApplyPageBatchChecking(std::string_view payload, uint32_t max_pages,
                                              const ChecksummingApply& apply);

// ApplyPageBatchChecking for a raw batch of `size` bytes at `shared`, memory its writer
// (another process: a migration source) may change at any moment: the header and the
// indices are copied out before anything is checked, and every decision is taken from the
// copy, so no write into `shared` can move an index past the check. A page's bytes may
// still change between its checksum and its copy: the damage is confined to the pages the
// writer sends anyway. LZ4 batches are refused.
Result<PageBatchStats> ApplySharedPageBatch(const char* shared, size_t size, uint32_t max_pages,
                                            const ChecksummingApply& apply);

// One entry of an instance's dedup table: the answer to an idempotency key.
struct DedupEntry {
  uint64_t key = 0;
  StatusCode code = StatusCode::kOk;
  std::string reply;  // the reply, or the error message
  bool operator==(const DedupEntry&) const = default;
};

// One keeper of a durable instance's journal (docs/design/migration.md "Durable
// instances"), as the instance's agent sees it.
struct JournalKeeper {
  std::string device, tcp;  // its device and frame address "ip:port"
  // Its next record carries every page: it is new, or it did not acknowledge the last
  // record sent to it (its journal may hold that record or not).
  bool full = true;
  // It failed while the other keeper acknowledged: it is not sent records until the
  // controller assigns the keepers again (its journal stops where it failed).
  bool out = false;
  bool operator==(const JournalKeeper&) const = default;
};

struct CommitState {
  uint64_t memory_bytes = 0;
  std::optional<uint32_t> stack_pointer;
  // Every mutable global of the module (wasm::Snapshot::globals); empty from a
  // version 3 source, which did not send them.
  std::vector<wasm::GlobalValue> globals;
  std::vector<DedupEntry> dedup;  // oldest first
  uint64_t requests = 0;          // served at the source (carried over for status)
  // Durable instances: where the journal is kept (each keeper with its state), and the
  // last record number used. The target appends the next record, so that a migration
  // neither loses nor repeats journal records.
  std::vector<JournalKeeper> keepers;
  uint64_t journal_seq = 0;
  bool operator==(const CommitState&) const = default;
};
std::string EncodeCommitState(const CommitState& c);
Result<CommitState> DecodeCommitState(std::string_view payload);

}  // namespace tern::agent
