// `lokal batch -m MODEL -f prompts.jsonl [-o out.jsonl] [-np N]`: offline generation of many prompts through the
// continuous-batching scheduler (runtime/scheduler.h), N sequences at a time sharing one KV page pool.
//
// Input: one JSON object per line (blank lines are skipped): "prompt" (a string, or an array of token ids) plus
// OpenAI completions fields: max_tokens, temperature, top_p, seed, stop (a string or an array of strings),
// presence_penalty, frequency_penalty, and llama.cpp's top_k, min_p, repeat_penalty, repeat_last_n, ignore_eos;
// "draft_max" (speculative decoding with --draft/--draft-ngram: 0 turns it off for the line, N drafts at most N).
// "id" / "custom_id" are echoed; "model" and "user" are accepted and ignored; "n" must be 1, "stream" and "echo"
// false. Any other field is an error for that line. Fields absent take the command line's values (its sampling
// options, -n for max_tokens).
// Output: one JSON object per input line, in the input's order: {"line", "id"?, "text", "finish_reason" (OpenAI's:
// "stop" or "length"), "stop_reason" (lokal's: eog, stop, length, context_full, error), "usage": {prompt_tokens,
// completion_tokens, total_tokens}, "tokens_reused", "preempted", "timings": {queue_ms, prompt_ms, generation_ms,
// generation_tokens_per_second}}, "speculative": {drafted, accepted, ...} with --draft/--draft-ngram, or {"line", "error"} for a line that could not run. The exit status is 1 when any
// line failed (the others are still generated and written), 0 otherwise.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "eval/bench.h"
#include "runtime/load.h"
#include "runtime/scheduler.h"

namespace lokal::cli {

namespace {
using json = nlohmann::json;

struct BatchArgs {
  std::string model, input, output;
  SpecArgs spec;
  int n_parallel = 4;
  int64_t kv_tokens = 0;
  int64_t n_predict = 128;
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int repeat_last_n = 64;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int64_t seed = -1;
  int threads = 0;
  int64_t ctx = 0;
  int64_t batch = kDefaultBatchSize;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  bool ctk_given = false, ctv_given = false, ctx_given = false, batch_given = false;
  std::string ram;
  bool allow_long_ctx = false;
  bool no_mmap = false;
  OffloadOptions offload;
  bool verbose = false;
};

struct Line {
  int64_t number = 0;       // 1-based line number in the input
  json id;                  // echoed "id" / "custom_id" (null: none)
  std::string id_key;
  std::string error;        // set: the line cannot run
  GenRequest req;
  std::string prompt_text;  // the prompt as given (string prompts)
  bool token_prompt = false;
  json token_ids;
};

const std::set<std::string> kFields = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
                                       "stop", "presence_penalty", "frequency_penalty", "repeat_penalty",
                                       "repeat_last_n", "ignore_eos", "id", "custom_id", "model", "user", "n",
                                       "stream", "echo", "draft_max"};

// Reads one number field with a range check; throws lokal::Error naming the field.
template <class T>
T number(const json& j, const char* key, T lo, T hi) {
  const json& v = j.at(key);
  if (!v.is_number()) throw Error(std::string("\"") + key + "\" must be a number, got " + v.dump());
  if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) throw Error(std::string("\"") + key + "\" must be an integer, got " + v.dump());
  }
  const double d = v.get<double>();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)))
    throw Error(std::string("\"") + key + "\" = " + v.dump() + " is out of range [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "]");
  return v.get<T>();
}

