// Hexadecimal text for non-secret binary values in file names, state files
// and tool input: digests, nonces, ids, PCR values. Key material is never
// hex-encoded into a string.
#ifndef VCRYPT_COMMON_HEX_H_
#define VCRYPT_COMMON_HEX_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vcrypt {

// Lowercase, two digits per byte.
std::string HexEncode(std::span<const uint8_t> bytes);
// Strict: an even number of [0-9a-fA-F], nothing else (kInvalidArgument).
// The empty string decodes to nothing.
Result<std::vector<uint8_t>> HexDecode(std::string_view text);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_HEX_H_
