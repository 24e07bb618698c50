#include "transport/frame.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace tern::transport {
namespace {

// Decodes every whole frame the decoder holds into *got (a decoding error fails the test).
void TakeFrames(FrameDecoder& d, std::vector<Frame>* got) {
  Frame f;
  for (;;) {
    Result<bool> r = d.Next(&f);
    ASSERT_TRUE(r.ok()) << r.status();
    if (!*r) return;
    got->push_back(f);
  }
}

// Feeds `wire` to `d` as a socket reader does: into the payload window first, then at
// most `limit()` bytes through Feed (bytes the reader copies: counted in *copied),
// taking out the frames that are whole after each step.
template <typename Limit>
void ReadLikeASocket(FrameDecoder& d, std::string_view wire, Limit limit, std::vector<Frame>* got,
                     size_t* copied = nullptr) {
  size_t pos = 0;
  while (pos < wire.size()) {
    std::span<char> w = d.PayloadWindow();
    const size_t k = std::min(w.size(), wire.size() - pos);
    std::memcpy(w.data(), wire.data() + pos, k);
    d.PayloadReceived(k);
    pos += k;
    const size_t n = std::min(limit(), wire.size() - pos);
    d.Feed(wire.substr(pos, n));
    if (copied != nullptr) *copied += n;
    pos += n;
    ASSERT_NO_FATAL_FAILURE(TakeFrames(d, got));
  }
}

Frame FullFrame() {
  Frame f;
  f.type = FrameType::kInvoke;
  f.request_id = 0x0102030405060708ull;
  f.epoch = 0x1112131415161718ull;
  f.trace_id = 0x2122232425262728ull;
  f.idempotency_key = 0x3132333435363738ull;
  f.budget_us = 250000;
  f.status = StatusCode::kOk;
  f.tenant = "acme";
  f.service = "orders";
  f.handler = "place";
  f.payload = std::string("hello\0world", 11);
  return f;
}

std::string Encode(const Frame& f) {
  std::string out;
  Status s = EncodeFrame(f, &out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// Decodes every complete frame in `bytes` (fed at once).
std::vector<Frame> DecodeAll(FrameDecoder* d, std::string_view bytes) {
  d->Feed(bytes);
  std::vector<Frame> frames;
  Frame f;
  for (;;) {
    Result<bool> r = d->Next(&f);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || !*r) break;
    frames.push_back(f);
  }
  return frames;
}

void PutU32(std::string* s, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*s)[off + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
void PutU16(std::string* s, size_t off, uint16_t v) {
  (*s)[off] = static_cast<char>(v & 0xff);
  (*s)[off + 1] = static_cast<char>(v >> 8);
}
// Recomputes the header CRC after a test edited header bytes.
void FixCrc(std::string* s) { PutU32(s, 60, Crc32c(s->data(), 60)); }
uint64_t GetU64(const std::string& s, size_t off) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s[off + i]);
  return v;
}

TEST(Crc32cTest, KnownVectorsAndChaining) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  std::string data = "The quick brown fox jumps over the lazy dog, twice over.";
  for (size_t split = 0; split <= data.size(); ++split) {
    EXPECT_EQ(Crc32c(data.data() + split, data.size() - split, Crc32c(data.data(), split)),
              Crc32c(data.data(), data.size()))
        << split;
  }
}

