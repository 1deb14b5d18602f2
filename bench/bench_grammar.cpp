// bench/bench_grammar.cpp - grammar-constrained decoding on the Qwen2 vocabulary (151936 tokens): fill_mask for a
// JSON-schema grammar in typical states, three ways:
//   cold  the cache dropped before each mask: interning states, building transitions, walking the trie;
//   walk  the DFA warm but no mask cache (max_cached_masks = 0): the per-mask trie walk alone;
//   hit   the mask cached for the state (what repeated states cost: inside a string, before a key);
// "in_bounded_string" is inside a string with maxLength: every character is a new state (a count), so there masks
// are never reused and "walk" is what each token costs.
// a whole document generated token by token (fill_mask + accept_token per token; time / tokens = per token), allowed()
// for 40 candidate tokens (the lazy top-k path), accept_token, building the token index.
//
// Usage: bench_grammar [--vocab=FILE.gguf] [Google Benchmark flags]
//   FILE defaults to $LOKAL_QWEN2_VOCAB, else the vocabulary the tests extract into the build folder
//   (build/test-vocab/ggml-vocab-qwen2.gguf, from tokenizers/vocab-gguf.tar.xz of the shared test data).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "core/error.h"
#include "core/gguf.h"
#include "tokenizer/vocab.h"

using namespace lokal;

namespace {

std::string g_vocab_path;

const std::shared_ptr<const TokenIndex>& index() {
  static std::shared_ptr<const TokenIndex> ti = [] {
    auto f = GGUFFile::open(g_vocab_path);
    auto v = Vocab::from_gguf(*f);
    return TokenIndex::from_vocab(*v);
  }();
  return ti;
}

const std::shared_ptr<const Grammar>& grammar() {
  static std::shared_ptr<const Grammar> g = Grammar::parse(json_schema_to_gbnf(nlohmann::ordered_json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string"},
      "age": {"type": "integer", "minimum": 0, "maximum": 150},
      "email": {"type": "string", "format": "email"},
      "bio": {"type": "string", "maxLength": 300},
      "score": {"type": "number"},
      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
      "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                  "required": ["city"]}
    },
    "required": ["name", "age", "tags"]
  })")));
  return g;
}

struct Prefix {
  const char* name;
  const char* text;
};
const Prefix kStates[] = {
    {"start", ""},
    {"expect_key", "{\n  "},
    {"in_string", "{\n  \"name\": \"John Sm"},
    {"in_string_unicode", "{\n  \"name\": \"J\xC3\xBCrgen \xE5\x8C\x97"},
    {"after_number", "{\n  \"name\": \"John\",\n  \"age\": 42"},
    {"in_array", "{\n  \"name\": \"John\",\n  \"age\": 42,\n  \"tags\": [\"a\", "},
    {"nested_key", "{\"name\": \"J\", \"age\": 1, \"tags\": [], \"address\": {\"ci"},
    {"in_bounded_string", "{\"name\": \"J\", \"age\": 1, \"bio\": \"Born in Oslo, he"},
};

enum Mode { kCold, kWalk, kHit };

void BM_FillMask(benchmark::State& st, int which, Mode mode) {
  GrammarMatcherOptions opt;
  if (mode != kHit) opt.max_cached_masks = 0;
  GrammarMatcher m(grammar(), index(), opt);
  if (!m.accept_bytes(kStates[which].text)) {
    st.SkipWithError("prefix refused");
    return;
  }
  std::vector<uint8_t> mask;
  m.fill_mask(mask);  // warm
  size_t allowed = 0;
  for (uint8_t x : mask) allowed += x;
  for (auto _ : st) {
    if (mode == kCold) {
      st.PauseTiming();
      m.clear_cache();
      st.ResumeTiming();
    }
    m.fill_mask(mask);
    benchmark::DoNotOptimize(mask.data());
  }
  st.counters["allowed"] = static_cast<double>(allowed);
  st.counters["states"] = static_cast<double>(m.cache_stats().states);
}

// The sampler's lazy path: allowed() on 40 candidate tokens (random ones here; a fresh mask cache so nothing is
// served from a cached mask).
void BM_Allowed40(benchmark::State& st, int which) {
  GrammarMatcherOptions opt;
  opt.max_cached_masks = 0;
  GrammarMatcher m(grammar(), index(), opt);
  if (!m.accept_bytes(kStates[which].text)) {
    st.SkipWithError("prefix refused");
    return;
  }
  std::mt19937 rng(1);
  std::vector<int32_t> cand(40);
  for (auto& c : cand) c = static_cast<int32_t>(rng() % static_cast<uint32_t>(index()->n_tokens()));
  for (auto _ : st) {
    int n = 0;
    for (const int32_t id : cand) n += m.allowed(id);
    benchmark::DoNotOptimize(n);
  }
}

