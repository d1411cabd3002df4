#include "keyproviders/trusted/trusted_provider.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <optional>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/clock.h"
#include "common/handles.h"
#include "keyproviders/trusted/tpm.h"
#include "taprotocol/jws.h"
#include "taprotocol/proof.h"

namespace vcrypt {

using Json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr int kConfigVersion = 1;

std::string Rfc3339(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The names the attestation service accepts (they become its file names).
Status CheckHostName(const std::string& host) {
  if (host.empty() || host.size() > 64 || host[0] == '.' ||
      host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW"
                             "XYZ0123456789._-") != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument,
                     "invalid host name '" + host.substr(0, 64) +
                         "' (1-64 of A-Z a-z 0-9 . _ -, not starting with "
                         "'.'; give one with --host)");
  return Status::Ok();
}

Result<std::string> DefaultHost() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0)
    return MakeError(ErrorCode::kInternal,
                     std::string("gethostname: ") + std::strerror(errno));
  return std::string(buf);
}

// iat and exp of a token, read from its payload without verifying it: the
// host does not hold the attestation service's key and uses them only to
// decide when to attest again.
struct TokenTimes {
  int64_t iat = 0;
  int64_t exp = 0;
};
Result<TokenTimes> ReadTokenTimes(std::string_view token) {
  auto bad = [] {
    return MakeError(ErrorCode::kKeyUnavailable,
                     "the attestation service returned a malformed token");
  };
  size_t a = token.find('.');
  if (a == std::string_view::npos) return bad();
  size_t b = token.find('.', a + 1);
  if (b == std::string_view::npos) return bad();
  auto payload = Base64UrlDecode(token.substr(a + 1, b - a - 1));
  if (!payload.ok()) return bad();
  Json j = Json::parse(payload->begin(), payload->end(), nullptr, false);
  if (!j.is_object() || !j.contains("exp") || !j["exp"].is_number_integer())
    return bad();
  TokenTimes t;
  t.exp = j["exp"].get<int64_t>();
  if (j.contains("iat") && j["iat"].is_number_integer())
    t.iat = j["iat"].get<int64_t>();
  return t;
}

bool HasPemCertificate(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr c(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)
                : nullptr);
  ERR_clear_error();
  return c != nullptr;
}

// Context for an error, keeping its code.
Error Prefixed(const std::string& prefix, Error e) {
  e.message = prefix + e.message;
  return e;
}

}  // namespace

struct TrustedProvider::Session {
  std::string token;
  EcSigningKey key;  // proves possession of the token (proof.h)
  int64_t exp = 0;
  int64_t refresh_at = 0;  // use until then (see the file comment)
};

TrustedProvider::TrustedProvider(std::string name, std::string dir, Settings s,
                                 TaClient attestation, TaClient kps,
                                 TrustedProviderOptions options)
    : name_(std::move(name)),
      dir_(std::move(dir)),
      settings_(std::move(s)),
      attestation_(std::move(attestation)),
      kps_(std::move(kps)),
      options_(std::move(options)) {}

TrustedProvider::~TrustedProvider() = default;

