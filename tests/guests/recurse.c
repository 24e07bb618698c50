// Bad guest: unbounded recursion on the wasm stack (not the shadow stack in memory).
#include <stdint.h>

#include "tern/tern.h"

static volatile uint32_t g_stop;

__attribute__((noinline)) static uint32_t Down(uint32_t n) {
  if (g_stop) return n;
  return Down(n + 1) * 31u + n;
}

TERN_EXPORT(recurse) int32_t recurse(void) { return (int32_t)(Down(0) & 1); }
