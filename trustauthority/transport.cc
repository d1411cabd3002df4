#include "trustauthority/transport.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>

#include <string>

#include "common/base64.h"

namespace vcrypt {
namespace {

constexpr size_t kPointSize = 65;
constexpr char kInfo[] = "vcrypt-kek-transport-v1";

Result<std::vector<uint8_t>> PointOf(EVP_PKEY* k) {
  std::vector<uint8_t> p(kPointSize);
  size_t len = 0;
  if (EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                      p.data(), p.size(), &len) != 1 ||
      len != kPointSize)
    return MakeError(ErrorCode::kInternal, "cannot encode a P-256 point");
  return p;
}

Result<EvpPkeyPtr> PeerFromPoint(std::span<const uint8_t> point) {
  if (point.size() != kPointSize || point[0] != 0x04)
    return MakeError(ErrorCode::kInvalidArgument,
                     "not an uncompressed P-256 point");
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                  "P-256", 0);
  OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                   point.data(), point.size());
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) !=
          1)
    return MakeError(ErrorCode::kInvalidArgument, "not a valid P-256 point");
  EvpPkeyPtr k(raw);
  // fromdata does not check that the point is on the curve.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, k.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1)
    return MakeError(ErrorCode::kInvalidArgument, "not a valid P-256 point");
  return k;
}

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
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> p, PointOf(k.get()));
  return TransportKey(std::move(k), std::move(p));
}

Result<SecureBuffer> TransportKey::Open(const SealedKey& sealed,
                                        std::string_view context) const {
  auto peer = PeerFromPoint(sealed.ephemeral);
  if (!peer.ok())
    return MakeError(ErrorCode::kCrypto, "the sealed key is not for this host");
  VCRYPT_ASSIGN_OR_RETURN(
      SecureBuffer wk,
      WrappingKey(key_.get(), peer->get(), sealed.ephemeral, point_, context));
  auto key = UnwrapKey(wk, sealed.wrapped, Aad(context));
  if (!key.ok())
    return MakeError(ErrorCode::kCrypto,
                     "the sealed key was altered or is not for this host");
  return std::move(key).value();
}

Result<SealedKey> SealTo(std::span<const uint8_t> recipient_point,
                         const SecureBuffer& key, std::string_view context) {
  VCRYPT_ASSIGN_OR_RETURN(EvpPkeyPtr peer, PeerFromPoint(recipient_point));
  EvpPkeyPtr eph(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!eph)
    return MakeError(ErrorCode::kInternal, "cannot generate a P-256 key");
  SealedKey s;
  VCRYPT_ASSIGN_OR_RETURN(s.ephemeral, PointOf(eph.get()));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer wk,
                          WrappingKey(eph.get(), peer.get(), s.ephemeral,
                                      recipient_point, context));
  VCRYPT_ASSIGN_OR_RETURN(s.wrapped, WrapKey(wk, key, Aad(context)));
  return s;
}

}  // namespace vcrypt
