// The Trust Authority's state (docs/trusted.md, "Replicas and state";
// docs/trusted-admin.md, "The database"): one interface, two databases.
//
//   sqlite:PATH                  one node, embedded (default: <state>/ta.db)
//   postgresql://... | postgres://... | libpq "key=value" conninfo
//                                replicas sharing one database
//
// Everything the attestation service and the key provider service keep,
// and everything replicas must share, is here: the settings (PCR
// selection, issuer, audience), registered hosts with their EK pin and
// enrolled AK, pending AK enrollments, baselines, TPM CA certificates,
// the nonce MAC key, the token signing key(s), and the ids already used
// (nonces, request proofs). Two replicas with one database behave as one
// service. Whoever can read the database can mint attestation tokens (it
// holds the signing key and the nonce key): guard it as the state
// directory was guarded. The keys come back in SecureBuffer; on their way
// they pass through the database library's own buffers and the database's
// files and memory, which this program cannot lock or wipe (SQLite's
// secure_delete overwrites deleted rows in the file).
//
// Single use is a uniqueness constraint: an id, a pin or an enrollment
// can be inserted (or deleted) by exactly one of any number of concurrent
// callers, whichever process or replica; no read-then-write decides it.
//
// Schema (migration 1; trustauthority/store.cc has the SQL):
//   schema_migrations(version PK, applied_at)
//   settings(key PK, value)
//   hosts(name PK, registration, ek, pinned_ek, pinned_at, enrolled_ek,
//         enrolled_ak, enrolled_at, last_clock)
//   enrollments(id PK, body, expires)
//   baselines(name PK, body, created_at, expires_at NULL)
//   tpm_cas(id PK, pem, added_at)
//   used_ids(kind, id, expires, PK(kind, id))
//   secrets(name PK, value BLOB/BYTEA)                  the nonce MAC key
//   signing_keys(kid PK, private_key BLOB/BYTEA, public_key, state,
//                created_at, retired_at NULL)
// Migrations are numbered, the same list for both databases, each applied
// in one transaction when a store is opened (PostgreSQL: under a
// transaction-level advisory lock, so replicas starting together on an
// empty database apply each once). A database newer than this program is
// refused.
//
// Thread-safe: a small pool of connections (up to four; SQLite: WAL, so
// readers never wait for the writer, and writers wait their turn up to a
// busy timeout, in this process and others. PostgreSQL: a broken
// connection is re-established once; statement_timeout bounds every
// statement, connect_timeout every connection). Times are unix seconds.
#ifndef VCRYPT_TRUSTAUTHORITY_STORE_H_
#define VCRYPT_TRUSTAUTHORITY_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// The schema version this program writes and reads.
inline constexpr int kTaSchemaVersion = 1;

struct HostRow {
  std::string name;
  std::string registration;  // random per registration (AddHost)
  // The EK (b64 TPM2B_PUBLIC) registered with the host; absent: any EK
  // certified by a TPM CA, then only the first one (pinned_ek).
  std::optional<std::string> ek;
  std::optional<std::string> pinned_ek;
  int64_t pinned_at = 0;
  std::optional<std::string> enrolled_ek, enrolled_ak;  // b64
  int64_t enrolled_at = 0;
  std::optional<std::string> last_clock;  // JSON (attestation.cc)
};

struct BaselineRow {
  std::string name;
  std::string body;  // a JSON document, opaque to the store
  int64_t created_at = 0;
  std::optional<int64_t> expires_at;  // none: until removed
};

struct TpmCaRow {
  std::string id;  // hex SHA-256 of the PEM
  std::string pem;
};

// The token signing keys' public side. state: "active" (signs new
// tokens; one at a time), "retired" (only verifies until its tokens
// expired). Rotation will add states; readers skip ones they do not know.
struct SigningKeyInfo {
  std::string kid;         // the key's RFC 7638 thumbprint (the JWS kid)
  std::string public_pem;  // SubjectPublicKeyInfo PEM
  std::string state;
  int64_t created_at = 0;
  std::optional<int64_t> retired_at;
};

class TaStore {
 public:
  virtual ~TaStore() = default;

  // "sqlite:PATH" or "postgresql:..." (the URL without secrets).
  virtual const std::string& url() const = 0;

  // --- settings and the one-time set-up ---
  virtual Result<std::optional<std::string>> GetSetting(
      const std::string& key) = 0;
  // One transaction: the settings, the first (active) signing key and the
  // nonce MAC key. kExists when the store was initialised already (a
  // "pcrs" setting) or has a nonce key.
  virtual Status Initialise(const std::map<std::string, std::string>& settings,
                            const SigningKeyInfo& key,
                            std::span<const uint8_t> private_pem,
                            std::span<const uint8_t> nonce_key) = 0;

