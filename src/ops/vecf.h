// ops/vecf.h - float vector primitives used by attention and norms: dot products and
// axpy on F32 and F16 rows. Scalar reference plus an AVX2/FMA/F16C variant chosen at runtime
// (the scalar one is used when the CPU lacks AVX2 or LOKAL_FORCE_SCALAR / set_vec_dot_isa
// selected "scalar").
#pragma once
#include <cstdint>

namespace lokal {

struct VecF {
  float (*dot)(const float* a, const float* b, int64_t n);
  float (*dot_f16)(const float* a, const uint16_t* b, int64_t n);       // b: IEEE half bits
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);       // y += alpha * x
  void (*axpy_f16)(float alpha, const uint16_t* x, float* y, int64_t n);
  void (*scale)(float* y, float s, int64_t n);                          // y *= s
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
