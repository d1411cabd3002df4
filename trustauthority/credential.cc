#include "trustauthority/credential.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "common/handles.h"
#include "common/random.h"

namespace vcrypt {
namespace {

Error OpensslError(ErrorCode code, std::string message) {
  ERR_clear_error();
  return MakeError(code, std::move(message));
}

void PutBe16(std::vector<uint8_t>& out, size_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v & 0xff));
}

// A TPM Name of an object: nameAlg || H_nameAlg(public area).
bool IsObjectName(std::span<const uint8_t> name) {
  if (name.size() < 2) return false;
  const TPMI_ALG_HASH alg = static_cast<TPMI_ALG_HASH>(name[0] << 8 | name[1]);
  const size_t size = TpmHashSize(alg);
  return size != 0 && name.size() == 2 + size;
}

// Checks that `ek` can protect a credential the way a TPM expects, and
// returns its AES key size in bits.
Result<size_t> CheckEk(const TpmPublic& ek) {
  if (ek.key == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, "no endorsement key");
  }
  // ParseTpm2bPublic admits only RSA and NIST P-256 keys.
  if (ek.area.type != TPM2_ALG_RSA && ek.area.type != TPM2_ALG_ECC) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the endorsement key is neither RSA nor ECC");
  }
  if (!IsEndorsementKeyShape(ek)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the endorsement key is not a restricted decryption key "
                     "(fixedTPM, fixedParent)");
  }
  const TPMI_ALG_HASH name_alg = ek.area.nameAlg;
  if (name_alg != TPM2_ALG_SHA256 && name_alg != TPM2_ALG_SHA384 &&
      name_alg != TPM2_ALG_SHA512) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the endorsement key's nameAlg is not SHA-256/384/512");
  }
  const TPMT_SYM_DEF_OBJECT& sym = ek.area.type == TPM2_ALG_RSA
                                       ? ek.area.parameters.rsaDetail.symmetric
                                       : ek.area.parameters.eccDetail.symmetric;
  if (sym.algorithm != TPM2_ALG_AES || sym.mode.aes != TPM2_ALG_CFB ||
      (sym.keyBits.aes != 128 && sym.keyBits.aes != 192 &&
       sym.keyBits.aes != 256)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the endorsement key's symmetric algorithm is not AES "
                     "in CFB mode");
  }
  return static_cast<size_t>(sym.keyBits.aes);
}

// The label of credential protection, with its terminating NUL (TPM 2.0
// Part 1, 24.4: "IDENTITY" as a NUL-terminated string).
constexpr char kIdentityLabel[] = "IDENTITY";

// The seed and its protection by the EK (TPM 2.0 Part 1, 24.4 and Annex
// B.10.3 / C.6.1): what TPM2_MakeCredential's CryptSecretEncrypt does.
struct ProtectedSeed {
  SecureBuffer seed;
  std::vector<uint8_t> encrypted;  // TPM2B_ENCRYPTED_SECRET's content
};

// RSA EK: a random seed (nameAlg digest size), RSA-OAEP-encrypted (hash =
// nameAlg, label "IDENTITY\0").
Result<std::vector<uint8_t>> EncryptSeed(const TpmPublic& ek,
                                         const SecureBuffer& seed) {
  const EVP_MD* md = TpmHashToEvp(ek.area.nameAlg);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, ek.key.get(), nullptr));
  if (ctx == nullptr || EVP_PKEY_encrypt_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), md) != 1 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), md) != 1) {
    return OpensslError(ErrorCode::kInternal, "cannot set up RSA-OAEP");
  }
  void* label = OPENSSL_memdup(kIdentityLabel, sizeof(kIdentityLabel));
  if (label == nullptr || EVP_PKEY_CTX_set0_rsa_oaep_label(
                              ctx.get(), label, sizeof(kIdentityLabel)) != 1) {
    OPENSSL_free(label);  // ownership passes only on success
    return OpensslError(ErrorCode::kInternal, "cannot set up RSA-OAEP");
  }
  size_t out_size = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &out_size, seed.data(),
                       seed.size()) != 1) {
    return OpensslError(ErrorCode::kInternal, "RSA-OAEP encryption failed");
  }
  std::vector<uint8_t> out(out_size);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &out_size, seed.data(),
                       seed.size()) != 1) {
    return OpensslError(ErrorCode::kInternal, "RSA-OAEP encryption failed");
  }
  out.resize(out_size);
  return out;
}

