// Frame: the unit of tern's data-plane protocol, the same on every transport (TCP,
// shared memory). Byte layout, version 2, little-endian (docs/formats/frame.md):
//
//   off size field
//   0   4    magic           "TRN1" (0x314E5254 as a little-endian u32)
//   4   1    version         2
//   5   1    type            FrameType
//   6   2    flags           reserved, 0
//   8   8    request_id      per hop: matches an answer to its request on one connection
//   16  8    epoch           routing epoch of the sender's view (0 = none)
//   24  8    trace_id        end to end: the outside request this frame serves (0 = none)
//   32  8    idempotency_key one logical call across retries (0 = none)
//   40  4    budget_us       time the receiver may spend, from receipt (0 = none)
//   44  4    status          StatusCode (kError frames), else 0
//   48  2    tenant_len   -+
//   50  2    service_len   | lengths of the strings that follow the header
//   52  2    handler_len  -+
//   54  2    reserved, 0
//   56  4    payload_len
//   60  4    header_crc      CRC-32C of bytes 0..59
//   64  ...  tenant, service, handler (UTF-8, no terminator), then payload
//
// Senders write 0 into `flags` and `reserved`; receivers ignore them. The payload of a
// kError frame is the UTF-8 error message (MakeErrorFrame / ErrorFrameStatus). Version 1
// (48-byte header, no trace_id/idempotency_key) is rejected: see the format page.
//
// Frame is a value type. FrameDecoder is a streaming decoder owned by one connection;
// not thread-safe. A malformed frame is an error for that connection only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>

#include "core/crc32c.h"
#include "core/status.h"

namespace tern::transport {

inline constexpr uint32_t kFrameMagic = 0x314E5254;  // "TRN1"
inline constexpr uint8_t kFrameVersion = 2;
inline constexpr size_t kFrameHeaderBytes = 64;
inline constexpr size_t kMaxNameBytes = 255;
// Default bound on payloads; a decoder may be configured lower.
inline constexpr uint32_t kMaxPayloadBytes = 64u << 20;
// Payloads at least this large are not copied through intermediate buffers: a decoder
// receives them straight into the frame (FrameDecoder::PayloadWindow), an output queue
// writes them from the frame's own string (FrameOutput).
inline constexpr size_t kLargePayloadBytes = 16u << 10;

enum class FrameType : uint8_t {
  kInvoke = 1,  // call service/handler with payload
  kReply = 2,   // successful answer to request_id
  kError = 3,   // failed answer: status + message in payload
  kMoved = 4,   // instance moved; payload says where (data-plane issue)
  kPing = 5,    // liveness; answered with kPong
  kPong = 6,
};
bool IsKnownFrameType(uint8_t t);
// "invoke", "reply", ...; "unknown" for other values.
std::string_view FrameTypeName(FrameType t);

struct Frame {
  FrameType type = FrameType::kInvoke;
  uint64_t request_id = 0;
  uint64_t epoch = 0;
  uint64_t trace_id = 0;         // end to end (InvokeRequest::trace_id)
  uint64_t idempotency_key = 0;  // one logical call across retries
  uint32_t budget_us = 0;
  StatusCode status = StatusCode::kOk;
  std::string tenant;
  std::string service;
  std::string handler;
  std::string payload;

