// JWS ES256 attestation tokens, base64url and the replay guard
// (taprotocol/jws.h). Each refusal test builds a token that differs
// from a valid one in exactly the property under test, signed correctly
// where that matters, and checks the error code and the check's message.
// Over 800 lines: one test per refusal rule of the token format, which is
// the point; they share the token builder at the top.
#include "taprotocol/jws.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/handles.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

using nlohmann::json;
using std::chrono::seconds;
using Clock = std::chrono::system_clock;

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
std::string B64(std::string_view s) { return Base64UrlEncode(Bytes(s)); }
std::string DecodeToString(std::string_view b64) {
  auto d = Base64UrlDecode(b64);
  EXPECT_TRUE(d.ok()) << b64;
  return d.ok() ? std::string(d->begin(), d->end()) : std::string();
}

// --- base64url
// ----------------------------------------------------------------

TEST(Base64UrlTest, Rfc4648VectorsWithoutPadding) {
  const std::pair<std::string, std::string> vectors[] = {
      {"", ""},
      {"f", "Zg"},
      {"fo", "Zm8"},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg"},
      {"fooba", "Zm9vYmE"},
      {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(B64(plain), encoded);
    EXPECT_EQ(DecodeToString(encoded), plain);
  }
  // The two characters that differ from base64: '-' (62) and '_' (63).
  const std::vector<uint8_t> url_chars = {0xfb, 0xff, 0xbf};
  EXPECT_EQ(Base64UrlEncode(url_chars), "-_-_");
}

TEST(Base64UrlTest, RoundTripAllLengths) {
  for (size_t n = 0; n < 70; ++n) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 151 + n);
    std::string e = Base64UrlEncode(v);
    EXPECT_EQ(e.find_first_of("=+/"), std::string::npos) << e;
    auto d = Base64UrlDecode(e);
    ASSERT_TRUE(d.ok()) << e;
    EXPECT_EQ(*d, v);
  }
}

