#include "wasm/module_info.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>

namespace tern::wasm {
namespace {

constexpr std::string_view kMagic("\0asm", 4);
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxPages32 = 65536;  // 4 GiB of 64 KiB pages
// Generous bounds so that a hostile count cannot make us reserve gigabytes.
constexpr uint32_t kMaxTypes = 1'000'000;
constexpr uint32_t kMaxParams = 1000;

enum SectionId : uint8_t {
  kCustom = 0,
  kType = 1,
  kImport = 2,
  kFunction = 3,
  kTable = 4,
  kMemory = 5,
  kGlobal = 6,
  kExport = 7,
  kStart = 8,
  kElement = 9,
  kCode = 10,
  kData = 11,
  kDataCount = 12,
  kTag = 13,
};

const char* SectionName(uint8_t id) {
  static constexpr const char* kNames[] = {"custom", "type",   "import",    "function", "table",
                                           "memory", "global", "export",    "start",    "element",
                                           "code",   "data",   "datacount", "tag"};
  return id < std::size(kNames) ? kNames[id] : "unknown";
}

// Position of a known section id in the required order (custom sections go anywhere).
int SectionRank(uint8_t id) {
  switch (id) {
    case kType:
      return 1;
    case kImport:
      return 2;
    case kFunction:
      return 3;
    case kTable:
      return 4;
    case kMemory:
      return 5;
    case kTag:
      return 6;
    case kGlobal:
      return 7;
    case kExport:
      return 8;
    case kStart:
      return 9;
    case kElement:
      return 10;
    case kDataCount:
      return 11;
    case kCode:
      return 12;
    case kData:
      return 13;
    default:
      return -1;
  }
}

const char* KindName(ExternKind k) {
  switch (k) {
    case ExternKind::kFunction:
      return "function";
    case ExternKind::kTable:
      return "table";
    case ExternKind::kMemory:
      return "memory";
    case ExternKind::kGlobal:
      return "global";
    case ExternKind::kTag:
      return "tag";
  }
  return "?";
}

bool IsValType(uint8_t b) {
  switch (b) {
    case 0x7f:
    case 0x7e:
    case 0x7d:
    case 0x7c:
    case 0x7b:
    case 0x70:
    case 0x6f:
      return true;
    default:
      return false;
  }
}

// A bounds-checked cursor over a byte range. Every read checks the remaining length
// first; on failure it records an error and all later reads fail too.
class Reader {
 public:
  Reader(std::string_view bytes, size_t base) : p_(bytes), base_(base) {}

  size_t offset() const { return base_ + pos_; }
  size_t remaining() const { return p_.size() - pos_; }
  bool done() const { return pos_ == p_.size(); }
  bool ok() const { return err_.empty(); }
  const std::string& error() const { return err_; }

  bool Fail(std::string msg) {
    if (err_.empty()) err_ = fmt::format("at byte {}: {}", offset(), msg);
    return false;
  }

  bool U8(uint8_t* out, const char* what) {
    if (!ok()) return false;
    if (remaining() < 1) return Fail(fmt::format("unexpected end reading {}", what));
    *out = static_cast<uint8_t>(p_[pos_++]);
    return true;
  }

  // Unsigned LEB128 of at most 32 bits: at most 5 bytes, and the unused high bits of
  // the fifth byte must be zero.
  bool U32(uint32_t* out, const char* what) {
    if (!ok()) return false;
    uint32_t v = 0;
    for (int i = 0; i < 5; ++i) {
      if (remaining() < 1) return Fail(fmt::format("unexpected end reading {}", what));
      uint8_t b = static_cast<uint8_t>(p_[pos_++]);
      if (i == 4 && (b & 0xf0) != 0) return Fail(fmt::format("{} does not fit in 32 bits", what));
      v |= static_cast<uint32_t>(b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) {
        *out = v;
        return true;
      }
    }
    return Fail(fmt::format("{} is an over-long LEB128", what));
  }

