// Base64 (RFC 4648, standard alphabet, with padding), for binary payloads in JSON.
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace tern {

std::string Base64Encode(std::string_view data);
// Accepts padded input; ignores ASCII whitespace. kInvalidArgument on any other
// character or a bad length, naming the offset.
Result<std::string> Base64Decode(std::string_view text);

}  // namespace tern
