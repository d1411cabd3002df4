// A secret sealed to this host's TPM 2.0, optionally bound to PCR values:
// how a native provider keeps its primary key (`provider add native
// --tpm`, keyproviders/native/native_provider.h).
//
// The sealed object is a keyedhash data object (the secret is its
// sensitive data) with fixedTPM|fixedParent|noDA, empty authValue, nameAlg
// SHA-256, created under a primary storage key of the owner hierarchy.
// Without PCRs it has userWithAuth (an empty password unseals it); with
// PCRs it has userWithAuth off and authPolicy = PolicyPCR over the SHA-256
// bank's current values of those PCRs, so only a policy session in which
// the PCRs still hold those values unseals it.
//
// The parent is derived, not stored: an ECC NIST P-256 restricted
// decryption key (AES-128-CFB, fixedTPM|fixedParent|sensitiveDataOrigin|
// userWithAuth|noDA, empty auth) with a `unique` value of vcrypt's own,
// re-created from the owner hierarchy's seed with TPM2_CreatePrimary on
// every use and flushed after. So the only thing stored is the sealed
// object's public and private areas, and they load only under the same
// parent: in the same TPM, until its owner hierarchy is cleared
// (tpm2_clear makes a new seed, and every sealed secret is lost with it).
// The owner hierarchy's authValue must be empty (the default).
//
// The secret never crosses the TPM interface in clear: TPM2_Create's
// sensitive input and TPM2_Unseal's output are encrypted with AES-128-CFB
// session parameter encryption, in an HMAC session salted with the parent
// (ECDH), so neither the bus nor the kernel's resource manager sees it.
// The result is in a SecureBuffer. tpm2-tss decrypts TPM2_Unseal's
// response in place, in its own command buffer (ordinary heap);
// UnsealSecret overwrites that part of the buffer with a TPM2_GetRandom
// response before closing the context. That is a best effort: tpm2-tss's
// internal copies are not this code's to wipe.
//
// Each call opens the TPM (OpenTpmContext), uses at most three transient
// slots, flushes them and closes it. Thread-safe as far as this code goes;
// the TPM (or the kernel's resource manager) serialises the commands.
#ifndef VCRYPT_KEYPROVIDERS_TPM_SEAL_H_
#define VCRYPT_KEYPROVIDERS_TPM_SEAL_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// The largest secret a sealed data object holds (MAX_SYM_DATA).
inline constexpr size_t kMaxSealedSecretSize = 128;
// A sealed blob is a marshalled TPM2B_PUBLIC followed by a marshalled
// TPM2B_PRIVATE; anything longer than this is not ours.
inline constexpr size_t kMaxSealedBlobSize = 4096;

// OK when `pcrs` is a PCR list SealSecret takes: 1 to 24 PCR indices in
// 0..23, strictly ascending. kInvalidArgument (one line) otherwise.
Status CheckPcrList(const std::vector<int>& pcrs);

// Seals `secret` (1..kMaxSealedSecretSize bytes) to the TPM at `tcti`
// (see the top of this file), bound to the current SHA-256 values of
// `pcrs` when not empty (CheckPcrList). Returns the blob to store: the
// sealed object's TPM2B_PUBLIC || TPM2B_PRIVATE in TPM wire encoding (not
// secret: only this TPM can load it). kInvalidArgument for a bad size or
// PCR list; kIo when the TPM cannot be reached or refuses (owner auth not
// empty, SHA-256 bank not allocated, ...), naming tpm2-tss's reason.
Result<std::vector<uint8_t>> SealSecret(const std::string& tcti,
                                        const SecureBuffer& secret,
                                        const std::vector<int>& pcrs);

// Unseals a blob SealSecret made with the same `pcrs`. Errors, one line:
//  - kInvalidArgument: the blob is not one SealSecret makes (does not
//    parse, trailing bytes, longer than kMaxSealedBlobSize, other object
//    type or attributes), or it was sealed with a PCR policy and `pcrs`
//    is empty, or the other way round;
//  - kKeyUnavailable: the TPM refuses it: "the TPM refused to load the
//    sealed object" (sealed by another TPM, the owner hierarchy was
//    cleared since, or the blob was altered: TPM_RC_INTEGRITY and the
//    like) or "the TPM refused to unseal it" (a PCR no longer holds the
//    value it was sealed to, or `pcrs` names other PCRs than at sealing:
//    TPM_RC_POLICY_FAIL), with tpm2-tss's reason;
//  - kIo: the TPM cannot be reached or fails otherwise.
Result<SecureBuffer> UnsealSecret(const std::string& tcti,
                                  std::span<const uint8_t> blob,
                                  const std::vector<int>& pcrs);

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_TPM_SEAL_H_
