#include "keyproviders/native/native_provider.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs12.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <utility>

#include "common/aead.h"
#include "common/atomic_file.h"
#include "common/clock.h"
#include "common/handles.h"
#include "common/names.h"
#include "common/random.h"
#include "keyproviders/native/provider_dir.h"

namespace vcrypt {
namespace {

using native_internal::IsUuid;
using native_internal::kPrimaryKeySize;

constexpr std::string_view kKekAadLabel = "vcrypt-native-kek-v1";
// Salt length for PBKDF2 and the MAC KDF: 128 bits (NIST SP 800-132 asks
// for at least that; OpenSSL 3.0 would default to 64).
constexpr int kSaltSize = 16;

Error ErrnoError(ErrorCode code, const std::string& what, int err) {
  return MakeError(code, what + ": " + std::strerror(err));
}

std::vector<uint8_t> KekAad(std::string_view primary_key_id,
                            std::string_view kek_id) {
  return BuildAad(kKekAadLabel, {primary_key_id, kek_id});
}

// ---- PKCS#12 ---------------------------------------------------------------

// Wipes the value of a secret bag (our primary key) before freeing it:
// OpenSSL's own free functions do not wipe.
void WipeAndFreeBag(PKCS12_SAFEBAG* bag) {
  if (bag == nullptr) return;
  if (PKCS12_SAFEBAG_get_nid(bag) == NID_secretBag) {
    const ASN1_TYPE* v = PKCS12_SAFEBAG_get0_bag_obj(bag);
    if (v != nullptr && v->type != V_ASN1_BOOLEAN && v->type != V_ASN1_NULL &&
        v->type != V_ASN1_OBJECT && v->value.asn1_string != nullptr &&
        v->value.asn1_string->data != nullptr) {
      OPENSSL_cleanse(v->value.asn1_string->data,
                      static_cast<size_t>(v->value.asn1_string->length));
    }
  }
  PKCS12_SAFEBAG_free(bag);
}
struct SecretBagStackDeleter {
  void operator()(STACK_OF(PKCS12_SAFEBAG) * s) const {
    sk_PKCS12_SAFEBAG_pop_free(s, WipeAndFreeBag);
  }
};
using SecretBagStackPtr =
    std::unique_ptr<STACK_OF(PKCS12_SAFEBAG), SecretBagStackDeleter>;

Status CheckPassword(const SecureBuffer& password) {
  if (password.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "the backup password is empty");
  if (std::memchr(password.data(), 0, password.size()) != nullptr) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the backup password contains a NUL byte");
  }
  if (password.size() > 1024) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the backup password is longer than 1024 bytes");
  }
  return Status::Ok();
}

// A NUL-terminated copy in locked memory. Lengths are passed explicitly
// everywhere; the terminator guards OpenSSL paths that fall back to strlen.
SecureBuffer NulTerminated(const SecureBuffer& password) {
  SecureBuffer pw(password.size() + 1);
  std::memcpy(pw.data(), password.data(), password.size());
  return pw;
}

Error OpensslError(const std::string& what) {
  return MakeError(ErrorCode::kInternal, "OpenSSL failed to " + what);
}

// `what` names the backup in messages: "backup FILE" or "the backup".
Error BackupUnreadable(const std::string& what) {
  return MakeError(ErrorCode::kCrypto,
                   "cannot read " + what + ": wrong password or damaged file");
}

Error NotOurBackup(const std::string& what, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument,
                   what + " does not hold a vcrypt native primary key: " + why);
}

// One iteration count a backup claims (`iter` null: the default, 1).
Status CheckIterationCount(const ASN1_INTEGER* iter, const char* of,
                           const std::string& what) {
  int64_t n = 1;
  if (iter != nullptr && ASN1_INTEGER_get_int64(&n, iter) != 1)
    n = INT64_MAX;  // does not even fit
  if (n >= 1 && n <= kMaxBackupIterations) return Status::Ok();
  return MakeError(ErrorCode::kInvalidArgument,
                   what + " claims " + std::to_string(n) + " iterations for " +
                       of + "; vcrypt accepts 1 to " +
                       std::to_string(kMaxBackupIterations) +
                       ": not a vcrypt backup, or damaged");
}

using Pbe2ParamPtr =
    std::unique_ptr<PBE2PARAM, FnDeleter<PBE2PARAM, PBE2PARAM_free>>;
using Pbkdf2ParamPtr =
    std::unique_ptr<PBKDF2PARAM, FnDeleter<PBKDF2PARAM, PBKDF2PARAM_free>>;

