// Vulkan compute (src/gpu/): devices, buffers, and every shader against the scalar CPU reference.
//
// These tests need a Vulkan device. On machines without a GPU, Mesa's lavapipe (llvmpipe: Vulkan on the CPU,
// Debian package mesa-vulkan-drivers, installed by scripts/setup.sh) is one. Without any device the tests FAIL, so
// a CI machine that lost its driver is noticed; LOKAL_TEST_NO_GPU=1 skips the ones that need a device instead.
//
// Tolerances. Vulkan requires f32 add, subtract and multiply to be correctly rounded (round to nearest), so:
//  * the matrix shaders (matvec, matmul) dequantize each weight with the same float operations in the same order as
//    core/quant.cpp's dequantize_row (`precise` in the shaders, so nothing is fused into an fma), which makes every
//    dequantized weight equal to the reference's; what remains is the f32 dot product of K terms in the shader's
//    order (the few-token shader: strided partial sums, then a tree; the tiled one: one running sum per output, its
//    multiply-adds possibly fused, which only drops roundings). For ANY order of summation, the error of a K-term f32
//    dot product is at most gamma_K * sum_i |w_i x_i| with gamma_K = K u / (1 - K u), u = 2^-24 (one rounding per
//    product, at most K-1 per sum; Higham, Accuracy and Stability of Numerical Algorithms, 3.1). The reference is
//    computed in double from the same f32 weights and inputs (error ~1e-16, negligible). So the bound is
//    gamma_(K+1) * sum|w x|: rigorous, and still ~1000x below what a misread bit or a wrong scale would cost (those
//    change the result by a sizeable fraction of sum|w x|).
//  * the element-wise shaders: see each test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "core/quant.h"
#include "core/types.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "support/gpu_test.h"
#include "gpu/shaders.h"
#include "ops/ops.h"
#include "ops/vec_dot.h"
#include "support/test_data.h"

using namespace lokal;

namespace {

using test::kU;
using test::upload_vec;
using test::download_floats;
using test::random_floats;

// `rows` rows of `cols` weights of type t, as random as the layout allows: every quant, scale and bit-field byte is
// random (so all 6-bit scale codes, high bits and sign patterns occur), only the f16 block scales are set to finite
// values in [0.002, 0.05] (random bits would make NaN/Inf). F32/F16/BF16 come from random floats in [-1, 1].
std::vector<uint8_t> random_weights(std::mt19937& rng, DType t, int64_t rows, int64_t cols) {
  const size_t row_bytes = row_size(t, cols);
  std::vector<uint8_t> w(row_bytes * rows);
  const size_t n = static_cast<size_t>(rows * cols);
  if (t == DType::F32 || t == DType::F16 || t == DType::BF16) {
    const std::vector<float> f = random_floats(rng, n, -1.0f, 1.0f);
    for (size_t i = 0; i < n; ++i) {
      if (t == DType::F32) std::memcpy(&w[4 * i], &f[i], 4);
      const uint16_t h = t == DType::F16 ? fp32_to_fp16(f[i]) : fp32_to_bf16(f[i]);
      if (t != DType::F32) std::memcpy(&w[2 * i], &h, 2);
    }
    return w;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (uint8_t& b : w) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  auto half = [&] { return fp32_to_fp16(scale(rng)); };
  const TypeInfo* ti = type_info(t);
  const size_t nb = n / ti->block_size;
  for (size_t i = 0; i < nb; ++i) {
    uint8_t* p = w.data() + i * ti->type_size;  // blocks are contiguous: rows are whole blocks
    switch (t) {
      case DType::Q4_0: reinterpret_cast<BlockQ4_0*>(p)->d = half(); break;
      case DType::Q5_0: reinterpret_cast<BlockQ5_0*>(p)->d = half(); break;
      case DType::Q8_0: reinterpret_cast<BlockQ8_0*>(p)->d = half(); break;
      case DType::Q4_1: reinterpret_cast<BlockQ4_1*>(p)->d = half(), reinterpret_cast<BlockQ4_1*>(p)->m = half(); break;
      case DType::Q5_1: reinterpret_cast<BlockQ5_1*>(p)->d = half(), reinterpret_cast<BlockQ5_1*>(p)->m = half(); break;
      case DType::Q2_K: reinterpret_cast<BlockQ2_K*>(p)->d = half(), reinterpret_cast<BlockQ2_K*>(p)->dmin = half(); break;
      case DType::Q3_K: reinterpret_cast<BlockQ3_K*>(p)->d = half(); break;
      case DType::Q4_K: reinterpret_cast<BlockQ4_K*>(p)->d = half(), reinterpret_cast<BlockQ4_K*>(p)->dmin = half(); break;
      case DType::Q5_K: reinterpret_cast<BlockQ5_K*>(p)->d = half(), reinterpret_cast<BlockQ5_K*>(p)->dmin = half(); break;
      case DType::Q6_K: reinterpret_cast<BlockQ6_K*>(p)->d = half(); break;
      default: ADD_FAILURE() << "no generator for " << type_name(t);
    }
  }
  return w;
}

struct MatVecCase {
  DType type;
  int64_t rows, cols;
};

// Runs y = W x on the device and checks every row against the reference (see the file comment for the bound).
void check_matvec(gpu::Kernels& k, std::mt19937& rng, DType t, int64_t rows, int64_t cols) {
  SCOPED_TRACE(std::string(type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols));
  gpu::Device& dev = k.device();
  const std::vector<uint8_t> w = random_weights(rng, t, rows, cols);
  const std::vector<float> x = random_floats(rng, static_cast<size_t>(cols), -1.0f, 1.0f);
  gpu::Buffer wb = dev.alloc(w.size());
  dev.upload(wb, w.data(), w.size());
  gpu::Buffer xb = upload_vec(dev, x);
  gpu::Buffer yb = dev.alloc(static_cast<uint64_t>(rows) * 4);
  {
    gpu::Commands c(dev);
    k.matvec(c, t, wb, xb, yb, rows, cols);
    c.submit_and_wait();
  }
  const std::vector<float> y = download_floats(dev, yb, static_cast<size_t>(rows));
  const size_t row_bytes = row_size(t, cols);
  std::vector<float> wr(static_cast<size_t>(cols));
  const double gamma = (cols + 1) * kU / (1 - (cols + 1) * kU);
  int bad = 0;
  for (int64_t r = 0; r < rows && bad < 5; ++r) {
    dequantize_row(t, w.data() + r * row_bytes, wr.data(), cols);
    double ref = 0, mag = 0;
    for (int64_t c = 0; c < cols; ++c) {
      ref += static_cast<double>(wr[c]) * x[c];
      mag += std::fabs(static_cast<double>(wr[c]) * x[c]);
    }
    const double err = std::fabs(y[r] - ref), tol = gamma * mag;
    if (!(err <= tol)) {  // also catches NaN
      ++bad;
      ADD_FAILURE() << "row " << r << ": gpu " << y[r] << " reference " << ref << " error " << err << " > bound " << tol;
    }
  }
}

// Runs y = W x for n_tok tokens (x: n_tok rows of cols, y: n_tok rows of `rows`) on the device and checks every
// output against the double-precision reference with the bound of the file comment (per token: a K = cols term dot
// product, summed in the shader's order). With n_tok = 1 it also runs matvec on the same data and requires the very
// same bits (matvec is matmul with one token).
void check_matmul(gpu::Kernels& k, std::mt19937& rng, DType t, int64_t rows, int64_t cols, int64_t n_tok) {
  SCOPED_TRACE(std::string(type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols) + ", " +
               std::to_string(n_tok) + " tokens");
  gpu::Device& dev = k.device();
  const std::vector<uint8_t> w = random_weights(rng, t, rows, cols);
  const std::vector<float> x = random_floats(rng, static_cast<size_t>(n_tok * cols), -1.0f, 1.0f);
  gpu::Buffer wb = dev.alloc(w.size());
  dev.upload(wb, w.data(), w.size());
  gpu::Buffer xb = upload_vec(dev, x);
  gpu::Buffer yb = dev.alloc(static_cast<uint64_t>(n_tok * rows) * 4);
  {
    gpu::Commands c(dev);
    k.matmul(c, t, wb, xb, yb, rows, cols, n_tok);
    c.submit_and_wait();
  }
  const std::vector<float> y = download_floats(dev, yb, static_cast<size_t>(n_tok * rows));
  if (n_tok == 1) {
    gpu::Buffer vb = dev.alloc(static_cast<uint64_t>(rows) * 4);
    gpu::Commands c(dev);
    k.matvec(c, t, wb, xb, vb, rows, cols);
    c.submit_and_wait();
    const std::vector<float> v = download_floats(dev, vb, static_cast<size_t>(rows));
    EXPECT_EQ(std::memcmp(v.data(), y.data(), v.size() * 4), 0) << "matmul with one token differs from matvec";
  }
  const size_t row_bytes = row_size(t, cols);
  std::vector<float> wr(static_cast<size_t>(cols));
  const double gamma = (cols + 1) * kU / (1 - (cols + 1) * kU);
  int bad = 0;
  for (int64_t r = 0; r < rows && bad < 5; ++r) {
    dequantize_row(t, w.data() + r * row_bytes, wr.data(), cols);
    for (int64_t tok = 0; tok < n_tok && bad < 5; ++tok) {
      const float* xt = x.data() + tok * cols;
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < cols; ++c) {
        ref += static_cast<double>(wr[c]) * xt[c];
        mag += std::fabs(static_cast<double>(wr[c]) * xt[c]);
      }
      const float got = y[tok * rows + r];
      const double err = std::fabs(got - ref), tol = gamma * mag;
      if (!(err <= tol)) {  // also catches NaN
        ++bad;
        ADD_FAILURE() << "token " << tok << " row " << r << ": gpu " << got << " reference " << ref << " error "
                      << err << " > bound " << tol;
      }
    }
  }
}

// y = W x for n_tok tokens through Kernels::matmul in ONE call (x: n_tok rows of cols; returns n_tok rows of `rows`).
std::vector<float> run_matmul(gpu::Kernels& k, DType t, const gpu::Buffer& wb, const float* x, int64_t rows,
                              int64_t cols, int64_t n_tok) {
  gpu::Device& dev = k.device();
  gpu::Buffer xb = upload_vec(dev, std::vector<float>(x, x + n_tok * cols));
  gpu::Buffer yb = dev.alloc(static_cast<uint64_t>(n_tok * rows) * 4);
  gpu::Commands c(dev);
  k.matmul(c, t, wb, xb, yb, rows, cols, n_tok);
  c.submit_and_wait();
  return download_floats(dev, yb, static_cast<size_t>(n_tok * rows));
}

// The same product through the few-token shader only (Kernels::matmul keeps it for n_tok <= 8): the tokens in calls
// of at most 8, each with its own x and y buffers, results put back in place.
std::vector<float> run_matmul_few_tokens(gpu::Kernels& k, DType t, const gpu::Buffer& wb, const std::vector<float>& x,
                                         int64_t rows, int64_t cols, int64_t n_tok) {
  std::vector<float> y(static_cast<size_t>(n_tok * rows));
  for (int64_t t0 = 0; t0 < n_tok; t0 += 8) {
    const int64_t n = std::min<int64_t>(8, n_tok - t0);
    const std::vector<float> part = run_matmul(k, t, wb, x.data() + t0 * cols, rows, cols, n);
    std::copy(part.begin(), part.end(), y.begin() + t0 * rows);
  }
  return y;
}

// The cos/sin table Kernels::rope takes, computed exactly as ops/ops.cpp's rope does for each position: cs[t][i] =
// cos(theta_i), cs[t][rope_dim/2 + i] = sin(theta_i), theta_i = pos * base^(-2i/rope_dim) (by repeated f32
// multiplication) / freq_factors[i] * freq_scale.
std::vector<float> host_rope_table(const std::vector<int64_t>& pos, int rope_dim, const RopeParams& p) {
  const int half = rope_dim / 2;
  std::vector<float> cs(pos.size() * static_cast<size_t>(rope_dim));
  const float theta_scale = std::pow(p.freq_base, -2.0f / static_cast<float>(rope_dim));
  for (size_t t = 0; t < pos.size(); ++t) {
    float theta = static_cast<float>(pos[t]);
    for (int i = 0; i < half; ++i) {
      const float ff = p.freq_factors ? p.freq_factors[i] : 1.0f;
      const float a = theta / ff * p.freq_scale;
      cs[t * rope_dim + i] = std::cos(a);
      cs[t * rope_dim + half + i] = std::sin(a);
      theta *= theta_scale;
    }
  }
  return cs;
}

}  // namespace

