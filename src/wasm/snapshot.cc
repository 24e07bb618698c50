#include "wasm/snapshot.h"

#include <fmt/format.h>

#include <array>
#include <cstring>

#include "core/bytes.h"
#include "core/crc32c.h"
#include "core/file.h"

namespace tern::wasm {
namespace {

// Byte layout: docs/formats/snapshot.md. All integers little-endian.
constexpr char kMagic[8] = {'T', 'E', 'R', 'N', 'S', 'N', 'A', 'P'};
constexpr uint32_t kFormatVersion = 2;  // 1: no globals (still read)
constexpr uint32_t kFlagStackPointer = 1;
constexpr size_t kHeaderBytes = 48;
constexpr size_t kTrailerBytes = 4;  // CRC32C
constexpr uint32_t kPageBytes = 65536;
constexpr uint32_t kBlockBytes = 4096;  // zero elision granularity
constexpr uint32_t kBlocksPerPage = kPageBytes / kBlockBytes;
constexpr uint32_t kMaxPages = 65536;
constexpr uint32_t kMaxHashBytes = 256;
constexpr uint32_t kMaxGlobals = 1'000'000;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the format is little-endian");

size_t Align8(size_t n) { return (n + 7) & ~size_t{7}; }

// CRC32C of the file's sections: core/crc32c.h.
uint32_t Crc32cRaw(const void* data, size_t n) { return ::tern::Crc32c(data, n); }

}  // namespace

uint32_t Crc32c(std::string_view data) { return Crc32cRaw(data.data(), data.size()); }

void AppendGlobalValues(const std::vector<GlobalValue>& globals, std::string* out) {
  const size_t at = out->size();
  out->resize(at + globals.size() * kGlobalValueBytes, '\0');
  char* o = out->data() + at;
  for (const GlobalValue& g : globals) {
    StoreU32(o, g.index);
    o[4] = static_cast<char>(g.type);
    StoreU64(o + 8, g.bits);
    o += kGlobalValueBytes;
  }
}

Status DecodeGlobalValues(std::string_view bytes, uint32_t count, std::vector<GlobalValue>* out) {
  if (bytes.size() / kGlobalValueBytes < count) {
    return DataLossError(fmt::format("{} global values need {} bytes, have {}", count,
                                     uint64_t{count} * kGlobalValueBytes, bytes.size()));
  }
  out->resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    const char* g = bytes.data() + size_t{i} * kGlobalValueBytes;
    GlobalValue& v = (*out)[i];
    v.index = LoadU32(g);
    v.type = static_cast<ValType>(static_cast<uint8_t>(g[4]));
    v.bits = LoadU64(g + 8);
    if (!IsSnapshotableType(v.type) || g[5] != 0 || g[6] != 0 || g[7] != 0 ||
        (i > 0 && v.index <= (*out)[i - 1].index)) {
      return DataLossError(fmt::format("global value {} is malformed (index {}, type 0x{:02x})", i,
                                       v.index, static_cast<uint8_t>(v.type)));
    }
    const bool narrow = v.type == ValType::kI32 || v.type == ValType::kF32;
    if (narrow && (v.bits >> 32) != 0) {
      return DataLossError(fmt::format("global value {} ({}) has bits above 32", i,
                                       ValTypeName(v.type)));
    }
  }
  return Status::Ok();
}

std::string EncodeSnapshot(const Snapshot& snap) {
  // A partial trailing page (not a valid snapshot) is padded with zeros.
  const uint32_t pages = static_cast<uint32_t>((snap.memory.size() + kPageBytes - 1) / kPageBytes);
  const uint64_t blocks = uint64_t{pages} * kBlocksPerPage;
  const size_t hash_len = std::min<size_t>(snap.module_hash.size(), kMaxHashBytes);
  const size_t globals_off = Align8(kHeaderBytes + hash_len);
  const size_t bitmap_off = globals_off + snap.globals.size() * kGlobalValueBytes;
  const size_t bitmap_len = Align8((blocks + 7) / 8);
  const size_t data_off = bitmap_off + bitmap_len;

  std::string out;
  out.resize(data_off + snap.memory.size() + kBlockBytes + kTrailerBytes);
  char* o = out.data();
  size_t pos = data_off;
  uint32_t stored = 0;
  for (uint64_t b = 0; b < blocks; ++b) {
    size_t start = b * kBlockBytes;
    if (start >= snap.memory.size()) break;
    size_t n = std::min<size_t>(kBlockBytes, snap.memory.size() - start);
    const char* src = snap.memory.data() + start;
    if (n == kBlockBytes && IsZeroBlock(src, n)) continue;
    o[bitmap_off + b / 8] = static_cast<char>(o[bitmap_off + b / 8] | (1u << (b % 8)));
    std::memcpy(o + pos, src, n);
    std::memset(o + pos + n, 0, kBlockBytes - n);
    pos += kBlockBytes;
    ++stored;
  }
  const size_t total = pos + kTrailerBytes;
  std::memcpy(o, kMagic, 8);
  StoreU32(o + 8, kFormatVersion);
  StoreU32(o + 12, snap.stack_pointer ? kFlagStackPointer : 0);
  StoreU64(o + 16, total);
  StoreU32(o + 24, pages);
  StoreU32(o + 28, snap.stack_pointer.value_or(0));
  StoreU32(o + 32, kBlockBytes);
  StoreU32(o + 36, stored);
  StoreU32(o + 40, static_cast<uint32_t>(hash_len));
  StoreU32(o + 44, static_cast<uint32_t>(snap.globals.size()));
  std::memcpy(o + kHeaderBytes, snap.module_hash.data(), hash_len);
  std::string globals;
  AppendGlobalValues(snap.globals, &globals);
  std::memcpy(o + globals_off, globals.data(), globals.size());
  StoreU32(o + pos, Crc32cRaw(o, pos));
  out.resize(total);
  return out;
}

