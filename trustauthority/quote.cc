#include "trustauthority/quote.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

namespace vcrypt {
namespace {

std::string RcText(TSS2_RC rc) {
  const char* s = Tss2_RC_Decode(rc);
  return s != nullptr ? s : "unknown error";
}

std::string Hex16(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%04x", v);
  return buf;
}

// OpenSSL failures leave entries on the thread's error queue; drop them so
// that they cannot be mistaken later for the cause of an unrelated failure.
Error OpensslError(ErrorCode code, std::string message) {
  ERR_clear_error();
  return MakeError(code, std::move(message));
}

Result<std::vector<uint8_t>> Digest(TPMI_ALG_HASH alg,
                                    std::span<const uint8_t> data) {
  const EVP_MD* md = TpmHashToEvp(alg);
  if (md == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "unsupported TPM hash algorithm " + Hex16(alg));
  }
  std::vector<uint8_t> out(EVP_MD_get_size(md));
  unsigned int n = 0;
  static const uint8_t kEmpty = 0;
  if (EVP_Digest(data.empty() ? &kEmpty : data.data(), data.size(), out.data(),
                 &n, md, nullptr) != 1 ||
      n != out.size()) {
    return OpensslError(ErrorCode::kInternal, "digest computation failed");
  }
  return out;
}

// Builds a public EVP_PKEY of `type` ("RSA", "EC") from `params` and checks
// it (an ECC point must lie on the curve, an RSA modulus must be sane).
Result<EvpPkeyPtr> PublicKeyFromParams(const char* type,
                                       OSSL_PARAM_BLD* builder) {
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(builder));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  if (params == nullptr || ctx == nullptr) {
    return OpensslError(ErrorCode::kInternal, "out of memory building a key");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) !=
          1) {
    return OpensslError(ErrorCode::kInvalidArgument,
                        "the TPM public key is not a valid key");
  }
  EvpPkeyPtr key(raw);
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (check == nullptr || EVP_PKEY_public_check(check.get()) != 1) {
    return OpensslError(ErrorCode::kInvalidArgument,
                        "the TPM public key is not a valid key");
  }
  return key;
}

Result<EvpPkeyPtr> RsaKey(const TPMT_PUBLIC& area) {
  const TPMS_RSA_PARMS& p = area.parameters.rsaDetail;
  if (p.keyBits != 2048 && p.keyBits != 3072 && p.keyBits != 4096) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "unsupported RSA key size " + std::to_string(p.keyBits) +
                         " (2048, 3072 or 4096 bits)");
  }
  if (area.unique.rsa.size != p.keyBits / 8) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "RSA modulus size does not match keyBits");
  }
  // TPM 2.0 Part 2, TPMS_RSA_PARMS: zero means the default 2^16 + 1.
  const uint32_t exponent = p.exponent == 0 ? 65537 : p.exponent;
  BignumPtr n(BN_bin2bn(area.unique.rsa.buffer, area.unique.rsa.size, nullptr));
  BignumPtr e(BN_new());
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (n == nullptr || e == nullptr || bld == nullptr ||
      BN_set_word(e.get(), exponent) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return OpensslError(ErrorCode::kInternal, "out of memory building a key");
  }
  return PublicKeyFromParams("RSA", bld.get());
}

Result<EvpPkeyPtr> EccKey(const TPMT_PUBLIC& area) {
  if (area.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "unsupported ECC curve " +
                         Hex16(area.parameters.eccDetail.curveID) +
                         " (only NIST P-256)");
  }
  constexpr size_t kCoord = 32;
  const TPMS_ECC_POINT& q = area.unique.ecc;
  if (q.x.size == 0 || q.x.size > kCoord || q.y.size == 0 ||
      q.y.size > kCoord) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "ECC point coordinates have the wrong size");
  }
  // Uncompressed SEC1 point; a coordinate shorter than the field (leading
  // zero bytes left out) is left-padded.
  uint8_t point[1 + 2 * kCoord] = {0x04};
  std::memcpy(point + 1 + kCoord - q.x.size, q.x.buffer, q.x.size);
  std::memcpy(point + 1 + 2 * kCoord - q.y.size, q.y.buffer, q.y.size);
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                      "prime256v1", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                       point, sizeof(point)) != 1) {
    return OpensslError(ErrorCode::kInternal, "out of memory building a key");
  }
  return PublicKeyFromParams("EC", bld.get());
}

