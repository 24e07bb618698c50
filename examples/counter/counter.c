/* counter: a stateful service. Its state is a signed 64-bit counter plus an optional
 * "fill" area, a chain of heap blocks of pseudo-random bytes with a running checksum,
 * used to make the state (linear memory) as large as a snapshot or migration benchmark
 * needs and to verify afterwards that every byte came through.
 *
 * Handlers (requests and replies are ASCII text):
 *   incr   request: optional decimal amount (default 1; may be negative; surrounding
 *          whitespace ignored). Reply: the new value. Fails TERN_INVALID_ARGUMENT on
 *          a malformed amount, TERN_OUT_OF_RANGE if the value would overflow.
 *   get    reply: the value.
 *   reset  sets the value to 0 and drops the fill area. Reply: "0".
 *   fill   request: decimal number of KiB (1..1048576) to append to the fill area,
 *          optionally followed by a percentage P (0..100, default 0): the share of
 *          each 4 KiB of fill that is text-like (repetitive, compresses well) rather
 *          than pseudo-random. Reply: the checksum of the whole fill area, 16
 *          lowercase hex digits.
 *   check  recomputes the checksum over the fill area. Reply: the checksum (as for
 *          fill; after a `touch`, the position-weighted sum below); fails
 *          TERN_DATA_LOSS (15) if it differs from the one kept.
 *   touch  request: optional decimal number of words N (default 4, at most 4096).
 *          Adds 1 to the value and rewrites N pseudo-random 8-byte words of the fill
 *          area (a few scattered page writes per request: the dirty rate of a migration
 *          benchmark), keeping a second checksum (a sum over positions) up to date so
 *          that `check` still verifies every byte. Reply: the new value.
 *
 * All state lives in linear memory (globals and malloc), so it survives snapshot,
 * restore and migration as it is. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern/tern.h"

#define kMaxFillKib (1024u * 1024u) /* 1 GiB per request */

/* One block of the fill area; `len` bytes of data follow the header. */
typedef struct Block {
  struct Block* next;
  uint64_t len; /* a multiple of 8 */
} Block;

static int64_t g_value;
static Block* g_head;
static Block* g_tail;
static uint64_t g_fill_bytes;
static uint64_t g_fill_words; /* 8-byte words written so far: the generator position */
#define kChecksumSeed 0x6a09e667f3bcc908ull
static uint64_t g_checksum = kChecksumSeed; /* of the whole fill area, in block order */
/* Sum over every fill word of PosHash(position, word): unlike g_checksum it can be
 * updated in O(1) when a word changes (touch). */
static uint64_t g_sum;
static uint64_t g_touches; /* words rewritten by touch; g_checksum holds only while 0 */

/* --- helpers ------------------------------------------------------------------------ */

static int32_t Fail(int32_t code, const char* msg) {
  tern_fail(code, msg, (uint32_t)strlen(msg));
  return code;
}

/* Reads the request into `buf` (NUL-terminated). Returns its length, or -1 if it does
 * not fit. */
static int32_t ReadSmallRequest(char* buf, uint32_t cap) {
  uint32_t len = tern_request_len();
  if (len >= cap) return -1;
  uint32_t got = len == 0 ? 0 : tern_request_read(buf, len, 0);
  buf[got] = '\0';
  return (int32_t)got;
}

static int IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Parses an optionally signed decimal integer with optional surrounding whitespace.
 * Returns 1 on success, 0 if malformed or out of int64 range. An all-blank text gives
 * `dflt`. */
static int ParseInt64(const char* s, int64_t dflt, int64_t* out) {
  while (IsSpace(*s)) ++s;
  if (*s == '\0') {
    *out = dflt;
    return 1;
  }
  int negative = 0;
  if (*s == '-' || *s == '+') negative = *s++ == '-';
  if (*s < '0' || *s > '9') return 0;
  uint64_t mag = 0;
  const uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; *s >= '0' && *s <= '9'; ++s) {
    uint64_t d = (uint64_t)(*s - '0');
    if (mag > (limit - d) / 10) return 0;
    mag = mag * 10 + d;
  }
  while (IsSpace(*s)) ++s;
  if (*s != '\0') return 0;
  *out = negative ? (int64_t)(0 - mag) : (int64_t)mag;
  return 1;
}