Line parse_line(const std::string& text, int64_t number_1, const BatchArgs& a, const Vocab& vocab, std::mt19937_64& rng) {
  Line L;
  L.number = number_1;
  try {
    json j;
    try {
      j = json::parse(text);
    } catch (const json::parse_error& e) {
      std::string what = e.what();
      if (auto p = what.find("parse error"); p != std::string::npos) what = what.substr(p);
      throw Error("not valid JSON (" + what + ")");
    }
    if (!j.is_object()) throw Error("a line must be a JSON object, got " + std::string(j.type_name()));
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!kFields.count(it.key()))
        throw Error("unknown field \"" + printable(it.key()) + "\" (known: prompt, max_tokens, temperature, top_p, "
                    "top_k, min_p, seed, stop, presence_penalty, frequency_penalty, repeat_penalty, repeat_last_n, "
                    "ignore_eos, draft_max, id, custom_id)");
    for (const char* k : {"id", "custom_id"})
      if (j.contains(k)) {
        L.id = j[k];
        L.id_key = k;
      }
    if (j.contains("n") && !(j["n"].is_number_integer() && j["n"].get<int64_t>() == 1))
      throw Error("\"n\" must be 1 (one completion per line)");
    for (const char* k : {"stream", "echo"})
      if (j.contains(k) && !(j[k].is_boolean() && !j[k].get<bool>())) throw Error(std::string("\"") + k + "\" must be false");
    if (!j.contains("prompt")) throw Error("no \"prompt\"");
    const json& p = j["prompt"];
    GenRequest& r = L.req;
    if (p.is_string()) {
      L.prompt_text = p.get<std::string>();
      if (L.prompt_text.empty()) throw Error("the prompt is empty (give the text to continue, or token ids)");
      r.prompt = vocab.tokenize(L.prompt_text, true, false);
    } else if (p.is_array()) {
      L.token_prompt = true;
      for (const json& t : p) {
        if (!t.is_number_integer()) throw Error("\"prompt\" as an array must hold token ids (integers)");
        const int64_t id = t.get<int64_t>();
        if (id < 0 || id >= vocab.n_tokens())
          throw Error("prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                      std::to_string(vocab.n_tokens() - 1) + ")");
        r.prompt.push_back(static_cast<int32_t>(id));
      }
    } else {
      throw Error("\"prompt\" must be a string or an array of token ids");
    }
    if (r.prompt.empty()) throw Error("the prompt is empty (and the model adds no BOS token): nothing to condition on");
    SamplingParams& sp = r.sampling;
    sp.temperature = j.contains("temperature") ? number<float>(j, "temperature", 0.0f, 100.0f) : a.temp;
    sp.top_p = j.contains("top_p") ? number<float>(j, "top_p", 0.0f, 1.0f) : a.top_p;
    sp.top_k = j.contains("top_k") ? number<int>(j, "top_k", 0, 1 << 30) : a.top_k;
    sp.min_p = j.contains("min_p") ? number<float>(j, "min_p", 0.0f, 1.0f) : a.min_p;
    sp.repeat_penalty = j.contains("repeat_penalty") ? number<float>(j, "repeat_penalty", 0.0f, 100.0f) : a.repeat_penalty;
    sp.repeat_last_n = j.contains("repeat_last_n") ? number<int>(j, "repeat_last_n", 0, 1 << 30) : a.repeat_last_n;
    sp.presence_penalty = j.contains("presence_penalty") ? number<float>(j, "presence_penalty", -2.0f, 2.0f) : a.presence_penalty;
    sp.frequency_penalty = j.contains("frequency_penalty") ? number<float>(j, "frequency_penalty", -2.0f, 2.0f) : a.frequency_penalty;
    if (j.contains("seed")) sp.seed = static_cast<uint64_t>(number<int64_t>(j, "seed", INT64_MIN, INT64_MAX));
    else sp.seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed) : rng();
    sp.validate();
    r.max_tokens = j.contains("max_tokens") && !j["max_tokens"].is_null() ? number<int64_t>(j, "max_tokens", 1, int64_t{1} << 40)
                                                                          : a.n_predict;
    if (j.contains("stop") && !j["stop"].is_null()) {
      const json& s = j["stop"];
      if (s.is_string()) r.stop.push_back(s.get<std::string>());
      else if (s.is_array()) {
        for (const json& x : s) {
          if (!x.is_string()) throw Error("\"stop\" must be a string or an array of strings");
          r.stop.push_back(x.get<std::string>());
        }
      } else {
        throw Error("\"stop\" must be a string or an array of strings");
      }
      for (const auto& s2 : r.stop)
        if (s2.empty()) throw Error("\"stop\" holds an empty string");
    }
    if (j.contains("draft_max")) r.draft_max = number<int>(j, "draft_max", 0, 128);
    if (j.contains("ignore_eos")) {
      if (!j["ignore_eos"].is_boolean()) throw Error("\"ignore_eos\" must be true or false");
      r.ignore_eos = j["ignore_eos"].get<bool>();
    }
  } catch (const Error& e) {
    L.error = e.what();
  }
  return L;
}

