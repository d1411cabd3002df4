#include "trustauthority/attestation.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "common/base64.h"
#include "common/handles.h"
#include "common/hex.h"
#include "common/names.h"
#include "common/random.h"
#include "taprotocol/proof.h"
#include "trustauthority/eventlog_policy.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<uint8_t> Sha256(std::span<const uint8_t> b) {
  std::vector<uint8_t> h(32);
  SHA256(b.data(), b.size(), h.data());
  return h;
}

// A JSON object the store holds (a pending enrollment, a baseline).
Result<Json> ParseObject(const std::string& text, const std::string& what) {
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object())
    return MakeError(ErrorCode::kIo,
                     what + " is not a JSON object (damaged state)");
  return j;
}

Status CheckName(const std::string& what, const std::string& name) {
  // Host and baseline names (once file names; the rule stays: they appear
  // in logs, tokens and admin output).
  if (name.empty() || name.size() > 64 ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW"
                             "XYZ0123456789._-") != std::string::npos ||
      name[0] == '.')
    return MakeError(
        ErrorCode::kInvalidArgument,
        "invalid " + what + " name '" + name.substr(0, 64) +
            "' (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')");
  return Status::Ok();
}

// Verifies that `cert` chains to one of the PEM CA certificates `cas_pem`.
// EK certificates carry TPM-specific critical extensions (the subject
// alternative name with the TPM's manufacturer and model) that OpenSSL
// does not interpret; that error alone is tolerated.
Status VerifyEkChain(X509* cert, const std::vector<TpmCaRow>& cas_pem) {
  using StorePtr =
      std::unique_ptr<X509_STORE, FnDeleter<X509_STORE, X509_STORE_free>>;
  using StoreCtxPtr =
      std::unique_ptr<X509_STORE_CTX,
                      FnDeleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
  StorePtr store(X509_STORE_new());
  size_t cas = 0;
  for (const auto& row : cas_pem) {
    const std::string& pem = row.pem;
    BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    X509Ptr ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (ca && X509_STORE_add_cert(store.get(), ca.get()) == 1) ++cas;
  }
  if (cas == 0)
    return MakeError(
        ErrorCode::kPermissionDenied,
        "no TPM CA is registered and the host has no registered EK");
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr);
  X509_STORE_CTX_set_verify_cb(ctx.get(), [](int ok, X509_STORE_CTX* c) {
    if (!ok &&
        X509_STORE_CTX_get_error(c) == X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION)
      return 1;
    return ok;
  });
  if (X509_verify_cert(ctx.get()) != 1)
    return MakeError(
        ErrorCode::kPermissionDenied,
        std::string(
            "the EK certificate does not chain to a registered TPM CA (") +
            X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get())) +
            ")");
  return Status::Ok();
}

Json ClockJson(const ClockInfo& c) {
  return {{"clock", c.clock},
          {"reset_count", c.reset_count},
          {"restart_count", c.restart_count},
          {"safe", c.safe}};
}

std::optional<ClockInfo> ClockFrom(const Json& j) {
  if (!j.is_object()) return std::nullopt;
  ClockInfo c;
  c.clock = j.value("clock", uint64_t{0});
  c.reset_count = j.value("reset_count", uint32_t{0});
  c.restart_count = j.value("restart_count", uint32_t{0});
  c.safe = j.value("safe", false);
  return c;
}

// Trust on first use for a host registered by TPM CA alone: refused
// unless `ek_b64` is the EK the host is pinned to, if any.
Status CheckPinnedEk(const std::string& host,
                     const std::optional<std::string>& pinned,
                     const std::string& ek_b64) {
  if (!pinned || *pinned == ek_b64) return Status::Ok();
  return MakeError(ErrorCode::kPermissionDenied,
                   "host '" + host +
                       "' is pinned to the EK of the TPM that first enrolled "
                       "as it; another TPM is refused until an admin runs "
                       "'vcrypt-ta admin host remove " +
                       host + "' and adds the host again");
}

// Forgets the expired ones; how many are left.
size_t Outstanding(std::multiset<int64_t>& expiries) {
  expiries.erase(expiries.begin(), expiries.lower_bound(Now()));
  return expiries.size();
}

void Forget(std::multiset<int64_t>& expiries, int64_t expires) {
  auto it = expiries.find(expires);
  if (it != expiries.end()) expiries.erase(it);
}

Error TooMany(const std::string& what, size_t cap) {
  return MakeError(ErrorCode::kBusy,
                   "too many outstanding " + what + " (" + std::to_string(cap) +
                       "): the service is overloaded, retry later");
}