// The scheme (and its hash) an AK's public area fixes for its signatures;
// TPM2_ALG_NULL when the key leaves it to the caller of TPM2_Quote.
struct SigningScheme {
  TPM2_ALG_ID scheme = TPM2_ALG_NULL;
  TPMI_ALG_HASH hash = TPM2_ALG_NULL;
};

SigningScheme SchemeOf(const TPMT_PUBLIC& area) {
  if (area.type == TPM2_ALG_ECC) {
    const TPMT_ECC_SCHEME& s = area.parameters.eccDetail.scheme;
    return {s.scheme, s.details.anySig.hashAlg};
  }
  const TPMT_RSA_SCHEME& s = area.parameters.rsaDetail.scheme;
  return {s.scheme, s.details.anySig.hashAlg};
}

Status ValidateCheck(const QuoteCheck& check) {
  const TpmPublic& ak = check.ak;
  if (ak.key == nullptr ||
      (ak.area.type != TPM2_ALG_ECC && ak.area.type != TPM2_ALG_RSA)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "no usable AK to verify with");
  }
  if (!IsRestrictedSigningKey(ak)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the AK is not a restricted signing key (sign, "
                     "restricted, fixedTPM, fixedParent, sensitiveDataOrigin)");
  }
  const SigningScheme scheme = SchemeOf(ak.area);
  if (scheme.scheme != TPM2_ALG_NULL && scheme.hash != TPM2_ALG_SHA256) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the AK's signing scheme uses hash " + Hex16(scheme.hash) +
                         ", not SHA-256");
  }
  if (check.nonce.empty() || check.nonce.size() > sizeof(TPMU_HA)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the expected nonce must be 1 to 64 bytes");
  }
  if (TpmHashSize(check.expected.hash) == 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "unsupported PCR bank " + Hex16(check.expected.hash));
  }
  const std::vector<uint32_t>& pcrs = check.expected.pcrs;
  if (pcrs.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the expected PCR selection is empty");
  }
  for (size_t i = 0; i < pcrs.size(); ++i) {
    if (pcrs[i] >= TPM2_MAX_PCRS || (i > 0 && pcrs[i] <= pcrs[i - 1])) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the expected PCR indices must be ascending, "
                       "distinct and below 32");
    }
  }
  return Status::Ok();
}

// The DER ECDSA-Sig-Value for a TPM's (r, s) pair.
Result<std::vector<uint8_t>> EcdsaDer(const TPMS_SIGNATURE_ECDSA& sig) {
  constexpr size_t kCoord = 32;  // P-256
  if (sig.signatureR.size == 0 || sig.signatureR.size > kCoord ||
      sig.signatureS.size == 0 || sig.signatureS.size > kCoord) {
    return MakeError(ErrorCode::kCrypto,
                     "quote signature: ECDSA r or s has the wrong size");
  }
  BignumPtr r(BN_bin2bn(sig.signatureR.buffer, sig.signatureR.size, nullptr));
  BignumPtr s(BN_bin2bn(sig.signatureS.buffer, sig.signatureS.size, nullptr));
  EcdsaSigPtr ecdsa(ECDSA_SIG_new());
  if (r == nullptr || s == nullptr || ecdsa == nullptr ||
      ECDSA_SIG_set0(ecdsa.get(), r.get(), s.get()) != 1) {
    return OpensslError(ErrorCode::kInternal, "out of memory");
  }
  (void)r.release();  // now owned by `ecdsa`
  (void)s.release();
  unsigned char* der = nullptr;
  const int len = i2d_ECDSA_SIG(ecdsa.get(), &der);
  OpensslBytePtr owner(der);
  if (len <= 0) return OpensslError(ErrorCode::kInternal, "out of memory");
  return std::vector<uint8_t>(der, der + len);
}

