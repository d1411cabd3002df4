// The Trust Authority's HTTP API (docs/trusted.md, "HTTP API"): routes of
// the attestation service and of the key provider service on a
// cpp-httplib server (an httplib::SSLServer in the vcrypt-ta binary; a
// plain one in tests). Bodies are JSON; TPM structures, keys and nonces
// travel as padded base64 of their wire bytes.
//
// clang-format off
// Attestation service:
//   POST /v1/enroll        {host, ek, ek_cert?, ak}  -> {id, credential_blob, encrypted_secret}
//   POST /v1/enroll/finish {id, secret}              -> {}
//   POST /v1/nonce         {host}                    -> {nonce, bank, pcrs, expires}
//   POST /v1/attest        {host, nonce, session_key, attest, signature, pcr_values[]}
//                                                    -> {token}
// Key provider service:
//   POST /v1/kek           {token, proof, transport_key}             -> {kek_id, ciphertext, kek}
//   POST /v1/kek/unwrap    {token, proof, ciphertext, transport_key} -> {kek}
// clang-format on
//   The quote is over QuoteQualifyingData(nonce, session_key) and `proof`
//   is SignRequestProof(session key, ...) (trustauthority/proof.h).
//   `kek` is a SealedKey: the KEK sealed to the caller's one-time key.
// Errors: 400 (malformed: usage, invalid_argument), 403 (permission_denied,
// crypto), 404 (not_found), 500 (anything else), each with
// {"error": {"code", "message"}} and a one-line message.
//
// The services are not thread-safe; the routes serialise calls to each
// with a mutex (cpp-httplib runs handlers on a thread pool).
#ifndef VCRYPT_TRUSTAUTHORITY_HTTP_H_
#define VCRYPT_TRUSTAUTHORITY_HTTP_H_

#include <mutex>

#include "trustauthority/attestation.h"
#include "trustauthority/kps.h"

namespace httplib {
class Server;
}

namespace vcrypt {

void AddAttestationRoutes(httplib::Server& server, AttestationService& service,
                          std::mutex& mu);
void AddKpsRoutes(httplib::Server& server, KeyProviderService& service,
                  std::mutex& mu);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_HTTP_H_
