// Whether a block device holds guest content: is a vcrypt mapping, or is
// stacked on one. The content of /dev/mapper/vcrypt-<vm>-<disk> is a VM's
// disk in clear and belongs to the guest (docs/boot.md, "Guest content
// stays the guest's"): a device built from it (a guest's LVM LV, a
// partition mapping, anything a host tool stacks on it) is guest-controlled
// data, whatever header it shows.
//
// Reads sysfs only (no device is opened). A vcrypt mapping is a dm device
// whose dm name starts with "vcrypt-" and whose dm UUID starts with
// "CRYPT-" (set up by libcryptsetup), the same test as the udev rule
// udev/12-vcrypt-dm.rules. The walk follows `slaves/` recursively and, for
// a partition, its whole disk. It does not follow a loop device to the
// file system that holds its backing file.
#ifndef VCRYPT_DMTOOLS_STACKING_H_
#define VCRYPT_DMTOOLS_STACKING_H_

#include <optional>
#include <string>

#include "common/result.h"

namespace vcrypt {

// True for the dm name and dm UUID of a vcrypt mapping.
bool IsVcryptMapping(const std::string& dm_name, const std::string& dm_uuid);

// The name of the vcrypt mapping that the block device `dev_id`
// ("MAJOR:MINOR") is or is stacked on; nullopt when there is none.
// `sysfs_root` is "/sys" except in tests. Errors: kNotFound when sysfs has
// no such device, kIo when an attribute cannot be read, kInvalidArgument
// for a malformed dev_id or a stack deeper than 16 levels or wider than 256
// devices. A caller that must not follow guest content treats an error as
// "might be".
Result<std::optional<std::string>> VcryptMappingBelow(
    const std::string& dev_id, const std::string& sysfs_root = "/sys");

// The same for a path (symlinks followed). A path that is not a block
// device (an image file) is stacked on nothing: nullopt. kNotFound if it
// does not exist.
Result<std::optional<std::string>> VcryptMappingBelowPath(
    const std::string& path, const std::string& sysfs_root = "/sys");

// The same for an open file descriptor (any open mode, O_PATH included):
// the device number comes from fstat, so it is the device that was
// opened, whatever its path names by now. Not a block device: nullopt.
// kIo if fstat fails.
Result<std::optional<std::string>> VcryptMappingBelowFd(
    int fd, const std::string& sysfs_root = "/sys");

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_STACKING_H_
