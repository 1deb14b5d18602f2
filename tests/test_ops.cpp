// Unit tests of ops/ (norm, rope, softmax, swiglu, threaded matmul) and core/threadpool
// against direct double-precision formulas.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <random>

#include "core/quant.h"
#include "core/threadpool.h"
#include "core/error.h"
#include "core/fp16.h"
#include "ops/attention.h"
#include "ops/ops.h"
#include "ops/vecf.h"
#include "ops/vec_dot.h"

using namespace lokal;

TEST(ThreadPool, EveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 7, 1000}) {
      for (int64_t grain : {1, 3, 64}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.parallel_for(n, [&](int64_t i, int tid) {
          ASSERT_GE(tid, 0);
          ASSERT_LT(tid, threads);
          hits[static_cast<size_t>(i)]++;
        }, grain);
        for (auto& h : hits) ASSERT_EQ(h.load(), 1);
      }
    }
    // Many back-to-back dispatches (the decode pattern) stay correct.
    std::atomic<int64_t> sum{0};
    for (int rep = 0; rep < 2000; ++rep) pool.parallel_for(4, [&](int64_t i, int) { sum += i; });
    EXPECT_EQ(sum.load(), 2000 * 6);
  }
}

TEST(Ops, RmsNormMatchesFormula) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 3.f);
  const int n = 257;
  std::vector<float> x(n), w(n), y(n);
  for (int i = 0; i < n; ++i) x[i] = nd(rng), w[i] = nd(rng);
  rms_norm(x.data(), w.data(), y.data(), n, 1e-5f);
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(y[i], x[i] * scale * w[i], 1e-5 * std::fabs(x[i] * scale * w[i]) + 1e-6);
}

TEST(Ops, RopeNormAndNeoxMatchFormula) {
  const int heads = 3, hd = 8, rd = 8;
  std::vector<float> x(heads * hd);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37 * i) + 0.1f;
  for (bool neox : {false, true}) {
    for (int64_t pos : {0, 1, 17, 1000}) {
      std::vector<float> y = x;
      RopeParams p;
      p.rope_dim = rd;
      p.freq_base = 10000.f;
      p.neox = neox;
      rope(y.data(), heads, hd, pos, p);
      for (int h = 0; h < heads; ++h) {
        for (int i = 0; i < rd / 2; ++i) {
          const double theta = pos * std::pow(10000.0, -2.0 * i / rd);
          const int a = neox ? i : 2 * i, b = neox ? i + rd / 2 : 2 * i + 1;
          const double xa = x[h * hd + a], xb = x[h * hd + b];
          EXPECT_NEAR(y[h * hd + a], xa * std::cos(theta) - xb * std::sin(theta), 2e-4) << pos << " " << neox;
          EXPECT_NEAR(y[h * hd + b], xa * std::sin(theta) + xb * std::cos(theta), 2e-4) << pos << " " << neox;
        }
      }
    }
  }
}

TEST(Ops, SoftmaxAndSwiglu) {
  std::vector<float> x = {1.f, 2.f, -INFINITY, 3.f};
  softmax(x.data(), 4);
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_NEAR(x[0], std::exp(1.0) / z, 1e-7);
  EXPECT_EQ(x[2], 0.f);
  EXPECT_NEAR(x[3], std::exp(3.0) / z, 1e-7);
  float g[2] = {-2.f, 3.f}, u[2] = {5.f, 0.5f}, o[2];
  swiglu(g, u, o, 2);
  EXPECT_NEAR(o[0], -2.0 / (1 + std::exp(2.0)) * 5, 1e-6);
  EXPECT_NEAR(o[1], 3.0 / (1 + std::exp(-3.0)) * 0.5, 1e-6);
}

