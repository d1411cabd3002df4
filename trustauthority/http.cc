#include "trustauthority/http.h"

#include <httplib.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base64.h"

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

// A POST route whose body is a JSON object, answered by `fn` under `mu`.
void Route(httplib::Server& server, const std::string& path, std::mutex& mu,
           std::function<Result<Json>(const Json&)> fn) {
  server.Post(path,
              [&mu, fn](const httplib::Request& req, httplib::Response& res) {
                Json body = Json::parse(req.body, nullptr, false);
                if (!body.is_object())
                  return Reply(res, Bad("the body is not a JSON object"));
                std::lock_guard lock(mu);
                Reply(res, fn(body));
              });
}

}  // namespace

void AddAttestationRoutes(httplib::Server& server, AttestationService& svc,
                          std::mutex& mu) {
  Route(server, "/v1/enroll", mu, [&svc](const Json& b) -> Result<Json> {
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
  });
  Route(server, "/v1/enroll/finish", mu, [&svc](const Json& b) -> Result<Json> {
    VCRYPT_ASSIGN_OR_RETURN(std::string id, Str(b, "id"));
    VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> s, Bytes(b, "secret"));
    SecureBuffer secret(s.size());
    std::copy(s.begin(), s.end(), secret.data());
    std::fill(s.begin(), s.end(), 0);
    VCRYPT_RETURN_IF_ERROR(svc.FinishEnrollment(id, secret));
    return Json::object();
  });
  Route(server, "/v1/nonce", mu, [&svc](const Json& b) -> Result<Json> {
    VCRYPT_ASSIGN_OR_RETURN(std::string host, Str(b, "host"));
    VCRYPT_ASSIGN_OR_RETURN(NonceGrant g, svc.IssueNonce(host));
    return Json{{"nonce", Base64Encode(g.nonce)},
                {"bank", g.selection.hash},
                {"pcrs", g.selection.pcrs},
                {"expires", g.expires}};
  });
  Route(server, "/v1/attest", mu, [&svc](const Json& b) -> Result<Json> {
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
    VCRYPT_ASSIGN_OR_RETURN(std::string token,
                            svc.Attest(host, nonce, session, attest, sig, values));
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
  Route(server, std::string(kKekPath), mu,
        [&svc](const Json& b) -> Result<Json> {
          VCRYPT_ASSIGN_OR_RETURN(KpsRequest r, KpsBody(b, false));
          VCRYPT_ASSIGN_OR_RETURN(KekGrant g, svc.CreateKek(r));
          return Json{{"kek_id", g.kek_id},
                      {"ciphertext", g.ciphertext},
                      {"kek", g.kek.ToJson()}};
        });
  Route(server, std::string(kKekUnwrapPath), mu,
        [&svc](const Json& b) -> Result<Json> {
          VCRYPT_ASSIGN_OR_RETURN(KpsRequest r, KpsBody(b, true));
          VCRYPT_ASSIGN_OR_RETURN(SealedKey k, svc.UnwrapKek(r));
          return Json{{"kek", k.ToJson()}};
        });
}

}  // namespace vcrypt
