/* tern guest ABI, version 1 — the C interface between a service (wasm32-wasi guest)
 * and the tern runtime.
 *
 * A service is a wasm32-wasi *reactor* module. It exports:
 *   - `memory` (its linear memory; wasm-ld exports it by default),
 *   - one function per handler, `int32_t NAME(void)`, named in the manifest,
 *   - optionally `_initialize` (run once when a fresh instance starts, never after a
 *     restore) and `__stack_pointer` (lets the runtime verify request boundaries).
 * It imports only functions of the module "tern_v1" listed below (and, for libc++
 * guests, a few WASI functions the runtime stubs). The import module carries the ABI
 * version: a runtime refuses at deploy time a module that imports anything it does not
 * provide, naming the import.
 *
 * A handler reads its request with tern_request_read(), answers with tern_reply()
 * or tern_reply_in_place() (at most once; the last call wins) and returns 0. Returning non-zero, or calling
 * tern_fail(), fails the request with that status code. State kept in linear memory
 * between requests is the instance's state: it survives snapshot, restore and
 * migration when the service is `stateful`.
 *
 * Status codes are tern's (see TERN_* below); the same numbers are used on the wire.
 */
#ifndef TERN_TERN_H_
#define TERN_TERN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_ABI_VERSION 1

/* Status codes (same numbers as tern::StatusCode). */
#define TERN_OK 0
#define TERN_CANCELLED 1
#define TERN_UNKNOWN 2
#define TERN_INVALID_ARGUMENT 3
#define TERN_DEADLINE_EXCEEDED 4
#define TERN_NOT_FOUND 5
#define TERN_ALREADY_EXISTS 6
#define TERN_PERMISSION_DENIED 7
#define TERN_RESOURCE_EXHAUSTED 8
#define TERN_FAILED_PRECONDITION 9
#define TERN_ABORTED 10
#define TERN_OUT_OF_RANGE 11
#define TERN_UNIMPLEMENTED 12
#define TERN_INTERNAL 13
#define TERN_UNAVAILABLE 14
#define TERN_DATA_LOSS 15
#define TERN_UNAUTHENTICATED 16

/* Log levels for tern_log. */
#define TERN_LOG_DEBUG 0
#define TERN_LOG_INFO 1
#define TERN_LOG_WARN 2
#define TERN_LOG_ERROR 3

/* Clocks for tern_clock_ns. */
#define TERN_CLOCK_MONOTONIC 0
#define TERN_CLOCK_REALTIME 1

#if defined(__wasm__)
#define TERN_IMPORT(name) __attribute__((import_module("tern_v1"), import_name(#name)))
#define TERN_EXPORT(name) __attribute__((export_name(#name)))
#else
#define TERN_IMPORT(name)
#define TERN_EXPORT(name)
#endif

/* Size in bytes of the current request's payload. */
TERN_IMPORT(request_len) uint32_t tern_request_len(void);

/* Copies up to `len` bytes of the request payload, starting at `offset`, to `dst`.
 * Returns the number of bytes copied (0 at or past the end). Traps if `dst..dst+len`
 * is outside linear memory. */
TERN_IMPORT(request_read) uint32_t tern_request_read(void* dst, uint32_t len, uint32_t offset);

/* Sets the reply payload (copied). Returns TERN_OK, or TERN_RESOURCE_EXHAUSTED if
 * `len` exceeds the service's response limit (the reply is then left unchanged). */
TERN_IMPORT(reply) int32_t tern_reply(const void* data, uint32_t len);

/* Sets the reply payload to `data..data+len` *as it is when the handler returns*: the
 * bytes are not copied now; the runtime reads them from linear memory after a
 * successful return and before this instance runs again (over TCP it sends them from
 * there: one copy less per reply). So the buffer must stay allocated and unchanged
 * until the handler returns — not a local array of a function that returns first, not a
 * string freed before the return (free() writes into the block). Same results and
 * limit as tern_reply(); traps if the range is outside linear memory. Growing memory
 * afterwards is fine. A later tern_reply() or tern_reply_in_place() replaces it (the
 * last wins); if the request fails or traps, nothing is sent. Optional import: a
 * runtime older than it refuses such a module at deploy time, naming it. */
TERN_IMPORT(reply_in_place) int32_t tern_reply_in_place(const void* data, uint32_t len);

/* Fails the current request with `code` (non-zero) and a message (copied); the
 * handler should return right after. */
TERN_IMPORT(fail) void tern_fail(int32_t code, const char* msg, uint32_t msg_len);

/* Writes a log line attributed to this instance. Rate-limited by the runtime. */
TERN_IMPORT(log) void tern_log(int32_t level, const char* msg, uint32_t msg_len);

/* Nanoseconds on the given clock (TERN_CLOCK_*). */
TERN_IMPORT(clock_ns) int64_t tern_clock_ns(int32_t clock);

