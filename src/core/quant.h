// core/quant.h - block layouts of the quantized types and their scalar reference
// quantize/dequantize. Byte-compatible with GGUF files written by llama.cpp.
// (Dot products against the activation partner type live in ops/vec_dot.h.)
#pragma once
#include <cstdint>

#include "core/types.h"

namespace lokal {

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32, QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

// d, m are IEEE half bits.
struct BlockQ4_0 { uint16_t d; uint8_t qs[QK4_0 / 2]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[QK4_1 / 2]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[QK8_0]; };
struct BlockQ8_1 { uint16_t d, s; int8_t qs[QK8_1]; };  // s = d * sum(qs)
struct BlockQ2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; };
struct BlockQ3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct BlockQ6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };
struct BlockQ8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

// Scalar reference dequantization of n elements (n a multiple of the block size) for every
// supported type (F32, F16, BF16, Q4_0 ... Q6_K, and Q8_K). Bit-exact with ggml's to_float.
void dequantize_row(DType type, const void* src, float* dst, int64_t n);

// Scalar reference quantization of n elements, round-to-nearest (no importance weights), for
// every type above plus the activation types Q8_1 and Q8_K. Produces the same bytes as ggml's
// quantize_row_*_ref for the same input.
void quantize_row(DType type, const float* src, void* dst, int64_t n);

// Importance-weighted quantization of one row of n elements (core/quant_imatrix.cpp): `importance` holds n
// finite non-negative floats (an importance matrix row: mean squared activation per column). Minimizes, block by
// block, sum_j w_j (x_j - q_j)^2 with w = importance_weights(x, importance), and never writes a block with a higher
// weighted error than quantize_row's. Same block layouts as quantize_row. Q8_0 (and a null importance) give
// exactly quantize_row's bytes. Throws lokal::Error for a row length that is not a multiple of the block size or
// a bad importance value.
void quantize_row_weighted(DType type, const float* src, void* dst, int64_t n, const float* importance);

// The per-element error weights of quantize_row_weighted: w_j = max(imp_j, 1e-6 * max imp) * sqrt(sigma2 + x_j^2),
// sigma2 = mean of x^2 over the row (the x-dependent factor puts more weight on large weights, as llama.cpp does).
void importance_weights(const float* x, const float* importance, int64_t n, float* w);

// sum_j w_j (x_j - dequantized_j)^2 for a quantized row of n elements.
float quant_weighted_error(DType type, const void* row, const float* x, const float* w, int64_t n);

}  // namespace lokal
