#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant.h"
#include "ops/vec_dot.h"
#include "ops/vecf.h"

namespace lokal {

namespace {
constexpr int kTile = 64;

void check_types(const AttentionShape& s, const KVRows& K, const KVRows& V) {
  check_kv_cache_type(K.type, s.head_dim);
  check_kv_cache_type(V.type, s.head_dim_v);
}
}  // namespace

bool kv_cache_type_supported(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 || t == DType::Q4_0;
}

bool kv_cache_type_fits(DType t, int64_t head_dim) {
  return kv_cache_type_supported(t) && head_dim % type_info(t)->block_size == 0;
}

void check_kv_cache_type(DType t, int64_t head_dim) {
  if (!kv_cache_type_supported(t))
    throw Error(std::string("KV cache type ") + type_name(t) + " is not supported (supported: f32, f16, bf16, q8_0, q4_0)");
  if (head_dim % type_info(t)->block_size != 0)
    throw Error(std::string("KV cache type ") + type_name(t) + " needs a head size that is a multiple of " +
                std::to_string(type_info(t)->block_size) + "; this model's is " + std::to_string(head_dim));
}

namespace {
// Floats of one thread's working set: transposed queries [nb8][hd][8], scores [nb8][kTile][8], running
// max / sum / correction [nb8][8] x3, accumulators [nb8*8][hdv], one tile of K [kTile][hd] and of V
// [kTile][hdv] in f32.
size_t per_thread_floats(const AttentionShape& s) {
  const size_t group = static_cast<size_t>(s.n_head / s.n_head_kv);
  const size_t nb8 = (group + 7) / 8;
  const size_t hd = static_cast<size_t>(s.head_dim), hdv = static_cast<size_t>(s.head_dim_v);
  return nb8 * hd * 8 + nb8 * kTile * 8 + nb8 * 8 * 3 + nb8 * 8 * hdv + kTile * hd + kTile * hdv;
}
// Floats of one chunk's partial result: per head of the group its max, sum and accumulators.
size_t partial_floats(const AttentionShape& s) {
  return static_cast<size_t>(s.n_head / s.n_head_kv) * static_cast<size_t>(s.head_dim_v + 2);
}
static_assert(kAttnChunk % kTile == 0 && kKVPage == kTile, "chunks are whole tiles; a tile is one page");
}  // namespace

size_t attention_scratch_floats(const AttentionShape& s, DType k_type, int n_threads, int64_t n_ctx) {
  (void)k_type;  // every K type is converted to f32 a tile at a time
  const size_t threads = static_cast<size_t>(std::max(1, n_threads));
  const size_t chunks = static_cast<size_t>(attention_chunks(std::max<int64_t>(1, n_ctx)));
  // Per thread: its working set and the partials of one query's chunks; shared: the partials of the split mode
  // (fewer than 2 (query, KV head) items per thread, so at most 2 * threads items of `chunks` chunks).
  return (per_thread_floats(s) + chunks * partial_floats(s)) * threads + 2 * threads * chunks * partial_floats(s);
}

namespace {
// One tile of nt positions of one KV head (its first segment at seg0, segments KV.row_bytes apart) as
// f32 rows: F32 caches are used in place (*ld = the row stride in floats), F16 is converted in one
// call, other types segment by segment into buf (*ld = n).
inline const float* tile_f32(const VecF& vf, const KVRows& KV, const uint8_t* seg0, int64_t nt, int64_t n, float* buf,
                             int64_t* ld) {
  if (KV.type == DType::F32) {
    *ld = static_cast<int64_t>(KV.row_bytes / sizeof(float));
    return reinterpret_cast<const float*>(seg0);
  }
  *ld = n;
  if (KV.type == DType::F16) {
    vf.f16_rows_to_f32(reinterpret_cast<const uint16_t*>(seg0), KV.row_bytes, nt, n, buf);
  } else {
    for (int64_t j = 0; j < nt; ++j) {
      const uint8_t* seg = seg0 + static_cast<size_t>(j) * KV.row_bytes;
      if (KV.type == DType::Q8_0) vf.q8_0_to_f32(seg, buf + j * n, n);
      else dequantize_row(KV.type, seg, buf + j * n, n);
    }
  }
  return buf;
}

// One chunk [j_begin, j_end) of one (query, KV head): the group of query heads that share the KV head is processed
// in blocks of 8 "lanes". Per tile of kTile cache positions: the K and V segments are converted to f32 once (F32
// rows are read in place), scores for all lanes come from one small GEMM (qk_tile8), the online softmax runs on 8
// lanes at once (softmax_tile8), and the weighted V rows are accumulated per head (pv_tile8). Writes the chunk's
// partial result, per head of the group: [max, sum, hdv unnormalized accumulators].
void attend_chunk(const VecF& vf, const AttentionShape& s, const float* qg, const KVRows& K, const KVRows& V, int g,
                  int64_t j_begin, int64_t j_end, float* work, float* partial) {
  const int group = s.n_head / s.n_head_kv;
  const int nb8 = (group + 7) / 8;
  const int64_t hd = s.head_dim, hdv = s.head_dim_v;
  float* qt = work;
  float* sc = qt + nb8 * hd * 8;
  float* m = sc + nb8 * kTile * 8;
  float* l = m + nb8 * 8;
  float* corr = l + nb8 * 8;
  float* acc = corr + nb8 * 8;
  float* ktile = acc + nb8 * 8 * hdv;
  float* vtile = ktile + kTile * hd;
  // Queries transposed into lanes, scaled; lanes past the group are zero.
  for (int b = 0; b < nb8; ++b)
    for (int64_t d = 0; d < hd; ++d)
      for (int i = 0; i < 8; ++i) {
        const int h = b * 8 + i;
        qt[(b * hd + d) * 8 + i] = h < group ? qg[h * hd + d] * s.scale : 0.0f;
      }
  std::fill(m, m + nb8 * 8, -std::numeric_limits<float>::infinity());
  std::fill(l, l + nb8 * 8, 0.0f);
  std::fill(acc, acc + nb8 * 8 * hdv, 0.0f);
  const size_t kseg = row_size(K.type, hd), vseg = row_size(V.type, hdv);
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kTile) {
    const int64_t nt = std::min<int64_t>(kTile, j_end - j0);
    // Ask for the next tile's K and V segments now (one sequential run in a paged or head-major cache; a
    // position-major cache's segments are a whole KV row apart, a stride the prefetchers lose).
    for (int64_t jj = j0 + kTile; jj < std::min<int64_t>(j_end, j0 + 2 * kTile); ++jj) {
      for (size_t o = 0; o < kseg; o += 64) __builtin_prefetch(K.seg(jj, g, hd) + o);
      for (size_t o = 0; o < vseg; o += 64) __builtin_prefetch(V.seg(jj, g, hdv) + o);
    }
    int64_t ldk, ldv;
    const float* kp = tile_f32(vf, K, K.seg(j0, g, hd), nt, hd, ktile, &ldk);
    const float* vp = tile_f32(vf, V, V.seg(j0, g, hdv), nt, hdv, vtile, &ldv);
    for (int b = 0; b < nb8; ++b) {
      float* sb = sc + b * kTile * 8;
      vf.qk_tile8(qt + b * hd * 8, kp, ldk, hd, nt, sb);
      vf.softmax_tile8(sb, nt, m + b * 8, l + b * 8, corr + b * 8);
      const int nh = std::min(8, group - b * 8);
      for (int i = 0; i < nh; ++i)
        if (corr[b * 8 + i] != 1.0f) vf.scale(acc + (b * 8 + i) * hdv, corr[b * 8 + i], hdv);
      vf.pv_tile8(sb, nh, vp, ldv, nt, hdv, acc + b * 8 * hdv, hdv);
    }
  }
  for (int h = 0; h < group; ++h) {
    float* p = partial + static_cast<size_t>(h) * (hdv + 2);
    p[0] = m[h];
    p[1] = l[h];
    std::copy(acc + h * hdv, acc + (h + 1) * hdv, p + 2);
  }
}

// Merges the n_chunks partials of one (query, KV head), in chunk order, into the group's output rows: each chunk is
// rescaled to the largest max, then the sum normalizes. With one chunk this is acc / sum, bit for bit.
void merge_chunks(const AttentionShape& s, const float* partials, int64_t n_chunks, float* o) {
  const int group = s.n_head / s.n_head_kv;
  const int64_t hdv = s.head_dim_v;
  const size_t pf = partial_floats(s);
  for (int h = 0; h < group; ++h) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < n_chunks; ++c) mx = std::max(mx, partials[static_cast<size_t>(c) * pf + static_cast<size_t>(h) * (hdv + 2)]);
    float sum = 0.0f;
    float* oh = o + h * hdv;
    std::fill(oh, oh + hdv, 0.0f);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const float* p = partials + static_cast<size_t>(c) * pf + static_cast<size_t>(h) * (hdv + 2);
      const float w = std::exp(p[0] - mx);
      sum += p[1] * w;
      for (int64_t d = 0; d < hdv; ++d) oh[d] += p[2 + d] * w;
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < hdv; ++d) oh[d] *= inv;
  }
}
}  // namespace

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0,
               const KVRows& K, const KVRows& V, float* out, std::vector<float>& scratch) {
  std::vector<int64_t> n_pos(static_cast<size_t>(std::max<int64_t>(0, n_tok)));
  for (int64_t t = 0; t < n_tok; ++t) n_pos[static_cast<size_t>(t)] = pos0 + t + 1;
  attention_batch(pool, s, q, n_tok, n_pos.data(), nullptr, K, V, out, scratch);
}

