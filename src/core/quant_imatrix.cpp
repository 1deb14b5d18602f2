// core/quant_imatrix.cpp - importance-weighted quantizers (quantize_row_weighted, core/quant.h).
//
// Objective, per block: E = sum_j w_j (x_j - q_j)^2 with w_j = importance_weights(x, imp) (see quant.h), where q_j
// is the value the block dequantizes to. The search, per type:
//
//   one-scale types (Q4_0, Q5_0; the 16-element sub-blocks of Q3_K and Q6_K): codes L in [-a, b] with x ~ s * L.
//     Candidate reciprocal scales map the largest-magnitude value v to -(a + k/10) or to +(b + k/10), k = -10..10;
//     for each, L = round(x * iscale) and s is the weighted least-squares scale of those codes
//     (s = sum w x L / sum w L^2); the candidate with the lowest E is refined by re-rounding x / s and refitting
//     while E decreases.
//   scale + offset types (Q4_1, Q5_1; the sub-blocks of Q2_K, Q4_K, Q5_K): codes L in [0, n], x ~ s * L + o.
//     Candidate steps (n + k/10) / (max - min), k = -10..10, codes round((x - min) * iscale), (s, o) by weighted
//     least squares (2x2 normal equations; for K-quants o <= 0, as their min is stored as a non-negative
//     number), then the same refinement.
//   K-quant super-blocks: the sub-block scales (and mins) become integer codes of a super-block scale
//     d = max / (code range), rounded to fp16; then each sub-block tries its code +-2 (min code +-1), re-rounds
//     its elements with the resulting quantized scale, and keeps the combination with the lowest E.
//   fp16 block scales are rounded before the elements are re-rounded, so E is the error of the stored block.
//
// Finally the block is dequantized with the reference dequantizer and its E compared with that of the
// reference (round-to-nearest, unweighted) block of core/quant.cpp for the same x: the lower one is written.
// So the weighted quantizer's E is never above the reference's, whatever the data, and every block written is a
// block the reference dequantizer reads (it computed E from it). Q8_0 ignores importance (as llama.cpp does):
// its rounding error is already far below the other types'.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant.h"
#include "core/quant_gptq.h"

namespace lokal {

namespace {

inline float h2f(uint16_t h) { return fp16_to_fp32(h); }
inline uint16_t f2h(float f) { return fp32_to_fp16(f); }
inline float round_fp16(float f) { return h2f(f2h(f)); }
// Round half to even, as std::nearbyint in the default rounding mode, without a libm call (the baseline x86-64
// target has no SSE4.1 round instruction, so nearbyint is a call per element): adding and subtracting 1.5 * 2^23
// leaves exactly the nearest integer for |v| < 2^22 (the sum lies in [2^23, 2^24), where floats are the integers).
inline int nearest(float v) {
  if (std::fabs(v) < 4194304.0f) {
    const float t = v + 12582912.0f;  // not folded: the build uses no -ffast-math (IEEE semantics)
    return static_cast<int>(t - 12582912.0f);
  }
  return static_cast<int>(std::nearbyint(v));
}
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

constexpr float kTiny = 1e-20f;
constexpr int kSteps = 10;  // candidate scales on each side of the max-abs one

// Code of x for the scale s, clamped to [lo, hi] (0 when s is 0).
inline int code_for(float x, float inv, int lo, int hi) { return clampi(nearest(x * inv), lo, hi); }

// ---- one-scale fit: x ~ s * L, L in [-a, b] -------------------------------------------------

// Returns the weighted error; L gets codes, *scale the scale.
float fit_scale(const float* x, const float* w, int n, int a, int b, int* L, float* scale) {
  float amax = 0.0f, vmax = 0.0f, sw2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      vmax = x[i];
    }
    sw2 += w[i] * x[i] * x[i];
  }
  if (amax < kTiny) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *scale = 0.0f;
    return sw2;
  }
  int tmp[QK_K];
  float best_gain = -1.0f, best_scale = 0.0f;
  auto try_inv = [&](float inv) {
    float slx = 0.0f, sl2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = code_for(x[i], inv, -a, b);
      tmp[i] = l;
      slx += w[i] * x[i] * static_cast<float>(l);
      sl2 += w[i] * static_cast<float>(l * l);
    }
    if (sl2 <= 0.0f) return false;
    const float gain = slx * slx / sl2;
    if (gain <= best_gain) return false;
    best_gain = gain;
    best_scale = slx / sl2;
    std::memcpy(L, tmp, sizeof(int) * static_cast<size_t>(n));
    return true;
  };
  for (int k = -kSteps; k <= kSteps; ++k) {
    try_inv(-(static_cast<float>(a) + 0.1f * static_cast<float>(k)) / vmax);
    try_inv((static_cast<float>(b) + 0.1f * static_cast<float>(k)) / vmax);
  }
  for (int it = 0; it < 4 && best_scale != 0.0f; ++it)
    if (!try_inv(1.0f / best_scale)) break;
  if (best_gain < 0.0f) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *scale = 0.0f;
    return sw2;
  }
  *scale = best_scale;
  return sw2 - best_gain;
}

