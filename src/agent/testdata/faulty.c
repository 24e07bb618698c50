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