int64_t TrustedProvider::Now() const {
  if (options_.now) return options_.now();
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t TrustedProvider::attestations() const {
  std::lock_guard lock(cache_mu_);
  return attestations_;
}

// --- creation and loading ---------------------------------------------------

Result<std::unique_ptr<TrustedProvider>> TrustedProvider::Create(
    const std::string& name, const std::string& dir,
    const TrustedProviderConfig& config, TrustedProviderOptions options) {
  Settings s;
  s.tcti = config.tcti.empty() ? kDefaultTcti : config.tcti;
  if (config.event_log && !config.event_log->empty() &&
      (*config.event_log)[0] != '/')
    return MakeError(
        ErrorCode::kInvalidArgument,
        "the event log path '" + *config.event_log + "' is not absolute");
  s.event_log = config.event_log;
  // Before anything else: the string picks the code tpm2-tss loads.
  VCRYPT_RETURN_IF_ERROR(CheckTcti(s.tcti, options.allow_test_tcti));
  if (config.host.empty()) {
    VCRYPT_ASSIGN_OR_RETURN(s.host, DefaultHost());
  } else {
    s.host = config.host;
  }
  VCRYPT_RETURN_IF_ERROR(CheckHostName(s.host));
  VCRYPT_ASSIGN_OR_RETURN(TaUrl att_url, ParseTaUrl(config.attestation_url));
  VCRYPT_ASSIGN_OR_RETURN(TaUrl kps_url, ParseTaUrl(config.kps_url));
  s.attestation_url = att_url.url;
  s.kps_url = kps_url.url;
  if (!HasPemCertificate(config.ca_pem))
    return MakeError(ErrorCode::kInvalidArgument,
                     "the CA given (--ca) holds no PEM certificate: give the "
                     "CA that issued the Trust Authority services' "
                     "certificates");
  // Everything is made in a staged dir and renamed into place only after
  // enrollment and attestation passed: nothing half-made on failure.
  VCRYPT_ASSIGN_OR_RETURN(StagedProviderDir staged,
                          StagedProviderDir::Begin(dir));
  const std::string& tmp = staged.path();
  if (auto w = WriteFileAtomic(tmp + "/ca.pem", config.ca_pem); !w.ok())
    return w.error();
  TaClientOptions co{options.connect_timeout, options.io_timeout};
  auto att = TaClient::Create("attestation service", s.attestation_url,
                              tmp + "/ca.pem", co);
  if (!att.ok()) return std::move(att).error();
  auto kps =
      TaClient::Create("key provider service", s.kps_url, tmp + "/ca.pem", co);
  if (!kps.ok()) return std::move(kps).error();
  std::unique_ptr<TrustedProvider> p(new TrustedProvider(
      name, tmp, s, std::move(att).value(), std::move(kps).value(), options));

  if (auto e = p->Enroll(); !e.ok())
    return Prefixed("cannot enroll host '" + s.host + "': ", e.error());
  // Attest now (no re-enrollment: the AK was just enrolled), so a host
  // whose PCRs match no approved baseline is refused here, not at the
  // first `vm create`.
  {
    std::lock_guard lock(p->attest_mu_);
    auto session = p->Attest(/*may_reenroll=*/false);
    if (!session.ok())
      return Prefixed("host '" + s.host + "' enrolled, but ",
                      std::move(session).error());
  }
  // The key provider service must accept this host's tokens too (it pins
  // the attestation service's key and audience): ask for a KEK and drop
  // it. The service keeps no state per KEK, so nothing is left behind.
  if (auto k = p->NewKekFromKps("attestation passed, but "); !k.ok())
    return std::move(k).error();

  Json cfg = {{"version", kConfigVersion},
              {"type", "trusted"},
              {"name", name},
              {"attestation", s.attestation_url},
              {"kps", s.kps_url},
              {"host", s.host},
              {"tcti", s.tcti},
              {"connect_timeout_ms", options.connect_timeout.count()},
              {"io_timeout_ms", options.io_timeout.count()},
              {"created", NowRfc3339()}};
  if (s.event_log) cfg["event_log"] = *s.event_log;
  if (auto w = WriteFileAtomic(tmp + "/config.json", cfg.dump(2) + "\n");
      !w.ok())
    return w.error();
  VCRYPT_RETURN_IF_ERROR(staged.Commit());
  // The clients read the CA at each connection: point them at the final
  // path. The token just obtained stays cached.
  auto att2 = TaClient::Create("attestation service", s.attestation_url,
                               dir + "/ca.pem", co);
  auto kps2 =
      TaClient::Create("key provider service", s.kps_url, dir + "/ca.pem", co);
  if (!att2.ok() || !kps2.ok()) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    return att2.ok() ? std::move(kps2).error() : std::move(att2).error();
  }
  p->dir_ = dir;
  p->attestation_ = std::move(att2).value();
  p->kps_ = std::move(kps2).value();
  return p;
}

Result<std::unique_ptr<TrustedProvider>> TrustedProvider::Load(
    const std::string& name, const std::string& dir,
    TrustedProviderOptions options) {
  VCRYPT_ASSIGN_OR_RETURN(Json cfg,
                          ReadProviderConfig(dir, "trusted", kConfigVersion));
  auto bad = [&](const std::string& why) { return ProviderConfigError(dir, why); };
  Settings s;
  for (auto [key, out] :
       {std::pair{"attestation", &s.attestation_url},
        std::pair{"kps", &s.kps_url}, std::pair{"host", &s.host},
        std::pair{"tcti", &s.tcti}}) {
    if (!cfg.contains(key) || !cfg[key].is_string() ||
        cfg[key].get<std::string>().empty())
      return bad(std::string("'") + key + "' missing");
    *out = cfg[key].get<std::string>();
  }
  if (cfg.contains("event_log")) {
    if (!cfg["event_log"].is_string() ||
        (!cfg["event_log"].get<std::string>().empty() &&
         cfg["event_log"].get<std::string>()[0] != '/'))
      return bad("'event_log' must be an absolute path or \"\"");
    s.event_log = cfg["event_log"].get<std::string>();
  }
  if (auto h = CheckHostName(s.host); !h.ok()) return bad(h.error().message);
  if (auto t = CheckTcti(s.tcti, options.allow_test_tcti); !t.ok())
    return bad(t.error().message);
  options.connect_timeout =
      std::chrono::milliseconds(cfg.value("connect_timeout_ms", 5000));
  options.io_timeout =
      std::chrono::milliseconds(cfg.value("io_timeout_ms", 10000));
  TaClientOptions co{options.connect_timeout, options.io_timeout};
  VCRYPT_ASSIGN_OR_RETURN(
      TaClient att, TaClient::Create("attestation service", s.attestation_url,
                                     dir + "/ca.pem", co));
  VCRYPT_ASSIGN_OR_RETURN(
      TaClient kps,
      TaClient::Create("key provider service", s.kps_url, dir + "/ca.pem", co));
  return std::unique_ptr<TrustedProvider>(
      new TrustedProvider(name, dir, std::move(s), std::move(att),
                          std::move(kps), std::move(options)));
}

