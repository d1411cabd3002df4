// Framing of the vcryptd protocol (docs/protocol.md).
//
// A message is one line of compact JSON terminated by '\n'. A request that
// carries a secret (a backup password) says so with "secret_bytes": N and
// is followed by exactly N raw bytes, which the receiver reads straight
// into a SecureBuffer: secrets never pass through a JSON string.
#ifndef VCRYPT_COMMON_WIRE_H_
#define VCRYPT_COMMON_WIRE_H_

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

inline constexpr size_t kMaxMessageSize = 4 * 1024 * 1024;
inline constexpr size_t kMaxSecretSize = 16384;  // a PEM private key fits

struct WireMessage {
  nlohmann::json body;
  SecureBuffer secret;  // empty unless "secret_bytes" was present
};

// Reads one message from a blocking stream fd. kNotFound on a clean EOF
// before any byte; kIo on errors; kUsage on malformed JSON, an oversized
// line or an invalid secret_bytes.
Result<WireMessage> ReadMessage(int fd);
// Writes `body` (adding "secret_bytes" when `secret` is non-null and
// non-empty) followed by the secret bytes.
Status WriteMessage(int fd, const nlohmann::json& body,
                    const SecureBuffer* secret = nullptr);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_WIRE_H_
