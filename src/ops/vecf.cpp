#include "ops/vecf.h"

#include <cstring>

#include "core/fp16.h"
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
const VecF kRef = {dot_ref, dot_f16_ref, axpy_ref, axpy_f16_ref, scale_ref, "scalar"};
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
