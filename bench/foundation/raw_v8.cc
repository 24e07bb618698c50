#include "raw_v8.h"

#include <sys/mman.h>
#include <v8.h>

#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "common/bench_util.h"
#include "common/raw_v8_module.h"

namespace tern::bench {
namespace {

Status RunOnThisThread(std::string_view wasm_bytes, const RawV8Options& o, RawV8Results* out) {
  return WithRawModule(wasm_bytes, nullptr, nullptr, [&](RawEnv& env) -> Status {
    v8::Isolate* iso = env.iso;
    v8::Local<v8::Context> ctx = env.ctx;
    v8::TryCatch& tc = *env.tc;
    auto& instantiate = env.instantiate;
    // --- export calls on one warm instance.
    TERN_ASSIGN_OR_RETURN(v8::Local<v8::Object> exports, instantiate(true));
    v8::Local<v8::Value> fn_v;
    if (!exports->Get(ctx, V8Str(iso, o.export_name)).ToLocal(&fn_v) || !fn_v->IsFunction()) {
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
          if (r.IsEmpty()) return AbortedError("raw V8 call: " + V8ExceptionString(iso, ctx, tc));
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
  return WithRawModule(wasm_bytes, nullptr, nullptr, [&](RawEnv& env) -> Status {
    v8::Isolate* iso = env.iso;
    v8::Local<v8::Context> ctx = env.ctx;
    v8::Local<v8::String> memory_s = V8Str(iso, "memory");
    v8::Local<v8::String> grow_s = V8Str(iso, "grow");
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
        return ResourceExhaustedError("raw V8 memory.grow: " + V8ExceptionString(iso, ctx, *env.tc));
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
