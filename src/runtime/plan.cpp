#include "runtime/plan.h"

#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/gguf.h"
#include "core/log.h"
#include "model/model.h"
#include "ops/ops.h"

namespace lokal {

namespace {

// The process without a model: the lokal binary's code and data, libstdc++/libc/PCRE2, the C++ runtime's
// heap arenas and the main thread's stack. Fitted (with kPerToken) to the measured peaks of `lokal run` on
// stories260K (512 tokens: 7.8 MiB, 2.0 MiB of it weights, KV and compute) and llama-2-tiny-random (32000 tokens).
// Refitted 2026-12-06 (+320 KiB: the binary's code grew by model validation and file-safety checks; the measured
// peaks of both models rose by 0.3-0.5 MiB beyond what the larger default batch explains). Refitted again for issue
// 14 (+448 KiB: the scheduler, KV pool, batch command and split converter; every case of tests/test_plan.cpp's PlanRss
// measured 0.45-0.6 MiB above the prediction, independent of model size).
// Refitted for issue 16 (+5.6 MiB): `lokal serve` links cpp-httplib with OpenSSL, libjwt, libsystemd and toml++, and
// every subcommand maps them at start (measured in /proc/PID/smaps of `lokal chat`: libcrypto 3.1 MiB resident,
// the others 2.4 MiB together); every PlanRss case measured 5.4-5.9 MiB above the previous prediction.
// Refitted for issue 20 (+768 KiB): the GPU layer (Vulkan loader glue, kernels, ~26 embedded SPIR-V shaders) grew the
// binary by 0.8 MiB, and after a fresh build (its pages in the page cache, mapped by fault-around) every PlanRss case
// measured 0.6-1.3 MiB above the previous prediction (a CPU run; no Vulkan library is loaded without -ngl).
constexpr uint64_t kProcessBase = (12u << 20) + (564u << 10);
// Tokenizer tables per token: the token string (std::string, 32 bytes + heap text when over 15 bytes), its
// score and type, two hash-table slots (text -> id, special-token lookup) and the piece cache.
constexpr uint64_t kPerToken = 88;
// Per BPE merge: the concatenated text plus an offset and a hash slot (the table is at most 2/3 full).
constexpr uint64_t kPerMerge = 24;
// Touched stack and thread-local buffers of each worker thread.
constexpr uint64_t kPerThread = 64u << 10;

uint64_t tokenizer_bytes(const ModelFacts& m) {
  return static_cast<uint64_t>(m.n_tokens) * kPerToken + m.token_text_bytes +
         static_cast<uint64_t>(m.n_merges) * kPerMerge + m.merge_text_bytes;
}

std::string mib(uint64_t b) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

ModelFacts ModelFacts::read(const std::string& path) {
  auto f = GGUFFile::open(path, true);
  validate_model(*f);  // model/config.h: a file run would refuse is refused here with the same message
  return from_gguf(*f, path);
}

ModelFacts ModelFacts::from_gguf(const GGUFFile& gguf, const std::string& path) {
  const GGUFFile* f = &gguf;
  ModelFacts m;
  m.path = path;
  m.cfg = ModelConfig::from_gguf(*f);
  m.file_bytes = f->file_size();
  for (const auto& t : f->tensors()) {
    m.tensor_bytes += t.nbytes;
    m.n_params += t.n_elements();
    const bool vec = t.n_dims <= 1 || t.n_elements() == t.ne[0];
    if (vec && t.type != DType::F32) m.converted_bytes += static_cast<uint64_t>(t.n_elements()) * sizeof(float);
  }
  // The matrices the forward pass multiplies with (model/llama.cpp): per layer q, k, v, output, gate, up, down, and
  // the output matrix (token_embd when it is tied).
  static const char* const kMatmul[] = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                        "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
  const bool has_output = f->find_tensor("output.weight") != nullptr;
  for (const auto& t : f->tensors()) {
    bool used = t.name == (has_output ? "output.weight" : "token_embd.weight");
    if (t.name.rfind("blk.", 0) == 0)
      for (const char* k : kMatmul) used = used || (t.name.size() > std::strlen(k) && t.name.compare(t.name.size() - std::strlen(k), std::string::npos, k) == 0);
    if (used) m.max_act_row_bytes = std::max<uint64_t>(m.max_act_row_bytes, matmul_scratch_row_bytes(t.type, t.ne[0]));
  }
  if (const GGUFValue* v = f->find("tokenizer.ggml.tokens")) {
    m.n_tokens = static_cast<int64_t>(v->arr_n);
    for (auto s : v->arr_str) m.token_text_bytes += s.size();
  }
  if (const GGUFValue* v = f->find("tokenizer.ggml.merges")) {
    m.n_merges = static_cast<int64_t>(v->arr_n);
    for (auto s : v->arr_str) m.merge_text_bytes += s.size();
  }
  m.type_label = model_file_type(gguf);  // model/config.h: the name info, bench and compare show too
  // GPU offload sizes (model/offload.cpp's DeviceModel::create: one device buffer per tensor; vectors as f32).
  auto r16 = gpu::Device::allocation_bytes;
  m.layer_gpu_bytes.assign(static_cast<size_t>(m.cfg.n_layer), 0);
  m.layer_matrix_bytes.assign(static_cast<size_t>(m.cfg.n_layer), 0);
  for (const auto& t : f->tensors()) {
    const bool vec = t.n_dims <= 1 || t.n_elements() == t.ne[0];
    if (t.name.rfind("blk.", 0) == 0) {
      const int64_t l = std::strtoll(t.name.c_str() + 4, nullptr, 10);
      if (l < 0 || l >= m.cfg.n_layer) continue;
      if (vec) {
        m.layer_gpu_bytes[static_cast<size_t>(l)] += r16(static_cast<uint64_t>(t.n_elements()) * 4);
      } else {
        m.layer_gpu_bytes[static_cast<size_t>(l)] += r16(t.nbytes);
        m.layer_matrix_bytes[static_cast<size_t>(l)] += t.nbytes;
        if (!gpu::Kernels::supports_matvec(t.type)) m.gpu_ok = false;
      }
    } else if (t.name == (has_output ? "output.weight" : "token_embd.weight")) {
      m.output_tied = !has_output;
      m.output_matrix_bytes = t.nbytes;
      m.output_gpu_bytes = r16(t.nbytes) + r16(static_cast<uint64_t>(m.cfg.n_embd) * 4);  // + the output norm
      m.output_gpu_ok = gpu::Kernels::supports_matvec(t.type);
    }
  }
  return m;
}

uint64_t process_base_bytes() { return kProcessBase; }

uint64_t runtime_overhead_bytes(const ModelFacts& m, int n_threads) {
  return kProcessBase + tokenizer_bytes(m) + static_cast<uint64_t>(std::max(1, n_threads)) * kPerThread;
}

namespace {
// -ngl with a KV cache type the device does not hold (gpu/kernels.h: f32, f16, q8_0).
Error kv_not_on_gpu(int n_gpu_layers, DType t) {
  return Error("-ngl " + std::to_string(n_gpu_layers) + ": a " + kv_type_label(t) +
               " KV cache cannot go on the GPU (its cache types are f32, f16 and q8_0: give -ctk/-ctv one of them, "
               "or no -ngl)");
}
}  // namespace

MemoryEstimate estimate_memory(const ModelFacts& m, const RunSettings& s) {
  MemoryEstimate e;
  e.weights_bytes = m.file_bytes + m.converted_bytes;
  const ModelConfig& c = m.cfg;
  const int64_t pool_positions = KVCache::pages_for(s.pool_tokens()) * kKVPage;
  e.kv_k_bytes = static_cast<uint64_t>(c.n_layer * pool_positions) * row_size(s.type_k, c.n_embd_k());
  e.kv_v_bytes = static_cast<uint64_t>(c.n_layer * pool_positions) * row_size(s.type_v, c.n_embd_v());
  // With several sequences, the pool's page table entries (runtime/kv_pool.h: ~300 bytes per page).
  const uint64_t bookkeeping = s.n_parallel > 1 ? static_cast<uint64_t>(KVCache::pages_for(s.pool_tokens())) * 320 : 0;
  e.kv_bytes = e.kv_k_bytes + e.kv_v_bytes + bookkeeping;
  const int n_par = std::max(1, s.n_parallel);
  const int64_t batch = std::max<int64_t>({int64_t{1}, std::min(s.n_batch, s.n_ctx), int64_t{n_par}});
  e.compute_bytes = Forward::scratch_bytes_for(c, batch, s.n_ctx, std::max(1, s.n_threads), s.type_k,
                                               m.max_act_row_bytes) +
                    static_cast<uint64_t>(c.n_vocab) * sizeof(float) * static_cast<uint64_t>(n_par);
  e.overhead_bytes = runtime_overhead_bytes(m, s.n_threads);
  if (s.n_gpu_layers > 0 && c.n_layer > 0) {
    // GPU offload: the last layers' matrices live on the device (their file pages are released), so does their KV.
    for (DType t : {s.type_k, s.type_v})
      if (!gpu::Kernels::supports_kv(t))
        throw kv_not_on_gpu(s.n_gpu_layers, t);
    const int64_t n = std::min<int64_t>(s.n_gpu_layers, c.n_layer);
    e.gpu_layers = n;
    e.gpu_output = n == c.n_layer && m.output_gpu_ok;
    uint64_t freed = 0;
    // Facts made without a file (tests): the tensor bytes spread evenly over the layers.
    const bool known = m.layer_gpu_bytes.size() == static_cast<size_t>(c.n_layer) &&
                       m.layer_matrix_bytes.size() == static_cast<size_t>(c.n_layer);
    const uint64_t even = m.tensor_bytes / static_cast<uint64_t>(c.n_layer + 1);
    for (int64_t l = c.n_layer - n; l < c.n_layer; ++l) {
      e.gpu_weights_bytes += known ? m.layer_gpu_bytes[static_cast<size_t>(l)] : even;
      freed += known ? m.layer_matrix_bytes[static_cast<size_t>(l)] : even;
    }
    if (e.gpu_output) {
      e.gpu_weights_bytes += m.output_gpu_bytes;
      if (!m.output_tied) freed += m.output_matrix_bytes;
    }
    e.weights_bytes -= std::min(e.weights_bytes, freed);
    const uint64_t host_kv = KVCache::bytes_for(c, s.pool_tokens(), s.type_k, s.type_v, c.n_layer - n);
    e.kv_bytes -= e.kv_k_bytes + e.kv_v_bytes - host_kv;
    e.kv_k_bytes = e.kv_k_bytes / static_cast<uint64_t>(c.n_layer) * static_cast<uint64_t>(c.n_layer - n);
    e.kv_v_bytes = e.kv_v_bytes / static_cast<uint64_t>(c.n_layer) * static_cast<uint64_t>(c.n_layer - n);
    e.gpu_kv_bytes = DeviceKV::bytes_for(c, n, KVCache::pages_for(s.pool_tokens()), s.type_k, s.type_v);
    e.gpu_compute_bytes = DeviceScratch::bytes_for(c, batch, s.n_ctx, e.gpu_output);
    e.gpu_total_bytes = e.gpu_weights_bytes + e.gpu_kv_bytes + e.gpu_compute_bytes;
    // Host side of the device step: the two staging buffers (mapped host memory) and the Vulkan driver.
    e.compute_bytes += DeviceScratch::staging_bytes_for(c, batch, s.n_ctx, e.gpu_output);
  }
  e.total_bytes = e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes;
  return e;
}

MemoryEstimate estimate_draft_memory(const ModelFacts& draft, const RunSettings& run) {
  // One drafter: a single sequence of the target's context (ModelDrafter's Forward: own cache, batch min(64, ctx)).
  RunSettings one = run;
  one.n_parallel = 1;
  one.kv_tokens = 0;
  one.n_batch = std::min<int64_t>(64, std::max<int64_t>(1, run.n_ctx));
  MemoryEstimate e = estimate_memory(draft, one);
  const auto n = static_cast<uint64_t>(std::max(1, run.n_parallel));
  for (uint64_t* per_seq : {&e.kv_bytes, &e.kv_k_bytes, &e.kv_v_bytes, &e.compute_bytes, &e.gpu_kv_bytes,
                            &e.gpu_compute_bytes})
    *per_seq *= n;
  e.overhead_bytes = tokenizer_bytes(draft);
  e.gpu_total_bytes = e.gpu_weights_bytes + e.gpu_kv_bytes + e.gpu_compute_bytes;
  e.total_bytes = e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes;
  return e;
}

namespace {

std::string settings_str(const ModelFacts& m, const RunSettings& s) {
  std::ostringstream o;
  o << m.path << " (" << m.type_label << "), ctx " << s.n_ctx << ", KV " << kv_type_label(s.type_k) << "/"
    << kv_type_label(s.type_v) << ", batch " << s.n_batch;
  if (s.n_parallel > 1 || s.kv_tokens > 0)
    o << ", " << s.n_parallel << " sequences sharing " << s.pool_tokens() << " cached tokens";
  return o.str();
}

}  // namespace

Plan make_plan(const PlanRequest& req) {
  if (req.models.empty()) throw Error("plan: no model given");
  if (req.n_gpu_layers.value_or(0) > 0)  // a fixed cache type the device does not hold, with a fixed -ngl
    for (const std::optional<DType>& t : {req.type_k, req.type_v})
      if (t && !gpu::Kernels::supports_kv(*t))
        throw kv_not_on_gpu(*req.n_gpu_layers, *t);
  Plan plan;
  plan.ram_bytes = req.ram_bytes;

  // Models in order of quality: more bits per weight first (ties: the order given).
  std::vector<size_t> order(req.models.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return req.models[a].bits_per_weight() > req.models[b].bits_per_weight();
  });

