// ops/bf16_avx512.cpp - BF16 weights x BF16 activations with AVX512-BF16 (vdpbf16ps): 32 products
// per instruction, no conversions. This file alone is compiled with -mavx512bf16 and is only
// called when CPUID reports AVX512_BF16 (fill_avx512 -> fill_avx512_bf16).
//
// vdpbf16ps adds the two products of each pair of bf16 elements into its f32 lane, one after the
// other, each rounded to nearest even (the products of two bf16 are exact in f32). So the rounding
// count per element is that of an FMA loop; only the summation order differs from the scalar
// reference (bound: tests/test_vec_dot.cpp, tests/test_gemm.cpp). The instruction treats subnormal
// inputs as zero and flushes subnormal results: terms below ~1e-38 are dropped, far below the
// rounding error of any sum of model activations.
//
// Prefill: 4 rows x up to 6 tokens (24 accumulators), each weight vector used 6 times, each
// activation vector 4 times, 32 elements per step.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "ops/vec_dot_impl.h"

namespace lokal::detail {

namespace {

inline __m512bh load_bh(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }

inline float bf16_value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float dot_bf16_dp(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    s0 = _mm512_dpbf16_ps(s0, load_bh(x + i), load_bh(y + i));
    s1 = _mm512_dpbf16_ps(s1, load_bh(x + i + 32), load_bh(y + i + 32));
    s2 = _mm512_dpbf16_ps(s2, load_bh(x + i + 64), load_bh(y + i + 64));
    s3 = _mm512_dpbf16_ps(s3, load_bh(x + i + 96), load_bh(y + i + 96));
  }
  for (; i + 32 <= n; i += 32) s0 = _mm512_dpbf16_ps(s0, load_bh(x + i), load_bh(y + i));
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  for (; i < n; ++i) s += bf16_value(x[i]) * bf16_value(y[i]);
  return s;
}

// R weight rows (ws bytes apart) x T activation rows (as bytes apart) -> y[t * ldy + r].
template <int R, int T>
void bf16_RxT(int64_t n, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const auto row = [](const uint8_t* base, size_t stride, int i) {
    return reinterpret_cast<const uint16_t*>(base + static_cast<size_t>(i) * stride);
  };
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    __m512bh av[T];
    for (int t = 0; t < T; ++t) av[t] = load_bh(row(a, as, t) + k);
    for (int r = 0; r < R; ++r) {
      const __m512bh wv = load_bh(row(w, ws, r) + k);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, av[t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = _mm512_reduce_add_ps(acc[r][t]);
      for (int64_t j = k; j < n; ++j) s += bf16_value(row(w, ws, r)[j]) * bf16_value(row(a, as, t)[j]);
      y[t * ldy + r] = s;
    }
}

template <int T>
void bf16_rows(int64_t n, const uint8_t* wb, size_t ws, int64_t nr, const uint8_t* at, size_t as, float* yt,
               int64_t ldy) {
  constexpr int R = 4;
  int64_t r = 0;
  for (; r + R <= nr; r += R) bf16_RxT<R, T>(n, wb + r * ws, ws, at, as, yt + r, ldy);
  for (; r < nr; ++r) bf16_RxT<1, T>(n, wb + r * ws, ws, at, as, yt + r, ldy);
}

void tile_bf16_dp(int64_t n, const void* w, size_t ws, int64_t nr, const void* a, size_t as, int64_t nt, float* y,
                  int64_t ldy) {
  constexpr int64_t kTokens = 6;
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t0 = 0; t0 < nt; t0 += kTokens) {
    const uint8_t* at = ab + t0 * as;
    float* yt = y + t0 * ldy;
    switch (nt - t0 < kTokens ? nt - t0 : kTokens) {
      case 6: bf16_rows<6>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 5: bf16_rows<5>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 4: bf16_rows<4>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 3: bf16_rows<3>(n, wb, ws, nr, at, as, yt, ldy); break;
      case 2: bf16_rows<2>(n, wb, ws, nr, at, as, yt, ldy); break;
      default: bf16_rows<1>(n, wb, ws, nr, at, as, yt, ldy); break;
    }
  }
}

}  // namespace

void fill_avx512_bf16(KernelSet& ks) {
  ks.dot[tid(DType::BF16)] = dot_bf16_dp;
  ks.tile[tid(DType::BF16)] = tile_bf16_dp;
}

}  // namespace lokal::detail
