// Tokenizer tests: llama.cpp's tokenizer test vectors for 10 vocabularies, the golden prompts and
// greedy texts of every model, unknown characters, special tokens and the streaming decoder.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/gguf.h"
#include "support/test_data.h"
#include "tokenizer/vocab.h"

namespace fs = std::filesystem;
using lokal::GGUFFile;
using lokal::StreamDecoder;
using lokal::Vocab;

namespace {

// The Vocab copies what it needs, so the file is closed right after loading.
std::unique_ptr<Vocab> load(const std::string& path) {
  auto f = GGUFFile::open(path);
  return Vocab::from_gguf(*f);
}

// Vocabularies are loaded once per test binary.
const Vocab& vocab_file(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Vocab>> cache;
  auto& v = cache[name];
  if (!v) v = load(lokal::test::vocab_dir() + "/" + name);
  return *v;
}
const Vocab& model_vocab(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<Vocab>> cache;
  auto& v = cache[rel];
  if (!v) v = load(lokal::test::data_path(rel));
  return *v;
}

std::string show(const std::vector<int32_t>& ids) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? " " : "") << ids[i];
  s << "]";
  return s.str();
}

std::string escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20) out += "\\x" + std::string(1, "0123456789ABCDEF"[c >> 4]) + "0123456789ABCDEF"[c & 15];
    else out += static_cast<char>(c);
  }
  return out;
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b = s[i];
    size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's test-tokenizer-0 vectors

struct VocabCase {
  std::string input;
  std::vector<int32_t> expected;
};

std::vector<VocabCase> read_cases(const std::string& vocab) {
  const std::string dir = lokal::test::test_data_dir() + "/tokenizers/";
  const std::string inp = lokal::test::read_file(dir + vocab + ".inp");
  const std::string outp = lokal::test::read_file(dir + vocab + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<VocabCase> cases;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    if (end == std::string::npos) break;
    cases.push_back({inp.substr(pos, end - pos), {}});
    pos = end + sep.size();
  }
  std::istringstream lines(outp);
  std::string line;
  size_t k = 0;
  while (std::getline(lines, line)) {
    if (k >= cases.size()) break;
    std::istringstream ids(line);
    int32_t id;
    while (ids >> id) cases[k].expected.push_back(id);
    ++k;
  }
  EXPECT_EQ(k, cases.size()) << vocab << ": .out has fewer lines than .inp has cases";
  return cases;
}

class VocabVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(VocabVectors, MatchesLlamaCpp) {
  const std::string name = GetParam();
  const Vocab& v = vocab_file(name);
  const auto cases = read_cases(name);
  ASSERT_EQ(cases.size(), 46u);
  size_t passed = 0;
  for (const auto& c : cases) {
    const auto got = v.tokenize(c.input, false, false);
    if (got == c.expected) {
      ++passed;
    } else {
      ADD_FAILURE() << name << ": input \"" << escape(c.input) << "\"\n  expected " << show(c.expected)
                    << "\n  got      " << show(got);
    }
  }
  EXPECT_EQ(passed, cases.size()) << name;
}

