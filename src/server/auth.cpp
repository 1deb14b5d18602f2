// server/auth.cpp - API keys and JWT bearer tokens (see auth.h).
#include "server/auth.h"

#include <jwt.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/safe_io.h"

namespace lokal::server {

// ---------------------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104)
// ---------------------------------------------------------------------------------------------------------
namespace {

constexpr uint32_t kSha256K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

class Sha256 {
 public:
  void update(const uint8_t* p, size_t n) {
    total_ += n;
    while (n > 0) {
      size_t take = std::min(n, size_t{64} - fill_);
      std::memcpy(buf_ + fill_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ == 64) {
        block(buf_);
        fill_ = 0;
      }
    }
  }
  void update(std::string_view s) { update(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

  std::array<uint8_t, 32> finish() {
    uint64_t bits = total_ * 8;
    uint8_t pad[72] = {0x80};
    size_t pad_len = (fill_ < 56) ? 56 - fill_ : 120 - fill_;
    for (int i = 0; i < 8; ++i) pad[pad_len + i] = uint8_t(bits >> (56 - 8 * i));
    update(pad, pad_len + 8);
    std::array<uint8_t, 32> out{};
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[4 * i + j] = uint8_t(h_[i] >> (24 - 8 * j));
    return out;
  }

 private:
  void block(const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = h + S1 + ch + kSha256K[i] + w[i];
      uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = S0 + maj;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a; h_[1] += b; h_[2] += c; h_[3] += d;
    h_[4] += e; h_[5] += f; h_[6] += g; h_[7] += h;
  }

  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buf_[64] = {};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

std::string_view as_view(const std::array<uint8_t, 32>& d) {
  return std::string_view(reinterpret_cast<const char*>(d.data()), d.size());
}

// --- base64 -----------------------------------------------------------------------------------------------

int b64_value(char c, bool url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

// Decodes base64 (url: the URL-safe alphabet). Trailing '=' padding is optional. False on a bad character
// or an impossible length.
bool b64_decode(std::string_view in, bool url, std::string& out) {
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  if (in.size() % 4 == 1) return false;
  out.clear();
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = b64_value(c, url);
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xff));
    }
  }
  return true;
}

std::string b64url_encode(std::string_view in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 63]);
  return out;
}

// --- small text helpers -----------------------------------------------------------------------------------

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

bool has_space_or_control(std::string_view s) {
  for (unsigned char c : s)
    if (c <= 0x20 || c == 0x7f) return true;
  return false;
}

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !is_space(line[i])) ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

bool looks_like_jwt(std::string_view s) {
  int dots = 0;
  size_t part_len = 0;
  for (char c : s) {
    if (c == '.') {
      if (part_len == 0) return false;  // header and payload must not be empty
      ++dots;
      part_len = 0;
      continue;
    }
    if (b64_value(c, true) < 0) return false;
    ++part_len;
  }
  return dots == 2;  // the signature may be empty (alg none), which is then refused by the alg check
}

// --- PEM / DER (just enough to identify a SubjectPublicKeyInfo) ---------------------------------------------

bool der_read(std::string_view& in, uint8_t& tag, std::string_view& content) {
  if (in.size() < 2) return false;
  tag = uint8_t(in[0]);
  size_t len = uint8_t(in[1]);
  size_t hdr = 2;
  if (len & 0x80) {
    size_t n = len & 0x7f;
    if (n == 0 || n > 4 || in.size() < 2 + n) return false;
    len = 0;
    for (size_t i = 0; i < n; ++i) len = (len << 8) | uint8_t(in[2 + i]);
    hdr += n;
  }
  if (in.size() - hdr < len) return false;
  content = in.substr(hdr, len);
  in.remove_prefix(hdr + len);
  return true;
}

const std::string_view kOidRsa("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01", 9);
const std::string_view kOidEc("\x2a\x86\x48\xce\x3d\x02\x01", 7);
const std::string_view kOidP256("\x2a\x86\x48\xce\x3d\x03\x01\x07", 8);
const std::string_view kOidP384("\x2b\x81\x04\x00\x22", 5);
const std::string_view kOidP521("\x2b\x81\x04\x00\x23", 5);
const std::string_view kOidEd25519("\x2b\x65\x70", 3);

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// public helpers
// ---------------------------------------------------------------------------------------------------------

