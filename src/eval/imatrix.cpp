#include "eval/imatrix.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/safe_io.h"
#include "core/threadpool.h"

namespace lokal {

namespace {

// Sizes read from a file are never trusted beyond these.
constexpr int32_t kMaxEntries = 1 << 20;
constexpr int32_t kMaxName = 4096;
constexpr int32_t kMaxValues = 1 << 28;

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "rb")) {
    if (!f_) throw Error(path + ": cannot open the importance matrix file");
  }
  bool at_end() {
    const int c = std::fgetc(f_.get());
    if (c == EOF) return true;
    std::ungetc(c, f_.get());
    return false;
  }
  void read(void* dst, size_t n, const std::string& what) {
    if (n && std::fread(dst, 1, n, f_.get()) != n)
      throw Error(path_ + ": not a valid importance matrix file: it ends inside " + what);
  }
  int32_t i32(const std::string& what) {
    int32_t v;
    read(&v, 4, what);
    return v;
  }
  [[noreturn]] void bad(const std::string& msg) const { throw Error(path_ + ": not a valid importance matrix file: " + msg); }

 private:
  std::string path_;
  FilePtr f_;
};

}  // namespace

std::vector<float> ImatrixEntry::importance() const {
  std::vector<float> v = values;
  if (ncall > 0)
    for (float& x : v) x /= static_cast<float>(ncall);
  return v;
}

void write_imatrix(const std::string& path, const ImportanceMatrix& m) {
  if (m.entries.empty()) throw Error(path + ": refusing to write an importance matrix without entries");
  std::vector<uint8_t> buf;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf.insert(buf.end(), b, b + n);
  };
  auto put_i32 = [&](int64_t v, const std::string& what) {
    if (v < 0 || v > INT32_MAX) throw Error(path + ": " + what + " does not fit the file format");
    const int32_t x = static_cast<int32_t>(v);
    put(&x, 4);
  };
  put_i32(static_cast<int64_t>(m.entries.size()), "the number of entries");
  for (const auto& [name, e] : m.entries) {
    if (name.empty() || name.size() > static_cast<size_t>(kMaxName)) throw Error(path + ": bad entry name '" + name + "'");
    if (e.values.empty()) throw Error(path + ": entry '" + name + "' has no values");
    for (float v : e.values)
      if (!std::isfinite(v)) throw Error(path + ": entry '" + name + "' has a non-finite value");
    put_i32(static_cast<int64_t>(name.size()), "a name length");
    put(name.data(), name.size());
    put_i32(e.ncall, "ncall of '" + name + "'");
    put_i32(static_cast<int64_t>(e.values.size()), "the size of '" + name + "'");
    put(e.values.data(), e.values.size() * sizeof(float));
  }
  put_i32(m.chunks, "the chunk count");
  put_i32(static_cast<int64_t>(m.dataset.size()), "the dataset name length");
  put(m.dataset.data(), m.dataset.size());

  write_file_atomic(path, std::string(reinterpret_cast<const char*>(buf.data()), buf.size()));
}

ImportanceMatrix read_imatrix(const std::string& path) {
  Reader r(path);
  ImportanceMatrix m;
  const int32_t n = r.i32("the entry count");
  if (n < 1 || n > kMaxEntries) r.bad("entry count " + std::to_string(n) + " is out of range (1.." + std::to_string(kMaxEntries) + ")");
  for (int32_t i = 0; i < n; ++i) {
    const std::string at = "entry " + std::to_string(i + 1) + " of " + std::to_string(n);
    const int32_t len = r.i32(at);
    if (len < 1 || len > kMaxName) r.bad(at + ": name length " + std::to_string(len) + " is out of range");
    std::string name(static_cast<size_t>(len), '\0');
    r.read(name.data(), name.size(), at);
    if (name.find('\0') != std::string::npos) r.bad(at + ": the name contains a NUL byte");
    const std::string what = at + " ('" + name + "')";
    ImatrixEntry e;
    e.ncall = r.i32(what);
    const int32_t nval = r.i32(what);
    if (e.ncall < 0) r.bad(what + ": negative call count " + std::to_string(e.ncall));
    if (nval < 1 || nval > kMaxValues) r.bad(what + ": value count " + std::to_string(nval) + " is out of range");
    e.values.resize(static_cast<size_t>(nval));
    r.read(e.values.data(), e.values.size() * sizeof(float), what);
    for (float v : e.values)
      if (!std::isfinite(v) || v < 0) r.bad(what + ": has a " + (v < 0 ? "negative" : "non-finite") + " value");
    if (!m.entries.emplace(name, std::move(e)).second) r.bad(what + ": the name appears twice");
  }
  if (!r.at_end()) {
    m.chunks = r.i32("the trailer");
    const int32_t len = r.i32("the trailer");
    if (m.chunks < 0) r.bad("negative chunk count in the trailer");
    if (len < 0 || len > kMaxName) r.bad("dataset name length " + std::to_string(len) + " is out of range");
    m.dataset.resize(static_cast<size_t>(len));
    r.read(m.dataset.data(), m.dataset.size(), "the dataset name");
    if (!r.at_end()) r.bad("unexpected bytes after the dataset name");
  }
  return m;
}

