// Hostile input to the `lokal` binary (issue: never lose a user's file, never crash on a bad model).
//
// Each case runs the real binary the way a careless user or an attacker would and asserts the exit status, the
// one-line message, and that every input file is byte-identical afterwards:
//   * an output path that is an input (the same path, a symbolic link, a hard link) for every writing subcommand;
//   * outputs that are FIFOs or device nodes (made in a scratch folder, never the system's /dev entries);
//   * inputs that are FIFOs (which would block forever) or missing (one message everywhere);
//   * interruption by SIGINT/SIGTERM while writing: no temporary file is left;
//   * a full disk (a small tmpfs where the test may mount one, else a file-size limit): the reason is named and no
//     partial output or temporary file is left;
//   * a context far above the trained one, a run larger than the machine's memory, an endless prompt file;
//   * terminal escape sequences in model metadata.
// Every child runs under a deadline, so a hang fails the test instead of blocking the suite.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/safe_io.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using lokal::test::data_path;
using lokal::test::TempDir;

namespace {

using Clock = std::chrono::steady_clock;

struct Proc {
  pid_t pid = -1;
  std::string out_file, err_file;
};

struct Outcome {
  int rc = -1;        // exit status, or 128 + signal
  int signal = 0;     // the signal that ended it, 0 if it exited
  bool timed_out = false;
  std::string out, err;
};

struct SpawnOptions {
  std::vector<std::pair<std::string, std::string>> env;  // added to the environment
  rlim_t fsize_limit = RLIM_INFINITY;                       // RLIMIT_FSIZE (SIGXFSZ ignored: writes fail with EFBIG)
};

std::string lokal_bin() { return lokal::test::binary_dir() + "/src/lokal"; }

Proc spawn(const std::vector<std::string>& args, const TempDir& tmp, const SpawnOptions& so = {}) {
  static int counter = 0;
  Proc p;
  p.out_file = tmp.file(".out" + std::to_string(counter));
  p.err_file = tmp.file(".err" + std::to_string(counter++));
  std::vector<std::string> argv_s{lokal_bin()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  p.pid = ::fork();
  if (p.pid == 0) {
    const int o = ::open(p.out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(p.err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int n = ::open("/dev/null", O_RDONLY);
    ::dup2(n, 0);
    ::dup2(o, 1);
    ::dup2(e, 2);
    for (const auto& [k, v] : so.env) ::setenv(k.c_str(), v.c_str(), 1);
    if (so.fsize_limit != RLIM_INFINITY) {
      ::signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl {so.fsize_limit, so.fsize_limit};
      ::setrlimit(RLIMIT_FSIZE, &rl);
    }
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return p;
}

Outcome wait_for(const Proc& p, double timeout_s) {
  Outcome r;
  const auto t0 = Clock::now();
  int status = 0;
  for (;;) {
    const pid_t w = ::waitpid(p.pid, &status, WNOHANG);
    if (w == p.pid) break;
    if (std::chrono::duration<double>(Clock::now() - t0).count() > timeout_s) {
      r.timed_out = true;
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) r.rc = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status), r.rc = 128 + r.signal;
  r.out = lokal::test::read_file(p.out_file);
  r.err = lokal::test::read_file(p.err_file);
  fs::remove(p.out_file);
  fs::remove(p.err_file);
  return r;
}

// Sanitizer builds run ~10x slower.
double deadline(double s) { return lokal::test::kAddressSanitizer ? s * 10 : s; }

Outcome run(const std::vector<std::string>& args, const TempDir& tmp, double timeout_s = 60, const SpawnOptions& so = {}) {
  return wait_for(spawn(args, tmp, so), deadline(timeout_s));
}

// Exit status 1, no hang, exactly one "error: ..." line on stderr containing `must`.
void expect_error(const Outcome& r, const std::string& must, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_FALSE(r.timed_out) << "hung";
  EXPECT_EQ(r.rc, 1) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected exactly one line, got: " << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(must), std::string::npos) << "message: " << r.err;
}

// Files (not folders) under `dir` whose name contains `part`.
std::vector<std::string> files_with(const fs::path& dir, const std::string& part) {
  std::vector<std::string> v;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->path().filename().string().find(part) != std::string::npos) v.push_back(it->path().string());
  return v;
}

// Snapshot of file contents, to assert inputs are untouched.
struct Snapshot {
  std::vector<std::pair<std::string, std::string>> files;
  explicit Snapshot(std::vector<std::string> paths) {
    for (auto& p : paths) files.emplace_back(p, lokal::test::read_file(p));
  }
  void expect_unchanged(const std::string& what) const {
    for (const auto& [p, bytes] : files) {
      ASSERT_TRUE(fs::is_regular_file(p)) << what << ": " << p << " is gone or replaced";
      EXPECT_TRUE(lokal::test::read_file(p) == bytes) << what << ": " << p << " was modified";
    }
  }
};

std::string copy_to(const TempDir& t, const std::string& src, const std::string& name) {
  const std::string dst = t.file(name);
  fs::copy_file(src, dst, fs::copy_options::overwrite_existing);
  return dst;
}

const std::string kText = "golden/ppl-text-books.txt";

// --------------------------------------------------------------------------------------------
// 1. An output that is an input.

TEST(Hostile, OutputIsAnInputForEveryWritingSubcommand) {
  TempDir t("hostile");
  const std::string m = copy_to(t, data_path("models/real/stories260K.gguf"), "m.gguf");
  const std::string text = copy_to(t, data_path(kText), "t.txt");
  fs::create_hard_link(m, t.file("hard.gguf"));
  fs::create_symlink(m, t.file("sym.gguf"));
  fs::create_symlink("t.txt", t.file("sym.txt"));
  // llama.cpp-style checkpoint and tokenizer: the output check comes before they are parsed, so any bytes do.
  std::ofstream(t.file("ck.bin"), std::ios::binary) << std::string(4096, '\x01');
  std::ofstream(t.file("tok.bin"), std::ios::binary) << std::string(1024, '\x02');
  Snapshot snap({m, text, t.file("ck.bin"), t.file("tok.bin")});

  for (const std::string& out : {m, t.file("hard.gguf"), t.file("sym.gguf"), t.file("./m.gguf")}) {
    expect_error(run({"imatrix", "-m", m, "-f", text, "-o", out}, t), "is the input file", "imatrix -o model " + out);
    expect_error(run({"perplexity", "-m", m, "-f", text, "--save-logits", out}, t), "is the input file",
                 "perplexity --save-logits model " + out);
    expect_error(run({"quantize", m, out, "Q8_0"}, t), "is the input file", "quantize onto the input " + out);
    expect_error(run({"synth", "--preset", "tinyllama-1.1b", "--vocab", m, "-o", out}, t), "is the input file",
                 "synth -o vocab " + out);
  }
  for (const std::string& out : {text, t.file("sym.txt")}) {
    expect_error(run({"imatrix", "-m", m, "-f", text, "-o", out}, t), "is the input file", "imatrix -o text");
    expect_error(run({"perplexity", "-m", m, "-f", text, "--save-logits", out}, t), "is the input file",
                 "perplexity --save-logits text");
  }
  // quantize --imatrix FILE -o FILE
  expect_error(run({"quantize", m, text, "Q8_0", "--imatrix", text}, t), "is the input file", "quantize onto the imatrix");
  // convert: the checkpoint or its tokenizer as the output.
  expect_error(run({"convert", t.file("ck.bin"), "--tokenizer", t.file("tok.bin"), "-o", t.file("ck.bin")}, t),
               "is the input file", "convert -o checkpoint");
  expect_error(run({"convert", t.file("ck.bin"), "--tokenizer", t.file("tok.bin"), "-o", t.file("tok.bin")}, t),
               "is the input file", "convert -o tokenizer");
  expect_error(run({"convert", t.file("ck.bin"), "--vocab-from", m, "-o", t.file("sym.gguf")}, t), "is the input file",
               "convert -o vocab-from");
  snap.expect_unchanged("after every refused run");

  // convert DIR -o DIR/model.safetensors, DIR/config.json: a real Hugging Face folder made by export-hf.
  const std::string hf = t.file("hf");
  Outcome e = run({"export-hf", m, "-o", hf, "-q"}, t);
  ASSERT_EQ(e.rc, 0) << e.err;
  Snapshot hf_snap({hf + "/model.safetensors", hf + "/config.json", hf + "/tokenizer.json"});
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json"})
    expect_error(run({"convert", hf, "-o", hf + "/" + f}, t), "is the input file", std::string("convert -o ") + f);
  hf_snap.expect_unchanged("convert into its own folder");
  // export-hf into a folder where model.safetensors is (a hard link to) the input, or onto the input itself.
  const std::string hf2 = t.file("hf2");
  fs::create_directory(hf2);
  fs::create_hard_link(m, hf2 + "/model.safetensors");
  expect_error(run({"export-hf", m, "-o", hf2}, t), "is the input file", "export-hf over a hard link of the input");
  expect_error(run({"export-hf", m, "-o", m}, t), "is the input file", "export-hf -o the model");
  snap.expect_unchanged("after export-hf refusals");
  // A sanity check that these refusals are about the paths: a fresh output works.
  Outcome ok = run({"quantize", m, t.file("q8.gguf"), "Q8_0"}, t);
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_TRUE(files_with(t.path(), ".tmp-").empty());
}

// --------------------------------------------------------------------------------------------
// 2. Outputs that are not regular files; inputs that are FIFOs; missing inputs.

TEST(Hostile, DeviceAndFifoOutputsAreRefused) {
  TempDir t("hostile");
  const std::string m = data_path("models/real/stories260K.gguf");
  const std::string text = data_path(kText);
  ASSERT_EQ(::mkfifo(t.file("fifo").c_str(), 0644), 0);
  std::vector<std::string> targets{t.file("fifo")};
  if (::geteuid() == 0) {  // root (as in CI) can make a device node: a scratch copy of /dev/null's numbers
    ASSERT_EQ(::mknod(t.file("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0) << std::strerror(errno);
    targets.push_back(t.file("null"));
  }
  fs::create_directory(t.file("dir"));
  for (const auto& out : targets) {
    const std::string what = fs::path(out).filename().string();
    const char* kind = what == "fifo" ? "FIFO" : "character device";
    expect_error(run({"quantize", m, out, "Q8_0"}, t), kind, "quantize -> " + what);
    expect_error(run({"synth", "--preset", "tinyllama-1.1b", "--layers", "1", "-o", out}, t), kind, "synth -> " + what);
    expect_error(run({"imatrix", "-m", m, "-f", text, "-o", out}, t), kind, "imatrix -> " + what);
    expect_error(run({"perplexity", "-m", m, "-f", text, "--save-logits", out}, t), kind, "perplexity -> " + what);
    expect_error(run({"convert", t.file("dir"), "-o", out}, t), kind, "convert -> " + what);
    struct stat st {};
    ASSERT_EQ(::lstat(out.c_str(), &st), 0);
    EXPECT_TRUE(what == "fifo" ? S_ISFIFO(st.st_mode) : S_ISCHR(st.st_mode)) << out << " was replaced";
  }
  expect_error(run({"quantize", m, t.file("dir"), "Q8_0"}, t), "is a directory", "quantize -> a folder");
  expect_error(run({"export-hf", m, "-o", t.file("fifo")}, t), "FIFO", "export-hf -> a FIFO");
  expect_error(run({"quantize", m, t.file("no/such/dir/x.gguf"), "Q8_0"}, t), "does not exist", "missing folder");
  EXPECT_TRUE(files_with(t.path(), ".tmp-").empty());
}

TEST(Hostile, FifoModelInputsAreRefusedWithoutBlocking) {
  TempDir t("hostile");
  const std::string f = t.file("model.gguf");
  ASSERT_EQ(::mkfifo(f.c_str(), 0644), 0);
  const std::string text = data_path(kText);
  const std::vector<std::vector<std::string>> cmds{
      {"info", f},
      {"run", "-m", f, "-p", "hi", "-n", "1"},
      {"quantize", f, t.file("o.gguf"), "Q8_0"},
      {"perplexity", "-m", f, "-f", text},
      {"imatrix", "-m", f, "-f", text, "-o", t.file("o.dat")},
      {"compare", f, f, "-f", text},
      {"bench", "-m", f},
      {"plan", "-m", f},
      {"export-hf", f, "-o", t.file("hf")},
      {"synth", "--preset", "tinyllama-1.1b", "--vocab", f, "-o", t.file("s.gguf")},
      {"convert", f, "-o", t.file("c.gguf")},
  };
  for (const auto& c : cmds) expect_error(run(c, t, 30), "FIFO", "FIFO input: " + c[0]);
}

TEST(Hostile, MissingInputHasOneMessageEverywhere) {
  TempDir t("hostile");
  const std::string f = t.file("missing.gguf");
  const std::string m = data_path("models/real/stories260K.gguf");
  const std::vector<std::vector<std::string>> cmds{
      {"info", f},
      {"run", "-m", f, "-p", "hi"},
      {"run", "-m", m, "-f", f},
      {"quantize", f, t.file("o.gguf"), "Q8_0"},
      {"quantize", m, t.file("o.gguf"), "Q8_0", "--imatrix", f},
      {"perplexity", "-m", f, "-f", data_path(kText)},
      {"perplexity", "-m", m, "-f", f},
      {"imatrix", "-m", m, "-f", f},
      {"compare", m, f, "-f", data_path(kText)},
      {"bench", "-m", f},
      {"plan", "-m", f},
      {"plan", "-m", m, "--draft", f},
      {"export-hf", f, "-o", t.file("hf")},
      {"convert", f, "-o", t.file("c.gguf")},
      {"synth", "--preset", "tinyllama-1.1b", "--vocab", f, "-o", t.file("s.gguf")},
  };
  for (const auto& c : cmds) expect_error(run(c, t), f + ": no such file", "missing input: " + c[0]);
  EXPECT_FALSE(fs::exists(t.file("o.gguf")));
}

// --------------------------------------------------------------------------------------------
// 3. Interruption and full disks.

// Starts `args`, waits until a file whose name contains `marker` appears under `dir`, sends `sig`; returns the outcome.
Outcome interrupt_when(const std::vector<std::string>& args, const TempDir& t, const fs::path& dir, const std::string& marker,
                       int sig, const SpawnOptions& so = {}) {
  const Proc p = spawn(args, t, so);
  const auto t0 = Clock::now();
  while (files_with(dir, marker).empty() && std::chrono::duration<double>(Clock::now() - t0).count() < deadline(60)) {
    if (::waitpid(p.pid, nullptr, WNOHANG) == p.pid) {
      ADD_FAILURE() << "finished before '" << marker << "' appeared";
      return Outcome{};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_FALSE(files_with(dir, marker).empty()) << "no '" << marker << "' file appeared";
  std::this_thread::sleep_for(std::chrono::milliseconds(30));  // mid-write
  ::kill(p.pid, sig);
  return wait_for(p, deadline(60));
}

TEST(Hostile, InterruptedWritersLeaveNoTemporaryFiles) {
  TempDir t("hostile");
  // synth: ~0.6 GB of F32 (tinyllama's embeddings and one layer), interrupted mid-write by SIGINT.
  const std::string big = t.file("big.gguf");
  Outcome r = interrupt_when({"synth", "--preset", "tinyllama-1.1b", "--type", "F32", "--layers", "1", "-t", "1", "-q", "-o", big},
                             t, t.path(), ".tmp-", SIGINT);
  EXPECT_EQ(r.signal, SIGINT) << r.err;
  EXPECT_TRUE(files_with(t.path(), ".tmp-").empty());
  EXPECT_FALSE(fs::exists(big));

  // export-hf of that model (made in full first), interrupted by SIGTERM while a safetensors file is written.
  Outcome s = run({"synth", "--preset", "tinyllama-1.1b", "--type", "F32", "--layers", "1", "-q", "-o", big}, t, 300);
  ASSERT_EQ(s.rc, 0) << s.err;
  r = interrupt_when({"export-hf", big, "-o", t.file("hf"), "-q"}, t, t.path(), ".tmp-", SIGTERM);
  EXPECT_EQ(r.signal, SIGTERM) << r.err;
  EXPECT_TRUE(files_with(t.path(), ".tmp-").empty());
  EXPECT_FALSE(fs::exists(t.file("hf/model.safetensors")));
  fs::remove(big);

  // compare: its temporary log-probability file lives in TMPDIR; SIGINT while the base model is scored.
  fs::create_directory(t.file("tmp"));
  SpawnOptions so;
  so.env.emplace_back("TMPDIR", t.file("tmp"));
  r = interrupt_when({"compare", data_path("models/real/tinytales-4m-f32.gguf"), data_path("models/real/tinytales-4m-q8_0.gguf"),
                      "-f", data_path(kText), "-c", "256", "-q", "-t", "1"},
                     t, t.file("tmp"), "lokal-compare-", SIGINT, so);
  EXPECT_EQ(r.signal, SIGINT) << r.err;
  EXPECT_TRUE(fs::is_empty(t.file("tmp"))) << files_with(t.file("tmp"), "").front();

  // perplexity --save-logits, SIGTERM mid-run: no partial file, no temporary file.
  r = interrupt_when({"perplexity", "-m", data_path("models/real/tinytales-4m-f32.gguf"), "-f", data_path(kText), "-c", "256",
                      "-t", "1", "--save-logits", t.file("l.lpf")},
                     t, t.path(), "l.lpf", SIGTERM);
  EXPECT_EQ(r.signal, SIGTERM) << r.err;
  EXPECT_TRUE(files_with(t.path(), "l.lpf").empty());
}

// A folder with almost no free space: a 64 KiB tmpfs where the test can mount one (root), else a 4 KiB file-size
// limit on the child (writes fail with EFBIG). Either way the error must name the reason and leave nothing behind.
class FullDisk {
 public:
  explicit FullDisk(const TempDir& t) : dir_(t.file("full")) {
    fs::create_directory(dir_);
    if (::geteuid() == 0 && ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=64k") == 0) {
      mounted_ = true;
      // Fill it up but for one page.
      std::ofstream(dir_ + "/filler", std::ios::binary) << std::string(60 * 1024, 'x');
    } else {
      so_.fsize_limit = 4096;
    }
  }
  ~FullDisk() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  const std::string& dir() const { return dir_; }
  const SpawnOptions& spawn_options() const { return so_; }
  const char* reason() const { return mounted_ ? "No space left on device" : "File too large"; }
  // Files other than the filler.
  std::vector<std::string> debris() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename() != "filler") v.push_back(e.path().string());
    return v;
  }

 private:
  std::string dir_;
  bool mounted_ = false;
  SpawnOptions so_;
};

TEST(Hostile, FullDiskNamesTheReasonAndLeavesNothing) {
  TempDir t("hostile");
  FullDisk disk(t);
  const std::string m = data_path("models/real/stories260K.gguf");
  const std::string text = data_path(kText);
  const std::vector<std::pair<std::string, std::vector<std::string>>> cmds{
      {"perplexity --save-logits", {"perplexity", "-m", m, "-f", text, "-c", "128", "--save-logits", disk.dir() + "/l.lpf"}},
      {"imatrix -o", {"imatrix", "-m", m, "-f", text, "-c", "128", "--chunks", "2", "-o", disk.dir() + "/i.dat"}},
      {"quantize", {"quantize", m, disk.dir() + "/q.gguf", "Q8_0"}},
      {"export-hf", {"export-hf", m, "-o", disk.dir() + "/hf", "-q"}},
  };
  for (const auto& [what, args] : cmds) {
    Outcome r = run(args, t, 120, disk.spawn_options());
    EXPECT_FALSE(r.timed_out) << what;
    EXPECT_EQ(r.rc, 1) << what << ": " << r.err;
    const size_t last = r.err.rfind("error: ");
    ASSERT_NE(last, std::string::npos) << what << ": " << r.err;
    EXPECT_NE(r.err.find(disk.reason(), last), std::string::npos) << what << ": " << r.err;
    for (const auto& f : disk.debris())
      EXPECT_TRUE(fs::is_directory(f) && fs::is_empty(f)) << what << " left " << f;
  }
}

// --------------------------------------------------------------------------------------------
// 4. Memory: huge contexts, endless prompt files.

TEST(Hostile, HugeContextNeedsAFlagAndMustFitInMemory) {
  TempDir t("hostile");
  const std::string m = data_path("models/real/stories260K.gguf");
  expect_error(run({"run", "-m", m, "-p", "hi", "-c", "16777216"}, t), "--allow-long-ctx", "-c above the trained context");
  // tinytales-4m with an F32 cache of 16 M tokens needs far more than this machine (or any CI runner) has.
  const std::string big = data_path("models/real/tinytales-4m-f32.gguf");
  Outcome r = run({"run", "-m", big, "-p", "hi", "-c", "16777216", "--allow-long-ctx", "--ctk", "f32", "--ctv", "f32"}, t);
  expect_error(r, "of memory is available", "-c 16M with --allow-long-ctx");
  EXPECT_NE(r.err.find("KV cache"), std::string::npos) << r.err;
  // --ram is a budget too.
  expect_error(run({"run", "-m", m, "-p", "hi", "-c", "2048", "--ram", "1MiB"}, t), "--ram 1MiB", "--ram too small");
  // A context within the trained one still runs.
  Outcome ok = run({"run", "-m", m, "-p", "Once", "-n", "4", "-c", "512", "--temp", "0"}, t);
  EXPECT_EQ(ok.rc, 0) << ok.err;
}

TEST(Hostile, EndlessPromptFileIsCapped) {
  TempDir t("hostile");
  const std::string m = data_path("models/real/stories260K.gguf");
  Outcome r = run({"run", "-m", m, "-f", "/dev/zero", "-c", "256"}, t);
  expect_error(r, "larger than", "-f /dev/zero");
  EXPECT_NE(r.err.find("256-token context"), std::string::npos) << r.err;
  // A prompt from a pipe still works: `-f <(echo ...)` is a FIFO the shell feeds.
  const std::string fifo = t.file("p");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const Proc p = spawn({"run", "-m", m, "-f", fifo, "-n", "4", "--temp", "0"}, t);
  {
    std::ofstream w(fifo);
    w << "Once upon a time";
  }
  Outcome ok = wait_for(p, deadline(60));
  EXPECT_EQ(ok.rc, 0) << ok.err;
  // Texts to score are capped too (1 GiB), and a directory is not a text.
  expect_error(run({"perplexity", "-m", m, "-f", t.path().string()}, t), "is a directory", "perplexity -f DIR");
}

// --------------------------------------------------------------------------------------------
// 5. Escape sequences in metadata.

TEST(Hostile, ControlCharactersInMetadataAreEscaped) {
  TempDir t("hostile");
  auto src = lokal::GGUFFile::open(data_path("models/real/stories260K.gguf"));
  auto write_with = [&](const std::string& path, const std::string& key, const std::string& value) {
    lokal::GGUFWriter w;
    w.copy_metadata(*src);
    w.set_str(key, value);
    for (const auto& ti : src->tensors()) w.add_tensor(ti);
    w.write(path);
  };
  const std::string evil = "evil\x1b]0;owned\x07\x1b[2J\x9b" "31m name";
  write_with(t.file("name.gguf"), "general.name", evil);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"info", t.file("name.gguf")}, {"info", t.file("name.gguf"), "--metadata"},
        {"bench", "-m", t.file("name.gguf"), "-p", "8", "-n", "2", "-r", "1", "--no-mem-bw"}}) {
    Outcome r = run(args, t);
    EXPECT_EQ(r.rc, 0) << r.err;
    for (const std::string* s : {&r.out, &r.err}) {
      EXPECT_EQ(s->find('\x1b'), std::string::npos) << args[0] << ": raw ESC in output";
      EXPECT_EQ(s->find('\x07'), std::string::npos) << args[0] << ": raw BEL in output";
      EXPECT_EQ(s->find('\x9b'), std::string::npos) << args[0] << ": raw byte 0x9b in output";
    }
    if (args[0] == "info") {
      EXPECT_NE(r.out.find("evil\\e]0;owned\\x07\\e[2J\\x9b31m name"), std::string::npos) << r.out;
    }
  }
  // The same in an error line: an unsupported architecture named with escapes.
  write_with(t.file("arch.gguf"), "general.architecture", "ll\x1b[31mama");
  Outcome r = run({"info", t.file("arch.gguf")}, t);
  expect_error(r, "ll\\e[31mama", "escaped architecture in the error");
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos);
}

TEST(Hostile, PrintableEscapesOnlyControls) {
  using lokal::printable;
  EXPECT_EQ(printable("plain text, üñíçødé ✓ 日本"), "plain text, üñíçødé ✓ 日本");
  EXPECT_EQ(printable("a\nb\tc\rd\x1b[0m\x7f"), "a\\nb\\tc\\rd\\e[0m\\x7f");
  EXPECT_EQ(printable(std::string("\x00x", 2)), "\\x00x");
  EXPECT_EQ(printable("\xc2\x9b" "1"), "\\u009b1");        // C1 CSI, well-formed UTF-8
  EXPECT_EQ(printable("\xff\xc3"), "\\xff\\xc3");          // invalid / truncated UTF-8
  EXPECT_EQ(printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  EXPECT_EQ(printable("\xe0\x80\x80"), "\\xe0\\x80\\x80");  // overlong
}

TEST(Hostile, AtomicFileKeepsTheTargetOnFailure) {
  TempDir t("hostile");
  const std::string p = t.file("x");
  std::ofstream(p) << "old";
  {
    lokal::AtomicFile f(p);
    f.write("new contents");
    EXPECT_EQ(lokal::test::read_file(p), "old");  // nothing visible before commit
    EXPECT_TRUE(fs::exists(f.temp_path()));
  }  // destroyed without commit: abandoned
  EXPECT_EQ(lokal::test::read_file(p), "old");
  EXPECT_TRUE(files_with(t.path(), ".tmp-").empty());
  lokal::write_file_atomic(p, "new");
  EXPECT_EQ(lokal::test::read_file(p), "new");
  // A symbolic link to a regular file: the target is replaced, the link stays a link.
  fs::create_symlink("x", t.file("link"));
  lokal::write_file_atomic(t.file("link"), "via link");
  EXPECT_TRUE(fs::is_symlink(t.file("link")));
  EXPECT_EQ(lokal::test::read_file(p), "via link");
  // Never over a FIFO.
  ASSERT_EQ(::mkfifo(t.file("fifo").c_str(), 0644), 0);
  EXPECT_THROW(lokal::AtomicFile{t.file("fifo")}, std::runtime_error);
  EXPECT_TRUE(fs::is_fifo(t.file("fifo")));
}

}  // namespace
