// Credential making for AK enrollment (trustauthority/credential.h).
//
// The only real oracle for MakeCredential is a TPM: CredentialTpm* tests
// make credentials in software and activate them on swtpm with
// tpm2_activatecredential (skipped when swtpm/tpm2-tools are missing).
// Credential* tests need no TPM.
#include "trustauthority/credential.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "common/random.h"
#include "tests/unit/swtpm.h"

namespace vcrypt {
namespace {

using testing::FixtureDir;
using testing::ReadBytes;
using testing::Swtpm;
using testing::SwtpmMissingReason;
using testing::WriteBytes;

using Bytes = std::vector<uint8_t>;

TpmPublic MustParsePublic(const Bytes& wire) {
  auto p = ParseTpm2bPublic(wire);
  EXPECT_TRUE(p.ok()) << p.error().message;
  if (!p.ok()) return TpmPublic();
  return std::move(p).value();
}

SecureBuffer Secret(size_t size) {
  auto s = RandomKey(size);
  EXPECT_TRUE(s.ok());
  return std::move(s).value();
}

Bytes ToBytes(const SecureBuffer& b) {
  return Bytes(b.data(), b.data() + b.size());
}

// The file tpm2_makecredential writes and tpm2_activatecredential reads:
// magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
Bytes Tpm2ToolsCredentialFile(const MadeCredential& c) {
  Bytes out = {0xba, 0xdc, 0xc0, 0xde, 0x00, 0x00, 0x00, 0x01};
  out.insert(out.end(), c.credential_blob.begin(), c.credential_blob.end());
  out.insert(out.end(), c.encrypted_secret.begin(), c.encrypted_secret.end());
  return out;
}

// SP 800-108 counter-mode HMAC written out plainly, to check Kdfa's use of
// OpenSSL's KBKDF parameters (separator, L, context order).
Bytes ReferenceKdfa(const char* digest, const Bytes& key,
                    std::string_view label, const Bytes& context_u,
                    const Bytes& context_v, uint32_t bits) {
  Bytes out;
  for (uint32_t i = 1; out.size() < bits / 8; ++i) {
    Bytes msg = {static_cast<uint8_t>(i >> 24), static_cast<uint8_t>(i >> 16),
                 static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)};
    msg.insert(msg.end(), label.begin(), label.end());
    msg.push_back(0);
    msg.insert(msg.end(), context_u.begin(), context_u.end());
    msg.insert(msg.end(), context_v.begin(), context_v.end());
    for (int shift : {24, 16, 8, 0}) {
      msg.push_back(static_cast<uint8_t>(bits >> shift));
    }
    uint8_t mac[EVP_MAX_MD_SIZE];
    size_t mac_len = 0;
    EVP_Q_mac(nullptr, "HMAC", nullptr, digest, nullptr, key.data(), key.size(),
              msg.data(), msg.size(), mac, sizeof(mac), &mac_len);
    out.insert(out.end(), mac, mac + mac_len);
  }
  out.resize(bits / 8);
  return out;
}

TEST(CredentialKdfaTest, MatchesTheSp800108Construction) {
  const Bytes key = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                     12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                     23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  const SecureBuffer secure_key = SecureBuffer::CopyOf(key);
  const Bytes name = {0x00, 0x0b, 0xaa, 0xbb, 0xcc};
  const Bytes other = {0x42};
  struct Case {
    TPMI_ALG_HASH hash;
    const char* digest;
    std::string_view label;
    Bytes u, v;
    uint32_t bits;
  };
  const Case cases[] = {
      {TPM2_ALG_SHA256, "SHA256", "STORAGE", name, {}, 128},
      {TPM2_ALG_SHA256, "SHA256", "INTEGRITY", {}, {}, 256},
      {TPM2_ALG_SHA256, "SHA256", "STORAGE", name, other, 520},  // 3 blocks
      {TPM2_ALG_SHA384, "SHA384", "INTEGRITY", {}, {}, 384},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.label) + " " + std::to_string(c.bits));
    auto got = Kdfa(c.hash, secure_key, c.label, c.u, c.v, c.bits);
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_EQ(ToBytes(*got),
              ReferenceKdfa(c.digest, key, c.label, c.u, c.v, c.bits));
  }
  // Label and context separate: moving a byte across changes the key.
  auto a = Kdfa(TPM2_ALG_SHA256, secure_key, "STORAGE", name, {}, 128);
  auto b = Kdfa(TPM2_ALG_SHA256, secure_key, "STORAGE", {}, name, 128);
  auto c = Kdfa(TPM2_ALG_SHA256, secure_key, "STORAG", name, {}, 128);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(a->Equals(*b));  // contextU || contextV is one string
  EXPECT_FALSE(a->Equals(*c));
  EXPECT_FALSE(Kdfa(TPM2_ALG_SHA256, secure_key, "X", {}, {}, 12).ok());
  EXPECT_FALSE(Kdfa(TPM2_ALG_NULL, secure_key, "X", {}, {}, 128).ok());
}

