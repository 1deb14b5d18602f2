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

// Scalar reference versions (tests compare the dispatched versions against these).
void quantize_activation_ref(DType w, const float* x, void* dst, int64_t n);
float vec_dot_ref(DType w, int64_t n, const void* wrow, const void* act);

// Name of the kernel set chosen at runtime ("avx512", "avx2", "scalar").
// The environment variable LOKAL_FORCE_SCALAR=1 forces "scalar" at startup; LOKAL_ISA=<name>
// asks for a given set (ignored if the CPU lacks it).
const char* vec_dot_isa();

// Switch kernel sets at runtime ("scalar", "avx2", "avx512", or "best"). Returns false (and
// changes nothing) if the name is unknown or the CPU lacks the instructions. Not meant to be
// called while other threads are inside vec_dot (tests and benchmarks only).
bool set_vec_dot_isa(const char* name);

}  // namespace lokal
