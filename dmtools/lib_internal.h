// Internal to dmtools: what the files of this library share. Not published
// to other libraries (dmtools/CMakeLists.txt publishes the public headers
// one by one and this one only to vcrypt_dmtools itself).
//
// Who owns what:
//   library.cc     the libraries' setup, the process-wide lock, log capture
//   devices.cc     block devices, regular files and loop devices (stat, sysfs)
//   header.cc      loading LUKS2 headers; header and token I/O
//   format.cc      FormatVolume
//   mappings.cc    dm mapping queries and enumeration
//   activation.cc  Activate, ActivateByPassphrase, Deactivate
//   recovery.cc    the recovery keyslot
//   reencrypt.cc   deep rekey (reencrypt.h)
// Everything here that touches libcryptsetup or libdevmapper must be
// called with the lock of LockLibraries() held.
#ifndef VCRYPT_DMTOOLS_LIB_INTERNAL_H_
#define VCRYPT_DMTOOLS_LIB_INTERNAL_H_

#include <sys/types.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/handles.h"
#include "common/result.h"
#include "dmtools/volume.h"

namespace vcrypt::dmlib {

// ---------------------------------------------------------------------------
// library.cc

using LibLock = std::unique_lock<std::recursive_mutex>;

// Takes the process-wide libcryptsetup/libdevmapper lock (volume.h) and
// sets the libraries up on first use; hold it while any handle is alive.
// Also forgets the last library error of this thread.
[[nodiscard]] LibLock LockLibraries();

// libcryptsetup resets libdevmapper's log hook to the stderr default when
// its last handle goes away; call this before every direct libdevmapper
// call.
void QuietDm();

// `msg`, plus the last libcryptsetup/libdevmapper error of this thread in
// parentheses when there is one.
std::string WithLibMessage(std::string msg);

// strerror of a negative or positive errno value.
std::string ErrnoText(int r);

// `what: strerror(r)`, plus the last libcryptsetup/libdevmapper error of
// this thread in parentheses.
Error LibFail(ErrorCode code, const std::string& what, int r);

// Forgets the last library error of this thread (before a call whose
// error should be reported alone).
void ClearLibMessage();

// kNoDeviceMapper with the message volume.h promises.
Error NoDm();

// ---------------------------------------------------------------------------
// devices.cc

// The contents of a small (sysfs) file without trailing newlines and
// spaces; nullopt when it cannot be read.
std::optional<std::string> ReadSmallFile(const std::string& path);

// /sys/dev/block/<major>:<minor>
std::string SysDevBlock(dev_t dev);

// /dev/<kernel name> of a block device number, from its uevent; "" when
// sysfs does not say.
std::string DevicePathOf(dev_t dev);

// True/false when the storage under `device` (a block device, or the file
// system a regular file lives on) is known to be non-rotational or
// rotational; nullopt when it cannot be told (tmpfs, overlayfs, network
// file systems).
std::optional<bool> IsNonRotational(const std::string& device);

// The loop devices whose backing file is the inode (dev, ino).
std::vector<std::string> LoopDevicesBackedBy(dev_t dev, ino_t ino);

// Size in bytes and logical block size of a block device or regular file.
struct DeviceGeometry {
  bool is_block = false;
  uint64_t size = 0;
  uint32_t logical_block = 512;
};

// kNotFound (no such path), kInvalidArgument (neither a block device nor
// a regular file), kIo.
Result<DeviceGeometry> Geometry(const std::string& device);

// ---------------------------------------------------------------------------
// header.cc

// crypt_init on `device`: kNotFound, kIo.
Result<CryptDevicePtr> InitCrypt(const std::string& device);

// Loads a LUKS2 header into `cd`; LUKS1 and non-LUKS devices are
// kInvalidVolume, read errors kIo.
Status LoadLuks2(crypt_device* cd, const std::string& device);

// The LUKS2 header of `device` loaded into a new handle, after checking
// that the device exists and is a block device or a regular file:
// kNotFound, kInvalidArgument, kInvalidVolume (not LUKS2), kIo.
Result<CryptDevicePtr> OpenLuks2Device(const std::string& device);

// Checks token JSON before it goes into a header: kInvalidArgument when
// it is larger than kMaxTokenSize or fails VcryptToken::Parse.
Status CheckTokenJson(const std::string& json);

// ---------------------------------------------------------------------------
// mappings.cc

// kInvalidArgument unless `name` is a valid device-mapper name.
Status ValidateMappingName(const std::string& name);

struct DmInfo {
  bool exists = false;
  int open_count = 0;
  bool suspended = false;
  std::string dm_uuid;
};

// DM_DEVICE_INFO of mapping `name`; `exists` false when there is none.
Result<DmInfo> GetDmInfo(const std::string& name);

// QueryMapping without the lock, name check and dm availability check.
Result<MappingInfo> QueryMappingImpl(const std::string& name);

// FindMappingByUuid for a caller that holds the lock and has just checked
// that device-mapper is available (Activate, EraseKeyMaterial): the check
// is not repeated (an access(2) and a DM_VERSION request).
Result<std::optional<MappingInfo>> FindMappingByUuidLocked(
    const std::string& luks_uuid);

}  // namespace vcrypt::dmlib

#endif  // VCRYPT_DMTOOLS_LIB_INTERNAL_H_
