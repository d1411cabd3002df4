// TPM public keys and quote verification (trustauthority/quote.h). Over 800
// lines: one test per refusal rule of the TPM structures, sharing the
// fixtures and the structure builders.
//
// Three kinds of tests:
//  - TpmPublicFixture* / QuoteFixture*: the quote captured from swtpm in
//    tests/fixtures/tpm/ (make_fixtures.sh); no TPM needed.
//  - QuoteForged*: attestations built and signed here with a software key,
//    for faults a real TPM cannot be made to produce (see SoftwareAk).
//  - QuoteTpm* / TpmPublicTpm*: a real software TPM (swtpm) driven with
//    tpm2-tools; skipped when those are not installed.
#include "trustauthority/quote.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/handles.h"
#include "common/hex.h"
#include "common/random.h"
#include "keyproviders/trusted/tpm.h"
#include "tests/unit/swtpm.h"

namespace vcrypt {
namespace {

using testing::FixtureDir;
using testing::ReadBytes;
using testing::Swtpm;
using testing::SwtpmMissingReason;

using Bytes = std::vector<uint8_t>;

constexpr TPMA_OBJECT kAkAttributes =
    TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_FIXEDTPM |
    TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
    TPMA_OBJECT_USERWITHAUTH;

Bytes Sha256(std::string_view s) {
  Bytes out(32);
  EVP_Digest(s.data(), s.size(), out.data(), nullptr, EVP_sha256(), nullptr);
  return out;
}

Bytes Sha256(std::span<const uint8_t> s) {
  Bytes out(32);
  EVP_Digest(s.data(), s.size(), out.data(), nullptr, EVP_sha256(), nullptr);
  return out;
}

Bytes RandomNonce() {
  Bytes n(32);
  EXPECT_TRUE(FillRandom(n).ok());
  return n;
}

std::vector<Bytes> SplitValues(const Bytes& concatenated, size_t size) {
  std::vector<Bytes> out;
  for (size_t i = 0; i + size <= concatenated.size(); i += size) {
    out.emplace_back(concatenated.begin() + i, concatenated.begin() + i + size);
  }
  return out;
}

TpmPublic MustParsePublic(const Bytes& wire) {
  auto p = ParseTpm2bPublic(wire);
  EXPECT_TRUE(p.ok()) << p.error().message;
  if (!p.ok()) return TpmPublic();
  return std::move(p).value();
}

PcrSelection Sha256Bank(std::vector<uint32_t> pcrs) {
  return PcrSelection{TPM2_ALG_SHA256, std::move(pcrs)};
}

const PcrSelection kBaseline = Sha256Bank({0, 1, 2, 3, 7});

// OK only when `r` failed with `code` and a message containing `what`: a
// refusal for another reason than the one under test is a test failure.
template <typename T>
::testing::AssertionResult Refused(const Result<T>& r, ErrorCode code,
                                   std::string_view what) {
  if (r.ok()) return ::testing::AssertionFailure() << "accepted";
  if (r.error().code != code) {
    return ::testing::AssertionFailure()
           << "code " << static_cast<int>(r.error().code) << ": "
           << r.error().message;
  }
  if (r.error().message.find(what) == std::string::npos) {
    return ::testing::AssertionFailure()
           << "refused for another reason: " << r.error().message;
  }
  if (r.error().message.find('\n') != std::string::npos) {
    return ::testing::AssertionFailure() << "message is not one line";
  }
  return ::testing::AssertionSuccess() << r.error().message;
}
::testing::AssertionResult Refused(const Status& s, ErrorCode code,
                                   std::string_view what) {
  if (s.ok()) return ::testing::AssertionFailure() << "accepted";
  if (s.error().code != code ||
      s.error().message.find(what) == std::string::npos) {
    return ::testing::AssertionFailure()
           << "code " << static_cast<int>(s.error().code) << ": "
           << s.error().message;
  }
  return ::testing::AssertionSuccess();
}

// `parse` refuses every truncation of `wire`, and `wire` with a byte more
// (kInvalidArgument, "trailing").
template <typename Parse>
void ExpectRefusesTruncatedAndTrailing(const Bytes& wire, Parse parse) {
  for (size_t n = 0; n < wire.size(); ++n) {
    Bytes cut(wire.begin(), wire.begin() + n);
    EXPECT_FALSE(parse(cut).ok()) << "truncated to " << n;
  }
  Bytes trailing = wire;
  trailing.push_back(0);
  EXPECT_TRUE(
      Refused(parse(trailing), ErrorCode::kInvalidArgument, "trailing"));
}

constexpr std::string_view kBadSignature = "does not verify with the enrolled";

// ---------------------------------------------------------------------------
// The captured fixture (no TPM needed)
// ---------------------------------------------------------------------------

struct Fixture {
  Bytes ak_pub = ReadBytes(FixtureDir() + "/ak.pub");
  Bytes ak_name = ReadBytes(FixtureDir() + "/ak.name");
  Bytes ek_pub = ReadBytes(FixtureDir() + "/ek.pub");
  Bytes ek_name = ReadBytes(FixtureDir() + "/ek.name");
  Bytes nonce = ReadBytes(FixtureDir() + "/nonce.bin");
  Bytes attest = ReadBytes(FixtureDir() + "/attest.bin");
  Bytes sig = ReadBytes(FixtureDir() + "/sig.bin");
  Bytes pcrs = ReadBytes(FixtureDir() + "/pcrs.bin");