TEST(FrameTest, HeaderLayoutMatchesTheSpec) {
  Frame f = FullFrame();
  f.payload = "xyz";
  std::string b = Encode(f);
  ASSERT_EQ(b.size(), kFrameHeaderBytes + 4 + 6 + 5 + 3);
  EXPECT_EQ(b.substr(0, 4), "TRN1");
  EXPECT_EQ(kFrameHeaderBytes, 64u);
  EXPECT_EQ(b[4], 2);  // version
  EXPECT_EQ(b[5], 1);  // type: invoke
  EXPECT_EQ(b[6], 0);
  EXPECT_EQ(b[7], 0);
  EXPECT_EQ(static_cast<uint8_t>(b[8]), 0x08);  // request_id, little-endian
  EXPECT_EQ(static_cast<uint8_t>(b[15]), 0x01);
  EXPECT_EQ(GetU64(b, 16), 0x1112131415161718ull);  // epoch
  EXPECT_EQ(GetU64(b, 24), 0x2122232425262728ull);  // trace_id
  EXPECT_EQ(GetU64(b, 32), 0x3132333435363738ull);  // idempotency_key
  EXPECT_EQ(GetU64(b, 40) & 0xffffffff, 250000u);   // budget_us
  EXPECT_EQ(GetU64(b, 40) >> 32, 0u);               // status
  EXPECT_EQ(b[48], 4);                              // tenant_len
  EXPECT_EQ(b[50], 6);                              // service_len
  EXPECT_EQ(b[52], 5);                              // handler_len
  EXPECT_EQ(b[54], 0);                              // reserved
  EXPECT_EQ(b[56], 3);                              // payload_len
  uint32_t crc = 0;
  for (int i = 3; i >= 0; --i) crc = (crc << 8) | static_cast<uint8_t>(b[60 + i]);
  EXPECT_EQ(crc, Crc32c(b.data(), 60));
  EXPECT_EQ(b.substr(64), "acmeordersplacexyz");
}

TEST(FrameTest, RoundTripAllFieldsAndTypes) {
  FrameDecoder d;
  std::string stream;
  std::vector<Frame> want;
  for (uint8_t t = 1; t <= 6; ++t) {
    Frame f = FullFrame();
    f.type = static_cast<FrameType>(t);
    f.status = t == 3 ? StatusCode::kUnavailable : StatusCode::kOk;
    f.request_id += t;
    want.push_back(f);
    stream += Encode(f);
  }
  Frame empty;  // all defaults, empty strings and payload
  want.push_back(empty);
  stream += Encode(empty);
  Frame big = FullFrame();
  big.tenant = std::string(kMaxNameBytes, 't');
  big.service = std::string(kMaxNameBytes, 's');
  big.handler = std::string(kMaxNameBytes, 'h');
  big.payload.resize(3 << 20);
  for (size_t i = 0; i < big.payload.size(); ++i) big.payload[i] = static_cast<char>(i * 7);
  want.push_back(big);
  stream += Encode(big);

  std::vector<Frame> got = DecodeAll(&d, stream);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << i;
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(FrameTest, EncodeRejectsLongNamesAndLeavesOutputAlone) {
  Frame f = FullFrame();
  f.service = std::string(kMaxNameBytes + 1, 's');
  std::string out = "prefix";
  Status s = EncodeFrame(f, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("service"), std::string_view::npos) << s;
  EXPECT_EQ(out, "prefix");
}

// DecodeWhole (shared-memory records): one frame that fills the bytes exactly, with the
// decoder's checks; the output frame's strings are overwritten (capacity reused).
TEST(FrameTest, DecodeWholeTakesExactlyOneFrame) {
  Frame want = FullFrame();
  want.payload = std::string(5000, 'w');
  const std::string b = Encode(want);
  Frame got;
  got.payload = std::string(20000, 'x');  // longer than the new payload: replaced, not kept
  got.tenant = "stale";
  ASSERT_TRUE(FrameDecoder::DecodeWhole(b, kMaxPayloadBytes, &got).ok());
  EXPECT_EQ(got, want);
  Frame empty;
  ASSERT_TRUE(FrameDecoder::DecodeWhole(Encode(empty), kMaxPayloadBytes, &got).ok());
  EXPECT_EQ(got, empty);

  // Less or more than one frame.
  for (const std::string& bad : {b.substr(0, b.size() - 1), b.substr(0, 40), b + "x", b + b}) {
    Status s = FrameDecoder::DecodeWhole(bad, kMaxPayloadBytes, &got);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << bad.size() << ": " << s;
  }
  // A bad header (CRC) and a payload over the receiver's limit.
  std::string corrupt = b;
  corrupt[20] ^= 1;
  EXPECT_EQ(FrameDecoder::DecodeWhole(corrupt, kMaxPayloadBytes, &got).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(FrameDecoder::DecodeWhole(b, 4999, &got).code(), StatusCode::kResourceExhausted);
}

TEST(FrameTest, DecoderFedByteByByte) {
  std::string stream;
  std::vector<Frame> want;
  for (int i = 0; i < 5; ++i) {
    Frame f = FullFrame();
    f.request_id = i;
    f.payload = std::string(i * 100, 'p');
    want.push_back(f);
    stream += Encode(f);
  }
  FrameDecoder d;
  std::vector<Frame> got;
  Frame f;
  for (char c : stream) {
    d.Feed(std::string_view(&c, 1));
    Result<bool> r = d.Next(&f);
    ASSERT_TRUE(r.ok()) << r.status();
    if (*r) got.push_back(f);
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]);
}

TEST(FrameTest, TruncatedFrameNeedsMoreBytesWithoutError) {
  std::string b = Encode(FullFrame());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{4}, size_t{47}, size_t{48}, size_t{63},
                     size_t{64}, b.size() - 1}) {
    FrameDecoder d;
    d.Feed(std::string_view(b).substr(0, cut));
    Frame f;
    Result<bool> r = d.Next(&f);
    ASSERT_TRUE(r.ok()) << cut << ": " << r.status();
    EXPECT_FALSE(*r) << cut;
    EXPECT_EQ(d.buffered(), cut);
    // The rest completes it.
    d.Feed(std::string_view(b).substr(cut));
    r = d.Next(&f);
    ASSERT_TRUE(r.ok() && *r) << cut;
    EXPECT_EQ(f, FullFrame());
  }
}