// Nonces (docs/trusted.md, "Nonces"): 32 bytes, made and checked
// without state:
//   [0, 8)   expiry, unix seconds, big-endian
//   [8, 16)  random
//   [16, 32) HMAC-SHA256(nonce key, kNonceLabel || host || 0 || [0, 16)),
//            truncated
// so issuing one writes nothing and takes no lock: an unauthenticated
// flood of /v1/nonce costs the service a random draw and a MAC each, and
// cannot use up anything a real host needs (issue 13). Single use is
// recorded when one is redeemed (the store's used ids), which only
// a quote by an enrolled AK reaches.
constexpr size_t kNonceSize = 32;
constexpr size_t kNonceMacOffset = 16;
constexpr char kNonceLabel[] = "vcrypt-ta nonce v1";
constexpr size_t kNonceKeySize = 32;

Status NonceMac(const SecureBuffer& key, const std::string& host,
                std::span<const uint8_t> head, uint8_t out[32]) {
  std::vector<uint8_t> msg(kNonceLabel, kNonceLabel + sizeof kNonceLabel);
  msg.insert(msg.end(), host.begin(), host.end());
  msg.push_back(0);
  msg.insert(msg.end(), head.begin(), head.end());
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), msg.data(),
           msg.size(), out, &len) == nullptr ||
      len != 32)
    return MakeError(ErrorCode::kCrypto, "HMAC-SHA256 failed");
  return Status::Ok();
}

int64_t NonceExpiry(std::span<const uint8_t> nonce) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | nonce[i];
  return static_cast<int64_t>(v);
}

}  // namespace

Result<AttestationService> AttestationService::Open(AttestationConfig config,
                                                    EcSigningKey key) {
  if (!config.store)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the attestation service needs a store");
  if (config.selection.pcrs.empty())
    return MakeError(ErrorCode::kInvalidArgument, "the PCR selection is empty");
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer nonce_key,
                          config.store->NonceKey(kNonceKeySize));
  VCRYPT_ASSIGN_OR_RETURN(std::vector<int64_t> pending,
                          config.store->EnrollmentExpiries(Now()));
  AttestationService svc(std::move(config), std::move(key),
                         std::move(nonce_key));
  svc.enrollment_expiries_.insert(pending.begin(), pending.end());
  return svc;
}

Status AttestationService::AddTpmCa(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!ca)
    return MakeError(ErrorCode::kInvalidArgument, "not a PEM certificate");
  std::vector<uint8_t> bytes(pem.begin(), pem.end());
  return store().AddTpmCa({HexEncode(Sha256(bytes)), pem}, Now());
}

Status AttestationService::AddHost(const std::string& host,
                                   std::optional<std::vector<uint8_t>> ek) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer reg, RandomKey(16));
  HostRow row;
  row.name = host;
  // A new registration id per registration: what a challenge or a pin of
  // an earlier registration of the name (removed and added again) is
  // checked against.
  row.registration =
      HexEncode(std::span<const uint8_t>(reg.data(), reg.size()));
  if (ek) {
    VCRYPT_ASSIGN_OR_RETURN(TpmPublic k, ParseTpm2bPublic(*ek));
    if (!IsEndorsementKeyShape(k))
      return MakeError(ErrorCode::kInvalidArgument,
                       "the key is not an endorsement key");
    row.ek = Base64Encode(*ek);
  }
  return store().AddHost(row);
}

Status AttestationService::RemoveHost(const std::string& host) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  // Its pin and enrolled AK go with the row.
  VCRYPT_ASSIGN_OR_RETURN(bool removed, store().RemoveHost(host));
  if (!removed)
    return MakeError(ErrorCode::kNotFound, "no host named '" + host + "'");
  return Status::Ok();
}

Status AttestationService::AddBaseline(
    const std::string& name, const std::vector<std::vector<uint8_t>>& values) {
  VCRYPT_RETURN_IF_ERROR(CheckName("baseline", name));
  if (values.size() != config_.selection.pcrs.size())
    return MakeError(ErrorCode::kInvalidArgument,
                     "a baseline needs " +
                         std::to_string(config_.selection.pcrs.size()) +
                         " PCR values (the service's selection), not " +
                         std::to_string(values.size()));
  Json vals = Json::array();
  for (const auto& v : values) {
    if (v.size() != 32)
      return MakeError(ErrorCode::kInvalidArgument,
                       "a SHA-256 PCR value has 32 bytes");
    vals.push_back(HexEncode(v));
  }
  const int64_t now = Now();
  return store().PutBaseline({name, Json{{"values", vals}}.dump(), now, {}},
                             /*replace=*/false, now);
}

