// `lokal chat -m MODEL`: an interactive terminal chat (like `ollama run`), or one turn for scripts (-p / stdin).
//
// Each turn renders the whole conversation through the model's chat template (chat/chat_template.h) and evaluates
// only what the cache does not already hold (the earlier turns stay cached: Session::common_prefix/rewind). The
// answer streams through the output parser (chat/chat_parse.h): reasoning is shown dimmed (or hidden), tool calls
// are shown as calls and kept in the history as OpenAI-style tool_calls, so a tool result (/tool) can answer them.
// Ctrl-C stops the current answer and returns to the prompt; at the prompt it only reminds how to leave.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <random>
#include <sstream>

#include "chat/chat_parse.h"
#include "chat/chat_template.h"
#include "chat/grammar.h"
#include "chat/tool_grammar.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "runtime/load.h"
#include "runtime/session.h"
#include "tokenizer/vocab.h"

namespace lokal::cli {

namespace {
using json = nlohmann::ordered_json;

std::atomic<bool> g_interrupt{false};
extern "C" void on_sigint(int) { g_interrupt.store(true); }

struct ChatArgs {
  std::string model, chat_template, system, prompt, tools, grammar_file, json_schema, tool_choice = "auto", kwargs;
  SamplingArgs sampling;
  SpecArgs spec;
  int n_predict = -1;
  int threads = 0;
  int64_t ctx = 0;
  int64_t batch = kDefaultBatchSize;
  std::string cache_type_k = "f16", cache_type_v = "f16", ram;
  bool ctk_given = false, ctv_given = false, ctx_given = false, batch_given = false;
  bool hide_reasoning = false, json_out = false, no_mmap = false, verbose = false, allow_long_ctx = false;
  OffloadOptions offload;
};

class Chat {
 public:
  Chat(const ChatArgs& a, Model& model, Session& session, bool interactive)
      : a_(a), model_(model), session_(session), vocab_(model.vocab()), interactive_(interactive),
        tpl_(ChatTemplate::for_model(a.chat_template, model.gguf(), model.vocab())) {
    sp_ = a.sampling.params(model.vocab());
    n_predict_ = a.n_predict;
    system_ = a.system;
    if (!a.tools.empty()) {
      tools_ = read_json_arg(a.tools, "--tools");
      validate_tools(tools_);
      if (tools_.is_array() && tools_.empty()) tools_ = nullptr;
    }
    if (!a.kwargs.empty()) {
      apply_opt_.kwargs = read_json_arg(a.kwargs, "--kwargs");
      if (!apply_opt_.kwargs.is_object()) throw Error("--kwargs: must be a JSON object of template variables");
    }
    user_grammar_ = grammar_from_args(a.grammar_file, a.json_schema);
    format_ = tpl_.tool_format();
    if (a.tool_choice != "auto" && a.tool_choice != "none") {
      if (!tools_.is_array()) throw Error("--tool-choice " + a.tool_choice + " needs --tools");
      if (user_grammar_) throw Error("--tool-choice " + a.tool_choice + " and a grammar both given: give one");
      ToolGrammar tg = tool_call_grammar(format_, tools_, a.tool_choice == "required" ? "" : a.tool_choice, true);
      user_grammar_ = Grammar::parse(tg.gbnf);
      format_ = tg.format;
    }
    tty_out_ = isatty(1) && !a.json_out;
    tty_err_ = isatty(2);
    reset_history();
  }

