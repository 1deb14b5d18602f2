// tools/convert_llama2c.cpp - a llama2.c checkpoint (versions 0 and 1) and its tokenizer.bin -> GGUF (rules in
// convert.h), written like llama.cpp's convert-llama2c-to-ggml.
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/mmap.h"
#include "tools/convert_internal.h"

namespace lokal {

using namespace convert_detail;

// ---------------------------------------------------------------- llama2.c -> GGUF

ConvertResult convert_llama2c(const std::string& path, const std::string& out_gguf, const ConvertOptions& opt) {
  ConvertResult res;
  res.source_kind = "llama2c";
  res.arch = "llama";
  MappedFile f(path, true);
  const uint8_t* d = f.data();
  const size_t size = f.size();
  auto rd_i32 = [&](size_t off) {
    int32_t v;
    std::memcpy(&v, d + off, 4);
    return v;
  };
  if (size < 28) throw Error(path + ": too short for a llama2.c checkpoint (" + std::to_string(size) + " bytes)");
  int version = 0;
  size_t hdr = 28, pos = 0;
  uint32_t magic;
  std::memcpy(&magic, d, 4);
  if (magic == 0x616b3432u) {  // "ak42"
    if (size < 256) throw Error(path + ": truncated llama2.c version-1 header");
    version = rd_i32(4);
    if (version != 1)
      throw Error(path + ": llama2.c checkpoint version " + std::to_string(version) + " is not supported (only 0 = legacy and 1 = float32)");
    pos = 8;
    hdr = 256;
  }
  const int64_t dim = rd_i32(pos), hidden = rd_i32(pos + 4), n_layer = rd_i32(pos + 8), n_head = rd_i32(pos + 12),
                n_head_kv = rd_i32(pos + 16), seq_len = rd_i32(pos + 24);
  int64_t vocab = rd_i32(pos + 20);
  bool shared = vocab > 0;
  if (version == 1) shared = d[pos + 28] != 0;
  vocab = std::llabs(vocab);
  auto bad = [&](const std::string& why) -> Error {
    return Error(path + ": not a llama2.c checkpoint (" + why + ")");
  };
  for (int64_t v : {dim, hidden, n_layer, n_head, n_head_kv, vocab, seq_len})
    if (v <= 0 || v > (int64_t{1} << 24)) throw bad("header value " + std::to_string(v) + " out of range");
  if (dim % n_head || n_head % n_head_kv || (dim / n_head) % 2) throw bad("inconsistent head counts");
  const int64_t head = dim / n_head, kv_dim = head * n_head_kv;
  // Expected size (float counts).
  const uint64_t L = static_cast<uint64_t>(n_layer);
  // 128-bit: header values up to 2^24 each cannot overflow it.
  using u128 = unsigned __int128;
  u128 floats128 = static_cast<u128>(vocab) * dim + static_cast<u128>(L) * dim * 2 + static_cast<u128>(L) * dim * dim * 2 +
                   static_cast<u128>(L) * kv_dim * dim * 2 + static_cast<u128>(L) * hidden * dim * 3 + dim;
  if (version == 0) floats128 += static_cast<u128>(seq_len) * head;  // freq_cis_real + imag
  if (!shared) floats128 += static_cast<u128>(vocab) * dim;
  const u128 expect128 = hdr + floats128 * 4;
  if (expect128 > (static_cast<u128>(1) << 62)) throw bad("the header describes " + std::to_string(static_cast<double>(expect128)) + " bytes");
  const uint64_t expect = static_cast<uint64_t>(expect128);
  if (size != expect)
    throw Error(path + ": " + (size < expect ? "truncated" : "unexpected size for a") + " llama2.c checkpoint: dim=" + std::to_string(dim) +
                " hidden_dim=" + std::to_string(hidden) + " n_layers=" + std::to_string(n_layer) + " n_heads=" + std::to_string(n_head) +
                " n_kv_heads=" + std::to_string(n_head_kv) + " vocab_size=" + std::to_string(vocab) + " seq_len=" + std::to_string(seq_len) +
                " needs " + std::to_string(expect) + " bytes, the file has " + std::to_string(size));

  // Weight pointers.
  const float* base = reinterpret_cast<const float*>(d + hdr);
  size_t at = 0;  // in floats
  auto take = [&](uint64_t n) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(base + at);
    at += n;
    return p;
  };
  const uint8_t *tok = nullptr, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls = nullptr;
  if (version == 0) {
    tok = take(vocab * dim);
    rms_att = take(L * dim);
    wq = take(L * dim * dim);
    wk = take(L * kv_dim * dim);
    wv = take(L * kv_dim * dim);
    wo = take(L * dim * dim);
    rms_ffn = take(L * dim);
    w1 = take(L * hidden * dim);
    w2 = take(L * dim * hidden);
    w3 = take(L * hidden * dim);
    rms_final = take(dim);
    take(seq_len * head);
  } else {
    rms_att = take(L * dim);
    rms_ffn = take(L * dim);
    rms_final = take(dim);
    tok = take(vocab * dim);
    wq = take(L * dim * dim);
    wk = take(L * kv_dim * dim);
    wv = take(L * kv_dim * dim);
    wo = take(L * dim * dim);
    w1 = take(L * hidden * dim);
    w2 = take(L * dim * hidden);
    w3 = take(L * hidden * dim);
  }
  wcls = shared ? tok : take(vocab * dim);