Status AttestationService::RemoveBaseline(const std::string& name) {
  VCRYPT_RETURN_IF_ERROR(CheckName("baseline", name));
  VCRYPT_ASSIGN_OR_RETURN(bool removed, store().RemoveBaseline(name));
  if (!removed)
    return MakeError(ErrorCode::kNotFound, "no baseline named '" + name + "'");
  return Status::Ok();
}

Result<EnrollmentChallenge> AttestationService::StartEnrollment(
    const std::string& host, std::span<const uint8_t> ek_wire,
    std::optional<std::vector<uint8_t>> ek_cert,
    std::span<const uint8_t> ak_wire) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  {
    // Early, before any work for a request that will be refused.
    std::lock_guard lock(locks_->counters);
    if (Outstanding(enrollment_expiries_) >= config_.max_outstanding)
      return TooMany("enrollment challenges", config_.max_outstanding);
  }
  VCRYPT_ASSIGN_OR_RETURN(std::optional<HostRow> rec, store().GetHost(host));
  if (!rec)
    return MakeError(ErrorCode::kNotFound,
                     "host '" + host + "' is not registered");
  VCRYPT_ASSIGN_OR_RETURN(TpmPublic ek, ParseTpm2bPublic(ek_wire));
  VCRYPT_ASSIGN_OR_RETURN(TpmPublic ak, ParseTpm2bPublic(ak_wire));
  if (!IsEndorsementKeyShape(ek))
    return MakeError(ErrorCode::kInvalidArgument,
                     "the EK is not an endorsement key");
  if (!IsRestrictedSigningKey(ak))
    return MakeError(ErrorCode::kInvalidArgument,
                     "the AK is not a restricted signing key");
  if (rec->ek) {
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> allowed,
                            Base64Decode(*rec->ek));
    if (allowed != ek.wire)
      return MakeError(
          ErrorCode::kPermissionDenied,
          "the EK is not the one registered for host '" + host + "'");
  } else {
    if (!ek_cert)
      return MakeError(ErrorCode::kPermissionDenied,
                       "host '" + host +
                           "' has no registered EK and sent no EK certificate");
    const unsigned char* p = ek_cert->data();
    X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(ek_cert->size())));
    if (!cert || p != ek_cert->data() + ek_cert->size())
      return MakeError(ErrorCode::kInvalidArgument,
                       "the EK certificate is not one DER certificate");
    VCRYPT_ASSIGN_OR_RETURN(std::vector<TpmCaRow> cas, store().ListTpmCas());
    VCRYPT_RETURN_IF_ERROR(VerifyEkChain(cert.get(), cas));
    VCRYPT_RETURN_IF_ERROR(CheckCertificateKey(ek, cert.get()));
    // Checked again when the enrollment finishes (another TPM may finish
    // first); refused here already so that it learns early.
    VCRYPT_RETURN_IF_ERROR(
        CheckPinnedEk(host, rec->pinned_ek, Base64Encode(ek.wire)));
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer secret, RandomKey(32));
  VCRYPT_ASSIGN_OR_RETURN(MadeCredential cred,
                          MakeCredential(ek, ak.name, secret));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer idb, RandomKey(16));
  const std::string id =
      HexEncode(std::span<const uint8_t>(idb.data(), idb.size()));
  const int64_t expires = Now() + config_.enrollment_lifetime.count();
  Json pending = {{"host", host},
                  {"registration", rec->registration},
                  {"ek", Base64Encode(ek.wire)},
                  {"ak", Base64Encode(ak.wire)},
                  {"secret_sha256", HexEncode(Sha256(std::span<const uint8_t>(
                                        secret.data(), secret.size())))},
                  {"expires", expires}};
  {
    // Checked again now, and the slot taken before the write: concurrent
    // requests must not all pass the check above.
    std::lock_guard lock(locks_->counters);
    if (Outstanding(enrollment_expiries_) >= config_.max_outstanding)
      return TooMany("enrollment challenges", config_.max_outstanding);
    enrollment_expiries_.insert(expires);
  }
  MaybePurge();
  if (auto st = store().PutEnrollment(id, pending.dump(), expires); !st.ok()) {
    std::lock_guard lock(locks_->counters);
    Forget(enrollment_expiries_, expires);
    return std::move(st).error();
  }
  return EnrollmentChallenge{id, std::move(cred)};
}