json result_json(const Line& L, const GenResult* g) {
  json o;
  o["line"] = L.number;
  if (!L.id_key.empty()) o[L.id_key] = L.id;
  if (!g || g->finish == FinishReason::Error) {
    o["error"] = g ? g->error : L.error;
    return o;
  }
  o["text"] = g->text;
  const bool by_length = g->finish == FinishReason::Length || g->finish == FinishReason::ContextFull;
  o["finish_reason"] = by_length ? "length" : "stop";
  o["stop_reason"] = finish_reason_name(g->finish);
  const int64_t n_gen = static_cast<int64_t>(g->tokens.size());
  o["usage"] = {{"prompt_tokens", g->n_prompt}, {"completion_tokens", n_gen}, {"total_tokens", g->n_prompt + n_gen}};
  o["tokens_reused"] = g->n_reused;
  o["preempted"] = g->n_preempted;
  o["timings"] = {{"queue_ms", g->queue_seconds * 1e3},
                  {"prompt_ms", g->prompt_seconds * 1e3},
                  {"generation_ms", g->gen_seconds * 1e3},
                  {"generation_tokens_per_second", g->gen_tps()}};
  if (g->spec.passes + g->spec.plain_passes > 0) o["speculative"] = spec_json(g->spec);
  return o;
}

