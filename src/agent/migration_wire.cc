#include "agent/migration_wire.h"

#include <lz4.h>

#include <cstring>

#include "core/bytes.h"
#include "core/crc32c.h"
#include "fmt/format.h"

namespace tern::agent {

namespace {

constexpr uint32_t kBatchMagic = 0x42504D54;   // "TMPB"
constexpr uint32_t kCommitMagic = 0x43504D54;  // "TMPC"
constexpr uint8_t kWireVersion = 2;  // page batches (also in journal records on keepers' disks)
// 2: the commit state carries the journal's place; 3: both keepers of the journal;
// 4: the values of the mutable globals. Version 3 is still read (no globals: the target
// refuses it for a module that has some besides the stack pointer, so nothing is lost
// silently); older ones are refused.
constexpr uint8_t kCommitVersion = 4;
constexpr size_t kBatchHeader = 24;



// Writes the header and the page indices at out[at, at + PageBatchHeadBytes(n)) of a
// batch whose section (`section` bytes) follows them, and its checksum; `section_crc`:
// the section's Crc32c when the caller has it (then the section is not read again).
void FillHead(char* h, const std::vector<uint32_t>& zero, const std::vector<uint32_t>& data,
              PageCodec codec, size_t section, std::optional<uint32_t> section_crc = std::nullopt) {
  StoreU32(h, kBatchMagic);
  h[4] = static_cast<char>(kWireVersion);
  h[5] = static_cast<char>(codec);
  h[6] = h[7] = 0;
  StoreU32(h + 8, static_cast<uint32_t>(zero.size()));
  StoreU32(h + 12, static_cast<uint32_t>(data.size()));
  StoreU32(h + 16, static_cast<uint32_t>(section));
  char* idx = h + kBatchHeader;
  for (const std::vector<uint32_t>* list : {&zero, &data}) {
    for (uint32_t page : *list) {
      StoreU32(idx, page);
      idx += 4;
    }
  }
  const size_t head = PageBatchHeadBytes(zero.size() + data.size());
  if (section_crc.has_value()) {
    StoreU32(h + 20, Crc32cCombine(Crc32c(h + kBatchHeader, head - kBatchHeader), *section_crc,
                                   section));
  } else {
    StoreU32(h + 20, Crc32c(h + kBatchHeader, head - kBatchHeader + section));
  }
}

// Appends the batch of pages already split into zero and data pages; `data_at(k)` gives
// the bytes of data[k], and `contiguous` (or null) all of them in a row. Data pages are
// copied once, straight into `out` (raw), or compressed from where they are (LZ4).
template <typename DataAt>
void AppendSplit(const std::vector<uint32_t>& zero, const std::vector<uint32_t>& data,
                 DataAt data_at, const char* contiguous, PageCodec codec, std::string* out) {
  const size_t at = out->size();
  const size_t raw_bytes = data.size() * kMigrationPageBytes;
  const size_t section_at = at + PageBatchHeadBytes(zero.size() + data.size());
  out->reserve(section_at + raw_bytes);
  out->resize(section_at);
  PageCodec used = PageCodec::kRaw;
  if (codec == PageCodec::kLz4 && raw_bytes > 0) {
    const char* src = contiguous;
    if (src == nullptr) {
      thread_local std::string raw;  // capacity reused: no page faults after the first batch
      raw.resize(raw_bytes);
      for (size_t k = 0; k < data.size(); ++k) {
        std::memcpy(raw.data() + k * kMigrationPageBytes, data_at(k), kMigrationPageBytes);
      }
      src = raw.data();
    }
    const int bound = LZ4_compressBound(static_cast<int>(raw_bytes));
    out->resize(section_at + static_cast<size_t>(bound));
    int n = LZ4_compress_default(src, out->data() + section_at, static_cast<int>(raw_bytes), bound);
    if (n > 0 && static_cast<size_t>(n) < raw_bytes) {
      out->resize(section_at + static_cast<size_t>(n));
      used = PageCodec::kLz4;
    } else {
      out->resize(section_at);  // incompressible: send as is
      out->append(src, raw_bytes);
    }
  } else {
    out->resize(section_at + raw_bytes);
    for (size_t k = 0; k < data.size(); ++k) {
      std::memcpy(out->data() + section_at + k * kMigrationPageBytes, data_at(k),
                  kMigrationPageBytes);
    }
  }
  FillHead(out->data() + at, zero, data, used, out->size() - section_at);
}

// Appends the batch to `out`; `page_at(i)` gives the bytes of indices[i].
template <typename PageAt>
void EncodeInto(const std::vector<uint32_t>& indices, PageCodec codec, PageAt page_at,
                std::string* out) {
  std::vector<uint32_t> zero, data;
  std::vector<size_t> data_pos;
  for (size_t i = 0; i < indices.size(); ++i) {
    if (IsZeroBlock(page_at(i), kMigrationPageBytes)) {
      zero.push_back(indices[i]);
    } else {
      data.push_back(indices[i]);
      data_pos.push_back(i);
    }
  }
  AppendSplit(
      zero, data, [&](size_t k) { return page_at(data_pos[k]); }, nullptr, codec, out);
}

}  // namespace

const char* PageCodecName(PageCodec c) {
  switch (c) {
    case PageCodec::kRaw:
      return "none";
    case PageCodec::kLz4:
      return "lz4";
  }
  return "unknown";
}

size_t PageBatchHeadBytes(size_t pages) { return kBatchHeader + 4 * pages; }

void FinishRawPageBatch(std::string* out, size_t at, const std::vector<uint32_t>& zero,
                        const std::vector<uint32_t>& data, std::optional<uint32_t> data_crc) {
  FinishRawPageBatch(out->data() + at, zero, data, data_crc);
}

void FinishRawPageBatch(char* at, const std::vector<uint32_t>& zero,
                        const std::vector<uint32_t>& data, std::optional<uint32_t> data_crc) {
  FillHead(at, zero, data, PageCodec::kRaw, data.size() * kMigrationPageBytes, data_crc);
}

void AppendSplitPages(const char* data_pages, const std::vector<uint32_t>& zero,
                      const std::vector<uint32_t>& data, PageCodec codec, std::string* out) {
  AppendSplit(
      zero, data, [&](size_t k) { return data_pages + k * kMigrationPageBytes; }, data_pages, codec,
      out);
}

std::string EncodePageBatch(const uint8_t* base, const std::vector<uint32_t>& indices,
                            PageCodec codec) {
  std::string out;
  AppendPageBatch(base, indices, codec, &out);
  return out;
}

void AppendPageBatch(const uint8_t* base, const std::vector<uint32_t>& indices, PageCodec codec,
                     std::string* out) {
  EncodeInto(
      indices, codec,
      [&](size_t i) {
        return reinterpret_cast<const char*>(base) + size_t{indices[i]} * kMigrationPageBytes;
      },
      out);
}

std::string EncodeGatheredPages(const char* data, const std::vector<uint32_t>& indices,
                                PageCodec codec) {
  std::string out;
  AppendGatheredPages(data, indices, codec, &out);
  return out;
}

void AppendGatheredPages(const char* data, const std::vector<uint32_t>& indices, PageCodec codec,
                         std::string* out) {
  EncodeInto(indices, codec, [&](size_t i) { return data + i * kMigrationPageBytes; }, out);
}

namespace {

// A page batch whose header, size and page indices were checked (not its checksum).
struct ParsedBatch {
  PageCodec codec;
  uint64_t zero, data, section;
  const char* idx;  // zero + data indices
  const char* sec;  // the section: `section` bytes
};

// `p` holds the header and the indices, followed by `after` more bytes (the section
// where it is not in `p`).
Result<ParsedBatch> ParseHead(std::string_view p, uint64_t after, uint32_t max_pages) {
  if (p.size() < kBatchHeader) {
    return InvalidArgumentError(
        fmt::format("page batch of {} bytes is shorter than its {} byte header", p.size(),
                    kBatchHeader));
  }
  if (LoadU32(p.data()) != kBatchMagic) return InvalidArgumentError("not a page batch (bad magic)");
  if (static_cast<uint8_t>(p[4]) != kWireVersion) {
    return InvalidArgumentError(
        fmt::format("page batch version {}, this agent reads {}", static_cast<int>(p[4]),
                    static_cast<int>(kWireVersion)));
  }
  ParsedBatch b;
  b.codec = static_cast<PageCodec>(p[5]);
  if (b.codec != PageCodec::kRaw && b.codec != PageCodec::kLz4) {
    return InvalidArgumentError(fmt::format("page batch codec {} unknown", static_cast<int>(p[5])));
  }
  b.zero = LoadU32(p.data() + 8);
  b.data = LoadU32(p.data() + 12);
  b.section = LoadU32(p.data() + 16);
  const uint64_t want = kBatchHeader + 4 * (b.zero + b.data) + b.section;
  if (want != p.size() + after) {
    return DataLossError(
        fmt::format("page batch is {} bytes, its header says {}", p.size() + after, want));
  }
  if (want - b.section > p.size()) return DataLossError("page batch head truncated");
  if (b.codec == PageCodec::kRaw && b.section != b.data * kMigrationPageBytes) {
    return DataLossError(
        fmt::format("page batch carries {} bytes for {} pages", b.section, b.data));
  }
  b.idx = p.data() + kBatchHeader;
  for (uint64_t i = 0; i < b.zero + b.data; ++i) {
    uint32_t page = LoadU32(b.idx + 4 * i);
    if (page >= max_pages) {
      return InvalidArgumentError(
          fmt::format("page {} is beyond the memory ({} pages)", page, max_pages));
    }
  }
  b.sec = b.idx + 4 * (b.zero + b.data);
  return b;
}

Result<ParsedBatch> ParseBatch(std::string_view p, uint32_t max_pages) {
  return ParseHead(p, 0, max_pages);
}

Status ChecksumMismatch() { return DataLossError("page batch checksum mismatch"); }

}  // namespace

Result<PageBatchStats> DecodePageBatch(std::string_view p, uint32_t max_pages,
                                       const std::function<void(uint32_t, const char*)>& apply) {
  TERN_ASSIGN_OR_RETURN(ParsedBatch b, ParseBatch(p, max_pages));
  if (Crc32c(p.data() + kBatchHeader, p.size() - kBatchHeader) != LoadU32(p.data() + 20)) {
    return ChecksumMismatch();
  }
  thread_local std::string decompressed;  // capacity reused across batches
  const char* pages = b.sec;
  const uint64_t raw_bytes = b.data * kMigrationPageBytes;
  if (b.codec == PageCodec::kLz4) {
    if (raw_bytes > (1u << 30)) return InvalidArgumentError("page batch too large");
    decompressed.resize(raw_bytes);
    int n = LZ4_decompress_safe(b.sec, decompressed.data(), static_cast<int>(b.section),
                                static_cast<int>(raw_bytes));
    if (n < 0 || static_cast<uint64_t>(n) != raw_bytes) {
      return DataLossError("page batch does not decompress to its pages");
    }
    pages = decompressed.data();
  }
  for (uint64_t i = 0; i < b.zero; ++i) apply(LoadU32(b.idx + 4 * i), nullptr);
  for (uint64_t i = 0; i < b.data; ++i) {
    apply(LoadU32(b.idx + 4 * (b.zero + i)), pages + i * kMigrationPageBytes);
  }
  return PageBatchStats{static_cast<uint32_t>(b.zero), static_cast<uint32_t>(b.data), raw_bytes};
}

Result<PageBatchStats> ApplyPageBatchChecking(std::string_view p, uint32_t max_pages,
                                              const ChecksummingApply& apply) {
  TERN_ASSIGN_OR_RETURN(ParsedBatch b, ParseBatch(p, max_pages));
  if (b.codec != PageCodec::kRaw) {
    return DecodePageBatch(p, max_pages, [&apply](uint32_t page, const char* bytes) {
      (void)apply(page, bytes, 0);
    });
  }
  // The indices, then each data page as it is applied: `apply` copies it and takes its
  // checksum in one pass, so the section is read from memory once, not twice.
  uint32_t crc = Crc32c(b.idx, 4 * (b.zero + b.data));
  for (uint64_t i = 0; i < b.zero; ++i) (void)apply(LoadU32(b.idx + 4 * i), nullptr, 0);
  for (uint64_t i = 0; i < b.data; ++i) {
    crc = apply(LoadU32(b.idx + 4 * (b.zero + i)), b.sec + i * kMigrationPageBytes, crc);
  }
  if (crc != LoadU32(p.data() + 20)) return ChecksumMismatch();
  return PageBatchStats{static_cast<uint32_t>(b.zero), static_cast<uint32_t>(b.data),
                        b.data * kMigrationPageBytes};
}

Result<PageBatchStats> ApplySharedPageBatch(const char* shared, size_t size, uint32_t max_pages,
                                            const ChecksummingApply& apply) {
  if (size < kBatchHeader) return ParseBatch(std::string_view(shared, size), max_pages).status();
  // The head is copied out once and everything is decided from the copy: the writer may
  // change the shared bytes at any time, and indices read twice could differ from the
  // ones checked.
  thread_local std::string head;
  head.assign(shared, kBatchHeader);
  const uint64_t pages = uint64_t{LoadU32(head.data() + 8)} + LoadU32(head.data() + 12);
  const uint64_t head_bytes = kBatchHeader + 4 * pages;
  if (head_bytes > size) {
    return DataLossError(
        fmt::format("page batch is {} bytes, its head says {} pages", size, pages));
  }
  head.assign(shared, head_bytes);
  if (static_cast<PageCodec>(head[5]) != PageCodec::kRaw) {
    return InvalidArgumentError("a page batch in shared memory must be raw (codec 0)");
  }
  // Checked as a whole batch of `size` bytes whose section follows the head.
  const uint64_t section = LoadU32(head.data() + 16);
  if (head_bytes + section != size) {
    return DataLossError(
        fmt::format("page batch is {} bytes, its header says {}", size, head_bytes + section));
  }
  std::string_view whole(head.data(), head_bytes);
  TERN_ASSIGN_OR_RETURN(ParsedBatch b, ParseHead(whole, section, max_pages));
  const char* sec = shared + head_bytes;
  uint32_t crc = Crc32c(b.idx, 4 * (b.zero + b.data));
  for (uint64_t i = 0; i < b.zero; ++i) (void)apply(LoadU32(b.idx + 4 * i), nullptr, 0);
  for (uint64_t i = 0; i < b.data; ++i) {
    crc = apply(LoadU32(b.idx + 4 * (b.zero + i)), sec + i * kMigrationPageBytes, crc);
  }
  if (crc != LoadU32(head.data() + 20)) return ChecksumMismatch();
  return PageBatchStats{static_cast<uint32_t>(b.zero), static_cast<uint32_t>(b.data),
                        b.data * kMigrationPageBytes};
}

std::string EncodeCommitState(const CommitState& c) {
  std::string out;
  AppendU32(&out, kCommitMagic);
  out.push_back(static_cast<char>(kCommitVersion));
  out.append(3, '\0');
  AppendU64(&out, c.memory_bytes);
  out.push_back(c.stack_pointer.has_value() ? 1 : 0);
  AppendU32(&out, c.stack_pointer.value_or(0));
  AppendU64(&out, c.requests);
  AppendU64(&out, c.journal_seq);
  out.push_back(static_cast<char>(c.keepers.size()));
  for (const JournalKeeper& k : c.keepers) {
    out.push_back(static_cast<char>((k.full ? 1 : 0) | (k.out ? 2 : 0)));
    for (const std::string* s : {&k.device, &k.tcp}) {
      AppendU32(&out, static_cast<uint32_t>(s->size()));
      out += *s;
    }
  }
  AppendU32(&out, static_cast<uint32_t>(c.dedup.size()));
  for (const DedupEntry& e : c.dedup) {
    AppendU64(&out, e.key);
    AppendU32(&out, static_cast<uint32_t>(e.code));
    AppendU32(&out, static_cast<uint32_t>(e.reply.size()));
    out += e.reply;
  }
  AppendU32(&out, static_cast<uint32_t>(c.globals.size()));
  wasm::AppendGlobalValues(c.globals, &out);
  AppendU32(&out, Crc32c(out.data(), out.size()));
  return out;
}

Result<CommitState> DecodeCommitState(std::string_view p) {
  constexpr size_t kFixed = 4 + 4 + 8 + 1 + 4 + 8;
  if (p.size() < kFixed + 4) return InvalidArgumentError("commit state truncated");
  if (LoadU32(p.data()) != kCommitMagic) return InvalidArgumentError("not a commit state (bad magic)");
  const uint8_t version = static_cast<uint8_t>(p[4]);
  if (version != 3 && version != kCommitVersion) {
    return InvalidArgumentError(fmt::format(
        "commit state version {}, this agent reads 3 and {} (the source runs another tern)",
        static_cast<int>(version), static_cast<int>(kCommitVersion)));
  }
  if (Crc32c(p.data(), p.size() - 4) != LoadU32(p.data() + p.size() - 4)) {
    return DataLossError("commit state checksum mismatch");
  }
  CommitState c;
  const char* q = p.data() + 8;
  c.memory_bytes = LoadU64(q);
  if (q[8] != 0) c.stack_pointer = LoadU32(q + 9);
  c.requests = LoadU64(q + 13);
  size_t off = kFixed;
  const size_t end = p.size() - 4;
  if (end - off < 9) return DataLossError("commit state: journal position truncated");
  c.journal_seq = LoadU64(p.data() + off);
  const uint8_t keepers = static_cast<uint8_t>(p[off + 8]);
  off += 9;
  for (uint8_t i = 0; i < keepers; ++i) {
    if (end - off < 1) return DataLossError("commit state: keeper truncated");
    JournalKeeper& k = c.keepers.emplace_back();
    k.full = (p[off] & 1) != 0;
    k.out = (p[off] & 2) != 0;
    ++off;
    for (std::string* s : {&k.device, &k.tcp}) {
      if (end - off < 4) return DataLossError("commit state: keeper truncated");
      const uint32_t len = LoadU32(p.data() + off);
      off += 4;
      if (end - off < len) return DataLossError("commit state: keeper truncated");
      s->assign(p.data() + off, len);
      off += len;
    }
  }
  if (end - off < 4) return DataLossError("commit state: dedup table truncated");
  const uint32_t n = LoadU32(p.data() + off);
  off += 4;
  for (uint32_t i = 0; i < n; ++i) {
    if (end - off < 16) return DataLossError(fmt::format("commit state: dedup entry {} truncated", i));
    DedupEntry e;
    e.key = LoadU64(p.data() + off);
    e.code = static_cast<StatusCode>(LoadU32(p.data() + off + 8));
    const uint32_t len = LoadU32(p.data() + off + 12);
    off += 16;
    if (end - off < len) return DataLossError(fmt::format("commit state: dedup entry {} truncated", i));
    e.reply.assign(p.data() + off, len);
    off += len;
    c.dedup.push_back(std::move(e));
  }
  if (version >= 4) {
    if (end - off < 4) return DataLossError("commit state: globals truncated");
    const uint32_t count = LoadU32(p.data() + off);
    off += 4;
    TERN_RETURN_IF_ERROR(wasm::DecodeGlobalValues(p.substr(off, end - off), count, &c.globals)
                             .WithPrefix("commit state"));
    off += size_t{count} * wasm::kGlobalValueBytes;
  }
  if (off != end) return DataLossError("commit state has trailing bytes");
  return c;
}

}  // namespace tern::agent
