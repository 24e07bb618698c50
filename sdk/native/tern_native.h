/* tern_native: a host (native) implementation of the tern_v1 guest imports, so that
 * the same guest source that builds to wasm can be linked into a native program for
 * benchmarks ("wasm vs native") and for unit-testing a guest's logic.
 *
 * It plays the runtime's part for one instance: the caller sets the current request,
 * calls a handler (its C symbol, e.g. counter_incr), then reads the captured reply or
 * failure. Logs go to stderr. Guest globals are ordinary process globals, so "the
 * instance" lives as long as the process (tern_native_reset() clears only the
 * request/reply, never the guest's own state).
 *
 *   tern_native_set_request("5", 1);
 *   int32_t status = tern_native_invoke(counter_incr);
 *   const void* out; uint32_t n;
 *   tern_native_reply(&out, &n);
 *
 * Differences from the real runtime: no memory, CPU or request limits (a response limit
 * is emulated); out-of-bounds tern_request_read() does not trap; there is no snapshot
 * or migration; a C++ guest's static constructors run at process start, not at
 * `_initialize`.
 *
 * Thread-safety: none. All state is process-global, like the single instance it
 * stands for; call everything from one thread (or serialize the calls).
 */
#ifndef TERN_NATIVE_TERN_NATIVE_H_
#define TERN_NATIVE_TERN_NATIVE_H_

#include <stdint.h>

#include "tern/tern.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A handler as exported by a guest: returns TERN_OK or a TERN_* code. */
typedef int32_t (*tern_native_handler)(void);

/* Sets the payload that tern_request_len/tern_request_read return. Not copied:
 * `data` must stay valid until the next tern_native_set_request() or
 * tern_native_reset(). `data` may be NULL when `len` is 0. */
void tern_native_set_request(const void* data, uint32_t len);

/* Clears the request (to empty), the reply and the failure, and forgets the previous
 * outcome. Keeps the response limit, the log level and the guest's own state. */
void tern_native_reset(void);

/* Calls `handler` for the current request, after clearing the previous reply and
 * failure (the request is kept). Returns the request's status as the runtime would
 * report it: the code given to tern_fail() if the handler called it, else the
 * handler's return value. */
int32_t tern_native_invoke(tern_native_handler handler);

/* The reply captured by the last tern_reply() since the last reset/invoke, or by a
 * tern_reply_in_place() (read when the handler returned OK, as the runtime does; empty if
 * none). `*data` stays valid until the next tern_reply(), reset or invoke. Returns 1
 * if tern_reply() was called, else 0. Either pointer may be NULL. */
int32_t tern_native_reply(const void** data, uint32_t* len);

/* The failure captured by tern_fail() since the last reset/invoke: returns its code (0
 * if none) and its message (NUL-terminated; valid until the next tern_fail(), reset
 * or invoke). `msg` may be NULL. */
int32_t tern_native_failure(const char** msg);

/* Response limit emulated by tern_reply() (default 1 MiB, the manifest default). */
void tern_native_set_response_limit(uint32_t bytes);

/* Lines below `level` are dropped by tern_log(); default TERN_LOG_INFO. Use
 * TERN_LOG_ERROR + 1 to silence guests in benchmarks. */
void tern_native_set_log_level(int32_t level);

/* Number of tern_log() calls since process start (dropped lines included). */
uint64_t tern_native_log_count(void);

#ifdef __cplusplus
}
#endif

#endif /* TERN_NATIVE_TERN_NATIVE_H_ */
