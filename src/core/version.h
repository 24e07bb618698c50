// The version of tern every binary and API reports.
#pragma once

namespace tern {

inline constexpr char kTernVersion[] = "0.1.0";

}  // namespace tern
