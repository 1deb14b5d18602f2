// gpu/kernels_attn.cpp - the KV cache on the device: kv_store and attention (gpu/kernels.h), shaders
// gpu/shaders/kv_store.comp and attention.comp (layouts and exact conversions: kv_common.glsl).
//
// Exactness: kv_store writes the CPU's bytes (f32 copied; f16 as core/fp16.cpp's fp32_to_fp16; q8_0 as
// core/quant.cpp's q_q8_0), all in integer code or correctly rounded f32 operations, except for q8_0 blocks whose
// largest magnitude is below ~2^-118, where the CPU itself stores d = 0 and divides by a denormal; there the
// driver's division and denormal handling decide. attention reads every K/V element as the CPU's dequantize_row
// gives it (f32 denormals in an F32 cache may be flushed to zero by a driver); scores and sums are f32 in the
// shader's order, exp is the driver's.
// Rows outside the cache (a page-table entry or a stored row index >= n_rows) are never accessed out of bounds:
// kv_store skips such a row, attention clamps it to the last row (garbage in, garbage out). A token with n = 0
// positions gets zeros.
#include <algorithm>
#include <string>

#include "gpu/kernels.h"

namespace lokal::gpu {

namespace {

constexpr int64_t kMaxHeadDim = 256;  // MAX_HD of attention.comp

// The shaders' type codes (KV_F32, KV_F16, KV_Q8_0 in kv_common.glsl).
uint32_t kv_code(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q8_0: return 2;
    default: return UINT32_MAX;
  }
}

[[noreturn]] void fail(const char* kernel, const std::string& msg) {
  throw Error(std::string("GPU ") + kernel + ": " + msg);
}

void need_bytes(const Buffer& b, uint64_t bytes, const char* kernel, const char* what) {
  if (b.size() < bytes)
    fail(kernel, std::string(what) + " buffer holds " + std::to_string(b.size()) + " bytes, needs " +
                     std::to_string(bytes));
}

void check_range(int64_t n, int64_t lo, int64_t hi, const char* kernel, const char* what) {
  if (n < lo || n > hi) fail(kernel, std::string(what) + " " + std::to_string(n) + " is out of range");
}

// The checks shared by kv_bytes, kv_store and attention: a supported type, a width its layout can hold, and a
// cache the shaders can address with 32-bit word indices.
uint64_t checked_kv_bytes(DType t, int64_t n_rows, int64_t width, const char* kernel) {
  if (kv_code(t) == UINT32_MAX)
    fail(kernel, std::string("KV cache type ") + type_name(t) + " is not supported (f32, f16, q8_0)");
  check_range(n_rows, 0, UINT32_MAX, kernel, "row count");
  check_range(width, 1, UINT32_MAX, kernel, "row width");
  if (t == DType::F16 && width % 2 != 0)
    fail(kernel, "an f16 KV cache needs an even row width, not " + std::to_string(width));
  if (t == DType::Q8_0 && width % 32 != 0)
    fail(kernel, "a q8_0 KV cache needs a row width that is a multiple of 32, not " + std::to_string(width));
  const uint64_t elems = static_cast<uint64_t>(n_rows) * static_cast<uint64_t>(width);
  uint64_t bytes = 0;
  switch (t) {
    case DType::F32: bytes = 4 * elems; break;
    case DType::F16: bytes = 2 * elems; break;
    default: bytes = elems + 4 * (elems / 32); break;
  }
  if (bytes / 4 > UINT32_MAX)
    fail(kernel, "a KV cache of " + std::to_string(bytes) + " bytes is beyond what 32-bit word indices address");
  return bytes;
}

}  // namespace

bool Kernels::supports_kv(DType t) { return kv_code(t) != UINT32_MAX; }

uint64_t Kernels::kv_bytes(DType t, int64_t n_rows, int64_t width) {
  return checked_kv_bytes(t, n_rows, width, "kv_bytes");
}