Result<Snapshot> DecodeSnapshot(std::string_view bytes) {
  const char* p = bytes.data();
  if (bytes.size() >= 8 && std::memcmp(p, kMagic, 8) != 0) {
    return InvalidArgumentError("not a tern snapshot: bad magic");
  }
  if (bytes.size() < kHeaderBytes + kTrailerBytes) {
    return DataLossError(
        fmt::format("snapshot truncated: {} bytes, shorter than the header", bytes.size()));
  }
  uint32_t version = LoadU32(p + 8);
  if (version != 1 && version != kFormatVersion) {
    return InvalidArgumentError(
        fmt::format("unsupported snapshot format version {} (this build reads versions 1 and {})",
                    version, kFormatVersion));
  }
  uint64_t total = LoadU64(p + 16);
  if (total != bytes.size()) {
    return DataLossError(fmt::format("snapshot {}: header says {} bytes, have {}",
                                     total > bytes.size() ? "truncated" : "has trailing bytes",
                                     total, bytes.size()));
  }
  uint32_t want_crc = LoadU32(p + total - kTrailerBytes);
  uint32_t have_crc = Crc32cRaw(p, total - kTrailerBytes);
  if (want_crc != have_crc) {
    return DataLossError(fmt::format("snapshot checksum mismatch (stored {:08x}, computed {:08x})",
                                     want_crc, have_crc));
  }
  // The checksum matched, so what follows only fails for a buggy or hostile writer.
  uint32_t flags = LoadU32(p + 12);
  uint32_t pages = LoadU32(p + 24);
  uint32_t sp = LoadU32(p + 28);
  uint32_t block_bytes = LoadU32(p + 32);
  uint32_t stored = LoadU32(p + 36);
  uint32_t hash_len = LoadU32(p + 40);
  uint32_t global_count = LoadU32(p + 44);  // reserved (0) in version 1
  if (version == 1 && global_count != 0) {
    return DataLossError("snapshot version 1 has a non-zero reserved field");
  }
  if (global_count > kMaxGlobals) {
    return DataLossError(fmt::format("snapshot claims {} globals", global_count));
  }
  if ((flags & ~kFlagStackPointer) != 0) {
    return DataLossError(fmt::format("snapshot has unknown flags 0x{:x}", flags));
  }
  if (block_bytes != kBlockBytes) {
    return DataLossError(fmt::format("snapshot block size {} is not {}", block_bytes, kBlockBytes));
  }
  if (pages > kMaxPages) return DataLossError(fmt::format("snapshot claims {} pages", pages));
  if (hash_len > kMaxHashBytes) return DataLossError("snapshot module hash is too long");
  const uint64_t blocks = uint64_t{pages} * kBlocksPerPage;
  const size_t globals_off = Align8(kHeaderBytes + hash_len);
  const size_t bitmap_off = globals_off + size_t{global_count} * kGlobalValueBytes;
  const size_t bitmap_len = Align8((blocks + 7) / 8);
  const uint64_t data_off = bitmap_off + bitmap_len;
  if (stored > blocks || data_off + uint64_t{stored} * kBlockBytes + kTrailerBytes != total) {
    return DataLossError(fmt::format(
        "snapshot sizes disagree: {} pages, {} stored blocks, {} bytes", pages, stored, total));
  }
  Snapshot snap;
  snap.module_hash.assign(p + kHeaderBytes, hash_len);
  if (flags & kFlagStackPointer) snap.stack_pointer = sp;
  TERN_RETURN_IF_ERROR(DecodeGlobalValues(
      bytes.substr(globals_off, size_t{global_count} * kGlobalValueBytes), global_count,
      &snap.globals));
  snap.memory.resize(uint64_t{pages} * kPageBytes);  // zero-filled
  const char* src = p + data_off;
  uint32_t seen = 0;
  for (uint64_t b = 0; b < blocks; ++b) {
    if ((static_cast<uint8_t>(p[bitmap_off + b / 8]) >> (b % 8) & 1) == 0) continue;
    if (++seen > stored) break;
    std::memcpy(snap.memory.data() + b * kBlockBytes, src, kBlockBytes);
    src += kBlockBytes;
  }
  if (seen != stored) {
    return DataLossError(
        fmt::format("snapshot bitmap marks {} blocks, header says {}", seen, stored));
  }
  return snap;
}

Status WriteSnapshotFile(const std::string& path, const Snapshot& snap) {
  return WriteFileAtomic(path, EncodeSnapshot(snap));
}

Result<Snapshot> ReadSnapshotFile(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  Result<Snapshot> snap = DecodeSnapshot(bytes);
  if (!snap.ok()) return snap.status().WithPrefix(path);
  return snap;
}

}  // namespace tern::wasm