  for (const auto& m : req.models) {
    if (req.type_k && !kv_cache_type_fits(*req.type_k, m.cfg.head_dim))
      throw Error(std::string("KV cache type ") + kv_type_label(*req.type_k) + " does not fit " + m.path +
                  ": its head size " + std::to_string(m.cfg.head_dim) + " is not a multiple of the type's block");
    if (req.type_v && !kv_cache_type_fits(*req.type_v, m.cfg.head_dim_v))
      throw Error(std::string("KV cache type ") + kv_type_label(*req.type_v) + " does not fit " + m.path +
                  ": its value head size " + std::to_string(m.cfg.head_dim_v) + " is not a multiple of the type's block");
    if (req.n_ctx > 0 && req.n_ctx > m.cfg.n_ctx_train && m.cfg.n_ctx_train > 0)
      plan.notes.push_back(m.path + ": context " + std::to_string(req.n_ctx) + " exceeds the trained context of " +
                           std::to_string(m.cfg.n_ctx_train) + " tokens; quality past it is not guaranteed");
  }

  // Free KV types: f16 (llama.cpp's default), then q8_0 (close to f16: see docs/MEMORY.md), then q4_0.
  auto kv_options = [&](const ModelFacts& m, bool allow_q4) {
    std::vector<std::pair<DType, DType>> out;
    for (DType t : {DType::F16, DType::Q8_0, DType::Q4_0}) {
      if (t == DType::Q4_0 && !allow_q4) continue;
      const DType k = req.type_k.value_or(t), v = req.type_v.value_or(t);
      if (!kv_cache_type_fits(k, m.cfg.head_dim) || !kv_cache_type_fits(v, m.cfg.head_dim_v)) continue;
      if (std::find(out.begin(), out.end(), std::make_pair(k, v)) == out.end()) out.emplace_back(k, v);
    }
    return out;
  };
  auto ctx_options = [&](const ModelFacts& m) {
    std::vector<int64_t> out;
    if (req.n_ctx > 0) return std::vector<int64_t>{req.n_ctx};
    const int64_t target = m.cfg.n_ctx_train > 0 ? std::min<int64_t>(m.cfg.n_ctx_train, 4096) : 4096;
    out.push_back(target);
    for (int64_t c = target / 2; c >= req.min_ctx; c /= 2) out.push_back(c);
    return out;
  };
  auto batch_options = [&](int64_t ctx) {
    if (req.n_batch > 0) return std::vector<int64_t>{req.n_batch};
    std::vector<int64_t> out;
    for (int64_t b : {kDefaultBatchSize, int64_t{256}, int64_t{128}, int64_t{64}, int64_t{32}})
      if (b <= ctx || out.empty()) out.push_back(std::min(b, ctx));
    return out;
  };

