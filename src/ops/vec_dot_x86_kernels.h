// ops/vec_dot_x86_kernels.h - internal: the 256-bit x86 kernels, included (only) by
// vec_dot_avx2.cpp (LOKAL_KERNELS_VNNI 0: AVX2+FMA+F16C) and vec_dot_avx512.cpp
// (LOKAL_KERNELS_VNNI 1: the same kernels with AVX512-VL VNNI dot products). Each including
// file is compiled with its own ISA flags and is only called after a CPUID check.
//
// Integer parts are exact: the 8-bit products are summed with maddubs/madd (or dpbusd) into
// int16/int32 lanes that cannot overflow for the code ranges involved (weight codes of the
// block formats, activation codes in [-127, 127], which every activation quantizer
// guarantees). Only the order of the float accumulation differs from the scalar reference.
//
// Nothing here uses inline functions or templates from shared headers: an inline function
// instantiated in an ISA file would be compiled with those flags and the linker could pick
// that copy for the rest of the program. Everything lives in an anonymous namespace.
#pragma once
#ifndef LOKAL_KERNELS_VNNI
#error "define LOKAL_KERNELS_VNNI before including vec_dot_x86_kernels.h"
#endif
#include <immintrin.h>

#include <cstring>

#include "core/quant.h"
#include "ops/vec_dot_impl.h"

namespace lokal::detail {


namespace {

inline float half(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 16 packed bytes -> 32 nibbles: low nibbles in bytes 0..15, high nibbles in bytes 16..31.
inline __m256i nibbles(const uint8_t* p) {
  const __m128i v = load128(p);
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// 32 bits -> 32 bytes, byte i = 0xff if bit i is set.
inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL, 0x0303030303030303LL));
  const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
}

// Unsigned codes (0..127) times signed activation codes, summed in fours -> 8 int32.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if LOKAL_KERNELS_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
// Signed codes times signed codes (neither may be -128 where the other is negative).
inline __m256i dot_s8s8(__m256i a, __m256i b) { return dot_u8s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a)); }

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Float types
// ---------------------------------------------------------------------------------------------

float dot_f32(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const float*>(w);
  const auto* y = static_cast<const float*>(a);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

inline __m256 load_h8(const uint16_t* p) { return _mm256_cvtph_ps(load128(p)); }

float dot_f16(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(load_h8(x + i), load_h8(y + i), s0);
    s1 = _mm256_fmadd_ps(load_h8(x + i + 8), load_h8(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(load_h8(x + i + 16), load_h8(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(load_h8(x + i + 24), load_h8(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_h8(x + i), load_h8(y + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += half(x[i]) * half(y[i]);
  return s;
}

inline __m256 load_bf8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load128(p)), 16));
}
inline float bf(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float dot_bf16(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(load_bf8(x + i), load_bf8(y + i), s0);
    s1 = _mm256_fmadd_ps(load_bf8(x + i + 8), load_bf8(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(load_bf8(x + i + 16), load_bf8(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(load_bf8(x + i + 24), load_bf8(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_bf8(x + i), load_bf8(y + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s += bf(x[i]) * bf(y[i]);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers (byte-identical to the scalar reference)
// ---------------------------------------------------------------------------------------------

// Round-to-nearest-even float -> half conversion of every element (F16C).
void act_f16(const float* x, void* dst, int64_t n) {
  auto* h = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) h[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

// float -> bf16, round to nearest even; NaN -> quiet NaN (same as fp32_to_bf16).
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64);
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

void act_bf16(const float* x, void* dst, int64_t n) {
  auto* h = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  const __m256i absmask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absmask), inf);
    const __m256i r = _mm256_blendv_epi8(rounded, quiet, is_nan);
    // 8 x u32 (each < 2^16) -> 8 x u16
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), packed);
  }
  for (; i < n; ++i) h[i] = to_bf16(x[i]);
}

// Quantize 32 floats: d = amax/127, codes = round_even(x * 127/amax). Returns the int32 sum
// of the codes and stores them into q; *d_out gets d.
inline int quant32(const float* x, int8_t* q, float* d_out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
         v3 = _mm256_loadu_ps(x + 24);
  __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                           _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  *d_out = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), kRound));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), kRound));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), kRound));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), kRound));
  const int sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
  // Pack 32 int32 -> 32 int8 (saturating); the in-lane packs interleave 4-element groups,
  // the final permute restores the order.
  const __m256i p16a = _mm256_packs_epi32(i0, i1), p16b = _mm256_packs_epi32(i2, i3);
  const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return sum;
}

