// ops/gemm_avx512.cpp - AVX-512 (F/BW/VL/DQ/VNNI) multi-token kernels for prefill: each weight
// block is decoded once and multiplied with up to 4 activation rows (tokens) while it sits in
// registers. This file alone is compiled with those flags and is only called after a CPUID check.
//
// Same arithmetic as the single-row kernels: integer parts exact (maddubs pair sums < 2^15,
// scale products and block sums in int32), the float accumulation order differs from the scalar
// reference only in how per-block terms are summed (bound: see tests/test_gemm.cpp).
// Self-contained (no inline helpers shared with other translation units, see
// vec_dot_x86_kernels.h for why).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "core/quant.h"
#include "ops/vec_dot_impl.h"

namespace lokal::detail {

namespace {

inline __m256i ld256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m512i ld512(const void* p) { return _mm512_loadu_si512(p); }

// Two 32-byte pieces into one 512-bit vector (a low, b high).
inline __m512i join(const void* a, const void* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(ld256(a)), ld256(b), 1);
}

// The 8 six-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K/Q5_K block.
inline __m128i k4_scales_mins(const uint8_t* s) {
  uint32_t u0, u1, u2;
  std::memcpy(&u0, s, 4);
  std::memcpy(&u1, s + 4, 4);
  std::memcpy(&u2, s + 8, 4);
  const uint32_t six = 0x3f3f3f3fu, lo = 0x0f0f0f0fu, top = 0x03030303u;
  const uint32_t sc03 = u0 & six, mn03 = u1 & six;
  const uint32_t sc47 = (u2 & lo) | (((u0 >> 6) & top) << 4);
  const uint32_t mn47 = ((u2 >> 4) & lo) | (((u1 >> 6) & top) << 4);
  return _mm_setr_epi32(static_cast<int>(sc03), static_cast<int>(sc47), static_cast<int>(mn03), static_cast<int>(mn47));
}

// ---------------------------------------------------------------------------------------------
// Q4_K / Q5_K, 1 row x T tokens. Chunk c (0..3) of a super-block = elements 64c .. 64c+63 =
// [low nibbles | high nibbles] of qs[32c .. 32c+31]: one 512-bit weight vector that lines up
// with a plain 64-byte load of the activation codes. Sub-block scale 2c covers the low half,
// 2c+1 the high half.
// ---------------------------------------------------------------------------------------------
template <int T, bool Five>
void q45k_1xT(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  const int64_t nb = n / QK_K;
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0f), bit4 = _mm512_set1_epi8(0x10);
  __m512i sidx[4];
  for (int c = 0; c < 4; ++c)
    sidx[c] = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(2 * c)), _mm256_set1_epi16(static_cast<short>(2 * c + 1)), 1);
  const __m256i midx = _mm256_setr_epi16(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t *scales, *qs, *qh = nullptr;
    uint16_t d16, dmin16;
    if constexpr (Five) {
      const auto& b = reinterpret_cast<const BlockQ5_K*>(w)[i];
      scales = b.scales, qs = b.qs, qh = b.qh, d16 = b.d, dmin16 = b.dmin;
    } else {
      const auto& b = reinterpret_cast<const BlockQ4_K*>(w)[i];
      scales = b.scales, qs = b.qs, d16 = b.d, dmin16 = b.dmin;
    }
    const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(scales));  // 8 scales | 8 mins
    const __m512i sm512 = _mm512_castsi256_si512(sm);
    __m512i sc[4], wv[4];
    for (int c = 0; c < 4; ++c) sc[c] = _mm512_permutexvar_epi16(sidx[c], sm512);
    const __m256i mn2 = _mm256_permutexvar_epi16(midx, sm);  // min j at int16 2j, 2j+1
    __m512i h2;
    if constexpr (Five) {
      const __m256i hb = ld256(qh);
      h2 = _mm512_inserti64x4(_mm512_castsi256_si512(hb), _mm256_srli_epi16(hb, 1), 1);
    }
    for (int c = 0; c < 4; ++c) {
      const __m256i q = ld256(qs + 32 * c);
      wv[c] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
      if constexpr (Five) {
        wv[c] = _mm512_or_si512(wv[c], _mm512_and_si512(_mm512_slli_epi16(h2, 4), bit4));
        h2 = _mm512_srli_epi16(h2, 2);
      }
    }
    const float d = _cvtsh_ss(d16), dmin = _cvtsh_ss(dmin16);
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
      __m512i sumi = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c)
        sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(wv[c], ld512(yb->qs + 64 * c)), sc[c]);
      const __m256i summs = _mm256_madd_epi16(ld256(yb->bsums), mn2);
      acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * yb->d), _mm512_cvtepi32_ps(sumi), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_set1_ps(dmin * yb->d), _mm512_zextps256_ps512(_mm256_cvtepi32_ps(summs)), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------------
