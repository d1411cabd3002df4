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

namespace vcrypt {
namespace {

constexpr size_t kPrimaryKeySize = 32;
constexpr int kConfigVersion = 1;
constexpr const char* kConfigFile = "config.json";
constexpr const char* kKeyFile = "primary.key";
constexpr std::string_view kKekAadLabel = "vcrypt-native-kek-v1";
constexpr std::string_view kKeyStorageFile = "file";
// Salt length for PBKDF2 and the MAC KDF: 128 bits (NIST SP 800-132 asks
// for at least that; OpenSSL 3.0 would default to 64).
constexpr int kSaltSize = 16;

std::string Join(const std::string& dir, const char* file) {
  if (!dir.empty() && dir.back() == '/') return dir + file;
  return dir + "/" + file;
}

std::string ParentDir(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  auto pos = p.rfind('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return p.substr(0, pos);
}

Error ErrnoError(ErrorCode code, const std::string& what, int err) {
  return MakeError(code, what + ": " + std::strerror(err));
}

// Canonical lower-case RFC 4122 text form, as RandomUuid() makes it.
bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

std::vector<uint8_t> KekAad(std::string_view primary_key_id,
                            std::string_view kek_id) {
  return BuildAad(kKekAadLabel, {primary_key_id, kek_id});
}

// ---- provider directory ----------------------------------------------------

// OK when `dir` does not exist or is an empty directory; kExists otherwise.
Status CheckDirUnused(const std::string& dir) {
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoError(ErrorCode::kIo, "cannot inspect " + dir, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return MakeError(ErrorCode::kExists,
                     dir + " already exists and is not a directory");
  }
  DIR* d = opendir(dir.c_str());
  if (d == nullptr)
    return ErrnoError(ErrorCode::kIo, "cannot read " + dir, errno);
  bool empty = true;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  closedir(d);
  if (!empty) {
    return MakeError(ErrorCode::kExists,
                     dir +
                         " is not empty; a provider needs a directory of "
                         "its own");
  }
  return Status::Ok();
}

// Removes what WriteProviderFiles wrote unless dismissed, so a failure
// leaves nothing behind.
class DirCleanup {
 public:
  DirCleanup(std::string dir, bool remove_dir)
      : dir_(std::move(dir)), remove_dir_(remove_dir) {}
  DirCleanup(const DirCleanup&) = delete;
  DirCleanup& operator=(const DirCleanup&) = delete;
  ~DirCleanup() {
    if (dismissed_) return;
    ::unlink(Join(dir_, kConfigFile).c_str());
    ::unlink(Join(dir_, kKeyFile).c_str());
    if (remove_dir_) ::rmdir(dir_.c_str());
  }
  void Dismiss() { dismissed_ = true; }

 private:
  std::string dir_;
  bool remove_dir_;
  bool dismissed_ = false;
};

nlohmann::json ConfigJson(const std::string& name, const std::string& id,
                          const std::string& created) {
  return nlohmann::json{{"version", kConfigVersion},
                        {"type", "native"},
                        {"name", name},
                        {"primary_key_id", id},
                        {"created", created},
                        {"key_storage", kKeyStorageFile}};
}

// Creates `dir` (or takes over an existing empty one) and writes
// primary.key, then config.json. Nothing is left behind on failure.
Status WriteProviderFiles(const std::string& name, const std::string& dir,
                          const std::string& id, const std::string& created,
                          const SecureBuffer& key) {
  VCRYPT_RETURN_IF_ERROR(CheckDirUnused(dir));
  const std::string parent = ParentDir(dir);
  VCRYPT_RETURN_IF_ERROR(MakeDirs(parent, 0700));
  bool created_dir = false;
  if (mkdir(dir.c_str(), 0700) == 0) {
    created_dir = true;
    // Make the new directory entry durable like the files in it.
    UniqueFd pfd(open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!pfd.valid() || fsync(pfd.get()) != 0) {
      int err = errno;
      ::rmdir(dir.c_str());
      return ErrnoError(ErrorCode::kIo, "cannot fsync directory " + parent,
                        err);
    }
  } else if (errno == EEXIST) {
    // Someone may have created it since CheckDirUnused: check again.
    VCRYPT_RETURN_IF_ERROR(CheckDirUnused(dir));
    if (chmod(dir.c_str(), 0700) != 0)
      return ErrnoError(ErrorCode::kIo, "cannot chmod 0700 " + dir, errno);
  } else {
    return ErrnoError(ErrorCode::kIo, "cannot create directory " + dir, errno);
  }
  DirCleanup cleanup(dir, created_dir);
  AtomicWriteOptions opts;
  opts.mode = 0600;
  VCRYPT_RETURN_IF_ERROR(
      WriteFileAtomic(Join(dir, kKeyFile), key.span(), opts));
  VCRYPT_RETURN_IF_ERROR(
      WriteFileAtomic(Join(dir, kConfigFile),
                      ConfigJson(name, id, created).dump(2) + "\n", opts));
  cleanup.Dismiss();
  return Status::Ok();
}

// Refuses a directory others could write into (they could swap the key).
Status CheckDirSecure(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    int err = errno;
    return ErrnoError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                      "cannot open native provider directory " + dir, err);
  }
  if (!S_ISDIR(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument, dir + " is not a directory");
  if (st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "refusing native provider directory " + dir +
                         ": it must be owned by uid " +
                         std::to_string(geteuid()) +
                         " and not writable by group or others (chmod 700)");
  }
  return Status::Ok();
}

// Reads primary.key straight into locked memory after checking that only
// its owner can read it.
Result<SecureBuffer> ReadPrimaryKey(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC));
  if (!fd.valid()) {
    int err = errno;
    if (err == ELOOP) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "refusing " + path + ": it is a symbolic link");
    }
    return ErrnoError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                      "cannot open " + path, err);
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0)
    return ErrnoError(ErrorCode::kIo, "cannot stat " + path, errno);
  if (!S_ISREG(st.st_mode)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "refusing " + path + ": not a regular file");
  }
  if (st.st_uid != geteuid()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "refusing " + path + ": owned by uid " +
                         std::to_string(st.st_uid) + ", must be uid " +
                         std::to_string(geteuid()));
  }
  if ((st.st_mode & 07777) != 0600) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o",
                  static_cast<unsigned>(st.st_mode & 07777));
    return MakeError(ErrorCode::kInvalidArgument,
                     "refusing " + path + ": mode " + mode +
                         ", must be 0600 (chmod 600 " + path + ")");
  }
  // One spare byte tells "exactly 32" from "longer".
  SecureBuffer key(kPrimaryKeySize + 1);
  size_t got = 0;
  while (got < key.size()) {
    ssize_t r = ::read(fd.get(), key.data() + got, key.size() - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(ErrorCode::kIo, "cannot read " + path, errno);
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  if (got != kPrimaryKeySize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     path +
                         " is damaged: a primary key is exactly 32 bytes; "
                         "restore the provider from its backup");
  }
  key.Truncate(kPrimaryKeySize);
  return key;
}

