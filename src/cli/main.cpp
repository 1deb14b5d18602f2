// lokal - private, local LLM inference. Entry point: parses the subcommand and reports
// every failure as one clear line on stderr with a non-zero exit status.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"

int main(int argc, char** argv) {
  // Temporary output files are removed if the process is interrupted (SIGINT, SIGTERM, SIGHUP).
  lokal::install_signal_cleanup();
  CLI::App app{"lokal - run GGUF language models locally, fast", "lokal"};
  app.set_version_flag("--version", "lokal 0.1.0");
  app.require_subcommand(1);
  app.fallthrough(false);
  app.formatter(lokal::cli::make_formatter());  // before the subcommands: they take the app's formatter
  int rc = 0;
  lokal::cli::register_run(app, &rc);
  lokal::cli::register_info(app, &rc);
  lokal::cli::register_perplexity(app, &rc);
  lokal::cli::register_compare(app, &rc);
  lokal::cli::register_quantize(app, &rc);
  lokal::cli::register_imatrix(app, &rc);
  lokal::cli::register_synth(app, &rc);
  lokal::cli::register_bench(app, &rc);
  lokal::cli::register_convert(app, &rc);
  lokal::cli::register_export_hf(app, &rc);
  lokal::cli::register_plan(app, &rc);
  lokal::cli::register_batch(app, &rc);
  lokal::cli::register_chat(app, &rc);
  lokal::cli::register_template(app, &rc);
  lokal::cli::register_serve(app, &rc);
  lokal::cli::register_models(app, &rc);
  lokal::cli::register_usage(app, &rc);  // hidden: README's Usage block
  // llama.cpp spells some options with one dash and several letters (-ctk, -ctv), which CLI11 cannot declare; they
  // and lokal's older spellings (--ctk) become the long names (cli/common.cpp).
  std::vector<std::string> args = lokal::cli::canonical_args(std::vector<std::string>(argv, argv + argc));
  std::vector<char*> argp;
  try {
    // Model names from the store (lokal models) become their files' paths (and a preset's settings, options).
    args = lokal::cli::resolve_store_models(std::move(args), app);
    for (auto& a : args) argp.push_back(a.data());
    argv = argp.data();
    argc = static_cast<int>(argp.size());
    if (argc > 1 && argv[1][0] != '-') {
      bool known = false;
      for (const CLI::App* sub : app.get_subcommands({})) known = known || sub->check_name(argv[1]);
      if (!known) throw CLI::ParseError("unknown command '" + std::string(argv[1]) + "'", 2);
    }
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s (see 'lokal --help')\n", lokal::printable(e.what()).c_str());
    return 2;
  } catch (const lokal::Error& e) {
    std::fprintf(stderr, "error: %s\n", lokal::printable(e.what()).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", lokal::printable(e.what()).c_str());
    return 1;
  }
  return rc;
}