Status AttestationService::FinishEnrollment(const std::string& id,
                                            const SecureBuffer& secret) {
  auto denied = [] {
    return MakeError(
        ErrorCode::kPermissionDenied,
        "enrollment refused: unknown, expired or already used challenge, or "
        "the TPM did not recover the credential");
  };
  if (id.size() != 32 ||
      id.find_first_not_of("0123456789abcdef") != std::string::npos)
    return denied();
  // Single use: only one DELETE finds the row, whichever replica.
  VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> body,
                          store().TakeEnrollment(id));
  if (!body) return denied();
  auto pending = ParseObject(*body, "enrollment " + id);
  if (!pending.ok()) return denied();
  const int64_t expires = (*pending).value("expires", int64_t{0});
  {
    std::lock_guard lock(locks_->counters);
    Forget(enrollment_expiries_, expires);
  }
  if (expires < Now()) return denied();
  auto want = HexDecode((*pending).value("secret_sha256", std::string()));
  auto got = Sha256(std::span<const uint8_t>(secret.data(), secret.size()));
  if (!want.ok() || want->size() != got.size() ||
      CRYPTO_memcmp(want->data(), got.data(), got.size()) != 0)
    return denied();
  const std::string host = (*pending).value("host", std::string());
  const std::string ek = (*pending).value("ek", std::string());
  const std::string ak = (*pending).value("ak", std::string());
  const std::string registration =
      (*pending).value("registration", std::string());
  VCRYPT_ASSIGN_OR_RETURN(std::optional<HostRow> rec, store().GetHost(host));
  // Removed (or removed and added again) since the challenge was issued:
  // the challenge belonged to a registration that is gone.
  if (!rec || rec->registration != registration)
    return MakeError(ErrorCode::kPermissionDenied,
                     "enrollment refused: host '" + host +
                         "' was removed or registered again meanwhile");
  if (!rec->ek) {
    // Registered by TPM CA: the first EK to get here, on any replica, is
    // the host's from now on (a conditional update in the store).
    VCRYPT_RETURN_IF_ERROR(CheckPinnedEk(host, rec->pinned_ek, ek));
    VCRYPT_ASSIGN_OR_RETURN(std::string winner,
                            store().PinEk(host, registration, ek, Now()));
    VCRYPT_RETURN_IF_ERROR(CheckPinnedEk(host, winner, ek));
  }
  VCRYPT_ASSIGN_OR_RETURN(
      bool enrolled, store().SetEnrolled(host, registration, ek, ak, Now()));
  if (!enrolled)
    return MakeError(
        ErrorCode::kPermissionDenied,
        "enrollment refused: host '" + host + "' was removed meanwhile");
  return Status::Ok();
}

void AttestationService::MaybePurge() {
  {
    std::lock_guard lock(locks_->counters);
    if (Now() - last_purge_ < 60) return;
    last_purge_ = Now();
  }
  // A minute of grace past expiry: a replica whose clock is behind may
  // still be checking one.
  (void)store().Purge(Now(), 60);  // best effort: a failure only delays it
}

Result<NonceGrant> AttestationService::IssueNonce(const std::string& host) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  VCRYPT_ASSIGN_OR_RETURN(std::optional<HostRow> rec, store().GetHost(host));
  if (!rec)
    return MakeError(ErrorCode::kNotFound,
                     "host '" + host + "' is not registered");
  NonceGrant g;
  g.expires = Now() + config_.nonce_lifetime.count();
  g.selection = config_.selection;
  g.nonce.resize(kNonceSize);
  for (size_t i = 0; i < 8; ++i)
    g.nonce[i] =
        static_cast<uint8_t>(static_cast<uint64_t>(g.expires) >> (56 - 8 * i));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer r, RandomKey(8));
  std::copy(r.data(), r.data() + r.size(), g.nonce.begin() + 8);
  uint8_t mac[32];
  VCRYPT_RETURN_IF_ERROR(
      NonceMac(nonce_key_, host,
               std::span<const uint8_t>(g.nonce.data(), kNonceMacOffset), mac));
  std::copy(mac, mac + (kNonceSize - kNonceMacOffset),
            g.nonce.begin() + kNonceMacOffset);
  return g;
}

namespace {
// RFC 7800 `cnf` with the session key as a JWK (checked point, 65 bytes).
Json CnfJwk(std::span<const uint8_t> point) {
  return {{"jwk",
           {{"kty", "EC"},
            {"crv", "P-256"},
            {"x", Base64UrlEncode(point.subspan(1, 32))},
            {"y", Base64UrlEncode(point.subspan(33, 32))}}}};
}
}  // namespace

