// cli/commands.h - subcommands of the `lokal` binary.
#pragma once
#include <CLI/CLI.hpp>

#include "core/types.h"

namespace lokal::cli {

// Each register_* adds a subcommand to `app`; its callback runs the command and stores the
// process exit code in *rc.
void register_run(CLI::App& app, int* rc);
void register_info(CLI::App& app, int* rc);
void register_perplexity(CLI::App& app, int* rc);
void register_compare(CLI::App& app, int* rc);
void register_quantize(CLI::App& app, int* rc);
void register_imatrix(CLI::App& app, int* rc);
void register_synth(CLI::App& app, int* rc);
void register_bench(CLI::App& app, int* rc);
void register_convert(CLI::App& app, int* rc);
void register_export_hf(CLI::App& app, int* rc);
void register_plan(CLI::App& app, int* rc);

// The whole file as bytes; throws lokal::Error naming it if it cannot be read.
std::string read_text_file(const std::string& path);

// A KV cache type name (f32, f16, bf16, q8_0, q4_0); throws lokal::Error naming `flag` otherwise.
DType parse_kv_type(const std::string& name, const char* flag);

// "1.23 MiB" / "512 B"
std::string format_bytes(double bytes);

}  // namespace lokal::cli
