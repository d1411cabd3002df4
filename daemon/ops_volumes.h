// Volume ops: volume.create and volume.list (docs/protocol.md).
//
// Touches, of the ControllerState: `store` and `providers` (under `mu`),
// `held_closed` (a new block-device volume is held closed), the "vm:" and
// "dev:" named locks and the audit sink. Uses KeyAccess::GetKek (the VM's
// KEK wraps the new DEK) and StatusOps::DiskStatus (volume.list).
#ifndef VCRYPT_DAEMON_OPS_VOLUMES_H_
#define VCRYPT_DAEMON_OPS_VOLUMES_H_

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/ops_status.h"

namespace vcrypt {

class VolumeOps {
 public:
  using Json = nlohmann::json;

  VolumeOps(ControllerState& state, KeyAccess& keys, StatusOps& status_ops)
      : state_(state), keys_(keys), status_ops_(status_ops) {}

  // Formats a device or a new image file as a volume of a VM; nothing is
  // left behind on failure.
  Result<Json> VolumeCreate(const Json& args, const AuditContext& ctx);
  Result<Json> VolumeList(const Json& args);

 private:
  ControllerState& state_;
  KeyAccess& keys_;
  StatusOps& status_ops_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_VOLUMES_H_
