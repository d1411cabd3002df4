#include "keyproviders/key_provider.h"

#include "common/atomic_file.h"

namespace vcrypt {

std::vector<Result<SecureBuffer>> KeyProvider::GetKeks(
    std::span<const KekRef> refs) {
  std::vector<Result<SecureBuffer>> out;
  out.reserve(refs.size());
  for (const auto& r : refs) out.push_back(GetKek(r));
  return out;
}

Status KeyProvider::DestroyKek(const KekRef&) { return Status::Ok(); }

bool KeyProvider::Recognizes(const KekRef&) const { return false; }

Error ProviderConfigError(const std::string& dir, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "provider config " + dir + "/config.json: " + why);
}

Result<nlohmann::json> ReadProviderConfig(const std::string& dir,
                                          std::string_view type, int version) {
  VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/config.json"));
  nlohmann::json cfg = nlohmann::json::parse(text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object())
    return ProviderConfigError(dir, "not a JSON object");
  if (cfg.value("version", 0) != version)
    return ProviderConfigError(dir, "unknown version");
  if (cfg.value("type", "") != type)
    return ProviderConfigError(dir, "not a " + std::string(type) + " provider");
  return cfg;
}

}  // namespace vcrypt
