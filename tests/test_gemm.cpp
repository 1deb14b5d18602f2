// Tests of the multi-token (prefill) kernels, vec_dot_tile, and of the cache-blocked matmul, for
// every kernel set this CPU supports, against the scalar reference vec_dot_ref per (row, token).
//
// Bound: the integer parts are exact in every kernel, only the float accumulation order
// differs, so for each (row, token) pair |tile - ref| <= (T + 16) * 2^-22 * M, with T the number
// of float terms (blocks; elements for F32/F16/BF16) and M = sum_i (|w_i| + 2 B_i) |a_i| over the
// dequantized weight w and activation a (B_i = max |w| of element i's 32-block) - the same bound
// as tests/test_vec_dot.cpp. Integer exactness is checked bit for bit with unit scales.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant.h"
#include "core/threadpool.h"
#include "ops/ops.h"
#include "ops/packed.h"
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

// A weight matrix and a batch of activations, quantized, with their dequantized values.
struct Mats {
  int64_t n = 0, rows = 0, toks = 0;
  size_t ws = 0, as = 0;              // strides (with padding, to test them)
  std::vector<uint8_t> qw, qa;
  std::vector<float> dw, da, xa;      // dequantized weights / activations, raw activations
};

Mats make_mats(DType w, int64_t n, int64_t rows, int64_t toks, std::mt19937& rng, float wscale) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Mats m;
  m.n = n, m.rows = rows, m.toks = toks;
  const DType at = vec_dot_type(w);
  m.ws = row_size(w, n) + 8;
  m.as = row_size(at, n) + 4;
  m.qw.assign(m.ws * rows, 0xCD);
  m.qa.assign(m.as * toks, 0xCD);
  m.dw.resize(static_cast<size_t>(n * rows));
  m.da.resize(static_cast<size_t>(n * toks));
  m.xa.resize(static_cast<size_t>(n * toks));
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : x) v = nd(rng) * wscale;
    quantize_row(w, x.data(), m.qw.data() + r * m.ws, n);
    dequantize_row(w, m.qw.data() + r * m.ws, m.dw.data() + r * n, n);
  }
  for (int64_t t = 0; t < toks; ++t) {
    for (int64_t i = 0; i < n; ++i) m.xa[t * n + i] = nd(rng) * 3.0f;
    quantize_activation_ref(w, m.xa.data() + t * n, m.qa.data() + t * m.as, n);
    dequantize_row(at, m.qa.data() + t * m.as, m.da.data() + t * n, n);
  }
  return m;
}

double bound_of(DType w, const float* dw, const float* da, int64_t n) {
  double M = 0;
  for (int64_t b0 = 0; b0 < n; b0 += 32) {
    const int64_t e = std::min<int64_t>(n, b0 + 32);
    double B = 0;
    for (int64_t i = b0; i < e; ++i) B = std::max(B, std::fabs(static_cast<double>(dw[i])));
    for (int64_t i = b0; i < e; ++i) M += (std::fabs(static_cast<double>(dw[i])) + 2 * B) * std::fabs(da[i]);
  }
  const bool plain = !type_info(w)->quantized;
  const double T = plain ? static_cast<double>(n) : static_cast<double>(n / type_info(w)->block_size);
  return (T + 16) * std::ldexp(1.0, -22) * M;
}

class GemmIsa : public ::testing::TestWithParam<std::string> {};