// Every key derivation reading `p12` would run, bounded before any runs:
// the MAC's KDF and the PBKDF2 of each encrypted safe (a file claiming
// 2^31 - 1 iterations would otherwise keep vcryptd busy for hours). An
// encrypted safe must use PBES2 with PBKDF2, as Backup writes it (other
// schemes, scrypt among them, have other costs to bound).
Status CheckDerivationCosts(PKCS12* p12, const std::string& what) {
  const ASN1_INTEGER* mac_iter = nullptr;
  PKCS12_get0_mac(nullptr, nullptr, nullptr, &mac_iter, p12);
  VCRYPT_RETURN_IF_ERROR(CheckIterationCount(mac_iter, "its MAC", what));
  // The authenticated safe is plain data: unpacking it derives nothing.
  Pkcs7StackPtr safes(PKCS12_unpack_authsafes(p12));
  if (!safes) return Status::Ok();  // refused as malformed after the MAC
  for (int i = 0; i < sk_PKCS7_num(safes.get()); ++i) {
    PKCS7* safe = sk_PKCS7_value(safes.get(), i);
    if (PKCS7_type_is_encrypted(safe) != 1) continue;  // nothing to derive
    // Not vouched for by the MAC yet, and its content is OPTIONAL.
    if (safe->d.encrypted == nullptr || safe->d.encrypted->enc_data == nullptr)
      return NotOurBackup(what, "its encrypted safe has no content");
    const X509_ALGOR* alg = safe->d.encrypted->enc_data->algorithm;
    if (alg == nullptr || OBJ_obj2nid(alg->algorithm) != NID_pbes2)
      return NotOurBackup(what, "its safe is not encrypted with PBES2");
    Pbe2ParamPtr pbe2(static_cast<PBE2PARAM*>(
        ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter)));
    if (!pbe2 || pbe2->keyfunc == nullptr ||
        OBJ_obj2nid(pbe2->keyfunc->algorithm) != NID_id_pbkdf2)
      return NotOurBackup(what, "its safe's key derivation is not PBKDF2");
    Pbkdf2ParamPtr kdf(static_cast<PBKDF2PARAM*>(ASN1_TYPE_unpack_sequence(
        ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter)));
    if (!kdf) return NotOurBackup(what, "its safe's PBKDF2 is malformed");
    VCRYPT_RETURN_IF_ERROR(
        CheckIterationCount(kdf->iter, "the PBKDF2 of its safe", what));
  }
  return Status::Ok();
}

// Builds the PKCS7 encryptedData safe by hand (what PKCS12_add_safe does)
// so that the PRF is stated rather than left to OpenSSL's default.
Result<Pkcs7Ptr> EncryptedSafe(STACK_OF(PKCS12_SAFEBAG) * bags,
                               const SecureBuffer& pw, int passlen,
                               int iterations) {
  uint8_t salt[kSaltSize];
  VCRYPT_RETURN_IF_ERROR(FillRandom(salt));
  X509AlgorPtr pbe(PKCS5_pbe2_set_iv(EVP_aes_256_cbc(), iterations, salt,
                                     kSaltSize, nullptr, NID_hmacWithSHA256));
  if (!pbe) return OpensslError("set up PBES2");
  Pkcs7Ptr p7(PKCS7_new());
  if (!p7 || PKCS7_set_type(p7.get(), NID_pkcs7_encrypted) != 1)
    return OpensslError("create the encrypted safe");
  PKCS7_ENC_CONTENT* ec = p7->d.encrypted->enc_data;
  X509_ALGOR_free(ec->algorithm);
  ec->algorithm = pbe.release();
  // zbuf=1: OpenSSL wipes its plaintext DER encoding of the bags.
  ASN1_OCTET_STRING* ct =
      PKCS12_item_i2d_encrypt(ec->algorithm, ASN1_ITEM_rptr(PKCS12_SAFEBAGS),
                              pw.chars(), passlen, bags, /*zbuf=*/1);
  if (ct == nullptr) return OpensslError("encrypt the backup");
  ASN1_OCTET_STRING_free(ec->enc_data);
  ec->enc_data = ct;
  return p7;
}

}  // namespace

void StripPasswordFileNewline(SecureBuffer& password) {
  if (password.empty() || password.data()[password.size() - 1] != '\n') return;
  password.Truncate(password.size() - 1);
  if (!password.empty() && password.data()[password.size() - 1] == '\r')
    password.Truncate(password.size() - 1);
}

NativeProvider::NativeProvider(std::string name, std::string dir,
                               std::string primary_key_id, std::string created,
                               NativeKeyStorage storage,
                               SecureBuffer primary_key)
    : name_(std::move(name)),
      dir_(std::move(dir)),
      primary_key_id_(std::move(primary_key_id)),
      created_(std::move(created)),
      storage_(std::move(storage)),
      primary_key_(std::move(primary_key)) {}