TEST(VulkanDevice, EnumerationFindsLavapipe) {
  if (test::no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1";
  std::vector<gpu::DeviceInfo> devs;
  ASSERT_NO_THROW(devs = gpu::list_devices());
  ASSERT_FALSE(devs.empty()) << gpu::no_device_reason();
  EXPECT_EQ(gpu::no_device_reason(), "");
  bool lavapipe = false;
  for (const auto& d : devs) {
    SCOPED_TRACE(d.name);
    EXPECT_FALSE(d.name.empty());
    EXPECT_FALSE(d.driver.empty());
    EXPECT_GE(d.api_version, VK_API_VERSION_1_1);
    EXPECT_GT(d.device_local_bytes, 0u);
    EXPECT_GT(d.max_allocation_bytes, 0u);
    EXPECT_GE(d.max_storage_buffer_bytes, 1u << 27);  // Vulkan's minimum maxStorageBufferRange
    EXPECT_GE(d.subgroup_size, 1u);
    EXPECT_GE(d.max_workgroup_size[0], 128u);  // Vulkan's minimums
    EXPECT_GE(d.max_workgroup_invocations, 128u);
    EXPECT_GE(d.max_workgroup_count[0], 65535u);
    if (d.name.find("llvmpipe") != std::string::npos) {
      lavapipe = true;
      EXPECT_EQ(d.type, "cpu");
      EXPECT_NE(d.driver.find("llvmpipe"), std::string::npos) << d.driver;
    }
  }
  // scripts/setup.sh installs mesa-vulkan-drivers, so lavapipe is there beside any real GPU.
  EXPECT_TRUE(lavapipe) << "lavapipe (llvmpipe) not among the Vulkan devices";
}

TEST(VulkanDevice, OpenBadIndexIsClearError) {
  if (test::no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1";
  try {
    gpu::Device::open(1000);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Vulkan device 1000 does not exist"), std::string::npos) << e.what();
  }
}

TEST(VulkanDevice, EmbeddedShadersAreSpirv) {
  const auto names = gpu::shader_names();
  EXPECT_GE(names.size(), 16u);
  for (auto n : names) {
    const auto spv = gpu::shader_spirv(n);
    ASSERT_GE(spv.size(), 5u) << n;
    EXPECT_EQ(spv[0], 0x07230203u) << n;  // SPIR-V magic number
  }
  EXPECT_THROW(gpu::shader_spirv("no_such_shader"), Error);
}

// Bytes survive upload and download unchanged: odd sizes, offsets, a device-to-device copy.
TEST(VulkanDevice, UploadDownloadRoundTrip) {
  OPEN_DEVICE_OR_SKIP(dev);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  for (size_t n : {size_t(1), size_t(3), size_t(4096), size_t(1000003)}) {
    std::vector<uint8_t> src(n), back(n, 0);
    for (auto& b : src) b = static_cast<uint8_t>(byte(rng));
    gpu::Buffer a = dev->alloc(n + 13);
    EXPECT_GE(a.size(), n + 13);
    dev->upload(a, src.data(), n, 13);
    gpu::Buffer b = dev->alloc(n);
    {
      gpu::Commands c(*dev);
      c.copy(a, b, n, 13, 0);
      c.submit_and_wait();
    }
    dev->download(b, back.data(), n);
    EXPECT_EQ(std::memcmp(src.data(), back.data(), n), 0) << n << " bytes";
    std::fill(back.begin(), back.end(), 0);
    dev->download(a, back.data(), n, 13);
    EXPECT_EQ(std::memcmp(src.data(), back.data(), n), 0) << n << " bytes at offset 13";
  }
  gpu::Buffer small = dev->alloc(16);
  uint8_t junk[64] = {};
  EXPECT_THROW(dev->upload(small, junk, 64), Error);
  EXPECT_THROW(dev->download(small, junk, 8, 12), Error);
}

// Far more than the device has: a clear OutOfMemory naming the byte count, and the device keeps working.
TEST(VulkanDevice, AllocationBeyondMemoryIsClearError) {
  OPEN_DEVICE_OR_SKIP(dev);
  const uint64_t huge = dev->info().device_local_bytes * 4 + 12345;
  for (uint64_t ask : {huge, dev->info().max_allocation_bytes + 1, uint64_t(1) << 63}) {
    try {
      gpu::Buffer b = dev->alloc(ask);
      ADD_FAILURE() << "allocating " << ask << " bytes succeeded";
    } catch (const gpu::OutOfMemory& e) {
      EXPECT_EQ(e.bytes(), ask);
      const std::string m = e.what();
      EXPECT_NE(m.find("GPU out of memory"), std::string::npos) << m;
      EXPECT_NE(m.find(std::to_string(ask) + " bytes"), std::string::npos) << m;
      EXPECT_NE(m.find(dev->info().name), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
  std::vector<float> v = {1, 2, 3};
  gpu::Buffer b = upload_vec(*dev, v);
  EXPECT_EQ(download_floats(*dev, b, 3), v);
}

// Every weight type over row counts 1 (smallest), 7, 33 (odd, several workgroups) and column counts from one block
// (smallest) to 11008 (a real n_ff; 344 Q4_0 blocks, 43 K-quant superblocks per row).
TEST(VulkanMatVec, AllTypesMatchReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(1234);
  const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                         DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  // Both ways of adding the threads' sums: subgroupAdd (mvs_TYPE, the default where the device has it; lavapipe
  // does, with subgroups of 8: four per workgroup) and the shared-memory tree (mv_TYPE).
  EXPECT_EQ(k.subgroup_sums(), dev->info().subgroup_arithmetic);
  for (bool sg : {true, false})
  for (DType t : types) {
    if (sg && !dev->info().subgroup_arithmetic) continue;
    k.set_subgroup_sums(sg);
    SCOPED_TRACE(sg ? "subgroup sums" : "tree sums");
    ASSERT_TRUE(gpu::Kernels::supports_matvec(t)) << type_name(t);
    const int64_t bs = type_info(t)->block_size;
    std::vector<int64_t> cols = {bs, 3 * bs, 4096, 11008};
    if (bs == 1) cols.insert(cols.end(), {7, 33});  // F32/F16/BF16 take any length
    for (int64_t c : cols) {
      if (c % bs) continue;
      for (int64_t r : {1, 7, 33}) check_matvec(k, rng, t, r, c);
    }
  }
}

// More rows than one grid dimension holds (65535 workgroups on most devices): rows continue in gl_WorkGroupID.y.
TEST(VulkanMatVec, TallMatrixUsesTwoDimensionalGrid) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(99);
  const int64_t rows = int64_t(dev->info().max_workgroup_count[0]) + 1001;
  check_matvec(k, rng, DType::Q8_0, rows, 32);
  check_matvec(k, rng, DType::Q4_K, 257, 256);  // and an odd count of a K-quant
}

TEST(VulkanMatVec, BadArgumentsAreErrors) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  gpu::Buffer w = dev->alloc(1024), x = dev->alloc(1024), y = dev->alloc(1024);
  gpu::Commands c(*dev);
  EXPECT_FALSE(gpu::Kernels::supports_matvec(DType::IQ2_XXS));
  EXPECT_THROW(k.matvec(c, DType::IQ2_XXS, w, x, y, 1, 256), Error);
  EXPECT_THROW(k.matvec(c, DType::Q4_0, w, x, y, 1, 48), Error);     // not a multiple of 32
  EXPECT_THROW(k.matvec(c, DType::F32, w, x, y, 2, 256), Error);     // W holds 1024 bytes, needs 2048
  EXPECT_THROW(k.matvec(c, DType::F32, w, x, y, 1, 512), Error);     // x too short
}

// rms_norm. GPU: sum of squares in f32 (any order: relative error <= (n+1)u), / n, + eps (2u), sqrt and 1/x
// (Vulkan allows 1/sqrt ~ 2 ULP for inversesqrt and 2.5 ULP for the division, say <= 10 ULP = 20u together, halving
// the sum's error under the square root), then two products (2u). CPU reference: double sum, then ~5 f32 roundings.
// Bound per element: ((n+1)/2 + 32) u |y_ref| (+1e-30 for exact zeros).
TEST(VulkanOps, RmsNormMatchesReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(5);
  for (int64_t rows : {1, 3, 5})
    for (int64_t n : {1, 17, 64, 4096, 5123}) {
      SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(n));
      const auto x = random_floats(rng, rows * n, -3.0f, 3.0f);
      const auto w = random_floats(rng, n, -2.0f, 2.0f);
      gpu::Buffer xb = upload_vec(*dev, x), wb = upload_vec(*dev, w), yb = dev->alloc(rows * n * 4);
      gpu::Commands c(*dev);
      k.rms_norm(c, xb, wb, yb, rows, n, 1e-5f);
      c.submit_and_wait();
      const auto y = download_floats(*dev, yb, rows * n);
      std::vector<float> ref(n);
      for (int64_t r = 0; r < rows; ++r) {
        rms_norm(x.data() + r * n, w.data(), ref.data(), n, 1e-5f);
        for (int64_t i = 0; i < n; ++i) {
          const double tol = ((n + 1) / 2.0 + 32) * kU * std::fabs(ref[i]) + 1e-30;
          ASSERT_LE(std::fabs(y[r * n + i] - ref[i]), tol) << "row " << r << " element " << i;
        }
      }
    }
}

// swiglu: out = g / (1 + exp(-g)) * up. Vulkan allows exp an error of 3 + 2|g| ULP; the 1 + e keeps (or shrinks) that
// relative error plus 1 rounding; the division 2.5 ULP, the product 1 rounding. CPU: std::exp within 1 ULP plus three
// roundings. With 1 ULP <= 2u relative: bound (18 + 4|g|) u |y_ref| (+1e-37 for underflow to zero).
TEST(VulkanOps, SwigluMatchesReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(6);
  for (int64_t n : {1, 63, 64, 65, 100003}) {
    SCOPED_TRACE(n);
    const auto g = random_floats(rng, n, -12.0f, 12.0f), up = random_floats(rng, n, -2.0f, 2.0f);
    gpu::Buffer gb = upload_vec(*dev, g), ub = upload_vec(*dev, up), ob = dev->alloc(n * 4);
    gpu::Commands c(*dev);
    k.swiglu(c, gb, ub, ob, n);
    c.submit_and_wait();
    const auto out = download_floats(*dev, ob, n);
    std::vector<float> ref(n);
    swiglu(g.data(), up.data(), ref.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double tol = (18 + 4 * std::fabs(g[i])) * kU * std::fabs(ref[i]) + 1e-37;
      ASSERT_LE(std::fabs(out[i] - ref[i]), tol) << "element " << i << " g " << g[i];
    }
  }
}

// The fused kernels of a decode step (rms_norm_fused, swiglu_q8) against the kernels they replace, run separately
// with barriers between: the same bits for x (the residual sum), y / out and every byte of xq, both scalings. Row
// lengths of one superblock and of several, odd row counts (the quantized blocks of each row land at its own
// offset, the aux words after all rows' codes). Without the int8 path only the residual form exists.
TEST(VulkanOps, FusedKernelsGiveTheSeparateKernelsBits) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  const bool int8 = k.int8_capable();
  if (int8) k.set_int8(true);
  std::mt19937 rng(9);
  using S = gpu::Kernels::Q8Scale;
  for (int64_t rows : {1, 3, 5})
    for (int64_t n : {256, 2304}) {
      SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(n));
      const auto x = random_floats(rng, rows * n, -3.0f, 3.0f), r = random_floats(rng, rows * n, -3.0f, 3.0f);
      const auto w = random_floats(rng, n, -2.0f, 2.0f);
      for (int mode = 0; mode < (int8 ? 4 : 2); ++mode) {
        const bool residual = mode % 2 == 1;
        const bool quant = mode >= 2;
        for (S sc : {S::Block32, S::Superblock256}) {
          if (!quant && sc == S::Superblock256) continue;
          SCOPED_TRACE(std::string(residual ? "residual " : "") + (quant ? (sc == S::Block32 ? "q8 blocks" : "q8 superblocks") : ""));
          gpu::Buffer x1 = upload_vec(*dev, x), x2 = upload_vec(*dev, x), rb = upload_vec(*dev, r), wb = upload_vec(*dev, w);
          gpu::Buffer y1 = dev->alloc(rows * n * 4), y2 = dev->alloc(rows * n * 4);
          gpu::Buffer q1 = dev->alloc(gpu::Kernels::q8_bytes(n, rows)), q2 = dev->alloc(gpu::Kernels::q8_bytes(n, rows));
          gpu::Commands c(*dev);
          if (residual) {
            k.add(c, x1, rb, rows * n);
            c.barrier();
          }
          k.rms_norm(c, x1, wb, y1, rows, n, 1e-5f);
          if (quant) {
            c.barrier();
            k.quantize_q8(c, y1, q1, n, rows, sc);
          }
          k.rms_norm_fused(c, x2, residual ? &rb : nullptr, wb, y2, rows, n, 1e-5f, quant ? &q2 : nullptr, sc);
          c.submit_and_wait();
          EXPECT_EQ(download_floats(*dev, x1, rows * n), download_floats(*dev, x2, rows * n));
          EXPECT_EQ(download_floats(*dev, y1, rows * n), download_floats(*dev, y2, rows * n));
          if (quant) {
            std::vector<uint8_t> a(gpu::Kernels::q8_bytes(n, rows)), b(a.size());
            dev->download(q1, a.data(), a.size());
            dev->download(q2, b.data(), b.size());
            EXPECT_EQ(a, b);
          }
        }
      }
    }
  if (!int8) return;
  for (int64_t n : {256, 6912, 3 * 2304}) {
    SCOPED_TRACE(n);
    const auto g = random_floats(rng, n, -12.0f, 12.0f), up = random_floats(rng, n, -2.0f, 2.0f);
    for (S sc : {S::Block32, S::Superblock256}) {
      gpu::Buffer gb = upload_vec(*dev, g), ub = upload_vec(*dev, up);
      gpu::Buffer o1 = dev->alloc(n * 4), o2 = dev->alloc(n * 4);
      gpu::Buffer q1 = dev->alloc(gpu::Kernels::q8_bytes(n, 1)), q2 = dev->alloc(gpu::Kernels::q8_bytes(n, 1));
      gpu::Commands c(*dev);
      k.swiglu(c, gb, ub, o1, n);
      c.barrier();
      k.quantize_q8(c, o1, q1, n, 1, sc);
      k.swiglu_q8(c, gb, ub, o2, n, q2, sc);
      c.submit_and_wait();
      EXPECT_EQ(download_floats(*dev, o1, n), download_floats(*dev, o2, n));
      std::vector<uint8_t> a(gpu::Kernels::q8_bytes(n, 1)), b(a.size());
      dev->download(q1, a.data(), a.size());
      dev->download(q2, b.data(), b.size());
      EXPECT_EQ(a, b) << (sc == S::Block32 ? "blocks" : "superblocks");
    }
  }
  // Errors: blocks that do not divide the rows, buffers too small, the int8 path off.
  gpu::Buffer x = dev->alloc(4 * 96), wb = dev->alloc(4 * 96), y = dev->alloc(4 * 96), xq = dev->alloc(gpu::Kernels::q8_bytes(96, 1));
  gpu::Commands c(*dev);
  EXPECT_THROW(k.rms_norm_fused(c, x, nullptr, wb, y, 1, 96, 1e-5f, &xq, S::Superblock256), Error);
  EXPECT_NO_THROW(k.rms_norm_fused(c, x, nullptr, wb, y, 1, 96, 1e-5f, &xq, S::Block32));
  EXPECT_THROW(k.rms_norm_fused(c, x, nullptr, wb, y, 2, 96, 1e-5f, &xq, S::Block32), Error);  // buffers hold one row
  EXPECT_THROW(k.swiglu_q8(c, x, x, y, 96, xq, S::Superblock256), Error);
  EXPECT_THROW(k.swiglu_q8(c, x, x, y, 80, xq, S::Block32), Error);
  k.set_int8(false);
  EXPECT_THROW(k.rms_norm_fused(c, x, nullptr, wb, y, 1, 96, 1e-5f, &xq, S::Block32), Error);
  EXPECT_THROW(k.swiglu_q8(c, x, x, y, 96, xq, S::Block32), Error);
  EXPECT_NO_THROW(k.rms_norm_fused(c, x, &y, wb, y, 1, 96, 1e-5f, nullptr));
}

