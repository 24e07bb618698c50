// A guest that reads datasets through tern_data_* (the host's side is faked in
// wasm_test and real in the agent's tests).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern/tern.h"

static char req[512];
static char buf[1 << 16];

// Splits req at '|' into up to 4 fields.
static int Fields(char** f, int max) {
  uint32_t n = tern_request_len();
  if (n >= sizeof(req)) n = sizeof(req) - 1;
  tern_request_read(req, n, 0);
  req[n] = 0;
  int k = 0;
  char* p = req;
  while (k < max) {
    f[k++] = p;
    char* bar = strchr(p, '|');
    if (!bar) break;
    *bar = 0;
    p = bar + 1;
  }
  return k;
}

static int32_t FailWith(int64_t rc) {
  const char* m = "data call failed";
  tern_fail((int32_t)-rc, m, (uint32_t)strlen(m));
  return 0;
}

// "dataset|key|offset|len" -> the bytes.
TERN_EXPORT(read) int32_t read_handler(void) {
  char* f[4];
  if (Fields(f, 4) != 4) return TERN_INVALID_ARGUMENT;
  uint32_t len = (uint32_t)strtoul(f[3], 0, 10);
  if (len > sizeof(buf)) len = sizeof(buf);
  int64_t n = tern_data_read(f[0], (uint32_t)strlen(f[0]), f[1], (uint32_t)strlen(f[1]),
                             strtoull(f[2], 0, 10), buf, len);
  if (n < 0) return FailWith(n);
  return tern_reply(buf, (uint32_t)n);
}

// "dataset|key" -> the size, as 8 bytes.
TERN_EXPORT(size) int32_t size_handler(void) {
  char* f[2];
  if (Fields(f, 2) != 2) return TERN_INVALID_ARGUMENT;
  int64_t n = tern_data_size(f[0], (uint32_t)strlen(f[0]), f[1], (uint32_t)strlen(f[1]));
  if (n < 0) return FailWith(n);
  tern_reply(&n, 8);
  return 0;
}

// "dataset" -> the listing, first with a too-small buffer.
TERN_EXPORT(list) int32_t list_handler(void) {
  char* f[1];
  Fields(f, 1);
  char small[4];
  int64_t need = tern_data_list(f[0], (uint32_t)strlen(f[0]), small, sizeof(small));
  if (need < 0) return FailWith(need);
  if (need > (int64_t)sizeof(buf)) return TERN_RESOURCE_EXHAUSTED;
  int64_t again = tern_data_list(f[0], (uint32_t)strlen(f[0]), buf, (uint32_t)need);
  if (again != need) return TERN_INTERNAL;
  return tern_reply(buf, (uint32_t)need);
}

// A destination outside linear memory: must trap, not write anywhere.
TERN_EXPORT(wild) int32_t wild_handler(void) {
  return (int32_t)tern_data_read("d", 1, "k", 1, 0, (void*)0xfffffff0u, 64);
}