  // One user turn: render, evaluate, stream the answer. Returns false when it could not run.
  bool turn(const json& new_message) {
    history_.push_back(new_message);
    std::vector<int32_t> toks;
    if (!fit_prompt(toks)) {
      history_.erase(history_.end() - 1);
      return false;
    }
    int64_t keep = session_.common_prefix(toks);
    if (keep >= static_cast<int64_t>(toks.size())) keep = static_cast<int64_t>(toks.size()) - 1;  // need logits
    session_.rewind(keep);
    const std::vector<int32_t> suffix(toks.begin() + keep, toks.end());

    ParseOptions po;
    po.format = format_;
    po.parse_tools = tools_.is_array() && a_.tool_choice != "none";
    po.reasoning = true;
    po.reasoning_open_at_start = tpl_.opens_reasoning();
    ChatOutputParser parser(po);
    SamplingParams sp = sp_;
    sp.grammar = user_grammar_;  // --grammar-file / --json-schema, or the forced tool call
    g_interrupt.store(false);
    in_reasoning_ = false;
    const GenerationResult res = session_.generate(suffix, n_predict_, sp, [&](const std::string& text) {
      show(parser.push(text));
      return !g_interrupt.load();
    });
    show(parser.finish());
    end_reasoning();
    const ParsedMessage& msg = parser.message();

    json reply = {{"role", "assistant"}, {"content", msg.content}};
    if (!msg.tool_calls.empty()) {
      json calls = json::array();
      for (const ToolCall& c : msg.tool_calls) {
        json args;
        try {
          args = json::parse(c.arguments);
        } catch (const json::exception&) {
          args = c.arguments;
        }
        calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", args}}}});
      }
      reply["tool_calls"] = calls;
      if (msg.content.empty()) reply["content"] = nullptr;
    }
    history_.push_back(reply);

    if (a_.json_out) {
      json out = {{"role", "assistant"}, {"content", msg.content}};
      if (!msg.reasoning_content.empty()) out["reasoning_content"] = msg.reasoning_content;
      if (!msg.tool_calls.empty()) {
        json calls = json::array();
        for (const ToolCall& c : msg.tool_calls)
          calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
        out["tool_calls"] = calls;
      }
      if (msg.unparsed_tool_call) out["unparsed_tool_call"] = true;
      out["finish_reason"] = res.stop == StopReason::EndOfGeneration ? (msg.tool_calls.empty() ? "stop" : "tool_calls")
                             : res.stop == StopReason::Stopped      ? "cancelled"
                             : res.stop == StopReason::ContextFull  ? "context_full"
                                                                    : "length";
      out["usage"] = {{"prompt_tokens", static_cast<int64_t>(toks.size())},
                      {"cached_tokens", keep},
                      {"completion_tokens", static_cast<int64_t>(res.tokens.size())}};
      std::printf("%s\n", out.dump().c_str());
    } else {
      if (!msg.content.empty() && msg.content.back() != '\n') std::fputc('\n', stdout);
      if (msg.unparsed_tool_call) note("(the answer looked like a tool call but did not parse; shown as text)");
    }
    std::fflush(stdout);
    const double tps = res.gen_tps();
    char stats[256];
    std::snprintf(stats, sizeof stats, "[%zu tokens, %.1f tokens/s, prompt %lld tokens (%lld cached), context %lld/%lld tokens]",
                  res.tokens.size(), tps, static_cast<long long>(toks.size()), static_cast<long long>(keep),
                  static_cast<long long>(session_.n_past() + 1), static_cast<long long>(session_.n_ctx()));
    note(stats);
    if (session_.speculator() && res.spec.passes > 0) {
      std::snprintf(stats, sizeof stats, "[speculative: %lld of %lld drafted tokens accepted, %.2f tokens per pass]",
                    static_cast<long long>(res.spec.accepted), static_cast<long long>(res.spec.drafted),
                    res.spec.tokens_per_pass());
      note(stats);
    }
    if (res.stop == StopReason::Stopped) note("(stopped)");
    if (res.stop == StopReason::ContextFull)
      note("(the context is full: the answer was cut off; the next turn will offer to drop the oldest turns)");
    return true;
  }