class CredentialTest : public ::testing::Test {
 protected:
  TpmPublic ek_ = MustParsePublic(ReadBytes(FixtureDir() + "/ek.pub"));
  Bytes ak_name_ = ReadBytes(FixtureDir() + "/ak.name");
};

TEST_F(CredentialTest, OutputsAreWellFormedAndFresh) {
  const SecureBuffer secret = Secret(32);
  auto a = MakeCredential(ek_, ak_name_, secret);
  auto b = MakeCredential(ek_, ak_name_, secret);
  ASSERT_TRUE(a.ok()) << a.error().message;
  ASSERT_TRUE(b.ok()) << b.error().message;
  // TPM2B_ENCRYPTED_SECRET: an RSA-2048 ciphertext.
  EXPECT_EQ(a->encrypted_secret.size(), 2u + 256u);
  // TPM2B_ID_OBJECT: size || TPM2B_DIGEST(HMAC-SHA256) || encIdentity (the
  // secret's TPM2B_DIGEST encrypted, as long as the plaintext in CFB).
  ASSERT_EQ(a->credential_blob.size(), 2u + 2u + 32u + 2u + 32u);
  TPM2B_ID_OBJECT id{};
  size_t off = 0;
  EXPECT_EQ(
      Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(a->credential_blob.data(),
                                        a->credential_blob.size(), &off, &id),
      TSS2_RC_SUCCESS);
  EXPECT_EQ(off, a->credential_blob.size());
  TPM2B_ENCRYPTED_SECRET es{};
  off = 0;
  EXPECT_EQ(
      Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(
          a->encrypted_secret.data(), a->encrypted_secret.size(), &off, &es),
      TSS2_RC_SUCCESS);
  EXPECT_EQ(off, a->encrypted_secret.size());
  // A fresh seed each time: nothing repeats.
  EXPECT_NE(a->encrypted_secret, b->encrypted_secret);
  EXPECT_NE(a->credential_blob, b->credential_blob);
  // The secret does not appear in clear.
  const Bytes s = ToBytes(secret);
  EXPECT_EQ(std::search(a->credential_blob.begin(), a->credential_blob.end(),
                        s.begin(), s.end()),
            a->credential_blob.end());
}

TEST_F(CredentialTest, RefusesBadInputs) {
  // Secret sizes: 1..32 for a SHA-256 nameAlg.
  EXPECT_TRUE(MakeCredential(ek_, ak_name_, Secret(1)).ok());
  auto too_big = MakeCredential(ek_, ak_name_, Secret(33));
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(MakeCredential(ek_, ak_name_, SecureBuffer()).ok());
  // Names: an algorithm and a digest of its size.
  Bytes short_name(ak_name_.begin(), ak_name_.end() - 1);
  auto bad_name = MakeCredential(ek_, short_name, Secret(16));
  ASSERT_FALSE(bad_name.ok());
  EXPECT_EQ(bad_name.error().code, ErrorCode::kInvalidArgument);
  Bytes unknown_alg = ak_name_;
  unknown_alg[1] = 0x12;  // SM3_256: not supported here
  EXPECT_FALSE(MakeCredential(ek_, unknown_alg, Secret(16)).ok());
  EXPECT_FALSE(MakeCredential(ek_, Bytes{}, Secret(16)).ok());
  // A signing key (the AK itself) cannot protect a credential.
  TpmPublic ak = MustParsePublic(ReadBytes(FixtureDir() + "/ak.pub"));
  auto wrong_key = MakeCredential(ak, ak_name_, Secret(16));
  ASSERT_FALSE(wrong_key.ok());
  EXPECT_EQ(wrong_key.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(MakeCredential(TpmPublic(), ak_name_, Secret(16)).ok());
}

// The fixture AK's P-256 key reshaped as a restricted decryption key with
// `symmetric`: what an ECC EK looks like to MakeCredential.
TpmPublic EccEkShape(TPMT_SYM_DEF_OBJECT symmetric) {
  TpmPublic ak = MustParsePublic(ReadBytes(FixtureDir() + "/ak.pub"));
  TPM2B_PUBLIC pub{};
  pub.publicArea = ak.area;
  TPMT_PUBLIC& a = pub.publicArea;
  a.objectAttributes =
      (a.objectAttributes & ~TPMA_OBJECT_SIGN_ENCRYPT) | TPMA_OBJECT_DECRYPT;
  a.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  a.parameters.eccDetail.symmetric = symmetric;
  uint8_t wire[sizeof(TPM2B_PUBLIC)];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, wire, sizeof(wire), &off),
            TSS2_RC_SUCCESS);
  return MustParsePublic(Bytes(wire, wire + off));
}