TEST(Base64UrlTest, RejectsPaddingBadCharactersAndTruncation) {
  for (const char* bad : {"Zg==", "Zm8=", "Zm9v====", "=", "Zm9v+A", "Zm9v/A",
                          "Zm 9v", "Zm9v\n", "Zm.9", "Zm9\x80", "Zm9vY"}) {
    auto d = Base64UrlDecode(bad);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(Base64UrlDecode("Zg==").error().message.find("padding"),
            std::string::npos);
}

TEST(Base64UrlTest, RejectsNonCanonicalTrailingBits) {
  // "Zg" is 'f'; "Zh".."Zv" decode to 'f' too under a lenient decoder.
  EXPECT_TRUE(Base64UrlDecode("Zg").ok());
  EXPECT_TRUE(Base64UrlDecode("Zm8").ok());
  for (const char* bad : {"Zh", "Zv", "Zm9", "Zm-", "Zm9vYh"}) {
    auto d = Base64UrlDecode(bad);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_NE(d.error().message.find("trailing bits"), std::string::npos);
  }
}

// --- keys
// ---------------------------------------------------------------------

// RFC 7517 appendix A.1's EC key; RFC 7638 thumbprint of that JWK.
constexpr char kRfc7517Pem[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMKBCTNIcKUSDii11ySs3526iDZ8A\n"
    "iTo7Tu6KPAqv7D7gS2XpJFbZiItSs3m9+9Ue6GnvHw/GW2ZZaVtszggXIw==\n"
    "-----END PUBLIC KEY-----\n";
constexpr char kRfc7517Thumbprint[] =
    "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s";

// RFC 7515 appendix A.3: an ES256 JWS and its key (x, y as SPKI PEM).
constexpr char kRfc7515A3Pem[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV7\n"
    "6e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==\n"
    "-----END PUBLIC KEY-----\n";
constexpr char kRfc7515A3Token[] =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNv"
    "bS9pc19yb290Ijp0cnVlfQ."
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKT"
    "UJqPP3-Kg6NU1Q";

TEST(JwsKeyTest, ThumbprintMatchesRfc7638KnownAnswer) {
  auto key = EcVerifyKey::FromPublicPem(kRfc7517Pem);
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_EQ(key->Thumbprint(), kRfc7517Thumbprint);
}

TEST(JwsKeyTest, PemRoundTripsKeepTheKey) {
  auto key = EcSigningKey::Generate();
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_EQ(key->Thumbprint().size(), 43u);
  EXPECT_TRUE(Base64UrlDecode(key->Thumbprint()).ok());

  auto priv = key->ToPrivatePem();
  ASSERT_TRUE(priv.ok());
  EXPECT_EQ(std::string_view(priv->chars(), 27), "-----BEGIN PRIVATE KEY-----");
  auto again = EcSigningKey::FromPrivatePem(*priv);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->Thumbprint(), key->Thumbprint());

  auto pub = key->ToPublicPem();
  ASSERT_TRUE(pub.ok());
  EXPECT_NE(pub->find("BEGIN PUBLIC KEY"), std::string::npos);
  auto vk = EcVerifyKey::FromPublicPem(*pub);
  ASSERT_TRUE(vk.ok());
  EXPECT_EQ(vk->Thumbprint(), key->Thumbprint());

  // A token signed by the reloaded private key verifies with the key
  // loaded from the public PEM.
  json claims = {{"iss", "i"},  {"sub", "h"}, {"aud", "a"},     {"iat", 1000},
                 {"exp", 1100}, {"jti", "j"}, {"baseline", "b"}};
  auto token = SignToken(*again, claims);
  ASSERT_TRUE(token.ok());
  TokenPolicy policy{"i", "a"};
  EXPECT_TRUE(
      VerifyToken(*token, *vk, policy, Clock::time_point(seconds(1050))).ok());

  auto other = EcSigningKey::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->Thumbprint(), key->Thumbprint());
  EXPECT_FALSE(VerifyToken(*token, other->VerifyKey(), policy,
                           Clock::time_point(seconds(1050)))
                   .ok());
}

TEST(JwsKeyTest, VerifyKeyHoldsNoPrivateScalar) {
  auto key = EcSigningKey::Generate();
  ASSERT_TRUE(key.ok());
  BIGNUM* d = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key->pkey(), OSSL_PKEY_PARAM_PRIV_KEY, &d),
            1);
  BN_clear_free(d);
  d = nullptr;
  EXPECT_NE(EVP_PKEY_get_bn_param(key->VerifyKey().pkey(),
                                  OSSL_PKEY_PARAM_PRIV_KEY, &d),
            1);
  BN_clear_free(d);
  // Copies share the key and the thumbprint.
  EcVerifyKey copy = key->VerifyKey();
  EXPECT_EQ(copy.pkey(), key->VerifyKey().pkey());
  EXPECT_EQ(copy.Thumbprint(), key->Thumbprint());
}

std::string PemOf(EVP_PKEY* pkey, bool is_private,
                  const EVP_CIPHER* cipher = nullptr) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  static char pass[] = "passphrase";
  if (is_private) {
    PEM_write_bio_PrivateKey(
        bio.get(), pkey, cipher,
        cipher ? reinterpret_cast<unsigned char*>(pass) : nullptr,
        cipher ? 10 : 0, nullptr, nullptr);
  } else {
    PEM_write_bio_PUBKEY(bio.get(), pkey);
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

SecureBuffer Secure(const std::string& s) {
  return SecureBuffer::CopyOf(Bytes(s));
}

TEST(JwsKeyTest, RefusesOtherCurvesEncryptedAndGarbage) {
  EvpPkeyPtr p384(EVP_EC_gen("P-384"));
  ASSERT_TRUE(p384);
  auto pub = EcVerifyKey::FromPublicPem(PemOf(p384.get(), false));
  ASSERT_FALSE(pub.ok());
  EXPECT_NE(pub.error().message.find("P-256"), std::string::npos);
  auto priv = EcSigningKey::FromPrivatePem(Secure(PemOf(p384.get(), true)));
  ASSERT_FALSE(priv.ok());
  EXPECT_NE(priv.error().message.find("P-256"), std::string::npos);

  // Encrypted PEM: refused, without asking for a passphrase.
  EvpPkeyPtr p256(EVP_EC_gen("P-256"));
  ASSERT_TRUE(p256);
  EXPECT_TRUE(
      EcSigningKey::FromPrivatePem(Secure(PemOf(p256.get(), true))).ok());
  auto enc = EcSigningKey::FromPrivatePem(
      Secure(PemOf(p256.get(), true, EVP_aes_256_cbc())));
  EXPECT_FALSE(enc.ok());

  EXPECT_FALSE(EcVerifyKey::FromPublicPem("").ok());
  EXPECT_FALSE(EcVerifyKey::FromPublicPem("-----BEGIN PUBLIC KEY-----\nAAAA\n"
                                          "-----END PUBLIC KEY-----\n")
                   .ok());
  EXPECT_FALSE(EcSigningKey::FromPrivatePem(Secure("not a pem")).ok());
  // A public PEM is not a private key.
  EXPECT_FALSE(
      EcSigningKey::FromPrivatePem(Secure(PemOf(p256.get(), false))).ok());
}

// --- tokens
// -------------------------------------------------------------------

// DER ECDSA signature of SHA-256(input): written independently of jws.cc,
// so the tests do not just check the implementation against itself.
std::vector<uint8_t> DerSign(EVP_PKEY* pkey, std::string_view input) {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  size_t len = 0;
  EXPECT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, pkey),
            1);
  EXPECT_EQ(EVP_DigestSign(ctx.get(), nullptr, &len, Bytes(input).data(),
                           input.size()),
            1);
  std::vector<uint8_t> der(len);
  EXPECT_EQ(EVP_DigestSign(ctx.get(), der.data(), &len, Bytes(input).data(),
                           input.size()),
            1);
  der.resize(len);
  return der;
}

