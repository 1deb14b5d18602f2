#include "eval/imatrix.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>

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

// ---- covariance file ------------------------------------------------------------------------

namespace {

constexpr char kCovMagic[8] = {'L', 'O', 'K', 'A', 'L', 'C', 'O', 'V'};
constexpr uint32_t kCovVersion = 1;
constexpr uint32_t kMaxCovN = 65536;

}  // namespace

std::vector<float> CovarianceEntry::full() const {
  const size_t n = static_cast<size_t>(this->n);
  std::vector<float> h(n * n);
  size_t k = 0;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i; j < n; ++j, ++k) h[i * n + j] = h[j * n + i] = upper[k];
  return h;
}

void write_covariance(const std::string& path, const CovarianceSet& c) {
  if (c.entries.empty()) throw Error(path + ": refusing to write a covariance file without entries");
  std::string buf(kCovMagic, sizeof kCovMagic);
  auto put = [&](const void* p, size_t n) { buf.append(static_cast<const char*>(p), n); };
  auto put_u32 = [&](uint32_t v) { put(&v, 4); };
  put_u32(kCovVersion);
  put_u32(static_cast<uint32_t>(c.entries.size()));
  for (const auto& [name, e] : c.entries) {
    const size_t want = static_cast<size_t>(e.n) * (static_cast<size_t>(e.n) + 1) / 2;
    if (name.empty() || name.size() > static_cast<size_t>(kMaxName)) throw Error(path + ": bad entry name '" + name + "'");
    if (e.n < 1 || static_cast<uint32_t>(e.n) > kMaxCovN || e.upper.size() != want || e.n_tokens <= 0)
      throw Error(path + ": covariance entry '" + name + "' is malformed");
    for (float v : e.upper)
      if (!std::isfinite(v)) throw Error(path + ": covariance entry '" + name + "' has a non-finite value");
    put_u32(static_cast<uint32_t>(name.size()));
    put(name.data(), name.size());
    put_u32(static_cast<uint32_t>(e.n));
    const uint64_t nt = static_cast<uint64_t>(e.n_tokens);
    put(&nt, 8);
    put(e.upper.data(), e.upper.size() * sizeof(float));
  }
  write_file_atomic(path, buf);
}

CovarianceSet read_covariance(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) throw Error(path + ": cannot open the covariance file");
  std::fseek(f.get(), 0, SEEK_END);
  const long size = std::ftell(f.get());
  std::fseek(f.get(), 0, SEEK_SET);
  std::string data(size > 0 ? static_cast<size_t>(size) : 0, '\0');
  if (!data.empty() && std::fread(data.data(), 1, data.size(), f.get()) != data.size())
    throw Error(path + ": cannot read the covariance file");
  size_t pos = 0;
  auto bad = [&](const std::string& msg) -> Error { return Error(path + ": not a valid covariance file: " + msg); };
  auto take = [&](void* dst, size_t n, const std::string& what) {
    if (data.size() - pos < n) throw bad("it ends inside " + what);
    std::memcpy(dst, data.data() + pos, n);
    pos += n;
  };
  auto u32 = [&](const std::string& what) {
    uint32_t v;
    take(&v, 4, what);
    return v;
  };
  char magic[8];
  take(magic, 8, "the header");
  if (std::memcmp(magic, kCovMagic, 8) != 0) throw bad("bad magic (expected \"LOKALCOV\")");
  const uint32_t version = u32("the header");
  if (version != kCovVersion) throw bad("unsupported version " + std::to_string(version) + " (expected 1)");
  const uint32_t count = u32("the header");
  if (count < 1 || count > static_cast<uint32_t>(kMaxEntries)) throw bad("entry count " + std::to_string(count) + " is out of range");
  CovarianceSet c;
  for (uint32_t i = 0; i < count; ++i) {
    const std::string at = "entry " + std::to_string(i + 1) + " of " + std::to_string(count);
    const uint32_t len = u32(at);
    if (len < 1 || len > static_cast<uint32_t>(kMaxName)) throw bad(at + ": name length " + std::to_string(len) + " is out of range");
    std::string name(len, '\0');
    take(name.data(), len, at);
    if (name.find('\0') != std::string::npos) throw bad(at + ": the name contains a NUL byte");
    const std::string what = at + " ('" + name + "')";
    CovarianceEntry e;
    const uint32_t n = u32(what);
    if (n < 1 || n > kMaxCovN) throw bad(what + ": size " + std::to_string(n) + " is out of range (1.." + std::to_string(kMaxCovN) + ")");
    e.n = static_cast<int32_t>(n);
    uint64_t nt;
    take(&nt, 8, what);
    if (nt == 0 || nt > (uint64_t{1} << 62)) throw bad(what + ": token count " + std::to_string(nt) + " is out of range");
    e.n_tokens = static_cast<int64_t>(nt);
    const size_t nv = static_cast<size_t>(n) * (static_cast<size_t>(n) + 1) / 2;
    if ((data.size() - pos) / sizeof(float) < nv) throw bad("it ends inside " + what);
    e.upper.resize(nv);
    take(e.upper.data(), nv * sizeof(float), what);
    for (float v : e.upper)
      if (!std::isfinite(v)) throw bad(what + ": has a non-finite value");
    size_t k = 0;
    for (uint32_t r = 0; r < n; k += n - r, ++r)
      if (e.upper[k] < 0.0f) throw bad(what + ": diagonal value " + std::to_string(r) + " is negative");
    if (!c.entries.emplace(name, std::move(e)).second) throw bad(what + ": the name appears twice");
  }
  if (pos != data.size()) throw bad(std::to_string(data.size() - pos) + " unexpected bytes after the last entry");
  return c;
}

