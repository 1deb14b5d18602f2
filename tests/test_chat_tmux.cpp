// `lokal chat` driven like a person at a terminal: a real pseudo-terminal (tmux), keys sent with send-keys, the
// screen read with capture-pane. Covers a streamed answer with its stats line, /set, /save and /load, Ctrl-C stopping
// an answer (not the program), Ctrl-C at the prompt, the offer to drop old turns when the context fills, and /bye.
// Every wait is bounded; tmux runs on its own socket and the session is killed at the end whatever happened.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/test_data.h"

using lokal::test::data_path;

namespace {

std::string sh(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) throw std::runtime_error("popen failed");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return out;
}

std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out.push_back(c);
  }
  return out + "'";
}

class Tmux {
 public:
  explicit Tmux(const std::string& command) : socket_("lokal-test-" + std::to_string(::getpid()) + "-" + std::to_string(++count_)) {
    int rc = 0;
    const std::string out = sh("tmux -L " + socket_ + " -f /dev/null new-session -d -s chat -x 160 -y 60 " + q(command), &rc);
    if (rc != 0) throw std::runtime_error("tmux failed to start (is tmux installed? scripts/setup.sh installs it): " + out);
  }
  ~Tmux() { sh("tmux -L " + socket_ + " kill-server"); }
  void keys(const std::string& text) { sh("tmux -L " + socket_ + " send-keys -t chat -l " + q(text)); }
  void key(const std::string& name) { sh("tmux -L " + socket_ + " send-keys -t chat " + name); }
  void line(const std::string& text) {
    keys(text);
    key("Enter");
  }
  // The screen and its history, without the blank rows below the cursor (so offsets into it mark "what was there").
  std::string screen() {
    std::string s = sh("tmux -L " + socket_ + " capture-pane -p -t chat -S -2000");
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }
  bool alive() {
    int rc = 0;
    sh("tmux -L " + socket_ + " has-session -t chat", &rc);
    return rc == 0;
  }
  // Waits until the screen matches `re` (searching from character `from` on); returns the screen.
  std::string wait_for(const std::string& re, size_t from = 0, double seconds = kTimeout) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::regex rx(re);
    std::string s;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
      s = screen();
      if (s.size() > from && std::regex_search(s.begin() + static_cast<ptrdiff_t>(from), s.end(), rx)) return s;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "timed out waiting for /" << re << "/; screen:\n" << s;
    throw std::runtime_error("timeout");
  }
  static constexpr double kTimeout = lokal::test::kAddressSanitizer ? 240.0 : 60.0;

 private:
  std::string socket_;
  static inline int count_ = 0;
};

std::string lokal_bin() { return lokal::test::binary_dir() + "/src/lokal"; }

// The number of times `needle` occurs in `s`.
size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

}  // namespace

TEST(ChatTmux, ConversationCommandsAndInterrupts) {
  lokal::test::TempDir dir;
  const std::string model = data_path("models/real/tinychat-4m-q8_0.gguf");
  Tmux t(lokal_bin() + " chat -m " + q(model) + " --temp 0");
  std::string s = t.wait_for(">>>");
  EXPECT_NE(s.find("/help for commands"), std::string::npos) << s;

  t.line("What is the capital of France?");
  s = t.wait_for("tokens/s, prompt \\d+ tokens \\(0 cached\\), context \\d+/\\d+ tokens\\]");
  EXPECT_NE(s.find("Paris"), std::string::npos) << s;

  // The second turn reuses the cached first one.
  size_t mark = s.size();
  t.line("What is the capital of Italy?");
  s = t.wait_for("prompt \\d+ tokens \\([1-9]\\d* cached\\)", mark);

  mark = s.size();
  t.line("/set temp 0.5");
  s = t.wait_for("temp = 0.5", mark);
  t.line("/set nonsense 1");
  s = t.wait_for("error: /set: unknown parameter 'nonsense'", mark);
  t.line("/save " + dir.file("conv.json"));
  s = t.wait_for("saved 4 messages", mark);
  {
    const auto saved = nlohmann::json::parse(lokal::test::read_file(dir.file("conv.json")));
    ASSERT_EQ(saved["messages"].size(), 4u);
    EXPECT_EQ(saved["messages"][0]["content"], "What is the capital of France?");
    EXPECT_EQ(saved["messages"][1]["role"], "assistant");
  }
  t.line("/clear");
  s = t.wait_for("conversation cleared", mark);
  t.line("/load " + dir.file("conv.json"));
  s = t.wait_for("loaded 4 messages", mark);
  t.line("/show");
  s = t.wait_for("4 messages, context", mark);

  // Ctrl-C at the prompt: a reminder, the program stays.
  mark = s.size();
  t.key("C-c");
  s = t.wait_for("use Ctrl-D or /bye to leave", mark);
  t.line("/help");
  s = t.wait_for("/tool RESULT", mark);

  t.line("/bye");
  const auto t0 = std::chrono::steady_clock::now();
  while (t.alive() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(t.alive()) << "lokal chat did not exit on /bye";
}

TEST(ChatTmux, CtrlCStopsTheAnswerNotTheProgram) {
  // A random-weight model with its end-of-generation tokens banned (--ignore-eos) never ends its turn: the answer
  // runs until Ctrl-C (or the 32768-token context is full, seconds after the Ctrl-C is sent even on a fast machine).
  const std::string model = data_path("models/synth/synth-llama-f32.gguf");
  Tmux t(lokal_bin() + " chat -m " + q(model) + " --chat-template chatml -t 1 -c 32768 --allow-long-ctx --ignore-eos");
  std::string s = t.wait_for(">>>");
  size_t mark = s.size();
  t.line("Tell me everything.");
  // Ctrl-C once the answer is streaming (some text after the question), not before it starts.
  s = t.wait_for("Tell me everything\\.", mark);
  const size_t asked = s.size();  // the screen is trimmed of trailing blanks: growth is answer text
  for (const auto t0 = std::chrono::steady_clock::now();
       t.screen().size() <= asked && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60);)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  t.key("C-c");
  s = t.wait_for("\\(stopped\\)", mark);
  s = t.wait_for(">>>", s.find("(stopped)"));
  ASSERT_TRUE(t.alive());
  mark = s.size();
  t.line("/show");
  s = t.wait_for("2 messages, context", mark);
  t.key("C-d");
  const auto t0 = std::chrono::steady_clock::now();
  while (t.alive() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(t.alive()) << "lokal chat did not exit on Ctrl-D";
}

TEST(ChatTmux, FullContextOffersToDropTheOldestTurns) {
  const std::string model = data_path("models/real/tinychat-4m-q8_0.gguf");
  Tmux t(lokal_bin() + " chat -m " + q(model) + " --temp 0 -c 160");
  std::string s = t.wait_for(">>>");
  const char* questions[] = {"What is the capital of France?", "What is the capital of Spain?",
                             "What is the capital of Italy?", "What is the capital of Germany?",
                             "What is the capital of Japan?"};
  bool offered = false;
  for (const char* qn : questions) {
    const size_t mark = s.size();
    t.line(qn);
    s = t.wait_for("tokens/s|Drop the oldest turns\\? \\[Y/n\\]", mark);
    if (s.find("Drop the oldest turns? [Y/n]", mark) != std::string::npos) {
      offered = true;
      t.line("y");
      s = t.wait_for("dropped the oldest turn", mark);
      s = t.wait_for("tokens/s", mark);
      break;
    }
  }
  EXPECT_TRUE(offered) << s;
  EXPECT_GE(count(s, "tokens/s"), 2u);
  t.line("/bye");
}