// Q6_K, 1 row x T tokens. Group g (0, 1) of 128 elements: ql[64g .. 64g+63] low nibbles are
// columns 0 | 1, high nibbles columns 2 | 3; qh[32g ..] bits 2c..2c+1 are column c's top bits.
// [u0 | u1] lines up with q8[128g .. +63], [u2 | u3] with the next 64; each 128-bit lane is
// one 16-element sub-block. Codes are u - 32: sum = sum(u * q8) - 32 * sum(scale * bsums).
// ---------------------------------------------------------------------------------------------
template <int T>
void q6k_1xT(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  const auto* x = reinterpret_cast<const BlockQ6_K*>(w);
  const int64_t nb = n / QK_K;
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x30);
  const __m512i shl01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr23 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
  __m512i idx[4];
  for (int k = 0; k < 4; ++k) {
    const short b = static_cast<short>(4 * k);
    idx[k] = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(b)), _mm_set1_epi16(b + 1), 1)),
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(b + 2)), _mm_set1_epi16(b + 3), 1), 1);
  }
  for (int64_t i = 0; i < nb; ++i) {
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales)));
    const __m512i sc512 = _mm512_castsi256_si512(sc);
    __m512i u[4], s[4];
    for (int g = 0; g < 2; ++g) {
      const __m512i l = ld512(x[i].ql + 64 * g);
      const __m512i h = _mm512_broadcast_i64x4(ld256(x[i].qh + 32 * g));
      u[2 * g] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(h, shl01), m2));
      u[2 * g + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                     _mm512_and_si512(_mm512_srlv_epi16(h, shr23), m2));
    }
    for (int k = 0; k < 4; ++k) s[k] = _mm512_permutexvar_epi16(idx[k], sc512);
    const float d = _cvtsh_ss(x[i].d);
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
      const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc, ld256(yb->bsums)), 5);
      __m512i sumi = _mm512_castsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), off));
      sumi = _mm512_inserti64x4(sumi, _mm256_setzero_si256(), 1);
      for (int k = 0; k < 4; ++k) sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(u[k], ld512(yb->qs + 64 * k)), s[k]);
      acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * yb->d), _mm512_cvtepi32_ps(sumi), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------------
// 32-element formats against Q8_0 (Q4_0, Q5_0, Q8_0), 1 row x T tokens: two blocks per 512-bit
// vector. Weight codes are signed; the products go through dpbusd as |w| * (y with w's sign),
// the sign applied per token with a masked negate (exact: |w| <= 127 for Q8_0's quantizer
// codes -127..127 and the activation codes are in [-127, 127]; Q4_0/Q5_0 codes are small).
// ---------------------------------------------------------------------------------------------
inline __m512i nib2(const uint8_t* pa, const uint8_t* pb) {
  // [A.qs | B.qs] (16 bytes each) -> [A lo, A hi, B lo, B hi] nibbles.
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pa))),
                                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb)), 1);
  const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
  return _mm512_and_si512(_mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_set1_epi8(0x0f));
}

inline uint32_t lu32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Signed codes of blocks b, b+1 (64 int8).
template <typename BX>
inline __m512i codes2(const BX* x) {
  if constexpr (std::is_same_v<BX, BlockQ8_0>) {
    return join(x[0].qs, x[1].qs);
  } else if constexpr (std::is_same_v<BX, BlockQ4_0>) {
    return _mm512_sub_epi8(nib2(x[0].qs, x[1].qs), _mm512_set1_epi8(8));
  } else {  // Q5_0
    const uint64_t k = static_cast<uint64_t>(lu32(x[0].qh)) | (static_cast<uint64_t>(lu32(x[1].qh)) << 32);
    const __m512i u = _mm512_or_si512(nib2(x[0].qs, x[1].qs), _mm512_maskz_mov_epi8(static_cast<__mmask64>(k), _mm512_set1_epi8(0x10)));
    return _mm512_sub_epi8(u, _mm512_set1_epi8(16));
  }
}