INSTANTIATE_TEST_SUITE_P(AllVocabs, VocabVectors,
                         ::testing::Values("ggml-vocab-bert-bge.gguf", "ggml-vocab-deepseek-coder.gguf",
                                           "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-falcon.gguf",
                                           "ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf",
                                           "ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf",
                                           "ggml-vocab-qwen2.gguf", "ggml-vocab-starcoder.gguf"),
                         [](const auto& info) {
                           std::string n = info.param.substr(11, info.param.size() - 11 - 5);  // ggml-vocab-X.gguf
                           for (char& c : n)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// Inputs beyond the test vectors where llama.cpp's own rules show: its whitespace set (U+0085 yes,
// U+180E no), non-ASCII whitespace never matching DeepSeek's literal ranges, ill-formed UTF-8,
// USER_DEFINED tokens matched without parse_special, Phi-3's right-stripping special tokens, BERT's
// accent stripping. Expected ids were produced by llama.cpp c392e50 (llama_tokenize).
TEST(Tokenizer, MatchesLlamaCppOnEdgeCases) {
  struct Case {
    const char* vocab;
    std::string text;
    bool parse_special;
    std::vector<int32_t> ids;
  };
  const std::vector<Case> cases = {
      {"gpt-2", "\xE1\xA0\x8E'll", false, {157, 254, 236, 6, 297}},
      {"gpt-2", "a\xC2\x85" "b c", false, {64, 126, 227, 65, 269}},
      {"gpt-2", "\n\n\xE1\xA0\x8E't", false, {198, 198, 157, 254, 236, 6, 83}},
      {"gpt-2", "x \xC2\xA0 y", false, {87, 5624, 331}},
      {"gpt-2", "\xFF\xC3(ok", false, {6353, 7, 482}},
      {"deepseek-llm", "\t\t\xE3\x80\x80", false, {486, 88946}},
      {"deepseek-llm", "<\xE2\x80\xA9  )", false, {27, 350, 20535, 2238}},
      {"deepseek-llm", "\xE3\x80\x80\xEF\xBC\x81", false, {88946, 2160}},
      {"qwen2", "Hello\xC2\xA0world\xE2\x80\x83!", false, {9707, 4102, 14615, 378, 225, 0}},
      {"qwen2", std::string("ab\xED\xA0\x80" "cd\xC0\x80", 9), false, {370, 169, 63219, 4385, 188}},
      {"qwen2", "<|im_start|>user\nhi<|im_end|>", true, {151644, 872, 198, 6023, 151645}},
      {"llama-bpe", "I'VE 12345 \xC2\x85x", false, {40, 6, 4592, 220, 4513, 1774, 220, 116360, 87}},
      {"llama-spm", "a\xFF" "b\xE2\x82", false, {263, 258, 101, 229, 133}},
      {"llama-spm", "<s>x</s> <unk>", true, {1, 921, 2, 259, 0}},
      {"phi-3", "a</s>  b", false, {263, 2, 289}},
      {"phi-3", "<|end|>  x <s> y", true, {32007, 921, 29871, 1, 29871, 343}},
      {"deepseek-coder", "\xC3\xB5 and \xC3\x80 [PAD32250]!", false, {32000, 285, 207, 32004, 207, 32250, 0}},
      {"bert-bge", "\xC7\x84 \xC4\xB0stanbul \xEA\xB0\x80\xEA\xB0\x81 Caf\xC3\xA9\xCC\x81 e\xCC\x81 \xE3\x80\x80x\xC2\xAD", false,
       {100, 9960, 1455, 29991, 100, 100, 1060}},
  };
  for (const auto& c : cases) {
    const Vocab& v = vocab_file(std::string("ggml-vocab-") + c.vocab + ".gguf");
    EXPECT_EQ(show(v.tokenize(c.text, false, c.parse_special)), show(c.ids)) << c.vocab << ": \"" << escape(c.text) << "\"";
  }
}

// Byte-level BPE is lossless: pieces give back the input exactly (SPM: plus the dummy space).
TEST(Tokenizer, RoundTripsTestInputs) {
  for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf",
                           "ggml-vocab-deepseek-coder.gguf", "ggml-vocab-llama-spm.gguf"}) {
    const Vocab& v = vocab_file(name);
    for (const auto& c : read_cases(name)) {
      const std::string back = v.detokenize(v.tokenize(c.input, false, false));
      const std::string want = (v.model_name() == "llama" && !c.input.empty() ? " " : "") + c.input;
      EXPECT_EQ(back, want) << name << ": \"" << escape(c.input) << "\"";
    }
  }
}

// A Vocab is used from several threads at once (e.g. a server); results must not change.
TEST(Tokenizer, ConcurrentUseGivesSameResults) {
  for (const char* name : {"ggml-vocab-qwen2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-bert-bge.gguf"}) {
    const Vocab& v = vocab_file(name);
    const auto cases = read_cases(name);
    std::vector<std::vector<int32_t>> want;
    for (const auto& c : cases) want.push_back(v.tokenize(c.input, true, true));
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int rep = 0; rep < 5; ++rep)
          for (size_t k = 0; k < cases.size(); ++k) mismatches[t] += v.tokenize(cases[k].input, true, true) != want[k];
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << name << " thread " << t;
  }
}

