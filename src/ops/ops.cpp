#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <limits>

#include "core/error.h"
#include "core/quant.h"
#include "ops/packed.h"
#include "ops/vec_dot.h"

namespace lokal {

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void rope_cos_sin(int64_t pos, const RopeParams& p, float* c, float* s) {
  const int nd = p.rope_dim;
  const float theta_scale = std::pow(p.freq_base, -2.0f / static_cast<float>(nd));
  float theta = static_cast<float>(pos);
  for (int i = 0; i < nd / 2; ++i) {
    const float ff = p.freq_factors ? p.freq_factors[i] : 1.0f;
    const float t = theta / ff * p.freq_scale;
    c[i] = std::cos(t);
    s[i] = std::sin(t);
    theta *= theta_scale;
  }
}

void rope(float* x, int n_heads, int head_dim, int64_t pos, const RopeParams& p) {
  const int nd = p.rope_dim;
  // cos/sin per rotated pair, computed once for all heads.
  float cs[512], sn[512];
  std::vector<float> heap;
  float* c = cs;
  float* s = sn;
  if (nd / 2 > 512) {
    heap.resize(static_cast<size_t>(nd));
    c = heap.data();
    s = heap.data() + nd / 2;
  }
  rope_cos_sin(pos, p, c, s);
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim;
    if (p.neox) {
      const int half = nd / 2;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = a * s[i] + b * c[i];
      }
    } else {
      for (int i = 0; i < nd / 2; ++i) {
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c[i] - b * s[i];
        v[2 * i + 1] = a * s[i] + b * c[i];
      }
    }
  }
}

