#include "agent/journal_record.h"

#include <fmt/format.h>

#include "core/bytes.h"
#include "core/crc32c.h"
#include "storage/journal.h"

namespace tern::agent {

void AppendJournalRecord(uint64_t seq, bool full, std::optional<uint32_t> stack_pointer,
                         const std::vector<wasm::GlobalValue>& globals, uint64_t memory_bytes, const std::vector<const DedupEntry*>& dedup,
                         const uint8_t* base, const std::vector<uint32_t>& pages, PageCodec codec,
                         std::string* out) {
  // The frame header is filled in once the body is there: the pages are encoded once,
  // straight into `out`.
  const size_t start = out->size();
  out->append(storage::kFrameHeaderBytes, '\0');
  const size_t body = out->size();
  AppendU64(out, seq);
  uint8_t flags = (full ? storage::kRecordFull : 0) |
                  (stack_pointer.has_value() ? storage::kRecordStackPointer : 0) |
                  (!dedup.empty() ? storage::kRecordDedup : 0) |
                  (!globals.empty() ? storage::kRecordGlobals : 0);
  out->push_back(static_cast<char>(flags));
  out->append(3, '\0');
  AppendU32(out, stack_pointer.value_or(0));
  AppendU64(out, memory_bytes);
  if (!dedup.empty()) {
    AppendU32(out, static_cast<uint32_t>(dedup.size()));
    for (const DedupEntry* e : dedup) {
      AppendU64(out, e->key);
      AppendU32(out, static_cast<uint32_t>(e->code));
      AppendU32(out, static_cast<uint32_t>(e->reply.size()));
      out->append(e->reply);
    }
  }
  if (!globals.empty()) {
    AppendU32(out, static_cast<uint32_t>(globals.size()));
    wasm::AppendGlobalValues(globals, out);
  }
  AppendPageBatch(base, pages, codec, out);
  const size_t n = out->size() - body;
  StoreU32(out->data() + start, storage::kJournalRecordMagic);
  StoreU32(out->data() + start + 4, static_cast<uint32_t>(n));
  StoreU32(out->data() + start + 8, Crc32c(out->data() + body, n));
}

Result<JournalRecordView> DecodeJournalRecord(std::string_view b) {
  if (b.size() < storage::kRecordFixedBytes) {
    return DataLossError(fmt::format("journal record of {} bytes is shorter than its fixed part",
                                     b.size()));
  }
  JournalRecordView r;
  r.seq = LoadU64(b.data());
  const uint8_t flags = static_cast<uint8_t>(b[8]);
  if ((flags & ~(storage::kRecordFull | storage::kRecordStackPointer | storage::kRecordDedup |
                 storage::kRecordGlobals)) != 0) {
    return InvalidArgumentError(fmt::format("journal record {}: unknown flags {:#x}", r.seq, flags));
  }
  r.full = (flags & storage::kRecordFull) != 0;
  if ((flags & storage::kRecordStackPointer) != 0) r.stack_pointer = LoadU32(b.data() + 12);
  r.memory_bytes = LoadU64(b.data() + 16);
  if (r.memory_bytes % 65536 != 0 || r.memory_bytes > (uint64_t{1} << 32)) {
    return DataLossError(fmt::format("journal record {}: memory of {} bytes is not whole wasm pages of a 32-bit memory",
                                     r.seq, r.memory_bytes));
  }
  size_t off = storage::kRecordFixedBytes;
  if ((flags & storage::kRecordDedup) != 0) {
    auto truncated = [&](uint32_t i) {
      return DataLossError(fmt::format("journal record {}: dedup entry {} truncated", r.seq, i));
    };
    if (b.size() - off < 4) return truncated(0);
    const uint32_t n = LoadU32(b.data() + off);
    off += 4;
    for (uint32_t i = 0; i < n; ++i) {
      if (b.size() - off < 16) return truncated(i);
      DedupEntry e;
      e.key = LoadU64(b.data() + off);
      e.code = static_cast<StatusCode>(LoadU32(b.data() + off + 8));
      const uint32_t len = LoadU32(b.data() + off + 12);
      off += 16;
      if (b.size() - off < len) return truncated(i);
      e.reply.assign(b.data() + off, len);
      off += len;
      r.dedup.push_back(std::move(e));
    }
  }
  if ((flags & storage::kRecordGlobals) != 0) {
    if (b.size() - off < 4) {
      return DataLossError(fmt::format("journal record {}: globals truncated", r.seq));
    }
    const uint32_t n = LoadU32(b.data() + off);
    off += 4;
    TERN_RETURN_IF_ERROR(wasm::DecodeGlobalValues(b.substr(off), n, &r.globals)
                             .WithPrefix(fmt::format("journal record {}", r.seq)));
    off += size_t{n} * wasm::kGlobalValueBytes;
    r.has_globals = true;
  }
  r.batch = b.substr(off);
  return r;
}

JournalScan ScanJournal(std::string_view bytes,
                        const std::function<Status(const JournalRecordView&)>& fn) {
  JournalScan scan;
  size_t off = 0;
  for (;;) {
    const size_t at = off;
    Result<std::optional<std::string_view>> body =
        storage::NextFramed(storage::kJournalRecordMagic, bytes, &off);
    Status bad;
    if (body.ok() && !body->has_value()) return scan;  // the end
    if (body.ok()) {
      Result<JournalRecordView> r = DecodeJournalRecord(**body);
      if (r.ok()) {
        // The pages are checked (CRC, indices) before the caller applies anything.
        Result<PageBatchStats> pages = DecodePageBatch(
            r->batch, static_cast<uint32_t>(r->memory_bytes / kMigrationPageBytes),
            [](uint32_t, const char*) {});
        bad = pages.ok() ? fn(*r) : pages.status();
        if (bad.ok()) {
          ++scan.records;
          scan.good_bytes = off;
          continue;
        }
      } else {
        bad = r.status();
      }
    } else {
      bad = body.status();
    }
    scan.tail = Status(bad.code(), fmt::format("journal record at byte {} (after {} whole records): {}",
                                               at, scan.records, bad.message()));
    return scan;
  }
}

}  // namespace tern::agent
