// ops/vec_dot_avx512.cpp - AVX-512 (F/BW/VL/DQ/VNNI) kernels. This file alone is compiled with
// those flags and is only called after a CPUID check (vec_dot.cpp).
//
// It builds the shared 256-bit kernels (vec_dot_x86_kernels.h) with VNNI dot products, and
// replaces the hottest K-quant kernels with 512-bit versions that process two 32-element
// columns per instruction. Same integer arithmetic (exact), same float accumulation scheme
// (one FMA of the super-block's int32 lane sums per super-block).
#define LOKAL_KERNELS_VNNI 1
// GCC 12's AVX-512 intrinsic headers trip -Wuninitialized on their own _mm512_undefined_*
// placeholders (a known false positive); silence it for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "ops/vec_dot_x86_kernels.h"

namespace lokal::detail {

namespace {

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// Two 32-byte pieces into one 512-bit vector (a low, b high).
inline __m512i join(const void* a, const void* b) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(load256(a)), load256(b), 1);
}

inline float hsum512(__m512 v) {
  return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

// Index vectors for vpermw: every int16 of 128-bit lane k takes element base + k*step.
inline __m512i lane_index(int base, int step) {
  return _mm512_inserti64x4(
      _mm512_zextsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(static_cast<int16_t>(base))),
                                                     _mm_set1_epi16(static_cast<int16_t>(base + step)), 1)),
      _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(static_cast<int16_t>(base + 2 * step))),
                              _mm_set1_epi16(static_cast<int16_t>(base + 3 * step)), 1),
      1);
}

// ---------------------------------------------------------------------------------------------
// 32-element formats, two blocks per 512-bit vector: lanes 0..7 block A, 8..15 block B.
// ---------------------------------------------------------------------------------------------

// [A.qs | B.qs] (16 bytes each) -> 64 nibbles in element order [A lo, A hi, B lo, B hi].
inline __m512i nibbles2(const uint8_t* a, const uint8_t* b) {
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(load128(a)), load128(b), 1);
  const __m512i z = _mm512_inserti64x4(_mm512_zextsi256_si512(v), _mm256_srli_epi16(v, 4), 1);  // A B A>>4 B>>4
  return _mm512_and_si512(_mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_set1_epi8(0x0f));
}

// sum(u * y) - c * sum(y) per 4-group: codes u - c with u unsigned.
inline __m512i dot_off(__m512i u, __m512i y, char c) {
  const __m512i zero = _mm512_setzero_si512();
  return _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, u, y), _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(c), y));
}

inline __m512i fifth_bits2(const uint8_t* qha, const uint8_t* qhb) {
  const uint64_t k = static_cast<uint64_t>(load_u32(qha)) | (static_cast<uint64_t>(load_u32(qhb)) << 32);
  return _mm512_maskz_mov_epi8(static_cast<__mmask64>(k), _mm512_set1_epi8(0x10));
}

inline __m512i pair_q4_0(const BlockQ4_0* x, const BlockQ8_0* y) {
  return dot_off(nibbles2(x[0].qs, x[1].qs), join(y[0].qs, y[1].qs), 8);
}
inline __m512i pair_q5_0(const BlockQ5_0* x, const BlockQ8_0* y) {
  const __m512i u = _mm512_or_si512(nibbles2(x[0].qs, x[1].qs), fifth_bits2(x[0].qh, x[1].qh));
  return dot_off(u, join(y[0].qs, y[1].qs), 16);
}
inline __m512i pair_q8_0(const BlockQ8_0* x, const BlockQ8_0* y) {
  // x + 128 as unsigned (exact for every code, -128 included), then subtract 128 * sum(y).
  const __m512i u = _mm512_xor_si512(join(x[0].qs, x[1].qs), _mm512_set1_epi8(static_cast<char>(0x80)));
  return dot_off(u, join(y[0].qs, y[1].qs), static_cast<char>(0x80));
}
inline __m512i pair_q4_1(const BlockQ4_1* x, const BlockQ8_1* y) {
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles2(x[0].qs, x[1].qs), join(y[0].qs, y[1].qs));
}
inline __m512i pair_q5_1(const BlockQ5_1* x, const BlockQ8_1* y) {
  const __m512i u = _mm512_or_si512(nibbles2(x[0].qs, x[1].qs), fifth_bits2(x[0].qh, x[1].qh));
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, join(y[0].qs, y[1].qs));
}

template <typename BX, typename BY, __m512i (*PairDot)(const BX*, const BY*), bool WithMin,
          float (*Tail)(int64_t, const void*, const void*)>
