// wordcount: counts the words of a text (C++ with tern.hpp and libc++).
//
// Handlers:
//   count  request: text (any bytes). Words are maximal runs of ASCII letters and
//          digits, ASCII letters lower-cased; every other byte (UTF-8 included)
//          separates words. Reply (JSON, no spaces):
//            {"words":N,"unique":U,"top":[["the",12],["a",7],...]}
//          `top` holds the 10 most frequent words (fewer if there are fewer), by count
//          descending, ties broken by byte-wise ascending word.
//   stats  reply: {"requests":R,"words":W}, the count requests served and the words
//          they held since the instance started.
//
// State: the two totals behind `stats` (globals in linear memory). The manifest marks
// the service stateful so that they survive snapshot, restore and migration.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tern/tern.hpp"

namespace {

constexpr size_t kTop = 10;

uint64_t g_requests = 0;
uint64_t g_words = 0;

bool IsWordChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

void AppendUint(std::string* out, uint64_t v) {
  char buf[20];
  std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

}  // namespace

TERN_HANDLER(wordcount_count, "count") {
  std::string text(tern::Request());  // lower-cased copy; words are views into it
  for (char& c : text) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  std::unordered_map<std::string_view, uint64_t> counts;
  uint64_t words = 0;
  const std::string_view all(text);
  size_t i = 0;
  while (i < all.size()) {
    while (i < all.size() && !IsWordChar(all[i])) ++i;
    size_t start = i;
    while (i < all.size() && IsWordChar(all[i])) ++i;
    if (i > start) {
      ++counts[all.substr(start, i - start)];
      ++words;
    }
  }

  std::vector<std::pair<std::string_view, uint64_t>> top(counts.begin(), counts.end());
  size_t k = std::min(kTop, top.size());
  std::partial_sort(top.begin(), top.begin() + static_cast<ptrdiff_t>(k), top.end(),
                    [](const auto& a, const auto& b) {
                      return a.second != b.second ? a.second > b.second : a.first < b.first;
                    });
  top.resize(k);

  std::string out = "{\"words\":";
  AppendUint(&out, words);
  out += ",\"unique\":";
  AppendUint(&out, counts.size());
  out += ",\"top\":[";
  for (size_t j = 0; j < top.size(); ++j) {
    if (j != 0) out += ',';
    out += "[\"";
    out += top[j].first;  // [a-z0-9] only: nothing to escape
    out += "\",";
    AppendUint(&out, top[j].second);
    out += ']';
  }
  out += "]}";

  ++g_requests;
  g_words += words;
  return tern::Reply(out);
}

TERN_HANDLER(wordcount_stats, "stats") {
  std::string out = "{\"requests\":";
  AppendUint(&out, g_requests);
  out += ",\"words\":";
  AppendUint(&out, g_words);
  out += '}';
  return tern::Reply(out);
}
