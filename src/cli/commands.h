// cli/commands.h - subcommands of the `lokal` binary.
#pragma once
#include <CLI/CLI.hpp>

namespace lokal::cli {

// Each register_* adds a subcommand to `app`; its callback runs the command and stores the
// process exit code in *rc.
void register_run(CLI::App& app, int* rc);
void register_info(CLI::App& app, int* rc);

// "1.23 MiB" / "512 B"
std::string format_bytes(double bytes);

}  // namespace lokal::cli