void use_covariance(QuantizeOptions& opt, CovarianceSet c) {
  // Upper triangles kept as read; one matrix at a time expanded to n x n (valid until the next call).
  struct State {
    CovarianceSet set;
    std::string expanded_name;
    std::vector<float> expanded;
    std::mutex mu;
  };
  auto st = std::make_shared<State>();
  st->set = std::move(c);
  opt.covariance = [st](const GGUFTensorInfo& t) -> CovarianceView {
    std::lock_guard<std::mutex> lk(st->mu);
    auto it = st->set.entries.find(t.name);
    if (it == st->set.entries.end()) return {};
    if (st->expanded_name != t.name) {
      st->expanded = it->second.full();
      st->expanded_name = t.name;
    }
    return {st->expanded.data(), it->second.n};
  };
}

// ---------------------------------------------------------------------------------------------

ImatrixCollector::ImatrixCollector(const Model& model, bool process_output, bool covariance) : covariance_(covariance) {
  for (const auto& t : model.gguf().tensors()) {
    const bool in_block = t.name.rfind("blk.", 0) == 0;
    if (!in_block && !(process_output && t.name == "output.weight")) continue;
    Acc a;
    a.name = t.name;
    a.sum.assign(static_cast<size_t>(t.ne[0]), 0.0);
    if (covariance_) a.cov.assign(static_cast<size_t>(t.ne[0] * t.ne[0]), 0.0);
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
  if (!covariance_) return;
  const size_t nx = static_cast<size_t>(n_tok * cols);
  const bool same = last_x_.size() == nx && last_inc_.size() == static_cast<size_t>(cols * cols) &&
                    std::memcmp(last_x_.data(), x, nx * sizeof(float)) == 0;
  if (!same) {
    // The call's outer-product sum, upper triangle, in float (one call is one micro-batch of tokens), 8 tokens at
    // a time so each row of the sum is read and written once per 8 tokens (contiguous axpys). Added to the
    // double accumulators below.
    last_x_.assign(x, x + nx);
    last_inc_.assign(static_cast<size_t>(cols * cols), 0.0);
    std::vector<float> inc(static_cast<size_t>(cols * cols), 0.0f);
    constexpr int64_t kT = 8;
    for (int64_t t0 = 0; t0 < n_tok; t0 += kT) {
      const int64_t nt = std::min(kT, n_tok - t0);
      const float* xs = x + t0 * cols;
      for (int64_t i = 0; i < cols; ++i) {
        float* c = inc.data() + i * cols;
        float a[kT] = {};
        for (int64_t t = 0; t < nt; ++t) a[t] = xs[t * cols + i];
        if (nt == kT) {
          const float *x0 = xs, *x1 = xs + cols, *x2 = xs + 2 * cols, *x3 = xs + 3 * cols, *x4 = xs + 4 * cols,
                      *x5 = xs + 5 * cols, *x6 = xs + 6 * cols, *x7 = xs + 7 * cols;
          for (int64_t j = i; j < cols; ++j)
            c[j] += a[0] * x0[j] + a[1] * x1[j] + a[2] * x2[j] + a[3] * x3[j] + a[4] * x4[j] + a[5] * x5[j] +
                    a[6] * x6[j] + a[7] * x7[j];
        } else {
          for (int64_t t = 0; t < nt; ++t)
            for (int64_t j = i; j < cols; ++j) c[j] += a[t] * xs[t * cols + j];
        }
      }
    }
    for (size_t k = 0; k < inc.size(); ++k) last_inc_[k] = inc[k];
  }
  for (size_t k = 0; k < last_inc_.size(); ++k) a.cov[k] += last_inc_[k];
}

CovarianceSet ImatrixCollector::covariance() const {
  CovarianceSet c;
  if (!covariance_) return c;
  for (const auto& [ptr, a] : acc_) {
    if (a.count == 0) continue;
    CovarianceEntry e;
    const size_t n = a.sum.size();
    e.n = static_cast<int32_t>(n);
    e.n_tokens = a.count;
    e.upper.reserve(n * (n + 1) / 2);
    for (size_t i = 0; i < n; ++i)
      for (size_t j = i; j < n; ++j) e.upper.push_back(static_cast<float>(a.cov[i * n + j] / static_cast<double>(a.count)));
    c.entries.emplace(a.name, std::move(e));
  }
  return c;
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
  ImatrixCollector col(model, opt.process_output, opt.covariance);
  ImatrixResult r;
  r.ppl = run_perplexity(model, plan, pool, opt.ppl.n_batch, {}, progress,
                         [&](const WeightView& W, const float* x, int64_t n) { col.observe(W, x, n); });
  r.n_tokens = plan.n_chunks * plan.n_ctx;
  r.matrix = col.result(static_cast<int32_t>(plan.n_chunks), text_name);
  r.cov = col.covariance();
  if (r.matrix.entries.empty()) throw Error("importance matrix: the model has no weight matrix to collect");
  return r;
}

}  // namespace lokal