// Work: (query, KV head) items. With at least 2 items per thread each item runs its chunks one after the other
// (partials in the thread's scratch); with fewer (decode), every (query, KV head, chunk) is an item of its own
// (partials in a shared area), merged after. Both run the same chunk and merge code: same bits.
void attention_batch(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, const int64_t* n_pos,
                     const int32_t* const* pages, const KVRows& K, const KVRows& V, float* out,
                     std::vector<float>& scratch) {
  check_types(s, K, V);
  if (n_tok <= 0) return;
  if (pages && (!K.page_bytes || !V.page_bytes)) throw Error("attention: page tables given for a cache that is not paged");
  const VecF& vf = vecf();
  const int group = s.n_head / s.n_head_kv;
  const int64_t hd = s.head_dim, hdv = s.head_dim_v;
  const size_t per = per_thread_floats(s), pf = partial_floats(s);
  int64_t max_pos = 1, total_chunks = 0;
  for (int64_t t = 0; t < n_tok; ++t) {
    if (n_pos[t] < 1) throw Error("attention: a query must attend to at least one position");
    max_pos = std::max(max_pos, n_pos[t]);
    total_chunks += attention_chunks(n_pos[t]);
  }
  const int nth = pool.size();
  const int64_t n_items = n_tok * s.n_head_kv;
  const size_t max_chunks = static_cast<size_t>(attention_chunks(max_pos));
  const size_t per_thread = per + max_chunks * pf;
  const bool split = n_items < 2 * nth && total_chunks > n_tok;
  const size_t shared = split ? static_cast<size_t>(total_chunks * s.n_head_kv) * pf : 0;
  const size_t need = per_thread * static_cast<size_t>(nth) + shared;
  if (scratch.size() < need) scratch.resize(need);
  float* shared_part = scratch.data() + per_thread * static_cast<size_t>(nth);
  auto layer_k = [&](int64_t t) { return pages ? K.with_pages(pages[t]) : K; };
  auto layer_v = [&](int64_t t) { return pages ? V.with_pages(pages[t]) : V; };
  auto q_of = [&](int64_t t, int g) { return q + t * s.n_head * hd + static_cast<int64_t>(g) * group * hd; };
  auto out_of = [&](int64_t t, int g) { return out + t * s.n_head * hdv + static_cast<int64_t>(g) * group * hdv; };
  if (!split) {
    pool.parallel_for(n_items, [&](int64_t item, int tid) {
      const int64_t t = item / s.n_head_kv;
      const int g = static_cast<int>(item % s.n_head_kv);
      float* work = scratch.data() + per_thread * static_cast<size_t>(tid);
      float* part = work + per;
      const int64_t chunks = attention_chunks(n_pos[t]);
      const KVRows Kt = layer_k(t), Vt = layer_v(t);
      for (int64_t c = 0; c < chunks; ++c)
        attend_chunk(vf, s, q_of(t, g), Kt, Vt, g, c * kAttnChunk, std::min(n_pos[t], (c + 1) * kAttnChunk), work,
                     part + static_cast<size_t>(c) * pf);
      merge_chunks(s, part, chunks, out_of(t, g));
    });
    return;
  }
  // Split mode: item (t, g, c); the partials of (t, g) are consecutive in the shared area.
  std::vector<int64_t> first(static_cast<size_t>(n_tok) + 1, 0);  // first chunk index of query t (per KV head)
  for (int64_t t = 0; t < n_tok; ++t) first[static_cast<size_t>(t) + 1] = first[static_cast<size_t>(t)] + attention_chunks(n_pos[t]);
  pool.parallel_for(total_chunks * s.n_head_kv, [&](int64_t work_i, int tid) {
    const int g = static_cast<int>(work_i / total_chunks);
    const int64_t ci = work_i % total_chunks;
    const int64_t t = std::upper_bound(first.begin(), first.end(), ci) - first.begin() - 1;
    const int64_t c = ci - first[static_cast<size_t>(t)];
    float* work = scratch.data() + per_thread * static_cast<size_t>(tid);
    float* part = shared_part + static_cast<size_t>(g * total_chunks + ci) * pf;
    attend_chunk(vf, s, q_of(t, g), layer_k(t), layer_v(t), g, c * kAttnChunk, std::min(n_pos[t], (c + 1) * kAttnChunk),
                 work, part);
  });
  for (int64_t t = 0; t < n_tok; ++t)
    for (int g = 0; g < s.n_head_kv; ++g)
      merge_chunks(s, shared_part + static_cast<size_t>(g * total_chunks + first[static_cast<size_t>(t)]) * pf,
                   first[static_cast<size_t>(t) + 1] - first[static_cast<size_t>(t)], out_of(t, g));
}