  // Runs a /command; returns false for /bye.
  bool command(const std::string& line) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    std::string rest;
    std::getline(in, rest);
    rest = trim(rest);
    if (cmd == "/bye" || cmd == "/exit" || cmd == "/quit") return false;
    if (cmd == "/help" || cmd == "/?") {
      std::printf(
          "/set PARAM VALUE  temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty,\n"
          "                  frequency_penalty, seed, max_tokens (-1: no limit), system TEXT\n"
          "/show             settings, messages and context use\n"
          "/clear            forget the conversation (the system prompt stays)\n"
          "/save FILE        write the conversation as JSON ({\"messages\": [...], \"tools\": [...]})\n"
          "/load FILE        continue a saved conversation\n"
          "/tool RESULT      answer the last tool call with RESULT and let the model go on\n"
          "/bye              leave (also Ctrl-D)\n"
          "Ctrl-C stops an answer.\n");
    } else if (cmd == "/clear") {
      reset_history();
      session_.rewind(0);
      std::printf("conversation cleared\n");
    } else if (cmd == "/set") {
      set(rest);
    } else if (cmd == "/show") {
      std::printf("template %s (tool calls: %s)\n", tpl_.name().c_str(), format_name(format_));
      std::printf("temp %g, top_k %d, top_p %g, min_p %g, repeat_penalty %g, repeat_last_n %d, presence_penalty %g, "
                  "frequency_penalty %g, seed %llu, max_tokens %d\n",
                  sp_.temperature, sp_.top_k, sp_.top_p, sp_.min_p, sp_.repeat_penalty, sp_.repeat_last_n,
                  sp_.presence_penalty, sp_.frequency_penalty, static_cast<unsigned long long>(sp_.seed), n_predict_);
      std::printf("system: %s\n", system_.empty() ? "(none)" : system_.c_str());
      std::printf("%zu messages, context %lld/%lld tokens\n", history_.size(), static_cast<long long>(session_.n_past()),
                  static_cast<long long>(session_.n_ctx()));
    } else if (cmd == "/save") {
      if (rest.empty()) throw Error("/save needs a file name");
      check_output_file(rest, {a_.model});
      json out = {{"messages", history_}};
      if (tools_.is_array()) out["tools"] = tools_;
      write_file_atomic(rest, out.dump(2) + "\n");
      std::printf("saved %zu messages to %s\n", history_.size(), rest.c_str());
    } else if (cmd == "/load") {
      if (rest.empty()) throw Error("/load needs a file name");
      json in = read_json_arg(rest, "/load");
      json msgs = in.is_object() && in.contains("messages") ? json(in["messages"]) : in;
      validate_messages(msgs);
      if (in.is_object() && in.contains("tools") && !in["tools"].is_null()) {
        validate_tools(in["tools"]);
        tools_ = in["tools"];
      }
      history_ = msgs;
      system_.clear();
      if (!history_.empty() && history_[0].value("role", "") == "system" && history_[0]["content"].is_string())
        system_ = history_[0]["content"].get<std::string>();
      std::printf("loaded %zu messages from %s\n", history_.size(), rest.c_str());
    } else if (cmd == "/tool") {
      std::string id;
      for (auto it = history_.rbegin(); it != history_.rend(); ++it)
        if (it->contains("tool_calls") && (*it)["tool_calls"].is_array() && !(*it)["tool_calls"].empty()) {
          id = (*it)["tool_calls"].back().value("id", "");
          break;
        }
      if (id.empty()) throw Error("/tool: no tool call to answer");
      json m = {{"role", "tool"}, {"tool_call_id", id}, {"content", rest}};
      turn(m);
    } else {
      throw Error("unknown command " + cmd + " (/help lists them)");
    }
    return true;
  }

  bool interactive() const { return interactive_; }

 private:
  static std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
  }

  void reset_history() {
    history_ = json::array();
    if (!system_.empty()) history_.push_back({{"role", "system"}, {"content", system_}});
  }