struct Config {
  std::string primary_key_id;
  std::string created;
};

Result<Config> ReadConfig(const std::string& path, const std::string& name) {
  VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, path + " is damaged: " + why);
  };
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto str = [&](const char* m) -> const std::string* {
    auto it = j.find(m);
    if (it == j.end() || !it->is_string()) return nullptr;
    return &it->get_ref<const std::string&>();
  };
  auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer())
    return bad("\"version\" is missing");
  if (version->get<int64_t>() != kConfigVersion) {
    return MakeError(ErrorCode::kInvalidArgument,
                     path + " has version " + version->dump() +
                         ", which this vcrypt does not support; upgrade it");
  }
  const std::string* type = str("type");
  if (type == nullptr || *type != "native")
    return bad("\"type\" is not \"native\"");
  const std::string* storage = str("key_storage");
  if (storage == nullptr) return bad("\"key_storage\" is missing");
  if (*storage != kKeyStorageFile) {
    return MakeError(ErrorCode::kInvalidArgument,
                     path + ": primary key storage \"" +
                         storage->substr(0, 16) +
                         "\" is not supported by this vcrypt");
  }
  const std::string* cfg_name = str("name");
  if (cfg_name == nullptr) return bad("\"name\" is missing");
  if (*cfg_name != name) {
    return MakeError(ErrorCode::kInvalidArgument,
                     path + " belongs to provider '" + cfg_name->substr(0, 64) +
                         "', not '" + name + "'");
  }
  const std::string* id = str("primary_key_id");
  if (id == nullptr || !IsUuid(*id))
    return bad("\"primary_key_id\" is missing or not a UUID");
  const std::string* created = str("created");
  if (created == nullptr) return bad("\"created\" is missing");
  return Config{*id, *created};
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
                               SecureBuffer primary_key)
    : name_(std::move(name)),
      dir_(std::move(dir)),
      primary_key_id_(std::move(primary_key_id)),
      created_(std::move(created)),
      primary_key_(std::move(primary_key)) {}

Result<std::unique_ptr<NativeProvider>> NativeProvider::Create(
    const std::string& name, const std::string& dir) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer key, RandomKey(kPrimaryKeySize));
  VCRYPT_ASSIGN_OR_RETURN(std::string id, RandomUuid());
  std::string created = NowRfc3339();
  VCRYPT_RETURN_IF_ERROR(WriteProviderFiles(name, dir, id, created, key));
  return std::unique_ptr<NativeProvider>(new NativeProvider(
      name, dir, std::move(id), std::move(created), std::move(key)));
}

Result<std::unique_ptr<NativeProvider>> NativeProvider::Load(
    const std::string& name, const std::string& dir) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_RETURN_IF_ERROR(CheckDirSecure(dir));
  VCRYPT_ASSIGN_OR_RETURN(Config cfg, ReadConfig(Join(dir, kConfigFile), name));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer key,
                          ReadPrimaryKey(Join(dir, kKeyFile)));
  return std::unique_ptr<NativeProvider>(
      new NativeProvider(name, dir, std::move(cfg.primary_key_id),
                         std::move(cfg.created), std::move(key)));
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
    const std::string& name, const std::string& dir) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_RETURN_IF_ERROR(CheckPassword(password));
  // Fail fast, before the deliberately slow key derivation.
  VCRYPT_RETURN_IF_ERROR(CheckDirUnused(dir));

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
  return RestoreBytes(file, password, name, dir, "backup " + p12_path);
}

Result<std::unique_ptr<NativeProvider>> NativeProvider::RestoreBytes(
    std::string_view der, const SecureBuffer& password, const std::string& name,
    const std::string& dir, const std::string& what) {
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  VCRYPT_RETURN_IF_ERROR(CheckPassword(password));
  VCRYPT_RETURN_IF_ERROR(CheckDirUnused(dir));
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

  std::string created = NowRfc3339();
  VCRYPT_RETURN_IF_ERROR(WriteProviderFiles(name, dir, id, created, key));
  return std::unique_ptr<NativeProvider>(new NativeProvider(
      name, dir, std::move(id), std::move(created), std::move(key)));
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
  return nlohmann::json{{"name", name_},
                        {"type", "native"},
                        {"primary_key_id", primary_key_id_},
                        {"created", created_},
                        {"key_storage", kKeyStorageFile}};
}

}  // namespace vcrypt
