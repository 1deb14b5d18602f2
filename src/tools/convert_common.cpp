// tools/convert_common.cpp - what the conversions share (rules in convert.h): file and JSON helpers, config.json
// values, element conversion and the row copy that streams a tensor (type, rotary row permutation), parse_size.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant.h"
#include "core/safe_io.h"
#include "tools/convert_internal.h"

namespace lokal {

namespace convert_detail {

// ---------------------------------------------------------------- small helpers

bool is_file(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

namespace {
std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return ss.str();
}
}  // namespace

json read_json(const std::string& path) {
  const std::string text = read_all(path);
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(path + ": malformed JSON");
  if (!j.is_object()) throw Error(path + ": expected a JSON object");
  return j;
}

void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text); }

std::string dump_json(const json& j, const std::string& path) {
  try {
    return j.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw Error(path + ": cannot write JSON (a string is not valid UTF-8?): " + e.what());
  }
}
std::string dump_json(const ojson& j, const std::string& path) {
  try {
    return j.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw Error(path + ": cannot write JSON (a string is not valid UTF-8?): " + e.what());
  }
}

int64_t cfg_int(const json& c, const char* key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) throw Error(where + ": missing \"" + key + "\"");
  if (!it->is_number_integer() && !it->is_number_unsigned()) throw Error(where + ": \"" + key + "\" is not an integer");
  const int64_t v = it->get<int64_t>();
  if (v <= 0 || v > (int64_t{1} << 40)) throw Error(where + ": \"" + key + "\" = " + std::to_string(v) + " is out of range");
  return v;
}
std::optional<int64_t> cfg_opt_int(const json& c, const char* key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return std::nullopt;
  return cfg_int(c, key, where);
}
std::optional<double> cfg_opt_float(const json& c, const char* key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw Error(where + ": \"" + key + "\" is not a number");
  return it->get<double>();
}

std::string ne_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// ---------------------------------------------------------------- element conversion

namespace {

void row_to_f32(DType st, const uint8_t* src, float* dst, int64_t n) {
  switch (st) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_fp32(h);
      }
      return;
    default: dequantize_row(st, src, dst, n);
  }
}

void row_from_f32(const float* src, DType to, uint8_t* dst, int64_t n) {
  switch (to) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    default: throw Error(std::string("internal: cannot convert to ") + type_name(to));
  }
}

size_t src_row_bytes(DType st, int64_t row_len) {
  if (st == DType::F64) return static_cast<size_t>(row_len) * 8;
  return row_size(st, row_len);
}


// Row permutation between HF rotate-half order and GGUF's interleaved (GPT-J style) order, per head of hd rows:
// GGUF row 2j+s  <->  HF row s*hd/2+j.
int64_t perm_row(const RowCopy& c, int64_t r) {
  if (c.perm_heads <= 0) return r;
  const int64_t hd = c.n_rows / c.perm_heads, half = hd / 2;
  const int64_t h = r / hd, k = r % hd;
  if (!c.to_hf) return h * hd + (k % 2) * half + k / 2;  // output GGUF row k=2j+s <- HF row s*half+j
  return h * hd + 2 * (k % half) + k / half;               // output HF row k=s*half+j <- GGUF row 2j+s
}

}  // namespace

void copy_rows(const RowCopy& c, const GGUFWriter::Sink& out) {
  const size_t in_bytes = src_row_bytes(c.st, c.row_len);
  const size_t out_bytes = row_size(c.to, c.row_len);
  const bool same = c.st == c.to;
  const int64_t rows_per_chunk = std::max<int64_t>(1, static_cast<int64_t>((4u << 20) / std::max<size_t>(out_bytes, 1)));
  std::vector<uint8_t> buf;
  std::vector<float> tmp(same ? 0 : static_cast<size_t>(c.row_len));
  for (int64_t r0 = 0; r0 < c.n_rows; r0 += rows_per_chunk) {
    const int64_t r1 = std::min(c.n_rows, r0 + rows_per_chunk);
    if (same && c.perm_heads <= 0) {
      out(c.src + static_cast<size_t>(r0) * in_bytes, static_cast<size_t>(r1 - r0) * in_bytes);
      continue;
    }
    buf.resize(static_cast<size_t>(r1 - r0) * out_bytes);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* s = c.src + static_cast<size_t>(perm_row(c, r)) * in_bytes;
      uint8_t* d = buf.data() + static_cast<size_t>(r - r0) * out_bytes;
      if (same) {
        std::memcpy(d, s, out_bytes);
      } else {
        row_to_f32(c.st, s, tmp.data(), c.row_len);
        row_from_f32(tmp.data(), c.to, d, c.row_len);
      }
    }
    out(buf.data(), buf.size());
  }
}

std::optional<DType> st_dtype(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "F64") return DType::F64;
  return std::nullopt;
}

const char* st_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    default: return type_name(t);
  }
}

// Output type of a tensor: 1-D tensors F32; others the requested type, else the stored one (F64 -> F32).
DType out_type(DType stored, size_t n_dims, const std::optional<DType>& outtype) {
  if (n_dims <= 1) return DType::F32;
  if (outtype) return *outtype;
  return stored == DType::F64 ? DType::F32 : stored;
}

uint32_t file_type_of(const std::vector<DType>& types) {
  bool f16 = false, bf16 = false;
  for (DType t : types) {
    f16 = f16 || t == DType::F16;
    bf16 = bf16 || t == DType::BF16;
  }
  return bf16 ? 32u : f16 ? 1u : 0u;
}

}  // namespace convert_detail

uint64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    throw Error("invalid size '" + s + "' (e.g. 2GB, 500MB, 1GiB)");
  }
  std::string unit = s.substr(pos);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KB") mul = 1e3;
  else if (unit == "M" || unit == "MB") mul = 1e6;
  else if (unit == "G" || unit == "GB") mul = 1e9;
  else if (unit == "T" || unit == "TB") mul = 1e12;
  else if (unit == "KIB") mul = 1024.0;
  else if (unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "GIB") mul = 1024.0 * 1024 * 1024;
  if (mul == 0 || !(v > 0) || v * mul > 9e18) throw Error("invalid size '" + s + "' (e.g. 2GB, 500MB, 1GiB)");
  return static_cast<uint64_t>(v * mul);
}

}  // namespace lokal
