// eval/imatrix.h - importance matrices (`lokal imatrix`, `lokal quantize --imatrix`).
//
// An importance matrix holds, for every weight matrix W that multiplies an activation (attn_q/k/v/output,
// ffn_gate/up/down of each layer, and optionally output), one value per input column j: the mean over all
// evaluated tokens of x_j^2, the squared activation that meets column j. A rounding error e_j in column j of
// a row of W changes that row's output by e_j * x_j, so sum_j imp_j * e_j^2 is the expected squared output
// error (diagonal approximation) - what the importance-weighted quantizers minimize.
//
// Computing it: the text is tokenized and cut into chunks exactly like `lokal perplexity` (BOS first, n_ctx
// tokens each), each chunk is evaluated from an empty cache, and every token of every chunk contributes.
//
// ------------------------------------------------------------------------------------------
// File format: llama.cpp's imatrix ".dat" format (llama-imatrix / llama-quantize, c392e50), little endian,
// no header or magic:
//
//   i32 n_entries                       > 0
//   n_entries times:
//     i32 name_len                      > 0
//     u8  name[name_len]                tensor name, e.g. "blk.0.attn_q.weight" (no terminating 0)
//     i32 ncall                         number of evaluation calls the statistics cover (lokal: chunks)
//     i32 nval                          > 0; ne0 of the tensor (ne0 * n_expert for merged expert tensors)
//     f32 values[nval]                  mean of x_j^2 over all tokens, multiplied by ncall
//   optional trailer (llama.cpp writes it; lokal writes it):
//     i32 last_call                     number of chunks processed (-> quantize.imatrix.chunks_count)
//     i32 dataset_len                   >= 0
//     u8  dataset[dataset_len]          the text file's name (-> quantize.imatrix.dataset)
//
// Readers divide values by ncall (when ncall > 0) to get the mean of squares; that is the importance vector
// handed to the quantizer. (llama.cpp's collector counts one call per evaluated micro-batch; lokal counts one
// per chunk, the same as llama.cpp with its default batch = context. Only the ratio values/ncall matters.)
// ------------------------------------------------------------------------------------------
// Input covariance file (lokal's own, written by `lokal imatrix --covariance` as OUTPUT.cov beside the .dat;
// read by `lokal quantize`, which looks for IMATRIX.cov beside --imatrix IMATRIX or takes --covariance FILE).
// It holds, per weight matrix, the full second-moment matrix H = E[x x^T] of the inputs x that meet its columns
// (the GPTQ quantizer, core/quant_gptq.h, needs it). Little endian:
//
//   u8  magic[8]                        "LOKALCOV"
//   u32 version                         1
//   u32 n_entries                       1 .. 2^20
//   n_entries times (names unique):
//     u32 name_len                      1 .. 4096
//     u8  name[name_len]                tensor name (no terminating 0, no NUL inside)
//     u32 n                             1 .. 65536: ne0 of the tensor (its input dimension)
//     u64 n_tokens                      > 0: tokens averaged
//     f32 h[n * (n + 1) / 2]            upper triangle of H by rows: H_00 H_01 .. H_0(n-1) H_11 .. H_(n-1)(n-1);
//                                       H_ij = mean over tokens of x_i x_j. Finite; diagonal >= 0.
//   nothing after the last entry.
//
// The diagonal of H is the .dat file's importance vector (mean of x_j^2), so the .dat stays what llama.cpp
// reads and what the per-block search uses; the .cov adds the off-diagonal part. Size: 2 n^2 bytes per matrix
// (tinytales-4m: n = 256 or 1024, 2.9 MB in all).
// ------------------------------------------------------------------------------------------
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "eval/perplexity.h"
#include "tools/quantize.h"

