// gpu/kernels.cpp - argument checks, pipelines and dispatch grids for the shaders (gpu/kernels.h).
#include "gpu/kernels.h"

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "core/quant.h"
#include "gpu/shaders.h"

namespace lokal::gpu {

namespace {

// The byte offsets the shaders hard-code (gpu/shaders/mv_*.comp) are those of core/quant.h's block structs.
static_assert(sizeof(BlockQ4_0) == 18 && offsetof(BlockQ4_0, qs) == 2);
static_assert(sizeof(BlockQ4_1) == 20 && offsetof(BlockQ4_1, m) == 2 && offsetof(BlockQ4_1, qs) == 4);
static_assert(sizeof(BlockQ5_0) == 22 && offsetof(BlockQ5_0, qh) == 2 && offsetof(BlockQ5_0, qs) == 6);
static_assert(sizeof(BlockQ5_1) == 24 && offsetof(BlockQ5_1, qh) == 4 && offsetof(BlockQ5_1, qs) == 8);
static_assert(sizeof(BlockQ8_0) == 34 && offsetof(BlockQ8_0, qs) == 2);
static_assert(sizeof(BlockQ2_K) == 84 && offsetof(BlockQ2_K, qs) == 16 && offsetof(BlockQ2_K, d) == 80 &&
              offsetof(BlockQ2_K, dmin) == 82);
static_assert(sizeof(BlockQ3_K) == 110 && offsetof(BlockQ3_K, qs) == 32 && offsetof(BlockQ3_K, scales) == 96 &&
              offsetof(BlockQ3_K, d) == 108);
static_assert(sizeof(BlockQ4_K) == 144 && offsetof(BlockQ4_K, scales) == 4 && offsetof(BlockQ4_K, qs) == 16);
static_assert(sizeof(BlockQ5_K) == 176 && offsetof(BlockQ5_K, scales) == 4 && offsetof(BlockQ5_K, qh) == 16 &&
              offsetof(BlockQ5_K, qs) == 48);
static_assert(sizeof(BlockQ6_K) == 210 && offsetof(BlockQ6_K, qh) == 128 && offsetof(BlockQ6_K, scales) == 192 &&
              offsetof(BlockQ6_K, d) == 208);

const char* matvec_shader(DType t) {
  switch (t) {
    case DType::F32: return "mv_f32";
    case DType::F16: return "mv_f16";
    case DType::BF16: return "mv_bf16";
    case DType::Q4_0: return "mv_q4_0";
    case DType::Q4_1: return "mv_q4_1";
    case DType::Q5_0: return "mv_q5_0";
    case DType::Q5_1: return "mv_q5_1";
    case DType::Q8_0: return "mv_q8_0";
    case DType::Q2_K: return "mv_q2_k";
    case DType::Q3_K: return "mv_q3_k";
    case DType::Q4_K: return "mv_q4_k";
    case DType::Q5_K: return "mv_q5_k";
    case DType::Q6_K: return "mv_q6_k";
    default: return nullptr;
  }
}

void need(const Buffer& b, uint64_t bytes, const char* kernel, const char* what) {
  if (b.size() < bytes)
    throw Error(std::string("GPU ") + kernel + ": " + what + " buffer holds " + std::to_string(b.size()) +
                " bytes, needs " + std::to_string(bytes));
}

void check_count(int64_t n, const char* kernel, const char* what) {
  if (n < 0 || n > int64_t(UINT32_MAX))
    throw Error(std::string("GPU ") + kernel + ": " + what + " " + std::to_string(n) + " is out of range");
}

}  // namespace

bool Kernels::supports_matvec(DType t) { return matvec_shader(t) != nullptr; }

Kernels::Kernels(std::shared_ptr<Device> dev) : dev_(std::move(dev)), int8_(int8_by_default(dev_->info())) {
  const char* e = std::getenv("LOKAL_GPU_SUBGROUP");
  subgroup_sums_ = dev_->info().subgroup_arithmetic && !(e && std::string(e) == "0");
}

void Kernels::set_subgroup_sums(bool on) {
  if (on && !dev_->info().subgroup_arithmetic)
    throw Error("GPU: " + dev_->info().name + " has no subgroup arithmetic");
  subgroup_sums_ = on;
}

bool Kernels::int8_capable(const DeviceInfo& d) { return d.int8_dot && d.subgroup_arithmetic; }

bool Kernels::int8_by_default(const DeviceInfo& d) {
  const char* env = std::getenv("LOKAL_GPU_INT8");
  const std::string e = env ? env : "";
  if (e == "0") return false;
  if (e == "1") return int8_capable(d);
  return int8_capable(d) && d.int8_dot_accelerated;
}

void Kernels::set_int8(bool on) {
  if (on && !int8_capable())
    throw Error("GPU: " + dev_->info().name + " has no integer dot products or no subgroup arithmetic (int8 path)");
  int8_ = on;
}

const Pipeline& Kernels::pipeline(const std::string& name, uint32_t n_buffers, uint32_t push_bytes) {
  auto it = pipes_.find(name);
  if (it == pipes_.end())
    it = pipes_.emplace(name, dev_->pipeline(shader_spirv(name), n_buffers, push_bytes, name.c_str())).first;
  return it->second;
}

void Kernels::grid(int64_t groups, uint32_t& gx, uint32_t& gy) const {
  const int64_t max_x = dev_->info().max_workgroup_count[0];
  gx = static_cast<uint32_t>(std::min<int64_t>(groups, max_x));
  gy = gx ? static_cast<uint32_t>((groups + gx - 1) / gx) : 0;
  if (gy > dev_->info().max_workgroup_count[1])
    throw Error("GPU: " + std::to_string(groups) + " workgroups exceed the device's dispatch limit");
}

void Kernels::matvec(Commands& c, DType t, const Buffer& w, const Buffer& x, Buffer& y, int64_t rows, int64_t cols) {
  matmul(c, t, w, x, y, rows, cols, 1);
}

namespace {
constexpr int64_t kMatmulTokens = 8;  // NT of gpu/shaders/mv_main.glsl: tokens per workgroup (grid z)
// The tiled shaders (gpu/shaders/mm_main.glsl) for more than kMatmulTokens tokens: a workgroup computes kTileRows
// rows x kTileTokens tokens (row tiles in grid x, y; token tiles in z).
constexpr int64_t kTileRows = 64, kTileTokens = 32;

// mm_TYPE for mv_TYPE.
std::string tiled_shader(const char* matvec_name) { return std::string("mm_") + (matvec_name + 3); }
}  // namespace

Kernels::MatPush Kernels::mat_push(const char* kn, DType t, const Buffer& w, Buffer& y, int64_t rows, int64_t cols,
                                   int64_t n_tok, OutRows out) const {
  const std::string k = std::string("GPU ") + kn + ": ";
  check_count(rows, kn, "row count");
  check_count(cols, kn, "column count");
  check_count(n_tok, kn, "token count");
  const int64_t total = out.total ? out.total : rows;
  check_count(total, kn, "output row length");
  if (out.first < 0 || out.first > total - rows)
    throw Error(k + "rows [" + std::to_string(out.first) + ", " + std::to_string(out.first + rows) +
                ") are outside an output of " + std::to_string(total) + " rows");
  const TypeInfo* ti = type_info(t);
  if (cols % ti->block_size != 0)
    throw Error(k + std::to_string(cols) + " columns is not a multiple of the " + type_name(t) + " block size " +
                std::to_string(ti->block_size));
  const uint64_t row_bytes = row_size(t, cols);
  // The shaders address W in 32-bit byte offsets, x and y in 32-bit element indices.
  if (rows != 0 && row_bytes > UINT32_MAX / static_cast<uint64_t>(rows))  // (no overflow: both may be ~2^32)
    throw Error(k + "a matrix of " + std::to_string(rows) + " rows of " + std::to_string(row_bytes) +
                " bytes is beyond 4 GiB");
  const uint64_t y_elems = static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(total);
  if (y_elems > UINT32_MAX)
    throw Error(k + std::to_string(n_tok) + " tokens of " + std::to_string(total) + " outputs are too many elements");
  need(w, row_bytes * rows, kn, "weight");
  need(y, 4 * y_elems, kn, "output");
  return {static_cast<uint32_t>(rows),      static_cast<uint32_t>(cols),  static_cast<uint32_t>(row_bytes),
          static_cast<uint32_t>(n_tok),     static_cast<uint32_t>(total), static_cast<uint32_t>(out.first)};
}

void Kernels::matmul(Commands& c, DType t, const Buffer& w, const Buffer& x, Buffer& y, int64_t rows, int64_t cols,
                     int64_t n_tok, OutRows out) {
  const char* name = matvec_shader(t);
  if (!name) throw Error(std::string("GPU matmul: no shader for weight type ") + type_name(t));
  const MatPush push = mat_push("matmul", t, w, y, rows, cols, n_tok, out);
  const uint64_t x_elems = static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(cols);
  if (x_elems > UINT32_MAX)
    throw Error("GPU matmul: " + std::to_string(n_tok) + " tokens of " + std::to_string(cols) +
                " inputs are too many elements");
  need(x, 4 * x_elems, "matmul", "input");
  const int64_t groups_z = (n_tok + kMatmulTokens - 1) / kMatmulTokens;
  if (groups_z > int64_t(dev_->info().max_workgroup_count[2]))
    throw Error("GPU matmul: " + std::to_string(n_tok) + " tokens exceed the device's dispatch limit (" +
                std::to_string(int64_t(dev_->info().max_workgroup_count[2]) * kMatmulTokens) + ")");
  uint32_t gx, gy;
  if (n_tok > kMatmulTokens) {
    // Prompt processing: tiles of 64 rows x 32 tokens read and dequantize each weight once per 32 tokens (the
    // few-token shader: once per 8). The check on groups_z above bounds n_tok for both (token tiles <= groups_z).
    grid((rows + kTileRows - 1) / kTileRows, gx, gy);
    c.dispatch(pipeline(tiled_shader(name), 3, sizeof push), {&w, &x, &y}, &push, sizeof push, gx, gy,
               static_cast<uint32_t>((n_tok + kTileTokens - 1) / kTileTokens));
    return;
  }
  grid(rows, gx, gy);
  const std::string few = subgroup_sums_ ? std::string("mvs_") + (name + 3) : std::string(name);
  c.dispatch(pipeline(few, 3, sizeof push), {&w, &x, &y}, &push, sizeof push, gx, gy, static_cast<uint32_t>(groups_z));
}

namespace {
// The push constants of rms_norm.comp; flags as its RESIDUAL, Q8, Q8_SUPERBLOCK.
struct NormPush {
  uint32_t rows, n;
  float eps;
  uint32_t flags;
};
}  // namespace

void Kernels::rms_norm(Commands& c, const Buffer& x, const Buffer& weight, Buffer& y, int64_t rows, int64_t n,
                       float eps) {
  norm_dispatch(c, x, nullptr, weight, y, rows, n, eps, nullptr, Q8Scale::Block32);
}

void Kernels::rms_norm_fused(Commands& c, Buffer& x, const Buffer* residual, const Buffer& weight, Buffer& y,
                             int64_t rows, int64_t n, float eps, Buffer* xq, Q8Scale scale) {
  norm_dispatch(c, x, residual, weight, y, rows, n, eps, xq, scale);
}

void Kernels::norm_dispatch(Commands& c, const Buffer& x, const Buffer* residual, const Buffer& weight, Buffer& y,
                            int64_t rows, int64_t n, float eps, Buffer* xq, Q8Scale scale) {
  check_count(rows, "rms_norm", "row count");
  check_count(n, "rms_norm", "row length");
  if (n == 0) throw Error("GPU rms_norm: empty rows");
  const uint64_t elems = static_cast<uint64_t>(rows) * static_cast<uint64_t>(n);
  if (elems > UINT32_MAX) throw Error("GPU rms_norm: too many elements");
  need(x, 4 * elems, "rms_norm", "input");
  need(weight, 4 * static_cast<uint64_t>(n), "rms_norm", "weight");
  need(y, 4 * elems, "rms_norm", "output");
  uint32_t flags = 0;
  if (residual) {
    need(*residual, 4 * elems, "rms_norm", "residual");
    flags |= 1u;
  }
  if (xq) {
    if (!int8_) throw Error("GPU rms_norm: the int8 path is off on " + dev_->info().name);
    check_q8_output("rms_norm", *xq, n, rows, scale);
    flags |= scale == Q8Scale::Superblock256 ? 4u : 2u;
  }
  const NormPush push{static_cast<uint32_t>(rows), static_cast<uint32_t>(n), eps, flags};
  uint32_t gx, gy;
  grid(rows, gx, gy);
  // Without their flags, bindings 3 (residual) and 4 (xq) are not touched.
  c.dispatch(pipeline("rms_norm", 5, sizeof push), {&x, &weight, &y, residual ? residual : &x, xq ? xq : &y}, &push,
             sizeof push, gx, gy);
}

// xq must take quantize_q8's output for rows of cols in this scaling: whole blocks, 32-bit indexable, large enough.
void Kernels::check_q8_output(const char* kernel, const Buffer& xq, int64_t cols, int64_t rows, Q8Scale scale) {
  const int64_t group = scale == Q8Scale::Superblock256 ? 256 : 32;
  if (cols % group != 0)
    throw Error(std::string("GPU ") + kernel + ": rows of " + std::to_string(cols) + " are not whole blocks of " +
                std::to_string(group) + " to quantize");
  if (q8_bytes(cols, rows) / 4 > UINT32_MAX) throw Error(std::string("GPU ") + kernel + ": too many elements");
  need(xq, q8_bytes(cols, rows), kernel, "quantized output");
}

namespace {
constexpr int64_t kElementwiseWG = 64;  // local_size_x of swiglu.comp, add.comp, add_bias.comp, rope.comp, quantize_q8.comp, swiglu_q8.comp
}

void Kernels::swiglu(Commands& c, const Buffer& gate, const Buffer& up, Buffer& out, int64_t n) {
  check_count(n, "swiglu", "length");
  need(gate, 4 * static_cast<uint64_t>(n), "swiglu", "gate");
  need(up, 4 * static_cast<uint64_t>(n), "swiglu", "up");
  need(out, 4 * static_cast<uint64_t>(n), "swiglu", "output");
  const uint32_t push = static_cast<uint32_t>(n);
  uint32_t gx, gy;
  grid((n + kElementwiseWG - 1) / kElementwiseWG, gx, gy);
  c.dispatch(pipeline("swiglu", 3, sizeof push), {&gate, &up, &out}, &push, sizeof push, gx, gy);
}

void Kernels::swiglu_q8(Commands& c, const Buffer& gate, const Buffer& up, Buffer& out, int64_t n, Buffer& xq,
                        Q8Scale scale) {
  check_count(n, "swiglu_q8", "length");
  if (!int8_) throw Error("GPU swiglu_q8: the int8 path is off on " + dev_->info().name);
  check_q8_output("swiglu_q8", xq, n, 1, scale);
  need(gate, 4 * static_cast<uint64_t>(n), "swiglu_q8", "gate");
  need(up, 4 * static_cast<uint64_t>(n), "swiglu_q8", "up");
  need(out, 4 * static_cast<uint64_t>(n), "swiglu_q8", "output");
  if (n == 0) return;
  q8_blocks_dispatch(c, "swiglu_q8", {&gate, &up, &out, &xq}, n / 32, scale);
}

void Kernels::add(Commands& c, Buffer& y, const Buffer& x, int64_t n) {
  check_count(n, "add", "length");
  need(y, 4 * static_cast<uint64_t>(n), "add", "output");
  need(x, 4 * static_cast<uint64_t>(n), "add", "input");
  const uint32_t push = static_cast<uint32_t>(n);
  uint32_t gx, gy;
  grid((n + kElementwiseWG - 1) / kElementwiseWG, gx, gy);
  c.dispatch(pipeline("add", 2, sizeof push), {&y, &x}, &push, sizeof push, gx, gy);
}

void Kernels::add_bias(Commands& c, Buffer& y, const Buffer& b, int64_t n, int64_t n_tok) {
  check_count(n, "add_bias", "length");
  check_count(n_tok, "add_bias", "token count");
  const uint64_t total = static_cast<uint64_t>(n) * static_cast<uint64_t>(n_tok);
  if (total > UINT32_MAX) throw Error("GPU add_bias: too many elements");
  need(y, 4 * total, "add_bias", "output");
  need(b, 4 * static_cast<uint64_t>(n), "add_bias", "bias");
  struct {
    uint32_t n, total;
  } push{static_cast<uint32_t>(n), static_cast<uint32_t>(total)};
  uint32_t gx, gy;
  grid((static_cast<int64_t>(total) + kElementwiseWG - 1) / kElementwiseWG, gx, gy);
  c.dispatch(pipeline("add_bias", 2, sizeof push), {&y, &b}, &push, sizeof push, gx, gy);
}

void Kernels::check_rope_dims(const char* kernel, int64_t head_dim, int64_t rope_dim) {
  if (rope_dim % 2 != 0 || rope_dim > head_dim)
    throw Error(std::string("GPU ") + kernel + ": rope_dim " + std::to_string(rope_dim) +
                " must be even and at most head_dim " + std::to_string(head_dim));
}

void Kernels::rope(Commands& c, Buffer& x, const Buffer& cs, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                   int64_t rope_dim, bool neox) {
  check_count(n_tok, "rope", "token count");
  check_count(n_heads, "rope", "head count");
  check_count(head_dim, "rope", "head size");
  check_count(rope_dim, "rope", "rotated dimension count");
  check_rope_dims("rope", head_dim, rope_dim);
  // Each count is below 2^32, so every product of two fits in 64 bits.
  const uint64_t heads = static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(n_heads);
  const uint64_t x_elems = heads > UINT32_MAX ? UINT64_MAX : heads * static_cast<uint64_t>(head_dim);
  const uint64_t cs_elems = static_cast<uint64_t>(n_tok) * static_cast<uint64_t>(rope_dim);
  if (x_elems > UINT32_MAX || cs_elems > UINT32_MAX) throw Error("GPU rope: too many elements");
  need(x, 4 * x_elems, "rope", "input");
  need(cs, 4 * cs_elems, "rope", "cos/sin");
  const uint64_t pairs = heads * static_cast<uint64_t>(rope_dim / 2);  // <= x_elems / 2
  struct {
    uint32_t total, n_heads, head_dim, rope_dim, neox;
  } push{static_cast<uint32_t>(pairs), static_cast<uint32_t>(n_heads), static_cast<uint32_t>(head_dim),
         static_cast<uint32_t>(rope_dim), neox ? 1u : 0u};
  uint32_t gx, gy;
  grid((static_cast<int64_t>(pairs) + kElementwiseWG - 1) / kElementwiseWG, gx, gy);
  c.dispatch(pipeline("rope", 2, sizeof push), {&x, &cs}, &push, sizeof push, gx, gy);
}

namespace {
const char* q8_shader(DType t) {
  switch (t) {
    case DType::Q4_0: return "mvq_q4_0";
    case DType::Q4_1: return "mvq_q4_1";
    case DType::Q5_0: return "mvq_q5_0";
    case DType::Q5_1: return "mvq_q5_1";
    case DType::Q8_0: return "mvq_q8_0";
    case DType::Q2_K: return "mvq_q2_k";
    case DType::Q3_K: return "mvq_q3_k";
    case DType::Q4_K: return "mvq_q4_k";
    case DType::Q5_K: return "mvq_q5_k";
    case DType::Q6_K: return "mvq_q6_k";
    default: return nullptr;
  }
}
}  // namespace

bool Kernels::supports_q8(DType t) { return q8_shader(t) != nullptr; }

uint64_t Kernels::q8_bytes(int64_t cols, int64_t n_tok) {
  return static_cast<uint64_t>(cols) / 32 * static_cast<uint64_t>(n_tok) * 40;  // 32 codes + d + sums per block
}

Kernels::Q8Scale Kernels::q8_scale(DType t) {
  switch (t) {
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return Q8Scale::Superblock256;
    default: return Q8Scale::Block32;
  }
}

void Kernels::quantize_q8(Commands& c, const Buffer& x, Buffer& xq, int64_t cols, int64_t n_tok, Q8Scale scale) {
  check_count(cols, "quantize_q8", "column count");
  check_count(n_tok, "quantize_q8", "token count");
  check_q8_output("quantize_q8", xq, cols, n_tok, scale);
  const uint64_t elems = static_cast<uint64_t>(cols) * static_cast<uint64_t>(n_tok);
  need(x, 4 * elems, "quantize_q8", "input");
  if (elems == 0) return;
  q8_blocks_dispatch(c, "quantize_q8", {&x, &xq}, static_cast<int64_t>(elems / 32), scale);
}

void Kernels::q8_blocks_dispatch(Commands& c, const char* shader, std::initializer_list<const Buffer*> buffers,
                                 int64_t n_blocks, Q8Scale scale) {
  const struct {
    uint32_t n_blocks, superblock;
  } push{static_cast<uint32_t>(n_blocks), scale == Q8Scale::Superblock256 ? 1u : 0u};
  uint32_t gx, gy;
  grid((n_blocks + kElementwiseWG - 1) / kElementwiseWG, gx, gy);
  c.dispatch(pipeline(shader, static_cast<uint32_t>(buffers.size()), sizeof push), buffers, &push, sizeof push, gx,
             gy);
}

void Kernels::matmul_q8(Commands& c, DType t, const Buffer& w, const Buffer& xq, Buffer& y, int64_t rows,
                        int64_t cols, int64_t n_tok, OutRows out) {
  const char* name = q8_shader(t);
  if (!name) throw Error(std::string("GPU matmul_q8: no int8 shader for weight type ") + type_name(t));
  if (!int8_) throw Error("GPU matmul_q8: the int8 path is off on " + dev_->info().name);
  if (n_tok < 1) throw Error("GPU matmul_q8: " + std::to_string(n_tok) + " tokens");
  const MatPush push = mat_push("matmul_q8", t, w, y, rows, cols, n_tok, out);
  if (q8_bytes(cols, n_tok) / 4 > UINT32_MAX)
    throw Error("GPU matmul_q8: " + std::to_string(n_tok) + " tokens of " + std::to_string(cols) +
                " inputs are too many elements");
  need(xq, q8_bytes(cols, n_tok), "matmul_q8", "quantized input");
  if (rows == 0) return;
  uint32_t gx, gy;
  if (n_tok > kFewTokens) {
    // Prompts: the int8 tiles (mmq_TYPE, gpu/shaders/mmq_main.glsl), 64 rows x 32 tokens per workgroup as mm_TYPE.
    const int64_t groups_z = (n_tok + kTileTokens - 1) / kTileTokens;
    if (groups_z > int64_t(dev_->info().max_workgroup_count[2]))
      throw Error("GPU matmul_q8: " + std::to_string(n_tok) + " tokens exceed the device's dispatch limit");
    grid((rows + kTileRows - 1) / kTileRows, gx, gy);
    c.dispatch(pipeline(std::string("mmq_") + (name + 4), 3, sizeof push), {&w, &xq, &y}, &push, sizeof push, gx,
               gy, static_cast<uint32_t>(groups_z));
    return;
  }
  grid(rows, gx, gy);
  c.dispatch(pipeline(name, 3, sizeof push), {&w, &xq, &y}, &push, sizeof push, gx, gy);
}

}  // namespace lokal::gpu
