// A guest that goes through wasi-libc: stdio, clocks, randomness, exit.
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE 1
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tern/tern.h"

// printf to stdout and stderr (fd_write through the WASI stubs).
TERN_EXPORT(hello) int32_t hello(void) {
  printf("hello, %s\n", "stdout");
  fflush(stdout);
  fprintf(stderr, "hello, stderr\n");
  return 0;
}

// Replies with CLOCK_MONOTONIC and CLOCK_REALTIME (2 x 8 bytes).
TERN_EXPORT(time) int32_t time_handler(void) {
  struct timespec ts[2];
  clock_gettime(CLOCK_MONOTONIC, &ts[0]);
  clock_gettime(CLOCK_REALTIME, &ts[1]);
  int64_t ns[2] = {ts[0].tv_sec * 1000000000LL + ts[0].tv_nsec,
                   ts[1].tv_sec * 1000000000LL + ts[1].tv_nsec};
  tern_reply(ns, sizeof(ns));
  return 0;
}

// Replies with 32 random bytes.
TERN_EXPORT(random) int32_t random_handler(void) {
  uint8_t b[32];
  if (getentropy(b, sizeof(b)) != 0) return TERN_INTERNAL;
  tern_reply(b, sizeof(b));
  return 0;
}

// Replies with getenv("HOME") or "(none)".
TERN_EXPORT(env) int32_t env(void) {
  const char* h = getenv("HOME");
  if (h == NULL) h = "(none)";
  const char* e = h;
  while (*e) ++e;
  tern_reply(h, (uint32_t)(e - h));
  return 0;
}

// Calls exit(3) (WASI proc_exit).
TERN_EXPORT(exit) int32_t exit_handler(void) { exit(3); }
