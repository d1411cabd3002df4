#include "common/names.h"

#include <cctype>

namespace vcrypt {
namespace {

Status Validate(std::string_view what, std::string_view name, bool allow_dash,
                size_t max_len) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(what) + " name '" + std::string(name) +
                         "' is not allowed: " + why);
  };
  if (name.empty()) return bad("it is empty");
  if (name.size() > max_len)
    return bad("longer than " + std::to_string(max_len) + " bytes");
  if (name[0] == '.' || name[0] == '-')
    return bad("it must not start with '.' or '-'");
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              (allow_dash && c == '-');
    if (!ok) {
      return bad(allow_dash ? "use only letters, digits, '_', '.' and '-'"
                            : "use only letters, digits, '_' and '.'");
    }
  }
  if (name.find("..") != std::string_view::npos) return bad("it contains '..'");
  return Status::Ok();
}

}  // namespace

Status ValidateVmName(std::string_view name) {
  return Validate("VM", name, true, kMaxLabelLength - 2);
}
Status ValidateDiskName(std::string_view name) {
  return Validate("disk", name, false, kMaxLabelLength - 2);
}
Status ValidateProviderName(std::string_view name) {
  return Validate("provider", name, true, 64);
}

Status ValidateVolumeNames(std::string_view vm, std::string_view disk) {
  VCRYPT_RETURN_IF_ERROR(ValidateVmName(vm));
  VCRYPT_RETURN_IF_ERROR(ValidateDiskName(disk));
  if (vm.size() + 1 + disk.size() > kMaxLabelLength) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + VolumeLabel(vm, disk) + "' is longer than the " +
                         std::to_string(kMaxLabelLength) +
                         " bytes a LUKS2 label holds; use shorter names");
  }
  return Status::Ok();
}

std::string VolumeLabel(std::string_view vm, std::string_view disk) {
  return std::string(vm) + "/" + std::string(disk);
}

std::string MappingName(std::string_view vm, std::string_view disk) {
  return std::string(kMappingPrefix) + std::string(vm) + "-" +
         std::string(disk);
}

bool IsUuidText(std::string_view u) {
  if (u.size() != 36) return false;
  for (size_t i = 0; i < u.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? u[i] != '-' : !std::isxdigit(static_cast<unsigned char>(u[i])))
      return false;
  }
  return true;
}

}  // namespace vcrypt
