// Credential making for AK enrollment (docs/trusted.md, "AK enrollment").
//
// The Trust Authority computes TPM2_MakeCredential in software (TPM 2.0
// Part 1, 24 "Credential Protection"; Part 3, TPM2_MakeCredential): a
// secret is sealed so that only a TPM holding the EK's private part *and* a
// loaded object with the given Name can recover it with
// TPM2_ActivateCredential. The host returns the secret, which proves that
// its AK lives in the same TPM as its EK.
#ifndef VCRYPT_TRUSTAUTHORITY_CREDENTIAL_H_
#define VCRYPT_TRUSTAUTHORITY_CREDENTIAL_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "trustauthority/quote.h"

namespace vcrypt {

// TPM2_MakeCredential's outputs, TPM wire encoding, ready for
// TPM2_ActivateCredential (no secret in clear: both are encrypted).
struct MadeCredential {
  std::vector<uint8_t> credential_blob;   // TPM2B_ID_OBJECT
  std::vector<uint8_t> encrypted_secret;  // TPM2B_ENCRYPTED_SECRET
};

// Makes a credential carrying `secret` for the object named `ak_name` (a
// TPM Name: 2-byte hash algorithm || digest) protected by `ek`.
//
// `ek` must be a restricted decryption key (IsEndorsementKeyShape) with an
// AES-CFB symmetric definition (128, 192 or 256 bits) and a
// SHA-256/384/512 nameAlg, as the TCG EK templates are. The seed (nameAlg
// digest size) is protected as TPM2_MakeCredential does:
//  - RSA EK: a random seed, RSA-OAEP-encrypted to the EK (hash = nameAlg,
//    label "IDENTITY\0"); encrypted_secret holds the ciphertext.
//  - ECC EK (NIST P-256): ECDH with an ephemeral key, seed =
//    KDFe(nameAlg, Z, "IDENTITY\0", ephemeral x, EK x); encrypted_secret
//    holds the ephemeral public point (TPMS_ECC_POINT).
// The secret is encrypted with KDFa(nameAlg, seed, "STORAGE", ak_name) in
// AES-CFB with a zero IV and integrity-protected with HMAC-nameAlg keyed by
// KDFa(nameAlg, seed, "INTEGRITY") over the ciphertext and ak_name.
//
// `secret`: 1 byte up to the EK nameAlg's digest size (the TPM refuses a
// larger credential). The caller keeps it to compare with what the host
// sends back (SecureBuffer::Equals).
//
// kInvalidArgument for an unusable EK, a malformed Name or a secret of the
// wrong size.
Result<MadeCredential> MakeCredential(const TpmPublic& ek,
                                      std::span<const uint8_t> ak_name,
                                      const SecureBuffer& secret);

// KDFa (TPM 2.0 Part 1, 11.4.10.2; SP 800-108 counter mode with HMAC):
// `bits` (a positive multiple of 8) of key from `key`, with Label `label`
// (a NUL separator follows it), Context contextU || contextV, and L =
// `bits`. Exposed for tests and for the host side.
Result<SecureBuffer> Kdfa(TPMI_ALG_HASH hash, const SecureBuffer& key,
                          std::string_view label,
                          std::span<const uint8_t> context_u,
                          std::span<const uint8_t> context_v, size_t bits);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_CREDENTIAL_H_
