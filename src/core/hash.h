// Content hashes (SHA-256) used to key the compiled-module cache and to name modules
// in snapshots. Thread-safety: stateless functions.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace tern {

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest Sha256(std::string_view data);
// Lower-case hex, 64 characters.
std::string Sha256Hex(std::string_view data);
std::string ToHex(const uint8_t* data, size_t n);

// A fast non-cryptographic 64-bit hash (FNV-1a over 8-byte words), for page
// comparison and hash tables; not for anything an adversary chooses.
uint64_t Hash64(const void* data, size_t n);

}  // namespace tern
