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

// Byte offset of element `off` in a row of type t (off is a multiple of the block size).
inline size_t elem_offset(DType t, int64_t off) { return off == 0 ? 0 : row_size(t, off); }

// q . K[off .. off+n). For block-quantized K, `qq` holds q converted to K's partner type
// (ops/vec_dot.h) and the product runs in integers, as for weights.
inline float kdot(const VecF& vf, DType t, const float* q, const void* qq, const uint8_t* row, int64_t off, int64_t n) {
  switch (t) {
    case DType::F32: return vf.dot(q, reinterpret_cast<const float*>(row) + off, n);
    case DType::F16: return vf.dot_f16(q, reinterpret_cast<const uint16_t*>(row) + off, n);
    default: return vec_dot(t, n, row + elem_offset(t, off), qq);
  }
}
// acc += w * V[off .. off+n); quantized rows are dequantized into `tmp` first.
inline void vaxpy(const VecF& vf, DType t, float w, const uint8_t* row, int64_t off, float* acc, int64_t n, float* tmp) {
  switch (t) {
    case DType::F32: vf.axpy(w, reinterpret_cast<const float*>(row) + off, acc, n); break;
    case DType::F16: vf.axpy_f16(w, reinterpret_cast<const uint16_t*>(row) + off, acc, n); break;
    default:
      dequantize_row(t, row + elem_offset(t, off), tmp, n);
      vf.axpy(w, tmp, acc, n);
  }
}
void check_types(const AttentionShape& s, const KVRows& K, const KVRows& V) {
  for (auto [t, hd] : {std::pair{K.type, s.head_dim}, std::pair{V.type, s.head_dim_v}}) {
    if (!kv_cache_type_supported(t))
      throw Error(std::string("KV cache type ") + type_name(t) + " is not supported (supported: f32, f16, bf16, q8_0, q4_0)");
    if (hd % type_info(t)->block_size != 0)
      throw Error(std::string("KV cache type ") + type_name(t) + " needs a head size that is a multiple of " +
                  std::to_string(type_info(t)->block_size) + ", this model's is " + std::to_string(hd));
  }
}
}  // namespace

bool kv_cache_type_supported(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 || t == DType::Q4_0;
}