float dot_pairs512(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BX*>(w);
  const auto* y = static_cast<const BY*>(a);
  const int64_t nb = n / 32;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  __m256 acc_m = _mm256_setzero_ps();
  const __m512i idx[4] = {
      _mm512_inserti64x4(_mm512_set1_epi32(0), _mm256_set1_epi32(1), 1),
      _mm512_inserti64x4(_mm512_set1_epi32(2), _mm256_set1_epi32(3), 1),
      _mm512_inserti64x4(_mm512_set1_epi32(4), _mm256_set1_epi32(5), 1),
      _mm512_inserti64x4(_mm512_set1_epi32(6), _mm256_set1_epi32(7), 1),
  };
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const __m512 dd = _mm512_castps256_ps512(_mm256_mul_ps(halves8<BX, &BX::d>(x + i), halves8<BY, &BY::d>(y + i)));
    if constexpr (WithMin)
      acc_m = _mm256_fmadd_ps(halves8<BX, &BX::m>(x + i), halves8<BY, &BY::s>(y + i), acc_m);
    acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[0], dd), _mm512_cvtepi32_ps(PairDot(x + i, y + i)), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[1], dd), _mm512_cvtepi32_ps(PairDot(x + i + 2, y + i + 2)), acc1);
    acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[2], dd), _mm512_cvtepi32_ps(PairDot(x + i + 4, y + i + 4)), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[3], dd), _mm512_cvtepi32_ps(PairDot(x + i + 6, y + i + 6)), acc1);
  }
  float s = hsum512(_mm512_add_ps(acc0, acc1)) + hsum(acc_m);
  if (i < nb) s += Tail((nb - i) * 32, x + i, y + i);
  return s;
}

float dot_q4_0_512(int64_t n, const void* w, const void* a) {
  return dot_pairs512<BlockQ4_0, BlockQ8_0, pair_q4_0, false, dot_q4_0>(n, w, a);
}
float dot_q5_0_512(int64_t n, const void* w, const void* a) {
  return dot_pairs512<BlockQ5_0, BlockQ8_0, pair_q5_0, false, dot_q5_0>(n, w, a);
}
float dot_q8_0_512(int64_t n, const void* w, const void* a) {
  return dot_pairs512<BlockQ8_0, BlockQ8_0, pair_q8_0, false, dot_q8_0>(n, w, a);
}
float dot_q4_1_512(int64_t n, const void* w, const void* a) {
  return dot_pairs512<BlockQ4_1, BlockQ8_1, pair_q4_1, true, dot_q4_1>(n, w, a);
}
float dot_q5_1_512(int64_t n, const void* w, const void* a) {
  return dot_pairs512<BlockQ5_1, BlockQ8_1, pair_q5_1, true, dot_q5_1>(n, w, a);
}

// ---------------------------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------------------------

// Q4_K / Q5_K. Group pair gp (0, 1) covers 128 elements = 4 sub-blocks of 32: the 64 code
// bytes qs[64gp .. 64gp+63] hold sub-blocks (4gp, 4gp+2) in their low nibbles and
// (4gp+1, 4gp+3) in their high nibbles.
template <bool Five>
float dot_q45_k_512(int64_t n, const void* w, const void* a) {
  const auto* y = static_cast<const BlockQ8_K*>(a);
  __m512 acc = _mm512_setzero_ps();
  __m128 acc_m = _mm_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0f), bit4 = _mm512_set1_epi8(0x10);
  // int16 scale index: 256-bit halves take scale (4gp + 2*half + {0 | 1}).
  const __m512i idx_lo[2] = {_mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1),
                             _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1)};
  const __m512i idx_hi[2] = {_mm512_inserti64x4(_mm512_set1_epi16(1), _mm256_set1_epi16(3), 1),
                             _mm512_inserti64x4(_mm512_set1_epi16(5), _mm256_set1_epi16(7), 1)};
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
    const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(scales));
    const __m256i bs = load256(y[i].bsums);
    const __m128i pair_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m128i summs = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), pair_sums);
    const __m512i sc = _mm512_zextsi256_si512(sm);  // scales are int16 elements 0..7
    __m512i hb;
    if constexpr (Five) hb = _mm512_broadcast_i64x4(load256(qh));
    __m512i sumi = _mm512_setzero_si512();
    for (int gp = 0; gp < 2; ++gp) {
      const __m512i bytes = load512(qs + 64 * gp);
      __m512i lo = _mm512_and_si512(bytes, m4);
      __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), m4);
      if constexpr (Five) {
        // Sub-block j's fifth bit is bit j of qh; halves: sub-blocks 4gp+{0,1} | 4gp+{2,3}.
        const __m512i h = gp == 0 ? hb : _mm512_srli_epi16(hb, 4);
        // low half: bits 0 / 1 ; high half: bits 2 / 3 (of h)
        const __m512i hl = _mm512_sllv_epi16(h, _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
        const __m512i hh = _mm512_sllv_epi16(h, _mm512_inserti64x4(_mm512_set1_epi16(3), _mm256_set1_epi16(1), 1));
        lo = _mm512_or_si512(lo, _mm512_and_si512(hl, bit4));
        hi = _mm512_or_si512(hi, _mm512_and_si512(hh, bit4));
      }
      const int8_t* q8 = y[i].qs + 128 * gp;
      const __m512i p_lo = _mm512_maddubs_epi16(lo, join(q8, q8 + 64));
      const __m512i p_hi = _mm512_maddubs_epi16(hi, join(q8 + 32, q8 + 96));
      sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p_lo, _mm512_permutexvar_epi16(idx_lo[gp], sc)));
      sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p_hi, _mm512_permutexvar_epi16(idx_hi[gp], sc)));
    }
    const float d = half(d16) * y[i].d;
    const float dmin = half(dmin16) * y[i].d;
    acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(summs), acc_m);
  }
  __m128 m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return hsum512(acc) - _mm_cvtss_f32(m);
}

