// Validation of VM, disk and provider names.
//
// Names end up in file names, the LUKS2 label "<vm>/<disk>" (47 bytes max
// plus NUL), dm names "vcrypt-<vm>-<disk>" and systemd unit instance
// names, so they are restricted to a portable set:
//   VM and provider names: [A-Za-z0-9_.-], not starting with '.' or '-'.
//   Disk names:            [A-Za-z0-9_.],  not starting with '.'.
// Disk names exclude '-' so that the dm name splits unambiguously at its
// last '-'. "<vm>/<disk>" must fit the 47-byte LUKS2 label.
#ifndef VCRYPT_COMMON_NAMES_H_
#define VCRYPT_COMMON_NAMES_H_

#include <string>
#include <string_view>

#include "common/result.h"

namespace vcrypt {

inline constexpr size_t kMaxLabelLength = 47;  // LUKS2 label is 48 with NUL

Status ValidateVmName(std::string_view name);
Status ValidateDiskName(std::string_view name);
Status ValidateProviderName(std::string_view name);
// Both names, plus the combined label length.
Status ValidateVolumeNames(std::string_view vm, std::string_view disk);

std::string VolumeLabel(std::string_view vm, std::string_view disk);
// Every dm mapping vcrypt makes is named kMappingPrefix + "<vm>-<disk>".
inline constexpr std::string_view kMappingPrefix = "vcrypt-";
std::string MappingName(std::string_view vm, std::string_view disk);

// A UUID as 8-4-4-4-12 hex digits (LUKS2 UUIDs as libcryptsetup writes
// them): safe to put into a path or print for udev.
bool IsUuidText(std::string_view u);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_NAMES_H_
