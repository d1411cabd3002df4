// VM ops: vm.create, vm.list, vm.show, vm.set, vm.register, vm.unregister
// and vm.delete (docs/protocol.md). vm.rekey is RekeyOps'.
//
// Touches, of the ControllerState: `store` and `providers` (under `mu`),
// `cache` (a new VM's KEK; what is cached), `failures` (forgotten with
// the VM), the "vm:" and "vm-life:" named locks and the audit sink.
// Uses KeyAccess (register unwraps every DEK; unregister evicts the
// VM's KEKs), VolumeLocator (delete --erase finds every disk first) and
// StatusOps::DiskStatus (vm.show).
#ifndef VCRYPT_DAEMON_OPS_VMS_H_
#define VCRYPT_DAEMON_OPS_VMS_H_

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/ops_status.h"
#include "daemon/volume_locator.h"

namespace vcrypt {

class VmOps {
 public:
  using Json = nlohmann::json;

  VmOps(ControllerState& state, KeyAccess& keys, VolumeLocator& locator,
        StatusOps& status_ops)
      : state_(state),
        keys_(keys),
        locator_(locator),
        status_ops_(status_ops) {}

  Result<Json> VmCreate(const Json& args, const AuditContext& ctx);
  Result<Json> VmList();
  Result<Json> VmShow(const Json& args);
  Result<Json> VmSet(const Json& args);
  // Rebuilds a VM's inventory entry from its volumes' headers: nothing is
  // registered that this host could not open.
  Result<Json> VmRegister(const Json& args, const AuditContext& ctx);
  // vm.unregister, or vm.delete when `is_delete` (then --erase and
  // --destroy-key apply). Waits for the VM's opens to end, and none
  // starts while it runs ("vm-life:").
  Result<Json> VmUnregister(const Json& args, bool is_delete,
                            const AuditContext& ctx);

 private:
  using Target = VolumeLocator::Target;
  using UnwrappedDek = KeyAccess::UnwrappedDek;

  ControllerState& state_;
  KeyAccess& keys_;
  VolumeLocator& locator_;
  StatusOps& status_ops_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_VMS_H_