Status DecodeError(std::string bytes, uint32_t max_payload = kMaxPayloadBytes) {
  FrameDecoder d(max_payload);
  d.Feed(bytes);
  Frame f;
  Result<bool> r = d.Next(&f);
  if (r.ok()) return Status::Ok();
  EXPECT_EQ(d.error(), r.status());
  return r.status();
}

TEST(FrameTest, BadMagicIsDetectedFromTheFirstByte) {
  Status s = DecodeError("G");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bad magic"), std::string_view::npos) << s;
  s = DecodeError("GET / HTTP/1.1\r\n\r\n");
  EXPECT_NE(s.message().find("bad magic"), std::string_view::npos) << s;
}

TEST(FrameTest, UnsupportedVersion) {
  std::string b = Encode(FullFrame());
  b[4] = 3;
  FixCrc(&b);
  Status s = DecodeError(b.substr(0, 5));  // detected before the header is complete
  EXPECT_NE(s.message().find("unsupported version 3"), std::string_view::npos) << s;
  EXPECT_NE(s.message().find("newer"), std::string_view::npos) << s;
}

// A version-1 frame (48-byte header: no trace_id or idempotency_key), byte for byte as
// the previous build wrote it: rejected as soon as its version byte arrives, with an
// error that says the sender is older, and nothing of it is decoded.
TEST(FrameTest, VersionOneFramesAreRejected) {
  std::string v1(48, '\0');
  PutU32(&v1, 0, kFrameMagic);
  v1[4] = 1;           // version
  v1[5] = 1;           // invoke
  PutU32(&v1, 8, 7);   // request_id
  PutU16(&v1, 36, 1);  // handler_len
  PutU32(&v1, 44, Crc32c(v1.data(), 44));
  v1 += "h";
  for (size_t n : {size_t{5}, v1.size()}) {
    FrameDecoder d;
    d.Feed(std::string_view(v1).substr(0, n));
    Frame f;
    Result<bool> r = d.Next(&f);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("unsupported version 1 (this build speaks version 2; "
                                        "the sender runs an older tern"),
              std::string_view::npos)
        << r.status();
    EXPECT_EQ(f, Frame{});
  }
}

TEST(FrameTest, TraceIdAndIdempotencyKeyRoundTrip) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{0x8000000000000000ull}, ~uint64_t{0}}) {
    Frame f = FullFrame();
    f.trace_id = v;
    f.idempotency_key = ~v;
    FrameDecoder d;
    std::vector<Frame> got = DecodeAll(&d, Encode(f));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].trace_id, v);
    EXPECT_EQ(got[0].idempotency_key, ~v);
  }
  // Both are covered by the header CRC.
  for (size_t off : {size_t{24}, size_t{39}}) {
    std::string b = Encode(FullFrame());
    b[off] ^= 0x01;
    EXPECT_NE(DecodeError(b).message().find("header CRC mismatch"), std::string_view::npos) << off;
  }
}

