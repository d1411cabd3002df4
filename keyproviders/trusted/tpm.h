// The host's TPM 2.0 through tpm2-tss ESAPI: what the trusted key provider
// needs to attest (docs/trusted.md).
//
// Keys, both primaries of the endorsement hierarchy, so nothing has to be
// stored: the TPM derives the same key from its endorsement seed every
// time (until the seed is changed, which is a new TPM identity anyway):
//  - EK: the TCG EK Credential Profile's default RSA 2048 template (L-1:
//    AES-128-CFB, SHA-256, the standard EK policy PolicySecret(endorsement)).
//    It is the key an EK certificate in NV index 0x01c00002 certifies.
//  - AK: ECC NIST P-256, ECDSA with SHA-256, restricted signing,
//    fixedTPM|fixedParent|sensitiveDataOrigin, empty auth, a `unique` value
//    of its own so it is not any other tool's primary.
// A Tpm object keeps both loaded while it lives and flushes them at the
// end. Not thread-safe: one caller at a time. Open sets TSS2_LOG as
// OpenTpmContext does.
#ifndef VCRYPT_KEYPROVIDERS_TRUSTED_TPM_H_
#define VCRYPT_KEYPROVIDERS_TRUSTED_TPM_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/handles.h"
#include "common/result.h"
#include "common/secure_buffer.h"
#include "keyproviders/tpm/tpm_context.h"

namespace vcrypt {

// TPM2_ALG_SHA256, for callers that do not include tss2 headers.
inline constexpr uint16_t kTpmAlgSha256 = 0x000B;

// TPM2B_PUBLIC (wire encoding) of the template the AK is created from (the
// AK above; its `unique` is the template's, not a key's point).
std::vector<uint8_t> AkTemplatePublic();

// CheckTcti, the TCTI allowlist, is in keyproviders/tpm/tpm_context.h.

class Tpm {
 public:
  // `tcti` is a tpm2-tss TCTI configuration: "device:/dev/tpmrm0" (the
  // kernel's resource manager), "swtpm:host=127.0.0.1,port=2321", ...
  // As OpenTpmContext: it must pass CheckTcti(tcti, /*allow_test=*/true)
  // (nothing is loaded otherwise); callers apply their own, stricter policy
  // first. kIo when the TCTI cannot be loaded or the TPM does not answer.
  static Result<Tpm> Open(const std::string& tcti);

  Tpm(Tpm&&) noexcept;
  Tpm& operator=(Tpm&&) = delete;
  ~Tpm();

  // TPM2B_PUBLIC (TPM wire encoding) of the EK and the AK.
  Result<std::vector<uint8_t>> EkPublic();
  Result<std::vector<uint8_t>> AkPublic();
  // The EK certificate (DER) from NV index 0x01c00002, nullopt when the
  // TPM has none.
  Result<std::optional<std::vector<uint8_t>>> EkCertificate();

  // TPM2_ActivateCredential with the AK as the object and the EK as the
  // decryption key (policy session: PolicySecret(endorsement)).
  // `credential_blob` is a TPM2B_ID_OBJECT and `encrypted_secret` a
  // TPM2B_ENCRYPTED_SECRET, both in TPM wire encoding, as made by the
  // attestation service. kCrypto when the TPM refuses (made for another
  // EK or another AK name); kInvalidArgument for malformed input.
  Result<SecureBuffer> ActivateCredential(
      std::span<const uint8_t> credential_blob,
      std::span<const uint8_t> encrypted_secret);

  struct Quote {
    std::vector<uint8_t> attest;     // TPMS_ATTEST as signed (wire encoding)
    std::vector<uint8_t> signature;  // TPMT_SIGNATURE (wire encoding)
    // Values of the quoted PCRs, in ascending PCR order, as read around
    // the quote (re-read until no PCR changed in between).
    std::vector<std::vector<uint8_t>> pcr_values;
  };
  // Quotes PCRs `pcrs` (0..23) of bank `hash_alg` with the AK over
  // `nonce` (qualifyingData, at most 64 bytes).
  Result<Quote> QuotePcrs(std::span<const uint8_t> nonce, uint16_t hash_alg,
                          const std::vector<int>& pcrs);

 private:
  Tpm(TctiContextPtr tcti, EsysContextPtr esys);
  Result<uint32_t> LoadEk();
  Result<uint32_t> LoadAk();

  TctiContextPtr tcti_;
  EsysContextPtr esys_;
  uint32_t ek_ = 0;  // ESYS_TR; 0 (ESYS_TR_NONE is 0xfff) while not loaded
  uint32_t ak_ = 0;
  bool ek_loaded_ = false;
  bool ak_loaded_ = false;
};

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_TRUSTED_TPM_H_
