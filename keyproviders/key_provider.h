// The KeyProvider interface: where VM key-encryption keys (KEKs) come from.
//
// A provider creates a KEK for a VM and later produces the same KEK again
// from a KekRef. The KekRef is everything needed to find the KEK again and
// is stored in every volume token of the VM (and in the inventory), so a
// volume opens from its own header plus its provider alone:
//   native:   kek_id + the KEK wrapped under the provider's primary key
//   standard: kek_id = the KMS unique identifier; data empty
//   trusted:  kek_id + the key provider service's KEK ciphertext
// KekRef::data never holds plaintext key material.
//
// Implementations must be safe to call from several threads at once.
#ifndef VCRYPT_KEYPROVIDERS_KEY_PROVIDER_H_
#define VCRYPT_KEYPROVIDERS_KEY_PROVIDER_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/kek_ref.h"
#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

inline constexpr size_t kKekSize = 32;  // AES-256

struct NewKek {
  KekRef ref;
  SecureBuffer kek;  // kKekSize bytes
};

class KeyProvider {
 public:
  virtual ~KeyProvider() = default;

  virtual const std::string& name() const = 0;
  // "native", "standard" or "trusted".
  virtual std::string_view type() const = 0;

  // A new KEK for `vm`. Nothing is left behind on failure.
  virtual Result<NewKek> CreateKek(std::string_view vm) = 0;
  // The KEK for `ref`. kKeyUnavailable when the provider cannot be reached
  // or does not have the key; kCrypto/kInvalidVolume when `ref` is damaged.
  virtual Result<SecureBuffer> GetKek(const KekRef& ref) = 0;
  // Several KEKs at once (boot storms); results in the order of `refs`.
  // The default calls GetKek for each.
  virtual std::vector<Result<SecureBuffer>> GetKeks(
      std::span<const KekRef> refs);
  // Makes the KEK permanently unusable where the provider supports it
  // (KMS Revoke+Destroy). Default: nothing to do.
  virtual Status DestroyKek(const KekRef& ref);
  // True when `ref` was made by this provider's key material even if the
  // token names another provider (e.g. a native provider restored from a
  // backup under a new name). Default: false.
  virtual bool Recognizes(const KekRef& ref) const;
  // Non-secret description for `provider show` (no key material).
  virtual nlohmann::json Describe() const = 0;
};

// A provider's `dir`/config.json, parsed and checked to be a JSON object
// with "version" == `version` and "type" == `type`. kInvalidArgument
// naming the file and the fault otherwise (kNotFound/kIo from reading it).
Result<nlohmann::json> ReadProviderConfig(const std::string& dir,
                                          std::string_view type, int version);
// A provider directory made all at once: its files are written under
// `dir`.new (0700, created fresh) and the directory is renamed into place by
// Commit() only once every check passed. Until then the destructor removes
// it, so a failed `provider add` leaves nothing behind.
class StagedProviderDir {
 public:
  // kExists when `dir` already exists; removes a stale `dir`.new left by a
  // crash.
  static Result<StagedProviderDir> Begin(const std::string& dir);
  StagedProviderDir(StagedProviderDir&& o) noexcept
      : dir_(std::move(o.dir_)), tmp_(std::move(o.tmp_)) {
    o.tmp_.clear();
  }
  StagedProviderDir& operator=(StagedProviderDir&&) = delete;
  ~StagedProviderDir();

  // Where to write the files now.
  const std::string& path() const { return tmp_; }
  // rename(2) into place (kIo on failure; the staged files are removed).
  Status Commit();

 private:
  StagedProviderDir(std::string dir, std::string tmp)
      : dir_(std::move(dir)), tmp_(std::move(tmp)) {}
  std::string dir_;
  std::string tmp_;  // empty once committed or moved from
};

// The error ReadProviderConfig's callers give for a bad member.
Error ProviderConfigError(const std::string& dir, const std::string& why);

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_KEY_PROVIDER_H_