Result<std::unique_ptr<NativeProvider>> NativeProvider::Create(
    const std::string& name, const std::string& dir,
    const NativeKeyStorage& storage, const NativeProviderOptions& options) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  native_internal::ProviderConfig c;
  VCRYPT_ASSIGN_OR_RETURN(c.storage,
                          native_internal::CanonicalStorage(storage, options));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer key, RandomKey(kPrimaryKeySize));
  VCRYPT_ASSIGN_OR_RETURN(c.primary_key_id, RandomUuid());
  c.created = NowRfc3339();
  VCRYPT_RETURN_IF_ERROR(native_internal::WriteProviderDir(name, dir, c, key));
  return std::unique_ptr<NativeProvider>(new NativeProvider(
      name, dir, std::move(c.primary_key_id), std::move(c.created),
      std::move(c.storage), std::move(key)));
}

Result<std::unique_ptr<NativeProvider>> NativeProvider::Load(
    const std::string& name, const std::string& dir,
    const NativeProviderOptions& options) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_ASSIGN_OR_RETURN(native_internal::LoadedProviderDir d,
                          native_internal::ReadProviderDir(name, dir, options));
  return std::unique_ptr<NativeProvider>(
      new NativeProvider(name, dir, std::move(d.config.primary_key_id),
                         std::move(d.config.created),
                         std::move(d.config.storage), std::move(d.key)));
}

Status NativeProvider::Backup(const std::string& out_path,
                              const SecureBuffer& password,
                              int iterations) const {
  VCRYPT_RETURN_IF_ERROR(CheckPassword(password));
  struct stat st;
  if (lstat(out_path.c_str(), &st) == 0) {
    return MakeError(ErrorCode::kExists,
                     out_path + " already exists; choose another file name");
  } else if (errno != ENOENT) {
    return ErrnoError(ErrorCode::kIo, "cannot inspect " + out_path, errno);
  }
  VCRYPT_ASSIGN_OR_RETURN(std::string der, BackupBytes(password, iterations));
  AtomicWriteOptions opts;
  opts.mode = 0600;
  return WriteFileAtomic(out_path, der, opts);
}

Result<std::string> NativeProvider::BackupBytes(const SecureBuffer& password,
                                                int iterations) const {
  VCRYPT_RETURN_IF_ERROR(CheckPassword(password));
  if (iterations < 1 || iterations > kMaxBackupIterations) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "backup iteration count must be 1 to " +
                         std::to_string(kMaxBackupIterations));
  }
  const SecureBuffer pw = NulTerminated(password);
  const int passlen = static_cast<int>(password.size());

  SecretBagStackPtr bags(sk_PKCS12_SAFEBAG_new_null());
  if (!bags) return OpensslError("allocate a bag list");
  PKCS12_SAFEBAG* bag =
      PKCS12_SAFEBAG_create_secret(NID_aes_256_gcm, V_ASN1_OCTET_STRING,
                                   primary_key_.data(), kPrimaryKeySize);
  if (bag == nullptr) return OpensslError("create the secret bag");
  if (sk_PKCS12_SAFEBAG_push(bags.get(), bag) <= 0) {
    WipeAndFreeBag(bag);
    return OpensslError("add the secret bag");
  }
  const std::string description = "vcrypt native key provider '" + name_ +
                                  "' primary key (created " + created_ + ")";
  if (PKCS12_add_friendlyname_utf8(bag, primary_key_id_.c_str(),
                                   static_cast<int>(primary_key_id_.size())) !=
          1 ||
      PKCS12_add1_attr_by_NID(
          bag, NID_description, MBSTRING_UTF8,
          reinterpret_cast<const unsigned char*>(description.data()),
          static_cast<int>(description.size())) != 1) {
    return OpensslError("label the secret bag");
  }

  VCRYPT_ASSIGN_OR_RETURN(Pkcs7Ptr safe,
                          EncryptedSafe(bags.get(), pw, passlen, iterations));
  Pkcs7StackPtr safes(sk_PKCS7_new_null());
  if (!safes || sk_PKCS7_push(safes.get(), safe.get()) <= 0)
    return OpensslError("assemble the backup");
  safe.release();  // now owned by `safes`
  Pkcs12Ptr p12(PKCS12_add_safes(safes.get(), NID_pkcs7_data));
  if (!p12) return OpensslError("assemble the backup");

  uint8_t mac_salt[kSaltSize];
  VCRYPT_RETURN_IF_ERROR(FillRandom(mac_salt));
  if (PKCS12_set_mac(p12.get(), pw.chars(), passlen, mac_salt, kSaltSize,
                     iterations, EVP_sha256()) != 1) {
    return OpensslError("compute the backup's MAC");
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_PKCS12(p12.get(), &der);
  OpensslBytePtr der_owner(der);
  if (der_len <= 0) return OpensslError("encode the backup");
  // Encrypted under the password: an ordinary string is fine.
  return std::string(reinterpret_cast<const char*>(der),
                     static_cast<size_t>(der_len));
}

