#include "raw_echo.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include "common/raw_v8_module.h"

namespace tern::bench::rpc {
namespace {

using Info = v8::FunctionCallbackInfo<v8::Value>;

// The host side of one guest: the request being served and the reply it named.
struct EchoHost {
  v8::Isolate* iso = nullptr;
  v8::Global<v8::WasmMemoryObject> memory;
  uint8_t* base = nullptr;  // the memory's current start and size (refreshed on growth)
  size_t size = 0;
  std::span<const uint8_t> request, request_rest;  // the request, in two parts
  std::span<const uint8_t> reply;
  bool replied = false;

  void Refresh() {
    std::shared_ptr<v8::BackingStore> bs = memory.Get(iso)->Buffer()->GetBackingStore();
    base = static_cast<uint8_t*>(bs->Data());
    size = bs->ByteLength();
  }
  // Whether [ptr, ptr + len) is inside the memory (which may have grown since).
  bool Fits(uint32_t ptr, uint32_t len) {
    if (uint64_t{ptr} + len <= size) return true;
    Refresh();
    return uint64_t{ptr} + len <= size;
  }
};

EchoHost* HostOf(const Info& info) {
  return static_cast<EchoHost*>(info.Data().As<v8::External>()->Value());
}

uint32_t ArgU32(const Info& info, int i) {
  v8::Local<v8::Value> v = info[i];
  if (v->IsInt32()) return static_cast<uint32_t>(v.As<v8::Int32>()->Value());
  return static_cast<uint32_t>(v->Int32Value(info.GetIsolate()->GetCurrentContext()).FromMaybe(0));
}

void Throw(const Info& info, const char* what) {
  info.GetIsolate()->ThrowException(V8Str(info.GetIsolate(), what));
}

void RequestLen(const Info& info) {
  const EchoHost* h = HostOf(info);
  info.GetReturnValue().Set(static_cast<uint32_t>(h->request.size() + h->request_rest.size()));
}

// request_read(dst, len, offset) -> bytes copied (from both parts of the request)
void RequestRead(const Info& info) {
  EchoHost* h = HostOf(info);
  const uint32_t dst = ArgU32(info, 0), len = ArgU32(info, 1), offset = ArgU32(info, 2);
  if (!h->Fits(dst, len)) return Throw(info, "request_read: out of bounds");
  size_t n = 0;
  size_t at = offset;
  for (std::span<const uint8_t> part : {h->request, h->request_rest}) {
    if (at >= part.size()) {
      at -= part.size();
      continue;
    }
    const size_t k = std::min<size_t>(len - n, part.size() - at);
    std::memcpy(h->base + dst + n, part.data() + at, k);
    n += k;
    at = 0;
  }
  info.GetReturnValue().Set(static_cast<uint32_t>(n));
}

// reply_in_place(ptr, len) -> 0; the bytes are read after the handler returns.
void ReplyInPlace(const Info& info) {
  EchoHost* h = HostOf(info);
  const uint32_t ptr = ArgU32(info, 0), len = ArgU32(info, 1);
  if (!h->Fits(ptr, len)) return Throw(info, "reply_in_place: out of bounds");
  h->reply = {h->base + ptr, len};
  h->replied = true;
  info.GetReturnValue().Set(0);
}

}  // namespace

Status WithRawEcho(std::string_view wasm_bytes,
                   const std::function<Status(const RawEchoFn&)>& serve) {
  EchoHost host;
  auto resolve = [](std::string_view module, std::string_view name) -> v8::FunctionCallback {
    if (module != "tern_v1") return nullptr;
    if (name == "request_len") return RequestLen;
    if (name == "request_read") return RequestRead;
    if (name == "reply_in_place") return ReplyInPlace;
    return nullptr;  // the echo handler calls nothing else
  };
  return WithRawModule(wasm_bytes, resolve, &host, [&](RawEnv& env) -> Status {
    v8::Isolate* iso = env.iso;
    v8::Local<v8::Context> ctx = env.ctx;
    TERN_ASSIGN_OR_RETURN(v8::Local<v8::Object> exports, env.instantiate(true));
    v8::Local<v8::Value> fn_v, mem_v;
    if (!exports->Get(ctx, V8Str(iso, "echo")).ToLocal(&fn_v) || !fn_v->IsFunction()) {
      return NotFoundError("raw echo: the module has no export 'echo'");
    }
    if (!exports->Get(ctx, V8Str(iso, "memory")).ToLocal(&mem_v) || !mem_v->IsWasmMemoryObject()) {
      return NotFoundError("raw echo: the module exports no memory");
    }
    host.iso = iso;
    host.memory.Reset(iso, mem_v.As<v8::WasmMemoryObject>());
    host.Refresh();
    v8::Local<v8::Function> fn = fn_v.As<v8::Function>();
    v8::Local<v8::Value> recv = v8::Undefined(iso);
    // A handle scope per 1000 calls, as V8 embedders batch them (each call's result is a
    // handle); a scope per call would add its own cost to the floor.
    size_t in_scope = 0;
    std::optional<v8::HandleScope> scope(std::in_place, iso);  // V8 forbids heap scopes
    RawEchoFn echo = [&](std::span<const uint8_t> request,
                         std::span<const uint8_t> rest) -> Result<std::span<const uint8_t>> {
      if (++in_scope == 1000) {
        scope.reset();
        scope.emplace(iso);
        in_scope = 0;
      }
      host.request = request;
      host.request_rest = rest;
      host.replied = false;
      v8::Local<v8::Value> r;
      if (!fn->Call(ctx, recv, 0, nullptr).ToLocal(&r)) {
        return AbortedError("raw echo: " + V8ExceptionString(iso, ctx, *env.tc));
      }
      if (!r->IsInt32() || r.As<v8::Int32>()->Value() != 0 || !host.replied) {
        return AbortedError("raw echo: the handler failed or did not reply");
      }
      return host.reply;
    };
    Status st = serve(echo);
    scope.reset();
    host.memory.Reset();
    return st;
  });
}

}  // namespace tern::bench::rpc