// --- enrollment and attestation ---------------------------------------------

Result<std::optional<std::vector<uint8_t>>> ReadHostEventLog(
    const std::optional<std::string>& event_log) {
  using Log = std::optional<std::vector<uint8_t>>;
  if (event_log && event_log->empty()) return Log();
  const bool configured = event_log.has_value();
  const std::string path = configured ? *event_log : kDefaultEventLog;
  // securityfs reports size 0: read until EOF, at most one byte past the
  // limit.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    if (!configured) return Log();
    const int err = errno;
    return MakeError(
        err == ENOENT   ? ErrorCode::kNotFound
        : err == EACCES ? ErrorCode::kPermissionDenied
                        : ErrorCode::kIo,
        "cannot open the event log " + path + ": " + std::strerror(err));
  }
  std::vector<uint8_t> out;
  uint8_t buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (!configured) return Log();
      return MakeError(ErrorCode::kIo, "cannot read the event log " + path +
                                           ": " + std::strerror(errno));
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
    if (out.size() > kMaxHostEventLog) {
      if (!configured) return Log();
      return MakeError(ErrorCode::kInvalidArgument,
                       "the event log " + path + " exceeds " +
                           std::to_string(kMaxHostEventLog) + " bytes");
    }
  }
  return Log(std::move(out));
}

namespace {

Result<Tpm> OpenTpm(const std::string& tcti) {
  auto t = Tpm::Open(tcti);
  if (!t.ok()) return Prefixed("TPM (" + tcti + "): ", std::move(t).error());
  return t;
}

}  // namespace

Status TrustedProvider::Enroll() {
  VCRYPT_ASSIGN_OR_RETURN(Tpm tpm, OpenTpm(settings_.tcti));
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> ek, tpm.EkPublic());
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> ak, tpm.AkPublic());
  VCRYPT_ASSIGN_OR_RETURN(std::optional<std::vector<uint8_t>> cert,
                          tpm.EkCertificate());
  VCRYPT_ASSIGN_OR_RETURN(TaEnrollChallenge ch,
                          attestation_.Enroll(settings_.host, ek, cert, ak));
  auto secret = tpm.ActivateCredential(ch.credential_blob, ch.encrypted_secret);
  if (!secret.ok())
    return Prefixed(
        "the TPM cannot activate the enrollment credential (was it made for "
        "this TPM's EK?): ",
        std::move(secret).error());
  return attestation_.EnrollFinish(ch.id, *secret);
}