  void set(const std::string& args) {
    std::istringstream in(args);
    std::string key, value;
    in >> key;
    std::getline(in, value);
    value = trim(value);
    if (key.empty() || value.empty()) throw Error("/set PARAM VALUE (see /help)");
    if (key == "system") {
      system_ = value;
      if (!history_.empty() && history_[0].value("role", "") == "system") history_[0]["content"] = value;
      else history_.insert(history_.begin(), json{{"role", "system"}, {"content", value}});
      std::printf("system prompt set\n");
      return;
    }
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(value, &used);
      if (used != value.size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      throw Error("/set " + key + ": '" + value + "' is not a number");
    }
    SamplingParams sp = sp_;
    int n_predict = n_predict_;
    if (key == "temp" || key == "temperature") sp.temperature = static_cast<float>(v);
    else if (key == "top_k") sp.top_k = static_cast<int>(v);
    else if (key == "top_p") sp.top_p = static_cast<float>(v);
    else if (key == "min_p") sp.min_p = static_cast<float>(v);
    else if (key == "repeat_penalty") sp.repeat_penalty = static_cast<float>(v);
    else if (key == "repeat_last_n") sp.repeat_last_n = static_cast<int>(v);
    else if (key == "presence_penalty") sp.presence_penalty = static_cast<float>(v);
    else if (key == "frequency_penalty") sp.frequency_penalty = static_cast<float>(v);
    else if (key == "seed") sp.seed = static_cast<uint64_t>(v);
    else if (key == "max_tokens" || key == "num_predict") n_predict = v < 0 ? -1 : static_cast<int>(v);
    else throw Error("/set: unknown parameter '" + key + "' (see /help)");
    sp.validate();
    sp_ = sp;
    n_predict_ = n_predict;
    std::printf("%s = %s\n", key.c_str(), value.c_str());
  }

  // Renders the conversation; if it leaves no room for an answer, offers to drop the oldest turns.
  bool fit_prompt(std::vector<int32_t>& toks) {
    const int64_t n_ctx = session_.n_ctx();
    const int64_t reserve = std::min<int64_t>(n_predict_ > 0 ? n_predict_ : 256, n_ctx / 4);
    bool asked = false;
    while (true) {
      const std::string prompt = tpl_.apply(history_, tools_, apply_opt_);
      toks = vocab_.tokenize(prompt, true, true);
      if (static_cast<int64_t>(toks.size()) + reserve <= n_ctx) return true;
      const size_t first = !history_.empty() && history_[0].value("role", "") == "system" ? 1 : 0;
      // The oldest turn: from the first non-system message up to the next user message.
      size_t end = first + 1;
      while (end < history_.size() && history_[end].value("role", "") != "user") ++end;
      const bool can_drop = end < history_.size();
      char msg[256];
      std::snprintf(msg, sizeof msg, "the conversation (%zu tokens) leaves no room for an answer in the context of %lld tokens",
                    toks.size(), static_cast<long long>(n_ctx));
      if (!interactive_ || !can_drop) {
        if (interactive_) {
          note(std::string(msg) + "; /clear to start over, or restart with a larger -c");
          return false;
        }
        throw Error(std::string(msg) + " (use a larger -c)");
      }
      if (!asked) {
        std::fprintf(stderr, "%s. Drop the oldest turns? [Y/n] ", msg);
        std::fflush(stderr);
        const auto answer = read_line();
        if (answer && !answer->empty() && ((*answer)[0] == 'n' || (*answer)[0] == 'N')) return false;
        asked = true;
      }
      history_.erase(history_.begin() + static_cast<ptrdiff_t>(first), history_.begin() + static_cast<ptrdiff_t>(end));
      note("(dropped the oldest turn)");
    }
  }

  void show(const ChatDelta& d) {
    if (a_.json_out) return;
    if (!d.reasoning_content.empty() && !a_.hide_reasoning) {
      if (!in_reasoning_) {
        in_reasoning_ = true;
        if (tty_out_) std::fputs("\x1b[2m", stdout);  // dim
        else if (!interactive_) std::fputs("<think>", stderr);
      }
      std::FILE* f = tty_out_ || interactive_ ? stdout : stderr;
      std::fwrite(d.reasoning_content.data(), 1, d.reasoning_content.size(), f);
      std::fflush(f);
    }
    if (!d.content.empty()) {
      end_reasoning();
      std::fwrite(d.content.data(), 1, d.content.size(), stdout);
    }
    for (const auto& tc : d.tool_calls) {
      end_reasoning();
      if (!tc.name.empty()) {
        if (tty_out_) std::fputs("\x1b[36m", stdout);
        std::printf("%s[tool call %s] ", printed_calls_++ ? "\n" : "", tc.name.c_str());
        if (tty_out_) std::fputs("\x1b[0m", stdout);
      }
      std::fwrite(tc.arguments_part.data(), 1, tc.arguments_part.size(), stdout);
    }
    std::fflush(stdout);
  }

