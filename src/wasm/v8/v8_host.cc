// Host functions: tern_v1.* and the WASI stubs, as V8 FunctionCallbacks.
//
// Each callback reaches the running call through its worker's CallState. Every guest
// pointer is bounds-checked against the current linear memory; a bad one throws a
// WebAssembly.RuntimeError, which unwinds the guest and fails the call as kInternal.
// Signatures were checked at compile time (CheckImports), so i32 arguments arrive as
// Int32 numbers and i64 ones as BigInts.
#include <fmt/format.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "wasm/v8/v8_internal.h"

namespace tern::wasm::internal {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "wasm memory is little-endian");

using Info = v8::FunctionCallbackInfo<v8::Value>;

// WASI errno values (wasi_snapshot_preview1).
constexpr int32_t kWasiSuccess = 0;
constexpr int32_t kWasiBadf = 8;
constexpr int32_t kWasiInval = 28;
constexpr int32_t kWasiIo = 29;
constexpr int32_t kWasiSpipe = 70;
// WASI fdstat fields.
constexpr uint8_t kWasiFiletypeCharacterDevice = 2;
constexpr uint64_t kWasiRightFdRead = 1u << 1;
constexpr uint64_t kWasiRightFdWrite = 1u << 6;

constexpr uint32_t kMaxLogLine = 64 * 1024;

V8Worker* WorkerOf(const Info& info) {
  return static_cast<V8Worker*>(info.Data().As<v8::External>()->Value());
}

uint32_t ArgU32(const Info& info, int i) {
  v8::Local<v8::Value> v = info[i];
  if (v->IsInt32()) return static_cast<uint32_t>(v.As<v8::Int32>()->Value());
  return static_cast<uint32_t>(v->Int32Value(info.GetIsolate()->GetCurrentContext()).FromMaybe(0));
}

int64_t ArgI64(const Info& info, int i) {
  v8::Local<v8::Value> v = info[i];
  if (v->IsBigInt()) return v.As<v8::BigInt>()->Int64Value();
  return 0;
}

// The running call and its guest memory, or a trap when there is no call.
class HostCall {
 public:
  HostCall(const Info& info, const char* fn) : info_(info), worker_(WorkerOf(info)), fn_(fn) {
    if (worker_->call().instance == nullptr) {
      worker_->ThrowTrap(fmt::format("{}: host functions can only be called during a request", fn));
    }
  }

  // False when there is no running call (a trap has been thrown).
  bool ok() const { return worker_->call().instance != nullptr; }
  CallState& call() { return worker_->call(); }
  V8Worker* worker() { return worker_; }

  // Guest range [ptr, ptr + len): its host address, or null after throwing a trap.
  uint8_t* Span(uint32_t ptr, uint64_t len, const char* what) {
    if (mem_ == nullptr) {
      // The call's view of the memory (CallState::mem_buf), unless the guest grew it
      // since: then looked up again (a V8 handle, address and size: ~30 ns), once per
      // host call — not for the host calls that touch no memory (tern_request_len).
      CallState& cs = worker_->call();
      if (!cs.mem_buf.IsEmpty() && !cs.mem_buf->WasDetached()) {
        mem_ = cs.mem_base;
        size_ = cs.mem_size;
      } else {
        v8::Local<v8::ArrayBuffer> buf = cs.instance->Buffer();
        mem_ = static_cast<uint8_t*>(buf->Data());
        size_ = buf->ByteLength();
      }
    }
    if (uint64_t{ptr} + len > size_) {
      worker_->ThrowTrap(fmt::format("{}: {} [{:#x}, +{}) is outside linear memory ({} bytes)", fn_,
                                     what, ptr, len, size_));
      return nullptr;
    }
    return mem_ + ptr;
  }

  bool StoreU32(uint32_t ptr, uint32_t v, const char* what) {
    uint8_t* p = Span(ptr, 4, what);
    if (p != nullptr) std::memcpy(p, &v, 4);
    return p != nullptr;
  }
  bool StoreU64(uint32_t ptr, uint64_t v, const char* what) {
    uint8_t* p = Span(ptr, 8, what);
    if (p != nullptr) std::memcpy(p, &v, 8);
    return p != nullptr;
  }

