// Sealing a key to a one-time recipient key, for the KEK's trip from the
// key provider service to a host (docs/trusted.md, "KEK transport"): the
// KEK then never sits in clear in an HTTP body, which is a std::string in
// both programs.
//
// ECIES over P-256: the sender makes an ephemeral key pair, derives
// Z = ECDH(ephemeral, recipient), the wrapping key
// HKDF-SHA256(Z, salt = E || R, info = "vcrypt-kek-transport-v1" || context)
// (E, R: uncompressed points), and wraps with AES-256-GCM (common/aead.h,
// AAD = context). `context` binds the sealed key to its use (e.g. the
// request's KEK ID).
#ifndef VCRYPT_TAPROTOCOL_TRANSPORT_H_
#define VCRYPT_TAPROTOCOL_TRANSPORT_H_

#include <nlohmann/json.hpp>
#include <span>
#include <string_view>
#include <vector>

#include "common/aead.h"
#include "common/handles.h"
#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

struct SealedKey {
  std::vector<uint8_t> ephemeral;  // uncompressed P-256 point, 65 bytes
  WrappedKey wrapped;
  nlohmann::json ToJson() const;  // {"epk": b64, "key": WrappedKey JSON}
  static Result<SealedKey> FromJson(const nlohmann::json& j);
};

// The recipient's one-time key pair (the host makes one per request).
class TransportKey {
 public:
  static Result<TransportKey> Generate();
  // Uncompressed point, 65 bytes: what the host sends.
  const std::vector<uint8_t>& public_point() const { return point_; }
  // kCrypto when `sealed` was not sealed to this key for `context`, or was
  // altered.
  Result<SecureBuffer> Open(const SealedKey& sealed,
                            std::string_view context) const;

 private:
  TransportKey(EvpPkeyPtr k, std::vector<uint8_t> p)
      : key_(std::move(k)), point_(std::move(p)) {}
  EvpPkeyPtr key_;
  std::vector<uint8_t> point_;
};

// Seals `key` to the recipient's point. kInvalidArgument when the point is
// not a valid P-256 point.
Result<SealedKey> SealTo(std::span<const uint8_t> recipient_point,
                         const SecureBuffer& key, std::string_view context);

}  // namespace vcrypt

#endif  // VCRYPT_TAPROTOCOL_TRANSPORT_H_