  // --- keys ---
  // The nonce MAC key: `size` random bytes, made by the first caller on
  // any replica that finds none; all get that one.
  virtual Result<SecureBuffer> NonceKey(size_t size) = 0;
  // Sets the nonce key (import of an older installation's); kExists when
  // the store has one.
  virtual Status PutNonceKey(std::span<const uint8_t> key) = 0;
  virtual Status AddSigningKey(const SigningKeyInfo& key,
                               std::span<const uint8_t> private_pem) = 0;
  virtual Result<std::vector<SigningKeyInfo>> SigningKeys() = 0;
  // The PEM private key of `kid`; kNotFound.
  virtual Result<SecureBuffer> SigningKeyPrivate(const std::string& kid) = 0;

  // --- hosts ---
  virtual Status AddHost(const HostRow& host) = 0;  // kExists
  virtual Result<std::optional<HostRow>> GetHost(const std::string& name) = 0;
  virtual Result<std::vector<HostRow>> ListHosts() = 0;  // by name
  virtual Result<bool> RemoveHost(const std::string& name) = 0;
  // Pins registration `registration` of `name` to `ek` unless it is pinned
  // already; returns the EK it is pinned to (the first, on any replica).
  // kNotFound when that registration is gone.
  virtual Result<std::string> PinEk(const std::string& name,
                                    const std::string& registration,
                                    const std::string& ek, int64_t at) = 0;
  // Records the enrolled AK (and forgets the last clock) if `registration`
  // is still the host's; false otherwise.
  virtual Result<bool> SetEnrolled(const std::string& name,
                                   const std::string& registration,
                                   const std::string& ek, const std::string& ak,
                                   int64_t at) = 0;
  // Records the last quote's clock if `ak` is still the enrolled AK.
  virtual Status SetLastClock(const std::string& name, const std::string& ak,
                              const std::string& clock_json) = 0;

  // --- pending AK enrollments ---
  virtual Status PutEnrollment(const std::string& id, const std::string& body,
                               int64_t expires) = 0;
  // Removes and returns the enrollment's body: single use (one DELETE
  // finds the row). nullopt when there is none (expired or not).
  virtual Result<std::optional<std::string>> TakeEnrollment(
      const std::string& id) = 0;
  // The expiry times of the enrollments unexpired at `now`.
  virtual Result<std::vector<int64_t>> EnrollmentExpiries(int64_t now) = 0;

  // --- baselines (rows expired at `now` are ignored) ---
  // kExists when an unexpired one has the name, unless `replace`.
  virtual Status PutBaseline(const BaselineRow& b, bool replace,
                             int64_t now) = 0;
  virtual Result<std::optional<BaselineRow>> GetBaseline(
      const std::string& name, int64_t now) = 0;
  virtual Result<std::vector<BaselineRow>> ListBaselines(int64_t now) = 0;
  virtual Result<bool> RemoveBaseline(const std::string& name) = 0;

  // --- TPM CA certificates (adding one twice is a no-op) ---
  virtual Status AddTpmCa(const TpmCaRow& ca, int64_t at) = 0;
  virtual Result<std::vector<TpmCaRow>> ListTpmCas() = 0;

  // --- single use ---
  // true the first time (`kind`, `id`) is seen, false on every later call
  // from any thread, process or replica until Purge removes it. `id` (any
  // bytes; stored as its SHA-256) must be non-empty; `expires` is when it
  // stops being valid anyway. An error means: refuse the id.
  virtual Result<bool> ConsumeOnce(std::string_view kind, std::string_view id,
                                   int64_t expires) = 0;

  // Deletes used ids and enrollments expired before now - grace (grace
  // covers the verifiers' leeway and clock differences between replicas),
  // and baselines expired at `now`.
  virtual Status Purge(int64_t now, int64_t grace) = 0;
};

// Opens (creating the schema or migrating it) the store at `url`.
// kInvalidArgument for an unknown URL form or a URL holding a password;
// kIo when the database cannot be reached; kInvalidArgument naming both
// versions when the database's schema is newer than kTaSchemaVersion.
Result<std::shared_ptr<TaStore>> OpenTaStore(const std::string& url);

// The URL of the default store for a state directory: sqlite:DIR/ta.db.
std::string DefaultStoreUrl(const std::string& state_dir);

// Whether `url` names a PostgreSQL database (else SQLite).
bool IsPostgresUrl(std::string_view url);

// kInvalidArgument unless `url` is a store URL this program takes (and
// without a password); checks the form only, connects to nothing.
Status CheckStoreUrl(const std::string& url);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_STORE_H_