  bool Bytes(size_t n, std::string_view* out, const char* what) {
    if (!ok()) return false;
    if (remaining() < n) {
      return Fail(fmt::format("{} needs {} bytes, only {} left", what, n, remaining()));
    }
    *out = p_.substr(pos_, n);
    pos_ += n;
    return true;
  }

  bool Name(std::string* out, const char* what) {
    uint32_t len = 0;
    std::string_view s;
    if (!U32(&len, what) || !Bytes(len, &s, what)) return false;
    out->assign(s);
    return true;
  }

  // Skips a signed or unsigned LEB128 of at most `max_bytes` bytes.
  bool SkipLeb(int max_bytes, const char* what) {
    uint8_t b = 0x80;
    for (int i = 0; i < max_bytes && (b & 0x80) != 0; ++i) {
      if (!U8(&b, what)) return false;
    }
    if ((b & 0x80) != 0) return Fail(fmt::format("{} is an over-long LEB128", what));
    return true;
  }

  bool Skip(size_t n, const char* what) {
    std::string_view ignored;
    return Bytes(n, &ignored, what);
  }

 private:
  std::string_view p_;
  size_t base_;
  size_t pos_ = 0;
  std::string err_;
};

struct Limits {
  uint8_t flags = 0;
  uint32_t min = 0;
  std::optional<uint32_t> max;
};

bool ReadLimits(Reader& r, bool is_memory, Limits* out) {
  if (!r.U8(&out->flags, "limits flags")) return false;
  if (out->flags > 3) {
    if (is_memory && out->flags <= 7) return r.Fail("64-bit memories are not supported");
    return r.Fail(fmt::format("bad limits flags 0x{:02x}", out->flags));
  }
  if (!r.U32(&out->min, "limits minimum")) return false;
  if (out->flags & 1) {
    uint32_t max = 0;
    if (!r.U32(&max, "limits maximum")) return false;
    out->max = max;
  }
  if (is_memory) {
    if (out->min > kMaxPages32)
      return r.Fail(fmt::format("memory minimum {} pages is over 4 GiB", out->min));
    if (out->max && *out->max > kMaxPages32) {
      return r.Fail(fmt::format("memory maximum {} pages is over 4 GiB", *out->max));
    }
  }
  if (out->max && *out->max < out->min) {
    return r.Fail(fmt::format("limits maximum {} is below the minimum {}", *out->max, out->min));
  }
  return true;
}

bool ReadTypeSection(Reader& r, ModuleInfo* info) {
  uint32_t n = 0;
  if (!r.U32(&n, "type count")) return false;
  if (n > kMaxTypes || n > r.remaining())
    return r.Fail(fmt::format("type count {} is too large", n));
  info->types.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    uint8_t form = 0;
    if (!r.U8(&form, "type form")) return false;
    if (form != 0x60) return r.Fail(fmt::format("type {} has unsupported form 0x{:02x}", i, form));
    FuncType t;
    for (auto* vec : {&t.params, &t.results}) {
      uint32_t m = 0;
      if (!r.U32(&m, "value type count")) return false;
      if (m > kMaxParams || m > r.remaining())
        return r.Fail(fmt::format("type {} has too many values", i));
      vec->reserve(m);
      for (uint32_t j = 0; j < m; ++j) {
        uint8_t b = 0;
        if (!r.U8(&b, "value type")) return false;
        if (!IsValType(b))
          return r.Fail(fmt::format("type {} has unknown value type 0x{:02x}", i, b));
        vec->push_back(static_cast<ValType>(b));
      }
    }
    info->types.push_back(std::move(t));
  }
  return true;
}

bool ReadImportSection(Reader& r, ModuleInfo* info) {
  uint32_t n = 0;
  if (!r.U32(&n, "import count")) return false;
  // Each import takes at least 4 bytes, which bounds a hostile count.
  if (n > r.remaining() / 4 + 1) return r.Fail(fmt::format("import count {} is too large", n));
  for (uint32_t i = 0; i < n; ++i) {
    ImportDesc d;
    uint8_t kind = 0;
    if (!r.Name(&d.module, "import module name") || !r.Name(&d.name, "import name") ||
        !r.U8(&kind, "import kind")) {
      return false;
    }
    switch (kind) {
      case 0x00:
        d.kind = ExternKind::kFunction;
        if (!r.U32(&d.type_index, "import type index")) return false;
        if (d.type_index >= info->types.size()) {
          return r.Fail(fmt::format("import {}.{} uses type {}, but there are only {} types",
                                    d.module, d.name, d.type_index, info->types.size()));
        }
        break;
      case 0x01: {
        d.kind = ExternKind::kTable;
        uint8_t reftype = 0;
        Limits l;
        if (!r.U8(&reftype, "table element type") || !ReadLimits(r, false, &l)) return false;
        break;
      }
      case 0x02: {
        d.kind = ExternKind::kMemory;
        Limits l;
        if (!ReadLimits(r, true, &l)) return false;
        break;
      }
      case 0x03: {
        d.kind = ExternKind::kGlobal;
        uint8_t type = 0, mut = 0;
        if (!r.U8(&type, "global type") || !r.U8(&mut, "global mutability")) return false;
        break;
      }
      case 0x04: {
        d.kind = ExternKind::kTag;
        uint8_t attr = 0;
        uint32_t type = 0;
        if (!r.U8(&attr, "tag attribute") || !r.U32(&type, "tag type")) return false;
        break;
      }
      default:
        return r.Fail(
            fmt::format("import {}.{} has unknown kind 0x{:02x}", d.module, d.name, kind));
    }
    info->imports.push_back(std::move(d));
  }
  return true;
}

bool ReadMemorySection(Reader& r, ModuleInfo* info) {
  uint32_t n = 0;
  if (!r.U32(&n, "memory count")) return false;
  if (n > r.remaining() / 2 + 1) return r.Fail(fmt::format("memory count {} is too large", n));
  for (uint32_t i = 0; i < n; ++i) {
    Limits l;
    if (!ReadLimits(r, true, &l)) return false;
    if (i == 0) {
      info->has_memory = true;
      info->memory_min_pages = l.min;
      info->memory_max_pages = l.max;
    }
  }
  return true;
}

// Skips a constant expression (a global's initializer) up to its `end`: the opcodes
// that may appear there (MVP, reference types, SIMD, extended-const).
bool SkipConstExpr(Reader& r, uint32_t global) {
  for (;;) {
    uint8_t op = 0;
    if (!r.U8(&op, "initializer opcode")) return false;
    switch (op) {
      case 0x0b:  // end
        return true;
      case 0x41:  // i32.const
        if (!r.SkipLeb(5, "i32.const")) return false;
        break;
      case 0x42:  // i64.const
        if (!r.SkipLeb(10, "i64.const")) return false;
        break;
      case 0x43:  // f32.const
        if (!r.Skip(4, "f32.const")) return false;
        break;
      case 0x44:  // f64.const
        if (!r.Skip(8, "f64.const")) return false;
        break;
      case 0x23:  // global.get
      case 0xd2:  // ref.func
        if (!r.SkipLeb(5, "initializer index")) return false;
        break;
      case 0xd0:  // ref.null heaptype
        if (!r.SkipLeb(5, "ref.null type")) return false;
        break;
      case 0x6a: case 0x6b: case 0x6c:  // i32.add/sub/mul (extended-const)
      case 0x7c: case 0x7d: case 0x7e:  // i64.add/sub/mul
        break;
      case 0xfd: {  // SIMD prefix: only v128.const (12) is constant
        uint32_t sub = 0;
        if (!r.U32(&sub, "SIMD opcode")) return false;
        if (sub != 12) {
          return r.Fail(fmt::format("global {}: SIMD opcode {} in an initializer", global, sub));
        }
        if (!r.Skip(16, "v128.const")) return false;
        break;
      }
      default:
        return r.Fail(
            fmt::format("global {}: opcode 0x{:02x} is not allowed in an initializer", global, op));
    }
  }
}

bool ReadGlobalSection(Reader& r, ModuleInfo* info) {
  uint32_t n = 0;
  if (!r.U32(&n, "global count")) return false;
  // Each global takes at least 4 bytes (type, mutability, one opcode, end).
  if (n > r.remaining() / 4 + 1) return r.Fail(fmt::format("global count {} is too large", n));
  info->globals.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    uint8_t type = 0, mut = 0;
    if (!r.U8(&type, "global type") || !r.U8(&mut, "global mutability")) return false;
    if (!IsValType(type)) {
      return r.Fail(fmt::format("global {} has unknown value type 0x{:02x}", i, type));
    }
    if (mut > 1) return r.Fail(fmt::format("global {} has bad mutability {}", i, mut));
    if (!SkipConstExpr(r, i)) return false;
    info->globals.push_back(GlobalDesc{static_cast<ValType>(type), mut == 1});
  }
  return true;
}

