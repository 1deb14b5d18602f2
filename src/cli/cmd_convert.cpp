// `lokal convert HF_DIR|CHECKPOINT.bin -o OUT.gguf` and `lokal export-hf MODEL.gguf -o DIR` (tools/convert.h).
// Progress on stderr, one line per tensor; the summary on stdout.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/types.h"
#include "tools/convert.h"

namespace lokal::cli {

namespace {

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

void print_progress(const ConvertTensorProgress& p) {
  const int digits = static_cast<int>(std::to_string(p.count).size());
  std::fprintf(stderr, "[%*zu/%zu] %-40s %-5s -> %-5s %-16s %s\n", digits, p.index + 1, p.count, printable(p.name).c_str(), printable(p.from).c_str(),
               type_name(p.to), shape_str(p.ne).c_str(), format_bytes(static_cast<double>(p.bytes)).c_str());
  std::fflush(stderr);
}

void print_note(const std::string& s) {
  std::fprintf(stderr, "%s\n", printable(s).c_str());
  std::fflush(stderr);
}

struct ConvertArgs {
  std::string input, output, outtype, tokenizer, vocab_from, name;
  bool quiet = false;
};

struct ExportArgs {
  std::string input, input_flag, output, shard_size;  // input: the positional; input_flag: -m (exactly one)
  bool quiet = false;
};

}  // namespace

void register_convert(CLI::App& app, int* rc) {
  auto a = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a Hugging Face model folder or a llama2.c checkpoint to GGUF");
  cmd->footer(
      "INPUT: a Hugging Face folder (config.json, model.safetensors or its shards + index, tokenizer.json / tokenizer.model,\n"
      "tokenizer_config.json) of a LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM model; or a llama2.c\n"
      "checkpoint .bin (versions 0 and 1) with --tokenizer tokenizer.bin (or --vocab-from a GGUF).");
  cmd->add_option("input", a->input, "Hugging Face model folder or llama2.c checkpoint")->required()
      ->type_name("HF_DIR|CHECKPOINT.bin");
  cmd->add_option("-o,--output", a->output, "Output GGUF file")->required()->type_name("OUT.gguf");
  cmd->add_option("--outtype", a->outtype, "Type of 2-D tensors: f32, f16 or bf16 (default: as stored)");
  cmd->add_option("--tokenizer", a->tokenizer, "llama2.c tokenizer .bin");
  cmd->add_option("--vocab-from", a->vocab_from, "Take the tokenizer from this GGUF instead");
  cmd->add_option("--name", a->name, "general.name (default: from the input)");
  cmd->add_flag("-q,--quiet", a->quiet, "No per-tensor progress");
  cmd->callback([a, rc] {
    ConvertOptions opt;
    if (!a->outtype.empty()) {
      auto t = type_from_name(a->outtype);
      if (!t || (*t != DType::F32 && *t != DType::F16 && *t != DType::BF16))
        throw Error("--outtype must be f32, f16 or bf16 (got '" + a->outtype + "')");
      opt.outtype = *t;
    }
    opt.tokenizer = a->tokenizer;
    opt.vocab_from = a->vocab_from;
    opt.name = a->name;
    opt.on_note = print_note;
    if (!a->quiet) opt.on_tensor = print_progress;
    ConvertResult r = convert_model(a->input, a->output, opt);
    std::printf("wrote %s (%s from %s, %zu tensors, %s)\n", a->output.c_str(), r.arch.c_str(),
                r.source_kind == "hf" ? "a Hugging Face folder" : "a llama2.c checkpoint", r.n_tensors,
                format_bytes(static_cast<double>(r.file_size)).c_str());
    std::fflush(stdout);
    *rc = 0;
  });
}

void register_export_hf(CLI::App& app, int* rc) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand("export-hf", "Export a GGUF model (llama, qwen2) as a Hugging Face folder (safetensors, tokenizer.json)");
  cmd->add_option("input", a->input, "Input GGUF model")->type_name("[-m] MODEL.gguf");
  cmd->add_option("-m,--model", a->input_flag, "Input GGUF model (instead of the positional)");
  cmd->add_option("-o,--output", a->output, "Output folder (created if needed)")->required()->type_name("DIR");
  cmd->add_option("--shard-size", a->shard_size, "Split the weights into safetensors shards of at most this size (e.g. 2GB, 500MB)");
  cmd->add_flag("-q,--quiet", a->quiet, "No per-tensor progress");
  cmd->callback([a, rc] {
    a->input = one_model("export-hf", a->input_flag, a->input);
    ExportOptions opt;
    if (!a->shard_size.empty()) opt.shard_size = parse_size(a->shard_size);
    opt.on_note = print_note;
    if (!a->quiet) opt.on_tensor = print_progress;
    ExportResult r = export_hf(a->input, a->output, opt);
    std::printf("wrote %s (%s, %zu tensors in %zu safetensors file%s, %s)\n", a->output.c_str(), r.arch.c_str(), r.n_tensors,
                r.n_shards, r.n_shards == 1 ? "" : "s", format_bytes(static_cast<double>(r.data_bytes)).c_str());
    std::fflush(stdout);
    *rc = 0;
  });
}

}  // namespace lokal::cli