void Kernels::kv_copy_rows(Commands& c, Buffer& cache, DType t, int64_t n_rows, int64_t width, int64_t src_row,
                           int64_t dst_row, int64_t count) {
  need_bytes(cache, checked_kv_bytes(t, n_rows, width, "kv_copy_rows"), "kv_copy_rows", "cache");
  check_range(count, 0, n_rows, "kv_copy_rows", "row count");
  check_range(src_row, 0, n_rows - count, "kv_copy_rows", "source row");
  check_range(dst_row, 0, n_rows - count, "kv_copy_rows", "destination row");
  if (count == 0 || src_row == dst_row) return;
  if (std::max(src_row, dst_row) - std::min(src_row, dst_row) < count)
    fail("kv_copy_rows", "the source and destination rows overlap");
  const uint64_t w = static_cast<uint64_t>(width), n = static_cast<uint64_t>(count);
  const uint64_t s = static_cast<uint64_t>(src_row), d = static_cast<uint64_t>(dst_row);
  // Bytes per row of each region of the layout (gpu/kernels.h): the elements, then (Q8_0) one f32 scale per 32.
  const uint64_t rb = t == DType::F32 ? 4 * w : t == DType::F16 ? 2 * w : w;
  c.copy(cache, cache, n * rb, s * rb, d * rb);
  if (t == DType::Q8_0) {
    const uint64_t base = static_cast<uint64_t>(n_rows) * w, sb = w / 32 * 4;
    c.copy(cache, cache, n * sb, base + s * sb, base + d * sb);
  }
}

void Kernels::kv_store(Commands& c, const Buffer& src, Buffer& cache, DType t, int64_t n_rows, int64_t width,
                       const Buffer& meta, uint32_t row_off, int64_t n_tok) {
  kv_store_dispatch(c, src, cache, t, n_rows, width, meta, row_off, n_tok, nullptr, 0, 0, false);
}

void Kernels::rope_kv_store(Commands& c, const Buffer& src, const Buffer& cs, int64_t head_dim, int64_t rope_dim,
                            bool neox, Buffer& cache, DType t, int64_t n_rows, int64_t width, const Buffer& meta,
                            uint32_t row_off, int64_t n_tok) {
  const char* kn = "rope_kv_store";
  check_range(head_dim, 1, width, kn, "head size");
  check_range(rope_dim, 1, UINT32_MAX, kn, "rotated dimension count");  // (0 would be kv_store's "no rotation")
  check_rope_dims(kn, head_dim, rope_dim);
  if (width % head_dim != 0)
    fail(kn, "a row of " + std::to_string(width) + " elements is not whole heads of " + std::to_string(head_dim));
  kv_store_dispatch(c, src, cache, t, n_rows, width, meta, row_off, n_tok, &cs, head_dim, rope_dim, neox);
}

void Kernels::kv_store_dispatch(Commands& c, const Buffer& src, Buffer& cache, DType t, int64_t n_rows, int64_t width,
                                const Buffer& meta, uint32_t row_off, int64_t n_tok, const Buffer* cs,
                                int64_t head_dim, int64_t rope_dim, bool neox) {
  const uint64_t bytes = checked_kv_bytes(t, n_rows, width, "kv_store");
  check_range(n_tok, 0, UINT32_MAX, "kv_store", "token count");
  if (n_tok == 0) return;
  if (static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(width) > UINT32_MAX)
    fail("kv_store", "a source of " + std::to_string(n_tok) + " x " + std::to_string(width) + " elements is too large");
  need_bytes(src, 4 * static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(width), "kv_store", "source");
  need_bytes(cache, bytes, "kv_store", "cache");
  need_bytes(meta, 4 * (static_cast<uint64_t>(row_off) + static_cast<uint64_t>(n_tok)), "kv_store", "meta");
  if (cs) need_bytes(*cs, 4 * static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(rope_dim), "kv_store", "cos/sin");
  struct {
    uint32_t type, width, n_rows, row_off, n_tok, dbase, head_dim, rope_dim, neox;
  } push{kv_code(t),
         static_cast<uint32_t>(width),
         static_cast<uint32_t>(n_rows),
         row_off,
         static_cast<uint32_t>(n_tok),
         static_cast<uint32_t>(static_cast<uint64_t>(n_rows) * static_cast<uint64_t>(width) / 4),
         static_cast<uint32_t>(cs ? head_dim : 0),
         static_cast<uint32_t>(cs ? rope_dim : 0),
         cs && neox ? 1u : 0u};
  uint32_t gx, gy;
  grid(n_tok, gx, gy);
  // Without rotation the cos/sin binding is never read; meta stands in for it.
  c.dispatch(pipeline("kv_store", 4, sizeof push), {&src, &cache, &meta, cs ? cs : &meta}, &push, sizeof push, gx, gy);
}

