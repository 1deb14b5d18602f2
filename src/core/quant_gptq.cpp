// core/quant_gptq.cpp - GPTQ-style error-feedback quantization into the standard block layouts (see
// core/quant_gptq.h for the method). lokal's own implementation of the published algorithm (Frantar et al.,
// "GPTQ", 2022): Cholesky factor of the damped inverse covariance, column-by-column rounding with error feedback.
#include "core/quant_gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/quant.h"

namespace lokal {

namespace {

// ---- code packing: unsigned codes u (as stored) into a block whose scales are already set ------------------

void pack_q4_0(const int* u, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(u[j] | (u[j + 16] << 4));
}

void pack_q5(const int* u, uint8_t* qh, uint8_t* qs) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((u[j] & 15) | ((u[j + 16] & 15) << 4));
    h |= static_cast<uint32_t>(u[j] >> 4) << j;
    h |= static_cast<uint32_t>(u[j + 16] >> 4) << (j + 16);
  }
  std::memcpy(qh, &h, 4);
}

// Element e of a 256 super-block: group g = e / 128, column c = (e % 128) / 32, position p = e % 32.
void pack_2bit_k(const int* u, uint8_t* qs) {
  std::memset(qs, 0, 64);
  for (int e = 0; e < QK_K; ++e) {
    const int g = e >> 7, c = (e >> 5) & 3, p = e & 31;
    qs[g * 32 + p] = static_cast<uint8_t>(qs[g * 32 + p] | ((u[e] & 3) << (2 * c)));
  }
}

void set_codes(DType type, void* block, const int* u) {
  switch (type) {
    case DType::Q4_0: return pack_q4_0(u, static_cast<BlockQ4_0*>(block)->qs);
    case DType::Q4_1: return pack_q4_0(u, static_cast<BlockQ4_1*>(block)->qs);
    case DType::Q5_0: {
      auto* b = static_cast<BlockQ5_0*>(block);
      return pack_q5(u, b->qh, b->qs);
    }
    case DType::Q5_1: {
      auto* b = static_cast<BlockQ5_1*>(block);
      return pack_q5(u, b->qh, b->qs);
    }
    case DType::Q2_K: return pack_2bit_k(u, static_cast<BlockQ2_K*>(block)->qs);
    case DType::Q3_K: {
      auto* b = static_cast<BlockQ3_K*>(block);
      pack_2bit_k(u, b->qs);
      std::memset(b->hmask, 0, sizeof b->hmask);
      for (int e = 0; e < QK_K; ++e) {
        const int g = e >> 7, c = (e >> 5) & 3, p = e & 31;
        if (u[e] >= 4) b->hmask[p] = static_cast<uint8_t>(b->hmask[p] | (1u << (g * 4 + c)));
      }
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      uint8_t* qs = type == DType::Q4_K ? static_cast<BlockQ4_K*>(block)->qs : static_cast<BlockQ5_K*>(block)->qs;
      std::memset(qs, 0, QK_K / 2);
      for (int j = 0; j < QK_K / 32; ++j)
        for (int l = 0; l < 32; ++l)
          qs[(j / 2) * 32 + l] = static_cast<uint8_t>(qs[(j / 2) * 32 + l] | ((u[j * 32 + l] & 15) << ((j & 1) * 4)));
      if (type == DType::Q5_K) {
        auto* b = static_cast<BlockQ5_K*>(block);
        std::memset(b->qh, 0, sizeof b->qh);
        for (int j = 0; j < QK_K / 32; ++j)
          for (int l = 0; l < 32; ++l) b->qh[l] = static_cast<uint8_t>(b->qh[l] | ((u[j * 32 + l] >> 4) << j));
      }
      return;
    }
    case DType::Q6_K: {
      auto* b = static_cast<BlockQ6_K*>(block);
      std::memset(b->ql, 0, sizeof b->ql);
      std::memset(b->qh, 0, sizeof b->qh);
      for (int e = 0; e < QK_K; ++e) {
        const int g = e >> 7, c = (e >> 5) & 3, p = e & 31;
        uint8_t& l = b->ql[g * 64 + (c & 1) * 32 + p];
        l = static_cast<uint8_t>(l | ((u[e] & 15) << ((c >> 1) * 4)));
        b->qh[g * 32 + p] = static_cast<uint8_t>(b->qh[g * 32 + p] | ((u[e] >> 4) << (2 * c)));
      }
      return;
    }
    default: throw Error(std::string("GPTQ: unsupported type ") + type_name(type));
  }
}

