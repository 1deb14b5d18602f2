// Model-level checks of load-time repacking (ops/packed.h) on real GGUF files:
// - every matrix the loader packed (mmap'd or read into memory) multiplies, through matmul with the
//   best kernels, to exactly vec_dot_ref of the canonical rows of the same file loaded unpacked
//   (the packed kernels are bit-identical to the reference, see tests/test_gemm.cpp);
// - with the scalar kernels selected after loading, a packed model's logits equal an unpacked
//   model's bit for bit (the reference reads packed rows through unpack_row);
// - the file on disk is not modified (the mapping is private).
// Logits of packed and unpacked models under the SIMD kernels are not compared directly: those
// differ by float rounding (unpacked SIMD kernels sum in another order), and one rounding flip of an
// 8-bit activation code moves a random-weight model's later logits by ~0.05. The golden tests
// (test_golden_logits, against llama.cpp) run with packing on.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/quant.h"
#include "core/threadpool.h"
#include "model/model.h"
#include "ops/packed.h"
#include "ops/vec_dot.h"
#include "support/test_data.h"

using namespace lokal;

namespace {

const char* const kFiles[] = {"models/synth/synth-llama-q4_0.gguf", "models/synth/synth-llama-q5_0.gguf",
                              "models/synth/synth-llama-q8_0.gguf", "models/synth/synth-qwen2-q8_0.gguf",
                              "models/synth/synth-llama-q4_k_m.gguf"};

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::pair<const WeightView*, const WeightView*>> matrices(const Model& a, const Model& b) {
  std::vector<std::pair<const WeightView*, const WeightView*>> out;
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights &A = a.layers[l], &B = b.layers[l];
    out.insert(out.end(), {{&A.wq, &B.wq}, {&A.wk, &B.wk}, {&A.wv, &B.wv}, {&A.wo, &B.wo},
                           {&A.w_gate, &B.w_gate}, {&A.w_up, &B.w_up}, {&A.w_down, &B.w_down}});
  }
  out.push_back({&a.output, &b.output});
  return out;
}

TEST(PackedModel, PackedMatricesMultiplyExactlyAsTheReference) {
  ThreadPool pool(2);
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const char* rel : kFiles) {
    const std::string path = test::data_path(rel);
    const std::string before = file_bytes(path);
    LoadOptions canon;
    canon.repack = false;
    const auto c = Model::load(path, canon);
    EXPECT_EQ(c->packed_tensors(), 0);
    for (bool mmap : {true, false}) {
      SCOPED_TRACE(std::string(rel) + (mmap ? " (mmap)" : " (read)"));
      LoadOptions o;
      o.use_mmap = mmap;
      const auto p = Model::load(path, o);
      if (!vec_dot_has_packed(DType::Q8_0)) {
        EXPECT_EQ(p->packed_tensors(), 0) << "no packed kernels on this CPU: nothing should be packed";
        continue;
      }
      EXPECT_GT(p->packed_tensors(), 0) << "this CPU has packed kernels: the loader should use them";
      int64_t seen = 0;
      for (const auto& [P, C] : matrices(*p, *c)) {
        EXPECT_EQ(P->packed, pack_worthwhile(P->type, P->rows, P->cols));
        if (!P->packed) continue;
        ++seen;
        for (int64_t n_tok : {1, 5}) {
          std::vector<float> X(static_cast<size_t>(n_tok * P->cols)), Y(static_cast<size_t>(n_tok * P->rows));
          for (auto& v : X) v = nd(rng);
          std::vector<uint8_t> scratch, act(row_size(vec_dot_type(C->type), C->cols));
          matmul(pool, *P, X.data(), n_tok, Y.data(), P->rows, scratch);
          for (int64_t t = 0; t < n_tok; ++t) {
            quantize_activation_ref(C->type, X.data() + t * C->cols, act.data(), C->cols);
            for (int64_t r = 0; r < C->rows; ++r)
              ASSERT_EQ(Y[static_cast<size_t>(t * P->rows + r)], vec_dot_ref(C->type, C->cols, C->row(r), act.data()))
                  << "matrix " << P->rows << "x" << P->cols << " row " << r << " token " << t;
          }
        }
      }
      EXPECT_EQ(seen, p->packed_tensors());
    }
    EXPECT_EQ(file_bytes(path), before) << "repacking must not write to the file";
  }
}

std::vector<float> logits_of(const Model& m) {
  ThreadPool pool(2);
  const int64_t n = 24;
  Forward fwd(m, 64, pool, n);
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) toks[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 11) % m.config().n_vocab);
  std::vector<float> out(static_cast<size_t>(n * m.config().n_vocab));
  fwd.eval(toks.data(), n, 0, true, out.data());  // prefill (multi-token) path
  std::vector<float> one(static_cast<size_t>(m.config().n_vocab));
  const int32_t next = 5;
  fwd.eval(&next, 1, n, false, one.data());         // decode (one token) path
  out.insert(out.end(), one.begin(), one.end());
  return out;
}

TEST(PackedModel, ScalarKernelsReadPackedWeights) {
  for (const char* rel : kFiles) {
    SCOPED_TRACE(rel);
    const std::string path = test::data_path(rel);
    const auto p = Model::load(path);
    if (p->packed_tensors() == 0) GTEST_SKIP() << "no packed kernels on this CPU";
    LoadOptions canon;
    canon.repack = false;
    const auto c = Model::load(path, canon);
    ASSERT_TRUE(set_vec_dot_isa("scalar"));
    const std::vector<float> a = logits_of(*p), b = logits_of(*c);
    set_vec_dot_isa("best");
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
  }
}

}  // namespace