  std::string Text(const std::string& name) const {
    Bytes b = ReadBytes(FixtureDir() + "/" + name);
    return std::string(b.begin(), b.end());
  }
  QuoteCheck Check() const {
    QuoteCheck c;
    c.ak = MustParsePublic(ak_pub);
    c.nonce = nonce;
    c.expected = kBaseline;
    c.pcr_values = SplitValues(pcrs, 32);
    return c;
  }
};

class TpmPublicFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(f_.ak_pub.empty()) << "no fixtures in " << FixtureDir();
  }
  Fixture f_;
};

TEST_F(TpmPublicFixtureTest, AkNameKeyAndShapeMatchTpm2Tools) {
  TpmPublic ak = MustParsePublic(f_.ak_pub);
  // The Name the TPM itself reported (tpm2_createak -n).
  EXPECT_EQ(HexEncode(ak.name), HexEncode(f_.ak_name));
  EXPECT_EQ(ak.wire, f_.ak_pub);
  EXPECT_EQ(ak.area.type, TPM2_ALG_ECC);
  EXPECT_TRUE(IsRestrictedSigningKey(ak));
  EXPECT_FALSE(IsEndorsementKeyShape(ak));
  // The same SubjectPublicKeyInfo as tpm2_readpublic -f pem.
  auto pem = PublicKeyPem(ak);
  ASSERT_TRUE(pem.ok()) << pem.error().message;
  EXPECT_EQ(*pem, f_.Text("ak.pem"));
}

TEST_F(TpmPublicFixtureTest, EkNameKeyAndShapeMatchTpm2Tools) {
  TpmPublic ek = MustParsePublic(f_.ek_pub);
  EXPECT_EQ(HexEncode(ek.name), HexEncode(f_.ek_name));
  EXPECT_EQ(ek.area.type, TPM2_ALG_RSA);
  ASSERT_NE(ek.key, nullptr);
  EXPECT_EQ(EVP_PKEY_get_bits(ek.key.get()), 2048);
  EXPECT_TRUE(IsEndorsementKeyShape(ek));
  EXPECT_FALSE(IsRestrictedSigningKey(ek));
  auto pem = PublicKeyPem(ek);
  ASSERT_TRUE(pem.ok()) << pem.error().message;
  EXPECT_EQ(*pem, f_.Text("ek.pem"));
  // DER is the same key as the PEM.
  auto der = PublicKeyDer(ek);
  ASSERT_TRUE(der.ok());
  BioPtr bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  EvpPkeyPtr from_pem(
      PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_NE(from_pem, nullptr);
  unsigned char* raw = nullptr;
  const int len = i2d_PUBKEY(from_pem.get(), &raw);
  OpensslBytePtr owner(raw);
  EXPECT_EQ(Bytes(raw, raw + len), *der);
}

TEST_F(TpmPublicFixtureTest, RefusesTruncatedTrailingAndNonCanonical) {
  ExpectRefusesTruncatedAndTrailing(
      f_.ak_pub, [](const Bytes& b) { return ParseTpm2bPublic(b); });
  // A TPM2B size that claims one more byte than the TPMT_PUBLIC has, with
  // that byte present: the content no longer re-marshals to the same bytes.
  Bytes longer = f_.ak_pub;
  longer.push_back(0);
  const size_t size = (longer[0] << 8 | longer[1]) + 1;
  longer[0] = static_cast<uint8_t>(size >> 8);
  longer[1] = static_cast<uint8_t>(size);
  EXPECT_FALSE(ParseTpm2bPublic(longer).ok());
}

TEST_F(TpmPublicFixtureTest, RefusesPointNotOnCurve) {
  Bytes bad = f_.ak_pub;
  bad.back() ^= 1;  // last byte of unique.ecc.y
  EXPECT_TRUE(Refused(ParseTpm2bPublic(bad), ErrorCode::kInvalidArgument,
                      "not a valid key"));
}

TEST_F(TpmPublicFixtureTest, CopySharesTheKeyAndKeepsTheName) {
  TpmPublic ak = MustParsePublic(f_.ak_pub);
  TpmPublic copy = ak;
  EXPECT_EQ(copy.key.get(), ak.key.get());
  EXPECT_EQ(copy.name, ak.name);
  TpmPublic assigned;
  assigned = copy;
  ak = TpmPublic();  // the copies keep their reference
  EXPECT_EQ(EVP_PKEY_eq(assigned.key.get(), copy.key.get()), 1);
}

// A certificate for `key`, issued by a throwaway CA key (the chain is not
// what CheckCertificateKey checks).
X509Ptr CertificateFor(EVP_PKEY* key) {
  EvpPkeyPtr issuer(EVP_EC_gen("P-256"));
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key);
  X509_sign(cert.get(), issuer.get(), EVP_sha256());
  return cert;
}

