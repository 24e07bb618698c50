// Little-endian integers in byte buffers, and a fast all-zero test: the pieces every
// binary format of tern (snapshots, the store's log, datasets, migration batches)
// encodes with. Header-only; pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace tern {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "tern's formats are little-endian");

inline void AppendU32(std::string* out, uint32_t v) {
  out->append(reinterpret_cast<const char*>(&v), 4);
}
inline void AppendU64(std::string* out, uint64_t v) {
  out->append(reinterpret_cast<const char*>(&v), 8);
}
inline void StoreU32(char* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void StoreU64(char* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint32_t LoadU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t LoadU64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Whether [p, p + n) is all zeros; n must be a multiple of 64 (pages, blocks).
inline bool IsZeroBlock(const char* p, size_t n) {
  for (size_t i = 0; i < n; i += 64) {
    uint64_t w[8];
    std::memcpy(w, p + i, 64);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
  }
  return true;
}

}  // namespace tern