TEST(Tokenizer, Metadata) {
  const Vocab& q = vocab_file("ggml-vocab-qwen2.gguf");
  EXPECT_EQ(q.model_name(), "gpt2");
  EXPECT_EQ(q.pre_name(), "qwen2");
  EXPECT_EQ(q.n_tokens(), 151936);
  EXPECT_EQ(q.n_merges(), 151387u);
  EXPECT_EQ(q.bos(), 151643);
  EXPECT_EQ(q.eos(), 151645);
  EXPECT_EQ(q.eot(), 151645);
  EXPECT_EQ(q.pad(), 151643);
  EXPECT_EQ(q.unk(), -1);
  EXPECT_FALSE(q.add_bos());
  EXPECT_TRUE(q.is_eog(151645));  // <|im_end|>
  EXPECT_TRUE(q.is_eog(151643));  // <|endoftext|>
  EXPECT_FALSE(q.is_eog(151644));  // <|im_start|>
  EXPECT_TRUE(q.is_control(151644));
  EXPECT_TRUE(q.is_user_defined(q.find_token("<think>")));
  EXPECT_EQ(q.token_text(151644), "<|im_start|>");

  const Vocab& l3 = vocab_file("ggml-vocab-llama-bpe.gguf");
  EXPECT_EQ(l3.n_merges(), 280147u);
  EXPECT_TRUE(l3.add_bos());
  EXPECT_EQ(l3.eot(), 128009);
  EXPECT_TRUE(l3.is_eog(128009));  // <|eot_id|>
  EXPECT_TRUE(l3.is_eog(128001));  // <|end_of_text|> = eos
  EXPECT_EQ(l3.tokenize("Hello", true, false), (std::vector<int32_t>{128000, 9906}));

  const Vocab& spm = vocab_file("ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(spm.model_name(), "llama");
  EXPECT_EQ(spm.n_merges(), 0u);
  EXPECT_EQ(spm.bos(), 1);
  EXPECT_EQ(spm.eos(), 2);
  EXPECT_EQ(spm.unk(), 0);
  EXPECT_TRUE(spm.is_eog(2));
  EXPECT_FALSE(spm.is_eog(1));
  EXPECT_EQ(spm.tokenize("Hello", true, false), (std::vector<int32_t>{1, 15043}));

  const Vocab& bert = vocab_file("ggml-vocab-bert-bge.gguf");
  EXPECT_EQ(bert.model_name(), "bert");
  EXPECT_EQ(bert.unk(), 100);
  EXPECT_EQ(bert.sep(), 102);
  // [CLS] hello [SEP]
  EXPECT_EQ(bert.tokenize("Hello", true, false), (std::vector<int32_t>{101, 7592, 102}));
}

// The 128k-token Llama 3 vocabulary (280k merges) and the 152k-token Qwen2 one load in well under
// 200 ms (best of 3, optimized builds only).
// The big BPE vocabs load completely. Load time is printed for information only (speed is
// measured by benchmarks, not asserted in tests: the machine is shared and noisy).
TEST(Tokenizer, LoadsBigVocabs) {
  struct Want { const char* name; int32_t n_tokens; size_t n_merges; };
  for (const Want w : {Want{"ggml-vocab-llama-bpe.gguf", 128256, 280147}, Want{"ggml-vocab-qwen2.gguf", 151936, 151387}}) {
    auto f = GGUFFile::open(lokal::test::vocab_dir() + "/" + w.name);
    const auto t0 = std::chrono::steady_clock::now();
    const auto v = Vocab::from_gguf(*f);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %s: Vocab::from_gguf %.1f ms\n", w.name, ms);
    EXPECT_EQ(v->n_tokens(), w.n_tokens) << w.name;
    EXPECT_EQ(v->n_merges(), w.n_merges) << w.name;
  }
}

// ---------------------------------------------------------------------------------------------
// Golden prompts and greedy continuations of every model

TEST(Tokenizer, GoldenPromptsAndGreedyText) {
  const std::string dir = lokal::test::test_data_dir() + "/golden/logits";
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 66u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    const auto j = nlohmann::json::parse(lokal::test::read_file(path));
    const Vocab& v = model_vocab(j.at("model").get<std::string>());
    EXPECT_EQ(v.tokenize(j.at("prompt").get<std::string>(), true, false), j.at("tokens").get<std::vector<int32_t>>());
    const auto& g = j.at("greedy");
    const auto ids = g.at("tokens").get<std::vector<int32_t>>();
    const std::string text = v.detokenize(ids, true);
    const std::string want_text = g.at("text").get<std::string>();
    if (g.contains("text_bytes_hex")) {
      EXPECT_EQ(text, from_hex(g.at("text_bytes_hex").get<std::string>()));
    } else {
      EXPECT_EQ(text, want_text);
    }
    // The streaming decoder gives the golden text, whose ill-formed bytes are U+FFFD already.
    StreamDecoder sd(v, true);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string part = sd.push(id);
      EXPECT_TRUE(valid_utf8(part));
      streamed += part;
    }
    streamed += sd.flush();
    EXPECT_EQ(streamed, want_text);
  }
}