void act_q8_0(const float* x, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / 32; ++i) {
    float d;
    quant32(x + 32 * i, b[i].qs, &d);
    b[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
  }
}

void act_q8_1(const float* x, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_1*>(dst);
  for (int64_t i = 0; i < n / 32; ++i) {
    float d;
    const int sum = quant32(x + 32 * i, b[i].qs, &d);
    b[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    b[i].s = _cvtss_sh(d * static_cast<float>(sum), _MM_FROUND_TO_NEAREST_INT);
  }
}

// Q8_K: iscale = -127 / (the value of largest magnitude, first one on ties), codes =
// min(127, round_even(iscale * x)), bsums = sums of 16, d = 1 / iscale.
void act_q8_k(const float* x, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_K*>(dst);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    if (amax == 0.0f) {
      std::memset(&b[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    // First element whose magnitude equals amax gives the sign.
    float vmax = amax;
    const __m256 am = _mm256_set1_ps(amax);
    for (int j = 0; j < QK_K; j += 8) {
      const __m256 v = _mm256_loadu_ps(x + j);
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), am, _CMP_EQ_OQ));
      if (mask) {
        vmax = x[j + __builtin_ctz(static_cast<unsigned>(mask))];
        break;
      }
    }
    const float iscale = -127.0f / vmax;
    const __m256 vs = _mm256_set1_ps(iscale);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m256i cap = _mm256_set1_epi32(127);
    for (int j = 0; j < QK_K; j += 32) {
      __m256i q[4];
      for (int k = 0; k < 4; ++k)
        q[k] = _mm256_min_epi32(
            cap, _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k)), kRound)));
      b[i].bsums[j / 16] = static_cast<int16_t>(hsum_i32(_mm256_add_epi32(q[0], q[1])));
      b[i].bsums[j / 16 + 1] = static_cast<int16_t>(hsum_i32(_mm256_add_epi32(q[2], q[3])));
      const __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b[i].qs + j),
                          _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    b[i].d = 1.0f / iscale;
  }
}

// ---------------------------------------------------------------------------------------------
// 32-element block formats
// ---------------------------------------------------------------------------------------------

// Eight consecutive fp16 fields (at the same offset in eight consecutive blocks) as floats.
// The halves are combined in scalar registers (cheap, off the vector ports) and converted once.
template <typename Block, uint16_t Block::*Field>
inline __m256 halves8(const Block* b) {
  uint64_t lo = 0, hi = 0;
  for (int k = 0; k < 4; ++k) {
    lo |= static_cast<uint64_t>(b[k].*Field) << (16 * k);
    hi |= static_cast<uint64_t>(b[k + 4].*Field) << (16 * k);
  }
  return _mm256_cvtph_ps(_mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo)));
}

inline __m256 lane_bcast(__m256 v, int k) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(k)); }

// Per-format integer block dot products (8 int32 lanes whose sum is the block's integer dot).
inline __m256i block_q4_0(const BlockQ4_0& x, const BlockQ8_0& y) {
  return dot_s8s8(_mm256_sub_epi8(nibbles(x.qs), _mm256_set1_epi8(8)), load256(y.qs));
}
inline __m256i block_q4_1(const BlockQ4_1& x, const BlockQ8_1& y) { return dot_u8s8(nibbles(x.qs), load256(y.qs)); }
inline __m256i block_q5_0(const BlockQ5_0& x, const BlockQ8_0& y) {
  const __m256i hb = _mm256_and_si256(bits_to_bytes(load_u32(x.qh)), _mm256_set1_epi8(0x10));
  return dot_s8s8(_mm256_sub_epi8(_mm256_or_si256(nibbles(x.qs), hb), _mm256_set1_epi8(16)), load256(y.qs));
}
inline __m256i block_q5_1(const BlockQ5_1& x, const BlockQ8_1& y) {
  const __m256i hb = _mm256_and_si256(bits_to_bytes(load_u32(x.qh)), _mm256_set1_epi8(0x10));
  return dot_u8s8(_mm256_or_si256(nibbles(x.qs), hb), load256(y.qs));
}
inline __m256i block_q8_0(const BlockQ8_0& x, const BlockQ8_0& y) { return dot_s8s8(load256(x.qs), load256(y.qs)); }

