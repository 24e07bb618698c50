// Bad guest: allocates 1 MiB chunks, touching each, until malloc fails; then aborts.
#include <stdlib.h>
#include <string.h>

#include "tern/tern.h"

static void* volatile g_last;

TERN_EXPORT(oom) int32_t oom(void) {
  for (;;) {
    char* p = malloc(1 << 20);
    if (p == NULL) abort();
    memset(p, 1, 1 << 20);
    g_last = p;
  }
}