void use_imatrix(QuantizeOptions& opt, const ImportanceMatrix& m, const std::string& file) {
  auto table = std::make_shared<std::map<std::string, std::vector<float>>>();
  for (const auto& [name, e] : m.entries) (*table)[name] = e.importance();
  opt.importance = [table](const GGUFTensorInfo& t) -> ImportanceView {
    auto it = table->find(t.name);
    if (it == table->end()) return {};
    return {it->second.data(), it->second.size()};
  };
  opt.imatrix_meta.file = file;
  opt.imatrix_meta.dataset = m.dataset;
  opt.imatrix_meta.entries = static_cast<int32_t>(m.entries.size());
  opt.imatrix_meta.chunks = m.chunks;
}

// ---------------------------------------------------------------------------------------------

ImatrixCollector::ImatrixCollector(const Model& model, bool process_output) {
  for (const auto& t : model.gguf().tensors()) {
    const bool in_block = t.name.rfind("blk.", 0) == 0;
    if (!in_block && !(process_output && t.name == "output.weight")) continue;
    Acc a;
    a.name = t.name;
    a.sum.assign(static_cast<size_t>(t.ne[0]), 0.0);
    acc_.emplace(t.data, std::move(a));
  }
}

void ImatrixCollector::observe(const WeightView& W, const float* x, int64_t n_tok) {
  auto it = acc_.find(W.data);
  if (it == acc_.end()) return;  // not a collected matrix (token_embd as tied output, output without the flag)
  Acc& a = it->second;
  const int64_t cols = W.cols;
  if (static_cast<int64_t>(a.sum.size()) != cols)
    throw Error("importance matrix: '" + a.name + "' was seen with " + std::to_string(cols) + " columns, expected " +
                std::to_string(a.sum.size()));
  double* s = a.sum.data();
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* row = x + t * cols;
    for (int64_t j = 0; j < cols; ++j) s[j] += static_cast<double>(row[j]) * static_cast<double>(row[j]);
  }
  a.count += n_tok;
}

ImportanceMatrix ImatrixCollector::result(int32_t ncall, const std::string& dataset) const {
  ImportanceMatrix m;
  m.chunks = ncall;
  m.dataset = dataset;
  for (const auto& [ptr, a] : acc_) {
    if (a.count == 0) continue;
    ImatrixEntry e;
    e.ncall = ncall;
    e.values.resize(a.sum.size());
    const double scale = static_cast<double>(ncall > 0 ? ncall : 1) / static_cast<double>(a.count);
    for (size_t j = 0; j < a.sum.size(); ++j) e.values[j] = static_cast<float>(a.sum[j] * scale);
    m.entries.emplace(a.name, std::move(e));
  }
  return m;
}

ImatrixResult compute_imatrix(const Model& model, const std::string& text, const std::string& text_name,
                              const ImatrixOptions& opt, const PerplexityProgress& progress) {
  const PerplexityPlan plan = plan_perplexity(model, text, text_name, opt.ppl);
  ThreadPool pool(opt.n_threads > 0 ? opt.n_threads : ThreadPool::default_threads());
  ImatrixCollector col(model, opt.process_output);
  ImatrixResult r;
  r.ppl = run_perplexity(model, plan, pool, opt.ppl.n_batch, {}, progress,
                         [&](const WeightView& W, const float* x, int64_t n) { col.observe(W, x, n); });
  r.n_tokens = plan.n_chunks * plan.n_ctx;
  r.matrix = col.result(static_cast<int32_t>(plan.n_chunks), text_name);
  if (r.matrix.entries.empty()) throw Error("importance matrix: the model has no weight matrix to collect");
  return r;
}

}  // namespace lokal
