// tern.hpp: a thin, header-only C++ layer over the guest C ABI in tern/tern.h.
//
//   #include "tern/tern.hpp"
//
//   TERN_HANDLER(greet) {                       // wasm export "greet", C symbol greet
//     std::string_view who = tern::Request();
//     if (who.empty()) return tern::Fail(TERN_INVALID_ARGUMENT, "empty name");
//     std::string out = "hello, ";
//     out += who;
//     return tern::Reply(out);
//   }
//
//   TERN_HANDLER(myservice_stats, "stats") {   // wasm export "stats", C symbol
//     ...                                      // myservice_stats (unique when
//   }                                          // several guests link natively)
//
// A handler body returns the request's status: 0 (TERN_OK) for success, or a TERN_*
// code. Reply() and Fail() return a status, so `return tern::Reply(x);` and
// `return tern::Fail(code, "why");` are the usual last lines.
//
// Builds with clang++-19 --target=wasm32-wasi -std=c++20 -fno-exceptions -fno-rtti
// (the guest) and with the host's g++ 12 / clang 14 (native builds linked with
// sdk/native/tern_native.c). Nothing here throws or needs RTTI.
//
// Ownership: the request buffer behind Request() belongs to the SDK; it grows to the
// largest request seen and lives in linear memory (so it is part of a snapshot).
// Thread-safety: a guest runs one request at a time on one thread; none of this may be
// called from two threads at once (natively, too: tern_native is single-threaded).
#ifndef TERN_TERN_HPP_
#define TERN_TERN_HPP_

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

#include "tern/tern.h"

namespace tern {

namespace internal {

// The SDK's request buffer. Constant-initialized (no static constructor), never freed.
inline char* request_buf = nullptr;
inline uint32_t request_cap = 0;

}  // namespace internal

// Size in bytes of the current request's payload.
inline uint32_t RequestSize() { return tern_request_len(); }

// The whole payload of the current request. The view stays valid until the next call
// of Request() (which re-reads the payload into the same buffer) and is meaningless
// after the handler returns (its bytes stay unchanged until then: `return
// tern::ReplyInPlace(tern::Request());` is fine). Call it once per handler. Traps (aborts natively) if the
// buffer cannot be grown: a guest that is out of memory cannot do anything useful.
inline std::string_view Request() {
  // Read first: a request shorter than the buffer (the common case once it has grown
  // with its requests) costs one host call, not two; only one that fills it asks for
  // the length, and the buffer then grows past it.
  uint32_t got = 0;
  if (internal::request_cap > 0) {
    got = tern_request_read(internal::request_buf, internal::request_cap, 0);
    if (got < internal::request_cap) return std::string_view(internal::request_buf, got);
  }
  const uint32_t len = tern_request_len();
  if (len >= internal::request_cap) {
    // One byte more than the request (at least 256): the next request of this size
    // takes the one-call path. Keeps the `got` bytes already read.
    const uint32_t cap = len < 256 ? 256 : len + 1;
    void* grown = std::realloc(internal::request_buf, cap);
    if (grown == nullptr) __builtin_trap();
    internal::request_buf = static_cast<char*>(grown);
    internal::request_cap = cap;
  }
  if (len > got) got += tern_request_read(internal::request_buf + got, len - got, got);
  return std::string_view(internal::request_buf, got);
}

// Sets the reply (copied by the runtime; the last call wins). Returns TERN_OK, or
// TERN_RESOURCE_EXHAUSTED if `data` exceeds the service's response limit (the reply is
// then unchanged), so `return tern::Reply(x);` fails the request in that case.
inline int32_t Reply(std::string_view data) {
  return tern_reply(data.data(), static_cast<uint32_t>(data.size()));
}

// Sets the reply to bytes the runtime reads when the handler returns (not copied now:
// tern_reply_in_place in tern.h). `data` must stay alive and unchanged until the handler
// returns: memory the service keeps (a member, a global buffer, the request view from
// Request()), never a local string. Same results as Reply().
inline int32_t ReplyInPlace(std::string_view data) {
  return tern_reply_in_place(data.data(), static_cast<uint32_t>(data.size()));
}

// Fails the current request with `code` (a non-zero TERN_* code) and `msg` (copied).
// Returns `code`, for `return tern::Fail(...);`.
inline int32_t Fail(int32_t code, std::string_view msg) {
  tern_fail(code, msg.data(), static_cast<uint32_t>(msg.size()));
  return code;
}

// Writes a log line at `level` (TERN_LOG_DEBUG .. TERN_LOG_ERROR). Rate-limited by the
// runtime.
inline void Log(int32_t level, std::string_view msg) {
  tern_log(level, msg.data(), static_cast<uint32_t>(msg.size()));
}

// Writes a log line at TERN_LOG_INFO.
inline void Log(std::string_view msg) { Log(TERN_LOG_INFO, msg); }

// printf-style log line at `level`, truncated to 511 bytes. Pulls in libc's printf
// code (tens of KiB of wasm) if used; Log() does not.
__attribute__((format(printf, 2, 3))) inline void LogF(int32_t level, const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n < 0) return;
  uint32_t len =
      static_cast<uint32_t>(n) < sizeof(line) ? static_cast<uint32_t>(n) : sizeof(line) - 1;
  tern_log(level, line, len);
}

// Nanoseconds on `clock` (TERN_CLOCK_MONOTONIC or TERN_CLOCK_REALTIME).
inline int64_t NowNs(int32_t clock = TERN_CLOCK_MONOTONIC) { return tern_clock_ns(clock); }

