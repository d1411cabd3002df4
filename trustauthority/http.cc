#include "trustauthority/http.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base64.h"
#include "trustauthority/eventlog.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

int StatusFor(ErrorCode c) {
  switch (c) {
    case ErrorCode::kUsage:
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kPermissionDenied:
    case ErrorCode::kCrypto:
      return 403;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kBusy:  // a cap on outstanding state was reached
      return 503;
    default:
      return 500;
  }
}

void Reply(httplib::Response& res, const Result<Json>& r) {
  if (r.ok()) {
    res.status = 200;
    res.set_content(r->dump(), "application/json");
    return;
  }
  res.status = StatusFor(r.error().code);
  res.set_content(Json{{"error",
                        {{"code", std::string(ErrorCodeName(r.error().code))},
                         {"message", r.error().message}}}}
                      .dump(),
                  "application/json");
}

Error Bad(const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, "bad request: " + what);
}

Result<std::string> Str(const Json& j, const char* name) {
  if (!j.contains(name) || !j[name].is_string())
    return Bad(std::string("'") + name + "' missing");
  return j[name].get<std::string>();
}

Result<std::vector<uint8_t>> Bytes(const Json& j, const char* name) {
  VCRYPT_ASSIGN_OR_RETURN(std::string s, Str(j, name));
  auto b = Base64Decode(s);
  if (!b.ok()) return Bad(std::string("'") + name + "' is not base64");
  return b;
}

// Token buckets keyed by client address. The table is bounded: when it
// is full, buckets that have refilled (idle clients) are dropped; if none
// has, an unknown client is refused like an over-limit one rather than
// growing the table (fail closed under a flood from many addresses).
class RateLimiter {
 public:
  explicit RateLimiter(ClientRateLimit limit) : limit_(limit) {}
  // Takes a token for `client`; false when it has none left.
  bool Allow(const std::string& client) {
    if (limit_.per_second <= 0) return true;
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mu_);
    auto it = buckets_.find(client);
    if (it == buckets_.end()) {
      if (buckets_.size() >= kMaxClients) {
        // A sweep of the whole table at most once a second: a flood from
        // many addresses must not make every request pay for one.
        if (now - last_prune_ < std::chrono::seconds(1)) return false;
        last_prune_ = now;
        Prune(now);
        if (buckets_.size() >= kMaxClients) return false;
      }
      it = buckets_.emplace(client, Bucket{limit_.burst, now}).first;
    }
    Bucket& b = it->second;
    Refill(b, now);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
  const ClientRateLimit& limit() const { return limit_; }

 private:
  static constexpr size_t kMaxClients = 65536;
  struct Bucket {
    double tokens;
    std::chrono::steady_clock::time_point at;
  };
  void Refill(Bucket& b, std::chrono::steady_clock::time_point now) {
    const double s = std::chrono::duration<double>(now - b.at).count();
    b.tokens = std::min(limit_.burst, b.tokens + s * limit_.per_second);
    b.at = now;
  }
  void Prune(std::chrono::steady_clock::time_point now) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      Refill(it->second, now);
      it = it->second.tokens >= limit_.burst ? buckets_.erase(it)
                                             : std::next(it);
    }
  }

  const ClientRateLimit limit_;
  std::mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_;
  std::chrono::steady_clock::time_point last_prune_{};
};

std::string Rate(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

// A POST route whose body is a JSON object, answered by `fn` (under `mu`
// unless null); with `limiter`, each client address first takes a token
// from it.
void Route(httplib::Server& server, const std::string& path, std::mutex* mu,
           std::function<Result<Json>(const Json&)> fn,
           std::shared_ptr<RateLimiter> limiter = nullptr) {
  server.Post(path, [mu, fn, limiter](const httplib::Request& req,
                                      httplib::Response& res) {
    if (limiter && !limiter->Allow(req.remote_addr)) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      res.set_content(
          Json{{"error",
                {{"code", std::string(ErrorCodeName(ErrorCode::kBusy))},
                 {"message",
                  "too many requests from " + req.remote_addr + " (at most " +
                      Rate(limiter->limit().per_second) + "/s, bursts of " +
                      Rate(limiter->limit().burst) + "): retry later"}}}}
              .dump(),
          "application/json");
      return;
    }
    Json body = Json::parse(req.body, nullptr, false);
    if (!body.is_object())
      return Reply(res, Bad("the body is not a JSON object"));
    if (mu == nullptr) return Reply(res, fn(body));
    std::lock_guard lock(*mu);
    Reply(res, fn(body));
  });
}

}  // namespace

