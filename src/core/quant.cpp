// core/quant.cpp - scalar reference (de)quantization of every supported block type.
//
// Numerics follow llama.cpp's reference C code exactly (same operations in the same order,
// single-precision throughout, no fused multiply-add), so dequantization is bit-exact and
// quantization reproduces the bytes that llama-quantize writes without an importance matrix.
// Anything here that looks odd (rounding by a magic constant, truncating casts, the order
// of a product) is there on purpose: changing it changes the bytes.
#include "core/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/fp16.h"

namespace lokal {

namespace {

inline float h2f(uint16_t h) { return fp16_to_fp32_fast(h); }
inline uint16_t f2h(float f) { return fp32_to_fp16(f); }

// Round to the nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 puts the
// integer part into the low mantissa bits (the FPU does the rounding).
inline int round_even(float v) {
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

template <typename T>
inline T clampv(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

[[noreturn]] void unsupported(const char* what, DType t) {
  throw Error(std::string(what) + ": tensor type " + type_name(t) + " (id " +
              std::to_string(static_cast<uint32_t>(t)) + ") is not supported");
}

void check_len(DType t, int64_t n, int64_t block) {
  if (n < 0 || n % block != 0)
    throw Error(std::string("row length ") + std::to_string(n) + " is not a multiple of the " + type_name(t) +
                " block size " + std::to_string(block));
}

// ---------------------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------------------

void deq_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK4_0) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      y[j] = static_cast<float>((b[i].qs[j] & 15) - 8) * d;
      y[j + QK4_0 / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void deq_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK4_1) {
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      y[j] = static_cast<float>(b[i].qs[j] & 15) * d + m;
      y[j + QK4_1 / 2] = static_cast<float>(b[i].qs[j] >> 4) * d + m;
    }
  }
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void deq_q5_0(const BlockQ5_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK5_0) {
    const float d = h2f(b[i].d);
    const uint32_t hi = load_u32(b[i].qh);
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const int lo = (b[i].qs[j] & 15) | static_cast<int>(((hi >> j) & 1u) << 4);
      const int up = (b[i].qs[j] >> 4) | static_cast<int>(((hi >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + QK5_0 / 2] = static_cast<float>(up - 16) * d;
    }
  }
}

void deq_q5_1(const BlockQ5_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK5_1) {
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    const uint32_t hi = load_u32(b[i].qh);
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const int lo = (b[i].qs[j] & 15) | static_cast<int>(((hi >> j) & 1u) << 4);
      const int up = (b[i].qs[j] >> 4) | static_cast<int>(((hi >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo) * d + m;
      y[j + QK5_1 / 2] = static_cast<float>(up) * d + m;
    }
  }
}

void deq_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK8_0) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < QK8_0; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

void deq_q8_1(const BlockQ8_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK8_1) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < QK8_1; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

// Q2_K: 16 sub-blocks of 16; each scale byte = (min code << 4) | scale code.
// Element e of the 256: group g = e / 128, within it column c = (e % 128) / 32 selects the bit
// pair (2c), and position p = e % 32 selects the byte g*32 + p.
void deq_q2_k(const BlockQ2_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int e = 0; e < QK_K; ++e) {
      const int g = e >> 7, c = (e >> 5) & 3, p = e & 31;
      const uint8_t sc = b[i].scales[e >> 4];
      const float dl = d * static_cast<float>(sc & 15);
      const float ml = dmin * static_cast<float>(sc >> 4);
      const int q = (b[i].qs[g * 32 + p] >> (2 * c)) & 3;
      *y++ = dl * static_cast<float>(q) - ml;
    }
  }
}

// Q3_K scales: 16 six-bit values; low nibbles in bytes 0..7 (sub-blocks 0..7 low, 8..15 high
// nibble), the top two bits in bytes 8..11 (sub-block j: byte 8 + j%4, bits 2*(j/4)).
inline int q3k_scale(const uint8_t* s, int j) {
  const int lo = j < 8 ? (s[j] & 15) : (s[j - 8] >> 4);
  const int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

void deq_q3_k(const BlockQ3_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    for (int e = 0; e < QK_K; ++e) {
      const int g = e >> 7, c = (e >> 5) & 3, p = e & 31;
      const float dl = d * static_cast<float>(q3k_scale(b[i].scales, e >> 4));
      const int lo = (b[i].qs[g * 32 + p] >> (2 * c)) & 3;
      const bool high = (b[i].hmask[p] >> (g * 4 + c)) & 1;
      *y++ = dl * static_cast<float>(lo - (high ? 0 : 4));
    }
  }
}