void attention_ref(const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0, const KVRows& K,
                   const KVRows& V, float* out) {
  check_types(s, K, V);
  const int group = s.n_head / s.n_head_kv;
  const int64_t n_ctx = pos0 + n_tok;
  const int64_t kw = static_cast<int64_t>(s.n_head_kv) * s.head_dim, vw = static_cast<int64_t>(s.n_head_kv) * s.head_dim_v;
  std::vector<float> kf(static_cast<size_t>(n_ctx * kw)), vfl(static_cast<size_t>(n_ctx * vw));
  for (int64_t j = 0; j < n_ctx; ++j)
    for (int g = 0; g < s.n_head_kv; ++g) {
      dequantize_row(K.type, K.seg(j, g, s.head_dim), kf.data() + j * kw + g * s.head_dim, s.head_dim);
      dequantize_row(V.type, V.seg(j, g, s.head_dim_v), vfl.data() + j * vw + g * s.head_dim_v, s.head_dim_v);
    }
  for (int64_t t = 0; t < n_tok; ++t) {
    const int64_t n_pos = pos0 + t + 1;
    std::vector<double> p(static_cast<size_t>(n_pos));
    for (int h = 0; h < s.n_head; ++h) {
      const int g = h / group;
      const float* qh = q + (t * s.n_head + h) * s.head_dim;
      double mx = -INFINITY;
      for (int64_t j = 0; j < n_pos; ++j) {
        double d = 0;
        for (int i = 0; i < s.head_dim; ++i) d += static_cast<double>(qh[i]) * kf[static_cast<size_t>(j * kw + g * s.head_dim + i)];
        p[static_cast<size_t>(j)] = d * s.scale;
        mx = std::max(mx, p[static_cast<size_t>(j)]);
      }
      double sum = 0;
      for (auto& v : p) sum += (v = std::exp(v - mx));
      for (int d = 0; d < s.head_dim_v; ++d) {
        double o = 0;
        for (int64_t j = 0; j < n_pos; ++j) o += p[static_cast<size_t>(j)] * vfl[static_cast<size_t>(j * vw + g * s.head_dim_v + d)];
        out[(t * s.n_head + h) * s.head_dim_v + d] = static_cast<float>(o / sum);
      }
    }
  }
}

}  // namespace lokal
