// Bad guest: imports functions tern does not provide.
#include <stdint.h>

#include "tern/tern.h"

__attribute__((import_module("tern_v1"), import_name("call"))) int32_t tern_call(int32_t);
__attribute__((import_module("env"), import_name("foo"))) int32_t foo(int32_t);

TERN_EXPORT(run) int32_t run(void) { return tern_call(1) + foo(2); }