template <typename B>
inline __m256 halves8(const B* b) {
  alignas(16) uint16_t h[8];
  for (int k = 0; k < 8; ++k) h[k] = b[k].d;
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
}

template <int T, typename BX>
void q32_1xT(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  const auto* x = reinterpret_cast<const BX*>(w);
  const int64_t nb = n / 32;
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  __m512i pidx[4];
  for (int p = 0; p < 4; ++p)
    pidx[p] = _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const __m256 dx = halves8(x + i);
    __m512i wa[4];
    __mmask64 neg[4];
    for (int p = 0; p < 4; ++p) {
      const __m512i c = codes2(x + i + 2 * p);
      neg[p] = _mm512_movepi8_mask(c);
      wa[p] = _mm512_abs_epi8(c);
    }
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_0*>(a + t * as) + i;
      const __m512 dd = _mm512_castps256_ps512(_mm256_mul_ps(dx, halves8(yb)));
      for (int p = 0; p < 4; ++p) {
        const __m512i yv = join(yb[2 * p].qs, yb[2 * p + 1].qs);
        const __m512i ys = _mm512_mask_sub_epi8(yv, neg[p], zero, yv);
        acc[t] = _mm512_fmadd_ps(_mm512_permutexvar_ps(pidx[p], dd), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wa[p], ys)),
                                 acc[t]);
      }
    }
  }
  // Tail blocks (fewer than 8): one pair / one block at a time.
  float tail[T] = {};
  for (; i < nb; ++i) {
    __m256i c;
    if constexpr (std::is_same_v<BX, BlockQ8_0>) {
      c = ld256(x[i].qs);
    } else {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs));
      __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                                   _mm256_set1_epi8(0x0f));
      if constexpr (std::is_same_v<BX, BlockQ5_0>) {
        u = _mm256_or_si256(u, _mm256_maskz_mov_epi8(static_cast<__mmask32>(lu32(x[i].qh)), _mm256_set1_epi8(0x10)));
        c = _mm256_sub_epi8(u, _mm256_set1_epi8(16));
      } else {
        c = _mm256_sub_epi8(u, _mm256_set1_epi8(8));
      }
    }
    const __mmask32 ng = _mm256_movepi8_mask(c);
    const __m256i wab = _mm256_abs_epi8(c);
    const float dxi = _cvtsh_ss(x[i].d);
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_0*>(a + t * as) + i;
      const __m256i yv = ld256(yb->qs);
      const __m256i ys = _mm256_mask_sub_epi8(yv, ng, _mm256_setzero_si256(), yv);
      const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wab, ys);
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      tail[t] += (dxi * _cvtsh_ss(yb->d)) * static_cast<float>(_mm_cvtsi128_si32(s4));
    }
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = _mm512_reduce_add_ps(acc[t]) + tail[t];
}

// ---------------------------------------------------------------------------------------------
// Float weights (F16, BF16, F32), R rows x T tokens: 16 elements per step, every converted
// weight vector used T times and activation vector R times. Sequential single-precision FMA per lane.
// ---------------------------------------------------------------------------------------------
template <DType W>
inline __m512 loadf16(const uint8_t* p) {
  if constexpr (W == DType::F16) return _mm512_cvtph_ps(ld256(p));
  else if constexpr (W == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ld256(p)), 16));
  else return _mm512_loadu_ps(p);
}
template <DType W>
inline float scalar_at(const uint8_t* p, int64_t k) {
  if constexpr (W == DType::F32) {
    float f;
    std::memcpy(&f, p + 4 * k, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, p + 2 * k, 2);
    if constexpr (W == DType::F16) return _cvtsh_ss(h);
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
}

template <DType W, int R, int T>
void float_RxT(int64_t n, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  constexpr int E = W == DType::F32 ? 4 : 2;  // bytes per element
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512 av[T];
    for (int t = 0; t < T; ++t) av[t] = loadf16<W>(a + t * as + E * k);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = loadf16<W>(w + r * ws + E * k);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, av[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[r][t]);
      for (int64_t j = k; j < n; ++j) s += scalar_at<W>(w + r * ws, j) * scalar_at<W>(a + t * as, j);
      y[t * ldy + r] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Tile drivers
// ---------------------------------------------------------------------------------------------
using Row1Fn = void (*)(int64_t, const uint8_t*, const uint8_t*, size_t, float*, int64_t);

template <Row1Fn K1, Row1Fn K2, Row1Fn K3, Row1Fn K4>
void tile_rows(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, size_t as, int64_t nt, float* y,
               int64_t ldy) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t0 = 0; t0 < nt; t0 += 4) {
    const int64_t T = nt - t0 < 4 ? nt - t0 : 4;
    const Row1Fn k = T == 4 ? K4 : T == 3 ? K3 : T == 2 ? K2 : K1;
    for (int64_t r = 0; r < nr; ++r) k(n, wb + r * ws, ab + t0 * as, as, y + t0 * ldy + r, ldy);
  }
}