void softmax(float* x, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == -std::numeric_limits<float>::infinity()) {
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = x[i] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void get_row(const WeightView& W, int64_t r, float* out) {
  if (r < 0 || r >= W.rows) throw Error("row index " + std::to_string(r) + " out of range");
  if (W.packed) {
    thread_local std::vector<uint8_t> row;
    row.resize(W.row_bytes);
    unpack_row(W.type, W.cols, W.data, r, row.data());
    dequantize_row(W.type, row.data(), out, W.cols);
    return;
  }
  dequantize_row(W.type, W.row(r), out, W.cols);
}

size_t matmul_scratch_row_bytes(DType w, int64_t cols) {
  const DType at = vec_dot_type(w);
  size_t b = at == DType::F32 ? 0 : row_size(at, cols);
  if (pack_supported(w) && cols % type_info(w)->block_size == 0) b = std::max(b, packed_act_row_size(w, cols));  // the loader may pack w
  return b;
}

namespace {

using QuantFn = void (*)(DType w, const float* x, void* dst, int64_t n);

// Converts the n_tok activation rows of X into w's partner format (rows act_row bytes apart in dst),
// across the pool when there are enough of them.
void quantize_rows(ThreadPool& pool, QuantFn quant, const WeightView& W, const float* X, int64_t n_tok, uint8_t* dst,
                   size_t act_row) {
  auto one = [&](int64_t t) { quant(W.type, X + t * W.cols, dst + static_cast<size_t>(t) * act_row, W.cols); };
  if (n_tok >= 4) {
    pool.parallel_for(n_tok, [&](int64_t t, int) { one(t); });
  } else {
    for (int64_t t = 0; t < n_tok; ++t) one(t);
  }
}

// Cache-blocked split of a product over n_tok tokens and n_units weight units (rows or 16-row groups).
// Work items are (token tile, unit block) pairs, token tiles of at most 64 outermost so consecutive
// items share the tile's activations (kept in L2: ~150 KB for 2048 Q8_K columns). The unit block
// starts at `block` and halves (not below `min_block`) until there are >= 8 items per thread, so
// both cores stay busy for small matrices and few tokens. body(t0, t1, u0, u1) runs one item.
template <typename Body>
void tiled_items(ThreadPool& pool, int64_t n_tok, int64_t n_units, int64_t block, int64_t min_block, Body&& body) {
  constexpr int64_t kTokTile = 64;
  const int64_t tok_tile = std::min(n_tok, kTokTile);
  const int64_t n_tt = (n_tok + tok_tile - 1) / tok_tile;
  const int64_t nth = pool.size();
  while (block > min_block && ((n_units + block - 1) / block) * n_tt < 8 * nth) block /= 2;
  const int64_t n_blocks = (n_units + block - 1) / block;
  pool.parallel_for(n_blocks * n_tt, [&](int64_t item, int) {
    const int64_t tt = item / n_blocks, bi = item % n_blocks;
    const int64_t t0 = tt * tok_tile, u0 = bi * block;
    body(t0, std::min(n_tok, t0 + tok_tile), u0, std::min(n_units, u0 + block));
  });
}

// Packed weights (ops/packed.h): groups of 16 rows (~18 KB at 2048 Q4_0 columns), up to 4 per item,
// every token of the tile against each group. Decode is the same with one token.
void matmul_packed(ThreadPool& pool, const WeightView& W, const float* X, int64_t n_tok, float* Y, int64_t ldy,
                   std::vector<uint8_t>& scratch) {
  const size_t act_row = packed_act_row_size(W.type, W.cols);
  if (scratch.size() < act_row * static_cast<size_t>(n_tok)) scratch.resize(act_row * static_cast<size_t>(n_tok));
  uint8_t* A = scratch.data();
  quantize_rows(pool, quantize_activation_packed, W, X, n_tok, A, act_row);
  const size_t gs = W.row_bytes * kPackRows;
  tiled_items(pool, n_tok, W.rows / kPackRows, 4, 1, [&](int64_t t0, int64_t t1, int64_t g0, int64_t g1) {
    vec_dot_packed(W.type, W.cols, W.data + static_cast<size_t>(g0) * gs, gs, g1 - g0, A + static_cast<size_t>(t0) * act_row,
                   act_row, t1 - t0, Y + t0 * ldy + g0 * kPackRows, ldy);
  });
}

}  // namespace

void matmul(ThreadPool& pool, const WeightView& W, const float* X, int64_t n_tok, float* Y, int64_t ldy,
            std::vector<uint8_t>& scratch) {
  if (W.packed) return matmul_packed(pool, W, X, n_tok, Y, ldy, scratch);
  const DType at = vec_dot_type(W.type);
  const size_t act_row = row_size(at, W.cols);
  const void* act = X;
  if (at != DType::F32) {
    if (scratch.size() < act_row * static_cast<size_t>(n_tok)) scratch.resize(act_row * static_cast<size_t>(n_tok));
    uint8_t* dst = scratch.data();
    quantize_rows(pool, quantize_activation, W, X, n_tok, dst, act_row);
    act = dst;
  }
  const uint8_t* A = static_cast<const uint8_t*>(act);
  const int64_t nth = pool.size();
  // LOKAL_GEMM=0 keeps the per-pair path for prefill too (A/B comparisons).
  static const bool use_tiles = [] {
    const char* e = std::getenv("LOKAL_GEMM");
    return !(e && std::string(e) == "0");
  }();
  if (!use_tiles) {
    // The per-pair path: blocks of at most 64 rows (at least 8 items per thread so a slow thread does not hold the
    // others up), each multiplied with every token, tokens in blocks of 8, one vec_dot per (row, token). (vec_dot
    // and the tile kernels sum floats in different orders: this path is not batch-invariant with the other.)
    const int64_t rows_per_item = std::max<int64_t>(1, std::min<int64_t>(64, W.rows / (nth * 8)));
    const int64_t n_items = (W.rows + rows_per_item - 1) / rows_per_item;
    const int64_t tok_block = 8;
    pool.parallel_for(n_items, [&](int64_t item, int) {
      const int64_t r0 = item * rows_per_item;
      const int64_t r1 = std::min(W.rows, r0 + rows_per_item);
      for (int64_t t0 = 0; t0 < n_tok; t0 += tok_block) {
        const int64_t t1 = std::min(n_tok, t0 + tok_block);
        for (int64_t r = r0; r < r1; ++r) {
          const uint8_t* wr = W.row(r);
          for (int64_t t = t0; t < t1; ++t)
            Y[t * ldy + r] = vec_dot(W.type, W.cols, wr, A + static_cast<size_t>(t) * act_row);
        }
      }
    });
    return;
  }
  // Every token count, decode included: cache-blocked product (tiled_items). A token's result from the tile kernel
  // does not depend on how many tokens share the call (tests/test_batch.cpp), which is what makes a sequence's
  // logits the same alone or batched with others; with one token it is as fast as vec_dot. Inside an item the tile
  // kernel walks groups of 4
  // tokens (in L1) over the item's weight rows (a row block of at most 32 rows, ~36 KB at 2048 Q4_K
  // columns; a multiple of 4, at least 4), decoding each weight block once per 4 tokens. Each weight
  // row is thus streamed from memory once per token tile.
  tiled_items(pool, n_tok, W.rows, 32, 4, [&](int64_t t0, int64_t t1, int64_t r0, int64_t r1) {
    vec_dot_tile(W.type, W.cols, W.row(r0), W.row_bytes, r1 - r0, A + static_cast<size_t>(t0) * act_row, act_row,
                 t1 - t0, Y + t0 * ldy + r0, ldy);
  });
}

}  // namespace lokal