  void Return(int32_t v) { info_.GetReturnValue().Set(v); }

 private:
  const Info& info_;
  V8Worker* const worker_;
  const char* const fn_;
  uint8_t* mem_ = nullptr;
  uint64_t size_ = 0;
};

// ---- tern_v1

void RequestLen(const Info& info) {
  HostCall hc(info, "tern_request_len");
  if (!hc.ok()) return;
  info.GetReturnValue().Set(static_cast<uint32_t>(hc.call().host->Request().size()));
}

void RequestRead(const Info& info) {
  HostCall hc(info, "tern_request_read");
  if (!hc.ok()) return;
  uint32_t dst = ArgU32(info, 0), len = ArgU32(info, 1), offset = ArgU32(info, 2);
  uint8_t* p = hc.Span(dst, len, "destination");
  if (p == nullptr) return;
  std::string_view req = hc.call().host->Request();
  uint32_t n = 0;
  if (offset < req.size()) {
    n = static_cast<uint32_t>(std::min<uint64_t>(len, req.size() - offset));
    std::memcpy(p, req.data() + offset, n);
  }
  info.GetReturnValue().Set(n);
}

void Reply(const Info& info) {
  HostCall hc(info, "tern_reply");
  if (!hc.ok()) return;
  uint32_t ptr = ArgU32(info, 0), len = ArgU32(info, 1);
  if (len > hc.call().max_reply_bytes) {
    hc.Return(static_cast<int32_t>(StatusCode::kResourceExhausted));
    return;
  }
  uint8_t* p = hc.Span(ptr, len, "reply");
  if (p == nullptr) return;
  hc.call().reply_in_place = false;  // the last reply wins
  hc.call().host->SetReply(std::string_view(reinterpret_cast<const char*>(p), len));
  hc.Return(0);
}

// Only records the range: its bytes are read when the handler returns OK (V8Worker::
// Invoke), which is what saves the copy. Checked now as well, so that a bad range traps
// where the guest passed it.
void ReplyInPlace(const Info& info) {
  HostCall hc(info, "tern_reply_in_place");
  if (!hc.ok()) return;
  uint32_t ptr = ArgU32(info, 0), len = ArgU32(info, 1);
  if (len > hc.call().max_reply_bytes) {
    hc.Return(static_cast<int32_t>(StatusCode::kResourceExhausted));
    return;
  }
  if (hc.Span(ptr, len, "reply") == nullptr) return;
  CallState& cs = hc.call();
  cs.reply_in_place = true;
  cs.reply_ptr = ptr;
  cs.reply_len = len;
  hc.Return(0);
}

void Fail(const Info& info) {
  HostCall hc(info, "tern_fail");
  if (!hc.ok()) return;
  int32_t code = static_cast<int32_t>(ArgU32(info, 0));
  uint32_t ptr = ArgU32(info, 1), len = ArgU32(info, 2);
  uint8_t* p = hc.Span(ptr, len, "message");
  if (p == nullptr) return;
  StatusCode sc = StatusCodeFromInt(code);
  if (sc == StatusCode::kOk) sc = StatusCode::kUnknown;  // failing with "OK" is a guest bug
  CallState& cs = hc.call();
  cs.failed = true;
  cs.fail_code = sc;
  cs.fail_message.assign(reinterpret_cast<const char*>(p), std::min(len, kMaxLogLine));
  cs.host->SetFailure(sc, cs.fail_message);
}

void Log(const Info& info) {
  HostCall hc(info, "tern_log");
  if (!hc.ok()) return;
  int32_t level = static_cast<int32_t>(ArgU32(info, 0));
  uint32_t ptr = ArgU32(info, 1), len = ArgU32(info, 2);
  uint8_t* p = hc.Span(ptr, len, "message");
  if (p == nullptr) return;
  hc.call().host->Log(
      level, std::string_view(reinterpret_cast<const char*>(p), std::min(len, kMaxLogLine)));
}