// ---------------------------------------------------------------------------------------------
// Unknown characters, special tokens, pieces

TEST(Tokenizer, CharVocabWithoutByteFallbackMapsUnknownToUnk) {
  const Vocab& v = model_vocab("models/real/babyllama-936K-f32.gguf");
  ASSERT_EQ(v.n_tokens(), 105);
  ASSERT_EQ(v.unk(), 0);
  ASSERT_LT(v.find_token("<0x0A>"), 0);
  ASSERT_LT(v.find_token("\n"), 0);
  std::vector<int32_t> ids;
  ASSERT_NO_THROW(ids = v.tokenize("Once upon a time\nthere", true, false));
  // The newline becomes <unk>; everything else is what it would be without it.
  const auto head = v.tokenize("Once upon a time", true, false);
  ASSERT_GT(ids.size(), head.size());
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<long>(head.size())), head) << show(ids);
  EXPECT_EQ(ids[head.size()], 0) << show(ids);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 0), 1) << show(ids);
  EXPECT_EQ(v.detokenize(std::vector<int32_t>(ids.begin() + static_cast<long>(head.size()) + 1, ids.end())), "there");
  EXPECT_EQ(v.tokenize("\n", false, false), (std::vector<int32_t>{v.find_token("\xE2\x96\x81"), 0}));
  EXPECT_EQ(v.tokenize("\n\n", false, false), (std::vector<int32_t>{v.find_token("\xE2\x96\x81"), 0, 0}));
}

TEST(Tokenizer, ParsesSpecialTokensOnRequest) {
  const Vocab& q = vocab_file("ggml-vocab-qwen2.gguf");
  const int32_t im_start = q.find_token("<|im_start|>");
  ASSERT_EQ(im_start, 151644);
  const auto parsed = q.tokenize("<|im_start|>user", false, true);
  ASSERT_EQ(parsed.size(), 2u) << show(parsed);
  EXPECT_EQ(parsed[0], im_start);
  EXPECT_EQ(parsed[1], q.find_token("user"));
  // Without parse_special the text is plain text.
  const auto plain = q.tokenize("<|im_start|>user", false, false);
  EXPECT_GT(plain.size(), 2u);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), im_start), 0);
  // USER_DEFINED tokens are matched either way.
  const int32_t think = q.find_token("<think>");
  EXPECT_EQ(q.tokenize("a<think>b", false, false),
            (std::vector<int32_t>{q.find_token("a"), think, q.find_token("b")}));
  // Control tokens render only when asked.
  EXPECT_EQ(q.token_to_piece(im_start), "");
  EXPECT_EQ(q.token_to_piece(im_start, true), "<|im_start|>");
  EXPECT_EQ(q.detokenize(parsed, true), "<|im_start|>user");
  EXPECT_EQ(q.token_to_piece(think), "<think>");

  // SPM: a special token is followed by a dummy space prefix for the next text.
  const Vocab& spm = vocab_file("ggml-vocab-llama-spm.gguf");
  const auto s = spm.tokenize("<s>Hello</s>", true, true);
  EXPECT_EQ(s, (std::vector<int32_t>{1, 1, 15043, 2}));
  EXPECT_EQ(spm.tokenize("</s>", false, false).front(), spm.find_token("\xE2\x96\x81</"));
}

