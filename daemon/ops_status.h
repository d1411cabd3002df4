// What vcryptd knows about volumes without opening them: status, each
// disk's state for vm.show and volume.list (DiskStatus), and cache.evict.
//
// Touches, of the ControllerState: `store` (read, under `mu`), `cache`,
// `failures`, `options.by_uuid_dir` and the audit sink; takes no named
// lock. Calls ProviderOps::ProviderList (status lists the providers) and
// KeyAccess::EvictKeks (cache.evict).
#ifndef VCRYPT_DAEMON_OPS_STATUS_H_
#define VCRYPT_DAEMON_OPS_STATUS_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"
#include "daemon/audit.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/ops_providers.h"
#include "daemon/state.h"
#include "dmtools/volume.h"

namespace vcrypt {

class StatusOps {
 public:
  using Json = nlohmann::json;

  StatusOps(ControllerState& state, KeyAccess& keys, ProviderOps& provider_ops)
      : state_(state), keys_(keys), provider_ops_(provider_ops) {}

  Result<Json> GetStatus();
  Result<Json> CacheEvict(const Json& args, const AuditContext& ctx);
  // The state of disk `disk` of VM `vm` (record `d`), given every dm
  // mapping (controller_ops::AllMappings): "unlocked", "unavailable" or
  // "locked", with the mapping or the reason (docs/protocol.md). Reads the
  // header for its recovery keyslot; notes in `failures` since when a
  // device is missing.
  Json DiskStatus(const std::string& vm, const std::string& disk,
                  const DiskRecord& d, const std::vector<MappingInfo>& maps);

 private:
  ControllerState& state_;
  KeyAccess& keys_;
  ProviderOps& provider_ops_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_STATUS_H_
