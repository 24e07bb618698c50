#include "core/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tern {

namespace {

// Tables for slicing-by-8 (8 bytes per step), computed at compile time.
struct CrcTables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  constexpr CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
  }
};
constexpr CrcTables kCrc;

constexpr uint32_t kPoly = 0x82F63B78u;  // bit-reflected: bit 31 is x^0, bit 0 is x^31

// a(x) · b(x) mod P, both bit-reflected as the CRC register is.
constexpr uint32_t MulModP(uint32_t a, uint32_t b) {
  uint32_t p = 0;
  for (uint32_t m = 1u << 31; m != 0; m >>= 1) {  // a's coefficients of x^0, x^1, ...
    if ((a & m) != 0) p ^= b;
    b = (b & 1) != 0 ? (b >> 1) ^ kPoly : b >> 1;  // b ·= x
  }
  return p;
}

// x^(2^k) mod P for k = 0..63.
struct XPowers {
  uint32_t t[64]{};
  constexpr XPowers() {
    uint32_t p = 1u << 30;  // x^1
    for (uint32_t& e : t) {
      e = p;
      p = MulModP(p, p);
    }
  }
};
constexpr XPowers kXPow;

// x^(8 n) mod P: multiplying the register by it runs n zero bytes through it.
uint32_t XPow8n(uint64_t n) {
  uint32_t p = 1u << 31;  // x^0
  for (int k = 3; n != 0 && k < 64; n >>= 1, ++k) {
    if ((n & 1) != 0) p = MulModP(kXPow.t[k], p);
  }
  return p;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of 3 cycles and a throughput of one per cycle: one
// dependency chain runs at a third of what the CPU can do (~6 GB/s here). So long inputs
// go as interleaved lanes of kLane bytes each (four per 4 KiB, then three while 3 KiB
// are left), whose CRCs are combined: the CRC
// register is linear over GF(2), so crc(A||B) = shift(crc(A), |B|) ^ crc0(B), where
// crc0 starts from a zero register and shift(r, n) is r after n zero bytes — here a
// table lookup per byte of r (the operator for kLane bytes, precomputed).
constexpr size_t kLane = 1024;

__attribute__((target("sse4.2"))) uint64_t Crc32cRun(uint64_t c, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  return c;
}

// shift(r, kLane) for r = the byte b at position k (0..3) of the register.
struct LaneShift {
  uint32_t t[4][256];
};

__attribute__((target("sse4.2"))) LaneShift MakeLaneShift() {
  LaneShift s{};
  static const uint8_t kZeros[kLane] = {};
  for (int k = 0; k < 4; ++k) {
    for (uint32_t b = 0; b < 256; ++b) {
      s.t[k][b] = static_cast<uint32_t>(Crc32cRun(uint64_t{b} << (8 * k), kZeros, kLane));
    }
  }
  return s;
}

uint32_t ShiftLane(const LaneShift& s, uint32_t r) {
  return s.t[0][r & 0xff] ^ s.t[1][(r >> 8) & 0xff] ^ s.t[2][(r >> 16) & 0xff] ^ s.t[3][r >> 24];
}

__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const uint8_t* p, size_t n,
                                                          uint32_t crc) {
  uint64_t c = ~crc & 0xffffffffu;
  if (n >= 3 * kLane) {
    static const LaneShift shift = MakeLaneShift();
    // Four lanes per 4 KiB (a page: the migration's batches are checksummed a page at
    // a time, right after the page was copied), three for what is left.
    while (n >= 4 * kLane) {
      uint64_t c1 = 0, c2 = 0, c3 = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        uint64_t v0, v1, v2, v3;
        std::memcpy(&v0, p + i, 8);
        std::memcpy(&v1, p + kLane + i, 8);
        std::memcpy(&v2, p + 2 * kLane + i, 8);
        std::memcpy(&v3, p + 3 * kLane + i, 8);
        c = __builtin_ia32_crc32di(c, v0);
        c1 = __builtin_ia32_crc32di(c1, v1);
        c2 = __builtin_ia32_crc32di(c2, v2);
        c3 = __builtin_ia32_crc32di(c3, v3);
      }
      uint32_t r = ShiftLane(shift, static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1);
      r = ShiftLane(shift, r) ^ static_cast<uint32_t>(c2);
      c = ShiftLane(shift, r) ^ static_cast<uint32_t>(c3);
      p += 4 * kLane;
      n -= 4 * kLane;
    }
    while (n >= 3 * kLane) {
      uint64_t c1 = 0, c2 = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        uint64_t v0, v1, v2;
        std::memcpy(&v0, p + i, 8);
        std::memcpy(&v1, p + kLane + i, 8);
        std::memcpy(&v2, p + 2 * kLane + i, 8);
        c = __builtin_ia32_crc32di(c, v0);
        c1 = __builtin_ia32_crc32di(c1, v1);
        c2 = __builtin_ia32_crc32di(c2, v2);
      }
      c = ShiftLane(shift, ShiftLane(shift, static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1)) ^
          static_cast<uint32_t>(c2);
      p += 3 * kLane;
      n -= 3 * kLane;
    }
  }
  c = Crc32cRun(c, p, n);
  p += n & ~size_t{7};
  n &= 7;
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n > 0) {
    c32 = __builtin_ia32_crc32qi(c32, *p++);
    --n;
  }
  return ~c32;
}

