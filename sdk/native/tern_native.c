/* Native implementation of the tern_v1 imports. See tern_native.h. */
#define _POSIX_C_SOURCE 200809L

#include "tern_native.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The current request (borrowed from the caller). */
static const uint8_t* g_request;
static uint32_t g_request_len;

/* The captured reply (owned; capacity kept across requests). */
static uint8_t* g_reply;
static uint32_t g_reply_len;
static uint32_t g_reply_cap;
static int32_t g_replied;
static uint32_t g_response_limit = 1024u * 1024u;
/* tern_reply_in_place: the range read when the handler returns (tern_native_invoke). */
static const void* g_in_place;
static uint32_t g_in_place_len;
static int g_in_place_set;
static int32_t CopyReply(const void* data, uint32_t len);

/* The captured failure (owned). */
static int32_t g_fail_code;
static char* g_fail_msg;

static int32_t g_log_level = TERN_LOG_INFO;
static uint64_t g_log_count;

static void ClearOutcome(void) {
  g_reply_len = 0;
  g_replied = 0;
  g_fail_code = 0;
  free(g_fail_msg);
  g_fail_msg = NULL;
}

void tern_native_set_request(const void* data, uint32_t len) {
  g_request = (const uint8_t*)data;
  g_request_len = data == NULL ? 0 : len;
}

void tern_native_reset(void) {
  g_request = NULL;
  g_request_len = 0;
  ClearOutcome();
}

int32_t tern_native_invoke(tern_native_handler handler) {
  ClearOutcome();
  g_in_place_set = 0;
  int32_t rc = handler();
  /* As the runtime does: an in-place reply is read after a successful return. */
  if (g_in_place_set && rc == TERN_OK && g_fail_code == 0) {
    g_in_place_set = 0;
    if (CopyReply(g_in_place, g_in_place_len) != TERN_OK) return TERN_RESOURCE_EXHAUSTED;
  }
  return g_fail_code != 0 ? g_fail_code : rc;
}

int32_t tern_native_reply(const void** data, uint32_t* len) {
  if (data != NULL) *data = g_reply_len == 0 ? (const void*)"" : (const void*)g_reply;
  if (len != NULL) *len = g_reply_len;
  return g_replied;
}

int32_t tern_native_failure(const char** msg) {
  if (msg != NULL) *msg = g_fail_msg != NULL ? g_fail_msg : "";
  return g_fail_code;
}

void tern_native_set_response_limit(uint32_t bytes) { g_response_limit = bytes; }

void tern_native_set_log_level(int32_t level) { g_log_level = level; }

uint64_t tern_native_log_count(void) { return g_log_count; }

/* --- the tern_v1 imports ---------------------------------------------------------- */

uint32_t tern_request_len(void) { return g_request_len; }

uint32_t tern_request_read(void* dst, uint32_t len, uint32_t offset) {
  if (offset >= g_request_len) return 0;
  uint32_t n = g_request_len - offset;
  if (n > len) n = len;
  memcpy(dst, g_request + offset, n);
  return n;
}

static int32_t CopyReply(const void* data, uint32_t len) {
  if (len > g_reply_cap) {
    uint8_t* grown = (uint8_t*)realloc(g_reply, len);
    if (grown == NULL) return TERN_RESOURCE_EXHAUSTED;
    g_reply = grown;
    g_reply_cap = len;
  }
  if (len != 0) memmove(g_reply, data, len);
  g_reply_len = len;
  g_replied = 1;
  return TERN_OK;
}

int32_t tern_reply(const void* data, uint32_t len) {
  if (len > g_response_limit) return TERN_RESOURCE_EXHAUSTED;
  g_in_place_set = 0; /* the last reply wins */
  return CopyReply(data, len);
}

int32_t tern_reply_in_place(const void* data, uint32_t len) {
  if (len > g_response_limit) return TERN_RESOURCE_EXHAUSTED;
  g_in_place = data;
  g_in_place_len = len;
  g_in_place_set = 1;
  return TERN_OK;
}

void tern_fail(int32_t code, const char* msg, uint32_t msg_len) {
  /* The ABI asks for a non-zero code; a zero would read as success, so report it as
   * TERN_UNKNOWN. */
  g_fail_code = code != 0 ? code : TERN_UNKNOWN;
  free(g_fail_msg);
  g_fail_msg = (char*)malloc((size_t)msg_len + 1);
  if (g_fail_msg != NULL) {
    if (msg_len != 0) memcpy(g_fail_msg, msg, msg_len);
    g_fail_msg[msg_len] = '\0';
  }
}

void tern_log(int32_t level, const char* msg, uint32_t msg_len) {
  static const char* const kNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
  ++g_log_count;
  if (level < g_log_level) return;
  const char* name = level >= 0 && level <= 3 ? kNames[level] : "LOG";
  fprintf(stderr, "[guest %s] %.*s\n", name, (int)msg_len, msg);
}

int64_t tern_clock_ns(int32_t clock) {
  struct timespec ts;
  clock_gettime(clock == TERN_CLOCK_REALTIME ? CLOCK_REALTIME : CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Calls to other services: a native build has no runtime to route them, so every call
 * fails to start with TERN_UNIMPLEMENTED (a guest must handle a failed call anyway). */
int32_t tern_call_start(const char* service, uint32_t service_len, const char* handler,
                        uint32_t handler_len, const void* req, uint32_t req_len,
                        uint32_t timeout_ms) {
  (void)service, (void)service_len, (void)handler, (void)handler_len, (void)req,
      (void)req_len, (void)timeout_ms;
  return -TERN_UNIMPLEMENTED;
}

/* Datasets: a native build has no store to read from. */
int64_t tern_data_read(const char* dataset, uint32_t dataset_len, const char* key,
                       uint32_t key_len, uint64_t offset, void* dst, uint32_t len) {
  (void)dataset, (void)dataset_len, (void)key, (void)key_len, (void)offset, (void)dst,
      (void)len;
  return -TERN_UNIMPLEMENTED;
}

int64_t tern_data_size(const char* dataset, uint32_t dataset_len, const char* key,
                       uint32_t key_len) {
  (void)dataset, (void)dataset_len, (void)key, (void)key_len;
  return -TERN_UNIMPLEMENTED;
}

int64_t tern_data_list(const char* dataset, uint32_t dataset_len, void* dst, uint32_t len) {
  (void)dataset, (void)dataset_len, (void)dst, (void)len;
  return -TERN_UNIMPLEMENTED;
}

int32_t tern_call_wait(int32_t call, uint32_t* len) {
  (void)call;
  if (len != NULL) *len = 0;
  return -TERN_NOT_FOUND;
}

uint32_t tern_call_read(int32_t call, void* dst, uint32_t len, uint32_t offset) {
  (void)call, (void)dst, (void)len, (void)offset;
  return 0;
}

void tern_call_close(int32_t call) { (void)call; }
