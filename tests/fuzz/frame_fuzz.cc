// libFuzzer target: the frame decoder must never crash, hang or over-allocate on any
// byte stream, and every frame it accepts must re-encode to the same bytes. A second
// decoder reads the same stream as the TCP readers do (into PayloadWindow, at most
// ReadLimit into a buffer, a payload sink armed for one request id) and must decode
// the same frames, and a whole record decodes (DecodeWhole, DecodeWholeIntoSink,
// DecodeWholeBorrowed) as the shared-memory receiver does it, to the same frame.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

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
  std::vector<Frame> plain;
  for (int i = 0; i < 64; ++i) {
    tern::Result<bool> r = dec.Next(&f);
    if (!r.ok() || !*r) break;
    plain.push_back(f);
    std::string wire;
    if (!tern::transport::EncodeFrame(f, &wire).ok()) __builtin_trap();
    FrameDecoder again;
    again.Feed(wire);
    Frame g;
    tern::Result<bool> r2 = again.Next(&g);
    if (!r2.ok() || !*r2 || !(g == f)) __builtin_trap();
  }

  // The reader's way: chunk sizes from the input's first bytes.
  FrameDecoder rd(1 << 20);
  std::vector<char> sink(1 << 17);
  rd.SetPayloadSink(size > 1 ? data[1] : 0, sink);
  std::vector<Frame> read;
  size_t pos = 0, step = 0;
  while (pos < size && read.size() < plain.size()) {
    const size_t chunk = 1 + (size > 2 ? data[2 + step % (size - 2)] : 0) * 97;
    ++step;
    std::span<char> w = rd.PayloadWindow();
    const size_t k = std::min({w.size(), chunk, size - pos});
    if (k > 0) std::memcpy(w.data(), data + pos, k);
    rd.PayloadReceived(k);
    pos += k;
    const size_t n = std::min({rd.ReadLimit(), chunk, size - pos});
    rd.Feed(std::string_view(reinterpret_cast<const char*>(data) + pos, n));
    pos += n;
    for (;;) {
      tern::Result<bool> r = rd.Next(&f);
      if (!r.ok() || !*r) break;
      if (f.payload.empty() && rd.PayloadInSink() != SIZE_MAX && read.size() < plain.size() &&
          !plain[read.size()].payload.empty()) {
        f.payload.assign(sink.data(), rd.PayloadInSink());  // it went into the sink
      }
      read.push_back(f);
    }
  }
  if (read.size() > plain.size()) __builtin_trap();
  for (size_t i = 0; i < read.size(); ++i) {
    if (!(read[i] == plain[i])) __builtin_trap();
  }

  // The shared-memory receiver's way: the input as one record. DecodeWhole accepts it
  // exactly when it is one whole frame and nothing more, and then decodes what the
  // stream decoder did; DecodeWholeIntoSink the same, its payload in the sink when the
  // frame is a reply to the sink's request id that fits.
  const std::string_view record(reinterpret_cast<const char*>(data), size);
  std::string one;
  const bool whole = plain.size() == 1 && tern::transport::EncodeFrame(plain[0], &one).ok() &&
                     one.size() == size;
  Frame w;
  if (FrameDecoder::DecodeWhole(record, 1 << 20, &w).ok() != whole) __builtin_trap();
  if (whole && !(w == plain[0])) __builtin_trap();
  FrameDecoder sk(1 << 20);
  std::vector<char> small(size > 3 ? data[3] : 0);
  sk.SetPayloadSink(size > 1 ? data[1] : 0, small);
  Frame ws;
  if (sk.DecodeWholeIntoSink(record, 1 << 20, &ws).ok() != whole) __builtin_trap();
  if (whole) {
    if (sk.PayloadInSink() != SIZE_MAX) {
      if (!ws.payload.empty()) __builtin_trap();
      ws.payload.assign(small.data(), sk.PayloadInSink());
    }
    if (!(ws == plain[0])) __builtin_trap();
  }
  // DecodeWholeBorrowed (a shared-memory request left in the ring) accepts the same
  // records; its payload is the part of the record that DecodeWhole copies.
  Frame wb;
  tern::Result<std::string_view> borrowed = FrameDecoder::DecodeWholeBorrowed(record, 1 << 20, &wb);
  if (borrowed.ok() != whole) __builtin_trap();
  if (whole) {
    if (!wb.payload.empty()) __builtin_trap();
    if (borrowed->data() < record.data() ||
        borrowed->data() + borrowed->size() != record.data() + record.size()) {
      __builtin_trap();
    }
    wb.payload.assign(*borrowed);
    if (!(wb == plain[0])) __builtin_trap();
  }
  return 0;
}
