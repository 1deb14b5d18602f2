// ops/vec_dot.cpp - scalar reference dot products and activation quantizers, and the runtime
// dispatch to the SIMD kernel sets.
//
// Every quantized dot product is computed the way llama.cpp computes it: the integer products
// of the weight codes with the 8-bit activation codes are summed exactly (per block or per
// super-block, including the sub-block scales), and only then multiplied by the float scales.
// So the integer part is exact and results differ from llama.cpp only by float rounding.
#include "ops/vec_dot.h"

#include <atomic>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant.h"
#include "ops/packed.h"
#include "ops/vec_dot_impl.h"

namespace lokal {

namespace {

inline float h2f(uint16_t h) { return fp16_to_fp32_fast(h); }

inline int round_even(float v) {  // ties to even, |v| < 2^22 (see core/quant.cpp)
  const float shifted = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

[[noreturn]] void unsupported(DType w) {
  throw Error(std::string("no dot product for tensor type ") + type_name(w) + " (id " +
              std::to_string(static_cast<uint32_t>(w)) + ")");
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers
// ---------------------------------------------------------------------------------------------

// Q8_0 / Q8_1 exactly as llama.cpp's x86 (AVX/AVX2) quantize_row_q8_0/q8_1: scale amax/127,
// multiply by 127/amax, round to nearest even, saturate to int8.
template <bool WithSum>
void act_q8_32(const float* x, void* dst, int64_t n) {
  const int64_t nb = n / 32;
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int8_t* q;
    if constexpr (WithSum) {
      auto* b = static_cast<BlockQ8_1*>(dst) + i;
      b->d = fp32_to_fp16(d);
      q = b->qs;
    } else {
      auto* b = static_cast<BlockQ8_0*>(dst) + i;
      b->d = fp32_to_fp16(d);
      q = b->qs;
    }
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      int v = round_even(x[j] * id);
      v = v < -128 ? -128 : (v > 127 ? 127 : v);
      q[j] = static_cast<int8_t>(v);
      sum += v;
    }
    if constexpr (WithSum) static_cast<BlockQ8_1*>(dst)[i].s = fp32_to_fp16(d * static_cast<float>(sum));
  }
}

void act_f32(const float* x, void* dst, int64_t n) {
  if (n) std::memcpy(dst, x, static_cast<size_t>(n) * 4);
}
void act_f16(const float* x, void* dst, int64_t n) {
  auto* h = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(x[i]);
}
void act_bf16(const float* x, void* dst, int64_t n) {
  auto* h = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_bf16(x[i]);
}
void act_q8_k(const float* x, void* dst, int64_t n) { quantize_row(DType::Q8_K, x, dst, n); }

// ---------------------------------------------------------------------------------------------
// Float dot products (single-precision accumulation)
// ---------------------------------------------------------------------------------------------

float dot_f32(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const float*>(w);
  const auto* y = static_cast<const float*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}
float dot_f16(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += h2f(x[i]) * h2f(y[i]);
  return s;
}
float dot_bf16(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const uint16_t*>(w);
  const auto* y = static_cast<const uint16_t*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += bf16_to_fp32(x[i]) * bf16_to_fp32(y[i]);
  return s;
}

// ---------------------------------------------------------------------------------------------
// 32-element block formats
// ---------------------------------------------------------------------------------------------

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float dot_q4_0(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ4_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n / 32; ++i) {
    int sumi = 0;
    for (int j = 0; j < 16; ++j)
      sumi += ((x[i].qs[j] & 15) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
    s += (h2f(x[i].d) * h2f(y[i].d)) * static_cast<float>(sumi);
  }
  return s;
}

float dot_q4_1(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ4_1*>(w);
  const auto* y = static_cast<const BlockQ8_1*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n / 32; ++i) {
    int sumi = 0;
    for (int j = 0; j < 16; ++j) sumi += (x[i].qs[j] & 15) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + 16];
    s += (h2f(x[i].d) * h2f(y[i].d)) * static_cast<float>(sumi) + h2f(x[i].m) * h2f(y[i].s);
  }
  return s;
}

float dot_q5_0(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ5_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n / 32; ++i) {
    const uint32_t hi = load_u32(x[i].qh);
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = ((x[i].qs[j] & 15) | static_cast<int>(((hi >> j) & 1u) << 4)) - 16;
      const int up = ((x[i].qs[j] >> 4) | static_cast<int>(((hi >> (j + 16)) & 1u) << 4)) - 16;
      sumi += lo * y[i].qs[j] + up * y[i].qs[j + 16];
    }
    s += (h2f(x[i].d) * h2f(y[i].d)) * static_cast<float>(sumi);
  }
  return s;
}