// KDFe (TPM 2.0 Part 1, 11.4.10.3; SP 800-56A concatenation KDF):
//   H(counter_32 || Z || label (NUL included) || partyUInfo || partyVInfo)
// for counter = 1, 2, ... until `bytes` are produced.
Result<SecureBuffer> Kdfe(TPMI_ALG_HASH hash, const SecureBuffer& z,
                          std::span<const uint8_t> label,
                          std::span<const uint8_t> party_u,
                          std::span<const uint8_t> party_v, size_t bytes) {
  const EVP_MD* md = TpmHashToEvp(hash);
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (md == nullptr || ctx == nullptr) {
    return OpensslError(ErrorCode::kInternal, "KDFe: no digest");
  }
  SecureBuffer out(bytes);
  SecureBuffer block(EVP_MAX_MD_SIZE);
  size_t done = 0;
  for (uint32_t counter = 1; done < bytes; ++counter) {
    const uint8_t be[4] = {static_cast<uint8_t>(counter >> 24),
                           static_cast<uint8_t>(counter >> 16),
                           static_cast<uint8_t>(counter >> 8),
                           static_cast<uint8_t>(counter)};
    unsigned int n = 0;
    if (EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), be, sizeof(be)) != 1 ||
        EVP_DigestUpdate(ctx.get(), z.data(), z.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), label.data(), label.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), party_u.data(), party_u.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), party_v.data(), party_v.size()) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), block.data(), &n) != 1) {
      return OpensslError(ErrorCode::kInternal, "KDFe failed");
    }
    const size_t take = std::min<size_t>(n, bytes - done);
    std::copy(block.data(), block.data() + take, out.data() + done);
    done += take;
  }
  return out;
}

// ECC EK (NIST P-256): an ephemeral key pair on the EK's curve; Z = the
// x-coordinate of ECDH(ephemeral, EK); seed = KDFe(nameAlg, Z, "IDENTITY",
// ephemeral x, EK x, digest bits); the encrypted secret is the ephemeral
// public point as a TPMS_ECC_POINT.
Result<ProtectedSeed> EccProtectedSeed(const TpmPublic& ek,
                                       size_t digest_size) {
  constexpr size_t kCoord = 32;
  EvpPkeyPtr ephemeral(EVP_EC_gen("P-256"));
  uint8_t point[1 + 2 * kCoord];
  size_t point_size = 0;
  if (ephemeral == nullptr ||
      EVP_PKEY_get_octet_string_param(ephemeral.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                      point, sizeof(point), &point_size) != 1 ||
      point_size != sizeof(point) || point[0] != 0x04) {
    return OpensslError(ErrorCode::kInternal, "cannot make an ECDH key");
  }
  SecureBuffer z(kCoord);
  size_t z_size = z.size();
  EvpPkeyCtxPtr ctx(
      EVP_PKEY_CTX_new_from_pkey(nullptr, ephemeral.get(), nullptr));
  if (ctx == nullptr || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(ctx.get(), ek.key.get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), z.data(), &z_size) != 1 || z_size != kCoord) {
    return OpensslError(ErrorCode::kInternal, "ECDH with the EK failed");
  }
  const std::span<const uint8_t> ephemeral_x(point + 1, kCoord);
  const std::span<const uint8_t> ephemeral_y(point + 1 + kCoord, kCoord);
  // The EK's x exactly as in its public area: the TPM uses those bytes.
  const TPM2B_ECC_PARAMETER& ek_x = ek.area.unique.ecc.x;
  ProtectedSeed out;
  VCRYPT_ASSIGN_OR_RETURN(
      out.seed,
      Kdfe(ek.area.nameAlg, z,
           std::span<const uint8_t>(
               reinterpret_cast<const uint8_t*>(kIdentityLabel),
               sizeof(kIdentityLabel)),
           ephemeral_x, std::span<const uint8_t>(ek_x.buffer, ek_x.size),
           digest_size));
  PutBe16(out.encrypted, kCoord);
  out.encrypted.insert(out.encrypted.end(), ephemeral_x.begin(),
                       ephemeral_x.end());
  PutBe16(out.encrypted, kCoord);
  out.encrypted.insert(out.encrypted.end(), ephemeral_y.begin(),
                       ephemeral_y.end());
  return out;
}

