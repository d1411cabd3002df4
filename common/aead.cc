#include "common/aead.h"

#include <openssl/evp.h>

#include <climits>
#include <cstdint>
#include <cstdlib>

#include "common/base64.h"
#include "common/handles.h"
#include "common/random.h"

namespace vcrypt {
namespace {

constexpr std::string_view kAlg = "A256GCM";

Error OpensslError(std::string_view what) {
  return MakeError(ErrorCode::kInternal,
                   "AES-256-GCM " + std::string(what) + " failed in OpenSSL");
}

Error UnwrapFailed() {
  return MakeError(ErrorCode::kCrypto,
                   "key unwrap failed: wrong key or data tampered");
}

// Feeds the AAD; EVP wants an int length and no call at all is needed for
// an empty AAD.
bool FeedAad(EVP_CIPHER_CTX* ctx, std::span<const uint8_t> aad, bool encrypt) {
  if (aad.empty()) return true;
  if (aad.size() > INT_MAX) return false;
  int outl = 0;
  return encrypt ? EVP_EncryptUpdate(ctx, nullptr, &outl, aad.data(),
                                     static_cast<int>(aad.size())) == 1
                 : EVP_DecryptUpdate(ctx, nullptr, &outl, aad.data(),
                                     static_cast<int>(aad.size())) == 1;
}

Error Malformed(const std::string& why) {
  return MakeError(ErrorCode::kInvalidVolume, "malformed wrapped key: " + why);
}

Result<std::vector<uint8_t>> DecodeMember(const nlohmann::json& j,
                                          const char* member, size_t min_size,
                                          size_t max_size) {
  auto it = j.find(member);
  if (it == j.end()) {
    return Malformed(std::string("member \"") + member + "\" is missing");
  }
  if (!it->is_string()) {
    return Malformed(std::string("member \"") + member + "\" is not a string");
  }
  auto bytes = Base64Decode(it->get_ref<const std::string&>());
  if (!bytes.ok()) {
    return Malformed(std::string("member \"") + member +
                     "\" is not valid base64");
  }
  if (bytes->size() < min_size || bytes->size() > max_size) {
    std::string want = min_size == max_size ? std::to_string(min_size)
                                            : std::to_string(min_size) + ".." +
                                                  std::to_string(max_size);
    return Malformed(std::string("member \"") + member + "\" has " +
                     std::to_string(bytes->size()) + " bytes, expected " +
                     want);
  }
  return std::move(bytes).value();
}

}  // namespace

nlohmann::json WrappedKey::ToJson() const {
  return nlohmann::json{{"alg", kAlg},
                        {"iv", Base64Encode(iv)},
                        {"ct", Base64Encode(ciphertext)},
                        {"tag", Base64Encode(tag)}};
}

Result<WrappedKey> WrappedKey::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return Malformed("not a JSON object");
  static constexpr const char* kMembers[] = {"alg", "iv", "ct", "tag"};
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    for (const char* m : kMembers) known = known || key == m;
    if (!known) return Malformed("unknown member \"" + key + "\"");
  }
  auto alg = j.find("alg");
  if (alg == j.end()) return Malformed("member \"alg\" is missing");
  if (!alg->is_string()) return Malformed("member \"alg\" is not a string");
  if (const auto& a = alg->get_ref<const std::string&>(); a != kAlg) {
    // The value comes from a volume header: keep the message one short line.
    return Malformed("unsupported algorithm \"" + a.substr(0, 32) +
                     "\" (expected \"A256GCM\")");
  }
  WrappedKey w;
  VCRYPT_ASSIGN_OR_RETURN(w.iv,
                          DecodeMember(j, "iv", kAeadIvSize, kAeadIvSize));
  VCRYPT_ASSIGN_OR_RETURN(w.ciphertext,
                          DecodeMember(j, "ct", 1, kMaxWrappedKeySize));
  VCRYPT_ASSIGN_OR_RETURN(w.tag,
                          DecodeMember(j, "tag", kAeadTagSize, kAeadTagSize));
  return w;
}

