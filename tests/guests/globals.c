// A stateful guest that keeps its state in wasm globals that it does not export, as
// AssemblyScript, TinyGo or hand-written modules do (heap pointers, counters): clang
// makes a variable in address space 1 a wasm global. Tests check that snapshots,
// rollbacks, checkpoints, journals and migrations carry them.
#include <stdint.h>
#include <string.h>

#include "tern/tern.h"

#define WASM_GLOBAL __attribute__((address_space(1)))

// (clang drops initializers of such globals: they start at zero.)
static int32_t WASM_GLOBAL g_count;
static int64_t WASM_GLOBAL g_wide;
static double WASM_GLOBAL g_real;
static uint32_t in_memory;  // ordinary state in linear memory, for contrast

static void Bump(void) {
  g_count += 1;
  g_wide = g_wide * 3 + 0x100000007;  // soon past 32 bits
  g_real = g_real * 1.5 + 0.25;
  in_memory += 1;
}

// The state: i32 count | i64 wide | f64 real | u32 in_memory (little-endian, 24 bytes).
static int32_t ReplyState(void) {
  char out[24];
  int32_t c = g_count;
  int64_t w = g_wide;
  double r = g_real;
  memcpy(out, &c, 4);
  memcpy(out + 4, &w, 8);
  memcpy(out + 12, &r, 8);
  memcpy(out + 20, &in_memory, 4);
  return tern_reply(out, sizeof out);
}

TERN_EXPORT(bump) int32_t globals_bump(void) {
  Bump();
  return ReplyState();
}

TERN_EXPORT(get) int32_t globals_get(void) { return ReplyState(); }

// Changes a global and no memory: a durable instance must still journal the request.
TERN_EXPORT(bump_globals_only) int32_t globals_bump_globals_only(void) {
  g_count += 100;
  return 0;
}

// Grows the memory by 80 pages (5 MiB: big enough for the agent's write tracking).
TERN_EXPORT(grow) int32_t globals_grow(void) {
  return __builtin_wasm_memory_grow(0, 80) == (__SIZE_TYPE__)-1 ? 8 : 0;
}

// Changes every global, then traps: the rollback must undo the globals too.
TERN_EXPORT(bump_then_trap) int32_t globals_bump_then_trap(void) {
  Bump();
  __builtin_trap();
}
