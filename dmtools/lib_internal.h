// Internal to dmtools: what volume.cc, which owns the library setup and
// the process-wide library lock, shares with the other files of this
// library. Not for use outside dmtools/.
#ifndef VCRYPT_DMTOOLS_LIB_INTERNAL_H_
#define VCRYPT_DMTOOLS_LIB_INTERNAL_H_

#include <mutex>
#include <string>

#include "common/handles.h"
#include "common/result.h"

namespace vcrypt::dmlib {

using LibLock = std::unique_lock<std::recursive_mutex>;

// Takes the process-wide libcryptsetup/libdevmapper lock (volume.h) and
// sets the libraries up on first use; hold it while any handle is alive.
[[nodiscard]] LibLock LockLibraries();

// The LUKS2 header of `device` loaded into a new handle: kNotFound,
// kInvalidVolume (not LUKS2), kIo.
Result<CryptDevicePtr> OpenLuks2Device(const std::string& device);

// `what: strerror(r)`, plus the last libcryptsetup/libdevmapper error of
// this thread in parentheses.
Error LibFail(ErrorCode code, const std::string& what, int r);

// Forgets the last library error of this thread (before a call whose
// error should be reported alone).
void ClearLibMessage();

}  // namespace vcrypt::dmlib

#endif  // VCRYPT_DMTOOLS_LIB_INTERNAL_H_
