// The on-disk layout of a vcrypt volume: constants that code without
// libcryptsetup needs too (the udev probe, probe/probe.h). volume.h
// includes this header.
#ifndef VCRYPT_DMTOOLS_LAYOUT_H_
#define VCRYPT_DMTOOLS_LAYOUT_H_

#include <cstdint>
#include <string_view>

namespace vcrypt {

// The LUKS2 subsystem field of every vcrypt volume.
inline constexpr std::string_view kSubsystem = "vcrypt";
// libcryptsetup's default LUKS2 header: 2 x 16 KiB metadata plus the
// keyslots area (kept at its default size although a vcrypt volume has no
// keyslots: a deep rekey on libcryptsetup 2.6 needs a temporary keyslot).
// The data area starts here.
inline constexpr uint64_t kLuks2HeaderSize = 16ull << 20;
// Smallest device FormatVolume accepts: the header plus 1 MiB of data.
inline constexpr uint64_t kMinVolumeSize = kLuks2HeaderSize + (1ull << 20);

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_LAYOUT_H_