// The threaded matmul equals per-row vec_dot_ref for every type, any token count and
// row count that does not divide the work split evenly.
TEST(Ops, MatmulEqualsReferenceDots) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool(2);
  for (DType t : {DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K}) {
    const int64_t cols = 512, rows = 37;
    std::vector<float> wf(static_cast<size_t>(cols * rows));
    for (auto& v : wf) v = nd(rng);
    const size_t rb = row_size(t, cols);
    std::vector<uint8_t> wq(rb * rows);
    for (int64_t r = 0; r < rows; ++r) quantize_row(t, wf.data() + r * cols, wq.data() + r * rb, cols);
    WeightView W{t, cols, rows, rb, wq.data()};
    for (int64_t n_tok : {1, 3, 9}) {
      std::vector<float> X(static_cast<size_t>(n_tok * cols)), Y(static_cast<size_t>(n_tok * rows));
      for (auto& v : X) v = nd(rng);
      std::vector<uint8_t> scratch;
      matmul(pool, W, X.data(), n_tok, Y.data(), rows, scratch);
      const DType at = vec_dot_type(t);
      std::vector<uint8_t> act(row_size(at, cols));
      for (int64_t k = 0; k < n_tok; ++k) {
        quantize_activation_ref(t, X.data() + k * cols, act.data(), cols);
        for (int64_t r = 0; r < rows; ++r) {
          const float ref = vec_dot_ref(t, cols, wq.data() + r * rb, act.data());
          // Same integer math; only float accumulation order may differ between kernels.
          EXPECT_NEAR(Y[k * rows + r], ref, 1e-4f * (1.f + std::fabs(ref))) << type_name(t) << " row " << r;
        }
      }
    }
  }
}

// The tiled online-softmax attention equals the two-pass double-precision reference for
// GQA and MHA shapes, F32 and F16 caches, contexts shorter and longer than one tile, batched
// queries at an offset. Bound: 2e-5 relative to the largest |V| (float accumulation of
// softmax-weighted values; the reference is exact double).
TEST(Ops, AttentionMatchesReference) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool(2);
  struct Case { int n_head, n_head_kv, hd; int64_t n_tok, pos0; DType type; };
  for (const Case c : {Case{4, 2, 64, 1, 0, DType::F32}, Case{4, 2, 64, 3, 130, DType::F32}, Case{8, 8, 32, 5, 7, DType::F32},
                       Case{6, 1, 16, 1, 200, DType::F16}, Case{4, 2, 64, 9, 60, DType::F16},
                       Case{24, 2, 64, 2, 100, DType::F16}, Case{14, 2, 12, 1, 65, DType::F32},
                       Case{4, 1, 4, 3, 10, DType::F32}}) {
    const int64_t n_ctx = c.pos0 + c.n_tok;
    const int kvw = c.n_head_kv * c.hd;
    const size_t es = c.type == DType::F32 ? 4 : 2;
    std::vector<uint8_t> kb(static_cast<size_t>(n_ctx * kvw) * es), vb(kb.size());
    for (int64_t i = 0; i < n_ctx * kvw; ++i) {
      const float k = nd(rng) , v = nd(rng);
      if (c.type == DType::F32) {
        reinterpret_cast<float*>(kb.data())[i] = k;
        reinterpret_cast<float*>(vb.data())[i] = v;
      } else {
        reinterpret_cast<uint16_t*>(kb.data())[i] = fp32_to_fp16(k);
        reinterpret_cast<uint16_t*>(vb.data())[i] = fp32_to_fp16(v);
      }
    }
    std::vector<float> q(static_cast<size_t>(c.n_tok * c.n_head * c.hd));
    for (auto& v : q) v = nd(rng);
    AttentionShape s{c.n_head, c.n_head_kv, c.hd, c.hd, 1.0f / std::sqrt(static_cast<float>(c.hd))};
    KVRows K{c.type, kb.data(), static_cast<size_t>(kvw) * es}, V{c.type, vb.data(), static_cast<size_t>(kvw) * es};
    std::vector<float> out(q.size()), ref(q.size()), scratch;
    attention(pool, s, q.data(), c.n_tok, c.pos0, K, V, out.data(), scratch);
    attention_ref(s, q.data(), c.n_tok, c.pos0, K, V, ref.data());
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 2e-5f * 5.0f) << "case hd=" << c.hd << " i=" << i;
  }
}