// add: one correctly rounded f32 addition per element on both sides, so the results are identical.
TEST(VulkanOps, AddIsExact) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(8);
  for (int64_t n : {1, 64, 65, 1000003}) {
    auto y = random_floats(rng, n, -100.0f, 100.0f);
    const auto x = random_floats(rng, n, -1.0f, 1.0f);
    gpu::Buffer yb = upload_vec(*dev, y), xb = upload_vec(*dev, x);
    gpu::Commands c(*dev);
    k.add(c, yb, xb, n);
    c.submit_and_wait();
    const auto got = download_floats(*dev, yb, n);
    add_inplace(y.data(), x.data(), n);
    EXPECT_EQ(std::memcmp(got.data(), y.data(), n * 4), 0) << n;
  }
}

// A feed-forward block in one command buffer, kernels separated by barriers: h = x + down(swiglu(gate(n), up(n))),
// n = rms_norm(x). Checks that barriers order the dispatches (a missing one reads stale or partial data). The CPU side
// runs the same steps on the GPU's intermediate results' references; the bound is loose (1e-4 relative to the
// magnitudes) because errors of the earlier steps pass through the later ones.
TEST(VulkanOps, ChainedKernelsWithBarriers) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(10);
  const int64_t d = 512, ff = 1024;
  const auto x = random_floats(rng, d, -1.0f, 1.0f), nw = random_floats(rng, d, 0.5f, 1.5f);
  const auto wg = random_weights(rng, DType::Q4_K, ff, d), wu = random_weights(rng, DType::Q4_K, ff, d);
  const auto wd = random_weights(rng, DType::Q6_K, d, ff);
  gpu::Buffer xb = upload_vec(*dev, x), nwb = upload_vec(*dev, nw), nb = dev->alloc(d * 4);
  gpu::Buffer gb = dev->alloc(wg.size()), ub = dev->alloc(wu.size()), db = dev->alloc(wd.size());
  dev->upload(gb, wg.data(), wg.size());
  dev->upload(ub, wu.data(), wu.size());
  dev->upload(db, wd.data(), wd.size());
  gpu::Buffer gate = dev->alloc(ff * 4), up = dev->alloc(ff * 4), act = dev->alloc(ff * 4), out = dev->alloc(d * 4);
  {
    gpu::Commands c(*dev);
    k.rms_norm(c, xb, nwb, nb, 1, d, 1e-6f);
    c.barrier();
    k.matvec(c, DType::Q4_K, gb, nb, gate, ff, d);
    k.matvec(c, DType::Q4_K, ub, nb, up, ff, d);
    c.barrier();
    k.swiglu(c, gate, up, act, ff);
    c.barrier();
    k.matvec(c, DType::Q6_K, db, act, out, d, ff);
    c.barrier();
    k.add(c, out, xb, d);
    c.submit_and_wait();
  }
  const auto got = download_floats(*dev, out, d);
  // CPU reference in double for the products.
  auto mv = [](const std::vector<uint8_t>& w, DType t, const std::vector<float>& in, int64_t rows, int64_t cols) {
    std::vector<float> o(rows), row(cols);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(t, w.data() + r * row_size(t, cols), row.data(), cols);
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(row[c]) * in[c];
      o[r] = static_cast<float>(s);
    }
    return o;
  };
  std::vector<float> n(d), act_ref(ff);
  rms_norm(x.data(), nw.data(), n.data(), d, 1e-6f);
  const auto g_ref = mv(wg, DType::Q4_K, n, ff, d), u_ref = mv(wu, DType::Q4_K, n, ff, d);
  swiglu(g_ref.data(), u_ref.data(), act_ref.data(), ff);
  auto ref = mv(wd, DType::Q6_K, act_ref, d, ff);
  add_inplace(ref.data(), x.data(), d);
  double scale = 0;
  for (float v : ref) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  ASSERT_GT(scale, 0.0);
  for (int64_t i = 0; i < d; ++i) ASSERT_NEAR(got[i], ref[i], 1e-4 * scale) << "element " << i;
}

