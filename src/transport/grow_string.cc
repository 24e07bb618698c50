// Compiled as C++23 (src/transport/CMakeLists.txt) for std::string::resize_and_overwrite;
// std::string's layout is the same in every language mode of one standard library.
#include "transport/grow_string.h"

namespace tern::transport {

void GrowForOverwrite(std::string* s, size_t n) {
#if defined(__cpp_lib_string_resize_and_overwrite)
  s->resize_and_overwrite(n, [](char*, size_t count) { return count; });
#else
  s->resize(n);
#endif
}

}  // namespace tern::transport