// sum_b d_x[b] * d_y[b] * intdot(b)  (+ sum_b m_x[b] * s_y[b] for the formats with a min).
template <typename BX, typename BY, __m256i (*BlockDot)(const BX&, const BY&), bool WithMin>
float dot_blocks32(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BX*>(w);
  const auto* y = static_cast<const BY*>(a);
  const int64_t nb = n / 32;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const __m256 dd = _mm256_mul_ps(halves8<BX, &BX::d>(x + i), halves8<BY, &BY::d>(y + i));
    if constexpr (WithMin)
      acc_m = _mm256_fmadd_ps(halves8<BX, &BX::m>(x + i), halves8<BY, &BY::s>(y + i), acc_m);
    for (int k = 0; k < 8; k += 2) {
      acc0 = _mm256_fmadd_ps(lane_bcast(dd, k), _mm256_cvtepi32_ps(BlockDot(x[i + k], y[i + k])), acc0);
      acc1 = _mm256_fmadd_ps(lane_bcast(dd, k + 1), _mm256_cvtepi32_ps(BlockDot(x[i + k + 1], y[i + k + 1])), acc1);
    }
  }
  float tail = 0.0f;
  for (; i < nb; ++i) {
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half(x[i].d) * half(y[i].d)), _mm256_cvtepi32_ps(BlockDot(x[i], y[i])),
                           acc0);
    if constexpr (WithMin) tail += half(x[i].m) * half(y[i].s);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), acc_m)) + tail;
}

float dot_q4_0(int64_t n, const void* w, const void* a) {
  return dot_blocks32<BlockQ4_0, BlockQ8_0, block_q4_0, false>(n, w, a);
}
float dot_q4_1(int64_t n, const void* w, const void* a) {
  return dot_blocks32<BlockQ4_1, BlockQ8_1, block_q4_1, true>(n, w, a);
}
float dot_q5_0(int64_t n, const void* w, const void* a) {
  return dot_blocks32<BlockQ5_0, BlockQ8_0, block_q5_0, false>(n, w, a);
}
float dot_q5_1(int64_t n, const void* w, const void* a) {
  return dot_blocks32<BlockQ5_1, BlockQ8_1, block_q5_1, true>(n, w, a);
}
float dot_q8_0(int64_t n, const void* w, const void* a) {
  return dot_blocks32<BlockQ8_0, BlockQ8_0, block_q8_0, false>(n, w, a);
}

// ---------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------

// Byte-shuffle masks that broadcast int16 element 2k of a 128-bit lane to the low 128-bit
// lane and element 2k+1 to the high lane (k = 0..3).
inline __m256i pair_mask(int k) {
  const char a = static_cast<char>(4 * k), b = static_cast<char>(4 * k + 1);
  const char c = static_cast<char>(4 * k + 2), d = static_cast<char>(4 * k + 3);
  return _mm256_setr_epi8(a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b,  //
                          c, d, c, d, c, d, c, d, c, d, c, d, c, d, c, d);
}

// 16 int16 sub-block scales (one per 16 elements) -> for each 32-element column k (0..7) a
// vector with scale 2k in the low lane and 2k+1 in the high lane.
struct Scales16 {
  __m256i lo, hi;  // scales 0..7 / 8..15 broadcast to both lanes
  explicit Scales16(__m256i s) : lo(_mm256_permute2x128_si256(s, s, 0x00)), hi(_mm256_permute2x128_si256(s, s, 0x11)) {}
  __m256i column(int k) const { return _mm256_shuffle_epi8(k < 4 ? lo : hi, pair_mask(k & 3)); }
};

// Scaled sum of 32 unsigned codes times activation codes: int16 pair sums, then times scales.
inline __m256i scaled_dot(__m256i u, __m256i q8, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q8), scale16);
}

float dot_q2_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ2_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
  const __m256i three = _mm256_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m128i raw = load128(x[i].scales);
    const __m256i sc = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
    const __m256i mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
    const __m256i summs = _mm256_madd_epi16(mn, load256(y[i].bsums));
    const Scales16 S(sc);
    __m256i sumi = _mm256_setzero_si256();
    for (int g = 0; g < 2; ++g) {
      const __m256i bytes = load256(x[i].qs + 32 * g);
      for (int c = 0; c < 4; ++c) {
        const __m256i u = _mm256_and_si256(_mm256_srli_epi16(bytes, 2 * c), three);
        sumi = _mm256_add_epi32(sumi, scaled_dot(u, load256(y[i].qs + 128 * g + 32 * c), S.column(4 * g + c)));
      }
    }
    const float dall = y[i].d * half(x[i].d);
    const float dmin = y[i].d * half(x[i].dmin);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summs), acc_m);
  }
  return hsum(_mm256_sub_ps(acc, acc_m));
}

