#include "taprotocol/transport.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>

#include <string>

#include "common/base64.h"
#include "taprotocol/jws.h"

namespace vcrypt {
namespace {

constexpr char kInfo[] = "vcrypt-kek-transport-v1";

// HKDF-SHA256 of ECDH(own, peer) into a 32-byte wrapping key.
Result<SecureBuffer> WrappingKey(EVP_PKEY* own, EVP_PKEY* peer,
                                 std::span<const uint8_t> sender_point,
                                 std::span<const uint8_t> recipient_point,
                                 std::string_view context) {
  EvpPkeyCtxPtr dctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own, nullptr));
  size_t zlen = 0;
  if (!dctx || EVP_PKEY_derive_init(dctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(dctx.get(), peer) != 1 ||
      EVP_PKEY_derive(dctx.get(), nullptr, &zlen) != 1)
    return MakeError(ErrorCode::kCrypto, "ECDH failed");
  SecureBuffer z(zlen);
  if (EVP_PKEY_derive(dctx.get(), z.data(), &zlen) != 1)
    return MakeError(ErrorCode::kCrypto, "ECDH failed");
  std::vector<uint8_t> salt(sender_point.begin(), sender_point.end());
  salt.insert(salt.end(), recipient_point.begin(), recipient_point.end());
  std::string info = std::string(kInfo) + std::string(context);
  EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  EvpKdfCtxPtr kctx(kdf ? EVP_KDF_CTX_new(kdf.get()) : nullptr);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z.data(), zlen),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt.data(),
                                        salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(),
                                        info.size()),
      OSSL_PARAM_construct_end()};
  SecureBuffer out(kAeadKeySize);
  if (!kctx || EVP_KDF_derive(kctx.get(), out.data(), out.size(), params) != 1)
    return MakeError(ErrorCode::kInternal, "HKDF failed");
  return out;
}

std::vector<uint8_t> Aad(std::string_view context) {
  return BuildAad("vcrypt-kek-transport-v1", {context});
}

}  // namespace

nlohmann::json SealedKey::ToJson() const {
  return {{"epk", Base64Encode(ephemeral)}, {"key", wrapped.ToJson()}};
}

Result<SealedKey> SealedKey::FromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("epk") || !j["epk"].is_string() ||
      !j.contains("key"))
    return MakeError(ErrorCode::kInvalidArgument, "malformed sealed key");
  SealedKey s;
  VCRYPT_ASSIGN_OR_RETURN(s.ephemeral,
                          Base64Decode(j["epk"].get<std::string>()));
  VCRYPT_ASSIGN_OR_RETURN(s.wrapped, WrappedKey::FromJson(j["key"]));
  return s;
}

Result<TransportKey> TransportKey::Generate() {
  EvpPkeyPtr k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!k) return MakeError(ErrorCode::kInternal, "cannot generate a P-256 key");
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> p, EncodeP256Point(k.get()));
  return TransportKey(std::move(k), std::move(p));
}

Result<SecureBuffer> TransportKey::Open(const SealedKey& sealed,
                                        std::string_view context) const {
  auto peer = EcVerifyKey::FromPoint(sealed.ephemeral);
  if (!peer.ok())
    return MakeError(ErrorCode::kCrypto, "the sealed key is not for this host");
  VCRYPT_ASSIGN_OR_RETURN(
      SecureBuffer wk,
      WrappingKey(key_.get(), peer->pkey(), sealed.ephemeral, point_, context));
  auto key = UnwrapKey(wk, sealed.wrapped, Aad(context));
  if (!key.ok())
    return MakeError(ErrorCode::kCrypto,
                     "the sealed key was altered or is not for this host");
  return std::move(key).value();
}

Result<SealedKey> SealTo(std::span<const uint8_t> recipient_point,
                         const SecureBuffer& key, std::string_view context) {
  VCRYPT_ASSIGN_OR_RETURN(EcVerifyKey peer,
                          EcVerifyKey::FromPoint(recipient_point));
  EvpPkeyPtr eph(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!eph)
    return MakeError(ErrorCode::kInternal, "cannot generate a P-256 key");
  SealedKey s;
  VCRYPT_ASSIGN_OR_RETURN(s.ephemeral, EncodeP256Point(eph.get()));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer wk,
                          WrappingKey(eph.get(), peer.pkey(), s.ephemeral,
                                      recipient_point, context));
  VCRYPT_ASSIGN_OR_RETURN(s.wrapped, WrapKey(wk, key, Aad(context)));
  return s;
}

}  // namespace vcrypt
