// `vcryptctl probe DEVICE`: tells udev whether a block device is a vcrypt
// volume, without vcryptd (udev runs it for every LUKS device at boot, long
// before the daemon may be up, and it must be fast).
//
// It loads the header through libcryptsetup (dmtools ReadHeader) and
// answers every device; udev runs the fast probe first (`vcrypt-probe`,
// probe/probe.h), which execs this one only when it has no answer. The
// output, its checks and the unit instance are probe/probe.h's.
//
// Anything that is not a vcrypt volume prints nothing on stdout and fails:
//   kNotFound (5)       the device or file does not exist;
//   kInvalidVolume (9)  not LUKS, LUKS1, LUKS2 without a vcrypt token, a
//                       token that does not parse, or a value that fails
//                       the output check (probe/probe.h); also a path that
//                       is neither a block device nor a regular file, and
//                       one smaller than a vcrypt volume can be
//                       (kMinVolumeSize), e.g. an empty loop device;
//   kIo (11)            the header could not be read.
#ifndef VCRYPT_CLI_PROBE_H_
#define VCRYPT_CLI_PROBE_H_

#include <string>

#include "common/result.h"
#include "probe/probe.h"

namespace vcrypt {

// Reads and checks `device` (block device or regular file). Never writes.
Result<ProbeInfo> ProbeDevice(const std::string& device);

}  // namespace vcrypt

#endif  // VCRYPT_CLI_PROBE_H_
