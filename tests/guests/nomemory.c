// Bad guest: links its memory under another export name, so it exports no `memory`.
#include <stdint.h>

#include "tern/tern.h"

TERN_EXPORT(run) int32_t run(void) { return 0; }
