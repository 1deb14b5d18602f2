#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/fp16.h"
#include "ops/vecf.h"

namespace lokal {

namespace {
constexpr int kTile = 64;

inline float kdot(const VecF& vf, DType t, const float* q, const uint8_t* row, int64_t off, int64_t n) {
  if (t == DType::F32) return vf.dot(q, reinterpret_cast<const float*>(row) + off, n);
  return vf.dot_f16(q, reinterpret_cast<const uint16_t*>(row) + off, n);
}
inline void vaxpy(const VecF& vf, DType t, float w, const uint8_t* row, int64_t off, float* acc, int64_t n) {
  if (t == DType::F32) vf.axpy(w, reinterpret_cast<const float*>(row) + off, acc, n);
  else vf.axpy_f16(w, reinterpret_cast<const uint16_t*>(row) + off, acc, n);
}
void check_types(const KVRows& K, const KVRows& V) {
  for (DType t : {K.type, V.type})
    if (t != DType::F32 && t != DType::F16)
      throw Error(std::string("attention: KV cache type ") + type_name(t) + " is not supported");
}
}  // namespace

void attention(ThreadPool& pool, const AttentionShape& s, const float* q, int64_t n_tok, int64_t pos0,
               const KVRows& K, const KVRows& V, float* out, std::vector<float>& scratch) {
  check_types(K, V);
  const VecF& vf = vecf();
  const int group = s.n_head / s.n_head_kv;
  const int hd = s.head_dim, hdv = s.head_dim_v;
  // Per thread: scores [group][kTile], running max/sum [group] x2, accumulators [group][hdv].
  const size_t per_thread = static_cast<size_t>(group) * (kTile + 2 + hdv);
  scratch.resize(per_thread * static_cast<size_t>(pool.size()));
  const int64_t n_items = n_tok * s.n_head_kv;
  pool.parallel_for(n_items, [&](int64_t item, int tid) {
    const int64_t t = item / s.n_head_kv;
    const int g = static_cast<int>(item % s.n_head_kv);
    const int64_t n_pos = pos0 + t + 1;
    float* sc = scratch.data() + per_thread * static_cast<size_t>(tid);
    float* m = sc + static_cast<size_t>(group) * kTile;
    float* l = m + group;
    float* acc = l + group;
    const float* qg = q + t * s.n_head * hd + static_cast<int64_t>(g) * group * hd;
    std::fill(m, m + group, -std::numeric_limits<float>::infinity());
    std::fill(l, l + group, 0.0f);
    std::fill(acc, acc + static_cast<size_t>(group) * hdv, 0.0f);
    for (int64_t j0 = 0; j0 < n_pos; j0 += kTile) {
      const int nt = static_cast<int>(std::min<int64_t>(kTile, n_pos - j0));
      // Scores for the tile, all heads of the group (each K row read once).
      for (int jj = 0; jj < nt; ++jj) {
        const uint8_t* kr = K.row(j0 + jj);
        for (int h = 0; h < group; ++h)
          sc[h * kTile + jj] = s.scale * kdot(vf, K.type, qg + h * hd, kr, static_cast<int64_t>(g) * hd, hd);
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
        for (int h = 0; h < group; ++h)
          vaxpy(vf, V.type, sc[h * kTile + jj], vr, static_cast<int64_t>(g) * hdv, acc + static_cast<size_t>(h) * hdv, hdv);
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
  check_types(K, V);
  const int group = s.n_head / s.n_head_kv;
  auto load = [](const KVRows& R, int64_t j, int64_t i) {
    const uint8_t* r = R.row(j);
    return R.type == DType::F32 ? reinterpret_cast<const float*>(r)[i] : fp16_to_fp32(reinterpret_cast<const uint16_t*>(r)[i]);
  };
  for (int64_t t = 0; t < n_tok; ++t) {
    const int64_t n_pos = pos0 + t + 1;
    std::vector<double> p(static_cast<size_t>(n_pos));
    for (int h = 0; h < s.n_head; ++h) {
      const int g = h / group;
      const float* qh = q + (t * s.n_head + h) * s.head_dim;
      double mx = -INFINITY;
      for (int64_t j = 0; j < n_pos; ++j) {
        double d = 0;
        for (int i = 0; i < s.head_dim; ++i) d += static_cast<double>(qh[i]) * load(K, j, static_cast<int64_t>(g) * s.head_dim + i);
        p[static_cast<size_t>(j)] = d * s.scale;
        mx = std::max(mx, p[static_cast<size_t>(j)]);
      }
      double sum = 0;
      for (auto& v : p) sum += (v = std::exp(v - mx));
      for (int d = 0; d < s.head_dim_v; ++d) {
        double o = 0;
        for (int64_t j = 0; j < n_pos; ++j) o += p[static_cast<size_t>(j)] * load(V, j, static_cast<int64_t>(g) * s.head_dim_v + d);
        out[(t * s.n_head + h) * s.head_dim_v + d] = static_cast<float>(o / sum);
      }
    }
  }
}

}  // namespace lokal
