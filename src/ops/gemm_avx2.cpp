// ops/gemm_avx2.cpp - AVX2 + FMA + F16C multi-token kernels for prefill (see gemm_avx512.cpp):
// each weight block is decoded once and multiplied with up to 4 activation rows (tokens).
// This file alone is compiled with -mavx2 -mfma -mf16c; it is only called after a CPUID check.
// The AVX-512 kernel set keeps these for the types gemm_avx512.cpp does not cover.
//
// Integer parts exact (maddubs pair sums < 2^15: unsigned codes <= 63 or |w| <= 128 times
// activation codes in [-127, 127]; madd/scale products in int32); only the float accumulation
// order differs from the scalar reference. Self-contained (anonymous namespace only).
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "core/quant.h"
#include "ops/vec_dot_impl.h"

namespace lokal::detail {

namespace {

inline __m256i ld256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i ld128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline uint32_t lu32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
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

// Broadcast int16 element e (0..7) of a 128-bit lane to every int16 of both lanes.
inline __m256i bcast16(__m256i v_both_lanes, int e) {
  return _mm256_shuffle_epi8(v_both_lanes, _mm256_set1_epi16(static_cast<short>(((2 * e + 1) << 8) | (2 * e))));
}

// ---------------------------------------------------------------------------------------------
// Q4_K / Q5_K, 1 row x T tokens: sub-block j (32 elements) = low (j even) or high (j odd)
// nibbles of qs[32 (j/2) ..], decoded once, then maddubs + madd(scale j) for each token.
// ---------------------------------------------------------------------------------------------
template <int T, bool Five>
void q45k_1xT(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  const int64_t nb = n / QK_K;
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
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
    const __m128i sm8 = k4_scales_mins(scales);
    const __m128i sc16 = _mm_cvtepu8_epi16(sm8);                     // 8 scales
    const __m128i mn16 = _mm_cvtepu8_epi16(_mm_srli_si128(sm8, 8));  // 8 mins
    const __m256i scs = _mm256_set_m128i(sc16, sc16);
    const __m256i mn2 = _mm256_set_m128i(_mm_unpackhi_epi16(mn16, mn16), _mm_unpacklo_epi16(mn16, mn16));
    __m256i hb;
    if constexpr (Five) hb = ld256(qh);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i q = ld256(qs + 32 * (j / 2));
      __m256i u = (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
      if constexpr (Five) {
        const __m256i hj = j <= 4 ? _mm256_slli_epi16(hb, 4 - j) : _mm256_srli_epi16(hb, j - 4);
        u = _mm256_or_si256(u, _mm256_and_si256(hj, bit4));
      }
      const __m256i s = bcast16(scs, j);
      for (int t = 0; t < T; ++t) {
        const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, ld256(yb->qs + 32 * j)), s));
      }
    }
    const float d = _cvtsh_ss(d16), dmin = _cvtsh_ss(dmin16);
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
      const __m256i summs = _mm256_madd_epi16(ld256(yb->bsums), mn2);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yb->d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * yb->d), _mm256_cvtepi32_ps(summs), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = hsum8(acc[t]);
}

// ---------------------------------------------------------------------------------------------
// Q6_K, 1 row x T tokens: column k (32 elements) of group g = k / 4, c = k % 4; codes u - 32.
// ---------------------------------------------------------------------------------------------
template <int T>
void q6k_1xT(int64_t n, const uint8_t* w, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  const auto* x = reinterpret_cast<const BlockQ6_K*>(w);
  const int64_t nb = n / QK_K;
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
  for (int64_t i = 0; i < nb; ++i) {
    const __m256i sc = _mm256_cvtepi8_epi16(ld128(x[i].scales));
    const __m256i sc_lo = _mm256_permute2x128_si256(sc, sc, 0x00), sc_hi = _mm256_permute2x128_si256(sc, sc, 0x11);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
      sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc, ld256(yb->bsums)), 5));
    }
    for (int k = 0; k < 8; ++k) {
      const int g = k / 4, c = k % 4;
      const __m256i l = ld256(x[i].ql + 64 * g + 32 * (c & 1));
      const __m256i h = ld256(x[i].qh + 32 * g);
      const __m256i lo = c < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
      __m256i hi;
      switch (c) {
        case 0: hi = _mm256_slli_epi16(h, 4); break;
        case 1: hi = _mm256_slli_epi16(h, 2); break;
        case 2: hi = h; break;
        default: hi = _mm256_srli_epi16(h, 2); break;
      }
      const __m256i u = _mm256_or_si256(lo, _mm256_and_si256(hi, m2));
      // Scales 2k (low 128-bit lane) and 2k+1 (high lane).
      const __m256i src = k < 4 ? sc_lo : sc_hi;
      const int e = 2 * (k & 3);
      const __m256i s = _mm256_shuffle_epi8(
          src, _mm256_setr_epi8(2 * e, 2 * e + 1, 2 * e, 2 * e + 1, 2 * e, 2 * e + 1, 2 * e, 2 * e + 1, 2 * e, 2 * e + 1,
                                2 * e, 2 * e + 1, 2 * e, 2 * e + 1, 2 * e, 2 * e + 1, 2 * e + 2, 2 * e + 3, 2 * e + 2,
                                2 * e + 3, 2 * e + 2, 2 * e + 3, 2 * e + 2, 2 * e + 3, 2 * e + 2, 2 * e + 3, 2 * e + 2,
                                2 * e + 3, 2 * e + 2, 2 * e + 3, 2 * e + 2, 2 * e + 3));
      for (int t = 0; t < T; ++t) {
        const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, ld256(yb->qs + 32 * k)), s));
      }
    }
    const float d = _cvtsh_ss(x[i].d);
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + t * as) + i;
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * yb->d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = hsum8(acc[t]);
}