std::vector<uint8_t> DerToRaw(const std::vector<uint8_t>& der) {
  const unsigned char* p = der.data();
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
  std::vector<uint8_t> raw(64);
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  BN_bn2binpad(r, raw.data(), 32);
  BN_bn2binpad(s, raw.data() + 32, 32);
  return raw;
}

enum class SigForm { kRaw, kDer };

// header.payload signed with `key`, both JSON texts used byte for byte.
std::string MakeToken(const EcSigningKey& key, std::string_view header,
                      std::string_view payload, SigForm form = SigForm::kRaw) {
  std::string input = B64(header) + "." + B64(payload);
  std::vector<uint8_t> der = DerSign(key.pkey(), input);
  return input + "." +
         Base64UrlEncode(form == SigForm::kDer ? der : DerToRaw(der));
}

std::vector<std::string> Split(const std::string& token) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t dot = token.find('.', start);
    parts.push_back(token.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

class JwsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = EcSigningKey::Generate();
    ASSERT_TRUE(k.ok());
    key_.emplace(std::move(k).value());
    auto o = EcSigningKey::Generate();
    ASSERT_TRUE(o.ok());
    other_.emplace(std::move(o).value());
    policy_.issuer = "vcrypt-attestation";
    policy_.audience = "vcrypt-kps";
  }

  json Claims() const {
    return json{{"iss", "vcrypt-attestation"}, {"sub", "host-1"},
                {"aud", "vcrypt-kps"},         {"iat", kNow},
                {"exp", kNow + 300},           {"jti", "jti-0001"},
                {"baseline", "bl-sha256"}};
  }
  std::string Header() const {
    return R"({"alg":"ES256","kid":")" + key_->Thumbprint() +
           R"(","typ":"JWT"})";
  }
  std::string Sign(const json& claims) const {
    auto t = SignToken(*key_, claims);
    EXPECT_TRUE(t.ok()) << t.error().message;
    return t.ok() ? *t : std::string();
  }
  Result<AttestationClaims> Verify(std::string_view token) const {
    return VerifyToken(token, key_->VerifyKey(), policy_, now_);
  }
  // Asserts a refusal with `code` whose message contains `what`.
  void ExpectRefused(std::string_view token, ErrorCode code,
                     std::string_view what) const {
    auto r = Verify(token);
    ASSERT_FALSE(r.ok()) << "accepted: " << token;
    EXPECT_EQ(r.error().code, code) << r.error().message;
    EXPECT_NE(r.error().message.find(what), std::string::npos)
        << "message: " << r.error().message << "; expected: " << what;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  }
  void ExpectClaimsRefused(const json& claims, ErrorCode code,
                           std::string_view what) const {
    ExpectRefused(Sign(claims), code, what);
  }

  static constexpr int64_t kNow = 1'800'000'000;
  const Clock::time_point now_{seconds(kNow)};
  std::optional<EcSigningKey> key_, other_;
  TokenPolicy policy_;
};