namespace {
// Splitting pays when there are fewer (token, head) pairs than kSplitTarget workgroups would keep a large GPU busy
// (~2 per compute unit of a 100+ unit GPU) and the context is longer than a few tiles; a chunk is at least
// kMinChunk positions (its fixed cost, the query load and the merge, stays small against the walk) and there are
// at most kMaxSplits.
constexpr int64_t kSplitTarget = 256, kMinChunk = 256, kMaxSplits = 32;

uint64_t split_bytes(const Kernels::AttnShape& s, int64_t n_tok, int64_t splits) {
  // An accumulator of head_dim_v and an (m, l) pair per (token, head, chunk).
  return static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(s.n_head) * static_cast<uint64_t>(splits) *
         static_cast<uint64_t>(s.head_dim_v + 2) * 4;
}
}  // namespace

Kernels::AttnSplit Kernels::attention_split(const AttnShape& s, int64_t n_tok, int64_t max_n) {
  const int64_t pairs = n_tok * s.n_head;
  if (pairs <= 0 || pairs >= kSplitTarget || max_n <= kMinChunk) return {};
  const int64_t want = std::min({kMaxSplits, (max_n + kMinChunk - 1) / kMinChunk, (kSplitTarget + pairs - 1) / pairs});
  if (want <= 1) return {};
  const int64_t per = (max_n + want - 1) / want;
  const int64_t chunk = (per + 63) / 64 * 64;
  const int64_t splits = (max_n + chunk - 1) / chunk;
  if (splits <= 1) return {};
  return {splits, chunk};
}

uint64_t Kernels::attention_scratch_bytes(const AttnShape& s, int64_t max_tok, int64_t max_n) {
  uint64_t most = 0;
  for (int64_t t = 1; t <= max_tok && t * s.n_head < kSplitTarget; ++t) {
    const AttnSplit sp = attention_split(s, t, max_n);
    if (sp.splits > 1) most = std::max(most, split_bytes(s, t, sp.splits));
  }
  return most;
}