void BM_AcceptToken(benchmark::State& st) {
  // Token by token through a whole object (the ids of single-byte pieces are looked up once).
  const std::string text = "{\"name\": \"John Smith\", \"age\": 42, \"tags\": [\"a\", \"b\"]}";
  std::vector<int32_t> byte_token(256, -1);
  for (int32_t id = 0; id < index()->n_tokens(); ++id)
    if (index()->piece(id).size() == 1) byte_token[static_cast<uint8_t>(index()->piece(id)[0])] = id;
  GrammarMatcher m(grammar(), index());
  for (auto _ : st) {
    m.reset();
    for (const char c : text) benchmark::DoNotOptimize(m.accept_token(byte_token[static_cast<uint8_t>(c)]));
  }
  st.SetItemsProcessed(st.iterations() * static_cast<int64_t>(text.size()));
}

// A whole generation: the tokens of a JSON document (as the tokenizer splits it), each step one fill_mask and one
// accept_token, as a sampler without top-k does. `fresh`: a new matcher (empty cache) per document, as for a new
// request; else one matcher reset between documents (its cache kept). Reported per token.
const char* kDocument =
    "{\n  \"name\": \"John Smith\",\n  \"age\": 42,\n  \"email\": \"john.smith@example.com\",\n"
    "  \"bio\": \"Born in Oslo, he studied physics in Z\u00fcrich and now writes software for weather forecasts; "
    "he likes long walks.\",\n  \"score\": 97.5,\n  \"tags\": [\"physics\", \"weather\", \"hiking\"],\n"
    "  \"address\": {\"city\": \"Bergen\", \"zip\": \"5003\"}\n}";

void BM_Generate(benchmark::State& st, bool fresh) {
  auto f = GGUFFile::open(g_vocab_path);
  auto v = Vocab::from_gguf(*f);
  const std::vector<int32_t> ids = v->tokenize(kDocument, false, false);
  std::vector<uint8_t> mask;
  GrammarMatcher kept(grammar(), index());
  for (auto _ : st) {
    GrammarMatcher m = fresh ? GrammarMatcher(grammar(), index()) : kept;
    m.reset();
    for (const int32_t id : ids) {
      m.fill_mask(mask);
      if (!mask[static_cast<size_t>(id)] || !m.accept_token(id)) {
        st.SkipWithError("the document's token is refused");
        return;
      }
    }
    benchmark::DoNotOptimize(m.is_complete());
  }
  st.counters["tokens"] = static_cast<double>(ids.size());
  st.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(ids.size()), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_BuildIndex(benchmark::State& st) {
  auto f = GGUFFile::open(g_vocab_path);
  auto v = Vocab::from_gguf(*f);
  for (auto _ : st) benchmark::DoNotOptimize(TokenIndex::from_vocab(*v));
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* env = std::getenv("LOKAL_QWEN2_VOCAB")) g_vocab_path = env;
#ifdef LOKAL_BINARY_DIR
  if (g_vocab_path.empty()) g_vocab_path = std::string(LOKAL_BINARY_DIR) + "/test-vocab/ggml-vocab-qwen2.gguf";
#endif
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--vocab=", 8) == 0) g_vocab_path = argv[i] + 8;
    else args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  try {
    std::printf("vocabulary: %s (%d tokens, %zu trie nodes)\n", g_vocab_path.c_str(), index()->n_tokens(),
                index()->nodes().size());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n(pass --vocab=FILE.gguf; the tests extract Qwen2's into build/test-vocab/)\n",
                 e.what());
    return 1;
  }
  for (int i = 0; i < static_cast<int>(std::size(kStates)); ++i) {
    const std::string s = kStates[i].name;
    benchmark::RegisterBenchmark(("fill_mask/" + s + "/cold").c_str(), BM_FillMask, i, kCold)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("fill_mask/" + s + "/walk").c_str(), BM_FillMask, i, kWalk)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("fill_mask/" + s + "/hit").c_str(), BM_FillMask, i, kHit)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("generate/fresh_cache", BM_Generate, true)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("generate/kept_cache", BM_Generate, false)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("allowed_x40/in_string", BM_Allowed40, 2)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("allowed_x40/expect_key", BM_Allowed40, 1)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("accept_token", BM_AcceptToken)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("build_token_index", BM_BuildIndex)->Unit(benchmark::kMillisecond)->Iterations(3);
  benchmark::Initialize(&n, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