int64_t ClockNanos(clockid_t id) {
  timespec ts;
  if (clock_gettime(id, &ts) != 0) return -1;
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void ClockNs(const Info& info) {
  HostCall hc(info, "tern_clock_ns");
  if (!hc.ok()) return;
  int64_t t = -1;
  switch (ArgU32(info, 0)) {
    case 0:
      t = ClockNanos(CLOCK_MONOTONIC);
      break;
    case 1:
      t = ClockNanos(CLOCK_REALTIME);
      break;
    default:
      break;  // unknown clock: -1
  }
  info.GetReturnValue().Set(v8::BigInt::New(info.GetIsolate(), t));
}

// ---- tern_v1 calls to other services

void CallStart(const Info& info) {
  HostCall hc(info, "tern_call_start");
  if (!hc.ok()) return;
  uint32_t svc = ArgU32(info, 0), svc_len = ArgU32(info, 1), h = ArgU32(info, 2),
           h_len = ArgU32(info, 3), req = ArgU32(info, 4), req_len = ArgU32(info, 5),
           timeout_ms = ArgU32(info, 6);
  // Names are short; a huge length is a guest bug, reported as such (no trap).
  if (svc_len > 255 || h_len > 255) {
    hc.Return(-static_cast<int32_t>(StatusCode::kInvalidArgument));
    return;
  }
  uint8_t* ps = hc.Span(svc, svc_len, "service name");
  if (ps == nullptr) return;
  uint8_t* ph = hc.Span(h, h_len, "handler name");
  if (ph == nullptr) return;
  uint8_t* pr = hc.Span(req, req_len, "request");
  if (pr == nullptr) return;
  hc.Return(hc.call().host->CallStart(
      std::string_view(reinterpret_cast<const char*>(ps), svc_len),
      std::string_view(reinterpret_cast<const char*>(ph), h_len),
      std::string_view(reinterpret_cast<const char*>(pr), req_len), timeout_ms));
}

void CallWait(const Info& info) {
  HostCall hc(info, "tern_call_wait");
  if (!hc.ok()) return;
  int32_t handle = static_cast<int32_t>(ArgU32(info, 0));
  uint32_t len_ptr = ArgU32(info, 1);
  if (hc.Span(len_ptr, 4, "length pointer") == nullptr) return;
  // The host is saved here: waiting may run other guests on this worker (their calls
  // save and restore the worker's CallState around themselves).
  HostCalls* host = hc.call().host;
  uint32_t len = 0;
  int32_t rc = host->CallWait(handle, &len);
  if (!hc.ok()) return;
  if (!hc.StoreU32(len_ptr, len, "length pointer")) return;
  hc.Return(rc);
}

void CallRead(const Info& info) {
  HostCall hc(info, "tern_call_read");
  if (!hc.ok()) return;
  int32_t handle = static_cast<int32_t>(ArgU32(info, 0));
  uint32_t dst = ArgU32(info, 1), len = ArgU32(info, 2), offset = ArgU32(info, 3);
  uint8_t* p = hc.Span(dst, len, "destination");
  if (p == nullptr) return;
  std::string_view r = hc.call().host->CallResult(handle);
  uint32_t n = 0;
  if (offset < r.size()) {
    n = static_cast<uint32_t>(std::min<uint64_t>(len, r.size() - offset));
    std::memcpy(p, r.data() + offset, n);
  }
  info.GetReturnValue().Set(n);
}

void CallClose(const Info& info) {
  HostCall hc(info, "tern_call_close");
  if (!hc.ok()) return;
  hc.call().host->CallClose(static_cast<int32_t>(ArgU32(info, 0)));
}

// ---- tern_v1 datasets

// The two names of a dataset call, or false after returning -kInvalidArgument or
// throwing a trap.
bool DataNames(HostCall& hc, const Info& info, bool with_key, std::string* dataset,
               std::string* key) {
  uint32_t d = ArgU32(info, 0), d_len = ArgU32(info, 1);
  uint32_t k = with_key ? ArgU32(info, 2) : 0, k_len = with_key ? ArgU32(info, 3) : 0;
  if (d_len > 255 || k_len > 255) {
    info.GetReturnValue().Set(
        v8::BigInt::New(info.GetIsolate(), -static_cast<int64_t>(StatusCode::kInvalidArgument)));
    return false;
  }
  uint8_t* pd = hc.Span(d, d_len, "dataset name");
  if (pd == nullptr) return false;
  dataset->assign(reinterpret_cast<const char*>(pd), d_len);
  if (with_key) {
    uint8_t* pk = hc.Span(k, k_len, "object key");
    if (pk == nullptr) return false;
    key->assign(reinterpret_cast<const char*>(pk), k_len);
  }
  return true;
}

void ReturnI64(const Info& info, int64_t v) {
  info.GetReturnValue().Set(v8::BigInt::New(info.GetIsolate(), v));
}

void DataRead(const Info& info) {
  HostCall hc(info, "tern_data_read");
  if (!hc.ok()) return;
  std::string dataset, key;
  if (!DataNames(hc, info, true, &dataset, &key)) return;
  uint64_t offset = static_cast<uint64_t>(ArgI64(info, 4));
  uint32_t dst = ArgU32(info, 5), len = ArgU32(info, 6);
  if (hc.Span(dst, len, "destination") == nullptr) return;
  // The host is saved here: a remote read may run other guests on this worker.
  HostCalls* host = hc.call().host;
  std::string bytes;
  int64_t n = host->DataRead(dataset, key, offset, len, &bytes);
  if (!hc.ok()) return;
  if (n > 0) {
    n = std::min<int64_t>(n, std::min<uint64_t>(len, bytes.size()));
    // Looked up again: the memory cannot have moved (this instance was suspended), but
    // the span is re-checked rather than assumed.
    uint8_t* p = hc.Span(dst, static_cast<uint64_t>(n), "destination");
    if (p == nullptr) return;
    std::memcpy(p, bytes.data(), static_cast<size_t>(n));
  }
  ReturnI64(info, n);
}

void DataSize(const Info& info) {
  HostCall hc(info, "tern_data_size");
  if (!hc.ok()) return;
  std::string dataset, key;
  if (!DataNames(hc, info, true, &dataset, &key)) return;
  HostCalls* host = hc.call().host;
  int64_t n = host->DataSize(dataset, key);
  if (!hc.ok()) return;
  ReturnI64(info, n);
}

void DataList(const Info& info) {
  HostCall hc(info, "tern_data_list");
  if (!hc.ok()) return;
  std::string dataset, unused;
  if (!DataNames(hc, info, false, &dataset, &unused)) return;
  uint32_t dst = ArgU32(info, 2), len = ArgU32(info, 3);
  if (hc.Span(dst, len, "destination") == nullptr) return;
  HostCalls* host = hc.call().host;
  std::string list;
  int64_t rc = host->DataList(dataset, &list);
  if (!hc.ok()) return;
  if (rc < 0) return ReturnI64(info, rc);
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len, list.size()));
  uint8_t* p = hc.Span(dst, n, "destination");
  if (p == nullptr) return;
  std::memcpy(p, list.data(), n);
  ReturnI64(info, static_cast<int64_t>(list.size()));
}

