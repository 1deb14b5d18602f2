// gpu/shaders.h - the compute shaders' SPIR-V, compiled from gpu/shaders/*.comp by glslc at build time and embedded
// in the binary (src/CMakeLists.txt, shaders.cpp.in).
#pragma once
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace lokal::gpu {

// SPIR-V words of shader `name` ("mv_q4_k", "rms_norm": the .comp file's stem). Throws lokal::Error for an unknown
// name.
std::span<const uint32_t> shader_spirv(std::string_view name);
std::vector<std::string_view> shader_names();

}  // namespace lokal::gpu
