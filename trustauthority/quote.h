// TPM 2.0 attestation, verifier side (docs/trusted.md, "Attestation").
//
// Everything here works on the TPM wire encoding (what Tss2_MU_*_Marshal
// produces and the host sends base64-encoded): TPM2B_PUBLIC for keys,
// TPMS_ATTEST and TPMT_SIGNATURE for quotes. Nothing talks to a TPM; the
// host side lives in keyproviders/trusted/.
//
// All parsers take untrusted bytes: they never crash, never read past the
// input, and refuse trailing bytes (so one message has one meaning).
#ifndef VCRYPT_TRUSTAUTHORITY_QUOTE_H_
#define VCRYPT_TRUSTAUTHORITY_QUOTE_H_

#include <openssl/x509.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/handles.h"
#include "common/result.h"

namespace vcrypt {

// ---------------------------------------------------------------------------
// Hash algorithms
// ---------------------------------------------------------------------------

// The OpenSSL digest for a TPM hash algorithm: TPM2_ALG_SHA1, SHA256,
// SHA384 and SHA512; nullptr for anything else (including TPM2_ALG_NULL).
const EVP_MD* TpmHashToEvp(TPMI_ALG_HASH alg);
// The digest size in bytes of a TPM hash algorithm; 0 when unsupported.
size_t TpmHashSize(TPMI_ALG_HASH alg);

// ---------------------------------------------------------------------------
// TPM public keys (EK, AK)
// ---------------------------------------------------------------------------

// A parsed TPM2B_PUBLIC whose key OpenSSL can use.
//
// Supported: RSA 2048/3072/4096 and ECC NIST P-256 keys, with nameAlg
// SHA-1/256/384/512. Copies share the (immutable) EVP_PKEY.
struct TpmPublic {
  TpmPublic() = default;
  TpmPublic(const TpmPublic& other);
  TpmPublic& operator=(const TpmPublic& other);
  TpmPublic(TpmPublic&&) noexcept = default;
  TpmPublic& operator=(TpmPublic&&) noexcept = default;

