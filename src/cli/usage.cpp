// `lokal usage` (hidden): the synopsis of every subcommand, generated from the CLI11 definitions, so README's
// "## Usage" block (scripts/update-readme-usage.sh; tests/test_cli_consistency.cpp checks it) cannot drift.
//
// Rules, per subcommand, options in registration order (--help and hidden options left out):
//   * a positional is shown as its type name, as is: "MODEL.gguf", "[-m] BASE.gguf [-m] OTHER.gguf..."; when that
//     text starts with "[-m]" the subcommand's -m option is folded into it and not shown again;
//   * a named option by its first short name (llama.cpp's multi-letter one where it has one: "-ctk"), else its
//     first long name; not required: in brackets;
//   * a flag: just the name ("[--json]");
//   * a value: the default ("[-n 128]"), unless there is none, or the help explains it as a special value
//     ("Threads (0: all)") and there is a metavar: an explicit type_name(), else the one of its long name (table
//     below): "[-t THREADS]"; with neither, its long name in capitals;
//   * a comma list (comma_list validator) ends in ",...", a repeatable option in "...".
#include <cctype>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace lokal::cli {

namespace {

// Metavars by long option name, for options shown without a default.
const std::map<std::string, std::string>& metavars() {
  static const std::map<std::string, std::string> m = {
      {"model", "MODEL.gguf"},   {"draft", "DRAFT.gguf"},      {"vocab", "VOCAB.gguf"},
      {"vocab-from", "VOCAB.gguf"}, {"tokenizer", "TOKENIZER.bin"}, {"threads", "THREADS"},
      {"ctx-size", "CTX"},       {"batch-size", "BATCH"},      {"seed", "S"},
      {"chunks", "N"},           {"layers", "N"},              {"keep", "N"},
      {"file", "FILE"},          {"prompt", "PROMPT"},         {"ram", "SIZE"},
      {"vram", "SIZE"},          {"shard-size", "SIZE"},       {"save-logits", "FILE"},
      {"imatrix", "FILE"},       {"output", "FILE"},           {"cache-type-k", "TYPE"},
      {"cache-type-v", "TYPE"},  {"kv", "TYPE"},               {"outtype", "TYPE"},
      {"type", "TYPE"},          {"preset", "NAME"},           {"name", "NAME"},
  };
  return m;
}

// CLI11's own type names (what type_name() is when the code did not set one).
bool generic_type_name(const std::string& t) {
  static const char* const kGeneric[] = {"TEXT", "INT", "UINT", "FLOAT", "BOOLEAN", "ENUM", "CHAR", "INT8", "UINT8",
                                         "VECTOR", "COMPLEX", "TUPLE"};
  if (t.empty()) return true;
  for (const char* g : kGeneric)
    if (t == g) return true;
  return t.find(" ...") != std::string::npos;
}

// The type name without the validators' descriptions CLI11 appends (":INT in [0 - 1024]").
std::string own_type_name(const CLI::Option* o) {
  const std::string t = o->get_type_name();
  const size_t colon = t.find(':');
  return colon == std::string::npos ? t : t.substr(0, colon);
}

bool is_comma_list(const CLI::Option* o) {
  const std::string t = o->get_type_name();
  return t.find(":comma list") != std::string::npos;
}

std::string upper_name(std::string s) {
  for (char& c : s) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// "[512]" (a vector's default) -> "512".
std::string default_text(const CLI::Option* o) {
  std::string d = o->get_default_str();
  if (d.size() >= 2 && d.front() == '[' && d.back() == ']') d = d.substr(1, d.size() - 2);
  return d;
}

// A default the help explains as a special value: "(0: all)", "(comma list; 0: all)", "(-1: random)".
bool special_default(const CLI::Option* o, const std::string& d) {
  const std::string& desc = o->get_description();
  return desc.find("(" + d + ":") != std::string::npos || desc.find(" " + d + ":") != std::string::npos;
}

std::string option_token(const CLI::Option* o) {
  const std::string llama = o->get_lnames().empty() ? std::string() : llama_short_name(o->get_lnames().front());
  const std::string name = !llama.empty()                ? llama
                           : !o->get_snames().empty()    ? "-" + o->get_snames().front()
                                                         : "--" + o->get_lnames().front();
  std::string text = name;
  if (o->get_items_expected_max() > 0) {  // takes a value (a flag expects none)
    const std::string long_name = o->get_lnames().empty() ? o->get_snames().front() : o->get_lnames().front();
    const std::string d = default_text(o);
    const auto it = metavars().find(long_name);
    std::string metavar = !generic_type_name(own_type_name(o)) ? own_type_name(o)
                          : it != metavars().end()              ? it->second
                                                                : std::string();
    std::string value;
    if (!d.empty() && !(special_default(o, d) && !metavar.empty())) value = d;
    else value = metavar.empty() ? upper_name(long_name) : metavar;
    if (is_comma_list(o)) value += ",...";
    else if (o->get_items_expected_max() > 1) value += "...";
    text += " " + value;
  }
  return o->get_required() ? text : "[" + text + "]";
}

std::vector<std::string> command_tokens(const CLI::App* cmd) {
  const CLI::Option* help = cmd->get_help_ptr();
  bool fold_m = false;
  for (const CLI::Option* o : cmd->get_options())
    if (o->get_positional() && own_type_name(o).rfind("[-m]", 0) == 0) fold_m = true;
  std::vector<std::string> out;
  for (const CLI::Option* o : cmd->get_options()) {
    if (o == help || o->get_group().empty()) continue;
    if (o->get_positional()) {
      const std::string t = own_type_name(o);
      const std::string n = generic_type_name(t) ? upper_name(o->get_name(true)) : t;
      out.push_back(o->get_required() || n.front() == '[' ? n : "[" + n + "]");
      continue;
    }
    if (fold_m && !o->get_snames().empty() && o->get_snames().front() == "m") continue;
    out.push_back(option_token(o));
  }
  return out;
}

}  // namespace

namespace {

// One entry per command; a command made of subcommands (service, models) gives one entry per subcommand.
void usage_entries(const CLI::App* cmd, const std::string& name, size_t width, std::string& out) {
  const auto subs = cmd->get_subcommands([](const CLI::App* c) { return !c->get_group().empty(); });
  if (!subs.empty() && command_tokens(cmd).empty()) {
    for (const CLI::App* sub : subs) usage_entries(sub, name + " " + sub->get_name(), width, out);
    return;
  }
  const std::string prefix = name + " ";
  std::string line = prefix;
  bool first = true;
  // Tokens are never split: "[-c CTX]" stays together; a line holds at least one token.
  for (const std::string& tok : command_tokens(cmd)) {
    if (!first && line.size() + 1 + tok.size() > width) {
      out += line + "\n";
      line = std::string(prefix.size(), ' ') + tok;
    } else {
      line += (first ? "" : " ") + tok;
    }
    first = false;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  out += line + "\n";
}

}  // namespace

std::string usage_text(const CLI::App& app, size_t width) {
  std::string out;
  for (const CLI::App* cmd : app.get_subcommands([](const CLI::App* c) { return !c->get_group().empty(); }))
    usage_entries(cmd, "lokal " + cmd->get_name(), width, out);
  return out;
}

void register_usage(CLI::App& app, int* rc) {
  CLI::App* cmd = app.add_subcommand("usage", "Print the synopsis of every subcommand (README.md's Usage block)");
  cmd->group("");  // hidden from --help
  const CLI::App* parent = &app;
  cmd->callback([parent, rc] {
    const std::string text = usage_text(*parent);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    *rc = 0;
  });
}

}  // namespace lokal::cli
