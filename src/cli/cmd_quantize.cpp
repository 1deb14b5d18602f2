// `lokal quantize IN.gguf OUT.gguf TYPE`: llama-quantize's file types and per-tensor mixes
// (tools/quantize.h). Progress on stderr, one line per tensor; the summary (or, with --dry-run,
// the plan) on stdout.
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/threadpool.h"
#include "eval/imatrix.h"
#include "tools/quantize.h"

namespace lokal::cli {

namespace {

struct QuantizeArgs {
  std::string input, output, type, imatrix, covariance, method = "auto";
  float gptq_damp = 0.01f;
  std::string model;              // -m IN.gguf (then the positionals are OUT.gguf TYPE)
  std::vector<std::string> args;  // the positionals: IN.gguf OUT.gguf TYPE, or OUT.gguf TYPE after -m
  int threads = 0;
  bool allow_requantize = false;
  bool keep_output_f16 = false;
  bool dry_run = false;
  bool pure = false;
};

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

std::string counts_str(const std::map<DType, int>& counts) {
  std::string s;
  for (const auto& [t, n] : counts) s += (s.empty() ? "" : ", ") + std::string(type_name(t)) + " " + std::to_string(n);
  return s;
}

size_t name_width(const QuantizePlan& plan) {
  size_t w = 0;
  for (const auto& t : plan.tensors) w = std::max(w, t.name.size());
  return w;
}

// "[ 12/201] blk.3.ffn_up.weight  F32 -> Q4_K  [2048, 5632]  12.30 MiB -> 3.09 MiB"
void print_tensor_line(FILE* f, size_t index, size_t count, const TensorPlan& t, size_t width, double seconds) {
  const int digits = static_cast<int>(std::to_string(count).size());
  std::string types = std::string(type_name(t.from)) + " -> " + type_name(t.to);
  if (!t.converted()) types = std::string(type_name(t.from)) + " (copy)";
  std::fprintf(f, "[%*zu/%zu] %-*s  %-13s %-14s %10s -> %-10s", digits, index + 1, count, static_cast<int>(width),
               printable(t.name).c_str(), types.c_str(), shape_str(t.ne).c_str(), format_bytes(static_cast<double>(t.bytes_in)).c_str(),
               format_bytes(static_cast<double>(t.bytes_out)).c_str());
  if (seconds >= 0) std::fprintf(f, " %7.1f ms", seconds * 1e3);
  if (!t.fallback.empty()) std::fprintf(f, "  (fallback)");
  if (t.requantize) std::fprintf(f, "  (requantized)");
  std::fputc('\n', f);
}

void print_sizes(const QuantizePlan& p) {
  std::printf("  size          %s -> %s of tensor data (file %s -> %s)\n", format_bytes(static_cast<double>(p.bytes_in)).c_str(),
              format_bytes(static_cast<double>(p.bytes_out)).c_str(), format_bytes(static_cast<double>(p.file_size_in)).c_str(),
              format_bytes(static_cast<double>(p.file_size_out)).c_str());
  std::printf("  bits/weight   %.2f -> %.2f (%llu weights)\n", p.bpw_in(), p.bpw_out(),
              static_cast<unsigned long long>(p.n_elements));
  std::printf("  tensors       %s -> %s\n", counts_str(p.count_in).c_str(), counts_str(p.count_out).c_str());
}

void run(const QuantizeArgs& a) {
  auto ft = find_quant_file_type(a.type);
  if (!ft) throw Error("unknown quantization type '" + a.type + "'; valid types: " + quant_file_type_list());

  QuantizeOptions opt;
  opt.file_type = *ft;
  opt.n_threads = a.threads > 0 ? a.threads : ThreadPool::default_threads();
  opt.allow_requantize = a.allow_requantize;
  opt.keep_output_f16 = a.keep_output_f16;
  opt.pure = a.pure;
  opt.dry_run = a.dry_run;
  const auto method = parse_quant_method(a.method);
  if (!method)
    throw Error("unknown --quant-method '" + a.method + "'; valid methods: auto, gptq, search, rtn");
  opt.method = *method;
  opt.gptq_damp = a.gptq_damp;
  std::string cov_file = a.covariance;
  if (cov_file.empty() && !a.imatrix.empty() && opt.method != QuantMethod::Rtn && opt.method != QuantMethod::Search) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(a.imatrix + ".cov", ec)) cov_file = a.imatrix + ".cov";  // written beside it by lokal imatrix --covariance
  }
  if (!a.covariance.empty() && (opt.method == QuantMethod::Rtn || opt.method == QuantMethod::Search))
    throw Error("--covariance is only used by --quant-method auto or gptq (got " + a.method + ")");
  if (opt.method == QuantMethod::Gptq && cov_file.empty())
    throw Error("--quant-method gptq needs the input covariance: give --covariance FILE, or --imatrix X with X.cov beside "
                "it (lokal imatrix --covariance writes both)");
  if (opt.method == QuantMethod::Search && a.imatrix.empty())
    throw Error("--quant-method search needs --imatrix");
  if (!cov_file.empty()) {
    check_input_file(cov_file, "covariance file");
    CovarianceSet c = read_covariance(cov_file);
    const size_t n_entries = c.entries.size();
    use_covariance(opt, std::move(c));
    std::fprintf(stderr, "covariance: %s, %zu entries (quant method %s)\n", cov_file.c_str(), n_entries,
                 quant_method_name(opt.method));
  }
  if (!a.imatrix.empty()) {
    check_input_file(a.imatrix, "importance matrix file");
    check_input_file(a.input, "GGUF model file");
    if (!a.dry_run) check_output_file(a.output, {a.input, a.imatrix});  // before the importance matrix is read
    const ImportanceMatrix m = read_imatrix(a.imatrix);
    use_imatrix(opt, m, a.imatrix);
    std::fprintf(stderr, "imatrix: %s, %zu entries, %d chunks%s%s\n", a.imatrix.c_str(), m.entries.size(), m.chunks,
                 m.dataset.empty() ? "" : ", dataset ", m.dataset.c_str());
  }