float dot_q4_k_512(int64_t n, const void* w, const void* a) { return dot_q45_k_512<false>(n, w, a); }
float dot_q5_k_512(int64_t n, const void* w, const void* a) { return dot_q45_k_512<true>(n, w, a); }

// Q6_K: per 128-element group g, ql[64g .. 64g+63] = [l0 | l1] hold columns (0 | 1) in the low
// nibbles and (2 | 3) in the high nibbles; qh[32g ..] holds the top two bits of column c at
// bits 2c. A 512-bit vector [u0 | u1] lines up with q8[128g .. 128g+63], [u2 | u3] with the
// next 64; each 128-bit lane is one 16-element sub-block.
float dot_q6_k_512(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ6_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  __m512 acc = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x30);
  const __m512i shl01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);  // bits 0-1 | 2-3 -> 4-5
  const __m512i shr23 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);  // bits 4-5 | 6-7 -> 4-5
  const __m512i idx[4] = {lane_index(0, 1), lane_index(4, 1), lane_index(8, 1), lane_index(12, 1)};
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m256i sc = _mm256_cvtepi8_epi16(load128(x[i].scales));
    const __m512i sc512 = _mm512_zextsi256_si512(sc);
    __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc, load256(y[i].bsums)), 5);
    __m512i sumi = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), off));
    sumi = _mm512_inserti64x4(sumi, _mm256_setzero_si256(), 1);
    for (int g = 0; g < 2; ++g) {
      const __m512i l = load512(x[i].ql + 64 * g);
      const __m512i h = _mm512_broadcast_i64x4(load256(x[i].qh + 32 * g));
      const __m512i u01 = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(h, shl01), m2));
      const __m512i u23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                          _mm512_and_si512(_mm512_srlv_epi16(h, shr23), m2));
      const int8_t* q8 = y[i].qs + 128 * g;
      const __m512i p01 = _mm512_maddubs_epi16(u01, load512(q8));
      const __m512i p23 = _mm512_maddubs_epi16(u23, load512(q8 + 64));
      sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p01, _mm512_permutexvar_epi16(idx[2 * g], sc512)));
      sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p23, _mm512_permutexvar_epi16(idx[2 * g + 1], sc512)));
    }
    const float d = half(x[i].d) * y[i].d;
    acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
  }
  return hsum512(acc);
}

// F16 weights against F16 activations (vec_dot_type): 16 elements per convert, where the 256-bit kernel
// spends two converts per 8 weights. Single thread on L2-resident rows 54.6 -> 67.3 GB/s
// (bench_vec_dot 512 4096); the same when memory-bound. Products are the same; only the order of the
// float additions differs. (BF16 has vdpbf16ps where the CPU has it, bf16_avx512.cpp, and the
// 256-bit kernel otherwise.)
inline __m512 load_h16(const uint16_t* p) { return _mm512_cvtph_ps(load256(p)); }

float dot_f16_512(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(load_h16(x + i), load_h16(y + i), s0);
    s1 = _mm512_fmadd_ps(load_h16(x + i + 16), load_h16(y + i + 16), s1);
    s2 = _mm512_fmadd_ps(load_h16(x + i + 32), load_h16(y + i + 32), s2);
    s3 = _mm512_fmadd_ps(load_h16(x + i + 48), load_h16(y + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(load_h16(x + i), load_h16(y + i), s0);
  float s = hsum512(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  for (; i < n; ++i) s += half(x[i]) * half(y[i]);
  return s;
}

}  // namespace

void fill_avx512(KernelSet& ks) {
  fill_x86_common(ks);
  ks.dot[tid(DType::Q4_0)] = dot_q4_0_512;
  ks.dot[tid(DType::Q5_0)] = dot_q5_0_512;
  ks.dot[tid(DType::Q8_0)] = dot_q8_0_512;
  ks.dot[tid(DType::Q4_1)] = dot_q4_1_512;
  ks.dot[tid(DType::Q5_1)] = dot_q5_1_512;
  ks.dot[tid(DType::Q4_K)] = dot_q4_k_512;
  ks.dot[tid(DType::Q5_K)] = dot_q5_k_512;
  ks.dot[tid(DType::Q6_K)] = dot_q6_k_512;
  ks.dot[tid(DType::F16)] = dot_f16_512;
  fill_avx512_gemm(ks);
  fill_avx512_packed(ks);
}

}  // namespace lokal::detail
