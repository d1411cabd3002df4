// Base64 (RFC 4648, padded) for non-secret binary data in JSON: IVs,
// ciphertexts, tags. Key material is never base64-encoded into a string.
#ifndef VCRYPT_COMMON_BASE64_H_
#define VCRYPT_COMMON_BASE64_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vcrypt {

std::string Base64Encode(std::span<const uint8_t> data);
// Strict: rejects whitespace, bad characters and bad padding (kInvalidArgument).
Result<std::vector<uint8_t>> Base64Decode(std::string_view text);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_BASE64_H_
