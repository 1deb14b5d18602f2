// tests/support/gpu_test.h - the GPU tests' common rule: they need a Vulkan device (Mesa's lavapipe, from
// scripts/setup.sh, will do) and FAIL without one, so a CI machine that lost its driver is noticed;
// LOKAL_TEST_NO_GPU=1 skips them instead.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu/gpu.h"

namespace lokal::test {

inline bool no_gpu_allowed() {
  const char* e = std::getenv("LOKAL_TEST_NO_GPU");
  return e && std::string(e) == "1";
}

constexpr double kU = 1.0 / (1 << 24);  // unit roundoff of f32

// A device buffer holding v (at least 4 bytes, so an empty vector still gives a bindable buffer).
template <class T>
gpu::Buffer upload_vec(gpu::Device& dev, const std::vector<T>& v) {
  gpu::Buffer b = dev.alloc(std::max<size_t>(v.size() * sizeof(T), 4));
  if (!v.empty()) dev.upload(b, v.data(), v.size() * sizeof(T));
  return b;
}

inline std::vector<float> download_floats(gpu::Device& dev, const gpu::Buffer& b, size_t n) {
  std::vector<float> v(n);
  dev.download(b, v.data(), n * sizeof(float));
  return v;
}

inline std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  return v;
}

}  // namespace lokal::test

// Skips with LOKAL_TEST_NO_GPU=1; otherwise fails the test unless a Vulkan device is there.
#define LOKAL_NEED_GPU()                                                                                    \
  if (::lokal::test::no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1: GPU tests skipped";            \
  ASSERT_EQ(::lokal::gpu::no_device_reason(), "")                                                           \
      << "no usable Vulkan device (install mesa-vulkan-drivers, or set LOKAL_TEST_NO_GPU=1)";

// The first device in `dev`, or a skip with LOKAL_TEST_NO_GPU=1. Without it, a missing loader or device throws and
// fails the test with the library's message.
#define OPEN_DEVICE_OR_SKIP(dev)                                                                            \
  if (::lokal::test::no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1: GPU tests skipped";            \
  std::shared_ptr<::lokal::gpu::Device> dev;                                                                \
  ASSERT_NO_THROW(dev = ::lokal::gpu::Device::open(0))                                                      \
      << "no usable Vulkan device: " << ::lokal::gpu::no_device_reason()                                    \
      << " (install mesa-vulkan-drivers, or set LOKAL_TEST_NO_GPU=1)";