TEST(FrameTest, CorruptedHeaderCrc) {
  std::string b = Encode(FullFrame());
  b[9] ^= 0x40;  // a bit of request_id
  Status s = DecodeError(b);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("header CRC mismatch"), std::string_view::npos) << s;
}

TEST(FrameTest, UnknownType) {
  std::string b = Encode(FullFrame());
  b[5] = 42;
  FixCrc(&b);
  Status s = DecodeError(b);
  EXPECT_NE(s.message().find("unknown type 42"), std::string_view::npos) << s;
}

TEST(FrameTest, NameTooLong) {
  std::string b = Encode(FullFrame());
  PutU16(&b, 52, 300);  // handler_len
  FixCrc(&b);
  Status s = DecodeError(b);
  EXPECT_NE(s.message().find("handler name too long"), std::string_view::npos) << s;
}

TEST(FrameTest, OversizedPayloadRejectedFromTheHeaderWithoutAllocating) {
  std::string b = Encode(FullFrame()).substr(0, kFrameHeaderBytes);
  PutU32(&b, 56, 0xFFFFFFFFu);  // a 4 GiB payload
  FixCrc(&b);
  FrameDecoder d;
  d.Feed(b);
  Frame f;
  Result<bool> r = d.Next(&f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("exceeds"), std::string_view::npos) << r.status();
  EXPECT_LT(d.BufferCapacityForTest(), size_t{1} << 16);

  // A configured lower limit applies too.
  Frame small = FullFrame();
  small.payload = std::string(1025, 'x');
  EXPECT_EQ(DecodeError(Encode(small), 1024).code(), StatusCode::kResourceExhausted);
  small.payload.resize(1024);
  EXPECT_TRUE(DecodeError(Encode(small), 1024).ok());
}

TEST(FrameTest, ErrorsAreSticky) {
  FrameDecoder d;
  d.Feed("XXXX");
  Frame f;
  ASSERT_FALSE(d.Next(&f).ok());
  d.Feed(Encode(FullFrame()));
  Result<bool> r = d.Next(&f);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad magic"), std::string_view::npos);
}

TEST(FrameTest, RandomGarbageNeverCrashes) {
  std::mt19937_64 rng(12345);
  const std::string valid = Encode(FullFrame());
  int errors = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes;
    switch (iter % 3) {
      case 0:  // pure noise
        bytes.resize(4 + rng() % 300);
        for (char& c : bytes) c = static_cast<char>(rng());
        break;
      case 1:  // a valid frame with random bytes flipped
        bytes = valid;
        for (int k = 0; k < 3; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
        break;
      default:  // a plausible header (good magic, version and CRC) with random fields
        bytes = valid.substr(0, kFrameHeaderBytes);
        for (size_t i = 5; i < 60; ++i) bytes[i] = static_cast<char>(rng());
        bytes[5] = static_cast<char>(1 + rng() % 7);
        for (size_t i : {48, 50, 52}) PutU16(&bytes, i, static_cast<uint16_t>(rng() % 300));
        PutU32(&bytes, 56, static_cast<uint32_t>(rng() % 2000));
        FixCrc(&bytes);
        bytes.resize(bytes.size() + rng() % 3000, 'z');
        break;
    }
    FrameDecoder d(1000);
    // Feed in random-sized pieces, decoding as we go.
    size_t pos = 0;
    bool failed = false;
    while (pos < bytes.size() && !failed) {
      size_t n = 1 + rng() % 64;
      d.Feed(std::string_view(bytes).substr(pos, n));
      pos += n;
      Frame f;
      for (;;) {
        Result<bool> r = d.Next(&f);
        if (!r.ok()) {
          EXPECT_FALSE(r.status().message().empty());
          failed = true;
          break;
        }
        if (!*r) break;
      }
    }
    errors += failed;
  }
  EXPECT_GT(errors, 1500);  // the noise cases all fail
}

