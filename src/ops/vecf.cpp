#include "ops/vecf.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "core/quant.h"
#include "ops/vec_dot.h"

namespace lokal {

namespace {
float dot_ref(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
float dot_f16_ref(const float* a, const uint16_t* b, int64_t n) {
  const float* t = fp16_table();
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * t[b[i]];
  return s;
}
void axpy_ref(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
void axpy_f16_ref(float alpha, const uint16_t* x, float* y, int64_t n) {
  const float* t = fp16_table();
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * t[x[i]];
}
void scale_ref(float* y, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}
void f16_to_f32_ref(const uint16_t* x, float* y, int64_t n) {
  const float* t = fp16_table();
  for (int64_t i = 0; i < n; ++i) y[i] = t[x[i]];
}
void q8_0_to_f32_ref(const void* blocks, float* y, int64_t n) { dequantize_row(DType::Q8_0, blocks, y, n); }
void qk_tile8_ref(const float* qt, const float* k, int64_t ldk, int64_t hd, int64_t nt, float* s) {
  for (int64_t j = 0; j < nt; ++j)
    for (int h = 0; h < 8; ++h) {
      float a = 0.0f;
      for (int64_t d = 0; d < hd; ++d) a += k[j * ldk + d] * qt[d * 8 + h];
      s[j * 8 + h] = a;
    }
}
void softmax_tile8_ref(float* s, int64_t nt, float* m, float* l, float* corr) {
  for (int h = 0; h < 8; ++h) {
    float mx = m[h];
    for (int64_t j = 0; j < nt; ++j) mx = std::max(mx, s[j * 8 + h]);
    corr[h] = std::exp(m[h] - mx);  // 0 on the first tile (m = -inf)
    float sum = 0.0f;
    for (int64_t j = 0; j < nt; ++j) sum += (s[j * 8 + h] = std::exp(s[j * 8 + h] - mx));
    l[h] = l[h] * corr[h] + sum;
    m[h] = mx;
  }
}
void pv_tile8_ref(const float* p, int nh, const float* v, int64_t ldv, int64_t nt, int64_t hdv, float* acc,
                  int64_t ldacc) {
  for (int h = 0; h < nh; ++h)
    for (int64_t j = 0; j < nt; ++j)
      for (int64_t d = 0; d < hdv; ++d) acc[h * ldacc + d] += p[j * 8 + h] * v[j * ldv + d];
}
void f16_rows_to_f32_ref(const uint16_t* x, size_t x_stride, int64_t rows, int64_t n, float* y) {
  for (int64_t r = 0; r < rows; ++r)
    f16_to_f32_ref(reinterpret_cast<const uint16_t*>(reinterpret_cast<const uint8_t*>(x) + r * x_stride), y + r * n, n);
}
const VecF kRef = {dot_ref,         dot_f16_ref,  axpy_ref,          axpy_f16_ref, scale_ref, f16_to_f32_ref,
                   q8_0_to_f32_ref, f16_rows_to_f32_ref, qk_tile8_ref, softmax_tile8_ref, pv_tile8_ref, "scalar"};
}  // namespace

const VecF& vecf_ref() { return kRef; }

const VecF& vecf() {
  // Follow the quantized kernels' choice so one switch (LOKAL_FORCE_SCALAR, LOKAL_ISA,
  // set_vec_dot_isa) controls every kernel.
  if (std::strcmp(vec_dot_isa(), "scalar") == 0) return kRef;
  static const VecF* simd = [] {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? detail::vecf_avx2() : &kRef;
  }();
  return *simd;
}

}  // namespace lokal
