// Tests of the dispatched SIMD kernels (ops/vec_dot.h) against the scalar reference, for every
// kernel set this CPU supports ("avx2", "avx512"; "scalar" trivially).
//
// * Activation quantizers: byte-identical to quantize_activation_ref (finite inputs).
// * Dot products: the integer parts are exact in both, only the float accumulation order
//   differs, so |simd - ref| <= (T + 16) * 2^-22 * M where T is the number of float terms
//   (blocks, or elements for F32/F16/BF16) and M = sum_i (|w_i| + 2 B_i) |a_i| over the
//   dequantized weight w and activation a (B_i = max |w| in element i's 32-block, which bounds
//   the separately rounded scale/min partial sums).
// * Integer exactness is checked directly too: with unit scales and integer-valued activation
//   codes every float operation is exact, so simd == ref bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "core/quant.h"
#include "ops/vec_dot.h"

using namespace lokal;

namespace {

const std::vector<DType>& all_types() {
  static const std::vector<DType> t = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1,
                                       DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                                       DType::Q4_K, DType::Q5_K, DType::Q6_K};
  return t;
}

std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (const char* n : {"scalar", "avx2", "avx512"})
    if (set_vec_dot_isa(n)) out.push_back(n);
  set_vec_dot_isa("best");
  return out;
}

struct IsaGuard {
  explicit IsaGuard(const std::string& n) { ok = set_vec_dot_isa(n.c_str()); }
  ~IsaGuard() { set_vec_dot_isa("best"); }
  bool ok;
};

int64_t unit_of(DType w) {
  const int64_t b = std::max(type_info(w)->block_size, type_info(vec_dot_type(w))->block_size);
  return std::max<int64_t>(b, 32);
}

struct Case {
  std::vector<float> xw, xa;
  std::vector<uint8_t> qw, qa;
  std::vector<float> dw, da;
};

Case make_case(DType w, int64_t n, std::mt19937& rng, float wscale, float wshift) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Case c;
  c.xw.resize(static_cast<size_t>(n));
  c.xa.resize(static_cast<size_t>(n));
  for (auto& v : c.xw) v = nd(rng) * wscale + wshift;
  for (auto& v : c.xa) v = nd(rng) * 3.0f;
  c.qw.resize(row_size(w, n));
  c.qa.resize(row_size(vec_dot_type(w), n));
  quantize_row(w, c.xw.data(), c.qw.data(), n);
  quantize_activation_ref(w, c.xa.data(), c.qa.data(), n);
  c.dw.resize(static_cast<size_t>(n));
  c.da.resize(static_cast<size_t>(n));
  dequantize_row(w, c.qw.data(), c.dw.data(), n);
  dequantize_row(vec_dot_type(w), c.qa.data(), c.da.data(), n);
  return c;
}

double magnitude(const Case& c, int64_t n) {
  double M = 0;
  for (int64_t b0 = 0; b0 < n; b0 += 32) {
    const int64_t e = std::min<int64_t>(n, b0 + 32);
    double B = 0;
    for (int64_t i = b0; i < e; ++i) B = std::max(B, std::fabs(static_cast<double>(c.dw[i])));
    for (int64_t i = b0; i < e; ++i) M += (std::fabs(static_cast<double>(c.dw[i])) + 2 * B) * std::fabs(c.da[i]);
  }
  return M;
}

class VecDotIsa : public ::testing::TestWithParam<std::string> {};

TEST_P(VecDotIsa, ActivationQuantizersByteIdentical) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (DType w : all_types()) {
    for (int64_t blocks : {1, 2, 3, 7, 16}) {
      const int64_t n = blocks * unit_of(w) + (type_info(w)->block_size == 1 ? 5 : 0);  // odd tails for floats
      SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n));
      std::vector<float> x(static_cast<size_t>(n));
      for (auto& v : x) v = nd(rng) * 2.0f;
      // Ties and specials: exact halves, a zero block, equal +/- maxima, subnormals, big values.
      for (int64_t i = 0; i < std::min<int64_t>(n, 32); ++i) x[i] = static_cast<float>(i - 16) * 0.5f;
      if (n >= 64)
        for (int64_t i = 32; i < 64; ++i) x[i] = 0.0f;
      if (n >= 96) {
        x[70] = 5.0f;
        x[71] = -5.0f;
        x[72] = 1e-41f;
      }
      if (n >= 256) {
        x[130] = -100.0f;  // Q8_K: first of two equal maxima decides the sign
        x[200] = 100.0f;
        x[201] = 65519.0f;  // F16 rounding edge -> stays finite
        x[202] = 70000.0f;  // F16 overflow -> inf
        x[203] = std::ldexp(1.0f, -24);
      }
      const size_t bytes = row_size(vec_dot_type(w), n);
      std::vector<uint8_t> ref(bytes + 16, 0xAB), simd(bytes + 16, 0xAB);
      quantize_activation_ref(w, x.data(), ref.data(), n);
      quantize_activation(w, x.data(), simd.data(), n);
      ASSERT_EQ(std::memcmp(ref.data(), simd.data(), ref.size()), 0);
    }
  }
}

