#include "wasm/module_info.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "wasm/test_util.h"

namespace tern::wasm {
namespace {

using ::testing::HasSubstr;
using testing::Leb;
using testing::LoadGuest;
using ::testing::Not;
using testing::WasmModule;
using testing::WasmName;
using testing::WasmSection;

// (type section) one type per signature string: "ii>i" = (i32, i32) -> i32.
std::string Types(std::initializer_list<std::string_view> sigs) {
  std::string p = Leb(static_cast<uint32_t>(sigs.size()));
  for (std::string_view sig : sigs) {
    size_t arrow = sig.find('>');
    std::string_view params = sig.substr(0, arrow), results = sig.substr(arrow + 1);
    p += '\x60';
    for (std::string_view part : {params, results}) {
      p += Leb(static_cast<uint32_t>(part.size()));
      for (char c : part) p += c == 'i' ? '\x7f' : '\x7e';  // i = i32, I = i64
    }
  }
  return WasmSection(1, p);
}

std::string FuncImport(std::string_view module, std::string_view name, uint32_t type) {
  return WasmName(module) + WasmName(name) + '\x00' + Leb(type);
}

std::string Imports(std::initializer_list<std::string> entries) {
  std::string p = Leb(static_cast<uint32_t>(entries.size()));
  for (const std::string& e : entries) p += e;
  return WasmSection(2, p);
}

std::string Memory(uint32_t min, std::optional<uint32_t> max) {
  std::string p = Leb(1);
  p += max ? '\x01' : '\x00';
  p += Leb(min);
  if (max) p += Leb(*max);
  return WasmSection(5, p);
}

std::string ExportMemory(std::string_view name = "memory") {
  return WasmSection(7, Leb(1) + WasmName(name) + '\x02' + Leb(0));
}

TEST(ModuleInfoTest, ParsesTheStatefulGuest) {
  std::string bytes = LoadGuest("guest_stateful");
  Result<ModuleInfo> info = ParseModuleInfo(bytes);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->has_memory);
  EXPECT_GE(info->memory_min_pages, 2u);
  EXPECT_FALSE(info->memory_max_pages.has_value());
  ASSERT_NE(info->FindExport("memory"), nullptr);
  EXPECT_EQ(info->FindExport("memory")->kind, ExternKind::kMemory);
  ASSERT_NE(info->FindExport("counter"), nullptr);
  EXPECT_EQ(info->FindExport("counter")->kind, ExternKind::kFunction);
  ASSERT_NE(info->FindExport("__stack_pointer"), nullptr);
  EXPECT_EQ(info->FindExport("__stack_pointer")->kind, ExternKind::kGlobal);
  EXPECT_EQ(info->FindExport("nope"), nullptr);
  bool saw_reply = false;
  for (const ImportDesc& imp : info->imports) {
    EXPECT_EQ(imp.module, "tern_v1");
    EXPECT_EQ(imp.kind, ExternKind::kFunction);
    if (imp.name == "reply") {
      saw_reply = true;
      ASSERT_LT(imp.type_index, info->types.size());
      EXPECT_EQ(info->types[imp.type_index],
                (FuncType{{ValType::kI32, ValType::kI32}, {ValType::kI32}}));
    }
  }
  EXPECT_TRUE(saw_reply);
  EXPECT_TRUE(CheckImports(*info).ok()) << CheckImports(*info);
}

TEST(ModuleInfoTest, DataSegmentOffsetsSayWhereTheDataStarts) {
  // The SDK links --stack-first: the data lies above the 64 KiB shadow stack.
  Result<ModuleInfo> guest = ParseModuleInfo(LoadGuest("guest_stateful"));
  ASSERT_TRUE(guest.ok()) << guest.status();
  ASSERT_TRUE(guest->data_min_offset.has_value());
  EXPECT_GE(*guest->data_min_offset, 65536u);
  // Active segments with constant offsets: the lowest one that holds bytes.
  auto data = [](std::string segments, uint32_t n) { return WasmSection(11, Leb(n) + segments); };
  auto seg = [](uint8_t flags, std::string offset_expr, std::string bytes) {
    return std::string(1, static_cast<char>(flags)) + offset_expr + Leb(static_cast<uint32_t>(bytes.size())) + bytes;
  };
  const std::string at_2048("\x41\x80\x10\x0b", 4), at_1024("\x41\x80\x08\x0b", 4);
  Result<ModuleInfo> two = ParseModuleInfo(WasmModule({data(seg(0, at_2048, "ab") + seg(0, at_1024, "c"), 2)}));
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->data_min_offset, std::optional<uint32_t>(1024));
  // A passive segment or a non-constant offset: unknown (nothing is assumed).
  Result<ModuleInfo> passive = ParseModuleInfo(WasmModule({data(seg(1, "", "x"), 1)}));
  ASSERT_TRUE(passive.ok()) << passive.status();
  EXPECT_FALSE(passive->data_min_offset.has_value());
  Result<ModuleInfo> global = ParseModuleInfo(WasmModule({data(seg(0, std::string("\x23\x00\x0b", 3), "x"), 1)}));
  ASSERT_TRUE(global.ok()) << global.status();
  EXPECT_FALSE(global->data_min_offset.has_value());
  EXPECT_FALSE(ParseModuleInfo(WasmModule({}))->data_min_offset.has_value());
}