  void end_reasoning() {
    if (!in_reasoning_) return;
    in_reasoning_ = false;
    if (tty_out_) std::fputs("\x1b[0m\n", stdout);
    else if (!interactive_) std::fputs("</think>\n", stderr);
    else std::fputc('\n', stdout);
  }

  void note(const std::string& s) const {
    if (tty_err_) std::fprintf(stderr, "\x1b[2m%s\x1b[0m\n", s.c_str());
    else std::fprintf(stderr, "%s\n", s.c_str());
    std::fflush(stderr);
  }

 public:
  // A line from stdin without its newline; nullopt at end of input. Ctrl-C while reading returns "" with
  // g_interrupt set.
  static std::optional<std::string> read_line() {
    std::string line;
    while (true) {
      char c;
      const ssize_t r = ::read(0, &c, 1);
      if (r == 1) {
        if (c == '\n') return line;
        line.push_back(c);
        if (line.size() > (1u << 20)) throw Error("input line longer than 1 MiB");
        continue;
      }
      if (r < 0 && errno == EINTR) {
        if (g_interrupt.load()) return std::string();
        continue;
      }
      if (line.empty()) return std::nullopt;
      return line;
    }
  }

 private:
  const ChatArgs& a_;
  Model& model_;
  Session& session_;
  const Vocab& vocab_;
  bool interactive_;
  ChatTemplate tpl_;
  ToolCallFormat format_;
  SamplingParams sp_;
  int n_predict_;
  std::string system_;
  json history_, tools_ = nullptr;
  ChatApplyOptions apply_opt_;
  std::shared_ptr<const Grammar> user_grammar_;
  bool tty_out_ = false, tty_err_ = false, in_reasoning_ = false;
  int printed_calls_ = 0;
};