TEST_F(TpmPublicFixtureTest, CertificateKeyCheck) {
  TpmPublic ek = MustParsePublic(f_.ek_pub);
  TpmPublic ak = MustParsePublic(f_.ak_pub);
  X509Ptr ek_cert = CertificateFor(ek.key.get());
  ASSERT_NE(ek_cert, nullptr);
  EXPECT_TRUE(CheckCertificateKey(ek, ek_cert.get()).ok());
  EXPECT_TRUE(Refused(CheckCertificateKey(ak, ek_cert.get()),
                      ErrorCode::kCrypto, "another key"));
  // Another RSA key: same type, different modulus.
  EvpPkeyPtr other(EVP_RSA_gen(2048));
  X509Ptr other_cert = CertificateFor(other.get());
  EXPECT_TRUE(Refused(CheckCertificateKey(ek, other_cert.get()),
                      ErrorCode::kCrypto, "another key"));
}

class QuoteFixtureTest : public TpmPublicFixtureTest {};

TEST_F(QuoteFixtureTest, ParsesCapturedQuote) {
  auto q = ParseQuote(f_.attest);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->magic, TPM2_GENERATED_VALUE);
  EXPECT_EQ(q->type, TPM2_ST_ATTEST_QUOTE);
  EXPECT_EQ(q->extra_data, f_.nonce);
  ASSERT_EQ(q->selection.size(), 1u);
  EXPECT_EQ(q->selection[0], kBaseline);
  EXPECT_EQ(q->pcr_digest, Sha256(f_.pcrs));
  // make_fixtures.sh neither restarts the TPM nor powers it off uncleanly.
  EXPECT_EQ(q->clock.restart_count, 0u);
  EXPECT_TRUE(q->clock.safe);
  EXPECT_GT(q->clock.clock, 0u);
  EXPECT_NE(q->firmware_version, 0u);
  // The signer's qualified name uses the AK's nameAlg (SHA-256).
  ASSERT_EQ(q->qualified_signer.size(), 34u);
  EXPECT_EQ(q->qualified_signer[0], 0x00);
  EXPECT_EQ(q->qualified_signer[1], 0x0b);
}

TEST_F(QuoteFixtureTest, VerifiesCapturedQuote) {
  auto q = VerifyQuote(f_.attest, f_.sig, f_.Check());
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->extra_data, f_.nonce);
  // The PCRs 0 and 7 were extended by make_fixtures.sh; 1, 2, 3 were not.
  const std::vector<Bytes> values = SplitValues(f_.pcrs, 32);
  ASSERT_EQ(values.size(), 5u);
  EXPECT_NE(values[0], Bytes(32, 0));
  EXPECT_EQ(values[1], Bytes(32, 0));
  EXPECT_NE(values[4], Bytes(32, 0));
}

TEST_F(QuoteFixtureTest, RefusesEveryTruncationAndTrailingBytes) {
  ExpectRefusesTruncatedAndTrailing(
      f_.attest, [](const Bytes& b) { return ParseQuote(b); });
  Bytes sig_trailing = f_.sig;
  sig_trailing.push_back(0);
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, sig_trailing, f_.Check()),
                      ErrorCode::kCrypto, "trailing"));
  for (size_t n = 0; n < f_.sig.size(); ++n) {
    Bytes cut(f_.sig.begin(), f_.sig.begin() + n);
    EXPECT_FALSE(VerifyQuote(f_.attest, cut, f_.Check()).ok())
        << "signature truncated to " << n;
  }
}

TEST_F(QuoteFixtureTest, EveryFlippedBitOfTheAttestationBreaksTheSignature) {
  const QuoteCheck check = f_.Check();
  for (size_t i = 0; i < f_.attest.size(); ++i) {
    Bytes altered = f_.attest;
    altered[i] ^= 0x01;
    EXPECT_TRUE(Refused(VerifyQuote(altered, f_.sig, check), ErrorCode::kCrypto,
                        kBadSignature))
        << "byte " << i;
  }
}

TEST_F(QuoteFixtureTest, RefusesWrongNonceAndValuesOnTheCapturedQuote) {
  QuoteCheck check = f_.Check();
  check.nonce[0] ^= 0x80;
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check), ErrorCode::kCrypto,
                      "nonce"));
  check = f_.Check();
  check.pcr_values[2][31] ^= 1;
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check), ErrorCode::kCrypto,
                      "PCR digest"));
}

TEST_F(QuoteFixtureTest, RefusesMalformedCheck) {
  QuoteCheck check = f_.Check();
  check.nonce.clear();
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check),
                      ErrorCode::kInvalidArgument, "nonce"));
  check = f_.Check();
  check.expected.pcrs = {0, 1, 3, 2, 7};
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check),
                      ErrorCode::kInvalidArgument, "ascending"));
  check = f_.Check();
  check.expected.pcrs = {0, 1, 1, 3, 7};
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check),
                      ErrorCode::kInvalidArgument, "ascending"));
  check = f_.Check();
  check.expected.hash = TPM2_ALG_SM3_256;
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check),
                      ErrorCode::kInvalidArgument, "bank"));
  // An EK is no AK: a quote "signed" by a decryption key means nothing.
  check = f_.Check();
  check.ak = MustParsePublic(f_.ek_pub);
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check),
                      ErrorCode::kInvalidArgument, "restricted signing"));
  check.ak = TpmPublic();
  EXPECT_TRUE(Refused(VerifyQuote(f_.attest, f_.sig, check),
                      ErrorCode::kInvalidArgument, "AK"));
}

// ---------------------------------------------------------------------------
// Forged attestations (software key)
// ---------------------------------------------------------------------------

