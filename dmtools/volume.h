// Block-layer operations on vcrypt volumes, through libcryptsetup and
// libdevmapper only.
//
// A vcrypt volume is LUKS2 with cipher aes-xts-plain64, a 512-bit volume
// key (the DEK), sector size 4096 (or 512), subsystem "vcrypt", label
// "<vm>/<disk>", zero keyslots and one `vcrypt` token (token.h).
//
// `device` may be a block device or a regular file; for a file,
// libcryptsetup attaches an auto-clearing loop device on activation, which
// the kernel detaches when the mapping is removed.
//
// Every function either completes or leaves the device and the dm table as
// they were: no half-written header, no stray mapping or loop device.
#ifndef VCRYPT_DMTOOLS_VOLUME_H_
#define VCRYPT_DMTOOLS_VOLUME_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

inline constexpr size_t kDekSize = 64;  // aes-xts-plain64, 2 x 256 bits
inline constexpr std::string_view kSubsystem = "vcrypt";

// True when this kernel offers device-mapper (with dm-crypt loadable).
bool DeviceMapperAvailable();

struct FormatParams {
  std::string device;
  uint32_t sector_size = 4096;  // 512 or 4096
  std::string label;            // "<vm>/<disk>"
  // Without force, a device that already carries a LUKS header or any
  // filesystem/partition signature (blkid probe) is refused with kExists.
  bool force = false;
};

// Formats `device` with `dek` as the volume key (kDekSize bytes) and zero
// keyslots, then writes the vcrypt token. Returns the new
// LUKS2 UUID. `make_token` is called with the new UUID (the token's AAD
// needs it) and returns the token JSON; if it fails, or any step fails, the
// LUKS header area is wiped again so no half-made volume remains.
// Errors: kNotFound (no device), kInvalidArgument (too small, bad sector
// size), kExists (signature present), kIo.
using TokenMaker = std::function<Result<std::string>(const std::string& uuid)>;
Result<std::string> FormatVolume(const FormatParams& params,
                                 const SecureBuffer& dek,
                                 const TokenMaker& make_token);

struct VolumeHeader {
  std::string device;
  std::string uuid;
  std::string label;
  std::string subsystem;
  std::string cipher;       // e.g. "aes-xts-plain64"
  uint32_t key_bits = 0;    // 512
  uint32_t sector_size = 0;
  int active_keyslots = 0;
  std::optional<std::string> token_json;  // the vcrypt token, if any
  int token_id = -1;
};

// Reads the LUKS2 header. kNotFound (no device), kInvalidVolume (not LUKS2).
Result<VolumeHeader> ReadHeader(const std::string& device);

// Replaces the vcrypt token of a LUKS2 device atomically (libcryptsetup
// writes both header copies).
Status WriteToken(const std::string& device, const std::string& token_json);

struct ActivateParams {
  std::string device;
  std::string name;  // dm name, e.g. "vcrypt-vm1-disk0"
  bool discards = false;
  // nullopt: bypass the dm-crypt read/write workqueues when the backing
  // device is non-rotational (and for files on such devices).
  std::optional<bool> bypass_workqueues;
};

// Activates the mapping with the DEK and waits for udev so that
// /dev/mapper/<name> exists on return. Returns that path.
// Errors: kNoDeviceMapper, kBusy (the name exists or the volume is active
// under another name), kCrypto (DEK does not match the LUKS2 digest),
// kInvalidVolume, kNotFound.
Result<std::string> Activate(const ActivateParams& params,
                             const SecureBuffer& dek);

struct MappingInfo {
  std::string name;
  std::string path;         // /dev/mapper/<name>
  std::string luks_uuid;    // from the dm UUID "CRYPT-LUKS2-<uuid>-<name>"
  std::string backing;      // backing device path (loop device for files)
  std::string backing_file; // for loop devices, the backing file ("" else)
  int open_count = 0;
  bool suspended = false;
};

// kNotFound if no such mapping.
Result<MappingInfo> QueryMapping(const std::string& name);
// All active mappings whose dm name starts with `prefix`.
Result<std::vector<MappingInfo>> ListMappings(const std::string& prefix);
// The active mapping (any name) of the LUKS2 volume with `luks_uuid`.
Result<std::optional<MappingInfo>> FindMappingByUuid(const std::string& luks_uuid);

// Removes the mapping; kBusy with a message naming the holder count when
// it is open (mounted, attached to a guest, ...); kNotFound.
// An auto-clear loop device under it goes away with it.
Status Deactivate(const std::string& name);

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_VOLUME_H_