int code_max(DType type) {
  switch (type) {
    case DType::Q4_0: case DType::Q4_1: case DType::Q4_K: return 15;
    case DType::Q5_0: case DType::Q5_1: case DType::Q5_K: return 31;
    case DType::Q2_K: return 3;
    case DType::Q3_K: return 7;
    case DType::Q6_K: return 63;
    default: return 0;
  }
}

// Upper Cholesky factor R of the symmetric n x n matrix a (a = R^T R), in place: R in the upper triangle, the
// strict lower triangle zeroed. Row-oriented (every inner loop is a contiguous axpy). False if not positive definite.
bool cholesky_upper(std::vector<double>& a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    double* rk = a.data() + k * n;
    const double d = rk[k];
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double r = std::sqrt(d), inv = 1.0 / r;
    rk[k] = r;
    for (int64_t j = k + 1; j < n; ++j) rk[j] *= inv;
    for (int64_t i = k + 1; i < n; ++i) {
      const double c = rk[i];
      if (c == 0.0) continue;
      double* ri = a.data() + i * n;
      for (int64_t j = i; j < n; ++j) ri[j] -= c * rk[j];
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) a[static_cast<size_t>(i * n + j)] = 0.0;
  return true;
}

}  // namespace

bool gptq_supports(DType type) { return code_max(type) > 0; }

GptqFactor gptq_prepare(const float* H, int64_t n, float damp) {
  GptqFactor f;
  gptq_prepare(H, n, damp, f);
  return f;
}

void gptq_prepare(const float* H, int64_t n, float damp, GptqFactor& f) {
  if (n <= 0) throw Error("GPTQ: empty covariance");
  double mean_diag = 0.0;
  for (int64_t i = 0; i < n; ++i) mean_diag += H[i * n + i];
  mean_diag /= static_cast<double>(n);
  if (!(mean_diag > 0.0) || !std::isfinite(mean_diag)) throw Error("GPTQ: the covariance has no positive diagonal");
  const size_t nn = static_cast<size_t>(n * n);
  // U is the inverse of the upper triangular M with H = M M^T (then H^-1 = M^-T M^-1 = U^T U). M comes from the
  // ordinary Cholesky factor of H with its rows and columns reversed (J H J = R^T R gives M = J R^T J), so
  // U = J (R^-1)^T J: one factorisation and one triangular inverse, no explicit H^-1.
  // scratch reused across calls (no fresh zeroed pages per matrix); every element read is written first
  static thread_local std::vector<double> a, rinv;
  a.resize(nn);
  rinv.resize(nn);
  double lambda = static_cast<double>(damp) * mean_diag;
  bool ok = false;
  for (int attempt = 0; attempt < 4 && !ok; ++attempt, lambda *= 10.0) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i; j < n; ++j) {
        // J H J, symmetrised; columns never active (H_ii = 0) get the damping alone
        const int64_t ri = n - 1 - i, rj = n - 1 - j;
        const double v = 0.5 * (static_cast<double>(H[ri * n + rj]) + static_cast<double>(H[rj * n + ri]));
        a[static_cast<size_t>(i * n + j)] = v + (i == j ? lambda : 0.0);
      }
    ok = cholesky_upper(a, n);  // J H J = R^T R
  }
  if (!ok) throw Error("GPTQ: the damped covariance is not positive definite");
  // Rinv = R^-1 (upper), bottom row first: Rinv_i = (e_i - sum_{k>i} R_ik Rinv_k) / R_ii; row k lives in [k, n).
  for (int64_t i = n - 1; i >= 0; --i) {
    double* out = rinv.data() + i * n;
    std::fill(out + i, out + n, 0.0);
    const double* r = a.data() + i * n;
    for (int64_t k = i + 1; k < n; ++k) {
      const double c = r[k];
      if (c == 0.0) continue;
      const double* rk = rinv.data() + k * n;
      for (int64_t j = k; j < n; ++j) out[j] -= c * rk[j];
    }
    out[i] += 1.0;
    const double inv = 1.0 / r[i];
    for (int64_t j = i; j < n; ++j) out[j] *= inv;
  }
  f.n = n;
  f.U.resize(nn);
  for (int64_t i = 0; i < n; ++i) std::fill(f.U.begin() + i * n, f.U.begin() + i * n + i, 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j)
      f.U[static_cast<size_t>(i * n + j)] = static_cast<float>(rinv[static_cast<size_t>((n - 1 - j) * n + (n - 1 - i))]);
  f.H.assign(H, H + nn);
}

