// The key provider service's logic, without its HTTP front (docs/trusted.md,
// "Key provider service"): KEKs released only against a valid attestation
// token.
//
// A KEK is 256 random bits, handed to the host sealed to the one-time
// transport key it sent (taprotocol/transport.h; context = the KEK ID)
// and as a ciphertext the host stores in its volumes' tokens:
//   {"v":1,"provider":ID,"kek_id":K,"wrapped":WrappedKey}   (compact JSON)
// wrapped under the service's primary key with AES-256-GCM, AAD binding the
// provider ID and the KEK ID. The primary key is held by a KMS (KMIP);
// whoever constructs the service fetched it and passes it in.
//
// Request admission, each fatal: VerifyToken (pinned ES256 key, issuer,
// audience, expiry, lifetime); the token is bound to a session key (`cnf`)
// and the request's proof verifies under it for this very request
// (taprotocol/proof.h); the baseline the token names is still approved
// (an unexpired row in the shared store's baselines); the request was
// never seen before (token jti + proof jti: a row in the store's used
// ids, single use across replicas by its primary key). A token is thus reusable
// until it expires, by the host that holds its session key, one fresh proof per
// request.
#ifndef VCRYPT_TRUSTAUTHORITY_KPS_H_
#define VCRYPT_TRUSTAUTHORITY_KPS_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "taprotocol/jws.h"
#include "taprotocol/transport.h"
#include "trustauthority/store.h"

namespace vcrypt {

struct KpsConfig {
  std::shared_ptr<TaStore> store;  // the Trust Authority's shared state
  std::string provider_id;  // this provider's name in every ciphertext
  TokenPolicy policy{"vcrypt-attestation", "vcrypt-kps"};
};

inline constexpr std::string_view kKekPath = "/v1/kek";
inline constexpr std::string_view kKekUnwrapPath = "/v1/kek/unwrap";

// One request to the service (the HTTP body's fields, decoded).
struct KpsRequest {
  std::string token;
  std::string proof;                   // SignRequestProof for this request
  std::vector<uint8_t> transport_key;  // the host's one-time P-256 point
  std::string ciphertext;              // unwrap only
};

struct KekGrant {
  std::string kek_id;
  std::string ciphertext;  // not secret: safe to store in a volume token
  SealedKey kek;           // the KEK, sealed to the caller's transport key
};

class KeyProviderService {
 public:
  // `attestation_key` is the attestation service's public token key
  // (AttestationTokenKey reads it from the store);
  // `primary_key` is kAeadKeySize bytes.
  static Result<KeyProviderService> Open(KpsConfig config,
                                         EcVerifyKey attestation_key,
                                         SecureBuffer primary_key);

  // kPermissionDenied / kCrypto / kInvalidArgument from admission;
  // kInvalidArgument for a transport key that is not a P-256 point.
  Result<KekGrant> CreateKek(const KpsRequest& req);
  // The KEK of req.ciphertext sealed to req.transport_key. kCrypto when the
  // ciphertext was altered or made by another provider.
  Result<SealedKey> UnwrapKek(const KpsRequest& req);

  // The token's claims if the request is admitted for `path` (and its
  // proof's jti consumed).
  Result<AttestationClaims> Admit(const KpsRequest& req, std::string_view path);

 private:
  KeyProviderService(KpsConfig c, EcVerifyKey k, SecureBuffer p)
      : config_(std::move(c)), key_(std::move(k)), primary_(std::move(p)) {}

  KpsConfig config_;
  EcVerifyKey key_;
  SecureBuffer primary_;
  std::unique_ptr<std::mutex> purge_mu_ = std::make_unique<std::mutex>();
  std::chrono::system_clock::time_point last_purge_{};
};

// The public key of the store's active token signing key (the one the
// attestation service signs with). kNotFound when the store has none (not
// initialised). With several keys (rotation) this becomes a set chosen by
// the token's kid.
Result<EcVerifyKey> AttestationTokenKey(TaStore& store);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_KPS_H_
