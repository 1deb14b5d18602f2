// `lokal info --devices` (cli/cmd_info.cpp): the Vulkan device list, and the clear lines without a loader or driver.
// Apart from tests/test_vulkan.cpp so that the kernel tests link only core/, ops/ and gpu/ (and their ASan build
// needs no `lokal` binary). LOKAL_TEST_NO_GPU=1: only the no-loader / no-driver cases run.
#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
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

// `lokal info --devices --json`: the same list as JSON (bytes and booleans, for scripts); with no device, an empty
// list and "error" saying why; --json without --devices is refused.
TEST(VulkanCli, InfoDevicesJson) {
  using nlohmann::json;
  if (!test::no_gpu_allowed()) {
    const auto r = test::run_lokal("info --devices --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    const json j = json::parse(r.out);
    ASSERT_EQ(j["devices"].size(), 1u) << r.out;  // lavapipe
    const json& d = j["devices"][0];
    EXPECT_EQ(d["index"], 0);
    EXPECT_NE(d["name"].get<std::string>().find("llvmpipe"), std::string::npos) << r.out;
    EXPECT_EQ(d["type"], "cpu");
    EXPECT_GT(d["memory_bytes"].get<uint64_t>(), 0u);
    EXPECT_GE(d["max_allocation_bytes"].get<uint64_t>(), d["max_binding_bytes"].get<uint64_t>());
    EXPECT_GT(d["subgroup_size"].get<uint32_t>(), 0u);
    for (const char* flag : {"fp16", "int8_dot", "int8_dot_accelerated", "subgroup_arithmetic", "int8_path"})
      EXPECT_TRUE(d[flag].is_boolean()) << flag;
    EXPECT_FALSE(j.contains("error"));
    // The text form's device agrees.
    const auto t = test::run_lokal("info --devices");
    EXPECT_NE(t.out.find("device 0: " + d["name"].get<std::string>()), std::string::npos) << t.out;
  }
  ::setenv("LOKAL_VULKAN_LOADER", "/nonexistent/libvulkan.so.1", 1);
  const auto none = test::run_lokal("info --devices --json");
  ::unsetenv("LOKAL_VULKAN_LOADER");
  ASSERT_EQ(none.rc, 0) << none.err;
  const json n = json::parse(none.out);
  EXPECT_EQ(n["devices"], json::array());
  EXPECT_NE(n["error"].get<std::string>().find("no Vulkan loader"), std::string::npos) << none.out;
  const auto bad = test::run_lokal("info --json some.gguf");
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("--json goes with --devices"), std::string::npos) << bad.err;
}

// `lokal bench -ngl 99`: the JSON rows name the device and the offload, and carry the command-buffer counters of the
// warm runs: one command buffer per prompt and one per decoded token, every one of them a reused one (the cold run
// built them: the same shapes at the same positions), none without reuse (LOKAL_GPU_REUSE=0); the table says so.
TEST(VulkanCli, BenchReportsTheDeviceAndItsCommandBuffers) {
  LOKAL_NEED_GPU();
  const std::string model = test::data_path("models/real/stories260K.gguf");
  const std::string args = "bench -m '" + model + "' -p 16 -n 8 -r 2 -t 2 -ngl 99 --no-mem-bw";
  for (const char* reuse : {"1", "0"}) {
    ::setenv("LOKAL_GPU_REUSE", reuse, 1);
    const auto r = test::run_lokal(args + " --json");
    ::unsetenv("LOKAL_GPU_REUSE");
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j.size(), 2u);
    for (const auto& t : j) {
      EXPECT_EQ(t["n_gpu_layers"], 5) << t.dump();
      EXPECT_TRUE(t["gpu_output"].get<bool>());
      EXPECT_NE(t["gpu_info"].get<std::string>().find("llvmpipe"), std::string::npos);
      EXPECT_EQ(t["gpu_submits"].get<double>(), t["n_gen"] == 8 ? 8.0 : 1.0) << t.dump();
      EXPECT_EQ(t["gpu_reused_pct"].get<double>(), std::string(reuse) == "1" ? 100.0 : 0.0) << t.dump();
      EXPECT_GT(t["gpu_dispatches"].get<double>(), 5 * 10.0);  // 5 layers of at least 10 kernels each
      EXPECT_GT(t["gpu_host_us"].get<double>(), 0.0);
      EXPECT_GT(t["gpu_device_us"].get<double>(), 0.0);
    }
  }
  const auto r = test::run_lokal(args + " -q");
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* s : {"gpu pp16: 1.0 command buffers per run (100% reused)", "gpu tg8: 8.0 command buffers per run",
                        "us of host recording"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
}