TEST(FrameTest, DecoderBufferStaysSmallOnALongStream) {
  Frame f = FullFrame();
  f.payload = std::string(1000, 'q');
  std::string one = Encode(f);
  std::string stream;
  for (int i = 0; i < 200; ++i) stream += one;
  FrameDecoder d;
  size_t decoded = 0;
  size_t max_capacity = 0;
  Frame out;
  for (int round = 0; round < 25; ++round) {
    // Chunks that split frames at varying places.
    for (size_t pos = 0; pos < stream.size(); pos += 3001) {
      d.Feed(std::string_view(stream).substr(pos, 3001));
      for (;;) {
        Result<bool> r = d.Next(&out);
        ASSERT_TRUE(r.ok()) << r.status();
        if (!*r) break;
        ++decoded;
      }
      max_capacity = std::max(max_capacity, d.BufferCapacityForTest());
    }
  }
  EXPECT_EQ(decoded, 25u * 200);
  EXPECT_LT(max_capacity, size_t{64} << 10);
}

TEST(FrameTest, LargeFrameBufferIsReleasedAfterUse) {
  Frame f = FullFrame();
  f.payload = std::string(8 << 20, 'L');
  FrameDecoder d;
  ASSERT_EQ(DecodeAll(&d, Encode(f)).size(), 1u);
  EXPECT_LT(d.BufferCapacityForTest(), size_t{1} << 20);
}

TEST(FrameTest, ErrorFramesCarryStatusAndMessage) {
  Frame e = MakeErrorFrame(7, NotFoundError("no such service 'x'"));
  EXPECT_EQ(e.type, FrameType::kError);
  EXPECT_EQ(e.request_id, 7u);
  EXPECT_EQ(e.payload, "no such service 'x'");
  FrameDecoder d;
  std::vector<Frame> got = DecodeAll(&d, Encode(e));
  ASSERT_EQ(got.size(), 1u);
  Status s = ErrorFrameStatus(got[0]);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no such service 'x'");
  EXPECT_TRUE(ErrorFrameStatus(FullFrame()).ok());
  Frame weird;
  weird.type = FrameType::kError;  // status left OK by a sloppy sender
  EXPECT_EQ(ErrorFrameStatus(weird).code(), StatusCode::kUnknown);
}

// A large payload goes into its frame, not through the decoder's buffer: what has
// arrived with the header is copied once, the rest is received in place (the reader
// writes into PayloadWindow) or fed; the frame after it decodes as usual.
TEST(FrameTest, LargePayloadIsReceivedIntoItsFrame) {
  Frame big = FullFrame();
  big.payload.resize(300 << 10);
  for (size_t i = 0; i < big.payload.size(); ++i) big.payload[i] = static_cast<char>(i * 13);
  Frame next = FullFrame();
  next.request_id = 99;
  const std::string wire = Encode(big) + Encode(next);
  const size_t head = kFrameHeaderBytes + 4 + 6 + 5;
  FrameDecoder d;
  EXPECT_TRUE(d.PayloadWindow().empty());
  d.Feed(std::string_view(wire).substr(0, head + 1000));
  Frame f;
  Result<bool> r = d.Next(&f);
  ASSERT_TRUE(r.ok() && !*r);
  EXPECT_EQ(d.buffered(), 0u);
  std::span<char> w = d.PayloadWindow();
  ASSERT_EQ(w.size(), size_t{256} << 10);  // a window at a time, not the whole rest
  // Half of the rest straight into the window, the rest (and the next frame) fed.
  size_t pos = head + 1000;
  std::memcpy(w.data(), wire.data() + pos, w.size() / 2);
  d.PayloadReceived(w.size() / 2);
  pos += w.size() / 2;
  EXPECT_EQ(d.PayloadWindow().size(), w.size() - w.size() / 2);
  ASSERT_TRUE(d.Next(&f).ok());
  for (; pos < wire.size(); pos += 7000) d.Feed(std::string_view(wire).substr(pos, 7000));
  EXPECT_LT(d.BufferCapacityForTest(), size_t{64} << 10);  // the payload never went there
  r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r) << r.status();
  EXPECT_EQ(f, big);
  EXPECT_TRUE(d.PayloadWindow().empty());
  r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(f, next);
  EXPECT_EQ(d.buffered(), 0u);
}

