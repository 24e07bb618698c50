// A stateful test service whose handlers first change state and then misbehave, so
// tests can check that every failure rolls the instance back to its last good state.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern/tern.h"

static int64_t counter;  // the state
static char* blob;       // heap state, to catch heap corruption on rollback
static uint32_t blob_len;

static void ReplyCounter(void) {
  char buf[24];
  int n = 0;
  int64_t v = counter;
  char tmp[24];
  int t = 0;
  if (v == 0) tmp[t++] = '0';
  while (v > 0) {
    tmp[t++] = (char)('0' + v % 10);
    v /= 10;
  }
  while (t > 0) buf[n++] = tmp[--t];
  tern_reply(buf, (uint32_t)n);
}

TERN_EXPORT(incr) int32_t faulty_incr(void) {
  counter++;
  // Keep a heap blob whose contents depend on the counter.
  blob = realloc(blob, blob_len + 16);
  memset(blob + blob_len, (int)(counter & 0x7f), 16);
  blob_len += 16;
  ReplyCounter();
  return 0;
}

TERN_EXPORT(get) int32_t faulty_get(void) {
  // Verify the heap blob is consistent with the counter history.
  for (uint32_t i = 0; i < blob_len; i++) {
    if (blob[i] != (char)(((i / 16) + 1) & 0x7f)) {
      tern_fail(15, "heap blob corrupted", 19);
      return 15;
    }
  }
  ReplyCounter();
  return 0;
}

TERN_EXPORT(incr_then_trap) int32_t faulty_incr_then_trap(void) {
  counter += 1000;
  __builtin_trap();
}

static volatile int64_t spin_sink;
TERN_EXPORT(incr_then_loop) int32_t faulty_incr_then_loop(void) {
  counter += 1000;
  for (;;) spin_sink++;
}

static volatile int recurse_forever = 1;
static int Recurse(volatile int depth) {
  volatile char pad[64];
  pad[0] = (char)depth;
  if (!recurse_forever) return 0;
  return Recurse(depth + 1) + pad[0];
}
TERN_EXPORT(incr_then_recurse) int32_t faulty_incr_then_recurse(void) {
  counter += 1000;
  return Recurse(0);
}

TERN_EXPORT(incr_then_oob) int32_t faulty_incr_then_oob(void) {
  counter += 1000;
  volatile uint32_t* p = (volatile uint32_t*)(uintptr_t)0xFFFFFFF0u;
  *p = 42;
  return 0;
}

static char* volatile last_chunk;  // keeps clang from eliding the allocations
TERN_EXPORT(incr_then_oom) int32_t faulty_incr_then_oom(void) {
  counter += 1000;
  for (;;) {
    char* p = malloc(1 << 20);
    if (p == NULL) abort();
    memset(p, 1, 1 << 20);
    last_chunk = p;
  }
}

TERN_EXPORT(fail_cleanly) int32_t faulty_fail_cleanly(void) {
  // A deliberate failure at a clean boundary: the state change stays.
  counter += 1;
  tern_fail(TERN_FAILED_PRECONDITION, "not today", 9);
  return TERN_FAILED_PRECONDITION;
}

TERN_EXPORT(big_reply) int32_t faulty_big_reply(void) {
  static char buf[256 * 1024];
  return tern_reply(buf, sizeof(buf)) == TERN_OK ? 0 : TERN_RESOURCE_EXHAUSTED;
}

// tern_reply_in_place: request "LEN SEED [MODE]" replies LEN bytes (byte i = SEED + i,
// mod 256) left in a static buffer, then MODE: "trap" (after changing state), "fail"
// (returns an error), "grow" (grows memory by 1 MiB first), "copy" (a tern_reply("copy")
// afterwards: the last wins), "again" (a second in-place reply of the first 3 bytes),
// "overwrite" (fills the buffer with 'z' before returning: the reply is read at the
// return), "oob" (an in-place reply outside linear memory).
static char ip_buf[60 * 1024];

static uint32_t ParseU32(const char** p, const char* end) {
  uint32_t v = 0;
  while (*p < end && **p == ' ') ++*p;
  while (*p < end && **p >= '0' && **p <= '9') v = v * 10 + (uint32_t)(*(*p)++ - '0');
  return v;
}