TEST_F(JwsTest, RoundTripReturnsTheClaims) {
  std::string token = Sign(Claims());
  auto parts = Split(token);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(DecodeToString(parts[0]), Header());
  auto sig = Base64UrlDecode(parts[2]);
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(sig->size(), 64u);

  auto c = Verify(token);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->iss, "vcrypt-attestation");
  EXPECT_EQ(c->sub, "host-1");
  EXPECT_EQ(c->aud, "vcrypt-kps");
  EXPECT_EQ(c->jti, "jti-0001");
  EXPECT_EQ(c->baseline, "bl-sha256");
  EXPECT_EQ(c->iat, kNow);
  EXPECT_EQ(c->exp, kNow + 300);

  // Verifiable with the key loaded from the public PEM alone, as the key
  // provider service does.
  auto pem = key_->ToPublicPem();
  ASSERT_TRUE(pem.ok());
  auto vk = EcVerifyKey::FromPublicPem(*pem);
  ASSERT_TRUE(vk.ok());
  EXPECT_TRUE(VerifyToken(token, *vk, policy_, now_).ok());
  // And the token built by the tests' own signer verifies too.
  EXPECT_TRUE(Verify(MakeToken(*key_, Header(), Claims().dump())).ok());
}

TEST_F(JwsTest, VerifiesRfc7515A3Signature) {
  auto vk = EcVerifyKey::FromPublicPem(kRfc7515A3Pem);
  ASSERT_TRUE(vk.ok()) << vk.error().message;
  TokenPolicy joe{"joe", "anyone"};
  Clock::time_point then{seconds(1300819000)};
  // The RFC's signature is good; the token then fails our claim rules
  // (no sub), which proves it got past the signature check.
  auto r = VerifyToken(kRfc7515A3Token, *vk, joe, then);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
  EXPECT_NE(r.error().message.find("claim sub"), std::string::npos)
      << r.error().message;
  // One changed signature character: now it is the signature that fails.
  std::string bad = kRfc7515A3Token;
  bad[bad.size() - 10] = bad[bad.size() - 10] == 'A' ? 'B' : 'A';
  r = VerifyToken(bad, *vk, joe, then);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto) << r.error().message;
}

TEST_F(JwsTest, RefusesExpired) {
  json c = Claims();
  c["iat"] = kNow - 400;
  c["exp"] = kNow - 31;  // past, beyond the 30 s leeway
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "expired");
  c["exp"] = kNow - 29;  // within the leeway: accepted
  EXPECT_TRUE(Verify(Sign(c)).ok());
  c["exp"] = kNow - 30;  // exp must be > now - leeway
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "expired");
}

TEST_F(JwsTest, RefusesNotYetValid) {
  json c = Claims();
  c["iat"] = kNow + 31;
  c["exp"] = kNow + 331;
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "iat is in the future");
  c["iat"] = kNow + 30;
  c["exp"] = kNow + 330;
  EXPECT_TRUE(Verify(Sign(c)).ok());
  // nbf, when present, is honoured the same way.
  c = Claims();
  c["nbf"] = kNow + 31;
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "nbf");
  c["nbf"] = kNow;
  EXPECT_TRUE(Verify(Sign(c)).ok());
}

TEST_F(JwsTest, RefusesLifetimeTooLong) {
  json c = Claims();
  c["exp"] = kNow + 601;
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "lifetime");
  c["exp"] = kNow + 600;
  EXPECT_TRUE(Verify(Sign(c)).ok());
  // exp not after iat is malformed, not merely short.
  c["exp"] = kNow;
  ExpectClaimsRefused(c, ErrorCode::kInvalidArgument, "exp is not after iat");
  // Extreme values must not overflow (the fuzzer runs with UBSan).
  c["iat"] = std::numeric_limits<int64_t>::min();
  c["exp"] = std::numeric_limits<int64_t>::max();
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "lifetime");
}