TEST_F(CredentialTest, EccEkSecretIsAnEphemeralPointOnTheCurve) {
  TPMT_SYM_DEF_OBJECT aes{};
  aes.algorithm = TPM2_ALG_AES;
  aes.keyBits.aes = 128;
  aes.mode.aes = TPM2_ALG_CFB;
  TpmPublic ecc_ek = EccEkShape(aes);
  ASSERT_TRUE(IsEndorsementKeyShape(ecc_ek));
  auto a = MakeCredential(ecc_ek, ak_name_, Secret(32));
  auto b = MakeCredential(ecc_ek, ak_name_, Secret(32));
  ASSERT_TRUE(a.ok()) << a.error().message;
  ASSERT_TRUE(b.ok()) << b.error().message;
  // TPM2B_ENCRYPTED_SECRET { TPMS_ECC_POINT { x(32), y(32) } }.
  ASSERT_EQ(a->encrypted_secret.size(), 2u + 2u + 32u + 2u + 32u);
  TPMS_ECC_POINT point{};
  size_t off = 2;
  ASSERT_EQ(
      Tss2_MU_TPMS_ECC_POINT_Unmarshal(
          a->encrypted_secret.data(), a->encrypted_secret.size(), &off, &point),
      TSS2_RC_SUCCESS);
  EXPECT_EQ(off, a->encrypted_secret.size());
  // On the curve: it loads as the point of a P-256 key (ParseTpm2bPublic
  // checks that).
  TpmPublic fixture_ak = MustParsePublic(ReadBytes(FixtureDir() + "/ak.pub"));
  TPM2B_PUBLIC as_key{};
  as_key.publicArea = fixture_ak.area;
  as_key.publicArea.unique.ecc = point;
  uint8_t wire[sizeof(TPM2B_PUBLIC)];
  off = 0;
  ASSERT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&as_key, wire, sizeof(wire), &off),
            TSS2_RC_SUCCESS);
  EXPECT_TRUE(ParseTpm2bPublic(Bytes(wire, wire + off)).ok());
  // A fresh ephemeral key each time.
  EXPECT_NE(a->encrypted_secret, b->encrypted_secret);
  // A symmetric definition a TPM would not use for credentials.
  TPMT_SYM_DEF_OBJECT xor_sym{};
  xor_sym.algorithm = TPM2_ALG_XOR;
  xor_sym.keyBits.exclusiveOr = TPM2_ALG_SHA256;
  auto refused = MakeCredential(EccEkShape(xor_sym), ak_name_, Secret(16));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
}

class CredentialTpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = SwtpmMissingReason(); !why.empty()) {
      GTEST_SKIP() << why;
    }
    ASSERT_EQ(tpm_.StartWithEkAndAk(), "");
    ek_ = MustParsePublic(tpm_.Read("ek.pub"));
    ak_ = MustParsePublic(tpm_.Read("ak.pub"));
    // Our Name is the TPM's (tpm2_createak -n).
    ASSERT_EQ(ak_.name, tpm_.Read("ak.name"));
  }

  // Writes `c` for tpm2-tools and activates it with KEY.ctx; "" on success
  // (the recovered secret in *recovered), else the tool's output.
  std::string Activate(const MadeCredential& c, const std::string& key,
                       Bytes* recovered, const std::string& ek = "ek") {
    const std::string file = "cred-" + std::to_string(++count_) + ".bin";
    const std::string out = "secret-" + std::to_string(count_) + ".bin";
    if (!WriteBytes(tpm_.Path(file), Tpm2ToolsCredentialFile(c))) {
      return "cannot write " + file;
    }
    std::string e = tpm_.ActivateCredential(key, file, out, ek);
    if (!e.empty()) return e;
    *recovered = tpm_.Read(out);
    return "";
  }

  Swtpm tpm_;
  TpmPublic ek_;
  TpmPublic ak_;
  int count_ = 0;
};

TEST_F(CredentialTpmTest, TheTpmRecoversExactlyTheSecret) {
  for (size_t size : {1u, 16u, 32u}) {
    SCOPED_TRACE(size);
    const SecureBuffer secret = Secret(size);
    auto made = MakeCredential(ek_, ak_.name, secret);
    ASSERT_TRUE(made.ok()) << made.error().message;
    Bytes recovered;
    ASSERT_EQ(Activate(*made, "ak", &recovered), "");
    EXPECT_EQ(recovered, ToBytes(secret));
  }
}