// The 16 six-bit Q3_K scales minus 32, as int16.
inline __m256i q3k_scales(const uint8_t* s) {
  uint32_t u0, u1, u2;
  std::memcpy(&u0, s, 4);
  std::memcpy(&u1, s + 4, 4);
  std::memcpy(&u2, s + 8, 4);
  const uint32_t lo = 0x0f0f0f0fu, hi = 0x03030303u;
  const uint32_t a0 = (u0 & lo) | ((u2 & hi) << 4);
  const uint32_t a1 = (u1 & lo) | (((u2 >> 2) & hi) << 4);
  const uint32_t a2 = ((u0 >> 4) & lo) | (((u2 >> 4) & hi) << 4);
  const uint32_t a3 = ((u1 >> 4) & lo) | (((u2 >> 6) & hi) << 4);
  const __m128i v = _mm_setr_epi32(static_cast<int>(a0), static_cast<int>(a1), static_cast<int>(a2), static_cast<int>(a3));
  return _mm256_sub_epi16(_mm256_cvtepu8_epi16(v), _mm256_set1_epi16(32));
}

float dot_q3_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ3_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  __m256 acc = _mm256_setzero_ps();
  const __m256i three = _mm256_set1_epi8(3);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m256i sc = q3k_scales(x[i].scales);
    // Codes are u - 4 with u = low2 | high<<2 in 0..7: sum = sum(u*q8) - 4*bsums.
    __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(sc, load256(y[i].bsums)), 2);
    sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
    const Scales16 S(sc);
    __m256i hm = load256(x[i].hmask);
    for (int g = 0; g < 2; ++g) {
      const __m256i bytes = load256(x[i].qs + 32 * g);
      for (int c = 0; c < 4; ++c) {
        // high bit 4g+c of each hmask byte -> value 4; hm is shifted right one bit per column.
        const __m256i hb = _mm256_and_si256(_mm256_slli_epi16(hm, 2), _mm256_set1_epi8(4));
        hm = _mm256_srli_epi16(hm, 1);
        const __m256i u = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bytes, 2 * c), three), hb);
        sumi = _mm256_add_epi32(sumi, scaled_dot(u, load256(y[i].qs + 128 * g + 32 * c), S.column(4 * g + c)));
      }
    }
    const float d = half(x[i].d) * y[i].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc);
}

// The 8 six-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K/Q5_K block.
inline __m128i k4_scales_mins(const uint8_t* s) {
  uint32_t u0, u1, u2;
  std::memcpy(&u0, s, 4);
  std::memcpy(&u1, s + 4, 4);
  std::memcpy(&u2, s + 8, 4);
  const uint32_t six = 0x3f3f3f3fu, lo = 0x0f0f0f0fu, top = 0x03030303u;
  const uint32_t sc03 = u0 & six, mn03 = u1 & six;
  const uint32_t sc47 = (u2 & lo) | (((u0 >> 6) & top) << 4);
  const uint32_t mn47 = ((u2 >> 4) & lo) | (((u1 >> 6) & top) << 4);
  return _mm_setr_epi32(static_cast<int>(sc03), static_cast<int>(sc47), static_cast<int>(mn03), static_cast<int>(mn47));
}