// ---- reused command buffers (gpu::CommandCache) ----

// y += x through a cache, three times with new data in the same buffers: the first submission builds the command
// buffer, the next two submit it again (no new build), and every run computes on the data of its own time (a
// reused command buffer that replayed stale results, or skipped the run, would fail the exact comparison).
TEST(VulkanCommandCache, ReusedCommandBufferRunsOnTheNewData) {
  OPEN_DEVICE_OR_SKIP(dev);
  unsetenv("LOKAL_GPU_REUSE");
  gpu::Kernels k(dev);
  gpu::CommandCache cache(*dev);
  ASSERT_TRUE(cache.enabled());
  std::mt19937 rng(21);
  const int64_t n = 1000, d = 96;
  gpu::Buffer yb = dev->alloc(n * 4), xb = dev->alloc(n * 4), wb = dev->alloc(d * 4), nb = dev->alloc(d * 4);
  const gpu::Device::SubmitStats before = dev->submit_stats();
  for (int run = 0; run < 3; ++run) {
    auto y = random_floats(rng, n, -100.0f, 100.0f);
    const auto x = random_floats(rng, n, -1.0f, 1.0f), w = random_floats(rng, d, 0.5f, 1.5f);
    dev->upload(yb, y.data(), n * 4);
    dev->upload(xb, x.data(), n * 4);
    dev->upload(wb, w.data(), d * 4);
    gpu::Commands c(*dev, &cache);
    k.add(c, yb, xb, n);
    c.barrier();
    k.rms_norm(c, yb, wb, nb, 1, d, 1e-5f);  // reads the add's output: the barrier is replayed too
    c.submit_and_wait();
    add_inplace(y.data(), x.data(), n);
    const auto got = download_floats(*dev, yb, n);
    EXPECT_EQ(std::memcmp(got.data(), y.data(), n * 4), 0) << "run " << run;
    std::vector<float> norm(d);
    rms_norm(y.data(), w.data(), norm.data(), d, 1e-5f);
    const auto got_norm = download_floats(*dev, nb, d);
    for (int64_t i = 0; i < d; ++i) ASSERT_NEAR(got_norm[i], norm[i], 1e-5 * std::fabs(norm[i]) + 1e-7) << run;
  }
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(cache.hits(), 2u);
  EXPECT_EQ(cache.size(), 1u);
  const gpu::Device::SubmitStats after = dev->submit_stats();
  EXPECT_EQ(after.reused - before.reused, 2u);
  EXPECT_GE(after.submits - before.submits, 3u);  // (uploads and downloads submit too)
  EXPECT_GT(after.host_s, before.host_s);
}

// Whatever differs in what was recorded builds a new command buffer: another push constant (length), another buffer
// in a binding, a buffer freed and allocated again (its Vulkan handle may be the same value; its serial number is
// not), an extra barrier, a copy's region; the original recording is still found after all of them.
TEST(VulkanCommandCache, AnyDifferenceBuildsANewCommandBuffer) {
  OPEN_DEVICE_OR_SKIP(dev);
  unsetenv("LOKAL_GPU_REUSE");
  gpu::Kernels k(dev);
  gpu::CommandCache cache(*dev, 16);
  const int64_t n = 256;
  gpu::Buffer yb = dev->alloc(n * 4), xb = dev->alloc(n * 4), x2 = dev->alloc(n * 4);
  uint64_t hits = 0, misses = 0;
  auto step = [&](auto record, bool expect_hit, const char* what) {
    gpu::Commands c(*dev, &cache);
    record(c);
    c.submit_and_wait();
    (expect_hit ? hits : misses) += 1;
    EXPECT_EQ(cache.hits(), hits) << what;
    EXPECT_EQ(cache.misses(), misses) << what;
  };
  auto base = [&](gpu::Commands& c) { k.add(c, yb, xb, n); };
  step(base, false, "first");
  step(base, true, "same again");
  step([&](gpu::Commands& c) { k.add(c, yb, xb, n - 1); }, false, "another length");
  step([&](gpu::Commands& c) { k.add(c, yb, x2, n); }, false, "another buffer");
  step([&](gpu::Commands& c) { k.add(c, yb, xb, n); c.barrier(); }, false, "an extra barrier");
  step([&](gpu::Commands& c) { k.add(c, yb, xb, n); c.copy(xb, x2, 64, 0, 0); }, false, "with a copy");
  step([&](gpu::Commands& c) { k.add(c, yb, xb, n); c.copy(xb, x2, 64, 0, 4); }, false, "the copy elsewhere");
  step([&](gpu::Commands& c) { k.add(c, yb, xb, n); c.copy(xb, x2, 64, 0, 4); }, true, "that copy again");
  step(base, true, "the first recording, still kept");
  const uint64_t old_id = xb.id();
  xb = gpu::Buffer();
  xb = dev->alloc(n * 4);
  EXPECT_NE(xb.id(), old_id);
  step(base, false, "a buffer allocated again");
  EXPECT_EQ(cache.size(), 7u);  // one per miss
}

// The cache keeps its `capacity` most recently used command buffers.
TEST(VulkanCommandCache, KeepsTheMostRecentlyUsed) {
  OPEN_DEVICE_OR_SKIP(dev);
  unsetenv("LOKAL_GPU_REUSE");
  gpu::Kernels k(dev);
  gpu::CommandCache cache(*dev, 2);
  gpu::Buffer yb = dev->alloc(1024), xb = dev->alloc(1024);
  auto run = [&](int64_t n) {
    const uint64_t h = cache.hits();
    gpu::Commands c(*dev, &cache);
    k.add(c, yb, xb, n);
    c.submit_and_wait();
    return cache.hits() > h;
  };
  EXPECT_FALSE(run(10));  // [A]
  EXPECT_FALSE(run(20));  // [B A]
  EXPECT_TRUE(run(10));   // [A B]
  EXPECT_FALSE(run(30));  // [C A]: B, the least recently used, goes
  EXPECT_TRUE(run(10));   // [A C]
  EXPECT_FALSE(run(20));  // [B A]
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_THROW(gpu::CommandCache(*dev, 0), Error);
}

// LOKAL_GPU_REUSE=0 turns reuse off: every submission builds its command buffer (and still computes right). A cache
// serves one device.
TEST(VulkanCommandCache, ReuseCanBeTurnedOffAndServesOneDevice) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  setenv("LOKAL_GPU_REUSE", "0", 1);
  gpu::CommandCache off(*dev);
  unsetenv("LOKAL_GPU_REUSE");
  EXPECT_FALSE(off.enabled());
  std::vector<float> y(64, 1.0f), x(64, 0.5f);
  gpu::Buffer yb = upload_vec(*dev, y), xb = upload_vec(*dev, x);
  const uint64_t reused = dev->submit_stats().reused;
  for (int i = 0; i < 2; ++i) {
    gpu::Commands c(*dev, &off);
    k.add(c, yb, xb, 64);
    c.submit_and_wait();
  }
  EXPECT_EQ(off.hits(), 0u);
  EXPECT_EQ(dev->submit_stats().reused, reused);
  EXPECT_EQ(download_floats(*dev, yb, 64), std::vector<float>(64, 2.0f));
  auto other = gpu::Device::open(0);  // a second device object (the same GPU): another VkDevice
  EXPECT_THROW(gpu::Commands(*other, &off), Error);
}