// A software P-256 key dressed as a TPM AK (a TPMT_PUBLIC built here).
//
// This fake exists ONLY to produce faults that a real TPM cannot be made to
// produce on cue: a valid AK signature over attestation bytes with a wrong
// magic, a wrong type, extra banks, a SHA-384 signature, ... A real TPM
// never signs such data with a restricted key, which is precisely why the
// verifier may trust the fields it checks; the tests here show that it
// does check them rather than relying on the signature alone.
class SoftwareAk {
 public:
  explicit SoftwareAk(TPMA_OBJECT attributes = kAkAttributes)
      : key_(EVP_EC_gen("P-256")) {
    uint8_t point[65];
    size_t len = 0;
    EXPECT_EQ(
        EVP_PKEY_get_octet_string_param(key_.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                        point, sizeof(point), &len),
        1);
    EXPECT_EQ(len, 65u);
    // The host's AK template (P-256, ECDSA with SHA-256), with
    // `attributes` and this key's point.
    const Bytes tmpl = AkTemplatePublic();
    TPM2B_PUBLIC pub{};
    size_t off = 0;
    EXPECT_EQ(Tss2_MU_TPM2B_PUBLIC_Unmarshal(tmpl.data(), tmpl.size(), &off,
                                             &pub),
              TSS2_RC_SUCCESS);
    TPMT_PUBLIC& a = pub.publicArea;
    a.objectAttributes = attributes;
    a.unique.ecc.x.size = 32;
    std::memcpy(a.unique.ecc.x.buffer, point + 1, 32);
    a.unique.ecc.y.size = 32;
    std::memcpy(a.unique.ecc.y.buffer, point + 33, 32);
    uint8_t wire[sizeof(TPM2B_PUBLIC)];
    off = 0;
    EXPECT_EQ(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, wire, sizeof(wire), &off),
              TSS2_RC_SUCCESS);
    public_ = MustParsePublic(Bytes(wire, wire + off));
  }

  const TpmPublic& pub() const { return public_; }

  // TPMT_SIGNATURE (ECDSA, `hash`) over `data`.
  Bytes Sign(std::span<const uint8_t> data,
             TPMI_ALG_HASH hash = TPM2_ALG_SHA256) const {
    EvpMdCtxPtr ctx(EVP_MD_CTX_new());
    const EVP_MD* md = hash == TPM2_ALG_SHA384 ? EVP_sha384() : EVP_sha256();
    size_t len = 0;
    EXPECT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key_.get()),
              1);
    EXPECT_EQ(
        EVP_DigestSign(ctx.get(), nullptr, &len, data.data(), data.size()), 1);
    Bytes der(len);
    EXPECT_EQ(
        EVP_DigestSign(ctx.get(), der.data(), &len, data.data(), data.size()),
        1);
    const unsigned char* p = der.data();
    EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(len)));
    TPMT_SIGNATURE t{};
    t.sigAlg = TPM2_ALG_ECDSA;
    t.signature.ecdsa.hash = hash;
    t.signature.ecdsa.signatureR.size = 32;
    t.signature.ecdsa.signatureS.size = 32;
    BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()),
                 t.signature.ecdsa.signatureR.buffer, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()),
                 t.signature.ecdsa.signatureS.buffer, 32);
    uint8_t out[sizeof(TPMT_SIGNATURE)];
    size_t off = 0;
    EXPECT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&t, out, sizeof(out), &off),
              TSS2_RC_SUCCESS);
    return Bytes(out, out + off);
  }

 private:
  EvpPkeyPtr key_;
  TpmPublic public_;
};

void Select(TPMS_PCR_SELECTION& s, TPMI_ALG_HASH hash,
            const std::vector<uint32_t>& pcrs) {
  s = TPMS_PCR_SELECTION{};
  s.hash = hash;
  s.sizeofSelect = 3;
  for (uint32_t p : pcrs) s.pcrSelect[p / 8] |= 1u << (p % 8);
}

Bytes Marshal(const TPMS_ATTEST& a) {
  uint8_t out[sizeof(TPMS_ATTEST)];
  size_t off = 0;
  EXPECT_EQ(Tss2_MU_TPMS_ATTEST_Marshal(&a, out, sizeof(out), &off),
            TSS2_RC_SUCCESS);
  return Bytes(out, out + off);
}

class QuoteForgedTest : public ::testing::Test {
 protected:
  QuoteForgedTest() {
    for (int i = 0; i < 5; ++i) {
      values_.push_back(Sha256("pcr value " + std::to_string(i)));
    }
    check_.ak = ak_.pub();
    check_.nonce = nonce_;
    check_.expected = kBaseline;
    check_.pcr_values = values_;
  }

