#include "transport/frame.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "transport/grow_string.h"

namespace tern::transport {
namespace {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
              "mixed-endian hosts are not supported");

// Header field offsets (frame.h, docs/formats/frame.md).
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffType = 5;
constexpr size_t kOffFlags = 6;
constexpr size_t kOffRequestId = 8;
constexpr size_t kOffEpoch = 16;
constexpr size_t kOffTraceId = 24;
constexpr size_t kOffIdempotencyKey = 32;
constexpr size_t kOffBudget = 40;
constexpr size_t kOffStatus = 44;
constexpr size_t kOffTenantLen = 48;
constexpr size_t kOffServiceLen = 50;
constexpr size_t kOffHandlerLen = 52;
constexpr size_t kOffReserved = 54;
constexpr size_t kOffPayloadLen = 56;
constexpr size_t kOffCrc = 60;
static_assert(kOffCrc + 4 == kFrameHeaderBytes);

template <typename T>
T ByteSwapIfBig(T v) {
  if constexpr (std::endian::native == std::endian::big) {
    T r = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      r = static_cast<T>((r << 8) | ((v >> (8 * i)) & 0xff));
    }
    return r;
  } else {
    return v;
  }
}

template <typename T>
void Store(char* p, T v) {
  v = ByteSwapIfBig(v);
  std::memcpy(p, &v, sizeof(T));
}

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return ByteSwapIfBig(v);
}


// Grow-and-shrink policy of the decoder buffer.
constexpr size_t kCompactMinBytes = 4096;
constexpr size_t kShrinkCapacityBytes = 1 << 20;
// How much of a large payload PayloadWindow() offers at a time.
constexpr size_t kPayloadWindowBytes = 256u << 10;

}  // namespace

bool IsKnownFrameType(uint8_t t) {
  return t >= static_cast<uint8_t>(FrameType::kInvoke) &&
         t <= static_cast<uint8_t>(FrameType::kPong);
}

std::string_view FrameTypeName(FrameType t) {
  switch (t) {
    case FrameType::kInvoke:
      return "invoke";
    case FrameType::kReply:
      return "reply";
    case FrameType::kError:
      return "error";
    case FrameType::kMoved:
      return "moved";
    case FrameType::kPing:
      return "ping";
    case FrameType::kPong:
      return "pong";
  }
  return "unknown";
}

Status EncodeFrameHead(const Frame& f, std::string* out) {
  return EncodeFrameHead(f, f.payload.size(), out);
}

Status EncodeFrameHead(const Frame& f, size_t payload_len, std::string* out) {
  auto check_name = [](std::string_view what, const std::string& s) -> Status {
    if (s.size() > kMaxNameBytes) {
      return InvalidArgumentError(
          fmt::format("frame: {} name is {} bytes, max {}", what, s.size(), kMaxNameBytes));
    }
    return Status::Ok();
  };
  TERN_RETURN_IF_ERROR(check_name("tenant", f.tenant));
  TERN_RETURN_IF_ERROR(check_name("service", f.service));
  TERN_RETURN_IF_ERROR(check_name("handler", f.handler));
  if (payload_len > kMaxPayloadBytes) {
    return InvalidArgumentError(
        fmt::format("frame: payload is {} bytes, max {}", payload_len, kMaxPayloadBytes));
  }

  const size_t start = out->size();
  out->resize(start + kFrameHeaderBytes);
  char* h = out->data() + start;
  Store<uint32_t>(h + kOffMagic, kFrameMagic);
  h[kOffVersion] = static_cast<char>(kFrameVersion);
  h[kOffType] = static_cast<char>(f.type);
  Store<uint16_t>(h + kOffFlags, 0);
  Store<uint64_t>(h + kOffRequestId, f.request_id);
  Store<uint64_t>(h + kOffEpoch, f.epoch);
  Store<uint64_t>(h + kOffTraceId, f.trace_id);
  Store<uint64_t>(h + kOffIdempotencyKey, f.idempotency_key);
  Store<uint32_t>(h + kOffBudget, f.budget_us);
  Store<uint32_t>(h + kOffStatus, static_cast<uint32_t>(f.status));
  Store<uint16_t>(h + kOffTenantLen, static_cast<uint16_t>(f.tenant.size()));
  Store<uint16_t>(h + kOffServiceLen, static_cast<uint16_t>(f.service.size()));
  Store<uint16_t>(h + kOffHandlerLen, static_cast<uint16_t>(f.handler.size()));
  Store<uint16_t>(h + kOffReserved, 0);
  Store<uint32_t>(h + kOffPayloadLen, static_cast<uint32_t>(payload_len));
  Store<uint32_t>(h + kOffCrc, Crc32c(h, kOffCrc));
  out->append(f.tenant);
  out->append(f.service);
  out->append(f.handler);
  return Status::Ok();
}

