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

}  // namespace lokal::cli
