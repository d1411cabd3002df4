// The key provider service's logic: KEKs only for admitted requests (a
// valid token bound to a session key, and a fresh proof made with that
// key for this very request), and ciphertexts that only this provider's
// primary key opens. Tokens are signed here with a test attestation key
// (the attestation service's side is in attestation_test.cc).
#include "trustauthority/kps.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <chrono>
#include <fstream>

#include "common/base64.h"
#include "common/random.h"
#include "taprotocol/proof.h"
#include "tests/test_util.h"
#include "tests/unit/ta_test_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

class KpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = EcSigningKey::Generate();
    ASSERT_TRUE(k.ok());
    signer_.emplace(std::move(k).value());
    store_ = testing::OpenTestStore(dir_.path());
    ASSERT_TRUE(store_);
    ASSERT_TRUE(store_->PutBaseline({"golden", "{}", 0, {}}, false, 0).ok());
    kps_.emplace(Make("kps-a"));
    auto t = TransportKey::Generate();
    ASSERT_TRUE(t.ok());
    host_.emplace(std::move(t).value());
  }
  std::span<const uint8_t> Tk() { return host_->public_point(); }
  // The KEK a grant carries, opened with the host's transport key.
  SecureBuffer Open(const SealedKey& s, const std::string& kek_id) {
    auto k = host_->Open(s, kek_id);
    EXPECT_TRUE(k.ok()) << k.error().message;
    return k.ok() ? std::move(k).value() : SecureBuffer();
  }
  KeyProviderService Make(const std::string& id) {
    auto pub = EcVerifyKey::FromPublicPem(*signer_->ToPublicPem());
    auto primary = RandomKey(32);
    auto s = KeyProviderService::Open({store_, id}, std::move(pub).value(),
                                      std::move(primary).value());
    EXPECT_TRUE(s.ok()) << s.error().message;
    return std::move(s).value();
  }
  // A token bound to `session_` (unless overridden).
  std::string Token(Json overrides = Json::object(),
                    const EcSigningKey* key = nullptr) {
    const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    Json c = {{"iss", "vcrypt-attestation"},
              {"sub", "h1"},
              {"aud", "vcrypt-kps"},
              {"iat", now},
              {"exp", now + 300},
              {"jti", std::to_string(++jti_)},
              {"baseline", "golden"},
              {"cnf", Cnf(*session_.PublicPoint())}};
    if (overrides.is_object()) c.update(overrides);
    for (auto it = c.begin(); it != c.end();)
      it = it->is_null() ? c.erase(it) : std::next(it);
    auto t = SignToken(key != nullptr ? *key : *signer_, c);
    EXPECT_TRUE(t.ok());
    return *t;
  }

  static std::vector<uint8_t> Sha(std::span<const uint8_t> d) {
    std::vector<uint8_t> md(32);
    unsigned int n = 0;
    EVP_Digest(d.data(), d.size(), md.data(), &n, EVP_sha256(), nullptr);
    return md;
  }
  static std::vector<uint8_t> Sha(const std::string& s) {
    return Sha(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  }
  static Json Cnf(std::span<const uint8_t> p) {
    return {{"jwk",
             {{"kty", "EC"},
              {"crv", "P-256"},
              {"x", Base64UrlEncode(p.subspan(1, 32))},
              {"y", Base64UrlEncode(p.subspan(33, 32))}}}};
  }
  // A request for `token` with a fresh proof by `session_` (or `signer`).
  KpsRequest Req(const std::string& token, const std::string& ct = "",
                 const EcSigningKey* signer = nullptr) {
    KpsRequest r{token, "", {Tk().begin(), Tk().end()}, ct};
    auto p = SignRequestProof(signer ? *signer : session_, token,
                              ct.empty() ? kKekPath : kKekUnwrapPath, Tk(), ct);
    EXPECT_TRUE(p.ok());
    r.proof = *p;
    return r;
  }
  Result<KekGrant> Create(const std::string& token) {
    return kps_->CreateKek(Req(token));
  }
  Result<SealedKey> Unwrap(const std::string& token, const std::string& ct) {
    return kps_->UnwrapKek(Req(token, ct));
  }

  EcSigningKey session_ = std::move(EcSigningKey::Generate()).value();
  testing::TempDir dir_{"kps"};
  std::shared_ptr<TaStore> store_;
  std::optional<EcSigningKey> signer_;
  std::optional<KeyProviderService> kps_;
  std::optional<TransportKey> host_;
  int jti_ = 0;
};

TEST_F(KpsTest, KekComesBackForAFreshToken) {
  auto g = Create(Token());
  ASSERT_TRUE(g.ok()) << g.error().message;
  SecureBuffer kek = Open(g->kek, g->kek_id);
  EXPECT_EQ(kek.size(), 32u);
  auto k = Unwrap(Token(), g->ciphertext);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_TRUE(Open(*k, g->kek_id).Equals(kek));
  // A second KEK is another key.
  auto g2 = Create(Token());
  ASSERT_TRUE(g2.ok());
  EXPECT_FALSE(Open(g2->kek, g2->kek_id).Equals(kek));
  EXPECT_NE(g2->kek_id, g->kek_id);
}

TEST_F(KpsTest, TokensAreRefused) {
  const int64_t past = 1000000000;
  EXPECT_FALSE(
      Create(Token({{"iat", past}, {"exp", past + 300}})).ok())
      << "expired";
  EXPECT_FALSE(Create(Token({{"aud", "someone-else"}})).ok())
      << "audience";
  EXPECT_FALSE(Create(Token({{"baseline", "withdrawn"}})).ok())
      << "baseline";
  auto other = EcSigningKey::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(Create(Token(Json::object(), &*other)).error().code,
            ErrorCode::kCrypto)
      << "signed by another key";
  // alg:none with the claims of a valid token.
  std::string none = Token();
  none = "eyJhbGciOiJub25lIn0" +
         none.substr(none.find('.'), none.rfind('.') - none.find('.')) + ".";
  EXPECT_FALSE(Create(none).ok()) << "alg none";
}

