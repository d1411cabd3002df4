// Key access shared by the Controller's op groups: which provider
// produces a volume's KEK, the KEK itself (cache first, one provider fetch
// per KEK at a time), eviction from the cache, and the unwrap of a DEK
// (or a deep rekey's passphrase) under the KEK a token names.
//
// Touches, of the ControllerState: `providers` (read, under `mu`),
// `cache`, the "kek:" named locks and the audit sink. Every KEK fetch and
// every unwrap is audited here (daemon/audit.h); evictions are returned
// for the caller to audit. Thread-safe.
#ifndef VCRYPT_DAEMON_KEY_ACCESS_H_
#define VCRYPT_DAEMON_KEY_ACCESS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/kek_cache.h"
#include "dmtools/token.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

class KeyAccess {
 public:
  explicit KeyAccess(ControllerState& state) : state_(state) {}

  // The provider able to produce the KEK of `token`: one of the token's
  // type that recognises the key material (a native provider restored
  // under a new name), else the one the token names. kKeyUnavailable
  // when none is configured, or the named one failed to load (its reason).
  Result<std::shared_ptr<KeyProvider>> ProviderForToken(const VcryptToken& t);
  // The KEK for `ref`, from the cache or the provider (then cached under
  // `audit.vm`), audited as kek.fetch: `audit` carries the request and
  // what the KEK is for (vm, and disk/volume when known); op, provider,
  // kek_id, source and result are filled in here.
  Result<SecureBuffer> GetKek(KeyProvider& provider, const KekRef& ref,
                              AuditRecord audit);
  // How long `provider`'s KEKs may be used from the cache: its override in
  // the state store, else its type's default (unlimited for a provider
  // that is not configured). Takes `mu`.
  KekMaxAge MaxAgeFor(const std::string& provider);
  // Evicts every cached KEK older than its provider's maximum age; one
  // kek.evict record (reason=max-age) per KEK, returned for the caller to
  // Audit. Takes `mu`, then the cache's lock (never both at once).
  std::vector<AuditRecord> EvictExpired(const AuditContext& ctx);
  // Evicts each cached KEK that `match` selects; one kek.evict record per
  // KEK evicted, returned for the caller to Audit (after its locks).
  std::vector<AuditRecord> EvictKeks(
      const AuditContext& ctx,
      const std::function<bool(const KekCache::EntryInfo&)>& match);

  // The DEK of a volume whose header holds `token` (LUKS UUID `uuid`,
  // found at `device`): the KEK from the token's provider (cache first),
  // then the unwrap. Audited as kek.fetch and dek.unwrap. kCrypto when the
  // token does not belong to the volume.
  struct UnwrappedDek {
    std::shared_ptr<KeyProvider> provider;
    SecureBuffer dek;
  };
  Result<UnwrappedDek> UnwrapVolumeDek(const VcryptToken& token,
                                       const std::string& uuid,
                                       const std::string& device,
                                       const AuditContext& ctx);
  // Unwraps `wrapped` under the KEK named by `token` with `aad`: the
  // common part of UnwrapVolumeDek and a deep rekey's passphrase
  // (RekeyOps::ReencryptPassphrase). `what` names it in the kCrypto error.
  Result<UnwrappedDek> UnwrapUnderTokenKek(const VcryptToken& token,
                                           const WrappedKey& wrapped,
                                           const std::vector<uint8_t>& aad,
                                           const std::string& uuid,
                                           const std::string& device,
                                           const std::string& what,
                                           const AuditContext& ctx);

 private:
  ControllerState& state_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_KEY_ACCESS_H_
