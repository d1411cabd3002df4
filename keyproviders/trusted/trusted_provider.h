// The trusted key provider (docs/trusted.md, docs/trusted-host.md): KEKs
// from a Trust Authority's key provider service, released only to a host
// that proved with a TPM 2.0 quote to the attestation service that it
// booted an approved configuration.
//
// Attestation: POST /v1/nonce; the TPM's AK quotes the service's PCR
// selection over QuoteQualifyingData(nonce, session point)
// (taprotocol/proof.h); POST /v1/attest returns a token bound to a
// fresh P-256 "session key" made for that attestation. Every KPS request
// carries the token and a proof signed with the session key
// (SignRequestProof), so a token copied off the host is useless without
// the key, which lives in this process's memory only.
//
// Token cache: one token (and its session key) is reused until 30 s before
// its `exp` (read from the token's payload without verification: the host
// does not hold the service's key and needs exp only to know when to ask
// again; for a token living 60 s or less, until half its life). One
// attestation at a time: concurrent callers needing a token wait for the
// attestation in flight and share its result. An attestation refused by
// the service is retried once after enrolling the AK again (the service
// forgets AKs, e.g. when a host is re-registered, and the TPM's AK changes
// when its endorsement seed does). A KPS request refused (403) with a
// cached token is retried once with a fresh attestation (the token may
// have been revoked with its baseline, or the service's key rotated).
//
// The TPM is opened for each attestation (Tpm::Open(tcti)) and closed
// again: attestations are minutes apart, and a long-lived TCTI connection
// would pin the kernel resource manager's session for nothing.
//
// Files under the provider directory (0700; files 0600, atomic writes):
//   config.json  {"version":1,"type":"trusted","name":..,"attestation":URL,
//                 "kps":URL,"host":..,"tcti":..,"connect_timeout_ms":..,
//                 "io_timeout_ms":..,"created":..,
//                 "event_log": path or "" (absent: the default)}
//   ca.pem       the only trust anchor for both services
//
// KekRef for trusted: kek_id = the KPS's KEK ID; data = {"ciphertext": the
// KPS's KEK ciphertext} (not secret; only that KPS can open it).
//
// Thread-safe.
#ifndef VCRYPT_KEYPROVIDERS_TRUSTED_TRUSTED_PROVIDER_H_
#define VCRYPT_KEYPROVIDERS_TRUSTED_TRUSTED_PROVIDER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "keyproviders/key_provider.h"
#include "keyproviders/tpm/tpm_context.h"  // kDefaultTcti
#include "keyproviders/trusted/ta_client.h"

namespace vcrypt {

struct TrustedProviderConfig {
  std::string attestation_url;
  std::string kps_url;
  std::string ca_pem;  // trust anchors (PEM) for both services
  std::string host;    // empty: gethostname()
  std::string tcti;    // empty: kDefaultTcti
  // The firmware event log sent with each quote (docs/trusted.md,
  // "Event-log baselines"). nullopt: kDefaultEventLog when it exists
  // (readable) at the time of the attestation, else none; "": never
  // send one; an absolute path: that file, which must be readable.
  std::optional<std::string> event_log;
};

// Where Linux exposes the firmware's TCG event log (securityfs).
inline constexpr const char* kDefaultEventLog =
    "/sys/kernel/security/tpm0/binary_bios_measurements";

// The event log to send for the setting `event_log` (as in
// TrustedProviderConfig): nullopt when there is none to send. Reads at
// most kMaxHostEventLog bytes (the service's limit, 1 MiB): a larger
// configured file is kInvalidArgument; the default file, when missing,
// unreadable or larger, is not sent (raw baselines do not need it).
// Configured file unreadable: kNotFound / kPermissionDenied / kIo.
inline constexpr size_t kMaxHostEventLog = size_t{1} << 20;
Result<std::optional<std::vector<uint8_t>>> ReadHostEventLog(
    const std::optional<std::string>& event_log);

struct TrustedProviderOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds io_timeout{10000};
  // Seconds since the epoch; decides when a cached token is too old. Tests
  // move it forward; empty: the system clock.
  std::function<int64_t()> now;
  // Whether the TCTI may be a simulator's (CheckTcti in tpm.h): Create
  // and Load refuse anything else but TPM device nodes without it.
  bool allow_test_tcti = false;
};

