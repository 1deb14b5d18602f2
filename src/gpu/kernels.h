// gpu/kernels.h - host side of the compute shaders in gpu/shaders/: matrix x vector for the GGUF weight types,
// rms_norm, swiglu, add. Each call records one dispatch into a Commands object (nothing runs until
// Commands::submit_and_wait); put Commands::barrier() between a kernel and the next one that reads its output.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>

#include "core/types.h"
#include "gpu/gpu.h"

namespace lokal::gpu {

// Where a matrix product's rows go in y: y[t][first + r] for r < rows, y's rows `total` long (0: the matrix's own row
// count, the whole of y).
struct OutRows {
  int64_t first = 0, total = 0;
};

class Kernels {
 public:
  // int8() starts as int8_by_default.
  explicit Kernels(std::shared_ptr<Device> dev);
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
  // How activations are scaled for weights of type t, as the CPU (ops/vec_dot) and llama.cpp's CPU backend do, so
  // that the integer sums are the CPU's: Q4_0..Q8_0 read blocks of 32 scaled by max|x| / 127 (Q8_0 activations),
  // the K-quants superblocks of 256 scaled by -(first element of largest magnitude) / 127 (Q8_K activations).
  enum class Q8Scale { Block32, Superblock256 };
  // Fused forms for a decode step's fewer dispatches and barriers, each the same bits as the kernels it replaces:
  // rms_norm with, first, x += residual (written back: the residual add of the layer before) and, after, y
  // quantized into xq for the int8 path (quantize_q8(y, scale): n a multiple of the scale's block). Either may be
  // null. Throws for a quantized output when int8() is off.
  void rms_norm_fused(Commands& c, Buffer& x, const Buffer* residual, const Buffer& weight, Buffer& y, int64_t rows,
                      int64_t n, float eps, Buffer* xq, Q8Scale scale = Q8Scale::Block32);
  // (swiglu with its output quantized: swiglu_q8, with the int8 path below.)
  // y[i] += x[i].
  void add(Commands& c, Buffer& y, const Buffer& x, int64_t n);

  // ---- batched forms for a forward pass over n_tok tokens (rows of activations are token-major) ----

  // y[t][r] = sum_c W[r][c] x[t][c] for t < n_tok, r < rows: x holds n_tok x cols f32, y n_tok x rows f32. The
  // same types and checks as matvec (matvec is n_tok = 1). Reads each weight row once per group of tokens.
  //
  // A matrix too large for one binding is multiplied in parts of rows: `out` places this part's rows in a wider y
  // (see OutRows).
  void matmul(Commands& c, DType t, const Buffer& w, const Buffer& x, Buffer& y, int64_t rows, int64_t cols,
              int64_t n_tok, OutRows out = {});
  // The few-token f32 kernel adds its threads' partial sums with subgroupAdd where the device has subgroup
  // arithmetic (mvs_TYPE), else by a shared-memory tree (mv_TYPE); LOKAL_GPU_SUBGROUP=0 forces the tree. The two
  // differ only in the order of the f32 sum.
  bool subgroup_sums() const { return subgroup_sums_; }
  void set_subgroup_sums(bool on);  // throws lokal::Error when turning it on on a device without subgroup arithmetic

