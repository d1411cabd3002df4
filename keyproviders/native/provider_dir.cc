#include "keyproviders/native/provider_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/atomic_file.h"
#include "common/handles.h"
#include "common/hex.h"
#include "keyproviders/tpm/seal.h"
#include "keyproviders/tpm/tpm_context.h"

namespace vcrypt::native_internal {
namespace {

constexpr int kConfigVersion = 1;
constexpr const char* kConfigFile = "config.json";
constexpr const char* kKeyFile = "primary.key";
constexpr const char* kSealedFile = "primary.sealed";
constexpr std::string_view kKeyStorageFile = "file";
constexpr std::string_view kKeyStorageTpm = "tpm";
constexpr std::string_view kKeyCheckLabel = "vcrypt-native-key-check-v1";

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

// "PCRs 0,7", or "no PCR policy".
std::string PcrText(const std::vector<int>& pcrs) {
  if (pcrs.empty()) return "no PCR policy";
  std::string s = "PCRs ";
  for (size_t i = 0; i < pcrs.size(); ++i)
    s += (i ? "," : "") + std::to_string(pcrs[i]);
  return s;
}

// HMAC-SHA256(key, label 0x00 primary_key_id), hex: says whether an
// unsealed key is this provider's without saying anything about the key.
Result<std::string> KeyCheck(const SecureBuffer& key, const std::string& id) {
  std::string data(kKeyCheckLabel);
  data.push_back('\0');
  data += id;
  uint8_t mac[32];
  size_t len = 0;
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(),
                key.size(), reinterpret_cast<const uint8_t*>(data.data()),
                data.size(), mac, sizeof(mac), &len) == nullptr ||
      len != sizeof(mac))
    return MakeError(ErrorCode::kInternal, "OpenSSL failed to compute an HMAC");
  return HexEncode(std::span<const uint8_t>(mac, len));
}

// Removes what WriteProviderDir wrote unless dismissed, so a failure
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
    ::unlink(Join(dir_, kSealedFile).c_str());
    if (remove_dir_) ::rmdir(dir_.c_str());
  }
  void Dismiss() { dismissed_ = true; }

 private:
  std::string dir_;
  bool remove_dir_;
  bool dismissed_ = false;
};

nlohmann::json ConfigJson(const std::string& name, const ProviderConfig& c,
                          const std::string& key_check) {
  nlohmann::json j{
      {"version", kConfigVersion},
      {"type", "native"},
      {"name", name},
      {"primary_key_id", c.primary_key_id},
      {"created", c.created},
      {"key_storage", c.storage.tpm ? kKeyStorageTpm : kKeyStorageFile}};
  if (c.storage.tpm) {
    j["tcti"] = c.storage.tcti;
    j["pcrs"] = c.storage.pcrs;
    j["key_check"] = key_check;
  }
  return j;
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

// Reads a key file (primary.key or primary.sealed) straight into locked
// memory after checking that only its owner can read it. More than `max`
// bytes is kInvalidArgument ("damaged"); the caller checks the size.
Result<SecureBuffer> ReadKeyFile(const std::string& path, size_t max) {
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
  // One spare byte tells "exactly max" from "longer".
  SecureBuffer buf(max + 1);
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t r = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(ErrorCode::kIo, "cannot read " + path, errno);
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  if (got > max) {
    return MakeError(ErrorCode::kInvalidArgument,
                     path +
                         " is damaged (too large); restore the provider from "
                         "its backup");
  }
  buf.Truncate(got);
  return buf;
}

Result<SecureBuffer> ReadPrimaryKey(const std::string& path) {
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer key, ReadKeyFile(path, kPrimaryKeySize));
  if (key.size() != kPrimaryKeySize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     path +
                         " is damaged: a primary key is exactly 32 bytes; "
                         "restore the provider from its backup");
  }
  return key;
}

// The key in primary.sealed, unsealed by the TPM, checked against
// config.json's key_check.
Result<SecureBuffer> UnsealPrimaryKey(const std::string& name,
                                      const std::string& dir,
                                      const ProviderConfig& c,
                                      const std::string& key_check) {
  const std::string path = Join(dir, kSealedFile);
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer blob,
                          ReadKeyFile(path, kMaxSealedBlobSize));
  auto key = UnsealSecret(c.storage.tcti, blob.span(), c.storage.pcrs);
  if (!key.ok()) {
    Error e = std::move(key).error();
    if (e.code == ErrorCode::kKeyUnavailable) {
      e.message = "provider '" + name +
                  "': the primary key is sealed to another TPM or its PCR "
                  "policy no longer matches (" +
                  PcrText(c.storage.pcrs) + "): " + e.message;
    } else {
      e.message = "provider '" + name + "': cannot unseal the primary key in " +
                  path + " (TCTI " + c.storage.tcti + "): " + e.message;
    }
    return e;
  }
  VCRYPT_ASSIGN_OR_RETURN(std::string check, KeyCheck(*key, c.primary_key_id));
  if (key->size() != kPrimaryKeySize || check != key_check) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "provider '" + name + "': " + path +
                         " holds another key than config.json's primary "
                         "key " +
                         c.primary_key_id +
                         " (copied from another provider?); restore the "
                         "provider from its backup");
  }
  return std::move(key).value();
}

}  // namespace

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

