// libFuzzer target: the frame decoder must never crash, hang or over-allocate on any
// byte stream, and every frame it accepts must re-encode to the same bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "transport/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tern::transport::Frame;
  using tern::transport::FrameDecoder;
  FrameDecoder dec(1 << 20);
  // Feed in two pieces to exercise the streaming path.
  size_t cut = size ? data[0] % (size + 1) : 0;
  dec.Feed(std::string_view(reinterpret_cast<const char*>(data), cut));
  dec.Feed(std::string_view(reinterpret_cast<const char*>(data) + cut, size - cut));
  Frame f;
  for (int i = 0; i < 64; ++i) {
    tern::Result<bool> r = dec.Next(&f);
    if (!r.ok() || !*r) break;
    std::string wire;
    if (!tern::transport::EncodeFrame(f, &wire).ok()) __builtin_trap();
    FrameDecoder again;
    again.Feed(wire);
    Frame g;
    tern::Result<bool> r2 = again.Next(&g);
    if (!r2.ok() || !*r2 || !(g == f)) __builtin_trap();
  }
  return 0;
}
