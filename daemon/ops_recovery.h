// Recovery keys: volume.recovery_key.add and .remove (docs/recovery.md).
//
// Touches, of the ControllerState: the "vol:" named locks and the audit
// sink; the inventory only through VolumeLocator. Uses
// KeyAccess::UnwrapVolumeDek (the DEK a recovery keyslot holds) and
// VolumeLocator. Calls no other group.
#ifndef VCRYPT_DAEMON_OPS_RECOVERY_H_
#define VCRYPT_DAEMON_OPS_RECOVERY_H_

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/volume_locator.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"

namespace vcrypt {

class RecoveryOps {
 public:
  using Json = nlohmann::json;

  RecoveryOps(ControllerState& state, KeyAccess& keys, VolumeLocator& locator)
      : state_(state), keys_(keys), locator_(locator) {}

  // Adds a recovery keyslot; the key goes into *key only, never into the
  // result, the audit record or an error.
  Result<Json> RecoveryKeyAdd(const Json& args, const AuditContext& ctx,
                              SecureBuffer* key);
  Result<Json> RecoveryKeyRemove(const Json& args, const AuditContext& ctx);

 private:
  using Target = VolumeLocator::Target;
  using UnwrappedDek = KeyAccess::UnwrappedDek;

  // The volume a recovery-key request names, its header and vcrypt token,
  // checked as open checks them.
  struct RecoveryTarget {
    Target target;
    VolumeHeader header;
    VcryptToken token;
  };
  Result<RecoveryTarget> ResolveRecoveryTarget(const Json& args);
  Result<RecoveryState> RecoveryStateOf(const RecoveryTarget& t);
  // The DEK of `t` from its provider (kek.fetch, dek.unwrap audited),
  // checked against the LUKS2 digest.
  Result<SecureBuffer> RecoveryDek(const RecoveryTarget& t,
                                   const AuditContext& ctx);

  ControllerState& state_;
  KeyAccess& keys_;
  VolumeLocator& locator_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_RECOVERY_H_
