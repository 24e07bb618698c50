/* kernels: stateless compute kernels for the "wasm vs native" benchmark. The same
 * source is built to wasm (tern_add_guest) and natively (tern_add_native_guest); both
 * must return identical bytes for the same request.
 *
 * Input data is generated in the guest with a 32-bit LCG,
 *   x[k+1] = 1664525 * x[k] + 1013904223  (mod 2^32),
 * once per size and kept, so a benchmark times the kernel and not the generator.
 *
 * Handlers (binary requests and replies, little-endian):
 *   sum_filter  request: u32 n [, i32 threshold (default 0)]. Values v[i] = (int32)x[i+1]
 *               for i < n, from x[0] = 0x5eed0001. Reply: i64, the sum of the v[i] that
 *               are > threshold (8 bytes).
 *   sha256      request: u32 n (KiB, <= 262144). Bytes: x[1], x[2], ... from
 *               x[0] = 0x5eed0002, each written as 4 little-endian bytes; the first
 *               n*1024 of them. Reply: their SHA-256 digest (32 bytes).
 * Both fail TERN_INVALID_ARGUMENT on a malformed request and TERN_RESOURCE_EXHAUSTED if
 * the data does not fit in memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern/tern.h"

#define kSumSeed 0x5eed0001u
#define kShaSeed 0x5eed0002u
#define kMaxSumN (64u * 1024u * 1024u) /* 256 MiB of int32 */
#define kMaxShaKib (256u * 1024u)      /* 256 MiB */

static int32_t Fail(int32_t code, const char* msg) {
  tern_fail(code, msg, (uint32_t)strlen(msg));
  return code;
}

static uint32_t Lcg(uint32_t x) { return x * 1664525u + 1013904223u; }

static uint32_t LoadU32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void StoreU32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/* Reads a request of `min`..`max` bytes into buf. Returns its length or -1. */
static int32_t ReadRequest(uint8_t* buf, uint32_t min, uint32_t max) {
  uint32_t len = tern_request_len();
  if (len < min || len > max) return -1;
  return (int32_t)tern_request_read(buf, len, 0);
}

/* --- sum_filter ------------------------------------------------------------------- */

static int32_t* g_values;
static uint32_t g_values_n;

TERN_EXPORT(sum_filter) int32_t kernels_sum_filter(void) {
  uint8_t req[8];
  int32_t len = ReadRequest(req, 4, 8);
  if (len != 4 && len != 8) {
    return Fail(TERN_INVALID_ARGUMENT, "sum_filter: request is u32 n [, i32 threshold]");
  }
  uint32_t n = LoadU32(req);
  int32_t threshold = len == 8 ? (int32_t)LoadU32(req + 4) : 0;
  if (n > kMaxSumN) return Fail(TERN_INVALID_ARGUMENT, "sum_filter: n > 67108864");
  if (n > g_values_n) {
    int32_t* grown = (int32_t*)realloc(g_values, (size_t)n * sizeof(int32_t));
    if (grown == NULL) return Fail(TERN_RESOURCE_EXHAUSTED, "sum_filter: out of memory");
    uint32_t x = kSumSeed;
    for (uint32_t i = 0; i < n; ++i) {
      x = Lcg(x);
      grown[i] = (int32_t)x;
    }
    g_values = grown;
    g_values_n = n;
  }
  int64_t sum = 0;
  for (uint32_t i = 0; i < n; ++i) {
    int32_t v = g_values[i];
    sum += v > threshold ? v : 0;
  }
  uint8_t out[8];
  StoreU32(out, (uint32_t)(uint64_t)sum);
  StoreU32(out + 4, (uint32_t)((uint64_t)sum >> 32));
  return tern_reply(out, sizeof(out));
}

/* --- SHA-256 (FIPS 180-4) --------------------------------------------------------- */

typedef struct Sha256 {
  uint32_t h[8];
  uint8_t block[64];
  uint32_t block_len;
  uint64_t total_len;
} Sha256;

static const uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void Sha256Init(Sha256* s) {
  static const uint32_t kInit[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, kInit, sizeof(kInit));
  s->block_len = 0;
  s->total_len = 0;
}

static void Sha256Compress(uint32_t h[8], const uint8_t* p) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i) {
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
           (uint32_t)p[4 * i + 3];
  }
  for (int i = 16; i < 64; ++i) {
    uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (int i = 0; i < 64; ++i) {
    uint32_t s1 = Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25);
    uint32_t ch = (e & f) ^ (~e & g);
    uint32_t t1 = k + s1 + ch + kK[i] + w[i];
    uint32_t s0 = Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22);
    uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    uint32_t t2 = s0 + maj;
    k = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += k;
}

static void Sha256Update(Sha256* s, const uint8_t* data, size_t len) {
  s->total_len += len;
  if (s->block_len != 0) {
    size_t take = 64 - s->block_len;
    if (take > len) take = len;
    if (take != 0) memcpy(s->block + s->block_len, data, take);
    s->block_len += (uint32_t)take;
    data += take;
    len -= take;
    if (s->block_len < 64) return;
    Sha256Compress(s->h, s->block);
    s->block_len = 0;
  }
  for (; len >= 64; data += 64, len -= 64) Sha256Compress(s->h, data);
  if (len != 0) memcpy(s->block, data, len);
  s->block_len = (uint32_t)len;
}

static void Sha256Final(Sha256* s, uint8_t digest[32]) {
  uint64_t bits = s->total_len * 8;
  uint8_t pad[72] = {0x80};
  size_t pad_len = (s->block_len < 56 ? 56 : 120) - s->block_len;
  for (int i = 0; i < 8; ++i) pad[pad_len + i] = (uint8_t)(bits >> (56 - 8 * i));
  Sha256Update(s, pad, pad_len + 8);
  for (int i = 0; i < 8; ++i) {
    digest[4 * i] = (uint8_t)(s->h[i] >> 24);
    digest[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
    digest[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
    digest[4 * i + 3] = (uint8_t)s->h[i];
  }
}

/* --- sha256 handler ------------------------------------------------------------------ */

static uint8_t* g_bytes;
static uint32_t g_bytes_len;

TERN_EXPORT(sha256) int32_t kernels_sha256(void) {
  uint8_t req[4];
  if (ReadRequest(req, 4, 4) != 4) return Fail(TERN_INVALID_ARGUMENT, "sha256: request is u32 n");
  uint32_t kib = LoadU32(req);
  if (kib > kMaxShaKib) return Fail(TERN_INVALID_ARGUMENT, "sha256: n > 262144 KiB");
  uint32_t len = kib * 1024;
  if (len > g_bytes_len) {
    uint8_t* grown = (uint8_t*)realloc(g_bytes, len);
    if (grown == NULL) return Fail(TERN_RESOURCE_EXHAUSTED, "sha256: out of memory");
    uint32_t x = kShaSeed;
    for (uint32_t off = 0; off < len; off += 4) {
      x = Lcg(x);
      StoreU32(grown + off, x);
    }
    g_bytes = grown;
    g_bytes_len = len;
  }
  Sha256 s;
  Sha256Init(&s);
  Sha256Update(&s, g_bytes, len);
  uint8_t digest[32];
  Sha256Final(&s, digest);
  return tern_reply(digest, sizeof(digest));
}