TEST_F(JwsTest, RefusesWrongAudience) {
  json c = Claims();
  c["aud"] = "vcrypt-other";
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "audience");
  c["aud"] = json::array({"vcrypt-other"});
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "audience");
  c["aud"] = json::array();
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "audience");
  c["aud"] = json::array({"vcrypt-other", 7});
  ExpectClaimsRefused(c, ErrorCode::kInvalidArgument, "aud");
  c["aud"] = json::array({"vcrypt-other", "vcrypt-kps"});
  auto r = Verify(Sign(c));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->aud, "vcrypt-kps");
  c.erase("aud");
  ExpectClaimsRefused(c, ErrorCode::kInvalidArgument, "aud");
}

TEST_F(JwsTest, RefusesWrongIssuer) {
  json c = Claims();
  c["iss"] = "someone-else";
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "issuer");
  c["iss"] = "vcrypt-attestation ";  // no trimming, exact match
  ExpectClaimsRefused(c, ErrorCode::kPermissionDenied, "issuer");
}

TEST_F(JwsTest, RefusesMissingOrMistypedClaims) {
  const std::pair<const char*, json> cases[] = {
      {"sub", ""},        {"sub", 5},
      {"jti", nullptr},   {"baseline", json::array()},
      {"iat", 1.8e9},     {"exp", "1800000300"},
      {"iss", true},      {"sub", "host\n1"},
      {"exp", UINT64_MAX}};
  for (const auto& [name, value] : cases) {
    json c = Claims();
    c[name] = value;
    SCOPED_TRACE(c.dump());
    ExpectClaimsRefused(c, ErrorCode::kInvalidArgument, name);
  }
  for (const char* name : {"iss", "sub", "jti", "baseline", "iat", "exp"}) {
    json c = Claims();
    c.erase(name);
    SCOPED_TRACE(name);
    ExpectClaimsRefused(c, ErrorCode::kInvalidArgument, name);
  }
}

TEST_F(JwsTest, RefusesAlgNoneWithEmptySignature) {
  std::string token =
      B64(R"({"alg":"none","typ":"JWT"})") + "." + B64(Claims().dump()) + ".";
  ExpectRefused(token, ErrorCode::kCrypto, "alg must be exactly ES256");
}

TEST_F(JwsTest, RefusesOtherAlgorithmsBeforeAnyCrypto) {
  // Correctly ES256-signed, so only the alg value is wrong.
  for (const char* header :
       {R"({"alg":"HS256"})", R"({"alg":"ES384"})", R"({"alg":"es256"})",
        R"({"alg":"RS256"})", R"({"alg":"ES256 "})", R"({"alg":["ES256"]})",
        R"({"alg":null})", R"({"typ":"JWT"})"}) {
    SCOPED_TRACE(header);
    ExpectRefused(MakeToken(*key_, header, Claims().dump()), ErrorCode::kCrypto,
                  "alg must be exactly ES256");
  }
}

TEST_F(JwsTest, RefusesHs256KeyedWithThePublicKeyPem) {
  // The classic confusion: a verifier that lets the header pick HMAC
  // would key it with the (public) verification key and accept this.
  auto pem = key_->ToPublicPem();
  ASSERT_TRUE(pem.ok());
  std::string input =
      B64(R"({"alg":"HS256","typ":"JWT"})") + "." + B64(Claims().dump());
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  ASSERT_NE(HMAC(EVP_sha256(), pem->data(), static_cast<int>(pem->size()),
                 Bytes(input).data(), input.size(), mac, &mac_len),
            nullptr);
  std::string token =
      input + "." + Base64UrlEncode(std::span<const uint8_t>(mac, mac_len));
  ExpectRefused(token, ErrorCode::kCrypto, "alg must be exactly ES256");
}

TEST_F(JwsTest, RefusesDerSignature) {
  std::string token =
      MakeToken(*key_, Header(), Claims().dump(), SigForm::kDer);
  ExpectRefused(token, ErrorCode::kCrypto, "not 64 bytes");
  // The same signature in JOSE form is accepted: only the form is wrong.
  EXPECT_TRUE(Verify(MakeToken(*key_, Header(), Claims().dump())).ok());
}

TEST_F(JwsTest, RefusesSignatureByAnotherKey) {
  // Claiming the pinned key's kid but signed by another P-256 key.
  ExpectRefused(MakeToken(*other_, Header(), Claims().dump()),
                ErrorCode::kCrypto, "does not verify");
  // Without a kid at all.
  ExpectRefused(MakeToken(*other_, R"({"alg":"ES256"})", Claims().dump()),
                ErrorCode::kCrypto, "does not verify");
  // SignToken by the other key names its own kid: refused on the kid.
  auto t = SignToken(*other_, Claims());
  ASSERT_TRUE(t.ok());
  ExpectRefused(*t, ErrorCode::kCrypto, "kid");
}

