#include "raw_v8.h"

#include <sys/mman.h>
#include <v8.h>

#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "common/bench_util.h"
#include "wasm/module_info.h"

namespace tern::bench {
namespace {

v8::Local<v8::String> Str(v8::Isolate* iso, std::string_view s) {
  return v8::String::NewFromUtf8(iso, s.data(), v8::NewStringType::kInternalized,
                                 static_cast<int>(s.size()))
      .ToLocalChecked();
}

// Every import: returns 0 (the floor's guest never calls them on the measured path).
void StubImport(const v8::FunctionCallbackInfo<v8::Value>& info) { info.GetReturnValue().Set(0); }

std::string ExceptionString(v8::Isolate* iso, v8::Local<v8::Context> ctx, v8::TryCatch& tc) {
  if (tc.HasTerminated()) return "terminated";
  if (!tc.HasCaught()) return "failed without an exception";
  v8::Local<v8::String> s;
  if (!tc.Exception()->ToString(ctx).ToLocal(&s)) return "exception";
  v8::String::Utf8Value u(iso, s);
  return *u ? std::string(*u, u.length()) : "exception";
}

// What a measurement body gets: an entered isolate and context, a TryCatch, and a
// function that instantiates the compiled module with stub imports.
struct RawEnv {
  v8::Isolate* iso;
  v8::Local<v8::Context> ctx;
  v8::TryCatch* tc;
  // new WebAssembly.Instance(module, imports) [+ exports._initialize()]; the exports.
  std::function<Result<v8::Local<v8::Object>>(bool run_init)> instantiate;
};

// Creates an isolate on the calling thread, compiles `wasm_bytes`, builds the stub
// imports, runs `body`, and disposes of the isolate.
Status WithRawModule(std::string_view wasm_bytes, const std::function<Status(RawEnv&)>& body) {
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
        if (imports->Set(ctx, Str(iso, imp.module), ns).IsNothing()) {
          return InternalError("raw V8: cannot build the imports object");
        }
      }
      if (ns.As<v8::Object>()->Set(ctx, Str(iso, imp.name), stub).IsNothing()) {
        return InternalError("raw V8: cannot build the imports object");
      }
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

