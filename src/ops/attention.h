// ops/attention.h - causal multi-head attention over a KV cache, read in place.
//
// Flash-attention style: keys/values are visited in tiles of kTile positions with an online
// softmax (running max m, running sum l, rescaled accumulator), so memory traffic is one pass
// over the cache and no [n_ctx] score row is materialized per head. Grouped-query aware: the
// query heads sharing a KV head are processed together, so each K/V row is loaded once per
// group, not once per query head.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/threadpool.h"
#include "core/types.h"

namespace lokal {

// One layer's cache. Two layouts:
// - position-major (head_bytes == 0): row j (position j) holds the n_head_kv heads of head_dim elements
//   side by side, rows row_bytes apart;
// - head-major (head_bytes > 0): each KV head's segments for all positions are contiguous, row_bytes
//   (one head's segment) apart, heads head_bytes apart. The model's KVCache uses this one: a tile of
//   positions of one head is then one sequential run of memory.
struct KVRows {
  DType type = DType::F32;   // F32, F16, BF16, Q8_0 or Q4_0 (kv_cache_type_supported)
  const uint8_t* base = nullptr;
  size_t row_bytes = 0;
  size_t head_bytes = 0;
  // Segment of KV head g (head_dim elements) at position j.
  const uint8_t* seg(int64_t j, int64_t g, int64_t head_dim) const {
    if (head_bytes) return base + static_cast<size_t>(g) * head_bytes + static_cast<size_t>(j) * row_bytes;
    return base + static_cast<size_t>(j) * row_bytes + (g == 0 ? 0 : row_size(type, g * head_dim));
  }
};

// Element types attention can read in place: F32 rows are used as they are; F16, BF16, Q8_0 and Q4_0 rows
// are converted to f32 one tile (64 positions) of one KV head at a time, never as a whole-cache copy.
bool kv_cache_type_supported(DType t);
// Whether a cache of type t can hold heads of head_dim values (supported, and the block divides the head).
bool kv_cache_type_fits(DType t, int64_t head_dim);
// Throws lokal::Error saying which of the two fails.
void check_kv_cache_type(DType t, int64_t head_dim);

struct AttentionShape {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;    // q/k
  int head_dim_v = 0;  // v
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
};

// out[t][h*head_dim_v + d] = sum_j softmax_j(scale * q[t,h] . K[j,g]) V[j,g][d] over
// j in [0, pos0 + t], g = h / (n_head / n_head_kv). q is [n_tok][n_head*head_dim].
// `scratch` is grown as needed and reused between calls.
// Floats of `scratch` that attention() uses for this shape, K type and pool size (for memory planning).
size_t attention_scratch_floats(const AttentionShape& s, DType k_type, int n_threads);

// Decode (one token): into how many chunks each KV head's n_pos positions are split so that every one of
// n_threads threads has work (1: no split). Chunks are whole tiles, at least two; their partial softmax
// results are merged exactly (rescaled to the common max), so only float summation order changes.
int64_t attention_decode_chunks(const AttentionShape& s, int64_t n_pos, int n_threads);

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0,
               const KVRows& K, const KVRows& V, float* out, std::vector<float>& scratch);

// Straightforward two-pass reference (full score row, exact softmax), for tests.
void attention_ref(const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0, const KVRows& K,
                   const KVRows& V, float* out);

}  // namespace lokal
