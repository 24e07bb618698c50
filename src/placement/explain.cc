#include "placement/explain.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <vector>

#include "placement/internal.h"

namespace tern::placement {
namespace {

// Display width of UTF-8 text (counts code points; enough for "µ", "∞" and "→").
size_t Width(const std::string& s) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::string ExplainDecision(const Decision& decision) {
  constexpr size_t kCols = 8;
  std::vector<std::array<std::string, kCols>> rows;
  rows.push_back({"candidate", "kind", "p50", "p99", "J/req", "moved", "util", "verdict"});
  for (const Candidate& c : decision.candidates) {
    const Prediction& p = c.prediction;
    rows.push_back({p.device, std::string(DeviceKindName(p.kind)),
                    internal::FormatUs(p.latency_p50_us), internal::FormatUs(p.latency_p99_us),
                    internal::FormatJ(p.energy_j_per_request),
                    internal::FormatBytes(p.bytes_moved_per_request),
                    fmt::format("{:.2f}", p.utilization_after), c.verdict});
  }
  std::array<size_t, kCols> width{};
  for (const auto& row : rows) {
    for (size_t i = 0; i < kCols; ++i) width[i] = std::max(width[i], Width(row[i]));
  }
  std::string out = decision.explanation + "\n\n";
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < kCols; ++i) {
      line += row[i];
      if (i + 1 < kCols) line += std::string(width[i] - Width(row[i]) + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace tern::placement
