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

struct ImatrixOptions {
  PerplexityOptions ppl;        // n_ctx, n_chunks, n_batch, allow_long_ctx (as `lokal perplexity`)
  int n_threads = 0;            // 0: all hardware threads
  bool process_output = false;  // also collect output.weight (llama.cpp: --process-output)
};

struct ImatrixResult {
  ImportanceMatrix matrix;
  PerplexityResult ppl;         // the model's perplexity on the text, computed on the way
  int64_t n_tokens = 0;         // tokens that contributed to every entry
};

// progress(chunk_done (1-based), n_chunks, running_ppl)
ImatrixResult compute_imatrix(const Model& model, const std::string& text, const std::string& text_name,
                              const ImatrixOptions& opt, const PerplexityProgress& progress = {});

// Accumulates squared activations per weight matrix (the MatmulObserver of compute_imatrix, public for tests).
class ImatrixCollector {
 public:
  // Collects for the weight matrices of `model`: every blk.* matrix, plus output.weight if process_output.
  ImatrixCollector(const Model& model, bool process_output);
  void observe(const WeightView& W, const float* x, int64_t n_tok);
  // The matrix after `ncall` calls (chunks); entries that saw no token are left out.
  ImportanceMatrix result(int32_t ncall, const std::string& dataset) const;

 private:
  struct Acc {
    std::string name;
    std::vector<double> sum;
    int64_t count = 0;
  };
  std::map<const uint8_t*, Acc> acc_;   // by the weight's data pointer
};

}  // namespace lokal