// ---- wasi_snapshot_preview1 stubs

void FdWrite(const Info& info) {
  HostCall hc(info, "fd_write");
  if (!hc.ok()) return;
  uint32_t fd = ArgU32(info, 0), iovs = ArgU32(info, 1), iovs_len = ArgU32(info, 2),
           nwritten_ptr = ArgU32(info, 3);
  if (fd != 1 && fd != 2) {
    hc.Return(kWasiBadf);
    return;
  }
  const uint8_t* vec = hc.Span(iovs, uint64_t{iovs_len} * 8, "iovec array");
  if (vec == nullptr) return;
  std::string text;
  uint64_t total = 0;
  for (uint32_t i = 0; i < iovs_len; ++i) {
    uint32_t buf, len;
    std::memcpy(&buf, vec + 8 * i, 4);
    std::memcpy(&len, vec + 8 * i + 4, 4);
    const uint8_t* p = hc.Span(buf, len, "iovec buffer");
    if (p == nullptr) return;
    total += len;
    if (text.size() < kMaxLogLine) {
      text.append(reinterpret_cast<const char*>(p),
                  std::min<size_t>(len, kMaxLogLine - text.size()));
    }
  }
  if (!hc.StoreU32(nwritten_ptr, static_cast<uint32_t>(total), "nwritten")) return;
  // One log line per text line; stdout logs at INFO (1), stderr at WARN (2).
  const int32_t level = fd == 1 ? 1 : 2;
  std::string_view rest(text);
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    hc.call().host->Log(level, line);
    if (nl == std::string_view::npos) break;
    rest.remove_prefix(nl + 1);
  }
  hc.Return(kWasiSuccess);
}

