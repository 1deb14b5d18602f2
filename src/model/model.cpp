#include "model/model.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "core/quant.h"
#include "ops/packed.h"

namespace lokal {

// Presence, shape and type of every tensor were checked by ModelConfig::from_gguf (model/config.h) before these
// run: they only look tensors up (an optional one may be absent).
WeightView Model::matrix(const std::string& name, int64_t cols, int64_t rows) {
  const GGUFTensorInfo* t = gguf_->find_tensor(name);
  if (!t) return {};
  WeightView w;
  w.type = t->type;
  w.cols = cols;
  w.rows = rows;
  w.row_bytes = row_size(t->type, cols);
  w.data = t->data;
  return w;
}

const float* Model::vector(const std::string& name, int64_t n) {
  const GGUFTensorInfo* t = gguf_->find_tensor(name);
  if (!t) return nullptr;
  if (t->type == DType::F32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0)
    return reinterpret_cast<const float*>(t->data);
  owned_.emplace_back(new float[static_cast<size_t>(n)]);
  dequantize_row(t->type, t->data, owned_.back().get(), n);
  return owned_.back().get();
}

void Model::repack_weights() {
  MappedFile* mf = gguf_->mapped();
  if (!mf) return;
  std::vector<WeightView*> todo;
  // Offloaded layers' matrices stay as in the file (the device has them; the CPU never reads them again).
  for (int64_t l = 0; l < first_device_layer(); ++l) {
    LayerWeights& L = layers[static_cast<size_t>(l)];
    for (WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) todo.push_back(w);
  }
  // tied: the same bytes as tok_embd, whose rows get_row then unpacks
  if (!(device_ && device_->output_on_device())) todo.push_back(&output);
  std::vector<WeightView*> go;
  for (WeightView* w : todo)
    if (w->data && pack_worthwhile(w->type, w->rows, w->cols)) go.push_back(w);
  // The byte range holding every matrix to pack is made writable once (core/mmap.h: a private copy
  // in huge pages), then each matrix is rewritten group by group in place, matrices spread over threads.
  // Decode streams every matrix once per token, and a file mapping is mostly 4 KiB pages (a TLB miss
  // per page), so when huge pages are available the range spans every matrix, packed or not (F16,
  // BF16, Q6_K, ... models too). Same bytes, same RSS; costs load time (fresh huge pages fault in).
  // Not with GPU offload: the range would copy the offloaded matrices back into memory.
  const bool huge = mf->is_mapped() && huge_pages_enabled() && !device_;
  if (go.empty() && !huge) return;
  size_t lo = SIZE_MAX, hi = 0;
  for (WeightView* w : huge ? todo : go) {
    if (!w->data) continue;
    const size_t off = static_cast<size_t>(w->data - mf->data());
    lo = std::min(lo, off);
    hi = std::max(hi, off + w->row_bytes * static_cast<size_t>(w->rows));
  }
  if (lo >= hi) return;
  uint8_t* base = mf->writable(lo, hi - lo) - lo;
  if (go.empty()) return;
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::atomic<bool> failed{false};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < go.size();) {
      WeightView& w = *go[i];
      try {
        pack_matrix_inplace(w.type, w.rows, w.cols, base + static_cast<size_t>(w.data - mf->data()));
      } catch (...) {
        if (!failed.exchange(true)) err = std::current_exception();
        return;
      }
    }
  };
  const unsigned nth = std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
  std::vector<std::thread> ts;
  for (unsigned t = 1; t < nth; ++t) ts.emplace_back(work);
  work();
  for (auto& t : ts) t.join();
  if (err) std::rethrow_exception(err);
  for (WeightView* w : go) {
    w->packed = true;
    ++packed_tensors_;
    packed_bytes_ += w->row_bytes * static_cast<size_t>(w->rows);
  }
  if (tied_output) tok_embd.packed = output.packed;
}

std::unique_ptr<Model> Model::load(const std::string& path, const LoadOptions& opt) {
  return load(GGUFFile::open(path, opt.use_mmap), opt);
}

