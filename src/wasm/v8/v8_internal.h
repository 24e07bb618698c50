// Private to the V8 backend (src/wasm/v8/*.cc): the classes behind NewV8Engine.
//
//   V8Engine    process-wide: V8 start-up, a compile thread with its own isolate, the
//               compiled-module cache (v8::CompiledWasmModule, shared by all isolates)
//               and the CPU-time Watchdog.
//   V8Module    one compiled module (+ its capped ModuleInfo); immutable.
//   V8Worker    one isolate + context, bound to the thread that created it; caches a
//               WasmModuleObject per module and one imports object holding every host
//               function, so instantiation is a single `new WebAssembly.Instance`.
//   V8Instance  one WebAssembly.Instance; handler functions are cached on first use.
//
// Host functions (v8_host.cc) reach the running call through the worker's CallState.
// Thread-safety: see engine.h; everything here except V8Engine is single-threaded.
#pragma once

#include <libplatform/libplatform.h>
#include <v8.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/mutex.h"
#include "wasm/engine.h"
#include "wasm/v8/watchdog.h"

namespace tern::wasm::internal {

class V8Engine;
class V8Instance;

class V8Module final : public Module {
 public:
  V8Module(const V8Engine* engine, std::string hash, ModuleInfo info, uint32_t cap,
           v8::CompiledWasmModule compiled);

  const std::string& hash() const override { return hash_; }
  // The info of the module as compiled (memory maximum already capped).
  const ModuleInfo& info() const override { return info_; }
  uint32_t max_memory_pages() const override { return cap_; }

  const V8Engine* engine() const { return engine_; }
  const v8::CompiledWasmModule& compiled() const { return compiled_; }
  // The memory maximum the compiled module declares: min(declared max, cap).
  uint32_t memory_limit_pages() const { return info_.memory_max_pages.value_or(cap_); }
  // The mutable globals a snapshot carries (snapshotable types), in index order, each
  // exported as GlobalExportName(index); `value` of each entry is unused.
  const std::vector<GlobalValue>& mutable_globals() const { return mutable_globals_; }
  // Why this module's state cannot be snapshotted (CheckSnapshotable); OK if it can.
  const Status& snapshotable() const { return snapshotable_; }
  // The global exported as `__stack_pointer`, if a mutable i32 one is.
  std::optional<uint32_t> stack_pointer_global() const { return stack_pointer_global_; }

 private:
  const V8Engine* const engine_;
  const std::string hash_;
  const ModuleInfo info_;
  std::vector<GlobalValue> mutable_globals_;
  Status snapshotable_;
  std::optional<uint32_t> stack_pointer_global_;
  const uint32_t cap_;
  const v8::CompiledWasmModule compiled_;
};

// What the host functions see during one call.
struct CallState {
  V8Instance* instance = nullptr;  // null between calls
  HostCalls* host = nullptr;
  uint64_t max_reply_bytes = 0;
  bool failed = false;  // tern_fail was called
  StatusCode fail_code = StatusCode::kOk;
  std::string fail_message;
  bool exited = false;  // proc_exit was called
  int32_t exit_code = 0;
  // tern_reply_in_place: the guest range holding the reply, read when the handler
  // returns (HostCalls::SetReplyInPlace). Cleared by a later tern_reply (the last wins).
  bool reply_in_place = false;
  uint32_t reply_ptr = 0;
  uint32_t reply_len = 0;
  // The guest memory as the call began (V8Worker::Invoke looks it up once, in the
  // call's handle scope, which outlives the host calls): each lookup is a handle, an
  // address and a size (~30 ns), and a small request made three. Valid while `mem_buf`
  // is not detached: growing a wasm memory detaches its old ArrayBuffer (the
  // WebAssembly JS API requires it), and only then can V8 have moved the bytes.
  v8::Local<v8::ArrayBuffer> mem_buf;
  uint8_t* mem_base = nullptr;
  uint64_t mem_size = 0;
};

class V8Worker final : public Worker {
 public:
  static Result<std::unique_ptr<V8Worker>> Create(V8Engine* engine);
  ~V8Worker() override;
  V8Worker(const V8Worker&) = delete;
  V8Worker& operator=(const V8Worker&) = delete;

