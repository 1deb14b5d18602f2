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

#include "core/error.h"
#include "model/model.h"

namespace lokal {

Forward::Forward(const Model& model, int64_t n_ctx, ThreadPool& pool, int64_t max_batch, DType cache_type_k,
                 DType cache_type_v)
    : m_(model),
      c_(model.config()),
      pool_(pool),
      kv_(model.config(), n_ctx, cache_type_k, cache_type_v),
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
  // Allocated once, at its final size, so the memory plan is exact (matmul would otherwise grow it geometrically).
  act_.resize(model.max_act_row_bytes() * static_cast<size_t>(B));
}

size_t Forward::scratch_bytes_for(const ModelConfig& c, int64_t B, int64_t n_ctx, int n_threads, DType type_k,
                                  size_t max_act_row_bytes) {
  (void)n_ctx;  // attention works in fixed-size tiles: its scratch does not grow with the context
  AttentionShape as;
  as.n_head = static_cast<int>(c.n_head);
  as.n_head_kv = static_cast<int>(c.n_head_kv);
  as.head_dim = static_cast<int>(c.head_dim);
  as.head_dim_v = static_cast<int>(c.head_dim_v);
  const int64_t floats = B * c.n_embd + B * std::max(c.n_embd, c.n_ff) + B * c.n_embd_q() + B * c.n_embd_k() +
                         B * c.n_embd_v() + B * c.n_head * c.head_dim_v + 2 * B * c.n_ff;
  // The quantized copy of a micro-batch of the widest input, in the activation type of its matrix.
  const size_t act_row =
      max_act_row_bytes != SIZE_MAX ? max_act_row_bytes : static_cast<size_t>(std::max(c.n_embd, c.n_ff)) * 4;
  return (static_cast<size_t>(floats) + attention_scratch_floats(as, type_k, n_threads)) * sizeof(float) +
         act_row * static_cast<size_t>(B);
}

size_t Forward::scratch_bytes() const {
  return (x_.size() + xn_.size() + q_.size() + k_.size() + v_.size() + attn_.size() + gate_.size() + up_.size() +
          scores_.size()) * sizeof(float) + act_.capacity();
}

void Forward::eval(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* logits) {
  if (n <= 0) return;
  if (pos0 < 0 || pos0 + n > kv_.n_ctx())
    throw Error("context full: " + std::to_string(pos0 + n) + " tokens do not fit in a context of " +
                std::to_string(kv_.n_ctx()));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c_.n_vocab)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                  std::to_string(c_.n_vocab - 1) + ")");
  for (int64_t done = 0; done < n; done += max_batch_) {
    const int64_t nb = std::min(max_batch_, n - done);
    const bool last = done + nb == n;
    float* out = nullptr;
    if (all_logits) out = logits + done * c_.n_vocab;
    else if (last) out = logits;
    eval_batch(tokens + done, nb, pos0 + done, all_logits, out);
  }
}

void Forward::attention(int64_t layer, int64_t n, int64_t pos0) {
  AttentionShape as;
  as.n_head = static_cast<int>(c_.n_head);
  as.n_head_kv = static_cast<int>(c_.n_head_kv);
  as.head_dim = static_cast<int>(c_.head_dim);
  as.head_dim_v = static_cast<int>(c_.head_dim_v);
  as.scale = 1.0f / std::sqrt(static_cast<float>(c_.head_dim));
  lokal::attention(pool_, as, q_.data(), n, pos0, kv_.k_rows(layer), kv_.v_rows(layer), attn_.data(), scores_);
}

void Forward::eval_batch(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* logits) {
  const int64_t d = c_.n_embd, nq = c_.n_embd_q(), nk = c_.n_embd_k(), nv = c_.n_embd_v(), ff = c_.n_ff;
  RopeParams rp;
  rp.rope_dim = static_cast<int>(c_.rope_dim);
  rp.freq_base = c_.rope_freq_base;
  rp.freq_scale = c_.rope_freq_scale;
  rp.neox = c_.rope_style == RopeStyle::Neox;
  rp.freq_factors = m_.rope_freqs;

  float* x = x_.data();
  for (int64_t t = 0; t < n; ++t) get_row(m_.tok_embd, tokens[t], x + t * d);

  for (int64_t l = 0; l < c_.n_layer; ++l) {
    const LayerWeights& L = m_.layers[static_cast<size_t>(l)];
    // --- attention block ---
    for (int64_t t = 0; t < n; ++t) rms_norm(x + t * d, L.attn_norm, xn_.data() + t * d, d, c_.rms_eps);
    observe(L.wq, xn_.data(), n);
    observe(L.wk, xn_.data(), n);
    observe(L.wv, xn_.data(), n);
    matmul(pool_, L.wq, xn_.data(), n, q_.data(), nq, act_);
    matmul(pool_, L.wk, xn_.data(), n, k_.data(), nk, act_);
    matmul(pool_, L.wv, xn_.data(), n, v_.data(), nv, act_);
    for (int64_t t = 0; t < n; ++t) {
      float* q = q_.data() + t * nq;
      float* k = k_.data() + t * nk;
      float* v = v_.data() + t * nv;
      if (L.bq) add_inplace(q, L.bq, nq);
      if (L.bk) add_inplace(k, L.bk, nk);
      if (L.bv) add_inplace(v, L.bv, nv);
      rope(q, static_cast<int>(c_.n_head), static_cast<int>(c_.head_dim), pos0 + t, rp);
      rope(k, static_cast<int>(c_.n_head_kv), static_cast<int>(c_.head_dim), pos0 + t, rp);
      kv_.store(l, pos0 + t, k, v);
    }
    attention(l, n, pos0);
    observe(L.wo, attn_.data(), n);
    matmul(pool_, L.wo, attn_.data(), n, xn_.data(), d, act_);
    for (int64_t t = 0; t < n; ++t) add_inplace(x + t * d, xn_.data() + t * d, d);

    // --- feed-forward block ---
    for (int64_t t = 0; t < n; ++t) rms_norm(x + t * d, L.ffn_norm, xn_.data() + t * d, d, c_.rms_eps);
    observe(L.w_gate, xn_.data(), n);
    observe(L.w_up, xn_.data(), n);
    matmul(pool_, L.w_gate, xn_.data(), n, gate_.data(), ff, act_);
    matmul(pool_, L.w_up, xn_.data(), n, up_.data(), ff, act_);
    for (int64_t t = 0; t < n; ++t) swiglu(gate_.data() + t * ff, up_.data() + t * ff, gate_.data() + t * ff, ff);
    observe(L.w_down, gate_.data(), n);
    matmul(pool_, L.w_down, gate_.data(), n, xn_.data(), d, act_);
    for (int64_t t = 0; t < n; ++t) add_inplace(x + t * d, xn_.data() + t * d, d);
  }

  if (!logits) return;
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t n_out = n - first;
  for (int64_t t = first; t < n; ++t) rms_norm(x + t * d, m_.output_norm, xn_.data() + (t - first) * d, d, c_.rms_eps);
  observe(m_.output, xn_.data(), n_out);
  matmul(pool_, m_.output, xn_.data(), n_out, logits, c_.n_vocab, act_);
}

}  // namespace lokal