int batch(const BatchArgs& a) {
  if (!a.verbose) set_log_level(LogLevel::Warn);
  const auto t0 = std::chrono::steady_clock::now();
  check_input_file(a.model, "GGUF model file");
  check_input_file(a.input, "JSONL prompt file");
  if (!a.output.empty()) check_output_file(a.output, {a.model, a.input});  // before any work
  const std::string input = read_text_input(a.input, kMaxTextBytes, "the most lokal batch reads; split the file");

  LoadRequest req;
  req.path = a.model;
  req.n_ctx = a.ctx_given ? a.ctx : 0;
  req.allow_long_ctx = a.allow_long_ctx;
  req.ram = a.ram;
  if (a.ctk_given) req.type_k = parse_kv_type(a.cache_type_k, "--cache-type-k");
  if (a.ctv_given) req.type_v = parse_kv_type(a.cache_type_v, "--cache-type-v");
  req.n_batch = a.batch_given ? a.batch : 0;
  req.n_threads = a.threads;
  req.n_parallel = a.n_parallel;
  req.kv_tokens = a.kv_tokens;
  req.load.use_mmap = !a.no_mmap;
  req.load.offload = a.offload;
  req.on_plan = [](const Plan& plan) { std::fprintf(stderr, "plan: %s\n", plan.reason.c_str()); };
  LoadedModel loaded = load_model_planned(req);
  const Model& model = *loaded.model;

  ThreadPool pool(loaded.session.n_threads > 0 ? loaded.session.n_threads : ThreadPool::default_threads());
  SchedulerOptions so;
  so.n_parallel = a.n_parallel;
  so.kv_tokens = a.kv_tokens;
  so.n_ctx = loaded.settings.n_ctx;
  so.n_batch = loaded.settings.n_batch;
  so.cache_type_k = loaded.settings.type_k;
  so.cache_type_v = loaded.settings.type_v;
  std::vector<std::string> spec_warnings;
  std::unique_ptr<SpecSetup> spec;
  uint64_t predicted = loaded.estimate.total_bytes;  // what lokal plan predicts, the draft's part included
  if (const SpecConfig sc = a.spec.config(); sc.enabled()) {
    spec = std::make_unique<SpecSetup>(model, sc, req.load, &spec_warnings);
    so.spec = spec.get();
    if (!sc.draft.empty()) {  // its weights and a cache and buffers for each of the sequences
      RunSettings ds = sc.draft_settings(loaded.settings);
      ds.n_ctx = so.n_ctx;
      ds.n_parallel = so.n_parallel;
      predicted += estimate_draft_memory(ModelFacts::read(sc.draft), ds).total_bytes;
    }
  }
  Scheduler sch(model, pool, so);

  // Parse every line first: errors are reported with their line numbers before generation starts.
  std::vector<Line> lines;
  std::mt19937_64 rng(std::random_device{}());
  {
    std::istringstream in(input);
    std::string text;
    int64_t n = 0;
    while (std::getline(in, text)) {
      ++n;
      if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
      lines.push_back(parse_line(text, n, a, model.vocab(), rng));
      if (!lines.back().error.empty())
        std::fprintf(stderr, "%s:%lld: %s\n", printable(a.input).c_str(), static_cast<long long>(n),
                     printable(lines.back().error).c_str());
    }
  }
  if (lines.empty()) throw Error(a.input + ": no prompts (the file has no non-blank line)");
  std::fprintf(stderr, "batch: %zu prompts, %d sequences at a time, KV pool of %lld tokens (%s), sequences up to %lld "
               "tokens, %d threads\n", lines.size(), so.n_parallel,
               static_cast<long long>(sch.kv_pool().capacity_tokens()), format_bytes(static_cast<double>(sch.kv_bytes())).c_str(),
               static_cast<long long>(sch.options().n_ctx), pool.size());
  std::fprintf(stderr, "memory: total    %s predicted peak (lokal plan%s)\n", mib_bytes(predicted).c_str(),
               spec && spec->draft_model() ? ", the draft's included" : "");
  if (const std::string g = gpu_placement(model); !g.empty()) std::fprintf(stderr, "%s\n", g.c_str());
  if (spec) {
    std::fprintf(stderr, "speculative: %s\n", spec->describe().c_str());
    if (spec->draft_model())
      if (const std::string g = gpu_placement(*spec->draft_model(), "draft "); !g.empty())
        std::fprintf(stderr, "%s\n", g.c_str());
    for (const auto& w : spec_warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  }

  std::unique_ptr<AtomicFile> out;
  if (!a.output.empty()) out = std::make_unique<AtomicFile>(a.output);
  std::vector<std::unique_ptr<GenResult>> results(lines.size());
  std::map<uint64_t, size_t> index_of;
  size_t written = 0, n_done = 0, n_failed = 0;
  int64_t gen_tokens = 0, reused = 0, preempted = 0;
  auto write_ready = [&] {
    while (written < lines.size() && (results[written] || !lines[written].error.empty())) {
      const std::string s = result_json(lines[written], results[written].get()).dump() + "\n";
      if (out) out->write(s);
      else std::fwrite(s.data(), 1, s.size(), stdout);
      ++written;
    }
    if (!out) std::fflush(stdout);
  };
  for (size_t i = 0; i < lines.size(); ++i) {
    if (!lines[i].error.empty()) {
      ++n_failed;
      continue;
    }
    lines[i].req.on_done = [&, i](const GenResult& g) {
      results[i] = std::make_unique<GenResult>(g);
      ++n_done;
      if (g.finish == FinishReason::Error) {
        ++n_failed;
        std::fprintf(stderr, "\n%s:%lld: %s\n", printable(a.input).c_str(), static_cast<long long>(lines[i].number),
                     printable(g.error).c_str());
      }
      gen_tokens += static_cast<int64_t>(g.tokens.size());
      reused += g.n_reused;
      preempted += g.n_preempted;
    };
    index_of[sch.submit(std::move(lines[i].req))] = i;
  }
  write_ready();
  const size_t to_run = lines.size() - n_failed;
  const bool tty = isatty(STDERR_FILENO);
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  size_t last_reported = SIZE_MAX;
  double last_time = 0;
  for (;;) {
    const bool busy = sch.step();
    write_ready();
    // Progress: on a terminal one line redrawn; otherwise a line per 10% (or every 30 s).
    const double t = elapsed();
    const bool report = tty ? t - last_time > 0.2 : (n_done * 10 / std::max<size_t>(1, to_run) != last_reported || t - last_time > 30);
    if (report) {
      const SchedulerStats st = sch.stats();
      std::fprintf(stderr, "%s[%zu/%zu done] %lld running, %lld queued, %lld tokens evaluated, %.1f s%s",
                   tty ? "\r" : "", n_done, to_run, static_cast<long long>(st.running), static_cast<long long>(st.waiting),
                   static_cast<long long>(st.tokens_evaluated), t, tty ? "   " : "\n");
      std::fflush(stderr);
      last_reported = n_done * 10 / std::max<size_t>(1, to_run);
      last_time = t;
    }
    if (n_done >= to_run) break;
    if (!busy) throw Error("internal error: the scheduler is idle with " + std::to_string(to_run - n_done) + " requests pending");
  }
  write_ready();
  if (out) out->commit();
  const double total = elapsed();
  std::fprintf(stderr, "%sbatch: %zu prompts: %zu done, %zu failed; %lld tokens generated in %.2f s (%.1f tokens/s "
               "aggregate); %lld prompt tokens reused from the cache; %lld preemptions%s%s\n",
               tty ? "\n" : "", lines.size(), lines.size() - n_failed, n_failed, static_cast<long long>(gen_tokens), total,
               total > 0 ? static_cast<double>(gen_tokens) / total : 0.0, static_cast<long long>(reused),
               static_cast<long long>(preempted), out ? "; wrote " : "", out ? printable(a.output).c_str() : "");
  if (spec) std::fprintf(stderr, "%s\n", spec_stats_line(spec_method(*spec), sch.stats().spec).c_str());
  if (const uint64_t peak = peak_rss_bytes())
    std::fprintf(stderr, "memory: peak RSS %s measured (VmHWM), %s predicted (%+.1f%%)\n", mib_bytes(peak).c_str(),
                 mib_bytes(predicted).c_str(), 100.0 * (static_cast<double>(predicted) / static_cast<double>(peak) - 1.0));
  return n_failed > 0 ? 1 : 0;
}
}  // namespace