void FdClose(const Info& info) {
  HostCall hc(info, "fd_close");
  if (!hc.ok()) return;
  hc.Return(ArgU32(info, 0) <= 2 ? kWasiSuccess : kWasiBadf);
}

void FdSeek(const Info& info) {
  HostCall hc(info, "fd_seek");
  if (!hc.ok()) return;
  hc.Return(ArgU32(info, 0) <= 2 ? kWasiSpipe : kWasiBadf);
}

void FdFdstatGet(const Info& info) {
  HostCall hc(info, "fd_fdstat_get");
  if (!hc.ok()) return;
  uint32_t fd = ArgU32(info, 0), ptr = ArgU32(info, 1);
  if (fd > 2) {
    hc.Return(kWasiBadf);
    return;
  }
  uint8_t* p = hc.Span(ptr, 24, "fdstat");
  if (p == nullptr) return;
  // struct fdstat { u8 filetype; u16 flags @2; u64 rights_base @8; u64 inheriting @16 }
  std::memset(p, 0, 24);
  p[0] = kWasiFiletypeCharacterDevice;
  uint64_t rights = fd == 0 ? kWasiRightFdRead : kWasiRightFdWrite;
  std::memcpy(p + 8, &rights, 8);
  hc.Return(kWasiSuccess);
}

void ProcExit(const Info& info) {
  HostCall hc(info, "proc_exit");
  if (!hc.ok()) return;
  CallState& cs = hc.call();
  cs.exited = true;
  cs.exit_code = static_cast<int32_t>(ArgU32(info, 0));
  hc.worker()->ThrowTrap(fmt::format("proc_exit({})", cs.exit_code));
}

// environ_get / args_get: there is nothing to write.
void EmptyListGet(const Info& info) {
  HostCall hc(info, "environ_get/args_get");
  if (!hc.ok()) return;
  hc.Return(kWasiSuccess);
}

// environ_sizes_get / args_sizes_get: zero entries, zero bytes.
void EmptyListSizesGet(const Info& info) {
  HostCall hc(info, "environ_sizes_get/args_sizes_get");
  if (!hc.ok()) return;
  if (!hc.StoreU32(ArgU32(info, 0), 0, "count") || !hc.StoreU32(ArgU32(info, 1), 0, "size")) {
    return;
  }
  hc.Return(kWasiSuccess);
}

void ClockTimeGet(const Info& info) {
  HostCall hc(info, "clock_time_get");
  if (!hc.ok()) return;
  uint32_t id = ArgU32(info, 0), ptr = ArgU32(info, 2);
  (void)ArgI64(info, 1);  // precision: ignored
  static constexpr clockid_t kClocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID,
                                          CLOCK_THREAD_CPUTIME_ID};
  if (id >= std::size(kClocks)) {
    hc.Return(kWasiInval);
    return;
  }
  int64_t t = ClockNanos(kClocks[id]);
  if (!hc.StoreU64(ptr, static_cast<uint64_t>(t), "time")) return;
  hc.Return(kWasiSuccess);
}

