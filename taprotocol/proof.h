// Proof of possession for the key provider service's requests
// (docs/trusted.md, "Tokens, caching and replay").
//
// A host caches its attestation token until shortly before it expires and
// uses it for many KEK requests. A bearer token alone could then be
// replayed by whoever copied it. So the token is bound to a key only the
// host holds, and every request carries a fresh proof signed with it (the
// pattern of RFC 9449, DPoP):
//   1. The host makes a P-256 session key for each attestation and quotes
//      QuoteQualifyingData(nonce, session point) instead of the bare nonce:
//      the TPM quote itself vouches that this session key belongs to the
//      attested host.
//   2. The attestation service puts the session key in the token's `cnf`
//      claim (RFC 7800).
//   3. Each KPS request carries a proof: a JWS (ES256, typ kProofType)
//      signed by the session key, with claims
//        jti  random, single use (the KPS's store, shared by replicas)
//        iat  now (the KPS accepts kProofMaxAge either way)
//        htu  the request path ("/v1/kek", "/v1/kek/unwrap")
//        ath  base64url(SHA-256(token))
//        tk   base64url(SHA-256(transport key point))
//        ch   base64url(SHA-256(ciphertext)), only for /v1/kek/unwrap
//      so a proof is good for one request of one token, once.
// A copied request replayed as is fails on the proof's jti; a copied token
// with a new proof fails without the session key.
#ifndef VCRYPT_TAPROTOCOL_PROOF_H_
#define VCRYPT_TAPROTOCOL_PROOF_H_

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "taprotocol/jws.h"

namespace vcrypt {

inline constexpr std::string_view kProofType = "vcrypt-kps-proof+jwt";
inline constexpr std::chrono::seconds kProofMaxAge{60};

// SHA-256("vcrypt-attest-v1" || 0x00 || nonce || session_point): what the
// host's TPM quotes (TPMS_ATTEST.extraData), 32 bytes.
std::vector<uint8_t> QuoteQualifyingData(std::span<const uint8_t> nonce,
                                         std::span<const uint8_t> session_point);

// The proof for one request (see the file comment). `ciphertext` is empty
// for /v1/kek.
Result<std::string> SignRequestProof(const EcSigningKey& session,
                                     std::string_view token,
                                     std::string_view path,
                                     std::span<const uint8_t> transport_point,
                                     std::string_view ciphertext);

struct ProofClaims {
  std::string jti;
  int64_t iat = 0;
};

// Checks `proof` for this request: signed by `session` (the token's cnf
// key), typ kProofType, htu == `path`, ath/tk/ch matching the request,
// |now - iat| <= kProofMaxAge. It does not consume the jti: the caller
// does (TaStore::ConsumeOnce) and refuses the request unless it is fresh.
// kInvalidArgument (malformed), kCrypto (signature, key, algorithm),
// kPermissionDenied (bound to another request or too old).
Result<ProofClaims> VerifyRequestProof(
    std::string_view proof, const EcVerifyKey& session, std::string_view token,
    std::string_view path, std::span<const uint8_t> transport_point,
    std::string_view ciphertext, std::chrono::system_clock::time_point now);

}  // namespace vcrypt

#endif  // VCRYPT_TAPROTOCOL_PROOF_H_
