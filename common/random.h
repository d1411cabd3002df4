// The OS CSPRNG (getrandom(2)), for keys, IVs and identifiers.
#ifndef VCRYPT_COMMON_RANDOM_H_
#define VCRYPT_COMMON_RANDOM_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// Fills `out` from getrandom(2) (blocking until the pool is initialised).
Status FillRandom(std::span<uint8_t> out);
// A fresh key of `size` bytes in locked memory.
Result<SecureBuffer> RandomKey(size_t size);
// A random RFC 4122 version-4 UUID in canonical lower-case text form.
Result<std::string> RandomUuid();

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_RANDOM_H_
