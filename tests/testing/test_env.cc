#include "testing/test_env.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#include "core/file.h"
#include "core/logging.h"
#include "wasm/engine.h"

namespace tern::testing {
namespace {
std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}
}  // namespace

std::string WasmPath(const std::string& name) {
  return Env("TERN_WASM_DIR", TERN_TEST_WASM_DIR) + "/" + name + ".wasm";
}

std::string SourcePath(const std::string& rel) {
  return Env("TERN_SOURCE_DIR", TERN_TEST_SOURCE_DIR) + "/" + rel;
}

std::string BinPath(const std::string& name) {
  return Env("TERN_BIN_DIR", TERN_TEST_BIN_DIR) + "/" + name;
}

std::string ReadWasm(const std::string& name) {
  Result<std::string> r = ReadFile(WasmPath(name));
  EXPECT_TRUE(r.ok()) << "guest not built: " << r.status();
  return r.ok() ? *r : std::string();
}

std::string TempDir(const std::string& tag) {
  static std::atomic<int> n{0};
  std::string dir = ::testing::TempDir() + "tern_" + tag + "_" + std::to_string(::getpid()) + "_" +
                    std::to_string(n++);
  std::string cmd = "rm -rf '" + dir + "'";
  if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << cmd;
  EXPECT_TRUE(MakeDirs(dir).ok());
  return dir;
}

wasm::Engine* SharedEngine() {
  static wasm::Engine* engine = [] {
    Result<std::unique_ptr<wasm::Engine>> e = wasm::NewV8Engine(wasm::EngineOptions{});
    CHECK(e.ok()) << e.status();
    return e->release();  // lives for the whole process, like V8 itself
  }();
  return engine;
}

}  // namespace tern::testing
