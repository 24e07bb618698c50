// A guest driven directly through V8's embedder API (v8.h), with no tern code in between:
// the floors the benchmarks put next to tern's own paths (foundation: a raw export call;
// rpc: the raw shared-memory ring with the echo guest in a bare sandbox).
//
// WithRawModule creates an isolate on the calling thread, compiles the module, builds an
// imports object in which each function import is either the caller's callback or a stub
// that returns 0, runs `body` with the isolate and a context entered, and disposes of the
// isolate. V8 must already be initialized in this process (tern's engine does it:
// wasm::NewV8Engine).
//
// Thread-safety: everything happens on the calling thread; the isolate is its own.
#pragma once

#include <v8.h>

#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace tern::bench {

// An interned V8 string.
v8::Local<v8::String> V8Str(v8::Isolate* iso, std::string_view s);

// The message of what `tc` caught ("terminated" after a termination).
std::string V8ExceptionString(v8::Isolate* iso, v8::Local<v8::Context> ctx, v8::TryCatch& tc);

// What a body gets: an entered isolate and context, a TryCatch, and a function that
// instantiates the compiled module with the imports.
struct RawEnv {
  v8::Isolate* iso;
  v8::Local<v8::Context> ctx;
  v8::TryCatch* tc;
  // new WebAssembly.Instance(module, imports) [+ exports._initialize()]; the exports.
  std::function<Result<v8::Local<v8::Object>>(bool run_init)> instantiate;
};

// The callback for an import (module, name), or nullptr for a stub that returns 0.
// Callbacks get `data` as FunctionCallbackInfo::Data() (a v8::External).
using RawImportResolver =
    std::function<v8::FunctionCallback(std::string_view module, std::string_view name)>;

// Errors: the module does not parse or compile, has a non-function import, or `body`'s.
Status WithRawModule(std::string_view wasm_bytes, const RawImportResolver& resolve, void* data,
                     const std::function<Status(RawEnv&)>& body);

}  // namespace tern::bench
