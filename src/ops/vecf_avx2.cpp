// AVX2 + FMA + F16C versions of ops/vecf.h. Compiled with -mavx2 -mfma -mf16c; only reached
// after a runtime CPU check.
#include <immintrin.h>

#include <cstring>

#include "ops/vecf.h"

namespace lokal {

namespace {
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline __m256 load_h(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
float dot_f16(const float* a, const uint16_t* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_h(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_h(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_h(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * _cvtsh_ss(b[i]);
  return s;
}
void axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}
void axpy_f16(float alpha, const uint16_t* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_h(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * _cvtsh_ss(x[i]);
}
void scale(float* y, float s, int64_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vs));
  for (; i < n; ++i) y[i] *= s;
}
void f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_h(x + i));
  for (; i < n; ++i) y[i] = _cvtsh_ss(x[i]);
}

// Whole tile in one call: 16 values per step, two steps in flight (64-value head segments are 4 steps).
void f16_rows_to_f32(const uint16_t* x, size_t x_stride, int64_t rows, int64_t n, float* y) {
  for (int64_t r = 0; r < rows; ++r, y += n) {
    const uint16_t* xr = reinterpret_cast<const uint16_t*>(reinterpret_cast<const uint8_t*>(x) + r * x_stride);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256 a = load_h(xr + i), b = load_h(xr + i + 8);
      _mm256_storeu_ps(y + i, a);
      _mm256_storeu_ps(y + i + 8, b);
    }
    for (; i < n; ++i) y[i] = _cvtsh_ss(xr[i]);
  }
}

// Q8_0 block: fp16 scale, then 32 int8 values (core/quant.h BlockQ8_0, 34 bytes).
void q8_0_to_f32(const void* blocks, float* y, int64_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += 32, b += 34, y += 32) {
    uint16_t dh;
    std::memcpy(&dh, b, 2);
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
  }
}

// Eight rows at a time: eight independent FMA chains (two FMA units x 4 cycles of latency) sharing
// each load of qt; then four, then one.
void qk_tile8(const float* qt, const float* k, int64_t ldk, int64_t hd, int64_t nt, float* s) {
  int64_t j = 0;
  for (; j + 8 <= nt; j += 8) {
    const float* k0 = k + j * ldk;
    __m256 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      const __m256 q = _mm256_loadu_ps(qt + d * 8);
      for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(k0 + r * ldk + d), q, a[r]);
    }
    for (int r = 0; r < 8; ++r) _mm256_storeu_ps(s + (j + r) * 8, a[r]);
  }
  for (; j + 4 <= nt; j += 4) {
    const float* k0 = k + j * ldk;
    const float* k1 = k0 + ldk;
    const float* k2 = k1 + ldk;
    const float* k3 = k2 + ldk;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      const __m256 q = _mm256_loadu_ps(qt + d * 8);
      a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(k0 + d), q, a0);
      a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(k1 + d), q, a1);
      a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(k2 + d), q, a2);
      a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(k3 + d), q, a3);
    }
    _mm256_storeu_ps(s + j * 8, a0);
    _mm256_storeu_ps(s + j * 8 + 8, a1);
    _mm256_storeu_ps(s + j * 8 + 16, a2);
    _mm256_storeu_ps(s + j * 8 + 24, a3);
  }
  for (; j < nt; ++j) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) a = _mm256_fmadd_ps(_mm256_broadcast_ss(k + j * ldk + d), _mm256_loadu_ps(qt + d * 8), a);
    _mm256_storeu_ps(s + j * 8, a);
  }
}

// exp(x) for 8 floats: x = n ln2 + r (|r| <= ln2/2, ln2 split in two for precision), exp(r) by a degree-6
// polynomial (Taylor; relative error < 2e-7 on that range), 2^n built in the exponent bits. Inputs are
// clamped to [-87.3, 88.3], so exp(-inf) = exp(-87.3) ~ 1e-38 (treated as 0 by every caller: it only
// multiplies zeros or is added to sums of at least 1).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

void softmax_tile8(float* s, int64_t nt, float* m, float* l, float* corr) {
  const __m256 m_old = _mm256_loadu_ps(m);
  __m256 mx = m_old;
  for (int64_t j = 0; j < nt; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j * 8));
  const __m256 c = exp8(_mm256_sub_ps(m_old, mx));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < nt; ++j) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j * 8), mx));
    _mm256_storeu_ps(s + j * 8, e);
    sum = _mm256_add_ps(sum, e);
  }
  _mm256_storeu_ps(corr, c);
  _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), c, sum));
  _mm256_storeu_ps(m, mx);
}

// Per head, the accumulator row in registers (64 floats = 8 chains) across all rows of the tile.
void pv_tile8(const float* p, int nh, const float* v, int64_t ldv, int64_t nt, int64_t hdv, float* acc, int64_t ldacc) {
  for (int h = 0; h < nh; ++h) {
    float* a = acc + h * ldacc;
    int64_t c = 0;
    for (; c + 64 <= hdv; c += 64) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(a + c + 8 * i);
      for (int64_t j = 0; j < nt; ++j) {
        const __m256 w = _mm256_broadcast_ss(p + j * 8 + h);
        const float* vr = v + j * ldv + c;
        for (int i = 0; i < 8; ++i) r[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * i), r[i]);
      }
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(a + c + 8 * i, r[i]);
    }
    for (; c + 8 <= hdv; c += 8) {
      __m256 r = _mm256_loadu_ps(a + c);
      for (int64_t j = 0; j < nt; ++j) r = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j * 8 + h), _mm256_loadu_ps(v + j * ldv + c), r);
      _mm256_storeu_ps(a + c, r);
    }
    for (; c < hdv; ++c) {
      float r = a[c];
      for (int64_t j = 0; j < nt; ++j) r += p[j * 8 + h] * v[j * ldv + c];
      a[c] = r;
    }
  }
}

const VecF kAvx2 = {dot,         dot_f16,         axpy,     axpy_f16,      scale,    f16_to_f32,
                    q8_0_to_f32, f16_rows_to_f32, qk_tile8, softmax_tile8, pv_tile8, "avx2"};
}  // namespace

const VecF* detail::vecf_avx2() { return &kAvx2; }

}  // namespace lokal
