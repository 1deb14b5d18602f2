// Tests of the model store (runtime/model_store.h) and `lokal models`: import/list/show/cp/rm round trips with the
// digest checked against sha256sum, refused inputs (not GGUF, truncated, bad names), presets and store names on the
// command line (-m NAME in run, chat and serve's model id).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "runtime/model_store.h"
#include "support/test_data.h"

using namespace lokal;
using namespace lokal::test;
namespace fs = std::filesystem;

namespace {

std::string tinychat() { return data_path("models/real/tinychat-4m-q8_0.gguf"); }
std::string stories() { return data_path("models/real/stories260K.gguf"); }

// sha256sum's answer: an implementation independent of ours.
std::string sha256sum(const std::string& path) {
  FILE* p = popen(("sha256sum '" + path + "'").c_str(), "r");
  EXPECT_NE(p, nullptr);
  char buf[128] = {0};
  const size_t n = fread(buf, 1, 64, p);
  pclose(p);
  return std::string(buf, n);
}

size_t count_files(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator(); ++it)
    n += it->is_regular_file();
  return n;
}

void write(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

}  // namespace

TEST(ModelStore, NamesAreValidated) {
  const StoreName a = parse_store_name("tinychat");
  EXPECT_EQ(a.ns, "library");
  EXPECT_EQ(a.name, "tinychat");
  EXPECT_EQ(a.tag, "latest");
  EXPECT_EQ(a.str(), "tinychat:latest");
  const StoreName b = parse_store_name("team/qwen2.5-7b_instruct:Q4_K_M");
  EXPECT_EQ(b.ns, "team");
  EXPECT_EQ(b.name, "qwen2.5-7b_instruct");
  EXPECT_EQ(b.tag, "Q4_K_M");
  EXPECT_EQ(b.str(), "team/qwen2.5-7b_instruct:Q4_K_M");
  EXPECT_EQ(parse_store_name("library/x:latest"), parse_store_name("x"));
  for (const char* bad : {"", ":tag", "name:", "Upper", "a b", "../x", "a/b/c", "-x", ".x", "x/..", "a:b:c:",
                          "x:../y", "/x", "x\n", "x:t/g"}) {
    EXPECT_THROW(parse_store_name(bad), Error) << bad;
    EXPECT_FALSE(try_store_name(bad)) << bad;
  }
  EXPECT_THROW(parse_store_name(std::string(65, 'a')), Error);
  EXPECT_NO_THROW(parse_store_name(std::string(64, 'a')));
  try {
    parse_store_name("My Model");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model name 'My Model': the name may only hold lower-case letters"),
              std::string::npos)
        << e.what();
  }
}

TEST(ModelStore, ImportListShowCopyRemoveRoundTrip) {
  TempDir tmp("store");
  ModelStore store(tmp.path().string() + "/models");
  const std::string src = tinychat();
  struct stat before{};
  ASSERT_EQ(stat(src.c_str(), &before), 0);
  uint64_t last = 0;
  const ModelManifest m = store.import_file(src, parse_store_name("tinychat"), false, false,
                                            [&](uint64_t done, uint64_t) { last = done; });
  EXPECT_EQ(last, fs::file_size(src));  // progress reached the end
  // The digest is the file's SHA-256 (checked by sha256sum), the blob is a read-only copy named by it.
  EXPECT_EQ(m.digest, "sha256:" + sha256sum(src));
  const std::string blob = store.blob_path(m.digest);
  EXPECT_EQ(blob, tmp.path().string() + "/models/blobs/sha256-" + sha256sum(src));
  EXPECT_EQ(read_file(blob), read_file(src));
  struct stat bs{};
  ASSERT_EQ(stat(blob.c_str(), &bs), 0);
  EXPECT_EQ(bs.st_mode & 0777, 0444u);
  EXPECT_NE(bs.st_ino, before.st_ino);  // a copy, not a link
  // Facts from the header.
  EXPECT_EQ(m.size, fs::file_size(src));
  EXPECT_EQ(m.arch, "llama");
  EXPECT_EQ(m.file_type, "Q8_0");
  EXPECT_EQ(m.n_ctx_train, 512);
  EXPECT_TRUE(m.chat_template);
  EXPECT_GT(m.n_params, 4000000);
  EXPECT_LT(m.n_params, 4400000);
  EXPECT_EQ(store.verify(m), "");
  // The same file again under a second name: one blob. Without --force an existing name is refused.
  EXPECT_THROW(store.import_file(src, parse_store_name("tinychat"), false, false), Error);
  store.import_file(src, parse_store_name("chat/tiny:q8"), false, false);
  store.copy(parse_store_name("tinychat"), parse_store_name("alias"), false);
  EXPECT_THROW(store.copy(parse_store_name("tinychat"), parse_store_name("alias"), false), Error);
  EXPECT_THROW(store.copy(parse_store_name("nope"), parse_store_name("x"), false), Error);
  const auto all = store.list();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].name.str(), "alias:latest");
  EXPECT_EQ(all[1].name.str(), "chat/tiny:q8");
  EXPECT_EQ(all[2].name.str(), "tinychat:latest");
  for (const auto& x : all) EXPECT_EQ(x.digest, m.digest);
  EXPECT_EQ(count_files(tmp.path().string() + "/models/blobs"), 1u);
  // A different model is a second blob.
  const auto s = store.import_file(stories(), parse_store_name("stories"), false, false);
  EXPECT_NE(s.digest, m.digest);
  EXPECT_EQ(count_files(tmp.path().string() + "/models/blobs"), 2u);
  // rm: the blob goes with the last name that uses it.
  EXPECT_FALSE(store.remove(parse_store_name("tinychat")));
  EXPECT_FALSE(store.remove(parse_store_name("chat/tiny:q8")));
  EXPECT_TRUE(fs::exists(blob));
  EXPECT_TRUE(store.remove(parse_store_name("alias")));
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_THROW(store.remove(parse_store_name("alias")), Error);
  EXPECT_FALSE(fs::exists(tmp.path().string() + "/models/manifests/chat"));  // empty folders removed
  ASSERT_EQ(store.list().size(), 1u);
  // The input was neither changed nor moved.
  struct stat after{};
  ASSERT_EQ(stat(src.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtime, before.st_mtime);
  EXPECT_EQ(after.st_mode, before.st_mode);
}

