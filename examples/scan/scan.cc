// scan: a near-data service. It scans the objects of a dataset (tern_data_read) and
// aggregates what matches, replying with a small summary: the kind of service that
// should run on the storage device holding the data, where reading is local, rather
// than pull every byte across a link. The same code runs anywhere; where it runs is the
// runtime's decision, and the bytes it read locally or remotely show in `tern ps`.
//
//   count   "dataset|key|needle"   reads the whole object in 1 MiB chunks and counts
//           the lines containing `needle`; replies
//           {"bytes": N, "lines": L, "matches": M, "ns": T} (T: guest-timed)
//   count_all "dataset|needle"     the same over every object of the dataset
//   size    "dataset|key"          the object's size in bytes (decimal)
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "tern/tern.hpp"

namespace {

struct Totals {
  uint64_t bytes = 0, lines = 0, matches = 0;
};

bool Split(std::string_view in, char sep, std::string_view* head, std::string_view* rest) {
  size_t i = in.find(sep);
  if (i == std::string_view::npos) return false;
  *head = in.substr(0, i);
  *rest = in.substr(i + 1);
  return true;
}

std::string Decimal(uint64_t v) { return std::to_string(v); }

// Scans one object; returns 0 or a TERN_* code.
int32_t ScanObject(std::string_view dataset, std::string_view key, std::string_view needle,
                   Totals* t) {
  static char buf[1 << 20];
  std::string carry;  // a line cut by the chunk boundary
  uint64_t off = 0;
  for (;;) {
    int64_t n = tern::DataRead(dataset, key, off, buf, sizeof(buf));
    if (n < 0) return static_cast<int32_t>(-n);
    if (n == 0) break;
    off += static_cast<uint64_t>(n);
    t->bytes += static_cast<uint64_t>(n);
    std::string_view chunk(buf, static_cast<size_t>(n));
    size_t start = 0;
    while (start < chunk.size()) {
      size_t nl = chunk.find('\n', start);
      if (nl == std::string_view::npos) {
        carry.append(chunk.substr(start));
        break;
      }
      std::string_view line = chunk.substr(start, nl - start);
      if (!carry.empty()) {
        carry.append(line);
        line = carry;
      }
      ++t->lines;
      if (!needle.empty() && line.find(needle) != std::string_view::npos) ++t->matches;
      carry.clear();
      start = nl + 1;
    }
  }
  if (!carry.empty()) {
    ++t->lines;
    if (!needle.empty() && carry.find(needle) != std::string::npos) ++t->matches;
  }
  return 0;
}

int32_t ReplyTotals(const Totals& t, int64_t ns) {
  return tern::Reply("{\"bytes\": " + Decimal(t.bytes) + ", \"lines\": " + Decimal(t.lines) +
                     ", \"matches\": " + Decimal(t.matches) + ", \"ns\": " +
                     Decimal(static_cast<uint64_t>(ns)) + "}");
}

}  // namespace

TERN_HANDLER(scan_count, "count") {
  std::string_view ds, rest, key, needle;
  if (!Split(tern::Request(), '|', &ds, &rest) || !Split(rest, '|', &key, &needle)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "count: expected \"dataset|key|needle\"");
  }
  int64_t t0 = tern::NowNs();
  Totals t;
  if (int32_t rc = ScanObject(ds, key, needle, &t); rc != 0) {
    return tern::Fail(rc, "count: reading the dataset failed");
  }
  return ReplyTotals(t, tern::NowNs() - t0);
}

TERN_HANDLER(scan_count_all, "count_all") {
  std::string_view ds, needle;
  if (!Split(tern::Request(), '|', &ds, &needle)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "count_all: expected \"dataset|needle\"");
  }
  int64_t t0 = tern::NowNs();
  int32_t code = 0;
  std::string list = tern::DataList(ds, &code);
  if (code != 0) return tern::Fail(code, "count_all: listing the dataset failed");
  Totals t;
  std::string_view rest = list, line;
  while (Split(rest, '\n', &line, &rest)) {
    std::string_view key = line.substr(0, line.find('\t'));
    if (int32_t rc = ScanObject(ds, key, needle, &t); rc != 0) {
      return tern::Fail(rc, "count_all: reading the dataset failed");
    }
  }
  return ReplyTotals(t, tern::NowNs() - t0);
}

TERN_HANDLER(scan_size, "size") {
  std::string_view ds, key;
  if (!Split(tern::Request(), '|', &ds, &key)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "size: expected \"dataset|key\"");
  }
  int64_t n = tern::DataSize(ds, key);
  if (n < 0) return tern::Fail(static_cast<int32_t>(-n), "size: no such object");
  return tern::Reply(Decimal(static_cast<uint64_t>(n)));
}