bool ReadExportSection(Reader& r, ModuleInfo* info) {
  uint32_t n = 0;
  if (!r.U32(&n, "export count")) return false;
  if (n > r.remaining() / 3 + 1) return r.Fail(fmt::format("export count {} is too large", n));
  for (uint32_t i = 0; i < n; ++i) {
    ExportDesc d;
    uint8_t kind = 0;
    if (!r.Name(&d.name, "export name") || !r.U8(&kind, "export kind") ||
        !r.U32(&d.index, "export index")) {
      return false;
    }
    if (kind > 4) return r.Fail(fmt::format("export '{}' has unknown kind 0x{:02x}", d.name, kind));
    d.kind = static_cast<ExternKind>(kind);
    info->exports.push_back(std::move(d));
  }
  return true;
}

// Where the active data segments start, when every one has a constant offset
// (ModuleInfo::data_min_offset); anything else leaves it unknown. Segment bodies are
// skipped: the engine validates them.
bool ReadDataSection(Reader& r, ModuleInfo* info) {
  uint32_t n = 0;
  if (!r.U32(&n, "data segment count")) return false;
  std::optional<uint32_t> lowest;
  bool known = true;
  for (uint32_t i = 0; i < n && known; ++i) {
    uint32_t flags = 0;
    if (!r.U32(&flags, "data segment flags")) return false;
    if (flags == 1) {  // passive: placed by memory.init, wherever the code says
      known = false;
      break;
    }
    if (flags == 2) {
      uint32_t mem = 0;
      if (!r.U32(&mem, "data segment memory")) return false;
    } else if (flags != 0) {
      known = false;
      break;
    }
    uint8_t op = 0;
    if (!r.U8(&op, "data segment offset")) return false;
    if (op != 0x41) {  // not i32.const (e.g. global.get in relocatable code)
      known = false;
      break;
    }
    // Signed LEB128 i32; the address is its unsigned value.
    uint32_t v = 0;
    int shift = 0;
    uint8_t b = 0x80;
    while ((b & 0x80) != 0 && shift < 35) {
      if (!r.U8(&b, "data segment offset")) return false;
      v |= static_cast<uint32_t>(b & 0x7f) << shift;
      shift += 7;
    }
    if ((b & 0x80) != 0) return r.Fail("data segment offset is an over-long LEB128");
    if (shift < 32 && (b & 0x40) != 0) v |= ~uint32_t{0} << shift;
    uint8_t end = 0;
    uint32_t size = 0;
    if (!r.U8(&end, "data segment offset end") || end != 0x0b) {
      known = false;
      break;
    }
    if (!r.U32(&size, "data segment size") || !r.Skip(size, "data segment bytes")) return false;
    if (size > 0) lowest = std::min(lowest.value_or(v), v);
  }
  if (known) info->data_min_offset = lowest;
  r.Skip(r.remaining(), "data section");
  return true;
}