// A spare given to the decoder (warm memory a reader prepared) is the buffer the next
// large payload is received into, and then the one after it gets the caller's old
// payload buffer: two buffers in turn, none allocated.
TEST(FrameTest, AGivenSpareReceivesTheNextLargePayload) {
  Frame big = FullFrame();
  big.payload.assign(300 << 10, 'p');
  FrameDecoder d;
  std::string spare;
  spare.reserve(400 << 10);
  const char* spare_at = spare.data();
  d.GiveSpare(std::move(spare));
  Frame f;
  f.payload.reserve(400 << 10);
  const char* own_at = f.payload.data();
  d.Feed(Encode(big));
  Result<bool> r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r) << r.status();
  EXPECT_EQ(f, big);
  EXPECT_EQ(f.payload.data(), spare_at);
  big.payload.assign(300 << 10, 'q');
  d.Feed(Encode(big));
  r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r) << r.status();
  EXPECT_EQ(f, big);
  EXPECT_EQ(f.payload.data(), own_at);  // the caller's first buffer, passed on
}

TEST(FrameTest, LargeFramesFedInRandomPiecesRoundTrip) {
  std::mt19937_64 rng(7);
  std::vector<Frame> want;
  std::string wire;
  for (int i = 0; i < 12; ++i) {
    Frame f = FullFrame();
    f.request_id = static_cast<uint64_t>(i);
    f.payload.resize(i % 3 == 0 ? 10 : (kLargePayloadBytes - 1 + rng() % 100000));
    for (char& c : f.payload) c = static_cast<char>(rng());
    want.push_back(f);
    wire += Encode(f);
  }
  FrameDecoder d;
  std::vector<Frame> got;
  for (size_t pos = 0; pos < wire.size();) {
    size_t n = std::min<size_t>(1 + rng() % 40000, wire.size() - pos);
    // Sometimes the reader writes into the window itself, sometimes it feeds.
    std::span<char> w = d.PayloadWindow();
    if (!w.empty() && rng() % 2 == 0) {
      size_t k = std::min(n, w.size());
      std::memcpy(w.data(), wire.data() + pos, k);
      d.PayloadReceived(k);
      d.Feed(std::string_view(wire).substr(pos + k, n - k));
    } else {
      d.Feed(std::string_view(wire).substr(pos, n));
    }
    pos += n;
    // Sometimes several pieces arrive before the reader decodes.
    if (pos < wire.size() && rng() % 3 == 0) continue;
    ASSERT_NO_FATAL_FAILURE(TakeFrames(d, &got));
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(got[i] == want[i]) << i;
}

// FrameOutput writes frames in order through a socket that takes only part at a time;
// large payloads given as rvalues are taken over, not copied.
Frame LargeFrame(uint64_t id, size_t size, char seed) {
  Frame f = FullFrame();
  f.request_id = id;
  f.payload.resize(size);
  for (size_t i = 0; i < size; ++i) f.payload[i] = static_cast<char>(seed + i * 7);
  return f;
}

TEST(FrameTest, WholeLargeFrameInOneFeedWithMoreBehindIt) {
  // One read brought a whole large frame and the start of the next: both decode, in
  // order, and the large payload never passes through the decoder's buffer.
  const Frame big = LargeFrame(1, 100 << 10, 'x');
  Frame small = FullFrame();
  small.request_id = 2;
  const std::string wire = Encode(big) + Encode(small);
  FrameDecoder d;
  d.Feed(std::string_view(wire).substr(0, wire.size() - 5));
  EXPECT_LT(d.BufferCapacityForTest(), size_t{4} << 10);
  Frame f;
  Result<bool> r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r) << r.status();
  EXPECT_EQ(f, big);
  r = d.Next(&f);
  ASSERT_TRUE(r.ok() && !*r);
  d.Feed(std::string_view(wire).substr(wire.size() - 5));
  r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(f, small);
}

