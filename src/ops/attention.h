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

// Positions per KV page (the paged layout below) and per attention tile: a tile of one KV head never crosses a page.
constexpr int64_t kKVPage = 64;
// Positions per attention chunk: each query's positions are cut into chunks of this many (whole tiles), each chunk
// gets its own online softmax, and the chunk results are merged in order. The cut depends only on the query's
// position, never on the batch or the thread count, so a token's output is bit-identical whatever else is in the
// batch; chunks of one query run on different threads when there is little other work (decode).
constexpr int64_t kAttnChunk = 256;

// One layer's cache. Three layouts:
// - position-major (head_bytes == 0): row j (position j) holds the n_head_kv heads of head_dim elements
//   side by side, rows row_bytes apart;
// - head-major (head_bytes > 0): each KV head's segments for all positions are contiguous, row_bytes
//   (one head's segment) apart, heads head_bytes apart;
// - paged (pages != nullptr): position j lives in page pages[j / kKVPage], at page_bytes * page from base; inside
//   a page head-major (heads head_bytes apart, kKVPage segments of row_bytes each). The model's KVCache uses this
//   one: a tile of one head is one sequential run of memory, and sequences own pages, not position ranges.
struct KVRows {
  DType type = DType::F32;   // F32, F16, BF16, Q8_0 or Q4_0 (kv_cache_type_supported)
  const uint8_t* base = nullptr;
  size_t row_bytes = 0;
  size_t head_bytes = 0;
  const int32_t* pages = nullptr;
  size_t page_bytes = 0;
  // Segment of KV head g (head_dim elements) at position j.
  const uint8_t* seg(int64_t j, int64_t g, int64_t head_dim) const {
    if (pages)
      return base + static_cast<size_t>(pages[j / kKVPage]) * page_bytes + static_cast<size_t>(g) * head_bytes +
             static_cast<size_t>(j % kKVPage) * row_bytes;
    if (head_bytes) return base + static_cast<size_t>(g) * head_bytes + static_cast<size_t>(j) * row_bytes;
    return base + static_cast<size_t>(j) * row_bytes + (g == 0 ? 0 : row_size(type, g * head_dim));
  }
  // The same layer read through another page table (a sequence's).
  KVRows with_pages(const int32_t* p) const {
    KVRows r = *this;
    r.pages = p;
    return r;
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
// Floats of `scratch` that attention() uses for this shape, pool size and longest context (for memory planning).
size_t attention_scratch_floats(const AttentionShape& s, DType k_type, int n_threads, int64_t n_ctx);

// Chunks (kAttnChunk positions each) of a query that attends to n_pos positions.
inline int64_t attention_chunks(int64_t n_pos) { return (n_pos + kAttnChunk - 1) / kAttnChunk; }

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0,
               const KVRows& K, const KVRows& V, float* out, std::vector<float>& scratch);

// Batched form: query t attends to positions [0, n_pos[t]) read through page table pages[t] (K and V must be
// paged; pages may be null when K and V are not paged, then every query reads K and V as they are). Each query's
// output depends only on its own q row, n_pos and cache contents: bit-identical whatever the other queries are.
void attention_batch(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, const int64_t* n_pos,
                     const int32_t* const* pages, const KVRows& K, const KVRows& V, float* out,
                     std::vector<float>& scratch);

// Straightforward two-pass reference (full score row, exact softmax), for tests.
void attention_ref(const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0, const KVRows& K,
                   const KVRows& V, float* out);

}  // namespace lokal