// One section header: where its payload lies in the module.
struct Section {
  uint8_t id;
  size_t header_offset;   // offset of the id byte
  size_t payload_offset;  // offset of the first payload byte
  size_t payload_size;
};

// Walks the section headers, checking order and bounds. `visit` sees each section.
template <typename Visit>
Status WalkSections(std::string_view bytes, Visit&& visit) {
  if (bytes.size() < 8) {
    return InvalidArgumentError(
        fmt::format("not a wasm module: {} bytes, shorter than the 8-byte header", bytes.size()));
  }
  if (bytes.substr(0, 4) != kMagic) {
    return InvalidArgumentError("not a wasm module: bad magic (expected \\0asm)");
  }
  uint32_t version = static_cast<uint8_t>(bytes[4]) | static_cast<uint8_t>(bytes[5]) << 8 |
                     static_cast<uint8_t>(bytes[6]) << 16 |
                     static_cast<uint32_t>(static_cast<uint8_t>(bytes[7])) << 24;
  if (version != kVersion) {
    return InvalidArgumentError(
        fmt::format("unsupported wasm binary version {} (expected 1)", version));
  }
  Reader r(bytes.substr(8), 8);
  int last_rank = 0;
  while (!r.done()) {
    Section s{};
    s.header_offset = r.offset();
    uint32_t size = 0;
    if (!r.U8(&s.id, "section id") || !r.U32(&size, "section size")) break;
    s.payload_offset = r.offset();
    s.payload_size = size;
    if (size > r.remaining()) {
      r.Fail(fmt::format("section {} ({}) claims {} bytes, only {} left", s.id, SectionName(s.id),
                         size, r.remaining()));
      break;
    }
    if (s.id != kCustom) {
      int rank = SectionRank(s.id);
      if (rank < 0) {
        r.Fail(fmt::format("unknown section id {}", s.id));
        break;
      }
      if (rank <= last_rank) {
        r.Fail(fmt::format("section {} ({}) is out of order or repeated", s.id, SectionName(s.id)));
        break;
      }
      last_rank = rank;
    }
    Reader payload(bytes.substr(s.payload_offset, s.payload_size), s.payload_offset);
    if (!visit(s, payload)) {
      return InvalidArgumentError(
          fmt::format("bad wasm module: {} section: {}", SectionName(s.id), payload.error()));
    }
    r.Skip(size, "section payload");
  }
  if (!r.ok()) return InvalidArgumentError("bad wasm module: " + r.error());
  return Status::Ok();
}