Status VerifySignature(const TpmPublic& ak, std::span<const uint8_t> attest,
                       std::span<const uint8_t> signature_bytes) {
  // tss2-mu logs (to stderr) when handed a null buffer: answer first.
  if (signature_bytes.empty()) {
    return MakeError(ErrorCode::kCrypto, "quote signature is empty");
  }
  TPMT_SIGNATURE sig{};
  size_t offset = 0;
  const TSS2_RC rc = Tss2_MU_TPMT_SIGNATURE_Unmarshal(
      signature_bytes.data(), signature_bytes.size(), &offset, &sig);
  if (rc != TSS2_RC_SUCCESS) {
    return MakeError(
        ErrorCode::kCrypto,
        "quote signature is not a TPMT_SIGNATURE (" + RcText(rc) + ")");
  }
  if (offset != signature_bytes.size()) {
    return MakeError(ErrorCode::kCrypto,
                     "quote signature has trailing bytes after the "
                     "TPMT_SIGNATURE");
  }

  const SigningScheme ak_scheme = SchemeOf(ak.area);
  if (ak_scheme.scheme != TPM2_ALG_NULL && sig.sigAlg != ak_scheme.scheme) {
    return MakeError(ErrorCode::kCrypto,
                     "quote signature scheme " + Hex16(sig.sigAlg) +
                         " is not the AK's scheme " + Hex16(ak_scheme.scheme));
  }
  const bool ecc = ak.area.type == TPM2_ALG_ECC;
  const bool scheme_fits_key =
      ecc ? sig.sigAlg == TPM2_ALG_ECDSA
          : (sig.sigAlg == TPM2_ALG_RSASSA || sig.sigAlg == TPM2_ALG_RSAPSS);
  if (!scheme_fits_key) {
    return MakeError(ErrorCode::kCrypto,
                     "quote signature scheme " + Hex16(sig.sigAlg) +
                         " cannot be verified with the AK's key type");
  }
  // Every scheme accepted above starts with its hash algorithm.
  if (sig.signature.any.hashAlg != TPM2_ALG_SHA256) {
    return MakeError(ErrorCode::kCrypto, "quote signature uses hash " +
                                             Hex16(sig.signature.any.hashAlg) +
                                             ", not SHA-256");
  }

  std::vector<uint8_t> raw;
  if (ecc) {
    VCRYPT_ASSIGN_OR_RETURN(raw, EcdsaDer(sig.signature.ecdsa));
  } else {
    const TPM2B_PUBLIC_KEY_RSA& s = sig.signature.rsassa.sig;  // = rsapss.sig
    if (s.size != static_cast<size_t>(EVP_PKEY_get_size(ak.key.get()))) {
      return MakeError(ErrorCode::kCrypto,
                       "quote signature has the wrong size for the AK");
    }
    raw.assign(s.buffer, s.buffer + s.size);
  }

  EvpMdCtxPtr md(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by `md`
  if (md == nullptr || EVP_DigestVerifyInit(md.get(), &pctx, EVP_sha256(),
                                            nullptr, ak.key.get()) != 1) {
    return OpensslError(ErrorCode::kInternal, "cannot set up verification");
  }
  if (!ecc) {
    const bool pss = sig.sigAlg == TPM2_ALG_RSAPSS;
    // The TPM's PSS salt is the digest size on most parts but the largest
    // possible on some (TPM 2.0 Part 1, B.7); AUTO reads it from the
    // signature, which is as strong for verification.
    if (EVP_PKEY_CTX_set_rsa_padding(
            pctx, pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) != 1 ||
        (pss &&
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_AUTO) != 1)) {
      return OpensslError(ErrorCode::kInternal, "cannot set up verification");
    }
  }
  static const uint8_t kEmpty = 0;
  if (EVP_DigestVerify(md.get(), raw.data(), raw.size(),
                       attest.empty() ? &kEmpty : attest.data(),
                       attest.size()) != 1) {
    return OpensslError(ErrorCode::kCrypto,
                        "quote signature does not verify with the enrolled "
                        "AK (another key or TPM signed it, or it was altered)");
  }
  return Status::Ok();
}

std::string SelectionText(const PcrSelection& s) {
  std::string out = Hex16(s.hash) + ":";
  for (size_t i = 0; i < s.pcrs.size(); ++i) {
    out += (i ? "," : "") + std::to_string(s.pcrs[i]);
  }
  return out;
}

}  // namespace

const EVP_MD* TpmHashToEvp(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return EVP_sha1();
    case TPM2_ALG_SHA256:
      return EVP_sha256();
    case TPM2_ALG_SHA384:
      return EVP_sha384();
    case TPM2_ALG_SHA512:
      return EVP_sha512();
    default:
      return nullptr;
  }
}

