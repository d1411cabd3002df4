// Activation and deactivation of dm-crypt mappings.
#include <libcryptsetup.h>
#include <libdevmapper.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "dmtools/lib_internal.h"
#include "dmtools/responsive.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using dmlib::ClearLibMessage;
using dmlib::DeviceGeometry;
using dmlib::DmInfo;
using dmlib::FindMappingByUuidLocked;
using dmlib::Geometry;
using dmlib::GetDmInfo;
using dmlib::InitCrypt;
using dmlib::IsNonRotational;
using dmlib::LibFail;
using dmlib::LoadLuks2;
using dmlib::LockLibraries;
using dmlib::NoDm;
using dmlib::QueryMappingImpl;
using dmlib::QuietDm;
using dmlib::ReadSmallFile;
using dmlib::ValidateMappingName;

// Activation with the checks common to a DEK and a passphrase; `activate`
// makes the libcryptsetup call with the given flags.
using ActivateCall = std::function<int(crypt_device* cd, uint32_t flags)>;

Result<std::string> ActivateWith(const ActivateParams& params,
                                 const ActivateCall& activate) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(params.device));
  auto lib = LockLibraries();
  const std::string& device = params.device;
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(DeviceGeometry geo, Geometry(device));
  (void)geo;

  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, InitCrypt(device));
  VCRYPT_RETURN_IF_ERROR(LoadLuks2(cd.get(), device));

  VCRYPT_ASSIGN_OR_RETURN(DmInfo existing, GetDmInfo(params.name));
  if (existing.exists) {
    return MakeError(ErrorCode::kBusy, "a mapping named " + params.name +
                                           " already exists (/dev/mapper/" +
                                           params.name + "); close it first");
  }
  const char* uuid_c = crypt_get_uuid(cd.get());
  std::string uuid = uuid_c ? uuid_c : "";
  if (!uuid.empty()) {
    VCRYPT_ASSIGN_OR_RETURN(std::optional<MappingInfo> other,
                            FindMappingByUuidLocked(uuid));
    if (other.has_value()) {
      return MakeError(ErrorCode::kBusy, device + " (LUKS UUID " + uuid +
                                             ") is already open as " +
                                             other->path + "; close it first");
    }
  }

  uint32_t flags = 0;
  if (params.discards) flags |= CRYPT_ACTIVATE_ALLOW_DISCARDS;
  bool bypass_auto = !params.bypass_workqueues.has_value();
  bool bypass = bypass_auto ? IsNonRotational(device).value_or(false)
                            : *params.bypass_workqueues;
  if (bypass) {
    flags |=
        CRYPT_ACTIVATE_NO_READ_WORKQUEUE | CRYPT_ACTIVATE_NO_WRITE_WORKQUEUE;
  }

  ClearLibMessage();
  int r = activate(cd.get(), flags);
  if (r == -EINVAL && bypass && bypass_auto) {
    // An older dm-crypt without the workqueue options: they were only a
    // performance preference here, so activate without them.
    flags &=
        ~(CRYPT_ACTIVATE_NO_READ_WORKQUEUE | CRYPT_ACTIVATE_NO_WRITE_WORKQUEUE);
    ClearLibMessage();
    r = activate(cd.get(), flags);
  }
  if (r < 0) {
    switch (r) {
      case -EPERM:
      case -ENOENT:
        return MakeError(ErrorCode::kCrypto,
                         "the key does not match volume " + device +
                             " (LUKS2 digest check failed)");
      case -EEXIST:
        return MakeError(ErrorCode::kBusy,
                         "a mapping named " + params.name + " already exists");
      case -EBUSY:
        return LibFail(ErrorCode::kBusy,
                       device + " is in use (already mapped or mounted)", r);
      case -ENODEV:
      case -ENOTSUP:
        if (!DeviceMapperAvailable()) return NoDm();
        return LibFail(ErrorCode::kNoDeviceMapper,
                       "cannot activate " + device +
                           " (is the dm-crypt module available?)",
                       r);
      default:
        return LibFail(ErrorCode::kIo, "cannot activate " + device, r);
    }
  }
  cd.reset();  // closes libcryptsetup's loop fd: the mapping now owns it

  // With udevd running libcryptsetup waited for udev to create the node;
  // without udev libdevmapper creates it itself. Make sure either way.
  std::string path = "/dev/mapper/" + params.name;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    QuietDm();
    dm_mknodes(params.name.c_str());
  }
  for (int i = 0; i < 250 && !fs::exists(path, ec); ++i) {
    std::this_thread::sleep_for(20ms);
  }
  if (!fs::exists(path, ec)) {
    Status undo = Deactivate(params.name);
    return MakeError(
        ErrorCode::kIo,
        "activated " + params.name + " but " + path + " did not appear" +
            (undo.ok() ? "; the mapping was removed again"
                       : "; removing it failed: " + undo.error().message));
  }
  return path;
}

}  // namespace

