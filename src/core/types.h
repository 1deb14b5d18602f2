// core/types.h - tensor element types (ids and block layouts as in GGUF files written by llama.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace lokal {

// Type ids as stored in GGUF tensor infos (ggml_type numbering).
enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
};

struct TypeInfo {
  const char* name;      // "Q4_K", as llama.cpp prints it
  int64_t block_size;    // elements per block
  size_t type_size;      // bytes per block
  bool quantized;        // block-quantized (not a plain float/int type)
  bool supported;        // lokal can compute with it (dequantize + dot products)
};

// nullptr for an id that names no known type.
const TypeInfo* type_info(uint32_t id);
inline const TypeInfo* type_info(DType t) { return type_info(static_cast<uint32_t>(t)); }
const char* type_name(DType t);
std::optional<DType> type_from_name(std::string_view name);  // case-insensitive ("q4_k", "F16")

// Bytes of one row of ne0 elements. ne0 must be a multiple of the block size.
size_t row_size(DType t, int64_t ne0);

}  // namespace lokal