size_t TpmHashSize(TPMI_ALG_HASH alg) {
  const EVP_MD* md = TpmHashToEvp(alg);
  return md != nullptr ? static_cast<size_t>(EVP_MD_get_size(md)) : 0;
}

TpmPublic::TpmPublic(const TpmPublic& other)
    : area(other.area), wire(other.wire), name(other.name) {
  if (other.key != nullptr && EVP_PKEY_up_ref(other.key.get()) == 1) {
    key.reset(other.key.get());
  }
}

TpmPublic& TpmPublic::operator=(const TpmPublic& other) {
  if (this != &other) {
    TpmPublic copy(other);
    *this = std::move(copy);
  }
  return *this;
}

Result<TpmPublic> ParseTpm2bPublic(std::span<const uint8_t> bytes) {
  if (bytes.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "empty TPM2B_PUBLIC");
  }
  TPM2B_PUBLIC pub{};
  size_t offset = 0;
  const TSS2_RC rc =
      Tss2_MU_TPM2B_PUBLIC_Unmarshal(bytes.data(), bytes.size(), &offset, &pub);
  if (rc != TSS2_RC_SUCCESS) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a TPM2B_PUBLIC (" + RcText(rc) + ")");
  }
  if (offset != bytes.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "trailing bytes after the TPM2B_PUBLIC");
  }
  // The Name hashes the marshaled TPMT_PUBLIC, and the TPM hashes its own
  // (canonical) encoding: accept only bytes that re-marshal identically, so
  // the Name computed here is the one the TPM computes.
  const std::span<const uint8_t> area_bytes = bytes.subspan(2);
  uint8_t remarshaled[sizeof(TPM2B_PUBLIC)];
  size_t remarshaled_size = 0;
  if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub.publicArea, remarshaled,
                                  sizeof(remarshaled),
                                  &remarshaled_size) != TSS2_RC_SUCCESS ||
      pub.size != area_bytes.size() || remarshaled_size != area_bytes.size() ||
      std::memcmp(remarshaled, area_bytes.data(), remarshaled_size) != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the TPM2B_PUBLIC is not canonically encoded");
  }

  TpmPublic out;
  out.area = pub.publicArea;
  out.wire.assign(bytes.begin(), bytes.end());
  const TPMI_ALG_HASH name_alg = out.area.nameAlg;
  if (TpmHashSize(name_alg) == 0) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "unsupported nameAlg " + Hex16(name_alg) + " in the TPM public key");
  }
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> digest,
                          Digest(name_alg, area_bytes));
  out.name = {static_cast<uint8_t>(name_alg >> 8),
              static_cast<uint8_t>(name_alg & 0xff)};
  out.name.insert(out.name.end(), digest.begin(), digest.end());

  switch (out.area.type) {
    case TPM2_ALG_RSA: {
      VCRYPT_ASSIGN_OR_RETURN(out.key, RsaKey(out.area));
      break;
    }
    case TPM2_ALG_ECC: {
      VCRYPT_ASSIGN_OR_RETURN(out.key, EccKey(out.area));
      break;
    }
    default:
      return MakeError(ErrorCode::kInvalidArgument,
                       "unsupported TPM key type " + Hex16(out.area.type) +
                           " (RSA or ECC only)");
  }
  return out;
}

bool IsRestrictedSigningKey(const TpmPublic& key) {
  constexpr TPMA_OBJECT kRequired =
      TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_FIXEDTPM |
      TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;
  const TPMA_OBJECT a = key.area.objectAttributes;
  return (a & kRequired) == kRequired && (a & TPMA_OBJECT_DECRYPT) == 0;
}

bool IsEndorsementKeyShape(const TpmPublic& key) {
  constexpr TPMA_OBJECT kRequired = TPMA_OBJECT_RESTRICTED |
                                    TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
                                    TPMA_OBJECT_FIXEDPARENT;
  const TPMA_OBJECT a = key.area.objectAttributes;
  return (a & kRequired) == kRequired && (a & TPMA_OBJECT_SIGN_ENCRYPT) == 0;
}

