// Helpers of the chat-layer options (template, chat, run): JSON arguments and grammars.
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "tokenizer/vocab.h"

namespace lokal::cli {

namespace {
constexpr uint64_t kMaxJsonArgBytes = 16u << 20;  // messages, tools, schemas: far above any real one
constexpr uint64_t kMaxGrammarBytes = 4u << 20;
}  // namespace

SamplingParams SamplingArgs::params(const Vocab& vocab) const {
  SamplingParams sp;
  sp.temperature = temp;
  sp.top_k = top_k;
  sp.top_p = top_p;
  sp.min_p = min_p;
  sp.repeat_penalty = repeat_penalty;
  sp.repeat_last_n = repeat_last_n;
  sp.presence_penalty = presence_penalty;
  sp.frequency_penalty = frequency_penalty;
  sp.seed = seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}();
  for (const std::string& b : logit_bias) {
    // TOKEN_ID(+|-)BIAS, e.g. 15043+1 or 2-inf; the sign belongs to the bias.
    const size_t at = b.find_first_of("+-", 1);
    const auto bad = [&](const std::string& why) { throw Error("--logit-bias " + b + ": " + why); };
    if (b.empty() || at == std::string::npos) bad("expected TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 2-inf)");
    int64_t id = -1;
    float bias = 0;
    try {
      size_t used = 0;
      id = std::stoll(b.substr(0, at), &used);
      if (used != at) bad("the token id is not a number");
      const std::string v = b.substr(at);
      if (v == "-inf" || v == "-INF") {
        bias = -std::numeric_limits<float>::infinity();
      } else {
        bias = std::stof(v, &used);
        if (used != v.size() || !std::isfinite(bias)) bad("the bias is not a finite number (or -inf)");
      }
    } catch (const std::logic_error&) {
      bad("expected TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 2-inf)");
    }
    if (id < 0 || id >= vocab.n_tokens())
      bad("token " + std::to_string(id) + " is not in the vocabulary (0.." + std::to_string(vocab.n_tokens() - 1) + ")");
    sp.logit_bias.emplace_back(static_cast<int32_t>(id), bias);
  }
  if (ignore_eos) sp.ban_end_of_generation(vocab);
  return sp;
}

void add_sampling_options(CLI::App* cmd, SamplingArgs& s) {
  cmd->add_option("--temp", s.temp, "Temperature (0: greedy)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", s.top_k, "Top-k (0: off)")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", s.top_p, "Top-p nucleus (1: off)")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--min-p", s.min_p, "Min-p relative to the top token (0: off)")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--repeat-penalty", s.repeat_penalty, "Repetition penalty (1: off)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--repeat-last-n", s.repeat_last_n, "Tokens considered by the penalties")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--presence-penalty", s.presence_penalty, "Presence penalty")->capture_default_str();
  cmd->add_option("--frequency-penalty", s.frequency_penalty, "Frequency penalty")->capture_default_str();
  cmd->add_option("-s,--seed", s.seed, "Random seed (-1: random)")->capture_default_str();
  cmd->add_flag("--ignore-eos", s.ignore_eos, "Never end at an end-of-generation token (benchmarks, tests)");
  cmd->add_option("-l,--logit-bias", s.logit_bias, "Bias a token: TOKEN_ID+BIAS or TOKEN_ID-BIAS (-inf bans it); repeatable")
      ->take_all();
}

void add_spec_options(CLI::App* cmd, SpecArgs& s) {
  cmd->add_option("--model-draft,--draft", s.draft, "Speculative decoding with this draft model (GGUF; same or "
                                                     "different vocabulary)");
  cmd->add_option("--draft-max", s.draft_max, "Most tokens drafted per target pass")
      ->capture_default_str()->check(CLI::Range(1, 128));
  cmd->add_option("--draft-min", s.draft_min, "Fewest drafted tokens worth a verification pass")
      ->capture_default_str()->check(CLI::Range(0, 128));
  cmd->add_option("--draft-p-min", s.p_min, "Stop drafting after a token whose probability among the draft's top 10 is "
                                                  "below this (llama.cpp's measure)")
      ->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_flag("--draft-ngram", s.ngram, "Speculative decoding by n-gram lookup in the context (no draft model; tried "
                                          "first when --draft is given too)");
  cmd->add_option("--draft-vocab", s.vocab, "A draft with another vocabulary: auto, intersect (shared tokens, "
                                            "lossless sampling) or text (translate through text)")
      ->capture_default_str()->check(CLI::IsMember({"auto", "intersect", "text"}));
  cmd->add_flag("--draft-fixed", s.fixed, "Always draft up to --draft-max tokens (no adaptation to the acceptance; "
                                          "--draft-p-min still ends a draft)");
  cmd->add_option("--cache-type-k-draft", s.cache_type_k, "The draft's KV cache type for K")->capture_default_str();
  cmd->add_option("--cache-type-v-draft", s.cache_type_v, "The draft's KV cache type for V")->capture_default_str();
  cmd->add_option("--gpu-layers-draft,--n-gpu-layers-draft", s.gpu_layers,
                  "The draft's GPU layers (-ngld; default: the target's -ngl)")->check(CLI::Range(0, 100000));
  cmd->add_option("--device-draft", s.device, "The draft's GPU (default: the target's --device)")
      ->check(CLI::Range(0, 255));
}

