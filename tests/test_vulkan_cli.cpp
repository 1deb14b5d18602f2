// `lokal info --devices` (cli/cmd_info.cpp): the Vulkan device list, and the clear lines without a loader or driver.
// Apart from tests/test_vulkan.cpp so that the kernel tests link only core/, ops/ and gpu/ (and their ASan build
// needs no `lokal` binary). LOKAL_TEST_NO_GPU=1: only the no-loader / no-driver cases run.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "support/gpu_test.h"
#include "support/test_data.h"

using namespace lokal;

// `lokal info --devices`: lavapipe listed with its properties; with the loader missing (LOKAL_VULKAN_LOADER names a
// file that does not exist), the one clear line and status 0.
TEST(VulkanCli, InfoDevices) {
  if (!test::no_gpu_allowed()) {
    const auto r = test::run_lokal("info --devices");
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("device 0: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("llvmpipe"), std::string::npos) << r.out;
    for (const char* field : {"type ", "driver ", "memory ", "fp16 ", "int8 dot ", "subgroup size "})
      EXPECT_NE(r.out.find(field), std::string::npos) << field << "\n" << r.out;
  }
  ::setenv("LOKAL_VULKAN_LOADER", "/nonexistent/libvulkan.so.1", 1);
  const auto r = test::run_lokal("info --devices");
  ::unsetenv("LOKAL_VULKAN_LOADER");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("no Vulkan loader (/nonexistent/libvulkan.so.1) found"), std::string::npos) << r.out;
  // No loader ICD at all: VK_ICD_FILENAMES pointing at nothing leaves the loader with no driver.
  ::setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json", 1);
  ::setenv("VK_DRIVER_FILES", "/nonexistent/icd.json", 1);
  const auto r2 = test::run_lokal("info --devices");
  ::unsetenv("VK_ICD_FILENAMES");
  ::unsetenv("VK_DRIVER_FILES");
  EXPECT_EQ(r2.rc, 0) << r2.err;
  EXPECT_EQ(r2.out, "no Vulkan device found\n");
  const auto r3 = test::run_lokal("info --devices some.gguf");
  EXPECT_NE(r3.rc, 0);
}
