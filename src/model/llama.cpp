// model/llama.cpp - the forward pass of the llama family (Llama 2/3, Mistral, TinyLlama,
// DeepSeek-R1-Distill-Llama) and qwen2 (Qwen2/2.5, DeepSeek-R1-Distill-Qwen).
//
// Per token t (B tokens in a batch, d = n_embd, H = n_head, G = n_head_kv, hd = head_dim):
//   x = token_embd[token]                                   [B, d]
//   for each layer:
//     h  = rms_norm(x) * attn_norm                          [B, d]
//     q  = h Wq (+bq), k = h Wk (+bk), v = h Wv (+bv)      [B, H*hd], [B, G*hd], [B, G*hd]
//     q, k = rope(q, k, position)                           (norm style: llama, neox: qwen2)
//     cache[pos] = k, v
//     a  = softmax(q k_cache^T / sqrt(hd), causal) v_cache  per head; head i reads kv head i/(H/G)
//     x += a Wo                                             [B, d]
//     h  = rms_norm(x) * ffn_norm
//     x += (silu(h Wgate) * (h Wup)) Wdown                  [B, n_ff] -> [B, d]
//   logits = rms_norm(x) * output_norm @ output             [B, n_vocab]
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>

#include "core/error.h"
#include "gpu/kernels.h"
#include "model/model.h"