template <bool Five>
float dot_q45_k(int64_t n, const void* w, const void* a) {
  const auto* y = static_cast<const BlockQ8_K*>(a);
  __m256 acc = _mm256_setzero_ps();
  __m128 acc_m = _mm_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t *scales, *qs, *qh = nullptr;
    uint16_t d16, dmin16;
    if constexpr (Five) {
      const auto& b = static_cast<const BlockQ5_K*>(w)[i];
      scales = b.scales, qs = b.qs, qh = b.qh, d16 = b.d, dmin16 = b.dmin;
    } else {
      const auto& b = static_cast<const BlockQ4_K*>(w)[i];
      scales = b.scales, qs = b.qs, d16 = b.d, dmin16 = b.dmin;
    }
    const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(scales));  // 8 scales | 8 mins (int16)
    // mins: sum_j mn[j] * (bsums[2j] + bsums[2j+1])
    const __m256i bs = load256(y[i].bsums);
    const __m128i pair_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m128i summs = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), pair_sums);
    const __m128i sc128 = _mm256_castsi256_si128(sm);
    const __m256i scs = _mm256_inserti128_si256(_mm256_castsi128_si256(sc128), sc128, 1);
    __m256i hbits;
    if constexpr (Five) hbits = load256(qh);
    __m256i sumi = _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
      const __m256i bytes = load256(qs + 32 * g);
      __m256i lo = _mm256_and_si256(bytes, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4);
      if constexpr (Five) {
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hbits, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hbits, 3), bit4));
        hbits = _mm256_srli_epi16(hbits, 2);
      }
      // Broadcast scale 2g / 2g+1 (int16) to every lane.
      const __m256i s_lo = _mm256_shuffle_epi8(scs, _mm256_set1_epi16(static_cast<int16_t>(((4 * g + 1) << 8) | (4 * g))));
      const __m256i s_hi =
          _mm256_shuffle_epi8(scs, _mm256_set1_epi16(static_cast<int16_t>(((4 * g + 3) << 8) | (4 * g + 2))));
      sumi = _mm256_add_epi32(sumi, scaled_dot(lo, load256(y[i].qs + 64 * g), s_lo));
      sumi = _mm256_add_epi32(sumi, scaled_dot(hi, load256(y[i].qs + 64 * g + 32), s_hi));
    }
    const float d = half(d16) * y[i].d;
    const float dmin = half(dmin16) * y[i].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(summs), acc_m);
  }
  __m128 m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return hsum(acc) - _mm_cvtss_f32(m);
}

float dot_q4_k(int64_t n, const void* w, const void* a) { return dot_q45_k<false>(n, w, a); }
float dot_q5_k(int64_t n, const void* w, const void* a) { return dot_q45_k<true>(n, w, a); }

float dot_q6_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ6_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  __m256 acc = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m256i sc = _mm256_cvtepi8_epi16(load128(x[i].scales));
    // Codes are u - 32 with u in 0..63: sum = sum(u*q8) - 32*bsums.
    __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(sc, load256(y[i].bsums)), 5);
    sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
    const Scales16 S(sc);
    for (int g = 0; g < 2; ++g) {
      const __m256i l0 = load256(x[i].ql + 64 * g), l1 = load256(x[i].ql + 64 * g + 32);
      const __m256i h = load256(x[i].qh + 32 * g);
      const __m256i u0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m2));
      const __m256i u1 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m2));
      const __m256i u2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m2));
      const __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(h, 2), m2));
      const int8_t* q8 = y[i].qs + 128 * g;
      sumi = _mm256_add_epi32(sumi, scaled_dot(u0, load256(q8), S.column(4 * g + 0)));
      sumi = _mm256_add_epi32(sumi, scaled_dot(u1, load256(q8 + 32), S.column(4 * g + 1)));
      sumi = _mm256_add_epi32(sumi, scaled_dot(u2, load256(q8 + 64), S.column(4 * g + 2)));
      sumi = _mm256_add_epi32(sumi, scaled_dot(u3, load256(q8 + 96), S.column(4 * g + 3)));
    }
    const float d = half(x[i].d) * y[i].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum(acc);
}

// Fill the kernel table with this file's kernels.
inline void fill_x86_common(KernelSet& ks) {
  const auto set = [&](DType t, VecDotFn d, QuantActFn q) {
    ks.dot[tid(t)] = d;
    ks.quant[tid(t)] = q;
  };
  set(DType::F32, dot_f32, ks.quant[tid(DType::F32)]);  // F32 activations are a plain copy
  set(DType::F16, dot_f16, act_f16);
  set(DType::BF16, dot_bf16, act_bf16);
  set(DType::Q4_0, dot_q4_0, act_q8_0);
  set(DType::Q4_1, dot_q4_1, act_q8_1);
  set(DType::Q5_0, dot_q5_0, act_q8_0);
  set(DType::Q5_1, dot_q5_1, act_q8_1);
  set(DType::Q8_0, dot_q8_0, act_q8_0);
  set(DType::Q2_K, dot_q2_k, act_q8_k);
  set(DType::Q3_K, dot_q3_k, act_q8_k);
  set(DType::Q4_K, dot_q4_k, act_q8_k);
  set(DType::Q5_K, dot_q5_k, act_q8_k);
  set(DType::Q6_K, dot_q6_k, act_q8_k);
}

}  // namespace

}  // namespace lokal::detail
