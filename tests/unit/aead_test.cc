#include "common/aead.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/base64.h"
#include "common/random.h"

namespace vcrypt {
namespace {

SecureBuffer Key(size_t n) {
  auto k = RandomKey(n);
  EXPECT_TRUE(k.ok());
  return std::move(k).value();
}

class AeadTest : public ::testing::Test {
 protected:
  SecureBuffer kek_ = Key(kAeadKeySize);
  SecureBuffer dek_ = Key(64);
  std::vector<uint8_t> aad_ = DekAad("uuid-1", "kek-1", "prov");

  WrappedKey Wrap() {
    auto w = WrapKey(kek_, dek_, aad_);
    EXPECT_TRUE(w.ok()) << w.error().message;
    return std::move(w).value();
  }
  void ExpectUnwrapFails(const WrappedKey& w) {
    auto r = UnwrapKey(kek_, w, aad_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
    EXPECT_EQ(r.error().message,
              "key unwrap failed: wrong key or data tampered");
  }
};

TEST_F(AeadTest, RoundTrip) {
  WrappedKey w = Wrap();
  EXPECT_EQ(w.iv.size(), kAeadIvSize);
  EXPECT_EQ(w.tag.size(), kAeadTagSize);
  EXPECT_EQ(w.ciphertext.size(), dek_.size());
  auto r = UnwrapKey(kek_, w, aad_);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->Equals(dek_));
}

TEST_F(AeadTest, RoundTripEmptyAadAnd32ByteKey) {
  SecureBuffer k = Key(32);
  auto w = WrapKey(kek_, k, {});
  ASSERT_TRUE(w.ok());
  auto r = UnwrapKey(kek_, *w, {});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->Equals(k));
}

TEST_F(AeadTest, CiphertextIsNotPlaintext) {
  WrappedKey w = Wrap();
  EXPECT_NE(std::memcmp(w.ciphertext.data(), dek_.data(), dek_.size()), 0);
}

TEST_F(AeadTest, WrongAadFails) {
  WrappedKey w = Wrap();
  auto r = UnwrapKey(kek_, w, DekAad("uuid-2", "kek-1", "prov"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
  r = UnwrapKey(kek_, w, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
}

TEST_F(AeadTest, TamperedCiphertextFails) {
  for (size_t i : {size_t{0}, size_t{31}, size_t{63}}) {
    WrappedKey w = Wrap();
    w.ciphertext[i] ^= 0x01;
    ExpectUnwrapFails(w);
  }
}

TEST_F(AeadTest, TamperedTagFails) {
  WrappedKey w = Wrap();
  w.tag[15] ^= 0x80;
  ExpectUnwrapFails(w);
}

TEST_F(AeadTest, TamperedIvFails) {
  WrappedKey w = Wrap();
  w.iv[0] ^= 0x01;
  ExpectUnwrapFails(w);
}

TEST_F(AeadTest, WrongKeyFails) {
  WrappedKey w = Wrap();
  SecureBuffer other = Key(kAeadKeySize);
  auto r = UnwrapKey(other, w, aad_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
}

TEST_F(AeadTest, WrongKekSizeIsInvalidArgument) {
  for (size_t n : {size_t{0}, size_t{16}, size_t{31}, size_t{33}, size_t{64}}) {
    SecureBuffer bad(n);
    auto w = WrapKey(bad, dek_, aad_);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.error().code, ErrorCode::kInvalidArgument);
    auto r = UnwrapKey(bad, Wrap(), aad_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST_F(AeadTest, BadKeyToWrapSizeIsInvalidArgument) {
  auto w = WrapKey(kek_, SecureBuffer(), aad_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kInvalidArgument);
  w = WrapKey(kek_, SecureBuffer(kMaxWrappedKeySize + 1), aad_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(AeadTest, MalformedStructIsInvalidArgument) {
  WrappedKey w = Wrap();
  w.iv.pop_back();
  auto r = UnwrapKey(kek_, w, aad_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(AeadTest, TwoWrapsDiffer) {
  WrappedKey a = Wrap();
  WrappedKey b = Wrap();
  EXPECT_NE(a.iv, b.iv);
  EXPECT_NE(a.ciphertext, b.ciphertext);
  EXPECT_NE(a.tag, b.tag);
}

TEST_F(AeadTest, ErrorMessagesCarryNoKeyBytes) {
  WrappedKey w = Wrap();
  w.tag[0] ^= 1;
  auto r = UnwrapKey(kek_, w, aad_);
  ASSERT_FALSE(r.ok());
  const std::string& m = r.error().message;
  EXPECT_EQ(m.find(Base64Encode(kek_.span())), std::string::npos);
  EXPECT_EQ(m.find('\n'), std::string::npos);
}

// ---- JSON ------------------------------------------------------------------

TEST_F(AeadTest, JsonRoundTrip) {
  WrappedKey w = Wrap();
  nlohmann::json j = w.ToJson();
  EXPECT_EQ(j.size(), 4u);
  EXPECT_EQ(j["alg"], "A256GCM");
  // Through text, as it is stored in the LUKS2 token.
  auto back = WrappedKey::FromJson(nlohmann::json::parse(j.dump()));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->iv, w.iv);
  EXPECT_EQ(back->ciphertext, w.ciphertext);
  EXPECT_EQ(back->tag, w.tag);
  auto r = UnwrapKey(kek_, *back, aad_);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->Equals(dek_));
}

class WrappedKeyJsonRejectTest : public AeadTest {
 protected:
  void ExpectRejected(const nlohmann::json& j, const std::string& why) {
    auto r = WrappedKey::FromJson(j);
    ASSERT_FALSE(r.ok()) << why << ": " << j.dump();
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume) << why;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  }
  std::string B64(size_t n) { return Base64Encode(std::vector<uint8_t>(n, 7)); }
};

TEST_F(WrappedKeyJsonRejectTest, NotAnObject) {
  ExpectRejected(nlohmann::json::array(), "array");
  ExpectRejected(nlohmann::json("x"), "string");
  ExpectRejected(nlohmann::json(), "null");
}

TEST_F(WrappedKeyJsonRejectTest, MissingMember) {
  for (const char* m : {"alg", "iv", "ct", "tag"}) {
    nlohmann::json j = Wrap().ToJson();
    j.erase(m);
    ExpectRejected(j, std::string("missing ") + m);
  }
}

TEST_F(WrappedKeyJsonRejectTest, WrongTypes) {
  for (const char* m : {"alg", "iv", "ct", "tag"}) {
    nlohmann::json j = Wrap().ToJson();
    j[m] = 12;
    ExpectRejected(j, std::string("number ") + m);
  }
}

TEST_F(WrappedKeyJsonRejectTest, WrongAlg) {
  nlohmann::json j = Wrap().ToJson();
  for (const char* alg : {"A128GCM", "a256gcm", "", "A256GCM "}) {
    j["alg"] = alg;
    ExpectRejected(j, std::string("alg ") + alg);
  }
}

TEST_F(WrappedKeyJsonRejectTest, WrongLengths) {
  nlohmann::json j = Wrap().ToJson();
  for (size_t n : {size_t{0}, size_t{11}, size_t{13}, size_t{16}}) {
    nlohmann::json k = j;
    k["iv"] = B64(n);
    ExpectRejected(k, "iv " + std::to_string(n));
  }
  for (size_t n : {size_t{0}, size_t{12}, size_t{15}, size_t{17}}) {
    nlohmann::json k = j;
    k["tag"] = B64(n);
    ExpectRejected(k, "tag " + std::to_string(n));
  }
  for (size_t n : {size_t{0}, kMaxWrappedKeySize + 1}) {
    nlohmann::json k = j;
    k["ct"] = B64(n);
    ExpectRejected(k, "ct " + std::to_string(n));
  }
}

TEST_F(WrappedKeyJsonRejectTest, BadBase64) {
  nlohmann::json j = Wrap().ToJson();
  for (const char* m : {"iv", "ct", "tag"}) {
    for (const char* text :
         {"!!!!", "AAA", "AA=A", " AAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAA\n"}) {
      nlohmann::json k = j;
      k[m] = text;
      ExpectRejected(k, std::string(m) + " '" + text + "'");
    }
  }
}

TEST_F(WrappedKeyJsonRejectTest, ExtraMember) {
  nlohmann::json j = Wrap().ToJson();
  j["aad"] = "";
  ExpectRejected(j, "extra member");
}

// ---- AAD -------------------------------------------------------------------

TEST(DekAadTest, DiffersWhenAnyFieldDiffers) {
  auto base = DekAad("u", "k", "p");
  EXPECT_EQ(base, DekAad("u", "k", "p"));
  EXPECT_NE(base, DekAad("U", "k", "p"));
  EXPECT_NE(base, DekAad("u", "K", "p"));
  EXPECT_NE(base, DekAad("u", "k", "P"));
  EXPECT_NE(base, DekAad("", "k", "p"));
  // Fields are positional: swapping two is a different context.
  EXPECT_NE(DekAad("a", "b", "c"), DekAad("b", "a", "c"));
}

TEST(DekAadTest, Unambiguous) {
  EXPECT_NE(DekAad("ab", "c", "x"), DekAad("a", "bc", "x"));
  EXPECT_NE(DekAad("x", "ab", "c"), DekAad("x", "a", "bc"));
  EXPECT_NE(DekAad("", "", "abc"), DekAad("abc", "", ""));
  EXPECT_NE(BuildAad("l", {"ab", "c"}), BuildAad("l", {"a", "bc"}));
  EXPECT_NE(BuildAad("l", {"a"}), BuildAad("la", {}));
  EXPECT_NE(BuildAad("l", {"a", ""}), BuildAad("l", {"a"}));
}

TEST(DekAadTest, EncodingIsLengthPrefixed) {
  auto a = BuildAad("L", {"xy"});
  std::vector<uint8_t> want = {0, 0, 0, 1, 'L', 0, 0, 0, 2, 'x', 'y'};
  EXPECT_EQ(a, want);
  auto d = DekAad("u", "k", "p");
  std::string label = "vcrypt-dek-v1";
  ASSERT_GT(d.size(), 4 + label.size());
  EXPECT_EQ(d[3], label.size());
  EXPECT_EQ(std::string(d.begin() + 4, d.begin() + 4 + label.size()), label);
}

TEST(DekAadTest, WrappedDekDoesNotUnwrapUnderOtherVolume) {
  auto kek = RandomKey(kAeadKeySize);
  auto dek = RandomKey(64);
  ASSERT_TRUE(kek.ok() && dek.ok());
  auto w = WrapKey(*kek, *dek, DekAad("uuid-A", "kek", "prov"));
  ASSERT_TRUE(w.ok());
  auto r = UnwrapKey(*kek, *w, DekAad("uuid-B", "kek", "prov"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
}

}  // namespace
}  // namespace vcrypt