void AddAttestationRoutes(httplib::Server& server, AttestationService& svc,
                          ClientRateLimit limit) {
  auto limiter = std::make_shared<RateLimiter>(limit);
  Route(
      server, "/v1/enroll", nullptr,
      [&svc](const Json& b) -> Result<Json> {
        VCRYPT_ASSIGN_OR_RETURN(std::string host, Str(b, "host"));
        VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> ek, Bytes(b, "ek"));
        VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> ak, Bytes(b, "ak"));
        std::optional<std::vector<uint8_t>> cert;
        if (b.contains("ek_cert")) {
          VCRYPT_ASSIGN_OR_RETURN(cert, Bytes(b, "ek_cert"));
        }
        VCRYPT_ASSIGN_OR_RETURN(EnrollmentChallenge ch,
                                svc.StartEnrollment(host, ek, cert, ak));
        return Json{
            {"id", ch.id},
            {"credential_blob", Base64Encode(ch.credential.credential_blob)},
            {"encrypted_secret", Base64Encode(ch.credential.encrypted_secret)}};
      },
      limiter);
  Route(server, "/v1/enroll/finish", nullptr,
        [&svc](const Json& b) -> Result<Json> {
          VCRYPT_ASSIGN_OR_RETURN(std::string id, Str(b, "id"));
          VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> s, Bytes(b, "secret"));
          SecureBuffer secret(s.size());
          std::copy(s.begin(), s.end(), secret.data());
          std::fill(s.begin(), s.end(), 0);
          VCRYPT_RETURN_IF_ERROR(svc.FinishEnrollment(id, secret));
          return Json::object();
        });
  Route(
      server, "/v1/nonce", nullptr,
      [&svc](const Json& b) -> Result<Json> {
        VCRYPT_ASSIGN_OR_RETURN(std::string host, Str(b, "host"));
        VCRYPT_ASSIGN_OR_RETURN(NonceGrant g, svc.IssueNonce(host));
        return Json{{"nonce", Base64Encode(g.nonce)},
                    {"bank", g.selection.hash},
                    {"pcrs", g.selection.pcrs},
                    {"expires", g.expires}};
      },
      limiter);
  Route(server, "/v1/attest", nullptr, [&svc](const Json& b) -> Result<Json> {
    VCRYPT_ASSIGN_OR_RETURN(std::string host, Str(b, "host"));
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> nonce, Bytes(b, "nonce"));
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> session,
                            Bytes(b, "session_key"));
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> attest, Bytes(b, "attest"));
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> sig, Bytes(b, "signature"));
    if (!b.contains("pcr_values") || !b["pcr_values"].is_array())
      return Bad("'pcr_values' missing");
    std::vector<std::vector<uint8_t>> values;
    for (const auto& v : b["pcr_values"]) {
      if (!v.is_string()) return Bad("'pcr_values' must be base64 strings");
      auto d = Base64Decode(v.get<std::string>());
      if (!d.ok()) return Bad("'pcr_values' must be base64 strings");
      values.push_back(std::move(d).value());
    }
    // Optional: the host's firmware event log (trustauthority/eventlog.h),
    // bounded before it is decoded.
    std::optional<std::vector<uint8_t>> event_log;
    if (b.contains("event_log")) {
      VCRYPT_ASSIGN_OR_RETURN(std::string text, Str(b, "event_log"));
      if (text.size() > (kMaxEventLogSize + 2) / 3 * 4)
        return Bad("'event_log' exceeds " + std::to_string(kMaxEventLogSize) +
                   " bytes");
      VCRYPT_ASSIGN_OR_RETURN(event_log, Bytes(b, "event_log"));
    }
    VCRYPT_ASSIGN_OR_RETURN(
        std::string token,
        svc.Attest(host, nonce, session, attest, sig, values, event_log));
    return Json{{"token", token}};
  });
}

namespace {
Result<KpsRequest> KpsBody(const Json& b, bool unwrap) {
  KpsRequest r;
  VCRYPT_ASSIGN_OR_RETURN(r.token, Str(b, "token"));
  VCRYPT_ASSIGN_OR_RETURN(r.proof, Str(b, "proof"));
  VCRYPT_ASSIGN_OR_RETURN(r.transport_key, Bytes(b, "transport_key"));
  if (unwrap) {
    VCRYPT_ASSIGN_OR_RETURN(r.ciphertext, Str(b, "ciphertext"));
  }
  return r;
}
}  // namespace

void AddKpsRoutes(httplib::Server& server, KeyProviderService& svc,
                  std::mutex& mu) {
  Route(server, std::string(kKekPath), &mu,
        [&svc](const Json& b) -> Result<Json> {
          VCRYPT_ASSIGN_OR_RETURN(KpsRequest r, KpsBody(b, false));
          VCRYPT_ASSIGN_OR_RETURN(KekGrant g, svc.CreateKek(r));
          return Json{{"kek_id", g.kek_id},
                      {"ciphertext", g.ciphertext},
                      {"kek", g.kek.ToJson()}};
        });
  Route(server, std::string(kKekUnwrapPath), &mu,
        [&svc](const Json& b) -> Result<Json> {
          VCRYPT_ASSIGN_OR_RETURN(KpsRequest r, KpsBody(b, true));
          VCRYPT_ASSIGN_OR_RETURN(SealedKey k, svc.UnwrapKek(r));
          return Json{{"kek", k.ToJson()}};
        });
}

}  // namespace vcrypt