Result<ProtectedSeed> MakeProtectedSeed(const TpmPublic& ek,
                                        size_t digest_size) {
  if (ek.area.type == TPM2_ALG_ECC) return EccProtectedSeed(ek, digest_size);
  ProtectedSeed out;
  VCRYPT_ASSIGN_OR_RETURN(out.seed, RandomKey(digest_size));
  VCRYPT_ASSIGN_OR_RETURN(out.encrypted, EncryptSeed(ek, out.seed));
  return out;
}

// AES-CFB (full-block feedback) with a zero IV, as TPM 2.0 Part 1, 24.4
// prescribes for encIdentity: the key is used for this one message only.
Result<std::vector<uint8_t>> AesCfbEncrypt(const SecureBuffer& key,
                                           const SecureBuffer& plaintext) {
  const std::string name = "AES-" + std::to_string(key.size() * 8) + "-CFB";
  EvpCipherPtr cipher(EVP_CIPHER_fetch(nullptr, name.c_str(), nullptr));
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  const uint8_t iv[16] = {};
  std::vector<uint8_t> out(plaintext.size() + 16);
  int n = 0, tail = 0;
  if (cipher == nullptr || ctx == nullptr ||
      EVP_CIPHER_get_key_length(cipher.get()) != static_cast<int>(key.size()) ||
      EVP_EncryptInit_ex2(ctx.get(), cipher.get(), key.data(), iv, nullptr) !=
          1 ||
      EVP_EncryptUpdate(ctx.get(), out.data(), &n, plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + n, &tail) != 1) {
    return OpensslError(ErrorCode::kInternal, "AES-CFB encryption failed");
  }
  out.resize(static_cast<size_t>(n + tail));
  return out;
}

Result<std::vector<uint8_t>> Hmac(TPMI_ALG_HASH hash, const SecureBuffer& key,
                                  std::span<const uint8_t> data) {
  const EVP_MD* md = TpmHashToEvp(hash);
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  size_t out_size = 0;
  if (md == nullptr ||
      EVP_Q_mac(nullptr, "HMAC", nullptr, EVP_MD_get0_name(md), nullptr,
                key.data(), key.size(), data.data(), data.size(), out.data(),
                out.size(), &out_size) == nullptr) {
    return OpensslError(ErrorCode::kInternal, "HMAC failed");
  }
  out.resize(out_size);
  return out;
}

}  // namespace

Result<SecureBuffer> Kdfa(TPMI_ALG_HASH hash, const SecureBuffer& key,
                          std::string_view label,
                          std::span<const uint8_t> context_u,
                          std::span<const uint8_t> context_v, size_t bits) {
  const EVP_MD* md = TpmHashToEvp(hash);
  if (md == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KDFa: unsupported hash algorithm");
  }
  if (bits == 0 || bits % 8 != 0 || bits > 0xffffffffu) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KDFa: bits must be a positive multiple of 8");
  }
  if (key.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "KDFa: empty key");
  }
  // OpenSSL's KBKDF in counter mode lays out each HMAC input as
  //   [i]_32 || Label || 0x00 || Context || [L]_32
  // (separator and L on by default), which is KDFa's
  //   [i]_32 || Label || 0x00 || contextU || contextV || [bits]_32.
  std::vector<uint8_t> context(context_u.begin(), context_u.end());
  context.insert(context.end(), context_v.begin(), context_v.end());
  std::string digest_name = EVP_MD_get0_name(md);
  std::string mode = "COUNTER";
  std::string mac = "HMAC";
  std::string label_copy(label);
  OSSL_PARAM params[7];
  size_t p = 0;
  params[p++] =
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE, mode.data(), 0);
  params[p++] =
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MAC, mac.data(), 0);
  params[p++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                                 digest_name.data(), 0);
  params[p++] = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(key.data()), key.size());
  if (!label_copy.empty()) {
    params[p++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, label_copy.data(), label_copy.size());
  }
  if (!context.empty()) {
    params[p++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_INFO, context.data(), context.size());
  }
  params[p] = OSSL_PARAM_construct_end();

  EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, "KBKDF", nullptr));
  EvpKdfCtxPtr ctx(kdf != nullptr ? EVP_KDF_CTX_new(kdf.get()) : nullptr);
  SecureBuffer out(bits / 8);
  if (ctx == nullptr ||
      EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return OpensslError(ErrorCode::kInternal, "KDFa (KBKDF) failed");
  }
  return out;
}

