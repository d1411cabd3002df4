// Provider ops: provider.add, .list, .show, .remove, .default, .set, .backup,
// .restore (docs/protocol.md, docs/providers.md).
//
// Touches, of the ControllerState: `providers` and `store` (its default
// provider and provider directories; under `mu`), the "provider:" named
// locks, `options.allow_test_tcti` and the audit sink. Uses KeyAccess
// only to evict a removed provider's KEKs. Calls no other group.
#ifndef VCRYPT_DAEMON_OPS_PROVIDERS_H_
#define VCRYPT_DAEMON_OPS_PROVIDERS_H_

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"

namespace vcrypt {

class ProviderOps {
 public:
  using Json = nlohmann::json;

  ProviderOps(ControllerState& state, KeyAccess& keys)
      : state_(state), keys_(keys) {}

  // `secret` is a standard provider's client key.
  Result<Json> ProviderAdd(const Json& args, const SecureBuffer& secret,
                           const AuditContext& ctx);
  // {"providers": [...]}: each provider's description, state, whether it
  // is the default and how many VMs use it. Also part of `status`.
  Result<Json> ProviderList();
  Result<Json> ProviderShow(const Json& args);
  Result<Json> ProviderRemove(const Json& args, const AuditContext& ctx);
  Result<Json> ProviderDefault(const Json& args);
  // {"name", "kek_cache_max_age": "15m" | "unlimited" | "default"}: how
  // long the provider's KEKs stay usable from the cache; "default" goes
  // back to the type's (docs/providers.md). Applies at once, to the KEKs
  // already cached too.
  Result<Json> ProviderSet(const Json& args, const AuditContext& ctx);
  Result<Json> ProviderBackup(const Json& args, const SecureBuffer& password,
                              const AuditContext& ctx);
  Result<Json> ProviderRestore(const Json& args, const SecureBuffer& password,
                               const AuditContext& ctx);

 private:
  ControllerState& state_;
  KeyAccess& keys_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_PROVIDERS_H_
