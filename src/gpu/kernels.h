// gpu/kernels.h - host side of the compute shaders in gpu/shaders/: matrix x vector for the GGUF weight types,
// rms_norm, swiglu, add. Each call records one dispatch into a Commands object (nothing runs until
// Commands::submit_and_wait); put Commands::barrier() between a kernel and the next one that reads its output.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "core/types.h"
#include "gpu/gpu.h"

namespace lokal::gpu {

class Kernels {
 public:
  explicit Kernels(std::shared_ptr<Device> dev) : dev_(std::move(dev)) {}
  Device& device() { return *dev_; }

  // Whether matvec has a shader for weights of type t: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
  // Q4_K, Q5_K, Q6_K.
  static bool supports_matvec(DType t);

  // y[r] = sum_c W[r][c] x[c] for r < rows. W holds rows x row_size(t, cols) bytes exactly as in the GGUF file;
  // x holds cols f32, y receives rows f32. Throws lokal::Error for an unsupported type, a cols that is not a multiple
  // of the block size, buffers too small, or a matrix beyond 4 GiB.
  void matvec(Commands& c, DType t, const Buffer& w, const Buffer& x, Buffer& y, int64_t rows, int64_t cols);
  // y[r][i] = x[r][i] / sqrt(mean_i(x[r][i]^2) + eps) * weight[i], rows of n f32.
  void rms_norm(Commands& c, const Buffer& x, const Buffer& weight, Buffer& y, int64_t rows, int64_t n, float eps);
  // out[i] = silu(gate[i]) * up[i].
  void swiglu(Commands& c, const Buffer& gate, const Buffer& up, Buffer& out, int64_t n);
  // y[i] += x[i].
  void add(Commands& c, Buffer& y, const Buffer& x, int64_t n);

 private:
  const Pipeline& pipeline(const std::string& name, uint32_t n_buffers, uint32_t push_bytes);
  // A grid of at least `groups` workgroups in x (then y) within the device's per-dimension limit.
  void grid(int64_t groups, uint32_t& gx, uint32_t& gy) const;

  std::shared_ptr<Device> dev_;
  std::map<std::string, Pipeline> pipes_;  // compiled on first use
};

}  // namespace lokal::gpu