template <template <int> class K>
constexpr VecDotTileFn tile_of() {
  return tile_rows<K<1>::run, K<2>::run, K<3>::run, K<4>::run>;
}

template <bool Five>
struct Q45K {
  template <int T>
  struct K {
    static void run(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
      q45k_1xT<T, Five>(n, w, a, as, y, ldy);
    }
  };
};
template <int T>
struct Q6K {
  static void run(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
    q6k_1xT<T>(n, w, a, as, y, ldy);
  }
};
template <typename BX>
struct Q32 {
  template <int T>
  struct K {
    static void run(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
      q32_1xT<T, BX>(n, w, a, as, y, ldy);
    }
  };
};

// Float tiles: 4 rows x up to 6 tokens (24 accumulators): each converted weight vector is used
// 6 times, each activation vector 4 times (4 x 4 converted 8 vectors per 16 FMAs, 4 x 6 converts
// 10 per 24; ~4-7% faster single-threaded on TinyLlama shapes, bench/bench_gemm.cpp).
template <DType W, int T>
void float_rows(int64_t n, const uint8_t* wb, size_t ws, int64_t nr, const uint8_t* at, size_t as, float* yt,
                int64_t ldy) {
  constexpr int R = 4;
  int64_t r = 0;
  for (; r + R <= nr; r += R) float_RxT<W, R, T>(n, wb + r * ws, ws, at, as, yt + r, ldy);
  for (; r < nr; ++r) float_RxT<W, 1, T>(n, wb + r * ws, ws, at, as, yt + r, ldy);
}

template <DType W>
void tile_float(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, size_t as, int64_t nt, float* y,
                int64_t ldy) {
  constexpr int64_t kTokens = 6;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t0 = 0; t0 < nt; t0 += kTokens) {
    const uint8_t* at = ab + t0 * as;
    float* yt = y + t0 * ldy;
    switch (nt - t0 < kTokens ? nt - t0 : kTokens) {
      case 6: float_rows<W, 6>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 5: float_rows<W, 5>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 4: float_rows<W, 4>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 3: float_rows<W, 3>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 2: float_rows<W, 2>(n, wb, ws, nr, at, as, yt, ldy); break;
      default: float_rows<W, 1>(n, wb, ws, nr, at, as, yt, ldy); break;
    }
  }
}

}  // namespace

void fill_avx512_gemm(KernelSet& ks) {
  ks.tile[tid(DType::Q4_K)] = tile_of<Q45K<false>::K>();
  ks.tile[tid(DType::Q5_K)] = tile_of<Q45K<true>::K>();
  ks.tile[tid(DType::Q6_K)] = tile_of<Q6K>();
  ks.tile[tid(DType::Q8_0)] = tile_of<Q32<BlockQ8_0>::K>();
  ks.tile[tid(DType::Q4_0)] = tile_of<Q32<BlockQ4_0>::K>();
  ks.tile[tid(DType::Q5_0)] = tile_of<Q32<BlockQ5_0>::K>();
  ks.tile[tid(DType::F16)] = tile_float<DType::F16>;
  ks.tile[tid(DType::BF16)] = tile_float<DType::BF16>;
  ks.tile[tid(DType::F32)] = tile_float<DType::F32>;
}

}  // namespace lokal::detail
