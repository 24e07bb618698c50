// What `tern explain SERVICE` prints for a placement decision (policy.h): the decision's
// explanation, then one row per candidate device with its predicted cost and verdict.
//
//   balanced: scan on csd0 (csd) — the least energy per request of ...
//
//   candidate  kind  p50       p99       J/req     moved     util  verdict
//   csd0       csd   128 ms    131 ms    1.54 J    0 B       0.41  chosen
//   s1-cpu     cpu   526 ms    527 ms    836 mJ    64 MiB    0.02  fits, but SLO: ...
//
// Thread-safety: a pure function.
#pragma once

#include <string>

#include "placement/policy.h"

namespace tern::placement {

// The explanation paragraph, a blank line, and the candidate table (columns aligned, one
// line per candidate, in view order). Ends with a newline.
std::string ExplainDecision(const Decision& decision);

}  // namespace tern::placement