TEST_F(JwsTest, RefusesPayloadChangedAfterSigning) {
  auto parts = Split(Sign(Claims()));
  ASSERT_EQ(parts.size(), 3u);
  json c = Claims();
  c["sub"] = "host-2";
  ExpectRefused(parts[0] + "." + B64(c.dump()) + "." + parts[2],
                ErrorCode::kCrypto, "does not verify");
  c = Claims();
  c["exp"] = kNow + 301;
  ExpectRefused(parts[0] + "." + B64(c.dump()) + "." + parts[2],
                ErrorCode::kCrypto, "does not verify");
}

TEST_F(JwsTest, RefusesHeaderChangedAfterSigning) {
  auto parts = Split(Sign(Claims()));
  ASSERT_EQ(parts.size(), 3u);
  // kid of another key.
  std::string other_kid =
      R"({"alg":"ES256","kid":")" + other_->Thumbprint() + R"(","typ":"JWT"})";
  ExpectRefused(B64(other_kid) + "." + parts[1] + "." + parts[2],
                ErrorCode::kCrypto, "kid");
  // A header that passes every header check but is not the signed one.
  ExpectRefused(B64(R"({"alg":"ES256"})") + "." + parts[1] + "." + parts[2],
                ErrorCode::kCrypto, "does not verify");
  // kid that is not a string.
  ExpectRefused(MakeToken(*key_, R"({"alg":"ES256","kid":1})", Claims().dump()),
                ErrorCode::kCrypto, "kid");
}

TEST_F(JwsTest, RefusesCritAndKeyCarryingHeaders) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({"alg":"ES256","crit":["exp"],"exp":1})", "crit"},
      {R"({"alg":"ES256","jku":"https://evil/jwks"})", "jku"},
      {R"({"alg":"ES256","jwk":{"kty":"EC"}})", "jwk"},
      {R"({"alg":"ES256","x5u":"https://evil/cert"})", "x5u"},
      {R"({"alg":"ES256","x5c":["MIIB"]})", "x5c"},
  };
  for (const auto& [header, what] : cases) {
    SCOPED_TRACE(header);
    ExpectRefused(MakeToken(*key_, header, Claims().dump()), ErrorCode::kCrypto,
                  what);
  }
  ExpectRefused(
      MakeToken(*key_, R"({"alg":"ES256","typ":"JOSE+JSON"})", Claims().dump()),
      ErrorCode::kInvalidArgument, "typ");
  ExpectRefused(
      MakeToken(*key_, R"({"alg":"ES256","zip":"DEF"})", Claims().dump()),
      ErrorCode::kInvalidArgument, "unexpected member");
}

TEST_F(JwsTest, RefusesDuplicateMembers) {
  // A last-wins parser would see ES256 here.
  ExpectRefused(
      MakeToken(*key_, R"({"alg":"none","alg":"ES256"})", Claims().dump()),
      ErrorCode::kInvalidArgument, "header has a duplicate member");
  std::string payload = Claims().dump();
  ASSERT_EQ(payload.front(), '{');
  // "sub" spelled twice, once with an escape: still the same name.
  std::string dup_payload = R"({"s\u0075b":"host-evil",)" + payload.substr(1);
  ExpectRefused(MakeToken(*key_, Header(), dup_payload),
                ErrorCode::kInvalidArgument, "payload has a duplicate member");
  // Nested objects are checked too; equal names in sibling objects are not
  // duplicates.
  std::string nested = R"({"x":{"a":1,"a":2},)" + payload.substr(1);
  ExpectRefused(MakeToken(*key_, Header(), nested), ErrorCode::kInvalidArgument,
                "duplicate member");
  std::string siblings = R"({"x":{"a":1},"y":{"a":2},)" + payload.substr(1);
  EXPECT_TRUE(Verify(MakeToken(*key_, Header(), siblings)).ok());
}