Result<NativeKeyStorage> CanonicalStorage(
    const NativeKeyStorage& storage, const NativeProviderOptions& options) {
  NativeKeyStorage s = storage;
  if (!s.tpm) {
    if (!s.tcti.empty() || !s.pcrs.empty())
      return MakeError(ErrorCode::kInvalidArgument,
                       "a TCTI or PCRs go with a TPM-sealed primary key only "
                       "(--tpm)");
    return s;
  }
  if (s.tcti.empty()) s.tcti = kDefaultTcti;
  VCRYPT_RETURN_IF_ERROR(CheckTcti(s.tcti, options.allow_test_tcti));
  if (!s.pcrs.empty()) VCRYPT_RETURN_IF_ERROR(CheckPcrList(s.pcrs));
  return s;
}

Status WriteProviderDir(const std::string& name, const std::string& dir,
                        const ProviderConfig& config, const SecureBuffer& key) {
  VCRYPT_RETURN_IF_ERROR(CheckDirUnused(dir));
  // Sealed (and unsealed once: a blob that this TPM will not give back is
  // refused now, not at the next start) before anything is written.
  std::vector<uint8_t> sealed;
  std::string key_check;
  if (config.storage.tpm) {
    const NativeKeyStorage& s = config.storage;
    auto blob = SealSecret(s.tcti, key, s.pcrs);
    if (!blob.ok()) {
      Error e = std::move(blob).error();
      e.message = "cannot seal the primary key to the TPM (TCTI " + s.tcti +
                  "): " + e.message;
      return e;
    }
    auto back = UnsealSecret(s.tcti, *blob, s.pcrs);
    if (!back.ok() || !back->Equals(key)) {
      return MakeError(ErrorCode::kIo,
                       "the TPM (TCTI " + s.tcti +
                           ") does not give back the primary key it sealed" +
                           (back.ok() ? "" : ": " + back.error().message));
    }
    sealed = std::move(blob).value();
    VCRYPT_ASSIGN_OR_RETURN(key_check, KeyCheck(key, config.primary_key_id));
  }
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
  if (config.storage.tpm) {
    VCRYPT_RETURN_IF_ERROR(WriteFileAtomic(
        Join(dir, kSealedFile), std::span<const uint8_t>(sealed), opts));
  } else {
    VCRYPT_RETURN_IF_ERROR(
        WriteFileAtomic(Join(dir, kKeyFile), key.span(), opts));
  }
  VCRYPT_RETURN_IF_ERROR(WriteFileAtomic(
      Join(dir, kConfigFile),
      ConfigJson(name, config, key_check).dump(2) + "\n", opts));
  cleanup.Dismiss();
  return Status::Ok();
}

Result<LoadedProviderDir> ReadProviderDir(
    const std::string& name, const std::string& dir,
    const NativeProviderOptions& options) {
  VCRYPT_RETURN_IF_ERROR(CheckDirSecure(dir));
  const std::string path = Join(dir, kConfigFile);
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
  if (*storage != kKeyStorageFile && *storage != kKeyStorageTpm) {
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
  LoadedProviderDir out;
  out.config.primary_key_id = *id;
  out.config.created = *created;
  if (*storage == kKeyStorageFile) {
    VCRYPT_ASSIGN_OR_RETURN(out.key, ReadPrimaryKey(Join(dir, kKeyFile)));
    return out;
  }

  NativeKeyStorage& s = out.config.storage;
  s.tpm = true;
  const std::string* tcti = str("tcti");
  if (tcti == nullptr) return bad("\"tcti\" is missing");
  s.tcti = *tcti;
  // The TCTI decides which library tpm2-tss loads: checked before any use.
  if (auto st = CheckTcti(s.tcti, options.allow_test_tcti); !st.ok())
    return MakeError(ErrorCode::kInvalidArgument,
                     path + ": " + st.error().message);
  auto pcrs = j.find("pcrs");
  if (pcrs == j.end() || !pcrs->is_array() || pcrs->size() > 24)
    return bad("\"pcrs\" is missing or not a list of PCRs");
  for (const auto& p : *pcrs) {
    if (!p.is_number_integer() || p.get<int64_t>() < 0 || p.get<int64_t>() > 23)
      return bad("\"pcrs\" is not a list of PCRs 0 to 23");
    s.pcrs.push_back(p.get<int>());
  }
  if (!s.pcrs.empty()) {
    if (auto st = CheckPcrList(s.pcrs); !st.ok())
      return bad("\"pcrs\": " + st.error().message);
  }
  const std::string* key_check = str("key_check");
  if (key_check == nullptr || key_check->size() != 64 ||
      key_check->find_first_not_of("0123456789abcdef") != std::string::npos)
    return bad("\"key_check\" is missing or not 64 hex digits");
  VCRYPT_ASSIGN_OR_RETURN(out.key,
                          UnsealPrimaryKey(name, dir, out.config, *key_check));
  return out;
}

}  // namespace vcrypt::native_internal
