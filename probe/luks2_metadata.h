// Reading a LUKS2 header's metadata without libcryptsetup, for the udev
// probe (probe.h), which must start and answer fast (libcryptsetup's load
// costs a process ~0.1 s of CPU under emulation, paid for every device at
// every boot).
//
// This reader answers only the easy, common case and leaves every other
// one to libcryptsetup: it returns metadata only when both header copies
// are intact and agree, that is when
//   - the primary binary header at offset 0 has the LUKS2 magic, version 2,
//     a header size libcryptsetup accepts (16 KiB .. 4 MiB, a power of
//     two) and offset 0;
//   - the secondary copy sits right after it (offset = header size) with
//     its own magic, version 2, the same size and the same sequence id;
//   - each copy's checksum algorithm is "sha256" and its SHA-256 over the
//     copy (binary header with the checksum field zeroed, plus the JSON
//     area) matches;
//   - the primary JSON area is one NUL-terminated JSON object without a
//     duplicated member anywhere.
// Then libcryptsetup would load the primary copy, and this reader returns
// the same UUID and JSON. For anything else (not LUKS, LUKS1, a damaged or
// outdated copy, a header libcryptsetup would repair or refuse, an I/O
// error) it returns nullopt and says why in `why`: the caller then asks
// libcryptsetup. It never writes.
//
// Hostile input: everything read is bounded by the header size (at most
// 2 x 4 MiB), the JSON parser is iterative (no recursion on nesting), and
// no value read here is used as a path, a size of anything but this read,
// or output without the caller's checks.
#ifndef VCRYPT_PROBE_LUKS2_METADATA_H_
#define VCRYPT_PROBE_LUKS2_METADATA_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace vcrypt {

struct Luks2Metadata {
  std::string uuid;  // as stored (not checked for form)
  uint64_t seqid = 0;
  nlohmann::json json;  // the primary copy's JSON area, an object
};

// Reads the header of the block device or regular file open as `fd`.
std::optional<Luks2Metadata> ReadLuks2Metadata(int fd, std::string* why);

}  // namespace vcrypt

#endif  // VCRYPT_PROBE_LUKS2_METADATA_H_
