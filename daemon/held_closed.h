// Volumes an admin closed on this boot stay closed against the boot path.
//
// The unlock units start when udev announces a vcrypt volume's backing
// device, and udev announces it again ("change") whenever something
// writes the device: vcrypt's own header writes (rekey, recovery keys,
// provider change) and `volume create` among them. Without a record, a
// volume an admin closed for maintenance opened itself again moments
// after the next header write (issue 14). `vcryptctl close` records the
// volume here ("held closed"); an automatic open (`open --auto`, which the
// unlock units use) leaves a held volume closed until
//   - the next boot (the record names the boot it was made in),
//   - its device appears anew (hotplug: the record names the device
//     instance, its disk sequence number, which the kernel never reuses
//     within a boot), or
//   - an explicit `vcryptctl open`, which drops the record.
// `volume create` on a block device records its new volume the same way:
// a new volume is opened by its creator, not by the change event its
// header write causes.
//
// Records are files <dir>/<LUKS UUID>.json written atomically; all
// methods are safe to call from several threads (distinct volumes are
// distinct files; one volume's callers are serialised by its volume lock).
#ifndef VCRYPT_DAEMON_HELD_CLOSED_H_
#define VCRYPT_DAEMON_HELD_CLOSED_H_

#include <functional>
#include <optional>
#include <string>

#include "common/result.h"

namespace vcrypt {

// The identity of the device instance at `path` within this boot:
// "diskseq:N" (the whole disk's for a partition), or "dev:MAJOR:MINOR"
// where the kernel has no disk sequence numbers. nullopt for what is not
// a block device (an image file) and for the loop devices libcryptsetup
// attaches for image files (loop/autoclear): those come and go with each
// open, so the record then holds for any device.
std::optional<std::string> DeviceInstance(const std::string& path);

// This boot's id (/proc/sys/kernel/random/boot_id).
std::string BootId();

class HeldClosed {
 public:
  // `instance_of` and `boot_id` are DeviceInstance and BootId() except in
  // tests.
  explicit HeldClosed(
      std::string dir,
      std::function<std::optional<std::string>(const std::string&)>
          instance_of = DeviceInstance,
      std::string boot_id = BootId());

  // Records that the volume `uuid` on `device` was closed on purpose.
  Status Hold(const std::string& uuid, const std::string& device);
  // Drops the record (an explicit open). Missing is fine.
  Status Release(const std::string& uuid);
  // Removes the records of earlier boots (they hold nothing any more);
  // vcryptd does it when it starts, so the directory stays small.
  void ForgetEarlierBoots();
  // Whether an automatic open of `uuid` on `device` must leave it closed.
  // A record it cannot read holds (an admin's close is not overridden
  // because a file is damaged).
  bool IsHeld(const std::string& uuid, const std::string& device) const;

 private:
  std::string Path(const std::string& uuid) const;

  std::string dir_;
  std::function<std::optional<std::string>(const std::string&)> instance_of_;
  std::string boot_id_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_HELD_CLOSED_H_