bool ParseSection(const Section& s, Reader& r, ModuleInfo* info) {
  bool ok = true;
  switch (s.id) {
    case kCustom: {
      std::string name;
      ok = r.Name(&name, "custom section name");
      if (ok) r.Skip(r.remaining(), "custom section");
      break;
    }
    case kType:
      ok = ReadTypeSection(r, info);
      break;
    case kImport:
      ok = ReadImportSection(r, info);
      break;
    case kMemory:
      ok = ReadMemorySection(r, info);
      break;
    case kGlobal:
      ok = ReadGlobalSection(r, info);
      break;
    case kExport:
      ok = ReadExportSection(r, info);
      break;
    case kData:
      ok = ReadDataSection(r, info);
      break;
    default:
      // Bodies the engine validates.
      r.Skip(r.remaining(), "section");
      break;
  }
  if (ok && !r.done()) ok = r.Fail(fmt::format("{} trailing bytes", r.remaining()));
  return ok && r.ok();
}

void AppendU32Leb(std::string* out, uint32_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    if (v != 0) b |= 0x80;
    out->push_back(static_cast<char>(b));
  } while (v != 0);
}

// What the runtime provides: "module.name" with its signature.
struct Provided {
  std::string_view module;
  std::string_view name;
  std::vector<ValType> params;
  std::vector<ValType> results;
};