Result<std::shared_ptr<const TrustedProvider::Session>> TrustedProvider::Attest(
    bool may_reenroll) {
  // One attempt: nonce, quote bound to a fresh session key, token. Sets
  // *refused when the service refused the quote (as opposed to not being
  // reachable or not knowing the host).
  auto once = [&](bool* refused) -> Result<std::shared_ptr<const Session>> {
    *refused = false;
    VCRYPT_ASSIGN_OR_RETURN(EcSigningKey key, EcSigningKey::Generate());
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> point, key.PublicPoint());
    VCRYPT_ASSIGN_OR_RETURN(TaNonce n, attestation_.Nonce(settings_.host));
    std::vector<uint8_t> qd = QuoteQualifyingData(n.nonce, point);
    Result<Tpm::Quote> q = MakeError(ErrorCode::kInternal, "no quote");
    {
      VCRYPT_ASSIGN_OR_RETURN(Tpm tpm, OpenTpm(settings_.tcti));
      q = tpm.QuotePcrs(qd, n.bank, n.pcrs);
    }
    if (!q.ok()) return Prefixed("TPM quote: ", std::move(q).error());
    // Read after the quote: the firmware log does not change after boot,
    // and a PCR extended meanwhile makes the replay fail, not pass.
    VCRYPT_ASSIGN_OR_RETURN(std::optional<std::vector<uint8_t>> log,
                            ReadHostEventLog(settings_.event_log));
    auto token = attestation_.Attest(settings_.host, n.nonce, q->attest,
                                     q->signature, q->pcr_values, point, log);
    if (!token.ok()) {
      const ErrorCode c = token.error().code;
      *refused = c == ErrorCode::kPermissionDenied || c == ErrorCode::kCrypto;
      return Prefixed("attestation refused: ", std::move(token).error());
    }
    VCRYPT_ASSIGN_OR_RETURN(TokenTimes t, ReadTokenTimes(*token));
    auto s = std::make_shared<Session>(
        Session{std::move(token).value(), std::move(key), t.exp, 0});
    // 30 s of margin for clock skew and the requests in flight; a short
    // token gets half its life so it is used at all.
    int64_t margin = kRefreshMarginSeconds;
    if (t.iat > 0 && t.exp > t.iat && t.exp - t.iat <= 2 * margin)
      margin = (t.exp - t.iat) / 2;
    s->refresh_at = t.exp - margin;
    return std::shared_ptr<const Session>(std::move(s));
  };
  bool refused = false;
  auto s = once(&refused);
  if (!s.ok() && refused && may_reenroll) {
    // The service does not tell "unknown AK" apart from other refusals by
    // code; enrolling again is cheap and harmless, and a quote refused for
    // another reason (PCRs) is refused again below with the same message.
    if (Status e = Enroll(); !e.ok())
      return Prefixed(s.error().message + "; enrolling the AK again failed: ",
                      std::move(e).error());
    s = once(&refused);
  }
  if (!s.ok()) return std::move(s).error();
  std::lock_guard lock(cache_mu_);
  session_ = *s;
  ++attestations_;
  return s;
}

Result<std::shared_ptr<const TrustedProvider::Session>>
TrustedProvider::GetSession(const Session* stale, bool* fresh) {
  *fresh = false;
  uint64_t seen;
  auto usable = [&]() {
    return session_ && session_.get() != stale && Now() < session_->refresh_at;
  };
  {
    std::lock_guard lock(cache_mu_);
    if (usable()) return session_;
    seen = attempts_;
  }
  std::lock_guard attest(attest_mu_);
  {
    std::lock_guard lock(cache_mu_);
    if (usable()) return session_;
    // An attestation finished while this caller waited: share its outcome
    // (even if this process's clock finds the new token old already).
    if (attempts_ != seen) {
      if (last_failure_) return *last_failure_;
      if (session_ && session_.get() != stale) return session_;
    }
    if (stale && session_.get() == stale) session_.reset();
  }
  auto s = Attest(/*may_reenroll=*/true);
  std::lock_guard lock(cache_mu_);
  ++attempts_;
  if (!s.ok()) {
    last_failure_ = s.error();
    return std::move(s).error();
  }
  last_failure_.reset();
  *fresh = true;
  return s;
}

// --- KEKs ------------------------------------------------------------------

template <typename T, typename F>
Result<T> TrustedProvider::WithSession(const std::string& prefix, F&& call) {
  // Attestation failures at this point mean "no key now" for the caller,
  // whatever the service's reason (which the message keeps).
  auto unavailable = [&](Error e) {
    e.code = ErrorCode::kKeyUnavailable;
    return Prefixed(prefix, std::move(e));
  };
  bool fresh = false;
  auto s = GetSession(nullptr, &fresh);
  if (!s.ok()) return unavailable(std::move(s).error());
  Result<T> r = call(**s);
  if (!r.ok() && !fresh &&
      (r.error().code == ErrorCode::kPermissionDenied ||
       r.error().code == ErrorCode::kCrypto)) {
    // A cached token refused: it may have been revoked (baseline removed)
    // or signed with a rotated key. Once more with a fresh attestation.
    auto s2 = GetSession(s->get(), &fresh);
    if (!s2.ok()) return unavailable(std::move(s2).error());
    r = call(**s2);
  }
  if (r.ok()) return r;
  Error e = std::move(r).error();
  switch (e.code) {
    case ErrorCode::kCrypto:
    case ErrorCode::kInvalidVolume:
      break;  // the ciphertext (the volume's token) is the problem
    case ErrorCode::kInvalidArgument:
      // The KPS found the request malformed: for an unwrap, the ciphertext.
      e.code = ErrorCode::kInvalidVolume;
      break;
    default:
      e.code = ErrorCode::kKeyUnavailable;
  }
  return Prefixed(prefix, std::move(e));
}