// ---------------------------------------------------------------------------------------------
// Q4_0 / Q5_0 / Q8_0 against Q8_0, 1 row x T tokens: |w| (decoded once) times y with w's sign.
// ---------------------------------------------------------------------------------------------
template <typename BX>
inline __m256i codes(const BX& x) {
  if constexpr (std::is_same_v<BX, BlockQ8_0>) {
    return ld256(x.qs);
  } else {
    const __m128i v = ld128(x.qs);
    __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                                 _mm256_set1_epi8(0x0f));
    if constexpr (std::is_same_v<BX, BlockQ5_0>) {
      const __m256i spread = _mm256_shuffle_epi8(
          _mm256_set1_epi32(static_cast<int>(lu32(x.qh))),
          _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL, 0x0303030303030303LL));
      const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
      const __m256i bits = _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
      u = _mm256_or_si256(u, _mm256_and_si256(bits, _mm256_set1_epi8(0x10)));
      return _mm256_sub_epi8(u, _mm256_set1_epi8(16));
    } else {
      return _mm256_sub_epi8(u, _mm256_set1_epi8(8));
    }
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
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const __m256 dx = halves8(x + i);
    __m256 dd[T];
    for (int t = 0; t < T; ++t) dd[t] = _mm256_mul_ps(dx, halves8(reinterpret_cast<const BlockQ8_0*>(a + t * as) + i));
    for (int k = 0; k < 8; ++k) {
      const __m256i c = codes(x[i + k]);
      const __m256i wa = _mm256_sign_epi8(c, c);
      const __m256i kk = _mm256_set1_epi32(k);
      for (int t = 0; t < T; ++t) {
        const auto* yb = reinterpret_cast<const BlockQ8_0*>(a + t * as) + i + k;
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(ld256(yb->qs), c)), ones);
        acc[t] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dd[t], kk), _mm256_cvtepi32_ps(p), acc[t]);
      }
    }
  }
  for (; i < nb; ++i) {
    const __m256i c = codes(x[i]);
    const __m256i wa = _mm256_sign_epi8(c, c);
    const float dxi = _cvtsh_ss(x[i].d);
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_0*>(a + t * as) + i;
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(ld256(yb->qs), c)), ones);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dxi * _cvtsh_ss(yb->d)), _mm256_cvtepi32_ps(p), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ldy] = hsum8(acc[t]);
}

// ---------------------------------------------------------------------------------------------
// Float weights (F16, BF16, F32), R rows x T tokens, 8 elements per step.
// ---------------------------------------------------------------------------------------------
template <DType W>
inline __m256 loadf8(const uint8_t* p) {
  if constexpr (W == DType::F16) return _mm256_cvtph_ps(ld128(p));
  else if constexpr (W == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(p)), 16));
  else return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
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
  constexpr int E = W == DType::F32 ? 4 : 2;
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 av[T];
    for (int t = 0; t < T; ++t) av[t] = loadf8<W>(a + t * as + E * k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = loadf8<W>(w + r * ws + E * k);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, av[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = hsum8(acc[r][t]);
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

template <DType W>
void tile_float(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, size_t as, int64_t nt, float* y,
                int64_t ldy) {
  constexpr int R = 2;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t0 = 0; t0 < nt; t0 += 4) {
    const int64_t T = nt - t0 < 4 ? nt - t0 : 4;
    const uint8_t* at = ab + t0 * as;
    float* yt = y + t0 * ldy;
    int64_t r = 0;
    for (; r + R <= nr; r += R) {
      const uint8_t* wr = wb + r * ws;
      switch (T) {
        case 4: float_RxT<W, R, 4>(n, wr, ws, at, as, yt + r, ldy); break;
        case 3: float_RxT<W, R, 3>(n, wr, ws, at, as, yt + r, ldy); break;
        case 2: float_RxT<W, R, 2>(n, wr, ws, at, as, yt + r, ldy); break;
        default: float_RxT<W, R, 1>(n, wr, ws, at, as, yt + r, ldy); break;
      }
    }
    for (; r < nr; ++r) {
      const uint8_t* wr = wb + r * ws;
      switch (T) {
        case 4: float_RxT<W, 1, 4>(n, wr, ws, at, as, yt + r, ldy); break;
        case 3: float_RxT<W, 1, 3>(n, wr, ws, at, as, yt + r, ldy); break;
        case 2: float_RxT<W, 1, 2>(n, wr, ws, at, as, yt + r, ldy); break;
        default: float_RxT<W, 1, 1>(n, wr, ws, at, as, yt + r, ldy); break;
      }
    }
  }
}

}  // namespace

void fill_avx2_gemm(KernelSet& ks) {
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
