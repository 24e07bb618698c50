// Bad guest: stores past the end of linear memory.
#include <stdint.h>

#include "tern/tern.h"

TERN_EXPORT(oob) int32_t oob(void) {
  uintptr_t end = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
  volatile uint32_t* p = (volatile uint32_t*)(end + 64);
  *p = 42;
  return 0;
}

// Traps with `unreachable`.
TERN_EXPORT(trap) int32_t trap(void) { __builtin_trap(); }