size_t attention_scratch_floats(const AttentionShape& s, DType k_type, int n_threads) {
  const size_t group = static_cast<size_t>(s.n_head / s.n_head_kv);
  const bool k_quant = k_type != DType::F32 && k_type != DType::F16;
  // Floats per group head needed for q in K's partner type (<= 4 bytes per element), if any.
  const size_t qq_floats = k_quant ? (row_size(vec_dot_type(k_type), s.head_dim) + 3) / 4 : 0;
  // Per thread: scores [group][kTile], running max/sum [group] x2, accumulators [group][hdv],
  // converted queries [group][qq_floats], one dequantized V segment [hdv].
  const size_t per_thread = group * (kTile + 2 + static_cast<size_t>(s.head_dim_v) + qq_floats) +
                            static_cast<size_t>(s.head_dim_v);
  return per_thread * static_cast<size_t>(std::max(1, n_threads));
}

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0,
               const KVRows& K, const KVRows& V, float* out, std::vector<float>& scratch) {
  check_types(s, K, V);
  const VecF& vf = vecf();
  const int group = s.n_head / s.n_head_kv;
  const int hd = s.head_dim, hdv = s.head_dim_v;
  const bool k_quant = K.type != DType::F32 && K.type != DType::F16;
  const bool v_direct = V.type == DType::F32 || V.type == DType::F16;  // axpy straight from the row
  const size_t qq_floats = k_quant ? (row_size(vec_dot_type(K.type), hd) + 3) / 4 : 0;
  const size_t per_thread = attention_scratch_floats(s, K.type, 1);
  scratch.resize(attention_scratch_floats(s, K.type, pool.size()));
  const int64_t n_items = n_tok * s.n_head_kv;
  pool.parallel_for(n_items, [&](int64_t item, int tid) {
    const int64_t t = item / s.n_head_kv;
    const int g = static_cast<int>(item % s.n_head_kv);
    const int64_t n_pos = pos0 + t + 1;
    float* sc = scratch.data() + per_thread * static_cast<size_t>(tid);
    float* m = sc + static_cast<size_t>(group) * kTile;
    float* l = m + group;
    float* acc = l + group;
    float* qq = acc + static_cast<size_t>(group) * hdv;
    float* vtmp = qq + static_cast<size_t>(group) * qq_floats;
    const float* qg = q + t * s.n_head * hd + static_cast<int64_t>(g) * group * hd;
    if (k_quant)
      for (int h = 0; h < group; ++h) quantize_activation(K.type, qg + h * hd, qq + h * qq_floats, hd);
    std::fill(m, m + group, -std::numeric_limits<float>::infinity());
    std::fill(l, l + group, 0.0f);
    std::fill(acc, acc + static_cast<size_t>(group) * hdv, 0.0f);
    for (int64_t j0 = 0; j0 < n_pos; j0 += kTile) {
      const int nt = static_cast<int>(std::min<int64_t>(kTile, n_pos - j0));
      // Scores for the tile, all heads of the group (each K row read once).
      for (int jj = 0; jj < nt; ++jj) {
        const uint8_t* kr = K.row(j0 + jj);
        for (int h = 0; h < group; ++h)
          sc[h * kTile + jj] = s.scale * kdot(vf, K.type, qg + h * hd, qq + h * qq_floats, kr, static_cast<int64_t>(g) * hd, hd);
      }
      // Online softmax update per head.
      for (int h = 0; h < group; ++h) {
        float* sh = sc + h * kTile;
        float tmax = m[h];
        for (int jj = 0; jj < nt; ++jj) tmax = std::max(tmax, sh[jj]);
        const float corr = std::exp(m[h] - tmax);  // 0 on the first tile (m = -inf)
        float sum = 0.0f;
        for (int jj = 0; jj < nt; ++jj) {
          sh[jj] = std::exp(sh[jj] - tmax);
          sum += sh[jj];
        }
        if (corr != 1.0f) vf.scale(acc + static_cast<size_t>(h) * hdv, corr, hdv);
        l[h] = l[h] * corr + sum;
        m[h] = tmax;
      }
      for (int jj = 0; jj < nt; ++jj) {
        const uint8_t* vr = V.row(j0 + jj);
        if (v_direct) {
          for (int h = 0; h < group; ++h)
            vaxpy(vf, V.type, sc[h * kTile + jj], vr, static_cast<int64_t>(g) * hdv, acc + static_cast<size_t>(h) * hdv, hdv, vtmp);
        } else {
          // Dequantize this row's segment once for all heads of the group.
          dequantize_row(V.type, vr + elem_offset(V.type, static_cast<int64_t>(g) * hdv), vtmp, hdv);
          for (int h = 0; h < group; ++h) vf.axpy(sc[h * kTile + jj], vtmp, acc + static_cast<size_t>(h) * hdv, hdv);
        }
      }
    }
    float* o = out + t * s.n_head * hdv + static_cast<int64_t>(g) * group * hdv;
    for (int h = 0; h < group; ++h) {
      const float inv = 1.0f / l[h];
      for (int d = 0; d < hdv; ++d) o[h * hdv + d] = acc[static_cast<size_t>(h) * hdv + d] * inv;
    }
  });
}

void attention_ref(const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0, const KVRows& K,
                   const KVRows& V, float* out) {
  check_types(s, K, V);
  const int group = s.n_head / s.n_head_kv;
  const int64_t n_ctx = pos0 + n_tok;
  const int64_t kw = static_cast<int64_t>(s.n_head_kv) * s.head_dim, vw = static_cast<int64_t>(s.n_head_kv) * s.head_dim_v;
  std::vector<float> kf(static_cast<size_t>(n_ctx * kw)), vfl(static_cast<size_t>(n_ctx * vw));
  for (int64_t j = 0; j < n_ctx; ++j) {
    dequantize_row(K.type, K.row(j), kf.data() + j * kw, kw);
    dequantize_row(V.type, V.row(j), vfl.data() + j * vw, vw);
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
