// What udev learns about a block device: is it a vcrypt volume, and which
// unlock unit wants it (docs/boot.md). Two probes give the same answers:
//
//  - FastProbe (here, program `vcrypt-probe`, what 90-vcrypt.rules runs):
//    reads the header itself (luks2_metadata.h) and links neither
//    libcryptsetup nor libdevmapper, so a udev worker pays only for a small
//    program. It answers only "yes, this volume" and only when both header
//    copies are intact and agree; for everything else it has no answer and
//    vcrypt-probe execs the full probe.
//  - ProbeDevice (cli/probe.h, `vcryptctl probe`): loads the header through
//    libcryptsetup and answers every device.
//
// Both take the vcrypt token through ProbeInfoFromToken, so a "yes" is the
// same from either. The fast probe checks the token as the full one does
// (VcryptToken::Parse, then the output checks below); what it does not do
// is libcryptsetup's validation of the rest of the metadata (keyslots,
// segments, digests). A header with intact checksums but metadata
// libcryptsetup refuses can only be made on purpose, by someone who can
// write the device; the fast probe then names its unit, and the unit's
// open fails in vcryptd, which loads the header through libcryptsetup.
//
// Output (FormatProbe): KEY=VALUE lines for udev's IMPORT{program}:
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
// splits back into VM and disk at its last '-'.
//
// Output safety: besides the token parser's name checks, every value is
// checked again against a conservative character set before anything is
// printed ([A-Za-z0-9_.-], the UUID as hex and dashes), so nothing from a
// crafted header can add lines or variables to udev's environment.
#ifndef VCRYPT_PROBE_PROBE_H_
#define VCRYPT_PROBE_PROBE_H_

#include <optional>
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

  bool operator==(const ProbeInfo&) const = default;
};

// The answer for `device` whose header has LUKS2 UUID `uuid` and the
// vcrypt token `token_json`: kInvalidVolume ("<device> is not a vcrypt
// volume: ...") when the token does not parse, names an unknown provider
// type, or a value fails the output checks.
Result<ProbeInfo> ProbeInfoFromToken(const std::string& device,
                                     const std::string& uuid,
                                     std::string_view token_json);

// The fast probe: the volume's ProbeInfo, or nullopt when it has no
// answer (`why` says why): the device cannot be opened or read, is smaller
// than a vcrypt volume can be, has no intact and consistent LUKS2 header,
// has no vcrypt token or more than one, or its token is refused. Only the
// full probe (cli/probe.h) turns those into errors. Never writes.
std::optional<ProbeInfo> FastProbe(const std::string& device, std::string* why);

// The KEY=VALUE lines (each ending in '\n') for `info`.
std::string FormatProbe(const ProbeInfo& info);

// "<vm>-<disk>": the instance name of vcrypt-unlock@.service /
// vcrypt-unlock-net@.service for a volume. Both names must be valid.
std::string UnlockUnitInstance(std::string_view vm, std::string_view disk);

// Whether volumes of this provider type need the network to open
// (standard: a KMS; trusted: the attestation and key provider services).
bool ProviderNeedsNetwork(std::string_view provider_type);

}  // namespace vcrypt

#endif  // VCRYPT_PROBE_PROBE_H_
