// The host side of attestation against a real software TPM (swtpm):
// keys, quotes and credential activation through tpm2-tss ESAPI, checked
// against tpm2-tools where the tools are the reference (the default EK,
// offline MakeCredential).
#include "keyproviders/trusted/tpm.h"

#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <tss2/tss2_mu.h>

#include <fstream>
#include <iterator>

#include "common/hex.h"
#include "tests/unit/swtpm.h"

namespace vcrypt {
namespace {

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void WriteBytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()),
             static_cast<std::streamsize>(b.size()));
}
std::vector<uint8_t> Sha256(const std::vector<uint8_t>& b) {
  std::vector<uint8_t> h(32);
  SHA256(b.data(), b.size(), h.data());
  return h;
}
// TPM name of a TPM2B_PUBLIC: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC).
std::vector<uint8_t> NameOf(const std::vector<uint8_t>& tpm2b_public) {
  std::vector<uint8_t> body(tpm2b_public.begin() + 2, tpm2b_public.end());
  std::vector<uint8_t> name = {0x00, 0x0b};
  auto h = Sha256(body);
  name.insert(name.end(), h.begin(), h.end());
  return name;
}

class TpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!swtpm_.Start(&why)) GTEST_SKIP() << why;
    auto t = Tpm::Open(swtpm_.Tcti());
    ASSERT_TRUE(t.ok()) << t.error().message;
    tpm_.emplace(std::move(t).value());
  }
  std::string File(const std::string& name) {
    return swtpm_.dir() + "/" + name;
  }

  testing::Swtpm swtpm_;
  std::optional<Tpm> tpm_;
};

// The EK is the TCG profile's default RSA EK, the same key tpm2_createek
// makes (and an EK certificate certifies).
TEST_F(TpmTest, EkIsTheProfileDefaultEk) {
  auto ek = tpm_->EkPublic();
  ASSERT_TRUE(ek.ok()) << ek.error().message;
  ASSERT_EQ(swtpm_.Tool("tpm2_createek -c " + File("ek.ctx") + " -G rsa -u " +
                        File("ek.pub")),
            0);
  EXPECT_EQ(*ek, ReadBytes(File("ek.pub")));
  auto none = tpm_->EkCertificate();
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_FALSE(none->has_value()) << "a plain swtpm has no EK certificate";
}

TEST_F(TpmTest, AkIsStableRestrictedSigningP256) {
  auto ak = tpm_->AkPublic();
  ASSERT_TRUE(ak.ok()) << ak.error().message;
  auto again = Tpm::Open(swtpm_.Tcti());
  ASSERT_TRUE(again.ok());
  auto ak2 = again->AkPublic();
  ASSERT_TRUE(ak2.ok());
  EXPECT_EQ(*ak, *ak2) << "a primary from the same template is the same key";
  TPM2B_PUBLIC pub = {};
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPM2B_PUBLIC_Unmarshal(ak->data(), ak->size(), &off, &pub),
            0u);
  EXPECT_EQ(off, ak->size());
  EXPECT_EQ(pub.publicArea.type, TPM2_ALG_ECC);
  EXPECT_EQ(pub.publicArea.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
  const auto a = pub.publicArea.objectAttributes;
  EXPECT_TRUE(a & TPMA_OBJECT_RESTRICTED);
  EXPECT_TRUE(a & TPMA_OBJECT_SIGN_ENCRYPT);
  EXPECT_FALSE(a & TPMA_OBJECT_DECRYPT);
  EXPECT_TRUE(a & TPMA_OBJECT_FIXEDTPM);
}

