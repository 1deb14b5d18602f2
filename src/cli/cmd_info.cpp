// `lokal info MODEL`: architecture, hyperparameters, tokenizer, tensor types, memory needed.
// `lokal info --devices`: the Vulkan devices GPU offload can use (gpu/gpu.h), or why there are none.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "runtime/plan.h"
#include "runtime/session.h"

namespace lokal::cli {

namespace {
struct InfoArgs {
  std::string model, model_flag;  // the positional, -m (one_model: exactly one of them)
  int64_t ctx = 0;
  bool all_kv = false;
  bool devices = false;
  bool json = false;  // --devices --json
};

// What the int8 path does on the device, in words.
const char* int8_path_text(const gpu::DeviceInfo& d) {
  return gpu::Kernels::int8_by_default(d) ? "on (decode dots int8 activations with int8 weights)"
         : gpu::Kernels::int8_capable(d)  ? "off (the device's int8 dot is not accelerated; LOKAL_GPU_INT8=1 forces it)"
                                          : "off (needs integer dot products and subgroup arithmetic)";
}

// --devices --json: {"devices": [...]} with the fields of the text form in bytes and booleans, and "error" (why there
// is no device) when the list is empty.
void info_devices_json() {
  std::string why;
  const std::vector<gpu::DeviceInfo> devs = gpu::list_devices(&why);
  nlohmann::ordered_json out = {{"devices", nlohmann::ordered_json::array()}};
  for (const gpu::DeviceInfo& d : devs)
    out["devices"].push_back({{"index", d.index},
                              {"name", printable(d.name)},
                              {"type", d.type},
                              {"driver", printable(d.driver)},
                              {"vulkan", d.api_string()},
                              {"memory_bytes", d.device_local_bytes},
                              {"max_allocation_bytes", d.max_allocation_bytes},
                              {"max_binding_bytes", d.max_storage_buffer_bytes},
                              {"fp16", d.fp16},
                              {"int8_dot", d.int8_dot},
                              {"int8_dot_accelerated", d.int8_dot_accelerated},
                              {"subgroup_size", d.subgroup_size},
                              {"subgroup_arithmetic", d.subgroup_arithmetic},
                              {"int8_path", gpu::Kernels::int8_by_default(d)},
                              {"max_workgroup_invocations", d.max_workgroup_invocations}});
  if (!why.empty()) out["error"] = why;
  std::printf("%s\n", out.dump(2).c_str());
}

// One block per device; with none, the one line saying why and exit status 0: finding no GPU is an answer, not a
// failure.
void info_devices() {
  std::string why;
  const std::vector<gpu::DeviceInfo> devs = gpu::list_devices(&why);
  if (devs.empty()) {
    std::printf("%s\n", why.c_str());
    return;
  }
  for (const gpu::DeviceInfo& d : devs) {
    std::printf("device %u: %s\n", d.index, printable(d.name).c_str());
    std::printf("  type           %s\n", d.type.c_str());
    std::printf("  driver         %s (Vulkan %s)\n", printable(d.driver).c_str(), d.api_string().c_str());
    std::printf("  memory         %s device-local (largest allocation %s)\n",
                format_bytes(static_cast<double>(d.device_local_bytes)).c_str(),
                format_bytes(static_cast<double>(d.max_allocation_bytes)).c_str());
    std::printf("  fp16           %s\n", d.fp16 ? "yes" : "no");
    std::printf("  int8 dot       %s\n", d.int8_dot ? (d.int8_dot_accelerated ? "yes (accelerated)" : "yes (not accelerated)") : "no");
    std::printf("  subgroup size  %u%s\n", d.subgroup_size, d.subgroup_arithmetic ? " (arithmetic operations)" : "");
    std::printf("  int8 path      %s\n", int8_path_text(d));
    std::printf("  workgroup      up to %u x %u x %u, %u invocations\n", d.max_workgroup_size[0], d.max_workgroup_size[1],
                d.max_workgroup_size[2], d.max_workgroup_invocations);
  }
}

void info(const InfoArgs& a) {
  set_log_level(LogLevel::Warn);
  LoadOptions lo;
  lo.prefetch = false;
  auto model = Model::load(a.model, lo);
  const ModelConfig& c = model->config();
  const GGUFFile& f = model->gguf();
  const Vocab& v = model->vocab();
  std::printf("file:            %s\n", printable(a.model).c_str());
  std::printf("format:          GGUF v%u, %zu tensors, %zu metadata keys, %s\n", f.version(), f.tensors().size(),
              f.kv().size(), format_bytes(static_cast<double>(f.file_size())).c_str());
  if (!c.name.empty()) std::printf("name:            %s\n", printable(c.name).c_str());
  std::printf("architecture:    %s\n", printable(c.arch).c_str());
  std::printf("file type:       %s\n", model_file_type(f).c_str());  // the name bench, plan and compare show
  std::printf("\nhyperparameters\n");
  std::printf("  n_vocab        %lld\n", static_cast<long long>(c.n_vocab));
  std::printf("  n_ctx_train    %lld\n", static_cast<long long>(c.n_ctx_train));
  std::printf("  n_embd         %lld\n", static_cast<long long>(c.n_embd));
  std::printf("  n_layer        %lld\n", static_cast<long long>(c.n_layer));
  std::printf("  n_head         %lld\n", static_cast<long long>(c.n_head));
  std::printf("  n_head_kv      %lld%s\n", static_cast<long long>(c.n_head_kv), c.n_head_kv < c.n_head ? " (grouped-query attention)" : "");
  std::printf("  head_dim       %lld\n", static_cast<long long>(c.head_dim));
  std::printf("  n_ff           %lld\n", static_cast<long long>(c.n_ff));
  std::printf("  rms_eps        %g\n", c.rms_eps);
  std::printf("  rope           %s, dims %lld, freq_base %g, freq_scale %g%s\n",
              c.rope_style == RopeStyle::Neox ? "neox" : "normal", static_cast<long long>(c.rope_dim), c.rope_freq_base,
              c.rope_freq_scale, model->rope_freqs ? ", with per-dim frequency factors" : "");
  std::printf("  output         %s\n", model->tied_output ? "tied to token_embd" : "separate output.weight");
  std::printf("  q/k/v bias     %s\n", model->layers.empty() || !model->layers[0].bq ? "no" : "yes");

  std::printf("\ntokenizer\n");
  std::printf("  model          %s%s%s\n", printable(v.model_name()).c_str(), v.pre_name().empty() ? "" : ", pre-tokenizer ",
              printable(v.pre_name()).c_str());
  std::printf("  tokens         %d%s\n", v.n_tokens(),
              v.n_merges() ? (", " + std::to_string(v.n_merges()) + " merges").c_str() : "");
  auto tok = [&](int32_t id) { return id < 0 ? std::string("none") : std::to_string(id) + " '" + printable(v.token_text(id)) + "'"; };
  std::printf("  bos            %s%s\n", tok(v.bos()).c_str(), v.add_bos() ? " (added)" : "");
  std::printf("  eos            %s\n", tok(v.eos()).c_str());
  if (v.eot() >= 0) std::printf("  eot            %s\n", tok(v.eot()).c_str());
  std::printf("  chat template  %s\n", f.has("tokenizer.chat_template") ? "yes" : "no");

  std::printf("\ntensors by type\n");
  std::map<std::string, std::pair<int, size_t>> by_type;
  int64_t n_params = 0;
  for (const auto& t : f.tensors()) {
    auto& e = by_type[type_name(t.type)];
    e.first++;
    e.second += t.nbytes;
    n_params += t.n_elements();
  }
  for (const auto& [name, e] : by_type)
    std::printf("  %-8s %5d tensors  %12s\n", name.c_str(), e.first, format_bytes(static_cast<double>(e.second)).c_str());
  std::printf("  parameters     %lld (%.2f M), %.2f bits per weight\n", static_cast<long long>(n_params), n_params / 1e6,
              8.0 * static_cast<double>(model->weight_bytes()) / static_cast<double>(n_params));

  // The same prediction as `lokal plan` (runtime/plan.h) for run's defaults at this context.
  RunSettings rs;
  rs.n_ctx = a.ctx > 0 ? a.ctx : std::min<int64_t>(c.n_ctx_train, 4096);
  rs.n_threads = ThreadPool::default_threads();
  const MemoryEstimate e = estimate_memory(ModelFacts::from_gguf(f, a.model), rs);
  std::printf("\nmemory at context %lld (lokal run's defaults; see lokal plan)\n", static_cast<long long>(rs.n_ctx));
  std::printf("  weights        %s (memory-mapped, paged in at load)\n", format_bytes(static_cast<double>(e.weights_bytes)).c_str());
  std::printf("  kv cache       %s (f16, %lld layers x %lld cells)\n", format_bytes(static_cast<double>(e.kv_bytes)).c_str(),
              static_cast<long long>(c.n_layer), static_cast<long long>(rs.n_ctx));
  std::printf("  compute        %s (batch %lld)\n", format_bytes(static_cast<double>(e.compute_bytes)).c_str(),
              static_cast<long long>(rs.n_batch));
  std::printf("  overhead       %s (process, tokenizer, threads)\n", format_bytes(static_cast<double>(e.overhead_bytes)).c_str());
  std::printf("  total          %s\n", format_bytes(static_cast<double>(e.total_bytes)).c_str());

  if (a.all_kv) {
    std::printf("\nmetadata\n");
    for (const auto& [k, val] : f.kv())
      std::printf("  %-40s %s\n", printable(k).c_str(), printable(val.to_string(80)).c_str());
  }
}
}  // namespace

void register_info(CLI::App& app, int* rc) {
  auto a = std::make_shared<InfoArgs>();
  CLI::App* cmd = app.add_subcommand("info", "Show a model's architecture, tokenizer, tensors and memory needs");
  cmd->add_option("model", a->model, "GGUF model file")->type_name("[-m] MODEL.gguf");
  cmd->add_option("-m,--model", a->model_flag, "GGUF model file (instead of the positional)");
  cmd->add_option("-c,--ctx-size", a->ctx, "Context size for the memory estimate (0: model's, max 4096)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_flag("--metadata", a->all_kv, "Also list every metadata key");
  cmd->add_flag("--devices", a->devices, "List the Vulkan GPU devices instead (no model needed)");
  cmd->add_flag("--json", a->json, "With --devices: the list as JSON (bytes, booleans; \"error\" when there is none)");
  cmd->callback([a, rc] {
    if (a->devices) {
      if (!a->model.empty() || !a->model_flag.empty())
        throw CLI::ParseError("info: --devices lists GPUs and takes no model", 2);
      if (a->json) info_devices_json();
      else info_devices();
      *rc = 0;
      return;
    }
    if (a->json) throw CLI::ParseError("info: --json goes with --devices (a model's information is text)", 2);
    a->model = one_model("info", a->model_flag, a->model);
    info(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
