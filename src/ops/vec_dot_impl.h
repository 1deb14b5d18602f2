// ops/vec_dot_impl.h - internal: the kernel tables behind ops/vec_dot.h.
//
// Each instruction-set file (vec_dot_avx2.cpp, vec_dot_avx512.cpp) fills a KernelSet; entries it
// leaves null fall back to the scalar reference. Tables are indexed by the weight type id.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/types.h"

namespace lokal::detail {

using VecDotFn = float (*)(int64_t n, const void* wrow, const void* act);
using QuantActFn = void (*)(const float* x, void* dst, int64_t n);
// Multi-token tile: y[t * ldy + r] = dot(w + r * w_stride, a + t * a_stride) for r in [0, nr),
// t in [0, nt) (any nr, nt >= 1). Decodes each weight block once per group of tokens.
using VecDotTileFn = void (*)(int64_t n, const void* w, size_t w_stride, int64_t nr, const void* a, size_t a_stride,
                              int64_t nt, float* y, int64_t ldy);

// Packed (16-row interleaved, ops/packed.h) groups x tokens: y[t * ldy + 16 g + i] for g in [0, ng),
// t in [0, nt); activations are BlockQ8S rows.
using PackedFn = void (*)(int64_t n, const void* groups, size_t g_stride, int64_t ng, const void* a, size_t a_stride,
                          int64_t nt, float* y, int64_t ldy);

constexpr int kMaxTypeId = 40;

struct KernelSet {
  const char* name = "scalar";
  VecDotFn dot[kMaxTypeId] = {};
  QuantActFn quant[kMaxTypeId] = {};  // activation quantizer for weight type id
  VecDotTileFn tile[kMaxTypeId] = {};  // multi-token kernels (null: per-pair loop over dot)
  PackedFn packed[kMaxTypeId] = {};    // packed-layout kernels (null: the scalar reference)
};

static inline int tid(DType t) { return static_cast<int>(t); }

// Scalar reference kernels (vec_dot.cpp).
void fill_scalar(KernelSet& ks);

// Per-ISA kernel sets; each fills only what it implements (entries already set by
// the scalar table stay). Defined in their own translation units, compiled with ISA flags.
// They must only be called when the CPU supports the ISA.
void fill_avx2(KernelSet& ks);
void fill_avx512(KernelSet& ks);
// Multi-token (prefill) kernels: gemm_avx2.cpp, gemm_avx512.cpp (called by fill_avx2/fill_avx512).
void fill_avx2_gemm(KernelSet& ks);
void fill_avx512_gemm(KernelSet& ks);
// Packed-layout kernels: packed_avx512.cpp (called by fill_avx512).
void fill_avx512_packed(KernelSet& ks);
// BF16 dot products with vdpbf16ps: bf16_avx512.cpp (added to the avx512 set when the CPU has AVX512_BF16).
void fill_avx512_bf16(KernelSet& ks);

}  // namespace lokal::detail