float dot_q5_1(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ5_1*>(w);
  const auto* y = static_cast<const BlockQ8_1*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n / 32; ++i) {
    const uint32_t hi = load_u32(x[i].qh);
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = (x[i].qs[j] & 15) | static_cast<int>(((hi >> j) & 1u) << 4);
      const int up = (x[i].qs[j] >> 4) | static_cast<int>(((hi >> (j + 16)) & 1u) << 4);
      sumi += lo * y[i].qs[j] + up * y[i].qs[j + 16];
    }
    s += (h2f(x[i].d) * h2f(y[i].d)) * static_cast<float>(sumi) + h2f(x[i].m) * h2f(y[i].s);
  }
  return s;
}

float dot_q8_0(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ8_0*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(a);
  float s = 0.0f;
  for (int64_t i = 0; i < n / 32; ++i) {
    int sumi = 0;
    for (int j = 0; j < 32; ++j) sumi += x[i].qs[j] * y[i].qs[j];
    s += (h2f(x[i].d) * h2f(y[i].d)) * static_cast<float>(sumi);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// K-quants (super-blocks of 256 against Q8_K)
// ---------------------------------------------------------------------------------------------

// Integer dot of 16 consecutive codes with the activation codes.
inline int dot16(const int8_t* codes, const int8_t* q8) {
  int s = 0;
  for (int l = 0; l < 16; ++l) s += codes[l] * q8[l];
  return s;
}

float dot_q2_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ2_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float s = 0.0f;
  int8_t codes[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    for (int g = 0; g < 2; ++g)
      for (int c = 0; c < 4; ++c)
        for (int p = 0; p < 32; ++p) codes[128 * g + 32 * c + p] = static_cast<int8_t>((x[i].qs[32 * g + p] >> (2 * c)) & 3);
    int isum = 0, summs = 0;
    for (int j = 0; j < 16; ++j) {
      isum += (x[i].scales[j] & 15) * dot16(codes + 16 * j, y[i].qs + 16 * j);
      summs += (x[i].scales[j] >> 4) * y[i].bsums[j];
    }
    const float dall = y[i].d * h2f(x[i].d);
    const float dmin = y[i].d * h2f(x[i].dmin);
    s += dall * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return s;
}

inline int q3k_scale(const uint8_t* sc, int j) {
  const int lo = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
  const int hi = (sc[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

float dot_q3_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ3_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float s = 0.0f;
  int8_t codes[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    for (int g = 0; g < 2; ++g)
      for (int c = 0; c < 4; ++c)
        for (int p = 0; p < 32; ++p) {
          const int lo = (x[i].qs[32 * g + p] >> (2 * c)) & 3;
          const int high = (x[i].hmask[p] >> (4 * g + c)) & 1;
          codes[128 * g + 32 * c + p] = static_cast<int8_t>(lo + 4 * high - 4);
        }
    int isum = 0;
    for (int j = 0; j < 16; ++j) isum += q3k_scale(x[i].scales, j) * dot16(codes + 16 * j, y[i].qs + 16 * j);
    s += (h2f(x[i].d) * y[i].d) * static_cast<float>(isum);
  }
  return s;
}

inline void k4_scale_min(const uint8_t* s, int j, int& sc, int& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

template <bool Five, typename Block>
float dot_q45_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const Block*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float s = 0.0f;
  int8_t codes[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < 32; ++l) {
        int lo = x[i].qs[32 * g + l] & 15, hi = x[i].qs[32 * g + l] >> 4;
        if constexpr (Five) {
          lo |= ((x[i].qh[l] >> (2 * g)) & 1) << 4;
          hi |= ((x[i].qh[l] >> (2 * g + 1)) & 1) << 4;
        }
        codes[64 * g + l] = static_cast<int8_t>(lo);
        codes[64 * g + 32 + l] = static_cast<int8_t>(hi);
      }
    int isum = 0, summs = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      k4_scale_min(x[i].scales, j, sc, mn);
      isum += sc * (dot16(codes + 32 * j, y[i].qs + 32 * j) + dot16(codes + 32 * j + 16, y[i].qs + 32 * j + 16));
      summs += mn * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
    }
    const float d = h2f(x[i].d) * y[i].d;
    const float dmin = h2f(x[i].dmin) * y[i].d;
    s += d * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return s;
}

float dot_q6_k(int64_t n, const void* w, const void* a) {
  const auto* x = static_cast<const BlockQ6_K*>(w);
  const auto* y = static_cast<const BlockQ8_K*>(a);
  float s = 0.0f;
  int8_t codes[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i) {
    for (int g = 0; g < 2; ++g)
      for (int p = 0; p < 32; ++p) {
        const uint8_t l0 = x[i].ql[64 * g + p], l1 = x[i].ql[64 * g + 32 + p], h = x[i].qh[32 * g + p];
        int8_t* c = codes + 128 * g + p;
        c[0] = static_cast<int8_t>(((l0 & 15) | ((h & 3) << 4)) - 32);
        c[32] = static_cast<int8_t>(((l1 & 15) | (((h >> 2) & 3) << 4)) - 32);
        c[64] = static_cast<int8_t>(((l0 >> 4) | (((h >> 4) & 3) << 4)) - 32);
        c[96] = static_cast<int8_t>(((l1 >> 4) | (((h >> 6) & 3) << 4)) - 32);
      }
    int isum = 0;
    for (int j = 0; j < 16; ++j) isum += x[i].scales[j] * dot16(codes + 16 * j, y[i].qs + 16 * j);
    s += (h2f(x[i].d) * y[i].d) * static_cast<float>(isum);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

const detail::KernelSet& scalar_set() {
  static const detail::KernelSet ks = [] {
    detail::KernelSet k;
    detail::fill_scalar(k);
    return k;
  }();
  return ks;
}

#if defined(__x86_64__) || defined(__i386__)
// F16C is CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports does not know "f16c").
bool cpu_has_f16c() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx >> 29) & 1u;
}
#endif

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();  // the builtins also check that the OS saves the YMM/ZMM state
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// AVX512_BF16 is CPUID leaf 7 subleaf 1, EAX bit 5 (not every compiler's __builtin_cpu_supports knows it).
bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax, ebx, ecx, edx;
  if (!cpu_has_avx512() || !__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 5) & 1u;
#else
  return false;
#endif
}

const detail::KernelSet* avx2_set() {
  static const detail::KernelSet ks = [] {
    detail::KernelSet k;
    detail::fill_scalar(k);
    k.name = "avx2";
    detail::fill_avx2(k);
    return k;
  }();
  return &ks;
}

const detail::KernelSet* avx512_set() {
  static const detail::KernelSet ks = [] {
    detail::KernelSet k;
    detail::fill_scalar(k);
    detail::fill_avx2(k);
    k.name = "avx512";
    detail::fill_avx512(k);
    if (cpu_has_avx512_bf16()) detail::fill_avx512_bf16(k);
    return k;
  }();
  return &ks;
}

const detail::KernelSet* pick(const std::string& want) {
  if (want == "scalar") return &scalar_set();
  if (want == "avx2") return cpu_has_avx2() ? avx2_set() : nullptr;
  if (want == "avx512") return cpu_has_avx512() ? avx512_set() : nullptr;
  if (want == "best" || want.empty()) {
    if (cpu_has_avx512()) return avx512_set();
    if (cpu_has_avx2()) return avx2_set();
    return &scalar_set();
  }
  return nullptr;
}

const detail::KernelSet* initial_set() {
  const char* force = std::getenv("LOKAL_FORCE_SCALAR");
  if (force && *force && std::string(force) != "0") return &scalar_set();
  const char* isa = std::getenv("LOKAL_ISA");
  if (isa && *isa) {
    if (const detail::KernelSet* ks = pick(isa)) return ks;
  }
  return pick("best");
}

std::atomic<const detail::KernelSet*>& active() {
  static std::atomic<const detail::KernelSet*> ks{initial_set()};
  return ks;
}

inline int checked_id(DType w) {
  const auto id = static_cast<uint32_t>(w);
  if (id >= static_cast<uint32_t>(detail::kMaxTypeId)) unsupported(w);
  return static_cast<int>(id);
}

}  // namespace

namespace detail {

void fill_scalar(KernelSet& ks) {
  ks.name = "scalar";
  const auto set = [&](DType t, VecDotFn d, QuantActFn q) {
    ks.dot[tid(t)] = d;
    ks.quant[tid(t)] = q;
  };
  set(DType::F32, dot_f32, act_f32);
  set(DType::F16, dot_f16, act_f16);
  set(DType::BF16, dot_bf16, act_bf16);
  set(DType::Q4_0, dot_q4_0, act_q8_32<false>);
  set(DType::Q4_1, dot_q4_1, act_q8_32<true>);
  set(DType::Q5_0, dot_q5_0, act_q8_32<false>);
  set(DType::Q5_1, dot_q5_1, act_q8_32<true>);
  set(DType::Q8_0, dot_q8_0, act_q8_32<false>);
  set(DType::Q2_K, dot_q2_k, act_q8_k);
  set(DType::Q3_K, dot_q3_k, act_q8_k);
  set(DType::Q4_K, dot_q45_k<false, BlockQ4_K>, act_q8_k);
  set(DType::Q5_K, dot_q45_k<true, BlockQ5_K>, act_q8_k);
  set(DType::Q6_K, dot_q6_k, act_q8_k);
}

}  // namespace detail

DType vec_dot_type(DType w) {
  switch (w) {
    case DType::F32: return DType::F32;
    case DType::F16: return DType::F16;
    case DType::BF16: return DType::BF16;
    case DType::Q4_0:
    case DType::Q5_0:
    case DType::Q8_0: return DType::Q8_0;
    case DType::Q4_1:
    case DType::Q5_1: return DType::Q8_1;
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return DType::Q8_K;
    default: unsupported(w);
  }
}

static void check_n(DType w, int64_t n) {
  const TypeInfo* ti = type_info(w);
  if (!ti) unsupported(w);
  if (n < 0 || n % ti->block_size != 0 || n % type_info(vec_dot_type(w))->block_size != 0)
    throw Error(std::string("dot product length ") + std::to_string(n) + " is not a multiple of the " + ti->name +
                " block size");
}

void quantize_activation_ref(DType w, const float* x, void* dst, int64_t n) {
  const int id = checked_id(w);
  check_n(w, n);
  const detail::QuantActFn f = scalar_set().quant[id];
  if (!f) unsupported(w);
  f(x, dst, n);
}

float vec_dot_ref(DType w, int64_t n, const void* wrow, const void* act) {
  const int id = checked_id(w);
  check_n(w, n);
  const detail::VecDotFn f = scalar_set().dot[id];
  if (!f) unsupported(w);
  return f(n, wrow, act);
}

void quantize_activation(DType w, const float* x, void* dst, int64_t n) {
  const int id = checked_id(w);
  const detail::QuantActFn f = active().load(std::memory_order_relaxed)->quant[id];
  if (!f) unsupported(w);
  f(x, dst, n);
}

float vec_dot(DType w, int64_t n, const void* wrow, const void* act) {
  const int id = checked_id(w);
  const detail::VecDotFn f = active().load(std::memory_order_relaxed)->dot[id];
  if (!f) unsupported(w);
  return f(n, wrow, act);
}

namespace {
void tile_by_pairs(detail::VecDotFn f, int64_t n, const void* w, size_t ws, int64_t nr, const void* a, size_t as,
                   int64_t nt, float* y, int64_t ldy) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(a);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t r = 0; r < nr; ++r) y[t * ldy + r] = f(n, wb + r * ws, ab + t * as);
}
}  // namespace

