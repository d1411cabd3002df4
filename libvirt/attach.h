// `vcryptctl attach` / `detach`: a vcrypt volume as a raw virtio disk of a
// libvirt domain (docs/libvirt.md).
#ifndef VCRYPT_LIBVIRT_ATTACH_H_
#define VCRYPT_LIBVIRT_ATTACH_H_

#include <chrono>
#include <optional>
#include <string>

#include "common/result.h"
#include "libvirt/connection.h"
#include "libvirt/domain_xml.h"
#include "libvirt/volumes.h"

namespace vcrypt {

struct AttachRequest {
  VolumeRef volume;
  std::string domain;
  std::optional<std::string> target;  // else the first free vdX
};

struct AttachOutcome {
  std::string path;         // /dev/mapper/vcrypt-<vm>-<disk>
  std::string target;       // vdX
  bool live = false;        // attached to the running domain
  bool persistent = false;  // added to the persistent configuration
  bool opened = false;      // this call opened the volume
};

// Checks first (names, target, domain exists, volume not attached to it
// yet, target free in the live and the persistent XML), then:
//  - running domain: opens the volume through vcryptd (if not open yet)
//    and attaches the mapping live, and to the persistent configuration
//    when the domain has one;
//  - shut-off domain: checks that vcryptd knows the volume and adds the
//    disk to the configuration only; the libvirt hook opens it when the
//    domain starts.
// If attaching fails, a volume this call opened is closed again.
// kExists when the volume is already attached (the message names its
// target) or the requested target is taken.
Result<AttachOutcome> AttachVolume(Libvirt& lv, VolumeControl& vols,
                                   const AttachRequest& req);

struct DetachRequest {
  VolumeRef volume;
  std::string domain;
  // How long to wait for a running guest to release the disk.
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};
};

struct DetachOutcome {
  std::string path;
  std::string target;
  bool live = false;        // removed from the running domain
  bool persistent = false;  // removed from the persistent configuration
  enum class Close {
    kClosed,
    kNotOpen,
    kInUse,
    kFailed
  } close = Close::kClosed;
  Error close_error;  // why, for kInUse / kFailed
};

// Removes the disk whose source is the volume's mapping from the running
// domain (and waits until the guest has released it) and then from the
// persistent configuration, then closes the volume unless something else
// still uses it. kNotFound when the volume is not attached to the domain.
// kBusy when the guest does not release the disk within `timeout`: the
// persistent configuration and the volume are then left as they were, and
// a later detach finishes the job.
Result<DetachOutcome> DetachVolume(Libvirt& lv, VolumeControl& vols,
                                   const DetachRequest& req);

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_ATTACH_H_
