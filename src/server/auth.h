// server/auth.h - who may call `lokal serve`: API keys (constant-time compare) and JWT bearer tokens (libjwt).
//
// Credentials arrive as `Authorization: Bearer <credential>` (scheme case-insensitive) or as
// `x-api-key: <credential>` (Anthropic-style clients). A bearer credential wins over x-api-key.
// A credential that looks like a JWT (three base64url parts joined by '.') is verified as a JWT when JWT
// is configured; if that fails and it happens to equal an API key, the API key is accepted.
//
// API keys are kept only as SHA-256 digests. A presented key is hashed once and compared with every
// configured digest (fixed 32 bytes, constant-time, no early exit, branch-free selection of the match), so
// the time depends neither on where strings differ nor on which key matched.
//
// JWTs: the algorithm is fixed by the configuration (HS256 for a shared secret; RS256 for an RSA public key;
// ES256/ES384/ES512 for a P-256/P-384/P-521 public key). The header's `alg` is checked before anything is
// verified, so `none` and HS256-signed-with-the-public-key tokens (algorithm confusion) are refused. HS256
// signatures are first checked here in constant time (libjwt 1.10 compares them with strcmp), then libjwt
// decodes and verifies again. Claims: `exp` required (leeway applies), `nbf` checked if present, `iss` and
// `aud` (string or array) when configured, `sub` required (non-empty, <= 256 bytes, no control characters),
// a `crit` header is refused. Scopes come from the configured claim (space-separated string or array of
// strings): "inference", "admin" (admin implies inference); other words are ignored. A token without the
// claim gets inference only; a token whose claim has neither word authenticates (Status::Ok) with no
// permission at all: the caller answers 403 for every endpoint.
// Limitation (libjwt 1.10): a JWT header `typ` other than "JWT" (e.g. "at+jwt") is refused.
//
// Thread safety: an Authenticator is immutable after construction; authenticate() may be called from any
// number of threads at once.
#pragma once
#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lokal::server {

// Who made a request.
struct Principal {
  std::string subject;     // "key:NAME" for API keys, "jwt:<sub>" for JWTs, "anonymous" when auth is off
  bool inference = false;  // may call inference endpoints (chat, completions, embeddings, tokenize, ...)
  bool admin = false;      // may call admin endpoints (reload, slot control)
};

struct AuthConfig {
  // --api-key KEY (repeatable; one value may hold several keys separated by commas, spaces around them are
  // trimmed): scope inference.
  std::vector<std::string> api_keys;
  // --admin-api-key KEY (same syntax): scopes inference + admin.
  std::vector<std::string> admin_api_keys;
  // --api-key-file FILE: one key per line, `KEY [SCOPES] [NAME]`, fields separated by spaces/tabs.
  // SCOPES = inference | admin | inference,admin (admin implies inference); a key alone = inference.
  // NAME: [A-Za-z0-9._@-]{1,64}, unique. Blank lines and lines starting with '#' are ignored, and so is
  // the rest of a line from a field that starts with '#'. A file readable or writable by group/others
  // gives a warning. A file with no key is an error.
  std::string api_key_file;
  // JWT bearer tokens (for setups behind an existing login). At most one of the two keys.
  std::string jwt_secret;           // HS256 shared secret, used byte for byte (see read_secret_file)
  std::string jwt_public_key_file;  // PEM "BEGIN PUBLIC KEY" (SubjectPublicKeyInfo): RSA -> RS256, EC -> ES256/384/512
  std::string jwt_issuer;           // required `iss` when non-empty (needs a JWT key)
  std::string jwt_audience;         // required in `aud` (string or array) when non-empty (needs a JWT key)
  std::string jwt_scope_claim = "scope";
  int jwt_leeway_seconds = 30;      // tolerance for exp/nbf, >= 0
};

class Authenticator {
 public:
  // Loads files and checks everything. Throws lokal::Error (one line, never containing a key) for: an
  // unreadable key file or PEM, an empty key, a key with whitespace or control characters, a duplicate key
  // (across all sources), a bad scope word or NAME, a key file without keys, an invalid or unsupported
  // PEM, both jwt_secret and jwt_public_key_file, jwt_issuer/jwt_audience without a JWT key, an empty
  // jwt_scope_claim, a negative leeway. Warnings (see warnings()): keys shorter than 16 characters, an
  // HS256 secret shorter than 32 bytes, an RSA key under 2048 bits, a group/world-accessible key file.
  explicit Authenticator(const AuthConfig& cfg);

  bool enabled() const;  // any API key or a JWT key configured
  const std::vector<std::string>& warnings() const;

  enum class Status { Ok, Missing, Invalid };
  struct Result {
    Status status = Status::Missing;
    Principal who;        // set when status == Ok
    std::string message;  // one line for the 401 body when not Ok; never echoes the credential
  };

  // `authorization`: the Authorization header value ("Bearer X"); `x_api_key`: the x-api-key header value.
  // Either may be empty. When !enabled(): Ok, subject "anonymous", inference and admin true.
  // Missing: no credential at all. Invalid: a credential was sent but not accepted (including an
  // Authorization header with another scheme than Bearer and no x-api-key).
  Result authenticate(std::string_view authorization, std::string_view x_api_key,
                      std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) const;

 private:
  struct Key {
    std::array<uint8_t, 32> digest;
    Principal who;
  };
  enum class JwtAlg { None, HS256, RS256, ES256, ES384, ES512 };

  Result check_key(std::string_view credential) const;
  Result check_jwt(std::string_view token, std::chrono::system_clock::time_point now) const;

  std::vector<Key> keys_;
  JwtAlg jwt_alg_ = JwtAlg::None;
  std::string jwt_key_;  // HS256 secret or the PEM block of the public key
  std::string jwt_issuer_, jwt_audience_, jwt_scope_claim_;
  int jwt_leeway_seconds_ = 30;
  std::vector<std::string> warnings_;
};

// True when a and b are equal. The running time depends only on b.size() (pass the untrusted value as b),
// never on the contents or on where they differ.
bool constant_time_equal(std::string_view a, std::string_view b);

// Reads a secret file (--jwt-secret-file): the whole content minus trailing CR/LF. Throws lokal::Error
// when unreadable or empty.
std::string read_secret_file(const std::string& path);

namespace detail {  // exposed for tests
std::array<uint8_t, 32> sha256(std::string_view data);
std::array<uint8_t, 32> hmac_sha256(std::string_view key, std::string_view data);
}  // namespace detail

}  // namespace lokal::server
