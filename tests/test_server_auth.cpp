// tests/test_server_auth.cpp - API keys, JWT bearer tokens and rate limits of `lokal serve`.
#include <gtest/gtest.h>
#include <jwt.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "server/auth.h"
#include "server/rate_limit.h"

using lokal::server::AuthConfig;
using lokal::server::Authenticator;
using lokal::server::constant_time_equal;
using lokal::server::RateLimiter;
using lokal::server::RateLimits;
using Status = Authenticator::Status;
namespace fs = std::filesystem;

namespace {

const std::string kKey1 = "sk-first-key-0123456789";
const std::string kKey2 = "sk-second-key-0123456789";
const std::string kAdminKey = "sk-admin-key-0123456789";
const std::string kSecret = "a-shared-secret-of-at-least-32-bytes!!";

std::string hex(const std::array<uint8_t, 32>& d) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (uint8_t b : d) {
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 15]);
  }
  return s;
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_file(const fs::path& p, const std::string& text, fs::perms perms = fs::perms::owner_read | fs::perms::owner_write) {
  std::ofstream(p, std::ios::binary) << text;
  fs::permissions(p, perms);
}

// A temp dir with RSA, EC and Ed25519 key pairs, made once for the suite with the openssl tool.
struct Keys {
  fs::path dir;
  std::string rsa_priv, rsa_pub, ec_priv, ec_pub;
  fs::path rsa_pub_file, ec_pub_file, rsa_priv_file, ed_pub_file;
  Keys() {
    char tmpl[] = "/tmp/lokal-auth-XXXXXX";
    dir = mkdtemp(tmpl);
    auto run = [&](const std::string& cmd) {
      std::string full = "cd '" + dir.string() + "' && " + cmd + " 2>/dev/null";
      if (std::system(full.c_str()) != 0) throw std::runtime_error("failed: " + cmd);
    };
    run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem");
    run("openssl pkey -in rsa.pem -pubout -out rsa_pub.pem");
    run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem");
    run("openssl pkey -in ec.pem -pubout -out ec_pub.pem");
    run("openssl genpkey -algorithm ED25519 -out ed.pem && openssl pkey -in ed.pem -pubout -out ed_pub.pem");
    rsa_priv_file = dir / "rsa.pem";
    rsa_pub_file = dir / "rsa_pub.pem";
    ec_pub_file = dir / "ec_pub.pem";
    ed_pub_file = dir / "ed_pub.pem";
    rsa_priv = read_all(rsa_priv_file);
    rsa_pub = read_all(rsa_pub_file);
    ec_priv = read_all(dir / "ec.pem");
    ec_pub = read_all(ec_pub_file);
  }
  ~Keys() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

Keys& keys() {
  static Keys k;
  return k;
}

const auto kNow = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
const long kNowS = 1'700'000'000;

std::string make_token(jwt_alg_t alg, const std::string& key, const nlohmann::json& claims) {
  jwt_t* j = nullptr;
  EXPECT_EQ(jwt_new(&j), 0);
  EXPECT_EQ(jwt_add_grants_json(j, claims.dump().c_str()), 0);
  EXPECT_EQ(jwt_set_alg(j, alg, key.empty() ? nullptr : reinterpret_cast<const unsigned char*>(key.data()), int(key.size())), 0);
  char* s = jwt_encode_str(j);
  std::string out = s ? s : "";
  free(s);
  jwt_free(j);
  return out;
}

nlohmann::json claims(const std::string& sub = "alice") {
  return {{"sub", sub}, {"exp", kNowS + 3600}, {"iat", kNowS}};
}

Authenticator::Result bearer(const Authenticator& a, const std::string& cred) {
  return a.authenticate("Bearer " + cred, "", kNow);
}

AuthConfig hs_config() {
  AuthConfig c;
  c.jwt_secret = kSecret;
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// primitives
// ---------------------------------------------------------------------------------------------------------

TEST(ServerAuth, ConstantTimeEqual) {
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_TRUE(constant_time_equal("secret-value", "secret-value"));
  EXPECT_FALSE(constant_time_equal("secret-value", "secret-valuf"));
  EXPECT_FALSE(constant_time_equal("secret-value", "Secret-value"));
  EXPECT_FALSE(constant_time_equal("secret", "secret-value"));  // prefix
  EXPECT_FALSE(constant_time_equal("secret-value", "secret"));
  EXPECT_FALSE(constant_time_equal("", "x"));
  EXPECT_FALSE(constant_time_equal("x", ""));
  EXPECT_FALSE(constant_time_equal("abab", "ab"));              // cyclic reading must not fake a match
  EXPECT_FALSE(constant_time_equal("ab", "abab"));
  EXPECT_TRUE(constant_time_equal(std::string("a\0b", 3), std::string("a\0b", 3)));
  EXPECT_FALSE(constant_time_equal(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(ServerAuth, Sha256AndHmacVectors) {
  using lokal::server::detail::hmac_sha256;
  using lokal::server::detail::sha256;
  EXPECT_EQ(hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex(sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hex(sha256(std::string(1000000, 'a'))), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // RFC 4231 cases 1, 2 and 6 (key longer than a block).
  EXPECT_EQ(hex(hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hex(hmac_sha256(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

// ---------------------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------------------

TEST(ServerAuth, DisabledIsAnonymous) {
  Authenticator a(AuthConfig{});
  EXPECT_FALSE(a.enabled());
  auto r = a.authenticate("", "", kNow);
  EXPECT_EQ(r.status, Status::Ok);
  EXPECT_EQ(r.who.subject, "anonymous");
  EXPECT_TRUE(r.who.inference);
  EXPECT_TRUE(r.who.admin);
}

TEST(ServerAuth, ApiKeyHeaders) {
  AuthConfig c;
  c.api_keys = {kKey1};
  Authenticator a(c);
  EXPECT_TRUE(a.enabled());
  EXPECT_TRUE(a.warnings().empty());

  auto ok = bearer(a, kKey1);
  EXPECT_EQ(ok.status, Status::Ok);
  EXPECT_EQ(ok.who.subject, "key:key1");
  EXPECT_TRUE(ok.who.inference);
  EXPECT_FALSE(ok.who.admin);

  auto wrong = bearer(a, "sk-wrong-key-987654321");
  EXPECT_EQ(wrong.status, Status::Invalid);
  EXPECT_FALSE(wrong.message.empty());
  EXPECT_EQ(wrong.message.find("sk-wrong"), std::string::npos);  // never echoed
  EXPECT_EQ(bearer(a, kKey1 + "x").status, Status::Invalid);
  EXPECT_EQ(bearer(a, kKey1.substr(0, kKey1.size() - 1)).status, Status::Invalid);

  auto missing = a.authenticate("", "", kNow);
  EXPECT_EQ(missing.status, Status::Missing);
  EXPECT_FALSE(missing.message.empty());

  EXPECT_EQ(a.authenticate("", kKey1, kNow).status, Status::Ok);                 // x-api-key
  EXPECT_EQ(a.authenticate("", "nope-nope-nope", kNow).status, Status::Invalid);
  EXPECT_EQ(a.authenticate("bearer " + kKey1, "", kNow).status, Status::Ok);     // scheme case-insensitive
  EXPECT_EQ(a.authenticate("BEARER   " + kKey1 + " ", "", kNow).status, Status::Ok);
  EXPECT_EQ(a.authenticate("Bearer", "", kNow).status, Status::Invalid);         // empty token
  EXPECT_EQ(a.authenticate("Bearer ", "", kNow).status, Status::Invalid);
  EXPECT_EQ(a.authenticate("Basic dXNlcjpwYXNz", "", kNow).status, Status::Invalid);
  EXPECT_EQ(a.authenticate(kKey1, "", kNow).status, Status::Invalid);             // no scheme
  EXPECT_EQ(a.authenticate("Basic dXNlcjpwYXNz", kKey1, kNow).status, Status::Ok);  // proxy header + x-api-key
  // A bearer credential wins over x-api-key.
  EXPECT_EQ(a.authenticate("Bearer wrong-wrong-wrong", kKey1, kNow).status, Status::Invalid);
}

TEST(ServerAuth, CommaSeparatedAndAdminKeys) {
  AuthConfig c;
  c.api_keys = {kKey1 + ", " + kKey2, "sk-third-key-0123456789"};
  c.admin_api_keys = {kAdminKey};
  Authenticator a(c);
  auto r1 = bearer(a, kKey1), r2 = bearer(a, kKey2), r3 = bearer(a, "sk-third-key-0123456789"), r4 = bearer(a, kAdminKey);
  ASSERT_EQ(r1.status, Status::Ok);
  ASSERT_EQ(r2.status, Status::Ok);
  ASSERT_EQ(r3.status, Status::Ok);
  ASSERT_EQ(r4.status, Status::Ok);
  EXPECT_EQ(r1.who.subject, "key:key1");
  EXPECT_EQ(r2.who.subject, "key:key2");
  EXPECT_EQ(r3.who.subject, "key:key3");
  EXPECT_EQ(r4.who.subject, "key:key4");
  EXPECT_FALSE(r2.who.admin);
  EXPECT_TRUE(r4.who.admin);
  EXPECT_TRUE(r4.who.inference);  // admin implies inference
  EXPECT_EQ(bearer(a, kKey1 + ", " + kKey2).status, Status::Invalid);

  AuthConfig bad;
  bad.api_keys = {kKey1 + ",," + kKey2};
  EXPECT_THROW(Authenticator{bad}, lokal::Error);
  bad.api_keys = {kKey1 + ","};
  EXPECT_THROW(Authenticator{bad}, lokal::Error);
  bad.api_keys = {""};
  EXPECT_THROW(Authenticator{bad}, lokal::Error);
  bad.api_keys = {"has space inside-0123456789"};
  EXPECT_THROW(Authenticator{bad}, lokal::Error);
  bad.api_keys = {kKey1};
  bad.admin_api_keys = {kKey1};  // duplicate across flags
  try {
    Authenticator x(bad);
    FAIL() << "duplicate accepted";
  } catch (const lokal::Error& e) {
    EXPECT_NE(std::string(e.what()).find("duplicate"), std::string::npos);
    EXPECT_EQ(std::string(e.what()).find(kKey1), std::string::npos);  // the key is not in the message
  }
}

TEST(ServerAuth, ShortKeyWarns) {
  AuthConfig c;
  c.api_keys = {"short1"};
  Authenticator a(c);
  ASSERT_EQ(a.warnings().size(), 1u);
  EXPECT_EQ(a.warnings()[0].find("short1"), std::string::npos);
  EXPECT_EQ(bearer(a, "short1").status, Status::Ok);
}

TEST(ServerAuth, KeyFile) {
  fs::path f = keys().dir / "keys.txt";
  write_file(f,
             "\xEF\xBB\xBF# lokal keys\n"
             "\n"
             "sk-file-plain-0123456789\n"
             "   sk-file-admin-0123456789   admin   ops-team   # the on-call\r\n"
             "sk-file-both-0123456789\tinference,admin\n"
             "sk-file-inf-0123456789 inference app.frontend\n"
             "  # indented comment\n");
  AuthConfig c;
  c.api_keys = {kKey1};
  c.api_key_file = f.string();
  Authenticator a(c);
  EXPECT_TRUE(a.warnings().empty()) << a.warnings()[0];
  auto plain = bearer(a, "sk-file-plain-0123456789");
  ASSERT_EQ(plain.status, Status::Ok);
  EXPECT_EQ(plain.who.subject, "key:key2");  // numbered by position among all keys
  EXPECT_TRUE(plain.who.inference);
  EXPECT_FALSE(plain.who.admin);
  auto adm = bearer(a, "sk-file-admin-0123456789");
  ASSERT_EQ(adm.status, Status::Ok);
  EXPECT_EQ(adm.who.subject, "key:ops-team");
  EXPECT_TRUE(adm.who.admin);
  EXPECT_TRUE(adm.who.inference);
  auto both = bearer(a, "sk-file-both-0123456789");
  ASSERT_EQ(both.status, Status::Ok);
  EXPECT_EQ(both.who.subject, "key:key4");
  EXPECT_TRUE(both.who.admin);
  auto inf = bearer(a, "sk-file-inf-0123456789");
  ASSERT_EQ(inf.status, Status::Ok);
  EXPECT_EQ(inf.who.subject, "key:app.frontend");
  EXPECT_FALSE(inf.who.admin);
  EXPECT_EQ(bearer(a, "#").status, Status::Invalid);
  EXPECT_EQ(bearer(a, "admin").status, Status::Invalid);

  // Group/world-readable: a warning, not an error.
  write_file(f, "sk-file-plain-0123456789\n", fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                                  fs::perms::others_read);
  AuthConfig c2;
  c2.api_key_file = f.string();
  Authenticator a2(c2);
  ASSERT_EQ(a2.warnings().size(), 1u);
  EXPECT_NE(a2.warnings()[0].find("chmod"), std::string::npos);

  auto expect_error = [&](const std::string& text, const std::string& needle) {
    write_file(f, text);
    AuthConfig cc;
    cc.api_keys = {kKey1};
    cc.api_key_file = f.string();
    try {
      Authenticator x(cc);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const lokal::Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_EQ(msg.find("sk-"), std::string::npos) << msg;  // no key in messages
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  expect_error("sk-file-plain-0123456789 root\n", "bad scope 'root'");
  expect_error("sk-file-plain-0123456789 inference,\n", "bad scope");
  expect_error("sk-file-plain-0123456789 inference name extra\n", "too many fields");
  expect_error("sk-file-plain-0123456789\nsk-file-plain-0123456789 admin\n", "line 2: duplicate API key");
  expect_error(kKey1 + "\n", "duplicate API key (same as key:key1)");
  expect_error("sk-file-a-0123456789 admin x\nsk-file-b-0123456789 admin x\n", "duplicate key name 'x'");
  expect_error("sk-file-a-0123456789 admin bad/name\n", "bad key name");
  expect_error("# nothing\n\n", "holds no key");
  AuthConfig missing;
  missing.api_key_file = (keys().dir / "no-such-file").string();
  EXPECT_THROW(Authenticator{missing}, lokal::Error);
}

// ---------------------------------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------------------------------

TEST(ServerAuthJwt, Hs256ValidAndTimes) {
  Authenticator a(hs_config());
  EXPECT_TRUE(a.enabled());
  EXPECT_TRUE(a.warnings().empty());
  auto r = bearer(a, make_token(JWT_ALG_HS256, kSecret, claims()));
  ASSERT_EQ(r.status, Status::Ok) << r.message;
  EXPECT_EQ(r.who.subject, "jwt:alice");
  EXPECT_TRUE(r.who.inference);  // no scope claim: inference only
  EXPECT_FALSE(r.who.admin);

  auto with = [&](const char* claim, long value) {
    auto c = claims();
    c[claim] = value;
    return bearer(a, make_token(JWT_ALG_HS256, kSecret, c));
  };
  EXPECT_EQ(with("exp", kNowS - 100).status, Status::Invalid);  // expired
  EXPECT_NE(with("exp", kNowS - 100).message.find("expired"), std::string::npos);
  EXPECT_EQ(with("exp", kNowS - 10).status, Status::Ok);        // within the 30 s leeway
  EXPECT_EQ(with("exp", kNowS - 30).status, Status::Invalid);   // leeway boundary
  EXPECT_EQ(with("nbf", kNowS + 100).status, Status::Invalid);  // not valid yet
  EXPECT_EQ(with("nbf", kNowS + 10).status, Status::Ok);
  EXPECT_EQ(with("nbf", kNowS - 10).status, Status::Ok);

  auto no_exp = claims();
  no_exp.erase("exp");
  auto r2 = bearer(a, make_token(JWT_ALG_HS256, kSecret, no_exp));
  EXPECT_EQ(r2.status, Status::Invalid);
  EXPECT_NE(r2.message.find("exp"), std::string::npos);
  auto no_sub = claims();
  no_sub.erase("sub");
  auto r3 = bearer(a, make_token(JWT_ALG_HS256, kSecret, no_sub));
  EXPECT_EQ(r3.status, Status::Invalid);
  EXPECT_NE(r3.message.find("sub"), std::string::npos);
  auto empty_sub = claims("");
  EXPECT_EQ(bearer(a, make_token(JWT_ALG_HS256, kSecret, empty_sub)).status, Status::Invalid);
  auto str_exp = claims();
  str_exp["exp"] = "tomorrow";
  EXPECT_EQ(bearer(a, make_token(JWT_ALG_HS256, kSecret, str_exp)).status, Status::Invalid);

  // x-api-key carries a JWT too.
  EXPECT_EQ(a.authenticate("", make_token(JWT_ALG_HS256, kSecret, claims()), kNow).status, Status::Ok);
}

TEST(ServerAuthJwt, Hs256BadSignatures) {
  Authenticator a(hs_config());
  const std::string good = make_token(JWT_ALG_HS256, kSecret, claims());
  EXPECT_EQ(bearer(a, make_token(JWT_ALG_HS256, kSecret + "x", claims())).status, Status::Invalid);  // other secret

  // Payload swapped for one naming another subject, signature kept.
  const std::string other = make_token(JWT_ALG_HS256, kSecret, claims("mallory"));
  size_t g1 = good.find('.'), g2 = good.find('.', g1 + 1);
  size_t o1 = other.find('.'), o2 = other.find('.', o1 + 1);
  std::string forged = good.substr(0, g1 + 1) + other.substr(o1 + 1, o2 - o1 - 1) + good.substr(g2);
  auto r = bearer(a, forged);
  EXPECT_EQ(r.status, Status::Invalid);
  EXPECT_NE(r.message.find("signature"), std::string::npos);

  std::string flipped = good;
  char& c = flipped[g2 + 5];
  c = c == 'A' ? 'B' : 'A';
  EXPECT_EQ(bearer(a, flipped).status, Status::Invalid);
  EXPECT_EQ(bearer(a, good.substr(0, g2 + 1)).status, Status::Invalid);  // signature stripped

  // alg none: refused, even though libjwt would parse it.
  const std::string none = make_token(JWT_ALG_NONE, "", claims());
  ASSERT_EQ(none.back(), '.');
  auto rn = bearer(a, none);
  EXPECT_EQ(rn.status, Status::Invalid);
  EXPECT_NE(rn.message.find("'none' not accepted"), std::string::npos) << rn.message;

  // Garbage that looks like a JWT.
  EXPECT_EQ(bearer(a, "aaaa.bbbb.cccc").status, Status::Invalid);
  EXPECT_EQ(bearer(a, "not-a-jwt").status, Status::Invalid);
}

TEST(ServerAuthJwt, IssuerAudience) {
  AuthConfig c = hs_config();
  c.jwt_issuer = "https://login.example";
  c.jwt_audience = "lokal";
  Authenticator a(c);
  auto tok = [&](nlohmann::json extra) {
    auto cl = claims();
    cl.update(extra);
    return bearer(a, make_token(JWT_ALG_HS256, kSecret, cl));
  };
  EXPECT_EQ(tok({{"iss", "https://login.example"}, {"aud", "lokal"}}).status, Status::Ok);
  EXPECT_EQ(tok({{"iss", "https://login.example"}, {"aud", {"other", "lokal"}}}).status, Status::Ok);
  EXPECT_EQ(tok({{"iss", "https://evil.example"}, {"aud", "lokal"}}).status, Status::Invalid);
  EXPECT_EQ(tok({{"aud", "lokal"}}).status, Status::Invalid);  // iss missing
  EXPECT_EQ(tok({{"iss", "https://login.example"}, {"aud", "other"}}).status, Status::Invalid);
  EXPECT_EQ(tok({{"iss", "https://login.example"}, {"aud", {"other", "x"}}}).status, Status::Invalid);
  EXPECT_EQ(tok({{"iss", "https://login.example"}}).status, Status::Invalid);  // aud missing
  auto wrong = tok({{"iss", "https://login.example"}, {"aud", "other"}});
  EXPECT_NE(wrong.message.find("aud"), std::string::npos);

  AuthConfig no_key;
  no_key.jwt_issuer = "x";
  EXPECT_THROW(Authenticator{no_key}, lokal::Error);
}

TEST(ServerAuthJwt, Scopes) {
  AuthConfig c = hs_config();
  Authenticator a(c);
  auto with_scope = [&](const Authenticator& au, const char* claim, nlohmann::json v) {
    auto cl = claims();
    cl[claim] = v;
    return bearer(au, make_token(JWT_ALG_HS256, kSecret, cl));
  };
  auto s1 = with_scope(a, "scope", "openid inference admin");
  ASSERT_EQ(s1.status, Status::Ok);
  EXPECT_TRUE(s1.who.inference && s1.who.admin);
  auto s2 = with_scope(a, "scope", nlohmann::json::array({"admin"}));
  ASSERT_EQ(s2.status, Status::Ok);
  EXPECT_TRUE(s2.who.inference && s2.who.admin);  // admin implies inference
  auto s3 = with_scope(a, "scope", "inference");
  ASSERT_EQ(s3.status, Status::Ok);
  EXPECT_TRUE(s3.who.inference);
  EXPECT_FALSE(s3.who.admin);
  auto s4 = with_scope(a, "scope", "openid profile");  // authenticated, no permission
  ASSERT_EQ(s4.status, Status::Ok);
  EXPECT_FALSE(s4.who.inference);
  EXPECT_FALSE(s4.who.admin);
  EXPECT_EQ(with_scope(a, "scope", 7).status, Status::Invalid);
  EXPECT_EQ(with_scope(a, "scope", nlohmann::json::array({"admin", 1})).status, Status::Invalid);

  c.jwt_scope_claim = "roles";
  Authenticator b(c);
  auto r = with_scope(b, "roles", nlohmann::json::array({"admin"}));
  EXPECT_TRUE(r.who.admin);
  auto ignored = with_scope(b, "scope", "admin");  // not the configured claim: inference only
  EXPECT_TRUE(ignored.who.inference);
  EXPECT_FALSE(ignored.who.admin);
}

TEST(ServerAuthJwt, Rs256AndEs256) {
  AuthConfig rc;
  rc.jwt_public_key_file = keys().rsa_pub_file.string();
  Authenticator rsa(rc);
  EXPECT_TRUE(rsa.warnings().empty());
  auto ok = bearer(rsa, make_token(JWT_ALG_RS256, keys().rsa_priv, claims("bob")));
  ASSERT_EQ(ok.status, Status::Ok) << ok.message;
  EXPECT_EQ(ok.who.subject, "jwt:bob");

  AuthConfig ec;
  ec.jwt_public_key_file = keys().ec_pub_file.string();
  Authenticator ecdsa(ec);
  auto ok2 = bearer(ecdsa, make_token(JWT_ALG_ES256, keys().ec_priv, claims("carol")));
  ASSERT_EQ(ok2.status, Status::Ok) << ok2.message;
  EXPECT_EQ(ok2.who.subject, "jwt:carol");

  // Cross-algorithm and cross-key tokens.
  EXPECT_EQ(bearer(rsa, make_token(JWT_ALG_ES256, keys().ec_priv, claims())).status, Status::Invalid);
  EXPECT_EQ(bearer(ecdsa, make_token(JWT_ALG_RS256, keys().rsa_priv, claims())).status, Status::Invalid);
  EXPECT_EQ(bearer(rsa, make_token(JWT_ALG_RS512, keys().rsa_priv, claims())).status, Status::Invalid);
  EXPECT_EQ(bearer(rsa, make_token(JWT_ALG_HS256, kSecret, claims())).status, Status::Invalid);
  Authenticator hs(hs_config());
  EXPECT_EQ(bearer(hs, make_token(JWT_ALG_RS256, keys().rsa_priv, claims())).status, Status::Invalid);

  // Expiry applies to RS256 as well.
  auto old = claims();
  old["exp"] = kNowS - 1000;
  EXPECT_EQ(bearer(rsa, make_token(JWT_ALG_RS256, keys().rsa_priv, old)).status, Status::Invalid);
}

TEST(ServerAuthJwt, AlgorithmConfusionRejected) {
  // The attacker knows the public key and signs an HS256 token with its PEM bytes as the HMAC secret.
  for (const std::string* pub : {&keys().rsa_pub, &keys().ec_pub}) {
    const std::string forged = make_token(JWT_ALG_HS256, *pub, claims("mallory"));
    // libjwt 1.10 alone would accept it when handed the PEM as "key":
    jwt_t* j = nullptr;
    EXPECT_EQ(jwt_decode(&j, forged.c_str(), reinterpret_cast<const unsigned char*>(pub->data()), int(pub->size())), 0);
    jwt_free(j);

    AuthConfig c;
    c.jwt_public_key_file = (pub == &keys().rsa_pub ? keys().rsa_pub_file : keys().ec_pub_file).string();
    Authenticator a(c);
    auto r = bearer(a, forged);
    EXPECT_EQ(r.status, Status::Invalid);
    EXPECT_NE(r.message.find("HS256"), std::string::npos) << r.message;
    EXPECT_EQ(bearer(a, make_token(JWT_ALG_NONE, "", claims())).status, Status::Invalid);
  }
}

TEST(ServerAuthJwt, ConfigErrors) {
  AuthConfig both = hs_config();
  both.jwt_public_key_file = keys().rsa_pub_file.string();
  EXPECT_THROW(Authenticator{both}, lokal::Error);

  auto expect_error = [](const fs::path& p, const std::string& needle) {
    AuthConfig c;
    c.jwt_public_key_file = p.string();
    try {
      Authenticator a(c);
      ADD_FAILURE() << "accepted " << p;
    } catch (const lokal::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(keys().rsa_priv_file, "private key");
  expect_error(keys().ed_pub_file, "Ed25519");
  expect_error(keys().dir / "missing.pem", "no such file");
  fs::path junk = keys().dir / "junk.pem";
  write_file(junk, "-----BEGIN PUBLIC KEY-----\nAAAA$$$$\n-----END PUBLIC KEY-----\n");
  expect_error(junk, "base64");
  write_file(junk, "-----BEGIN PUBLIC KEY-----\nMAMCAQE=\n-----END PUBLIC KEY-----\n");
  expect_error(junk, "invalid public key");
  write_file(junk, "hello\n");
  expect_error(junk, "no '-----BEGIN PUBLIC KEY-----'");

  AuthConfig weak;
  weak.jwt_secret = "short";
  EXPECT_EQ(Authenticator(weak).warnings().size(), 1u);
  AuthConfig neg = hs_config();
  neg.jwt_leeway_seconds = -1;
  EXPECT_THROW(Authenticator{neg}, lokal::Error);
}

TEST(ServerAuthJwt, KeysAndJwtTogether) {
  AuthConfig c = hs_config();
  const std::string dotted = "sk.abcdefgh.ijklmnop";  // an API key that looks like a JWT
  c.api_keys = {kKey1, dotted};
  Authenticator a(c);
  EXPECT_EQ(bearer(a, kKey1).who.subject, "key:key1");
  EXPECT_EQ(bearer(a, dotted).who.subject, "key:key2");
  EXPECT_EQ(bearer(a, make_token(JWT_ALG_HS256, kSecret, claims())).who.subject, "jwt:alice");
  EXPECT_EQ(bearer(a, "sk.zzzzzzzz.zzzzzzzz").status, Status::Invalid);

  // With API keys only, a JWT is just a wrong key.
  AuthConfig k;
  k.api_keys = {kKey1};
  Authenticator only_keys(k);
  EXPECT_EQ(bearer(only_keys, make_token(JWT_ALG_HS256, kSecret, claims())).status, Status::Invalid);
}

TEST(ServerAuthJwt, ConcurrentCalls) {
  AuthConfig c;
  c.jwt_public_key_file = keys().ec_pub_file.string();
  c.api_keys = {kKey1};
  Authenticator a(c);
  const std::string tok = make_token(JWT_ALG_ES256, keys().ec_priv, claims());
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        bool want_ok = (i + t) % 3 != 0;
        auto r = (i % 2) ? bearer(a, want_ok ? tok : tok + "x") : bearer(a, want_ok ? kKey1 : kKey2);
        if ((r.status == Status::Ok) != want_ok) ++bad;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---------------------------------------------------------------------------------------------------------
// rate limits
// ---------------------------------------------------------------------------------------------------------

namespace {
const auto kT0 = std::chrono::steady_clock::time_point(std::chrono::seconds(10'000)) + std::chrono::milliseconds(500);
std::chrono::steady_clock::time_point at(double s) {
  return kT0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}
}  // namespace

TEST(ServerRateLimit, RequestsPerMinute) {
  RateLimiter rl({3, 0});
  EXPECT_EQ(rl.admit("a", at(0)), 0);
  EXPECT_EQ(rl.admit("a", at(0.1)), 0);
  EXPECT_EQ(rl.admit("a", at(0.2)), 0);
  int64_t w = rl.admit("a", at(0.3));
  EXPECT_GE(w, 60);  // all three are in the current second: they age out after 60.x s
  EXPECT_LE(w, 61);
  EXPECT_EQ(rl.admit("a", at(59.9)), 1);  // refused requests do not count
  EXPECT_EQ(rl.admit("a", at(60.0)), 1);
  EXPECT_EQ(rl.admit("a", at(61.0)), 0);  // window passed
  EXPECT_EQ(rl.admit("b", at(0.4)), 0);   // subjects are independent
  EXPECT_EQ(rl.subjects(), 2u);
}

TEST(ServerRateLimit, SlidingWindowNeverMoreThanNIn60s) {
  RateLimiter rl({2, 0});
  EXPECT_EQ(rl.admit("a", at(0)), 0);
  EXPECT_EQ(rl.admit("a", at(30)), 0);
  EXPECT_EQ(rl.admit("a", at(45)), 16);  // the request of t=0 leaves the window at 61
  // kT0 is 0.5 s into a second: the request of t=0 leaves the window at t=60.5.
  EXPECT_EQ(rl.admit("a", at(60.4)), 1);
  EXPECT_EQ(rl.admit("a", at(60.5)), 0);
  EXPECT_EQ(rl.admit("a", at(62)), 29);  // now t=30 and t=60.5 are in the window: t=30 leaves at 90.5

  // Brute force: at a steady stream every 0.25 s, no 60-second interval ever holds more than N admits.
  RateLimiter r2({10, 0});
  std::vector<double> admitted;
  for (int i = 0; i < 2000; ++i) {
    double t = i * 0.25;
    if (r2.admit("s", at(t)) == 0) admitted.push_back(t);
  }
  ASSERT_GE(admitted.size(), 70u);  // ~10 per 61 s over 500 s
  for (size_t i = 10; i < admitted.size(); ++i) EXPECT_GE(admitted[i] - admitted[i - 10], 60.0) << i;
}

TEST(ServerRateLimit, RetryAfterIsHonest) {
  // Whatever wait admit() returns, waiting that long must succeed and waiting 1 s less must not.
  RateLimiter rl({5, 0});
  double t = 0;
  int checked = 0;
  for (int i = 0; i < 200 && checked < 20; ++i) {
    t += 7.3;
    int64_t w = rl.admit("x", at(t));
    if (w > 0) {
      ASSERT_GE(w, 1);
      if (w > 1) {
        EXPECT_GT(rl.admit("x", at(t + double(w) - 1.0)), 0);
      }
      EXPECT_EQ(rl.admit("x", at(t + double(w))), 0);
      t += double(w);
      ++checked;
    }
  }
  EXPECT_GE(checked, 10);
}

TEST(ServerRateLimit, TokensPerMinute) {
  RateLimiter rl({0, 100});
  EXPECT_EQ(rl.admit("a", at(0)), 0);
  rl.add_tokens("a", 60, at(5));
  EXPECT_EQ(rl.admit("a", at(6)), 0);
  rl.add_tokens("a", 50, at(10));   // 110 >= 100
  EXPECT_EQ(rl.admit("a", at(20)), 46);  // the 60 of t=5 leave the window at 66
  EXPECT_EQ(rl.admit("b", at(20)), 0);   // independent
  EXPECT_EQ(rl.admit("a", at(66)), 0);
  rl.add_tokens("a", 1000, at(67));
  EXPECT_EQ(rl.admit("a", at(67.2)), 61);  // same second as the charge
  EXPECT_EQ(rl.admit("a", at(67.5)), 60);  // the next second
  rl.add_tokens("a", 0, at(68));
  rl.add_tokens("a", -5, at(68));

  // Both limits: the longer wait wins.
  RateLimiter both({1, 10});
  EXPECT_EQ(both.admit("a", at(0)), 0);
  both.add_tokens("a", 10, at(30));
  EXPECT_EQ(both.admit("a", at(40)), 51);  // tokens of t=30 leave at 91; the request of t=0 at 61
}

TEST(ServerRateLimit, EvictionAndIdle) {
  RateLimiter rl({1, 0}, 3);
  for (int i = 0; i < 10; ++i) {
    std::string name = std::to_string(i);
    name.insert(name.begin(), 's');
    EXPECT_EQ(rl.admit(name, at(0)), 0);
  }
  EXPECT_EQ(rl.subjects(), 3u);  // memory bounded
  EXPECT_GT(rl.admit("s9", at(1)), 0);  // recent ones are remembered
  EXPECT_EQ(rl.admit("s0", at(1)), 0);  // the oldest was evicted and forgotten
  EXPECT_EQ(rl.subjects(), 3u);

  RateLimiter idle({1, 0});
  EXPECT_EQ(idle.admit("a", at(0)), 0);
  EXPECT_EQ(idle.admit("b", at(30)), 0);
  EXPECT_EQ(idle.subjects(), 2u);
  EXPECT_EQ(idle.admit("c", at(62)), 0);  // "a" idle for 61 s: dropped
  EXPECT_EQ(idle.subjects(), 2u);
  EXPECT_EQ(idle.admit("d", at(200)), 0);
  EXPECT_EQ(idle.subjects(), 1u);
}

TEST(ServerRateLimit, OffAndErrors) {
  RateLimiter off({0, 0});
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(off.admit("a", at(0)), 0);
  off.add_tokens("a", 1'000'000, at(0));
  EXPECT_EQ(off.admit("a", at(0)), 0);
  EXPECT_EQ(off.subjects(), 0u);
  EXPECT_THROW(RateLimiter({-1, 0}), lokal::Error);
  EXPECT_THROW(RateLimiter({0, -1}), lokal::Error);
  EXPECT_THROW(RateLimiter({1, 0}, 0), lokal::Error);
  // Token counters saturate instead of wrapping.
  RateLimiter big({0, 5});
  big.add_tokens("a", int64_t(1) << 40, at(0));
  big.add_tokens("a", int64_t(1) << 40, at(0));
  EXPECT_GT(big.admit("a", at(1)), 0);
}

TEST(ServerRateLimit, ConcurrentAdmits) {
  RateLimiter rl({500, 0});
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 300; ++i)
        if (rl.admit("shared", at(1)) == 0) ++admitted;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 500);
}