TEST(FrameTest, ReadLimitAsksForTheHeadAloneAfterALargeFrame) {
  const Frame a = LargeFrame(1, 70 << 10, 'a');
  const Frame b = LargeFrame(2, 90 << 10, 'b');
  const std::string wire = Encode(a) + Encode(b) + Encode(b);
  const size_t head = kFrameHeaderBytes + a.tenant.size() + a.service.size() + a.handler.size();
  FrameDecoder d;
  EXPECT_EQ(d.ReadLimit(), SIZE_MAX);  // nothing known yet: read what is there
  // A reader that honours ReadLimit: into the window first, then at most the limit
  // (and 64 KiB) into its own buffer, which it feeds: those bytes it copies.
  size_t copied = 0;
  std::vector<Frame> got;
  ASSERT_NO_FATAL_FAILURE(ReadLikeASocket(
      d, wire, [&] { return std::min(d.ReadLimit(), size_t{64} << 10); }, &got, &copied));
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], a);
  EXPECT_EQ(got[1], b);
  EXPECT_EQ(got[2], b);
  // Only the first read (before any header was known) and the two heads of b went
  // through the reader's buffer: both of b's payloads landed in their frames.
  EXPECT_EQ(copied, (size_t{64} << 10) + 2 * head);
  EXPECT_EQ(d.ReadLimit(), head);
  // A small frame ends header-first reading.
  Frame c = FullFrame();
  ASSERT_EQ(DecodeAll(&d, Encode(c)).size(), 1u);
  EXPECT_EQ(d.ReadLimit(), SIZE_MAX);
}

TEST(FrameTest, PayloadSinkReceivesTheMatchingReplyInPlace) {
  Frame reply = LargeFrame(7, 50 << 10, 'r');
  reply.type = FrameType::kReply;
  Frame other = reply;
  other.request_id = 6;  // a late answer to another request
  Frame error = reply;
  error.type = FrameType::kError;
  error.status = StatusCode::kInternal;
  std::vector<char> sink(64 << 10, '\0');
  FrameDecoder d;
  d.SetPayloadSink(7, sink);
  const std::string wire = Encode(other) + Encode(error) + Encode(reply) + Encode(reply);
  std::vector<Frame> got;
  ASSERT_NO_FATAL_FAILURE(ReadLikeASocket(
      d, wire, [] { return size_t{3000}; }, &got));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0], other);  // another request id: its own payload
  EXPECT_EQ(got[1], error);  // not a reply: an error message stays in its frame
  // The reply: payload in the sink, the frame's empty; the sink is used once.
  EXPECT_TRUE(got[2].payload.empty());
  EXPECT_EQ(got[2].request_id, 7u);
  EXPECT_EQ(d.PayloadInSink(), reply.payload.size());
  EXPECT_EQ(std::string(sink.data(), reply.payload.size()), reply.payload);
  EXPECT_EQ(got[3], reply);

  // Too small a sink: the payload goes into the frame.
  d.SetPayloadSink(7, std::span<char>(sink.data(), 1000));
  EXPECT_EQ(d.PayloadInSink(), SIZE_MAX);
  Frame f;
  std::vector<Frame> frames = DecodeAll(&d, Encode(reply));
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0], reply);
  EXPECT_EQ(d.PayloadInSink(), SIZE_MAX);

  // Cleared while the payload is arriving: what was in the sink moves into the frame.
  std::fill(sink.begin(), sink.end(), '\0');
  d.SetPayloadSink(7, sink);
  const std::string one = Encode(reply);
  d.Feed(std::string_view(one).substr(0, 20000));
  ASSERT_TRUE(d.Next(&f).ok());
  d.ClearPayloadSink();
  std::fill(sink.begin(), sink.end(), 'z');  // the caller reuses its buffer
  d.Feed(std::string_view(one).substr(20000));
  Result<bool> r = d.Next(&f);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(f, reply);
  EXPECT_EQ(d.PayloadInSink(), SIZE_MAX);
}

