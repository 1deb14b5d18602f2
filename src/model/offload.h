// model/offload.h - GPU offload of a model's last layers (Vulkan, gpu/): the weights on the device, the KV cache of
// those layers on the device, and the device scratch of one forward pass.
//
// The split (llama.cpp's -ngl): with N offloaded layers of L, layers [L - N, L) run on the device and [0, L - N) on
// the CPU; when every layer is offloaded the output norm and matrix go too (if the device has a shader for the
// output's type and one binding can hold it). The token embedding rows are read on the CPU (a lookup, no arithmetic)
// and the hidden state crosses to the device once per micro-batch, and back once (or the logits come back instead).
//
//   DeviceModel   per Model: the device, its kernels, the uploaded weights (GGUF block layouts, as in the file).
//   DeviceKV      per KVCache: K and V of each offloaded layer, the same pages and slots as the host cache.
//   DeviceScratch per Forward: activation buffers for its largest micro-batch, staging for the crossings.
//
// A Device serves one thread at a time: DeviceModel::lock() is held for a whole device step (several Forwards of one
// model, e.g. a server's scheduler and a perplexity run, take turns).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/types.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "model/config.h"

namespace lokal {

class Model;

// Which device and how many layers; resolved against the model by DeviceModel::create.
struct OffloadOptions {
  int n_gpu_layers = 0;  // last N layers on the device; >= n_layer: all of them and the output
  uint32_t device = 0;   // index in gpu::list_devices() (`lokal info --devices`)
};

class DeviceModel {
 public:
  // A weight matrix in its GGUF layout: one buffer, or (larger than one shader binding may see) parts of
  // part_rows rows each (the last one the rest), multiplied part by part into slices of the output.
  struct Matrix {
    std::vector<gpu::Buffer> parts;
    int64_t part_rows = 0;
    DType type = DType::F32;
    int64_t rows = 0, cols = 0;
    explicit operator bool() const { return !parts.empty(); }
  };
  struct Layer {
    gpu::Buffer attn_norm, ffn_norm, bq, bk, bv;  // f32 vectors (biases: empty when absent)
    Matrix wq, wk, wv, wo, w_gate, w_up, w_down;
  };

  // Opens the device and uploads the weights of the offloaded layers (and the output, when all are offloaded).
  // Call before the CPU repacks any matrix (the device reads the file's layouts). Throws lokal::Error: no Vulkan,
  // a weight type without a shader, gpu::OutOfMemory naming the bytes.
  static std::unique_ptr<DeviceModel> create(const Model& m, const OffloadOptions& opt);

  gpu::Kernels& kernels() { return *kernels_; }
  gpu::Device& device() { return *dev_; }
  const gpu::DeviceInfo& info() const { return dev_->info(); }
  bool int8() const { return kernels_->int8(); }  // decode's products of int8 types take the int8 path
  gpu::Device::SubmitStats submit_stats() const { return dev_->submit_stats(); }
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mu_); }

  int64_t first_layer() const { return first_; }   // layers [first_layer, n_layer) are on the device
  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  bool output_on_device() const { return static_cast<bool>(output_); }
  const Layer& layer(int64_t l) const { return layers_[static_cast<size_t>(l - first_)]; }
  const Matrix& output() const { return output_; }
  // y = W x for n_tok tokens (gpu::Kernels::matmul, part by part). With xq (x quantized by Kernels::quantize_q8) a
  // type that has an int8 shader takes the int8 path (Kernels::matmul_q8).
  void matmul(gpu::Commands& c, const Matrix& w, const gpu::Buffer& x, const gpu::Buffer* xq, gpu::Buffer& y,
              int64_t n_tok);
  const gpu::Buffer& output_norm() const { return output_norm_; }
  uint64_t weight_bytes() const { return weight_bytes_; }  // device memory of the uploaded weights
  // The file byte ranges [offset, end) of the uploaded matrices: the CPU never reads them, so the loader neither
  // prefetches nor keeps them (MappedFile::release after each upload).
  const std::vector<std::pair<size_t, size_t>>& file_ranges() const { return file_ranges_; }

 private:
  DeviceModel() = default;
  std::shared_ptr<gpu::Device> dev_;
  std::unique_ptr<gpu::Kernels> kernels_;
  std::mutex mu_;
  int64_t first_ = 0;
  std::vector<Layer> layers_;
  Matrix output_;
  gpu::Buffer output_norm_;
  uint64_t weight_bytes_ = 0;
  std::vector<std::pair<size_t, size_t>> file_ranges_;
};

// K and V of the offloaded layers on the device: layer l's K buffer holds n_pages * 64 rows (row = page * 64 + slot,
// as the host cache's pages) of n_head_kv * head_dim elements in gpu::Kernels' cache layout of its type.
class DeviceKV {
 public:
  DeviceKV(DeviceModel& dm, const ModelConfig& c, int64_t n_pages, DType type_k, DType type_v);
  const gpu::Buffer& k(int64_t layer) const { return k_[static_cast<size_t>(layer - first_)]; }
  const gpu::Buffer& v(int64_t layer) const { return v_[static_cast<size_t>(layer - first_)]; }
  gpu::Buffer& k(int64_t layer) { return k_[static_cast<size_t>(layer - first_)]; }
  gpu::Buffer& v(int64_t layer) { return v_[static_cast<size_t>(layer - first_)]; }
  int64_t n_rows() const { return n_pages_ * 64; }
  uint64_t bytes() const { return bytes_; }
  // Copies page src over page dst in every offloaded layer (copy-on-write of a shared page).
  void copy_page(int64_t dst, int64_t src);
  // Device bytes of such a cache (for planning).
  static uint64_t bytes_for(const ModelConfig& c, int64_t n_layers, int64_t n_pages, DType type_k, DType type_v);

 private:
  DeviceModel& dm_;
  int64_t first_, n_pages_, width_k_, width_v_;
  DType type_k_, type_v_;
  std::vector<gpu::Buffer> k_, v_;
  uint64_t bytes_ = 0;
};

// Device working memory of one Forward (sized for max_batch tokens and contexts up to max_ctx) plus the host-visible
// staging buffers through which the hidden state, the per-token metadata and the rope angles go up and the result
// comes down.
struct DeviceScratch {
  DeviceScratch(DeviceModel& dm, const ModelConfig& c, int64_t max_batch, int64_t max_ctx);
  uint64_t bytes() const { return bytes_; }
  static uint64_t bytes_for(const ModelConfig& c, int64_t max_batch, int64_t max_ctx, bool output_on_device);
  // Host bytes of its two staging buffers.
  static uint64_t staging_bytes_for(const ModelConfig& c, int64_t max_batch, int64_t max_ctx, bool output_on_device);

  static constexpr int64_t kLogitRows = 32;  // output rows per device product (the logits buffer's height)
  int64_t max_batch, max_meta;  // tokens; uint32 entries of the metadata buffer
  gpu::Buffer x, xn, q, k, v, attn, gate, up, meta, cs, logits;
  gpu::Buffer xq;  // a matrix input quantized for the int8 path (gpu::Kernels::quantize_q8)
  gpu::Buffer attn_split;  // split attention's partial sums (empty when no batch splits)
  gpu::Buffer up_stage, down_stage;  // host-visible
  // The forward pass's command buffers, submitted again while a step records the same commands as an earlier one
  // (decode: step after step; see gpu::CommandCache).
  gpu::CommandCache commands;
  uint64_t bytes_ = 0;
};

}  // namespace lokal