// Q4_K/Q5_K scales: 8 pairs of six-bit (scale, min). Pairs 0..3 in the low 6 bits of bytes 0..3
// (scales) and 4..7 (mins); pairs 4..7 in the nibbles of bytes 8..11 plus the top two bits of
// bytes 0..3 (scale) / 4..7 (min).
inline void k4_scale_min(const uint8_t* s, int j, int& sc, int& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void deq_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int j = 0; j < QK_K / 32; ++j) {  // sub-block of 32
      int sc, mn;
      k4_scale_min(b[i].scales, j, sc, mn);
      const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
      const uint8_t* q = b[i].qs + (j / 2) * 32;
      const int shift = (j & 1) * 4;
      for (int l = 0; l < 32; ++l) *y++ = dl * static_cast<float>((q[l] >> shift) & 15) - ml;
    }
  }
}

void deq_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int j = 0; j < QK_K / 32; ++j) {
      int sc, mn;
      k4_scale_min(b[i].scales, j, sc, mn);
      const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
      const uint8_t* q = b[i].qs + (j / 2) * 32;
      const int shift = (j & 1) * 4;
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 15) + (((b[i].qh[l] >> j) & 1) << 4);
        *y++ = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

// Q6_K: element e, group g = e/128, column c = (e%128)/32, position p = e%32:
// low nibble from ql[g*64 + (c&1)*32 + p] (nibble c/2), two high bits from qh[g*32 + p] (bits 2c).
void deq_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    for (int e = 0; e < QK_K; ++e) {
      const int g = e >> 7, c = (e >> 5) & 3, p = e & 31;
      const int lo = (b[i].ql[g * 64 + (c & 1) * 32 + p] >> ((c >> 1) * 4)) & 15;
      const int hi = (b[i].qh[g * 32 + p] >> (2 * c)) & 3;
      const int q = (lo | (hi << 4)) - 32;
      *y++ = d * static_cast<float>(b[i].scales[e >> 4]) * static_cast<float>(q);
    }
  }
}

void deq_q8_k(const BlockQ8_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i)
    for (int j = 0; j < QK_K; ++j) *y++ = b[i].d * static_cast<float>(b[i].qs[j]);
}

// ---------------------------------------------------------------------------------------------
// Quantization: 32-element formats
// ---------------------------------------------------------------------------------------------

// Value with the largest magnitude (first one wins on ties), as a signed number.
inline float signed_absmax(const float* x, int n, float* amax_out) {
  float amax = 0.0f, vmax = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  if (amax_out) *amax_out = amax;
  return vmax;
}

void q_q4_0(const float* x, BlockQ4_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK4_0) {
    const float d = signed_absmax(x, QK4_0, nullptr) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f2h(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const int a = std::min(15, static_cast<int>(static_cast<int8_t>(static_cast<int>(x[j] * id + 8.5f))));
      const int c = std::min(15, static_cast<int>(static_cast<int8_t>(static_cast<int>(x[j + 16] * id + 8.5f))));
      b[i].qs[j] = static_cast<uint8_t>(a | (c << 4));
    }
  }
}

inline void minmax(const float* x, int n, float& mn, float& mx) {
  mn = 3.402823466e+38f;
  mx = -3.402823466e+38f;
  for (int j = 0; j < n; ++j) {
    if (x[j] < mn) mn = x[j];
    if (x[j] > mx) mx = x[j];
  }
}

void q_q4_1(const float* x, BlockQ4_1* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK4_1) {
    float mn, mx;
    minmax(x, QK4_1, mn, mx);
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f2h(d);
    b[i].m = f2h(mn);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      const int a = std::min(15, static_cast<int>(static_cast<int8_t>(static_cast<int>((x[j] - mn) * id + 0.5f))));
      const int c =
          std::min(15, static_cast<int>(static_cast<int8_t>(static_cast<int>((x[j + 16] - mn) * id + 0.5f))));
      b[i].qs[j] = static_cast<uint8_t>(a | (c << 4));
    }
  }
}

