// server/webui.cpp - serving the embedded web chat page (see webui.h).
#include "server/webui.h"

#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace lokal::server {

namespace {

uint64_t fnv1a(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hex16(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

std::string content_type_of(std::string_view path) {
  auto ends = [&](std::string_view s) { return path.size() >= s.size() && path.substr(path.size() - s.size()) == s; };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  if (ends(".json")) return "application/json";
  return "application/octet-stream";
}

// gzip (RFC 1952) at the best compression level; done once per file, on its first request.
std::string gzip(std::string_view in) {
  z_stream zs{};
  if (deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2 failed");
  std::string out(deflateBound(&zs, static_cast<uLong>(in.size())) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  const size_t n = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw std::runtime_error("gzip of a web asset failed");
  out.resize(n);
  return out;
}

// Does an Accept-Encoding header accept gzip (and not with q=0)?
bool accepts_gzip(std::string_view ae) {
  size_t pos = 0;
  while (pos < ae.size()) {
    size_t end = ae.find(',', pos);
    if (end == std::string_view::npos) end = ae.size();
    std::string_view item = ae.substr(pos, end - pos);
    pos = end + 1;
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    const size_t semi = item.find(';');
    std::string_view coding = item.substr(0, semi);
    while (!coding.empty() && coding.back() == ' ') coding.remove_suffix(1);
    if (coding != "gzip" && coding != "*") continue;
    if (semi != std::string_view::npos) {
      std::string_view params = item.substr(semi + 1);
      const size_t q = params.find("q=");
      if (q != std::string_view::npos) {
        std::string_view v = params.substr(q + 2);
        if (!v.empty() && v[0] == '0' && v.find_first_of("123456789") == std::string_view::npos) continue;
      }
    }
    return true;
  }
  return false;
}

// Is `etag` among the entity tags of an If-None-Match header ("*", or a list of quoted, possibly weak, tags)?
bool matches_etag(std::string_view inm, const std::string& etag) {
  if (inm.empty()) return false;
  if (inm.find('*') != std::string_view::npos) return true;
  const std::string_view bare = std::string_view(etag).substr(1, etag.size() - 2);  // without the quotes
  size_t at = 0;
  while ((at = inm.find(bare, at)) != std::string_view::npos) {
    const bool open = at > 0 && inm[at - 1] == '"';
    const bool close = at + bare.size() < inm.size() && (inm[at + bare.size()] == '"' || inm[at + bare.size()] == '-');
    if (open && close) return true;
    at += bare.size();
  }
  return false;
}

struct File {
  std::string path;             // "/" for index.html, else "/ui/..."
  std::string_view body;        // the embedded bytes (read-only data of the binary; no copy), or `page` for index.html
  std::string page;             // index.html with the version filled in
  std::string type, etag;
  bool is_index = false;
  mutable std::once_flag gz_once;
  mutable std::string gz;
};

}  // namespace

struct WebUi::Impl {
  std::vector<std::unique_ptr<File>> files;
  std::string version;  // every asset URL in index.html carries ?v=version (a hash of all embedded bytes)
};

WebUi::WebUi() : impl_(std::make_unique<Impl>()) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& a : embedded_web_assets()) h = fnv1a(a.data, fnv1a(a.path, h));
  impl_->version = hex16(h).substr(0, 12);
  for (const auto& a : embedded_web_assets()) {
    auto f = std::make_unique<File>();
    f->type = content_type_of(a.path);
    f->body = a.data;
    f->is_index = a.path == "index.html";
    f->path.assign(f->is_index ? std::string_view("/") : std::string_view("/ui/"));
    if (!f->is_index) f->path.append(a.path);
    if (f->is_index) {
      // Every asset URL in the page carries ?v=VERSION, so a new binary's page never runs an old cached script.
      f->page.assign(a.data);
      for (size_t at = 0; (at = f->page.find("@VERSION@", at)) != std::string::npos; at += impl_->version.size())
        f->page.replace(at, 9, impl_->version);
      f->body = f->page;
    }
    f->etag = std::string(1, '"').append(hex16(fnv1a(f->body))).append(1, '"');
    impl_->files.push_back(std::move(f));
  }
}

WebUi::~WebUi() = default;

const char* WebUi::content_security_policy() {
  return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
         "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
}

WebResponse WebUi::get(std::string_view path, std::string_view version, std::string_view accept_encoding,
                       std::string_view if_none_match) const {
  WebResponse r;
  if (path == "/index.html") path = "/";
  const File* f = nullptr;
  for (const auto& x : impl_->files)
    if (x->path == path) f = x.get();
  if (!f) return r;
  r.content_type = f->type;
  r.etag = f->etag;
  // The page itself is always revalidated (cheap: a 304); an asset asked for with the current version never changes,
  // so the browser may keep it a year without asking; without (or with an old) version it is revalidated too.
  r.cache_control = !f->is_index && version == impl_->version ? "public, max-age=31536000, immutable" : "no-cache";
  if (matches_etag(if_none_match, f->etag)) {
    r.status = 304;
    return r;
  }
  r.status = 200;
  if (f->body.size() > 1024 && accepts_gzip(accept_encoding)) {
    std::call_once(f->gz_once, [f] { f->gz = gzip(f->body); });
    r.body = f->gz;
    r.content_encoding = "gzip";
    r.etag.insert(r.etag.size() - 1, "-gz");  // another representation, another strong validator
  } else {
    r.body = f->body;
  }
  return r;
}

}  // namespace lokal::server