  auto evaluate = [&](size_t mi, int64_t ctx, std::pair<DType, DType> kv, int64_t batch) {
    PlanCandidate c;
    c.model = mi;
    c.settings.n_ctx = ctx;
    c.settings.type_k = kv.first;
    c.settings.type_v = kv.second;
    c.settings.n_batch = batch;
    c.settings.n_threads = std::max(1, req.n_threads);
    c.settings.n_parallel = std::max(1, req.n_parallel);
    c.settings.kv_tokens = req.kv_tokens;
    auto estimate = [&](int ngl) {
      c.settings.n_gpu_layers = ngl;
      c.mem = estimate_memory(req.models[mi], c.settings);
      c.total_bytes = c.mem.total_bytes;
      c.gpu_bytes = c.mem.gpu_total_bytes;
      if (req.draft) {
        // The draft is offloaded with the same -ngl (its last min(N, its layers) layers; runtime/speculative.h), its
        // cache in the target's cache types (the plan's command says so). One process: the draft adds its weights,
        // a cache and compute buffers per sequence, and its tokenizer tables.
        c.draft_mem = estimate_draft_memory(*req.draft, c.settings);
        c.total_bytes += c.draft_mem.total_bytes;
        c.gpu_bytes += c.draft_mem.gpu_total_bytes;
      }
    };
    // GPU layers: fixed (-ngl), or the most that fit the VRAM budget (0 when the model or a cache type has no GPU
    // kernel: the device holds f32, f16 and q8_0 caches).
    const ModelFacts& m = req.models[mi];
    const bool kv_gpu = gpu::Kernels::supports_kv(kv.first) && gpu::Kernels::supports_kv(kv.second);
    const bool gpu_able = m.gpu_ok && (!req.draft || req.draft->gpu_ok) && kv_gpu;
    // A fixed -ngl with a cache type the device does not hold (q4_0) is no candidate: estimated on the CPU, unfit.
    const bool kv_off_gpu = req.n_gpu_layers.value_or(0) > 0 && !kv_gpu;
    if (!req.n_gpu_layers && req.vram_bytes > 0 && gpu_able) {
      // All layers (and the output) if they fit, else the most that do (device bytes grow with N), else none.
      for (int ngl = static_cast<int>(m.cfg.n_layer); ngl >= 0; --ngl) {
        estimate(ngl);
        if (ngl == 0 || c.gpu_bytes <= req.vram_bytes) break;
      }
    } else {
      estimate(kv_off_gpu ? 0 : req.n_gpu_layers.value_or(0));
    }
    c.fits = !kv_off_gpu && c.total_bytes <= req.ram_bytes && (req.vram_bytes == 0 || c.gpu_bytes <= req.vram_bytes);
    return c;
  };

