// open, open_all and close (docs/protocol.md).
//
// Touches, of the ControllerState: `store` (under `mu`: opening by path
// registers or re-points a disk), `held_closed`, `failures` (each open's
// outcome), the "vm-life:" (shared) and "vol:" named locks,
// `options.bypass_workqueues` and `options.open_all_threads`. Uses
// KeyAccess (the token's provider, the DEK), VolumeLocator (the target
// and its header) and RekeyOps::ActivateMidRekey (a volume whose deep
// rekey was interrupted).
#ifndef VCRYPT_DAEMON_OPS_OPEN_H_
#define VCRYPT_DAEMON_OPS_OPEN_H_

#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/ops_rekey.h"
#include "daemon/volume_locator.h"

namespace vcrypt {

class OpenOps {
 public:
  using Json = nlohmann::json;

  OpenOps(ControllerState& state, KeyAccess& keys, VolumeLocator& locator,
          RekeyOps& rekey_ops)
      : state_(state), keys_(keys), locator_(locator), rekey_ops_(rekey_ops) {}

  // Open with the outcome remembered per LUKS UUID (`failures`).
  Result<Json> Open(const Json& args, const AuditContext& ctx);
  // Opens every volume of the VMs that auto-unlock, a few at a time
  // (options.open_all_threads); one result per volume.
  Result<Json> OpenAll(const Json& args, const AuditContext& ctx);
  // Closes a mapping vcrypt made, and (unless "auto") holds the volume
  // closed against the boot path.
  Result<Json> Close(const Json& args);

 private:
  using Target = VolumeLocator::Target;
  using UnwrappedDek = KeyAccess::UnwrappedDek;

  // The open itself; sets *uuid to the volume's LUKS UUID once known.
  Result<Json> OpenVolume(const Json& args, const AuditContext& ctx,
                          std::string* uuid);

  ControllerState& state_;
  KeyAccess& keys_;
  VolumeLocator& locator_;
  RekeyOps& rekey_ops_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_OPEN_H_
