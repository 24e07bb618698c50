// ndpscan: the near-data benchmark's guest (bench/ndp). Two services over the same
// dataset of fixed 64-byte records (the layout is in ndp_data.h; ndp_bench generates it):
//
//   filter "dataset|key|ppm"               scan-filter-aggregate: reads the whole object,
//          keeps the records whose `key` (uniform in [0, 1e6)) is below `ppm`, and replies
//          with a 16-byte header (matches, sum of `value` over them; little-endian u64)
//          followed by the matching records themselves. ppm = 1000 returns 0.1% of the
//          records, 1000000 all of them.
//   crunch "dataset|key|bytes|rounds"      compute-heavy: reads the first `bytes` of the
//          object and mixes every record `rounds` times; replies with the 16-byte header
//          (records, digest). Little data, much CPU: the kind of work a weak CSD core
//          should not take from the host.
//
// Both fail with TERN_INVALID_ARGUMENT on a malformed request and pass dataset errors
// through (a missing object is TERN_NOT_FOUND).
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "tern/tern.hpp"

namespace {

constexpr size_t kRecord = 64;
constexpr size_t kChunk = 1 << 20;  // a multiple of kRecord
alignas(16) char buf[kChunk];

bool Split(std::string_view in, char sep, std::string_view* head, std::string_view* rest) {
  size_t i = in.find(sep);
  if (i == std::string_view::npos) return false;
  *head = in.substr(0, i);
  *rest = in.substr(i + 1);
  return true;
}

bool ParseU64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

uint32_t Load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

void Append64(std::string* out, uint64_t v) {
  char b[8];
  std::memcpy(b, &v, sizeof(v));
  out->append(b, sizeof(b));
}

}  // namespace

TERN_HANDLER(ndp_filter, "filter") {
  std::string_view ds, rest, key, ppm_s;
  uint64_t ppm = 0;
  if (!Split(tern::Request(), '|', &ds, &rest) || !Split(rest, '|', &key, &ppm_s) ||
      !ParseU64(ppm_s, &ppm) || ppm > 1000000) {
    return tern::Fail(TERN_INVALID_ARGUMENT,
                      "filter: expected \"dataset|key|ppm\" with ppm in [0, 1000000]");
  }
  int64_t size = tern::DataSize(ds, key);
  if (size < 0) return tern::Fail(static_cast<int32_t>(-size), "filter: no such object");
  std::string out;
  // The matches (a share ppm of the records, plus slack for the sampling variation).
  out.reserve(16 + static_cast<size_t>(static_cast<uint64_t>(size) / 1000000 * ppm * 11 / 10));
  out.resize(16);
  uint64_t matches = 0, sum = 0, off = 0;
  const uint32_t threshold = static_cast<uint32_t>(ppm);
  for (;;) {
    int64_t n = tern::DataRead(ds, key, off, buf, sizeof(buf));
    if (n < 0) return tern::Fail(static_cast<int32_t>(-n), "filter: reading the dataset failed");
    if (n == 0) break;
    off += static_cast<uint64_t>(n);
    const size_t records = static_cast<size_t>(n) / kRecord;
    for (size_t i = 0; i < records; ++i) {
      const char* r = buf + i * kRecord;
      if (Load32(r + 8) < threshold) {
        ++matches;
        sum += Load32(r + 12);
        out.append(r, kRecord);
      }
    }
  }
  std::memcpy(out.data(), &matches, 8);
  std::memcpy(out.data() + 8, &sum, 8);
  return tern::Reply(out);
}

TERN_HANDLER(ndp_crunch, "crunch") {
  std::string_view ds, rest, key, bytes_s, rounds_s;
  uint64_t bytes = 0, rounds = 0;
  if (!Split(tern::Request(), '|', &ds, &rest) || !Split(rest, '|', &key, &rest) ||
      !Split(rest, '|', &bytes_s, &rounds_s) || !ParseU64(bytes_s, &bytes) ||
      !ParseU64(rounds_s, &rounds) || rounds > 100000) {
    return tern::Fail(TERN_INVALID_ARGUMENT,
                      "crunch: expected \"dataset|key|bytes|rounds\" with rounds <= 100000");
  }
  uint64_t records = 0, digest = 0x243F6A8885A308D3ull, off = 0;
  while (off < bytes) {
    uint64_t want = bytes - off < sizeof(buf) ? bytes - off : sizeof(buf);
    int64_t n = tern::DataRead(ds, key, off, buf, want);
    if (n < 0) return tern::Fail(static_cast<int32_t>(-n), "crunch: reading the dataset failed");
    if (n == 0) break;
    off += static_cast<uint64_t>(n);
    for (size_t i = 0; i + kRecord <= static_cast<size_t>(n); i += kRecord) {
      uint64_t h = digest;
      for (uint64_t k = 0; k < rounds; ++k) {
        for (size_t w = 0; w < kRecord; w += 8) {
          uint64_t v;
          std::memcpy(&v, buf + i + w, 8);
          h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
          h *= 0xBF58476D1CE4E5B9ull;
        }
      }
      digest ^= h;
      ++records;
    }
  }
  std::string out;
  Append64(&out, records);
  Append64(&out, digest);
  return tern::Reply(out);
}