TEST(ModuleInfoTest, RejectsWrongHeaders) {
  EXPECT_EQ(ParseModuleInfo("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ParseModuleInfo("\0as").status().message()), HasSubstr("shorter"));
  EXPECT_THAT(std::string(ParseModuleInfo(std::string("\x7f"
                                                      "ELF\x01\0\0\0",
                                                      8))
                              .status()
                              .message()),
              HasSubstr("bad magic"));
  EXPECT_THAT(std::string(ParseModuleInfo(std::string("\0asm\x02\0\0\0", 8)).status().message()),
              HasSubstr("version 2"));
  EXPECT_THAT(ParseModuleInfo("this is a text file, not wasm at all").status().message(),
              HasSubstr("bad magic"));
  // The empty module is valid.
  EXPECT_TRUE(ParseModuleInfo(WasmModule({})).ok());
}

TEST(ModuleInfoTest, RejectsStructuralErrors) {
  // Section claims more bytes than there are.
  Result<ModuleInfo> r = ParseModuleInfo(WasmModule({std::string("\x01\x10\x00", 3)}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("claims 16 bytes"));
  // Over-long LEB128 (6 bytes) for a section size.
  r = ParseModuleInfo(WasmModule({std::string("\x00\x80\x80\x80\x80\x80\x00", 7)}));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  // 5-byte LEB128 with bits beyond 32.
  r = ParseModuleInfo(WasmModule({std::string("\x00\xff\xff\xff\xff\x7f", 6)}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("32 bits"));
  // Out of order: memory before import.
  r = ParseModuleInfo(WasmModule({Memory(1, std::nullopt), Imports({})}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("out of order"));
  // Repeated section.
  r = ParseModuleInfo(WasmModule({Memory(1, std::nullopt), Memory(1, std::nullopt)}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("out of order or repeated"));
  // Unknown section id.
  r = ParseModuleInfo(WasmModule({WasmSection(42, "")}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("unknown section id 42"));
  // Trailing bytes inside a section.
  r = ParseModuleInfo(WasmModule({WasmSection(5, Leb(0) + "xx")}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("trailing"));
  // Memory max below min; memory over 4 GiB.
  r = ParseModuleInfo(WasmModule({Memory(4, 2)}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("below the minimum"));
  r = ParseModuleInfo(WasmModule({Memory(70000, std::nullopt)}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("over 4 GiB"));
  // Import with a type index past the types.
  r = ParseModuleInfo(
      WasmModule({Types({">i"}), Imports({FuncImport("tern_v1", "request_len", 3)})}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("only 1 types"));
  // A huge count with no bytes behind it.
  r = ParseModuleInfo(WasmModule({WasmSection(2, Leb(0xfffffff))}));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("too large"));
}

TEST(ModuleInfoTest, EveryTruncationOfARealModuleIsAnErrorNotACrash) {
  std::string bytes = LoadGuest("guest_stateful");
  ASSERT_GT(bytes.size(), 100u);
  size_t ok_prefixes = 0;
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::string_view prefix(bytes.data(), n);
    Result<ModuleInfo> r = ParseModuleInfo(prefix);
    if (r.ok()) {
      ++ok_prefixes;  // only possible right at a section boundary
    } else {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << n;
    }
    Result<std::string> c = CapMemory(prefix, 16);
    EXPECT_EQ(c.ok(), r.ok()) << n;
  }
  EXPECT_LT(ok_prefixes, 30u);
}

TEST(ModuleInfoTest, RandomAndMutatedBytesNeverCrash) {
  std::mt19937 rng(12345);
  std::string real = LoadGuest("guest_stateful");
  ASSERT_FALSE(real.empty());
  for (int i = 0; i < 3000; ++i) {
    std::string b;
    if (i % 3 == 0) {
      b.resize(rng() % 300);
      for (char& c : b) c = static_cast<char>(rng());
      if (i % 2 == 0 && b.size() >= 8) b.replace(0, 8, std::string("\0asm\x01\0\0\0", 8));
    } else {
      b = real;
      int flips = 1 + rng() % 8;
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<char>(rng());
    }
    Result<ModuleInfo> r = ParseModuleInfo(b);
    if (r.ok()) (void)CheckImports(*r);
    (void)CapMemory(b, 1 + rng() % 1024);
  }
}

TEST(CheckImportsTest, NamesEveryUnknownImportAndListsWhatIsProvided) {
  Result<ModuleInfo> info = ParseModuleInfo(LoadGuest("guest_badimport"));
  ASSERT_TRUE(info.ok()) << info.status();
  Status st = CheckImports(*info);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  std::string msg(st.message());
  EXPECT_THAT(msg, HasSubstr("tern_v1.call"));
  EXPECT_THAT(msg, HasSubstr("env.foo"));
  EXPECT_THAT(msg, HasSubstr("tern_v1.{request_len, request_read, reply, reply_in_place, fail, log, clock_ns, call_start, call_wait, call_read, call_close, data_read, data_size, data_list}"));
  EXPECT_THAT(msg, HasSubstr("wasi_snapshot_preview1.{fd_write"));
}

TEST(CheckImportsTest, RequiresAnExportedOwnMemory) {
  Result<ModuleInfo> nomem = ParseModuleInfo(LoadGuest("guest_nomemory"));
  ASSERT_TRUE(nomem.ok()) << nomem.status();
  EXPECT_THAT(std::string(CheckImports(*nomem).message()),
              HasSubstr("does not export its memory as `memory`"));

  Result<ModuleInfo> imported = ParseModuleInfo(LoadGuest("guest_importmem"));
  ASSERT_TRUE(imported.ok()) << imported.status();
  std::string msg(CheckImports(*imported).message());
  EXPECT_THAT(msg, HasSubstr("imports memory env.memory"));
  EXPECT_THAT(msg, HasSubstr("defines no memory"));

  Result<ModuleInfo> none = ParseModuleInfo(WasmModule({}));
  ASSERT_TRUE(none.ok());
  EXPECT_THAT(std::string(CheckImports(*none).message()), HasSubstr("defines no memory"));
}

TEST(CheckImportsTest, ChecksSignaturesAndKinds) {
  std::string table_import = WasmName("env") + WasmName("tbl") + '\x01' + '\x70' + '\x00' + Leb(1);
  std::string global_import = WasmName("env") + WasmName("g") + '\x03' + '\x7f' + '\x00';
  std::string m = WasmModule(
      {Types({"I>i", "ii>i"}),
       Imports({FuncImport("tern_v1", "reply", 0),
                FuncImport("wasi_snapshot_preview1", "fd_close", 1), table_import, global_import}),
       Memory(1, std::nullopt), ExportMemory()});
  Result<ModuleInfo> info = ParseModuleInfo(m);
  ASSERT_TRUE(info.ok()) << info.status();
  std::string msg(CheckImports(*info).message());
  EXPECT_THAT(msg, HasSubstr("tern_v1.reply with signature (i64) -> (i32), but tern provides "
                             "(i32, i32) -> (i32)"));
  EXPECT_THAT(msg, HasSubstr("fd_close with signature (i32, i32) -> (i32)"));
  EXPECT_THAT(msg, HasSubstr("imports table env.tbl"));
  EXPECT_THAT(msg, HasSubstr("imports global env.g"));
  // Nothing unknown was imported, so the provided list is not appended.
  EXPECT_THAT(msg, Not(HasSubstr("tern provides tern_v1.{")));

  std::string good = WasmModule({Types({"ii>i"}), Imports({FuncImport("tern_v1", "reply", 0)}),
                                 Memory(1, std::nullopt), ExportMemory()});
  Result<ModuleInfo> good_info = ParseModuleInfo(good);
  ASSERT_TRUE(good_info.ok());
  EXPECT_TRUE(CheckImports(*good_info).ok()) << CheckImports(*good_info);
}

TEST(CapMemoryTest, SetsTheMaximumAndKeepsEverythingElse) {
  std::string head = Types({"ii>i"});
  std::string tail = ExportMemory() + WasmSection(0, WasmName("custom") + "payload");
  // No maximum declared: the cap becomes the maximum.
  std::string m = WasmModule({head, Memory(2, std::nullopt), tail});
  Result<std::string> capped = CapMemory(m, 16);
  ASSERT_TRUE(capped.ok()) << capped.status();
  Result<ModuleInfo> info = ParseModuleInfo(*capped);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->memory_min_pages, 2u);
  EXPECT_EQ(info->memory_max_pages, 16u);
  EXPECT_EQ(capped->substr(0, 8 + head.size()), m.substr(0, 8 + head.size()));
  EXPECT_EQ(capped->substr(capped->size() - tail.size()), tail);

  // A smaller declared maximum stays.
  info = ParseModuleInfo(*CapMemory(WasmModule({Memory(2, 8), tail}), 16));
  EXPECT_EQ(info->memory_max_pages, 8u);
  // A larger one is lowered; the LEB128 length of the section changes (65536 needs 3
  // bytes) and the rest still parses.
  info = ParseModuleInfo(*CapMemory(WasmModule({Memory(1, 2), tail}), 65536));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->memory_max_pages, 2u);
  info = ParseModuleInfo(*CapMemory(WasmModule({Memory(1, std::nullopt), tail}), 65536));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->memory_max_pages, 65536u);
  EXPECT_EQ(info->exports.size(), 1u);

  // Minimum above the cap.
  Result<std::string> too_big = CapMemory(WasmModule({Memory(20, std::nullopt)}), 16);
  EXPECT_EQ(too_big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_big.status().message()), HasSubstr("above the cap of 16 pages"));
  // Imported memory cannot be capped; no memory at all is returned unchanged.
  EXPECT_FALSE(CapMemory(LoadGuest("guest_importmem"), 16).ok());
  std::string empty = WasmModule({});
  EXPECT_EQ(*CapMemory(empty, 16), empty);
  // Garbage.
  EXPECT_FALSE(CapMemory("garbage!", 16).ok());
}

TEST(CapMemoryTest, RealGuestStaysValid) {
  std::string bytes = LoadGuest("guest_stateful");
  Result<std::string> capped = CapMemory(bytes, 64);
  ASSERT_TRUE(capped.ok()) << capped.status();
  Result<ModuleInfo> a = ParseModuleInfo(bytes);
  Result<ModuleInfo> b = ParseModuleInfo(*capped);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->memory_max_pages, 64u);
  EXPECT_EQ(a->exports, b->exports);
  EXPECT_EQ(a->imports, b->imports);
}


// ---- globals

// (global section) "i" = mutable i32 (i32.const 7), "c" = immutable i32, "I" = mutable
// i64, "F" = mutable f64, "v" = mutable v128, "r" = mutable externref.
std::string Globals(std::string_view kinds) {
  std::string p = Leb(static_cast<uint32_t>(kinds.size()));
  for (char k : kinds) {
    switch (k) {
      case 'i':
        p += std::string("\x7f\x01\x41\x07\x0b", 5);
        break;
      case 'c':
        p += std::string("\x7f\x00\x41\x07\x0b", 5);
        break;
      case 'I':
        p += std::string("\x7e\x01\x42\x07\x0b", 5);
        break;
      case 'F':
        p += std::string("\x7c\x01\x44", 3) + std::string(8, '\0') + '\x0b';
        break;
      case 'v':
        p += std::string("\x7b\x01\xfd\x0c", 4) + std::string(16, '\0') + '\x0b';
        break;
      case 'r':
        p += std::string("\x6f\x01\xd0\x6f\x0b", 5);
        break;
    }
  }
  return WasmSection(6, p);
}

TEST(GlobalsTest, ParsesTheGlobalsOfAClangGuest) {
  Result<ModuleInfo> info = ParseModuleInfo(LoadGuest("guest_globals"));
  ASSERT_TRUE(info.ok()) << info.status();
  // __stack_pointer, then the guest's three (non-exported) state globals.
  ASSERT_EQ(info->globals.size(), 4u);
  EXPECT_EQ(info->globals[0], (GlobalDesc{ValType::kI32, true}));
  EXPECT_EQ(info->globals[1], (GlobalDesc{ValType::kI32, true}));
  EXPECT_EQ(info->globals[2], (GlobalDesc{ValType::kI64, true}));
  EXPECT_EQ(info->globals[3], (GlobalDesc{ValType::kF64, true}));
  EXPECT_TRUE(CheckSnapshotable(*info).ok());
}

TEST(GlobalsTest, ExportMutableGlobalsAddsReservedExportsAndKeepsEverythingElse) {
  std::string bytes = LoadGuest("guest_globals");
  Result<std::string> out = ExportMutableGlobals(bytes);
  ASSERT_TRUE(out.ok()) << out.status();
  Result<ModuleInfo> a = ParseModuleInfo(bytes);
  Result<ModuleInfo> b = ParseModuleInfo(*out);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status();
  ASSERT_EQ(b->exports.size(), a->exports.size() + 4);
  EXPECT_TRUE(std::equal(a->exports.begin(), a->exports.end(), b->exports.begin()));
  for (uint32_t i = 0; i < 4; ++i) {
    const ExportDesc* e = b->FindExport(GlobalExportName(i));
    ASSERT_NE(e, nullptr) << i;
    EXPECT_EQ(e->kind, ExternKind::kGlobal);
    EXPECT_EQ(e->index, i);
  }
  EXPECT_EQ(a->globals, b->globals);
  EXPECT_EQ(a->imports, b->imports);

  // Immutable globals and types a snapshot cannot carry get no export; a module without
  // an export section gets one, in its place (before the code section).
  std::string code = WasmSection(10, Leb(0));
  std::string hand = WasmModule({Memory(1, std::nullopt), Globals("cIvFr"), code});
  Result<std::string> h = ExportMutableGlobals(hand);
  ASSERT_TRUE(h.ok()) << h.status();
  Result<ModuleInfo> hi = ParseModuleInfo(*h);
  ASSERT_TRUE(hi.ok()) << hi.status();
  ASSERT_EQ(hi->exports.size(), 2u);
  EXPECT_EQ(hi->exports[0].name, GlobalExportName(1));
  EXPECT_EQ(hi->exports[1].name, GlobalExportName(3));
  // Nothing to export: unchanged.
  std::string plain = WasmModule({Memory(1, std::nullopt), Globals("c"), ExportMemory()});
  EXPECT_EQ(*ExportMutableGlobals(plain), plain);
}

TEST(GlobalsTest, TypesASnapshotCannotCarryAreNamed) {
  Result<ModuleInfo> info =
      ParseModuleInfo(WasmModule({Memory(1, std::nullopt), Globals("ivcr"), ExportMemory()}));
  ASSERT_TRUE(info.ok()) << info.status();
  Status st = CheckSnapshotable(*info);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("global 1 (v128), global 3 (externref)"));
  EXPECT_THAT(std::string(st.message()), Not(HasSubstr("global 0")));
}

TEST(GlobalsTest, BadGlobalSectionsAndReservedNamesAreRefusedClearly) {
  // An initializer with an opcode that is not constant (local.get 0).
  std::string bad_init = WasmSection(6, Leb(1) + std::string("\x7f\x01\x20\x00\x0b", 5));
  Result<ModuleInfo> r = ParseModuleInfo(WasmModule({bad_init}));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not allowed in an initializer"));
  // Bad mutability; an initializer without its end.
  EXPECT_FALSE(
      ParseModuleInfo(WasmModule({WasmSection(6, Leb(1) + std::string("\x7f\x02\x41\x00\x0b", 5))}))
          .ok());
  EXPECT_FALSE(
      ParseModuleInfo(WasmModule({WasmSection(6, Leb(1) + std::string("\x7f\x01\x41\x00", 4))}))
          .ok());
  // A module may not use the reserved export names.
  std::string exports = WasmSection(7, Leb(2) + WasmName("memory") + '\x02' + Leb(0) +
                                           WasmName("$tern_global_0") + '\x03' + Leb(0));
  Result<ModuleInfo> info =
      ParseModuleInfo(WasmModule({Memory(1, std::nullopt), Globals("i"), exports}));
  ASSERT_TRUE(info.ok()) << info.status();
  Status st = CheckImports(*info);
  EXPECT_THAT(std::string(st.message()), HasSubstr("'$tern_global_0'"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("reserved"));
}

}  // namespace
}  // namespace tern::wasm
