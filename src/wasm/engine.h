// The sandbox: Engine / Module / Worker / Instance, independent of the wasm engine.
//
//   Engine   process-wide. Owns engine start-up, the compiled-module cache and the
//            watchdog that enforces per-request CPU time. Thread-safe.
//   Module   a compiled, validated module; immutable, shared (shared_ptr<const Module>)
//            by every worker and instance that uses it. Thread-safe.
//   Worker   one per thread that runs guests (for V8: one isolate). Created on, and
//            used only from, the thread that runs its instances.
//   Instance one running copy of a module inside a Worker: its state is its linear
//            memory and its mutable globals (the stack pointer, at its initial value
//            between requests, is one). Used only on its Worker's thread; destroy
//            before the Worker.
//
// Failures inside a guest (trap, CPU-time limit, stack overflow, memory cap) come back
// as a non-OK Status from Instance::Call; the instance may then hold a half-updated
// state, so the caller (the agent) replaces it with a fresh instance restored from its
// last good snapshot. Nothing in here throws.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "wasm/module_info.h"
#include "wasm/snapshot.h"

namespace tern::wasm {

inline constexpr uint32_t kWasmPageBytes = 65536;

// What a guest's host calls (tern_v1.*) reach for the duration of one Call.
// Implemented by the agent; the engine never keeps it past the Call.
class HostCalls {
 public:
  virtual ~HostCalls() = default;
  // The request payload; must stay valid for the whole Call.
  virtual std::string_view Request() = 0;
  // Sets the reply (the engine already checked the size against the limit).
  virtual void SetReply(std::string_view bytes) = 0;
  // The reply the guest left in its linear memory (tern_reply_in_place), given when the
  // handler has returned OK (a failed or trapped call never sets it). `bytes` points into
  // linear memory and stays valid until the instance runs again or its memory is
  // replaced (its next Call, Restore, destruction): the host sends it from there or
  // copies it. The default copies (SetReply).
  virtual void SetReplyInPlace(std::string_view bytes) { SetReply(bytes); }
  // The guest called tern_fail(code, msg) or returned `code` != 0.
  virtual void SetFailure(StatusCode code, std::string_view message) = 0;
  // tern_log and WASI fd_write to stdout/stderr.
  virtual void Log(int32_t level, std::string_view line) = 0;

  // Outgoing calls (tern_call_*; see sdk/include/tern/tern.h for the guest's view).
  // The views point into guest memory and are valid only during the host function:
  // copy what is kept. A host without calls (tests, tools) keeps the defaults, which
  // refuse with kUnimplemented.
  //
  // Starts a call; returns a handle > 0 or a negative StatusCode.
  virtual int32_t CallStart(std::string_view service, std::string_view handler,
                            std::string_view request, uint32_t timeout_ms) {
    (void)service, (void)handler, (void)request, (void)timeout_ms;
    return -static_cast<int32_t>(StatusCode::kUnimplemented);
  }
  // Waits for call `handle`; returns its code (negative kNotFound for a bad handle) and
  // the size of its result (reply or error message) in `*len`. May run other guests on
  // this thread meanwhile (nested calls into this engine are allowed).
  virtual int32_t CallWait(int32_t handle, uint32_t* len) {
    (void)handle;
    *len = 0;
    return -static_cast<int32_t>(StatusCode::kNotFound);
  }
  // The result bytes of a finished call (empty for an unknown or unfinished handle).
  virtual std::string_view CallResult(int32_t handle) {
    (void)handle;
    return {};
  }
  virtual void CallClose(int32_t handle) { (void)handle; }

  // Datasets (tern_data_*). Like calls, these may block (a remote read) and run other
  // guests on this thread meanwhile. Results >= 0 are sizes; negative ones StatusCodes.
  // The defaults refuse with kUnimplemented.
  //
  // Reads up to `len` bytes from `offset` into `*out`; returns the count.
  virtual int64_t DataRead(std::string_view dataset, std::string_view key, uint64_t offset,
                           uint32_t len, std::string* out) {
    (void)dataset, (void)key, (void)offset, (void)len, (void)out;
    return -static_cast<int64_t>(StatusCode::kUnimplemented);
  }
  virtual int64_t DataSize(std::string_view dataset, std::string_view key) {
    (void)dataset, (void)key;
    return -static_cast<int64_t>(StatusCode::kUnimplemented);
  }
  // The listing ("key\tsize\n" lines) into `*out`; returns 0.
  virtual int64_t DataList(std::string_view dataset, std::string* out) {
    (void)dataset, (void)out;
    return -static_cast<int64_t>(StatusCode::kUnimplemented);
  }
};

// Per-instance limits, checked by the engine.
struct InstanceLimits {
  uint32_t max_memory_pages = 1024;  // 64 MiB
  uint32_t cpu_ms = 1000;            // CPU time per Call, measured on the worker thread
  uint64_t max_reply_bytes = 1 << 20;
};

struct EngineOptions {
  // Extra V8 flags ("--no-liftoff" etc.), for experiments; empty by default.
  std::string engine_flags;
  // How often the watchdog looks at running calls.
  uint32_t watchdog_period_us = 2000;
};

class Module {
 public:
  virtual ~Module() = default;
  // SHA-256 (hex) of the module bytes as deployed (before any rewriting).
  virtual const std::string& hash() const = 0;
  virtual const ModuleInfo& info() const = 0;
  // The memory cap this module was compiled for.
  virtual uint32_t max_memory_pages() const = 0;
};

class Instance;

class Worker {
 public:
  virtual ~Worker() = default;
  // Instantiates `module` (which must come from this worker's Engine). With
  // `run_initialize`, calls the module's `_initialize` export if it has one; pass false
  // when the instance is about to be restored from a snapshot.
  virtual Result<std::unique_ptr<Instance>> Instantiate(std::shared_ptr<const Module> module,
                                                        const InstanceLimits& limits,
                                                        bool run_initialize) = 0;
};

class Instance {
 public:
  virtual ~Instance() = default;
  virtual const Module& module() const = 0;

