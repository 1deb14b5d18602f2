// bench/bench_vec_dot.cpp - single-thread speed of every vec_dot kernel set on a 4096 x 4096
// matrix-vector product (decode-shaped), and of the activation quantizers.
//
// Build (not part of the default build or of ctest):
//   cmake --build <dir> --target lokal_ops && g++ -std=c++20 -O2 -Isrc bench/bench_vec_dot.cpp
//       <dir>/src/liblokal_ops.a <dir>/src/liblokal_core.a -lpthread -o bench_vec_dot
// or add `add_subdirectory(bench)` to the top-level CMakeLists.txt (bench/CMakeLists.txt).
//
// Usage: bench_vec_dot [rows] [cols] [types...]     (defaults 4096 4096, all types)
// Prints, per type and kernel set: ms per matvec, GB/s of weight bytes streamed, speedup.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/quant.h"
#include "core/types.h"
#include "ops/vec_dot.h"

using namespace lokal;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

volatile float g_sink;

// Best-of-reps time of fn(), with reps chosen so the total is ~0.3 s.
template <typename F>
double time_best(F&& fn) {
  auto t0 = Clock::now();
  fn();
  const double once = std::max(seconds_since(t0), 1e-7);
  const int reps = std::clamp(static_cast<int>(0.3 / once), 3, 2000);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t cols = argc > 2 ? std::atoll(argv[2]) : 4096;
  std::vector<DType> types;
  for (int i = 3; i < argc; ++i) {
    auto t = type_from_name(argv[i]);
    if (!t) {
      std::fprintf(stderr, "unknown type %s\n", argv[i]);
      return 2;
    }
    types.push_back(*t);
  }
  if (types.empty())
    types = {DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q4_0, DType::Q5_K, DType::F16,  DType::BF16,
             DType::F32,  DType::Q5_0, DType::Q4_1, DType::Q5_1, DType::Q2_K, DType::Q3_K};

  std::vector<std::string> isas;
  for (const char* n : {"scalar", "avx2", "avx512"})
    if (set_vec_dot_isa(n)) isas.push_back(n);

  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(cols));
  for (auto& v : x) v = nd(rng);
  // 64 distinct quantized rows, replicated: realistic values, full-size memory traffic.
  const int distinct = 64;
  std::vector<float> src(static_cast<size_t>(distinct * cols));
  for (auto& v : src) v = nd(rng) * 0.02f;

  std::printf("matvec %lld x %lld, 1 thread; GB/s = weight bytes / time\n", static_cast<long long>(rows),
              static_cast<long long>(cols));
  std::printf("%-6s %-8s %10s %9s %8s   %s\n", "type", "isa", "ms/matvec", "GB/s", "speedup", "act-quant us");
  for (DType t : types) {
    const size_t rb = row_size(t, cols);
    std::vector<uint8_t> W(rb * static_cast<size_t>(rows));
    for (int64_t r = 0; r < distinct && r < rows; ++r) quantize_row(t, src.data() + r * cols, W.data() + r * rb, cols);
    for (int64_t r = distinct; r < rows; ++r) std::memcpy(W.data() + r * rb, W.data() + (r % distinct) * rb, rb);
    std::vector<uint8_t> act(row_size(vec_dot_type(t), cols));
    std::vector<float> y(static_cast<size_t>(rows));
    double base = 0;
    for (const std::string& isa : isas) {
      set_vec_dot_isa(isa.c_str());
      const double tq = time_best([&] { quantize_activation(t, x.data(), act.data(), cols); });
      const double tm = time_best([&] {
        for (int64_t r = 0; r < rows; ++r) y[r] = vec_dot(t, cols, W.data() + r * rb, act.data());
        g_sink = y[0];
      });
      if (isa == "scalar") base = tm;
      std::printf("%-6s %-8s %10.3f %9.2f %7.2fx   %8.2f\n", type_name(t), isa.c_str(), tm * 1e3,
                  static_cast<double>(W.size()) / tm / 1e9, base / tm, tq * 1e6);
    }
  }
  return 0;
}