Status EncodeFrame(const Frame& f, std::string* out) {
  TERN_RETURN_IF_ERROR(EncodeFrameHead(f, out));
  out->append(f.payload);
  return Status::Ok();
}

Frame MakeErrorFrame(uint64_t request_id, const Status& s) {
  Frame f;
  f.type = FrameType::kError;
  f.request_id = request_id;
  f.status = s.ok() ? StatusCode::kInternal : s.code();
  f.payload = s.ok() ? std::string("error frame made from an OK status") : std::string(s.message());
  if (f.payload.size() > kMaxPayloadBytes) f.payload.resize(kMaxPayloadBytes);
  return f;
}

Status ErrorFrameStatus(const Frame& f) {
  if (f.type != FrameType::kError) return Status::Ok();
  StatusCode code = f.status == StatusCode::kOk ? StatusCode::kUnknown : f.status;
  return Status(code, f.payload);
}

// What a validated header says.
struct FrameDecoder::Head {
  size_t tenant_len = 0, service_len = 0, handler_len = 0;
  uint32_t payload_len = 0;
  size_t head = 0;   // header + names
  size_t total = 0;  // the whole frame
};

void FrameDecoder::Feed(std::string_view bytes) {
  if (!error_.ok()) return;
  if (large_) {
    // The rest of a large payload goes straight into its frame (after what has been
    // received; an unused window is dropped).
    const size_t take = std::min(bytes.size(), large_len_ - large_got_);
    if (large_dst_ != nullptr) {
      std::memcpy(large_dst_ + large_got_, bytes.data(), take);
    } else {
      std::string& pl = large_frame_.payload;
      pl.resize(large_got_);
      pl.append(bytes.data(), take);
    }
    large_got_ += take;
    large_window_end_ = large_got_;  // an open window was not used: the next one starts here
    bytes.remove_prefix(take);
    if (bytes.empty()) return;
  }
  if (!large_ && pos_ == buf_.size() && bytes.size() >= kFrameHeaderBytes &&
      Load<uint32_t>(bytes.data() + kOffPayloadLen) >= kLargePayloadBytes) {
    // Nothing buffered and the start of a large frame: its payload goes into the frame
    // at once (one copy instead of two). Anything wrong is left for Next() to report.
    Head h;
    Result<bool> valid = CheckHead(bytes.data(), bytes.size(), max_payload_, &h);
    if (valid.ok() && *valid && StartLarge(bytes.data(), bytes.size(), h)) {
      // A whole frame arrived in one piece: what follows it is buffered as usual (Next
      // returns the large frame first).
      if (bytes.size() <= h.total) return;
      bytes.remove_prefix(h.total);
    }
  }
  if (pos_ == buf_.size()) {
    // Everything consumed: reset, and drop a buffer a large frame left behind.
    pos_ = 0;
    if (buf_.capacity() > kShrinkCapacityBytes && bytes.size() < kShrinkCapacityBytes) {
      std::string().swap(buf_);
    } else {
      buf_.clear();
    }
  } else if (pos_ >= kCompactMinBytes && pos_ >= buf_.size() / 2) {
    // Only a partial frame remains after pos_: move it to the front.
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(bytes.data(), bytes.size());
}

std::span<char> FrameDecoder::PayloadWindow() {
  if (!large_ || large_got_ == large_len_) return {};
  if (large_window_end_ == large_got_) {
    large_window_end_ = std::min(large_len_, large_got_ + kPayloadWindowBytes);
    if (large_dst_ == nullptr) {
      // Open the next window: the capacity is reserved, so this neither moves the
      // bytes nor touches more memory than the peer is about to send, and the window
      // is not zeroed first (the reader writes it; an unused part is cut off by Feed).
      GrowForOverwrite(&large_frame_.payload, large_window_end_);
    }
  }
  char* base = large_dst_ != nullptr ? large_dst_ : large_frame_.payload.data();
  return std::span<char>(base + large_got_, large_window_end_ - large_got_);
}

void FrameDecoder::SetPayloadSink(uint64_t request_id, std::span<char> dst) {
  ClearPayloadSink();
  sunk_bytes_ = SIZE_MAX;
  sink_armed_ = true;
  sink_id_ = request_id;
  sink_ = dst;
}

void FrameDecoder::ClearPayloadSink() {
  sink_armed_ = false;
  sink_ = {};
  if (large_ && large_dst_ != nullptr) {
    // The frame being received keeps what arrived; the rest goes into its string.
    large_frame_.payload.reserve(large_len_);
    large_frame_.payload.assign(large_dst_, large_got_);
    large_dst_ = nullptr;
    large_window_end_ = large_got_;
  }
}

size_t FrameDecoder::ReadLimit() const {
  // The frame being received, or else the last one decoded, says what to expect.
  const size_t guess = large_ ? large_head_ : last_large_head_;
  if (guess == 0 || !error_.ok()) return SIZE_MAX;
  // Nothing of the next frame is buffered, or the rest of a large payload is due first
  // (it goes into PayloadWindow, the next frame's head after it).
  if (pos_ != buf_.size()) return SIZE_MAX;
  return guess;
}

void FrameDecoder::PayloadReceived(size_t n) {
  if (!large_) return;
  large_got_ = std::min(large_got_ + n, large_window_end_);
}

Result<bool> FrameDecoder::Fail(Status s) {
  error_ = std::move(s);
  buf_.clear();
  pos_ = 0;
  large_ = false;
  large_frame_ = Frame();
  large_dst_ = nullptr;
  sink_armed_ = false;
  sink_ = {};
  return error_;
}

namespace {

// The fields of a validated header at `p`, and the names that follow it.
void ReadHead(const char* p, size_t tenant_len, size_t service_len, size_t handler_len,
              Frame* out) {
  out->type = static_cast<FrameType>(static_cast<uint8_t>(p[kOffType]));
  out->request_id = Load<uint64_t>(p + kOffRequestId);
  out->epoch = Load<uint64_t>(p + kOffEpoch);
  out->trace_id = Load<uint64_t>(p + kOffTraceId);
  out->idempotency_key = Load<uint64_t>(p + kOffIdempotencyKey);
  out->budget_us = Load<uint32_t>(p + kOffBudget);
  out->status = StatusCodeFromInt(static_cast<int32_t>(Load<uint32_t>(p + kOffStatus)));
  const char* s = p + kFrameHeaderBytes;
  out->tenant.assign(s, tenant_len);
  s += tenant_len;
  out->service.assign(s, service_len);
  s += service_len;
  out->handler.assign(s, handler_len);
}

}  // namespace

Result<bool> FrameDecoder::CheckHead(const char* p, size_t avail, uint32_t max_payload, Head* h) {
  char magic[4];
  Store<uint32_t>(magic, kFrameMagic);
  for (size_t i = 0; i < 4 && i < avail; ++i) {
    if (p[i] != magic[i]) {
      uint32_t got = 0;
      std::memcpy(&got, p, avail < 4 ? avail : 4);
      return InvalidArgumentError(fmt::format(
          "frame: bad magic 0x{:08x} (expected 0x{:08x} \"TRN1\"); not a tern frame stream",
          ByteSwapIfBig(got), kFrameMagic));
    }
  }
  if (avail > kOffVersion && static_cast<uint8_t>(p[kOffVersion]) != kFrameVersion) {
    // Version 1 frames are not read (docs/formats/frame.md, Versioning): every component
    // of a cluster speaks the version of its build.
    const uint8_t v = static_cast<uint8_t>(p[kOffVersion]);
    return InvalidArgumentError(fmt::format(
        "frame: unsupported version {} (this build speaks version {}; the sender runs an {} "
        "tern: run one build everywhere)",
        v, kFrameVersion, v < kFrameVersion ? "older" : "newer"));
  }
  if (avail < kFrameHeaderBytes) return false;

  const uint32_t want_crc = Load<uint32_t>(p + kOffCrc);
  const uint32_t got_crc = Crc32c(p, kOffCrc);
  if (want_crc != got_crc) {
    return InvalidArgumentError(fmt::format(
        "frame: header CRC mismatch (header says 0x{:08x}, computed 0x{:08x})", want_crc, got_crc));
  }
  const uint8_t type = static_cast<uint8_t>(p[kOffType]);
  if (!IsKnownFrameType(type)) {
    return InvalidArgumentError(fmt::format("frame: unknown type {}", type));
  }
  h->tenant_len = Load<uint16_t>(p + kOffTenantLen);
  h->service_len = Load<uint16_t>(p + kOffServiceLen);
  h->handler_len = Load<uint16_t>(p + kOffHandlerLen);
  const std::pair<std::string_view, size_t> names[] = {
      {"tenant", h->tenant_len}, {"service", h->service_len}, {"handler", h->handler_len}};
  for (const auto& [what, len] : names) {
    if (len > kMaxNameBytes) {
      return InvalidArgumentError(
          fmt::format("frame: {} name too long ({} bytes, max {})", what, len, kMaxNameBytes));
    }
  }
  h->payload_len = Load<uint32_t>(p + kOffPayloadLen);
  if (h->payload_len > max_payload) {
    return ResourceExhaustedError(
        fmt::format("frame: payload of {} bytes exceeds this receiver's limit of {} bytes",
                    h->payload_len, max_payload));
  }
  h->head = kFrameHeaderBytes + h->tenant_len + h->service_len + h->handler_len;
  h->total = h->head + size_t{h->payload_len};
  return true;
}

Result<std::pair<size_t, size_t>> FrameDecoder::DecodeWholeHead(std::string_view bytes,
                                                                 uint32_t max_payload,
                                                                 Frame* out) {
  // A private copy of the header and names: what is checked is what is used.
  constexpr size_t kMaxHead = kFrameHeaderBytes + 3 * kMaxNameBytes;
  char head[kMaxHead];
  const size_t prefix = std::min(bytes.size(), kMaxHead);
  std::memcpy(head, bytes.data(), prefix);
  Head h;
  TERN_ASSIGN_OR_RETURN(bool valid, CheckHead(head, prefix, max_payload, &h));
  if (!valid || h.total != bytes.size()) {
    return DataLossError(fmt::format("frame: a record of {} bytes does not hold exactly one frame{}",
                                     bytes.size(),
                                     valid ? fmt::format(" (the frame has {})", h.total) : ""));
  }
  ReadHead(head, h.tenant_len, h.service_len, h.handler_len, out);
  return std::pair<size_t, size_t>(h.head, h.payload_len);
}

Status FrameDecoder::DecodeWhole(std::string_view bytes, uint32_t max_payload, Frame* out) {
  TERN_ASSIGN_OR_RETURN(auto payload, DecodeWholeHead(bytes, max_payload, out));
  out->payload.assign(bytes.data() + payload.first, payload.second);
  return Status::Ok();
}

Result<std::string_view> FrameDecoder::DecodeWholeBorrowed(std::string_view bytes,
                                                           uint32_t max_payload, Frame* out) {
  TERN_ASSIGN_OR_RETURN(auto payload, DecodeWholeHead(bytes, max_payload, out));
  out->payload.clear();
  return bytes.substr(payload.first, payload.second);
}

Status FrameDecoder::DecodeWholeIntoSink(std::string_view bytes, uint32_t max_payload,
                                         Frame* out) {
  TERN_ASSIGN_OR_RETURN(auto payload, DecodeWholeHead(bytes, max_payload, out));
  if (sink_armed_ && out->type == FrameType::kReply && out->request_id == sink_id_ &&
      payload.second <= sink_.size()) {
    std::memcpy(sink_.data(), bytes.data() + payload.first, payload.second);
    out->payload.clear();
    sunk_bytes_ = payload.second;
    sink_armed_ = false;
    sink_ = {};
    return Status::Ok();
  }
  out->payload.assign(bytes.data() + payload.first, payload.second);
  return Status::Ok();
}

bool FrameDecoder::StartLarge(const char* p, size_t avail, const Head& h) {
  if (h.payload_len < kLargePayloadBytes || avail < h.head) return false;
  ReadHead(p, h.tenant_len, h.service_len, h.handler_len, &large_frame_);
  // Reserved at once (address space; memory is touched as bytes arrive), filled as
  // they do: a peer that announces a large payload and stops costs no zeroed pages.
  // Bytes past the frame (avail > h.total, only from Feed) are the caller's.
  const size_t have = std::min(avail, h.total) - h.head;
  if (sink_armed_ && large_frame_.type == FrameType::kReply && large_frame_.request_id == sink_id_ &&
      h.payload_len <= sink_.size()) {
    large_dst_ = sink_.data();
    sink_armed_ = false;
    large_frame_.payload.clear();
    std::memcpy(large_dst_, p + h.head, have);
  } else {
    large_dst_ = nullptr;
    large_frame_.payload.reserve(h.payload_len);
    large_frame_.payload.assign(p + h.head, have);
  }
  large_window_end_ = have;
  large_len_ = h.payload_len;
  large_got_ = have;
  large_head_ = h.head;
  large_ = true;
  // Whatever was buffered is in the frame now.
  pos_ = 0;
  if (buf_.capacity() > kShrinkCapacityBytes) {
    std::string().swap(buf_);
  } else {
    buf_.clear();
  }
  return true;
}

void FrameDecoder::GiveSpare(std::string spare) {
  if (large_) return;
  spare.clear();
  large_frame_.payload = std::move(spare);
}

Result<bool> FrameDecoder::Next(Frame* out) {
  if (!error_.ok()) return error_;
  if (large_) {
    if (large_got_ < large_len_) return false;
    large_ = false;
    last_large_head_ = large_head_;
    if (large_dst_ != nullptr) {
      sunk_bytes_ = large_len_;
      sink_ = {};
    }
    large_dst_ = nullptr;
    // The caller's old payload buffer goes to the next large frame: a stream of large
    // frames (a migration's page batches) then reuses two buffers instead of mapping
    // and faulting in a new one per frame.
    std::string spare = std::move(out->payload);
    *out = std::move(large_frame_);
    large_frame_ = Frame();
    spare.clear();
    large_frame_.payload = std::move(spare);
    return true;
  }
  const size_t avail = buf_.size() - pos_;
  const char* p = buf_.data() + pos_;
  Head h;
  Result<bool> valid = CheckHead(p, avail, max_payload_, &h);
  if (!valid.ok()) return Fail(valid.status());
  if (!*valid) return false;
  if (avail < h.total) {
    // A large payload: the rest of it is received into the frame itself (Feed,
    // PayloadWindow), not into the buffer and then copied.
    if (StartLarge(p, avail, h)) return false;
    // The header is valid: make room for the whole frame once instead of regrowing.
    if (buf_.capacity() < pos_ + h.total) buf_.reserve(pos_ + h.total);
    return false;
  }

  ReadHead(p, h.tenant_len, h.service_len, h.handler_len, out);
  out->payload.assign(p + h.head, h.payload_len);
  last_large_head_ = h.payload_len >= kLargePayloadBytes ? h.head : 0;
  pos_ += h.total;
  if (pos_ == buf_.size()) {
    pos_ = 0;
    if (buf_.capacity() > kShrinkCapacityBytes) {
      std::string().swap(buf_);  // don't keep a large frame's buffer on an idle connection
    } else {
      buf_.clear();
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------
// FrameOutput

namespace {
// A partly written buffer chunk is compacted once this much of it has gone out.
constexpr size_t kCompactOutputBytes = 1u << 20;
// Buffer chunks up to this capacity are kept for reuse once written.
constexpr size_t kSpareOutputBytes = 1u << 20;
constexpr int kMaxIov = 16;
}  // namespace

std::string* FrameOutput::Tail() {
  if (chunks_.empty() || chunks_.back().payload) {
    chunks_.push_back(Chunk{std::move(spare_), false});
    spare_ = std::string();
    chunks_.back().bytes.clear();
  }
  return &chunks_.back().bytes;
}

Status FrameOutput::Append(const Frame& f) {
  std::string* t = Tail();
  const size_t before = t->size();
  TERN_RETURN_IF_ERROR(EncodeFrame(f, t));
  bytes_ += t->size() - before;
  return Status::Ok();
}

Status FrameOutput::Append(Frame&& f) {
  if (f.payload.size() < kLargePayloadBytes) return Append(static_cast<const Frame&>(f));
  std::string* t = Tail();
  const size_t before = t->size();
  TERN_RETURN_IF_ERROR(EncodeFrameHead(f, t));
  bytes_ += t->size() - before + f.payload.size();
  chunks_.push_back(Chunk{std::move(f.payload), true});
  return Status::Ok();
}

Status FrameOutput::AppendBorrowed(const Frame& head, std::string_view payload) {
  std::string* t = Tail();
  const size_t before = t->size();
  if (payload.size() < kLargePayloadBytes) {
    TERN_RETURN_IF_ERROR(EncodeFrameHead(head, payload.size(), t));
    t->append(payload);
    bytes_ += t->size() - before;
    return Status::Ok();
  }
  TERN_RETURN_IF_ERROR(EncodeFrameHead(head, payload.size(), t));
  bytes_ += t->size() - before + payload.size();
  Chunk c;
  c.payload = true;
  c.borrowed = payload;
  chunks_.push_back(std::move(c));
  return Status::Ok();
}

void FrameOutput::OwnBorrowed() {
  bool first = true;
  for (Chunk& c : chunks_) {
    if (c.borrowed.data() != nullptr) {
      // Only the part not written yet is kept (the front chunk may be partly written).
      const size_t skip = first ? head_pos_ : 0;
      c.bytes.assign(c.borrowed.data() + skip, c.borrowed.size() - skip);
      c.borrowed = std::string_view();
      if (first) head_pos_ = 0;
    }
    first = false;
  }
}

Result<size_t> FrameOutput::WriteTo(int fd) {
  size_t written = 0;
  while (bytes_ > 0) {
    iovec iov[kMaxIov];
    int n = 0;
    size_t off = head_pos_;
    for (auto it = chunks_.begin(); it != chunks_.end() && n < kMaxIov; ++it, off = 0) {
      if (it->size() <= off) continue;
      iov[n].iov_base = const_cast<char*>(it->data()) + off;
      iov[n].iov_len = it->size() - off;
      ++n;
    }
    ssize_t r;
    if (n == 1) {  // the common case of small frames: send() is cheaper than sendmsg()
      r = ::send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<size_t>(n);
      r = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (r <= 0) return ErrnoError("send", r < 0 ? errno : EPIPE);
    written += static_cast<size_t>(r);
    bytes_ -= static_cast<size_t>(r);
    // Drop what went out.
    size_t left = static_cast<size_t>(r);
    while (!chunks_.empty()) {
      Chunk& c = chunks_.front();
      const size_t rest = c.size() - head_pos_;
      if (left < rest) {
        head_pos_ += left;
        if (!c.payload && head_pos_ >= kCompactOutputBytes && head_pos_ >= c.bytes.size() / 2) {
          c.bytes.erase(0, head_pos_);  // a long pipeline: don't let the buffer grow
          head_pos_ = 0;
        }
        break;
      }
      left -= rest;
      head_pos_ = 0;
      if (chunks_.size() == 1 && !c.payload && c.bytes.capacity() <= kSpareOutputBytes) {
        c.bytes.clear();  // the usual case: one buffer, all written; keep it for the next
        break;
      }
      if (!c.payload && c.bytes.capacity() <= kSpareOutputBytes &&
          c.bytes.capacity() > spare_.capacity()) {
        spare_ = std::move(c.bytes);
      }
      chunks_.pop_front();
    }
  }
  return written;
}

void FrameOutput::Clear() {
  chunks_.clear();
  head_pos_ = 0;
  bytes_ = 0;
  std::string().swap(spare_);
}

}  // namespace tern::transport
