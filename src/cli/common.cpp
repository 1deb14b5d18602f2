// Helpers shared by several subcommands.
#include "cli/commands.h"
#include "core/error.h"
#include "ops/attention.h"

namespace lokal::cli {

DType parse_kv_type(const std::string& name, const char* flag) {
  auto t = type_from_name(name);
  if (!t || !kv_cache_type_supported(*t))
    throw Error(std::string(flag) + ": unsupported KV cache type '" + name + "' (supported: f32, f16, bf16, q8_0, q4_0)");
  return *t;
}

std::string one_model(const std::string& cmd, const std::string& from_flag, const std::string& positional) {
  if (!from_flag.empty() && !positional.empty())
    throw CLI::ParseError(cmd + ": the model is given twice (-m " + from_flag + " and " + positional + "): give it once", 2);
  if (from_flag.empty() && positional.empty())
    throw CLI::ParseError(cmd + ": no model given: MODEL.gguf or -m MODEL.gguf", 2);
  return from_flag.empty() ? positional : from_flag;
}

namespace {
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = s.find(',', start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}
}  // namespace

CLI::Validator comma_list(const CLI::Validator& item) {
  return CLI::Validator(
      [item](std::string& s) -> std::string {
        for (std::string part : split_commas(s)) {
          if (part.empty()) return "empty item in the comma list '" + s + "' (separate items with single commas)";
          std::string err = item(part);
          if (!err.empty()) return err;
        }
        return std::string();
      },
      "comma list");
}

std::vector<std::string> list_items(const std::vector<std::string>& raw) {
  std::vector<std::string> out;
  for (const std::string& s : raw)
    for (std::string& part : split_commas(s)) out.push_back(std::move(part));
  return out;
}

}  // namespace lokal::cli