// ---- scale + offset fit: x ~ s * L + o, L in [0, nmax] ----------------------------------------

float fit_affine_w(const float* x, const float* w, int n, int nmax, bool offset_nonpos, int* L, float* scale,
                   float* offset) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (offset_nonpos && lo > 0.0f) lo = 0.0f;
  auto error_of = [&](float s, float o, const int* codes) {
    float e = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float d = s * static_cast<float>(codes[i]) + o - x[i];
      e += w[i] * d * d;
    }
    return e;
  };
  if (hi - lo < kTiny) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *scale = 0.0f;
    *offset = lo;
    return error_of(0.0f, lo, L);
  }
  float sw = 0.0f, swx = 0.0f;
  for (int i = 0; i < n; ++i) {
    sw += w[i];
    swx += w[i] * x[i];
  }
  int tmp[QK_K];
  float best_err = -1.0f, best_s = 0.0f, best_o = lo;
  // Codes for (inv, origin), then the weighted least-squares (s, o) of those codes.
  auto try_codes = [&](float inv, float origin) {
    float sl = 0.0f, sl2 = 0.0f, sxl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = code_for(x[i] - origin, inv, 0, nmax);
      tmp[i] = l;
      const float fl = static_cast<float>(l);
      sl += w[i] * fl;
      sl2 += w[i] * fl * fl;
      sxl += w[i] * fl * x[i];
    }
    float s, o;
    const float det = sw * sl2 - sl * sl;
    if (det > 0.0f) {
      s = (sw * sxl - swx * sl) / det;
      o = (sl2 * swx - sl * sxl) / det;
    } else {
      return false;
    }
    if (offset_nonpos && o > 0.0f) {
      o = 0.0f;
      s = sl2 > 0.0f ? sxl / sl2 : 0.0f;
    }
    if (s < 0.0f) return false;
    const float e = error_of(s, o, tmp);
    if (best_err >= 0.0f && e >= best_err) return false;
    best_err = e;
    best_s = s;
    best_o = o;
    std::memcpy(L, tmp, sizeof(int) * static_cast<size_t>(n));
    return true;
  };
  for (int k = -kSteps; k <= kSteps; ++k)
    try_codes((static_cast<float>(nmax) + 0.1f * static_cast<float>(k)) / (hi - lo), lo);
  for (int it = 0; it < 4 && best_s > 0.0f; ++it)
    if (!try_codes(1.0f / best_s, best_o)) break;
  if (best_err < 0.0f) {  // every candidate degenerate: one level
    for (int i = 0; i < n; ++i) L[i] = 0;
    *scale = 0.0f;
    *offset = offset_nonpos ? std::min(0.0f, swx / std::max(sw, kTiny)) : swx / std::max(sw, kTiny);
    return error_of(0.0f, *offset, L);
  }
  *scale = best_s;
  *offset = best_o;
  return best_err;
}

// ---- helpers ------------------------------------------------------------------------------

float weighted_error(DType type, const void* block, const float* x, const float* w, int n) {
  float y[QK_K];
  dequantize_row(type, block, y, n);
  float e = 0.0f;
  for (int i = 0; i < n; ++i) e += w[i] * (x[i] - y[i]) * (x[i] - y[i]);
  return e;
}

// Error of sub-block elements quantized with a fixed (quantized) scale and min: x ~ s * L - m.
float sub_error(const float* x, const float* w, int n, float s, float m, int lo, int hi, int* L) {
  const float inv = s != 0.0f ? 1.0f / s : 0.0f;
  float e = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = s != 0.0f ? code_for(x[i] + m, inv, lo, hi) : clampi(0, lo, hi);
    L[i] = l;
    const float d = s * static_cast<float>(l) - m - x[i];
    e += w[i] * d * d;
  }
  return e;
}