  Result<std::unique_ptr<Instance>> Instantiate(std::shared_ptr<const Module> module,
                                                const InstanceLimits& limits,
                                                bool run_initialize) override;

  v8::Isolate* isolate() const { return isolate_; }
  v8::Local<v8::Context> context() const { return context_.Get(isolate_); }
  CallState& call() { return call_; }
  bool OnWorkerThread() const { return std::this_thread::get_id() == thread_; }
  // The isolate and its context stay entered on the worker's thread (the first worker
  // there; see Init): a call need not enter them.
  bool stays_entered() const { return entered_; }

  // Runs `fn` (an export of `inst`) under the CPU-time limit and turns the outcome into
  // a Status (engine.h). Needs an entered isolate, HandleScope and context (`ctx`).
  Status Invoke(V8Instance* inst, v8::Local<v8::Context> ctx, v8::Local<v8::Function> fn,
                std::string_view name, HostCalls* host);

  // Throws a WebAssembly.RuntimeError with `message` from inside a host function.
  void ThrowTrap(std::string_view message);

  // Interned strings used on hot paths.
  v8::Local<v8::String> value_string() const { return value_str_.Get(isolate_); }
  v8::Local<v8::String> grow_string() const { return grow_str_.Get(isolate_); }

  void InstanceDestroyed() { --live_instances_; }

 private:
  explicit V8Worker(V8Engine* engine);
  Status Init();
  // Runs the foreground tasks V8 posted to this isolate.
  void PumpMessageLoop();
  Result<v8::Local<v8::WasmModuleObject>> ModuleObject(const std::shared_ptr<const V8Module>& m);

  V8Engine* const engine_;
  const std::thread::id thread_;
  std::unique_ptr<v8::ArrayBuffer::Allocator> allocator_;
  v8::Isolate* isolate_ = nullptr;
  v8::Global<v8::Context> context_;
  v8::Global<v8::Function> instance_ctor_;
  v8::Global<v8::Function> runtime_error_ctor_;
  v8::Global<v8::Object> imports_;
  v8::Global<v8::String> exports_str_, memory_str_, sp_str_, value_str_, grow_str_;
  struct ModuleEntry {
    std::shared_ptr<const V8Module> module;  // keeps the key alive
    v8::Global<v8::WasmModuleObject> object;
  };
  std::unordered_map<const Module*, ModuleEntry> modules_;
  std::unique_ptr<Watchdog::Slot> slot_;
  CallState call_;
  int live_instances_ = 0;
  bool entered_ = false;  // isolate_ stays entered on thread_ (see Init)
  // With entered_: a handle scope open for the worker's life, under every call's own.
  // Handles are only ever made in those (V8 aborts on a handle outside any scope), so
  // it stays empty; it keeps the handle block allocated between calls — without it
  // each call's scope allocated a block at its first handle and freed it at its end.
  std::optional<v8::HandleScope> base_scope_;
  uint64_t instantiations_ = 0;
  uint64_t calls_ = 0;
};

class V8Instance final : public Instance {
 public:
  V8Instance(V8Worker* worker, std::shared_ptr<const V8Module> module, const InstanceLimits& limits,
             v8::Local<v8::Object> instance, v8::Local<v8::Object> exports,
             v8::Local<v8::WasmMemoryObject> memory, v8::Local<v8::Object> stack_pointer,
             std::vector<v8::Local<v8::Object>> globals);
  ~V8Instance() override;
  V8Instance(const V8Instance&) = delete;
  V8Instance& operator=(const V8Instance&) = delete;

  const Module& module() const override { return *module_; }
  Status Call(std::string_view handler, HostCalls* host) override;
  uint8_t* memory_data() override;
  uint64_t memory_bytes() override;
  Result<Snapshot> TakeSnapshot() override;
  Status SnapshotInto(Snapshot* out) override;
  Status Restore(const Snapshot& snap) override;
  Status SnapshotGlobals(Snapshot* out) override;
  Status RestoreGlobals(const Snapshot& snap) override;
  Status GrowMemory(uint64_t bytes) override;