Result<std::vector<uint8_t>> PublicKeyDer(const TpmPublic& key) {
  if (key.key == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, "no public key");
  }
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key.key.get(), &der);
  OpensslBytePtr owner(der);
  if (len <= 0) {
    return OpensslError(ErrorCode::kInternal, "cannot encode the public key");
  }
  return std::vector<uint8_t>(der, der + len);
}

Result<std::string> PublicKeyPem(const TpmPublic& key) {
  if (key.key == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, "no public key");
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PUBKEY(bio.get(), key.key.get()) != 1) {
    return OpensslError(ErrorCode::kInternal, "cannot encode the public key");
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) {
    return OpensslError(ErrorCode::kInternal, "cannot encode the public key");
  }
  return std::string(data, static_cast<size_t>(len));
}

Status CheckCertificateKey(const TpmPublic& key, const X509* certificate) {
  if (key.key == nullptr || certificate == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, "no key or no certificate");
  }
  EVP_PKEY* cert_key = X509_get0_pubkey(certificate);
  if (cert_key == nullptr) {
    return OpensslError(ErrorCode::kInvalidArgument,
                        "the certificate has no usable public key");
  }
  // 1 = same key; 0 = different; negative = different types or
  // incomparable: all but 1 mean "not this key".
  if (EVP_PKEY_eq(cert_key, key.key.get()) != 1) {
    return OpensslError(ErrorCode::kCrypto,
                        "the certificate is for another key than the TPM's");
  }
  return Status::Ok();
}

Result<ParsedQuote> ParseQuote(std::span<const uint8_t> bytes) {
  if (bytes.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "empty TPMS_ATTEST");
  }
  TPMS_ATTEST a{};
  size_t offset = 0;
  const TSS2_RC rc =
      Tss2_MU_TPMS_ATTEST_Unmarshal(bytes.data(), bytes.size(), &offset, &a);
  if (rc != TSS2_RC_SUCCESS) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a TPMS_ATTEST (" + RcText(rc) + ")");
  }
  if (offset != bytes.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "trailing bytes after the TPMS_ATTEST");
  }
  // tss2-mu bounds every size against its array; checked again here because
  // an out-of-range size would make the copies below read past the struct.
  if (a.qualifiedSigner.size > sizeof(a.qualifiedSigner.name) ||
      a.extraData.size > sizeof(a.extraData.buffer)) {
    return MakeError(ErrorCode::kInvalidArgument, "TPMS_ATTEST size overflow");
  }
  ParsedQuote q;
  q.magic = a.magic;
  q.type = a.type;
  q.qualified_signer.assign(a.qualifiedSigner.name,
                            a.qualifiedSigner.name + a.qualifiedSigner.size);
  q.extra_data.assign(a.extraData.buffer,
                      a.extraData.buffer + a.extraData.size);
  q.clock.clock = a.clockInfo.clock;
  q.clock.reset_count = a.clockInfo.resetCount;
  q.clock.restart_count = a.clockInfo.restartCount;
  q.clock.safe = a.clockInfo.safe != 0;
  q.firmware_version = a.firmwareVersion;
  if (a.type != TPM2_ST_ATTEST_QUOTE) return q;

  const TPMS_QUOTE_INFO& info = a.attested.quote;
  if (info.pcrSelect.count > TPM2_NUM_PCR_BANKS ||
      info.pcrDigest.size > sizeof(info.pcrDigest.buffer)) {
    return MakeError(ErrorCode::kInvalidArgument, "TPMS_ATTEST size overflow");
  }
  for (uint32_t i = 0; i < info.pcrSelect.count; ++i) {
    const TPMS_PCR_SELECTION& s = info.pcrSelect.pcrSelections[i];
    if (s.sizeofSelect > sizeof(s.pcrSelect)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "TPMS_ATTEST PCR selection too large");
    }
    PcrSelection bank;
    bank.hash = s.hash;
    for (uint32_t byte = 0; byte < s.sizeofSelect; ++byte) {
      for (uint32_t bit = 0; bit < 8; ++bit) {
        if (s.pcrSelect[byte] & (1u << bit))
          bank.pcrs.push_back(byte * 8 + bit);
      }
    }
    q.selection.push_back(std::move(bank));
  }
  q.pcr_digest.assign(info.pcrDigest.buffer,
                      info.pcrDigest.buffer + info.pcrDigest.size);
  return q;
}

