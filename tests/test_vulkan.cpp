// Vulkan compute (src/gpu/): devices, buffers, and every shader against the scalar CPU reference.
//
// These tests need a Vulkan device. On machines without a GPU, Mesa's lavapipe (llvmpipe: Vulkan on the CPU,
// Debian package mesa-vulkan-drivers, installed by scripts/setup.sh) is one. Without any device the tests FAIL, so
// a CI machine that lost its driver is noticed; LOKAL_TEST_NO_GPU=1 skips the ones that need a device instead.
//
// Tolerances. Vulkan requires f32 add, subtract and multiply to be correctly rounded (round to nearest), so:
//  * the matrix x vector shaders dequantize each weight with the same float operations in the same order as
//    core/quant.cpp's dequantize_row (`precise` in the shaders, so nothing is fused into an fma), which makes every
//    dequantized weight equal to the reference's; what remains is the f32 dot product of K terms in the shader's
//    order (strided partial sums, then a tree). For ANY order of summation, the error of a K-term f32 dot product is
//    at most gamma_K * sum_i |w_i x_i| with gamma_K = K u / (1 - K u), u = 2^-24 (one rounding per product, at most
//    K-1 per sum; Higham, Accuracy and Stability of Numerical Algorithms, 3.1). The reference is computed in double
//    from the same f32 weights and inputs (error ~1e-16, negligible). So the bound is gamma_(K+1) * sum|w x|:
//    rigorous, and still ~1000x below what a misread bit or a wrong scale would cost (those change the result by a
//    sizeable fraction of sum|w x|).
//  * the element-wise shaders: see each test.
#include <gtest/gtest.h>

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
#include "gpu/shaders.h"
#include "ops/ops.h"
#include "support/test_data.h"

using namespace lokal;

namespace {

constexpr double kU = 1.0 / (1 << 24);  // unit roundoff of f32

bool no_gpu_allowed() {
  const char* e = std::getenv("LOKAL_TEST_NO_GPU");
  return e && std::string(e) == "1";
}

// The first device, or a skip when LOKAL_TEST_NO_GPU=1. Without it, a missing loader or device throws and fails the
// test with the library's message.
#define OPEN_DEVICE_OR_SKIP(dev)                                                                  \
  if (no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1: GPU tests skipped";                 \
  std::shared_ptr<gpu::Device> dev;                                                               \
  ASSERT_NO_THROW(dev = gpu::Device::open(0)) << "no usable Vulkan device: " << gpu::no_device_reason() \
                                              << " (install mesa-vulkan-drivers, or set LOKAL_TEST_NO_GPU=1)";

gpu::Buffer upload_floats(gpu::Device& dev, const std::vector<float>& v) {
  gpu::Buffer b = dev.alloc(v.size() * sizeof(float));
  dev.upload(b, v.data(), v.size() * sizeof(float));
  return b;
}

std::vector<float> download_floats(gpu::Device& dev, const gpu::Buffer& b, size_t n) {
  std::vector<float> v(n);
  dev.download(b, v.data(), n * sizeof(float));
  return v;
}

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  return v;
}

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
  gpu::Buffer xb = upload_floats(dev, x);
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

}  // namespace

TEST(VulkanDevice, EnumerationFindsLavapipe) {
  if (no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1";
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
  if (no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1";
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
  gpu::Buffer b = upload_floats(*dev, v);
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
  for (DType t : types) {
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
      gpu::Buffer xb = upload_floats(*dev, x), wb = upload_floats(*dev, w), yb = dev->alloc(rows * n * 4);
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
    gpu::Buffer gb = upload_floats(*dev, g), ub = upload_floats(*dev, up), ob = dev->alloc(n * 4);
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

// add: one correctly rounded f32 addition per element on both sides, so the results are identical.
TEST(VulkanOps, AddIsExact) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(8);
  for (int64_t n : {1, 64, 65, 1000003}) {
    auto y = random_floats(rng, n, -100.0f, 100.0f);
    const auto x = random_floats(rng, n, -1.0f, 1.0f);
    gpu::Buffer yb = upload_floats(*dev, y), xb = upload_floats(*dev, x);
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
  gpu::Buffer xb = upload_floats(*dev, x), nwb = upload_floats(*dev, nw), nb = dev->alloc(d * 4);
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