  // What a TPM would produce for the check above.
  TPMS_ATTEST GoodAttest() const {
    TPMS_ATTEST a{};
    a.magic = TPM2_GENERATED_VALUE;
    a.type = TPM2_ST_ATTEST_QUOTE;
    a.qualifiedSigner.size = static_cast<UINT16>(ak_.pub().name.size());
    std::memcpy(a.qualifiedSigner.name, ak_.pub().name.data(),
                ak_.pub().name.size());
    a.extraData.size = static_cast<UINT16>(nonce_.size());
    std::memcpy(a.extraData.buffer, nonce_.data(), nonce_.size());
    a.clockInfo = {123456, 4, 2, TPM2_YES};
    a.firmwareVersion = 0x0102030405060708;
    a.attested.quote.pcrSelect.count = 1;
    Select(a.attested.quote.pcrSelect.pcrSelections[0], TPM2_ALG_SHA256,
           kBaseline.pcrs);
    Bytes concatenated;
    for (const Bytes& v : values_) {
      concatenated.insert(concatenated.end(), v.begin(), v.end());
    }
    const Bytes digest = Sha256(concatenated);
    a.attested.quote.pcrDigest.size = 32;
    std::memcpy(a.attested.quote.pcrDigest.buffer, digest.data(), 32);
    return a;
  }

  Result<ParsedQuote> SignAndVerify(const Bytes& attest,
                                    TPMI_ALG_HASH hash = TPM2_ALG_SHA256) {
    return VerifyQuote(attest, ak_.Sign(attest, hash), check_);
  }
  Result<ParsedQuote> SignAndVerify(const TPMS_ATTEST& a) {
    return SignAndVerify(Marshal(a));
  }

  SoftwareAk ak_;
  Bytes nonce_ = RandomNonce();
  std::vector<Bytes> values_;
  QuoteCheck check_;
};

// Without this, every refusal below could come from a broken fake.
TEST_F(QuoteForgedTest, WellFormedForgeryIsAccepted) {
  auto q = SignAndVerify(GoodAttest());
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->clock, (ClockInfo{123456, 4, 2, true}));
  EXPECT_EQ(q->firmware_version, 0x0102030405060708u);
  EXPECT_EQ(q->qualified_signer, ak_.pub().name);
}

TEST_F(QuoteForgedTest, RefusesWrongMagic) {
  TPMS_ATTEST a = GoodAttest();
  a.magic = 0xff544348;
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "magic"));
  a.magic = 0;
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "magic"));
}

TEST_F(QuoteForgedTest, RefusesWrongType) {
  // A session audit digest (a type whose body is a plain digest pair) and a
  // time attestation: both a real AK can sign, neither is a quote.
  TPMS_ATTEST a = GoodAttest();
  a.type = TPM2_ST_ATTEST_SESSION_AUDIT;
  a.attested.sessionAudit = TPMS_SESSION_AUDIT_INFO{};
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "not a quote"));
  a = GoodAttest();
  a.type = TPM2_ST_ATTEST_TIME;
  a.attested.time = TPMS_TIME_ATTEST_INFO{};
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "not a quote"));
}

TEST_F(QuoteForgedTest, RefusesExtraBanksAndOtherSelections) {
  // The expected bank plus a sha1 bank (with a PCR, then empty).
  TPMS_ATTEST a = GoodAttest();
  a.attested.quote.pcrSelect.count = 2;
  Select(a.attested.quote.pcrSelect.pcrSelections[1], TPM2_ALG_SHA1, {0});
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "selection"));
  Select(a.attested.quote.pcrSelect.pcrSelections[1], TPM2_ALG_SHA1, {});
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "selection"));
  // The same PCRs of another bank.
  a = GoodAttest();
  Select(a.attested.quote.pcrSelect.pcrSelections[0], TPM2_ALG_SHA384,
         kBaseline.pcrs);
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "selection"));
  // A PCR missing (7), and one more (8).
  a = GoodAttest();
  Select(a.attested.quote.pcrSelect.pcrSelections[0], TPM2_ALG_SHA256,
         {0, 1, 2, 3});
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "selection"));
  Select(a.attested.quote.pcrSelect.pcrSelections[0], TPM2_ALG_SHA256,
         {0, 1, 2, 3, 7, 8});
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "selection"));
  // No bank at all.
  a = GoodAttest();
  a.attested.quote.pcrSelect.count = 0;
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "selection"));
}

TEST_F(QuoteForgedTest, SameSetWithALongerBitmapIsAccepted) {
  // sizeofSelect 4 instead of 3: the same PCRs, so the same selection.
  TPMS_ATTEST a = GoodAttest();
  a.attested.quote.pcrSelect.pcrSelections[0].sizeofSelect = 4;
  auto q = SignAndVerify(a);
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->selection[0], kBaseline);
}

TEST_F(QuoteForgedTest, RefusesSignatureHashOtherThanSha256) {
  EXPECT_TRUE(Refused(SignAndVerify(Marshal(GoodAttest()), TPM2_ALG_SHA384),
                      ErrorCode::kCrypto, "not SHA-256"));
}

TEST_F(QuoteForgedTest, RefusesSchemeThatDoesNotFitTheAk) {
  TPMT_SIGNATURE t{};
  t.sigAlg = TPM2_ALG_RSASSA;
  t.signature.rsassa.hash = TPM2_ALG_SHA256;
  t.signature.rsassa.sig.size = 256;
  uint8_t out[sizeof(TPMT_SIGNATURE)];
  size_t off = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&t, out, sizeof(out), &off),
            TSS2_RC_SUCCESS);
  EXPECT_TRUE(
      Refused(VerifyQuote(Marshal(GoodAttest()), Bytes(out, out + off), check_),
              ErrorCode::kCrypto, "scheme"));
}

TEST_F(QuoteForgedTest, RefusesSignedTrailingBytes) {
  Bytes attest = Marshal(GoodAttest());
  attest.push_back(0x00);
  EXPECT_TRUE(Refused(SignAndVerify(attest), ErrorCode::kCrypto, "malformed"));
}