// Each query's positions are cut into chunks of kAttnChunk (256) positions whose partial softmax results are merged;
// decode with few KV heads runs the chunks on different threads (flash-decoding). Equal to the double reference
// within the bound above, for chunk counts 1, 2 and more, partial last tiles, and thread counts 1-8.
TEST(Ops, AttentionDecodeSplitMatchesReference) {
  std::mt19937 rng(13);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Case { int n_head, n_head_kv, hd; int64_t pos0; int threads; int64_t unused; };
  for (const Case c : {Case{14, 2, 64, 1000, 2, 2}, Case{14, 2, 64, 300, 8, 2}, Case{6, 1, 16, 700, 3, 5},
                       Case{32, 4, 64, 2047, 2, 1}, Case{32, 4, 64, 2047, 8, 4}, Case{14, 2, 64, 100, 2, 1},
                       Case{8, 1, 32, 300, 2, 2}, Case{8, 1, 32, 128, 2, 1}, Case{8, 1, 32, 129, 1, 1}}) {
    SCOPED_TRACE("heads " + std::to_string(c.n_head) + "/" + std::to_string(c.n_head_kv) + " pos0 " +
                 std::to_string(c.pos0) + " threads " + std::to_string(c.threads));
    ThreadPool pool(c.threads);
    AttentionShape s{c.n_head, c.n_head_kv, c.hd, c.hd, 1.0f / std::sqrt(static_cast<float>(c.hd))};
    EXPECT_EQ(attention_chunks(c.pos0 + 1), (c.pos0 + 1 + 255) / 256);
    const int64_t n_ctx = c.pos0 + 1, kvw = static_cast<int64_t>(c.n_head_kv) * c.hd;
    std::vector<uint8_t> kb(static_cast<size_t>(n_ctx * kvw) * 2), vb(kb.size());
    for (int64_t i = 0; i < n_ctx * kvw; ++i) {
      reinterpret_cast<uint16_t*>(kb.data())[i] = fp32_to_fp16(nd(rng));
      reinterpret_cast<uint16_t*>(vb.data())[i] = fp32_to_fp16(nd(rng));
    }
    std::vector<float> q(static_cast<size_t>(c.n_head * c.hd));
    for (auto& v : q) v = nd(rng);
    KVRows K{DType::F16, kb.data(), static_cast<size_t>(kvw) * 2}, V{DType::F16, vb.data(), static_cast<size_t>(kvw) * 2};
    std::vector<float> out(q.size()), ref(q.size()), scratch;
    attention(pool, s, q.data(), 1, c.pos0, K, V, out.data(), scratch);
    EXPECT_LE(scratch.size(), attention_scratch_floats(s, DType::F16, c.threads, c.pos0 + 1));
    attention_ref(s, q.data(), 1, c.pos0, K, V, ref.data());
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 2e-5f * 5.0f) << "i=" << i;
  }
}

// Dispatched float vector kernels vs the scalar reference (odd lengths exercise the tails).
// Bound: 1e-5 relative to sum |a_i b_i| (float summation in another order).
TEST(Ops, VecFKernelsMatchReference) {
  const VecF& f = vecf();
  const VecF& r = vecf_ref();
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n : {1, 7, 8, 15, 16, 17, 64, 100, 257}) {
    std::vector<float> a(n), b(n), y1(n), y2(n);
    std::vector<uint16_t> h(n);
    double mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      a[i] = nd(rng), b[i] = nd(rng), y1[i] = y2[i] = nd(rng), h[i] = fp32_to_fp16(nd(rng));
      mag += std::fabs(a[i] * b[i]) + std::fabs(a[i] * fp16_to_fp32(h[i]));
    }
    EXPECT_NEAR(f.dot(a.data(), b.data(), n), r.dot(a.data(), b.data(), n), 1e-5 * mag) << f.name << " n=" << n;
    EXPECT_NEAR(f.dot_f16(a.data(), h.data(), n), r.dot_f16(a.data(), h.data(), n), 1e-5 * mag) << n;
    f.axpy(0.37f, a.data(), y1.data(), n);
    r.axpy(0.37f, a.data(), y2.data(), n);
    f.axpy_f16(-1.5f, h.data(), y1.data(), n);
    r.axpy_f16(-1.5f, h.data(), y2.data(), n);
    f.scale(y1.data(), 0.5f, n);
    r.scale(y2.data(), 0.5f, n);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y1[i], y2[i], 1e-5f * (1 + std::fabs(y2[i])));
  }
}