TEST_P(GemmIsa, TileMatchesReferencePairs) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(123);
  for (DType w : all_types()) {
    for (int64_t blocks : {1, 2, 3, 8, 9, 17}) {
      const int64_t n = blocks * unit_of(w) + (type_info(w)->block_size == 1 && blocks == 3 ? 5 : 0);
      const int64_t rows = 6;
      const Mats m = make_mats(w, n, rows, 64, rng, blocks % 2 ? 0.05f : 0.5f);
      for (int64_t nt : {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 64}) {
        for (int64_t nr : {int64_t{1}, int64_t{5}, rows}) {
          SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n) + " nt=" + std::to_string(nt) +
                       " nr=" + std::to_string(nr));
          const int64_t ldy = nr + 3;
          std::vector<float> y(static_cast<size_t>(ldy * nt), -1234.5f);
          vec_dot_tile(w, n, m.qw.data(), m.ws, nr, m.qa.data(), m.as, nt, y.data(), ldy);
          for (int64_t t = 0; t < nt; ++t) {
            for (int64_t r = 0; r < nr; ++r) {
              const float ref = vec_dot_ref(w, n, m.qw.data() + r * m.ws, m.qa.data() + t * m.as);
              const double bound = bound_of(w, m.dw.data() + r * n, m.da.data() + t * n, n);
              ASSERT_NEAR(y[t * ldy + r], ref, bound) << "r=" << r << " t=" << t;
            }
            for (int64_t r = nr; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -1234.5f) << "wrote outside the tile";
          }
        }
      }
    }
  }
}

// Unit scales, integer activations quantizing with scale exactly 1: every float operation is
// exact in any order, so a kernel whose integer arithmetic is right matches bit for bit.
TEST_P(GemmIsa, TileIntegerPartsExact) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> byte(0, 255), small(-20, 20);
  const uint16_t h_one = fp32_to_fp16(1.0f), h_two = fp32_to_fp16(2.0f);
  for (DType w : all_types()) {
    if (!type_info(w)->quantized) continue;
    for (int64_t blocks : {1, 3, 8, 9, 16}) {
      const int64_t n = blocks * unit_of(w);
      const int64_t rows = 3, toks = 9;
      SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n));
      const size_t ws = row_size(w, n), as = row_size(vec_dot_type(w), n);
      std::vector<uint8_t> qw(ws * rows), qa(as * toks);
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
      }
      std::vector<float> xa(static_cast<size_t>(n));
      for (int64_t t = 0; t < toks; ++t) {
        for (size_t i = 0; i < xa.size(); ++i) xa[i] = i % 32 == 0 ? 127.0f : static_cast<float>(small(rng));
        quantize_activation(w, xa.data(), qa.data() + t * as, n);
      }
      std::vector<float> y(static_cast<size_t>(rows * toks));
      vec_dot_tile(w, n, qw.data(), ws, rows, qa.data(), as, toks, y.data(), rows);
      for (int64_t t = 0; t < toks; ++t)
        for (int64_t r = 0; r < rows; ++r) {
          const float ref = vec_dot_ref(w, n, qw.data() + r * ws, qa.data() + t * as);
          ASSERT_EQ(y[t * rows + r], ref) << "r=" << r << " t=" << t;
        }
    }
  }
}