class TrustedProvider : public KeyProvider {
 public:
  // Seconds before `exp` at which a cached token is no longer used.
  static constexpr int64_t kRefreshMarginSeconds = 30;

  // Writes the provider's files into a fresh `dir` (must not exist) after
  // checking, in order: the URLs and CA parse; the TPM answers; the
  // attestation service is reachable and enrolls this host's AK
  // (/v1/enroll, TPM2_ActivateCredential, /v1/enroll/finish); one
  // attestation succeeds (the host is trusted now). Any failure: nothing
  // written, one line naming the step (host not registered, TPM not
  // trusted, PCRs match no approved baseline, service unreachable, ...).
  // The token of that attestation is cached.
  static Result<std::unique_ptr<TrustedProvider>> Create(
      const std::string& name, const std::string& dir,
      const TrustedProviderConfig& config, TrustedProviderOptions options = {});
  // `options.now` and timeouts other than the stored ones are for tests.
  static Result<std::unique_ptr<TrustedProvider>> Load(
      const std::string& name, const std::string& dir,
      TrustedProviderOptions options = {});

  ~TrustedProvider() override;

  const std::string& name() const override { return name_; }
  std::string_view type() const override { return "trusted"; }
  // Attests if needed, then POST /v1/kek with a one-time transport key.
  Result<NewKek> CreateKek(std::string_view vm) override;
  // POST /v1/kek/unwrap with ref.data.ciphertext. kInvalidVolume when the
  // ref has no ciphertext; kCrypto when the KPS refuses it as altered or
  // another provider's, or the sealed KEK does not open for ref.kek_id;
  // kKeyUnavailable when a service is unreachable or attestation fails.
  Result<SecureBuffer> GetKek(const KekRef& ref) override;
  // URLs, host, TCTI, whether a token is cached and until when. No secrets.
  nlohmann::json Describe() const override;

  // Attestations done by this object (for tests and `provider show`).
  uint64_t attestations() const;

 private:
  struct Session;
  struct Settings {
    std::string attestation_url, kps_url, host, tcti;
    std::optional<std::string> event_log;  // TrustedProviderConfig's
  };
  TrustedProvider(std::string name, std::string dir, Settings s,
                  TaClient attestation, TaClient kps,
                  TrustedProviderOptions options);

  int64_t Now() const;
  // A usable session: the cached one unless it is too old or is `stale`
  // (one the KPS just refused); otherwise a fresh attestation. Sets
  // *fresh when this call attested.
  Result<std::shared_ptr<const Session>> GetSession(const Session* stale,
                                                    bool* fresh);
  // One attestation, cached on success; with `may_reenroll`, enrolls the
  // AK again once if the service refuses the quote. Caller holds
  // attest_mu_.
  Result<std::shared_ptr<const Session>> Attest(bool may_reenroll);
  // Enrolls the TPM's AK with the attestation service.
  Status Enroll();
  // Runs `call` with a session; retries once with a fresh attestation when
  // the KPS refuses a cached token (403). Errors get `prefix`.
  template <typename T, typename F>
  Result<T> WithSession(const std::string& prefix, F&& call);
  // POST /v1/kek (CreateKek; Create's check that the KPS takes the token).
  Result<NewKek> NewKekFromKps(const std::string& prefix);

  std::string name_;
  std::string dir_;
  Settings settings_;
  TaClient attestation_;
  TaClient kps_;
  TrustedProviderOptions options_;

  std::mutex attest_mu_;  // one attestation (and TPM user) at a time
  mutable std::mutex cache_mu_;
  std::shared_ptr<const Session> session_;  // guarded by cache_mu_
  uint64_t attestations_ = 0;               // guarded by cache_mu_
  // Attestation attempts and the last one's failure, so callers that
  // waited for a failing attempt share its error instead of each trying
  // (and timing out) in turn. Guarded by cache_mu_.
  uint64_t attempts_ = 0;
  std::optional<Error> last_failure_;
};

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_TRUSTED_TRUSTED_PROVIDER_H_
