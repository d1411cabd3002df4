#include "keyproviders/trusted/tpm.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace vcrypt {
namespace {

// The EK policy of the TCG EK Credential Profile:
// PolicySecret(TPM_RH_ENDORSEMENT).
constexpr uint8_t kEkPolicy[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC,
    0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52,
    0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};
constexpr TPM2_HANDLE kEkCertNvIndex = 0x01c00002;  // RSA 2048 EK certificate
constexpr char kAkUnique[] = "vcrypt attestation key v1";

Error TpmError(const std::string& what, TSS2_RC rc) {
  return TpmRcError(what, rc);
}

// A template for a key that never leaves this TPM (fixedTPM|fixedParent|
// sensitiveDataOrigin, and `attributes`), named with SHA-256.
TPM2B_PUBLIC TpmBoundTemplate(TPMI_ALG_PUBLIC type, TPMA_OBJECT attributes) {
  TPM2B_PUBLIC t = {};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = type;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN | attributes;
  return t;
}

TPM2B_PUBLIC EkTemplate() {
  TPM2B_PUBLIC t = TpmBoundTemplate(
      TPM2_ALG_RSA, TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED |
                        TPMA_OBJECT_DECRYPT);
  TPMT_PUBLIC& p = t.publicArea;
  p.authPolicy.size = sizeof(kEkPolicy);
  std::memcpy(p.authPolicy.buffer, kEkPolicy, sizeof(kEkPolicy));
  p.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
  p.parameters.rsaDetail.symmetric.keyBits.aes = 128;
  p.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  p.parameters.rsaDetail.keyBits = 2048;
  p.parameters.rsaDetail.exponent = 0;
  p.unique.rsa.size = 256;  // zeros, as the profile says
  return t;
}

TPM2B_PUBLIC AkTemplate() {
  TPM2B_PUBLIC t = TpmBoundTemplate(
      TPM2_ALG_ECC, TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
                        TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_NODA);
  TPMT_PUBLIC& p = t.publicArea;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  // A unique value of our own: another tool's P-256 primary with the same
  // attributes must not be the same key.
  p.unique.ecc.x.size = 32;
  std::memcpy(p.unique.ecc.x.buffer, kAkUnique, sizeof(kAkUnique) - 1);
  p.unique.ecc.y.size = 32;
  return t;
}

Result<std::vector<uint8_t>> MarshalPublic(const TPM2B_PUBLIC& pub) {
  std::vector<uint8_t> out(sizeof(TPM2B_PUBLIC));
  size_t off = 0;
  TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out.data(), out.size(), &off);
  if (rc != TSS2_RC_SUCCESS) return TpmError("marshalling a public key", rc);
  out.resize(off);
  return out;
}

// Sets PCR `i` in a selection.
void Select(TPMS_PCR_SELECTION& s, int i) {
  s.sizeofSelect = 3;
  s.pcrSelect[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
}

}  // namespace

std::vector<uint8_t> AkTemplatePublic() {
  auto wire = MarshalPublic(AkTemplate());
  return wire.ok() ? std::move(wire).value() : std::vector<uint8_t>();
}

Tpm::Tpm(TctiContextPtr tcti, EsysContextPtr esys)
    : tcti_(std::move(tcti)), esys_(std::move(esys)) {}

Tpm::Tpm(Tpm&& o) noexcept
    : tcti_(std::move(o.tcti_)),
      esys_(std::move(o.esys_)),
      ek_(o.ek_),
      ak_(o.ak_),
      ek_loaded_(std::exchange(o.ek_loaded_, false)),
      ak_loaded_(std::exchange(o.ak_loaded_, false)) {}

Tpm::~Tpm() {
  // Transient objects stay in the TPM (or the resource manager) until
  // flushed: slots are few.
  if (esys_ && ek_loaded_) Esys_FlushContext(esys_.get(), ek_);
  if (esys_ && ak_loaded_) Esys_FlushContext(esys_.get(), ak_);
  esys_.reset();  // before the TCTI it uses
}

Result<Tpm> Tpm::Open(const std::string& tcti) {
  VCRYPT_ASSIGN_OR_RETURN(TpmContext ctx, OpenTpmContext(tcti));
  return Tpm(std::move(ctx.tcti), std::move(ctx.esys));
}