TEST(Tokenizer, PiecesAndOutOfRangeIds) {
  const Vocab& spm = vocab_file("ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(spm.token_to_piece(15043), " Hello");
  EXPECT_EQ(spm.token_to_piece(spm.find_token("<0x0A>")), "\n");
  EXPECT_EQ(spm.token_to_piece(1), "");
  EXPECT_EQ(spm.token_to_piece(1, true), "<s>");
  EXPECT_EQ(spm.token_to_piece(-1), "");
  EXPECT_EQ(spm.token_to_piece(32000), "");
  EXPECT_EQ(spm.token_to_piece(INT32_MAX), "");
  EXPECT_THROW(spm.token_text(32000), lokal::Error);
  EXPECT_EQ(spm.detokenize({15043, -5, 99999, 2}), " Hello");

  const Vocab& g = vocab_file("ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(g.token_to_piece(g.find_token("\xC4\xA0world")), " world");  // "Ġworld"
  EXPECT_EQ(g.token_to_piece(g.find_token("\xC4\x8A")), "\n");           // "Ċ"
}

// ---------------------------------------------------------------------------------------------
// Streaming decoder

// Feeds ids one by one; checks that nothing but complete UTF-8 comes out.
std::string stream(const Vocab& v, const std::vector<int32_t>& ids, size_t* held_back) {
  StreamDecoder sd(v);
  std::string out;
  *held_back = 0;
  for (int32_t id : ids) {
    const std::string part = sd.push(id);
    EXPECT_TRUE(valid_utf8(part)) << "partial UTF-8 emitted after token " << id;
    if (part.empty() && !v.token_to_piece(id).empty()) ++*held_back;
    out += part;
  }
  out += sd.flush();
  return out;
}

TEST(StreamDecoder, HoldsBackCharactersSplitOverByteTokens) {
  const Vocab& v = vocab_file("ggml-vocab-llama-spm.gguf");
  const std::string text = "llama \xF0\x9F\xA6\x99 and \xE1\x9E\x80 done";  // U+1F999 and U+1780 need byte fallback
  const auto ids = v.tokenize(text, false, false);
  const int32_t f0 = v.find_token("<0xF0>");
  ASSERT_NE(std::find(ids.begin(), ids.end(), f0), ids.end()) << show(ids);
  size_t held = 0;
  EXPECT_EQ(stream(v, ids, &held), v.detokenize(ids));
  EXPECT_EQ(v.detokenize(ids), " " + text);
  EXPECT_GE(held, 3u);  // F0 9F A6 of the emoji, E1 9E of the Khmer letter

  StreamDecoder sd(v);
  EXPECT_EQ(sd.push(f0), "");
  EXPECT_EQ(sd.push(v.find_token("<0x9F>")), "");
  EXPECT_EQ(sd.push(v.find_token("<0xA6>")), "");
  EXPECT_EQ(sd.push(v.find_token("<0x99>")), "\xF0\x9F\xA6\x99");
}

TEST(StreamDecoder, HoldsBackEmojiSplitAcrossBpeTokens) {
  for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-qwen2.gguf", "ggml-vocab-llama-bpe.gguf"}) {
    const Vocab& v = vocab_file(name);
    const std::string text = "I \xE2\x9D\xA4\xEF\xB8\x8F \xF0\x9F\xA6\x99\xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB and \xE4\xB8\xAD";
    const auto ids = v.tokenize(text, false, false);
    size_t partial_pieces = 0;
    for (int32_t id : ids) partial_pieces += valid_utf8(v.token_to_piece(id)) ? 0 : 1;
    EXPECT_GT(partial_pieces, 0u) << name << ": no token splits a character; the test would prove nothing";
    size_t held = 0;
    EXPECT_EQ(stream(v, ids, &held), text) << name;
    EXPECT_GT(held, 0u) << name;
  }
}

TEST(StreamDecoder, ReplacesIllFormedBytes) {
  const Vocab& v = vocab_file("ggml-vocab-llama-spm.gguf");
  auto byte = [&](int b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    return v.find_token(name);
  };
  StreamDecoder sd(v);
  std::string out = sd.push(byte(0xE2));         // lead of a 3-byte character
  out += sd.push(byte(0x82));                    // ... continued
  EXPECT_EQ(out, "");
  out += sd.push(byte(0x41));                    // 'A' breaks it: one U+FFFD for E2 82, then 'A'
  EXPECT_EQ(out, "\xEF\xBF\xBD" "A");
  EXPECT_EQ(sd.push(byte(0xFF)), "\xEF\xBF\xBD");  // never valid
  EXPECT_EQ(sd.push(byte(0xC3)), "");
  EXPECT_EQ(sd.flush(), "\xEF\xBF\xBD");          // cut off by the end of the stream
  EXPECT_EQ(sd.flush(), "");
}

// ---------------------------------------------------------------------------------------------
// Bad metadata

// A tiny GGUF v3 file with the given metadata (no tensors).
class GGUFBuilder {
 public:
  GGUFBuilder& str(const std::string& key, const std::string& v) {
    this->key(key, 8);
    string(v);
    ++n_;
    return *this;
  }
  GGUFBuilder& strs(const std::string& key, const std::vector<std::string>& v) {
    this->key(key, 9);
    u32(8);
    u64(v.size());
    for (const auto& s : v) string(s);
    ++n_;
    return *this;
  }
  GGUFBuilder& i32s(const std::string& key, const std::vector<int32_t>& v) {
    this->key(key, 9);
    u32(5);
    u64(v.size());
    for (int32_t x : v) raw(&x, 4);
    ++n_;
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    auto put = [&](const void* p, size_t n) { out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    put("GGUF", 4);
    const uint32_t version = 3;
    const uint64_t n_tensors = 0;
    put(&version, 4);
    put(&n_tensors, 8);
    put(&n_, 8);
    put(body_.data(), body_.size());
    return out;
  }

 private:
  void raw(const void* p, size_t n) { body_.append(static_cast<const char*>(p), n); }
  void u32(uint32_t x) { raw(&x, 4); }
  void u64(uint64_t x) { raw(&x, 8); }
  void string(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void key(const std::string& k, uint32_t type) {
    string(k);
    u32(type);
  }
  std::string body_;
  uint64_t n_ = 0;
};

std::string load_error(const GGUFBuilder& b) {
  const auto bytes = b.bytes();
  auto f = GGUFFile::parse(bytes.data(), bytes.size(), "bad.gguf");
  try {
    Vocab::from_gguf(*f);
  } catch (const lokal::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Tokenizer, RejectsBadMetadataNamingTheFile) {
  const std::vector<std::string> toks = {"a", "b", "ab"};
  EXPECT_NE(load_error(GGUFBuilder().strs("tokenizer.ggml.tokens", toks)).find("bad.gguf"), std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().strs("tokenizer.ggml.tokens", toks)).find("tokenizer.ggml.model"),
            std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().str("tokenizer.ggml.model", "llama")).find("tokenizer.ggml.tokens"),
            std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().str("tokenizer.ggml.model", "rwkv").strs("tokenizer.ggml.tokens", toks))
                .find("unsupported tokenizer model 'rwkv'"),
            std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "klingon")
                           .strs("tokenizer.ggml.tokens", toks).strs("tokenizer.ggml.merges", {"a b"}))
                .find("unsupported pre-tokenizer 'klingon'"),
            std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "gpt-2")
                           .strs("tokenizer.ggml.tokens", toks))
                .find("tokenizer.ggml.merges"),
            std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", toks)
                           .i32s("tokenizer.ggml.token_type", {1, 1}))
                .find("token_type has 2 entries for 3 tokens"),
            std::string::npos);
  EXPECT_NE(load_error(GGUFBuilder().str("tokenizer.ggml.model", "llama").strs("tokenizer.ggml.tokens", {})).find("empty"),
            std::string::npos);
}

