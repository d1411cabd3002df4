// Live migration between hosts (docs/cluster.md): vm.incoming and
// vm.depart, which the libvirt hook sends on the destination and on the
// source of a migration.
//
// Neither trusts what the domain XML says beyond naming the volumes: a
// volume is found by its LUKS UUID (block devices through the by-uuid
// link, guarded as VolumeLocator guards it; image files at the recorded
// path), and its own header decides VM, disk, provider and KEK.
//
// Touches, of the ControllerState: `store` (under `mu`), `cache` (through
// KeyAccess), the "vm:" named locks and the audit sink. Uses KeyAccess
// (every DEK unwraps) and VolumeLocator (headers, the by-uuid guard).
#ifndef VCRYPT_DAEMON_OPS_MIGRATION_H_
#define VCRYPT_DAEMON_OPS_MIGRATION_H_

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/volume_locator.h"

namespace vcrypt {

// At most this many volumes in one vm.incoming (a domain has far fewer
// disks; the bound keeps one request's header reads and KEK work finite).
inline constexpr size_t kMaxIncomingVolumes = 64;

class MigrationOps {
 public:
  using Json = nlohmann::json;

  MigrationOps(ControllerState& state, KeyAccess& keys, VolumeLocator& locator)
      : state_(state), keys_(keys), locator_(locator) {}

  // vm.incoming {vm, volumes: [{disk, uuid, image?}], register}: can this
  // host open every listed volume of `vm`? Each is located, its header
  // read (its token must be this VM's and disk's, all under one KEK), and
  // its DEK unwrapped under the KEK from this host's provider and checked
  // against the LUKS digest. Errors name the volume ("VM/DISK: ...").
  // Without `register` nothing is recorded, and the KEK of a VM this host
  // does not know is not left in the cache. With `register`, the VM is
  // (re)recorded from the headers: added when unknown, its KEK and disks
  // updated when known, and no longer away. Answer:
  // {"vm","provider","kek_id","registered" (new here),"disks":[...]}.
  Result<Json> VmIncoming(const Json& args, const AuditContext& ctx);

  // vm.depart {vm, reason}: the VM now runs on another host. Unless one
  // of its volumes is still open here (then nothing changes and the
  // answer lists them), its KEKs leave the cache (kek.evict, audited
  // with the reason) and the VM is marked away, so the boot path neither
  // opens its volumes nor fetches its KEK. `reason`: "migrated" or
  // "saved". Answer: {"vm","departed","evicted","open":[disk...]}.
  Result<Json> VmDepart(const Json& args, const AuditContext& ctx);

 private:
  ControllerState& state_;
  KeyAccess& keys_;
  VolumeLocator& locator_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_MIGRATION_H_
