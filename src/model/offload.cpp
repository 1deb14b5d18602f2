// model/offload.cpp - device weights, device KV cache and device scratch of GPU offload (model/offload.h).
#include "model/offload.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/quant.h"
#include "model/model.h"

namespace lokal {

namespace {

std::string mib(uint64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f MiB", static_cast<double>(b) / (1024.0 * 1024.0));
  return s;
}

uint64_t matrix_bytes(const WeightView& w) { return w.row_bytes * static_cast<uint64_t>(w.rows); }

// Rows per part of a matrix of rows of row_bytes on a device whose bindings see max_binding bytes (all of them when
// they fit; 0 when not even one row fits). Parts are a multiple of 8 rows where possible: with even row sizes (every
// GGUF type's) each full part is then a multiple of 16 bytes, so the parts' allocations (rounded to 16 bytes) add up
// to the whole matrix's, which is what the planner counts.
int64_t part_rows_for(uint64_t row_bytes, int64_t rows, uint64_t max_binding) {
  const uint64_t limit = std::min<uint64_t>(max_binding, UINT32_MAX);
  if (row_bytes * static_cast<uint64_t>(rows) <= limit) return rows;
  const int64_t fit = static_cast<int64_t>(limit / row_bytes);
  return fit >= 8 ? fit / 8 * 8 : fit;
}

// Whether the device can multiply by this matrix: a shader for its type and a binding that holds one row.
bool device_can_hold(const WeightView& w, uint64_t max_binding) {
  return w.data && gpu::Kernels::supports_matvec(w.type) && part_rows_for(w.row_bytes, w.rows, max_binding) > 0;
}

}  // namespace

void DeviceModel::matmul(gpu::Commands& c, const Matrix& w, const gpu::Buffer& x, const gpu::Buffer* xq,
                         gpu::Buffer& y, int64_t n_tok) {
  const bool q8 = xq && kernels_->int8() && gpu::Kernels::supports_q8(w.type);
  for (size_t p = 0; p < w.parts.size(); ++p) {
    const int64_t r0 = static_cast<int64_t>(p) * w.part_rows, rows = std::min(w.part_rows, w.rows - r0);
    const gpu::OutRows out{r0, w.rows};
    if (q8)
      kernels_->matmul_q8(c, w.type, w.parts[p], *xq, y, rows, w.cols, n_tok, out);
    else
      kernels_->matmul(c, w.type, w.parts[p], x, y, rows, w.cols, n_tok, out);
  }
}

std::unique_ptr<DeviceModel> DeviceModel::create(const Model& m, const OffloadOptions& opt) {
  const ModelConfig& c = m.config();
  const int64_t n = std::clamp<int64_t>(opt.n_gpu_layers, 0, c.n_layer);
  if (n <= 0) return nullptr;
  std::unique_ptr<DeviceModel> dm(new DeviceModel());
  try {
    dm->dev_ = gpu::Device::open(opt.device);
  } catch (const Error& e) {  // no loader, no device, an index out of range
    throw Error("-ngl " + std::to_string(opt.n_gpu_layers) + ": no GPU to offload to: " + e.what() +
                " (run without -ngl, or see 'lokal info --devices')");
  }
  dm->kernels_ = std::make_unique<gpu::Kernels>(dm->dev_);
  dm->first_ = c.n_layer - n;
  const uint64_t max_binding = dm->info().max_storage_buffer_bytes;
  gpu::Device& dev = *dm->dev_;

  auto upload_matrix = [&](const WeightView& w, const std::string& name, bool cpu_reads_it = false) {
    if (!gpu::Kernels::supports_matvec(w.type))
      throw Error("GPU offload: " + name + " is " + type_name(w.type) + ", which has no GPU kernel; use fewer GPU "
                  "layers (-ngl) or a supported type");
    if (w.packed) throw Error("GPU offload: " + name + " was repacked for the CPU before the upload (internal error)");
    const uint64_t bytes = matrix_bytes(w);
    Matrix mx;
    mx.part_rows = part_rows_for(w.row_bytes, w.rows, max_binding);
    if (mx.part_rows <= 0)
      throw Error("GPU offload: one row of " + name + " takes " + std::to_string(w.row_bytes) +
                  " bytes, more than one shader binding of " + dm->info().name + " may see (" + mib(max_binding) + ")");
    for (int64_t r0 = 0; r0 < w.rows; r0 += mx.part_rows) {
      const uint64_t part = w.row_bytes * static_cast<uint64_t>(std::min(mx.part_rows, w.rows - r0));
      mx.parts.push_back(dev.alloc(part));
      dev.upload(mx.parts.back(), w.data + w.row_bytes * static_cast<uint64_t>(r0), part);
      dm->weight_bytes_ += mx.parts.back().size();
    }
    if (const MappedFile* mf = m.gguf().mapped(); mf && mf->is_mapped() && !cpu_reads_it) {
      const size_t off = static_cast<size_t>(w.data - mf->data());
      mf->release(off, bytes);  // the CPU never reads these bytes again
      dm->file_ranges_.emplace_back(off, off + bytes);
    }
    mx.type = w.type;
    mx.rows = w.rows;
    mx.cols = w.cols;
    return mx;
  };
  auto upload_vector = [&](const float* v, int64_t k) {
    gpu::Buffer b;
    if (!v) return b;
    b = dev.alloc(static_cast<uint64_t>(k) * 4);
    dev.upload(b, v, static_cast<uint64_t>(k) * 4);
    dm->weight_bytes_ += b.size();
    return b;
  };

  dm->layers_.resize(static_cast<size_t>(n));
  for (int64_t l = dm->first_; l < c.n_layer; ++l) {
    const LayerWeights& L = m.layers[static_cast<size_t>(l)];
    Layer& D = dm->layers_[static_cast<size_t>(l - dm->first_)];
    const std::string p = "blk." + std::to_string(l) + ".";
    D.attn_norm = upload_vector(L.attn_norm, c.n_embd);
    D.ffn_norm = upload_vector(L.ffn_norm, c.n_embd);
    D.bq = upload_vector(L.bq, c.n_embd_q());
    D.bk = upload_vector(L.bk, c.n_embd_k());
    D.bv = upload_vector(L.bv, c.n_embd_v());
    D.wq = upload_matrix(L.wq, p + "attn_q.weight");
    D.wk = upload_matrix(L.wk, p + "attn_k.weight");
    D.wv = upload_matrix(L.wv, p + "attn_v.weight");
    D.wo = upload_matrix(L.wo, p + "attn_output.weight");
    D.w_gate = upload_matrix(L.w_gate, p + "ffn_gate.weight");
    D.w_up = upload_matrix(L.w_up, p + "ffn_up.weight");
    D.w_down = upload_matrix(L.w_down, p + "ffn_down.weight");
  }
  if (n == c.n_layer && device_can_hold(m.output, max_binding) && !m.output.packed) {
    // A tied output is also the token embedding, whose rows the CPU keeps reading.
    dm->output_ = upload_matrix(m.output, m.tied_output ? "token_embd.weight (tied output)" : "output.weight",
                                m.tied_output);
    dm->output_norm_ = upload_vector(m.output_norm, c.n_embd);
  }
  return dm;
}

// ---------------------------------------------------------------------------------------------------------------

uint64_t DeviceKV::bytes_for(const ModelConfig& c, int64_t n_layers, int64_t n_pages, DType type_k, DType type_v) {
  const int64_t rows = n_pages * 64;
  return static_cast<uint64_t>(n_layers) *
         (gpu::Device::allocation_bytes(gpu::Kernels::kv_bytes(type_k, rows, c.n_head_kv * c.head_dim)) +
          gpu::Device::allocation_bytes(gpu::Kernels::kv_bytes(type_v, rows, c.n_head_kv * c.head_dim_v)));
}

DeviceKV::DeviceKV(DeviceModel& dm, const ModelConfig& c, int64_t n_pages, DType type_k, DType type_v)
    : dm_(dm), first_(dm.first_layer()), n_pages_(n_pages), width_k_(c.n_head_kv * c.head_dim),
      width_v_(c.n_head_kv * c.head_dim_v), type_k_(type_k), type_v_(type_v) {
  for (DType t : {type_k, type_v})
    if (!gpu::Kernels::supports_kv(t))
      throw Error(std::string("GPU offload: a KV cache of type ") + type_name(t) +
                  " is not supported on the GPU (use f32, f16 or q8_0)");
  const int64_t rows = n_pages * 64;
  const uint64_t bk = gpu::Kernels::kv_bytes(type_k, rows, width_k_), bv = gpu::Kernels::kv_bytes(type_v, rows, width_v_);
  const uint64_t max_binding = dm.info().max_storage_buffer_bytes;
  if (std::max(bk, bv) > max_binding)
    throw Error("GPU offload: one layer's KV cache (" + mib(std::max(bk, bv)) + " for " + std::to_string(rows) +
                " positions) is more than one shader binding of " + dm.info().name + " may see (" + mib(max_binding) +
                "); use a shorter context or a smaller KV type");
  auto lk = dm.lock();
  for (int64_t l = first_; l < c.n_layer; ++l) {
    k_.push_back(dm.device().alloc(bk));
    v_.push_back(dm.device().alloc(bv));
    bytes_ += k_.back().size() + v_.back().size();
  }
}

void DeviceKV::copy_page(int64_t dst, int64_t src) {
  if (dst == src) return;
  auto lk = dm_.lock();
  gpu::Commands cmd(dm_.device());
  const int64_t rows = n_pages_ * 64;
  for (size_t i = 0; i < k_.size(); ++i) {
    dm_.kernels().kv_copy_rows(cmd, k_[i], type_k_, rows, width_k_, src * 64, dst * 64, 64);
    dm_.kernels().kv_copy_rows(cmd, v_[i], type_v_, rows, width_v_, src * 64, dst * 64, 64);
  }
  cmd.submit_and_wait();
}

// ---------------------------------------------------------------------------------------------------------------

namespace {
struct ScratchSizes {
  uint64_t x, xn, q, k, v, attn, gate, cs, meta, logits, xq, split, up, down;
};
ScratchSizes scratch_sizes(const ModelConfig& c, int64_t B, int64_t max_ctx, bool output_on_device) {
  ScratchSizes s;
  const uint64_t b = static_cast<uint64_t>(B);
  s.x = b * c.n_embd * 4;
  s.xn = b * std::max(c.n_embd, c.n_ff) * 4;
  s.q = b * c.n_embd_q() * 4;
  s.k = b * c.n_embd_k() * 4;
  s.v = b * c.n_embd_v() * 4;
  s.attn = b * c.n_head * c.head_dim_v * 4;
  s.gate = b * std::max(c.n_embd, c.n_ff) * 4;
  s.cs = b * std::max<int64_t>(2, c.rope_dim) * 4;
  const int64_t pages = (max_ctx + 63) / 64;
  s.meta = (3 * b + b * static_cast<uint64_t>(pages)) * 4;
  const uint64_t lrows = static_cast<uint64_t>(std::min<int64_t>(B, DeviceScratch::kLogitRows));
  s.logits = output_on_device ? lrows * c.n_vocab * 4 : 0;
  // The int8 path's activations (gpu::Kernels::quantize_q8): any matrix input of a whole batch (1.25 bytes per
  // element: 9 MiB for 512 tokens of a 14336-wide FFN).
  const int64_t in_cols = std::max({c.n_embd, c.n_head * c.head_dim_v, c.n_ff});
  s.xq = gpu::Device::allocation_bytes(gpu::Kernels::q8_bytes(in_cols, B));
  // Split attention's partial sums (gpu::Kernels::attention_split): 0 when no batch of B tokens over max_ctx splits.
  gpu::Kernels::AttnShape as;
  as.n_head = c.n_head;
  as.n_head_kv = c.n_head_kv;
  as.head_dim = c.head_dim;
  as.head_dim_v = c.head_dim_v;
  const uint64_t split = gpu::Kernels::attention_scratch_bytes(as, B, max_ctx);
  s.split = split ? gpu::Device::allocation_bytes(split) : 0;
  s.up = s.x + s.meta + s.cs;
  s.down = s.x + s.logits;
  return s;
}
}  // namespace

uint64_t DeviceScratch::bytes_for(const ModelConfig& c, int64_t B, int64_t max_ctx, bool output_on_device) {
  const ScratchSizes s = scratch_sizes(c, B, max_ctx, output_on_device);
  return s.x + s.xn + s.q + s.k + s.v + s.attn + 2 * s.gate + s.cs + s.meta + s.logits + s.xq + s.split;  // staging: host
}

uint64_t DeviceScratch::staging_bytes_for(const ModelConfig& c, int64_t B, int64_t max_ctx, bool output_on_device) {
  const ScratchSizes s = scratch_sizes(c, B, max_ctx, output_on_device);
  return s.up + s.down;
}

DeviceScratch::DeviceScratch(DeviceModel& dm, const ModelConfig& c, int64_t B, int64_t max_ctx)
    : max_batch(B), max_meta(3 * B + B * ((max_ctx + 63) / 64)), commands(dm.device()) {
  const ScratchSizes s = scratch_sizes(c, B, max_ctx, dm.output_on_device());
  auto lk = dm.lock();
  gpu::Device& d = dm.device();
  auto alloc = [&](uint64_t n) {
    gpu::Buffer b = d.alloc(std::max<uint64_t>(n, 16));
    bytes_ += b.size();
    return b;
  };
  x = alloc(s.x);
  xn = alloc(s.xn);
  q = alloc(s.q);
  k = alloc(s.k);
  v = alloc(s.v);
  attn = alloc(s.attn);
  gate = alloc(s.gate);
  up = alloc(s.gate);
  cs = alloc(s.cs);
  meta = alloc(s.meta);
  if (s.logits) logits = alloc(s.logits);
  xq = alloc(s.xq);
  if (s.split) attn_split = alloc(s.split);
  up_stage = d.staging(s.up);
  down_stage = d.staging(s.down);
}

}  // namespace lokal