  // ---- the int8 path (decode and prompts) ----
  // On devices with integer dot products and subgroup arithmetic, a product of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 or
  // Q2_K..Q6_K weights can dot int8 with int8: the activations are quantized once (quantize_q8, blocks of 32
  // int8 codes scaled as the CPU's activations for the weight type: q8_scale) and every matrix that reads them runs
  // matmul_q8 (OpSDot on four packed codes; up to kFewTokens tokens one workgroup per row, beyond that tiles of
  // 64 rows x 32 tokens, like matmul). It is on by default where the device
  // reports 4x8-bit packed dot products as accelerated; LOKAL_GPU_INT8=1 turns it on wherever the device can run it
  // (lavapipe: for tests), LOKAL_GPU_INT8=0 off.
  static constexpr int64_t kFewTokens = 8;
  static bool supports_q8(DType t);
  static bool int8_capable(const DeviceInfo& d);  // the device can run the int8 path
  static bool int8_by_default(const DeviceInfo& d);  // what int8() starts as (reads LOKAL_GPU_INT8)
  bool int8_capable() const { return int8_capable(dev_->info()); }
  bool int8() const { return int8_; }
  // Turns the path on or off (throws lokal::Error when turning it on on a device without the features).
  void set_int8(bool on);
  // Bytes quantize_q8 writes for n_tok rows of cols (cols a multiple of 32): one byte per element, 8 per block.
  static uint64_t q8_bytes(int64_t cols, int64_t n_tok);
  static Q8Scale q8_scale(DType t);
  // xq = the int8 blocks of x (n_tok x cols f32), laid out as gpu/shaders/quantize_q8.comp says (Superblock256:
  // cols a multiple of 256).
  void quantize_q8(Commands& c, const Buffer& x, Buffer& xq, int64_t cols, int64_t n_tok,
                   Q8Scale scale = Q8Scale::Block32);
  // out = swiglu(gate, up) over n elements and xq = quantize_q8(out, scale) in one dispatch (n a multiple of the
  // scale's block; the blocks are the same whatever the row length, so xq serves any matrix of n / rows columns).
  void swiglu_q8(Commands& c, const Buffer& gate, const Buffer& up, Buffer& out, int64_t n, Buffer& xq,
                 Q8Scale scale = Q8Scale::Block32);
  // matmul from xq = quantize_q8(x): the same y as matmul up to the activations' rounding. Throws for a type
  // without an int8 shader, no tokens, or when int8() is off.
  void matmul_q8(Commands& c, DType t, const Buffer& w, const Buffer& xq, Buffer& y, int64_t rows, int64_t cols,
                 int64_t n_tok, OutRows out = {});

  // y[t][i] += b[i] for t < n_tok, i < n (a bias on every token's row).
  void add_bias(Commands& c, Buffer& y, const Buffer& b, int64_t n, int64_t n_tok);
  // Rotary embedding in place: x holds n_tok rows of n_heads * head_dim f32; for each token t and head, the pairs
  // (i, i + rope_dim/2) (neox) or (2i, 2i+1) (otherwise), i < rope_dim/2, are rotated by the angle whose cosine is
  // cs[t][i] and sine cs[t][rope_dim/2 + i] (cs: n_tok x rope_dim f32, computed on the host exactly as ops/rope).
  void rope(Commands& c, Buffer& x, const Buffer& cs, int64_t n_tok, int64_t n_heads, int64_t head_dim,
            int64_t rope_dim, bool neox);

  // ---- the KV cache on the device ----
  // A cache buffer holds n_rows rows (one row = one position of one sequence: page * 64 + slot) of `width` elements
  // (n_head_kv * head_dim, head-major) in one of these layouts:
  //   F32:  float[n_rows][width]
  //   F16:  half[n_rows][width], two per 32-bit word (width even)
  //   Q8_0: int8 qs[n_rows][width] (four per word), then at byte n_rows * width: float d[n_rows][width / 32],
  //         block b of a row = elements [32 b, 32 b + 32) (width a multiple of 32); d is rounded to f16 precision
  //         and q = round(x / d) as core/quant.cpp's quantize_row_q8_0 does.
  static bool supports_kv(DType t);  // F32, F16, Q8_0
  static uint64_t kv_bytes(DType t, int64_t n_rows, int64_t width);
  // Copies rows [src_row, src_row + count) of a cache over rows [dst_row, dst_row + count) (copy-on-write of a page):
  // one copy per region of the layout (two for Q8_0: quants, scales). The ranges must not overlap.
  void kv_copy_rows(Commands& c, Buffer& cache, DType t, int64_t n_rows, int64_t width, int64_t src_row,
                    int64_t dst_row, int64_t count);
  // cache[meta[row_off + t]] = src[t] (converted) for t < n_tok; src holds n_tok x width f32.
  void kv_store(Commands& c, const Buffer& src, Buffer& cache, DType t, int64_t n_rows, int64_t width,
                const Buffer& meta, uint32_t row_off, int64_t n_tok);
  // kv_store of rope(src): the bytes of rope(src, cs, ..., head_dim, rope_dim, neox) followed by kv_store, in one
  // dispatch and without a barrier between (src itself stays unrotated). width = heads * head_dim.
  void rope_kv_store(Commands& c, const Buffer& src, const Buffer& cs, int64_t head_dim, int64_t rope_dim, bool neox,
                     Buffer& cache, DType t, int64_t n_rows, int64_t width, const Buffer& meta, uint32_t row_off,
                     int64_t n_tok);
  struct AttnShape {
    int64_t n_head = 0, n_head_kv = 0, head_dim = 0, head_dim_v = 0;
    float scale = 1.0f;
  };
  // out[t][h * head_dim_v + i] = sum_{j < n} softmax_j(scale * q[t,h] . K[row(t, j), g]) V[row(t, j), g][i],
  // g = h / (n_head / n_head_kv), n = meta[npos_off + t], row(t, j) = meta[meta[pt_off + t] + j / 64] * 64 + j % 64
  // (meta[pt_off + t] is where token t's page table starts in meta). q: n_tok x n_head*head_dim f32; K, V caches as
  // above with n_rows rows of widths n_head_kv * head_dim and n_head_kv * head_dim_v. One pass over the positions in
  // tiles with an online softmax, so any context length works.
  //
  // Split attention: a decode step has few (token, head) pairs, one workgroup each, which leaves most of a big GPU
  // idle while each walks a long context. Given a scratch buffer and max_n (no token attends to more positions),
  // attention_split may cut the contexts into chunks of positions, one workgroup per (token, head, chunk), whose
  // partial softmax sums a second kernel merges (the same result up to f32 rounding). Without a scratch buffer, or
  // when it is too small for the split chosen, one pass as above.
  struct AttnSplit {
    int64_t splits = 1;  // chunks per (token, head)
    int64_t chunk = 0;   // positions per chunk, a multiple of 64 (0: no split)
  };
  static AttnSplit attention_split(const AttnShape& s, int64_t n_tok, int64_t max_n);
  // The scratch bytes any split of up to max_tok tokens over up to max_n positions takes.
  static uint64_t attention_scratch_bytes(const AttnShape& s, int64_t max_tok, int64_t max_n);
  void attention(Commands& c, const AttnShape& s, const Buffer& q, const Buffer& k, DType tk, const Buffer& v,
                 DType tv, int64_t n_rows, const Buffer& meta, uint32_t npos_off, uint32_t pt_off, Buffer& out,
                 int64_t n_tok, Buffer* scratch = nullptr, int64_t max_n = 0);

