// The key provider service's logic: KEKs only for admitted tokens, and
// ciphertexts that only this provider's primary key opens. Tokens are
// signed here with a test attestation key (the attestation service's side
// is in attestation_test.cc).
#include "trustauthority/kps.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>

#include "common/random.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

class KpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = EcSigningKey::Generate();
    ASSERT_TRUE(k.ok());
    signer_.emplace(std::move(k).value());
    std::filesystem::create_directories(dir_.path() + "/baselines");
    std::ofstream(dir_.path() + "/baselines/golden.json") << "{}";
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
    auto s = KeyProviderService::Open({dir_.path(), id}, std::move(pub).value(),
                                      std::move(primary).value());
    EXPECT_TRUE(s.ok()) << s.error().message;
    return std::move(s).value();
  }
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
              {"baseline", "golden"}};
    if (overrides.is_object()) c.update(overrides);
    auto t = SignToken(key != nullptr ? *key : *signer_, c);
    EXPECT_TRUE(t.ok());
    return *t;
  }

  testing::TempDir dir_{"kps"};
  std::optional<EcSigningKey> signer_;
  std::optional<KeyProviderService> kps_;
  std::optional<TransportKey> host_;
  int jti_ = 0;
};

TEST_F(KpsTest, KekComesBackForAFreshToken) {
  auto g = kps_->CreateKek(Token(), Tk());
  ASSERT_TRUE(g.ok()) << g.error().message;
  SecureBuffer kek = Open(g->kek, g->kek_id);
  EXPECT_EQ(kek.size(), 32u);
  auto k = kps_->UnwrapKek(Token(), g->ciphertext, Tk());
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_TRUE(Open(*k, g->kek_id).Equals(kek));
  // A second KEK is another key.
  auto g2 = kps_->CreateKek(Token(), Tk());
  ASSERT_TRUE(g2.ok());
  EXPECT_FALSE(Open(g2->kek, g2->kek_id).Equals(kek));
  EXPECT_NE(g2->kek_id, g->kek_id);
}

TEST_F(KpsTest, TokensAreRefused) {
  const std::string t = Token();
  ASSERT_TRUE(kps_->CreateKek(t, Tk()).ok());
  EXPECT_EQ(kps_->CreateKek(t, Tk()).error().code, ErrorCode::kPermissionDenied)
      << "replayed jti";
  const int64_t past = 1000000000;
  EXPECT_FALSE(
      kps_->CreateKek(Token({{"iat", past}, {"exp", past + 300}}), Tk()).ok())
      << "expired";
  EXPECT_FALSE(kps_->CreateKek(Token({{"aud", "someone-else"}}), Tk()).ok())
      << "audience";
  EXPECT_FALSE(kps_->CreateKek(Token({{"baseline", "withdrawn"}}), Tk()).ok())
      << "baseline";
  auto other = EcSigningKey::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(kps_->CreateKek(Token(Json::object(), &*other), Tk()).error().code,
            ErrorCode::kCrypto)
      << "signed by another key";
  // alg:none with the claims of a valid token.
  std::string none = Token();
  none = "eyJhbGciOiJub25lIn0" +
         none.substr(none.find('.'), none.rfind('.') - none.find('.')) + ".";
  EXPECT_FALSE(kps_->CreateKek(none, Tk()).ok()) << "alg none";
}

TEST_F(KpsTest, BaselineWithdrawnAfterIssueIsRefused) {
  const std::string t = Token();
  std::filesystem::remove(dir_.path() + "/baselines/golden.json");
  auto r = kps_->CreateKek(t, Tk());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
}

TEST_F(KpsTest, AlteredOrForeignCiphertextIsRefused) {
  auto g = kps_->CreateKek(Token(), Tk());
  ASSERT_TRUE(g.ok());
  Json ct = Json::parse(g->ciphertext);
  // Another KEK ID (the AAD binds it).
  Json moved = ct;
  moved["kek_id"] = "00000000-0000-0000-0000-000000000000";
  EXPECT_EQ(kps_->UnwrapKek(Token(), moved.dump(), Tk()).error().code,
            ErrorCode::kCrypto);
  // A flipped ciphertext byte (base64 of the wrapped key changed).
  Json flipped = ct;
  std::string c = flipped["wrapped"]["ct"];
  c[0] = c[0] == 'A' ? 'B' : 'A';
  flipped["wrapped"]["ct"] = c;
  EXPECT_EQ(kps_->UnwrapKek(Token(), flipped.dump(), Tk()).error().code,
            ErrorCode::kCrypto);
  // Made by another provider (its own primary key): refused here, by name
  // and, renamed, by the key.
  KeyProviderService b = Make("kps-b");
  auto gb = b.CreateKek(Token(), Tk());
  ASSERT_TRUE(gb.ok());
  EXPECT_EQ(kps_->UnwrapKek(Token(), gb->ciphertext, Tk()).error().code,
            ErrorCode::kCrypto);
  Json renamed = Json::parse(gb->ciphertext);
  renamed["provider"] = "kps-a";
  EXPECT_EQ(kps_->UnwrapKek(Token(), renamed.dump(), Tk()).error().code,
            ErrorCode::kCrypto);
  EXPECT_EQ(kps_->UnwrapKek(Token(), "garbage", Tk()).error().code,
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vcrypt
