// ops/vecf.h - float vector primitives used by attention and norms: dot products and
// axpy on F32 and F16 rows. Scalar reference plus an AVX2/FMA/F16C variant chosen at runtime
// (the scalar one is used when the CPU lacks AVX2 or LOKAL_FORCE_SCALAR / set_vec_dot_isa
// selected "scalar").
#pragma once
#include <cstddef>
#include <cstdint>

namespace lokal {

struct VecF {
  float (*dot)(const float* a, const float* b, int64_t n);
  float (*dot_f16)(const float* a, const uint16_t* b, int64_t n);       // b: IEEE half bits
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);       // y += alpha * x
  void (*axpy_f16)(float alpha, const uint16_t* x, float* y, int64_t n);
  void (*scale)(float* y, float s, int64_t n);                          // y *= s
  void (*f16_to_f32)(const uint16_t* x, float* y, int64_t n);
  void (*q8_0_to_f32)(const void* blocks, float* y, int64_t n);         // n: a multiple of 32 (Q8_0 blocks)
  // A tile of F16 row segments: y[r*n + i] = x[r*x_stride/2 + i] for r < rows, i < n (x_stride in bytes).
  void (*f16_rows_to_f32)(const uint16_t* x, size_t x_stride, int64_t rows, int64_t n, float* y);

  // Attention tiles for a block of up to 8 query heads that share one KV head ("lanes" = heads):
  // qk_tile8: s[j*8 + h] = sum_d k[j*ldk + d] * qt[d*8 + h] for j < nt (qt: the queries transposed, [hd][8]).
  void (*qk_tile8)(const float* qt, const float* k, int64_t ldk, int64_t hd, int64_t nt, float* s);
  // softmax_tile8: the online-softmax step over a tile of scores s[j*8 + h] (j < nt), per lane h: new max
  // m' = max(m, s_j), corr = exp(m - m'), s_j = exp(s_j - m'), l = l * corr + sum_j s_j, m = m'.
  // m (-inf before the first tile), l and corr are 8 floats each.
  void (*softmax_tile8)(float* s, int64_t nt, float* m, float* l, float* corr);
  // pv_tile8: acc[h*ldacc + d] += sum_j p[j*8 + h] * v[j*ldv + d] for h < nh (<= 8), d < hdv, j < nt.
  void (*pv_tile8)(const float* p, int nh, const float* v, int64_t ldv, int64_t nt, int64_t hdv, float* acc,
                   int64_t ldacc);
  const char* name;
};

// The kernel set for this CPU (chosen on first use, consistent with vec_dot_isa()).
const VecF& vecf();
// The scalar reference set (tests compare against it).
const VecF& vecf_ref();

namespace detail {
const VecF* vecf_avx2();  // defined in vecf_avx2.cpp (compiled with -mavx2 -mfma -mf16c)
}

}  // namespace lokal
