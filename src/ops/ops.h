// ops/ops.h - the element-wise and normalization kernels of a transformer forward pass,
// and the threaded matrix product. Knows nothing about models: only arrays and shapes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/threadpool.h"
#include "core/types.h"

namespace lokal {

// A 2-D weight matrix as stored in GGUF: n_rows rows of `cols` elements each, of type `type`,
// row-major, rows `row_bytes` apart. Points into the mapped file (no copy).
// packed: the loader rewrote the rows in place into the 16-row interleaved layout of ops/packed.h
// (same bytes in all; row(r) is then not a canonical row: use get_row / unpack_row).
struct WeightView {
  DType type = DType::F32;
  int64_t cols = 0;     // ne[0]: input features
  int64_t rows = 0;     // ne[1]: output features
  size_t row_bytes = 0;
  const uint8_t* data = nullptr;
  bool packed = false;
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
};

// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]   (sum accumulated in double, like ggml)
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);

// Rotary position embedding applied in place to `n_heads` heads of `head_dim` floats each,
// rotating the first `rope_dim` dims of each head. neox=false rotates adjacent pairs
// (x[2i], x[2i+1]) (llama), neox=true rotates (x[i], x[i + rope_dim/2]) (qwen2, neox).
// `freq_factors` (optional, rope_dim/2 entries) divides each frequency (Llama-3 rope scaling).
struct RopeParams {
  int rope_dim = 0;
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  bool neox = false;
  const float* freq_factors = nullptr;
};
void rope(float* x, int n_heads, int head_dim, int64_t pos, const RopeParams& p);
// The angles rope() rotates by at `pos`: c[i] = cos, s[i] = sin of pair i < rope_dim/2 (for the GPU's rope).
void rope_cos_sin(int64_t pos, const RopeParams& p, float* c, float* s);

// In-place softmax over n values (max-subtracted, sum in double). -inf entries give 0.
void softmax(float* x, int64_t n);

// out[i] = silu(gate[i]) * up[i]
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// y[i] += x[i]
void add_inplace(float* y, const float* x, int64_t n);

// Dequantize row r of W into out (W.cols floats).
void get_row(const WeightView& W, int64_t r, float* out);

// Y[t][r] = sum_c W[r][c] * X[t][c] for t in [0, n_tok): X is n_tok x W.cols (row-major),
// Y is n_tok x W.rows (row-major, stride ldy). The activations are first converted to W's
// partner type (ops/vec_dot.h), once per call; rows are split across the pool.
// `scratch` is reused between calls to avoid allocations.
// Bytes of `scratch` matmul() needs per activation row for a weight of this type and row length (0: none).
size_t matmul_scratch_row_bytes(DType w, int64_t cols);
void matmul(ThreadPool& pool, const WeightView& W, const float* X, int64_t n_tok, float* Y, int64_t ldy,
            std::vector<uint8_t>& scratch);

}  // namespace lokal