namespace detail {

std::array<uint8_t, 32> sha256(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

std::array<uint8_t, 32> hmac_sha256(std::string_view key, std::string_view data) {
  uint8_t k[64] = {};
  if (key.size() > 64) {
    auto d = sha256(key);
    std::memcpy(k, d.data(), d.size());
  } else {
    std::memcpy(k, key.data(), key.size());
  }
  uint8_t ipad[64], opad[64];
  for (int i = 0; i < 64; ++i) {
    ipad[i] = uint8_t(k[i] ^ 0x36);
    opad[i] = uint8_t(k[i] ^ 0x5c);
  }
  Sha256 inner;
  inner.update(ipad, 64);
  inner.update(data);
  auto ih = inner.finish();
  Sha256 outer;
  outer.update(opad, 64);
  outer.update(ih.data(), ih.size());
  return outer.finish();
}

}  // namespace detail

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walk all of b; read a cyclically so that its length and contents do not change the work done.
  uint64_t diff = uint64_t(a.size() ^ b.size());
  const size_t an = a.size();
  for (size_t i = 0; i < b.size(); ++i) {
    unsigned char x = an ? static_cast<unsigned char>(a[i % an]) : 0;
    diff |= uint64_t(x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

std::string read_secret_file(const std::string& path) {
  std::string s;
  try {
    s = read_text_input(path, 1 << 20, "a secret is a short string");
  } catch (const Error& e) {
    throw Error(std::string("--jwt-secret-file: ") + e.what());
  }
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (s.empty()) throw Error("--jwt-secret-file: " + path + " is empty");
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Authenticator: construction
// ---------------------------------------------------------------------------------------------------------

namespace {

struct PendingKey {
  std::string key;
  std::string name;    // empty: automatic "keyN"
  std::string origin;  // where it came from, for messages ("--api-key value 2", "FILE line 7")
  bool admin = false;
};

void parse_scopes(std::string_view word, const std::string& origin, bool& admin) {
  admin = false;
  size_t i = 0;
  while (true) {
    size_t comma = word.find(',', i);
    std::string_view s = word.substr(i, comma == std::string_view::npos ? std::string_view::npos : comma - i);
    if (s == "admin") {
      admin = true;
    } else if (s != "inference") {
      throw Error(origin + ": bad scope '" + std::string(s) +
                  "' (expected inference, admin or inference,admin; a line is `KEY [SCOPES] [NAME]`)");
    }
    if (comma == std::string_view::npos) break;
    i = comma + 1;
  }
}

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-' || c == '@';
    if (!ok) return false;
  }
  return true;
}

void add_flag_keys(const std::vector<std::string>& values, const char* flag, bool admin, std::vector<PendingKey>& out) {
  for (size_t v = 0; v < values.size(); ++v) {
    std::string_view value = values[v];
    std::string origin = std::string(flag) + " value " + std::to_string(v + 1);
    size_t i = 0;
    while (true) {
      size_t comma = value.find(',', i);
      std::string_view piece = trim(value.substr(i, comma == std::string_view::npos ? std::string_view::npos : comma - i));
      if (piece.empty()) throw Error(origin + ": empty API key (check for a stray comma)");
      out.push_back({std::string(piece), "", origin, admin});
      if (comma == std::string_view::npos) break;
      i = comma + 1;
    }
  }
}

void add_file_keys(const std::string& path, std::vector<PendingKey>& out, std::vector<std::string>& warnings) {
  std::string text;
  try {
    text = read_text_input(path, 16 << 20, "an API key file holds one short line per key");
  } catch (const Error& e) {
    throw Error(std::string("--api-key-file: ") + e.what());
  }
  std::error_code ec;
  auto perms = std::filesystem::status(path, ec).permissions();
  using P = std::filesystem::perms;
  if (!ec && (perms & (P::group_read | P::group_write | P::others_read | P::others_write)) != P::none)
    warnings.push_back("API key file " + path + " is accessible by group or others (chmod 600 it)");

  std::string_view rest = text;
  if (rest.substr(0, 3) == "\xEF\xBB\xBF") rest.remove_prefix(3);  // UTF-8 BOM
  size_t before = out.size();
  for (int line_no = 1; !rest.empty(); ++line_no) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    std::vector<std::string_view> f = split_fields(line);
    for (size_t i = 0; i < f.size(); ++i)
      if (f[i].front() == '#') {
        f.resize(i);
        break;
      }
    if (f.empty()) continue;
    std::string origin = path + " line " + std::to_string(line_no);
    if (f.size() > 3) throw Error(origin + ": too many fields (a line is `KEY [SCOPES] [NAME]`)");
    PendingKey k{std::string(f[0]), "", origin, false};
    if (f.size() >= 2) parse_scopes(f[1], origin, k.admin);
    if (f.size() == 3) {
      if (!valid_name(f[2]))
        throw Error(origin + ": bad key name '" + std::string(f[2]) + "' (1-64 of A-Z a-z 0-9 . _ - @)");
      k.name = std::string(f[2]);
    }
    out.push_back(std::move(k));
  }
  if (out.size() == before) throw Error("--api-key-file: " + path + " holds no key");
}

// Identifies the public key in a PEM file; returns the PEM block libjwt will be given.
std::string load_public_key(const std::string& path, int& alg_out, std::vector<std::string>& warnings) {
  std::string text;
  try {
    text = read_text_input(path, 1 << 20, "a PEM public key is a few kilobytes");
  } catch (const Error& e) {
    throw Error(std::string("--jwt-public-key-file: ") + e.what());
  }
  const std::string where = "--jwt-public-key-file " + path;
  const std::string begin = "-----BEGIN PUBLIC KEY-----", end = "-----END PUBLIC KEY-----";
  size_t b = text.find(begin);
  if (b == std::string::npos) {
    if (text.find("PRIVATE KEY-----") != std::string::npos)
      throw Error(where + ": holds a private key; give the public key (openssl pkey -in KEY -pubout)");
    if (text.find("-----BEGIN RSA PUBLIC KEY-----") != std::string::npos)
      throw Error(where + ": PKCS#1 RSA key; convert it (openssl rsa -RSAPublicKey_in -in KEY -pubout)");
    if (text.find("-----BEGIN CERTIFICATE-----") != std::string::npos)
      throw Error(where + ": holds a certificate; extract its key (openssl x509 -in CERT -pubkey -noout)");
    throw Error(where + ": no '" + begin + "' PEM block");
  }
  size_t e = text.find(end, b);
  if (e == std::string::npos) throw Error(where + ": PEM block without '" + end + "'");
  std::string b64;
  for (size_t i = b + begin.size(); i < e; ++i)
    if (!is_space(text[i])) b64.push_back(text[i]);
  std::string der;
  if (!b64_decode(b64, false, der)) throw Error(where + ": bad base64 in the PEM block");

  auto bad = [&](const char* why) { return Error(where + ": invalid public key (" + std::string(why) + ")"); };
  std::string_view in = der, spki, alg, bits, oid;
  uint8_t tag = 0;
  if (!der_read(in, tag, spki) || tag != 0x30 || !in.empty()) throw bad("not a DER SEQUENCE");
  if (!der_read(spki, tag, alg) || tag != 0x30) throw bad("no AlgorithmIdentifier");
  if (!der_read(spki, tag, bits) || tag != 0x03 || bits.size() < 2 || bits[0] != 0 || !spki.empty())
    throw bad("no key BIT STRING");
  bits.remove_prefix(1);
  if (!der_read(alg, tag, oid) || tag != 0x06) throw bad("no algorithm OID");
  if (oid == kOidRsa) {
    std::string_view seq, n;
    if (!der_read(bits, tag, seq) || tag != 0x30 || !der_read(seq, tag, n) || tag != 0x02 || n.empty())
      throw bad("bad RSA key");
    while (!n.empty() && n.front() == 0) n.remove_prefix(1);
    size_t nbits = n.size() * 8;
    if (!n.empty())
      for (uint8_t top = uint8_t(n.front()); !(top & 0x80); top = uint8_t(top << 1)) --nbits;
    if (nbits < 2048)
      warnings.push_back(where + ": RSA key of " + std::to_string(nbits) + " bits (2048 or more is recommended)");
    alg_out = 1;
  } else if (oid == kOidEc) {
    std::string_view curve;
    if (!der_read(alg, tag, curve) || tag != 0x06) throw bad("EC key without a named curve");
    size_t coord = 0;
    if (curve == kOidP256) {
      coord = 32, alg_out = 2;
    } else if (curve == kOidP384) {
      coord = 48, alg_out = 3;
    } else if (curve == kOidP521) {
      coord = 66, alg_out = 4;
    } else {
      throw Error(where + ": unsupported EC curve (P-256, P-384 or P-521)");
    }
    uint8_t form = uint8_t(bits[0]);
    bool ok = (form == 4 && bits.size() == 1 + 2 * coord) || ((form == 2 || form == 3) && bits.size() == 1 + coord);
    if (!ok) throw bad("bad EC point");
  } else if (oid == kOidEd25519) {
    throw Error(where + ": Ed25519 keys are not supported (use an RSA or EC P-256 key)");
  } else {
    throw Error(where + ": unsupported key type (use an RSA or EC P-256 key)");
  }
  return text.substr(b, e + end.size() - b) + "\n";
}

}  // namespace

Authenticator::Authenticator(const AuthConfig& cfg) {
  std::vector<PendingKey> pending;
  add_flag_keys(cfg.api_keys, "--api-key", false, pending);
  add_flag_keys(cfg.admin_api_keys, "--admin-api-key", true, pending);
  if (!cfg.api_key_file.empty()) add_file_keys(cfg.api_key_file, pending, warnings_);

  std::set<std::string> names;
  for (size_t i = 0; i < pending.size(); ++i) {
    PendingKey& p = pending[i];
    if (p.key.empty()) throw Error(p.origin + ": empty API key");
    if (has_space_or_control(p.key)) throw Error(p.origin + ": API key contains whitespace or control characters");
    std::string name = p.name.empty() ? "key" + std::to_string(i + 1) : p.name;
    if (!names.insert(name).second) throw Error(p.origin + ": duplicate key name '" + name + "'");
    Key k;
    k.digest = detail::sha256(p.key);
    k.who.subject = "key:" + name;
    k.who.inference = true;
    k.who.admin = p.admin;
    for (const Key& other : keys_)
      if (other.digest == k.digest)
        throw Error(p.origin + ": duplicate API key (same as " + other.who.subject + ")");
    if (p.key.size() < 16)
      warnings_.push_back("API key " + k.who.subject + " (" + p.origin + ") is shorter than 16 characters");
    keys_.push_back(std::move(k));
    std::fill(p.key.begin(), p.key.end(), '\0');
  }

  if (!cfg.jwt_secret.empty() && !cfg.jwt_public_key_file.empty())
    throw Error("--jwt-secret and --jwt-public-key-file exclude each other (HS256 or RS256/ES256, not both)");
  if (!cfg.jwt_secret.empty()) {
    jwt_alg_ = JwtAlg::HS256;
    jwt_key_ = cfg.jwt_secret;
    if (jwt_key_.size() < 32) warnings_.push_back("JWT secret is shorter than 32 bytes (weak for HS256)");
  } else if (!cfg.jwt_public_key_file.empty()) {
    int a = 0;
    jwt_key_ = load_public_key(cfg.jwt_public_key_file, a, warnings_);
    jwt_alg_ = a == 1 ? JwtAlg::RS256 : a == 2 ? JwtAlg::ES256 : a == 3 ? JwtAlg::ES384 : JwtAlg::ES512;
  }
  if (jwt_alg_ == JwtAlg::None && (!cfg.jwt_issuer.empty() || !cfg.jwt_audience.empty()))
    throw Error("--jwt-issuer/--jwt-audience need --jwt-secret or --jwt-public-key-file");
  if (cfg.jwt_scope_claim.empty()) throw Error("the JWT scope claim name is empty");
  if (cfg.jwt_leeway_seconds < 0) throw Error("the JWT leeway must be >= 0 seconds");
  jwt_issuer_ = cfg.jwt_issuer;
  jwt_audience_ = cfg.jwt_audience;
  jwt_scope_claim_ = cfg.jwt_scope_claim;
  jwt_leeway_seconds_ = cfg.jwt_leeway_seconds;
}

bool Authenticator::enabled() const { return !keys_.empty() || jwt_alg_ != JwtAlg::None; }

const std::vector<std::string>& Authenticator::warnings() const { return warnings_; }

// ---------------------------------------------------------------------------------------------------------
// Authenticator: requests
// ---------------------------------------------------------------------------------------------------------

namespace {

using Result = Authenticator::Result;
using Status = Authenticator::Status;

Result invalid(std::string msg) {
  Result r;
  r.status = Status::Invalid;
  r.message = std::move(msg);
  return r;
}

const char* alg_name(int a) {
  switch (a) {
    case 1: return "HS256";
    case 2: return "RS256";
    case 3: return "ES256";
    case 4: return "ES384";
    case 5: return "ES512";
    default: return "none";
  }
}

struct JwtDeleter {
  void operator()(jwt_t* j) const { jwt_free(j); }
};

}  // namespace

Result Authenticator::check_key(std::string_view credential) const {
  const auto digest = detail::sha256(credential);
  // Every key is compared; the matching index (1-based, 0 = none) is selected without a branch.
  size_t match = 0;
  for (size_t i = 0; i < keys_.size(); ++i) {
    size_t eq = constant_time_equal(as_view(keys_[i].digest), as_view(digest));
    match |= (i + 1) * eq;
  }
  if (match == 0) return invalid(keys_.empty() ? "invalid bearer token" : "invalid API key");
  Result r;
  r.status = Status::Ok;
  r.who = keys_[match - 1].who;
  return r;
}

Result Authenticator::check_jwt(std::string_view token, std::chrono::system_clock::time_point now) const {
  if (token.size() > 16384) return invalid("invalid token: too long");
  const std::string expected = alg_name(int(jwt_alg_));
  size_t d1 = token.find('.'), d2 = token.find('.', d1 + 1);

  // 1. The header: the algorithm must be the configured one before any key is used.
  std::string header_text;
  if (!b64_decode(token.substr(0, d1), true, header_text)) return invalid("invalid token: malformed header");
  nlohmann::json header = nlohmann::json::parse(header_text, nullptr, false);
  if (header.is_discarded() || !header.is_object()) return invalid("invalid token: malformed header");
  auto alg_it = header.find("alg");
  if (alg_it == header.end() || !alg_it->is_string()) return invalid("invalid token: no 'alg' in the header");
  const std::string alg = alg_it->get<std::string>();
  if (alg != expected) return invalid("invalid token: algorithm '" + alg.substr(0, 16) + "' not accepted (expected " + expected + ")");
  if (header.contains("crit")) return invalid("invalid token: unsupported 'crit' header");

  // 2. HS256: check the MAC here in constant time (libjwt compares with strcmp).
  if (jwt_alg_ == JwtAlg::HS256) {
    auto mac = detail::hmac_sha256(jwt_key_, token.substr(0, d2));
    std::string want = b64url_encode(as_view(mac));
    if (!constant_time_equal(want, token.substr(d2 + 1))) return invalid("invalid token: bad signature");
  }

  // 3. libjwt verifies (again, for HS256) and parses.
  std::string tok(token);
  jwt_t* raw = nullptr;
  int rc = jwt_decode(&raw, tok.c_str(), reinterpret_cast<const unsigned char*>(jwt_key_.data()), int(jwt_key_.size()));
  std::unique_ptr<jwt_t, JwtDeleter> jwt(raw);
  if (rc != 0 || !jwt) return invalid("invalid token: bad signature or format");
  const char* got = jwt_alg_str(jwt_get_alg(jwt.get()));
  if (!got || expected != got) return invalid("invalid token: algorithm not accepted");

  char* grants_text = jwt_get_grants_json(jwt.get(), nullptr);
  if (!grants_text) return invalid("invalid token: no claims");
  nlohmann::json claims = nlohmann::json::parse(grants_text, nullptr, false);
  std::free(grants_text);
  if (claims.is_discarded() || !claims.is_object()) return invalid("invalid token: malformed claims");

  // 4. Claims.
  const double t = std::chrono::duration<double>(now.time_since_epoch()).count();
  const double leeway = jwt_leeway_seconds_;
  auto exp = claims.find("exp");
  if (exp == claims.end()) return invalid("invalid token: no 'exp' claim");
  if (!exp->is_number()) return invalid("invalid token: 'exp' is not a number");
  if (t >= exp->get<double>() + leeway) return invalid("invalid token: expired");
  auto nbf = claims.find("nbf");
  if (nbf != claims.end()) {
    if (!nbf->is_number()) return invalid("invalid token: 'nbf' is not a number");
    if (t + leeway < nbf->get<double>()) return invalid("invalid token: not valid yet ('nbf')");
  }
  if (!jwt_issuer_.empty()) {
    auto iss = claims.find("iss");
    if (iss == claims.end() || !iss->is_string() || iss->get<std::string>() != jwt_issuer_)
      return invalid("invalid token: wrong or missing issuer ('iss')");
  }
  if (!jwt_audience_.empty()) {
    auto aud = claims.find("aud");
    bool ok = false;
    if (aud != claims.end()) {
      if (aud->is_string()) {
        ok = aud->get<std::string>() == jwt_audience_;
      } else if (aud->is_array()) {
        for (const auto& a : *aud) ok = ok || (a.is_string() && a.get<std::string>() == jwt_audience_);
      }
    }
    if (!ok) return invalid("invalid token: wrong or missing audience ('aud')");
  }
  auto sub = claims.find("sub");
  if (sub == claims.end() || !sub->is_string() || sub->get<std::string>().empty())
    return invalid("invalid token: no 'sub' claim");
  const std::string subject = sub->get<std::string>();
  if (subject.size() > 256) return invalid("invalid token: 'sub' longer than 256 bytes");
  for (unsigned char c : subject)
    if (c < 0x20 || c == 0x7f) return invalid("invalid token: control character in 'sub'");

  Result r;
  r.status = Status::Ok;
  r.who.subject = "jwt:" + subject;
  auto scope = claims.find(jwt_scope_claim_);
  if (scope == claims.end()) {
    r.who.inference = true;
    return r;
  }
  auto take = [&](std::string_view word) {
    if (word == "inference") r.who.inference = true;
    if (word == "admin") r.who.admin = r.who.inference = true;
  };
  if (scope->is_string()) {
    for (std::string_view w : split_fields(scope->get_ref<const std::string&>())) take(w);
  } else if (scope->is_array()) {
    for (const auto& w : *scope) {
      if (!w.is_string()) return invalid("invalid token: '" + jwt_scope_claim_ + "' holds a non-string");
      take(w.get_ref<const std::string&>());
    }
  } else {
    return invalid("invalid token: '" + jwt_scope_claim_ + "' is neither a string nor an array");
  }
  return r;
}

Result Authenticator::authenticate(std::string_view authorization, std::string_view x_api_key,
                                   std::chrono::system_clock::time_point now) const {
  if (!enabled()) {
    Result r;
    r.status = Status::Ok;
    r.who = {"anonymous", true, true};
    return r;
  }
  // Which credential: a Bearer value, else x-api-key.
  std::string_view credential;
  bool have = false;
  std::string_view auth = trim(authorization);
  bool other_scheme = false;
  if (!auth.empty()) {
    size_t sp = 0;
    while (sp < auth.size() && !is_space(auth[sp])) ++sp;
    if (iequals(auth.substr(0, sp), "bearer")) {
      credential = trim(auth.substr(sp));
      if (credential.empty()) return invalid("empty bearer token");
      have = true;
    } else {
      other_scheme = true;
    }
  }
  if (!have) {
    std::string_view x = trim(x_api_key);
    if (!x.empty()) {
      credential = x;
      have = true;
    }
  }
  if (!have) {
    if (other_scheme) return invalid("unsupported Authorization scheme (use 'Authorization: Bearer <key>')");
    Result r;
    r.status = Status::Missing;
    r.message = "missing API key (send 'Authorization: Bearer <key>' or 'x-api-key: <key>')";
    return r;
  }

  if (jwt_alg_ != JwtAlg::None && looks_like_jwt(credential)) {
    Result r = check_jwt(credential, now);
    if (r.status == Status::Ok || keys_.empty()) return r;
    Result k = check_key(credential);  // an API key that happens to look like a JWT
    return k.status == Status::Ok ? k : r;
  }
  return check_key(credential);
}

}  // namespace lokal::server
