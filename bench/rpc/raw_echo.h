// The echo guest (examples/echo, handler "echo") in a bare V8 sandbox: the same
// echo.wasm tern's targets run, instantiated with V8's API alone and the three host
// calls it makes (tern_v1.request_len, request_read, reply_in_place) written as plain
// V8 callbacks — no agent, no frames, no watchdog, no routing. limit_shm_v8 puts it
// behind the raw shared-memory ring: the floor of any shared-memory transport whose
// callee runs in a V8 sandbox (docs/benchmarks.md, "RPC benchmark").
//
// Thread-safety: WithRawEcho runs on the calling thread and `serve` with it; the echo
// function it passes must be called on that thread only, inside `serve`.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "core/status.h"

namespace tern::bench::rpc {

// Answers one request through the guest; the reply points into the guest's memory and
// stays valid until the next call. The request is given as two parts (the second often
// empty: a record that wraps around a ring's end), read where they are: the guest's
// tern_request_read copies from them, once. An empty span with ok() false is never
// returned: a guest failure aborts `serve` by the error the echo function returns.
using RawEchoFn = std::function<Result<std::span<const uint8_t>>(std::span<const uint8_t>,
                                                                 std::span<const uint8_t>)>;

// Compiles and instantiates `wasm_bytes` (with _initialize), then runs `serve`. V8 must
// be initialized (wasm::NewV8Engine). Errors: the module does not compile, has no
// `echo` export, or `serve`'s.
Status WithRawEcho(std::string_view wasm_bytes, const std::function<Status(const RawEchoFn&)>& serve);

}  // namespace tern::bench::rpc
