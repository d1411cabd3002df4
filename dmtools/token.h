// The `vcrypt` LUKS2 token: versioned JSON that carries everything needed,
// besides the key provider, to recover a volume's DEK.
//
// Schema, version 1 (docs/format.md is the reference):
// {
//   "type": "vcrypt",                 LUKS2 token type
//   "keyslots": [],                   bound to no keyslot
//   "vcrypt_version": 1,
//   "vm": "<vm>", "disk": "<disk>",
//   "provider": {"name": "<name>", "type": "native|standard|trusted"},
//   "kek": {"id": "<kek id>", "data": { provider-specific, see KekRef }},
//   "dek": WrappedKey JSON (AES-256-GCM, AAD = DekAad(uuid, kek id, name))
// }
// Decoding is strict; every refusal is kInvalidVolume with a one-line
// message naming the offending member (never key material):
//  - text over kMaxTokenSize bytes, malformed JSON, a non-object, or an
//    object with a duplicated member (readers could disagree on which
//    copy counts);
//  - "type" not "vcrypt"; "vcrypt_version" not an integer; an integer
//    other than kTokenVersion gives "unsupported vcrypt token version N
//    (this vcryptd supports 1); upgrade vcrypt";
//  - any member missing, of the wrong JSON type, or unknown (top level,
//    "provider" and "kek"; "kek.data" is provider-specific and free-form
//    but must be an object);
//  - "keyslots" not exactly [];
//  - vm/disk failing ValidateVolumeNames, provider name failing
//    ValidateProviderName, provider type not native|standard|trusted;
//  - kek.id empty or longer than kMaxKekIdLength bytes;
//  - "dek" refused by WrappedKey::FromJson.
// Parse never throws. ToJsonString does not validate (Parse does) and
// emits members in a stable (sorted) order.
#ifndef VCRYPT_DMTOOLS_TOKEN_H_
#define VCRYPT_DMTOOLS_TOKEN_H_

#include <string>
#include <string_view>

#include "common/aead.h"
#include "common/kek_ref.h"
#include "common/result.h"

namespace vcrypt {

inline constexpr int kTokenVersion = 1;
inline constexpr size_t kMaxTokenSize = 8192;  // well inside the 16 KiB area
inline constexpr std::string_view kTokenType = "vcrypt";
inline constexpr size_t kMaxKekIdLength = 256;

struct VcryptToken {
  int version = kTokenVersion;
  std::string vm;
  std::string disk;
  std::string provider_name;
  std::string provider_type;
  KekRef kek;
  WrappedKey dek;

  std::string ToJsonString() const;
  static Result<VcryptToken> Parse(std::string_view json);
};

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_TOKEN_H_