// The attention tile kernels (dispatched vs scalar reference): odd tile lengths, head sizes that are not multiples
// of 8 (tails), fewer than 8 heads, strided rows. Bounds: 1e-5 relative to the magnitude of each sum (order of
// float summation); the softmax step 2e-6 relative (the vector exp is a polynomial with < 2e-7 error).
TEST(Ops, AttentionTileKernelsMatchReference) {
  const VecF& f = vecf();
  const VecF& r = vecf_ref();
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t hd : {4, 12, 64, 72, 128}) {
    for (int64_t nt : {1, 3, 5, 64}) {
      const int64_t ld = hd + 3;
      std::vector<float> qt(hd * 8), k(nt * ld), v(nt * ld), s1(nt * 8), s2(nt * 8);
      for (auto& x : qt) x = nd(rng) * 0.3f;
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      f.qk_tile8(qt.data(), k.data(), ld, hd, nt, s1.data());
      r.qk_tile8(qt.data(), k.data(), ld, hd, nt, s2.data());
      for (int64_t i = 0; i < nt * 8; ++i) {
        double mag = 0;
        for (int64_t d = 0; d < hd; ++d) mag += std::fabs(k[(i / 8) * ld + d] * qt[d * 8 + i % 8]);
        ASSERT_NEAR(s1[i], s2[i], 1e-5 * mag + 1e-7) << "hd=" << hd << " nt=" << nt << " i=" << i;
      }
      // Two softmax steps (the first from m = -inf), then the weighted sum of V rows.
      std::vector<float> m1(8, -INFINITY), m2(8, -INFINITY), l1(8, 0.f), l2(8, 0.f), c1(8), c2(8);
      for (int step = 0; step < 2; ++step) {
        std::vector<float> a = s2, b = s2;
        if (step == 1)
          for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] = s2[i] + 2.5f;
        f.softmax_tile8(a.data(), nt, m1.data(), l1.data(), c1.data());
        r.softmax_tile8(b.data(), nt, m2.data(), l2.data(), c2.data());
        for (int h = 0; h < 8; ++h) {
          ASSERT_EQ(m1[h], m2[h]);
          ASSERT_NEAR(c1[h], c2[h], 2e-6f * c2[h] + 1e-30f);
          ASSERT_NEAR(l1[h], l2[h], 2e-6f * l2[h]);
        }
        for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2e-6f * b[i] + 1e-30f);
        for (int nh : {1, 5, 8}) {
          std::vector<float> acc1(8 * ld), acc2(8 * ld);
          for (size_t i = 0; i < acc1.size(); ++i) acc1[i] = acc2[i] = nd(rng);
          f.pv_tile8(b.data(), nh, v.data(), ld, nt, hd, acc1.data(), ld);
          r.pv_tile8(b.data(), nh, v.data(), ld, nt, hd, acc2.data(), ld);
          for (size_t i = 0; i < acc1.size(); ++i)
            ASSERT_NEAR(acc1[i], acc2[i], 1e-5f * (1.0f + static_cast<float>(nt) * 3.0f)) << "nh=" << nh << " i=" << i;
        }
      }
      std::vector<uint16_t> h(hd);
      std::vector<float> y1(hd), y2(hd);
      for (auto& x : h) x = fp32_to_fp16(nd(rng));
      f.f16_to_f32(h.data(), y1.data(), hd);
      r.f16_to_f32(h.data(), y2.data(), hd);
      ASSERT_EQ(y1, y2);
      for (int64_t rows : {1, 5}) {  // strided tile: 3 rows' worth of halves between row starts
        std::vector<uint16_t> hx(static_cast<size_t>(rows * hd * 3));
        for (auto& x : hx) x = fp32_to_fp16(nd(rng));
        std::vector<float> t1(static_cast<size_t>(rows * hd), -7.0f), t2(static_cast<size_t>(rows * hd), 7.0f);
        f.f16_rows_to_f32(hx.data() + 1, 3 * hd * 2, rows, hd, t1.data());
        r.f16_rows_to_f32(hx.data() + 1, 3 * hd * 2, rows, hd, t2.data());
        ASSERT_EQ(t1, t2);
        for (int64_t i = 0; i < hd; ++i) ASSERT_EQ(t2[static_cast<size_t>((rows - 1) * hd + i)], fp16_to_fp32(hx[static_cast<size_t>((rows - 1) * 3 * hd + 1 + i)]));
      }
      if (hd % 32 == 0) {
        std::vector<float> x(hd);
        for (auto& e : x) e = nd(rng);
        std::vector<uint8_t> qb(row_size(DType::Q8_0, hd));
        quantize_row(DType::Q8_0, x.data(), qb.data(), hd);
        f.q8_0_to_f32(qb.data(), y1.data(), hd);
        r.q8_0_to_f32(qb.data(), y2.data(), hd);
        ASSERT_EQ(y1, y2);  // int8 * fp16 scale: exact in float either way
      }
    }
  }
}