// The threaded, cache-blocked matmul equals the per-pair reference for small and large row
// counts, token counts around the tile sizes, 1 and 2 threads.
TEST_P(GemmIsa, MatmulMatchesReference) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(5);
  ThreadPool pool1(1), pool2(2);
  for (DType w : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q5_0, DType::Q4_1,
                  DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q3_K}) {
    for (int64_t rows : {7, 37, 300}) {
      const int64_t n = 2 * unit_of(w) + (w == DType::Q8_0 || w == DType::Q4_0 ? 32 * 8 : 0);
      const Mats m = make_mats(w, n, rows, 0, rng, 0.2f);
      // Compact weights (matmul takes W.row_bytes apart rows; keep the padded stride).
      const WeightView W{w, n, rows, m.ws, m.qw.data()};
      for (int64_t n_tok : {1, 2, 5, 17, 64, 65, 130}) {
        if (rows == 300 && n_tok == 130 && GetParam() == "scalar") continue;  // slow and adds nothing
        SCOPED_TRACE(std::string(type_name(w)) + " rows=" + std::to_string(rows) + " n_tok=" + std::to_string(n_tok));
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> X(static_cast<size_t>(n_tok * n));
        for (auto& v : X) v = nd(rng);
        const int64_t ldy = rows + 2;
        for (ThreadPool* pool : {&pool1, &pool2}) {
          std::vector<float> Y(static_cast<size_t>(n_tok * ldy), 0.0f);
          std::vector<uint8_t> scratch;
          matmul(*pool, W, X.data(), n_tok, Y.data(), ldy, scratch);
          const DType at = vec_dot_type(w);
          std::vector<uint8_t> act(row_size(at, n));
          std::vector<float> da(static_cast<size_t>(n));
          for (int64_t t = 0; t < n_tok; ++t) {
            quantize_activation_ref(w, X.data() + t * n, act.data(), n);
            dequantize_row(at, act.data(), da.data(), n);
            for (int64_t r = 0; r < rows; ++r) {
              const float ref = vec_dot_ref(w, n, m.qw.data() + r * m.ws, act.data());
              ASSERT_NEAR(Y[t * ldy + r], ref, bound_of(w, m.dw.data() + r * n, da.data(), n)) << "r=" << r << " t=" << t;
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packed (16-row interleaved) Q4_0 / Q5_0 / Q8_0 / Q4_K layouts (ops/packed.h)
// ---------------------------------------------------------------------------------------------

// Elements per block of a packable type (the unit of a packed row).
int64_t unit(DType w) { return type_info(w)->block_size; }

// Packs a copy of `rows` canonical rows (stride ws) into a compact packed matrix.
std::vector<uint8_t> packed_copy(DType w, const Mats& m) {
  const size_t rb = row_size(w, m.n);
  std::vector<uint8_t> p(rb * static_cast<size_t>(m.rows));
  for (int64_t r = 0; r < m.rows; ++r) std::memcpy(p.data() + r * rb, m.qw.data() + r * m.ws, rb);
  pack_matrix_inplace(w, m.rows, m.n, p.data());
  return p;
}

TEST(Packed, UnpackGivesBackEveryCanonicalRow) {
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> byte(0, 255);
  for (DType w : {DType::Q4_0, DType::Q5_0, DType::Q8_0, DType::Q4_K}) {
    for (int64_t cols : {unit(w), 3 * unit(w), int64_t{2048}}) {
      for (int64_t rows : {16, 48}) {
        const size_t rb = row_size(w, cols);
        std::vector<uint8_t> canon(rb * static_cast<size_t>(rows));
        for (auto& b : canon) b = static_cast<uint8_t>(byte(rng));
        std::vector<uint8_t> p = canon;
        pack_matrix_inplace(w, rows, cols, p.data());
        EXPECT_NE(p, canon) << "packing must reorder the bytes";
        std::vector<uint8_t> row(rb);
        for (int64_t r = 0; r < rows; ++r) {
          unpack_row(w, cols, p.data(), r, row.data());
          ASSERT_EQ(0, std::memcmp(row.data(), canon.data() + r * rb, rb)) << type_name(w) << " cols=" << cols << " r=" << r;
        }
      }
    }
  }
  std::vector<uint8_t> buf(row_size(DType::Q4_0, 64) * 8);
  EXPECT_THROW(pack_matrix_inplace(DType::Q4_0, 8, 64, buf.data()), Error);  // rows not a multiple of 16
  EXPECT_THROW(pack_matrix_inplace(DType::Q6_K, 16, 256, buf.data()), Error);  // no packed layout
}

TEST(Packed, ActivationsAreTheCanonicalQ8_0CodesWithOffset) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (DType w : {DType::Q4_0, DType::Q5_0, DType::Q8_0}) {
    const int64_t n = 96;
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = nd(rng);
    std::vector<BlockQ8_0> canon(static_cast<size_t>(n / 32));
    quantize_activation_ref(w, x.data(), canon.data(), n);
    std::vector<BlockQ8S> p(static_cast<size_t>(n / 32));
    quantize_activation_packed(w, x.data(), p.data(), n);
    for (size_t b = 0; b < p.size(); ++b) {
      EXPECT_EQ(p[b].d, fp16_to_fp32(canon[b].d));
      EXPECT_EQ(0, std::memcmp(p[b].qs, canon[b].qs, 32));
      int s = 0;
      for (int8_t q : canon[b].qs) s += q;
      EXPECT_EQ(p[b].bias, -(w == DType::Q4_0 ? 8 : w == DType::Q5_0 ? 16 : 128) * s);
    }
  }
}

// The packed kernel of every kernel set against vec_dot_ref on the canonical rows, for 1..3
// groups and token counts around its 4-token steps: bit for bit (the packed kernels do vec_dot_ref's
// float steps in its order, see ops/packed_avx512.cpp).
TEST_P(GemmIsa, PackedMatchesReference) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(41);
  for (DType w : {DType::Q4_0, DType::Q5_0, DType::Q8_0, DType::Q4_K}) {
    for (int64_t blocks : {1, 2, 3, 9, 16}) {
      const int64_t n = unit(w) * blocks;
      const Mats m = make_mats(w, n, 48, 9, rng, blocks % 2 ? 0.05f : 0.5f);
      const std::vector<uint8_t> p = packed_copy(w, m);
      const size_t gs = row_size(w, n) * kPackRows;
      const size_t as = packed_act_row_size(w, n) + 8;
      std::vector<uint8_t> qa(as * 9);
      for (int64_t t = 0; t < 9; ++t) quantize_activation_packed(w, m.xa.data() + t * n, qa.data() + t * as, n);
      for (int64_t ng : {1, 2, 3}) {
        for (int64_t nt : {1, 2, 3, 4, 5, 7, 8, 9}) {
          SCOPED_TRACE(std::string(type_name(w)) + " n=" + std::to_string(n) + " ng=" + std::to_string(ng) +
                       " nt=" + std::to_string(nt));
          const int64_t ldy = ng * kPackRows + 5;
          std::vector<float> y(static_cast<size_t>(ldy * nt), -1234.5f);
          vec_dot_packed(w, n, p.data(), gs, ng, qa.data(), as, nt, y.data(), ldy);
          for (int64_t t = 0; t < nt; ++t) {
            for (int64_t r = 0; r < ng * kPackRows; ++r) {
              const float ref = vec_dot_ref(w, n, m.qw.data() + r * m.ws, m.qa.data() + t * m.as);
              ASSERT_EQ(y[t * ldy + r], ref) << "r=" << r << " t=" << t;
            }
            for (int64_t r = ng * kPackRows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -1234.5f) << "wrote outside";
          }
        }
      }
    }
  }
}

// Unit scales and activations that quantize with scale 1: every float step is exact, so the packed
// kernels' integer sums (offset corrections included) must match the reference bit for bit.
TEST_P(GemmIsa, PackedIntegerPartsExact) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(8);
  std::uniform_int_distribution<int> byte(0, 255), small(-20, 20);
  const uint16_t h_one = fp32_to_fp16(1.0f);
  for (DType w : {DType::Q4_0, DType::Q5_0, DType::Q8_0, DType::Q4_K}) {
    for (int64_t blocks : {1, 5, 16}) {
      const int64_t n = unit(w) * blocks, rows = 32, toks = 6;
      const size_t rb = row_size(w, n), as = row_size(vec_dot_type(w), n), pas = packed_act_row_size(w, n);
      std::vector<uint8_t> qw(rb * rows);
      for (auto& b : qw) b = static_cast<uint8_t>(byte(rng));
      for (size_t off = 0; off < qw.size(); off += type_info(w)->type_size) {
        std::memcpy(qw.data() + off, &h_one, 2);
        if (w == DType::Q4_K) std::memcpy(qw.data() + off + 2, &h_one, 2);  // dmin
      }
      std::vector<uint8_t> qa(as * toks), pa(pas * toks);
      std::vector<float> xa(static_cast<size_t>(n));
      for (int64_t t = 0; t < toks; ++t) {
        for (size_t i = 0; i < xa.size(); ++i) xa[i] = i % 32 == 0 ? 127.0f : static_cast<float>(small(rng));
        quantize_activation_ref(w, xa.data(), qa.data() + t * as, n);
        quantize_activation_packed(w, xa.data(), pa.data() + t * pas, n);
      }
      std::vector<uint8_t> p = qw;
      pack_matrix_inplace(w, rows, n, p.data());
      std::vector<float> y(static_cast<size_t>(rows * toks));
      vec_dot_packed(w, n, p.data(), rb * kPackRows, rows / kPackRows, pa.data(), pas, toks, y.data(), rows);
      for (int64_t t = 0; t < toks; ++t)
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(y[t * rows + r], vec_dot_ref(w, n, qw.data() + r * rb, qa.data() + t * as))
              << type_name(w) << " n=" << n << " r=" << r << " t=" << t;
    }
  }
}

// matmul and get_row on a packed view equal the canonical reference bit for bit (threads, token
// tiles, decode).
TEST_P(GemmIsa, PackedMatmulAndGetRow) {
  IsaGuard g(GetParam());
  ASSERT_TRUE(g.ok);
  std::mt19937 rng(17);
  ThreadPool pool1(1), pool2(2);
  for (DType w : {DType::Q4_0, DType::Q5_0, DType::Q8_0, DType::Q4_K}) {
    for (int64_t rows : {16, 48, 320}) {
      const int64_t n = w == DType::Q4_K ? 256 * 3 : 32 * 11;
      const Mats m = make_mats(w, n, rows, 0, rng, 0.2f);
      const std::vector<uint8_t> p = packed_copy(w, m);
      WeightView W{w, n, rows, row_size(w, n), p.data()};
      W.packed = true;
      const WeightView C{w, n, rows, m.ws, m.qw.data()};
      std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
      for (int64_t r : {int64_t{0}, int64_t{5}, rows - 1}) {
        get_row(W, r, a.data());
        get_row(C, r, b.data());
        ASSERT_EQ(a, b) << "get_row r=" << r;
      }
      for (int64_t n_tok : {1, 2, 5, 17, 64, 65, 130}) {
        if (rows == 320 && n_tok == 130 && GetParam() == "scalar") continue;  // slow and adds nothing
        SCOPED_TRACE(std::string(type_name(w)) + " rows=" + std::to_string(rows) + " n_tok=" + std::to_string(n_tok));
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> X(static_cast<size_t>(n_tok * n));
        for (auto& v : X) v = nd(rng);
        const int64_t ldy = rows + 2;
        for (ThreadPool* pool : {&pool1, &pool2}) {
          std::vector<float> Y(static_cast<size_t>(n_tok * ldy), 0.0f);
          std::vector<uint8_t> scratch;
          matmul(*pool, W, X.data(), n_tok, Y.data(), ldy, scratch);
          EXPECT_LE(scratch.size(), matmul_scratch_row_bytes(w, n) * static_cast<size_t>(n_tok));
          std::vector<uint8_t> act(row_size(vec_dot_type(w), n));
          for (int64_t t = 0; t < n_tok; ++t) {
            quantize_activation_ref(w, X.data() + t * n, act.data(), n);
            for (int64_t r = 0; r < rows; ++r) {
              const float ref = vec_dot_ref(w, n, m.qw.data() + r * m.ws, act.data());
              ASSERT_EQ(Y[t * ldy + r], ref) << "r=" << r << " t=" << t;
            }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, GemmIsa, ::testing::ValuesIn(isas()), [](const auto& info) { return info.param; });

TEST(Gemm, HotTypesHaveTileKernels) {
  if (!set_vec_dot_isa("avx512")) GTEST_SKIP() << "no AVX-512";
  for (DType w : {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0, DType::Q4_0, DType::F16, DType::BF16, DType::F32})
    EXPECT_TRUE(vec_dot_has_tile(w)) << type_name(w);
  for (DType w : {DType::Q4_0, DType::Q5_0, DType::Q8_0, DType::Q4_K}) EXPECT_TRUE(vec_dot_has_packed(w)) << type_name(w);
  set_vec_dot_isa("best");
}

}  // namespace