void q_q5_0(const float* x, BlockQ5_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK5_0) {
    const float d = signed_absmax(x, QK5_0, nullptr) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f2h(d);
    uint32_t hi = 0;
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const int a = std::min(31, static_cast<int>(static_cast<int8_t>(static_cast<int>(x[j] * id + 16.5f))));
      const int c = std::min(31, static_cast<int>(static_cast<int8_t>(static_cast<int>(x[j + 16] * id + 16.5f))));
      b[i].qs[j] = static_cast<uint8_t>((a & 15) | ((c & 15) << 4));
      hi |= static_cast<uint32_t>((a >> 4) & 1) << j;
      hi |= static_cast<uint32_t>((c >> 4) & 1) << (j + 16);
    }
    std::memcpy(b[i].qh, &hi, 4);
  }
}

void q_q5_1(const float* x, BlockQ5_1* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK5_1) {
    float mn, mx;
    minmax(x, QK5_1, mn, mx);
    const float d = (mx - mn) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f2h(d);
    b[i].m = f2h(mn);
    uint32_t hi = 0;
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const int a = static_cast<uint8_t>(static_cast<int>((x[j] - mn) * id + 0.5f));
      const int c = static_cast<uint8_t>(static_cast<int>((x[j + 16] - mn) * id + 0.5f));
      b[i].qs[j] = static_cast<uint8_t>((a & 15) | ((c & 15) << 4));
      hi |= static_cast<uint32_t>((a >> 4) & 1) << j;
      hi |= static_cast<uint32_t>((c >> 4) & 1) << (j + 16);
    }
    std::memcpy(b[i].qh, &hi, 4);
  }
}