namespace {

// A primary key of the endorsement hierarchy from `tmpl` (the same key
// every time for one template).
Result<uint32_t> CreateEndorsementPrimary(ESYS_CONTEXT* esys,
                                          const TPM2B_PUBLIC& tmpl,
                                          const std::string& what) {
  TPM2B_SENSITIVE_CREATE sensitive = {};
  TPM2B_DATA outside = {};
  TPML_PCR_SELECTION creation_pcr = {};
  ESYS_TR handle = ESYS_TR_NONE;
  TSS2_RC rc = Esys_CreatePrimary(esys, ESYS_TR_RH_ENDORSEMENT,
                                  ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                  &sensitive, &tmpl, &outside, &creation_pcr,
                                  &handle, nullptr, nullptr, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmError("creating the " + what, rc);
  return handle;
}

// *handle, the primary of `tmpl` created on first use (*loaded then true).
Result<uint32_t> LoadEndorsementPrimary(ESYS_CONTEXT* esys,
                                        const TPM2B_PUBLIC& tmpl,
                                        const std::string& what,
                                        uint32_t* handle, bool* loaded) {
  if (*loaded) return *handle;
  VCRYPT_ASSIGN_OR_RETURN(*handle, CreateEndorsementPrimary(esys, tmpl, what));
  *loaded = true;
  return *handle;
}

}  // namespace

Result<uint32_t> Tpm::LoadEk() {
  return LoadEndorsementPrimary(esys_.get(), EkTemplate(), "EK", &ek_,
                                &ek_loaded_);
}

Result<uint32_t> Tpm::LoadAk() {
  return LoadEndorsementPrimary(esys_.get(), AkTemplate(), "AK", &ak_,
                                &ak_loaded_);
}

namespace {

Result<std::vector<uint8_t>> ReadPublicOf(ESYS_CONTEXT* esys, ESYS_TR handle,
                                          const std::string& what) {
  TPM2B_PUBLIC* raw = nullptr;
  TSS2_RC rc = Esys_ReadPublic(esys, handle, ESYS_TR_NONE, ESYS_TR_NONE,
                               ESYS_TR_NONE, &raw, nullptr, nullptr);
  EsysPtr<TPM2B_PUBLIC> pub(raw);
  if (rc != TSS2_RC_SUCCESS)
    return TpmError("reading the " + what + " public key", rc);
  return MarshalPublic(*pub);
}

}  // namespace

Result<std::vector<uint8_t>> Tpm::EkPublic() {
  VCRYPT_ASSIGN_OR_RETURN(uint32_t ek, LoadEk());
  return ReadPublicOf(esys_.get(), ek, "EK");
}

Result<std::vector<uint8_t>> Tpm::AkPublic() {
  VCRYPT_ASSIGN_OR_RETURN(uint32_t ak, LoadAk());
  return ReadPublicOf(esys_.get(), ak, "AK");
}

Result<std::optional<std::vector<uint8_t>>> Tpm::EkCertificate() {
  ESYS_TR nv = ESYS_TR_NONE;
  TSS2_RC rc = Esys_TR_FromTPMPublic(esys_.get(), kEkCertNvIndex, ESYS_TR_NONE,
                                     ESYS_TR_NONE, ESYS_TR_NONE, &nv);
  if (rc != TSS2_RC_SUCCESS)
    return std::optional<std::vector<uint8_t>>();  // no such index
  TPM2B_NV_PUBLIC* raw_pub = nullptr;
  rc = Esys_NV_ReadPublic(esys_.get(), nv, ESYS_TR_NONE, ESYS_TR_NONE,
                          ESYS_TR_NONE, &raw_pub, nullptr);
  EsysPtr<TPM2B_NV_PUBLIC> nv_pub(raw_pub);
  if (rc != TSS2_RC_SUCCESS) {
    Esys_TR_Close(esys_.get(), &nv);
    return TpmError("reading the EK certificate index", rc);
  }
  const uint16_t size = nv_pub->nvPublic.dataSize;
  std::vector<uint8_t> cert;
  // NV reads come in chunks of at most TPM2_MAX_NV_BUFFER_SIZE (often
  // smaller on real TPMs: 768 is safe).
  while (cert.size() < size) {
    const uint16_t chunk =
        static_cast<uint16_t>(std::min<size_t>(768, size - cert.size()));
    TPM2B_MAX_NV_BUFFER* raw_data = nullptr;
    rc = Esys_NV_Read(esys_.get(), ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD,
                      ESYS_TR_NONE, ESYS_TR_NONE, chunk,
                      static_cast<uint16_t>(cert.size()), &raw_data);
    EsysPtr<TPM2B_MAX_NV_BUFFER> data(raw_data);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_TR_Close(esys_.get(), &nv);
      return TpmError("reading the EK certificate", rc);
    }
    cert.insert(cert.end(), data->buffer, data->buffer + data->size);
    if (data->size == 0) break;
  }
  Esys_TR_Close(esys_.get(), &nv);
  return std::optional<std::vector<uint8_t>>(std::move(cert));
}