void vec_dot_tile_ref(DType w, int64_t n, const void* wrows, size_t w_stride, int64_t nr, const void* act,
                      size_t a_stride, int64_t nt, float* y, int64_t ldy) {
  const int id = checked_id(w);
  check_n(w, n);
  const detail::VecDotFn f = scalar_set().dot[id];
  if (!f) unsupported(w);
  tile_by_pairs(f, n, wrows, w_stride, nr, act, a_stride, nt, y, ldy);
}

void vec_dot_tile(DType w, int64_t n, const void* wrows, size_t w_stride, int64_t nr, const void* act,
                  size_t a_stride, int64_t nt, float* y, int64_t ldy) {
  const int id = checked_id(w);
  const detail::KernelSet* ks = active().load(std::memory_order_relaxed);
  if (const detail::VecDotTileFn t = ks->tile[id]) return t(n, wrows, w_stride, nr, act, a_stride, nt, y, ldy);
  const detail::VecDotFn f = ks->dot[id];
  if (!f) unsupported(w);
  tile_by_pairs(f, n, wrows, w_stride, nr, act, a_stride, nt, y, ldy);
}

bool vec_dot_has_tile(DType w) {
  const auto id = static_cast<uint32_t>(w);
  return id < static_cast<uint32_t>(detail::kMaxTypeId) && active().load(std::memory_order_relaxed)->tile[id];
}

void vec_dot_packed(DType w, int64_t n, const void* groups, size_t g_stride, int64_t ng, const void* act,
                    size_t a_stride, int64_t nt, float* y, int64_t ldy) {
  const int id = checked_id(w);
  if (const detail::PackedFn f = active().load(std::memory_order_relaxed)->packed[id])
    return f(n, groups, g_stride, ng, act, a_stride, nt, y, ldy);
  vec_dot_packed_ref(w, n, groups, g_stride, ng, act, a_stride, nt, y, ldy);
}

bool vec_dot_has_packed(DType w) {
  const auto id = static_cast<uint32_t>(w);
  return id < static_cast<uint32_t>(detail::kMaxTypeId) && active().load(std::memory_order_relaxed)->packed[id];
}

const char* vec_dot_isa() { return active().load(std::memory_order_relaxed)->name; }

bool set_vec_dot_isa(const char* name) {
  const detail::KernelSet* ks = pick(name ? name : "best");
  if (!ks) return false;
  active().store(ks, std::memory_order_relaxed);
  return true;
}

}  // namespace lokal
