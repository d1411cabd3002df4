// Volume ops: volume.create and volume.list (daemon/ops_volumes.h).
#include "daemon/ops_volumes.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/aead.h"
#include "common/handles.h"
#include "common/names.h"
#include "common/random.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::AllMappings;
using controller_ops::BoolArg;
using controller_ops::IsBlockDevice;
using controller_ops::OptStr;
using controller_ops::StrArg;
using controller_ops::Usage;

}  // namespace

// --- volumes ---------------------------------------------------------------

namespace {
// Creates a sparse image file exclusively. The caller unlinks it on failure.
// Creates a new image file (never an existing one, nor through a symlink)
// of `size` bytes and returns it open: the format then works on this very
// file, whatever happens to the path meanwhile. Nothing is left behind on
// failure.
Result<UniqueFd> CreateImageFile(const std::string& path, uint64_t size) {
  UniqueFd fd(open(path.c_str(),
                   O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    int err = errno;
    if (err == EEXIST)
      return MakeError(ErrorCode::kExists,
                       path + " already exists; use --device " + path +
                           " to format an existing file");
    return MakeError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                     "cannot create " + path + ": " + std::strerror(err));
  }
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0 ||
      fsync(fd.get()) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    return MakeError(ErrorCode::kIo,
                     "cannot size " + path + ": " + std::strerror(err));
  }
  return fd;
}
}  // namespace