/* --- Calls to other services ------------------------------------------------------
 * A handler may call handlers of other services by name. Where the callee runs is the
 * runtime's business: the same agent (in-process), another agent on the same host
 * (shared memory) or another host (TCP); the guest code is the same.
 *
 * Calls are started and then waited for, so a handler can fan out: start several calls,
 * then wait for each. A call's deadline is `timeout_ms` from its start, and never later
 * than the caller's own deadline (0 = inherit the caller's remaining budget). The
 * request id and tenant of the caller's request travel with the call.
 *
 * Errors the guest can act on, as returned by tern_call_wait:
 *   TERN_NOT_FOUND           no such service or handler anywhere the runtime knows of;
 *   TERN_UNAVAILABLE         no running instance could be reached (peer died, shutting
 *                            down, or a call cycle back into a busy instance);
 *   TERN_DEADLINE_EXCEEDED   no answer within the deadline;
 *   TERN_RESOURCE_EXHAUSTED  the callee (or the path to it) is overloaded: back off;
 *   TERN_INVALID_ARGUMENT    the request was refused (too large, bad name);
 *   any other code           the callee failed the request with it.
 * On error, the call's "reply" is the error message (read it with tern_call_read). */

/* Starts a call of `handler` of `service` with the request bytes (copied). Returns a
 * call handle (> 0), or a negative TERN_* code if the call could not even start:
 * -TERN_INVALID_ARGUMENT for an invalid name, -TERN_RESOURCE_EXHAUSTED when the handler
 * has TERN_MAX_OPEN_CALLS calls open. Everything else is reported by tern_call_wait. */
TERN_IMPORT(call_start)
int32_t tern_call_start(const char* service, uint32_t service_len, const char* handler,
                        uint32_t handler_len, const void* req, uint32_t req_len,
                        uint32_t timeout_ms);

/* Waits until call `call` has finished. Returns its status (TERN_OK or a code above) and
 * stores at `*len` the size of its reply (on error: of its error message). Waiting again
 * returns the same. -TERN_NOT_FOUND (negative) for a handle that is not open. */
TERN_IMPORT(call_wait) int32_t tern_call_wait(int32_t call, uint32_t* len);

/* Copies up to `len` bytes of the finished call's reply (or error message), starting at
 * `offset`, to `dst`. Returns the number of bytes copied. */
TERN_IMPORT(call_read)
uint32_t tern_call_read(int32_t call, void* dst, uint32_t len, uint32_t offset);

/* Releases a call handle and its reply. Handles still open when the handler returns are
 * released by the runtime (a call still running is abandoned: its answer is dropped). */
TERN_IMPORT(call_close) void tern_call_close(int32_t call);

#define TERN_MAX_OPEN_CALLS 64

/* --- Datasets ----------------------------------------------------------------------
 * Named objects kept by storage devices ("logs/day1.bin"; `tern data put`). A guest reads
 * them by name wherever it runs: on the device that holds the dataset the read goes
 * straight to its store; elsewhere it becomes chunked requests over the data plane to
 * the device that holds it. Every byte is counted, local or remote. Negative results:
 *   -TERN_NOT_FOUND          no such dataset or object anywhere the runtime knows of;
 *   -TERN_OUT_OF_RANGE       offset beyond the object's end;
 *   -TERN_DATA_LOSS          the stored bytes fail their checksum;
 *   -TERN_UNAVAILABLE        the device holding it cannot be reached;
 *   -TERN_INVALID_ARGUMENT   a bad name;
 *   -TERN_UNIMPLEMENTED      a runtime without datasets. */

/* Reads up to `len` bytes of object `key` of `dataset` from `offset` into `dst`. Returns
 * the number of bytes read (fewer than `len` only at the end of the object, 0 at it), or
 * a negative code above. */
TERN_IMPORT(data_read)
int64_t tern_data_read(const char* dataset, uint32_t dataset_len, const char* key,
                       uint32_t key_len, uint64_t offset, void* dst, uint32_t len);

/* The size of object `key` of `dataset` in bytes, or a negative code. */
TERN_IMPORT(data_size)
int64_t tern_data_size(const char* dataset, uint32_t dataset_len, const char* key,
                       uint32_t key_len);

/* Lists the objects of `dataset` as lines "key<TAB>size<LF>", sorted by key, into `dst`
 * (at most `len` bytes). Returns the size of the whole list (call again with a larger
 * buffer if it is more than `len`), or a negative code. */
TERN_IMPORT(data_list)
int64_t tern_data_list(const char* dataset, uint32_t dataset_len, void* dst, uint32_t len);

/* Imports a runtime does not provide make the module be refused at deploy time, naming
 * the import; all tern_v1 imports after the first revision are optional in that sense. */

#ifdef __cplusplus
}
#endif

#endif /* TERN_TERN_H_ */
