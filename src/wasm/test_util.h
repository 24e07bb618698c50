// Helpers shared by the wasm tests: guest loading, a hand-written wasm module builder,
// a recording HostCalls and the process-wide test Engine.
// Thread-safety: FakeHost is single-threaded; SharedEngine() is set up once by a gtest
// Environment before any test runs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "wasm/engine.h"

namespace tern::wasm::testing {

// Bytes of $TERN_WASM_DIR/<name>.wasm (the test fails if it is missing).
std::string LoadGuest(std::string_view name);

// The one V8 engine of the test process.
Engine* SharedEngine();

// A HostCalls that records what the guest did.
class FakeHost final : public HostCalls {
 public:
  explicit FakeHost(std::string request = "") : request(std::move(request)) {}
  std::string_view Request() override { return request; }
  void SetReply(std::string_view bytes) override {
    reply.assign(bytes);
    in_place = {};
  }
  // Keeps the view (valid until the instance runs again) and a copy.
  void SetReplyInPlace(std::string_view bytes) override {
    reply.assign(bytes);
    in_place = bytes;
  }
  void SetFailure(StatusCode code, std::string_view message) override {
    failure_code = code;
    failure_message.assign(message);
  }
  void Log(int32_t level, std::string_view line) override { logs.emplace_back(level, line); }
  // Datasets from `objects` ((dataset, key) -> bytes).
  int64_t DataRead(std::string_view dataset, std::string_view key, uint64_t offset, uint32_t len,
                   std::string* out) override {
    auto it = objects.find({std::string(dataset), std::string(key)});
    if (it == objects.end()) return -static_cast<int64_t>(StatusCode::kNotFound);
    if (offset > it->second.size()) return -static_cast<int64_t>(StatusCode::kOutOfRange);
    *out = it->second.substr(offset, len);
    return static_cast<int64_t>(out->size());
  }
  int64_t DataSize(std::string_view dataset, std::string_view key) override {
    auto it = objects.find({std::string(dataset), std::string(key)});
    return it == objects.end() ? -static_cast<int64_t>(StatusCode::kNotFound)
                               : static_cast<int64_t>(it->second.size());
  }
  int64_t DataList(std::string_view dataset, std::string* out) override {
    bool any = false;
    for (const auto& [k, v] : objects) {
      if (k.first != dataset) continue;
      any = true;
      *out += k.second + "\t" + std::to_string(v.size()) + "\n";
    }
    return any ? 0 : -static_cast<int64_t>(StatusCode::kNotFound);
  }

  std::map<std::pair<std::string, std::string>, std::string> objects;
  std::string request;
  std::string reply;
  std::string_view in_place;  // the last reply, when given as a view of guest memory
  StatusCode failure_code = StatusCode::kOk;
  std::string failure_message;
  std::vector<std::pair<int32_t, std::string>> logs;
};

// Counts operator new calls on the calling thread between Start and Stop (the test
// binary replaces the global operator new; it forwards to malloc).
// False in sanitizer builds, which keep their own operator new.
bool CanCountAllocations();
void StartCountingAllocations();
uint64_t StopCountingAllocations();

// Little-endian u32 encoding helpers for the stateful guest's requests and replies.
std::string U32s(std::initializer_list<uint32_t> values);
uint32_t ReadU32(std::string_view bytes);

// A tiny wasm binary builder for hand-written modules.
std::string Leb(uint32_t v);
std::string WasmName(std::string_view s);
std::string WasmSection(uint8_t id, std::string_view payload);
std::string WasmModule(std::initializer_list<std::string> sections);

}  // namespace tern::wasm::testing