// Pack 256 two-bit codes (Q2_K/Q3_K layout): byte g*32 + p holds codes g*128 + p + 32c in bits 2c.
void pack_2bit(const int* L, uint8_t* qs) {
  for (int g = 0; g < 2; ++g)
    for (int p = 0; p < 32; ++p) {
      const int* l = L + g * 128 + p;
      qs[g * 32 + p] = static_cast<uint8_t>((l[0] & 3) | ((l[32] & 3) << 2) | ((l[64] & 3) << 4) | ((l[96] & 3) << 6));
    }
}

// ---- 32-element types -----------------------------------------------------------------------

void q4_0_w(const float* x, const float* w, BlockQ4_0* b) {
  int L[32];
  float s;
  fit_scale(x, w, 32, 8, 7, L, &s);
  b->d = f2h(s);
  const float d = h2f(b->d), inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 16; ++j) {
    const int a = code_for(x[j], inv, -8, 7) + 8, c = code_for(x[j + 16], inv, -8, 7) + 8;
    b->qs[j] = static_cast<uint8_t>(a | (c << 4));
  }
}

void q5_0_w(const float* x, const float* w, BlockQ5_0* b) {
  int L[32];
  float s;
  fit_scale(x, w, 32, 16, 15, L, &s);
  b->d = f2h(s);
  const float d = h2f(b->d), inv = d != 0.0f ? 1.0f / d : 0.0f;
  uint32_t hi = 0;
  for (int j = 0; j < 16; ++j) {
    const int a = code_for(x[j], inv, -16, 15) + 16, c = code_for(x[j + 16], inv, -16, 15) + 16;
    b->qs[j] = static_cast<uint8_t>((a & 15) | ((c & 15) << 4));
    hi |= static_cast<uint32_t>(a >> 4) << j;
    hi |= static_cast<uint32_t>(c >> 4) << (j + 16);
  }
  std::memcpy(b->qh, &hi, 4);
}

// Q4_1 / Q5_1 codes for the stored (fp16) scale and offset.
template <int NMAX>
void affine_codes(const float* x, uint16_t d16, uint16_t m16, int* L) {
  const float d = h2f(d16), m = h2f(m16), inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < 32; ++i) L[i] = d != 0.0f ? code_for(x[i] - m, inv, 0, NMAX) : 0;
}

void q4_1_w(const float* x, const float* w, BlockQ4_1* b) {
  int L[32];
  float s, o;
  fit_affine_w(x, w, 32, 15, false, L, &s, &o);
  b->d = f2h(s);
  b->m = f2h(o);
  affine_codes<15>(x, b->d, b->m, L);
  for (int j = 0; j < 16; ++j) b->qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
}

void q5_1_w(const float* x, const float* w, BlockQ5_1* b) {
  int L[32];
  float s, o;
  fit_affine_w(x, w, 32, 31, false, L, &s, &o);
  b->d = f2h(s);
  b->m = f2h(o);
  affine_codes<31>(x, b->d, b->m, L);
  uint32_t hi = 0;
  for (int j = 0; j < 16; ++j) {
    b->qs[j] = static_cast<uint8_t>((L[j] & 15) | ((L[j + 16] & 15) << 4));
    hi |= static_cast<uint32_t>(L[j] >> 4) << j;
    hi |= static_cast<uint32_t>(L[j + 16] >> 4) << (j + 16);
  }
  std::memcpy(b->qh, &hi, 4);
}

// ---- K-quants with scale + min sub-blocks (Q2_K, Q4_K, Q5_K) -----------------------------------

