// core/safe_io.h - reading inputs and writing outputs without ever losing a user's file.
//
// Rules every subcommand follows (tests/test_hostile_cli.cpp runs each case against the binary):
//  * An input file must be a regular file (a FIFO would block forever, a device could be endless):
//    check_input_file(). A missing file always gives the same message: "PATH: no such file".
//  * An output path is checked before any work starts (check_output_file / check_output_dir): it must not
//    resolve to any input (same path after symlinks, or the same device+inode: hard links), an existing
//    output must be a regular file (a directory where a directory is expected), never a device node, FIFO
//    or socket, and its directory must exist and be writable.
//  * Every output is written through AtomicFile: a temporary file beside the target (created with O_EXCL),
//    fsync'ed and renamed over the target only when complete. A failure removes the temporary file and
//    leaves the target as it was; write errors name the reason (strerror: "No space left on device").
//  * Temporary files are registered while they exist: SIGINT, SIGTERM and SIGHUP remove them before the
//    process dies (install_signal_cleanup(), called once by main).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lokal {

// --- inputs ---

// Throws lokal::Error unless `path` names an existing regular file (symlinks followed). `what` names the
// role in the message, e.g. "model file": "m.gguf: no such file", "/tmp/p: is a FIFO, not a regular file".
void check_input_file(const std::string& path, const char* what = "file");
// Same for a directory (a Hugging Face model folder).
void check_input_dir(const std::string& path, const char* what = "folder");

// Reads a whole text input of at most `max_bytes` bytes. Regular files, pipes and character devices are
// accepted (`-f <(cmd)` works) but never read past the cap: "PATH: larger than N bytes (<why>)".
// `why` explains the cap to the user, e.g. "the most a 2048-token context could use".
std::string read_text_input(const std::string& path, uint64_t max_bytes, const std::string& why);

// --- outputs ---

// Checks an output file path before any work starts (see the rules above). `inputs` are every file the
// command reads (models, texts, tokenizers; empty strings are ignored). Returns nothing; throws lokal::Error.
void check_output_file(const std::string& out, const std::vector<std::string>& inputs);
// An output folder (export-hf): if it exists it must be a directory; else its parent must exist and be
// writable. `files` are the names the command will write in it: each is checked like check_output_file.
void check_output_dir(const std::string& dir, const std::vector<std::string>& files, const std::vector<std::string>& inputs);

// Whether two paths name the same file (same device+inode, or the same canonical path).
bool same_file(const std::string& a, const std::string& b);

// Writes `path` atomically (see above). Usage:
//   AtomicFile f(path);  f.write(p, n) ...;  f.commit();
// Destroying it without commit() removes the temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Buffered; throws lokal::Error "PATH: write failed: <reason>".
  void write(const void* p, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  // Flushes, fsyncs, closes and renames into place.
  void commit();
  // The same, renamed to `path` in the same folder instead: for a name known only once the bytes are written (a
  // content hash). The earlier target is not touched.
  void commit_to(const std::string& path);
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }
  uint64_t bytes_written() const { return written_; }

 private:
  void flush();
  [[noreturn]] void fail(const char* what, int err);
  void abandon() noexcept;

  std::string path_, tmp_;
  int fd_ = -1;
  int slot_ = -1;  // signal-cleanup registration
  std::vector<uint8_t> buf_;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Writes a whole small file atomically.
void write_file_atomic(const std::string& path, const std::string& bytes);

// --- cleanup on signals ---

// Installs SIGINT/SIGTERM/SIGHUP handlers that unlink every registered temporary file, then die of the
// signal as before (exit status 128+sig). Idempotent.
void install_signal_cleanup();
// Registers a path to unlink on a fatal signal; returns a slot for unregister_temp_path (-1 if the table is
// full: the file is then not cleaned on a signal, but everything else works).
int register_temp_path(const std::string& path);
void unregister_temp_path(int slot);

// A file in a temporary folder ($TMPDIR or /tmp, or `dir`) that is removed when the object goes away or on a
// fatal signal. Nothing is created: path() is a fresh unique name.
class ScratchPath {
 public:
  ScratchPath(const std::string& dir, const std::string& prefix, const std::string& suffix);
  ~ScratchPath();
  ScratchPath(const ScratchPath&) = delete;
  ScratchPath& operator=(const ScratchPath&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int slot_ = -1;
};

// --- printing untrusted text ---

// `s` with control characters escaped so that text from a file (model names, metadata, tensor names) cannot
// drive the terminal: C0 controls and DEL as \n, \t, \r, \e or \xNN, C1 controls (U+0080..U+009F) as \u00NN,
// bytes that are not valid UTF-8 as \xNN, and a backslash stays a backslash. Printable UTF-8 is unchanged.
std::string printable(const std::string& s);

}  // namespace lokal