TEST_F(QuoteForgedTest, RefusesNonceOfOtherLength) {
  TPMS_ATTEST a = GoodAttest();
  a.extraData.size = 31;  // a prefix of the issued nonce
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "nonce"));
  a.extraData.size = 0;
  EXPECT_TRUE(Refused(SignAndVerify(a), ErrorCode::kCrypto, "nonce"));
}

TEST_F(QuoteForgedTest, RefusesWrongValueCountAndSize) {
  Bytes attest = Marshal(GoodAttest());
  Bytes sig = ak_.Sign(attest);
  QuoteCheck check = check_;
  check.pcr_values.pop_back();
  EXPECT_TRUE(Refused(VerifyQuote(attest, sig, check), ErrorCode::kCrypto,
                      "PCR values for"));
  check = check_;
  check.pcr_values[1].push_back(0);
  EXPECT_TRUE(Refused(VerifyQuote(attest, sig, check), ErrorCode::kCrypto,
                      "size of the bank's digest"));
  // Same bytes, cut differently: still the right digest over wrong values.
  check = check_;
  check.pcr_values[0].push_back(check.pcr_values[1][0]);
  check.pcr_values[1].erase(check.pcr_values[1].begin());
  EXPECT_TRUE(Refused(VerifyQuote(attest, sig, check), ErrorCode::kCrypto,
                      "size of the bank's digest"));
}

TEST_F(QuoteForgedTest, ClockCountersMustNotGoBack) {
  const Bytes attest = Marshal(GoodAttest());  // resetCount 4, restartCount 2
  const Bytes sig = ak_.Sign(attest);
  auto with_last = [&](ClockInfo last) {
    QuoteCheck c = check_;
    c.last_clock = last;
    return VerifyQuote(attest, sig, c);
  };
  EXPECT_TRUE(
      Refused(with_last({1, 5, 0, true}), ErrorCode::kCrypto, "resetCount"));
  EXPECT_TRUE(
      Refused(with_last({1, 4, 3, true}), ErrorCode::kCrypto, "restartCount"));
  // Same counters (a second quote in the same boot), later boots, a later
  // restart: accepted. A lower restartCount after a higher resetCount is a
  // reboot, not a replay.
  EXPECT_TRUE(with_last({999999, 4, 2, true}).ok());
  EXPECT_TRUE(with_last({1, 3, 9, true}).ok());
  EXPECT_TRUE(with_last({1, 4, 1, true}).ok());
}

TEST_F(QuoteForgedTest, RefusesAkThatIsNotRestricted) {
  // An unrestricted signing key signs anything, TPM-looking data included.
  SoftwareAk unrestricted(kAkAttributes & ~TPMA_OBJECT_RESTRICTED);
  check_.ak = unrestricted.pub();
  const Bytes attest = Marshal(GoodAttest());
  EXPECT_TRUE(Refused(VerifyQuote(attest, unrestricted.Sign(attest), check_),
                      ErrorCode::kInvalidArgument, "restricted signing"));
}

// ---------------------------------------------------------------------------
// A real (software) TPM
// ---------------------------------------------------------------------------

const char kSelection[] = "sha256:0,1,2,3,7";

class QuoteTpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = SwtpmMissingReason(); !why.empty()) {
      GTEST_SKIP() << why;
    }
    ASSERT_EQ(tpm_.StartWithEkAndAk(), "");
    // Distinct, non-zero values in two of the quoted PCRs.
    ASSERT_EQ(
        tpm_.Run("tpm2_pcrextend 0:sha256=" + HexEncode(Sha256("firmware")) +
                 " 7:sha256=" + HexEncode(Sha256("secure boot"))),
        "");
    ASSERT_EQ(tpm_.Quote("ak.ctx", kSelection, nonce_, "q"), "");
    ak_ = MustParsePublic(tpm_.Read("ak.pub"));
  }

  QuoteCheck Check(const std::string& quote, const TpmPublic& ak) {
    QuoteCheck c;
    c.ak = ak;
    c.nonce = nonce_;
    c.expected = kBaseline;
    c.pcr_values = SplitValues(tpm_.Read(quote + ".pcrs"), 32);
    return c;
  }
  Result<ParsedQuote> Verify(const std::string& quote,
                             const QuoteCheck& check) {
    return VerifyQuote(tpm_.Read(quote + ".attest"), tpm_.Read(quote + ".sig"),
                       check);
  }

  Swtpm tpm_;
  Bytes nonce_ = RandomNonce();
  TpmPublic ak_;
};

TEST_F(QuoteTpmTest, AcceptsEcdsaQuote) {
  auto q = Verify("q", Check("q", ak_));
  ASSERT_TRUE(q.ok()) << q.error().message;
  EXPECT_EQ(q->extra_data, nonce_);
  ASSERT_EQ(q->selection.size(), 1u);
  EXPECT_EQ(q->selection[0], kBaseline);
  // The values the quote vouches for are the TPM's PCRs, read separately.
  ASSERT_EQ(
      tpm_.Run(std::string("tpm2_pcrread ") + kSelection + " -o now.pcrs"), "");
  EXPECT_EQ(tpm_.Read("now.pcrs"), tpm_.Read("q.pcrs"));
  EXPECT_EQ(q->pcr_digest, Sha256(tpm_.Read("q.pcrs")));
}

