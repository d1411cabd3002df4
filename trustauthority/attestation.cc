#include "trustauthority/attestation.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509_vfy.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/handles.h"
#include "common/hex.h"
#include "common/names.h"
#include "common/random.h"
#include "taprotocol/proof.h"
#include "trustauthority/eventlog_policy.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
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

Result<Json> ReadJson(const std::string& path) {
  VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object())
    return MakeError(ErrorCode::kIo,
                     path + " is not a JSON object (damaged state)");
  return j;
}

Status CheckName(const std::string& what, const std::string& name) {
  // Host and baseline names become file names.
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

// Verifies that `cert` chains to one of the PEM CA certificates in `dir`.
// EK certificates carry TPM-specific critical extensions (the subject
// alternative name with the TPM's manufacturer and model) that OpenSSL
// does not interpret; that error alone is tolerated.
Status VerifyEkChain(X509* cert, const std::string& dir) {
  using StorePtr =
      std::unique_ptr<X509_STORE, FnDeleter<X509_STORE, X509_STORE_free>>;
  using StoreCtxPtr =
      std::unique_ptr<X509_STORE_CTX,
                      FnDeleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
  StorePtr store(X509_STORE_new());
  size_t cas = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    auto pem = ReadFile(e.path().string());
    if (!pem.ok()) continue;
    BioPtr bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
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

// Trust on first use for a host registered by TPM CA alone: the EK it is
// pinned to (recorded when its first enrollment finished; for records
// written before pinning existed, the EK it enrolled with), if any.
// `file_pin` is the content of the registration's pin file (PinPath), the
// record that replicas agree on.
std::optional<std::string> PinnedEk(
    const Json& rec, const std::optional<std::string>& file_pin) {
  if (file_pin) return file_pin;
  if (rec.contains("pinned_ek") && rec["pinned_ek"].is_string())
    return rec["pinned_ek"].get<std::string>();
  if (rec.contains("enrolled") && rec["enrolled"].is_object() &&
      rec["enrolled"].contains("ek") && rec["enrolled"]["ek"].is_string())
    return rec["enrolled"]["ek"].get<std::string>();
  return std::nullopt;
}

// The registration a host record belongs to: a random id AddHost writes,
// so that a pin file of an earlier registration of the same name (removed
// and added again) is never taken for this one's. "0" for records written
// before registrations had ids.
std::string RegistrationOf(const Json& rec) {
  if (rec.contains("registration") && rec["registration"].is_string()) {
    std::string r = rec["registration"].get<std::string>();
    if (r.size() == 32 &&
        r.find_first_not_of("0123456789abcdef") == std::string::npos)
      return r;
  }
  return "0";
}

std::string PinPathIn(const std::string& hosts_dir, const std::string& host,
                      const Json& rec) {
  return hosts_dir + "/" + host + "." + RegistrationOf(rec) + ".pin";
}

bool IsPinFileOf(const std::string& file, const std::string& host) {
  if (!file.starts_with(host + ".") || !file.ends_with(".pin")) return false;
  const std::string reg =
      file.substr(host.size() + 1, file.size() - host.size() - 1 - 4);
  return reg == "0" ||
         (reg.size() == 32 &&
          reg.find_first_not_of("0123456789abcdef") == std::string::npos);
}

// The pin file's content; nullopt when there is none.
Result<std::optional<std::string>> ReadPin(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) {
    if (text.error().code == ErrorCode::kNotFound)
      return std::optional<std::string>();
    return std::move(text).error();
  }
  return std::optional<std::string>(*text);
}

// Pins to `ek_b64` unless a pin exists already; returns the EK pinned (the
// one that won). The pin is published with link(2), which fails for all
// but the first, whichever replica: two TPMs finishing at once on two
// replicas cannot both be pinned.
Result<std::string> PinOnce(const std::string& path,
                            const std::string& ek_b64) {
  Status st = CreateFileOnce(
      path,
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(ek_b64.data()),
                               ek_b64.size()));
  if (st.ok()) return ek_b64;
  if (st.error().code != ErrorCode::kExists) return std::move(st).error();
  VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> winner, ReadPin(path));
  if (!winner) return MakeError(ErrorCode::kIo, path + " vanished");
  return *winner;
}

Status CheckPinnedEk(const std::string& host, const Json& rec,
                     const std::optional<std::string>& file_pin,
                     const std::string& ek_b64) {
  auto pinned = PinnedEk(rec, file_pin);
  if (!pinned || *pinned == ek_b64) return Status::Ok();
  return MakeError(ErrorCode::kPermissionDenied,
                   "host '" + host +
                       "' is pinned to the EK of the TPM that first enrolled "
                       "as it; another TPM is refused until an admin runs "
                       "'vcrypt-ta admin --state DIR host remove " +
                       host + "' and adds the host again");
}

