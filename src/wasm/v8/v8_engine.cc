// V8Engine: V8 start-up, the compile thread and the compiled-module cache.
#include <fmt/format.h>

#include <atomic>

#include "core/hash.h"
#include "core/logging.h"
#include "wasm/v8/v8_internal.h"

namespace tern::wasm {
namespace internal {
namespace {

// V8 is initialized once per process and never torn down (V8 cannot be re-initialized).
// The platform is deliberately leaked: its threads may outlive static destructors.
v8::Platform* InitV8Once(const std::string& flags) {
  static v8::Platform* const platform = [&flags] {
    if (!flags.empty()) v8::V8::SetFlagsFromString(flags.c_str(), flags.size());
    // Guard-page bounds checks: must be enabled before V8::Initialize.
    if (!v8::V8::EnableWebAssemblyTrapHandler(/*use_v8_signal_handler=*/true)) {
      TERN_LOG(WARN) << "V8 wasm trap handler unavailable; using explicit bounds checks";
    }
    v8::Platform* p = v8::platform::NewDefaultPlatform().release();
    v8::V8::InitializePlatform(p);
    v8::V8::Initialize();
    return p;
  }();
  return platform;
}

std::atomic<bool> g_engine_alive{false};

}  // namespace

V8Module::V8Module(const V8Engine* engine, std::string hash, ModuleInfo info, uint32_t cap,
                   v8::CompiledWasmModule compiled)
    : engine_(engine),
      hash_(std::move(hash)),
      info_(std::move(info)),
      snapshotable_(CheckSnapshotable(info_)),
      cap_(cap),
      compiled_(std::move(compiled)) {
  for (size_t i = 0; i < info_.globals.size(); ++i) {
    const GlobalDesc& g = info_.globals[i];
    if (g.is_mutable && IsSnapshotableType(g.type)) {
      mutable_globals_.push_back(GlobalValue{static_cast<uint32_t>(i), g.type, 0});
    }
  }
  const ExportDesc* sp = info_.FindExport("__stack_pointer");
  if (sp != nullptr && sp->kind == ExternKind::kGlobal && sp->index < info_.globals.size() &&
      info_.globals[sp->index].is_mutable && info_.globals[sp->index].type == ValType::kI32) {
    stack_pointer_global_ = sp->index;
  }
}

std::string ExceptionText(v8::Isolate* isolate, v8::Local<v8::Context> context,
                          v8::Local<v8::Value> exception) {
  if (exception.IsEmpty()) return "unknown exception";
  v8::TryCatch inner(isolate);
  v8::Local<v8::String> s;
  if (!exception->ToString(context).ToLocal(&s)) return "exception (not printable)";
  v8::String::Utf8Value utf8(isolate, s);
  return *utf8 ? std::string(*utf8, utf8.length()) : std::string("exception");
}

V8Engine::V8Engine(const EngineOptions& options, v8::Platform* platform)
    : options_(options), platform_(platform), watchdog_(options.watchdog_period_us) {
  compiler_ = std::thread([this] { CompileLoop(); });
}

V8Engine::~V8Engine() {
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  compiler_.join();
  {
    MutexLock l(&mu_);
    cache_.clear();
  }
  g_engine_alive.store(false);
}

Result<std::unique_ptr<Engine>> V8Engine::Create(const EngineOptions& options) {
  bool expected = false;
  if (!g_engine_alive.compare_exchange_strong(expected, true)) {
    return FailedPreconditionError("a V8 engine already exists in this process (at most one)");
  }
  v8::Platform* platform = InitV8Once(options.engine_flags);
  return std::unique_ptr<Engine>(new V8Engine(options, platform));
}

// The compile thread owns one isolate used only to compile; compiled code is then
// shared with the workers' isolates as a CompiledWasmModule.
void V8Engine::CompileLoop() {
  std::unique_ptr<v8::ArrayBuffer::Allocator> allocator(
      v8::ArrayBuffer::Allocator::NewDefaultAllocator());
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator = allocator.get();
  v8::Isolate* isolate = v8::Isolate::New(params);
  {
    v8::Isolate::Scope isolate_scope(isolate);
    v8::HandleScope outer(isolate);
    v8::Local<v8::Context> context = v8::Context::New(isolate);
    v8::Context::Scope context_scope(context);
    for (;;) {
      CompileJob* job = nullptr;
      {
        MutexLock l(&mu_);
        while (queue_.empty() && !stop_) cv_.Wait(&mu_);
        if (stop_) break;
        job = queue_.front();
        queue_.erase(queue_.begin());
      }
      {
        v8::HandleScope scope(isolate);
        v8::TryCatch tc(isolate);
        v8::Local<v8::WasmModuleObject> module;
        auto span = v8::MemorySpan<const uint8_t>(
            reinterpret_cast<const uint8_t*>(job->bytes.data()), job->bytes.size());
        if (v8::WasmModuleObject::Compile(isolate, span).ToLocal(&module)) {
          job->compiled.emplace(module->GetCompiledModule());
        } else {
          job->error = tc.HasCaught() ? ExceptionText(isolate, context, tc.Exception())
                                      : std::string("compilation failed");
        }
      }
      while (v8::platform::PumpMessageLoop(platform_, isolate)) {
      }
      {
        MutexLock l(&mu_);
        job->done = true;
      }
      cv_.SignalAll();
    }
  }
  isolate->Dispose();
}

Result<std::shared_ptr<const Module>> V8Engine::Compile(std::string_view wasm_bytes,
                                                        uint32_t max_memory_pages) {
  std::string hash = Sha256Hex(wasm_bytes);
  std::string key = fmt::format("{}/{}", hash, max_memory_pages);
  {
    MutexLock l(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return std::shared_ptr<const Module>(it->second);
  }
  // Structure and import checks first: they give clearer messages than V8.
  TERN_ASSIGN_OR_RETURN(ModuleInfo info, ParseModuleInfo(wasm_bytes));
  TERN_RETURN_IF_ERROR(CheckImports(info));
  TERN_ASSIGN_OR_RETURN(std::string capped, CapMemory(wasm_bytes, max_memory_pages));
  // Every mutable global becomes reachable by name, so snapshots can carry it.
  TERN_ASSIGN_OR_RETURN(capped, ExportMutableGlobals(capped));
  TERN_ASSIGN_OR_RETURN(ModuleInfo capped_info, ParseModuleInfo(capped));

  CompileJob job;
  job.bytes = capped;
  {
    MutexLock l(&mu_);
    queue_.push_back(&job);
  }
  cv_.SignalAll();
  {
    MutexLock l(&mu_);
    while (!job.done) cv_.Wait(&mu_);
  }
  if (!job.compiled) {
    return InvalidArgumentError("wasm module does not compile: " + job.error);
  }
  auto module = std::make_shared<const V8Module>(this, std::move(hash), std::move(capped_info),
                                                 max_memory_pages, std::move(*job.compiled));
  MutexLock l(&mu_);
  // Another thread may have compiled the same bytes meanwhile: keep the first.
  auto [it, inserted] = cache_.emplace(key, module);
  return std::shared_ptr<const Module>(it->second);
}

Result<std::unique_ptr<Worker>> V8Engine::NewWorker() {
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<V8Worker> w, V8Worker::Create(this));
  return std::unique_ptr<Worker>(std::move(w));
}

size_t V8Engine::CachedModuleCount() const {
  MutexLock l(&mu_);
  return cache_.size();
}

}  // namespace internal

Result<std::unique_ptr<Engine>> NewV8Engine(const EngineOptions& options) {
  return internal::V8Engine::Create(options);
}

}  // namespace tern::wasm