  // Runs exported function `handler` (signature () -> i32) with `host` reachable
  // through the tern_v1 imports. OK means the handler returned 0 and did not call
  // tern_fail. Errors, with messages that say what happened:
  //   kNotFound             no such export;
  //   kDeadlineExceeded     the CPU-time limit was hit (the watchdog terminated it);
  //   kResourceExhausted    the memory cap was hit, or the wasm stack overflowed;
  //   kInternal             the guest trapped (out-of-bounds access, unreachable, ...):
  //                         a bug of the service, which a retry would only repeat;
  //   the guest's own code  the guest failed the request (tern_fail or non-zero return).
  // After kDeadlineExceeded, kResourceExhausted or kInternal the instance must not be
  // used again (its memory may be half-updated): the caller discards it. (The V8 engine
  // enforces this: later Calls fail with kFailedPrecondition until a successful
  // Restore() puts a whole state back.)
  virtual Status Call(std::string_view handler, HostCalls* host) = 0;

  // Linear memory, valid until the next Call (memory.grow may move or detach it).
  virtual uint8_t* memory_data() = 0;
  virtual uint64_t memory_bytes() = 0;

  // The state between requests: memory bytes + mutable globals + module hash.
  // kFailedPrecondition for a module with a mutable global of a type the engine cannot
  // read (CheckSnapshotable): such a snapshot would silently lose state.
  virtual Result<Snapshot> TakeSnapshot() = 0;
  // Same, into `out`, reusing its buffer (no page faults when the size is unchanged):
  // the fast path for repeated snapshots.
  virtual Status SnapshotInto(Snapshot* out) = 0;
  // Replaces the state with `snap` (same module hash required; memory grows as
  // needed — a wasm memory cannot shrink, so restore into a fresh instance when the
  // current one is larger than the snapshot).
  // The globals are set as RestoreGlobals does.
  virtual Status Restore(const Snapshot& snap) = 0;
  // Only the globals: `out->stack_pointer` and `out->globals` (its buffer reused),
  // memory and hash untouched. For a rollback point kept up to date page by page.
  virtual Status SnapshotGlobals(Snapshot* out) = 0;
  // Sets the stack pointer and every mutable global from `snap` (memory untouched).
  // `snap.globals` must list exactly the module's mutable globals (index and type),
  // or be empty when the module has none besides the exported `__stack_pointer` (a
  // snapshot from before globals were carried); else kInvalidArgument, naming what is
  // missing, and nothing is set.
  virtual Status RestoreGlobals(const Snapshot& snap) = 0;
  // Grows the linear memory to `bytes` (a multiple of 64 KiB, not below the current size,
  // within the cap) like the guest's memory.grow: the old contents stay, the new pages
  // read as zeros and are not touched (the kernel maps them on first write). For a
  // migration target, which writes every page anyway: far cheaper than restoring a
  // zero snapshot of that size. Invalidates memory_data().
  virtual Status GrowMemory(uint64_t bytes) = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Validates and compiles `wasm_bytes` with the memory cap `max_memory_pages`.
  // The result is cached by (content hash, cap): a second call with the same bytes
  // returns the same Module without compiling. Errors: kInvalidArgument for bytes that
  // are not a valid wasm module, import something the runtime does not provide, or
  // lack a `memory` export — the message names the problem.
  virtual Result<std::shared_ptr<const Module>> Compile(std::string_view wasm_bytes,
                                                        uint32_t max_memory_pages) = 0;
  // Creates a Worker bound to the calling thread.
  virtual Result<std::unique_ptr<Worker>> NewWorker() = 0;
  // Number of distinct compiled modules in the cache (for tests and status).
  virtual size_t CachedModuleCount() const = 0;
};

// The V8 engine (Debian's libnode). At most one per process: V8 is initialized once
// and never torn down; creating a second while one exists returns kFailedPrecondition
// (after the first is destroyed a new one may be created; `engine_flags` only take
// effect for the first). Workers must be destroyed before their Engine.
Result<std::unique_ptr<Engine>> NewV8Engine(const EngineOptions& options);

}  // namespace tern::wasm
