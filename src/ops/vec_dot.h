// ops/vec_dot.h - dot products of a weight row (any supported type) with an activation row
// in that type's partner format, as llama.cpp computes them:
//   F32 -> F32, F16 -> F16, BF16 -> BF16, Q4_0/Q5_0/Q8_0 -> Q8_0, Q4_1/Q5_1 -> Q8_1,
//   Q2_K..Q6_K -> Q8_K.
// Quantizing the activations to 8 bits and multiplying in integers is what makes CPU decode
// fast; it also reproduces llama.cpp's numerics closely. Each function has a scalar reference
// (always built) and SIMD variants chosen at runtime by CPU features.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/types.h"

namespace lokal {

// Partner (activation) type of weight type w. Throws for unsupported weight types.
DType vec_dot_type(DType w);

// Convert n floats into w's partner format (dst must hold row_size(vec_dot_type(w), n) bytes).
void quantize_activation(DType w, const float* x, void* dst, int64_t n);

// sum_i wrow[i] * act[i] over n elements (n a multiple of the block size of w).
float vec_dot(DType w, int64_t n, const void* wrow, const void* act);

// Multi-token tile (prefill): y[t * ldy + r] = vec_dot(w, n, wrow_r, act_t) for every weight
// row r in [0, nr) (rows w_stride bytes apart) and activation row t in [0, nt) (rows a_stride
// bytes apart). The SIMD kernels decode each weight block once and use it for up to 4 tokens;
// integer parts are exact, only the float accumulation order differs from vec_dot (the same
// bound as vec_dot applies). Types without a tile kernel loop over vec_dot.
void vec_dot_tile(DType w, int64_t n, const void* wrows, size_t w_stride, int64_t nr, const void* act,
                  size_t a_stride, int64_t nt, float* y, int64_t ldy);
// True when the active kernel set has a dedicated multi-token kernel for w.
bool vec_dot_has_tile(DType w);

// Scalar reference versions (tests compare the dispatched versions against these).
void quantize_activation_ref(DType w, const float* x, void* dst, int64_t n);
float vec_dot_ref(DType w, int64_t n, const void* wrow, const void* act);
// vec_dot_ref for every (row, token) pair of a tile.
void vec_dot_tile_ref(DType w, int64_t n, const void* wrows, size_t w_stride, int64_t nr, const void* act,
                      size_t a_stride, int64_t nt, float* y, int64_t ldy);

// Name of the kernel set chosen at runtime ("avx512", "avx2", "scalar").
// The environment variable LOKAL_FORCE_SCALAR=1 forces "scalar" at startup; LOKAL_ISA=<name>
// asks for a given set (ignored if the CPU lacks it).
const char* vec_dot_isa();

// Switch kernel sets at runtime ("scalar", "avx2", "avx512", or "best"). Returns false (and
// changes nothing) if the name is unknown or the CPU lacks the instructions. Not meant to be
// called while other threads are inside vec_dot (tests and benchmarks only).
bool set_vec_dot_isa(const char* name);

}  // namespace lokal