std::unique_ptr<Model> Model::load(std::unique_ptr<GGUFFile> file, const LoadOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string path = file->name();
  if (!opt.use_mmap && file->mapped() && file->mapped()->is_mapped()) {
    file.reset();  // read into memory instead
    file = GGUFFile::open(path, false);
  }
  std::unique_ptr<Model> m(new Model());
  m->gguf_ = std::move(file);
  const GGUFFile& f = *m->gguf_;
  m->cfg_ = ModelConfig::from_gguf(f);  // validates every tensor used below and the tokenizer's size
  const ModelConfig& c = m->cfg_;
  m->vocab_ = Vocab::from_gguf(f);
  for (const auto& t : f.tensors()) m->weight_bytes_ += t.nbytes;

  m->tok_embd = m->matrix("token_embd.weight", c.n_embd, c.n_vocab);
  m->output_norm = m->vector("output_norm.weight", c.n_embd);
  m->output = m->matrix("output.weight", c.n_embd, c.n_vocab);
  if (!m->output.data) {
    m->output = m->tok_embd;
    m->tied_output = true;
  }
  m->rope_freqs = m->vector("rope_freqs.weight", c.rope_dim / 2);

  m->layers.resize(static_cast<size_t>(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = m->layers[static_cast<size_t>(l)];
    L.attn_norm = m->vector(p + "attn_norm.weight", c.n_embd);
    L.wq = m->matrix(p + "attn_q.weight", c.n_embd, c.n_embd_q());
    L.wk = m->matrix(p + "attn_k.weight", c.n_embd, c.n_embd_k());
    L.wv = m->matrix(p + "attn_v.weight", c.n_embd, c.n_embd_v());
    L.wo = m->matrix(p + "attn_output.weight", c.n_head * c.head_dim_v, c.n_embd);
    L.bq = m->vector(p + "attn_q.bias", c.n_embd_q());
    L.bk = m->vector(p + "attn_k.bias", c.n_embd_k());
    L.bv = m->vector(p + "attn_v.bias", c.n_embd_v());
    L.ffn_norm = m->vector(p + "ffn_norm.weight", c.n_embd);
    L.w_gate = m->matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff);
    L.w_up = m->matrix(p + "ffn_up.weight", c.n_embd, c.n_ff);
    L.w_down = m->matrix(p + "ffn_down.weight", c.n_ff, c.n_embd);
  }

  auto act = [&](const WeightView& w) { m->max_act_row_ = std::max(m->max_act_row_, matmul_scratch_row_bytes(w.type, w.cols)); };
  act(m->output);
  for (const LayerWeights& L : m->layers)
    for (const WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) act(*w);

  // GPU offload: the device gets the file's layouts, so it uploads before the CPU repacks anything.
  if (opt.offload.n_gpu_layers > 0) m->device_ = DeviceModel::create(*m, opt.offload);
  // Packed matrices first (their pages are faulted in as private copies), then the rest of the file.
  if (opt.repack) m->repack_weights();
  if (const MappedFile* mf = f.mapped()) {
    if (opt.prefetch && mf->is_mapped()) {
      // Everything but what went to the GPU.
      std::vector<std::pair<size_t, size_t>> skip = m->device_ ? m->device_->file_ranges() : decltype(skip){};
      std::sort(skip.begin(), skip.end());
      size_t at = 0;
      for (const auto& [b, e] : skip) {
        if (b > at) mf->prefetch(at, b - at);
        at = std::max(at, e);
      }
      if (at < f.file_size()) mf->prefetch(at, f.file_size() - at);
    }
  }
  if (opt.mlock) {
    std::string why;
    if (auto* mf = const_cast<MappedFile*>(f.mapped()); mf && mf->lock(&why)) {
      m->mlocked_ = true;
    } else {
      LOKAL_WARN("--mlock: could not lock %.1f MiB of model memory (%s); raise 'ulimit -l' or run without --mlock",
                 static_cast<double>(f.file_size()) / (1024.0 * 1024.0), why.c_str());
    }
  }
  m->load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}


size_t KVCache::bytes_for(const ModelConfig& cfg, int64_t n_tokens, DType type_k, DType type_v, int64_t n_layers) {
  if (n_layers < 0) n_layers = cfg.n_layer;
  return static_cast<size_t>(n_layers * pages_for(n_tokens) * kKVPage) *
         (row_size(type_k, cfg.head_dim) * static_cast<size_t>(cfg.n_head_kv) +
          row_size(type_v, cfg.head_dim_v) * static_cast<size_t>(cfg.n_head_kv));
}

KVCache::KVCache(const ModelConfig& cfg, int64_t n_pages, DType type_k, DType type_v, DeviceModel* dev)
    : n_pages_(n_pages), n_head_kv_(cfg.n_head_kv),
      head_dim_k_(cfg.head_dim), head_dim_v_(cfg.head_dim_v), type_k_(type_k), type_v_(type_v) {
  if (n_pages <= 0) throw Error("KV cache size must be positive, got " + std::to_string(n_pages) + " pages");
  check_kv_cache_type(type_k, cfg.head_dim);
  check_kv_cache_type(type_v, cfg.head_dim_v);
  seg_k_ = row_size(type_k, head_dim_k_);
  seg_v_ = row_size(type_v, head_dim_v_);
  layer_k_ = seg_k_ * kKVPage * static_cast<size_t>(n_head_kv_);
  layer_v_ = seg_v_ * kKVPage * static_cast<size_t>(n_head_kv_);
  const int64_t host_layers = dev ? dev->first_layer() : cfg.n_layer;
  page_k_ = layer_k_ * static_cast<size_t>(host_layers);
  page_v_ = layer_v_ * static_cast<size_t>(host_layers);
  if (host_layers > 0) {
    k_ = AnonBuffer(page_k_ * static_cast<size_t>(n_pages));
    v_ = AnonBuffer(page_v_ * static_cast<size_t>(n_pages));
  }
  if (dev) dev_ = std::make_unique<DeviceKV>(*dev, cfg, n_pages, type_k, type_v);
}

void KVCache::store(int64_t layer, int64_t page, int64_t slot, const float* k, const float* v) {
  uint8_t* kp = k_.data() + static_cast<size_t>(page) * page_k_ + static_cast<size_t>(layer) * layer_k_ +
                static_cast<size_t>(slot) * seg_k_;
  uint8_t* vp = v_.data() + static_cast<size_t>(page) * page_v_ + static_cast<size_t>(layer) * layer_v_ +
                static_cast<size_t>(slot) * seg_v_;
  for (int64_t g = 0; g < n_head_kv_; ++g) {
    quantize_row(type_k_, k + g * head_dim_k_, kp + static_cast<size_t>(g) * seg_k_ * kKVPage, head_dim_k_);
    quantize_row(type_v_, v + g * head_dim_v_, vp + static_cast<size_t>(g) * seg_v_ * kKVPage, head_dim_v_);
  }
}

void KVCache::copy_page(int64_t dst, int64_t src) {
  if (dst == src) return;
  if (dev_) dev_->copy_page(dst, src);
  if (page_k_ == 0) return;
  std::memcpy(k_.data() + static_cast<size_t>(dst) * page_k_, k_.data() + static_cast<size_t>(src) * page_k_, page_k_);
  std::memcpy(v_.data() + static_cast<size_t>(dst) * page_v_, v_.data() + static_cast<size_t>(src) * page_v_, page_v_);
}

}  // namespace lokal