Result<SecureBuffer> Tpm::ActivateCredential(
    std::span<const uint8_t> credential_blob,
    std::span<const uint8_t> encrypted_secret) {
  TPM2B_ID_OBJECT blob = {};
  TPM2B_ENCRYPTED_SECRET secret = {};
  size_t off = 0;
  if (Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(credential_blob.data(),
                                        credential_blob.size(), &off,
                                        &blob) != TSS2_RC_SUCCESS ||
      off != credential_blob.size())
    return MakeError(ErrorCode::kInvalidArgument, "malformed credential blob");
  off = 0;
  if (Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(encrypted_secret.data(),
                                               encrypted_secret.size(), &off,
                                               &secret) != TSS2_RC_SUCCESS ||
      off != encrypted_secret.size())
    return MakeError(ErrorCode::kInvalidArgument, "malformed encrypted secret");
  VCRYPT_ASSIGN_OR_RETURN(uint32_t ek, LoadEk());
  VCRYPT_ASSIGN_OR_RETURN(uint32_t ak, LoadAk());

  // The EK is usable only through its policy: PolicySecret(endorsement).
  ESYS_TR session = ESYS_TR_NONE;
  TPMT_SYM_DEF sym = {};
  sym.algorithm = TPM2_ALG_NULL;
  TSS2_RC rc = Esys_StartAuthSession(
      esys_.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
      ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &sym, TPM2_ALG_SHA256, &session);
  if (rc != TSS2_RC_SUCCESS)
    return TpmError("starting the EK policy session", rc);
  rc = Esys_PolicySecret(esys_.get(), ESYS_TR_RH_ENDORSEMENT, session,
                         ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, nullptr,
                         nullptr, nullptr, 0, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    Esys_FlushContext(esys_.get(), session);
    return TpmError("satisfying the EK policy", rc);
  }
  TPM2B_DIGEST* raw_cert_info = nullptr;
  rc = Esys_ActivateCredential(esys_.get(), ak, ek, ESYS_TR_PASSWORD, session,
                               ESYS_TR_NONE, &blob, &secret, &raw_cert_info);
  EsysPtr<TPM2B_DIGEST> cert_info(raw_cert_info);
  Esys_FlushContext(esys_.get(), session);  // may already be gone: ignored
  if (rc != TSS2_RC_SUCCESS) {
    // The TPM's answer when the blob was made for another EK or AK name
    // (integrity or decryption failure) is a refusal, not an I/O problem.
    Error e = TpmError("activating the credential", rc);
    e.code = ErrorCode::kCrypto;
    return e;
  }
  SecureBuffer out(cert_info->size);
  std::memcpy(out.data(), cert_info->buffer, cert_info->size);
  std::memset(cert_info->buffer, 0, sizeof(cert_info->buffer));
  return out;
}