TEST_F(QuoteTpmTest, AcceptsRsassaAndRsapssQuotes) {
  for (const char* scheme : {"rsassa", "rsapss"}) {
    SCOPED_TRACE(scheme);
    const std::string name = std::string("ak_") + scheme;
    ASSERT_EQ(tpm_.CreateAk(name, std::string("-G rsa -g sha256 -s ") + scheme),
              "");
    ASSERT_EQ(tpm_.Quote(name + ".ctx", kSelection, nonce_, name,
                         std::string("--scheme ") + scheme),
              "");
    TpmPublic rsa_ak = MustParsePublic(tpm_.Read(name + ".pub"));
    EXPECT_EQ(rsa_ak.area.type, TPM2_ALG_RSA);
    auto q = Verify(name, Check(name, rsa_ak));
    EXPECT_TRUE(q.ok()) << q.error().message;
    // The ECC AK did not sign it.
    EXPECT_TRUE(
        Refused(Verify(name, Check(name, ak_)), ErrorCode::kCrypto, "scheme"));
  }
}

TEST_F(QuoteTpmTest, RefusesValuesReadBeforeAnExtend) {
  ASSERT_EQ(
      tpm_.Run(std::string("tpm2_pcrread ") + kSelection + " -o before.pcrs"),
      "");
  ASSERT_EQ(tpm_.Run("tpm2_pcrextend 3:sha256=" + HexEncode(Sha256("kernel"))),
            "");
  ASSERT_EQ(tpm_.Quote("ak.ctx", kSelection, nonce_, "after"), "");
  QuoteCheck check = Check("after", ak_);
  check.pcr_values = SplitValues(tpm_.Read("before.pcrs"), 32);
  ASSERT_EQ(check.pcr_values.size(), 5u);
  EXPECT_TRUE(Refused(Verify("after", check), ErrorCode::kCrypto,
                      "do not match the quoted PCR digest"));
  // The values after the extend are the quoted ones.
  EXPECT_TRUE(Verify("after", Check("after", ak_)).ok());
  EXPECT_NE(tpm_.Read("before.pcrs"), tpm_.Read("after.pcrs"));
}

TEST_F(QuoteTpmTest, RefusesWrongNonce) {
  QuoteCheck check = Check("q", ak_);
  check.nonce = RandomNonce();
  EXPECT_TRUE(Refused(Verify("q", check), ErrorCode::kCrypto, "nonce"));
  // A nonce the TPM was given that is not this verifier's.
  ASSERT_EQ(tpm_.Quote("ak.ctx", kSelection, RandomNonce(), "other"), "");
  EXPECT_TRUE(Refused(Verify("other", Check("other", ak_)), ErrorCode::kCrypto,
                      "nonce"));
}

TEST_F(QuoteTpmTest, RefusesQuoteFromAnotherAkOrTpm) {
  // Another AK of the same TPM.
  ASSERT_EQ(tpm_.CreateAk("ak2", "-G ecc -g sha256 -s ecdsa"), "");
  ASSERT_EQ(tpm_.Quote("ak2.ctx", kSelection, nonce_, "q2"), "");
  EXPECT_TRUE(Refused(Verify("q2", Check("q2", ak_)), ErrorCode::kCrypto,
                      kBadSignature));
  EXPECT_TRUE(
      Verify("q2", Check("q2", MustParsePublic(tpm_.Read("ak2.pub")))).ok());
  // Another TPM, quoting the same nonce and PCR values.
  Swtpm other;
  ASSERT_EQ(other.StartWithEkAndAk(), "");
  ASSERT_EQ(other.Quote("ak.ctx", kSelection, nonce_, "q"), "");
  QuoteCheck check = Check("q", ak_);
  check.pcr_values = SplitValues(other.Read("q.pcrs"), 32);
  EXPECT_TRUE(
      Refused(VerifyQuote(other.Read("q.attest"), other.Read("q.sig"), check),
              ErrorCode::kCrypto, kBadSignature));
}

TEST_F(QuoteTpmTest, RefusesSelectionWithAnExtraPcr) {
  // The host quotes one PCR more than asked for ...
  ASSERT_EQ(tpm_.Quote("ak.ctx", "sha256:0,1,2,3,7,8", nonce_, "extra"), "");
  QuoteCheck check = Check("extra", ak_);
  ASSERT_EQ(check.pcr_values.size(), 6u);
  EXPECT_TRUE(Refused(Verify("extra", check), ErrorCode::kCrypto, "selection"));
  // ... or one less (the verifier asked for 8 too).
  check = Check("q", ak_);
  check.expected = Sha256Bank({0, 1, 2, 3, 7, 8});
  check.pcr_values.push_back(Bytes(32, 0));
  EXPECT_TRUE(Refused(Verify("q", check), ErrorCode::kCrypto, "selection"));
  // ... or adds another bank.
  ASSERT_EQ(tpm_.Quote("ak.ctx", "sha256:0,1,2,3,7+sha1:0", nonce_, "twobanks"),
            "");
  EXPECT_TRUE(Refused(Verify("twobanks", Check("q", ak_)), ErrorCode::kCrypto,
                      "selection"));
}

