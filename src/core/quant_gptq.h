// core/quant_gptq.h - error-feedback quantization of weight rows (GPTQ / OPTQ) into the standard block layouts.
//
// A weight matrix W (rows of n weights; GGUF ne0 = n = the input dimension) meets inputs x with covariance
// H = E[x x^T] (n x n, from `lokal imatrix --covariance`, eval/imatrix.h). The output error of a quantized row
// q is (w - q)^T H (w - q) ("calibration output error", = mean over tokens of ((w - q) . x)^2). GPTQ lowers it by
// walking the row's columns in order (the order of the quant blocks, which run along ne0): when a column is
// rounded, its error is pushed onto the columns not yet quantized, with the weights that minimise the output
// error of the rest given that column's error. With U the upper Cholesky factor of (H + damp)^-1 (H^-1 = U^T U):
//
//     err_j = (w_j - q_j) / U_jj ;   w_k -= err_j * U_jk   for k > j
//
// Block types: when the walk reaches the first column of a block (32 elements, or a 256-element K-quant
// super-block), the block's scales/mins are chosen from the current (already corrected) weights by the
// importance-weighted per-block search of quant_imatrix.cpp; then each element is rounded to the nearest level of
// that block's grid (its sub-block's scale and min, as the reference dequantizer reads them) and its error is fed
// forward. The codes are packed into the block, so the result is an ordinary block of the type.
//
// The factor depends only on H, so it is computed once per matrix (gptq_prepare, O(n^3)) and shared by all rows
// (quantize_row_gptq, O(n^2) per row).
#pragma once
#include <cstdint>
#include <vector>

#include "core/types.h"

namespace lokal {

struct GptqFactor {
  int64_t n = 0;
  std::vector<float> U;   // n x n row-major, upper triangular: (H + damp * mean(diag H) * I)^-1 = U^T U
  std::vector<float> H;   // n x n row-major: the covariance itself (for output_error)
};

// The factor for the covariance H (n x n row-major, symmetric, positive semi-definite). `damp` is relative to the
// mean of the diagonal (GPTQ's 1%). If the damped matrix is still not positive definite (rounding), the damping is
// raised tenfold up to 3 times, then lokal::Error.
GptqFactor gptq_prepare(const float* H, int64_t n, float damp = 0.01f);
// The same into `f`, reusing its memory (quantize_model keeps one factor for the whole model).
void gptq_prepare(const float* H, int64_t n, float damp, GptqFactor& f);

// GPTQ-quantizes one row of n elements (n = f.n, a multiple of the type's block size) into `dst`, in the layout of
// quantize_row. `importance` (n floats, normally diag H) weights the per-block scale search. Types: Q4_0, Q4_1,
// Q5_0, Q5_1, Q2_K..Q6_K; any other type throws lokal::Error.
void quantize_row_gptq(DType type, const float* src, void* dst, int64_t n, const float* importance,
                       const GptqFactor& f);

// (w - q)^T H (w - q) for a quantized row `row` of the original row `w` (the calibration output error).
double gptq_output_error(DType type, const void* row, const float* w, const GptqFactor& f);

// Whether quantize_row_gptq supports `type`.
bool gptq_supports(DType type);

// The weighted per-block search of quant_imatrix.cpp for one block of `type`. With `check_reference`, the
// reference (round-to-nearest) block is written instead where its weighted error is lower, as quantize_row_weighted
// does. For the types of quantize_row_weighted except Q8_0.
void quantize_block_weighted(DType type, const float* x, const float* w, void* block, bool check_reference = true);

}  // namespace lokal