TERN_EXPORT(inplace) int32_t faulty_inplace(void) {
  char req[64];
  uint32_t n = tern_request_read(req, sizeof(req), 0);
  const char* p = req;
  const char* end = req + n;
  uint32_t len = ParseU32(&p, end);
  uint32_t seed = ParseU32(&p, end);
  while (p < end && *p == ' ') ++p;
  const uint32_t mode_len = (uint32_t)(end - p);
#define MODE_IS(s) (mode_len == sizeof(s) - 1 && memcmp(p, s, sizeof(s) - 1) == 0)
  if (len > sizeof(ip_buf)) len = sizeof(ip_buf);
  for (uint32_t i = 0; i < len; i++) ip_buf[i] = (char)(seed + i);
  if (MODE_IS("oob")) return tern_reply_in_place((const void*)(uintptr_t)0xFFFFFF00u, 1024);
  int32_t rc = tern_reply_in_place(ip_buf, len);
  if (rc != TERN_OK) return rc;
  if (MODE_IS("trap")) {
    counter += 1000;
    __builtin_trap();
  }
  if (MODE_IS("fail")) return TERN_ABORTED;
  if (MODE_IS("grow") && __builtin_wasm_memory_grow(0, 16) < 0) return TERN_RESOURCE_EXHAUSTED;
  if (MODE_IS("copy")) return tern_reply("copy", 4);
  if (MODE_IS("again")) return tern_reply_in_place(ip_buf, 3);
  if (MODE_IS("overwrite")) memset(ip_buf, 'z', len);
#undef MODE_IS
  return TERN_OK;
}

// Scattered writes over a heap area of 5 MiB (large enough for the agent to track the
// rollback point's pages with the kernel's write protection): "N" adds to one word in
// each of N pseudo-random pages and keeps their sum; scatter_then_trap does the same,
// then traps (the rollback must undo exactly those writes); scatter_check verifies
// that the area still sums to what the successful requests added.
#define SCATTER_BYTES (5u << 20)
static uint32_t* scatter_area;
static uint64_t scatter_sum;
static uint32_t scatter_seed = 12345;

static int32_t Scatter(void) {
  char req[16];
  uint32_t n = tern_request_read(req, sizeof(req), 0);
  const char* p = req;
  uint32_t count = ParseU32(&p, req + n);
  if (scatter_area == NULL) {
    scatter_area = calloc(SCATTER_BYTES / 4, 4);
    if (scatter_area == NULL) return TERN_RESOURCE_EXHAUSTED;
  }
  for (uint32_t i = 0; i < count; i++) {
    scatter_seed = scatter_seed * 1103515245u + 12345u;
    const uint32_t page = (scatter_seed >> 8) % (SCATTER_BYTES / 4096);
    const uint32_t word = page * 1024 + (scatter_seed & 1023);
    scatter_area[word] += i + 1;
    scatter_sum += i + 1;
  }
  return TERN_OK;
}

TERN_EXPORT(scatter) int32_t faulty_scatter(void) { return Scatter(); }

TERN_EXPORT(scatter_then_trap) int32_t faulty_scatter_then_trap(void) {
  Scatter();
  __builtin_trap();
}

TERN_EXPORT(scatter_check) int32_t faulty_scatter_check(void) {
  uint64_t sum = 0;
  if (scatter_area != NULL) {
    for (uint32_t i = 0; i < SCATTER_BYTES / 4; i++) sum += scatter_area[i];
  }
  if (sum != scatter_sum) {
    tern_fail(TERN_DATA_LOSS, "scatter area does not match its sum", 35);
    return TERN_DATA_LOSS;
  }
  ReplyCounter();
  return 0;
}

// A small state that every request rewrites whole (1 MiB of static memory): "rewrite"
// fills it with the next byte value, rewrite_then_trap does so with another value and
// traps, rewrite_check verifies that every byte holds the last successful value.
static unsigned char rewrite_buf[1 << 20];
static unsigned char rewrite_value;

TERN_EXPORT(rewrite) int32_t faulty_rewrite(void) {
  rewrite_value++;
  memset(rewrite_buf, rewrite_value, sizeof(rewrite_buf));
  return TERN_OK;
}

TERN_EXPORT(rewrite_then_trap) int32_t faulty_rewrite_then_trap(void) {
  memset(rewrite_buf, (unsigned char)(rewrite_value + 100), sizeof(rewrite_buf));
  __builtin_trap();
}

TERN_EXPORT(rewrite_check) int32_t faulty_rewrite_check(void) {
  for (uint32_t i = 0; i < sizeof(rewrite_buf); i++) {
    if (rewrite_buf[i] != rewrite_value) {
      tern_fail(TERN_DATA_LOSS, "rewritten state does not hold its last value", 45);
      return TERN_DATA_LOSS;
    }
  }
  ReplyCounter();
  return 0;
}
