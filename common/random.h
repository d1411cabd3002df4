// The OS CSPRNG (getrandom(2)), for keys, IVs and identifiers.
#ifndef VCRYPT_COMMON_RANDOM_H_
#define VCRYPT_COMMON_RANDOM_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// Fills `out` from getrandom(2) (blocking until the pool is initialised).
Status FillRandom(std::span<uint8_t> out);
// A fresh key of `size` bytes in locked memory.
Result<SecureBuffer> RandomKey(size_t size);
// A random RFC 4122 version-4 UUID in canonical lower-case text form.
Result<std::string> RandomUuid();

// Recovery keys (docs/recovery.md): a passphrase that people write down
// and type, possibly at a console whose keymap is not theirs. 8 groups of
// 5 characters joined by '-' ("cbdtn-rvhkl-..."), 47 bytes in all. The
// characters are modhex (the 16 letters systemd-cryptenroll's recovery
// keys and YubiKeys use): no digits and no letter that QWERTY, QWERTZ and
// AZERTY place differently, so only the dash depends on the keymap. One
// random nibble per character: 160 bits, no modulo bias.
inline constexpr std::string_view kRecoveryKeyAlphabet = "cbdefghijklnrtuv";
inline constexpr size_t kRecoveryKeyGroups = 8;
inline constexpr size_t kRecoveryKeyGroupLength = 5;
inline constexpr size_t kRecoveryKeySize =
    kRecoveryKeyGroups * (kRecoveryKeyGroupLength + 1) - 1;
// A fresh recovery key from getrandom(2), built in locked memory (the
// random bytes too), never in a std::string.
Result<SecureBuffer> RandomRecoveryKey();

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_RANDOM_H_