Result<Tpm::Quote> Tpm::QuotePcrs(std::span<const uint8_t> nonce,
                                  uint16_t hash_alg,
                                  const std::vector<int>& pcrs) {
  if (nonce.size() > sizeof(TPM2B_DATA::buffer))
    return MakeError(ErrorCode::kInvalidArgument, "nonce longer than 64 bytes");
  if (pcrs.empty())
    return MakeError(ErrorCode::kInvalidArgument, "no PCR to quote");
  std::vector<int> sorted = pcrs;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  TPML_PCR_SELECTION sel = {};
  sel.count = 1;
  sel.pcrSelections[0].hash = hash_alg;
  for (int i : sorted) {
    if (i < 0 || i > 23)
      return MakeError(ErrorCode::kInvalidArgument,
                       "PCR " + std::to_string(i) + " out of range");
    Select(sel.pcrSelections[0], i);
  }
  VCRYPT_ASSIGN_OR_RETURN(uint32_t ak, LoadAk());

  // Reads every selected PCR (at most 8 per TPM2_PCR_Read), returning the
  // PCR update counter.
  auto read_all =
      [&](std::vector<std::vector<uint8_t>>* values) -> Result<uint32_t> {
    values->clear();
    TPML_PCR_SELECTION want = sel;
    uint32_t first_counter = 0;
    bool first = true;
    while (true) {
      bool any = false;
      for (int b = 0; b < 3; ++b)
        any |= want.pcrSelections[0].pcrSelect[b] != 0;
      if (!any) break;
      uint32_t counter = 0;
      TPML_PCR_SELECTION* raw_out = nullptr;
      TPML_DIGEST* raw_vals = nullptr;
      TSS2_RC rc =
          Esys_PCR_Read(esys_.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                        &want, &counter, &raw_out, &raw_vals);
      EsysPtr<TPML_PCR_SELECTION> got(raw_out);
      EsysPtr<TPML_DIGEST> vals(raw_vals);
      if (rc != TSS2_RC_SUCCESS) return TpmError("reading PCRs", rc);
      if (first) first_counter = counter;
      if (counter != first_counter)
        return uint32_t{0xffffffff};  // changed: retry
      first = false;
      if (got->count == 0 || vals->count == 0)
        return MakeError(ErrorCode::kIo, "TPM: the PCR bank is not allocated");
      for (uint32_t v = 0; v < vals->count; ++v)
        values->emplace_back(vals->digests[v].buffer,
                             vals->digests[v].buffer + vals->digests[v].size);
      for (int b = 0; b < 3; ++b)
        want.pcrSelections[0].pcrSelect[b] &=
            static_cast<uint8_t>(~got->pcrSelections[0].pcrSelect[b]);
    }
    return first_counter;
  };

  TPM2B_DATA qualifying = {};
  qualifying.size = static_cast<uint16_t>(nonce.size());
  std::memcpy(qualifying.buffer, nonce.data(), nonce.size());
  TPMT_SIG_SCHEME scheme = {};
  scheme.scheme = TPM2_ALG_NULL;  // the AK's own: ECDSA-SHA256
  for (int attempt = 0; attempt < 5; ++attempt) {
    Quote q;
    VCRYPT_ASSIGN_OR_RETURN(uint32_t before, read_all(&q.pcr_values));
    TPM2B_ATTEST* raw_attest = nullptr;
    TPMT_SIGNATURE* raw_sig = nullptr;
    TSS2_RC rc = Esys_Quote(esys_.get(), ak, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE, &qualifying, &scheme, &sel,
                            &raw_attest, &raw_sig);
    EsysPtr<TPM2B_ATTEST> attest(raw_attest);
    EsysPtr<TPMT_SIGNATURE> sig(raw_sig);
    if (rc != TSS2_RC_SUCCESS) return TpmError("quoting PCRs", rc);
    std::vector<std::vector<uint8_t>> after_values;
    VCRYPT_ASSIGN_OR_RETURN(uint32_t after, read_all(&after_values));
    if (before == 0xffffffff || after != before || after_values != q.pcr_values)
      continue;  // a PCR was extended meanwhile
    q.attest.assign(attest->attestationData,
                    attest->attestationData + attest->size);
    q.signature.resize(sizeof(TPMT_SIGNATURE));
    size_t off = 0;
    rc = Tss2_MU_TPMT_SIGNATURE_Marshal(sig.get(), q.signature.data(),
                                        q.signature.size(), &off);
    if (rc != TSS2_RC_SUCCESS)
      return TpmError("marshalling the quote signature", rc);
    q.signature.resize(off);
    return q;
  }
  return MakeError(ErrorCode::kBusy,
                   "TPM: PCRs kept changing while quoting; try again");
}

}  // namespace vcrypt
