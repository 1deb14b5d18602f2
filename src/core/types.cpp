#include "core/types.h"

#include <cctype>

#include "core/error.h"

namespace lokal {

namespace {
struct Entry {
  uint32_t id;
  TypeInfo info;
};
// Block layouts (bytes per block) follow the GGUF/ggml definitions.
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4, false, true}},
    {1, {"F16", 1, 2, false, true}},
    {2, {"Q4_0", 32, 18, true, true}},     // f16 d; u8 qs[16]
    {3, {"Q4_1", 32, 20, true, true}},     // f16 d, m; u8 qs[16]
    {6, {"Q5_0", 32, 22, true, true}},     // f16 d; u8 qh[4]; u8 qs[16]
    {7, {"Q5_1", 32, 24, true, true}},     // f16 d, m; u8 qh[4]; u8 qs[16]
    {8, {"Q8_0", 32, 34, true, true}},     // f16 d; i8 qs[32]
    {9, {"Q8_1", 32, 36, true, false}},    // f16 d, s; i8 qs[32]   (activation type)
    {10, {"Q2_K", 256, 84, true, true}},   // u8 scales[16]; u8 qs[64]; f16 d, dmin
    {11, {"Q3_K", 256, 110, true, true}},  // u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d
    {12, {"Q4_K", 256, 144, true, true}},  // f16 d, dmin; u8 scales[12]; u8 qs[128]
    {13, {"Q5_K", 256, 176, true, true}},  // f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
    {14, {"Q6_K", 256, 210, true, true}},  // u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
    {15, {"Q8_K", 256, 292, true, false}}, // f32 d; i8 qs[256]; i16 bsums[16] (activation type)
    {16, {"IQ2_XXS", 256, 66, true, false}},
    {17, {"IQ2_XS", 256, 74, true, false}},
    {18, {"IQ3_XXS", 256, 98, true, false}},
    {19, {"IQ1_S", 256, 50, true, false}},
    {20, {"IQ4_NL", 32, 18, true, false}},
    {21, {"IQ3_S", 256, 110, true, false}},
    {22, {"IQ2_S", 256, 82, true, false}},
    {23, {"IQ4_XS", 256, 136, true, false}},
    {24, {"I8", 1, 1, false, false}},
    {25, {"I16", 1, 2, false, false}},
    {26, {"I32", 1, 4, false, false}},
    {27, {"I64", 1, 8, false, false}},
    {28, {"F64", 1, 8, false, false}},
    {29, {"IQ1_M", 256, 56, true, false}},
    {30, {"BF16", 1, 2, false, true}},
    {34, {"TQ1_0", 256, 54, true, false}},
    {35, {"TQ2_0", 256, 66, true, false}},
};
}  // namespace

const TypeInfo* type_info(uint32_t id) {
  for (const auto& e : kTypes)
    if (e.id == id) return &e.info;
  return nullptr;
}

const char* type_name(DType t) {
  const TypeInfo* ti = type_info(t);
  return ti ? ti->name : "unknown";
}

std::optional<DType> type_from_name(std::string_view name) {
  for (const auto& e : kTypes) {
    std::string_view n = e.info.name;
    if (n.size() != name.size()) continue;
    bool eq = true;
    for (size_t i = 0; i < n.size(); ++i)
      if (std::toupper(static_cast<unsigned char>(name[i])) != n[i]) eq = false;
    if (eq) return static_cast<DType>(e.id);
  }
  return std::nullopt;
}

size_t row_size(DType t, int64_t ne0) {
  const TypeInfo* ti = type_info(t);
  if (!ti) throw Error("unknown tensor type id " + std::to_string(static_cast<uint32_t>(t)));
  if (ne0 % ti->block_size != 0)
    throw Error(std::string("row length ") + std::to_string(ne0) + " is not a multiple of the " + ti->name +
                " block size " + std::to_string(ti->block_size));
  return static_cast<size_t>(ne0 / ti->block_size) * ti->type_size;
}

}  // namespace lokal