// One pass over a 4 KiB page: each 64-byte line of each of the four lanes is loaded
// once, run through its lane's CRC (the same lanes and combination as Crc32cHardware,
// so the result is identical) and streamed to the destinations.
__attribute__((target("sse4.2"))) uint32_t Crc32cCopyPageHardware(const uint8_t* p,
                                                                  uint8_t* d1, uint8_t* d2,
                                                                  uint32_t crc) {
  static const LaneShift shift = MakeLaneShift();
  uint64_t c[4] = {~crc & 0xffffffffu, 0, 0, 0};
  for (size_t i = 0; i < kLane; i += 64) {
    for (size_t q = 0; q < 4; ++q) {
      const size_t o = q * kLane + i;
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + o));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + o + 16));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + o + 32));
      const __m128i f = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + o + 48));
      uint64_t x = c[q];
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_cvtsi128_si64(a)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_extract_epi64(a, 1)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_cvtsi128_si64(b)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_extract_epi64(b, 1)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_cvtsi128_si64(e)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_extract_epi64(e, 1)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_cvtsi128_si64(f)));
      x = __builtin_ia32_crc32di(x, static_cast<uint64_t>(_mm_extract_epi64(f, 1)));
      c[q] = x;
      _mm_stream_si128(reinterpret_cast<__m128i*>(d1 + o), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d1 + o + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d1 + o + 32), e);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d1 + o + 48), f);
      if (d2 != nullptr) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(d2 + o), a);
        _mm_stream_si128(reinterpret_cast<__m128i*>(d2 + o + 16), b);
        _mm_stream_si128(reinterpret_cast<__m128i*>(d2 + o + 32), e);
        _mm_stream_si128(reinterpret_cast<__m128i*>(d2 + o + 48), f);
      }
    }
  }
  uint32_t r = ShiftLane(shift, static_cast<uint32_t>(c[0])) ^ static_cast<uint32_t>(c[1]);
  r = ShiftLane(shift, r) ^ static_cast<uint32_t>(c[2]);
  return ~(ShiftLane(shift, r) ^ static_cast<uint32_t>(c[3]));
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  const auto& t = kCrc.t;
  crc = ~crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian hosts (x86-64, aarch64)
    w ^= crc;
    crc = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
          t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  // The register is linear over GF(2): running B through it from crc_a's register gives
  // crc_a · x^(8 |B|) xor what B gives from zero; the pre- and post-inversions cancel.
  if (len_b == 0) return crc_a;
  return MulModP(crc_a, XPow8n(len_b)) ^ crc_b;
}

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
#if defined(__x86_64__)
  if (HasSse42()) return Crc32cHardware(static_cast<const uint8_t*>(data), n, crc);
#endif
  return Crc32cPortable(data, n, crc);
}

uint32_t Crc32cCopyPage(const void* src, void* dst, void* dst2, uint32_t crc) {
  constexpr size_t kPage = 4096;
#if defined(__x86_64__)
  static_assert(kPage == 4 * kLane);
  const bool aligned = (reinterpret_cast<uintptr_t>(dst) & 15) == 0 &&
                       (reinterpret_cast<uintptr_t>(dst2) & 15) == 0;
  if (aligned && HasSse42()) {
    return Crc32cCopyPageHardware(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst),
                                  static_cast<uint8_t*>(dst2), crc);
  }
#endif
  crc = Crc32c(src, kPage, crc);
  std::memcpy(dst, src, kPage);
  if (dst2 != nullptr) std::memcpy(dst2, src, kPage);
  return crc;
}

}  // namespace tern