 private:
  const Pipeline& pipeline(const std::string& name, uint32_t n_buffers, uint32_t push_bytes);
  // The push constants of the matrix shaders (mv_common.glsl, mvq_common.glsl), checked.
  struct MatPush {
    uint32_t rows, cols, row_bytes, n_tok, y_rows, y_row0;
  };
  MatPush mat_push(const char* kernel, DType t, const Buffer& w, Buffer& y, int64_t rows, int64_t cols,
                   int64_t n_tok, OutRows out) const;
  // rms_norm.comp with its optional residual and quantized output (rms_norm, rms_norm_fused).
  void norm_dispatch(Commands& c, const Buffer& x, const Buffer* residual, const Buffer& weight, Buffer& y,
                     int64_t rows, int64_t n, float eps, Buffer* xq, Q8Scale scale);
  // Throws unless xq can take quantize_q8's output for rows of cols in this scaling.
  static void check_q8_output(const char* kernel, const Buffer& xq, int64_t cols, int64_t rows, Q8Scale scale);
  // One thread per block of 32 (quantize_q8.comp, swiglu_q8.comp: push {n_blocks, superblock}, 64 per workgroup).
  void q8_blocks_dispatch(Commands& c, const char* shader, std::initializer_list<const Buffer*> buffers,
                          int64_t n_blocks, Q8Scale scale);
  // Throws unless rope_dim is even and at most head_dim (rope, rope_kv_store).
  static void check_rope_dims(const char* kernel, int64_t head_dim, int64_t rope_dim);
  // kv_store.comp, rotating the rows first when cs is given (kv_store, rope_kv_store).
  void kv_store_dispatch(Commands& c, const Buffer& src, Buffer& cache, DType t, int64_t n_rows, int64_t width,
                         const Buffer& meta, uint32_t row_off, int64_t n_tok, const Buffer* cs, int64_t head_dim,
                         int64_t rope_dim, bool neox);
  // A grid of at least `groups` workgroups in x (then y) within the device's per-dimension limit.
  void grid(int64_t groups, uint32_t& gx, uint32_t& gy) const;

  std::shared_ptr<Device> dev_;
  std::map<std::string, Pipeline> pipes_;  // compiled on first use
  bool int8_ = false;
  bool subgroup_sums_ = false;
};

}  // namespace lokal::gpu
