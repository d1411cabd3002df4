// `vcryptctl probe DEVICE`: tells udev whether a block device is a vcrypt
// volume, without vcryptd (udev runs it for every LUKS device at boot, long
// before the daemon may be up, and it must be fast).
//
// It reads the LUKS2 header directly (dmtools ReadHeader) and parses the
// vcrypt token (VcryptToken::Parse, which validates every name). On success
// it prints KEY=VALUE lines for udev's IMPORT{program}:
//
//   VCRYPT_VOLUME=1
//   VCRYPT_VM=<vm>
//   VCRYPT_DISK=<disk>
//   VCRYPT_UUID=<LUKS2 UUID, 8-4-4-4-12>
//   VCRYPT_PROVIDER=<provider name>
//   VCRYPT_PROVIDER_TYPE=native|standard|trusted
//   VCRYPT_NEEDS_NETWORK=0|1          1 for standard and trusted
//   VCRYPT_UNIT=<instance>            instance name of the unlock unit
//
// The unit instance is "<vm>-<disk>" (the dm mapping name without its
// "vcrypt-" prefix). It needs no systemd escaping: names are restricted to
// [A-Za-z0-9_.-] (disk names without '-'), all valid in unit names, and it
// splits back into VM and disk at its last '-'. See docs/boot.md.
//
// Anything that is not a vcrypt volume prints nothing on stdout and fails:
//   kNotFound (5)       the device or file does not exist;
//   kInvalidVolume (9)  not LUKS, LUKS1, LUKS2 without a vcrypt token, a
//                       token that does not parse, or a value that fails
//                       the output check below; also a path that is
//                       neither a block device nor a regular file, and
//                       one smaller than a vcrypt volume can be
//                       (kMinVolumeSize), e.g. an empty loop device;
//   kIo (11)            the header could not be read.
//
// Output safety: besides the token parser's name checks, every value is
// checked again against a conservative character set before anything is
// printed ([A-Za-z0-9_.-], the UUID as hex and dashes), so nothing from a
// crafted header can add lines or variables to udev's environment.
#ifndef VCRYPT_CLI_PROBE_H_
#define VCRYPT_CLI_PROBE_H_

#include <string>
#include <string_view>

#include "common/result.h"

namespace vcrypt {

struct ProbeInfo {
  std::string vm;
  std::string disk;
  std::string uuid;
  std::string provider;
  std::string provider_type;
  bool needs_network = false;
  std::string unit_instance;
};

// Reads and checks `device` (block device or regular file). Never writes.
Result<ProbeInfo> ProbeDevice(const std::string& device);

// The KEY=VALUE lines (each ending in '\n') for `info`.
std::string FormatProbe(const ProbeInfo& info);

// "<vm>-<disk>": the instance name of vcrypt-unlock@.service /
// vcrypt-unlock-net@.service for a volume. Both names must be valid.
std::string UnlockUnitInstance(std::string_view vm, std::string_view disk);

// Whether volumes of this provider type need the network to open
// (standard: a KMS; trusted: the attestation and key provider services).
bool ProviderNeedsNetwork(std::string_view provider_type);

}  // namespace vcrypt

#endif  // VCRYPT_CLI_PROBE_H_