  TPMT_PUBLIC area{};
  // The TPM2B_PUBLIC wire bytes this was parsed from (canonical).
  std::vector<uint8_t> wire;
  // The key's Name: nameAlg (2 bytes, big endian) || H_nameAlg(TPMT_PUBLIC
  // as marshaled). This is what the TPM binds credentials and policies to.
  std::vector<uint8_t> name;
  // The public key; never null in a TpmPublic that a function returned.
  EvpPkeyPtr key;
};

// Parses a TPM2B_PUBLIC. kInvalidArgument when the bytes are not exactly
// one canonically encoded TPM2B_PUBLIC (trailing bytes, a size field that
// disagrees with the content, an encoding that re-marshals differently:
// the Name must be the one the TPM computes), or when the key type, size,
// curve or nameAlg is unsupported, or the key is not a valid public key.
Result<TpmPublic> ParseTpm2bPublic(std::span<const uint8_t> tpm2b_public);

// An attestation key as the TPM requires for quotes: sign, restricted,
// fixedTPM, fixedParent and sensitiveDataOrigin set, decrypt clear. Only a
// restricted key guarantees that a signature over data starting with
// TPM2_GENERATED_VALUE was produced by the TPM itself (the TPM refuses to
// sign such data given from outside).
bool IsRestrictedSigningKey(const TpmPublic& key);
// The shape of an endorsement key (TCG EK templates): restricted and
// decrypt set (a storage key that credentials can be made for), sign
// clear, fixedTPM and fixedParent set.
bool IsEndorsementKeyShape(const TpmPublic& key);

// The key's SubjectPublicKeyInfo, DER or PEM ("-----BEGIN PUBLIC KEY-----").
Result<std::vector<uint8_t>> PublicKeyDer(const TpmPublic& key);
Result<std::string> PublicKeyPem(const TpmPublic& key);

// OK when `certificate` certifies exactly this key (an EK certificate check:
// the chain to a registered TPM CA is verified elsewhere). kCrypto when the
// keys differ, kInvalidArgument when the certificate has no usable key.
Status CheckCertificateKey(const TpmPublic& key, const X509* certificate);

// ---------------------------------------------------------------------------
// Quotes
// ---------------------------------------------------------------------------

// TPMS_CLOCK_INFO. The counters let a verifier notice replays from an
// earlier boot. The TPM obfuscates resetCount/restartCount for keys outside
// the endorsement and platform hierarchies; an AK made under the EK (as
// tpm2_createak and keyproviders/trusted/ do) reports them in clear.
struct ClockInfo {
  uint64_t clock = 0;          // ms the TPM has been powered
  uint32_t reset_count = 0;    // TPM Resets (reboots) since TPM2_Clear
  uint32_t restart_count = 0;  // Restarts/Resumes since the last Reset
  bool safe = false;           // no larger clock was ever reported
  bool operator==(const ClockInfo&) const = default;
};

// One bank of a PCR selection.
struct PcrSelection {
  TPMI_ALG_HASH hash = TPM2_ALG_SHA256;
  std::vector<uint32_t> pcrs;  // ascending, no duplicates
  bool operator==(const PcrSelection&) const = default;
};

struct ParsedQuote {
  uint32_t magic = 0;
  uint16_t type = 0;  // TPMI_ST_ATTEST
  std::vector<uint8_t> qualified_signer;
  std::vector<uint8_t> extra_data;  // the nonce the quote was made over
  ClockInfo clock;
  uint64_t firmware_version = 0;
  // Only for type == TPM2_ST_ATTEST_QUOTE (empty otherwise): the banks in
  // the order the TPM listed them, and the digest of the quoted PCR values.
  std::vector<PcrSelection> selection;
  std::vector<uint8_t> pcr_digest;
};

// Parses a TPMS_ATTEST (structure only: magic and type are reported, not
// checked; use VerifyQuote for anything that is trusted). kInvalidArgument
// when the bytes are not exactly one TPMS_ATTEST.
Result<ParsedQuote> ParseQuote(std::span<const uint8_t> tpms_attest);

// What a quote is verified against.
struct QuoteCheck {
  // The AK enrolled for this host (bound to its EK by credential
  // activation). Must be a restricted signing key with a SHA-256 scheme
  // (or no scheme, then the signature must use SHA-256).
  TpmPublic ak;
  // The nonce the verifier issued for this quote (1..64 bytes; 32 in
  // docs/trusted.md). VerifyQuote only compares it: making sure that the
  // nonce is fresh, unexpired and consumed exactly once is the CALLER's job
  // (the attestation service's nonce store); without that, a recorded quote
  // can be replayed.
  std::vector<uint8_t> nonce;
  // The selection the verifier asked for: one bank, PCR indices ascending,
  // no duplicates, each below 32.
  PcrSelection expected;
  // The PCR values the host reported, one per index of `expected.pcrs` in
  // that (ascending) order, each of the bank's digest size. VerifyQuote
  // proves that they are the values the TPM quoted; comparing them with a
  // baseline is the caller's job.
  std::vector<std::vector<uint8_t>> pcr_values;
  // The clock info of the last quote accepted for this AK, if any.
  std::optional<ClockInfo> last_clock;
};

// Verifies a quote: `attest` is the TPMS_ATTEST and `tpmt_signature` the
// TPMT_SIGNATURE, both as the TPM returned them (wire encoding). Checks, in
// this order, each fatal with a one-line kCrypto error:
//   1. the signature over `attest` exactly as received, with check.ak: the
//      scheme must be the AK's (ECDSA for ECC keys, RSASSA or RSAPSS for RSA
//      keys) with SHA-256;
//   2. `attest` is exactly one TPMS_ATTEST;
//   3. magic == TPM2_GENERATED_VALUE;
//   4. type == TPM2_ST_ATTEST_QUOTE;
//   5. extraData == check.nonce (same length, constant-time compare);
//   6. the quoted selection == check.expected exactly (one bank entry, the
//      same bank, the same set of PCRs);
//   7. every reported value has the bank's digest size and the SHA-256 of
//      their concatenation equals pcrDigest (the TPM digests the values
//      with the signing scheme's hash, here always SHA-256);
//   8. with check.last_clock: resetCount not lower, and with an equal
//      resetCount, restartCount not lower.
// A malformed `check` (AK not a restricted signing key, empty or oversized
// nonce, bad expected selection) is kInvalidArgument and checks nothing.
// Returns the parsed quote; the caller stores its clock as the next
// last_clock for this AK.
Result<ParsedQuote> VerifyQuote(std::span<const uint8_t> attest,
                                std::span<const uint8_t> tpmt_signature,
                                const QuoteCheck& check);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_QUOTE_H_
