// ops/packed_avx512.cpp - AVX-512 VNNI kernels for the packed (16-row interleaved) Q4_0 / Q5_0 / Q8_0 / Q4_K
// layouts of ops/packed.h. This file alone is compiled with those flags and is only called after a
// CPUID check (vec_dot.cpp).
//
// One group of 16 rows x up to 4 tokens per call. Per 32-element block: the 16 rows' codes are 8
// vectors (chunk k: 4 codes of each row, lined up with activation codes 4k .. 4k+3), decoded once and
// used for every token; per token 8 vpdpbusd with the activation's 4-byte groups broadcast give the
// 16 rows' exact block sums (the offset correction -C * sum(y) is the accumulator's start value),
// then one float step for 16 rows: acc += (d_w * d_y) * sum. No horizontal reductions.
// Each row's float steps are vec_dot_ref's, in its order: the results equal the scalar reference bit
// for bit (tests/test_gemm.cpp checks that).
// Exactness: unsigned weight bytes <= 255, signed activation codes in [-127, 127]: a block sum is
// below 2^20 in magnitude, exact in int32 (vpdpbusd does not saturate).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "core/quant.h"
#include "ops/packed.h"
#include "ops/vec_dot_impl.h"

namespace lokal::detail {

namespace {

inline int32_t ld32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

enum class Kind { Q4_0, Q5_0, Q8_0 };

template <int T, Kind K>
void group_xT(int64_t nb, const uint8_t* g, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  // Bytes of one block of 16 rows, and where its code chunks start.
  constexpr size_t kBlock = K == Kind::Q8_0 ? 16 * 34 : K == Kind::Q5_0 ? 16 * 22 : 16 * 18;
  constexpr int kCodes = K == Kind::Q5_0 ? 96 : 32;
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  // Q5_0: weight vector k holds elements 4k .. 4k+3 of every row (k < 4: low nibbles of chunk k,
  // k >= 4: high nibbles of chunk k - 4 = elements 16 + 4(k-4)), whose fifth bits are bits 4k .. 4k+3
  // of the row's qh word: byte k/2, nibble k%2. Replicate that byte over the dword, test one bit per byte.
  __m512i qh_byte[4], qh_bit[2];
  if constexpr (K == Kind::Q5_0) {
    // vpshufb indexes within 128-bit lanes: dword j of a lane takes byte 4j + i.
    const __m512i dword_base = _mm512_broadcast_i32x4(_mm_setr_epi32(0x00000000, 0x04040404, 0x08080808, 0x0c0c0c0c));
    for (int i = 0; i < 4; ++i) qh_byte[i] = _mm512_add_epi8(dword_base, _mm512_set1_epi32(0x01010101 * i));
    qh_bit[0] = _mm512_set1_epi32(0x08040201);
    qh_bit[1] = _mm512_set1_epi32(static_cast<int>(0x80402010u));
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = g + static_cast<size_t>(b) * kBlock;
    // The block 8 ahead (a few hundred bytes): with few tokens per pass the weights stream from memory, and the
    // hardware prefetcher alone leaves the VNNI units waiting.
    // (One token alone keeps to the hardware prefetcher: the extra instructions cost more than they save there.)
    if constexpr (T >= 2)
      for (size_t o = 0; o < kBlock; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + 8 * kBlock + o), _MM_HINT_T0);
    const __m512 dx = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    __m512i w[8];
    if constexpr (K == Kind::Q8_0) {
      for (int k = 0; k < 8; ++k) w[k] = _mm512_loadu_si512(p + kCodes + 64 * k);
    } else {
      for (int c = 0; c < 4; ++c) {
        const __m512i v = _mm512_loadu_si512(p + kCodes + 64 * c);
        w[c] = _mm512_and_si512(v, m4);                          // elements 4c .. 4c+3
        w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);  // elements 16+4c .. 16+4c+3
      }
      if constexpr (K == Kind::Q5_0) {
        const __m512i qh = _mm512_loadu_si512(p + 32);
        for (int k = 0; k < 8; ++k) {
          const __mmask64 hi = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, qh_byte[k / 2]), qh_bit[k % 2]);
          w[k] = _mm512_mask_add_epi8(w[k], hi, w[k], _mm512_set1_epi8(0x10));
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8S*>(a + static_cast<size_t>(t) * as) + b;
      __m512i s0 = _mm512_set1_epi32(yb->bias), s1 = _mm512_setzero_si512();
      for (int k = 0; k < 8; k += 2) {
        s0 = _mm512_dpbusd_epi32(s0, w[k], _mm512_set1_epi32(ld32(yb->qs + 4 * k)));
        s1 = _mm512_dpbusd_epi32(s1, w[k + 1], _mm512_set1_epi32(ld32(yb->qs + 4 * k + 4)));
      }
      // acc += (d_w * d_y) * sum, rounded after each step exactly as vec_dot_ref does (this file is
      // compiled with -ffp-contract=off so the multiply and add stay separate): bit-identical results.
      const __m512 dd = _mm512_mul_ps(dx, _mm512_set1_ps(yb->d));
      acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1))));
    }
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}


