// `lokal plan`: which of the given model files, context, KV-cache types and batch fit a RAM budget, with the
// byte breakdown of each option tried (runtime/plan.h). Exit status 0 when every budget has a fitting option,
// 1 when one does not (the numbers of the smallest option are printed).
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "model/model.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "runtime/plan.h"

namespace lokal::cli {

namespace {
struct PlanArgs {
  std::vector<std::string> models;
  std::string draft;
  std::vector<std::string> ram;
  std::string vram;
  int64_t ctx = 0;
  int64_t batch = 0;
  int threads = 0;
  int parallel = 1;
  int64_t kv_tokens = 0;
  std::string ctk, ctv;
  bool mlock = false;
  bool no_mmap = false;
  bool json = false;
  int ngl = -1;  // -1: chosen from --vram
};

std::string mib(uint64_t b) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1024.0 * 1024.0));
  return buf;
}

std::string fmt_gpu(int ngl, uint64_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "  %3d %12s", ngl, mib(bytes).c_str());
  return buf;
}

std::string base(const std::string& p) { return std::filesystem::path(p).filename().string(); }

nlohmann::ordered_json breakdown_json(const MemoryEstimate& e) {
  nlohmann::ordered_json j;
  j["weights_bytes"] = e.weights_bytes;
  j["kv_bytes"] = e.kv_bytes;
  j["kv_k_bytes"] = e.kv_k_bytes;
  j["kv_v_bytes"] = e.kv_v_bytes;
  j["compute_bytes"] = e.compute_bytes;
  j["overhead_bytes"] = e.overhead_bytes;
  j["total_bytes"] = e.total_bytes;
  j["gpu_layers"] = e.gpu_layers;
  j["gpu_output"] = e.gpu_output;
  j["gpu_weights_bytes"] = e.gpu_weights_bytes;
  j["gpu_kv_bytes"] = e.gpu_kv_bytes;
  j["gpu_compute_bytes"] = e.gpu_compute_bytes;
  j["gpu_total_bytes"] = e.gpu_total_bytes;
  return j;
}

nlohmann::ordered_json settings_json(const RunSettings& s) {
  nlohmann::ordered_json j;
  j["n_ctx"] = s.n_ctx;
  j["cache_type_k"] = kv_type_label(s.type_k);
  j["cache_type_v"] = kv_type_label(s.type_v);
  j["n_batch"] = s.n_batch;
  j["n_threads"] = s.n_threads;
  j["n_parallel"] = s.n_parallel;
  j["kv_tokens"] = KVCache::pages_for(s.pool_tokens()) * kKVPage;
  j["n_gpu_layers"] = s.n_gpu_layers;
  return j;
}

nlohmann::ordered_json plan_json(const PlanRequest& req, const Plan& p) {
  const PlanCandidate& c = p.chosen;
  nlohmann::ordered_json j;
  j["ram_bytes"] = p.ram_bytes;
  j["vram_bytes"] = req.vram_bytes;
  j["fits"] = p.fits;
  j["model"] = req.models[c.model].path;
  j["file_type"] = req.models[c.model].type_label;
  j["settings"] = settings_json(c.settings);
  // The whole process: the model's breakdown plus the draft's (if any).
  MemoryEstimate sum = c.mem;
  sum.weights_bytes += c.draft_mem.weights_bytes;
  sum.kv_bytes += c.draft_mem.kv_bytes;
  sum.kv_k_bytes += c.draft_mem.kv_k_bytes;
  sum.kv_v_bytes += c.draft_mem.kv_v_bytes;
  sum.compute_bytes += c.draft_mem.compute_bytes;
  sum.overhead_bytes += c.draft_mem.overhead_bytes;
  sum.total_bytes = c.total_bytes;
  sum.gpu_layers = c.mem.gpu_layers;
  sum.gpu_output = c.mem.gpu_output;
  sum.gpu_weights_bytes += c.draft_mem.gpu_weights_bytes;
  sum.gpu_kv_bytes += c.draft_mem.gpu_kv_bytes;
  sum.gpu_compute_bytes += c.draft_mem.gpu_compute_bytes;
  sum.gpu_total_bytes = c.gpu_bytes;
  const nlohmann::ordered_json b = breakdown_json(sum);
  for (auto it = b.begin(); it != b.end(); ++it) j[it.key()] = it.value();
  if (req.draft) {
    j["draft"] = req.draft->path;
    j["draft_breakdown"] = breakdown_json(c.draft_mem);
  }
  j["reason"] = p.reason;
  j["notes"] = p.notes;
  nlohmann::ordered_json tried = nlohmann::ordered_json::array();
  for (const auto& t : p.tried) {
    nlohmann::ordered_json o;
    o["model"] = req.models[t.model].path;
    o["settings"] = settings_json(t.settings);
    o["total_bytes"] = t.total_bytes;
    o["gpu_bytes"] = t.gpu_bytes;
    o["fits"] = t.fits;
    tried.push_back(o);
  }
  j["tried"] = tried;
  return j;
}