Result<std::unique_ptr<NativeProvider>> NativeProvider::Restore(
    const std::string& p12_path, const SecureBuffer& password,
    const std::string& name, const std::string& dir,
    const NativeKeyStorage& storage, const NativeProviderOptions& options) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_RETURN_IF_ERROR(CheckPassword(password));
  // Fail fast, before the deliberately slow key derivation.
  VCRYPT_RETURN_IF_ERROR(native_internal::CheckDirUnused(dir));
  VCRYPT_RETURN_IF_ERROR(native_internal::CanonicalStorage(storage, options));

  struct stat st;
  if (stat(p12_path.c_str(), &st) != 0) {
    int err = errno;
    return ErrnoError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                      "cannot open backup " + p12_path, err);
  }
  if (!S_ISREG(st.st_mode) ||
      static_cast<size_t>(st.st_size) > kMaxBackupFileSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     p12_path +
                         " is not a vcrypt backup (not a regular file "
                         "or too large)");
  }
  // The file is encrypted: reading it into a std::string is fine.
  VCRYPT_ASSIGN_OR_RETURN(std::string file, ReadFile(p12_path));
  return RestoreBytes(file, password, name, dir, "backup " + p12_path, storage,
                      options);
}

Result<std::unique_ptr<NativeProvider>> NativeProvider::RestoreBytes(
    std::string_view der, const SecureBuffer& password, const std::string& name,
    const std::string& dir, const std::string& what,
    const NativeKeyStorage& storage, const NativeProviderOptions& options) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_RETURN_IF_ERROR(CheckPassword(password));
  VCRYPT_RETURN_IF_ERROR(native_internal::CheckDirUnused(dir));
  native_internal::ProviderConfig c;
  VCRYPT_ASSIGN_OR_RETURN(c.storage,
                          native_internal::CanonicalStorage(storage, options));
  if (der.size() > kMaxBackupFileSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " is not a vcrypt backup (too large)");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  const auto* end = p + der.size();
  Pkcs12Ptr p12(d2i_PKCS12(nullptr, &p, static_cast<long>(der.size())));
  if (!p12 || p != end) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot read " + what +
                         ": not a PKCS#12 file, or damaged (truncated?)");
  }
  if (PKCS12_mac_present(p12.get()) != 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     what +
                         " has no MAC (integrity check); vcrypt did not "
                         "make it");
  }
  // Before the first (deliberately slow) derivation, not after.
  VCRYPT_RETURN_IF_ERROR(CheckDerivationCosts(p12.get(), what));
  const SecureBuffer pw = NulTerminated(password);
  const int passlen = static_cast<int>(password.size());
  if (PKCS12_verify_mac(p12.get(), pw.chars(), passlen) != 1) {
    return BackupUnreadable(what);
  }

  // The MAC verified: the contents are authentic. Insist on exactly what
  // Backup writes: one encrypted safe holding one 32-byte secret bag.
  Pkcs7StackPtr safes(PKCS12_unpack_authsafes(p12.get()));
  if (!safes || sk_PKCS7_num(safes.get()) != 1)
    return NotOurBackup(what, "expected one safe");
  PKCS7* safe = sk_PKCS7_value(safes.get(), 0);
  if (PKCS7_type_is_encrypted(safe) != 1)
    return NotOurBackup(what, "the safe is not encrypted");
  SecretBagStackPtr bags(PKCS12_unpack_p7encdata(safe, pw.chars(), passlen));
  if (!bags) return BackupUnreadable(what);
  if (sk_PKCS12_SAFEBAG_num(bags.get()) != 1)
    return NotOurBackup(what, "expected exactly one bag");
  PKCS12_SAFEBAG* bag = sk_PKCS12_SAFEBAG_value(bags.get(), 0);
  if (PKCS12_SAFEBAG_get_nid(bag) != NID_secretBag ||
      PKCS12_SAFEBAG_get_bag_nid(bag) != NID_aes_256_gcm) {
    return NotOurBackup(what, "expected an AES-256 secret bag");
  }
  const ASN1_TYPE* value = PKCS12_SAFEBAG_get0_bag_obj(bag);
  if (value == nullptr || value->type != V_ASN1_OCTET_STRING ||
      value->value.octet_string == nullptr ||
      ASN1_STRING_length(value->value.octet_string) !=
          static_cast<int>(kPrimaryKeySize)) {
    return NotOurBackup(what, "the secret is not 32 bytes");
  }
  OpensslCharPtr friendly(PKCS12_get_friendlyname(bag));
  if (!friendly || !IsUuid(friendly.get()))
    return NotOurBackup(what, "its friendly name is not a primary key ID");
  std::string id = friendly.get();
  // Copy into locked memory; `bags` wipes OpenSSL's copy when it goes.
  SecureBuffer key = SecureBuffer::CopyOf(std::span<const uint8_t>(
      ASN1_STRING_get0_data(value->value.octet_string), kPrimaryKeySize));
  bags.reset();

  c.primary_key_id = std::move(id);
  c.created = NowRfc3339();
  VCRYPT_RETURN_IF_ERROR(native_internal::WriteProviderDir(name, dir, c, key));
  return std::unique_ptr<NativeProvider>(new NativeProvider(
      name, dir, std::move(c.primary_key_id), std::move(c.created),
      std::move(c.storage), std::move(key)));
}