  // Preference: tier 1 keeps a context of at least min(target, 2048) for every model before tier 2 shrinks it
  // further; within a tier, models by quality, then context (larger first), then KV types (f16, q8_0; q4_0 only
  // after every larger context failed), then batch (larger first).
  bool found = false;
  auto consider = [&](size_t mi, int64_t ctx, std::pair<DType, DType> kv) {
    for (int64_t b : batch_options(ctx)) {
      PlanCandidate c = evaluate(mi, ctx, kv, b);
      plan.tried.push_back(c);
      if (c.fits) {
        plan.chosen = c;
        found = true;
        return true;
      }
    }
    return false;
  };
  for (int tier = 0; tier < 2 && !found; ++tier) {
    for (size_t mi : order) {
      const ModelFacts& m = req.models[mi];
      const auto ctxs = ctx_options(m);
      const int64_t floor = std::min<int64_t>(ctxs.front(), 2048);
      for (bool q4 : {false, true}) {
        for (int64_t ctx : ctxs) {
          if ((tier == 0) != (ctx >= floor)) continue;
          const auto without_q4 = kv_options(m, false);
          for (auto kv : kv_options(m, q4)) {
            const bool new_in_pass = !q4 || std::find(without_q4.begin(), without_q4.end(), kv) == without_q4.end();
            if (new_in_pass && consider(mi, ctx, kv)) break;
          }
          if (found) break;
        }
        if (found) break;
      }
      if (found) break;
    }
  }