// A small BPE vocabulary built in memory: merges by rank, and a merge part that is no token.
TEST(Tokenizer, BpeMergesByRank) {
  std::vector<std::string> toks;  // printable ASCII: the id of character ch is ch - 0x21
  for (char ch = 0x21; ch <= 0x7E; ++ch) toks.emplace_back(1, ch);
  toks.push_back("ab");
  toks.push_back("bc");
  toks.push_back("abc");
  const int32_t ab = static_cast<int32_t>(toks.size()) - 3, bc = ab + 1, abc = ab + 2;
  auto make = [&](const std::vector<std::string>& merges) {
    GGUFBuilder b;
    b.str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "gpt-2").strs("tokenizer.ggml.tokens", toks).strs(
        "tokenizer.ggml.merges", merges);
    return b.bytes();
  };
  auto tok = [&](const std::vector<uint8_t>& bytes, const std::string& text) {
    auto f = GGUFFile::parse(bytes.data(), bytes.size(), "mem.gguf");
    return Vocab::from_gguf(*f)->tokenize(text, false, false);
  };
  const int32_t a = 'a' - 0x21, c = 'c' - 0x21;
  EXPECT_EQ(tok(make({"a b", "b c", "ab c"}), "abc"), (std::vector<int32_t>{abc}));
  EXPECT_EQ(tok(make({"b c", "a b", "ab c"}), "abc"), (std::vector<int32_t>{a, bc}));  // "b c" ranks first
  EXPECT_EQ(tok(make({"a b"}), "abc"), (std::vector<int32_t>{ab, c}));
  // "xy" is not a token: the merge still happens, the symbol then falls back to one-byte tokens.
  EXPECT_EQ(tok(make({"x y"}), "xy"), (std::vector<int32_t>{'x' - 0x21, 'y' - 0x21}));
}

}  // namespace