const std::vector<Provided>& ProvidedImports() {
  using V = ValType;
  constexpr V i32 = V::kI32, i64 = V::kI64;
  static const std::vector<Provided> kProvided = {
      {"tern_v1", "request_len", {}, {i32}},
      {"tern_v1", "request_read", {i32, i32, i32}, {i32}},
      {"tern_v1", "reply", {i32, i32}, {i32}},
      {"tern_v1", "reply_in_place", {i32, i32}, {i32}},
      {"tern_v1", "fail", {i32, i32, i32}, {}},
      {"tern_v1", "log", {i32, i32, i32}, {}},
      {"tern_v1", "clock_ns", {i32}, {i64}},
      {"tern_v1", "call_start", {i32, i32, i32, i32, i32, i32, i32}, {i32}},
      {"tern_v1", "call_wait", {i32, i32}, {i32}},
      {"tern_v1", "call_read", {i32, i32, i32, i32}, {i32}},
      {"tern_v1", "call_close", {i32}, {}},
      {"tern_v1", "data_read", {i32, i32, i32, i32, i64, i32, i32}, {i64}},
      {"tern_v1", "data_size", {i32, i32, i32, i32}, {i64}},
      {"tern_v1", "data_list", {i32, i32, i32, i32}, {i64}},
      {"wasi_snapshot_preview1", "fd_write", {i32, i32, i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "fd_close", {i32}, {i32}},
      {"wasi_snapshot_preview1", "fd_seek", {i32, i64, i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "fd_fdstat_get", {i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "proc_exit", {i32}, {}},
      {"wasi_snapshot_preview1", "environ_get", {i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "environ_sizes_get", {i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "args_get", {i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "args_sizes_get", {i32, i32}, {i32}},
      {"wasi_snapshot_preview1", "clock_time_get", {i32, i64, i32}, {i32}},
      {"wasi_snapshot_preview1", "random_get", {i32, i32}, {i32}},
  };
  return kProvided;
}

std::string TypeString(const std::vector<ValType>& params, const std::vector<ValType>& results) {
  std::string s = "(";
  for (size_t i = 0; i < params.size(); ++i) {
    if (i) s += ", ";
    s += ValTypeName(params[i]);
  }
  s += ") -> (";
  for (size_t i = 0; i < results.size(); ++i) {
    if (i) s += ", ";
    s += ValTypeName(results[i]);
  }
  s += ")";
  return s;
}

std::string ProvidedList() {
  std::string out;
  std::string_view current;
  for (const Provided& p : ProvidedImports()) {
    if (p.module != current) {
      if (!current.empty()) out += "}, ";
      out += p.module;
      out += ".{";
      current = p.module;
    } else {
      out += ", ";
    }
    out += p.name;
  }
  out += "}";
  return out;
}

}  // namespace

std::string_view ValTypeName(ValType t) {
  switch (t) {
    case ValType::kI32:
      return "i32";
    case ValType::kI64:
      return "i64";
    case ValType::kF32:
      return "f32";
    case ValType::kF64:
      return "f64";
    case ValType::kV128:
      return "v128";
    case ValType::kFuncRef:
      return "funcref";
    case ValType::kExternRef:
      return "externref";
  }
  return "?";
}

bool IsSnapshotableType(ValType t) {
  return t == ValType::kI32 || t == ValType::kI64 || t == ValType::kF32 || t == ValType::kF64;
}

std::string GlobalExportName(uint32_t index) {
  return fmt::format("{}global_{}", kReservedExportPrefix, index);
}

const ExportDesc* ModuleInfo::FindExport(std::string_view name) const {
  for (const ExportDesc& e : exports) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

Result<ModuleInfo> ParseModuleInfo(std::string_view wasm_bytes) {
  ModuleInfo info;
  Status st = WalkSections(wasm_bytes,
                           [&](const Section& s, Reader& r) { return ParseSection(s, r, &info); });
  if (!st.ok()) return st;
  return info;
}

Status CheckImports(const ModuleInfo& info) {
  std::vector<std::string> problems;
  bool unknown_function = false;
  for (const ImportDesc& imp : info.imports) {
    std::string qname = imp.module + "." + imp.name;
    if (imp.kind != ExternKind::kFunction) {
      if (imp.kind == ExternKind::kMemory) {
        problems.push_back(fmt::format(
            "imports memory {} (a service must define and export its own memory)", qname));
      } else {
        problems.push_back(
            fmt::format("imports {} {} (tern provides only functions)", KindName(imp.kind), qname));
      }
      continue;
    }
    const Provided* match = nullptr;
    for (const Provided& p : ProvidedImports()) {
      if (p.module == imp.module && p.name == imp.name) match = &p;
    }
    if (match == nullptr) {
      problems.push_back(fmt::format("imports function {}, which tern does not provide", qname));
      unknown_function = true;
      continue;
    }
    if (imp.type_index >= info.types.size()) {
      problems.push_back(fmt::format("imports {} with a type index out of range", qname));
      continue;
    }
    const FuncType& t = info.types[imp.type_index];
    if (t.params != match->params || t.results != match->results) {
      problems.push_back(fmt::format("imports {} with signature {}, but tern provides {}", qname,
                                     TypeString(t.params, t.results),
                                     TypeString(match->params, match->results)));
    }
  }
  for (const ExportDesc& e : info.exports) {
    if (e.name.starts_with(kReservedExportPrefix)) {
      problems.push_back(fmt::format("exports '{}' (names starting with '{}' are reserved by tern)",
                                     e.name, kReservedExportPrefix));
    }
  }
  const ExportDesc* mem = info.FindExport("memory");
  if (!info.has_memory) {
    problems.push_back("defines no memory (a service must define and export `memory`)");
  } else if (mem == nullptr || mem->kind != ExternKind::kMemory) {
    problems.push_back("does not export its memory as `memory`");
  }
  if (problems.empty()) return Status::Ok();
  std::string msg = "module ";
  for (size_t i = 0; i < problems.size(); ++i) {
    if (i) msg += "; ";
    msg += problems[i];
  }
  if (unknown_function) {
    msg += ". tern provides ";
    msg += ProvidedList();
  }
  return InvalidArgumentError(msg);
}

Status CheckSnapshotable(const ModuleInfo& info) {
  std::string bad;
  for (size_t i = 0; i < info.globals.size(); ++i) {
    const GlobalDesc& g = info.globals[i];
    if (!g.is_mutable || IsSnapshotableType(g.type)) continue;
    if (!bad.empty()) bad += ", ";
    bad += fmt::format("global {} ({})", i, ValTypeName(g.type));
  }
  if (bad.empty()) return Status::Ok();
  return InvalidArgumentError(fmt::format(
      "module has mutable globals whose values tern cannot save or restore: {} (the engine "
      "reads and writes only i32, i64, f32 and f64 globals from outside the module); a stateful "
      "service cannot keep them: its state would not survive a rollback, a restore or a "
      "migration. Keep that state in linear memory or make those globals immutable",
      bad));
}

Result<std::string> ExportMutableGlobals(std::string_view wasm_bytes) {
  std::optional<Section> export_section;
  size_t insert_at = wasm_bytes.size();  // where a new export section goes
  ModuleInfo info;
  Status st = WalkSections(wasm_bytes, [&](const Section& s, Reader& r) {
    if (s.id == kExport) export_section = s;
    if (s.id != kCustom && SectionRank(s.id) > SectionRank(kExport) &&
        insert_at == wasm_bytes.size()) {
      insert_at = s.header_offset;
    }
    return ParseSection(s, r, &info);
  });
  if (!st.ok()) return st;
  std::string added;
  uint32_t count = 0;
  for (size_t i = 0; i < info.globals.size(); ++i) {
    const GlobalDesc& g = info.globals[i];
    if (!g.is_mutable || !IsSnapshotableType(g.type)) continue;
    const std::string name = GlobalExportName(static_cast<uint32_t>(i));
    AppendU32Leb(&added, static_cast<uint32_t>(name.size()));
    added += name;
    added.push_back(static_cast<char>(ExternKind::kGlobal));
    AppendU32Leb(&added, static_cast<uint32_t>(i));  // no imported globals: index = i
    ++count;
  }
  if (count == 0) return std::string(wasm_bytes);

  // The new export section: the old entries (copied as they are) and then ours.
  std::string payload;
  size_t replace_from = insert_at, replace_to = insert_at;
  if (export_section) {
    Reader r(wasm_bytes.substr(export_section->payload_offset, export_section->payload_size),
             export_section->payload_offset);
    uint32_t n = 0;
    r.U32(&n, "export count");
    AppendU32Leb(&payload, n + count);
    payload.append(wasm_bytes.substr(r.offset(), r.remaining()));
    replace_from = export_section->header_offset;
    replace_to = export_section->payload_offset + export_section->payload_size;
  } else {
    AppendU32Leb(&payload, count);
  }
  payload += added;
  std::string out;
  out.reserve(wasm_bytes.size() + added.size() + 16);
  out.append(wasm_bytes.substr(0, replace_from));
  out.push_back(static_cast<char>(kExport));
  AppendU32Leb(&out, static_cast<uint32_t>(payload.size()));
  out += payload;
  out.append(wasm_bytes.substr(replace_to));
  return out;
}

Result<std::string> CapMemory(std::string_view wasm_bytes, uint32_t max_pages) {
  if (max_pages > kMaxPages32) {
    return InvalidArgumentError(fmt::format("memory cap {} pages is over 4 GiB", max_pages));
  }
  std::optional<Section> mem_section;
  bool imports_memory = false;
  ModuleInfo info;
  Status st = WalkSections(wasm_bytes, [&](const Section& s, Reader& r) {
    if (s.id == kMemory) mem_section = s;
    return ParseSection(s, r, &info);
  });
  if (!st.ok()) return st;
  for (const ImportDesc& imp : info.imports) {
    if (imp.kind == ExternKind::kMemory) imports_memory = true;
  }
  if (imports_memory) {
    return InvalidArgumentError("cannot cap the memory of a module that imports its memory");
  }
  if (!mem_section) return std::string(wasm_bytes);

  // Re-encode the memory section with capped limits; everything else is copied.
  Reader r(wasm_bytes.substr(mem_section->payload_offset, mem_section->payload_size),
           mem_section->payload_offset);
  uint32_t n = 0;
  r.U32(&n, "memory count");
  std::string payload;
  AppendU32Leb(&payload, n);
  for (uint32_t i = 0; i < n; ++i) {
    Limits l;
    if (!ReadLimits(r, true, &l)) return InvalidArgumentError("bad wasm module: " + r.error());
    if (l.min > max_pages) {
      return InvalidArgumentError(fmt::format(
          "the module's memory starts at {} pages ({} KiB), above the cap of {} pages ({} KiB)",
          l.min, uint64_t{l.min} * 64, max_pages, uint64_t{max_pages} * 64));
    }
    uint32_t max = l.max ? std::min(*l.max, max_pages) : max_pages;
    payload.push_back(static_cast<char>((l.flags & 2) | 1));  // keep "shared", set "has max"
    AppendU32Leb(&payload, l.min);
    AppendU32Leb(&payload, max);
  }
  std::string out;
  out.reserve(wasm_bytes.size() + 16);
  out.append(wasm_bytes.substr(0, mem_section->header_offset));
  out.push_back(static_cast<char>(kMemory));
  AppendU32Leb(&out, static_cast<uint32_t>(payload.size()));
  out += payload;
  size_t end = mem_section->payload_offset + mem_section->payload_size;
  out.append(wasm_bytes.substr(end));
  return out;
}

}  // namespace tern::wasm