void run_chat(const ChatArgs& a) {
  if (!a.verbose) set_log_level(LogLevel::Warn);
  check_input_file(a.model, "GGUF model file");
  LoadRequest req;
  req.path = a.model;
  req.n_ctx = a.ctx_given ? a.ctx : 0;
  req.ram = a.ram;
  req.allow_long_ctx = a.allow_long_ctx;
  if (a.ctk_given) req.type_k = parse_kv_type(a.cache_type_k, "--cache-type-k");
  if (a.ctv_given) req.type_v = parse_kv_type(a.cache_type_v, "--cache-type-v");
  req.n_batch = a.batch_given ? a.batch : 0;
  req.n_threads = a.threads;
  req.load.use_mmap = !a.no_mmap;
  req.load.offload = a.offload;
  LoadedModel loaded = load_model_planned(req);
  Session session(*loaded.model, loaded.session);
  std::unique_ptr<SpecSetup> spec_setup;
  std::unique_ptr<SpecSeq> spec_seq;
  if (const SpecConfig sc = a.spec.config(); sc.enabled()) {
    std::vector<std::string> warnings;
    spec_setup = std::make_unique<SpecSetup>(*loaded.model, sc, req.load, &warnings);
    for (const auto& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    spec_seq = spec_setup->make(session.pool(), session.n_ctx());
    session.set_speculator(spec_seq->spec.get());
  }

  const bool interactive = a.prompt.empty() && isatty(0);
  Chat chat(a, *loaded.model, session, interactive);
  if (!interactive) {
    std::string text = a.prompt;
    if (text.empty()) {  // the whole of stdin is one message
      text = read_text_input("/dev/stdin", kMaxTextBytes, "the most one message may hold");
      while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    }
    if (text.empty()) throw Error("no message: give -p TEXT or text on stdin");
    if (!chat.turn(json{{"role", "user"}, {"content", text}})) throw Error("the message could not be answered");
    return;
  }

  // Interactive: Ctrl-C interrupts an answer (or a line being typed), never the program.
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a read() at the prompt returns EINTR
  sigaction(SIGINT, &sa, nullptr);
  std::fprintf(stderr, "lokal chat: %s, context %lld tokens. /help for commands, Ctrl-D or /bye to leave.\n",
               a.model.c_str(), static_cast<long long>(session.n_ctx()));
  if (const std::string g = gpu_placement(*loaded.model); !g.empty()) std::fprintf(stderr, "%s\n", g.c_str());
  if (spec_setup && spec_setup->draft_model())
    if (const std::string g = gpu_placement(*spec_setup->draft_model(), "draft "); !g.empty())
      std::fprintf(stderr, "%s\n", g.c_str());
  while (true) {
    std::fputs(">>> ", stdout);
    std::fflush(stdout);
    g_interrupt.store(false);
    const auto line = Chat::read_line();
    if (!line) {
      std::fputc('\n', stdout);
      break;
    }
    if (g_interrupt.load()) {
      std::fputs("\n(use Ctrl-D or /bye to leave)\n", stdout);
      continue;
    }
    if (line->empty()) continue;
    try {
      if ((*line)[0] == '/') {
        if (!chat.command(*line)) break;
      } else {
        chat.turn(json{{"role", "user"}, {"content", *line}});
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n", printable(e.what()).c_str());
    }
  }
}
}  // namespace

void register_chat(CLI::App& app, int* rc) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand("chat", "Chat with a model in the terminal (one turn with -p or stdin)");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("-p,--prompt", a->prompt, "One message: answer it and exit (also: text on stdin)");
  cmd->add_option("--system", a->system, "System prompt");
  cmd->add_option("--chat-template", a->chat_template, "Use this template instead of the model's: a built-in name "
                                                      "(chatml, llama2, llama3, mistral, gemma, phi3) or a file");
  cmd->add_option("--tools", a->tools, "Tools the model may call (OpenAI format): a JSON file or inline JSON");
  cmd->add_option("--tool-choice", a->tool_choice, "auto, none, required (a call is forced) or a function name")
      ->capture_default_str();
  cmd->add_option("--kwargs", a->kwargs, "Extra template variables as a JSON object");
  cmd->add_option("--grammar-file", a->grammar_file, "Constrain answers to a GBNF grammar");
  cmd->add_option("--json-schema", a->json_schema, "Constrain answers to JSON matching this schema (a file or inline JSON)");
  cmd->add_flag("--hide-reasoning", a->hide_reasoning, "Do not show the model's <think> reasoning");
  cmd->add_flag("--json", a->json_out, "Print each answer as a JSON message (content, reasoning_content, tool_calls)");
  cmd->add_option("-n,--n-predict", a->n_predict, "Most tokens per answer (-1: until the end of the turn)")
      ->capture_default_str()->check(CLI::Range(-1, 1 << 30));
  add_sampling_options(cmd, a->sampling);
  add_spec_options(cmd, a->spec);
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("-c,--ctx-size", a->ctx, "Context size in tokens (0: model's, max 4096)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("-b,--batch-size", a->batch, "Prompt tokens per forward batch")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  auto* ctk = cmd->add_option("--cache-type-k", a->cache_type_k, "KV cache type for K: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  auto* ctv = cmd->add_option("--cache-type-v", a->cache_type_v, "KV cache type for V: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->add_option("--ram", a->ram, "Fit into this much RAM (e.g. 2GiB): settings not given are planned");
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above the model's trained context");
  cmd->add_flag("--no-mmap", a->no_mmap, "Read the model into memory instead of mapping it");
  add_gpu_options(cmd, a->offload);
  cmd->add_flag("-v,--verbose", a->verbose, "More logging");
  cmd->callback([a, rc, cmd, ctk, ctv] {
    a->ctk_given = ctk->count() > 0;
    a->ctv_given = ctv->count() > 0;
    a->ctx_given = cmd->get_option("--ctx-size")->count() > 0;
    a->batch_given = cmd->get_option("--batch-size")->count() > 0;
    run_chat(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