namespace lokal {

namespace {
AttentionShape attention_shape(const ModelConfig& c) {
  AttentionShape as;
  as.n_head = static_cast<int>(c.n_head);
  as.n_head_kv = static_cast<int>(c.n_head_kv);
  as.head_dim = static_cast<int>(c.head_dim);
  as.head_dim_v = static_cast<int>(c.head_dim_v);
  as.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  return as;
}
}  // namespace

Forward::Forward(const Model& model, ThreadPool& pool, int64_t max_batch, int64_t max_ctx)
    : m_(model), c_(model.config()), pool_(pool), n_ctx_(std::max<int64_t>(1, max_ctx)),
      max_batch_(std::max<int64_t>(1, max_batch)) {
  const int64_t B = max_batch_;
  x_.resize(static_cast<size_t>(B * c_.n_embd));
  xn_.resize(static_cast<size_t>(B * std::max(c_.n_embd, c_.n_ff)));
  q_.resize(static_cast<size_t>(B * c_.n_embd_q()));
  k_.resize(static_cast<size_t>(B * c_.n_embd_k()));
  v_.resize(static_cast<size_t>(B * c_.n_embd_v()));
  attn_.resize(static_cast<size_t>(B * c_.n_head * c_.head_dim_v));
  gate_.resize(static_cast<size_t>(B * c_.n_ff));
  up_.resize(static_cast<size_t>(B * c_.n_ff));
  // Allocated once, at their final sizes, so the memory plan is exact (they would otherwise grow geometrically).
  act_.resize(model.max_act_row_bytes() * static_cast<size_t>(B));
  scores_.resize(attention_scratch_floats(attention_shape(c_), DType::F32, pool.size(), n_ctx_));
  n_pos_.resize(static_cast<size_t>(B));
  pages_.resize(static_cast<size_t>(B));
  if (model.device()) dev_ = std::make_unique<DeviceScratch>(*model.device(), c_, B, n_ctx_);
}

Forward::Forward(const Model& model, int64_t n_ctx, ThreadPool& pool, int64_t max_batch, DType cache_type_k,
                 DType cache_type_v)
    : Forward(model, pool, max_batch, n_ctx) {
  if (n_ctx <= 0) throw Error("context size must be positive, got " + std::to_string(n_ctx));
  own_kv_ = std::make_unique<KVCache>(c_, KVCache::pages_for(n_ctx), cache_type_k, cache_type_v, model.device());
  own_pages_.resize(static_cast<size_t>(own_kv_->n_pages()));
  for (size_t i = 0; i < own_pages_.size(); ++i) own_pages_[i] = static_cast<int32_t>(i);
}

size_t Forward::scratch_bytes_for(const ModelConfig& c, int64_t B, int64_t n_ctx, int n_threads, DType type_k,
                                  size_t max_act_row_bytes) {
  const int64_t floats = B * c.n_embd + B * std::max(c.n_embd, c.n_ff) + B * c.n_embd_q() + B * c.n_embd_k() +
                         B * c.n_embd_v() + B * c.n_head * c.head_dim_v + 2 * B * c.n_ff;
  // The quantized copy of a micro-batch of the widest input, in the activation type of its matrix.
  const size_t act_row =
      max_act_row_bytes != SIZE_MAX ? max_act_row_bytes : static_cast<size_t>(std::max(c.n_embd, c.n_ff)) * 4;
  return (static_cast<size_t>(floats) + attention_scratch_floats(attention_shape(c), type_k, n_threads, n_ctx)) *
             sizeof(float) +
         act_row * static_cast<size_t>(B) + static_cast<size_t>(B) * (sizeof(int64_t) + sizeof(const int32_t*));
}

size_t Forward::scratch_bytes() const {
  return (x_.size() + xn_.size() + q_.size() + k_.size() + v_.size() + attn_.size() + gate_.size() + up_.size() +
          scores_.size()) * sizeof(float) + act_.capacity() + n_pos_.size() * sizeof(int64_t) +
         pages_.size() * sizeof(const int32_t*);
}

void Forward::eval(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* logits) {
  if (n <= 0) return;
  if (!own_kv_) throw Error("Forward::eval needs the single-sequence form (with its own cache)");
  if (pos0 < 0 || pos0 + n > n_ctx_)
    throw Error("context full: " + std::to_string(pos0 + n) + " tokens do not fit in a context of " +
                std::to_string(n_ctx_));
  one_seq_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    one_seq_[static_cast<size_t>(i)] = BatchEntry{tokens[i], 0, pos0 + i, all_logits || i == n - 1};
  const SeqPages seq{own_pages_.data(), static_cast<int64_t>(own_pages_.size())};
  eval_batch(one_seq_.data(), n, &seq, 1, *own_kv_, logits);
}

void Forward::eval_batch(const BatchEntry* e, int64_t n, const SeqPages* seqs, int64_t n_seqs, KVCache& kv,
                         float* logits, float* hidden) {
  for (int64_t i = 0; i < n; ++i) {
    const BatchEntry& b = e[i];
    if (b.token < 0 || b.token >= c_.n_vocab)
      throw Error("token id " + std::to_string(b.token) + " is outside the vocabulary (0.." +
                  std::to_string(c_.n_vocab - 1) + ")");
    if (b.seq < 0 || b.seq >= n_seqs) throw Error("batch entry " + std::to_string(i) + ": unknown sequence " + std::to_string(b.seq));
    if (b.pos < 0 || b.pos >= n_ctx_ || b.pos / kKVPage >= seqs[b.seq].n_pages)
      throw Error("batch entry " + std::to_string(i) + ": position " + std::to_string(b.pos) +
                  " is outside its sequence's cache (" + std::to_string(seqs[b.seq].n_pages * kKVPage) +
                  " positions, at most " + std::to_string(n_ctx_) + ")");
    for (int64_t p = 0; p <= b.pos / kKVPage; ++p)
      if (seqs[b.seq].pages[p] < 0 || seqs[b.seq].pages[p] >= kv.n_pages())
        throw Error("batch entry " + std::to_string(i) + ": bad page " + std::to_string(seqs[b.seq].pages[p]));
  }
  for (int64_t done = 0; done < n;) {
    const int64_t nb = std::min(max_batch_, n - done);
    eval_micro(e + done, nb, seqs, kv, logits, hidden);
    if (logits)
      for (int64_t i = done; i < done + nb; ++i)
        if (e[i].logits) logits += c_.n_vocab;
    if (hidden)
      for (int64_t i = done; i < done + nb; ++i)
        if (e[i].hidden) hidden += c_.n_embd;
    done += nb;
  }
}

void Forward::eval_micro(const BatchEntry* e, int64_t n, const SeqPages* seqs, KVCache& kv, float* logits,
                         float* hidden) {
  const int64_t d = c_.n_embd, nq = c_.n_embd_q(), nk = c_.n_embd_k(), nv = c_.n_embd_v(), ff = c_.n_ff;
  RopeParams rp;
  rp.rope_dim = static_cast<int>(c_.rope_dim);
  rp.freq_base = c_.rope_freq_base;
  rp.freq_scale = c_.rope_freq_scale;
  rp.neox = c_.rope_style == RopeStyle::Neox;
  rp.freq_factors = m_.rope_freqs;
  const AttentionShape as = attention_shape(c_);
  for (int64_t t = 0; t < n; ++t) {
    n_pos_[static_cast<size_t>(t)] = e[t].pos + 1;
    pages_[static_cast<size_t>(t)] = seqs[e[t].seq].pages;
  }

  float* x = x_.data();
  per_token(n, [&](int64_t t) { get_row(m_.tok_embd, e[t].token, x + t * d); });

  // Layers [0, first) on the CPU; with GPU offload the rest on the device (eval_device, the same steps).
  const int64_t first = m_.first_device_layer();
  for (int64_t l = 0; l < first; ++l) {
    const LayerWeights& L = m_.layers[static_cast<size_t>(l)];
    // --- attention block ---
    per_token(n, [&](int64_t t) { rms_norm(x + t * d, L.attn_norm, xn_.data() + t * d, d, c_.rms_eps); });
    observe(L.wq, xn_.data(), n);
    observe(L.wk, xn_.data(), n);
    observe(L.wv, xn_.data(), n);
    matmul(pool_, L.wq, xn_.data(), n, q_.data(), nq, act_);
    matmul(pool_, L.wk, xn_.data(), n, k_.data(), nk, act_);
    matmul(pool_, L.wv, xn_.data(), n, v_.data(), nv, act_);
    // Different tokens write different cache slots (a batch never holds one position of a sequence twice).
    per_token(n, [&](int64_t t) {
      float* q = q_.data() + t * nq;
      float* k = k_.data() + t * nk;
      float* v = v_.data() + t * nv;
      if (L.bq) add_inplace(q, L.bq, nq);
      if (L.bk) add_inplace(k, L.bk, nk);
      if (L.bv) add_inplace(v, L.bv, nv);
      rope(q, static_cast<int>(c_.n_head), static_cast<int>(c_.head_dim), e[t].pos, rp);
      rope(k, static_cast<int>(c_.n_head_kv), static_cast<int>(c_.head_dim), e[t].pos, rp);
      kv.store(l, seqs[e[t].seq].pages[e[t].pos / kKVPage], e[t].pos % kKVPage, k, v);
    });
    attention_batch(pool_, as, q_.data(), n, n_pos_.data(), pages_.data(), kv.k_rows(l), kv.v_rows(l), attn_.data(),
                    scores_);
    observe(L.wo, attn_.data(), n);
    matmul(pool_, L.wo, attn_.data(), n, xn_.data(), d, act_);
    per_token(n, [&](int64_t t) { add_inplace(x + t * d, xn_.data() + t * d, d); });

    // --- feed-forward block ---
    per_token(n, [&](int64_t t) { rms_norm(x + t * d, L.ffn_norm, xn_.data() + t * d, d, c_.rms_eps); });
    observe(L.w_gate, xn_.data(), n);
    observe(L.w_up, xn_.data(), n);
    matmul(pool_, L.w_gate, xn_.data(), n, gate_.data(), ff, act_);
    matmul(pool_, L.w_up, xn_.data(), n, up_.data(), ff, act_);
    per_token(n, [&](int64_t t) { swiglu(gate_.data() + t * ff, up_.data() + t * ff, gate_.data() + t * ff, ff); });
    observe(L.w_down, gate_.data(), n);
    matmul(pool_, L.w_down, gate_.data(), n, xn_.data(), d, act_);
    per_token(n, [&](int64_t t) { add_inplace(x + t * d, xn_.data() + t * d, d); });
  }

  if (first < c_.n_layer && eval_device(e, n, seqs, kv, logits)) logits = nullptr;

  if (hidden) {  // embeddings: the normed final hidden states of the entries that want them
    int64_t n_h = 0;
    for (int64_t t = 0; t < n; ++t)
      if (e[t].hidden) rms_norm(x + t * d, m_.output_norm, hidden + (n_h++) * d, d, c_.rms_eps);
  }
  if (!logits) return;
  // The final norm of the entries whose logits are wanted, packed together, then one product with the output matrix.
  int64_t n_out = 0;
  for (int64_t t = 0; t < n; ++t)
    if (e[t].logits) {
      rms_norm(x + t * d, m_.output_norm, xn_.data() + n_out * d, d, c_.rms_eps);
      ++n_out;
    }
  if (n_out == 0) return;
  observe(m_.output, xn_.data(), n_out);
  matmul(pool_, m_.output, xn_.data(), n_out, logits, c_.n_vocab, act_);
}

}  // namespace lokal

