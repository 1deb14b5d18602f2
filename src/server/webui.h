// server/webui.h - the web chat page `lokal serve` shows at `/` (docs/WEBUI.md): its files are embedded in the binary
// at build time (src/server/webui/, plus Debian's marked, highlight.js and DOMPurify under vendor/), served with
// their content types, validators, caching headers, gzip, and a Content-Security-Policy that allows nothing external.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace lokal::server {

// One embedded file: its path below /ui/ ("app.js", "vendor/marked.min.js"; "index.html" is served at /).
struct WebAsset {
  std::string_view path;
  std::string_view data;
};
// Every embedded file (generated source: build/src/webui_assets.cpp).
std::span<const WebAsset> embedded_web_assets();

// What one GET answers: status 200 (body, or gzip body), 304 (no body) or 404.
struct WebResponse {
  int status = 404;
  std::string_view body;              // the bytes to send (gzip-compressed when content_encoding is "gzip")
  std::string content_type;
  std::string content_encoding;       // "" or "gzip"
  std::string etag;
  std::string cache_control;
};

class WebUi {
 public:
  WebUi();
  ~WebUi();
  // path: the request path ("/" or "/ui/..."); version: the `v` query parameter ("" if none); accept_encoding and
  // if_none_match: the request's headers.
  WebResponse get(std::string_view path, std::string_view version, std::string_view accept_encoding,
                  std::string_view if_none_match) const;
  // The Content-Security-Policy of every page response: same-origin scripts, styles and API calls; nothing else.
  static const char* content_security_policy();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lokal::server