Result<std::string> AttestationService::Attest(
    const std::string& host, std::span<const uint8_t> nonce,
    std::span<const uint8_t> session_point, std::span<const uint8_t> attest,
    std::span<const uint8_t> signature,
    const std::vector<std::vector<uint8_t>>& pcr_values,
    const std::optional<std::vector<uint8_t>>& event_log) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  // The nonce first (no I/O): one this service made for this host, and
  // unexpired. Its single use is recorded once the quote verifies, below.
  uint8_t mac[32];
  if (nonce.size() != kNonceSize ||
      !NonceMac(nonce_key_, host, nonce.first(kNonceMacOffset), mac).ok() ||
      CRYPTO_memcmp(mac, nonce.data() + kNonceMacOffset,
                    kNonceSize - kNonceMacOffset) != 0)
    return MakeError(ErrorCode::kPermissionDenied,
                     "unknown nonce, or one issued to another host");
  const int64_t nonce_expires = NonceExpiry(nonce);
  if (nonce_expires < Now())
    return MakeError(ErrorCode::kPermissionDenied, "the nonce has expired");
  if (!EcVerifyKey::FromPoint(session_point).ok())
    return MakeError(ErrorCode::kInvalidArgument,
                     "the session key is not a P-256 point");

  VCRYPT_ASSIGN_OR_RETURN(std::optional<HostRow> rec, store().GetHost(host));
  if (!rec)
    return MakeError(ErrorCode::kPermissionDenied,
                     "host '" + host + "' is not registered");
  if (!rec->enrolled_ak)
    return MakeError(ErrorCode::kPermissionDenied,
                     "host '" + host + "' has no enrolled AK");
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> ak_wire,
                          Base64Decode(*rec->enrolled_ak));
  QuoteCheck check;
  VCRYPT_ASSIGN_OR_RETURN(check.ak, ParseTpm2bPublic(ak_wire));
  // The TPM quoted the nonce together with the session key: the quote
  // vouches that the key the token is bound to belongs to this host.
  check.nonce = QuoteQualifyingData(nonce, session_point);
  check.expected = config_.selection;
  check.pcr_values = pcr_values;
  if (rec->last_clock)
    check.last_clock = ClockFrom(Json::parse(*rec->last_clock, nullptr, false));
  VCRYPT_ASSIGN_OR_RETURN(ParsedQuote q, VerifyQuote(attest, signature, check));
  // Single use, across threads and replicas: the first redemption of the
  // nonce records it. After the quote, so that only an enrolled AK's
  // quote makes the service write; a replay of the same evidence gets
  // here too and is refused.
  VCRYPT_ASSIGN_OR_RETURN(
      bool first,
      store().ConsumeOnce("nonce", HexEncode(nonce), nonce_expires));
  if (!first)
    return MakeError(ErrorCode::kPermissionDenied, "already used nonce");
  MaybePurge();

  // The values are the TPM's: now they must be an approved baseline's
  // (raw values, or a policy over the event log: eventlog_policy.h). The
  // store gives the unexpired ones in name order, so the baseline a token
  // names does not depend on the database's.
  VCRYPT_ASSIGN_OR_RETURN(std::vector<BaselineRow> rows,
                          store().ListBaselines(Now()));
  std::vector<BaselineDocument> baselines;
  baselines.reserve(rows.size());
  for (auto& r : rows)
    baselines.push_back({std::move(r.name), std::move(r.body), r.expires_at});
  std::optional<std::span<const uint8_t>> log;
  if (event_log) log = std::span<const uint8_t>(*event_log);
  auto matched =
      MatchBaseline(baselines, config_.selection, pcr_values, log, Now());
  // Only while the AK is the one that made this quote (an enrollment may
  // have finished meanwhile: its record must not be overwritten).
  VCRYPT_RETURN_IF_ERROR(
      store().SetLastClock(host, *rec->enrolled_ak, ClockJson(q.clock).dump()));
  if (!matched.ok())
    return MakeError(ErrorCode::kPermissionDenied,
                     "host '" + host + "' booted a configuration " +
                         matched.error().message);

  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer j, RandomKey(16));
  const int64_t now = Now();
  Json claims = {
      {"iss", config_.issuer},
      {"sub", host},
      {"aud", config_.audience},
      {"iat", now},
      {"exp", now + config_.token_lifetime.count()},
      {"jti", HexEncode(std::span<const uint8_t>(j.data(), j.size()))},
      {"baseline", *matched},
      {"cnf", CnfJwk(session_point)}};
  return SignToken(key_, claims);
}

}  // namespace vcrypt
