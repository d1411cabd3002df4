#include "keyproviders/key_provider.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

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

Result<StagedProviderDir> StagedProviderDir::Begin(const std::string& dir) {
  struct stat st;
  if (lstat(dir.c_str(), &st) == 0)
    return MakeError(ErrorCode::kExists,
                     "provider directory " + dir + " already exists");
  const std::string tmp = dir + ".new";
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
  VCRYPT_RETURN_IF_ERROR(MakeDirs(tmp, 0700));
  return StagedProviderDir(dir, tmp);
}

StagedProviderDir::~StagedProviderDir() {
  if (tmp_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(tmp_, ec);
}

Status StagedProviderDir::Commit() {
  if (rename(tmp_.c_str(), dir_.c_str()) != 0)
    return MakeError(ErrorCode::kIo,
                     "cannot create " + dir_ + ": " + std::strerror(errno));
  tmp_.clear();
  return Status::Ok();
}

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