void RandomGet(const Info& info) {
  HostCall hc(info, "random_get");
  if (!hc.ok()) return;
  uint32_t ptr = ArgU32(info, 0), len = ArgU32(info, 1);
  uint8_t* p = hc.Span(ptr, len, "buffer");
  if (p == nullptr) return;
  uint32_t done = 0;
  while (done < len) {
    ssize_t n = getrandom(p + done, len - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      hc.Return(kWasiIo);
      return;
    }
    done += static_cast<uint32_t>(n);
  }
  hc.Return(kWasiSuccess);
}

struct HostFn {
  const char* module;
  const char* name;
  v8::FunctionCallback callback;
  int arity;
};

constexpr HostFn kHostFns[] = {
    {"tern_v1", "request_len", RequestLen, 0},
    {"tern_v1", "request_read", RequestRead, 3},
    {"tern_v1", "reply", Reply, 2},
    {"tern_v1", "reply_in_place", ReplyInPlace, 2},
    {"tern_v1", "fail", Fail, 3},
    {"tern_v1", "log", Log, 3},
    {"tern_v1", "clock_ns", ClockNs, 1},
    {"tern_v1", "call_start", CallStart, 7},
    {"tern_v1", "call_wait", CallWait, 2},
    {"tern_v1", "call_read", CallRead, 4},
    {"tern_v1", "call_close", CallClose, 1},
    {"tern_v1", "data_read", DataRead, 7},
    {"tern_v1", "data_size", DataSize, 4},
    {"tern_v1", "data_list", DataList, 4},
    {"wasi_snapshot_preview1", "fd_write", FdWrite, 4},
    {"wasi_snapshot_preview1", "fd_close", FdClose, 1},
    {"wasi_snapshot_preview1", "fd_seek", FdSeek, 4},
    {"wasi_snapshot_preview1", "fd_fdstat_get", FdFdstatGet, 2},
    {"wasi_snapshot_preview1", "proc_exit", ProcExit, 1},
    {"wasi_snapshot_preview1", "environ_get", EmptyListGet, 2},
    {"wasi_snapshot_preview1", "environ_sizes_get", EmptyListSizesGet, 2},
    {"wasi_snapshot_preview1", "args_get", EmptyListGet, 2},
    {"wasi_snapshot_preview1", "args_sizes_get", EmptyListSizesGet, 2},
    {"wasi_snapshot_preview1", "clock_time_get", ClockTimeGet, 3},
    {"wasi_snapshot_preview1", "random_get", RandomGet, 2},
};

}  // namespace

Status AddHostImports(v8::Local<v8::Context> context, v8::Local<v8::Object> imports,
                      V8Worker* worker) {
  v8::Isolate* iso = context->GetIsolate();
  v8::Local<v8::External> data = v8::External::New(iso, worker);
  for (const HostFn& f : kHostFns) {
    v8::Local<v8::String> mod_name = v8::String::NewFromUtf8(iso, f.module).ToLocalChecked();
    v8::Local<v8::Value> mod_v;
    if (!imports->Get(context, mod_name).ToLocal(&mod_v)) return InternalError("imports.get");
    v8::Local<v8::Object> mod;
    if (mod_v->IsObject()) {
      mod = mod_v.As<v8::Object>();
    } else {
      mod = v8::Object::New(iso);
      if (imports->Set(context, mod_name, mod).IsNothing()) return InternalError("imports.set");
    }
    v8::Local<v8::Function> fn;
    if (!v8::Function::New(context, f.callback, data, f.arity, v8::ConstructorBehavior::kThrow)
             .ToLocal(&fn) ||
        mod->Set(context, v8::String::NewFromUtf8(iso, f.name).ToLocalChecked(), fn).IsNothing()) {
      return InternalError(fmt::format("cannot create host function {}.{}", f.module, f.name));
    }
  }
  return Status::Ok();
}

}  // namespace tern::wasm::internal
