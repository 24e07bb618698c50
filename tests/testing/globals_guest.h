// The state tests/guests/globals.c replies with (`get`, `bump`): its three wasm globals
// and its counter in linear memory, 24 bytes little-endian. Shared by the engine and
// agent tests that check that globals survive snapshots, rollbacks and migrations.
// Header-only; value type.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string_view>

namespace tern::testing {

struct GlobalsGuestState {
  int32_t count = 0;      // i32 global
  int64_t wide = 0;       // i64 global
  double real = 0;        // f64 global
  uint32_t in_memory = 0;  // a static in linear memory
  bool operator==(const GlobalsGuestState&) const = default;
};

// False when `reply` is not 24 bytes.
inline bool ParseGlobalsGuestState(std::string_view reply, GlobalsGuestState* out) {
  if (reply.size() != 24) return false;
  std::memcpy(&out->count, reply.data(), 4);
  std::memcpy(&out->wide, reply.data() + 4, 8);
  std::memcpy(&out->real, reply.data() + 12, 8);
  std::memcpy(&out->in_memory, reply.data() + 20, 4);
  return true;
}

inline std::ostream& operator<<(std::ostream& os, const GlobalsGuestState& s) {
  return os << "{count " << s.count << ", wide " << s.wide << ", real " << s.real
            << ", in_memory " << s.in_memory << "}";
}

}  // namespace tern::testing
