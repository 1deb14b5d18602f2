// bench/bench_gemm.cpp - prefill-shaped matrix products: the cache-blocked multi-token matmul
// (ops/ops.h, vec_dot_tile kernels) vs the per-pair path it replaced (every (row, token) pair
// one vec_dot call, rows split across the pool in blocks, tokens in blocks of 8).
//
// Usage: bench_gemm [threads] [types...]      (default 2 threads; Q4_K Q8_0 Q4_0 Q6_K Q5_K F16)
// Shapes: TinyLlama-1.1B (rows x cols) 2048x2048 (attn), 5632x2048 (ffn up/gate), 2048x5632
// (ffn down), each with 128 and 512 tokens. Both paths include the activation quantization.
// Prints ms, GFLOP/s (2 * rows * cols * tokens) and the speedup. Best of several repetitions.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/quant.h"
#include "core/threadpool.h"
#include "core/types.h"
#include "ops/ops.h"
#include "ops/vec_dot.h"

using namespace lokal;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

template <typename F>
double time_best(F&& fn) {
  auto t0 = Clock::now();
  fn();
  const double once = std::max(seconds_since(t0), 1e-7);
  const int reps = std::clamp(static_cast<int>(1.0 / once), 2, 20);
  double best = once;
  for (int r = 0; r < reps; ++r) {
    t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// The previous matmul: quantize once, then per (row block, token block of 8) one vec_dot per pair.
void matmul_pairs(ThreadPool& pool, const WeightView& W, const float* X, int64_t n_tok, float* Y, int64_t ldy,
                  std::vector<uint8_t>& scratch) {
  const DType at = vec_dot_type(W.type);
  const size_t act_row = row_size(at, W.cols);
  if (scratch.size() < act_row * static_cast<size_t>(n_tok)) scratch.resize(act_row * static_cast<size_t>(n_tok));
  uint8_t* A = scratch.data();
  pool.parallel_for(n_tok, [&](int64_t t, int) {
    quantize_activation(W.type, X + t * W.cols, A + static_cast<size_t>(t) * act_row, W.cols);
  });
  const int64_t rows_per_item = std::max<int64_t>(1, std::min<int64_t>(64, W.rows / (pool.size() * 8)));
  const int64_t n_items = (W.rows + rows_per_item - 1) / rows_per_item;
  pool.parallel_for(n_items, [&](int64_t item, int) {
    const int64_t r0 = item * rows_per_item, r1 = std::min(W.rows, r0 + rows_per_item);
    for (int64_t t0 = 0; t0 < n_tok; t0 += 8) {
      const int64_t t1 = std::min(n_tok, t0 + 8);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t t = t0; t < t1; ++t)
          Y[t * ldy + r] = vec_dot(W.type, W.cols, W.row(r), A + static_cast<size_t>(t) * act_row);
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  std::vector<DType> types;
  for (int i = 2; i < argc; ++i) {
    auto t = type_from_name(argv[i]);
    if (!t) {
      std::fprintf(stderr, "unknown type %s\n", argv[i]);
      return 2;
    }
    types.push_back(*t);
  }
  if (types.empty()) types = {DType::Q4_K, DType::Q8_0, DType::Q4_0, DType::Q6_K, DType::Q5_K, DType::F16};
  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{2048, 2048}, {5632, 2048}, {2048, 5632}};
  const int64_t toks[] = {128, 512};

  ThreadPool pool(threads);
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf("prefill matmul, %d threads, isa %s; GFLOP/s = 2*rows*cols*tokens / time\n", threads, vec_dot_isa());
  std::printf("%-5s %11s %5s | %10s %8s | %10s %8s | %7s\n", "type", "rows x cols", "tok", "pairs ms", "GFLOP/s",
              "tiled ms", "GFLOP/s", "speedup");
  for (DType t : types) {
    for (const Shape& s : shapes) {
      // 256 distinct quantized rows, replicated: realistic values, full-size memory traffic.
      const size_t rb = row_size(t, s.cols);
      std::vector<uint8_t> Wd(rb * static_cast<size_t>(s.rows));
      std::vector<float> src(static_cast<size_t>(s.cols));
      const int64_t distinct = std::min<int64_t>(256, s.rows);
      for (int64_t r = 0; r < distinct; ++r) {
        for (auto& v : src) v = nd(rng) * 0.02f;
        quantize_row(t, src.data(), Wd.data() + r * rb, s.cols);
      }
      for (int64_t r = distinct; r < s.rows; ++r) std::memcpy(Wd.data() + r * rb, Wd.data() + (r % distinct) * rb, rb);
      const WeightView W{t, s.cols, s.rows, rb, Wd.data()};
      for (int64_t n_tok : toks) {
        std::vector<float> X(static_cast<size_t>(n_tok * s.cols));
        for (auto& v : X) v = nd(rng);
        std::vector<float> Y0(static_cast<size_t>(n_tok * s.rows)), Y1(Y0.size());
        std::vector<uint8_t> scratch;
        const double tp = time_best([&] { matmul_pairs(pool, W, X.data(), n_tok, Y0.data(), s.rows, scratch); });
        const double tt = time_best([&] { matmul(pool, W, X.data(), n_tok, Y1.data(), s.rows, scratch); });
        double maxdiff = 0, maxv = 0;
        for (size_t i = 0; i < Y0.size(); ++i) {
          maxdiff = std::max(maxdiff, static_cast<double>(std::fabs(Y0[i] - Y1[i])));
          maxv = std::max(maxv, static_cast<double>(std::fabs(Y0[i])));
        }
        const double flop = 2.0 * static_cast<double>(s.rows) * static_cast<double>(s.cols) * static_cast<double>(n_tok);
        char shape[32];
        std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(s.rows), static_cast<long long>(s.cols));
        std::printf("%-5s %11s %5lld | %10.2f %8.1f | %10.2f %8.1f | %6.2fx%s\n", type_name(t), shape,
                    static_cast<long long>(n_tok), tp * 1e3, flop / tp / 1e9, tt * 1e3, flop / tt / 1e9, tp / tt,
                    maxdiff > 1e-4 * (1 + maxv) ? "  MISMATCH" : "");
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