// ---- Calls to other services (see tern.h for the semantics and error codes)
//
//   tern::CallResult r = tern::Call("inventory", "reserve", item);
//   if (!r.ok()) return tern::Fail(r.status, r.body);   // body = the error message
//
//   tern::PendingCall a = tern::StartCall("search", "shard0", q);   // fan-out:
//   tern::PendingCall b = tern::StartCall("search", "shard1", q);   // both run at once
//   tern::CallResult ra = a.Wait(), rb = b.Wait();

// A finished call: its status (TERN_OK or an error code) and its reply, or on error its
// error message.
struct CallResult {
  int32_t status = TERN_UNKNOWN;
  std::string body;
  bool ok() const { return status == TERN_OK; }
};

// A started call. Move-only; Wait() may be called once; the destructor releases the
// handle (abandoning the call if it is still running).
class PendingCall {
 public:
  explicit PendingCall(int32_t handle) : handle_(handle) {}
  PendingCall(PendingCall&& o) noexcept : handle_(std::exchange(o.handle_, 0)) {}
  PendingCall& operator=(PendingCall&& o) noexcept {
    if (this != &o) {
      Release();
      handle_ = std::exchange(o.handle_, 0);
    }
    return *this;
  }
  PendingCall(const PendingCall&) = delete;
  PendingCall& operator=(const PendingCall&) = delete;
  ~PendingCall() { Release(); }

  // Waits for the call to finish and collects its result.
  CallResult Wait() {
    CallResult r;
    if (handle_ < 0) {  // it never started: the handle is the negated code
      r.status = -handle_;
      r.body = "call could not start";
      return r;
    }
    uint32_t len = 0;
    r.status = tern_call_wait(handle_, &len);
    if (r.status < 0) r.status = -r.status;
    r.body.resize(len);
    if (len > 0) {
      uint32_t got = tern_call_read(handle_, r.body.data(), len, 0);
      r.body.resize(got);
    }
    Release();
    return r;
  }

 private:
  void Release() {
    if (handle_ > 0) tern_call_close(handle_);
    handle_ = 0;
  }
  int32_t handle_;
};

// Starts a call of `handler` of `service` (timeout 0 = the caller's remaining budget).
inline PendingCall StartCall(std::string_view service, std::string_view handler,
                             std::string_view request, uint32_t timeout_ms = 0) {
  return PendingCall(tern_call_start(service.data(), static_cast<uint32_t>(service.size()),
                                     handler.data(), static_cast<uint32_t>(handler.size()),
                                     request.data(), static_cast<uint32_t>(request.size()),
                                     timeout_ms));
}

// Calls `handler` of `service` and waits for the result.
inline CallResult Call(std::string_view service, std::string_view handler,
                       std::string_view request, uint32_t timeout_ms = 0) {
  return StartCall(service, handler, request, timeout_ms).Wait();
}

// ---- datasets (see tern_data_* in tern.h)
//
//   std::string buf(1 << 20, '\0');
//   int64_t n = tern::DataRead("logs", "day1.bin", offset, buf.data(), buf.size());
//   if (n < 0) return tern::Fail(static_cast<int32_t>(-n), "read failed");

// Bytes read into dst (>= 0), or a negative TERN_* code.
inline int64_t DataRead(std::string_view dataset, std::string_view key, uint64_t offset,
                        void* dst, uint32_t len) {
  return tern_data_read(dataset.data(), static_cast<uint32_t>(dataset.size()), key.data(),
                        static_cast<uint32_t>(key.size()), offset, dst, len);
}

// The object's size, or a negative TERN_* code.
inline int64_t DataSize(std::string_view dataset, std::string_view key) {
  return tern_data_size(dataset.data(), static_cast<uint32_t>(dataset.size()), key.data(),
                        static_cast<uint32_t>(key.size()));
}

// The listing "key\tsize\n..." of a dataset; `*code` gets 0 or a TERN_* code.
inline std::string DataList(std::string_view dataset, int32_t* code = nullptr) {
  std::string out(4096, '\0');
  for (;;) {
    int64_t n = tern_data_list(dataset.data(), static_cast<uint32_t>(dataset.size()), out.data(),
                               static_cast<uint32_t>(out.size()));
    if (n < 0) {
      if (code) *code = static_cast<int32_t>(-n);
      return {};
    }
    if (static_cast<uint64_t>(n) <= out.size()) {
      out.resize(static_cast<size_t>(n));
      if (code) *code = 0;
      return out;
    }
    out.assign(static_cast<size_t>(n), '\0');
  }
}

}  // namespace tern

// TERN_HANDLER(name) { body }            exported as "name", C symbol `name`
// TERN_HANDLER(symbol, "export") { body } exported as "export", C symbol `symbol`
//
// Defines `extern "C" int32_t symbol(void)`, a handler the manifest can list under its
// export name. Give each handler a C symbol that is unique across the guests you link
// into one native binary (e.g. prefix it with the service name); the export name is
// what the manifest and callers see.
#if defined(__wasm__)
#define TERN_INTERNAL_EXPORT_AS(str) __attribute__((export_name(str)))
#else
#define TERN_INTERNAL_EXPORT_AS(str)
#endif
#define TERN_INTERNAL_HANDLER2(symbol, export_str) \
  extern "C" TERN_INTERNAL_EXPORT_AS(export_str) int32_t symbol(void)
#define TERN_INTERNAL_HANDLER1(name) TERN_INTERNAL_HANDLER2(name, #name)
#define TERN_INTERNAL_HANDLER_SELECT(a, b, macro, ...) macro
#define TERN_HANDLER(...)                                                                   \
  TERN_INTERNAL_HANDLER_SELECT(__VA_ARGS__, TERN_INTERNAL_HANDLER2, TERN_INTERNAL_HANDLER1, \
                               unused)                                                      \
  (__VA_ARGS__)

#endif  // TERN_TERN_HPP_
