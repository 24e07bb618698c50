#include "wasm/test_util.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

#include "testing/test_env.h"

namespace tern::wasm::testing {
namespace {

std::unique_ptr<Engine>& EngineSlot() {
  static std::unique_ptr<Engine> engine;
  return engine;
}

class EngineEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    Result<std::unique_ptr<Engine>> e = NewV8Engine(EngineOptions{});
    ASSERT_TRUE(e.ok()) << e.status();
    EngineSlot() = std::move(*e);
  }
  void TearDown() override { EngineSlot().reset(); }
};

[[maybe_unused]] ::testing::Environment* const kEnv =
    ::testing::AddGlobalTestEnvironment(new EngineEnvironment);

}  // namespace

Engine* SharedEngine() { return EngineSlot().get(); }

std::string LoadGuest(std::string_view name) {
  return tern::testing::ReadWasm(std::string(name));
}

std::string U32s(std::initializer_list<uint32_t> values) {
  std::string s;
  for (uint32_t v : values) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  }
  return s;
}

uint32_t ReadU32(std::string_view b) {
  if (b.size() < 4) return 0xdeadbeef;
  return static_cast<uint8_t>(b[0]) | static_cast<uint8_t>(b[1]) << 8 |
         static_cast<uint8_t>(b[2]) << 16 | static_cast<uint32_t>(static_cast<uint8_t>(b[3])) << 24;
}

std::string Leb(uint32_t v) {
  std::string out;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    if (v != 0) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (v != 0);
  return out;
}

std::string WasmName(std::string_view s) {
  return Leb(static_cast<uint32_t>(s.size())) + std::string(s);
}

std::string WasmSection(uint8_t id, std::string_view payload) {
  return std::string(1, static_cast<char>(id)) + Leb(static_cast<uint32_t>(payload.size())) +
         std::string(payload);
}

std::string WasmModule(std::initializer_list<std::string> sections) {
  std::string m("\0asm\x01\0\0\0", 8);
  for (const std::string& s : sections) m += s;
  return m;
}

}  // namespace tern::wasm::testing