// matmul: every weight type, token counts 1 (= matvec), 2, 7, 8 (one full group of NT = 8: the few-token shader), 9
// and 33 (the tiled shader, more in TiledAllTypesMatchReference), over row counts 1, 7, 33 and column counts from one
// block to 4096, plus 11008 columns (a real n_ff) at 3 rows.
TEST(VulkanMatMul, AllTypesMatchReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(4321);
  const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                         DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  for (DType t : types) {
    const int64_t bs = type_info(t)->block_size;
    std::vector<int64_t> cols = {bs, 4096};
    if (bs == 1) cols.push_back(33);  // F32/F16/BF16 take any length
    for (int64_t n_tok : {1, 2, 7, 8, 9, 33}) {
      // 2 and 8 tokens with the shared-memory tree, the others with subgroup sums where the device has them.
      k.set_subgroup_sums(dev->info().subgroup_arithmetic && n_tok != 2 && n_tok != 8);
      for (int64_t c : cols)
        for (int64_t r : {1, 7, 33}) check_matmul(k, rng, t, r, c, n_tok);
    }
    for (int64_t n_tok : {1, 9, 33}) check_matmul(k, rng, t, 3, 11008, n_tok);
  }
}

// The tiled shaders (mm_*.comp: tiles of 64 rows x 32 tokens, K in steps of 32), which Kernels::matmul uses above 8
// tokens: every weight type at 9 (the fewest), 17, 33 (a full token tile and one more), 64 (two full ones) and 100
// tokens, over rows 1, 7, 65 (a full row tile and one more) and 130, columns one block (one K step, or for
// F32/F16/BF16 a single column: less than a step), a few hundred (9 or 2 superblocks; 300 for F32/F16/BF16, not a
// multiple of the step) and 4096 (128 steps; at 7 and 130 rows).
TEST(VulkanMatMul, TiledAllTypesMatchReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(2468);
  const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                         DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  for (DType t : types) {
    const int64_t bs = type_info(t)->block_size;
    const int64_t few_hundred = bs == 1 ? 300 : bs == 32 ? 288 : 512;
    for (int64_t n_tok : {9, 17, 33, 64, 100}) {
      for (int64_t c : {bs, few_hundred})
        for (int64_t r : {1, 7, 65, 130}) check_matmul(k, rng, t, r, c, n_tok);
      for (int64_t r : {7, 130}) check_matmul(k, rng, t, r, 4096, n_tok);
    }
  }
}

// The tiled shader (one call of 40 tokens) and the few-token shader (the same tokens in calls of 8) on the same data.
// Each is within gamma_(K+1) * sum|w x| of the exact product (the file comment), so they differ by at most twice
// that.
TEST(VulkanMatMul, TiledAgreesWithFewTokenShader) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(1357);
  const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                         DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  const int64_t rows = 70, n_tok = 40;
  for (DType t : types)
    for (int64_t cols : {type_info(t)->block_size * 2, int64_t(2048)}) {
      SCOPED_TRACE(std::string(type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols));
      const std::vector<uint8_t> w = random_weights(rng, t, rows, cols);
      const std::vector<float> x = random_floats(rng, static_cast<size_t>(n_tok * cols), -1.0f, 1.0f);
      gpu::Buffer wb = dev->alloc(w.size());
      dev->upload(wb, w.data(), w.size());
      const std::vector<float> tiled = run_matmul(k, t, wb, x.data(), rows, cols, n_tok);
      const std::vector<float> few = run_matmul_few_tokens(k, t, wb, x, rows, cols, n_tok);
      const double gamma = (cols + 1) * kU / (1 - (cols + 1) * kU);
      std::vector<float> wr(static_cast<size_t>(cols));
      int bad = 0;
      for (int64_t r = 0; r < rows && bad < 5; ++r) {
        dequantize_row(t, w.data() + r * row_size(t, cols), wr.data(), cols);
        for (int64_t tok = 0; tok < n_tok && bad < 5; ++tok) {
          double mag = 0;
          for (int64_t c = 0; c < cols; ++c) mag += std::fabs(static_cast<double>(wr[c]) * x[tok * cols + c]);
          const float a = tiled[tok * rows + r], b = few[tok * rows + r];
          if (!(std::fabs(static_cast<double>(a) - b) <= 2 * gamma * mag)) {
            ++bad;
            ADD_FAILURE() << "token " << tok << " row " << r << ": tiled " << a << " few-token " << b;
          }
        }
      }
    }
}

// The dequantized weights themselves, bit for bit: with x the identity (token t = unit vector e_t, n_tok = cols), every
// product is w * 1 or w * 0 and every sum adds zeros, all exact, so y[t][r] must equal dequantize_row's W[r][t]
// exactly (compared as values: a -0 weight comes out +0). A weight computed with a fused multiply-add, a misplaced
// token or row, or a wrong element order inside a unit shows up here even where the error bound above would hide it.
// Both shaders: all cols tokens in one call (> 8: the tiled shader; 33 tokens for F32/F16/BF16 also leave a partial
// K step and token tile; 70 rows a partial row tile) and in calls of 8 (the few-token shader).
TEST(VulkanMatMul, IdentityInputGivesExactWeights) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(31);
  const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                         DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  for (DType t : types)
    for (int64_t rows : {5, 70}) {
      const int64_t bs = type_info(t)->block_size, cols = bs == 1 ? 33 : 2 * bs, n_tok = cols;
      SCOPED_TRACE(std::string(type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols));
      const std::vector<uint8_t> w = random_weights(rng, t, rows, cols);
      std::vector<float> x(static_cast<size_t>(n_tok * cols), 0.0f);
      for (int64_t i = 0; i < cols; ++i) x[i * cols + i] = 1.0f;
      gpu::Buffer wb = dev->alloc(w.size());
      dev->upload(wb, w.data(), w.size());
      const auto tiled = run_matmul(k, t, wb, x.data(), rows, cols, n_tok);
      const auto few = run_matmul_few_tokens(k, t, wb, x, rows, cols, n_tok);
      std::vector<float> wr(cols);
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_row(t, w.data() + r * row_size(t, cols), wr.data(), cols);
        for (int64_t i = 0; i < cols; ++i) {
          ASSERT_EQ(tiled[i * rows + r], wr[i]) << "tiled: row " << r << " element " << i;
          ASSERT_EQ(few[i * rows + r], wr[i]) << "few-token: row " << r << " element " << i;
        }
      }
    }
}

// Tall matrices: rows continue in gl_WorkGroupID.y. The few-token shader (8 tokens: one row per workgroup) beyond
// the grid's x, and the tiled one with several token tiles in z. (More row tiles of 64 than the grid's x holds,
// 64 * 65535 rows, would need an output of 9 tokens x 4.2M rows = 151 MB, more than lavapipe lets one binding see:
// 128 MiB. The tiled shader continues in y with mv_main.glsl's formula.)
TEST(VulkanMatMul, TallMatrixWithTokenGroups) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(77);
  const int64_t max_x = int64_t(dev->info().max_workgroup_count[0]);
  check_matmul(k, rng, DType::Q8_0, max_x + 1001, 32, 8);
  check_matmul(k, rng, DType::Q8_0, max_x + 1001, 32, 9);
  check_matmul(k, rng, DType::Q6_K, 257, 256, 17);
  check_matmul(k, rng, DType::Q6_K, 257, 256, 70);
}

TEST(VulkanMatMul, BadArgumentsAreErrors) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  gpu::Buffer w = dev->alloc(1024), x = dev->alloc(1024), y = dev->alloc(1024);
  gpu::Commands c(*dev);
  EXPECT_THROW(k.matmul(c, DType::IQ2_XXS, w, x, y, 1, 256, 2), Error);
  EXPECT_THROW(k.matmul(c, DType::Q4_0, w, x, y, 1, 48, 2), Error);   // not a multiple of 32
  EXPECT_THROW(k.matmul(c, DType::F32, w, x, y, 2, 256, 1), Error);   // W holds 1024 bytes, needs 2048
  EXPECT_THROW(k.matmul(c, DType::Q8_0, w, x, y, 1, 32, 9), Error);   // x: 9 tokens of 32 need 1152 bytes
  EXPECT_THROW(k.matmul(c, DType::F32, w, x, y, 32, 1, 9), Error);    // y: 9 tokens of 32 rows need 1152 bytes
  EXPECT_THROW(k.matmul(c, DType::F32, w, x, y, 1, 1, -1), Error);    // negative token count
  EXPECT_THROW(k.matmul(c, DType::F32, w, x, y, UINT32_MAX, UINT32_MAX, 1), Error);  // 2^66 bytes (no overflow)
  EXPECT_THROW(k.matmul(c, DType::F32, w, x, y, 0, 4096, int64_t(1) << 20), Error);  // 2^32 input elements
  const int64_t too_many = int64_t(dev->info().max_workgroup_count[2]) * 8 + 1;     // beyond grid z
  EXPECT_THROW(k.matmul(c, DType::F32, w, x, y, 0, 0, too_many), Error);
  EXPECT_NO_THROW(k.matmul(c, DType::Q8_0, w, x, y, 1, 32, 8));  // exactly fits: 8 tokens of 32, 8 of 1
}

