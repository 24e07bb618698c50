/* echo: a stateless service that answers each request with its own payload ("echo")
 * or with nothing ("nop"). The smallest possible guest, used by the data-plane
 * benchmarks to measure the runtime's per-request cost.
 *
 * State: a scratch buffer that grows to the largest request seen; it carries nothing
 * from one request to the next. */
#include <stdint.h>
#include <stdlib.h>

#include "tern/tern.h"

static uint8_t* g_buf;
static uint32_t g_cap;

/* Replies with the request payload, byte for byte. */
TERN_EXPORT(echo) int32_t echo_echo(void) {
  /* Read first: a request shorter than the buffer costs one host call; only one that
   * fills it asks for the length (and the buffer grows past it). */
  uint32_t got = g_cap == 0 ? 0 : tern_request_read(g_buf, g_cap, 0);
  if (g_cap == 0 || got == g_cap) {
    uint32_t len = tern_request_len();
    if (len >= g_cap) {
      uint32_t cap = len < 256 ? 256 : len + 1;
      uint8_t* grown = (uint8_t*)realloc(g_buf, cap);
      if (grown == NULL) {
        static const char kMsg[] = "echo: out of memory";
        tern_fail(TERN_RESOURCE_EXHAUSTED, kMsg, sizeof(kMsg) - 1);
        return TERN_RESOURCE_EXHAUSTED;
      }
      g_buf = grown;
      g_cap = cap;
    }
    if (len > got) got += tern_request_read(g_buf + got, len - got, got);
  }
  /* g_buf stays as it is until the next request: the runtime may send the reply from
   * there, without copying it out first. */
  return tern_reply_in_place(g_buf, got);
}

/* Does nothing and replies with an empty payload. */
TERN_EXPORT(nop) int32_t echo_nop(void) { return TERN_OK; }