Result<std::string> Activate(const ActivateParams& params,
                             const SecureBuffer& dek) {
  auto lib = LockLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(params.name));
  if (dek.size() != kDekSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the DEK must be " + std::to_string(kDekSize) +
                         " bytes, not " + std::to_string(dek.size()));
  }
  return ActivateWith(params, [&](crypt_device* cd, uint32_t flags) {
    return crypt_activate_by_volume_key(cd, params.name.c_str(), dek.chars(),
                                        dek.size(), flags);
  });
}

Result<std::string> ActivateByPassphrase(const ActivateParams& params,
                                         const SecureBuffer& passphrase) {
  auto lib = LockLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(params.name));
  if (passphrase.size() == 0)
    return MakeError(ErrorCode::kInvalidArgument, "empty passphrase");
  return ActivateWith(params, [&](crypt_device* cd, uint32_t flags) {
    return crypt_activate_by_passphrase(cd, params.name.c_str(), CRYPT_ANY_SLOT,
                                        passphrase.chars(), passphrase.size(),
                                        flags);
  });
}

Status Deactivate(const std::string& name) {
  auto lib = LockLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(name));
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(MappingInfo m, QueryMappingImpl(name));
  if (m.dm_uuid.rfind("CRYPT-", 0) != 0) {
    // Never remove LVM volumes, multipath maps etc. by mistake.
    return MakeError(ErrorCode::kInvalidArgument,
                     name +
                         " is not a dm-crypt mapping made by "
                         "libcryptsetup; not removing it");
  }
  // udev briefly opens a new or changed device to probe it; give such a
  // transient opener a moment before calling the mapping busy.
  for (int i = 0; i < 10 && m.open_count > 0; ++i) {
    std::this_thread::sleep_for(100ms);
    VCRYPT_ASSIGN_OR_RETURN(DmInfo info, GetDmInfo(name));
    if (!info.exists) return Status::Ok();  // someone else removed it
    m.open_count = info.open_count;
  }
  auto busy = [&](int count) {
    return MakeError(ErrorCode::kBusy,
                     "/dev/mapper/" + name + " is in use (open count " +
                         std::to_string(count) +
                         "); stop whatever holds it (a mounted filesystem, a "
                         "running guest)");
  };
  if (m.open_count > 0) return busy(m.open_count);

  // Remember an auto-clear loop device under the mapping so that we can
  // wait for the kernel to release it.
  std::string loop_sys;
  if (m.backing.rfind("/dev/loop", 0) == 0) {
    std::string sys = "/sys/block/" + m.backing.substr(5);
    if (ReadSmallFile(sys + "/loop/autoclear").value_or("") == "1") {
      loop_sys = sys + "/loop/backing_file";
    }
  }

  crypt_device* raw = nullptr;
  int r = crypt_init_by_name(&raw, name.c_str());
  CryptDevicePtr cd(raw);
  if (r < 0) {
    if (r == -ENODEV) return Status::Ok();  // removed in the meantime
    return LibFail(ErrorCode::kIo, "cannot open mapping " + name, r);
  }
  r = crypt_deactivate_by_name(cd.get(), name.c_str(), 0);
  if (r == -EBUSY) {
    auto info = GetDmInfo(name);
    return busy(info.ok() ? info->open_count : 1);
  }
  if (r == -ENODEV) return Status::Ok();
  if (r < 0) return LibFail(ErrorCode::kIo, "cannot remove mapping " + name, r);
  cd.reset();

  if (!loop_sys.empty()) {
    std::error_code ec;
    for (int i = 0; i < 250 && fs::exists(loop_sys, ec); ++i) {
      std::this_thread::sleep_for(20ms);
    }
  }
  return Status::Ok();
}

}  // namespace vcrypt