  // The current linear memory. Needs an entered isolate and a HandleScope.
  v8::Local<v8::ArrayBuffer> Buffer();
  const InstanceLimits& limits() const { return limits_; }
  const V8Module& v8_module() const { return *module_; }
  // True when the memory is within a 1 MiB allocation (or 1/16 of the cap) of its cap:
  // a trap then most likely comes from an allocation that failed.
  bool NearMemoryCap();
  // Runs a handler; `host` may be null (an internal host that only logs is used).
  Status CallInternal(std::string_view handler, HostCalls* host);
  // Marks the instance unusable (trap, termination, stack overflow, memory cap: its
  // memory may be half-updated) until a Restore(); returns `why`.
  Status Break(Status why);

 private:
  Result<v8::Local<v8::Function>> Handler(std::string_view name);
  std::optional<uint32_t> ReadStackPointer();
  // SnapshotGlobals/RestoreGlobals inside an entered isolate, HandleScope and context.
  Status ReadGlobals(Snapshot* out);
  Status WriteGlobals(const Snapshot& snap);
  // Grows the memory to `want` bytes (a multiple of 64 KiB, >= the current size) with
  // the memory object's grow(); needs an entered isolate, a HandleScope and the context.
  Status GrowTo(uint64_t want, const char* what);

  V8Worker* const worker_;
  const std::shared_ptr<const V8Module> module_;
  const InstanceLimits limits_;
  v8::Global<v8::Object> instance_;
  v8::Global<v8::Object> exports_;
  v8::Global<v8::WasmMemoryObject> memory_;
  v8::Global<v8::Object> stack_pointer_;  // WebAssembly.Global, or empty
  // WebAssembly.Global objects of module_->mutable_globals(), in the same order.
  std::vector<v8::Global<v8::Object>> globals_;
  struct HandlerEntry {
    std::string name;
    v8::Global<v8::Function> fn;
  };
  std::vector<HandlerEntry> handlers_;
  std::string broken_;  // why the instance is unusable; empty when it is fine
};

class V8Engine final : public Engine {
 public:
  static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  ~V8Engine() override;
  V8Engine(const V8Engine&) = delete;
  V8Engine& operator=(const V8Engine&) = delete;

  Result<std::shared_ptr<const Module>> Compile(std::string_view wasm_bytes,
                                                uint32_t max_memory_pages) override;
  Result<std::unique_ptr<Worker>> NewWorker() override;
  size_t CachedModuleCount() const override;

  v8::Platform* platform() const { return platform_; }
  Watchdog& watchdog() { return watchdog_; }

 private:
  struct CompileJob {
    std::string_view bytes;
    bool done = false;
    std::optional<v8::CompiledWasmModule> compiled;
    std::string error;
  };

  V8Engine(const EngineOptions& options, v8::Platform* platform);
  void CompileLoop();

  const EngineOptions options_;
  v8::Platform* const platform_;
  Watchdog watchdog_;

  mutable Mutex mu_;
  CondVar cv_;
  std::unordered_map</* sha256 hex + "/" + cap */ std::string, std::shared_ptr<const V8Module>>
      cache_ GUARDED_BY(mu_);
  std::vector<CompileJob*> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread compiler_;
};

// Adds the tern_v1 and wasi_snapshot_preview1 functions (imports.tern_v1.*, ...) to
// `imports`; each reaches `worker` through its data. (v8_host.cc)
Status AddHostImports(v8::Local<v8::Context> context, v8::Local<v8::Object> imports,
                      V8Worker* worker);

// "RangeError: ..." text of an exception, never throwing. Not for terminations.
std::string ExceptionText(v8::Isolate* isolate, v8::Local<v8::Context> context,
                          v8::Local<v8::Value> exception);

}  // namespace tern::wasm::internal