namespace lokal {

struct ImatrixEntry {
  int32_t ncall = 0;
  std::vector<float> values;   // as stored: mean of squares * ncall
  // The importance vector: values / ncall (values as they are when ncall <= 0).
  std::vector<float> importance() const;
};

struct ImportanceMatrix {
  std::map<std::string, ImatrixEntry> entries;  // by tensor name
  int32_t chunks = 0;        // trailer's last_call (0: no trailer)
  std::string dataset;       // trailer's dataset name
};

// Writes `m` in the format above (entries in name order, with the trailer). Throws lokal::Error naming the
// file on failure. Refuses an empty matrix, empty entries and non-finite values.
void write_imatrix(const std::string& path, const ImportanceMatrix& m);

// Reads a file in the format above (llama.cpp's files included). Every structural problem (short file, bad
// count or length, non-finite or negative value, duplicate name, trailing garbage) throws lokal::Error naming
// the file and the entry.
ImportanceMatrix read_imatrix(const std::string& path);

// Sets opt.importance to serve `m`'s importance vectors (values / ncall) by tensor name, and opt.imatrix_meta
// (file = `file`, dataset, entry and chunk counts) for the output's metadata.
void use_imatrix(QuantizeOptions& opt, const ImportanceMatrix& m, const std::string& file);

struct CovarianceEntry {
  int64_t n_tokens = 0;
  int32_t n = 0;
  std::vector<float> upper;      // n * (n + 1) / 2 values, the upper triangle by rows
  std::vector<float> full() const;  // n x n row-major
};

struct CovarianceSet {
  std::map<std::string, CovarianceEntry> entries;
};

// Writes / reads the covariance format above. Every structural problem (bad magic or version, short file, bad
// count, size or name, non-finite value, negative diagonal, duplicate name, trailing bytes) throws lokal::Error
// naming the file and the entry.
void write_covariance(const std::string& path, const CovarianceSet& c);
CovarianceSet read_covariance(const std::string& path);

// Sets opt.covariance to serve `c`'s matrices by tensor name (kept as upper triangles; the matrix asked for is
// expanded to n x n, one at a time).
void use_covariance(QuantizeOptions& opt, CovarianceSet c);

struct ImatrixOptions {
  PerplexityOptions ppl;        // n_ctx, n_chunks, n_batch, allow_long_ctx (as `lokal perplexity`)
  int n_threads = 0;            // 0: all hardware threads
  bool process_output = false;  // also collect output.weight (llama.cpp: --process-output)
  bool covariance = false;      // also collect the full input covariance of each matrix (ImatrixResult::cov)
};

struct ImatrixResult {
  ImportanceMatrix matrix;
  PerplexityResult ppl;         // the model's perplexity on the text, computed on the way
  int64_t n_tokens = 0;         // tokens that contributed to every entry
  CovarianceSet cov;            // with ImatrixOptions::covariance
};

// progress(chunk_done (1-based), n_chunks, running_ppl)
ImatrixResult compute_imatrix(const Model& model, const std::string& text, const std::string& text_name,
                              const ImatrixOptions& opt, const PerplexityProgress& progress = {});

// Accumulates squared activations per weight matrix (the MatmulObserver of compute_imatrix, public for tests).
class ImatrixCollector {
 public:
  // Collects for the weight matrices of `model`: every blk.* matrix, plus output.weight if process_output.
  // With `covariance`, also the full input covariance (x_i x_j for i <= j) of each matrix.
  ImatrixCollector(const Model& model, bool process_output, bool covariance = false);
  void observe(const WeightView& W, const float* x, int64_t n_tok);
  // The matrix after `ncall` calls (chunks); entries that saw no token are left out.
  ImportanceMatrix result(int32_t ncall, const std::string& dataset) const;
  CovarianceSet covariance() const;

 private:
  struct Acc {
    std::string name;
    std::vector<double> sum;
    std::vector<double> cov;   // n x n, upper triangle used
    int64_t count = 0;
  };
  std::map<const uint8_t*, Acc> acc_;   // by the weight's data pointer
  bool covariance_ = false;
  // The last input's outer-product sum (q/k/v and gate/up meet the same input: computed once).
  std::vector<float> last_x_;
  std::vector<double> last_inc_;
};

}  // namespace lokal