void quantize_row_gptq(DType type, const float* src, void* dst, int64_t n, const float* importance, const GptqFactor& f) {
  const TypeInfo* ti = type_info(type);
  if (!gptq_supports(type) || !ti) throw Error(std::string("GPTQ: unsupported type ") + type_name(type));
  const int bs = static_cast<int>(ti->block_size);
  if (n != f.n || n % bs != 0)
    throw Error("GPTQ: row length " + std::to_string(n) + " does not match the covariance (" + std::to_string(f.n) +
                ") or the " + type_name(type) + " block size");
  const size_t bbytes = row_size(type, bs);
  const int umax = code_max(type);
  std::vector<float> w(src, src + n);
  double sum_x2 = 0.0;
  float imax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    sum_x2 += static_cast<double>(src[i]) * src[i];
    imax = std::max(imax, importance[i]);
  }
  const float sigma2 = static_cast<float>(sum_x2 / static_cast<double>(n));
  const float floor = imax > 0.0f ? 1e-6f * imax : 1.0f;
  std::vector<float> wt(static_cast<size_t>(bs)), y0(static_cast<size_t>(bs)), y1(static_cast<size_t>(bs));
  std::vector<int> u(static_cast<size_t>(bs));
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t c0 = 0; c0 < n; c0 += bs) {
    float* xb = w.data() + c0;
    // the search's weights: importance times sqrt(sigma2 + x^2), as quantize_row_weighted (measured against
    // 1/U_jj^2 and importance alone: this one gives the lowest KL on tinytales, most clearly for Q2_K)
    for (int j = 0; j < bs; ++j) wt[j] = std::max(importance[c0 + j], floor) * std::sqrt(sigma2 + xb[j] * xb[j]);
    void* blk = out + static_cast<size_t>(c0 / bs) * bbytes;
    quantize_block_weighted(type, xb, wt.data(), blk, false);  // only its scales are used
    // The block's grid: value(u) = y0 + u * step, from the reference dequantizer.
    std::fill(u.begin(), u.end(), 0);
    set_codes(type, blk, u.data());
    dequantize_row(type, blk, y0.data(), bs);
    std::fill(u.begin(), u.end(), umax);
    set_codes(type, blk, u.data());
    dequantize_row(type, blk, y1.data(), bs);
    for (int j = 0; j < bs; ++j) {
      const int64_t c = c0 + j;
      const float step = (y1[j] - y0[j]) / static_cast<float>(umax);
      int code = 0;
      if (step != 0.0f) code = std::clamp(static_cast<int>(std::nearbyint((w[c] - y0[j]) / step)), 0, umax);
      u[j] = code;
      const float q = y0[j] + step * static_cast<float>(code);
      const float* Ur = f.U.data() + c * n;
      const float err = (w[c] - q) / Ur[c];
      for (int64_t k = c + 1; k < n; ++k) w[k] -= err * Ur[k];
    }
    set_codes(type, blk, u.data());
  }
}

double gptq_output_error(DType type, const void* row, const float* w, const GptqFactor& f) {
  const int64_t n = f.n;
  std::vector<float> e(static_cast<size_t>(n));
  dequantize_row(type, row, e.data(), n);
  for (int64_t i = 0; i < n; ++i) e[i] = w[i] - e[i];
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* hr = f.H.data() + i * n;
    double t = 0.0;
    for (int64_t j = 0; j < n; ++j) t += static_cast<double>(hr[j]) * e[j];
    s += t * e[i];
  }
  return s;
}

}  // namespace lokal