// The expiry times of a directory's unexpired nonces or challenges.
std::multiset<int64_t> UnexpiredIn(const std::string& dir) {
  std::multiset<int64_t> out;
  const int64_t now = Now();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".json") continue;
    auto j = ReadJson(e.path().string());
    if (j.ok() && j->contains("expires") &&
        (*j)["expires"].is_number_integer() &&
        (*j)["expires"].get<int64_t>() >= now)
      out.insert((*j)["expires"].get<int64_t>());
  }
  return out;
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
// recorded when one is redeemed (used-nonces/, a ReplayGuard), which only
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

// The nonce key: <state>/nonce.key, 32 random bytes, owner-only. Made by
// the first service (or admin command) that finds none, published with
// link(2) so that replicas sharing the directory all end up with the one
// that won; root making it in a directory it does not own gives it to the
// directory's owner (the services' user).
Result<SecureBuffer> LoadOrCreateNonceKey(const std::string& dir) {
  const std::string path = dir + "/nonce.key";
  for (int attempt = 0; attempt < 2; ++attempt) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (fd.valid()) {
      struct stat st;
      if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
          st.st_size != static_cast<off_t>(kNonceKeySize) ||
          (st.st_mode & 077) != 0)
        return MakeError(ErrorCode::kIo,
                         path + " is not a " + std::to_string(kNonceKeySize) +
                             "-byte owner-only file (damaged state)");
      SecureBuffer key(kNonceKeySize);
      if (read(fd.get(), key.data(), key.size()) !=
          static_cast<ssize_t>(key.size()))
        return MakeError(ErrorCode::kIo, "cannot read " + path);
      return key;
    }
    if (errno != ENOENT)
      return MakeError(ErrorCode::kIo,
                       "cannot open " + path + ": " + std::strerror(errno));
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer key, RandomKey(kNonceKeySize));
    std::optional<std::pair<uid_t, gid_t>> owner;
    struct stat dst;
    if (geteuid() == 0 && stat(dir.c_str(), &dst) == 0 && dst.st_uid != 0)
      owner.emplace(dst.st_uid, dst.st_gid);
    Status st = CreateFileOnce(
        path, std::span<const uint8_t>(key.data(), key.size()), 0600, owner);
    if (st.ok()) return key;
    if (st.error().code != ErrorCode::kExists) return std::move(st).error();
    // Another replica published its key first: use that one.
  }
  return MakeError(ErrorCode::kIo, "cannot read " + path);
}

}  // namespace

Result<AttestationService> AttestationService::Open(AttestationConfig config,
                                                    EcSigningKey key) {
  for (const char* d : {"tpm-cas", "hosts", "baselines", "enrollments"})
    VCRYPT_RETURN_IF_ERROR(MakeDirs(config.state_dir + "/" + d));
  if (config.selection.pcrs.empty())
    return MakeError(ErrorCode::kInvalidArgument, "the PCR selection is empty");
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer nonce_key,
                          LoadOrCreateNonceKey(config.state_dir));
  // Kept past their expiry for as long as a replica's clock may lag.
  VCRYPT_ASSIGN_OR_RETURN(ReplayGuard used_nonces,
                          ReplayGuard::Open(config.state_dir + "/used-nonces",
                                            std::chrono::seconds(60)));
  AttestationService svc(std::move(config), std::move(key),
                         std::move(nonce_key), std::move(used_nonces));
  svc.enrollment_expiries_ = UnexpiredIn(svc.Path("enrollments"));
  return svc;
}

Status AttestationService::AddTpmCa(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!ca)
    return MakeError(ErrorCode::kInvalidArgument, "not a PEM certificate");
  std::vector<uint8_t> bytes(pem.begin(), pem.end());
  return WriteFileAtomic(Path("tpm-cas/" + HexEncode(Sha256(bytes)) + ".pem"),
                         pem, AtomicWriteOptions{0644, {}});
}