// n_sub sub-blocks of `sub` elements, codes 0..nmax, scale/min codes 0..cmax. Fills L (256 codes), sc and mn
// codes, and the fp16 super-block scales.
void fit_scale_min_superblock(const float* x, const float* w, int n_sub, int sub, int nmax, int cmax, int* L, int* sc,
                              int* mn, uint16_t* d16, uint16_t* dmin16) {
  float s[16], m[16];
  float max_s = 0.0f, max_m = 0.0f;
  for (int j = 0; j < n_sub; ++j) {
    float o;
    fit_affine_w(x + j * sub, w + j * sub, sub, nmax, true, L + j * sub, &s[j], &o);
    m[j] = -o;
    max_s = std::max(max_s, s[j]);
    max_m = std::max(max_m, m[j]);
  }
  *d16 = f2h(max_s / static_cast<float>(cmax));
  *dmin16 = f2h(max_m / static_cast<float>(cmax));
  const float d = h2f(*d16), dmin = h2f(*dmin16);
  int tmp[32];
  for (int j = 0; j < n_sub; ++j) {
    const int sc0 = d > 0.0f ? clampi(nearest(s[j] / d), 0, cmax) : 0;
    const int mn0 = dmin > 0.0f ? clampi(nearest(m[j] / dmin), 0, cmax) : 0;
    float best = -1.0f;
    for (int ds = -2; ds <= 2; ++ds)
      for (int dm = -1; dm <= 1; ++dm) {
        const int a = sc0 + ds, c = mn0 + dm;
        if (a < 0 || a > cmax || c < 0 || c > cmax) continue;
        const float e = sub_error(x + j * sub, w + j * sub, sub, d * static_cast<float>(a), dmin * static_cast<float>(c),
                                  0, nmax, tmp);
        if (best < 0.0f || e < best) {
          best = e;
          sc[j] = a;
          mn[j] = c;
          std::memcpy(L + j * sub, tmp, sizeof(int) * static_cast<size_t>(sub));
        }
      }
  }
}

void q2_k_w(const float* x, const float* w, BlockQ2_K* b) {
  int L[QK_K], sc[16], mn[16];
  fit_scale_min_superblock(x, w, 16, 16, 3, 15, L, sc, mn, &b->d, &b->dmin);
  for (int j = 0; j < 16; ++j) b->scales[j] = static_cast<uint8_t>(sc[j] | (mn[j] << 4));
  pack_2bit(L, b->qs);
}

// Q4_K/Q5_K: 8 pairs of six-bit (scale, min) codes in 12 bytes.
void pack_k4_scales(const int* sc, const int* mn, uint8_t* out) {
  std::memset(out, 0, K_SCALE_SIZE);
  for (int j = 0; j < 8; ++j) {
    const int ls = sc[j], lm = mn[j];
    if (j < 4) {
      out[j] = static_cast<uint8_t>(out[j] | ls);
      out[j + 4] = static_cast<uint8_t>(out[j + 4] | lm);
    } else {
      out[j + 4] = static_cast<uint8_t>((ls & 15) | ((lm & 15) << 4));
      out[j - 4] = static_cast<uint8_t>(out[j - 4] | ((ls >> 4) << 6));
      out[j] = static_cast<uint8_t>(out[j] | ((lm >> 4) << 6));
    }
  }
}

void q4_k_w(const float* x, const float* w, BlockQ4_K* b) {
  int L[QK_K], sc[8], mn[8];
  fit_scale_min_superblock(x, w, 8, 32, 15, 63, L, sc, mn, &b->d, &b->dmin);
  pack_k4_scales(sc, mn, b->scales);
  for (int g = 0; g < 4; ++g)
    for (int l = 0; l < 32; ++l) b->qs[g * 32 + l] = static_cast<uint8_t>(L[g * 64 + l] | (L[g * 64 + 32 + l] << 4));
}

void q5_k_w(const float* x, const float* w, BlockQ5_K* b) {
  int L[QK_K], sc[8], mn[8];
  fit_scale_min_superblock(x, w, 8, 32, 31, 63, L, sc, mn, &b->d, &b->dmin);
  pack_k4_scales(sc, mn, b->scales);
  std::memset(b->qh, 0, sizeof b->qh);
  for (int g = 0; g < 4; ++g)
    for (int l = 0; l < 32; ++l) {
      const int a = L[g * 64 + l], c = L[g * 64 + 32 + l];
      b->qs[g * 32 + l] = static_cast<uint8_t>((a & 15) | ((c & 15) << 4));
      b->qh[l] = static_cast<uint8_t>(b->qh[l] | ((a >> 4) << (2 * g)) | ((c >> 4) << (2 * g + 1)));
    }
}

// ---- K-quants with signed scales (Q3_K, Q6_K) -----------------------------------------------