// Weight-file Q8_0: scale = amax/127, multiply by its reciprocal, round half away from zero.
void q_q8_0(const float* x, BlockQ8_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f2h(d);
    for (int j = 0; j < QK8_0; ++j) b[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void q_q8_1(const float* x, BlockQ8_1* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK8_1) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_1; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = f2h(d);
    int sum = 0;
    for (int j = 0; j < QK8_1; ++j) {
      b[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
      sum += b[i].qs[j];
    }
    b[i].s = f2h(static_cast<float>(sum) * d);
  }
}

// ---------------------------------------------------------------------------------------------
// Quantization: K-quant scale searches
// ---------------------------------------------------------------------------------------------

constexpr float kTinyGroup = 1e-15f;

// Symmetric codes in [-nmax, nmax-1] for n values, least-squares scale weighted by x^2, trying
// 18 perturbed reciprocal scales around nmax/|max|. L receives codes + nmax. Returns the scale.
float fit_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax;
  const float vmax = signed_absmax(x, n, &amax);
  if (amax < kTinyGroup) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  auto code = [nmax](float v) { return clampv(round_even(v), -nmax, nmax - 1); };
  float iscale = static_cast<float>(-nmax) / vmax;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = code(iscale * x[i]);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / vmax;
    sumlx = suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(code(iscale * x[i]));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(nmax + code(iscale * x[i]));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Symmetric 3-bit fit with coordinate-descent refinement (weights x^2). L gets codes + nmax.
float fit_q3(int n, int nmax, const float* x, int8_t* L) {
  float amax;
  const float vmax = signed_absmax(x, n, &amax);
  if (amax < kTinyGroup) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  const float iscale = static_cast<float>(-nmax) / vmax;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = clampv(round_even(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      const float li = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * li;
      if (slx > 0.0f) {
        float sl2 = suml2 - w * li * li;
        const int nl = clampv(round_even(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (nl != L[i]) {
          const float fl = static_cast<float>(nl);
          slx += w * x[i] * fl;
          sl2 += w * fl * fl;
          if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(nl);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return sumlx / suml2;
}

// Affine fit x ~ scale * L - min_out with codes L in [0, nmax] (min clamped to <= 0), minimizing
// the weighted absolute (use_abs) or squared error over nstep+1 candidate reciprocal scales.
float fit_affine(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* min_out, uint8_t* Laux,
                 float rmin, float rdelta, int nstep, bool use_abs) {
  float lo = x[0], hi = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (lo > 0.0f) lo = 0.0f;
  if (hi == lo) {
    std::memset(L, 0, static_cast<size_t>(n));
    *min_out = -lo;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (hi - lo);
  float scale = 1.0f / iscale;
  float best_err = 0.0f;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(clampv(round_even(iscale * (x[i] - lo)), 0, nmax));
    float diff = scale * static_cast<float>(L[i]) + lo - x[i];
    diff = use_abs ? std::fabs(diff) : diff * diff;
    best_err += weights[i] * diff;
  }
  if (nstep < 1) {
    *min_out = -lo;
    return scale;
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(nmax)) / (hi - lo);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clampv(round_even(iscale * (x[i] - lo)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i], fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0.0f) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0.0f) {
        this_min = 0.0f;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0.0f;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = use_abs ? std::fabs(diff) : diff * diff;
        err += weights[i] * diff;
      }
      if (err < best_err) {
        std::memcpy(L, Laux, static_cast<size_t>(n));
        best_err = err;
        scale = this_scale;
        lo = this_min;
      }
    }
  }
  *min_out = -lo;
  return scale;
}

// Pack 256 two-bit codes: byte g*32 + p holds codes g*128 + p + 32c in bits 2c.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int g = 0; g < 2; ++g)
    for (int p = 0; p < 32; ++p) {
      const uint8_t* l = L + g * 128 + p;
      qs[g * 32 + p] = static_cast<uint8_t>(l[0] | (l[32] << 2) | (l[64] << 4) | (l[96] << 6));
    }
}

void q_q2_k(const float* x, BlockQ2_K* b, int64_t nb) {
  uint8_t L[QK_K], Laux[16];
  float weights[16], mins[QK_K / 16], scales[QK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < QK_K / 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = fit_affine(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0.0f) {
      const float iscale = 15.0f / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) b[i].scales[j] = static_cast<uint8_t>(round_even(iscale * scales[j]));
      b[i].d = f2h(max_scale / 15.0f);
    } else {
      std::memset(b[i].scales, 0, sizeof b[i].scales);
      b[i].d = f2h(0.0f);
    }
    if (max_min > 0.0f) {
      const float iscale = 15.0f / max_min;
      for (int j = 0; j < QK_K / 16; ++j)
        b[i].scales[j] = static_cast<uint8_t>(b[i].scales[j] | (round_even(iscale * mins[j]) << 4));
      b[i].dmin = f2h(max_min / 15.0f);
    } else {
      b[i].dmin = f2h(0.0f);
    }
    const float dq = h2f(b[i].d), dmq = h2f(b[i].dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = dq * static_cast<float>(b[i].scales[j] & 15);
      if (d == 0.0f) continue;
      const float dm = dmq * static_cast<float>(b[i].scales[j] >> 4);
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<uint8_t>(clampv(round_even((x[16 * j + l] + dm) / d), 0, 3));
    }
    pack_2bit(L, b[i].qs);
  }
}

void q_q3_k(const float* x, BlockQ3_K* b, int64_t nb) {
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float max_scale = 0.0f, amax = 0.0f;
    for (int j = 0; j < QK_K / 16; ++j) {
      scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    std::memset(b[i].scales, 0, 12);
    if (max_scale != 0.0f) {
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) {
        int l = static_cast<int8_t>(round_even(iscale * scales[j]));
        l = clampv(l, -32, 31) + 32;
        if (j < 8)
          b[i].scales[j] = static_cast<uint8_t>(l & 15);
        else
          b[i].scales[j - 8] = static_cast<uint8_t>(b[i].scales[j - 8] | ((l & 15) << 4));
        b[i].scales[8 + j % 4] = static_cast<uint8_t>(b[i].scales[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
      }
      b[i].d = f2h(1.0f / iscale);
    } else {
      b[i].d = f2h(0.0f);
    }
    const float dq = h2f(b[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = dq * static_cast<float>(q3k_scale(b[i].scales, j));
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<int8_t>(clampv(round_even(x[16 * j + l] / d), -4, 3) + 4);
    }
    // High bit of code e goes to hmask[e % 32], bit e / 32; the low two bits are packed as Q2_K.
    std::memset(b[i].hmask, 0, sizeof b[i].hmask);
    uint8_t low[QK_K];
    for (int e = 0; e < QK_K; ++e) {
      int v = L[e];
      if (v > 3) {
        b[i].hmask[e % 32] = static_cast<uint8_t>(b[i].hmask[e % 32] | (1u << (e / 32)));
        v -= 4;
      }
      low[e] = static_cast<uint8_t>(v);
    }
    pack_2bit(low, b[i].qs);
  }
}

// Shared by Q4_K and Q5_K: per 32-element sub-block affine fits, 6-bit scale/min codes.
void k4_fit_block(const float* x, int nmax, float rmin, int nstep, uint8_t* L, uint8_t* scales_out, uint16_t& d_out,
                  uint16_t& dmin_out) {
  uint8_t Laux[32];
  float weights[32], mins[QK_K / 32], scales[QK_K / 32];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < QK_K / 32; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = fit_affine(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < QK_K / 32; ++j) {
    const uint8_t ls = std::min<uint8_t>(63, static_cast<uint8_t>(round_even(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, static_cast<uint8_t>(round_even(inv_min * mins[j])));
    if (j < 4) {
      scales_out[j] = ls;
      scales_out[j + 4] = lm;
    } else {
      scales_out[j + 4] = static_cast<uint8_t>((ls & 15) | ((lm & 15) << 4));
      scales_out[j - 4] = static_cast<uint8_t>(scales_out[j - 4] | ((ls >> 4) << 6));
      scales_out[j] = static_cast<uint8_t>(scales_out[j] | ((lm >> 4) << 6));
    }
  }
  d_out = f2h(max_scale / 63.0f);
  dmin_out = f2h(max_min / 63.0f);
  const float dq = h2f(d_out), dmq = h2f(dmin_out);
  for (int j = 0; j < QK_K / 32; ++j) {
    int sc, mn;
    k4_scale_min(scales_out, j, sc, mn);
    const float d = dq * static_cast<float>(sc);
    if (d == 0.0f) continue;
    const float dm = dmq * static_cast<float>(mn);
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = static_cast<uint8_t>(clampv(round_even((x[32 * j + l] + dm) / d), 0, nmax));
  }
}

void q_q4_k(const float* x, BlockQ4_K* b, int64_t nb) {
  uint8_t L[QK_K];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    k4_fit_block(x, 15, -1.0f, 20, L, b[i].scales, b[i].d, b[i].dmin);
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < 32; ++l)
        b[i].qs[g * 32 + l] = static_cast<uint8_t>(L[g * 64 + l] | (L[g * 64 + 32 + l] << 4));
  }
}

void q_q5_k(const float* x, BlockQ5_K* b, int64_t nb) {
  uint8_t L[QK_K];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    k4_fit_block(x, 31, -0.5f, 15, L, b[i].scales, b[i].d, b[i].dmin);
    std::memset(b[i].qh, 0, sizeof b[i].qh);
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < 32; ++l) {
        const int a = L[g * 64 + l], c = L[g * 64 + 32 + l];
        b[i].qs[g * 32 + l] = static_cast<uint8_t>((a & 15) | ((c & 15) << 4));
        b[i].qh[l] = static_cast<uint8_t>(b[i].qh[l] | ((a >> 4) << (2 * g)) | ((c >> 4) << (2 * g + 1)));
      }
  }
}

void q_q6_k(const float* x, BlockQ6_K* b, int64_t nb) {
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float max_scale = 0.0f, max_abs = 0.0f;
    for (int j = 0; j < QK_K / 16; ++j) {
      scales[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > max_abs) {
        max_abs = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_abs < kTinyGroup) {
      std::memset(&b[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    const float iscale = -128.0f / max_scale;
    b[i].d = f2h(1.0f / iscale);
    for (int j = 0; j < QK_K / 16; ++j)
      b[i].scales[j] = static_cast<int8_t>(std::min(127, round_even(iscale * scales[j])));
    const float dq = h2f(b[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = dq * static_cast<float>(b[i].scales[j]);
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; ++l)
        L[16 * j + l] = static_cast<int8_t>(clampv(round_even(x[16 * j + l] / d), -32, 31) + 32);
    }
    for (int g = 0; g < 2; ++g)
      for (int p = 0; p < 32; ++p) {
        const int8_t* l = L + g * 128 + p;
        b[i].ql[g * 64 + p] = static_cast<uint8_t>((l[0] & 15) | ((l[64] & 15) << 4));
        b[i].ql[g * 64 + 32 + p] = static_cast<uint8_t>((l[32] & 15) | ((l[96] & 15) << 4));
        b[i].qh[g * 32 + p] =
            static_cast<uint8_t>((l[0] >> 4) | ((l[32] >> 4) << 2) | ((l[64] >> 4) << 4) | ((l[96] >> 4) << 6));
      }
  }
}

void q_q8_k(const float* x, BlockQ8_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float amax;
    const float vmax = signed_absmax(x, QK_K, &amax);
    if (amax == 0.0f) {
      std::memset(&b[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    const float iscale = -127.0f / vmax;
    for (int j = 0; j < QK_K; ++j) b[i].qs[j] = static_cast<int8_t>(std::min(127, round_even(iscale * x[j])));
    for (int j = 0; j < QK_K / 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b[i].qs[16 * j + l];
      b[i].bsums[j] = static_cast<int16_t>(sum);
    }
    b[i].d = 1.0f / iscale;
  }
}

}  // namespace

void dequantize_row(DType type, const void* src, float* dst, int64_t n) {
  const TypeInfo* ti = type_info(type);
  if (!ti) unsupported("dequantize", type);
  check_len(type, n, ti->block_size);
  const int64_t nb = n / ti->block_size;
  switch (type) {
    case DType::F32:
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = h2f(h[i]);
      return;
    }
    case DType::BF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(h[i]);
      return;
    }
    case DType::Q4_0: return deq_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
    case DType::Q4_1: return deq_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case DType::Q5_0: return deq_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
    case DType::Q5_1: return deq_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
    case DType::Q8_0: return deq_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
    case DType::Q8_1: return deq_q8_1(static_cast<const BlockQ8_1*>(src), dst, nb);
    case DType::Q2_K: return deq_q2_k(static_cast<const BlockQ2_K*>(src), dst, nb);
    case DType::Q3_K: return deq_q3_k(static_cast<const BlockQ3_K*>(src), dst, nb);
    case DType::Q4_K: return deq_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb);
    case DType::Q5_K: return deq_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb);
    case DType::Q6_K: return deq_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
    case DType::Q8_K: return deq_q8_k(static_cast<const BlockQ8_K*>(src), dst, nb);
    default: unsupported("dequantize", type);
  }
}

void quantize_row(DType type, const float* src, void* dst, int64_t n) {
  const TypeInfo* ti = type_info(type);
  if (!ti) unsupported("quantize", type);
  check_len(type, n, ti->block_size);
  const int64_t nb = n / ti->block_size;
  switch (type) {
    case DType::F32:
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = f2h(src[i]);
      return;
    }
    case DType::BF16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_bf16(src[i]);
      return;
    }
    case DType::Q4_0: return q_q4_0(src, static_cast<BlockQ4_0*>(dst), nb);
    case DType::Q4_1: return q_q4_1(src, static_cast<BlockQ4_1*>(dst), nb);
    case DType::Q5_0: return q_q5_0(src, static_cast<BlockQ5_0*>(dst), nb);
    case DType::Q5_1: return q_q5_1(src, static_cast<BlockQ5_1*>(dst), nb);
    case DType::Q8_0: return q_q8_0(src, static_cast<BlockQ8_0*>(dst), nb);
    case DType::Q8_1: return q_q8_1(src, static_cast<BlockQ8_1*>(dst), nb);
    case DType::Q2_K: return q_q2_k(src, static_cast<BlockQ2_K*>(dst), nb);
    case DType::Q3_K: return q_q3_k(src, static_cast<BlockQ3_K*>(dst), nb);
    case DType::Q4_K: return q_q4_k(src, static_cast<BlockQ4_K*>(dst), nb);
    case DType::Q5_K: return q_q5_k(src, static_cast<BlockQ5_K*>(dst), nb);
    case DType::Q6_K: return q_q6_k(src, static_cast<BlockQ6_K*>(dst), nb);
    case DType::Q8_K: return q_q8_k(src, static_cast<BlockQ8_K*>(dst), nb);
    default: unsupported("quantize", type);
  }
}

}  // namespace lokal