// Quantized and BF16 caches: attention converts them to f32 a tile at a time (no whole-cache copy). Compared
// with the double reference on the same (dequantized) cache, so only float summation order differs: 1e-4
// absolute for unit-normal values (outputs are convex combinations of V rows, |V| < ~5).
TEST(Ops, AttentionQuantizedCacheMatchesReference) {
  std::mt19937 rng(12);
  std::normal_distribution<float> nd(0.f, 1.f);
  ThreadPool pool(2);
  for (DType kt : {DType::Q8_0, DType::Q4_0, DType::BF16, DType::F16}) {
    for (DType vt : {DType::Q8_0, DType::Q4_0, DType::BF16}) {
      const int n_head = 4, n_head_kv = 2, hd = 64;
      const int64_t n_tok = 3, pos0 = 70, n_ctx = pos0 + n_tok, kvw = n_head_kv * hd;
      const size_t krb = row_size(kt, kvw), vrb = row_size(vt, kvw);
      std::vector<uint8_t> kb(krb * n_ctx), vb(vrb * n_ctx);
      std::vector<float> row(kvw);
      for (int64_t j = 0; j < n_ctx; ++j) {
        for (auto& v : row) v = nd(rng);
        quantize_row(kt, row.data(), kb.data() + j * krb, kvw);
        for (auto& v : row) v = nd(rng);
        quantize_row(vt, row.data(), vb.data() + j * vrb, kvw);
      }
      std::vector<float> q(static_cast<size_t>(n_tok * n_head * hd));
      for (auto& v : q) v = nd(rng) * 0.2f;
      AttentionShape s{n_head, n_head_kv, hd, hd, 1.0f / 8.0f};
      KVRows K{kt, kb.data(), krb}, V{vt, vb.data(), vrb};
      std::vector<float> out(q.size()), ref(q.size()), scratch;
      attention(pool, s, q.data(), n_tok, pos0, K, V, out.data(), scratch);
      attention_ref(s, q.data(), n_tok, pos0, K, V, ref.data());
      for (size_t i = 0; i < out.size(); ++i)
        ASSERT_NEAR(out[i], ref[i], 1e-4f) << type_name(kt) << "/" << type_name(vt) << " i=" << i;
    }
  }
  // A head size that is not a multiple of the block size is refused with a clear error.
  AttentionShape s{1, 1, 16, 16, 0.25f};
  std::vector<uint8_t> buf(64);
  std::vector<float> q(16), out(16), scratch;
  KVRows K{DType::Q8_0, buf.data(), 34}, V{DType::F32, buf.data(), 64};
  EXPECT_THROW(attention(pool, s, q.data(), 1, 0, K, V, out.data(), scratch), lokal::Error);
}