TEST_F(JwsTest, RefusesNonObjectsAndBadJson) {
  for (const char* header :
       {R"(["alg","ES256"])", R"("ES256")", R"({"alg":"ES256"} x)",
        R"({"alg":"ES256",})", "{\"alg\":\"ES\xff\"}", ""}) {
    SCOPED_TRACE(header);
    ExpectRefused(MakeToken(*key_, header, Claims().dump()),
                  ErrorCode::kInvalidArgument, "header");
  }
  // A payload that is not an object: refused after the signature check.
  ExpectRefused(MakeToken(*key_, Header(), "[1,2]"),
                ErrorCode::kInvalidArgument, "payload is not a JSON object");
}

// RFC 7800 `cnf`: the session key comes back as a checked point; any other
// shape, or a point off the curve, is refused (the key provider service
// would otherwise verify request proofs with an attacker-shaped key).
TEST_F(JwsTest, CnfClaimCarriesAValidP256PointOnly) {
  auto point = other_->PublicPoint();
  ASSERT_TRUE(point.ok());
  auto jwk = [&](std::vector<uint8_t> p) {
    return json{{"kty", "EC"},
                {"crv", "P-256"},
                {"x", Base64UrlEncode(std::span(p).subspan(1, 32))},
                {"y", Base64UrlEncode(std::span(p).subspan(33, 32))}};
  };
  json c = Claims();
  c["cnf"] = {{"jwk", jwk(*point)}};
  auto r = Verify(Sign(c));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->cnf_point, *point);
  auto back = EcVerifyKey::FromPoint(r->cnf_point);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->Thumbprint(), other_->Thumbprint());
  EXPECT_TRUE(Verify(Sign(Claims()))->cnf_point.empty());

  std::vector<uint8_t> off = *point;
  off[64] ^= 1;  // y changed: not on the curve
  json bad = Claims();
  bad["cnf"] = {{"jwk", jwk(off)}};
  ExpectClaimsRefused(bad, ErrorCode::kInvalidArgument, "cnf");
  json extra = jwk(*point);
  extra["d"] = "AAAA";
  bad["cnf"] = {{"jwk", extra}};
  ExpectClaimsRefused(bad, ErrorCode::kInvalidArgument, "cnf");
  bad["cnf"] = {{"jkt", other_->Thumbprint()}};
  ExpectClaimsRefused(bad, ErrorCode::kInvalidArgument, "cnf");
  json p384 = jwk(*point);
  p384["crv"] = "P-384";
  bad["cnf"] = {{"jwk", p384}};
  ExpectClaimsRefused(bad, ErrorCode::kInvalidArgument, "cnf");
  bad["cnf"] = "key";
  ExpectClaimsRefused(bad, ErrorCode::kInvalidArgument, "cnf");
}

TEST_F(JwsTest, RefusesBadBase64Url) {
  auto parts = Split(Sign(Claims()));
  ASSERT_EQ(parts.size(), 3u);
  ASSERT_TRUE(Verify(parts[0] + "." + parts[1] + "." + parts[2]).ok());
  // Padding.
  ExpectRefused(parts[0] + "==." + parts[1] + "." + parts[2],
                ErrorCode::kInvalidArgument, "padding");
  // Standard-base64 characters and others.
  std::string plus = parts[1];
  plus[3] = '+';
  ExpectRefused(parts[0] + "." + plus + "." + parts[2],
                ErrorCode::kInvalidArgument, "payload");
  ExpectRefused(parts[0] + "." + parts[1] + "." + parts[2] + " ",
                ErrorCode::kInvalidArgument, "signature");
  // Non-canonical trailing bits: a second encoding of the same signature.
  std::string sig = parts[2];
  ASSERT_EQ(sig.size() % 4, 2u);
  const std::string alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  sig.back() = alphabet[alphabet.find(sig.back()) | 1];
  ExpectRefused(parts[0] + "." + parts[1] + "." + sig,
                ErrorCode::kInvalidArgument, "trailing bits");
}

TEST_F(JwsTest, RefusesWrongSegmentCount) {
  auto parts = Split(Sign(Claims()));
  ASSERT_EQ(parts.size(), 3u);
  ExpectRefused(parts[0] + "." + parts[1], ErrorCode::kInvalidArgument,
                "three");
  ExpectRefused(parts[0] + "." + parts[1] + "." + parts[2] + "." + parts[2],
                ErrorCode::kInvalidArgument, "three");
  ExpectRefused(parts[0] + "." + parts[1] + "." + parts[2] + ".",
                ErrorCode::kInvalidArgument, "three");
  ExpectRefused("", ErrorCode::kInvalidArgument, "three");
  ExpectRefused(parts[0], ErrorCode::kInvalidArgument, "three");
}