// add_bias: one correctly rounded f32 addition per element, as y[t][i] += b[i] on the CPU: identical bits.
TEST(VulkanOps, AddBiasIsExact) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(11);
  for (int64_t n : {1, 64, 65, 4097})
    for (int64_t n_tok : {1, 3, 33}) {
      SCOPED_TRACE(std::to_string(n_tok) + " x " + std::to_string(n));
      auto y = random_floats(rng, n * n_tok, -100.0f, 100.0f);
      const auto b = random_floats(rng, n, -1.0f, 1.0f);
      gpu::Buffer yb = upload_vec(*dev, y), bb = upload_vec(*dev, b);
      gpu::Commands c(*dev);
      k.add_bias(c, yb, bb, n, n_tok);
      c.submit_and_wait();
      const auto got = download_floats(*dev, yb, n * n_tok);
      for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t i = 0; i < n; ++i) y[t * n + i] += b[i];
      EXPECT_EQ(std::memcmp(got.data(), y.data(), y.size() * 4), 0);
    }
  gpu::Buffer small = dev->alloc(64);
  gpu::Commands c(*dev);
  EXPECT_THROW(k.add_bias(c, small, small, 8, 3), Error);   // y: 3 x 8 floats need 96 bytes
  EXPECT_THROW(k.add_bias(c, small, small, 32, 0), Error);  // b: 32 floats need 128 bytes
  EXPECT_THROW(k.add_bias(c, small, small, -1, 1), Error);
}

// rope: given the same cos/sin, each rotated element is a*c - b*s or a*s + b*c with every product and the sum
// rounded once (`precise` on the GPU; no -ffp-contract on the CPU build), so the GPU equals ops/ops.cpp's rope bit
// for bit: for neox and adjacent pairs, rope_dim equal to and below head_dim (the dims beyond stay as they were),
// freq_scale and Llama-3 freq_factors, several heads and tokens at scattered positions.
TEST(VulkanOps, RopeMatchesCpuBitForBit) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(12);
  struct Case {
    int n_tok, n_heads, head_dim, rope_dim;
    float base, scale;
    bool factors;
  };
  const Case cases[] = {{1, 1, 2, 2, 10000.0f, 1.0f, false},      {3, 4, 64, 64, 10000.0f, 1.0f, false},
                        {5, 8, 128, 64, 10000.0f, 1.0f, false},   {2, 3, 80, 32, 1000000.0f, 0.25f, false},
                        {7, 2, 128, 128, 500000.0f, 1.0f, true},  {33, 5, 96, 48, 10000.0f, 0.5f, true}};
  for (const Case& cs : cases)
    for (bool neox : {false, true}) {
      SCOPED_TRACE(std::to_string(cs.n_tok) + " tokens, " + std::to_string(cs.n_heads) + " heads of " +
                   std::to_string(cs.head_dim) + ", rope_dim " + std::to_string(cs.rope_dim) +
                   (neox ? ", neox" : ", adjacent pairs"));
      const int64_t width = int64_t(cs.n_heads) * cs.head_dim;
      auto x = random_floats(rng, cs.n_tok * width, -4.0f, 4.0f);
      std::vector<int64_t> pos(cs.n_tok);
      std::uniform_int_distribution<int64_t> pd(0, 200000);
      for (int t = 0; t < cs.n_tok; ++t) pos[t] = t == 0 ? 0 : t == 1 ? 1 : pd(rng);
      const auto ff = random_floats(rng, cs.rope_dim / 2, 1.0f, 8.0f);
      RopeParams p;
      p.rope_dim = cs.rope_dim;
      p.freq_base = cs.base;
      p.freq_scale = cs.scale;
      p.neox = neox;
      p.freq_factors = cs.factors ? ff.data() : nullptr;
      const auto table = host_rope_table(pos, cs.rope_dim, p);
      gpu::Buffer xb = upload_vec(*dev, x), cb = upload_vec(*dev, table);
      gpu::Commands c(*dev);
      k.rope(c, xb, cb, cs.n_tok, cs.n_heads, cs.head_dim, cs.rope_dim, neox);
      c.submit_and_wait();
      const auto got = download_floats(*dev, xb, x.size());
      for (int t = 0; t < cs.n_tok; ++t) rope(x.data() + t * width, cs.n_heads, cs.head_dim, pos[t], p);
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(std::memcmp(&got[i], &x[i], 4), 0)
            << "token " << i / width << " element " << i % width << ": gpu " << got[i] << " cpu " << x[i];
    }
}

TEST(VulkanOps, RopeBadArgumentsAreErrors) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  gpu::Buffer x = dev->alloc(1024), cs = dev->alloc(64);
  gpu::Commands c(*dev);
  EXPECT_THROW(k.rope(c, x, cs, 1, 2, 64, 63, false), Error);   // odd rope_dim
  EXPECT_THROW(k.rope(c, x, cs, 1, 2, 64, 66, true), Error);    // rope_dim > head_dim
  EXPECT_THROW(k.rope(c, x, cs, 2, 2, 64, 16, false), Error);   // cs: 2 x 16 floats need 128 bytes
  EXPECT_THROW(k.rope(c, x, cs, 3, 2, 64, 4, false), Error);    // x: 3 x 128 floats need 1536 bytes
  EXPECT_THROW(k.rope(c, x, cs, -1, 2, 64, 4, false), Error);
  EXPECT_THROW(k.rope(c, x, cs, 1 << 20, 1 << 20, 1 << 20, 2, false), Error);  // 2^60 elements (no overflow)
  EXPECT_NO_THROW(k.rope(c, x, cs, 2, 2, 64, 8, true));         // 2 x 8 cos/sin = 64 bytes: fits
}

// ---------------------------------------------------------------------------------------------
// The int8 path (Kernels::quantize_q8 + matmul_q8). Both are forced on (set_int8) wherever the device can run them
// (lavapipe can: integer dot products and subgroup arithmetic, not accelerated).

namespace {

struct Q8Block {
  float d;
  int8_t q[32];
  int sum_lo, sum_hi;  // Superblock256: the half sums
  float s;             // Block32: d * (the sum of the codes), rounded to f16
};

// The activation blocks as quantize_q8 laid them out (gpu/shaders/quantize_q8.comp).
std::vector<Q8Block> download_q8(gpu::Device& dev, const gpu::Buffer& xq, int64_t n_blocks) {
  std::vector<uint32_t> words(static_cast<size_t>(n_blocks) * 10);
  dev.download(xq, words.data(), words.size() * 4);
  std::vector<Q8Block> out(static_cast<size_t>(n_blocks));
  for (int64_t b = 0; b < n_blocks; ++b) {
    std::memcpy(out[b].q, &words[8 * b], 32);
    std::memcpy(&out[b].d, &words[8 * n_blocks + 2 * b], 4);
    const uint32_t s = words[8 * n_blocks + 2 * b + 1];
    out[b].sum_lo = static_cast<int16_t>(s & 0xFFFF);
    out[b].sum_hi = static_cast<int16_t>(s >> 16);
    std::memcpy(&out[b].s, &s, 4);
  }
  return out;
}

// quantize_q8's specification, checked on every block.
// Block32 (Q8_0 activations): d is max|x| / 127 rounded to f16 precision (the shader's division may be off by 2.5 ulp
// in Vulkan, which f16 rounding absorbs unless the quotient lies right at an f16 rounding boundary: allowed one f16
// step); every code is round(x / d) within one step of the exact quotient (the shader multiplies by 127 / max|x|,
// itself within 2.5 ulp), in [-127, 127].
// Superblock256 (Q8_K activations): over each 256 elements, v is the first element of largest magnitude; d is
// -v / 127 in f32 (the sign opposite to v's: v's code is -127) within 2.5 + 0.5 ulp (Vulkan's division, then the
// reciprocal), the same d in the superblock's 8 blocks; codes round(x / d) within one step as above, in [-128, 127]
// (a -128 only for an element whose quotient exceeds 127.5 in magnitude: none, as |x| <= |v|).
// Superblock256 also carries the two half sums of the codes, Block32 s = d * (the sum of the codes) to f16 precision.
void check_quantized(const std::vector<float>& x, const std::vector<Q8Block>& q,
                     gpu::Kernels::Q8Scale scale = gpu::Kernels::Q8Scale::Block32) {
  int bad = 0;
  const bool sb = scale == gpu::Kernels::Q8Scale::Superblock256;
  for (size_t b = 0; b < q.size() && bad < 5; ++b) {
    const float* xb = x.data() + 32 * b;
    double d_exact = 0;
    if (sb) {
      const float* xs = x.data() + 256 * (b / 8);
      float amax = 0, v = 0;
      for (int i = 0; i < 256; ++i)
        if (std::fabs(xs[i]) > amax) {
          amax = std::fabs(xs[i]);
          v = xs[i];
        }
      d_exact = -v / 127.0;
      if (!(std::fabs(q[b].d - d_exact) <= 3.0 * std::ldexp(std::fabs(d_exact), -23))) {
        ++bad;
        ADD_FAILURE() << "block " << b << ": d " << q[b].d << ", expected " << d_exact;
      }
    } else {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      d_exact = amax / 127.0;
      const float d16 = fp16_to_fp32(fp32_to_fp16(static_cast<float>(d_exact)));
      if (!(std::fabs(q[b].d - d16) <= std::ldexp(std::fabs(d16), -10))) {
        ++bad;
        ADD_FAILURE() << "block " << b << ": d " << q[b].d << ", expected " << d16;
      }
    }
    int lo = 0, hi = 0;
    for (int i = 0; i < 32; ++i) {
      const double r = d_exact != 0 ? xb[i] / d_exact : 0.0;
      if (!(std::fabs(q[b].q[i] - r) <= 0.5 + 1e-5) || q[b].q[i] == -128) {
        ++bad;
        ADD_FAILURE() << "block " << b << " element " << i << ": code " << int(q[b].q[i]) << " for " << r;
      }
      (i < 16 ? lo : hi) += q[b].q[i];
    }
    if (sb && (lo != q[b].sum_lo || hi != q[b].sum_hi)) {
      ++bad;
      ADD_FAILURE() << "block " << b << ": sums " << q[b].sum_lo << ", " << q[b].sum_hi << " expected " << lo << ", "
                    << hi;
    }
    if (!sb) {  // s = d_exact * sum to f16 precision (one f16 step for the division's ulps, as d)
      const float s16 = fp16_to_fp32(fp32_to_fp16(static_cast<float>(d_exact * (lo + hi))));
      // (beyond f16's range s is infinite, as on the CPU and in llama.cpp: block 4 of the test below)
      if (!(q[b].s == s16 || std::fabs(q[b].s - s16) <= std::ldexp(std::fabs(s16), -10))) {
        ++bad;
        ADD_FAILURE() << "block " << b << ": s " << q[b].s << ", expected " << s16;
      }
    }
  }
}

// The constant part of each weight of the int8 path's split w = wd * code + wm: the weights dequantized with every
// code field zeroed (scales and offsets kept). For the types without an offset it is not needed (the codes are
// symmetric: w = wd * code exactly).
std::vector<float> weight_offsets(DType t, std::vector<uint8_t> w, int64_t rows, int64_t cols) {
  const TypeInfo* ti = type_info(t);
  const size_t nb = static_cast<size_t>(rows * cols / ti->block_size);
  for (size_t i = 0; i < nb; ++i) {
    uint8_t* p = w.data() + i * ti->type_size;
    switch (t) {
      case DType::Q4_1: std::memset(p + 4, 0, 16); break;
      case DType::Q5_1: std::memset(p + 4, 0, 20); break;
      case DType::Q2_K: std::memset(p + 16, 0, 64); break;
      case DType::Q4_K: std::memset(p + 16, 0, 128); break;
      case DType::Q5_K: std::memset(p + 16, 0, 160); break;
      default: return std::vector<float>(static_cast<size_t>(rows * cols), 0.0f);
    }
  }
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, w.data() + r * row_size(t, cols), out.data() + r * cols, cols);
  return out;
}