namespace lokal {

// The offloaded layers [first, n_layer) of eval_micro on the device: the same steps as the CPU loop above, on
// device buffers, recorded into one command buffer and submitted once. The hidden state x goes up with the
// metadata the kernels need (each token's cache row, its attention length, its sequence's page table) and the
// rope angles (computed here as ops/rope computes them, so the rotation is the CPU's), and comes back at the end.
bool Forward::eval_device(const BatchEntry* e, int64_t n, const SeqPages* seqs, KVCache& kv, float* logits) {
  DeviceModel& dm = *m_.device();
  DeviceScratch& s = *dev_;
  if (!kv.device()) throw Error("GPU offload: this KV cache was made without the device's layers (internal error)");
  DeviceKV& dkv = *kv.device();
  gpu::Kernels& K = dm.kernels();
  const int64_t d = c_.n_embd, nq = c_.n_embd_q(), nk = c_.n_embd_k(), nv = c_.n_embd_v(), ff = c_.n_ff;
  const int64_t rd = c_.rope_dim;
  RopeParams rp;
  rp.rope_dim = static_cast<int>(rd);
  rp.freq_base = c_.rope_freq_base;
  rp.freq_scale = c_.rope_freq_scale;
  rp.neox = c_.rope_style == RopeStyle::Neox;
  rp.freq_factors = m_.rope_freqs;

  // Up-going staging: x [n][d] | meta | cs [n][rope_dim].
  // meta: [0, n) cache row of each token (page * 64 + slot), [n, 2n) positions its attention sees,
  //       [2n, 3n) where its sequence's page table starts in meta, then the page tables of the batch's sequences.
  auto* up = static_cast<uint8_t*>(s.up_stage.mapped());
  const uint64_t x_bytes = static_cast<uint64_t>(n * d) * 4;
  std::memcpy(up, x_.data(), x_bytes);
  auto* meta = reinterpret_cast<uint32_t*>(up + x_bytes);
  int64_t m = 3 * n;
  std::vector<std::pair<int32_t, int64_t>> seq_off;  // sequence -> start of its table in meta
  for (int64_t t = 0; t < n; ++t) {
    const SeqPages& sp = seqs[e[t].seq];
    meta[t] = static_cast<uint32_t>(sp.pages[e[t].pos / kKVPage] * kKVPage + e[t].pos % kKVPage);
    meta[n + t] = static_cast<uint32_t>(e[t].pos + 1);
    auto it = std::find_if(seq_off.begin(), seq_off.end(), [&](const auto& so) { return so.first == e[t].seq; });
    if (it == seq_off.end()) {
      // The table up to the last page any of this sequence's entries reaches.
      int64_t last = 0;
      for (int64_t u = t; u < n; ++u)
        if (e[u].seq == e[t].seq) last = std::max(last, e[u].pos / kKVPage);
      if (m + last + 1 > s.max_meta) throw Error("GPU offload: page tables exceed the device scratch (internal error)");
      seq_off.emplace_back(e[t].seq, m);
      for (int64_t p = 0; p <= last; ++p) meta[m++] = static_cast<uint32_t>(sp.pages[p]);
      it = seq_off.end() - 1;
    }
    meta[2 * n + t] = static_cast<uint32_t>(it->second);
  }
  const uint64_t meta_bytes = static_cast<uint64_t>(m) * 4;
  auto* cs = reinterpret_cast<float*>(up + x_bytes + meta_bytes);
  for (int64_t t = 0; t < n; ++t) rope_cos_sin(e[t].pos, rp, cs + t * rd, cs + t * rd + rd / 2);
  const uint64_t cs_bytes = static_cast<uint64_t>(n * rd) * 4;

  gpu::Kernels::AttnShape as;
  as.n_head = c_.n_head;
  as.n_head_kv = c_.n_head_kv;
  as.head_dim = c_.head_dim;
  as.head_dim_v = c_.head_dim_v;
  as.scale = 1.0f / std::sqrt(static_cast<float>(c_.head_dim));
  const DType tk = kv.type_k(), tv = kv.type_v();
  const int64_t rows = dkv.n_rows();
  int64_t max_n = 0;  // the most positions any token attends to (split attention's chunking)
  for (int64_t t = 0; t < n; ++t) max_n = std::max(max_n, e[t].pos + 1);
  gpu::Buffer* split = s.attn_split ? &s.attn_split : nullptr;
  const uint32_t un = static_cast<uint32_t>(n);
  // Matrix products of one input `in` (n rows of cols) into their outputs. On the int8 path (gpu/kernels.h) the
  // input of matrices of int8 types is quantized into s.xq, once per activation scaling among them (Q8_0-style for
  // Q4_0..Q8_0, Q8_K-style for the K-quants, as the CPU), and those matrices read it there (decode and prompts
  // alike); the others take the f32 path. `ready`: s.xq already holds `in` in that scaling (the kernel that wrote
  // `in` quantized it too: rms_norm_fused, swiglu_q8), so its readers go first. A barrier separates the readers of
  // one scaling from the next quantization.
  using Product = std::pair<const DeviceModel::Matrix*, gpu::Buffer*>;
  using Scale = gpu::Kernels::Q8Scale;
  auto q8 = [&](const DeviceModel::Matrix& w) { return K.int8() && gpu::Kernels::supports_q8(w.type); };
  // The scaling a kernel writing the input of `jobs` should quantize it in: the first int8 reader's, if any.
  auto first_scale = [&](std::initializer_list<const DeviceModel::Matrix*> readers) -> std::optional<Scale> {
    for (const DeviceModel::Matrix* w : readers)
      if (q8(*w)) return gpu::Kernels::q8_scale(w->type);
    return std::nullopt;
  };
  auto products = [&](gpu::Commands& cmd, const gpu::Buffer& in, int64_t cols, int64_t rows_in,
                      std::initializer_list<Product> jobs, std::optional<Scale> ready = std::nullopt) {
    for (const Product& j : jobs)
      if (!q8(*j.first)) dm.matmul(cmd, *j.first, in, nullptr, *j.second, rows_in);
    const bool sb_first = ready == Scale::Superblock256;
    const Scale order[2] = {sb_first ? Scale::Superblock256 : Scale::Block32,
                            sb_first ? Scale::Block32 : Scale::Superblock256};
    bool used = false;  // s.xq holds codes some products read
    for (Scale sc : order) {
      bool any = false;
      for (const Product& j : jobs) any = any || (q8(*j.first) && gpu::Kernels::q8_scale(j.first->type) == sc);
      if (!any) continue;
      if (sc != ready) {
        if (used) cmd.barrier();  // the previous scaling's readers are done with s.xq
        K.quantize_q8(cmd, in, s.xq, cols, rows_in, sc);
        cmd.barrier();
      }
      for (const Product& j : jobs)
        if (q8(*j.first) && gpu::Kernels::q8_scale(j.first->type) == sc)
          dm.matmul(cmd, *j.first, in, &s.xq, *j.second, rows_in);
      used = true;
    }
  };
  // rms_norm of s.x into s.xn with the residual add before it fused (x += residual) and, on the int8 path, s.xn
  // quantized for `readers`; returns the scaling quantized in.
  auto norm = [&](gpu::Commands& cmd, const gpu::Buffer* residual, const gpu::Buffer& weight,
                  std::initializer_list<const DeviceModel::Matrix*> readers) {
    const std::optional<Scale> sc = first_scale(readers);
    K.rms_norm_fused(cmd, s.x, residual, weight, s.xn, n, d, c_.rms_eps, sc ? &s.xq : nullptr,
                     sc.value_or(Scale::Block32));
    cmd.barrier();
    return sc;
  };

  auto lock = dm.lock();
  gpu::Commands cmd(dm.device(), &s.commands);
  cmd.copy(s.up_stage, s.x, x_bytes, 0, 0);
  cmd.copy(s.up_stage, s.meta, meta_bytes, x_bytes, 0);
  if (cs_bytes) cmd.copy(s.up_stage, s.cs, cs_bytes, x_bytes + meta_bytes, 0);
  cmd.barrier();
  // Each residual add is fused into the rms_norm after it (the FFN output's into the next layer's attention norm):
  // the attention output goes to s.gate, the FFN output to s.gate, and `pending` says that s.gate still has to be
  // added to s.x.
  bool pending = false;
  for (int64_t l = m_.first_device_layer(); l < c_.n_layer; ++l) {
    const DeviceModel::Layer& L = dm.layer(l);
    // --- attention block ---
    const std::optional<Scale> qa = norm(cmd, pending ? &s.gate : nullptr, L.attn_norm, {&L.wq, &L.wk, &L.wv});
    products(cmd, s.xn, d, n, {{&L.wq, &s.q}, {&L.wk, &s.k}, {&L.wv, &s.v}}, qa);
    cmd.barrier();
    if (L.bq) {
      K.add_bias(cmd, s.q, L.bq, nq, n);
      K.add_bias(cmd, s.k, L.bk, nk, n);
      K.add_bias(cmd, s.v, L.bv, nv, n);
      cmd.barrier();
    }
    // q rotated in place; k rotated on its way into the cache (rope_kv_store: the bits of rope then kv_store, no
    // barrier between), so one barrier separates the products from attention.
    if (rd > 0) {
      K.rope(cmd, s.q, s.cs, n, c_.n_head, c_.head_dim, rd, rp.neox);
      K.rope_kv_store(cmd, s.k, s.cs, c_.head_dim, rd, rp.neox, dkv.k(l), tk, rows, nk, s.meta, 0, n);
    } else {
      K.kv_store(cmd, s.k, dkv.k(l), tk, rows, nk, s.meta, 0, n);
    }
    K.kv_store(cmd, s.v, dkv.v(l), tv, rows, nv, s.meta, 0, n);
    cmd.barrier();
    K.attention(cmd, as, s.q, dkv.k(l), tk, dkv.v(l), tv, rows, s.meta, un, 2 * un, s.attn, n, split, max_n);
    cmd.barrier();
    products(cmd, s.attn, c_.n_head * c_.head_dim_v, n, {{&L.wo, &s.gate}});
    cmd.barrier();
    // --- feed-forward block ---
    const std::optional<Scale> qf = norm(cmd, &s.gate, L.ffn_norm, {&L.w_gate, &L.w_up});
    products(cmd, s.xn, d, n, {{&L.w_gate, &s.gate}, {&L.w_up, &s.up}}, qf);
    cmd.barrier();
    const std::optional<Scale> qd = first_scale({&L.w_down});
    if (qd)
      K.swiglu_q8(cmd, s.gate, s.up, s.xn, n * ff, s.xq, *qd);
    else
      K.swiglu(cmd, s.gate, s.up, s.xn, n * ff);
    cmd.barrier();
    products(cmd, s.xn, ff, n, {{&L.w_down, &s.gate}}, qd);
    cmd.barrier();
    pending = true;
  }
  if (pending) {
    K.add(cmd, s.x, s.gate, n * d);
    cmd.barrier();
  }
  cmd.copy(s.x, s.down_stage, x_bytes, 0, 0);

  // The output on the device: the rows whose logits are wanted gathered into xn, normed into gate, multiplied in
  // chunks of kLogitRows (the logits buffer's height); each chunk comes down through the staging buffer.
  int64_t n_out = 0;
  const bool dev_out = logits && dm.output_on_device();
  if (dev_out) {
    for (int64_t t = 0; t < n; ++t)
      if (e[t].logits) {
        cmd.copy(s.x, s.xn, static_cast<uint64_t>(d) * 4, static_cast<uint64_t>(t * d) * 4,
                 static_cast<uint64_t>(n_out * d) * 4);
        ++n_out;
      }
    if (n_out > 0) {
      cmd.barrier();
      K.rms_norm(cmd, s.xn, dm.output_norm(), s.gate, n_out, d, c_.rms_eps);
    }
  }
  const DeviceModel::Matrix& W = dm.output();
  const uint64_t row_logits = static_cast<uint64_t>(c_.n_vocab) * 4;
  auto chunk = [&](gpu::Commands& c, int64_t c0, int64_t r) {
    c.barrier();
    c.copy(s.gate, s.xn, static_cast<uint64_t>(r * d) * 4, static_cast<uint64_t>(c0 * d) * 4, 0);
    c.barrier();
    products(c, s.xn, W.cols, r, {{&W, &s.logits}});
    c.barrier();
    c.copy(s.logits, s.down_stage, row_logits * r, 0, x_bytes);
  };
  const int64_t lr = std::min<int64_t>(DeviceScratch::kLogitRows, s.max_batch);
  if (n_out > 0) chunk(cmd, 0, std::min(lr, n_out));
  cmd.submit_and_wait();
  const auto* down = static_cast<const uint8_t*>(s.down_stage.mapped());
  std::memcpy(x_.data(), down, x_bytes);
  if (n_out == 0) return false;
  std::memcpy(logits, down + x_bytes, row_logits * std::min(lr, n_out));
  for (int64_t c0 = lr; c0 < n_out; c0 += lr) {
    const int64_t r = std::min(lr, n_out - c0);
    gpu::Commands more(dm.device());
    chunk(more, c0, r);
    more.submit_and_wait();
    std::memcpy(logits + c0 * c_.n_vocab, down + x_bytes, row_logits * r);
  }
  return true;
}

}  // namespace lokal
