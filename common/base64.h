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

// Base64url (RFC 4648 section 5) without padding, as JOSE (RFC 7515)
// requires. For non-secret data only: the decoder is not constant-time.
std::string Base64UrlEncode(std::span<const uint8_t> data);
// Strict, so that every value has exactly one accepted encoding (a token
// cannot be re-encoded into a different string that still verifies):
// rejects '=', '+', '/', whitespace and any other character outside
// [A-Za-z0-9_-], a length of 1 modulo 4, and non-zero unused bits in the
// last character (kInvalidArgument). The empty string decodes to nothing.
Result<std::vector<uint8_t>> Base64UrlDecode(std::string_view text);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_BASE64_H_