Status AttestationService::AddHost(const std::string& host,
                                   std::optional<std::vector<uint8_t>> ek) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer reg, RandomKey(16));
  Json j = {{"registration",
             HexEncode(std::span<const uint8_t>(reg.data(), reg.size()))}};
  if (ek) {
    VCRYPT_ASSIGN_OR_RETURN(TpmPublic k, ParseTpm2bPublic(*ek));
    if (!IsEndorsementKeyShape(k))
      return MakeError(ErrorCode::kInvalidArgument,
                       "the key is not an endorsement key");
    j["ek"] = Base64Encode(*ek);
  }
  return WriteFileAtomic(Path("hosts/" + host + ".json"), j.dump(),
                         AtomicWriteOptions{0600, {}});
}

Status AttestationService::RemoveHost(const std::string& host) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  if (unlink(Path("hosts/" + host + ".json").c_str()) != 0)
    return MakeError(ErrorCode::kNotFound, "no host named '" + host + "'");
  // Its pins (only ever looked up by the registration they belong to:
  // one left by a crash here is garbage, not a pin of the next one).
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(Path("hosts"), ec))
    if (IsPinFileOf(e.path().filename().string(), host))
      fs::remove(e.path(), ec);
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
  return WriteFileAtomic(Path("baselines/" + name + ".json"),
                         Json{{"values", vals}}.dump(),
                         AtomicWriteOptions{0600, {}});
}

