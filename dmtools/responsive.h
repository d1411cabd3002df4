// Whether a device answers reads, asked without blocking the caller.
//
// Every libcryptsetup/libdevmapper call runs under one process-wide lock
// (volume.h). A read that hangs under it (a suspended dm device below a
// volume, a dead multipath or iSCSI path, a hung NFS image file) would
// hang every other volume's open, close and status with it. So before a
// dmtools function takes the lock for I/O on a device, it asks here.
#ifndef VCRYPT_DMTOOLS_RESPONSIVE_H_
#define VCRYPT_DMTOOLS_RESPONSIVE_H_

#include <chrono>
#include <string>

#include "common/result.h"

namespace vcrypt {

inline constexpr std::chrono::milliseconds kDeviceResponseTimeout{2000};

// Reads the first 4 KiB of `device` (O_DIRECT for a block device, so the
// page cache cannot answer for it) in a helper thread and waits until the
// read returns or `timeout` has passed since that read began. At most one
// read per device is in flight: while one hangs, later calls wait only
// for what is left of its timeout (none, once it has passed), and start no
// new thread. A read stuck in the kernel keeps its thread until the device
// answers (then it ends by itself).
// Ok when the read returned, whatever it returned (a missing device or a
// read error is the caller's to find and report); kIo "DEVICE does not
// respond ..." when it did not return in time.
Status CheckResponsive(
    const std::string& device,
    std::chrono::milliseconds timeout = kDeviceResponseTimeout);

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_RESPONSIVE_H_
