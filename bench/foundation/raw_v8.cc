#include "raw_v8.h"

#include <v8.h>

#include <memory>
#include <thread>

#include "bench_util.h"
#include "wasm/module_info.h"

namespace tern::bench {
namespace {

v8::Local<v8::String> Str(v8::Isolate* iso, std::string_view s) {
  return v8::String::NewFromUtf8(iso, s.data(), v8::NewStringType::kInternalized,
                                 static_cast<int>(s.size()))
      .ToLocalChecked();
}

// Every import: returns 0 (the floor's guest never calls them on the measured path).
void StubImport(const v8::FunctionCallbackInfo<v8::Value>& info) {
  info.GetReturnValue().Set(0);
}

std::string ExceptionString(v8::Isolate* iso, v8::Local<v8::Context> ctx, v8::TryCatch& tc) {
  if (tc.HasTerminated()) return "terminated";
  if (!tc.HasCaught()) return "failed without an exception";
  v8::Local<v8::String> s;
  if (!tc.Exception()->ToString(ctx).ToLocal(&s)) return "exception";
  v8::String::Utf8Value u(iso, s);
  return *u ? std::string(*u, u.length()) : "exception";
}

Status RunOnThisThread(std::string_view wasm_bytes, const RawV8Options& o, RawV8Results* out) {
  TERN_ASSIGN_OR_RETURN(wasm::ModuleInfo info, wasm::ParseModuleInfo(wasm_bytes));
  std::unique_ptr<v8::ArrayBuffer::Allocator> allocator(
      v8::ArrayBuffer::Allocator::NewDefaultAllocator());
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator = allocator.get();
  v8::Isolate* iso = v8::Isolate::New(params);
  if (iso == nullptr) return ResourceExhaustedError("cannot create an isolate");
  Status st = [&]() -> Status {
    v8::Isolate::Scope isolate_scope(iso);
    v8::HandleScope outer(iso);
    v8::Local<v8::Context> ctx = v8::Context::New(iso);
    v8::Context::Scope context_scope(ctx);
    v8::TryCatch tc(iso);

    v8::Local<v8::WasmModuleObject> module;
    if (!v8::WasmModuleObject::Compile(
             iso, v8::MemorySpan<const uint8_t>(reinterpret_cast<const uint8_t*>(wasm_bytes.data()),
                                                wasm_bytes.size()))
             .ToLocal(&module)) {
      return InvalidArgumentError("raw V8 compile: " + ExceptionString(iso, ctx, tc));
    }
    // imports = { module: { name: stub, ... }, ... }
    v8::Local<v8::Object> imports = v8::Object::New(iso);
    v8::Local<v8::Function> stub = v8::Function::New(ctx, StubImport).ToLocalChecked();
    for (const wasm::ImportDesc& imp : info.imports) {
      if (imp.kind != wasm::ExternKind::kFunction) {
        return UnimplementedError("raw V8 floor: only function imports are stubbed");
      }
      v8::Local<v8::Value> ns;
      if (!imports->Get(ctx, Str(iso, imp.module)).ToLocal(&ns) || !ns->IsObject()) {
        ns = v8::Object::New(iso);
        (void)imports->Set(ctx, Str(iso, imp.module), ns);
      }
      (void)ns.As<v8::Object>()->Set(ctx, Str(iso, imp.name), stub);
    }
    v8::Local<v8::Value> wa, ctor_v;
    if (!ctx->Global()->Get(ctx, Str(iso, "WebAssembly")).ToLocal(&wa) || !wa->IsObject() ||
        !wa.As<v8::Object>()->Get(ctx, Str(iso, "Instance")).ToLocal(&ctor_v) ||
        !ctor_v->IsFunction()) {
      return InternalError("no WebAssembly.Instance");
    }
    v8::Local<v8::Function> ctor = ctor_v.As<v8::Function>();
    v8::Local<v8::String> exports_s = Str(iso, "exports");
    v8::Local<v8::String> init_s = Str(iso, "_initialize");
    v8::Local<v8::Value> argv[2] = {module, imports};

    // One instantiation: new WebAssembly.Instance(module, imports) [+ _initialize()].
    auto instantiate = [&](bool run_init) -> Result<v8::Local<v8::Object>> {
      v8::Local<v8::Object> inst;
      v8::Local<v8::Value> exports;
      if (!ctor->NewInstance(ctx, 2, argv).ToLocal(&inst) ||
          !inst->Get(ctx, exports_s).ToLocal(&exports) || !exports->IsObject()) {
        return InvalidArgumentError("raw V8 instantiate: " + ExceptionString(iso, ctx, tc));
      }
      if (run_init) {
        v8::Local<v8::Value> init;
        if (exports.As<v8::Object>()->Get(ctx, init_s).ToLocal(&init) && init->IsFunction()) {
          if (init.As<v8::Function>()->Call(ctx, v8::Undefined(iso), 0, nullptr).IsEmpty()) {
            return AbortedError("raw V8 _initialize: " + ExceptionString(iso, ctx, tc));
          }
        }
      }
      return exports.As<v8::Object>();
    };

    // --- export calls on one warm instance.
    TERN_ASSIGN_OR_RETURN(v8::Local<v8::Object> exports, instantiate(true));
    v8::Local<v8::Value> fn_v;
    if (!exports->Get(ctx, Str(iso, o.export_name)).ToLocal(&fn_v) || !fn_v->IsFunction()) {
      return NotFoundError("raw V8: no export " + o.export_name);
    }
    v8::Local<v8::Function> fn = fn_v.As<v8::Function>();
    v8::Local<v8::Value> recv = v8::Undefined(iso);
    auto call_batch = [&](size_t n, std::vector<int64_t>* samples) -> Status {
      constexpr size_t kPerScope = 1000;  // a HandleScope per batch of calls
      for (size_t done = 0; done < n;) {
        v8::HandleScope scope(iso);
        size_t end = std::min(n, done + kPerScope);
        for (; done < end; ++done) {
          int64_t t0 = samples ? NowNs() : 0;
          v8::MaybeLocal<v8::Value> r = fn->Call(ctx, recv, 0, nullptr);
          if (samples) samples->push_back(NowNs() - t0);
          if (r.IsEmpty()) return AbortedError("raw V8 call: " + ExceptionString(iso, ctx, tc));
        }
      }
      return Status::Ok();
    };
    TERN_RETURN_IF_ERROR(call_batch(o.warmup_calls, nullptr));
    out->call_ns.reserve(o.calls);
    TERN_RETURN_IF_ERROR(call_batch(o.calls, &out->call_ns));
    int64_t t0 = NowNs();
    TERN_RETURN_IF_ERROR(call_batch(o.batch_calls, nullptr));
    out->batch_mean_ns = static_cast<double>(NowNs() - t0) / static_cast<double>(o.batch_calls);

    // --- instantiations (each instance dropped at once; V8's GC reclaims them).
    for (int pass = 0; pass < 2; ++pass) {
      const bool run_init = pass == 0;
      std::vector<int64_t>* samples = run_init ? &out->instantiate_init_ns : &out->instantiate_ns;
      samples->reserve(o.instantiations);
      for (size_t i = 0; i < o.warmup_instantiations + o.instantiations; ++i) {
        v8::HandleScope scope(iso);
        int64_t a = NowNs();
        Result<v8::Local<v8::Object>> r = instantiate(run_init);
        int64_t b = NowNs();
        if (!r.ok()) return r.status();
        if (i >= o.warmup_instantiations) samples->push_back(b - a);
      }
    }
    return Status::Ok();
  }();
  iso->Dispose();
  return st;
}

}  // namespace

Result<RawV8Results> RunRawV8(std::string_view wasm_bytes, const RawV8Options& options) {
  RawV8Results out;
  Status st;
  std::thread t([&] {
    if (options.cpu >= 0) out.pinned = PinThisThread(options.cpu);
    st = RunOnThisThread(wasm_bytes, options, &out);
  });
  t.join();
  if (!st.ok()) return st;
  return out;
}

}  // namespace tern::bench
