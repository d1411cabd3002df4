// Framing of the vcryptd protocol (docs/protocol.md).
//
// A message is one line of compact JSON terminated by '\n'. A request that
// carries a secret (a backup password) says so with "secret_bytes": N and
// is followed by exactly N raw bytes, which the receiver reads straight
// into a SecureBuffer: secrets never pass through a JSON string.
#ifndef VCRYPT_COMMON_WIRE_H_
#define VCRYPT_COMMON_WIRE_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

inline constexpr size_t kMaxMessageSize = 4 * 1024 * 1024;
inline constexpr size_t kMaxSecretSize = 16384;  // a PEM private key fits
// Arrays and objects nested deeper than this are refused before parsing:
// vcryptd's own messages need 6, and deep nesting costs recursion (copy,
// dump, destruction) that a peer must not be able to drive.
inline constexpr size_t kMaxJsonDepth = 32;

struct WireMessage {
  nlohmann::json body;
  SecureBuffer secret;  // empty unless "secret_bytes" was present
};

// Reads one message from a blocking stream fd. kNotFound on a clean EOF
// before any byte; kIo on errors; kUsage on malformed JSON, JSON nested
// deeper than kMaxJsonDepth, an oversized line or an invalid
// secret_bytes. With `timeout_ms` >= 0 the whole message (line and
// secret) must arrive within that many milliseconds of the call, else
// kIo "timed out"; a peer that sends half a line and
// sleeps cannot hold the reader.
Result<WireMessage> ReadMessage(int fd, int timeout_ms = -1);

// The deepest nesting of arrays/objects in `json` text (brackets inside
// strings do not count); stops counting once past `limit`, returning a
// value > limit. Linear, no allocation: safe on any input.
size_t JsonNestingDepth(std::string_view json, size_t limit = kMaxJsonDepth);
// Writes `body` (adding "secret_bytes" when `secret` is non-null and
// non-empty) followed by the secret bytes.
Status WriteMessage(int fd, const nlohmann::json& body,
                    const SecureBuffer* secret = nullptr);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_WIRE_H_