// 16 sub-blocks of 16, codes in [-a, b], signed scale codes in [clo, chi] of d = (largest-magnitude scale) / clo.
void fit_signed_superblock(const float* x, const float* w, int a, int b, int clo, int chi, int* L, int* sc,
                           uint16_t* d16) {
  float s[16], vmax = 0.0f, amax = 0.0f;
  for (int j = 0; j < 16; ++j) {
    fit_scale(x + 16 * j, w + 16 * j, 16, a, b, L + 16 * j, &s[j]);
    if (std::fabs(s[j]) > amax) {
      amax = std::fabs(s[j]);
      vmax = s[j];
    }
  }
  *d16 = f2h(amax > 0.0f ? vmax / static_cast<float>(clo) : 0.0f);
  const float d = h2f(*d16);
  int tmp[16];
  for (int j = 0; j < 16; ++j) {
    const int c0 = d != 0.0f ? clampi(nearest(s[j] / d), clo, chi) : 0;
    float best = -1.0f;
    for (int dc = -2; dc <= 2; ++dc) {
      const int c = c0 + dc;
      if (c < clo || c > chi) continue;
      const float e = sub_error(x + 16 * j, w + 16 * j, 16, d * static_cast<float>(c), 0.0f, -a, b, tmp);
      if (best < 0.0f || e < best) {
        best = e;
        sc[j] = c;
        std::memcpy(L + 16 * j, tmp, sizeof tmp);
      }
    }
  }
}

void q3_k_w(const float* x, const float* w, BlockQ3_K* b) {
  int L[QK_K], sc[16];
  fit_signed_superblock(x, w, 4, 3, -32, 31, L, sc, &b->d);
  std::memset(b->scales, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = sc[j] + 32;
    if (j < 8) b->scales[j] = static_cast<uint8_t>(b->scales[j] | (l & 15));
    else b->scales[j - 8] = static_cast<uint8_t>(b->scales[j - 8] | ((l & 15) << 4));
    b->scales[8 + j % 4] = static_cast<uint8_t>(b->scales[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
  }
  std::memset(b->hmask, 0, sizeof b->hmask);
  int low[QK_K];
  for (int e = 0; e < QK_K; ++e) {
    int v = L[e] + 4;
    if (v > 3) {
      b->hmask[e % 32] = static_cast<uint8_t>(b->hmask[e % 32] | (1u << (e / 32)));
      v -= 4;
    }
    low[e] = v;
  }
  pack_2bit(low, b->qs);
}

void q6_k_w(const float* x, const float* w, BlockQ6_K* b) {
  int L[QK_K], sc[16];
  fit_signed_superblock(x, w, 32, 31, -128, 127, L, sc, &b->d);
  for (int j = 0; j < 16; ++j) b->scales[j] = static_cast<int8_t>(sc[j]);
  for (int e = 0; e < QK_K; ++e) L[e] += 32;
  for (int g = 0; g < 2; ++g)
    for (int p = 0; p < 32; ++p) {
      const int* l = L + g * 128 + p;
      b->ql[g * 64 + p] = static_cast<uint8_t>((l[0] & 15) | ((l[64] & 15) << 4));
      b->ql[g * 64 + 32 + p] = static_cast<uint8_t>((l[32] & 15) | ((l[96] & 15) << 4));
      b->qh[g * 32 + p] = static_cast<uint8_t>((l[0] >> 4) | ((l[32] >> 4) << 2) | ((l[64] >> 4) << 4) | ((l[96] >> 4) << 6));
    }
}

template <typename Block>
void run_blocks(DType type, const float* x, const float* w, void* dst, int64_t n, int bs,
                void (*fn)(const float*, const float*, Block*), bool check_reference = true) {
  auto* out = static_cast<Block*>(dst);
  Block ref;
  for (int64_t i = 0; i < n / bs; ++i) {
    const float* xb = x + i * bs;
    const float* wb = w + i * bs;
    fn(xb, wb, &out[i]);
    if (!check_reference) continue;
    quantize_row(type, xb, &ref, bs);
    if (weighted_error(type, &ref, xb, wb, bs) <= weighted_error(type, &out[i], xb, wb, bs)) out[i] = ref;
  }
}

}  // namespace

void quantize_block_weighted(DType type, const float* x, const float* w, void* block, bool check_reference) {
  switch (type) {
    case DType::Q4_0: return run_blocks<BlockQ4_0>(type, x, w, block, QK4_0, QK4_0, q4_0_w, check_reference);
    case DType::Q4_1: return run_blocks<BlockQ4_1>(type, x, w, block, QK4_1, QK4_1, q4_1_w, check_reference);
    case DType::Q5_0: return run_blocks<BlockQ5_0>(type, x, w, block, QK5_0, QK5_0, q5_0_w, check_reference);
    case DType::Q5_1: return run_blocks<BlockQ5_1>(type, x, w, block, QK5_1, QK5_1, q5_1_w, check_reference);
    case DType::Q2_K: return run_blocks<BlockQ2_K>(type, x, w, block, QK_K, QK_K, q2_k_w, check_reference);
    case DType::Q3_K: return run_blocks<BlockQ3_K>(type, x, w, block, QK_K, QK_K, q3_k_w, check_reference);
    case DType::Q4_K: return run_blocks<BlockQ4_K>(type, x, w, block, QK_K, QK_K, q4_k_w, check_reference);
    case DType::Q5_K: return run_blocks<BlockQ5_K>(type, x, w, block, QK_K, QK_K, q5_k_w, check_reference);
    case DType::Q6_K: return run_blocks<BlockQ6_K>(type, x, w, block, QK_K, QK_K, q6_k_w, check_reference);
    default: throw Error(std::string("quantize_block_weighted: no weighted quantizer for ") + type_name(type));
  }
}

void importance_weights(const float* x, const float* importance, int64_t n, float* w) {
  double sum_x2 = 0.0;
  float imax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    sum_x2 += static_cast<double>(x[i]) * x[i];
    imax = std::max(imax, importance[i]);
  }
  const float sigma2 = n > 0 ? static_cast<float>(sum_x2 / static_cast<double>(n)) : 0.0f;
  const float floor = imax > 0.0f ? 1e-6f * imax : 1.0f;  // columns never seen active still count a little
  for (int64_t i = 0; i < n; ++i) w[i] = std::max(importance[i], floor) * std::sqrt(sigma2 + x[i] * x[i]);
}