Result<WrappedKey> WrapKey(const SecureBuffer& kek, const SecureBuffer& key,
                           std::span<const uint8_t> aad) {
  if (kek.size() != kAeadKeySize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "key wrap: the wrapping key must be 32 bytes, not " +
                         std::to_string(kek.size()));
  }
  if (key.empty() || key.size() > kMaxWrappedKeySize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "key wrap: the key to wrap must be 1.." +
                         std::to_string(kMaxWrappedKeySize) + " bytes, not " +
                         std::to_string(key.size()));
  }
  WrappedKey w;
  w.iv.resize(kAeadIvSize);
  VCRYPT_RETURN_IF_ERROR(FillRandom(w.iv));
  w.ciphertext.resize(key.size());
  w.tag.resize(kAeadTagSize);

  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpensslError("context allocation");
  // The IV length is set before the key and IV so the 12-byte IV is used
  // as is (GCM's default, but stated rather than assumed).
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr,
                         nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kAeadIvSize,
                          nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, kek.data(),
                         w.iv.data()) != 1) {
    return OpensslError("encryption setup");
  }
  if (!FeedAad(ctx.get(), aad, true)) return OpensslError("AAD");
  int outl = 0;
  if (EVP_EncryptUpdate(ctx.get(), w.ciphertext.data(), &outl, key.data(),
                        static_cast<int>(key.size())) != 1 ||
      static_cast<size_t>(outl) != key.size()) {
    return OpensslError("encryption");
  }
  int finl = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), w.ciphertext.data() + outl, &finl) != 1 ||
      finl != 0 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kAeadTagSize,
                          w.tag.data()) != 1) {
    return OpensslError("tag computation");
  }
  return w;
}

Result<SecureBuffer> UnwrapKey(const SecureBuffer& kek, const WrappedKey& w,
                               std::span<const uint8_t> aad) {
  if (kek.size() != kAeadKeySize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "key unwrap: the wrapping key must be 32 bytes, not " +
                         std::to_string(kek.size()));
  }
  if (w.iv.size() != kAeadIvSize || w.tag.size() != kAeadTagSize ||
      w.ciphertext.empty() || w.ciphertext.size() > kMaxWrappedKeySize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "key unwrap: malformed wrapped key (bad iv, tag or "
                     "ciphertext length)");
  }
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return OpensslError("context allocation");
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr,
                         nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kAeadIvSize,
                          nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, kek.data(),
                         w.iv.data()) != 1) {
    return OpensslError("decryption setup");
  }
  if (!FeedAad(ctx.get(), aad, false)) return OpensslError("AAD");
  // GCM decrypts before it verifies: the plaintext goes only into locked
  // memory, which the destructor wipes if the tag turns out to be wrong.
  SecureBuffer key(w.ciphertext.size());
  int outl = 0;
  if (EVP_DecryptUpdate(ctx.get(), key.data(), &outl, w.ciphertext.data(),
                        static_cast<int>(w.ciphertext.size())) != 1 ||
      static_cast<size_t>(outl) != key.size()) {
    return OpensslError("decryption");
  }
  // EVP_CTRL_GCM_SET_TAG takes a non-const pointer but only reads it.
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kAeadTagSize,
                          const_cast<uint8_t*>(w.tag.data())) != 1) {
    return OpensslError("tag setup");
  }
  int finl = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), key.data() + outl, &finl) != 1) {
    return UnwrapFailed();
  }
  return key;
}

std::vector<uint8_t> BuildAad(std::string_view label,
                              std::initializer_list<std::string_view> fields) {
  std::vector<uint8_t> out;
  auto put = [&out](std::string_view s) {
    // Fields are names and identifiers; a length that does not fit the
    // prefix would make the encoding ambiguous, so it is a bug, not data.
    if (s.size() > UINT32_MAX) std::abort();
    const uint32_t n = static_cast<uint32_t>(s.size());
    out.push_back(static_cast<uint8_t>(n >> 24));
    out.push_back(static_cast<uint8_t>(n >> 16));
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(n));
    out.insert(out.end(), s.begin(), s.end());
  };
  put(label);
  for (std::string_view f : fields) put(f);
  return out;
}

std::vector<uint8_t> DekAad(std::string_view luks_uuid, std::string_view kek_id,
                            std::string_view provider_name) {
  return BuildAad("vcrypt-dek-v1", {luks_uuid, kek_id, provider_name});
}

}  // namespace vcrypt
