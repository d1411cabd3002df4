#include "trustauthority/kps.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/aead.h"
#include "common/atomic_file.h"
#include "common/random.h"

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
  VCRYPT_RETURN_IF_ERROR(MakeDirs(config.state_dir + "/baselines"));
  VCRYPT_ASSIGN_OR_RETURN(ReplayGuard g,
                          ReplayGuard::Open(config.state_dir + "/jti"));
  return KeyProviderService(std::move(config), std::move(attestation_key),
                            std::move(primary_key), std::move(g));
}

Result<AttestationClaims> KeyProviderService::Admit(std::string_view token) {
  VCRYPT_ASSIGN_OR_RETURN(AttestationClaims c,
                          VerifyToken(token, key_, config_.policy,
                                      std::chrono::system_clock::now()));
  // The baseline may have been withdrawn since the token was issued. Its
  // name was checked by the attestation service and is signed; still,
  // only plain names are looked up.
  if (c.baseline.find('/') != std::string::npos || c.baseline[0] == '.' ||
      !std::filesystem::exists(config_.state_dir + "/baselines/" + c.baseline +
                               ".json"))
    return MakeError(ErrorCode::kPermissionDenied,
                     "the token's baseline is no longer approved");
  VCRYPT_ASSIGN_OR_RETURN(bool fresh, jti_.ConsumeOnce(c.jti, c.exp));
  if (!fresh)
    return MakeError(ErrorCode::kPermissionDenied,
                     "the token was already used");
  return c;
}

Result<KekGrant> KeyProviderService::CreateKek(
    std::string_view token, std::span<const uint8_t> transport_key) {
  VCRYPT_ASSIGN_OR_RETURN(AttestationClaims c, Admit(token));
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
  VCRYPT_ASSIGN_OR_RETURN(SealedKey sealed, SealTo(transport_key, kek, kek_id));
  return KekGrant{kek_id, ct.dump(), std::move(sealed)};
}

Result<SealedKey> KeyProviderService::UnwrapKek(
    std::string_view token, std::string_view ciphertext,
    std::span<const uint8_t> transport_key) {
  VCRYPT_ASSIGN_OR_RETURN(AttestationClaims c, Admit(token));
  (void)c;
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
  return SealTo(transport_key, *kek, kek_id);
}

}  // namespace vcrypt
