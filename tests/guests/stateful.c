// The stateful test guest: a counter, echo, memory growth and pattern writes, plus
// handlers that exercise each host call and its error paths.
// Requests and replies use little-endian u32 fields where noted.
#include <stdint.h>
#include <string.h>

#include "tern/tern.h"

static uint32_t g_counter;
static uint8_t g_buf[64 * 1024];

static uint32_t ReadU32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t ReplyU32(uint32_t v) {
  uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  return tern_reply(b, 4);
}

// Reads the request into g_buf; returns its length, or -1 if too long.
static int32_t ReadRequest(void) {
  uint32_t n = tern_request_len();
  if (n > sizeof(g_buf)) return -1;
  return (int32_t)tern_request_read(g_buf, n, 0);
}

// Increments the counter and replies with its new value (u32).
TERN_EXPORT(counter) int32_t counter(void) {
  ++g_counter;
  ReplyU32(g_counter);
  return 0;
}

// Replies with the counter without changing it.
TERN_EXPORT(get) int32_t get(void) {
  ReplyU32(g_counter);
  return 0;
}

// Replies with the request.
TERN_EXPORT(echo) int32_t echo(void) {
  int32_t n = ReadRequest();
  if (n < 0) {
    static const char kMsg[] = "request too long";
    tern_fail(TERN_INVALID_ARGUMENT, kMsg, sizeof(kMsg) - 1);
    return TERN_INVALID_ARGUMENT;
  }
  tern_reply(g_buf, (uint32_t)n);
  return 0;
}

// Does nothing.
TERN_EXPORT(noop) int32_t noop(void) { return 0; }

// Request: u32 pages. Grows memory by that many pages; replies with the old size in
// pages (or 0xffffffff if the growth failed).
TERN_EXPORT(grow) int32_t grow(void) {
  if (ReadRequest() != 4) return TERN_INVALID_ARGUMENT;
  uint32_t old = (uint32_t)__builtin_wasm_memory_grow(0, ReadU32(g_buf));
  ReplyU32(old);
  return 0;
}

// Replies with the memory size in pages.
TERN_EXPORT(pages) int32_t pages(void) {
  ReplyU32((uint32_t)__builtin_wasm_memory_size(0));
  return 0;
}

// Request: u32 addr, u32 len, u32 seed. Writes byte (seed + 7*i) at addr+i. The caller
// picks addresses it owns (pages it grew).
TERN_EXPORT(fill) int32_t fill(void) {
  if (ReadRequest() != 12) return TERN_INVALID_ARGUMENT;
  uint32_t addr = ReadU32(g_buf), len = ReadU32(g_buf + 4), seed = ReadU32(g_buf + 8);
  uint8_t* p = (uint8_t*)(uintptr_t)addr;
  for (uint32_t i = 0; i < len; ++i) p[i] = (uint8_t)(seed + 7 * i);
  return 0;
}

// Request: u32 addr, u32 len. Replies with an FNV-1a hash (u32) of that range.
TERN_EXPORT(hash) int32_t hash(void) {
  if (ReadRequest() != 8) return TERN_INVALID_ARGUMENT;
  uint32_t addr = ReadU32(g_buf), len = ReadU32(g_buf + 4);
  const uint8_t* p = (const uint8_t*)(uintptr_t)addr;
  uint32_t h = 2166136261u;
  for (uint32_t i = 0; i < len; ++i) h = (h ^ p[i]) * 16777619u;
  ReplyU32(h);
  return 0;
}

// Fails through tern_fail with NOT_FOUND and a message.
TERN_EXPORT(fail) int32_t fail(void) {
  static const char kMsg[] = "no such key: k1";
  tern_fail(TERN_NOT_FOUND, kMsg, sizeof(kMsg) - 1);
  return 0;
}

// Returns 11 (OUT_OF_RANGE) without calling tern_fail.
TERN_EXPORT(ret11) int32_t ret11(void) { return TERN_OUT_OF_RANGE; }

// Request: u32 n. Replies with n bytes of 'x'; replies with the tern_reply result code
// in a second reply when the first was refused.
TERN_EXPORT(big_reply) int32_t big_reply(void) {
  if (ReadRequest() != 4) return TERN_INVALID_ARGUMENT;
  uint32_t n = ReadU32(g_buf);
  if (n > sizeof(g_buf)) n = sizeof(g_buf);
  memset(g_buf, 'x', n);
  int32_t rc = tern_reply(g_buf, n);
  if (rc != TERN_OK) {
    char msg[] = "refused:0";
    msg[8] = (char)('0' + rc % 10);
    tern_reply(msg, sizeof(msg) - 1);
  }
  return 0;
}

// Logs two lines through tern_log.
TERN_EXPORT(log) int32_t log_handler(void) {
  static const char kA[] = "hello from guest";
  static const char kB[] = "warning from guest";
  tern_log(TERN_LOG_INFO, kA, sizeof(kA) - 1);
  tern_log(TERN_LOG_WARN, kB, sizeof(kB) - 1);
  return 0;
}

// Replies with the monotonic clock (8 bytes LE).
TERN_EXPORT(clock) int32_t clock_handler(void) {
  int64_t t = tern_clock_ns(TERN_CLOCK_MONOTONIC);
  tern_reply(&t, sizeof(t));
  return 0;
}

// Host-call bounds checks: each passes a pointer range outside linear memory.
TERN_EXPORT(read_oob) int32_t read_oob(void) {
  uint32_t end = (uint32_t)__builtin_wasm_memory_size(0) * 65536u;
  tern_request_read((void*)(uintptr_t)(end - 2), 16, 0);
  return 0;
}
TERN_EXPORT(reply_oob) int32_t reply_oob(void) {
  tern_reply((const void*)(uintptr_t)0xfffffff0u, 0x100);
  return 0;
}
TERN_EXPORT(log_oob) int32_t log_oob(void) {
  tern_log(TERN_LOG_INFO, (const char*)(uintptr_t)16, 0xffffffffu);
  return 0;
}
