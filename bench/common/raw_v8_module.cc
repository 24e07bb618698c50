#include "common/raw_v8_module.h"

#include <memory>

#include "wasm/module_info.h"

namespace tern::bench {
namespace {

// An import nobody asked for: returns 0.
void StubImport(const v8::FunctionCallbackInfo<v8::Value>& info) { info.GetReturnValue().Set(0); }

}  // namespace

v8::Local<v8::String> V8Str(v8::Isolate* iso, std::string_view s) {
  return v8::String::NewFromUtf8(iso, s.data(), v8::NewStringType::kInternalized,
                                 static_cast<int>(s.size()))
      .ToLocalChecked();
}

std::string V8ExceptionString(v8::Isolate* iso, v8::Local<v8::Context> ctx, v8::TryCatch& tc) {
  if (tc.HasTerminated()) return "terminated";
  if (!tc.HasCaught()) return "failed without an exception";
  v8::Local<v8::String> s;
  if (!tc.Exception()->ToString(ctx).ToLocal(&s)) return "exception";
  v8::String::Utf8Value u(iso, s);
  return *u ? std::string(*u, u.length()) : "exception";
}

Status WithRawModule(std::string_view wasm_bytes, const RawImportResolver& resolve, void* data,
                     const std::function<Status(RawEnv&)>& body) {
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
      return InvalidArgumentError("raw V8 compile: " + V8ExceptionString(iso, ctx, tc));
    }
    // imports = { module: { name: callback or stub, ... }, ... }
    v8::Local<v8::Object> imports = v8::Object::New(iso);
    v8::Local<v8::Value> external = v8::External::New(iso, data);
    v8::Local<v8::Function> stub = v8::Function::New(ctx, StubImport).ToLocalChecked();
    for (const wasm::ImportDesc& imp : info.imports) {
      if (imp.kind != wasm::ExternKind::kFunction) {
        return UnimplementedError("raw V8: only function imports are supported");
      }
      v8::Local<v8::Value> ns;
      if (!imports->Get(ctx, V8Str(iso, imp.module)).ToLocal(&ns) || !ns->IsObject()) {
        ns = v8::Object::New(iso);
        if (imports->Set(ctx, V8Str(iso, imp.module), ns).IsNothing()) {
          return InternalError("raw V8: cannot build the imports object");
        }
      }
      v8::FunctionCallback cb = resolve ? resolve(imp.module, imp.name) : nullptr;
      v8::Local<v8::Function> fn =
          cb == nullptr ? stub : v8::Function::New(ctx, cb, external).ToLocalChecked();
      if (ns.As<v8::Object>()->Set(ctx, V8Str(iso, imp.name), fn).IsNothing()) {
        return InternalError("raw V8: cannot build the imports object");
      }
    }
    v8::Local<v8::Value> wa, ctor_v;
    if (!ctx->Global()->Get(ctx, V8Str(iso, "WebAssembly")).ToLocal(&wa) || !wa->IsObject() ||
        !wa.As<v8::Object>()->Get(ctx, V8Str(iso, "Instance")).ToLocal(&ctor_v) ||
        !ctor_v->IsFunction()) {
      return InternalError("no WebAssembly.Instance");
    }
    v8::Local<v8::Function> ctor = ctor_v.As<v8::Function>();
    v8::Local<v8::String> exports_s = V8Str(iso, "exports");
    v8::Local<v8::String> init_s = V8Str(iso, "_initialize");
    v8::Local<v8::Value> argv[2] = {module, imports};

    RawEnv env{iso, ctx, &tc, nullptr};
    env.instantiate = [&](bool run_init) -> Result<v8::Local<v8::Object>> {
      v8::Local<v8::Object> inst;
      v8::Local<v8::Value> exports;
      if (!ctor->NewInstance(ctx, 2, argv).ToLocal(&inst) ||
          !inst->Get(ctx, exports_s).ToLocal(&exports) || !exports->IsObject()) {
        return InvalidArgumentError("raw V8 instantiate: " + V8ExceptionString(iso, ctx, tc));
      }
      if (run_init) {
        v8::Local<v8::Value> init;
        if (exports.As<v8::Object>()->Get(ctx, init_s).ToLocal(&init) && init->IsFunction()) {
          if (init.As<v8::Function>()->Call(ctx, v8::Undefined(iso), 0, nullptr).IsEmpty()) {
            return AbortedError("raw V8 _initialize: " + V8ExceptionString(iso, ctx, tc));
          }
        }
      }
      return exports.As<v8::Object>();
    };
    return body(env);
  }();
  iso->Dispose();
  return st;
}

}  // namespace tern::bench