// Token caching: one token serves many requests of the host that holds
// its session key, each with its own proof; a request replayed as is
// (same token, same proof jti) is refused.
TEST_F(KpsTest, CachedTokenServesManyRequestsButNoReplayedOne) {
  const std::string t = Token();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Create(t).ok()) << i;
  KpsRequest r = Req(t);
  ASSERT_TRUE(kps_->CreateKek(r).ok());
  auto again = kps_->CreateKek(r);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(again.error().message.find("replayed"), std::string::npos)
      << again.error().message;
  // The replay is refused by any replica sharing the state directory.
  KeyProviderService replica = Make("kps-a");
  EXPECT_EQ(replica.CreateKek(r).error().code, ErrorCode::kPermissionDenied);
}

// A copied token is worthless without its session key.
TEST_F(KpsTest, ProofMustComeFromTheTokensSessionKeyForThisRequest) {
  const std::string t = Token();
  auto thief = EcSigningKey::Generate();
  ASSERT_TRUE(thief.ok());
  auto r = kps_->CreateKek(Req(t, "", &*thief));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto) << r.error().message;
  // A token without cnf (a bearer token) is refused.
  r = Create(Token({{"cnf", nullptr}}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  // No proof at all.
  KpsRequest bare = Req(t);
  bare.proof.clear();
  EXPECT_FALSE(kps_->CreateKek(bare).ok());
  // A proof made for another token, endpoint, transport key, ciphertext.
  KpsRequest other_token = Req(Token());
  other_token.token = t;
  EXPECT_EQ(kps_->CreateKek(other_token).error().code,
            ErrorCode::kPermissionDenied);
  auto g = Create(t);
  ASSERT_TRUE(g.ok());
  KpsRequest wrong_path = Req(t);
  wrong_path.ciphertext = g->ciphertext;  // a /v1/kek proof on unwrap
  EXPECT_EQ(kps_->UnwrapKek(wrong_path).error().code,
            ErrorCode::kPermissionDenied);
  KpsRequest other_tk = Req(t);
  other_tk.transport_key =
      std::move(TransportKey::Generate()).value().public_point();
  EXPECT_EQ(kps_->CreateKek(other_tk).error().code,
            ErrorCode::kPermissionDenied);
  auto g2 = Create(t);
  ASSERT_TRUE(g2.ok());
  KpsRequest other_ct = Req(t, g->ciphertext);
  other_ct.ciphertext = g2->ciphertext;
  EXPECT_EQ(kps_->UnwrapKek(other_ct).error().code,
            ErrorCode::kPermissionDenied);
  // A proof older than kProofMaxAge.
  const int64_t old = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count() -
                      kProofMaxAge.count() - 5;
  Json claims = {{"jti", "x"},
                 {"iat", old},
                 {"htu", std::string(kKekPath)},
                 {"ath", Base64UrlEncode(Sha(t))},
                 {"tk", Base64UrlEncode(Sha(Tk()))}};
  KpsRequest stale = Req(t);
  stale.proof = *SignJws(session_, kProofType, claims);
  auto s = kps_->CreateKek(stale);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("too old"), std::string::npos)
      << s.error().message;
  // The same claims made fresh pass: the age was the only fault.
  claims["iat"] = old + kProofMaxAge.count() + 5;
  stale.proof = *SignJws(session_, kProofType, claims);
  EXPECT_TRUE(kps_->CreateKek(stale).ok());
  // A token offered as a proof (typ JWT) is refused.
  KpsRequest token_as_proof = Req(t);
  token_as_proof.proof = *SignToken(session_, claims);
  EXPECT_FALSE(kps_->CreateKek(token_as_proof).ok());
}

TEST_F(KpsTest, BaselineWithdrawnAfterIssueIsRefused) {
  const std::string t = Token();
  ASSERT_TRUE(*store_->RemoveBaseline("golden"));
  auto r = Create(t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
}

TEST_F(KpsTest, AlteredOrForeignCiphertextIsRefused) {
  auto g = Create(Token());
  ASSERT_TRUE(g.ok());
  Json ct = Json::parse(g->ciphertext);
  // Another KEK ID (the AAD binds it).
  Json moved = ct;
  moved["kek_id"] = "00000000-0000-0000-0000-000000000000";
  EXPECT_EQ(Unwrap(Token(), moved.dump()).error().code,
            ErrorCode::kCrypto);
  // A flipped ciphertext byte (base64 of the wrapped key changed).
  Json flipped = ct;
  std::string c = flipped["wrapped"]["ct"];
  c[0] = c[0] == 'A' ? 'B' : 'A';
  flipped["wrapped"]["ct"] = c;
  EXPECT_EQ(Unwrap(Token(), flipped.dump()).error().code,
            ErrorCode::kCrypto);
  // Made by another provider (its own primary key): refused here, by name
  // and, renamed, by the key.
  KeyProviderService b = Make("kps-b");
  auto gb = b.CreateKek(Req(Token()));
  ASSERT_TRUE(gb.ok());
  EXPECT_EQ(Unwrap(Token(), gb->ciphertext).error().code,
            ErrorCode::kCrypto);
  Json renamed = Json::parse(gb->ciphertext);
  renamed["provider"] = "kps-a";
  EXPECT_EQ(Unwrap(Token(), renamed.dump()).error().code,
            ErrorCode::kCrypto);
  EXPECT_EQ(Unwrap(Token(), "garbage").error().code,
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vcrypt