  bool operator==(const Frame&) const = default;
};

// Number of bytes EncodeFrame appends for `f` (assuming it is valid).
inline size_t EncodedFrameSize(const Frame& f) {
  return kFrameHeaderBytes + f.tenant.size() + f.service.size() + f.handler.size() +
         f.payload.size();
}

// Appends the encoding of `f` to `out`. Returns kInvalidArgument if a name is longer
// than kMaxNameBytes or the payload longer than kMaxPayloadBytes; `out` is then
// unchanged.
Status EncodeFrame(const Frame& f, std::string* out);
// The same without the payload: the header (which counts the payload) and the names.
// The payload's bytes must follow on the stream.
Status EncodeFrameHead(const Frame& f, std::string* out);
// The same for a payload of `payload_len` bytes kept elsewhere (f.payload is ignored).
Status EncodeFrameHead(const Frame& f, size_t payload_len, std::string* out);

// An Error frame answering `request_id` (0 = the connection as a whole) with the code
// and message of `s` (which must not be OK; an OK status becomes kInternal).
Frame MakeErrorFrame(uint64_t request_id, const Status& s);
// The Status carried by a kError frame: its code (kUnknown if the frame says kOk) and
// its payload as the message. For any other frame type, returns OK.
Status ErrorFrameStatus(const Frame& f);

// Streaming decoder: feed bytes as they arrive, take frames out. The buffer is
// compacted as frames are consumed, so a long-lived connection does not grow it.
class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_payload_bytes = kMaxPayloadBytes)
      : max_payload_(max_payload_bytes) {}

  // Appends received bytes. After an error, bytes are discarded.
  void Feed(std::string_view bytes);

  // Receiving large payloads without copies. Once the header and names of a frame with
  // a payload of kLargePayloadBytes or more have been decoded, the frame's payload
  // string is reserved at its full size and the rest of the payload goes straight
  // into it: Feed() copies there instead of into the decoder's buffer, and a reader may
  // receive into PayloadWindow() itself (e.g. as the first iovec of a readv, with a
  // scratch buffer second) and report with PayloadReceived(n) the bytes that landed
  // there, before it Feed()s the rest. Empty when no payload is being received so; at
  // most 256 KiB at a time otherwise.
  std::span<char> PayloadWindow();
  // `n` bytes (at most PayloadWindow().size()) were written into PayloadWindow().
  void PayloadReceived(size_t n);
  // Receiving a large payload into the caller's memory (e.g. a client's reply buffer):
  // the next kReply frame with request id `request_id` whose payload is large and fits `dst`
  // gets its payload written into `dst` instead of into the frame. Next() then returns
  // that frame with an empty payload, and PayloadInSink() says how many bytes are in
  // `dst`. `dst` must stay valid until the frame has been taken or ClearPayloadSink()
  // is called (which moves bytes already received there back into the frame). One
  // sink at a time; it is used by one frame at most.
  void SetPayloadSink(uint64_t request_id, std::span<char> dst);
  void ClearPayloadSink();
  // The payload size of the frame that used the sink set last, once Next() has
  // returned it; SIZE_MAX until then (or if none did).
  size_t PayloadInSink() const { return sunk_bytes_; }
  // Header-first reading: at most how many bytes a reader should receive into its own
  // buffer (after PayloadWindow()) with its next read. While a large payload is being
  // received, and after one, it is the size of that frame's header and names: the next
  // frame probably
  // has a large payload too, and reading its head alone lets the payload go straight
  // into the frame instead of landing in the reader's buffer and being copied from
  // there. Otherwise SIZE_MAX (no limit). A reader whose read filled the limit reads
  // again at once.
  size_t ReadLimit() const;
  // Decodes the next complete frame into `out` (its strings' capacity is reused).
  // Returns true if one was decoded, false if more bytes are needed; an error (bad
  // magic/version/type/CRC, oversized payload or name) is sticky: the connection
  // should be closed. The header is validated as soon as it has arrived, before any
  // payload is buffered, so a huge payload_len is rejected without allocating.
  Result<bool> Next(Frame* out);
  size_t buffered() const { return buf_.size() - pos_; }
  // A buffer for the next large payload to be received into (its capacity is used when
  // large enough; Next then hands out->payload's old buffer to the one after): for a
  // reader that prepared warm memory for a stream of large frames. Ignored while a
  // large payload is being received.
  void GiveSpare(std::string spare);

  // Decodes one frame that fills `bytes` exactly, where another process may change
  // `bytes` while it is read (a shared-memory record): the header and names are copied
  // out and checked before they are used, the payload is then copied once, straight
  // into out->payload (its capacity reused). The same checks and errors as Next(), and
  // kDataLoss if `bytes` holds more or less than one frame. No streaming state: for
  // records that hold a whole frame (the shared-memory transport's small ones).
  static Status DecodeWhole(std::string_view bytes, uint32_t max_payload, Frame* out);
  // DecodeWhole, with this decoder's payload sink (SetPayloadSink) for a frame of any
  // size: a kReply for the sink's request id whose payload fits gets its payload copied
  // there (out->payload is left empty, PayloadInSink() gives its size, the sink is
  // used up), any other frame is decoded as by DecodeWhole. For a client's small
  // replies: no allocation, one copy, as for its large ones.
  Status DecodeWholeIntoSink(std::string_view bytes, uint32_t max_payload, Frame* out);
  // DecodeWhole without the payload's copy: out->payload is left empty and the payload's
  // place in `bytes` is returned, for a reader that copies it once from there to where
  // it is needed (a shared-memory request read straight into the guest). Only the
  // header and names are checked; the payload's bytes may still change under the caller.
  static Result<std::string_view> DecodeWholeBorrowed(std::string_view bytes,
                                                      uint32_t max_payload, Frame* out);
  // The sticky error (OK if none).
  const Status& error() const { return error_; }

  size_t BufferCapacityForTest() const { return buf_.capacity(); }

 private:
  struct Head;
  Result<bool> Fail(Status s);
  // Checks the start of a frame at `p` (`avail` bytes; what has arrived is checked as
  // early as possible). OK and false: more bytes needed; OK and true: *h describes a
  // valid header. An error: the stream is malformed.
  static Result<bool> CheckHead(const char* p, size_t avail, uint32_t max_payload, Head* h);
  // Starts receiving the large payload of the frame whose valid header `h` is at `p`
  // (`avail` bytes there: the header and names at least, part or all of the payload,
  // maybe bytes past the frame, which stay the caller's); false if it is not such a
  // frame.
  bool StartLarge(const char* p, size_t avail, const Head& h);

  uint32_t max_payload_;
  std::string buf_;
  size_t pos_ = 0;
  Status error_;
  // A frame whose large payload (`large_len_` bytes, its capacity reserved) is being
  // received in place (see PayloadWindow); `large_got_` of them are there.
  bool large_ = false;
  size_t large_len_ = 0;
  size_t large_got_ = 0;
  size_t large_head_ = 0;  // header + names of the large frame
  Frame large_frame_;
  // Where the large payload goes: the sink, or nullptr for large_frame_.payload;
  // and the end of the window PayloadWindow() offered last.
  char* large_dst_ = nullptr;
  size_t large_window_end_ = 0;
  // DecodeWhole's checks: the header and names copied out of `bytes` into `head`
  // (kMaxHeadBytes), checked and read into `out`; returns the payload's offset and size.
  static Result<std::pair<size_t, size_t>> DecodeWholeHead(std::string_view bytes,
                                                           uint32_t max_payload, Frame* out);
  // SetPayloadSink: armed until a frame uses it.
  bool sink_armed_ = false;
  uint64_t sink_id_ = 0;
  std::span<char> sink_;
  size_t sunk_bytes_ = SIZE_MAX;
  // Header + names of the last frame decoded if its payload was large, else 0
  // (ReadLimit).
  size_t last_large_head_ = 0;
};