// ---------------------------------------------------------------------------------------------
// Q4_K: one group of 16 rows x T tokens per super-block (ops/packed.h layout). The 8 six-bit scales
// and mins of the 16 rows are decoded once per super-block with dword lanes = rows; per 64-element
// group gp the 16 code vectors (low nibbles: sub-block 2gp, high: 2gp+1) are decoded once and used
// for every token: 8 vpdpbusd per sub-block give its exact sums S_j for 16 rows, then
// isum += sc_j * S_j (vpmulld), and the mins term sum_j m_j * ysum_j is one vpmaddwd per pair of
// sub-blocks. Float steps as vec_dot_ref: acc += (d * dy) * isum - (dmin * dy) * summs.
// ---------------------------------------------------------------------------------------------
template <int T>
void q4k_group_xT(int64_t nsb, const uint8_t* g, const uint8_t* a, size_t as, float* y, int64_t ldy) {
  constexpr size_t kSuper = 16 * sizeof(BlockQ4_K);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  const __m512i m6d = _mm512_set1_epi32(63), m4d = _mm512_set1_epi32(15), m2d = _mm512_set1_epi32(3);
  auto shr = [](__m512i v, int n) { return _mm512_srl_epi32(v, _mm_cvtsi32_si128(n)); };
  for (int64_t b = 0; b < nsb; ++b) {
    const uint8_t* p = g + static_cast<size_t>(b) * kSuper;
    // The super-block after next (2.3 KB each): see group_xT.
    if constexpr (T >= 2)
      for (size_t o = 0; o < kSuper; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + 2 * kSuper + o), _MM_HINT_T0);
    const __m512 dx = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512 dmx = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    const __m512i u0 = _mm512_loadu_si512(p + 64), u1 = _mm512_loadu_si512(p + 128), u2 = _mm512_loadu_si512(p + 192);
    // Scales and mins of sub-block j, decoded as the scalar k4_scale_min does: u0, u1, u2 hold scale bytes
    // 0..3, 4..7, 8..11 of each row; j < 4: scale = byte j of u0, min = byte j of u1 (6 bits); j >= 4: low
    // 4 bits from byte j-4 of u2 (scale: low nibble, min: high nibble), top 2 bits from bits 6..7 of
    // byte j-4 of u0 (scale) / u1 (min).
    __m512i sc[8], mn[8], mp[4];
    for (int j = 0; j < 4; ++j) {
      sc[j] = _mm512_and_si512(shr(u0, 8 * j), m6d);
      mn[j] = _mm512_and_si512(shr(u1, 8 * j), m6d);
      sc[j + 4] = _mm512_or_si512(_mm512_and_si512(shr(u2, 8 * j), m4d),
                                  _mm512_slli_epi32(_mm512_and_si512(shr(u0, 8 * j + 6), m2d), 4));
      mn[j + 4] = _mm512_or_si512(_mm512_and_si512(shr(u2, 8 * j + 4), m4d),
                                  _mm512_slli_epi32(_mm512_and_si512(shr(u1, 8 * j + 6), m2d), 4));
    }
    for (int k = 0; k < 4; ++k) mp[k] = _mm512_or_si512(mn[2 * k], _mm512_slli_epi32(mn[2 * k + 1], 16));
    __m512i isum[T];
    for (int t = 0; t < T; ++t) isum[t] = _mm512_setzero_si512();
    for (int gp = 0; gp < 4; ++gp) {
      __m512i wl[8], wh[8];
      for (int c = 0; c < 8; ++c) {
        const __m512i v = _mm512_loadu_si512(p + 256 + 64 * (8 * gp + c));
        wl[c] = _mm512_and_si512(v, m4);
        wh[c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
      }
      for (int t = 0; t < T; ++t) {
        const int8_t* q = (reinterpret_cast<const BlockQ8_K*>(a + static_cast<size_t>(t) * as) + b)->qs + 64 * gp;
        __m512i slo = _mm512_setzero_si512(), shi = _mm512_setzero_si512();
        for (int c = 0; c < 8; ++c) {
          slo = _mm512_dpbusd_epi32(slo, wl[c], _mm512_set1_epi32(ld32(q + 4 * c)));
          shi = _mm512_dpbusd_epi32(shi, wh[c], _mm512_set1_epi32(ld32(q + 32 + 4 * c)));
        }
        isum[t] = _mm512_add_epi32(isum[t], _mm512_add_epi32(_mm512_mullo_epi32(slo, sc[2 * gp]),
                                                             _mm512_mullo_epi32(shi, sc[2 * gp + 1])));
      }
    }
    for (int t = 0; t < T; ++t) {
      const auto* yb = reinterpret_cast<const BlockQ8_K*>(a + static_cast<size_t>(t) * as) + b;
      __m512i summs = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {
        const int32_t lo = yb->bsums[4 * k] + yb->bsums[4 * k + 1], hi = yb->bsums[4 * k + 2] + yb->bsums[4 * k + 3];
        const int32_t pair = static_cast<int32_t>((static_cast<uint32_t>(lo) & 0xffffu) | (static_cast<uint32_t>(hi) << 16));
        summs = _mm512_add_epi32(summs, _mm512_madd_epi16(mp[k], _mm512_set1_epi32(pair)));
      }
      const __m512 dy = _mm512_set1_ps(yb->d);
      const __m512 term = _mm512_sub_ps(_mm512_mul_ps(_mm512_mul_ps(dx, dy), _mm512_cvtepi32_ps(isum[t])),
                                        _mm512_mul_ps(_mm512_mul_ps(dmx, dy), _mm512_cvtepi32_ps(summs)));
      acc[t] = _mm512_add_ps(acc[t], term);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}

// Driver shared by every packed type: tokens in steps of up to 4 (outer), every group of 16 rows
// (inner), the group kernel instantiated per token count. kElems: elements per block of the type.
using GroupFn = void (*)(int64_t nblocks, const uint8_t* group, const uint8_t* act, size_t as, float* y, int64_t ldy);
template <GroupFn K1, GroupFn K2, GroupFn K3, GroupFn K4, int64_t kElems>
void tile_groups(int64_t n, const void* groups, size_t gs, int64_t ng, const void* act, size_t as, int64_t nt,
                 float* y, int64_t ldy) {
  const auto* gb = static_cast<const uint8_t*>(groups);
  const auto* ab = static_cast<const uint8_t*>(act);
  const int64_t nb = n / kElems;
  for (int64_t t0 = 0; t0 < nt; t0 += 4) {
    const int64_t T = nt - t0 < 4 ? nt - t0 : 4;
    const GroupFn k = T == 4 ? K4 : T == 3 ? K3 : T == 2 ? K2 : K1;
    for (int64_t g = 0; g < ng; ++g)
      k(nb, gb + static_cast<size_t>(g) * gs, ab + static_cast<size_t>(t0) * as, as, y + t0 * ldy + g * kPackRows, ldy);
  }
}

template <Kind K>
constexpr PackedFn q32_tile() {
  return tile_groups<group_xT<1, K>, group_xT<2, K>, group_xT<3, K>, group_xT<4, K>, 32>;
}

}  // namespace

void fill_avx512_packed(KernelSet& ks) {
  ks.packed[tid(DType::Q4_0)] = q32_tile<Kind::Q4_0>();
  ks.packed[tid(DType::Q5_0)] = q32_tile<Kind::Q5_0>();
  ks.packed[tid(DType::Q8_0)] = q32_tile<Kind::Q8_0>();
  ks.packed[tid(DType::Q4_K)] = tile_groups<q4k_group_xT<1>, q4k_group_xT<2>, q4k_group_xT<3>, q4k_group_xT<4>, QK_K>;
}

}  // namespace lokal::detail
