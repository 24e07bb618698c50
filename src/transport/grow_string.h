// GrowForOverwrite: std::string::resize without zero-filling the new bytes, for buffers
// the kernel is about to write into (a large payload received in place). A 64 KiB
// zero-fill costs about as much as a copy of it on this VM, once per frame and side.
#pragma once

#include <cstddef>
#include <string>

namespace tern::transport {

// Resizes `*s` to `n` bytes (n >= s->size()); the bytes past the old size are
// indeterminate until written: the caller writes all of them before reading any (or
// shrinks the string back). Where the standard library lacks C++23's
// resize_and_overwrite this is a plain resize.
void GrowForOverwrite(std::string* s, size_t n);

}  // namespace tern::transport