Result<NewKek> NativeProvider::CreateKek(std::string_view /*vm*/) {
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer kek, RandomKey(kKekSize));
  VCRYPT_ASSIGN_OR_RETURN(std::string kek_id, RandomUuid());
  VCRYPT_ASSIGN_OR_RETURN(
      WrappedKey w,
      WrapKey(primary_key_, kek, KekAad(primary_key_id_, kek_id)));
  NewKek out;
  out.ref.kek_id = std::move(kek_id);
  out.ref.data = nlohmann::json{{"primary_key_id", primary_key_id_},
                                {"wrapped_kek", w.ToJson()}};
  out.kek = std::move(kek);
  return out;
}

Result<SecureBuffer> NativeProvider::GetKek(const KekRef& ref) {
  auto bad = [](const std::string& why) {
    return MakeError(ErrorCode::kInvalidVolume,
                     "malformed native KEK reference: " + why);
  };
  if (!IsUuid(ref.kek_id)) return bad("the KEK ID is not a UUID");
  if (!ref.data.is_object()) return bad("its data is not a JSON object");
  for (const auto& [key, v] : ref.data.items()) {
    if (key != "primary_key_id" && key != "wrapped_kek")
      return bad("unknown member \"" + key.substr(0, 32) + "\"");
  }
  auto pk = ref.data.find("primary_key_id");
  if (pk == ref.data.end() || !pk->is_string() ||
      !IsUuid(pk->get_ref<const std::string&>())) {
    return bad("\"primary_key_id\" is missing or not a UUID");
  }
  const std::string& ref_pk_id = pk->get_ref<const std::string&>();
  if (ref_pk_id != primary_key_id_) {
    return MakeError(ErrorCode::kKeyUnavailable,
                     "volume's KEK was made by another native primary key "
                     "(id " +
                         ref_pk_id + "); restore that provider's backup");
  }
  auto wk = ref.data.find("wrapped_kek");
  if (wk == ref.data.end()) return bad("\"wrapped_kek\" is missing");
  VCRYPT_ASSIGN_OR_RETURN(WrappedKey w, WrappedKey::FromJson(*wk));
  auto kek = UnwrapKey(primary_key_, w, KekAad(primary_key_id_, ref.kek_id));
  if (!kek.ok()) {
    Error e = std::move(kek).error();
    e.message = "KEK " + ref.kek_id + ": " + e.message;
    return e;
  }
  if (kek->size() != kKekSize)
    return bad("the wrapped KEK is not " + std::to_string(kKekSize) + " bytes");
  return std::move(kek).value();
}

bool NativeProvider::Recognizes(const KekRef& ref) const {
  if (!ref.data.is_object()) return false;
  auto pk = ref.data.find("primary_key_id");
  return pk != ref.data.end() && pk->is_string() &&
         pk->get_ref<const std::string&>() == primary_key_id_;
}

nlohmann::json NativeProvider::Describe() const {
  nlohmann::json j{{"name", name_},
                   {"type", "native"},
                   {"primary_key_id", primary_key_id_},
                   {"created", created_},
                   {"key_storage", storage_.tpm ? "tpm" : "file"}};
  if (storage_.tpm) {
    j["tcti"] = storage_.tcti;
    j["pcrs"] = storage_.pcrs;
  }
  return j;
}

}  // namespace vcrypt