TEST(ModelStore, LinkSharesTheFileAndVerifyCatchesChanges) {
  TempDir tmp("store");
  ModelStore store(tmp.path().string() + "/models");
  const std::string src = tmp.path().string() + "/mine.gguf";
  fs::copy_file(tinychat(), src);
  fs::permissions(src, fs::perms::owner_read | fs::perms::owner_write);
  const auto m = store.import_file(src, parse_store_name("mine"), true, false);
  struct stat a{}, b{};
  ASSERT_EQ(stat(src.c_str(), &a), 0);
  ASSERT_EQ(stat(store.blob_path(m.digest).c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);     // a hard link
  EXPECT_EQ(a.st_mode & 0777, 0600u);  // the user's file keeps its mode
  EXPECT_EQ(store.verify(m), "");
  // Changing the linked file in place is what verify is for.
  {
    std::fstream f(src, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(m.size - 10));
    f.put('\x5a');
  }
  EXPECT_NE(store.verify(m).find("content changed"), std::string::npos) << store.verify(m);
}

TEST(ModelStore, RefusesWhatIsNotARunnableGguf) {
  TempDir tmp("store");
  const std::string root = tmp.path().string() + "/models";
  ModelStore store(root);
  write(tmp.path().string() + "/notes.gguf", "these are not the weights you are looking for\n");
  const std::string whole = read_file(tinychat());
  write(tmp.path().string() + "/cut.gguf", whole.substr(0, whole.size() / 2));
  for (const std::string f : {"notes.gguf", "cut.gguf", "missing.gguf"}) {
    try {
      store.import_file(tmp.path().string() + "/" + f, parse_store_name("x"), false, false);
      ADD_FAILURE() << f << " was imported";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();  // the message names the file
    }
  }
  EXPECT_THROW(store.import_file(tmp.path(), parse_store_name("x"), false, false), Error);  // a folder
  EXPECT_EQ(count_files(root), 0u);  // nothing left behind (no partial blob, no manifest)
  // A damaged manifest is skipped by list (with a warning), and named by find.
  fs::create_directories(root + "/manifests/library/bad");
  write(root + "/manifests/library/bad/latest.json", "{\"name\": 3}");
  EXPECT_TRUE(store.list().empty());
  EXPECT_THROW(store.find(parse_store_name("bad")), Error);
}

TEST(ModelStore, PresetsAndStoreNamesOnTheCommandLine) {
  TempDir tmp("store");
  const std::string root = tmp.path().string() + "/models";
  const std::string env = "LOKAL_MODELS='" + root + "' ";
  // `lokal models import` with the default name (the file's stem), list, show.
  auto r = run_lokal("models import --models-dir '" + root + "' '" + tinychat() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("as tinychat-4m-q8_0:latest"), std::string::npos) << r.out;
  r = run_lokal("models list --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("tinychat-4m-q8_0:latest"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Q8_0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4.2M"), std::string::npos) << r.out;
  r = run_lokal("models show tinychat-4m-q8_0 --verify --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("verify:          ok"), std::string::npos) << r.out;
  // A preset: base, system prompt, context, sampling; a template file relative to the preset.
  write(tmp.path().string() + "/t.jinja", "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
  write(tmp.path().string() + "/terse.toml",
        "from = \"tinychat-4m-q8_0\"\nsystem = \"You are terse.\"\nctx_size = 256\ntemplate_file = \"t.jinja\"\n"
        "cache_type_k = \"q8_0\"\n[sampling]\ntemperature = 0.0\nseed = 7\n");
  r = run_lokal("models create terse -f '" + tmp.path().string() + "/terse.toml' --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  ModelStore store(root);
  const auto m = store.get(parse_store_name("terse"));
  ASSERT_TRUE(m.preset);
  EXPECT_EQ(m.preset->system, "You are terse.");
  EXPECT_EQ(m.preset->ctx_size, 256);
  EXPECT_EQ(m.base, "tinychat-4m-q8_0:latest");
  EXPECT_TRUE(fs::exists(m.preset->chat_template));
  // Bad presets: unknown key, missing base, wrong type.
  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {"from = \"tinychat-4m-q8_0\"\ntemprature = 1\n", "unknown key 'temprature'"},
           {"from = \"nothere\"\n", "model 'nothere:latest' is not in the store"},
           {"system = \"x\"\n", "'from'"},
           {"from = \"tinychat-4m-q8_0\"\nctx_size = \"big\"\n", "'ctx_size' must be an integer"},
           {"from = \"tinychat-4m-q8_0\"\n[sampling]\ntop_p = 3.0\n", "top_p' must be 0..1"},
           {"from = = \n", "preset:"}}) {
    write(tmp.path().string() + "/bad.toml", text);
    r = run_lokal("models create bad -f '" + tmp.path().string() + "/bad.toml' --models-dir '" + root + "'");
    expect_one_line_error(r, want);
  }
  // -m NAME resolves through the store; the preset gives chat its context (256), system prompt and greedy sampling.
  r = run_lokal("chat -m terse -p 'What is the capital of France?' --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("The capital of France is Paris."), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("/256 tokens"), std::string::npos) << r.err;
  // An option given on the command line wins over the preset's.
  r = run_lokal("chat -m terse -c 300 -p 'What is the capital of France?' --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("/300 tokens"), std::string::npos) << r.err;
  // LOKAL_MODELS works like --models-dir; run takes store names too.
  const std::string cmd = "sh -c \"" + env + "'" + binary_dir() + "/src/lokal' run -m tinychat-4m-q8_0 -p Once -n 4 2>&1\"";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  EXPECT_NE(out.find("generation: 4 tokens"), std::string::npos) << out;
  // serve: a name from the config file resolves too, through --models-dir (which wins over LOKAL_MODELS), and the
  // model is served under that name.
  write(tmp.path().string() + "/serve.toml", "model = \"terse\"\nport = 0\nthreads = 1\n");
  {
    const std::string sc = "sh -c \"LOKAL_MODELS=/nonexistent timeout -s INT 4 '" + binary_dir() +
                           "/src/lokal' serve --models-dir '" + root + "' --config '" + tmp.path().string() +
                           "/serve.toml' 2>&1\"";
    FILE* sp = popen(sc.c_str(), "r");
    ASSERT_NE(sp, nullptr);
    std::string log;
    while ((n = fread(buf, 1, sizeof buf, sp)) > 0) log.append(buf, n);
    pclose(sp);
    EXPECT_NE(log.find("ready: terse:latest"), std::string::npos) << log;
  }
  // A name that is neither a file nor in the store stays an error about the file.
  r = run_lokal("run -m no-such-model -p x -n 1 --models-dir '" + root + "'");
  expect_one_line_error(r, "no-such-model");
  // rm through the CLI.
  r = run_lokal("models rm terse --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("still used by another name"), std::string::npos) << r.out;
  r = run_lokal("models rm tinychat-4m-q8_0 --models-dir '" + root + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("deleted its file"), std::string::npos) << r.out;
  r = run_lokal("models show terse --models-dir '" + root + "'");
  expect_one_line_error(r, "model 'terse:latest' is not in the store");
}