// matmul_q8 against the double-precision product of the dequantized weights with the activation codes the device
// made (sum over blocks of d_a * sum_e w_e * code_e; for Q4_1 / Q5_1 d_a * sum_e (w_e - m) * code_e + m * s_a). The shader's integer sums are exact; each term then passes
// through a few roundings (wd * isum, the offset term, the adds, d_a *) and the sums over units (at most units / 32
// per thread, a 5-level subgroup tree, the subgroups' partials), so its relative error is below
// gamma_(units + 32) of the magnitude sum_e (|w_e - wm_e| + |wm_e|) |code_e d_a| (the reference's own weights, f32
// roundings of wd * code + wm, are inside the same bound). One wrong code in a 256-column row moves the result by
// ~1/256 of that magnitude, 100x the bound.
void check_matmul_q8(gpu::Kernels& k, std::mt19937& rng, DType t, int64_t rows, int64_t cols, int64_t n_tok) {
  SCOPED_TRACE(std::string(type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols) + ", " +
               std::to_string(n_tok) + " tokens");
  gpu::Device& dev = k.device();
  const std::vector<uint8_t> w = random_weights(rng, t, rows, cols);
  const std::vector<float> x = random_floats(rng, static_cast<size_t>(n_tok * cols), -1.0f, 1.0f);
  gpu::Buffer wb = dev.alloc(w.size());
  dev.upload(wb, w.data(), w.size());
  gpu::Buffer xb = upload_vec(dev, x);
  gpu::Buffer xq = dev.alloc(gpu::Kernels::q8_bytes(cols, n_tok));
  gpu::Buffer yb = dev.alloc(static_cast<uint64_t>(n_tok * rows) * 4);
  {
    gpu::Commands c(dev);
    k.quantize_q8(c, xb, xq, cols, n_tok, gpu::Kernels::q8_scale(t));
    c.barrier();
    k.matmul_q8(c, t, wb, xq, yb, rows, cols, n_tok);
    c.submit_and_wait();
  }
  const std::vector<float> y = download_floats(dev, yb, static_cast<size_t>(n_tok * rows));
  const std::vector<Q8Block> q = download_q8(dev, xq, n_tok * cols / 32);
  check_quantized(x, q, gpu::Kernels::q8_scale(t));
  const std::vector<float> wm = weight_offsets(t, w, rows, cols);
  // Q4_1 / Q5_1 add their offset m times the activation block's s (f16-rounded d * sum, as the CPU's Q8_1), not
  // times the exact d * sum.
  const bool s_offsets = t == DType::Q4_1 || t == DType::Q5_1;
  const int64_t units = cols / 32;
  const double n = static_cast<double>(units + 32);
  const double gamma = n * kU / (1 - n * kU);
  std::vector<float> wr(static_cast<size_t>(cols));
  int bad = 0;
  for (int64_t r = 0; r < rows && bad < 5; ++r) {
    dequantize_row(t, w.data() + r * row_size(t, cols), wr.data(), cols);
    for (int64_t tok = 0; tok < n_tok && bad < 5; ++tok) {
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const Q8Block& a = q[tok * units + c / 32];
        const double av = static_cast<double>(a.d) * a.q[c % 32];
        const double off = wm[r * cols + c];
        if (s_offsets) {  // the offset through the block's s, once per block
          ref += (wr[c] - off) * av;
          mag += std::fabs(wr[c] - off) * std::fabs(av);
          if (c % 32 == 0) {
            ref += off * a.s;
            mag += std::fabs(off * a.s);
          }
        } else {
          ref += wr[c] * av;
          mag += (std::fabs(wr[c] - off) + std::fabs(off)) * std::fabs(av);
        }
      }
      const float got = y[tok * rows + r];
      const double err = std::fabs(got - ref), tol = gamma * mag;
      if (!(err <= tol)) {
        ++bad;
        ADD_FAILURE() << "token " << tok << " row " << r << ": gpu " << got << " reference " << ref << " error "
                      << err << " > bound " << tol;
      }
    }
  }
}

}  // namespace

TEST(VulkanInt8, DeviceReportsTheFeatures) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  const gpu::DeviceInfo& d = dev->info();
  EXPECT_EQ(k.int8_capable(), d.int8_dot && d.subgroup_arithmetic);
  if (d.name.find("llvmpipe") != std::string::npos) {
    // Mesa 22.3's lavapipe: VK_KHR_shader_integer_dot_product (not accelerated) and subgroup arithmetic.
    EXPECT_TRUE(d.int8_dot);
    EXPECT_TRUE(d.subgroup_arithmetic);
    EXPECT_FALSE(d.int8_dot_accelerated);
  }
  const char* env = std::getenv("LOKAL_GPU_INT8");
  if (!env) {
    EXPECT_EQ(k.int8(), k.int8_capable() && d.int8_dot_accelerated) << "the default: on where accelerated";
  }
}

TEST(VulkanInt8, QuantizeMeetsItsSpecification) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  ASSERT_TRUE(k.int8_capable()) << dev->info().name << " cannot run the int8 path";
  std::mt19937 rng(41);
  const int64_t cols = 4096, n_tok = 5;
  std::vector<float> x = random_floats(rng, static_cast<size_t>(cols * n_tok), -3.0f, 3.0f);
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // an all-zero block: d = 0, codes 0
  for (int i = 0; i < 32; ++i) x[128 + i] = i % 2 ? 1e-3f : -2e4f;  // wide range, ties at the max
  gpu::Buffer xb = upload_vec(*dev, x);
  gpu::Buffer xq = dev->alloc(gpu::Kernels::q8_bytes(cols, n_tok));
  {
    gpu::Commands c(*dev);
    k.quantize_q8(c, xb, xq, cols, n_tok);
    c.submit_and_wait();
    const std::vector<Q8Block> q = download_q8(*dev, xq, cols * n_tok / 32);
    check_quantized(x, q);
    EXPECT_EQ(q[2].d, 0.0f);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(q[2].q[i], 0);
    for (int i = 0; i < 32; i += 2) EXPECT_EQ(q[4].q[i], -127);
    EXPECT_EQ(q[4].s, -INFINITY);  // 16 x -2e4 is beyond f16, as the CPU's Q8_1 s
  }
  // The Q8_K scaling: superblock 0 holds -2e4 (its first element of largest magnitude: code -127 for a negative d);
  // superblock 1 is all zeros; in superblock 2 the largest magnitude appears as +5 then -5 (the first one counts: its
  // code is -127, the later -5's +127) -- a kernel that keeps the last, or scales by max|x|, fails.
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);
  x[512 + 7] = 5.0f;
  x[512 + 100] = -5.0f;
  gpu::Buffer xb2 = upload_vec(*dev, x);
  gpu::Commands c(*dev);
  k.quantize_q8(c, xb2, xq, cols, n_tok, gpu::Kernels::Q8Scale::Superblock256);
  c.submit_and_wait();
  const std::vector<Q8Block> q = download_q8(*dev, xq, cols * n_tok / 32);
  check_quantized(x, q, gpu::Kernels::Q8Scale::Superblock256);
  EXPECT_GT(q[0].d, 0.0f);
  EXPECT_EQ(q[4].q[0], -127);
  // The same bytes as the CPU's activations (ops/vec_dot's quantize_activation with this machine's SIMD kernels, which
  // compute as llama.cpp's x86 ones: 127 / max|x| and round-half-even for Q8_0/Q8_1, -127 / v for Q8_K): every code
  // and d of Q8_K per superblock, and every code, d and s of Q8_1 per block. With a correctly rounded division
  // (lavapipe) they are equal; Vulkan allows 2.5 ulp, which may move a code that lies at a rounding tie by one step
  // (or a scale at an f16 rounding boundary), and the scalar reference kernels round 1 / d ties away from zero as
  // ggml's reference does: elsewhere at most 0.2% of the codes and 2% of the blocks' scales may differ (the
  // specification checks above hold everywhere).
  const bool exact = dev->info().name.find("llvmpipe") != std::string::npos && std::string(vec_dot_isa()) != "scalar";
  std::vector<BlockQ8_K> ck(static_cast<size_t>(cols * n_tok / 256));
  quantize_activation(DType::Q4_K, x.data(), ck.data(), cols * n_tok);
  int64_t off = 0, off_scales = 0;  // codes, and blocks whose d or s, unlike the CPU's
  for (size_t b = 0; b < q.size(); ++b) {
    const BlockQ8_K& r = ck[b / 8];
    off_scales += q[b].d != r.d;
    for (int i = 0; i < 32; ++i) off += q[b].q[i] != r.qs[32 * (b % 8) + i];
  }
  std::vector<BlockQ8_1> c0(static_cast<size_t>(cols * n_tok / 32));
  quantize_activation(DType::Q4_1, x.data(), c0.data(), cols * n_tok);  // Q8_1: Q8_0's d and codes, and s
  gpu::Commands c3(*dev);
  k.quantize_q8(c3, xb2, xq, cols, n_tok);
  c3.submit_and_wait();
  const std::vector<Q8Block> q0 = download_q8(*dev, xq, cols * n_tok / 32);
  check_quantized(x, q0);
  for (size_t b = 0; b < q0.size(); ++b) {
    off_scales += q0[b].d != fp16_to_fp32(c0[b].d) || q0[b].s != fp16_to_fp32(c0[b].s);
    for (int i = 0; i < 32; ++i) off += q0[b].q[i] != c0[b].qs[i];
  }
  if (exact) {
    EXPECT_EQ(off, 0) << "codes unlike the CPU's";
    EXPECT_EQ(off_scales, 0) << "scales unlike the CPU's";
  } else {
    EXPECT_LE(off, 2 * cols * n_tok / 1000) << "codes unlike the CPU's";
    EXPECT_LE(off_scales, 2 * cols * n_tok / 32 / 100) << "scales unlike the CPU's";
  }
  for (int b = 8; b < 16; ++b) EXPECT_EQ(q[b].d, 0.0f);
  EXPECT_LT(q[16].d, 0.0f);
  EXPECT_EQ(q[16].q[7], -127);
  EXPECT_EQ(q[19].q[4], 127);
  for (int b = 17; b < 24; ++b) EXPECT_EQ(q[b].d, q[16].d);
}

