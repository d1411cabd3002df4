// Sealing a secret to a TPM (keyproviders/tpm/seal.h) against real software
// TPMs (swtpm): each Swtpm has its own state, so its own owner seed, which
// is what "another TPM" means. PCR 16 is the debug PCR, resettable from
// locality 0, so a test can extend it and reset it again.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/random.h"
#include "keyproviders/tpm/seal.h"
#include "keyproviders/tpm/tpm_context.h"
#include "tests/unit/swtpm.h"

namespace vcrypt {
namespace {

bool Contains(const std::vector<uint8_t>& hay, const SecureBuffer& needle) {
  return std::search(hay.begin(), hay.end(), needle.data(),
                     needle.data() + needle.size()) != hay.end();
}

class TpmSealTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm_.Start(&why)) GTEST_SKIP() << why;
    auto key = RandomKey(32);
    ASSERT_TRUE(key.ok());
    secret_ = std::move(key).value();
  }
  // Extends PCR `pcr` (SHA-256 bank) with a digest of its own.
  void Extend(int pcr) {
    ASSERT_EQ(tpm_.Tool("tpm2_pcrextend " + std::to_string(pcr) +
                        ":sha256=" + std::string(64, 'a')),
              0);
  }
  void ResetPcr(int pcr) {
    ASSERT_EQ(tpm_.Tool("tpm2_pcrreset " + std::to_string(pcr)), 0);
  }
  std::vector<uint8_t> Seal(const std::vector<int>& pcrs) {
    auto blob = SealSecret(tpm_.Tcti(), secret_, pcrs);
    EXPECT_TRUE(blob.ok()) << blob.error().message;
    return blob.ok() ? *blob : std::vector<uint8_t>();
  }

  testing::Swtpm tpm_;
  SecureBuffer secret_;
};

TEST_F(TpmSealTest, RoundTripWithoutPcrs) {
  std::vector<uint8_t> blob = Seal({});
  ASSERT_FALSE(blob.empty());
  EXPECT_LE(blob.size(), kMaxSealedBlobSize);
  EXPECT_FALSE(Contains(blob, secret_)) << "the secret is in the blob in clear";
  auto back = UnsealSecret(tpm_.Tcti(), blob, {});
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_TRUE(back->Equals(secret_));
  EXPECT_TRUE(back->locked());
  // Twice: nothing is left loaded that would fill the TPM's slots.
  for (int i = 0; i < 4; ++i) {
    auto again = UnsealSecret(tpm_.Tcti(), blob, {});
    ASSERT_TRUE(again.ok()) << i << ": " << again.error().message;
  }
}

// The secret goes back only while the PCR holds the value it had.
TEST_F(TpmSealTest, PcrPolicyBindsToTheCurrentValue) {
  ResetPcr(16);
  std::vector<uint8_t> blob = Seal({16});
  ASSERT_FALSE(blob.empty());
  auto ok = UnsealSecret(tpm_.Tcti(), blob, {16});
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_TRUE(ok->Equals(secret_));

  Extend(16);
  auto refused = UnsealSecret(tpm_.Tcti(), blob, {16});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(refused.error().message.find("refused to unseal"),
            std::string::npos)
      << refused.error().message;

  ResetPcr(16);  // back to the sealed value
  auto again = UnsealSecret(tpm_.Tcti(), blob, {16});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_TRUE(again->Equals(secret_));
}

// The policy names the PCRs: asking with other ones fails at the TPM, and
// a blob without a policy is not unsealed through one (nor the reverse).
TEST_F(TpmSealTest, PcrListMustMatchTheSeal) {
  std::vector<uint8_t> with = Seal({16});
  std::vector<uint8_t> without = Seal({});
  ASSERT_FALSE(with.empty());
  ASSERT_FALSE(without.empty());
  auto other = UnsealSecret(tpm_.Tcti(), with, {23});
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, ErrorCode::kKeyUnavailable)
      << other.error().message;
  auto none = UnsealSecret(tpm_.Tcti(), with, {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kInvalidArgument);
  auto some = UnsealSecret(tpm_.Tcti(), without, {16});
  ASSERT_FALSE(some.ok());
  EXPECT_EQ(some.error().code, ErrorCode::kInvalidArgument);
}

