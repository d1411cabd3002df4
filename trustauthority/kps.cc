#include "trustauthority/kps.h"

#include <nlohmann/json.hpp>

#include "common/aead.h"
#include "common/random.h"
#include "taprotocol/proof.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

std::vector<uint8_t> KekAad(std::string_view provider,
                            std::string_view kek_id) {
  return BuildAad("vcrypt-ta-kek-v1", {provider, kek_id});
}

}  // namespace

Result<KeyProviderService> KeyProviderService::Open(KpsConfig config,
                                                    EcVerifyKey attestation_key,
                                                    SecureBuffer primary_key) {
  if (primary_key.size() != kAeadKeySize)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the primary key must be 256 bits");
  if (config.provider_id.empty())
    return MakeError(ErrorCode::kInvalidArgument, "the provider needs an ID");
  if (!config.store)
    return MakeError(ErrorCode::kInvalidArgument,
                     "the key provider service needs a store");
  return KeyProviderService(std::move(config), std::move(attestation_key),
                            std::move(primary_key));
}

Result<AttestationClaims> KeyProviderService::Admit(
    const KpsRequest& req, std::string_view path) {
  const auto now = std::chrono::system_clock::now();
  VCRYPT_ASSIGN_OR_RETURN(AttestationClaims c,
                          VerifyToken(req.token, key_, config_.policy, now));
  // A token is a bearer credential only together with its session key.
  if (c.cnf_point.empty())
    return MakeError(ErrorCode::kPermissionDenied,
                     "attestation token: not bound to a session key (cnf)");
  VCRYPT_ASSIGN_OR_RETURN(EcVerifyKey session,
                          EcVerifyKey::FromPoint(c.cnf_point));
  VCRYPT_ASSIGN_OR_RETURN(
      ProofClaims p,
      VerifyRequestProof(req.proof, session, req.token, path,
                         req.transport_key, req.ciphertext, now));
  // The baseline may have been withdrawn (or have expired) since the
  // token was issued. Its name was checked by the attestation service and
  // is signed; it is only ever a bound parameter.
  const int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch())
          .count();
  if (c.baseline.empty())
    return MakeError(ErrorCode::kPermissionDenied,
                     "the token's baseline is no longer approved");
  VCRYPT_ASSIGN_OR_RETURN(std::optional<BaselineRow> baseline,
                          config_.store->GetBaseline(c.baseline, now_s));
  if (!baseline)
    return MakeError(ErrorCode::kPermissionDenied,
                     "the token's baseline is no longer approved");
  // Single use of the request: the proof's jti, scoped by the token's (a
  // proof names its token through `ath`, so one host cannot use up
  // another's ids). Kept until the proof could no longer pass the age check.
  // Entries outlive their proofs by a minute's grace (clock differences
  // between replicas); sweep them now and then (at most once a minute
  // per replica) so the table stays small.
  bool purge = false;
  {
    std::lock_guard lock(*purge_mu_);
    if (now - last_purge_ >= std::chrono::minutes(1)) {
      last_purge_ = now;
      purge = true;
    }
  }
  if (purge) (void)config_.store->Purge(now_s, 60);  // best effort
  VCRYPT_ASSIGN_OR_RETURN(
      bool fresh, config_.store->ConsumeOnce("kps-request", c.jti + "/" + p.jti,
                                             p.iat + kProofMaxAge.count()));
  if (!fresh)
    return MakeError(ErrorCode::kPermissionDenied,
                     "replayed request (the proof's jti was already used)");
  return c;
}

Result<KekGrant> KeyProviderService::CreateKek(const KpsRequest& req) {
  if (!req.ciphertext.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "a KEK creation takes no ciphertext");
  VCRYPT_ASSIGN_OR_RETURN(AttestationClaims c, Admit(req, kKekPath));
  (void)c;
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer kek, RandomKey(kAeadKeySize));
  VCRYPT_ASSIGN_OR_RETURN(std::string kek_id, RandomUuid());
  VCRYPT_ASSIGN_OR_RETURN(
      WrappedKey w,
      WrapKey(primary_, kek, KekAad(config_.provider_id, kek_id)));
  Json ct = {{"v", 1},
             {"provider", config_.provider_id},
             {"kek_id", kek_id},
             {"wrapped", w.ToJson()}};
  VCRYPT_ASSIGN_OR_RETURN(SealedKey sealed,
                          SealTo(req.transport_key, kek, kek_id));
  return KekGrant{kek_id, ct.dump(), std::move(sealed)};
}

Result<SealedKey> KeyProviderService::UnwrapKek(const KpsRequest& req) {
  VCRYPT_ASSIGN_OR_RETURN(AttestationClaims c, Admit(req, kKekUnwrapPath));
  (void)c;
  const std::string_view ciphertext = req.ciphertext;
  auto refused = [] {
    return MakeError(
        ErrorCode::kCrypto,
        "the KEK ciphertext was altered or belongs to another key provider");
  };
  Json ct = Json::parse(ciphertext, nullptr, false);
  if (!ct.is_object() || ct.value("v", 0) != 1 || !ct.contains("provider") ||
      !ct["provider"].is_string() || !ct.contains("kek_id") ||
      !ct["kek_id"].is_string() || !ct.contains("wrapped"))
    return MakeError(ErrorCode::kInvalidArgument, "malformed KEK ciphertext");
  if (ct["provider"].get<std::string>() != config_.provider_id)
    return refused();
  auto w = WrappedKey::FromJson(ct["wrapped"]);
  if (!w.ok()) return refused();
  const std::string kek_id = ct["kek_id"].get<std::string>();
  auto kek = UnwrapKey(primary_, *w, KekAad(config_.provider_id, kek_id));
  if (!kek.ok()) return refused();
  return SealTo(req.transport_key, *kek, kek_id);
}

Result<EcVerifyKey> AttestationTokenKey(TaStore& store) {
  VCRYPT_ASSIGN_OR_RETURN(std::vector<SigningKeyInfo> keys,
                          store.SigningKeys());
  // The newest active key (one until rotation exists).
  const SigningKeyInfo* active = nullptr;
  for (const auto& k : keys)
    if (k.state == "active") active = &k;
  if (active == nullptr)
    return MakeError(ErrorCode::kNotFound,
                     "the database " + store.url() +
                         " holds no active token signing key (run "
                         "'vcrypt-ta admin init')");
  auto key = EcVerifyKey::FromPublicPem(active->public_pem);
  if (!key.ok())
    return MakeError(key.error().code, "token signing key " + active->kid +
                                           ": " + key.error().message);
  return key;
}

}  // namespace vcrypt