TEST(VulkanInt8, MatmulMatchesReferenceForEveryType) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  ASSERT_TRUE(k.int8_capable()) << dev->info().name << " cannot run the int8 path";
  k.set_int8(true);
  std::mt19937 rng(43);
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                  DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    ASSERT_TRUE(gpu::Kernels::supports_q8(t));
    // 256 columns: 8 units (most threads idle); 2304 = 72 units: threads take 2-3 units; odd row counts.
    check_matmul_q8(k, rng, t, 37, 256, 1);
    check_matmul_q8(k, rng, t, 19, 2304, 3);
    check_matmul_q8(k, rng, t, 5, 2304, 8);
    // The int8 tiles (more than 8 tokens): a partial row tile and token tile, an odd unit count where the type
    // allows it (the tiles step two units at a time), two row tiles and two token tiles.
    const int64_t odd = type_info(t)->block_size == 32 ? 96 : 256;
    check_matmul_q8(k, rng, t, 37, odd, 9);
    check_matmul_q8(k, rng, t, 70, 2304, 40);
  }
  EXPECT_FALSE(gpu::Kernels::supports_q8(DType::F16));
  EXPECT_FALSE(gpu::Kernels::supports_q8(DType::BF16));
}

TEST(VulkanInt8, BadArgumentsAreErrors) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  gpu::Buffer w = dev->alloc(row_size(DType::Q4_0, 64) * 4), xq = dev->alloc(gpu::Kernels::q8_bytes(64, 8));
  gpu::Buffer x = dev->alloc(64 * 8 * 4), y = dev->alloc(4 * 8 * 4);
  gpu::Commands c(*dev);
  k.set_int8(false);
  EXPECT_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y, 4, 64, 1), Error);  // the path is off
  if (!k.int8_capable()) {
    EXPECT_THROW(k.set_int8(true), Error);
    return;
  }
  k.set_int8(true);
  EXPECT_NO_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y, 4, 64, 8));
  EXPECT_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y, 4, 64, 9), Error);   // quantized input and output too small
  gpu::Buffer xq9 = dev->alloc(gpu::Kernels::q8_bytes(64, 9)), y9 = dev->alloc(4 * 9 * 4);
  EXPECT_NO_THROW(k.matmul_q8(c, DType::Q4_0, w, xq9, y9, 4, 64, 9));    // the tiles
  EXPECT_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y9, 4, 64, 9), Error);  // quantized input too small
  EXPECT_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y, 4, 64, 0), Error);
  EXPECT_THROW(k.matmul_q8(c, DType::F16, w, xq, y, 4, 64, 1), Error);    // no int8 shader
  EXPECT_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y, 4, 48, 1), Error);   // not whole blocks
  EXPECT_THROW(k.matmul_q8(c, DType::Q4_0, w, xq, y, 8, 64, 1), Error);   // weight buffer too small
  EXPECT_THROW(k.quantize_q8(c, x, xq, 64, 9), Error);                    // output too small
  EXPECT_THROW(k.quantize_q8(c, x, xq, 40, 1), Error);                    // not whole blocks
  EXPECT_THROW(k.quantize_q8(c, x, xq, 64, 1, gpu::Kernels::Q8Scale::Superblock256), Error);  // not whole superblocks
  EXPECT_EQ(gpu::Kernels::q8_scale(DType::Q8_0), gpu::Kernels::Q8Scale::Block32);
  EXPECT_EQ(gpu::Kernels::q8_scale(DType::Q4_1), gpu::Kernels::Q8Scale::Block32);
  EXPECT_EQ(gpu::Kernels::q8_scale(DType::Q3_K), gpu::Kernels::Q8Scale::Superblock256);
  EXPECT_EQ(gpu::Kernels::q8_scale(DType::Q6_K), gpu::Kernels::Q8Scale::Superblock256);
}

// A matrix cut into parts of rows (as model/offload.cpp does for matrices beyond one binding), each multiplied into
// its slice of y (OutRows): the very bits of the whole product, for the few-token, the tiled and both int8 kernels;
// rows outside every slice untouched; a slice beyond y is an error.
TEST(VulkanMatMul, PartsOfRowsWriteTheirSliceBitForBit) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  const bool int8 = k.int8_capable();
  if (int8) k.set_int8(true);
  std::mt19937 rng(47);
  const int64_t rows = 70, cols = 512;
  for (DType t : {DType::F16, DType::Q4_K, DType::Q8_0}) {
    for (int64_t n_tok : {1, 5, 40}) {
      for (bool q8 : {false, true}) {
        if (q8 && (!int8 || !gpu::Kernels::supports_q8(t))) continue;
        SCOPED_TRACE(std::string(type_name(t)) + ", " + std::to_string(n_tok) + " tokens" + (q8 ? ", int8" : ""));
        const std::vector<uint8_t> w = random_weights(rng, t, rows, cols);
        const std::vector<float> x = random_floats(rng, static_cast<size_t>(n_tok * cols), -1.0f, 1.0f);
        const size_t rb = row_size(t, cols);
        gpu::Buffer whole = dev->alloc(w.size());
        dev->upload(whole, w.data(), w.size());
        const int64_t cut[] = {0, 24, 48, rows};  // parts of 24, 24, 22 rows
        std::vector<gpu::Buffer> parts;
        for (int p = 0; p < 3; ++p) {
          parts.push_back(dev->alloc(rb * (cut[p + 1] - cut[p])));
          dev->upload(parts.back(), w.data() + rb * cut[p], rb * (cut[p + 1] - cut[p]));
        }
        gpu::Buffer xb = upload_vec(*dev, x);
        gpu::Buffer xq = dev->alloc(gpu::Kernels::q8_bytes(cols, n_tok));
        // y of the parts starts as NaN: rows outside every slice would stay NaN.
        const std::vector<float> nan(static_cast<size_t>(n_tok * (rows + 3)), std::nanf(""));
        gpu::Buffer y1 = dev->alloc(static_cast<uint64_t>(n_tok * rows) * 4), y2 = upload_vec(*dev, nan);
        gpu::Commands c(*dev);
        if (q8) {
          k.quantize_q8(c, xb, xq, cols, n_tok, gpu::Kernels::q8_scale(t));
          c.barrier();
          k.matmul_q8(c, t, whole, xq, y1, rows, cols, n_tok);
          for (int p = 0; p < 3; ++p)
            k.matmul_q8(c, t, parts[p], xq, y2, cut[p + 1] - cut[p], cols, n_tok, {cut[p] + 2, rows + 3});
        } else {
          k.matmul(c, t, whole, xb, y1, rows, cols, n_tok);
          for (int p = 0; p < 3; ++p)
            k.matmul(c, t, parts[p], xb, y2, cut[p + 1] - cut[p], cols, n_tok, {cut[p] + 2, rows + 3});
        }
        c.submit_and_wait();
        const std::vector<float> a = download_floats(*dev, y1, static_cast<size_t>(n_tok * rows));
        const std::vector<float> b = download_floats(*dev, y2, static_cast<size_t>(n_tok * (rows + 3)));
        for (int64_t tok = 0; tok < n_tok; ++tok) {
          const float* bt = b.data() + tok * (rows + 3);
          EXPECT_TRUE(std::isnan(bt[0]) && std::isnan(bt[1]) && std::isnan(bt[rows + 2])) << "token " << tok;
          EXPECT_EQ(std::memcmp(a.data() + tok * rows, bt + 2, static_cast<size_t>(rows) * 4), 0) << "token " << tok;
        }
      }
    }
  }
  gpu::Buffer w = dev->alloc(row_size(DType::F16, 64) * 4), x = dev->alloc(64 * 4), y = dev->alloc(10 * 4);
  gpu::Commands c(*dev);
  EXPECT_NO_THROW(k.matmul(c, DType::F16, w, x, y, 4, 64, 1, {6, 10}));
  EXPECT_THROW(k.matmul(c, DType::F16, w, x, y, 4, 64, 1, {7, 10}), Error);   // past the end of the row
  EXPECT_THROW(k.matmul(c, DType::F16, w, x, y, 4, 64, 1, {-1, 10}), Error);
  EXPECT_THROW(k.matmul(c, DType::F16, w, x, y, 4, 64, 1, {0, 13}), Error);   // y (48 bytes) too small for 13
}
