// The near-data benchmark's dataset (bench/ndp): fixed 64-byte records, generated
// deterministically from their global index, so that the benchmark knows every
// object's expected answers without reading it back.
//
//   offset  size  field
//   0       8     id      u64 LE, the record's global index
//   8       4     key     u32 LE, uniform in [0, 1e6): SplitMix64(id) % 1e6
//   12      4     value   u32 LE, (SplitMix64(id) >> 32) & 0xffff
//   16      48    payload printable bytes derived from id
//
// Pure functions; thread-compatible.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace tern::bench::ndp {

inline constexpr size_t kRecordBytes = 64;
inline constexpr uint32_t kKeyRange = 1000000;

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint32_t RecordKey(uint64_t id) { return static_cast<uint32_t>(SplitMix64(id) % kKeyRange); }
inline uint32_t RecordValue(uint64_t id) {
  return static_cast<uint32_t>((SplitMix64(id) >> 32) & 0xffff);
}

// Writes record `id` into out[0..64).
inline void EncodeRecord(uint64_t id, char* out) {
  uint64_t h = SplitMix64(id);
  uint32_t key = static_cast<uint32_t>(h % kKeyRange);
  uint32_t value = static_cast<uint32_t>((h >> 32) & 0xffff);
  std::memcpy(out, &id, 8);
  std::memcpy(out + 8, &key, 4);
  std::memcpy(out + 12, &value, 4);
  for (size_t i = 16; i < kRecordBytes; ++i) {
    out[i] = static_cast<char>('a' + (h >> (i % 58)) % 26);
  }
}

// The answer of filter(ppm) over records [first, first + n): matches and sum of value.
struct FilterAnswer {
  uint64_t matches = 0;
  uint64_t sum = 0;
};

}  // namespace tern::bench::ndp