void print_plan(const PlanRequest& req, const Plan& p) {
  std::printf("budget: %s of RAM", mib(p.ram_bytes).c_str());
  if (req.vram_bytes) std::printf(", %s of VRAM", mib(req.vram_bytes).c_str());
  std::printf("\n");
  const bool gpu = req.vram_bytes > 0 || req.n_gpu_layers.value_or(0) > 0;
  std::printf("  %-34s %-14s %6s %-11s %5s %11s %11s %10s %10s %11s%s  %s\n", "model", "file type", "ctx", "K/V", "batch",
              "weights", "kv cache", "compute", "overhead", gpu ? "RAM total" : "total", gpu ? "  ngl    GPU total" : "",
              "fits");
  // The options tried, at their largest batch (smaller batches only change the compute column), and the choice.
  for (size_t i = 0; i < p.tried.size(); ++i) {
    const PlanCandidate& t = p.tried[i];
    const bool chosen = p.fits && i + 1 == p.tried.size();
    if (!chosen && i > 0 && p.tried[i - 1].model == t.model && p.tried[i - 1].settings.n_ctx == t.settings.n_ctx &&
        p.tried[i - 1].settings.type_k == t.settings.type_k && p.tried[i - 1].settings.type_v == t.settings.type_v)
      continue;
    const ModelFacts& m = req.models[t.model];
    const std::string kv = kv_type_label(t.settings.type_k) + "/" + kv_type_label(t.settings.type_v);
    const std::string g = gpu ? fmt_gpu(t.settings.n_gpu_layers, t.gpu_bytes) : "";
    std::printf("  %-34s %-14s %6lld %-11s %5lld %11s %11s %10s %10s %11s%s  %s\n", base(m.path).substr(0, 34).c_str(),
                m.type_label.substr(0, 14).c_str(), static_cast<long long>(t.settings.n_ctx), kv.c_str(),
                static_cast<long long>(t.settings.n_batch),
                mib(t.mem.weights_bytes + t.draft_mem.weights_bytes).c_str(),
                mib(t.mem.kv_bytes + t.draft_mem.kv_bytes).c_str(),
                mib(t.mem.compute_bytes + t.draft_mem.compute_bytes).c_str(),
                mib(t.mem.overhead_bytes + t.draft_mem.overhead_bytes).c_str(), mib(t.total_bytes).c_str(), g.c_str(),
                chosen ? "yes  <- chosen" : (t.fits ? "yes" : "no"));
  }
  const PlanCandidate& c = p.chosen;
  if (p.fits) {
    const RunSettings& s = c.settings;
    std::printf("recommendation: %s\n", p.reason.c_str());
    const int64_t cells = s.n_parallel > 1 || s.kv_tokens > 0 ? KVCache::pages_for(s.pool_tokens()) * kKVPage : s.n_ctx;
    std::printf("  kv cache: %s (%lld cells, %lld layers, %d seq%s), K (%s): %s, V (%s): %s\n", mib(c.mem.kv_bytes).c_str(),
                static_cast<long long>(cells), static_cast<long long>(req.models[c.model].cfg.n_layer), s.n_parallel,
                s.n_parallel > 1 ? "s sharing it" : "",
                kv_type_label(s.type_k).c_str(), mib(c.mem.kv_k_bytes).c_str(), kv_type_label(s.type_v).c_str(), mib(c.mem.kv_v_bytes).c_str());
    // The draft as planned: beside the target, its cache in the target's types (f16 is its default).
    std::string draft;
    if (req.draft) {
      draft = " -md " + req.draft->path;
      if (s.type_k != DType::F16) draft += " --cache-type-k-draft " + kv_type_label(s.type_k);
      if (s.type_v != DType::F16) draft += " --cache-type-v-draft " + kv_type_label(s.type_v);
    }
    const std::string ngl = s.n_gpu_layers > 0 ? " -ngl " + std::to_string(s.n_gpu_layers) : "";
    if (s.n_parallel > 1 || s.kv_tokens > 0)
      std::printf("  run it:   lokal batch -m %s -f PROMPTS.jsonl -np %d --kv-tokens %lld -c %lld -ctk %s -ctv %s -b %lld -t %d%s%s\n",
                  req.models[c.model].path.c_str(), s.n_parallel, static_cast<long long>(cells),
                  static_cast<long long>(s.n_ctx), kv_type_label(s.type_k).c_str(), kv_type_label(s.type_v).c_str(),
                  static_cast<long long>(s.n_batch), s.n_threads, ngl.c_str(), draft.c_str());
    else
      std::printf("  run it:   lokal run -m %s -c %lld -ctk %s -ctv %s -b %lld -t %d%s%s%s\n",
                  req.models[c.model].path.c_str(), static_cast<long long>(s.n_ctx), kv_type_label(s.type_k).c_str(),
                  kv_type_label(s.type_v).c_str(), static_cast<long long>(s.n_batch), s.n_threads, ngl.c_str(),
                  draft.c_str(), req.mlock ? " --mlock" : "");
  } else {
    std::printf("refused: %s\n", p.reason.c_str());
  }
  for (const auto& n : p.notes) std::printf("  note: %s\n", n.c_str());
}