  if (found) {
    plan.fits = true;
    const PlanCandidate& c = plan.chosen;
    const ModelFacts& m = req.models[c.model];
    std::ostringstream r;
    r << settings_str(m, c.settings) << " needs " << mib(c.total_bytes) << " of " << mib(req.ram_bytes) << " ("
      << mib(req.ram_bytes - c.total_bytes) << " to spare)";
    if (plan.tried.size() > 1) {
      const PlanCandidate& first = plan.tried.front();
      r << "; the preferred " << settings_str(req.models[first.model], first.settings) << " would need "
        << mib(first.total_bytes);
    }
    plan.reason = r.str();
  } else {
    // Nothing fits: report the smallest candidate tried.
    const PlanCandidate* best = &plan.tried.front();
    for (const auto& c : plan.tried)
      if (c.total_bytes < best->total_bytes) best = &c;
    plan.chosen = *best;
    std::ostringstream r;
    r << "nothing fits in " << mib(req.ram_bytes) << ": the smallest option, "
      << settings_str(req.models[best->model], best->settings) << ", needs " << mib(best->total_bytes)
      << " (weights " << mib(best->mem.weights_bytes + best->draft_mem.weights_bytes) << ", KV cache "
      << mib(best->mem.kv_bytes + best->draft_mem.kv_bytes) << ")";
    plan.reason = r.str();
  }