// The output of one stream connection: frames waiting to be written, in order. Frames
// are encoded into a byte buffer, except payloads of kLargePayloadBytes or more, which
// are moved in (Append(Frame&&)) and written from their own string with the header
// in front (one sendmsg with an iovec per piece): no copy of a large payload.
// Not thread-safe: one per connection.
class FrameOutput {
 public:
  // Queues `f` (EncodeFrame's checks: on kInvalidArgument nothing is queued). The
  // rvalue form takes a large payload over instead of copying it.
  Status Append(Frame&& f);
  Status Append(const Frame& f);
  // Queues a frame whose payload stays in the caller's memory: `head`'s own payload is
  // ignored, a large `payload` is written from where it is (a small one is copied).
  // The caller keeps those bytes valid and unchanged until it calls OwnBorrowed() (or
  // Clear()), which copies what has not been written yet.
  Status AppendBorrowed(const Frame& head, std::string_view payload);
  void OwnBorrowed();
  // Bytes queued and not written yet.
  size_t size() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }
  // Writes what socket `fd` takes now (sendmsg with MSG_NOSIGNAL | MSG_DONTWAIT, until
  // it would block or all is written). Returns the bytes written; an error of the
  // socket as an errno Status (what was written before it is gone from the queue).
  Result<size_t> WriteTo(int fd);
  // Drops everything queued, and the memory.
  void Clear();

 private:
  struct Chunk {
    std::string bytes;
    bool payload = false;  // a large payload taken over (nothing is appended to it)
    // A borrowed payload (AppendBorrowed): the bytes are the caller's, `bytes` is empty.
    std::string_view borrowed;
    const char* data() const { return borrowed.data() != nullptr ? borrowed.data() : bytes.data(); }
    size_t size() const { return borrowed.data() != nullptr ? borrowed.size() : bytes.size(); }
  };
  // The chunk small encodings are appended to (a new one after a payload chunk).
  std::string* Tail();

  std::deque<Chunk> chunks_;
  size_t head_pos_ = 0;  // bytes of chunks_.front() already written
  size_t bytes_ = 0;
  std::string spare_;  // a written buffer chunk kept for reuse
};

// CRC-32C of the header: core/crc32c.h (hardware-accelerated).
using ::tern::Crc32c;

}  // namespace tern::transport
