#include "daemon/volume_locator.h"

#include <filesystem>
#include <system_error>

#include "common/names.h"
#include "daemon/ops_util.h"
#include "dmtools/responsive.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::Exists;
using controller_ops::GuestContent;
using controller_ops::OptStr;
using controller_ops::SameUuid;
using controller_ops::StrArg;

}  // namespace

Result<VolumeLocator::Target> VolumeLocator::ResolveTarget(const Json& args) {
  Target t;
  if (auto path = OptStr(args, "path")) {
    if (path->empty() || (*path)[0] != '/')
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + *path + "' is not an absolute path");
    t.device = *path;
    // A path the inventory knows: a failure before its header is read is
    // still that volume's.
    std::lock_guard lock(state_.mu);
    for (const auto& [vn, v] : state_.store.vms())
      for (const auto& [dn, d] : v.disks)
        if (d.device == t.device) {
          t.uuid = d.uuid;
          t.is_file = d.is_file;
        }
    return t;
  }
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_ASSIGN_OR_RETURN(std::string disk, StrArg(args, "disk"));
  VCRYPT_RETURN_IF_ERROR(ValidateVolumeNames(vm, disk));
  std::lock_guard lock(state_.mu);
  auto it = state_.store.vms().find(vm);
  if (it == state_.store.vms().end())
    return MakeError(ErrorCode::kNotFound, "no VM named '" + vm + "'");
  auto dit = it->second.disks.find(disk);
  if (dit == it->second.disks.end())
    return MakeError(ErrorCode::kNotFound,
                     "VM '" + vm + "' has no disk '" + disk + "'");
  t.device = dit->second.device;
  t.uuid = dit->second.uuid;
  t.is_file = dit->second.is_file;
  t.vm = vm;
  t.disk = disk;
  return t;
}

Result<VolumeHeader> VolumeLocator::LocateVolume(Target* t) {
  const std::string& uuid = *t->uuid;
  const std::string vol = *t->vm + "/" + *t->disk;
  // The header at `dev` if it is this volume's, else why not.
  auto probe = [&](const std::string& dev) -> Result<VolumeHeader> {
    if (!Exists(dev))
      return MakeError(ErrorCode::kNotFound, dev + " does not exist");
    VCRYPT_ASSIGN_OR_RETURN(VolumeHeader h, ReadHeader(dev));
    if (!SameUuid(h.uuid, uuid))
      return MakeError(
          ErrorCode::kNotFound,
          dev + " now holds another volume (LUKS UUID " + h.uuid + ")");
    return h;
  };
  // The recorded path is a name, and names are recycled (after a reboot,
  // or a removal): it may now lead into a guest's disk (a guest's LV
  // activated on the host, say), with a copy of this volume's header. Such
  // a device is never the volume, as with the by-uuid link below. Image
  // files are not block devices: stacked on nothing.
  std::string guest;
  if (!t->is_file && Exists(t->device)) guest = GuestContent(t->device);
  Result<VolumeHeader> here =
      MakeError(ErrorCode::kNotFound, t->device + " " + guest + ": not opened");
  if (guest.empty()) here = probe(t->device);
  if (here.ok()) return here;
  // A device that is there but does not answer (CheckResponsive) is not
  // looked for elsewhere: its by-uuid link leads to it again. (A device
  // refused as guest content was not read.)
  if (guest.empty()) {
    if (Status alive = CheckResponsive(t->device); !alive.ok())
      return alive.error();
  }
  if (t->is_file) {
    // An image file has no udev link to look for.
    if (!Exists(t->device))
      return MakeError(
          ErrorCode::kNotFound,
          "image file " + t->device + " of volume " + vol + " does not exist");
    if (here.error().code == ErrorCode::kNotFound)
      return MakeError(ErrorCode::kInvalidVolume,
                       "image file " + here.error().message + ", not volume " +
                           vol + " (LUKS UUID " + uuid + ")");
    return here;
  }
  // Block device names (/dev/vdb, /dev/loop3) can change between boots;
  // udev links LUKS devices by their UUID.
  const std::string not_found = "volume " + vol + " (LUKS UUID " + uuid +
                                ") not found: " + here.error().message;
  const std::string link = state_.options.by_uuid_dir + "/" + uuid;
  if (!IsUuidText(uuid) || !Exists(link))
    return MakeError(ErrorCode::kNotFound,
                     not_found + ", and there is no " + link +
                         "; attach its disk, or open it by path");
  std::error_code ec;
  std::string dev = std::filesystem::canonical(link, ec).string();
  if (ec)
    return MakeError(
        ErrorCode::kNotFound,
        not_found + ", and " + link + " cannot be resolved: " + ec.message());
  // Never a link into a guest's disk: it can carry a copy of this
  // volume's header.
  if (std::string why = GuestContent(dev); !why.empty())
    return MakeError(ErrorCode::kNotFound, not_found + ", and " + link +
                                               " -> " + dev + " " + why +
                                               ": not followed");
  auto there = probe(dev);
  if (!there.ok())
    return MakeError(ErrorCode::kNotFound, not_found + ", and " + link +
                                               " -> " + there.error().message);
  // Found under its new name: the inventory follows (atomically; it is an
  // index, so if it cannot be written the next open looks again).
  {
    std::lock_guard lock(state_.mu);
    auto it = state_.store.vms().find(*t->vm);
    if (it != state_.store.vms().end()) {
      auto dit = it->second.disks.find(*t->disk);
      if (dit != it->second.disks.end() && SameUuid(dit->second.uuid, uuid) &&
          dit->second.device != dev) {
        VmRecord next = it->second;
        next.disks[*t->disk].device = dev;
        (void)state_.store.PutVm(*t->vm, next);
      }
    }
  }
  t->device = dev;
  return there;
}

}  // namespace vcrypt