  const PlanCandidate& c = plan.chosen;
  plan.vram_bytes = req.vram_bytes;
  if (c.mem.gpu_layers > 0) {
    const ModelFacts& m = req.models[c.model];
    std::string g = "GPU: " + std::to_string(c.mem.gpu_layers) + " of " + std::to_string(m.cfg.n_layer) + " layers" +
                    (c.mem.gpu_output ? " and the output" : "") + " (-ngl " + std::to_string(c.settings.n_gpu_layers) +
                    "): weights " + mib(c.mem.gpu_weights_bytes + c.draft_mem.gpu_weights_bytes) + ", KV cache " +
                    mib(c.mem.gpu_kv_bytes + c.draft_mem.gpu_kv_bytes) + ", compute " +
                    mib(c.mem.gpu_compute_bytes + c.draft_mem.gpu_compute_bytes) + " = " + mib(c.gpu_bytes);
    if (req.vram_bytes > 0) g += " of " + mib(req.vram_bytes) + " VRAM";
    if (req.draft) g += " (with the draft's " + std::to_string(c.draft_mem.gpu_layers) + " layers)";
    plan.notes.push_back(g);
  } else if (req.vram_bytes > 0) {
    const ModelFacts& m = req.models[c.model];
    plan.notes.push_back(
        "GPU: no layer offloaded: " +
        std::string(!m.gpu_ok ? "a weight type of " + m.path + " has no GPU kernel"
                    : !(gpu::Kernels::supports_kv(c.settings.type_k) && gpu::Kernels::supports_kv(c.settings.type_v))
                        ? "the GPU holds f32, f16 and q8_0 KV caches only"
                        : "not even one layer fits in " + mib(req.vram_bytes) + " of VRAM"));
  }
  if (req.mlock) {
    const uint64_t w = c.mem.weights_bytes + c.draft_mem.weights_bytes;
    if (req.mlock_limit_bytes != UINT64_MAX && req.mlock_limit_bytes < w)
      plan.notes.push_back("--mlock would be refused: the locked-memory limit (ulimit -l) is " +
                           mib(req.mlock_limit_bytes) + " but the weights take " + mib(w));
    else
      plan.notes.push_back("--mlock: the locked-memory limit allows the " + mib(w) + " of weights");
  }
  if (req.draft && req.draft->cfg.n_ctx_train > 0 && c.settings.n_ctx > req.draft->cfg.n_ctx_train)
    plan.notes.push_back("the draft model was trained with a context of " + std::to_string(req.draft->cfg.n_ctx_train) +
                         " tokens, less than the planned " + std::to_string(c.settings.n_ctx));
  return plan;
}

std::string kv_type_label(DType t) {
  std::string s = type_name(t);
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

uint64_t parse_byte_size(const std::string& text) {
  std::string s;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) s += ch;
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string num = s.substr(0, i);
  std::string unit = s.substr(i);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  char* end = nullptr;
  const double v = num.empty() ? -1 : std::strtod(num.c_str(), &end);
  if (num.empty() || end != num.c_str() + num.size() || !(v >= 0))
    throw Error("cannot read the size '" + text + "' (examples: 2GiB, 512M, 1.5GB, 800000000)");
  double mult = 0;
  static const std::pair<const char*, double> units[] = {
      {"", 1},           {"B", 1},           {"K", 1024.0},        {"KIB", 1024.0},   {"KB", 1e3},
      {"M", 1048576.0},  {"MIB", 1048576.0}, {"MB", 1e6},          {"G", 1073741824.0}, {"GIB", 1073741824.0},
      {"GB", 1e9},       {"T", 1099511627776.0}, {"TIB", 1099511627776.0}, {"TB", 1e12}};
  for (const auto& [u, m] : units)
    if (unit == u) mult = m;
  if (mult == 0) throw Error("unknown size unit in '" + text + "' (use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB)");
  const double bytes = v * mult;
  if (bytes > 1.8e19) throw Error("size '" + text + "' is too large");
  return static_cast<uint64_t>(std::llround(bytes));
}

uint64_t available_ram_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("MemAvailable:", 0) == 0) return std::strtoull(line.c_str() + 13, nullptr, 10) * 1024ULL;
  return 0;
}

uint64_t mlock_limit_bytes() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
  return static_cast<uint64_t>(rl.rlim_cur);
}

}  // namespace lokal