void quantize_row_weighted(DType type, const float* src, void* dst, int64_t n, const float* importance) {
  const TypeInfo* ti = type_info(type);
  if (!importance || !ti || !ti->quantized || type == DType::Q8_0 || type == DType::Q8_1 || type == DType::Q8_K)
    return quantize_row(type, src, dst, n);
  if (n < 0 || n % ti->block_size != 0)
    throw Error(std::string("row length ") + std::to_string(n) + " is not a multiple of the " + type_name(type) +
                " block size " + std::to_string(ti->block_size));
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(importance[i]) || importance[i] < 0.0f)
      throw Error("importance-weighted quantization: importance value " + std::to_string(importance[i]) +
                  " of column " + std::to_string(i) + " is not a finite non-negative number");
  std::vector<float> w(static_cast<size_t>(n));
  importance_weights(src, importance, n, w.data());
  switch (type) {
    case DType::Q4_0: return run_blocks<BlockQ4_0>(type, src, w.data(), dst, n, QK4_0, q4_0_w);
    case DType::Q4_1: return run_blocks<BlockQ4_1>(type, src, w.data(), dst, n, QK4_1, q4_1_w);
    case DType::Q5_0: return run_blocks<BlockQ5_0>(type, src, w.data(), dst, n, QK5_0, q5_0_w);
    case DType::Q5_1: return run_blocks<BlockQ5_1>(type, src, w.data(), dst, n, QK5_1, q5_1_w);
    case DType::Q2_K: return run_blocks<BlockQ2_K>(type, src, w.data(), dst, n, QK_K, q2_k_w);
    case DType::Q3_K: return run_blocks<BlockQ3_K>(type, src, w.data(), dst, n, QK_K, q3_k_w);
    case DType::Q4_K: return run_blocks<BlockQ4_K>(type, src, w.data(), dst, n, QK_K, q4_k_w);
    case DType::Q5_K: return run_blocks<BlockQ5_K>(type, src, w.data(), dst, n, QK_K, q5_k_w);
    case DType::Q6_K: return run_blocks<BlockQ6_K>(type, src, w.data(), dst, n, QK_K, q6_k_w);
    default: return quantize_row(type, src, dst, n);
  }
}

float quant_weighted_error(DType type, const void* row, const float* x, const float* w, int64_t n) {
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_row(type, row, y.data(), n);
  double e = 0.0;
  for (int64_t i = 0; i < n; ++i) e += static_cast<double>(w[i]) * (x[i] - y[i]) * (x[i] - y[i]);
  return static_cast<float>(e);
}

}  // namespace lokal