static int32_t ReplyInt64(int64_t v) {
  char buf[24];
  char* p = buf + sizeof(buf);
  uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + mag % 10);
    mag /= 10;
  } while (mag != 0);
  if (v < 0) *--p = '-';
  return tern_reply(p, (uint32_t)(buf + sizeof(buf) - p));
}

static int32_t ReplyHex64(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  char buf[16];
  for (int i = 15; i >= 0; --i) {
    buf[i] = kDigits[v & 15];
    v >>= 4;
  }
  return tern_reply(buf, sizeof(buf));
}

/* splitmix64: the fill generator, a function of the word's position. */
static uint64_t FillWord(uint64_t position) {
  uint64_t z = position * 0x9e3779b97f4a7c15ull + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t PosHash(uint64_t position, uint64_t w) {
  return FillWord(w ^ (position * 0xd6e8feb86659fd93ull));
}

/* The word at `position` of a fill with `pct` percent compressible: in each run of 512
 * words (4 KiB), the first 512 * (100 - pct) / 100 are splitmix64, the rest repeat an
 * ASCII word (varying every 4 KiB, so pages differ) that LZ4 shrinks to almost nothing. */
static uint64_t MixedWord(uint64_t position, uint32_t pct) {
  const uint64_t random_words = 512u * (100u - pct) / 100u;
  if (position % 512u < random_words) return FillWord(position);
  return 0x2d7265746e756f63ull ^ ((position / 512u) & 0x0f); /* "counter-" */
}

/* Folds one 8-byte word into the running checksum. */
static uint64_t Mix(uint64_t h, uint64_t w) {
  h ^= w * 0xff51afd7ed558ccdull;
  h = (h << 27) | (h >> 37);
  return h * 0x100000001b3ull + 0x9e3779b97f4a7c15ull;
}

static uint64_t ChecksumBlock(uint64_t h, const Block* b) {
  const uint8_t* data = (const uint8_t*)(b + 1);
  for (uint64_t off = 0; off < b->len; off += 8) {
    uint64_t w;
    memcpy(&w, data + off, 8);
    h = Mix(h, w);
  }
  return h;
}

static void DropFill(void) {
  while (g_head != NULL) {
    Block* next = g_head->next;
    free(g_head);
    g_head = next;
  }
  g_tail = NULL;
  g_fill_bytes = 0;
  g_fill_words = 0;
  g_checksum = kChecksumSeed;
  g_sum = 0;
  g_touches = 0;
}

/* --- handlers ----------------------------------------------------------------------- */

TERN_EXPORT(incr) int32_t counter_incr(void) {
  char buf[64];
  int64_t amount;
  if (ReadSmallRequest(buf, sizeof(buf)) < 0 || !ParseInt64(buf, 1, &amount)) {
    return Fail(TERN_INVALID_ARGUMENT, "incr: the request must be a decimal integer");
  }
  int64_t next;
  if (__builtin_add_overflow(g_value, amount, &next)) {
    return Fail(TERN_OUT_OF_RANGE, "incr: the counter would overflow");
  }
  g_value = next;
  return ReplyInt64(g_value);
}

TERN_EXPORT(get) int32_t counter_get(void) { return ReplyInt64(g_value); }

TERN_EXPORT(reset) int32_t counter_reset(void) {
  g_value = 0;
  DropFill();
  return ReplyInt64(0);
}

TERN_EXPORT(fill) int32_t counter_fill(void) {
  char buf[32];
  int64_t kib;
  int64_t pct = 0;
  int ok = ReadSmallRequest(buf, sizeof(buf)) >= 0;
  if (ok) {
    /* "KIB" or "KIB PCT": split at the first blank after the count. */
    char* p = buf;
    while (IsSpace(*p)) ++p;
    while (*p != '\0' && !IsSpace(*p)) ++p;
    char* rest = p;
    if (*p != '\0') *rest++ = '\0';
    ok = ParseInt64(buf, -1, &kib) && ParseInt64(rest, 0, &pct) && pct >= 0 && pct <= 100;
  }
  if (!ok || kib < 1 || kib > (int64_t)kMaxFillKib) {
    return Fail(TERN_INVALID_ARGUMENT,
                "fill: the request must be a KiB count, 1..1048576, and optionally a "
                "percentage 0..100");
  }
  uint64_t len = (uint64_t)kib * 1024;
  if (len > SIZE_MAX - sizeof(Block)) {
    return Fail(TERN_RESOURCE_EXHAUSTED, "fill: too large for this address space");
  }
  Block* b = (Block*)malloc(sizeof(Block) + (size_t)len);
  if (b == NULL) return Fail(TERN_RESOURCE_EXHAUSTED, "fill: out of memory");
  b->next = NULL;
  b->len = len;
  uint8_t* data = (uint8_t*)(b + 1);
  for (uint64_t off = 0; off < len; off += 8) {
    uint64_t pos = g_fill_words++;
    uint64_t w = pct == 0 ? FillWord(pos) : MixedWord(pos, (uint32_t)pct);
    memcpy(data + off, &w, 8);
    g_sum += PosHash(pos, w);
  }
  g_checksum = ChecksumBlock(g_checksum, b);
  if (g_tail == NULL) {
    g_head = b;
  } else {
    g_tail->next = b;
  }
  g_tail = b;
  g_fill_bytes += len;
  return ReplyHex64(g_touches == 0 ? g_checksum : g_sum);
}

TERN_EXPORT(check) int32_t counter_check(void) {
  uint64_t h = kChecksumSeed;
  uint64_t sum = 0;
  uint64_t bytes = 0;
  uint64_t pos = 0;
  for (const Block* b = g_head; b != NULL; b = b->next) {
    h = ChecksumBlock(h, b);
    const uint8_t* data = (const uint8_t*)(b + 1);
    for (uint64_t off = 0; off < b->len; off += 8) {
      uint64_t w;
      memcpy(&w, data + off, 8);
      sum += PosHash(pos++, w);
    }
    bytes += b->len;
  }
  if ((g_touches == 0 && h != g_checksum) || sum != g_sum || bytes != g_fill_bytes) {
    return Fail(TERN_DATA_LOSS, "check: the fill area does not match its checksum");
  }
  return ReplyHex64(g_touches == 0 ? h : sum);
}

TERN_EXPORT(touch) int32_t counter_touch(void) {
  char buf[32];
  int64_t n;
  if (ReadSmallRequest(buf, sizeof(buf)) < 0 || !ParseInt64(buf, 4, &n) || n < 0 || n > 4096) {
    return Fail(TERN_INVALID_ARGUMENT, "touch: the request must be a word count, 0..4096");
  }
  if (g_value == INT64_MAX) return Fail(TERN_OUT_OF_RANGE, "touch: the value would overflow");
  ++g_value;
  const uint64_t words = g_fill_bytes / 8;
  for (int64_t i = 0; i < n && words > 0; ++i) {
    uint64_t r = FillWord(0x5eed0000u + g_touches++);
    uint64_t target = r % words;
    /* Find the block holding word `target` (blocks are few: one per fill request). */
    uint64_t first = 0;
    Block* b = g_head;
    while (first + b->len / 8 <= target) {
      first += b->len / 8;
      b = b->next;
    }
    uint8_t* at = (uint8_t*)(b + 1) + (target - first) * 8;
    uint64_t old, w = r ^ g_touches;
    memcpy(&old, at, 8);
    memcpy(at, &w, 8);
    g_sum += PosHash(target, w) - PosHash(target, old);
  }
  return ReplyInt64(g_value);
}

#if !defined(__wasm__)
/* Native builds only: flips one byte of the fill area so that a test can see `check`
 * fail. Returns 0 if there is no fill area. */
int32_t counter_CorruptFillForTest(void) {
  if (g_head == NULL) return 0;
  ((uint8_t*)(g_head + 1))[g_head->len / 2] ^= 0x40;
  return 1;
}
#endif