int run_plan(const PlanArgs& a) {
  PlanRequest req;
  for (const auto& m : a.models) req.models.push_back(ModelFacts::read(m));
  if (!a.draft.empty()) req.draft = ModelFacts::read(a.draft);
  if (!a.vram.empty()) req.vram_bytes = parse_byte_size(a.vram);
  if (a.ngl >= 0) req.n_gpu_layers = a.ngl;
  req.n_ctx = a.ctx;
  req.n_batch = a.batch;
  req.n_parallel = a.parallel;
  req.kv_tokens = a.kv_tokens;
  req.n_threads = a.threads > 0 ? a.threads : ThreadPool::default_threads();
  if (!a.ctk.empty()) req.type_k = parse_kv_type(a.ctk, "--cache-type-k");
  if (!a.ctv.empty()) req.type_v = parse_kv_type(a.ctv, "--cache-type-v");
  req.mlock = a.mlock;
  req.mlock_limit_bytes = mlock_limit_bytes();
  (void)a.no_mmap;  // same bytes either way (see the flag's help)

  std::vector<uint64_t> budgets;
  for (const auto& r : list_items(a.ram)) budgets.push_back(parse_byte_size(r));
  if (budgets.empty()) {
    const uint64_t avail = available_ram_bytes();
    if (avail == 0) throw Error("plan: cannot read MemAvailable from /proc/meminfo; give the budget with --ram");
    budgets.push_back(avail);
    if (!a.json) std::printf("no --ram given: planning for the memory available now (MemAvailable)\n");
  }

  bool all_fit = true;
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (size_t i = 0; i < budgets.size(); ++i) {
    req.ram_bytes = budgets[i];
    const Plan p = make_plan(req);
    all_fit = all_fit && p.fits;
    if (a.json) {
      out.push_back(plan_json(req, p));
    } else {
      if (i) std::printf("\n");
      print_plan(req, p);
    }
  }
  if (a.json) std::printf("%s\n", (budgets.size() == 1 ? out[0] : out).dump(2).c_str());
  return all_fit ? 0 : 1;
}
}  // namespace

void register_plan(CLI::App& app, int* rc) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Fit model weights + KV cache + compute buffers into a RAM budget and say how (nothing is loaded)");
  cmd->add_option("-m,--model", a->models, "GGUF model file; repeat to choose among several (e.g. quantizations)")
      ->required();
  cmd->add_option("--ram", a->ram, "RAM budget, e.g. 2GiB, 1500M, 8GB; several (comma-separated) give one plan each "
                                   "(default: MemAvailable)")->check(comma_list());
  cmd->add_option("--vram", a->vram, "GPU memory budget, e.g. 12GiB: as many layers as fit go to the GPU (-ngl), "
                                     "reported with the device bytes apart from the RAM");
  cmd->add_option("--gpu-layers,--n-gpu-layers", a->ngl, "Plan for this many GPU layers instead of choosing them "
                                                        "from --vram (-ngl)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("-c,--ctx-size", a->ctx, "Context size to plan for (0: the largest that fits, up to the model's "
                                            "trained context or 4096)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--cache-type-k", a->ctk, "Fix the K cache type (default: f16, else q8_0, else q4_0)");
  cmd->add_option("--cache-type-v", a->ctv, "Fix the V cache type (default: f16, else q8_0, else q4_0)");
  cmd->add_option("-b,--batch-size", a->batch, "Fix the prompt batch (0: " + std::to_string(kDefaultBatchSize) + ", smaller if needed)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 16));
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("--parallel", a->parallel, "Sequences served together (lokal batch / serve)")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--kv-tokens", a->kv_tokens, "Tokens the shared KV cache holds for all sequences (0: ctx-size x parallel)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_option("--draft", a->draft, "A draft model (speculative decoding) that must fit too");
  cmd->add_flag("--no-mmap", a->no_mmap, "Plan for reading the weights into RAM (the same bytes as mapping them; "
                                         "mapped pages are file cache the kernel can drop, read ones are not)");
  cmd->add_flag("--mlock", a->mlock, "Check that the weights can be locked in RAM (ulimit -l)");
  cmd->add_flag("--json", a->json, "JSON: the breakdown in bytes and the chosen settings");
  cmd->callback([a, rc] { *rc = run_plan(*a); });
}

}  // namespace lokal::cli