void Kernels::attention(Commands& c, const AttnShape& s, const Buffer& q, const Buffer& k, DType tk, const Buffer& v,
                        DType tv, int64_t n_rows, const Buffer& meta, uint32_t npos_off, uint32_t pt_off, Buffer& out,
                        int64_t n_tok, Buffer* scratch, int64_t max_n) {
  const char* kn = "attention";
  check_range(s.n_head, 1, UINT32_MAX, kn, "head count");
  check_range(s.n_head_kv, 1, s.n_head, kn, "KV head count");
  if (s.n_head % s.n_head_kv != 0)
    fail(kn, std::to_string(s.n_head) + " heads are not a multiple of " + std::to_string(s.n_head_kv) + " KV heads");
  check_range(s.head_dim, 1, kMaxHeadDim, kn, "head size (at most 256)");
  check_range(s.head_dim_v, 1, kMaxHeadDim, kn, "value head size (at most 256)");
  check_range(n_rows, 1, UINT32_MAX, kn, "row count");
  check_range(n_tok, 0, UINT32_MAX, kn, "token count");
  // A head's segment must start on a word (F16) or a block (Q8_0) boundary.
  auto check_head = [&](DType t, int64_t hd, const char* which) {
    if (t == DType::F16 && hd % 2 != 0)
      fail(kn, std::string("an f16 ") + which + " cache needs an even head size, not " + std::to_string(hd));
    if (t == DType::Q8_0 && hd % 32 != 0)
      fail(kn, std::string("a q8_0 ") + which + " cache needs a head size that is a multiple of 32, not " +
                   std::to_string(hd));
  };
  const int64_t kw = s.n_head_kv * s.head_dim, vw = s.n_head_kv * s.head_dim_v;
  const uint64_t k_bytes = checked_kv_bytes(tk, n_rows, kw, kn);
  const uint64_t v_bytes = checked_kv_bytes(tv, n_rows, vw, kn);
  check_head(tk, s.head_dim, "K");
  check_head(tv, s.head_dim_v, "V");
  if (n_tok == 0) return;
  const uint64_t q_elems = static_cast<uint64_t>(n_tok) * s.n_head * s.head_dim;
  const uint64_t o_elems = static_cast<uint64_t>(n_tok) * s.n_head * s.head_dim_v;
  if (std::max(q_elems, o_elems) > UINT32_MAX)
    fail(kn, std::to_string(n_tok) + " tokens of " + std::to_string(s.n_head) + " heads are too many for one call");
  need_bytes(q, 4 * q_elems, kn, "query");
  need_bytes(out, 4 * o_elems, kn, "output");
  need_bytes(k, k_bytes, kn, "K cache");
  need_bytes(v, v_bytes, kn, "V cache");
  const uint64_t meta_need = 4 * (std::max<uint64_t>(npos_off, pt_off) + static_cast<uint64_t>(n_tok));
  need_bytes(meta, meta_need, kn, "meta");
  AttnSplit split = scratch ? attention_split(s, n_tok, max_n) : AttnSplit{};
  const uint64_t part_bytes = split_bytes(s, n_tok, split.splits);
  if (split.splits > 1 && (scratch->size() < part_bytes || part_bytes / 4 > UINT32_MAX)) split = {};
  struct {
    uint32_t n_tok, n_head, group, hd, hdv;
    float scale;
    uint32_t tk, tv, n_rows, npos_off, pt_off, kw, vw, kdbase, vdbase, splits, chunk, ml_off;
  } push{static_cast<uint32_t>(n_tok),
         static_cast<uint32_t>(s.n_head),
         static_cast<uint32_t>(s.n_head / s.n_head_kv),
         static_cast<uint32_t>(s.head_dim),
         static_cast<uint32_t>(s.head_dim_v),
         s.scale,
         kv_code(tk),
         kv_code(tv),
         static_cast<uint32_t>(n_rows),
         npos_off,
         pt_off,
         static_cast<uint32_t>(kw),
         static_cast<uint32_t>(vw),
         static_cast<uint32_t>(static_cast<uint64_t>(n_rows) * kw / 4),
         static_cast<uint32_t>(static_cast<uint64_t>(n_rows) * vw / 4),
         static_cast<uint32_t>(split.splits),
         static_cast<uint32_t>(split.chunk),
         static_cast<uint32_t>(static_cast<uint64_t>(n_tok) * s.n_head * split.splits * s.head_dim_v)};
  static_assert(sizeof push == 72);
  uint32_t gx, gy;
  grid(n_tok * s.n_head * split.splits, gx, gy);
  if (split.splits == 1) {
    c.dispatch(pipeline("attention", 5, sizeof push), {&q, &k, &v, &meta, &out}, &push, sizeof push, gx, gy);
    return;
  }
  c.dispatch(pipeline("attention", 5, sizeof push), {&q, &k, &v, &meta, scratch}, &push, sizeof push, gx, gy);
  c.barrier();
  struct {
    uint32_t n_pairs, splits, hdv, ml_off;
  } merge{static_cast<uint32_t>(n_tok * s.n_head), push.splits, push.hdv, push.ml_off};
  grid(n_tok * s.n_head, gx, gy);
  c.dispatch(pipeline("attention_combine", 2, sizeof merge), {scratch, &out}, &merge, sizeof merge, gx, gy);
}

}  // namespace lokal::gpu