SpecConfig SpecArgs::config() const {
  SpecConfig c;
  c.draft = draft;
  c.ngram = ngram;
  c.spec.draft_max = draft_max;
  c.spec.draft_min = draft_min;
  c.spec.adaptive = !fixed;
  if (draft_min > draft_max)
    throw Error("--draft-min " + std::to_string(draft_min) + " is above --draft-max " + std::to_string(draft_max));
  c.model.p_min = p_min;
  c.model.vocab = vocab == "intersect" ? VocabMode::Intersect : vocab == "text" ? VocabMode::Text : VocabMode::Auto;
  c.model.cache_type_k = parse_kv_type(cache_type_k, "--cache-type-k-draft");
  c.model.cache_type_v = parse_kv_type(cache_type_v, "--cache-type-v-draft");
  c.draft_gpu_layers = gpu_layers;
  c.draft_device = device;
  if (!draft.empty()) check_input_file(draft, "GGUF draft model file");
  return c;
}

std::string spec_stats_line(const std::string& method, const SpecStats& st) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "speculative: %s | drafted %lld, accepted %lld (%.1f%%), %.2f tokens/target pass, draft %.1f ms, "
                "verify %.1f ms, %lld plain passes%s",
                method.c_str(), static_cast<long long>(st.drafted), static_cast<long long>(st.accepted),
                100.0 * st.acceptance(), st.tokens_per_pass(), st.draft_seconds * 1e3, st.verify_seconds * 1e3,
                static_cast<long long>(st.plain_passes), "");
  std::string line = buf;
  if (st.speedup() > 0) {  // measured against one-token passes (run and chat; a scheduler's passes mix sequences)
    std::snprintf(buf, sizeof buf, ", est. speed-up %.2f x", st.speedup());
    line += buf;
  }
  return line;
}

nlohmann::ordered_json spec_json(const SpecStats& st) {
  return {{"drafted", st.drafted},         {"accepted", st.accepted},
          {"acceptance", st.acceptance()}, {"tokens_per_pass", st.tokens_per_pass()},
          {"draft_ms", st.draft_seconds * 1e3}, {"verify_ms", st.verify_seconds * 1e3},
          {"passes", st.passes},           {"plain_passes", st.plain_passes},
          {"est_speedup", st.speedup()}};
}

std::string spec_method(const SpecSetup& s) {
  std::string m = s.config().ngram ? "ngram" : "";
  if (s.draft_vocab()) m += std::string(m.empty() ? "" : "+") + "draft (" + vocab_bridge_name(s.draft_vocab()->bridge) + ")";
  return m;
}

nlohmann::ordered_json read_json_arg(const std::string& value, const char* flag) {
  const size_t first = value.find_first_not_of(" \t\r\n");
  const bool inline_json = first != std::string::npos && (value[first] == '{' || value[first] == '[');
  std::string text;
  if (inline_json) {
    text = value;
  } else {
    check_input_file(value, "JSON file");
    text = read_text_input(value, kMaxJsonArgBytes, "the most " + std::string(flag) + " may hold");
  }
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string(flag) + ": " + (inline_json ? std::string("the JSON given") : value) +
                " is not valid JSON (" + e.what() + ")");
  }
}

std::shared_ptr<const Grammar> grammar_from_args(const std::string& grammar_file, const std::string& json_schema) {
  if (!grammar_file.empty() && !json_schema.empty())
    throw Error("--grammar-file and --json-schema both given: give one");
  if (!grammar_file.empty()) {
    check_input_file(grammar_file, "grammar file");
    const std::string text = read_text_input(grammar_file, kMaxGrammarBytes, "a GBNF grammar is a few KB");
    try {
      return Grammar::parse(text);
    } catch (const Error& e) {
      throw Error(grammar_file + ": " + e.what());
    }
  }
  if (!json_schema.empty()) {
    const nlohmann::ordered_json schema = read_json_arg(json_schema, "--json-schema");
    return Grammar::parse(json_schema_to_gbnf(schema));
  }
  return nullptr;
}

}  // namespace lokal::cli
