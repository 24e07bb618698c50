// V8Worker and V8Instance: instantiation, calls, snapshots.
#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/logging.h"
#include "wasm/v8/v8_internal.h"

namespace tern::wasm::internal {
namespace {

v8::Local<v8::String> Str(v8::Isolate* isolate, std::string_view s) {
  return v8::String::NewFromUtf8(isolate, s.data(), v8::NewStringType::kInternalized,
                                 static_cast<int>(s.size()))
      .ToLocalChecked();
}

// The host for calls that have no request (running `_initialize`): logs go to our log.
class NullHost final : public HostCalls {
 public:
  std::string_view Request() override { return {}; }
  void SetReply(std::string_view) override {}
  void SetFailure(StatusCode, std::string_view) override {}
  void Log(int32_t level, std::string_view line) override {
    TERN_LOG(INFO) << "guest (initialize, level " << level << "): " << line;
  }
};

constexpr uint32_t kPagesPerMiB = 16;

}  // namespace

// ---------------------------------------------------------------- V8Worker

V8Worker::V8Worker(V8Engine* engine) : engine_(engine), thread_(std::this_thread::get_id()) {}

Result<std::unique_ptr<V8Worker>> V8Worker::Create(V8Engine* engine) {
  std::unique_ptr<V8Worker> w(new V8Worker(engine));
  TERN_RETURN_IF_ERROR(w->Init());
  return w;
}

Status V8Worker::Init() {
  allocator_.reset(v8::ArrayBuffer::Allocator::NewDefaultAllocator());
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator = allocator_.get();
  isolate_ = v8::Isolate::New(params);
  if (isolate_ == nullptr) return ResourceExhaustedError("cannot create a V8 isolate");
  slot_ = engine_->watchdog().Register([iso = isolate_] { iso->TerminateExecution(); });
  // Microtasks (promise jobs) run when the worker says so (PumpMessageLoop), not at the
  // end of every guest call: guests make none (wasm creates no promises, and no host
  // function returns one), and the automatic checkpoint after each top-level call
  // (with the kept-objects sweep around it) was ~20 ns of a ~1 µs round trip.
  isolate_->SetMicrotasksPolicy(v8::MicrotasksPolicy::kExplicit);
  // Stay entered for the worker's life, so the Isolate::Scope of each call is a counter
  // increment (entering an isolate that is not current allocates). Only the first
  // worker on a thread does this, so destruction in any order stays well nested.
  if (v8::Isolate::GetCurrent() == nullptr) {
    isolate_->Enter();
    entered_ = true;
    base_scope_.emplace(isolate_);
  }

  v8::Isolate::Scope isolate_scope(isolate_);
  v8::HandleScope scope(isolate_);
  v8::Local<v8::Context> ctx = v8::Context::New(isolate_);
  if (ctx.IsEmpty()) return ResourceExhaustedError("cannot create a V8 context");
  context_.Reset(isolate_, ctx);
  // With the isolate, its one context stays entered too (exited in ~V8Worker): a guest
  // call then enters neither (CallInternal), ~50 ns of V8's bookkeeping per call.
  if (entered_) ctx->Enter();
  v8::Context::Scope context_scope(ctx);

  v8::Local<v8::Value> wa, ctor, rterr;
  if (!ctx->Global()->Get(ctx, Str(isolate_, "WebAssembly")).ToLocal(&wa) || !wa->IsObject() ||
      !wa.As<v8::Object>()->Get(ctx, Str(isolate_, "Instance")).ToLocal(&ctor) ||
      !ctor->IsFunction() ||
      !wa.As<v8::Object>()->Get(ctx, Str(isolate_, "RuntimeError")).ToLocal(&rterr) ||
      !rterr->IsFunction()) {
    return InternalError("V8 context has no WebAssembly object");
  }
  instance_ctor_.Reset(isolate_, ctor.As<v8::Function>());
  runtime_error_ctor_.Reset(isolate_, rterr.As<v8::Function>());
  exports_str_.Reset(isolate_, Str(isolate_, "exports"));
  memory_str_.Reset(isolate_, Str(isolate_, "memory"));
  sp_str_.Reset(isolate_, Str(isolate_, "__stack_pointer"));
  value_str_.Reset(isolate_, Str(isolate_, "value"));
  grow_str_.Reset(isolate_, Str(isolate_, "grow"));

  v8::Local<v8::Object> imports = v8::Object::New(isolate_);
  TERN_RETURN_IF_ERROR(AddHostImports(ctx, imports, this));
  imports_.Reset(isolate_, imports);
  return Status::Ok();
}

V8Worker::~V8Worker() {
  CHECK(std::this_thread::get_id() == thread_) << "a Worker must be destroyed on its thread";
  CHECK(live_instances_ == 0) << live_instances_ << " instances outlive their Worker";
  slot_.reset();  // before the isolate goes: the watchdog may hold its pointer
  if (isolate_ == nullptr) return;
  {
    v8::Isolate::Scope isolate_scope(isolate_);
    if (entered_ && !context_.IsEmpty()) {
      v8::HandleScope scope(isolate_);
      context_.Get(isolate_)->Exit();
    }
    modules_.clear();
    imports_.Reset();
    instance_ctor_.Reset();
    runtime_error_ctor_.Reset();
    exports_str_.Reset();
    memory_str_.Reset();
    sp_str_.Reset();
    value_str_.Reset();
    grow_str_.Reset();
    context_.Reset();
  }
  if (entered_) {
    CHECK(v8::Isolate::GetCurrent() == isolate_) << "isolates entered out of order";
    base_scope_.reset();
    isolate_->Exit();
  }
  isolate_->Dispose();
}

Result<v8::Local<v8::WasmModuleObject>> V8Worker::ModuleObject(
    const std::shared_ptr<const V8Module>& m) {
  auto it = modules_.find(m.get());
  if (it != modules_.end()) return it->second.object.Get(isolate_);
  v8::Local<v8::WasmModuleObject> obj;
  if (!v8::WasmModuleObject::FromCompiledModule(isolate_, m->compiled()).ToLocal(&obj)) {
    return InternalError("V8 could not re-create a compiled module in this isolate");
  }
  ModuleEntry& e = modules_[m.get()];
  e.module = m;
  e.object.Reset(isolate_, obj);
  return obj;
}

Result<std::unique_ptr<Instance>> V8Worker::Instantiate(std::shared_ptr<const Module> module,
                                                        const InstanceLimits& limits,
                                                        bool run_initialize) {
  DCHECK(OnWorkerThread()) << "Instantiate on another thread than the Worker's";
  auto m = std::dynamic_pointer_cast<const V8Module>(module);
  if (m == nullptr || m->engine() != engine_) {
    return InvalidArgumentError("module was not compiled by this worker's engine");
  }
  if (limits.max_memory_pages < m->max_memory_pages()) {
    return InvalidArgumentError(fmt::format(
        "instance memory limit ({} pages) is below the cap the module was compiled with ({} "
        "pages): compile it with the smaller cap",
        limits.max_memory_pages, m->max_memory_pages()));
  }
  v8::Isolate::Scope isolate_scope(isolate_);
  v8::HandleScope scope(isolate_);
  v8::Local<v8::Context> ctx = context();
  v8::Context::Scope context_scope(ctx);

  if ((++instantiations_ & 15) == 0) PumpMessageLoop();

  TERN_ASSIGN_OR_RETURN(v8::Local<v8::WasmModuleObject> module_obj, ModuleObject(m));
  v8::TryCatch tc(isolate_);
  v8::Local<v8::Value> argv[2] = {module_obj, imports_.Get(isolate_)};
  v8::Local<v8::Object> instance;
  if (!instance_ctor_.Get(isolate_)->NewInstance(ctx, 2, argv).ToLocal(&instance)) {
    if (tc.HasTerminated()) {
      isolate_->CancelTerminateExecution();
      return AbortedError("instantiation was terminated");
    }
    std::string text = ExceptionText(isolate_, ctx, tc.Exception());
    if (text.find("Out of memory") != std::string::npos) {
      return ResourceExhaustedError("cannot instantiate: " + text);
    }
    return InvalidArgumentError("cannot instantiate: " + text);
  }
  v8::Local<v8::Value> exports_v, memory_v, sp_v;
  if (!instance->Get(ctx, exports_str_.Get(isolate_)).ToLocal(&exports_v) ||
      !exports_v->IsObject()) {
    return InternalError("instance has no exports object");
  }
  v8::Local<v8::Object> exports = exports_v.As<v8::Object>();
  if (!exports->Get(ctx, memory_str_.Get(isolate_)).ToLocal(&memory_v) ||
      !memory_v->IsWasmMemoryObject()) {
    return InvalidArgumentError("module does not export its memory as `memory`");
  }
  v8::Local<v8::Object> sp;
  if (exports->Get(ctx, sp_str_.Get(isolate_)).ToLocal(&sp_v) && sp_v->IsObject()) {
    sp = sp_v.As<v8::Object>();
  }
  // The mutable globals, exported under reserved names by ExportMutableGlobals.
  std::vector<v8::Local<v8::Object>> globals;
  globals.reserve(m->mutable_globals().size());
  for (const GlobalValue& g : m->mutable_globals()) {
    v8::Local<v8::Value> v;
    if (!exports->Get(ctx, Str(isolate_, GlobalExportName(g.index))).ToLocal(&v) ||
        !v->IsObject()) {
      return InternalError(fmt::format("mutable global {} is not exported as {}", g.index,
                                       GlobalExportName(g.index)));
    }
    globals.push_back(v.As<v8::Object>());
  }
  auto inst = std::make_unique<V8Instance>(this, std::move(m), limits, instance, exports,
                                           memory_v.As<v8::WasmMemoryObject>(), sp,
                                           std::move(globals));
  ++live_instances_;
  if (run_initialize) {
    const ExportDesc* init = inst->module().info().FindExport("_initialize");
    if (init != nullptr && init->kind == ExternKind::kFunction) {
      Status st = inst->CallInternal("_initialize", nullptr);
      if (!st.ok()) return st.WithPrefix("_initialize");
    }
  }
  return std::unique_ptr<Instance>(std::move(inst));
}

void V8Worker::PumpMessageLoop() {
  while (v8::platform::PumpMessageLoop(engine_->platform(), isolate_)) {
  }
  isolate_->PerformMicrotaskCheckpoint();
}

void V8Worker::ThrowTrap(std::string_view message) {
  v8::Local<v8::Context> ctx = context();
  v8::Local<v8::Value> arg =
      v8::String::NewFromUtf8(isolate_, message.data(), v8::NewStringType::kNormal,
                              static_cast<int>(message.size()))
          .ToLocalChecked();
  v8::Local<v8::Object> err;
  if (runtime_error_ctor_.Get(isolate_)->NewInstance(ctx, 1, &arg).ToLocal(&err)) {
    isolate_->ThrowException(err);
  } else {
    isolate_->ThrowException(v8::Exception::Error(arg.As<v8::String>()));
  }
}

Status V8Worker::Invoke(V8Instance* inst, v8::Local<v8::Context> ctx, v8::Local<v8::Function> fn,
                        std::string_view name, HostCalls* host) {
  NullHost null_host;
  // A guest waiting in tern_call_wait may run other guests on this thread (in-process
  // calls): the outer call's state is saved here and put back on every return path.
  // A nested call runs under the outer call's CPU-time limit (the watchdog slot tracks
  // the outermost call only).
  const bool nested = call_.instance != nullptr;
  CallState outer;
  if (nested) outer = std::move(call_);
  struct Restore {
    CallState& cs;
    CallState& outer;
    bool nested;
    ~Restore() {
      if (nested) cs = std::move(outer);
    }
  } restore{call_, outer, nested};
  CallState& cs = call_;
  cs.instance = inst;
  cs.host = host != nullptr ? host : &null_host;
  cs.max_reply_bytes = inst->limits().max_reply_bytes;
  cs.failed = false;
  cs.exited = false;
  cs.reply_in_place = false;
  cs.mem_buf = inst->Buffer();  // in the caller's handle scope: valid for the whole call
  cs.mem_base = static_cast<uint8_t*>(cs.mem_buf->Data());
  cs.mem_size = cs.mem_buf->ByteLength();

  // Run tasks V8 posted to this isolate (GC finalization etc.) now and then.
  if (!nested && (++calls_ & 4095) == 0) PumpMessageLoop();

  v8::TryCatch tc(isolate_);
  if (!nested) slot_->Begin(static_cast<int64_t>(inst->limits().cpu_ms) * 1'000'000);
  v8::MaybeLocal<v8::Value> result = fn->Call(ctx, v8::Undefined(isolate_), 0, nullptr);
  const bool watchdog_fired = nested ? false : slot_->End();
  cs.instance = nullptr;
  const v8::Local<v8::ArrayBuffer> mem_buf = cs.mem_buf;
  cs.mem_buf = {};  // its handle scope ends with the caller's
  HostCalls* const call_host = cs.host;
  cs.host = nullptr;

  // A termination must be checked before anything touches the exception.
  if (tc.HasTerminated() || (result.IsEmpty() && isolate_->IsExecutionTerminating())) {
    if (nested) {
      // The outermost call ran out of CPU time while this nested one ran: terminate
      // again, so that the outer guest is stopped as soon as control returns to it.
      isolate_->TerminateExecution();
      return inst->Break(DeadlineExceededError(fmt::format(
          "handler '{}' was stopped: the calling request exceeded its CPU-time limit", name)));
    }
    isolate_->CancelTerminateExecution();
    return inst->Break(DeadlineExceededError(fmt::format(
        "handler '{}' exceeded its CPU-time limit of {} ms", name, inst->limits().cpu_ms)));
  }
  // The call finished just as the watchdog fired: drop the undelivered termination.
  if (watchdog_fired) isolate_->CancelTerminateExecution();

  if (result.IsEmpty()) {
    if (cs.exited) {
      return inst->Break(
          InternalError(fmt::format("handler '{}' called proc_exit({})", name, cs.exit_code)));
    }
    v8::Local<v8::Value> exc = tc.Exception();
    if (exc.IsEmpty()) {
      return inst->Break(
          InternalError(fmt::format("handler '{}' failed without an exception", name)));
    }
    std::string text = ExceptionText(isolate_, ctx, exc);
    if (exc->IsNativeError() &&
        text.find("Maximum call stack size exceeded") != std::string::npos) {
      return inst->Break(ResourceExhaustedError(
          fmt::format("handler '{}' overflowed the wasm stack ({})", name, text)));
    }
    if (inst->NearMemoryCap()) {
      return inst->Break(ResourceExhaustedError(
          fmt::format("handler '{}': memory cap of {} MiB reached ({})", name,
                      inst->v8_module().memory_limit_pages() / double{kPagesPerMiB}, text)));
    }
    return inst->Break(InternalError(fmt::format("handler '{}' trapped: {}", name, text)));
  }
  if (cs.failed) return Status(cs.fail_code, cs.fail_message);
  v8::Local<v8::Value> rv = result.ToLocalChecked();
  int32_t rc = 0;
  if (rv->IsInt32()) {
    rc = rv.As<v8::Int32>()->Value();
  } else if (!rv->IsUndefined()) {
    rc = rv->Int32Value(ctx).FromMaybe(static_cast<int32_t>(StatusCode::kUnknown));
  }
  if (rc == 0) {
    if (cs.reply_in_place) {
      // Read from memory as it is now: the guest may have grown it since tern_reply_in_place
      // (V8 may then have moved the backing store), never shrunk it; checked again anyway.
      // One look at the buffer for both its address and its size (we are inside the
      // call's scopes: no new ones).
      const uint8_t* base = cs.mem_base;
      uint64_t bytes = cs.mem_size;
      if (mem_buf->WasDetached()) {
        v8::Local<v8::ArrayBuffer> buf = inst->Buffer();
        base = static_cast<const uint8_t*>(buf->Data());
        bytes = buf->ByteLength();
      }
      const uint64_t end = uint64_t{cs.reply_ptr} + cs.reply_len;
      if (end > bytes) {
        return inst->Break(InternalError(fmt::format(
            "handler '{}': its in-place reply [{:#x}, +{}) is outside linear memory ({} bytes)",
            name, cs.reply_ptr, cs.reply_len, bytes)));
      }
      call_host->SetReplyInPlace(
          std::string_view(reinterpret_cast<const char*>(base) + cs.reply_ptr, cs.reply_len));
    }
    return Status::Ok();
  }
  StatusCode code = StatusCodeFromInt(rc);
  if (code == StatusCode::kOk) code = StatusCode::kUnknown;
  std::string msg = fmt::format("handler '{}' returned {} ({})", name, rc, StatusCodeName(code));
  call_host->SetFailure(code, msg);
  return Status(code, msg);
}

// ---------------------------------------------------------------- V8Instance

V8Instance::V8Instance(V8Worker* worker, std::shared_ptr<const V8Module> module,
                       const InstanceLimits& limits, v8::Local<v8::Object> instance,
                       v8::Local<v8::Object> exports, v8::Local<v8::WasmMemoryObject> memory,
                       v8::Local<v8::Object> stack_pointer,
                       std::vector<v8::Local<v8::Object>> globals)
    : worker_(worker), module_(std::move(module)), limits_(limits) {
  v8::Isolate* iso = worker_->isolate();
  instance_.Reset(iso, instance);
  exports_.Reset(iso, exports);
  memory_.Reset(iso, memory);
  if (!stack_pointer.IsEmpty()) stack_pointer_.Reset(iso, stack_pointer);
  globals_.reserve(globals.size());
  for (v8::Local<v8::Object> g : globals) globals_.emplace_back(iso, g);
}

V8Instance::~V8Instance() {
  handlers_.clear();
  globals_.clear();
  stack_pointer_.Reset();
  memory_.Reset();
  exports_.Reset();
  instance_.Reset();
  worker_->InstanceDestroyed();
}

Result<v8::Local<v8::Function>> V8Instance::Handler(std::string_view name) {
  v8::Isolate* iso = worker_->isolate();
  for (const HandlerEntry& h : handlers_) {
    if (h.name == name) return h.fn.Get(iso);
  }
  const ExportDesc* e = module_->info().FindExport(name);
  if (e == nullptr || e->kind != ExternKind::kFunction) {
    std::string names;
    for (const ExportDesc& x : module_->info().exports) {
      if (x.kind != ExternKind::kFunction) continue;
      if (!names.empty()) names += ", ";
      names += x.name;
    }
    return NotFoundError(
        fmt::format("module exports no handler '{}' (its functions: {})", name, names));
  }
  v8::Local<v8::Context> ctx = worker_->context();
  v8::Local<v8::Value> v;
  if (!exports_.Get(iso)->Get(ctx, Str(iso, name)).ToLocal(&v) || !v->IsFunction()) {
    return NotFoundError(fmt::format("export '{}' is not a function", name));
  }
  handlers_.push_back(
      HandlerEntry{std::string(name), v8::Global<v8::Function>(iso, v.As<v8::Function>())});
  return v.As<v8::Function>();
}

Status V8Instance::Call(std::string_view handler, HostCalls* host) {
  return CallInternal(handler, host);
}

Status V8Instance::Break(Status why) {
  broken_ = std::string(why.message());
  return why;
}

Status V8Instance::CallInternal(std::string_view handler, HostCalls* host) {
  DCHECK(worker_->OnWorkerThread()) << "an Instance is used only on its Worker's thread";
  if (!broken_.empty()) {
    return FailedPreconditionError(fmt::format(
        "instance is unusable after an earlier failure ({}); restore it or discard it", broken_));
  }
  v8::Isolate* iso = worker_->isolate();
  // The isolate and the context are entered for the worker's life (V8Worker::Init). If
  // another isolate was entered on this thread since (nothing in tern does; an embedder
  // might), the call enters ours explicitly below: one thread-local read decides.
  if (worker_->stays_entered() && v8::Isolate::TryGetCurrent() == iso) {
    v8::HandleScope scope(iso);
    v8::Local<v8::Context> ctx = worker_->context();
    TERN_ASSIGN_OR_RETURN(v8::Local<v8::Function> fn, Handler(handler));
    return worker_->Invoke(this, ctx, fn, handler, host);
  }
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  v8::Local<v8::Context> ctx = worker_->context();
  v8::Context::Scope context_scope(ctx);
  TERN_ASSIGN_OR_RETURN(v8::Local<v8::Function> fn, Handler(handler));
  return worker_->Invoke(this, ctx, fn, handler, host);
}

v8::Local<v8::ArrayBuffer> V8Instance::Buffer() {
  return memory_.Get(worker_->isolate())->Buffer();
}

bool V8Instance::NearMemoryCap() {
  v8::Isolate* iso = worker_->isolate();
  v8::HandleScope scope(iso);
  const uint64_t pages = Buffer()->ByteLength() / kWasmPageBytes;
  const uint64_t cap = module_->memory_limit_pages();
  const uint64_t slack = std::max<uint64_t>(kPagesPerMiB, cap / 16);
  return pages + slack >= cap;
}

uint8_t* V8Instance::memory_data() {
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  return static_cast<uint8_t*>(Buffer()->Data());
}

uint64_t V8Instance::memory_bytes() {
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  return Buffer()->ByteLength();
}

std::optional<uint32_t> V8Instance::ReadStackPointer() {
  if (stack_pointer_.IsEmpty()) return std::nullopt;
  v8::Isolate* iso = worker_->isolate();
  v8::Local<v8::Context> ctx = worker_->context();
  v8::TryCatch tc(iso);
  v8::Local<v8::Value> v;
  if (!stack_pointer_.Get(iso)->Get(ctx, worker_->value_string()).ToLocal(&v) || !v->IsNumber()) {
    return std::nullopt;
  }
  return static_cast<uint32_t>(v->Int32Value(ctx).FromMaybe(0));
}

Status V8Instance::ReadGlobals(Snapshot* out) {
  const std::vector<GlobalValue>& want = module_->mutable_globals();
  out->globals.resize(want.size());
  const std::optional<uint32_t> sp_global = module_->stack_pointer_global();
  // The stack pointer is one of the globals read below when it is a mutable i32 one:
  // not read twice (each read is a call through V8's API, ~0.2 µs here).
  if (!sp_global) out->stack_pointer = ReadStackPointer();
  if (want.empty()) return Status::Ok();
  v8::Isolate* iso = worker_->isolate();
  v8::Local<v8::Context> ctx = worker_->context();
  v8::TryCatch tc(iso);
  for (size_t i = 0; i < want.size(); ++i) {
    GlobalValue& g = out->globals[i];
    g.index = want[i].index;
    g.type = want[i].type;
    v8::Local<v8::Value> v;
    if (!globals_[i].Get(iso)->Get(ctx, worker_->value_string()).ToLocal(&v)) {
      return InternalError(fmt::format("cannot read global {}: {}", g.index,
                                       ExceptionText(iso, ctx, tc.Exception())));
    }
    bool ok = true;
    switch (g.type) {
      case ValType::kI32:
        ok = v->IsInt32();
        if (ok) g.bits = static_cast<uint32_t>(v.As<v8::Int32>()->Value());
        break;
      case ValType::kI64:
        ok = v->IsBigInt();
        if (ok) g.bits = static_cast<uint64_t>(v.As<v8::BigInt>()->Int64Value());
        break;
      case ValType::kF32:
        ok = v->IsNumber();
        // The value left f32 for a double exactly; back to f32 exactly (NaN payloads
        // aside: JavaScript canonicalizes them).
        if (ok) g.bits = std::bit_cast<uint32_t>(static_cast<float>(v.As<v8::Number>()->Value()));
        break;
      case ValType::kF64:
        ok = v->IsNumber();
        if (ok) g.bits = std::bit_cast<uint64_t>(v.As<v8::Number>()->Value());
        break;
      default:
        ok = false;
    }
    if (!ok) {
      return InternalError(
          fmt::format("global {} ({}) read back a value of another type", g.index, ValTypeName(g.type)));
    }
    if (sp_global && g.index == *sp_global) out->stack_pointer = static_cast<uint32_t>(g.bits);
  }
  return Status::Ok();
}

Status V8Instance::SnapshotGlobals(Snapshot* out) {
  if (!module_->snapshotable().ok()) return FailedPreconditionError(module_->snapshotable().message());
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  v8::Context::Scope context_scope(worker_->context());
  return ReadGlobals(out);
}

// Whether `snap`'s globals fit this module (RestoreGlobals in engine.h).
namespace {
Status CheckGlobals(const V8Module& m, const Snapshot& snap) {
  const std::vector<GlobalValue>& want = m.mutable_globals();
  if (snap.globals.empty()) {
    const bool only_sp = want.empty() || (want.size() == 1 && m.stack_pointer_global() &&
                                          want[0].index == *m.stack_pointer_global());
    if (only_sp) return Status::Ok();
    return InvalidArgumentError(fmt::format(
        "the state to restore carries no globals, but the module has {} mutable globals "
        "besides the stack pointer (it comes from a tern that did not carry them: a format-1 "
        "snapshot or a version-2 migration): restoring it would lose state",
        want.size() - (m.stack_pointer_global() ? 1 : 0)));
  }
  if (snap.globals.size() != want.size()) {
    return InvalidArgumentError(fmt::format("snapshot carries {} globals, the module has {} mutable ones",
                                            snap.globals.size(), want.size()));
  }
  for (size_t i = 0; i < want.size(); ++i) {
    if (snap.globals[i].index != want[i].index || snap.globals[i].type != want[i].type) {
      return InvalidArgumentError(fmt::format(
          "snapshot global {} is global {} ({}), the module's is global {} ({})", i,
          snap.globals[i].index, ValTypeName(snap.globals[i].type), want[i].index,
          ValTypeName(want[i].type)));
    }
  }
  return Status::Ok();
}
}  // namespace

Status V8Instance::WriteGlobals(const Snapshot& snap) {
  v8::Isolate* iso = worker_->isolate();
  v8::Local<v8::Context> ctx = worker_->context();
  v8::TryCatch tc(iso);
  for (size_t i = 0; i < snap.globals.size(); ++i) {
    const GlobalValue& g = snap.globals[i];
    v8::Local<v8::Value> v;
    switch (g.type) {
      case ValType::kI32:
        v = v8::Integer::New(iso, static_cast<int32_t>(static_cast<uint32_t>(g.bits)));
        break;
      case ValType::kI64:
        v = v8::BigInt::New(iso, static_cast<int64_t>(g.bits));
        break;
      case ValType::kF32:
        v = v8::Number::New(iso, std::bit_cast<float>(static_cast<uint32_t>(g.bits)));
        break;
      default:  // f64 (CheckGlobals admitted only the module's types)
        v = v8::Number::New(iso, std::bit_cast<double>(g.bits));
        break;
    }
    if (globals_[i].Get(iso)->Set(ctx, worker_->value_string(), v).IsNothing()) {
      return InternalError(fmt::format("cannot set global {}: {}", g.index,
                                       ExceptionText(iso, ctx, tc.Exception())));
    }
  }
  // After the globals (which hold it too): `stack_pointer` is what a snapshot without
  // globals carries, and what a caller that changes only the stack pointer sets.
  if (snap.stack_pointer && !stack_pointer_.IsEmpty()) {
    v8::Local<v8::Value> v = v8::Integer::New(iso, static_cast<int32_t>(*snap.stack_pointer));
    if (stack_pointer_.Get(iso)->Set(ctx, worker_->value_string(), v).IsNothing()) {
      return InternalError("cannot set __stack_pointer: " + ExceptionText(iso, ctx, tc.Exception()));
    }
  }
  return Status::Ok();
}

Status V8Instance::RestoreGlobals(const Snapshot& snap) {
  TERN_RETURN_IF_ERROR(CheckGlobals(*module_, snap));
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  v8::Context::Scope context_scope(worker_->context());
  return WriteGlobals(snap);
}

Result<Snapshot> V8Instance::TakeSnapshot() {
  Snapshot snap;
  TERN_RETURN_IF_ERROR(SnapshotInto(&snap));
  return snap;
}

Status V8Instance::SnapshotInto(Snapshot* out) {
  if (!module_->snapshotable().ok()) return FailedPreconditionError(module_->snapshotable().message());
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  v8::Context::Scope context_scope(worker_->context());
  v8::Local<v8::ArrayBuffer> buf = Buffer();
  if (out->module_hash != module_->hash()) out->module_hash = module_->hash();
  // assign() reuses the buffer when its capacity suffices (no zero-fill, no faults).
  out->memory.assign(static_cast<const char*>(buf->Data()), buf->ByteLength());
  return ReadGlobals(out);
}

Status V8Instance::GrowTo(uint64_t want, const char* what) {
  v8::Isolate* iso = worker_->isolate();
  v8::Local<v8::Context> ctx = worker_->context();
  const uint64_t have = Buffer()->ByteLength();
  if (want < have) {
    return FailedPreconditionError(fmt::format(
        "{} has {} pages but the instance already has {} (a wasm memory cannot shrink): "
        "restore into a fresh instance",
        what, want / kWasmPageBytes, have / kWasmPageBytes));
  }
  if (want > have) {
    const uint64_t delta = (want - have) / kWasmPageBytes;
    if (want / kWasmPageBytes > module_->memory_limit_pages()) {
      return ResourceExhaustedError(fmt::format("{} has {} pages, above the memory cap of {} pages",
                                                what, want / kWasmPageBytes,
                                                module_->memory_limit_pages()));
    }
    v8::TryCatch tc(iso);
    v8::Local<v8::WasmMemoryObject> mem = memory_.Get(iso);
    v8::Local<v8::Value> grow;
    v8::Local<v8::Value> arg = v8::Integer::NewFromUnsigned(iso, static_cast<uint32_t>(delta));
    if (!mem->Get(ctx, worker_->grow_string()).ToLocal(&grow) || !grow->IsFunction() ||
        grow.As<v8::Function>()->Call(ctx, mem, 1, &arg).IsEmpty()) {
      if (tc.HasTerminated()) {
        iso->CancelTerminateExecution();
        return AbortedError("memory.grow was terminated");
      }
      return ResourceExhaustedError(
          fmt::format("cannot grow memory by {} pages for {}: {}", delta, what,
                      tc.HasCaught() ? ExceptionText(iso, ctx, tc.Exception()) : "failed"));
    }
  }
  const uint64_t now = Buffer()->ByteLength();  // grow detached the old buffer
  if (now != want) {
    return InternalError(fmt::format("memory is {} bytes after growing, expected {}", now, want));
  }
  return Status::Ok();
}

Status V8Instance::GrowMemory(uint64_t bytes) {
  if (bytes % kWasmPageBytes != 0) {
    return InvalidArgumentError(
        fmt::format("cannot grow memory to {} bytes: not a whole number of wasm pages", bytes));
  }
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  v8::Context::Scope context_scope(worker_->context());
  return GrowTo(bytes, "the requested size");
}

Status V8Instance::Restore(const Snapshot& snap) {
  if (snap.module_hash != module_->hash()) {
    return InvalidArgumentError(
        fmt::format("snapshot belongs to module {}, this instance runs module {}", snap.module_hash,
                    module_->hash()));
  }
  if (snap.memory.size() % kWasmPageBytes != 0) {
    return InvalidArgumentError("snapshot memory is not a whole number of wasm pages");
  }
  TERN_RETURN_IF_ERROR(CheckGlobals(*module_, snap));
  v8::Isolate* iso = worker_->isolate();
  v8::Isolate::Scope isolate_scope(iso);
  v8::HandleScope scope(iso);
  v8::Local<v8::Context> ctx = worker_->context();
  v8::Context::Scope context_scope(ctx);
  const uint64_t want = snap.memory.size();
  TERN_RETURN_IF_ERROR(GrowTo(want, "the snapshot"));
  v8::Local<v8::ArrayBuffer> buf = Buffer();  // grow detached the old one
  // Fault the destination in with one system call rather than one fault per 4 KiB page
  // (page faults are expensive in VMs); harmless if it fails.
  if (want > 0) ::madvise(buf->Data(), want, MADV_POPULATE_WRITE);
  std::memcpy(buf->Data(), snap.memory.data(), want);
  TERN_RETURN_IF_ERROR(WriteGlobals(snap));
  broken_.clear();  // the state is whole again
  return Status::Ok();
}

}  // namespace tern::wasm::internal
