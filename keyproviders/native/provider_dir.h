// A native provider's directory (the layout is in native_provider.h): its
// checks, config.json, and the primary key, in primary.key or sealed to
// the TPM in primary.sealed. Internal to the native provider: only
// native_provider.cc uses it.
#ifndef VCRYPT_KEYPROVIDERS_NATIVE_PROVIDER_DIR_H_
#define VCRYPT_KEYPROVIDERS_NATIVE_PROVIDER_DIR_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "keyproviders/native/native_provider.h"

namespace vcrypt::native_internal {

inline constexpr size_t kPrimaryKeySize = 32;

// Canonical lower-case RFC 4122 text form, as RandomUuid() makes it.
bool IsUuid(std::string_view s);

// OK when `dir` does not exist or is an empty directory; kExists otherwise.
Status CheckDirUnused(const std::string& dir);

// `storage` checked and completed: with tpm, the TCTI defaulted to
// device:/dev/tpmrm0 and checked against `options` (CheckTcti), the PCRs
// checked (CheckPcrList); without, no TCTI or PCRs allowed.
// kInvalidArgument, one line, otherwise.
Result<NativeKeyStorage> CanonicalStorage(const NativeKeyStorage& storage,
                                          const NativeProviderOptions& options);

// What config.json records.
struct ProviderConfig {
  std::string primary_key_id;
  std::string created;
  NativeKeyStorage storage;  // canonical
};

// Creates `dir` (or takes over an existing empty one) and writes the
// primary key (primary.key; or, with storage.tpm, primary.sealed, sealed
// and unsealed once to check before anything is written), then
// config.json. Nothing is left behind on failure.
Status WriteProviderDir(const std::string& name, const std::string& dir,
                        const ProviderConfig& config, const SecureBuffer& key);

struct LoadedProviderDir {
  ProviderConfig config;
  SecureBuffer key;
};

// Reads what WriteProviderDir wrote, checking the directory, the files and
// the key (NativeProvider::Load states the errors).
Result<LoadedProviderDir> ReadProviderDir(const std::string& name,
                                          const std::string& dir,
                                          const NativeProviderOptions& options);

}  // namespace vcrypt::native_internal

#endif  // VCRYPT_KEYPROVIDERS_NATIVE_PROVIDER_DIR_H_