TEST_P(VecDotIsa, DotMatchesReference) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(99);
  for (DType w : all_types()) {
    for (int64_t blocks : {1, 2, 3, 7, 16, 33}) {
      for (int64_t tail : {0, 3}) {
        if (tail && type_info(w)->block_size != 1) continue;
        const int64_t n = blocks * unit_of(w) + tail;
        for (int rep = 0; rep < 3; ++rep) {
          SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n) + " rep=" + std::to_string(rep));
          const Case c = make_case(w, n, rng, rep == 2 ? 0.5f : 0.05f, rep == 1 ? 0.03f : 0.0f);
          const float ref = vec_dot_ref(w, n, c.qw.data(), c.qa.data());
          const float got = vec_dot(w, n, c.qw.data(), c.qa.data());
          const bool plain = !type_info(w)->quantized;
          const double T = plain ? static_cast<double>(n) : static_cast<double>(n / type_info(w)->block_size);
          const double bound = (T + 16) * std::ldexp(1.0, -22) * magnitude(c, n);
          EXPECT_NEAR(got, ref, bound);
        }
      }
    }
  }
}

// Random code bytes with scales 1 (min scales 2) and activations that quantize with scale
// exactly +-1 (each 32-block holds a 127): every block term is then an integer well below
// 2^24, so every float operation is exact in any order, and a kernel whose integer
// arithmetic is right must match the reference bit for bit.
TEST_P(VecDotIsa, IntegerPartsExact) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> byte(0, 255);
  const uint16_t h_one = fp32_to_fp16(1.0f), h_two = fp32_to_fp16(2.0f);
  for (DType w : all_types()) {
    if (!type_info(w)->quantized) continue;
    for (int64_t blocks : {1, 2, 3, 7, 16}) {
      const int64_t n = blocks * unit_of(w);
      SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n));
      std::vector<uint8_t> qw(row_size(w, n));
      for (auto& b : qw) b = static_cast<uint8_t>(byte(rng));
      const size_t bsz = type_info(w)->type_size;
      for (size_t off = 0; off < qw.size(); off += bsz) {
        uint8_t* b = qw.data() + off;
        auto put = [&](size_t at, uint16_t h) { std::memcpy(b + at, &h, 2); };
        switch (w) {
          case DType::Q4_0: case DType::Q5_0: case DType::Q8_0: put(0, h_one); break;
          case DType::Q4_1: case DType::Q5_1: put(0, h_one); put(2, h_two); break;
          case DType::Q2_K: put(80, h_one); put(82, h_two); break;
          case DType::Q3_K: put(108, h_one); break;
          case DType::Q4_K: case DType::Q5_K: put(0, h_one); put(2, h_two); break;
          case DType::Q6_K: put(208, h_one); break;
          default: break;
        }
        if (w == DType::Q8_0)  // -128 is not a code the Q8_0 quantizer produces
          for (size_t j = 2; j < 34; ++j)
            if (b[j] == 0x80) b[j] = 0x81;
      }
      std::vector<float> xa(static_cast<size_t>(n));
      std::uniform_int_distribution<int> small(-20, 20);
      for (size_t i = 0; i < xa.size(); ++i) xa[i] = i % 32 == 0 ? 127.0f : static_cast<float>(small(rng));
      std::vector<uint8_t> qa(row_size(vec_dot_type(w), n));
      quantize_activation(w, xa.data(), qa.data(), n);
      const float ref = vec_dot_ref(w, n, qw.data(), qa.data());
      const float got = vec_dot(w, n, qw.data(), qa.data());
      EXPECT_EQ(got, ref);
      EXPECT_EQ(ref, std::nearbyint(ref));  // the premise: an integer result
    }
  }
}

// A fixed, hand-built case where the exact answer is known: weights all code 1 (after offset)
// and activations all 1, so the integer sum is the element count.
TEST_P(VecDotIsa, KnownValues) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  for (DType w : all_types()) {
    const int64_t n = 3 * unit_of(w);
    SCOPED_TRACE(type_name(w));
    std::vector<float> xw(static_cast<size_t>(n), 0.5f), xa(static_cast<size_t>(n), 1.0f);
    std::vector<uint8_t> qw(row_size(w, n)), qa(row_size(vec_dot_type(w), n));
    quantize_row(w, xw.data(), qw.data(), n);
    quantize_activation(w, xa.data(), qa.data(), n);
    EXPECT_NEAR(vec_dot(w, n, qw.data(), qa.data()), 0.5 * static_cast<double>(n), 1e-3 * static_cast<double>(n));
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, VecDotIsa, ::testing::ValuesIn(isas()), [](const auto& info) { return info.param; });

TEST(VecDot, IsaSelection) {
  EXPECT_TRUE(set_vec_dot_isa("scalar"));
  EXPECT_STREQ(vec_dot_isa(), "scalar");
  EXPECT_FALSE(set_vec_dot_isa("no-such-isa"));
  EXPECT_STREQ(vec_dot_isa(), "scalar");
  EXPECT_TRUE(set_vec_dot_isa("best"));
  const std::string best = vec_dot_isa();
  EXPECT_TRUE(best == "scalar" || best == "avx2" || best == "avx512") << best;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {  // (every AVX2+FMA CPU has F16C)
    EXPECT_NE(best, "scalar");
  }
#endif
}

}  // namespace
