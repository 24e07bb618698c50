#include "transport/frame.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>

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


Status EncodeFrame(const Frame& f, std::string* out) {
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
  if (f.payload.size() > kMaxPayloadBytes) {
    return InvalidArgumentError(
        fmt::format("frame: payload is {} bytes, max {}", f.payload.size(), kMaxPayloadBytes));
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
  Store<uint32_t>(h + kOffPayloadLen, static_cast<uint32_t>(f.payload.size()));
  Store<uint32_t>(h + kOffCrc, Crc32c(h, kOffCrc));
  out->append(f.tenant);
  out->append(f.service);
  out->append(f.handler);
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

void FrameDecoder::Feed(std::string_view bytes) {
  if (!error_.ok()) return;
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

Result<bool> FrameDecoder::Fail(Status s) {
  error_ = std::move(s);
  buf_.clear();
  pos_ = 0;
  return error_;
}

Result<bool> FrameDecoder::Next(Frame* out) {
  if (!error_.ok()) return error_;
  const size_t avail = buf_.size() - pos_;
  const char* p = buf_.data() + pos_;

  // Validate what has arrived as early as possible, so garbage is caught at once.
  char magic[4];
  Store<uint32_t>(magic, kFrameMagic);
  for (size_t i = 0; i < 4 && i < avail; ++i) {
    if (p[i] != magic[i]) {
      uint32_t got = 0;
      std::memcpy(&got, p, avail < 4 ? avail : 4);
      return Fail(InvalidArgumentError(fmt::format(
          "frame: bad magic 0x{:08x} (expected 0x{:08x} \"TRN1\"); not a tern frame stream",
          ByteSwapIfBig(got), kFrameMagic)));
    }
  }
  if (avail > kOffVersion && static_cast<uint8_t>(p[kOffVersion]) != kFrameVersion) {
    // Version 1 frames are not read (docs/formats/frame.md, Versioning): every component
    // of a cluster speaks the version of its build.
    const uint8_t v = static_cast<uint8_t>(p[kOffVersion]);
    return Fail(InvalidArgumentError(fmt::format(
        "frame: unsupported version {} (this build speaks version {}; the sender runs an {} "
        "tern: run one build everywhere)",
        v, kFrameVersion, v < kFrameVersion ? "older" : "newer")));
  }
  if (avail < kFrameHeaderBytes) return false;

  const uint32_t want_crc = Load<uint32_t>(p + kOffCrc);
  const uint32_t got_crc = Crc32c(p, kOffCrc);
  if (want_crc != got_crc) {
    return Fail(InvalidArgumentError(
        fmt::format("frame: header CRC mismatch (header says 0x{:08x}, computed 0x{:08x})",
                    want_crc, got_crc)));
  }
  const uint8_t type = static_cast<uint8_t>(p[kOffType]);
  if (!IsKnownFrameType(type)) {
    return Fail(InvalidArgumentError(fmt::format("frame: unknown type {}", type)));
  }
  const size_t tenant_len = Load<uint16_t>(p + kOffTenantLen);
  const size_t service_len = Load<uint16_t>(p + kOffServiceLen);
  const size_t handler_len = Load<uint16_t>(p + kOffHandlerLen);
  const std::pair<std::string_view, size_t> names[] = {
      {"tenant", tenant_len}, {"service", service_len}, {"handler", handler_len}};
  for (const auto& [what, len] : names) {
    if (len > kMaxNameBytes) {
      return Fail(InvalidArgumentError(
          fmt::format("frame: {} name too long ({} bytes, max {})", what, len, kMaxNameBytes)));
    }
  }
  const uint32_t payload_len = Load<uint32_t>(p + kOffPayloadLen);
  if (payload_len > max_payload_) {
    return Fail(ResourceExhaustedError(
        fmt::format("frame: payload of {} bytes exceeds this receiver's limit of {} bytes",
                    payload_len, max_payload_)));
  }
  const size_t total =
      kFrameHeaderBytes + tenant_len + service_len + handler_len + size_t{payload_len};
  if (avail < total) {
    // The header is valid: make room for the whole frame once instead of regrowing.
    if (buf_.capacity() < pos_ + total) buf_.reserve(pos_ + total);
    return false;
  }

  out->type = static_cast<FrameType>(type);
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
  s += handler_len;
  out->payload.assign(s, payload_len);
  pos_ += total;
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

}  // namespace tern::transport