TEST_F(JwsTest, RefusesOversizedInput) {
  std::string token = Sign(Claims());
  std::string big = token + std::string(kMaxTokenSize + 1 - token.size(), 'A');
  ASSERT_EQ(big.size(), kMaxTokenSize + 1);
  ExpectRefused(big, ErrorCode::kInvalidArgument, "longer than 8192");
  // A large but valid token under the limit is accepted: the limit, not
  // the padding, is what refuses the one above.
  json c = Claims();
  c["pad"] = std::string(5500, 'x');
  EXPECT_TRUE(Verify(Sign(c)).ok());
  c["pad"] = std::string(7000, 'x');
  EXPECT_FALSE(SignToken(*key_, c).ok());
}

TEST_F(JwsTest, RefusesSignatureScalarsOutOfRange) {
  auto parts = Split(Sign(Claims()));
  ASSERT_EQ(parts.size(), 3u);
  auto good = Base64UrlDecode(parts[2]);
  ASSERT_TRUE(good.ok());
  std::vector<uint8_t> n = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                            0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84,
                            0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
  std::vector<uint8_t> zero(32, 0), ones(32, 0xff), n_minus_1 = n;
  n_minus_1.back() -= 1;
  auto with = [&](const std::vector<uint8_t>& r,
                  const std::vector<uint8_t>& s) {
    std::vector<uint8_t> sig(r);
    sig.insert(sig.end(), s.begin(), s.end());
    return parts[0] + "." + parts[1] + "." + Base64UrlEncode(sig);
  };
  std::vector<uint8_t> r(good->begin(), good->begin() + 32);
  std::vector<uint8_t> s(good->begin() + 32, good->end());
  ASSERT_TRUE(Verify(with(r, s)).ok());
  for (const std::vector<uint8_t>* bad : {&zero, &n, &ones}) {
    ExpectRefused(with(*bad, s), ErrorCode::kCrypto, "outside [1, n-1]");
    ExpectRefused(with(r, *bad), ErrorCode::kCrypto, "outside [1, n-1]");
  }
  // n - 1 is in range: it reaches (and fails) the actual verification.
  ExpectRefused(with(r, n_minus_1), ErrorCode::kCrypto, "does not verify");
  // s and n - s are both valid ECDSA signatures (no low-S rule in JOSE).
  BignumPtr bn_s(BN_bin2bn(s.data(), 32, nullptr));
  BignumPtr bn_n(BN_bin2bn(n.data(), 32, nullptr));
  ASSERT_EQ(BN_sub(bn_s.get(), bn_n.get(), bn_s.get()), 1);
  std::vector<uint8_t> neg_s(32);
  ASSERT_EQ(BN_bn2binpad(bn_s.get(), neg_s.data(), 32), 32);
  EXPECT_TRUE(Verify(with(r, neg_s)).ok());
}

TEST_F(JwsTest, RefusesBadPolicy) {
  std::string token = Sign(Claims());
  TokenPolicy p = policy_;
  p.audience.clear();
  auto r = VerifyToken(token, key_->VerifyKey(), p, now_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  p = policy_;
  p.leeway = seconds(-1);
  EXPECT_FALSE(VerifyToken(token, key_->VerifyKey(), p, now_).ok());
}

TEST_F(JwsTest, SignTokenRefusesNonObjectsAndBadUtf8) {
  EXPECT_FALSE(SignToken(*key_, json::array({1})).ok());
  json c = Claims();
  c["sub"] = std::string("host\xff");
  auto r = SignToken(*key_, c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(JwsTest, ErrorMessagesDoNotEchoTheToken) {
  json c = Claims();
  c["aud"] = "SECRETAUDIENCEVALUE";
  c["iss"] = "SECRETISSUER";
  for (const std::string& token :
       {Sign(c), MakeToken(*key_, R"({"alg":"SECRETALG"})", c.dump())}) {
    auto r = Verify(token);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().message.find("SECRET"), std::string::npos)
        << r.error().message;
  }
}

}  // namespace
}  // namespace vcrypt
