// Fuzzes what a durable instance's journal brings back from disk and network: records as
// a restore scans and applies them (agent/journal_record.h, with their page batches), the
// keeper's parse of a record's header (storage/journal.h), and the migration commit
// state that carries the journal's place (agent/migration_wire.h). Whatever the bytes,
// the answer is a clear status, never a crash, a hang or a huge allocation.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "agent/journal_record.h"
#include "agent/migration_wire.h"
#include "storage/journal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tern;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string mem;
  agent::JournalScan scan = agent::ScanJournal(in, [&](const agent::JournalRecordView& r) {
    if (r.memory_bytes > (64u << 20)) return ResourceExhaustedError("memory over the cap");
    if (r.memory_bytes > mem.size()) mem.resize(r.memory_bytes, '\0');
    return agent::DecodePageBatch(
               r.batch, static_cast<uint32_t>(r.memory_bytes / agent::kMigrationPageBytes),
               [&](uint32_t page, const char* bytes) {
                 char* at = mem.data() + size_t{page} * agent::kMigrationPageBytes;
                 if (bytes == nullptr) {
                   std::memset(at, 0, agent::kMigrationPageBytes);
                 } else {
                   std::memcpy(at, bytes, agent::kMigrationPageBytes);
                 }
               })
        .status();
  });
  if (scan.good_bytes > size) __builtin_trap();  // the valid prefix lies inside the input
  (void)storage::ParseRecordHeader(in);
  (void)agent::DecodeCommitState(in);
  return 0;
}
