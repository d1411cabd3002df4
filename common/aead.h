// AES-256-GCM key wrapping, used for DEKs under a KEK and for native KEKs
// under a provider's primary key.
//
// Every wrap uses a fresh random 96-bit IV (getrandom) and a 128-bit tag.
// With random IVs a single wrapping key must not wrap more than about 2^32
// keys (NIST SP 800-38D); a KEK wraps a handful of DEKs and a native
// primary key one KEK per VM, far below that.
//
// The AAD binds the wrapped key to its context (see DekAad, BuildAad) so
// that a wrapped key copied into another context fails to unwrap.
//
// Thread-safe: no shared state.
#ifndef VCRYPT_COMMON_AEAD_H_
#define VCRYPT_COMMON_AEAD_H_

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

inline constexpr size_t kAeadKeySize = 32;
inline constexpr size_t kAeadIvSize = 12;
inline constexpr size_t kAeadTagSize = 16;
// Bounds of the key being wrapped (DEKs are 64 bytes, KEKs 32).
inline constexpr size_t kMaxWrappedKeySize = 1024;

struct WrappedKey {
  std::vector<uint8_t> iv;          // 12 bytes
  std::vector<uint8_t> ciphertext;  // same length as the wrapped key
  std::vector<uint8_t> tag;         // 16 bytes

  // {"alg":"A256GCM","iv":b64,"ct":b64,"tag":b64} (padded RFC 4648 base64).
  nlohmann::json ToJson() const;
  // Strict: `j` must be an object with exactly the four members above
  // (an unknown member is refused, since it may mean a format this version
  // does not understand), all strings, alg "A256GCM", strict base64, iv 12
  // bytes, tag 16 bytes, ciphertext 1..kMaxWrappedKeySize bytes.
  // kInvalidVolume on any deviation, with a message naming the member.
  static Result<WrappedKey> FromJson(const nlohmann::json& j);
};

// Wraps `key` (1..kMaxWrappedKeySize bytes) under `kek` (kAeadKeySize
// bytes), authenticating `aad` (may be empty). kInvalidArgument on bad
// sizes; kInternal if OpenSSL or getrandom fails.
Result<WrappedKey> WrapKey(const SecureBuffer& kek, const SecureBuffer& key,
                           std::span<const uint8_t> aad);
// The plaintext is decrypted straight into the returned SecureBuffer (and
// wiped if the tag does not verify). kCrypto "key unwrap failed: wrong key
// or data tampered" when the tag does not verify (wrong KEK, wrong AAD,
// tampered iv/ciphertext/tag); the message reveals nothing else.
// kInvalidArgument when `kek` is not kAeadKeySize bytes or `w` breaks the
// size invariants FromJson enforces (a WrappedKey not made by FromJson or
// WrapKey).
Result<SecureBuffer> UnwrapKey(const SecureBuffer& kek, const WrappedKey& w,
                               std::span<const uint8_t> aad);

// Unambiguous AAD encoding: the label and then each field, every one
// preceded by its length as a 4-byte big-endian integer. So ("ab","c") and
// ("a","bc") encode differently, and a label (e.g. "vcrypt-dek-v1",
// "vcrypt-native-kek-v1") separates the uses of one key from each other.
std::vector<uint8_t> BuildAad(std::string_view label,
                              std::initializer_list<std::string_view> fields);

// AAD for a DEK: binds it to the LUKS2 UUID of its volume, the KEK ID and
// the provider name recorded in the token:
// BuildAad("vcrypt-dek-v1", {luks_uuid, kek_id, provider_name}).
std::vector<uint8_t> DekAad(std::string_view luks_uuid, std::string_view kek_id,
                            std::string_view provider_name);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_AEAD_H_