    RawEnv env{iso, ctx, &tc, nullptr};
    env.instantiate = [&](bool run_init) -> Result<v8::Local<v8::Object>> {
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
    return body(env);
  }();
  iso->Dispose();
  return st;
}

Status RunOnThisThread(std::string_view wasm_bytes, const RawV8Options& o, RawV8Results* out) {
  return WithRawModule(wasm_bytes, [&](RawEnv& env) -> Status {
    v8::Isolate* iso = env.iso;
    v8::Local<v8::Context> ctx = env.ctx;
    v8::TryCatch& tc = *env.tc;
    auto& instantiate = env.instantiate;
    // --- export calls on one warm instance.
    TERN_ASSIGN_OR_RETURN(v8::Local<v8::Object> exports, instantiate(true));
    v8::Local<v8::Value> fn_v;
    if (!exports->Get(ctx, Str(iso, o.export_name)).ToLocal(&fn_v) || !fn_v->IsFunction()) {
      return NotFoundError("raw V8: no export " + o.export_name);
    }
    v8::Local<v8::Function> fn = fn_v.As<v8::Function>();
    v8::Local<v8::Value> recv = v8::Undefined(iso);
    // Either times every call (`samples`) or every batch of kPerScope calls (`batches`,
    // in 1/1000 ns per call).
    auto call_batch = [&](size_t n, std::vector<int64_t>* samples,
                          std::vector<int64_t>* batches) -> Status {
      constexpr size_t kPerScope = 1000;  // a HandleScope per batch of calls
      for (size_t done = 0; done < n;) {
        v8::HandleScope scope(iso);
        size_t end = std::min(n, done + kPerScope);
        const size_t first = done;
        const int64_t b0 = NowNs();
        for (; done < end; ++done) {
          int64_t t0 = samples ? NowNs() : 0;
          v8::MaybeLocal<v8::Value> r = fn->Call(ctx, recv, 0, nullptr);
          if (samples) samples->push_back(NowNs() - t0);
          if (r.IsEmpty()) return AbortedError("raw V8 call: " + ExceptionString(iso, ctx, tc));
        }
        if (batches != nullptr && done - first == kPerScope) {
          batches->push_back((NowNs() - b0) * 1000 / static_cast<int64_t>(kPerScope));
        }
      }
      return Status::Ok();
    };
    TERN_RETURN_IF_ERROR(call_batch(o.warmup_calls, nullptr, nullptr));
    out->call_ns.reserve(o.calls);
    TERN_RETURN_IF_ERROR(call_batch(o.calls, &out->call_ns, nullptr));
    std::vector<int64_t> batches;
    TERN_RETURN_IF_ERROR(call_batch(o.batch_calls, nullptr, &batches));
    out->batch_median_ns = Summarize(batches).p50 / 1000.0;

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
  });
}

Status RestoreOnThisThread(std::string_view wasm_bytes, std::string_view image, size_t reps,
                           RawRestoreResults* out) {
  return WithRawModule(wasm_bytes, [&](RawEnv& env) -> Status {
    v8::Isolate* iso = env.iso;
    v8::Local<v8::Context> ctx = env.ctx;
    v8::Local<v8::String> memory_s = Str(iso, "memory");
    v8::Local<v8::String> grow_s = Str(iso, "grow");
    for (size_t i = 0; i < reps; ++i) {
      v8::HandleScope scope(iso);
      const int64_t t0 = NowNs();
      TERN_ASSIGN_OR_RETURN(v8::Local<v8::Object> exports, env.instantiate(false));
      const int64_t t1 = NowNs();
      v8::Local<v8::Value> mem_v, grow_v;
      if (!exports->Get(ctx, memory_s).ToLocal(&mem_v) || !mem_v->IsWasmMemoryObject()) {
        return NotFoundError("raw V8: no memory export");
      }
      v8::Local<v8::WasmMemoryObject> mem = mem_v.As<v8::WasmMemoryObject>();
      const size_t have = mem->Buffer()->ByteLength();
      if (image.size() < have) return InvalidArgumentError("image smaller than a fresh memory");
      v8::Local<v8::Value> delta =
          v8::Integer::NewFromUnsigned(iso, static_cast<uint32_t>((image.size() - have) / 65536));
      if (!mem->Get(ctx, grow_s).ToLocal(&grow_v) || !grow_v->IsFunction() ||
          grow_v.As<v8::Function>()->Call(ctx, mem, 1, &delta).IsEmpty()) {
        return ResourceExhaustedError("raw V8 memory.grow: " + ExceptionString(iso, ctx, *env.tc));
      }
      const int64_t t2 = NowNs();
      v8::Local<v8::ArrayBuffer> buf = mem->Buffer();
      if (buf->ByteLength() != image.size()) return InternalError("raw V8: grow gave a wrong size");
      ::madvise(buf->Data(), image.size(), MADV_POPULATE_WRITE);
      const int64_t t3 = NowNs();
      std::memcpy(buf->Data(), image.data(), image.size());
      const int64_t t4 = NowNs();
      out->instantiate_ns.push_back(t1 - t0);
      out->grow_ns.push_back(t2 - t1);
      out->populate_ns.push_back(t3 - t2);
      out->copy_ns.push_back(t4 - t3);
      out->restore_ns.push_back(t4 - t1);
    }
    return Status::Ok();
  });
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

Result<RawRestoreResults> RunRawV8Restore(std::string_view wasm_bytes, std::string_view image,
                                          size_t reps, int cpu) {
  RawRestoreResults out;
  Status st;
  std::thread t([&] {
    if (cpu >= 0) out.pinned = PinThisThread(cpu);
    st = RestoreOnThisThread(wasm_bytes, image, reps, &out);
  });
  t.join();
  if (!st.ok()) return st;
  return out;
}

}  // namespace tern::bench
