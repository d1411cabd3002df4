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
//   POST /v1/attest        {host, nonce, session_key, attest, signature, pcr_values[],
//                           event_log?}              -> {token}
// Key provider service:
//   POST /v1/kek           {token, proof, transport_key}             -> {kek_id, ciphertext, kek}
//   POST /v1/kek/unwrap    {token, proof, ciphertext, transport_key} -> {kek}
// clang-format on
//   The quote is over QuoteQualifyingData(nonce, session_key) and `proof`
//   is SignRequestProof(session key, ...) (taprotocol/proof.h).
//   `kek` is a SealedKey: the KEK sealed to the caller's one-time key.
//   `event_log` (optional) is the host's binary firmware event log
//   (trustauthority/eventlog.h), at most kMaxEventLogSize bytes before
//   base64.
// Errors: 400 (malformed: usage, invalid_argument), 403 (permission_denied,
// crypto), 404 (not_found), 429 (busy: the client's rate limit), 503
// (busy: a cap on outstanding nonces or challenges), 500 (anything else),
// each with
// {"error": {"code", "message"}} and a one-line message.
//
// cpp-httplib runs handlers on a thread pool. The attestation service is
// thread-safe (trustauthority/attestation.h) and its routes take no lock:
// one request stuck in I/O (a slow or hung state file system) does not
// hold up the others. The key provider service is not; its routes
// serialise calls with a mutex.
#ifndef VCRYPT_TRUSTAUTHORITY_HTTP_H_
#define VCRYPT_TRUSTAUTHORITY_HTTP_H_

#include <mutex>

#include "trustauthority/attestation.h"
#include "trustauthority/kps.h"

namespace httplib {
class Server;
}

namespace vcrypt {

// A token bucket per client address on the routes that take no
// authentication (/v1/nonce, /v1/enroll; one bucket for both): `burst`
// requests at once, refilled at `per_second`. Beyond: 429 with the usual
// JSON error, and the service is not called. per_second 0: no limit.
struct ClientRateLimit {
  double per_second = 50;
  double burst = 100;
};

void AddAttestationRoutes(httplib::Server& server, AttestationService& service,
                          ClientRateLimit limit = {});
void AddKpsRoutes(httplib::Server& server, KeyProviderService& service,
                  std::mutex& mu);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_HTTP_H_
