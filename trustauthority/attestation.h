// The attestation service's logic, without its HTTP front (docs/trusted.md,
// "Attestation"): registrations and baselines, AK enrollment by credential
// activation, nonces, quote verification, attestation tokens.
//
// State lives in a TaStore (trustauthority/store.h: SQLite on one node,
// PostgreSQL shared by replicas): TPM CAs, hosts (registered EK, the EK
// pinned on first use, the enrolled AK, the last clock), baselines
// (documents {"values": [hex...]} over the service's PCR selection, or an
// event-log policy, trustauthority/eventlog_policy.h; with the row's
// expiry),
// pending enrollments (single use: one DELETE finds the row), the nonce
// MAC key and the used nonces (single use: the used_ids primary key).
// A nonce carries its expiry and a MAC over it and the host's name
// (attestation.cc), so issuing one writes nothing; the first redemption
// records it. Expired challenges and used-nonce records are purged a
// minute after they expire (at most once a minute per instance, on the
// enrollment and attestation paths). Each instance caps the challenges
// that it issued and that are neither finished nor expired
// (AttestationConfig::max_outstanding; counted in memory). A host's last
// clock is last-writer-wins between replicas.
#ifndef VCRYPT_TRUSTAUTHORITY_ATTESTATION_H_
#define VCRYPT_TRUSTAUTHORITY_ATTESTATION_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "taprotocol/jws.h"
#include "trustauthority/credential.h"
#include "trustauthority/quote.h"
#include "trustauthority/store.h"

namespace vcrypt {

struct AttestationConfig {
  // Required: the shared state (replicas share one store).
  std::shared_ptr<TaStore> store;
  std::string issuer = "vcrypt-attestation";
  std::string audience = "vcrypt-kps";  // the key provider service
  // The one PCR selection every host quotes and every baseline covers.
  PcrSelection selection{TPM2_ALG_SHA256, {0, 1, 2, 3, 4, 5, 6, 7}};
  std::chrono::seconds nonce_lifetime{60};
  std::chrono::seconds enrollment_lifetime{300};
  std::chrono::seconds token_lifetime{300};
  // Unfinished, unexpired enrollment challenges this service instance has
  // issued, at most this many: beyond, StartEnrollment fails with kBusy
  // (HTTP 503) and writes nothing. Bounds the rows an unauthenticated
  // client can make the service write. (Nonces need no cap: they are
  // made without state.)
  size_t max_outstanding = 10000;
};

struct EnrollmentChallenge {
  std::string id;
  MadeCredential credential;
};

struct NonceGrant {
  std::vector<uint8_t> nonce;
  PcrSelection selection;
  int64_t expires = 0;  // unix seconds
};

// Thread-safe: the HTTP server calls it from several threads at once,
// with no lock around the whole call. Its state is safe between threads
// the way it is between replicas (the store's single-use inserts and
// deletes, conditional updates); the in-memory counters take their own
// short lock.
class AttestationService {
 public:
  // Reads (making it on first use) the store's nonce key.
  static Result<AttestationService> Open(AttestationConfig config,
                                         EcSigningKey key);

  // --- administration (vcrypt-ta admin) ---
  // A TPM manufacturer's CA certificate (PEM); EK certificates must chain
  // to one of them unless the host's EK is registered explicitly.
  Status AddTpmCa(const std::string& pem);
  // Registers a host (kExists if it is); with `ek`, only that EK (TPM2B_PUBLIC)
  // is accepted for it, else an EK certificate chaining to a registered TPM CA,
  // and then only the EK of the first TPM that finishes enrolling as it (trust
  // on first use, recorded in the host's record) until the host is removed.
  Status AddHost(const std::string& host,
                 std::optional<std::vector<uint8_t>> ek);
  Status RemoveHost(const std::string& host);
  // An approved baseline: the values of the service's selection, in its
  // order (kExists if one has the name).
  Status AddBaseline(const std::string& name,
                     const std::vector<std::vector<uint8_t>>& values);
  Status RemoveBaseline(const std::string& name);

  // --- AK enrollment ---
  // Checks that `host` is registered and that `ek` is acceptable (the
  // registered key, or `ek_cert` certifies it and chains to a TPM CA),
  // that `ak` is a restricted signing key, and returns a credential only
  // that TPM (EK) holding that AK can open. kNotFound (host),
  // kPermissionDenied (EK not trusted, or not the EK the host is pinned
  // to), kInvalidArgument (malformed keys), kBusy (max_outstanding
  // challenges out; nothing written).
  Result<EnrollmentChallenge> StartEnrollment(
      const std::string& host, std::span<const uint8_t> ek,
      std::optional<std::vector<uint8_t>> ek_cert, std::span<const uint8_t> ak);
  // The secret the TPM recovered: binds the AK to the host (and, for a
  // host registered by TPM CA, pins the host to the EK if it is the
  // first). Single use; kPermissionDenied for a wrong secret, an unknown
  // or expired id, or an EK other than the one the host got pinned to
  // since the challenge was issued.
  Status FinishEnrollment(const std::string& id, const SecureBuffer& secret);

  // --- attestation ---
  // kNotFound (host). Writes nothing and takes no lock: a nonce is its
  // expiry, random bytes and a MAC binding them to `host`.
  Result<NonceGrant> IssueNonce(const std::string& host);
  // Verifies the quote (trustauthority/quote.h VerifyQuote, with the
  // host's enrolled AK and last clock; its extraData must be
  // QuoteQualifyingData(nonce, session_point), taprotocol/proof.h),
  // that the nonce is one this service (or a replica sharing its store)
  // issued to `host` and unexpired, records it as used (single use,
  // across replicas; only once the quote verified),
  // compares the PCR values (and `event_log`, the host's binary firmware
  // log if it sent one) with every baseline (MatchBaseline,
  // trustauthority/eventlog_policy.h: raw values or an event-log policy)
  // and returns a signed token naming the one matched and bound to the
  // session key (`cnf`).
  // kPermissionDenied when the nonce, the host or the baseline check
  // fails (the message says why no baseline matched); kCrypto when the
  // quote does not verify.
  Result<std::string> Attest(
      const std::string& host, std::span<const uint8_t> nonce,
      std::span<const uint8_t> session_point, std::span<const uint8_t> attest,
      std::span<const uint8_t> signature,
      const std::vector<std::vector<uint8_t>>& pcr_values,
      const std::optional<std::vector<uint8_t>>& event_log = std::nullopt);

  const AttestationConfig& config() const { return config_; }
  const EcSigningKey& key() const { return key_; }

 private:
  AttestationService(AttestationConfig config, EcSigningKey key,
                     SecureBuffer nonce_key)
      : config_(std::move(config)),
        key_(std::move(key)),
        nonce_key_(std::move(nonce_key)) {}
  TaStore& store() const { return *config_.store; }

  // At most once a minute per instance: removes enrollment challenges and
  // used-nonce records expired for over a minute (store.h, Purge).
  void MaybePurge();

  AttestationConfig config_;
  EcSigningKey key_;
  SecureBuffer nonce_key_;  // MACs the nonces (the store's)
  // Expiry times of the unfinished challenges this instance issued (those
  // in the store when it opened included): the cap's count, without
  // querying the store per request.
  std::multiset<int64_t> enrollment_expiries_;
  // counters: last_purge_ and the expiry set (never held across I/O).
  struct Locks {
    std::mutex counters;
  };
  std::unique_ptr<Locks> locks_ = std::make_unique<Locks>();
  int64_t last_purge_ = 0;  // unix seconds of the last MaybePurge
};

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_ATTESTATION_H_
