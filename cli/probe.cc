#include "cli/probe.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/handles.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

Error NotVcrypt(const std::string& device, const std::string& why) {
  return MakeError(ErrorCode::kInvalidVolume, device + " is not a vcrypt volume: " + why);
}

// Too small to hold a vcrypt volume (FormatVolume's minimum)? Lets empty or
// tiny devices answer "not a vcrypt volume" rather than libcryptsetup's
// read error past their end.
Result<bool> TooSmall(const std::string& device) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return MakeError(ErrorCode::kNotFound, "device or file " + device + " does not exist");
    return MakeError(ErrorCode::kIo, "cannot stat " + device + ": " + std::strerror(errno));
  }
  if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode))
    return NotVcrypt(device, "neither a block device nor a regular file");
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid())
    return MakeError(ErrorCode::kIo, "cannot open " + device + ": " + std::strerror(errno));
  off_t size = lseek(fd.get(), 0, SEEK_END);
  if (size < 0)
    return MakeError(ErrorCode::kIo, "cannot get the size of " + device + ": " +
                                         std::strerror(errno));
  return static_cast<uint64_t>(size) < kMinVolumeSize;
}

}  // namespace

Result<ProbeInfo> ProbeDevice(const std::string& device) {
  VCRYPT_ASSIGN_OR_RETURN(bool too_small, TooSmall(device));
  if (too_small)
    return NotVcrypt(device, "smaller than the smallest vcrypt volume");
  auto hdr = ReadHeader(device);
  if (!hdr.ok()) {
    Error e = std::move(hdr).error();
    // "neither a block device nor a regular file": for udev's question
    // (is this a vcrypt volume?) the answer is simply no.
    if (e.code == ErrorCode::kInvalidArgument) e.code = ErrorCode::kInvalidVolume;
    return e;
  }
  if (!hdr->token_json)
    return NotVcrypt(device, "a LUKS2 volume without a vcrypt token");
  return ProbeInfoFromToken(device, hdr->uuid, *hdr->token_json);
}

}  // namespace vcrypt