TEST_F(CredentialTpmTest, TheTpmRefusesACredentialForAnotherAkName) {
  ASSERT_EQ(tpm_.CreateAk("ak2", "-G ecc -g sha256 -s ecdsa"), "");
  const Bytes ak2_name = tpm_.Read("ak2.name");
  ASSERT_NE(ak2_name, ak_.name);
  const SecureBuffer secret = Secret(32);
  auto made = MakeCredential(ek_, ak2_name, secret);
  ASSERT_TRUE(made.ok()) << made.error().message;
  // Activated with the AK it was not made for: the TPM's integrity check
  // (the HMAC covers the Name) fails.
  Bytes recovered;
  std::string e = Activate(*made, "ak", &recovered);
  EXPECT_NE(e, "");
  EXPECT_NE(e.find("integrity"), std::string::npos) << e;
  // The AK it was made for recovers it (the credential itself is good).
  ASSERT_EQ(Activate(*made, "ak2", &recovered), "");
  EXPECT_EQ(recovered, ToBytes(secret));
}

TEST_F(CredentialTpmTest, AnotherTpmCannotActivateIt) {
  // Made for the other TPM's EK, with this TPM's AK name: this TPM cannot
  // decrypt the seed.
  Swtpm other;
  std::string why;
  ASSERT_TRUE(other.Start(&why)) << why;
  ASSERT_EQ(other.CreateEk(), "");
  TpmPublic other_ek = MustParsePublic(other.Read("ek.pub"));
  ASSERT_NE(other_ek.name, ek_.name);
  auto made = MakeCredential(other_ek, ak_.name, Secret(32));
  ASSERT_TRUE(made.ok()) << made.error().message;
  Bytes recovered;
  EXPECT_NE(Activate(*made, "ak", &recovered), "");
  EXPECT_TRUE(recovered.empty());
}

TEST_F(CredentialTpmTest, TheTpmRefusesAnAlteredCredential) {
  const SecureBuffer secret = Secret(32);
  auto made = MakeCredential(ek_, ak_.name, secret);
  ASSERT_TRUE(made.ok()) << made.error().message;
  // One bit of the integrity HMAC, one of encIdentity, one of the seed.
  for (size_t where : {size_t{5}, made->credential_blob.size() - 1}) {
    MadeCredential altered = *made;
    altered.credential_blob[where] ^= 0x01;
    Bytes recovered;
    EXPECT_NE(Activate(altered, "ak", &recovered), "") << "byte " << where;
  }
  MadeCredential altered = *made;
  altered.encrypted_secret[100] ^= 0x01;
  Bytes recovered;
  EXPECT_NE(Activate(altered, "ak", &recovered), "");
  // Untouched, it works on this TPM.
  ASSERT_EQ(Activate(*made, "ak", &recovered), "");
  EXPECT_EQ(recovered, ToBytes(secret));
}

TEST_F(CredentialTpmTest, TheTpmRecoversTheSecretWithAnEccEk) {
  // The TCG ECC EK (NIST P-256, AES-128-CFB, SHA-256) and an AK under it.
  ASSERT_EQ(tpm_.Run("tpm2_createek -c ekecc.ctx -G ecc -u ekecc.pub"), "");
  ASSERT_EQ(tpm_.Run("tpm2_createak -C ekecc.ctx -c akecc.ctx -G ecc "
                     "-g sha256 -s ecdsa -u akecc.pub -n akecc.name"),
            "");
  TpmPublic ecc_ek = MustParsePublic(tpm_.Read("ekecc.pub"));
  ASSERT_EQ(ecc_ek.area.type, TPM2_ALG_ECC);
  ASSERT_TRUE(IsEndorsementKeyShape(ecc_ek));
  const Bytes akecc_name = tpm_.Read("akecc.name");
  const SecureBuffer secret = Secret(32);
  auto made = MakeCredential(ecc_ek, akecc_name, secret);
  ASSERT_TRUE(made.ok()) << made.error().message;
  Bytes recovered;
  ASSERT_EQ(Activate(*made, "akecc", &recovered, "ekecc"), "");
  EXPECT_EQ(recovered, ToBytes(secret));
  // Made for the other AK's Name: refused by the TPM.
  auto other = MakeCredential(ecc_ek, ak_.name, secret);
  ASSERT_TRUE(other.ok()) << other.error().message;
  recovered.clear();
  EXPECT_NE(Activate(*other, "akecc", &recovered, "ekecc"), "");
  EXPECT_TRUE(recovered.empty());
}

}  // namespace
}  // namespace vcrypt