  // Vocabulary.
  VocabOut v;
  std::unique_ptr<MappedFile> tf;
  if (!opt.vocab_from.empty()) {
    vocab_from_gguf(v, opt.vocab_from);
  } else if (!opt.tokenizer.empty()) {
    tf = std::make_unique<MappedFile>(opt.tokenizer, true);
    const uint8_t* t = tf->data();
    const size_t tsz = tf->size();
    size_t p = 4;
    if (tsz < 4) throw Error(opt.tokenizer + ": truncated llama2.c tokenizer");
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int64_t i = 0; i < vocab; ++i) {
      if (tsz - p < 8) throw Error(opt.tokenizer + ": truncated llama2.c tokenizer at token " + std::to_string(i) + " of " + std::to_string(vocab));
      float score;
      int32_t len;
      std::memcpy(&score, t + p, 4);
      std::memcpy(&len, t + p + 4, 4);
      p += 8;
      if (len < 0 || static_cast<size_t>(len) > tsz - p)
        throw Error(opt.tokenizer + ": token " + std::to_string(i) + " has a bad length " + std::to_string(len));
      std::string text(reinterpret_cast<const char*>(t + p), static_cast<size_t>(len));
      p += static_cast<size_t>(len);
      int32_t type = kNormal;
      if (i == 0) {
        text = "<unk>";
        type = kUnknown;
      } else if (i == 1 || i == 2) {
        text = i == 1 ? "<s>" : "</s>";
        type = kControl;
      } else if (text.empty()) {
        type = kControl;
      } else if (is_byte_token(text)) {
        type = kByte;
      }
      std::string esc;  // llama2.c stores SentencePiece's U+2581 as a space
      for (char c : text) esc += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
      tokens.push_back(std::move(esc));
      scores.push_back(score);
      types.push_back(type);
    }
    if (p != tsz)
      throw Error(opt.tokenizer + ": " + std::to_string(tsz - p) + " bytes left after " + std::to_string(vocab) +
                  " tokens (tokenizer of another vocabulary size?)");
    v.set("tokenizer.ggml.tokens", GGUFMetaValue::str_array(std::move(tokens)));
    v.set("tokenizer.ggml.scores", GGUFMetaValue::array(scores));
    v.set("tokenizer.ggml.token_type", GGUFMetaValue::array(types));
    v.set("tokenizer.ggml.model", GGUFMetaValue::str("llama"));
    v.n_tokens = vocab;
  } else {
    throw Error(path + ": a llama2.c checkpoint needs its tokenizer: --tokenizer TOKENIZER.bin or --vocab-from VOCAB.gguf");
  }
  if (v.n_tokens != vocab)
    throw Error(path + ": the checkpoint has " + std::to_string(vocab) + " tokens but the vocabulary " + std::to_string(v.n_tokens));

  GGUFWriter w;
  const bool own_vocab = opt.vocab_from.empty();
  for (auto& [k, val] : v.kv) w.set(k, val);
  w.set_str("general.architecture", "llama");
  w.set_str("general.name", opt.name.empty() ? "llama" : opt.name);
  if (own_vocab) {
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_u32("tokenizer.ggml.seperator_token_id", 0xffffffffu);
    w.set_u32("tokenizer.ggml.padding_token_id", 0xffffffffu);
  }
  w.set_u32("llama.context_length", static_cast<uint32_t>(seq_len));
  w.set_u32("llama.embedding_length", static_cast<uint32_t>(dim));
  w.set_u32("llama.feed_forward_length", static_cast<uint32_t>(hidden));
  w.set_u32("llama.attention.head_count", static_cast<uint32_t>(n_head));
  w.set_u32("llama.attention.head_count_kv", static_cast<uint32_t>(n_head_kv));
  w.set_u32("llama.block_count", static_cast<uint32_t>(n_layer));
  w.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(head));
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  const DType mat = out_type(DType::F32, 2, opt.outtype);
  if (mat != DType::F32) w.set_u32("general.file_type", file_type_of({mat}));

  // Tensors in llama.cpp's convert-llama2c-to-ggml order.
  size_t count = 3 + static_cast<size_t>(n_layer) * 9;
  TensorAdder adder{w, opt, count};
  auto mat2 = [&](const std::string& name, const uint8_t* src, int64_t cols, int64_t rows) {
    RowCopy c;
    c.src = src;
    c.to = mat;
    c.row_len = cols;
    c.n_rows = rows;
    adder.add(name, {cols, rows}, c);
  };
  auto vec1 = [&](const std::string& name, const uint8_t* src, int64_t n) {
    RowCopy c;
    c.src = src;
    c.row_len = n;
    c.n_rows = 1;
    adder.add(name, {n}, c);
  };
  const auto F = [](const uint8_t* p, uint64_t floats) { return p + floats * 4; };
  mat2("token_embd.weight", tok, dim, vocab);
  vec1("output_norm.weight", rms_final, dim);
  mat2("output.weight", wcls, dim, vocab);
  for (int64_t il = 0; il < n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    const uint64_t l = static_cast<uint64_t>(il);
    mat2(b + "attn_q.weight", F(wq, l * dim * dim), dim, dim);
    mat2(b + "attn_k.weight", F(wk, l * kv_dim * dim), dim, kv_dim);
    mat2(b + "attn_v.weight", F(wv, l * kv_dim * dim), dim, kv_dim);
    mat2(b + "attn_output.weight", F(wo, l * dim * dim), dim, dim);
    vec1(b + "attn_norm.weight", F(rms_att, l * dim), dim);
    mat2(b + "ffn_gate.weight", F(w1, l * hidden * dim), dim, hidden);
    mat2(b + "ffn_down.weight", F(w2, l * dim * hidden), hidden, dim);
    mat2(b + "ffn_up.weight", F(w3, l * hidden * dim), dim, hidden);
    vec1(b + "ffn_norm.weight", F(rms_ffn, l * dim), dim);
  }
  w.write(out_gguf);
  res.n_tensors = count;
  res.file_size = w.file_size();
  return res;
}

}  // namespace lokal