Result<ParsedQuote> VerifyQuote(std::span<const uint8_t> attest,
                                std::span<const uint8_t> tpmt_signature,
                                const QuoteCheck& check) {
  VCRYPT_RETURN_IF_ERROR(ValidateCheck(check));

  // 1. Nothing in `attest` means anything until the AK vouches for it.
  VCRYPT_RETURN_IF_ERROR(VerifySignature(check.ak, attest, tpmt_signature));

  // 2. Structure.
  Result<ParsedQuote> parsed = ParseQuote(attest);
  if (!parsed.ok()) {
    return MakeError(ErrorCode::kCrypto,
                     "signed quote is malformed: " + parsed.error().message);
  }
  const ParsedQuote& q = *parsed;

  // 3, 4. Generated by the TPM, and a quote (not another attestation the
  // same AK signed, e.g. a certification).
  if (q.magic != TPM2_GENERATED_VALUE) {
    return MakeError(ErrorCode::kCrypto,
                     "quote magic is not TPM2_GENERATED_VALUE: not produced "
                     "by a TPM");
  }
  if (q.type != TPM2_ST_ATTEST_QUOTE) {
    return MakeError(ErrorCode::kCrypto,
                     "attestation type " + Hex16(q.type) + " is not a quote");
  }

  // 5. Freshness: the nonce this verifier issued.
  if (q.extra_data.size() != check.nonce.size() ||
      CRYPTO_memcmp(q.extra_data.data(), check.nonce.data(),
                    check.nonce.size()) != 0) {
    return MakeError(ErrorCode::kCrypto,
                     "quote was not made over the issued nonce (stale or "
                     "replayed quote)");
  }

  // 6. Exactly what was asked for: a quote over fewer PCRs or other banks
  // would say nothing about the PCRs that were left out.
  if (q.selection.size() != 1 || !(q.selection[0] == check.expected)) {
    std::string quoted;
    for (const PcrSelection& s : q.selection) {
      quoted += (quoted.empty() ? "" : " ") + SelectionText(s);
    }
    return MakeError(ErrorCode::kCrypto, "quoted PCR selection [" + quoted +
                                             "] is not the expected [" +
                                             SelectionText(check.expected) +
                                             "]");
  }

  // 7. The reported values are the quoted ones. TPM2_Quote digests the
  // values with the signing scheme's hash, which step 1 pinned to SHA-256.
  const size_t value_size = TpmHashSize(check.expected.hash);
  if (check.pcr_values.size() != check.expected.pcrs.size()) {
    return MakeError(ErrorCode::kCrypto,
                     "reported " + std::to_string(check.pcr_values.size()) +
                         " PCR values for " +
                         std::to_string(check.expected.pcrs.size()) +
                         " selected PCRs");
  }
  std::vector<uint8_t> concatenated;
  for (const std::vector<uint8_t>& v : check.pcr_values) {
    if (v.size() != value_size) {
      return MakeError(ErrorCode::kCrypto,
                       "a reported PCR value is not the size of the bank's "
                       "digest");
    }
    concatenated.insert(concatenated.end(), v.begin(), v.end());
  }
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> digest,
                          Digest(TPM2_ALG_SHA256, concatenated));
  if (q.pcr_digest.size() != digest.size() ||
      CRYPTO_memcmp(q.pcr_digest.data(), digest.data(), digest.size()) != 0) {
    return MakeError(ErrorCode::kCrypto,
                     "reported PCR values do not match the quoted PCR digest");
  }

  // 8. Not older than the last quote seen from this AK.
  if (check.last_clock.has_value()) {
    const ClockInfo& last = *check.last_clock;
    if (q.clock.reset_count < last.reset_count) {
      return MakeError(ErrorCode::kCrypto,
                       "quote resetCount " +
                           std::to_string(q.clock.reset_count) +
                           " is lower than the last seen " +
                           std::to_string(last.reset_count) +
                           " (quote from an earlier boot)");
    }
    if (q.clock.reset_count == last.reset_count &&
        q.clock.restart_count < last.restart_count) {
      return MakeError(ErrorCode::kCrypto,
                       "quote restartCount " +
                           std::to_string(q.clock.restart_count) +
                           " is lower than the last seen " +
                           std::to_string(last.restart_count) +
                           " (quote from before a restart)");
    }
  }
  return parsed;
}

}  // namespace vcrypt
