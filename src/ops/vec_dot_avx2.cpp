// ops/vec_dot_avx2.cpp - AVX2 + FMA + F16C kernels (this file alone is compiled with
// -mavx2 -mfma -mf16c; it is only called after a CPUID check). The kernels themselves are in
// vec_dot_x86_kernels.h, shared with the AVX-512 build of the same code.
#define LOKAL_KERNELS_VNNI 0
#include "ops/vec_dot_x86_kernels.h"

namespace lokal::detail {

void fill_avx2(KernelSet& ks) {
  fill_x86_common(ks);
  fill_avx2_gemm(ks);
}

}  // namespace lokal::detail