Result<NewKek> TrustedProvider::CreateKek(std::string_view vm) {
  // The KPS API takes no VM name: a KEK is bound to its ID and provider.
  (void)vm;
  return NewKekFromKps("trusted provider '" + name_ + "': ");
}

Result<NewKek> TrustedProvider::NewKekFromKps(const std::string& prefix) {
  return WithSession<NewKek>(prefix, [&](const Session& s) -> Result<NewKek> {
    VCRYPT_ASSIGN_OR_RETURN(TransportKey tk, TransportKey::Generate());
    VCRYPT_ASSIGN_OR_RETURN(
        std::string proof,
        SignRequestProof(s.key, s.token, "/v1/kek", tk.public_point(), ""));
    VCRYPT_ASSIGN_OR_RETURN(TaKekGrant g,
                            kps_.CreateKek(s.token, proof, tk.public_point()));
    auto kek = tk.Open(g.kek, g.kek_id);
    if (!kek.ok())
      return MakeError(ErrorCode::kKeyUnavailable,
                       "the KEK sent by the key provider service does not "
                       "open: " +
                           kek.error().message);
    if (kek->size() != kKekSize)
      return MakeError(ErrorCode::kKeyUnavailable,
                       "the key provider service sent a KEK of " +
                           std::to_string(kek->size()) + " bytes, not " +
                           std::to_string(kKekSize));
    NewKek nk;
    nk.ref.kek_id = g.kek_id;
    nk.ref.data = Json{{"ciphertext", g.ciphertext}};
    nk.kek = std::move(kek).value();
    return nk;
  });
}

Result<SecureBuffer> TrustedProvider::GetKek(const KekRef& ref) {
  if (ref.kek_id.empty() || !ref.data.is_object() ||
      !ref.data.contains("ciphertext") || !ref.data["ciphertext"].is_string() ||
      ref.data["ciphertext"].get<std::string>().empty())
    return MakeError(ErrorCode::kInvalidVolume,
                     "trusted provider '" + name_ +
                         "': the volume's token has no KEK ID or KEK "
                         "ciphertext");
  const std::string ciphertext = ref.data["ciphertext"].get<std::string>();
  return WithSession<SecureBuffer>(
      "trusted provider '" + name_ + "': ",
      [&](const Session& s) -> Result<SecureBuffer> {
        VCRYPT_ASSIGN_OR_RETURN(TransportKey tk, TransportKey::Generate());
        VCRYPT_ASSIGN_OR_RETURN(
            std::string proof,
            SignRequestProof(s.key, s.token, "/v1/kek/unwrap",
                             tk.public_point(), ciphertext));
        VCRYPT_ASSIGN_OR_RETURN(
            SealedKey sealed,
            kps_.UnwrapKek(s.token, proof, ciphertext, tk.public_point()));
        // Sealed for the KEK ID inside the ciphertext: it opens only if
        // that is the ID this volume's token names.
        auto kek = tk.Open(sealed, ref.kek_id);
        if (!kek.ok())
          return MakeError(ErrorCode::kInvalidVolume,
                           "KEK " + ref.kek_id +
                               ": the KEK ciphertext in the volume's token "
                               "belongs to another KEK ID");
        if (kek->size() != kKekSize)
          return MakeError(ErrorCode::kKeyUnavailable,
                           "KEK " + ref.kek_id +
                               ": the key provider service "
                               "sent a KEK of " +
                               std::to_string(kek->size()) + " bytes, not " +
                               std::to_string(kKekSize));
        return std::move(kek).value();
      });
}

Json TrustedProvider::Describe() const {
  Json d = {{"name", name_},
            {"type", "trusted"},
            {"attestation", settings_.attestation_url},
            {"kps", settings_.kps_url},
            {"host", settings_.host},
            {"tcti", settings_.tcti}};
  if (settings_.event_log) d["event_log"] = *settings_.event_log;
  std::lock_guard lock(cache_mu_);
  const bool cached = session_ && Now() < session_->refresh_at;
  d["token_cached"] = cached;
  if (cached) d["token_expires"] = Rfc3339(session_->exp);
  d["attestations"] = attestations_;
  if (last_failure_) d["last_error"] = last_failure_->message;
  // Connection reuse (keep-alive, TLS resumption; ta_client.h).
  for (const auto& [key, c] :
       {std::pair{"attestation_service", &attestation_}, {"kps", &kps_}}) {
    const TaClientStats st = c->stats();
    d["connections"][key] = {{"requests", st.requests},
                             {"tls_connections_made", st.connections_made},
                             {"tls_sessions_resumed", st.sessions_resumed}};
  }
  return d;
}

}  // namespace vcrypt