Result<MadeCredential> MakeCredential(const TpmPublic& ek,
                                      std::span<const uint8_t> ak_name,
                                      const SecureBuffer& secret) {
  VCRYPT_ASSIGN_OR_RETURN(const size_t sym_bits, CheckEk(ek));
  if (!IsObjectName(ak_name)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the AK name is not a TPM object Name (hash algorithm "
                     "and digest)");
  }
  const TPMI_ALG_HASH name_alg = ek.area.nameAlg;
  const size_t digest_size = TpmHashSize(name_alg);
  if (secret.empty() || secret.size() > digest_size) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the credential secret must be 1 to " +
                         std::to_string(digest_size) + " bytes");
  }

  // Seed, protected by the EK: only that TPM can recover it.
  VCRYPT_ASSIGN_OR_RETURN(ProtectedSeed protected_seed,
                          MakeProtectedSeed(ek, digest_size));
  const SecureBuffer& seed = protected_seed.seed;
  const std::vector<uint8_t>& encrypted_seed = protected_seed.encrypted;

  // encIdentity: the secret as a TPM2B_DIGEST, encrypted under a key bound
  // to the AK's Name (a TPM refuses to decrypt for an object of another
  // Name because the integrity HMAC below covers it too).
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer sym_key, Kdfa(name_alg, seed, "STORAGE",
                                                     ak_name, {}, sym_bits));
  SecureBuffer plaintext(2 + secret.size());
  plaintext.data()[0] = static_cast<uint8_t>(secret.size() >> 8);
  plaintext.data()[1] = static_cast<uint8_t>(secret.size() & 0xff);
  std::copy(secret.data(), secret.data() + secret.size(), plaintext.data() + 2);
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> enc_identity,
                          AesCfbEncrypt(sym_key, plaintext));

  // outerHMAC over encIdentity || Name.
  VCRYPT_ASSIGN_OR_RETURN(
      SecureBuffer hmac_key,
      Kdfa(name_alg, seed, "INTEGRITY", {}, {}, digest_size * 8));
  std::vector<uint8_t> mac_input = enc_identity;
  mac_input.insert(mac_input.end(), ak_name.begin(), ak_name.end());
  VCRYPT_ASSIGN_OR_RETURN(std::vector<uint8_t> outer_hmac,
                          Hmac(name_alg, hmac_key, mac_input));

  MadeCredential out;
  // TPM2B_ID_OBJECT { TPM2B_DIGEST integrityHMAC || encIdentity }: the
  // encIdentity keeps no size of its own (it is the rest of the object).
  PutBe16(out.credential_blob, 2 + outer_hmac.size() + enc_identity.size());
  PutBe16(out.credential_blob, outer_hmac.size());
  out.credential_blob.insert(out.credential_blob.end(), outer_hmac.begin(),
                             outer_hmac.end());
  out.credential_blob.insert(out.credential_blob.end(), enc_identity.begin(),
                             enc_identity.end());
  PutBe16(out.encrypted_secret, encrypted_seed.size());
  out.encrypted_secret.insert(out.encrypted_secret.end(),
                              encrypted_seed.begin(), encrypted_seed.end());
  return out;
}

}  // namespace vcrypt
