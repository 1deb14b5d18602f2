// Tests of core/quant (dequantize_row / quantize_row) against llama.cpp's golden data and of
// the scalar reference dot products (ops/vec_dot.h) against double-precision dot products.
//
// Golden data: /shared/golden/dequant-<type>.json (see its README). Every dequantized value is
// compared bit for bit; quantization must reproduce llama-quantize's bytes (it ran the
// reference round-to-nearest path, no importance matrix) for the golden rows, for the whole
// tensor, and for every matrix of every synth-llama file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fp16.h"
#include "core/gguf.h"
#include "core/quant.h"
#include "ops/vec_dot.h"
#include "support/test_data.h"

using namespace lokal;
using nlohmann::json;

namespace {

std::vector<uint8_t> from_hex(const std::string& s) {
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(std::stoul(s.substr(2 * i, 2), nullptr, 16));
  return out;
}

std::string hex_prefix(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

const std::vector<std::string>& golden_files() {
  static const std::vector<std::string> files = {"f16",  "q8_0", "q4_0",   "q4_1",   "q5_0",  "q5_1",
                                                 "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"};
  return files;
}

json load_golden(const std::string& t) {
  return json::parse(test::read_file(test::data_path("golden/dequant-" + t + ".json")));
}

const GGUFFile& f32_model() {
  static std::unique_ptr<GGUFFile> f = GGUFFile::open(test::data_path("models/synth/synth-llama-f32.gguf"));
  return *f;
}

double rmse(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s += d * d;
  }
  return std::sqrt(s / static_cast<double>(n));
}

class GoldenDequant : public ::testing::TestWithParam<std::string> {};

// Dequantizing the file's raw rows gives llama.cpp's floats exactly, and the rows in the GGUF
// file are the bytes listed in the golden file.
TEST_P(GoldenDequant, BitExactAndMatchesFile) {
  const json g = load_golden(GetParam());
  auto model = GGUFFile::open(test::data_path(g["file"].get<std::string>()));
  for (const json& e : g["entries"]) {
    SCOPED_TRACE(e["tensor"].get<std::string>() + " " + e["ggml_type"].get<std::string>());
    const auto type = type_from_name(e["ggml_type"].get<std::string>());
    ASSERT_TRUE(type.has_value());
    const int64_t ne0 = e["ne"][0].get<int64_t>();
    const size_t rb = row_size(*type, ne0);
    ASSERT_EQ(rb, e["row_bytes"].get<size_t>());

    const GGUFTensorInfo* ti = model->find_tensor(e["tensor"].get<std::string>());
    ASSERT_NE(ti, nullptr);
    ASSERT_EQ(ti->type, *type);
    // The golden `data_offset` is the tensor's absolute offset in the file (the README calls it
    // relative to the data section, but the bytes sit at that absolute position).
    ASSERT_EQ(static_cast<uint64_t>(ti->data - model->buffer()), e["data_offset"].get<uint64_t>());

    const auto& rows_hex = e["raw_rows_hex"];
    const auto& deq = e["dequantized"];
    ASSERT_EQ(rows_hex.size(), deq.size());
    std::vector<float> out(static_cast<size_t>(ne0));
    for (size_t r = 0; r < rows_hex.size(); ++r) {
      const std::vector<uint8_t> raw = from_hex(rows_hex[r].get<std::string>());
      ASSERT_EQ(raw.size(), rb);
      ASSERT_EQ(std::memcmp(ti->data + r * rb, raw.data(), rb), 0) << "row " << r << " bytes differ from the file";
      dequantize_row(*type, raw.data(), out.data(), ne0);
      ASSERT_EQ(deq[r].size(), static_cast<size_t>(ne0));
      int bad = 0;
      for (int64_t i = 0; i < ne0; ++i) {
        const float want = static_cast<float>(deq[r][static_cast<size_t>(i)].get<double>());
        if (bits(want) != bits(out[static_cast<size_t>(i)]) && bad++ < 5)
          ADD_FAILURE() << "row " << r << " elem " << i << ": got " << out[static_cast<size_t>(i)] << " want "
                        << want;
      }
      EXPECT_EQ(bad, 0);
    }
  }
}

// quantize_row on the F32 originals reproduces llama-quantize's bytes: the golden rows, and
// the whole tensor, whose RMSE must then also match llama.cpp's.
TEST_P(GoldenDequant, QuantizeReproducesLlamaQuantize) {
  const json g = load_golden(GetParam());
  auto model = GGUFFile::open(test::data_path(g["file"].get<std::string>()));
  for (const json& e : g["entries"]) {
    SCOPED_TRACE(e["tensor"].get<std::string>() + " " + e["ggml_type"].get<std::string>());
    const DType type = *type_from_name(e["ggml_type"].get<std::string>());
    const int64_t ne0 = e["ne"][0].get<int64_t>();
    const size_t rb = row_size(type, ne0);

    // Golden rows: original_f32 -> bytes.
    std::vector<uint8_t> q(rb);
    std::vector<float> orig(static_cast<size_t>(ne0));
    for (size_t r = 0; r < e["raw_rows_hex"].size(); ++r) {
      for (int64_t i = 0; i < ne0; ++i)
        orig[static_cast<size_t>(i)] = static_cast<float>(e["original_f32"][r][static_cast<size_t>(i)].get<double>());
      quantize_row(type, orig.data(), q.data(), ne0);
      const std::vector<uint8_t> want = from_hex(e["raw_rows_hex"][r].get<std::string>());
      EXPECT_EQ(hex_prefix(q.data(), rb), hex_prefix(want.data(), rb)) << "row " << r;
    }

    // Whole tensor.
    const GGUFTensorInfo* src = f32_model().find_tensor(e["tensor"].get<std::string>());
    const GGUFTensorInfo* dst = model->find_tensor(e["tensor"].get<std::string>());
    ASSERT_TRUE(src && dst);
    ASSERT_EQ(src->type, DType::F32);
    const int64_t nrows = src->n_rows();
    const auto* x = reinterpret_cast<const float*>(src->data);
    std::vector<uint8_t> all(rb * static_cast<size_t>(nrows));
    std::vector<float> back(static_cast<size_t>(ne0 * nrows));
    for (int64_t r = 0; r < nrows; ++r) {
      quantize_row(type, x + r * ne0, all.data() + static_cast<size_t>(r) * rb, ne0);
      dequantize_row(type, all.data() + static_cast<size_t>(r) * rb, back.data() + r * ne0, ne0);
    }
    ASSERT_EQ(dst->nbytes, all.size());
    size_t first_diff = all.size();
    for (size_t i = 0; i < all.size(); ++i)
      if (all[i] != dst->data[i]) {
        first_diff = i;
        break;
      }
    EXPECT_EQ(first_diff, all.size()) << "whole-tensor bytes differ first at byte " << first_diff << " (row "
                                      << first_diff / rb << ")";
    const double err = rmse(back.data(), x, back.size());
    EXPECT_LE(err, e["rmse_whole_tensor"].get<double>() * (1 + 1e-4));
    EXPECT_GE(err, e["rmse_whole_tensor"].get<double>() * (1 - 1e-4));
  }
}

// Every matrix of every synth-llama file (all the type mixes) re-quantized from the F32 file.
TEST_P(GoldenDequant, EveryMatrixOfTheFileByteIdentical) {
  const json g = load_golden(GetParam());
  auto model = GGUFFile::open(test::data_path(g["file"].get<std::string>()));
  int checked = 0;
  for (const GGUFTensorInfo& t : model->tensors()) {
    if (t.type == DType::F32) continue;
    SCOPED_TRACE(t.name + " " + type_name(t.type));
    const GGUFTensorInfo* src = f32_model().find_tensor(t.name);
    ASSERT_NE(src, nullptr);
    const int64_t ne0 = t.ne[0];
    const size_t rb = row_size(t.type, ne0);
    std::vector<uint8_t> q(rb);
    const auto* x = reinterpret_cast<const float*>(src->data);
    int64_t bad_rows = 0;
    for (int64_t r = 0; r < t.n_rows(); ++r) {
      quantize_row(t.type, x + r * ne0, q.data(), ne0);
      if (std::memcmp(q.data(), t.data + static_cast<size_t>(r) * rb, rb) != 0) ++bad_rows;
    }
    EXPECT_EQ(bad_rows, 0) << "of " << t.n_rows() << " rows";
    // RMSE vs llama.cpp's figure for this tensor.
    if (g["rmse_per_tensor"].contains(t.name)) {
      std::vector<float> back(static_cast<size_t>(t.n_elements()));
      for (int64_t r = 0; r < t.n_rows(); ++r)
        dequantize_row(t.type, t.data + static_cast<size_t>(r) * rb, back.data() + r * ne0, ne0);
      const double want = g["rmse_per_tensor"][t.name]["rmse"].get<double>();
      EXPECT_NEAR(rmse(back.data(), x, back.size()), want, want * 1e-4);
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenDequant, ::testing::ValuesIn(golden_files()),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------------------------------------
// F16 / BF16 round trips and special values
// ---------------------------------------------------------------------------------------------

TEST(Quant, F16RoundTripEveryHalf) {
  // Every finite half -> float -> half is the identity; NaNs stay NaN; infinities stay.
  std::vector<uint16_t> h(65536), h2(65536);
  std::vector<float> f(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  dequantize_row(DType::F16, h.data(), f.data(), 65536);
  quantize_row(DType::F16, f.data(), h2.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    const bool nan = (i & 0x7c00u) == 0x7c00u && (i & 0x3ffu) != 0;
    if (nan) {
      EXPECT_TRUE(std::isnan(f[i]));
      EXPECT_EQ(h2[i] & 0x7c00u, 0x7c00u);
      EXPECT_NE(h2[i] & 0x3ffu, 0u);
    } else {
      ASSERT_EQ(h2[i], h[i]) << "half 0x" << std::hex << i;
    }
  }
  EXPECT_EQ(bits(f[0x8000]), 0x80000000u);          // -0
  EXPECT_EQ(f[0x0001], std::ldexp(1.0f, -24));        // smallest subnormal
  EXPECT_EQ(f[0x03ff], std::ldexp(1023.0f, -24));     // largest subnormal
  EXPECT_EQ(f[0x7c00], std::numeric_limits<float>::infinity());
  EXPECT_EQ(f[0xfc00], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(f[0x7bff], 65504.0f);
}

TEST(Quant, F16RoundingOfFloats) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::pair<float, uint16_t>> cases = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {inf, 0x7c00},
      {-inf, 0xfc00},
      {65504.0f, 0x7bff},
      {65519.99f, 0x7bff},                        // below the rounding boundary
      {65520.0f, 0x7c00},                         // ties to even -> inf
      {1e9f, 0x7c00},
      {std::ldexp(1.0f, -24), 0x0001},            // smallest subnormal
      {std::ldexp(1.0f, -25), 0x0000},            // exactly half of it: ties to even -> 0
      {std::ldexp(1.5f, -25), 0x0001},
      {std::ldexp(3.0f, -25), 0x0002},            // 1.5 ulp -> ties to even (2)
      {1.0f + std::ldexp(1.0f, -11), 0x3c00},     // tie between 1 and 1+2^-10 -> even (1)
      {1.0f + std::ldexp(3.0f, -11), 0x3c02},     // tie -> even
      {std::ldexp(1023.5f, -24), 0x0400},         // rounds up out of the subnormals
  };
  for (const auto& [f, h] : cases) {
    uint16_t out;
    quantize_row(DType::F16, &f, &out, 1);
    EXPECT_EQ(out, h) << f;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  uint16_t out;
  quantize_row(DType::F16, &nan, &out, 1);
  EXPECT_EQ(out & 0x7c00u, 0x7c00u);
  EXPECT_NE(out & 0x3ffu, 0u);
}

TEST(Quant, BF16RoundTripAndSpecials) {
  std::vector<uint16_t> h(65536), h2(65536);
  std::vector<float> f(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  dequantize_row(DType::BF16, h.data(), f.data(), 65536);
  quantize_row(DType::BF16, f.data(), h2.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    ASSERT_EQ(bits(f[i]), i << 16);
    const bool nan = (i & 0x7f80u) == 0x7f80u && (i & 0x7fu) != 0;
    if (nan)
      EXPECT_TRUE(std::isnan(bf16_to_fp32(h2[i])));
    else
      ASSERT_EQ(h2[i], h[i]);
  }
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::pair<float, uint16_t>> cases = {
      {-0.0f, 0x8000}, {inf, 0x7f80}, {-inf, 0xff80}, {1.0f, 0x3f80},
      {1.0f + std::ldexp(1.0f, -8), 0x3f80},   // tie -> even
      {1.0f + std::ldexp(3.0f, -8), 0x3f82},   // tie -> even
      {std::ldexp(1.0f, -130), 0x0008},        // float subnormal kept as bf16 subnormal
      {3.4028235e38f, 0x7f80},                 // FLT_MAX rounds to inf
  };
  for (const auto& [f, h] : cases) {
    uint16_t out;
    quantize_row(DType::BF16, &f, &out, 1);
    EXPECT_EQ(out, h) << f;
  }
}

TEST(Quant, UnsupportedTypesThrowWithTheName) {
  float x[256] = {};
  uint8_t buf[1024] = {};
  for (DType t : {DType::IQ2_XXS, DType::IQ4_NL, DType::I32, DType::TQ1_0}) {
    try {
      dequantize_row(t, buf, x, 256);
      ADD_FAILURE() << "no throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(type_name(t)), std::string::npos) << e.what();
    }
    EXPECT_THROW(quantize_row(t, x, buf, 256), Error);
  }
  EXPECT_THROW(dequantize_row(static_cast<DType>(99), buf, x, 256), Error);
  EXPECT_THROW(quantize_row(DType::Q4_K, x, buf, 100), Error);  // not a multiple of 256
}

// All-zero input gives all-zero output (every type).
TEST(Quant, ZerosStayZero) {
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q8_1, DType::Q2_K,
                  DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K}) {
    SCOPED_TRACE(type_name(t));
    std::vector<float> z(512, 0.0f), out(512, 1.0f);
    std::vector<uint8_t> q(row_size(t, 512));
    quantize_row(t, z.data(), q.data(), 512);
    dequantize_row(t, q.data(), out.data(), 512);
    for (float v : out) ASSERT_EQ(v, 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar reference dot products vs double precision
// ---------------------------------------------------------------------------------------------

const std::vector<DType>& dot_types() {
  static const std::vector<DType> t = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1,
                                       DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                                       DType::Q4_K, DType::Q5_K, DType::Q6_K};
  return t;
}

// vec_dot_ref(w, a) equals the exact dot product of dequantize(w) and dequantize(a) up to float
// rounding. Bound: |ref - exact| <= (nb + 8) * 2^-22 * S, with nb the number of float terms
// summed (blocks, or elements for F32/F16/BF16) and S = sum_i (|w_i| + B_i) * |a_i|, B_i the
// largest |w| in element i's 32-block (covers the separately rounded min/offset terms); for
// Q4_1/Q5_1 plus the exact effect of the fp16 rounding of Q8_1's s field.
TEST(VecDotRef, MatchesDoublePrecisionDot) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (DType w : dot_types()) {
    const DType at = vec_dot_type(w);
    const int64_t bs = std::max(type_info(w)->block_size, type_info(at)->block_size);
    const int64_t unit = std::max<int64_t>(bs, 32);
    for (int64_t blocks : {1, 2, 3, 7, 16}) {
      const int64_t n = blocks * unit;
      SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n));
      std::vector<float> xw(static_cast<size_t>(n)), xa(static_cast<size_t>(n));
      for (auto& v : xw) v = nd(rng) * 0.05f + 0.01f;
      for (auto& v : xa) v = nd(rng) * 2.0f;
      std::vector<uint8_t> qw(row_size(w, n)), qa(row_size(at, n));
      quantize_row(w, xw.data(), qw.data(), n);
      quantize_activation_ref(w, xa.data(), qa.data(), n);
      std::vector<float> dw(static_cast<size_t>(n)), da(static_cast<size_t>(n));
      dequantize_row(w, qw.data(), dw.data(), n);
      dequantize_row(at, qa.data(), da.data(), n);
      double exact = 0, S = 0;
      for (int64_t b0 = 0; b0 < n; b0 += 32) {
        double B = 0;
        for (int64_t i = b0; i < b0 + 32; ++i) B = std::max(B, std::fabs(static_cast<double>(dw[i])));
        for (int64_t i = b0; i < b0 + 32; ++i) {
          exact += static_cast<double>(dw[i]) * da[i];
          S += (std::fabs(static_cast<double>(dw[i])) + B) * std::fabs(static_cast<double>(da[i]));
        }
      }
      // Q8_1 carries s = fp16(d * sum(q)), which llama.cpp (and we) multiply by the weight
      // block's min instead of summing d*q: allow that rounding exactly.
      double s_err = 0;
      if (at == DType::Q8_1) {
        const auto* ab = reinterpret_cast<const BlockQ8_1*>(qa.data());
        for (int64_t b = 0; b < n / 32; ++b) {
          const uint16_t m16 = w == DType::Q4_1 ? reinterpret_cast<const BlockQ4_1*>(qw.data())[b].m
                                                : reinterpret_cast<const BlockQ5_1*>(qw.data())[b].m;
          double sumq = 0;
          for (int j = 0; j < 32; ++j) sumq += ab[b].qs[j];
          s_err += std::fabs(static_cast<double>(fp16_to_fp32(m16))) *
                   std::fabs(static_cast<double>(fp16_to_fp32(ab[b].s)) - fp16_to_fp32(ab[b].d) * sumq);
        }
      }
      const bool plain = !type_info(w)->quantized;
      const double terms = plain ? static_cast<double>(n) : static_cast<double>(n / type_info(w)->block_size);
      const double bound = (terms + 8) * std::ldexp(1.0, -22) * S + s_err * 1.001;
      const float got = vec_dot_ref(w, n, qw.data(), qa.data());
      EXPECT_NEAR(got, exact, bound);
    }
  }
}

// The activation quantizers match what llama.cpp's x86 build produces: Q8_0/Q8_1 use
// scale amax/127, multiplier 127/amax, round half to even; Q8_K is quantize_row(Q8_K).
TEST(VecDotRef, ActivationQuantizers) {
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i - 128) * 0.5f;  // many exact .5 ties
  x[0] = -127.0f;  // amax 127 -> multiplier exactly 1
  BlockQ8_0 q0[8];
  quantize_activation_ref(DType::Q4_0, x.data(), q0, 256);
  for (int b = 0; b < 8; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[static_cast<size_t>(32 * b + j)]));
    EXPECT_EQ(q0[b].d, fp32_to_fp16(amax / 127.0f));
    const float id = 127.0f / amax;
    for (int j = 0; j < 32; ++j) {
      const float v = x[static_cast<size_t>(32 * b + j)] * id;
      EXPECT_EQ(q0[b].qs[j], static_cast<int8_t>(std::nearbyint(v))) << b << " " << j;
    }
  }
  EXPECT_EQ(q0[0].qs[3], -62);  // -62.5 -> -62 (even); roundf would give -63
  BlockQ8_1 q1[8];
  quantize_activation_ref(DType::Q5_1, x.data(), q1, 256);
  for (int b = 0; b < 8; ++b) {
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      EXPECT_EQ(q1[b].qs[j], q0[b].qs[j]);
      sum += q1[b].qs[j];
    }
    EXPECT_EQ(q1[b].d, q0[b].d);
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[static_cast<size_t>(32 * b + j)]));
    EXPECT_EQ(q1[b].s, fp32_to_fp16(amax / 127.0f * static_cast<float>(sum)));
  }
  BlockQ8_K qk, qk2;
  quantize_activation_ref(DType::Q4_K, x.data(), &qk, 256);
  quantize_row(DType::Q8_K, x.data(), &qk2, 256);
  EXPECT_EQ(std::memcmp(&qk, &qk2, sizeof qk), 0);
  for (int j = 0; j < 16; ++j) {
    int s = 0;
    for (int l = 0; l < 16; ++l) s += qk.qs[16 * j + l];
    EXPECT_EQ(qk.bsums[j], s);
  }
}

TEST(VecDotRef, PartnerTypes) {
  EXPECT_EQ(vec_dot_type(DType::F32), DType::F32);
  EXPECT_EQ(vec_dot_type(DType::F16), DType::F16);
  EXPECT_EQ(vec_dot_type(DType::BF16), DType::BF16);
  EXPECT_EQ(vec_dot_type(DType::Q4_0), DType::Q8_0);
  EXPECT_EQ(vec_dot_type(DType::Q5_0), DType::Q8_0);
  EXPECT_EQ(vec_dot_type(DType::Q8_0), DType::Q8_0);
  EXPECT_EQ(vec_dot_type(DType::Q4_1), DType::Q8_1);
  EXPECT_EQ(vec_dot_type(DType::Q5_1), DType::Q8_1);
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K})
    EXPECT_EQ(vec_dot_type(t), DType::Q8_K);
  EXPECT_THROW(vec_dot_type(DType::IQ2_XXS), Error);
  EXPECT_THROW(vec_dot_type(DType::Q8_K), Error);
}

}  // namespace