TEST(FrameOutputTest, BorrowedPayloadIsWrittenFromTheCallersBytes) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const int small = 16 << 10;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  Frame head = FullFrame();
  head.payload = "ignored";
  std::string payload(300 << 10, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 5);
  std::string small_payload = "tiny";
  FrameOutput out;
  ASSERT_TRUE(out.AppendBorrowed(head, payload).ok());
  ASSERT_TRUE(out.AppendBorrowed(head, small_payload).ok());
  Frame want = head;
  want.payload = payload;
  Frame want_small = head;
  want_small.payload = small_payload;
  EXPECT_EQ(out.size(), EncodedFrameSize(want) + EncodedFrameSize(want_small));
  // Part goes out; then the caller's bytes are about to change: OwnBorrowed keeps the
  // unwritten rest, so the peer still gets the original payload.
  Result<size_t> w = out.WriteTo(sv[0]);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_GT(*w, 0u);
  ASSERT_LT(*w, EncodedFrameSize(want));
  out.OwnBorrowed();
  std::fill(payload.begin(), payload.end(), 'X');
  small_payload = "XXXX";  // a small payload was copied at once
  FrameDecoder d;
  std::vector<Frame> got;
  std::vector<char> buf(64 << 10);
  for (int rounds = 0; got.size() < 2; ++rounds) {
    ASSERT_LT(rounds, 100000);
    ASSERT_TRUE(out.WriteTo(sv[0]).ok());
    ssize_t n;
    while ((n = read(sv[1], buf.data(), buf.size())) > 0) d.Feed(std::string_view(buf.data(), n));
    ASSERT_NO_FATAL_FAILURE(TakeFrames(d, &got));
  }
  EXPECT_EQ(got[0], want);
  EXPECT_EQ(got[1], want_small);
  EXPECT_TRUE(out.empty());
  close(sv[0]);
  close(sv[1]);
}

TEST(FrameOutputTest, WritesEveryFrameInOrderThroughAFullSocket) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const int small = 16 << 10;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  FrameOutput out;
  std::vector<Frame> want;
  size_t queued = 0;
  for (int i = 0; i < 40; ++i) {
    Frame f = FullFrame();
    f.request_id = static_cast<uint64_t>(i);
    f.payload =
        std::string(i % 4 == 0 ? (200u << 10) + i : 100u + i, static_cast<char>('a' + i % 26));
    want.push_back(f);
    queued += EncodedFrameSize(f);
    if (i % 2 == 0) {
      ASSERT_TRUE(out.Append(std::move(f)).ok());
      // A large payload is taken over (moved into the queue: libstdc++ leaves the source
      // empty), a small one copied into the buffer.
      if (i % 4 == 0) {
        EXPECT_TRUE(f.payload.empty());  // NOLINT(bugprone-use-after-move)
      }
    } else {
      ASSERT_TRUE(out.Append(f).ok());
    }
    EXPECT_EQ(out.size(), queued);
  }
  FrameDecoder d;
  std::vector<Frame> got;
  std::vector<char> buf(64 << 10);
  int rounds = 0;
  while (!out.empty() || got.size() < want.size()) {
    ASSERT_LT(++rounds, 100000);
    const size_t before = out.size();
    Result<size_t> w = out.WriteTo(sv[0]);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(*w, before - out.size());
    ssize_t n;
    while ((n = read(sv[1], buf.data(), buf.size())) > 0) d.Feed(std::string_view(buf.data(), n));
    ASSERT_NO_FATAL_FAILURE(TakeFrames(d, &got));
  }
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(got[i] == want[i]) << i;
  close(sv[1]);
  // The peer is gone: an error (EPIPE), not a signal.
  ASSERT_TRUE(out.Append(FullFrame()).ok());
  Result<size_t> w = out.WriteTo(sv[0]);
  EXPECT_FALSE(w.ok());
  close(sv[0]);
  // Invalid frames queue nothing.
  Frame bad = FullFrame();
  bad.handler = std::string(kMaxNameBytes + 1, 'h');
  out.Clear();
  EXPECT_EQ(out.Append(std::move(bad)).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace tern::transport
