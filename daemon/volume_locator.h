// Where the volume a request names lives: from VM/DISK through the
// inventory, or from a path directly; and, for VM/DISK, its header, found
// by LUKS UUID when the recorded device path has gone stale.
//
// Touches, of the ControllerState: `store` (under `mu`; LocateVolume
// updates a disk's device path when it finds the volume elsewhere) and
// `options.by_uuid_dir`. Reads headers (dmtools/volume.h); takes no named
// lock. Thread-safe.
#ifndef VCRYPT_DAEMON_VOLUME_LOCATOR_H_
#define VCRYPT_DAEMON_VOLUME_LOCATOR_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/result.h"
#include "daemon/controller_state.h"
#include "dmtools/volume.h"

namespace vcrypt {

class VolumeLocator {
 public:
  explicit VolumeLocator(ControllerState& state) : state_(state) {}

  // Where a request's target lives: from "vm"+"disk" via the inventory, or
  // from "path" directly.
  struct Target {
    std::string device;
    std::optional<std::string> vm, disk;  // as named by the caller
    // From the inventory: for vm+disk, or a path that an inventory disk
    // names.
    std::optional<std::string> uuid;
    bool is_file = false;
  };
  // kNotFound for an unknown VM or disk, kInvalidArgument for a relative
  // path or an invalid name, kUsage when neither is given.
  Result<Target> ResolveTarget(const nlohmann::json& args);
  // For a target named VM/DISK: the header of the volume with the
  // inventory's LUKS UUID. When the inventory's device path is missing or
  // holds something else, a block-device volume is looked up as
  // by_uuid_dir/<uuid>; when found there, target->device and the
  // inventory are updated to the device it links to. Never a device that
  // is guest content (controller_ops::GuestContent).
  Result<VolumeHeader> LocateVolume(Target* target);

 private:
  ControllerState& state_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_VOLUME_LOCATOR_H_