  size_t width = 0;
  opt.on_plan = [&](const QuantizePlan& p) {
    width = name_width(p);
    std::fprintf(stderr, "quantize: %s -> %s as %s (general.file_type %d)%s, %zu tensors%s\n", a.input.c_str(),
                 a.output.c_str(), p.file_type.name, p.file_type.ftype, a.pure ? ", pure" : "", p.tensors.size(),
                 a.dry_run ? ", dry run" : (", " + std::to_string(opt.n_threads) + " threads").c_str());
    for (const auto& n : p.notes) std::fprintf(stderr, "%s\n", printable(n).c_str());
    std::fflush(stderr);
    if (a.dry_run) {
      std::printf("plan for %s (%s):\n", a.output.c_str(), p.file_type.name);
      for (size_t i = 0; i < p.tensors.size(); ++i) print_tensor_line(stdout, i, p.tensors.size(), p.tensors[i], width, -1);
    }
  };
  opt.on_tensor = [&](const TensorProgress& pr) {
    print_tensor_line(stderr, pr.index, pr.count, *pr.tensor, width, pr.seconds);
    std::fflush(stderr);
  };

  QuantizeResult r = quantize_model(a.input, a.output, opt);
  const QuantizePlan& p = r.plan;
  if (a.dry_run) {
    std::printf("dry run: %s as %s would be %s; nothing was written\n", a.output.c_str(), p.file_type.name,
                format_bytes(static_cast<double>(p.file_size_out)).c_str());
    print_sizes(p);
  } else {
    std::printf("wrote %s (%s, %s)\n", a.output.c_str(), p.file_type.name,
                format_bytes(static_cast<double>(p.file_size_out)).c_str());
    print_sizes(p);
    if (p.n_fallback) std::printf("  fallbacks     %d tensor(s) (row length not a multiple of the block size)\n", p.n_fallback);
    if (p.n_requantize) std::printf("  requantized   %d tensor(s)\n", p.n_requantize);
    std::printf("  time          %.2f s (%d threads)\n", r.seconds, opt.n_threads);
  }
  std::fflush(stdout);
}

}  // namespace

void register_quantize(CLI::App& app, int* rc) {
  auto a = std::make_shared<QuantizeArgs>();
  std::string types;
  for (const auto& ft : quant_file_types()) types += std::string("\n  ") + ft.name + ": " + ft.desc;
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize a GGUF model (llama.cpp file types and per-tensor mixes)");
  cmd->footer("TYPE (case-insensitive; Q3_K, Q4_K, Q5_K are aliases of the _M mixes):" + types);
  cmd->add_option("files", a->args, "IN.gguf (input GGUF model, F32/F16/BF16; or -m IN.gguf), OUT.gguf (output GGUF "
                                     "file), TYPE (file type, e.g. Q4_K_M)")
      ->type_name("[-m] IN.gguf OUT.gguf TYPE");
  cmd->add_option("-m,--model", a->model, "Input GGUF model (instead of the first positional)");
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_flag("--allow-requantize", a->allow_requantize, "Accept an already-quantized input (dequantize, then quantize again)");
  cmd->add_flag("--keep-output-f16", a->keep_output_f16, "Store the output matrix (token_embd when tied) as F16");
  cmd->add_flag("--dry-run", a->dry_run, "Print the per-tensor plan and the resulting size; write nothing");
  cmd->add_flag("--pure", a->pure, "No mix: every weight matrix gets TYPE's base type");
  cmd->add_option("--imatrix", a->imatrix, "Importance matrix (lokal imatrix / llama-imatrix .dat) to weight rounding errors");
  cmd->add_option("--covariance", a->covariance,
                  "Input covariance file (lokal imatrix --covariance; default: IMATRIX.cov beside --imatrix if present)")
      ->type_name("FILE");
  cmd->add_option("--quant-method", a->method,
                  "auto (GPTQ where the covariance has the matrix, else the importance search, else rtn), gptq, search, "
                  "rtn (round-to-nearest: llama.cpp's bytes without an imatrix)")
      ->capture_default_str();
  cmd->add_option("--gptq-damp", a->gptq_damp, "GPTQ damping, relative to the mean input variance")
      ->capture_default_str()->check(CLI::Range(1e-6f, 10.0f));
  cmd->callback([a, rc] {
    const size_t n = a->args.size();
    if (a->model.empty() ? n != 3 : (n < 2 || n > 3))  // -m with 3 positionals: one_model says "given twice"
      throw CLI::ParseError("quantize: expected IN.gguf OUT.gguf TYPE or -m IN.gguf OUT.gguf TYPE (" + std::to_string(n) +
                                " positional argument" + (n == 1 ? "" : "s") + " given)", 2);
    a->input = one_model("quantize", a->model, n == 3 ? a->args[0] : "");
    a->output = a->args[n - 2];
    a->type = a->args[n - 1];
    run(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