TEST_F(TpmTest, QuoteCarriesTheNonceAndTheDigestOfTheValuesRead) {
  // PCR 7 extended first, so the values are not all zero.
  ASSERT_EQ(swtpm_.Tool("tpm2_pcrextend 7:sha256=" + std::string(64, 'a')), 0);
  std::vector<uint8_t> nonce(32);
  for (size_t i = 0; i < nonce.size(); ++i)
    nonce[i] = static_cast<uint8_t>(i * 7);
  auto q = tpm_->QuotePcrs(nonce, kTpmAlgSha256, {7, 0, 1, 2, 3});
  ASSERT_TRUE(q.ok()) << q.error().message;
  ASSERT_EQ(q->pcr_values.size(), 5u);
  EXPECT_NE(q->pcr_values[4], std::vector<uint8_t>(32, 0)) << "PCR 7, extended";
  EXPECT_EQ(q->pcr_values[0], std::vector<uint8_t>(32, 0))
      << "PCR 0 of a fresh swtpm";
  TPMS_ATTEST attest = {};
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMS_ATTEST_Unmarshal(q->attest.data(), q->attest.size(),
                                          &off, &attest),
            0u);
  EXPECT_EQ(off, q->attest.size());
  EXPECT_EQ(attest.magic, TPM2_GENERATED_VALUE);
  EXPECT_EQ(attest.type, TPM2_ST_ATTEST_QUOTE);
  EXPECT_EQ(
      std::vector<uint8_t>(attest.extraData.buffer,
                           attest.extraData.buffer + attest.extraData.size),
      nonce);
  std::vector<uint8_t> all;
  for (const auto& v : q->pcr_values) all.insert(all.end(), v.begin(), v.end());
  const auto& d = attest.attested.quote.pcrDigest;
  EXPECT_EQ(std::vector<uint8_t>(d.buffer, d.buffer + d.size), Sha256(all));
  TPMT_SIGNATURE sig = {};
  off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Unmarshal(q->signature.data(),
                                             q->signature.size(), &off, &sig),
            0u);
  EXPECT_EQ(sig.sigAlg, TPM2_ALG_ECDSA);
  EXPECT_EQ(sig.signature.ecdsa.hash, TPM2_ALG_SHA256);
}

// tpm2-tools' offline MakeCredential is the reference: what it makes for
// this EK and this AK's name, only this TPM's EK+AK can open.
TEST_F(TpmTest, ActivateCredentialRecoversTheSecretOnlyForItsAk) {
  auto ek = tpm_->EkPublic();
  auto ak = tpm_->AkPublic();
  ASSERT_TRUE(ek.ok() && ak.ok());
  WriteBytes(File("ek.pub"), *ek);
  const std::vector<uint8_t> secret = {'s', 'e', 'c', 'r', 'e',
                                       't', '-', '4', '2'};
  WriteBytes(File("secret"), secret);
  auto make = [&](const std::vector<uint8_t>& name, const std::string& out) {
    return swtpm_.Tool("tpm2_makecredential -T none -u " + File("ek.pub") +
                       " -s " + File("secret") + " -n " + HexEncode(name) +
                       " -o " + File(out));
  };
  ASSERT_EQ(make(NameOf(*ak), "cred"), 0);
  // tpm2-tools' file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
  // TPM2B_ENCRYPTED_SECRET.
  auto split = [](const std::vector<uint8_t>& f, std::vector<uint8_t>* blob,
                  std::vector<uint8_t>* enc) {
    TPM2B_ID_OBJECT id = {};
    size_t off = 8;
    if (Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(f.data(), f.size(), &off, &id) != 0)
      return false;
    blob->assign(f.begin() + 8, f.begin() + static_cast<long>(off));
    enc->assign(f.begin() + static_cast<long>(off), f.end());
    return true;
  };
  std::vector<uint8_t> blob, enc;
  ASSERT_TRUE(split(ReadBytes(File("cred")), &blob, &enc));
  auto got = tpm_->ActivateCredential(blob, enc);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(std::vector<uint8_t>(got->data(), got->data() + got->size()),
            secret);

  // Made for another AK's name: the TPM's integrity check fails.
  auto other = NameOf(*ak);
  other.back() ^= 1;
  ASSERT_EQ(make(other, "cred2"), 0);
  ASSERT_TRUE(split(ReadBytes(File("cred2")), &blob, &enc));
  auto refused = tpm_->ActivateCredential(blob, enc);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kCrypto);

  EXPECT_EQ(tpm_->ActivateCredential({}, enc).error().code,
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vcrypt