void register_batch(CLI::App& app, int* rc) {
  auto a = std::make_shared<BatchArgs>();
  CLI::App* cmd = app.add_subcommand("batch", "Generate completions for many prompts (JSONL in, JSONL out), several at a time");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("-f,--file", a->input, "JSONL file: one {\"prompt\": ..., OpenAI completion fields} per line")->required();
  cmd->add_option("-o,--output", a->output, "Write the results here (JSONL, input order; default: stdout)");
  cmd->add_option("--parallel", a->n_parallel, "Sequences evaluated together")->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--kv-tokens", a->kv_tokens, "Tokens the shared KV cache holds for all sequences together (0: ctx-size x parallel)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_option("-n,--n-predict", a->n_predict, "Default max_tokens for lines without it (-1: until end of text)")
      ->capture_default_str()->check(CLI::Range(int64_t(-1), int64_t(1) << 40));
  cmd->add_option("--temp", a->temp, "Default temperature (0: greedy)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", a->top_k, "Default top-k (0: off)")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", a->top_p, "Default top-p (1: off)")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--min-p", a->min_p, "Default min-p (0: off)")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--repeat-penalty", a->repeat_penalty, "Default repetition penalty (1: off)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--repeat-last-n", a->repeat_last_n, "Tokens considered by the penalties")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--presence-penalty", a->presence_penalty, "Default presence penalty")->capture_default_str();
  cmd->add_option("--frequency-penalty", a->frequency_penalty, "Default frequency penalty")->capture_default_str();
  cmd->add_option("-s,--seed", a->seed, "Default seed for lines without one (-1: random per line)")->capture_default_str();
  add_spec_options(cmd, a->spec);
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("-c,--ctx-size", a->ctx, "Longest sequence, prompt + completion (0: model's, max 4096)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("-b,--batch-size", a->batch, "Tokens per forward step (decode tokens + prompt chunks)")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  auto* ctk = cmd->add_option("--cache-type-k", a->cache_type_k, "KV cache type for K: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  auto* ctv = cmd->add_option("--cache-type-v", a->cache_type_v, "KV cache type for V: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  auto* ctx = cmd->get_option("--ctx-size");
  auto* bat = cmd->get_option("--batch-size");
  cmd->add_option("--ram", a->ram, "Fit into this much RAM (e.g. 2GiB): context, KV types and batch not given are planned");
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above the model's trained context");
  cmd->add_flag("--no-mmap", a->no_mmap, "Read the model into memory instead of mapping it");
  add_gpu_options(cmd, a->offload);
  cmd->add_flag("-v,--verbose", a->verbose, "More logging");
  cmd->callback([a, rc, ctk, ctv, ctx, bat] {
    a->ctk_given = ctk->count() > 0;
    a->ctv_given = ctv->count() > 0;
    a->ctx_given = ctx->count() > 0;
    a->batch_given = bat->count() > 0;
    *rc = batch(*a);
  });
}

}  // namespace lokal::cli
