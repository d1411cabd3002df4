#include "probe/probe.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "common/handles.h"
#include "common/names.h"
#include "dmtools/layout.h"
#include "dmtools/token.h"
#include "probe/luks2_metadata.h"

namespace vcrypt {
namespace {

// What may appear in a value printed for udev: no whitespace, quotes,
// '=', '$', '%', backslashes or control characters.
bool SafeValue(std::string_view v) {
  if (v.empty()) return false;
  for (unsigned char c : v) {
    if (!(std::isalnum(c) || c == '_' || c == '.' || c == '-')) return false;
  }
  return true;
}

Error NotVcrypt(const std::string& device, const std::string& why) {
  return MakeError(ErrorCode::kInvalidVolume,
                   device + " is not a vcrypt volume: " + why);
}

}  // namespace

bool ProviderNeedsNetwork(std::string_view provider_type) {
  return provider_type == "standard" || provider_type == "trusted";
}

std::string UnlockUnitInstance(std::string_view vm, std::string_view disk) {
  return std::string(vm) + "-" + std::string(disk);
}

Result<ProbeInfo> ProbeInfoFromToken(const std::string& device,
                                     const std::string& uuid,
                                     std::string_view token_json) {
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken token, VcryptToken::Parse(token_json));
  // Parse validated the names; check again what goes to udev, so that
  // this function alone guarantees safe output.
  if (!ValidateVolumeNames(token.vm, token.disk).ok() ||
      !ValidateProviderName(token.provider_name).ok())
    return NotVcrypt(device, "the vcrypt token holds an invalid name");
  if (token.provider_type != "native" &&
      !ProviderNeedsNetwork(token.provider_type))
    return NotVcrypt(device, "unknown provider type in the vcrypt token");
  if (!IsUuidText(uuid))
    return NotVcrypt(device, "the LUKS2 UUID is malformed");

  ProbeInfo info;
  info.vm = token.vm;
  info.disk = token.disk;
  info.uuid = uuid;
  info.provider = token.provider_name;
  info.provider_type = token.provider_type;
  info.needs_network = ProviderNeedsNetwork(token.provider_type);
  info.unit_instance = UnlockUnitInstance(token.vm, token.disk);
  for (const std::string* v : {&info.vm, &info.disk, &info.uuid, &info.provider,
                               &info.provider_type, &info.unit_instance}) {
    if (!SafeValue(*v))
      return NotVcrypt(device, "unsafe characters in the vcrypt token");
  }
  return info;
}

std::optional<ProbeInfo> FastProbe(const std::string& device,
                                   std::string* why) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) {
    *why = std::string("cannot stat: ") + std::strerror(errno);
    return std::nullopt;
  }
  if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode)) {
    *why = "neither a block device nor a regular file";
    return std::nullopt;
  }
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    *why = std::string("cannot open: ") + std::strerror(errno);
    return std::nullopt;
  }
  off_t size = lseek(fd.get(), 0, SEEK_END);
  if (size < 0 || static_cast<uint64_t>(size) < kMinVolumeSize) {
    *why = "smaller than the smallest vcrypt volume";
    return std::nullopt;
  }
  auto meta = ReadLuks2Metadata(fd.get(), why);
  if (!meta) return std::nullopt;

  const nlohmann::json* token = nullptr;
  auto tokens = meta->json.find("tokens");
  if (tokens == meta->json.end() || !tokens->is_object()) {
    *why = "the LUKS2 metadata has no tokens object";
    return std::nullopt;
  }
  for (const auto& [id, t] : tokens->items()) {
    if (!t.is_object()) continue;
    auto type = t.find("type");
    if (type == t.end() || !type->is_string() || *type != kTokenType) continue;
    if (token != nullptr) {
      *why = "more than one vcrypt token";
      return std::nullopt;
    }
    token = &t;
  }
  if (token == nullptr) {
    *why = "no vcrypt token";
    return std::nullopt;
  }
  auto info = ProbeInfoFromToken(device, meta->uuid, token->dump());
  if (!info.ok()) {
    *why = info.error().message;
    return std::nullopt;
  }
  return std::move(info).value();
}

std::string FormatProbe(const ProbeInfo& info) {
  std::string out;
  auto line = [&](std::string_view k, std::string_view v) {
    out.append(k).append("=").append(v).append("\n");
  };
  line("VCRYPT_VOLUME", "1");
  line("VCRYPT_VM", info.vm);
  line("VCRYPT_DISK", info.disk);
  line("VCRYPT_UUID", info.uuid);
  line("VCRYPT_PROVIDER", info.provider);
  line("VCRYPT_PROVIDER_TYPE", info.provider_type);
  line("VCRYPT_NEEDS_NETWORK", info.needs_network ? "1" : "0");
  line("VCRYPT_UNIT", info.unit_instance);
  return out;
}

}  // namespace vcrypt
