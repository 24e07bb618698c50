// Write-ahead journals of durable instances, kept by a storage device's agent (the
// instance's checkpoint keeper; docs/design/migration.md "Durable instances", byte
// layouts in docs/formats/journal.md).
//
// An instance's agent appends one record per request that changed its state (the pages
// it wrote, the stack pointer, the request's dedup entry) and sends the reply only once
// the keeper said the record is durable. Records are opaque here except for their fixed
// header (sequence number, flags): the agent encodes and applies them
// (agent/journal_record.h).
//
// On disk: <dir>/seg-<n>.log, append-only segments shared by every instance this keeper
// journals, each a sequence of framed entries (magic, length, CRC-32C of the body): an
// instance's record, a new base (the records up to a sequence number are covered by a
// base checkpoint and dropped), or a drop (the instance is gone). One writer thread
// writes every entry queued meanwhile, from any number of instances, with one write()
// and one fdatasync() (group commit), then acknowledges them all. A segment whose entries
// are all dead (dropped, superseded or covered by a base) is deleted once a newer one is
// being written; the current one rotates at 64 MiB.
//
// Acceptance (the same rules on append and when the log is read back at Open):
//   - a full record (every page of the memory: a base by itself) starts the journal
//     afresh at its sequence number;
//   - a delta record must follow: seq == last + 1 (last = the journal's last record, or
//     its base); seq <= last replaces the records from seq on (a retry after an append
//     whose outcome the agent could not learn), unless that would cut into the base or
//     the last full record;
//   - anything else (a gap: this keeper missed records, e.g. it is new for the instance)
//     is refused with kFailedPrecondition, and the agent sends a full record instead.
// So a journal always reads back as: [base checkpoint at B] + records B+1..L, or a full
// record F + records F+1..L.
//
// Torn tails: a crash in the middle of a write leaves a partial entry at the end of the
// last segment. Open detects it (length or CRC), logs what it ignored and where, cuts
// the segment there, and never applies a partial entry.
//
// Thread-safety: every method may be called from any thread. Append's callback runs on
// the writer thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern::storage {

// ---- Framing: magic u32 | body length u32 | CRC-32C of the body u32 | body.
inline constexpr size_t kFrameHeaderBytes = 12;
void AppendFramed(uint32_t magic, std::string_view body, std::string* out);
// The entry at `bytes[*offset]`: its body, with *offset advanced past it; nullopt at the
// end of `bytes`. A partial entry (the bytes end inside it) is kDataLoss "truncated"; a
// wrong magic or CRC is kDataLoss too, saying which. Nothing is consumed on an error.
Result<std::optional<std::string_view>> NextFramed(uint32_t magic, std::string_view bytes,
                                                   size_t* offset);

// ---- The fixed part of a journal record (what the keeper reads; the agent encodes).
inline constexpr uint32_t kJournalRecordMagic = 0x3152'4A54;  // "TJR1"
inline constexpr uint8_t kRecordFull = 1;          // every page: a base by itself
inline constexpr uint8_t kRecordStackPointer = 2;  // the stack pointer field is set
inline constexpr uint8_t kRecordDedup = 4;         // a dedup entry follows the fixed part
inline constexpr uint8_t kRecordGlobals = 8;       // the mutable globals' values follow
inline constexpr size_t kRecordFixedBytes = 24;    // seq, flags, pad, sp, memory bytes
struct RecordHeader {
  uint64_t seq = 0;
  uint8_t flags = 0;
  bool full() const { return (flags & kRecordFull) != 0; }
};
// The header of a framed record (checks the frame's magic, length and CRC).
Result<RecordHeader> ParseRecordHeader(std::string_view framed_record);

struct JournalInfo {
  std::string instance;
  uint64_t base_seq = 0;  // records up to here are covered by a base checkpoint
  uint64_t last_seq = 0;  // the last record's (or the base's when none)
  uint64_t records = 0;
  uint64_t bytes = 0;
  std::optional<uint64_t> full_seq;  // the journal starts with a full record at this seq
};

struct JournalStats {
  uint64_t appends = 0;   // records made durable
  uint64_t refused = 0;   // records refused (gap)
  uint64_t syncs = 0;     // fdatasync calls (one per group)
  uint64_t bytes = 0;     // bytes written
  uint64_t segments = 0;  // files now
  uint64_t torn_bytes = 0;  // ignored at Open (torn tails)
};

class JournalStore {
 public:
  // Opens (creating) the journals under `dir`: reads every segment back (see Torn
  // tails above) and starts the writer thread.
  static Result<std::unique_ptr<JournalStore>> Open(const std::string& dir);
  ~JournalStore();  // stops the writer; appends queued and not written fail (kUnavailable)
  JournalStore(const JournalStore&) = delete;
  JournalStore& operator=(const JournalStore&) = delete;

  using Done = std::function<void(Status)>;
  // Appends the framed record to `instance`'s journal; `done` runs once it is durable
  // (OK), was refused (kFailedPrecondition, see Acceptance) or could not be written.
  void Append(std::string instance, std::string framed_record, Done done);
  // Records up to `seq` are covered by a base checkpoint: dropped, durably. Blocks.
  Status SetBase(const std::string& instance, uint64_t seq);
  // Forgets the instance's journal, durably. Blocks.
  Status Drop(const std::string& instance);
  // What restores the instance on top of the base checkpoint at `after`: its framed
  // records in order — from its full record if it has one (a base newer than any
  // checkpoint), else those after `after`. kNotFound if no journal.
  Result<std::string> Read(const std::string& instance, uint64_t after);
  std::optional<JournalInfo> Info(const std::string& instance);
  std::vector<JournalInfo> List();
  JournalStats stats();
  const std::string& dir() const;

  // Test hooks: every fdatasync sleeps this long first (a slow disk); segments rotate
  // at this size instead of 64 MiB.
  void SetSyncDelayForTest(int64_t ns);
  void SetSegmentBytesForTest(uint64_t bytes);

 private:
  struct Impl;
  explicit JournalStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::storage