// Another TPM (its own owner seed) cannot load the object at all.
TEST_F(TpmSealTest, AnotherTpmRefuses) {
  std::vector<uint8_t> blob = Seal({});
  ASSERT_FALSE(blob.empty());
  testing::Swtpm other;
  std::string why;
  ASSERT_TRUE(other.Start(&why)) << why;
  auto r = UnsealSecret(other.Tcti(), blob, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find("refused to load"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  // Still fine on its own TPM.
  EXPECT_TRUE(UnsealSecret(tpm_.Tcti(), blob, {}).ok());
}

// No modified blob unseals: a flipped bit anywhere is refused, either
// before the TPM (structure) or by it (integrity).
TEST_F(TpmSealTest, AlteredBlobIsRefused) {
  std::vector<uint8_t> blob = Seal({});
  ASSERT_FALSE(blob.empty());
  int tried = 0;
  for (size_t i = 0; i < blob.size(); i += 5) {
    std::vector<uint8_t> bad = blob;
    bad[i] ^= 0x01;
    auto r = UnsealSecret(tpm_.Tcti(), bad, {});
    ASSERT_FALSE(r.ok()) << "byte " << i << " flipped, still unsealed";
    EXPECT_TRUE(r.error().code == ErrorCode::kInvalidArgument ||
                r.error().code == ErrorCode::kKeyUnavailable)
        << "byte " << i << ": " << r.error().message;
    ++tried;
  }
  EXPECT_GT(tried, 20);
  // Cut short, grown, or larger than any blob.
  for (size_t len : {size_t{0}, size_t{1}, blob.size() / 2, blob.size() - 1}) {
    auto r = UnsealSecret(tpm_.Tcti(), std::span(blob).first(len), {});
    ASSERT_FALSE(r.ok()) << len;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << len;
  }
  std::vector<uint8_t> longer = blob;
  longer.push_back(0);
  auto r = UnsealSecret(tpm_.Tcti(), longer, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  std::vector<uint8_t> huge(kMaxSealedBlobSize + 1);
  EXPECT_EQ(UnsealSecret(tpm_.Tcti(), huge, {}).error().code,
            ErrorCode::kInvalidArgument);
}

TEST_F(TpmSealTest, BadArgumentsAreRefusedBeforeTheTpm) {
  EXPECT_EQ(SealSecret(tpm_.Tcti(), SecureBuffer(), {}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(SealSecret(tpm_.Tcti(), SecureBuffer(kMaxSealedSecretSize + 1), {})
                .error()
                .code,
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(
      SealSecret(tpm_.Tcti(), SecureBuffer(kMaxSealedSecretSize), {}).ok());
  for (const std::vector<int>& pcrs :
       std::vector<std::vector<int>>{{-1}, {24}, {7, 0}, {7, 7}}) {
    EXPECT_EQ(SealSecret(tpm_.Tcti(), secret_, pcrs).error().code,
              ErrorCode::kInvalidArgument);
  }
  // Never a TCTI outside the allowlist, whatever the caller checked.
  auto r = SealSecret("/tmp/libevil.so", secret_, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      UnsealSecret("/tmp/libevil.so", std::vector<uint8_t>(), {}).error().code,
      ErrorCode::kInvalidArgument);
}

TEST(TpmSealPcrListTest, Bounds) {
  EXPECT_TRUE(CheckPcrList({0}).ok());
  EXPECT_TRUE(CheckPcrList({0, 7, 23}).ok());
  std::vector<int> all;
  for (int i = 0; i < 24; ++i) all.push_back(i);
  EXPECT_TRUE(CheckPcrList(all).ok());
  EXPECT_FALSE(CheckPcrList({}).ok());
  EXPECT_FALSE(CheckPcrList({24}).ok());
  EXPECT_FALSE(CheckPcrList({-1}).ok());
  EXPECT_FALSE(CheckPcrList({7, 0}).ok());
  EXPECT_FALSE(CheckPcrList({1, 1}).ok());
}

// No TPM listening: an I/O error, not a refusal (the provider says "TPM
// unreachable", not "sealed to another TPM").
TEST(TpmSealNoTpmTest, UnreachableTpmIsIo) {
  auto key = RandomKey(32);
  ASSERT_TRUE(key.ok());
  auto r = SealSecret("swtpm:host=127.0.0.1,port=9", *key, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo) << r.error().message;
}

}  // namespace
}  // namespace vcrypt