TEST_F(QuoteTpmTest, RefusesAlteredPcrValue) {
  QuoteCheck check = Check("q", ak_);
  ASSERT_EQ(check.pcr_values.size(), 5u);
  for (size_t i = 0; i < check.pcr_values.size(); ++i) {
    QuoteCheck altered = check;
    altered.pcr_values[i][i] ^= 0x40;
    EXPECT_TRUE(Refused(Verify("q", altered), ErrorCode::kCrypto, "PCR digest"))
        << "PCR index " << kBaseline.pcrs[i];
  }
  // Two values swapped: same bytes, wrong order.
  QuoteCheck swapped = check;
  std::swap(swapped.pcr_values[0], swapped.pcr_values[4]);
  EXPECT_TRUE(Refused(Verify("q", swapped), ErrorCode::kCrypto, "PCR digest"));
}

TEST_F(QuoteTpmTest, RefusesCertifyAttestationSignedByTheAk) {
  // TPM2_Certify with the AK: a genuine TPM signature by the enrolled AK
  // over an attestation that is not a quote.
  ASSERT_EQ(tpm_.Run("tpm2_certify -c ak.ctx -C ak.ctx -g sha256 "
                     "-o certify.attest -s certify.sig"),
            "");
  auto parsed = ParseQuote(tpm_.Read("certify.attest"));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->type, TPM2_ST_ATTEST_CERTIFY);
  EXPECT_TRUE(parsed->selection.empty());
  EXPECT_TRUE(Refused(Verify("certify", Check("q", ak_)), ErrorCode::kCrypto,
                      "not a quote"));
}

TEST_F(QuoteTpmTest, RefusesQuoteFromAnEarlierBootOrBeforeARestart) {
  // Transient contexts die with a Reset: quote with a persistent AK.
  ASSERT_EQ(tpm_.Run("tpm2_evictcontrol -c ak.ctx 0x81010002"), "");
  ASSERT_EQ(tpm_.Quote("0x81010002", kSelection, nonce_, "boot1"), "");
  ASSERT_EQ(tpm_.Reset(), "");
  ASSERT_EQ(tpm_.Quote("0x81010002", kSelection, nonce_, "boot2"), "");
  ASSERT_EQ(tpm_.Restart(), "");
  ASSERT_EQ(tpm_.Quote("0x81010002", kSelection, nonce_, "boot2r"), "");

  auto q1 = Verify("boot1", Check("boot1", ak_));
  ASSERT_TRUE(q1.ok()) << q1.error().message;
  QuoteCheck c2 = Check("boot2", ak_);
  c2.last_clock = q1->clock;
  auto q2 = Verify("boot2", c2);
  ASSERT_TRUE(q2.ok()) << q2.error().message;
  EXPECT_EQ(q2->clock.reset_count, q1->clock.reset_count + 1);
  QuoteCheck c3 = Check("boot2r", ak_);
  c3.last_clock = q2->clock;
  auto q3 = Verify("boot2r", c3);
  ASSERT_TRUE(q3.ok()) << q3.error().message;
  EXPECT_EQ(q3->clock.reset_count, q2->clock.reset_count);
  EXPECT_EQ(q3->clock.restart_count, q2->clock.restart_count + 1);

  // Replays: the first boot's quote after the second was seen, and the
  // pre-restart quote after the restart was seen. (A real verifier would
  // also refuse the reused nonce; here only the clock differs.)
  QuoteCheck replay1 = Check("boot1", ak_);
  replay1.last_clock = q2->clock;
  EXPECT_TRUE(
      Refused(Verify("boot1", replay1), ErrorCode::kCrypto, "resetCount"));
  QuoteCheck replay2 = Check("boot2", ak_);
  replay2.last_clock = q3->clock;
  EXPECT_TRUE(
      Refused(Verify("boot2", replay2), ErrorCode::kCrypto, "restartCount"));
}

class TpmPublicTpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = SwtpmMissingReason(); !why.empty()) {
      GTEST_SKIP() << why;
    }
  }
};

TEST_F(TpmPublicTpmTest, EkCertificateFromSwtpmSetupMatchesTheEk) {
  Swtpm tpm;
  ASSERT_EQ(tpm.ManufactureWithEkCertificate(), "");
  std::string why;
  ASSERT_TRUE(tpm.Start(&why)) << why;
  // The RSA EK certificate's NV index (TCG EK Credential Profile).
  ASSERT_EQ(tpm.Run("tpm2_nvread -C o 0x01c00002 -o ekcert.der"), "");
  ASSERT_EQ(tpm.CreateEk(), "");
  const Bytes der = tpm.Read("ekcert.der");
  const unsigned char* p = der.data();
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  ASSERT_NE(cert, nullptr);
  TpmPublic ek = MustParsePublic(tpm.Read("ek.pub"));
  EXPECT_TRUE(IsEndorsementKeyShape(ek));
  EXPECT_TRUE(CheckCertificateKey(ek, cert.get()).ok());
  // The captured fixture's EK is another TPM's.
  TpmPublic other = MustParsePublic(ReadBytes(FixtureDir() + "/ek.pub"));
  EXPECT_TRUE(Refused(CheckCertificateKey(other, cert.get()),
                      ErrorCode::kCrypto, "another key"));
}

}  // namespace
}  // namespace vcrypt
