// Bad guest: spins forever (the CPU-time limit must stop it).
#include <stdint.h>

#include "tern/tern.h"

static volatile uint64_t g_spins;

TERN_EXPORT(spin) int32_t spin(void) {
  for (;;) ++g_spins;
}

TERN_EXPORT(noop) int32_t noop(void) { return 0; }