Status AttestationService::RemoveBaseline(const std::string& name) {
  VCRYPT_RETURN_IF_ERROR(CheckName("baseline", name));
  if (unlink(Path("baselines/" + name + ".json").c_str()) != 0)
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
  auto rec = ReadJson(Path("hosts/" + host + ".json"));
  if (!rec.ok())
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
  if (rec->contains("ek")) {
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> allowed,
                            Base64Decode((*rec)["ek"].get<std::string>()));
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
    VCRYPT_RETURN_IF_ERROR(VerifyEkChain(cert.get(), Path("tpm-cas")));
    VCRYPT_RETURN_IF_ERROR(CheckCertificateKey(ek, cert.get()));
    // Checked again when the enrollment finishes (another TPM may finish
    // first); refused here already so that it learns early.
    VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> file_pin,
                            ReadPin(PinPathIn(Path("hosts"), host, *rec)));
    VCRYPT_RETURN_IF_ERROR(
        CheckPinnedEk(host, *rec, file_pin, Base64Encode(ek.wire)));
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer secret, RandomKey(32));
  VCRYPT_ASSIGN_OR_RETURN(MadeCredential cred,
                          MakeCredential(ek, ak.name, secret));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer idb, RandomKey(16));
  const std::string id =
      HexEncode(std::span<const uint8_t>(idb.data(), idb.size()));
  const int64_t expires = Now() + config_.enrollment_lifetime.count();
  Json pending = {{"host", host},
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
  if (auto st = WriteFileAtomic(Path("enrollments/" + id + ".json"),
                                pending.dump(), AtomicWriteOptions{0600, {}});
      !st.ok()) {
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
  const std::string path = Path("enrollments/" + id + ".json");
  auto pending = ReadJson(path);
  if (!pending.ok()) return denied();
  // Single use: only one unlink succeeds, whichever replica.
  if (unlink(path.c_str()) != 0) return denied();
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
  const std::string host = (*pending)["host"].get<std::string>();
  // Read, pin and write as one step within this instance: two TPMs
  // finishing at once must not both find the host unpinned.
  std::lock_guard hosts_lock(locks_->hosts);
  VCRYPT_ASSIGN_OR_RETURN(Json rec, ReadJson(Path("hosts/" + host + ".json")));
  if (!rec.contains("ek")) {
    // Registered by TPM CA: the first EK to get here, on any replica, is
    // the host's from now on (its pin file; the record repeats it for
    // `list`).
    const std::string ek = (*pending)["ek"].get<std::string>();
    const std::string pin_path = PinPathIn(Path("hosts"), host, rec);
    VCRYPT_ASSIGN_OR_RETURN(std::optional<std::string> file_pin,
                            ReadPin(pin_path));
    VCRYPT_RETURN_IF_ERROR(CheckPinnedEk(host, rec, file_pin, ek));
    if (!PinnedEk(rec, file_pin)) {
      VCRYPT_ASSIGN_OR_RETURN(std::string winner, PinOnce(pin_path, ek));
      VCRYPT_RETURN_IF_ERROR(CheckPinnedEk(host, rec, winner, ek));
    }
    if (!rec.contains("pinned_ek")) {
      rec["pinned_ek"] = ek;
      rec["pinned_at"] = Now();
    }
  }
  rec["enrolled"] = {
      {"ek", (*pending)["ek"]}, {"ak", (*pending)["ak"]}, {"at", Now()}};
  rec.erase("last_clock");
  return WriteFileAtomic(Path("hosts/" + host + ".json"), rec.dump(),
                         AtomicWriteOptions{0600, {}});
}

void AttestationService::MaybePurge() {
  {
    std::lock_guard lock(locks_->counters);
    if (Now() - last_purge_ < 60) return;
    last_purge_ = Now();
  }
  // A minute of grace past expiry: a replica whose clock is behind may
  // still be checking one. Files it cannot parse are left alone. nonces/
  // holds the files of an older version's nonces (before they were made
  // without state), expired for good a minute after the upgrade.
  const int64_t cutoff = Now() - 60;
  for (const char* dir : {"nonces", "enrollments"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(Path(dir), ec)) {
      if (e.path().extension() != ".json") continue;
      auto j = ReadJson(e.path().string());
      if (j.ok() && j->is_object() && j->contains("expires") &&
          (*j)["expires"].is_number_integer() &&
          (*j)["expires"].get<int64_t>() < cutoff)
        fs::remove(e.path(), ec);
    }
  }
  (void)used_nonces_.Purge(std::chrono::system_clock::now());  // best effort
}

Result<NonceGrant> AttestationService::IssueNonce(const std::string& host) {
  VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
  if (!fs::exists(Path("hosts/" + host + ".json")))
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

  const std::string hpath = Path("hosts/" + host + ".json");
  auto rec = ReadJson(hpath);
  if (!rec.ok())
    return MakeError(ErrorCode::kPermissionDenied,
                     "host '" + host + "' is not registered");
  if (!rec->contains("enrolled"))
    return MakeError(ErrorCode::kPermissionDenied,
                     "host '" + host + "' has no enrolled AK");
  VCRYPT_ASSIGN_OR_RETURN(
      std::vector<uint8_t> ak_wire,
      Base64Decode((*rec)["enrolled"]["ak"].get<std::string>()));
  QuoteCheck check;
  VCRYPT_ASSIGN_OR_RETURN(check.ak, ParseTpm2bPublic(ak_wire));
  // The TPM quoted the nonce together with the session key: the quote
  // vouches that the key the token is bound to belongs to this host.
  check.nonce = QuoteQualifyingData(nonce, session_point);
  check.expected = config_.selection;
  check.pcr_values = pcr_values;
  if (rec->contains("last_clock"))
    check.last_clock = ClockFrom((*rec)["last_clock"]);
  VCRYPT_ASSIGN_OR_RETURN(ParsedQuote q, VerifyQuote(attest, signature, check));
  // Single use, across threads and replicas: the first redemption of the
  // nonce records it. After the quote, so that only an enrolled AK's
  // quote makes the service write; a replay of the same evidence gets
  // here too and is refused.
  VCRYPT_ASSIGN_OR_RETURN(
      bool first, used_nonces_.ConsumeOnce(HexEncode(nonce), nonce_expires));
  if (!first)
    return MakeError(ErrorCode::kPermissionDenied, "already used nonce");
  MaybePurge();

  // The values are the TPM's: now they must be an approved baseline's
  // (raw values, or a policy over the event log: eventlog_policy.h).
  std::vector<BaselineDocument> baselines;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(Path("baselines"), ec)) {
    if (e.path().extension() != ".json") continue;
    auto body = ReadFile(e.path().string());
    if (!body.ok()) continue;
    baselines.push_back(
        {e.path().stem().string(), std::move(body).value(), {}});
  }
  // In name order, so the baseline a token names does not depend on the
  // directory's.
  std::sort(baselines.begin(), baselines.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  std::optional<std::span<const uint8_t>> log;
  if (event_log) log = std::span<const uint8_t>(*event_log);
  auto matched =
      MatchBaseline(baselines, config_.selection, pcr_values, log, Now());
  {
    // The record as it is now (an enrollment may have finished meanwhile:
    // its write must not be lost), and only while the AK is the one that
    // made this quote.
    std::lock_guard hosts_lock(locks_->hosts);
    auto now_rec = ReadJson(hpath);
    if (now_rec.ok() && now_rec->contains("enrolled") &&
        (*now_rec)["enrolled"].is_object() &&
        (*now_rec)["enrolled"].value("ak", std::string()) ==
            (*rec)["enrolled"]["ak"].get<std::string>()) {
      (*now_rec)["last_clock"] = ClockJson(q.clock);
      VCRYPT_RETURN_IF_ERROR(WriteFileAtomic(hpath, now_rec->dump(),
                                             AtomicWriteOptions{0600, {}}));
    }
  }
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