Result<Json> VolumeOps::VolumeCreate(const Json& args,
                                     const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_ASSIGN_OR_RETURN(std::string disk, StrArg(args, "disk"));
  VCRYPT_RETURN_IF_ERROR(ValidateVolumeNames(vm, disk));
  auto device = OptStr(args, "device");
  auto file = OptStr(args, "file");
  if (device.has_value() == file.has_value())
    return Usage("give exactly one of --device PATH or --file PATH");
  const std::string path = device ? *device : *file;
  if (path.empty() || path[0] != '/')
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "' is not an absolute path");
  uint32_t sector = 4096;
  if (auto it = args.find("sector_size"); it != args.end()) {
    if (!it->is_number_unsigned() || (*it != 512 && *it != 4096))
      return MakeError(ErrorCode::kInvalidArgument,
                       "--sector-size must be 512 or 4096");
    sector = it->get<uint32_t>();
  }
  uint64_t size = 0;
  if (file) {
    auto it = args.find("size");
    if (it == args.end() || !it->is_number_unsigned() ||
        it->get<uint64_t>() == 0)
      return Usage("--file needs --size SIZE");
    size = it->get<uint64_t>();
    if (size % sector != 0)
      return MakeError(ErrorCode::kInvalidArgument,
                       "--size must be a multiple of the sector size (" +
                           std::to_string(sector) + ")");
  } else {
    struct stat st;
    if (stat(path.c_str(), &st) != 0)
      return MakeError(ErrorCode::kNotFound,
                       "device " + path + " does not exist");
    if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode))
      return MakeError(ErrorCode::kInvalidArgument,
                       path + " is neither a block device nor a regular file");
  }

  auto vm_guard = state_.locks.Lock("vm:" + vm);
  auto dev_guard = state_.locks.Lock("dev:" + path);
  VmRecord rec;
  std::shared_ptr<KeyProvider> provider;
  {
    std::lock_guard lock(state_.mu);
    auto it = state_.store.vms().find(vm);
    if (it == state_.store.vms().end())
      return MakeError(ErrorCode::kNotFound,
                       "no VM named '" + vm +
                           "'; create it with 'vcryptctl vm create " + vm +
                           "'");
    rec = it->second;
    if (rec.disks.count(disk))
      return MakeError(ErrorCode::kExists,
                       "VM '" + vm + "' already has a disk '" + disk + "'");
    for (const auto& [vn, v] : state_.store.vms())
      for (const auto& [dn, d] : v.disks)
        if (d.device == path)
          return MakeError(ErrorCode::kExists,
                           path + " already holds volume " + vn + "/" + dn);
    auto pit = state_.providers.find(rec.provider);
    if (pit != state_.providers.end()) provider = pit->second;
  }
  // The KEK this volume's DEK is wrapped under (kek.fetch, dek.wrap).
  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kKekFetch);
  audit.vm = vm;
  audit.disk = disk;
  audit.provider = rec.provider;
  audit.kek_id = rec.kek.kek_id;
  if (!provider) {
    audit.error = MakeError(ErrorCode::kKeyUnavailable,
                            "VM '" + vm + "' uses provider '" + rec.provider +
                                "', which is not configured");
    state_.Audit(audit);
    return *audit.error;
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer kek,
                          keys_.GetKek(*provider, rec.kek, audit));
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer dek, RandomKey(kDekSize));

  bool created_file = false;
  UniqueFd image;
  if (file) {
    VCRYPT_ASSIGN_OR_RETURN(image, CreateImageFile(path, size));
    created_file = true;
  }
  std::string held_uuid;
  auto cleanup = [&](Error e) -> Error {
    if (created_file) ::unlink(path.c_str());
    if (!held_uuid.empty()) (void)state_.held_closed.Release(held_uuid);
    return e;
  };

  FormatParams fp;
  fp.device = path;
  fp.sector_size = sector;
  fp.label = VolumeLabel(vm, disk);
  fp.force = BoolArg(args, "force");
  fp.fd = image.get();  // -1 for --device: FormatVolume opens it once
  const std::string provider_name = provider->name();
  const std::string provider_type(provider->type());
  auto make_token = [&](const std::string& uuid) -> Result<std::string> {
    VcryptToken t;
    t.vm = vm;
    t.disk = disk;
    t.provider_name = provider_name;
    t.provider_type = provider_type;
    t.kek = rec.kek;
    auto wrapped =
        WrapKey(kek, dek, DekAad(uuid, rec.kek.kek_id, provider_name));
    AuditRecord wrap = audit;
    wrap.op = AuditOp::kDekWrap;
    wrap.provider = provider_name;
    wrap.volume = uuid;
    state_.Audit(wrap.Outcome(wrapped));
    VCRYPT_ASSIGN_OR_RETURN(t.dek, std::move(wrapped));
    // A new volume on a block device is held closed (held_closed.h)
    // before its token is written: the change event that the write causes
    // must not have the boot path open it under its creator.
    if (!file) {
      VCRYPT_RETURN_IF_ERROR(state_.held_closed.Hold(uuid, path));
      held_uuid = uuid;
    }
    return t.ToJsonString();
  };
  auto uuid = FormatVolume(fp, dek, make_token);
  if (!uuid.ok()) return cleanup(std::move(uuid).error());

  DiskRecord d;
  d.device = path;
  d.is_file = file.has_value() || !IsBlockDevice(path);
  d.uuid = *uuid;
  d.sector_size = sector;
  {
    std::lock_guard lock(state_.mu);
    auto it = state_.store.vms().find(vm);
    VmRecord next = it != state_.store.vms().end() ? it->second : rec;
    next.disks[disk] = d;
    if (auto st = state_.store.PutVm(vm, next); !st.ok())
      return cleanup(std::move(st).error());
  }
  return Json{{"vm", vm},
              {"disk", disk},
              {"device", path},
              {"uuid", *uuid},
              {"sector_size", sector}};
}

Result<Json> VolumeOps::VolumeList(const Json& args) {
  auto only = OptStr(args, "vm");
  std::map<std::string, VmRecord> vms;
  {
    std::lock_guard lock(state_.mu);
    vms = state_.store.vms();
  }
  if (only && !vms.count(*only))
    return MakeError(ErrorCode::kNotFound, "no VM named '" + *only + "'");
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  Json out = Json::array();
  for (const auto& [vn, vm] : vms) {
    if (only && vn != *only) continue;
    for (const auto& [dn, d] : vm.disks)
      out.push_back(status_ops_.DiskStatus(vn, dn, d, maps));
  }
  return Json{{"volumes", out}};
}

}  // namespace vcrypt
