// FormatVolume: checks on the device, libblkid signature probing, the
// LUKS2 format and the wipe that undoes a format that failed part-way.
#include <blkid/blkid.h>
#include <fcntl.h>
#include <libcryptsetup.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/handles.h"
#include "common/names.h"
#include "dmtools/lib_internal.h"
#include "dmtools/responsive.h"
#include "dmtools/stacking.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

using dmlib::CheckTokenJson;
using dmlib::DeviceGeometry;
using dmlib::ErrnoText;
using dmlib::Geometry;
using dmlib::InitCrypt;
using dmlib::LibFail;
using dmlib::LockLibraries;
using dmlib::LoopDevicesBackedBy;

// ---------------------------------------------------------------------------
// Signature probing (libblkid).

using BlkidProbePtr =
    std::unique_ptr<blkid_struct_probe,
                    FnDeleter<blkid_struct_probe, blkid_free_probe>>;

struct Signature {
  // "a LUKS header (UUID ...)", "an ext4 signature", "a dos partition
  // table", ...; empty when the device carries no known signature.
  std::string description;
  std::optional<std::string> luks_uuid;  // set for a LUKS header
};

// The first signature libblkid finds on `device` (superblocks, including
// LUKS1/LUKS2 headers, and partition tables).
Result<Signature> ProbeSignature(const std::string& device) {
  BlkidProbePtr pr(blkid_new_probe_from_filename(device.c_str()));
  if (!pr) {
    return MakeError(
        ErrorCode::kIo,
        "cannot probe " + device + " for signatures: " + ErrnoText(errno));
  }
  blkid_probe_enable_superblocks(pr.get(), 1);
  blkid_probe_set_superblocks_flags(
      pr.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_MAGIC);
  blkid_probe_enable_partitions(pr.get(), 1);
  blkid_probe_set_partitions_flags(pr.get(), BLKID_PARTS_MAGIC);
  int r = blkid_do_safeprobe(pr.get());
  Signature sig;
  if (r == 1) return sig;
  if (r == -2) {
    sig.description = "more than one (ambivalent) signature";
    return sig;
  }
  if (r < 0) {
    return MakeError(ErrorCode::kIo,
                     "cannot probe " + device + " for signatures");
  }
  const char* value = nullptr;
  if (blkid_probe_lookup_value(pr.get(), "TYPE", &value, nullptr) == 0 &&
      value != nullptr) {
    std::string type(value);
    if (type == "crypto_LUKS") {
      sig.description = "a LUKS header";
      sig.luks_uuid = "";
      if (blkid_probe_lookup_value(pr.get(), "UUID", &value, nullptr) == 0 &&
          value != nullptr) {
        sig.luks_uuid = value;
        sig.description += " (UUID " + std::string(value) + ")";
      }
      return sig;
    }
    sig.description = "a " + type + " signature";
    return sig;
  }
  if (blkid_probe_lookup_value(pr.get(), "PTTYPE", &value, nullptr) == 0 &&
      value != nullptr) {
    sig.description = "a " + std::string(value) + " partition table";
    return sig;
  }
  sig.description = "an unidentified signature";
  return sig;
}

// Overwrites [0, length) of `device` with zeros and syncs. Used to undo a
// format that did not complete, so no half-made LUKS header remains.
Status ZeroHeaderArea(const std::string& device, uint64_t length) {
  UniqueFd fd(open(device.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return MakeError(
        ErrorCode::kIo,
        "cannot open " + device + " to wipe the header: " + ErrnoText(errno));
  }
  std::vector<uint8_t> zeros(1 << 20, 0);
  uint64_t off = 0;
  while (off < length) {
    size_t n =
        static_cast<size_t>(std::min<uint64_t>(zeros.size(), length - off));
    ssize_t w = pwrite(fd.get(), zeros.data(), n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      return MakeError(ErrorCode::kIo, "cannot wipe the header of " + device +
                                           ": " + ErrnoText(errno));
    }
    off += static_cast<uint64_t>(w);
  }
  if (fsync(fd.get()) != 0) {
    return MakeError(ErrorCode::kIo,
                     "cannot sync " + device + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> FormatVolume(const FormatParams& params,
                                 const SecureBuffer& dek,
                                 const TokenMaker& make_token) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(params.device));
  auto lib = LockLibraries();
  const std::string& device = params.device;
  if (params.sector_size != 512 && params.sector_size != 4096) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "sector size " + std::to_string(params.sector_size) +
                         " is not supported; use 512 or 4096");
  }
  if (dek.size() != kDekSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the DEK must be " + std::to_string(kDekSize) +
                         " bytes, not " + std::to_string(dek.size()));
  }
  if (params.label.empty() || params.label.size() > kMaxLabelLength) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the LUKS2 label must be 1 to " +
                         std::to_string(kMaxLabelLength) + " bytes");
  }
  if (!make_token) {
    return MakeError(ErrorCode::kInternal, "FormatVolume without a TokenMaker");
  }

  // The path is resolved once. Every check below and the format itself
  // work on the inode this open found, through /proc/self/fd/N, so a
  // symlink or file swapped in at the path meanwhile cannot redirect the
  // format (the checks passing on one device, the format hitting another).
  // O_NONBLOCK: opening a FIFO put there must not hang.
  UniqueFd pin;
  if (params.fd >= 0) {
    pin.reset(fcntl(params.fd, F_DUPFD_CLOEXEC, 0));
  } else {
    pin.reset(
        open(device.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  }
  if (!pin.valid()) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return MakeError(ErrorCode::kNotFound,
                       "device or file " + device + " does not exist");
    }
    return MakeError(ErrorCode::kIo,
                     "cannot open " + device + ": " + ErrnoText(errno));
  }
  const std::string path = "/proc/self/fd/" + std::to_string(pin.get());
  // Errors name what the caller named, not the /proc path.
  auto named = [&](Error e) {
    for (size_t at; (at = e.message.find(path)) != std::string::npos;)
      e.message.replace(at, path.size(), device);
    return e;
  };
  // Never format guest content, root or not, force or not: a vcrypt
  // mapping, or anything stacked on one (a guest's LV that the host
  // activated), is a VM's disk in clear, and a header written there is
  // written into that VM's disk (docs/boot.md, "Guest content stays the
  // guest's"). Decided by the device number of what `pin` found, so a path
  // swapped meanwhile changes nothing. A stack that cannot be read might be
  // guest content: refused too.
  auto below = VcryptMappingBelowFd(pin.get());
  if (!below.ok()) {
    return MakeError(below.error().code, "cannot tell whether " + device +
                                             " holds a VM's disk in clear (" +
                                             below.error().message +
                                             "); refusing to format it");
  }
  if (*below) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " is guest content (on vcrypt mapping " +
                         **below +
                         "): it holds a VM's disk in clear; refusing to "
                         "format it");
  }
  auto geo_r = Geometry(path);
  if (!geo_r.ok()) return named(std::move(geo_r).error());
  const DeviceGeometry geo = *geo_r;
  if (geo.size < kMinVolumeSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " is " + std::to_string(geo.size) +
                         " bytes; a vcrypt volume needs at least " +
                         std::to_string(kMinVolumeSize >> 20) + " MiB (" +
                         std::to_string(kLuks2HeaderSize >> 20) +
                         " MiB LUKS2 header and 1 MiB of data)");
  }
  if (geo.size % params.sector_size != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " size " + std::to_string(geo.size) +
                         " is not a multiple of the sector size " +
                         std::to_string(params.sector_size));
  }
  if (geo.logical_block > params.sector_size) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " has " + std::to_string(geo.logical_block) +
                         "-byte logical blocks; sector size " +
                         std::to_string(params.sector_size) +
                         " is not possible on it");
  }

  // Never format something in use, even with force: a mounted file system
  // or an open mapping would be corrupted underneath its user.
  if (geo.is_block) {
    UniqueFd excl(open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    if (!excl.valid() && errno == EBUSY) {
      return MakeError(ErrorCode::kBusy,
                       device +
                           " is in use (mounted, mapped or held by "
                           "another program); release it first");
    }
  } else {
    struct stat st;
    if (fstat(pin.get(), &st) != 0) {
      return MakeError(ErrorCode::kIo,
                       "cannot stat " + device + ": " + ErrnoText(errno));
    }
    auto loops = LoopDevicesBackedBy(st.st_dev, st.st_ino);
    if (!loops.empty()) {
      return MakeError(ErrorCode::kBusy, device + " is in use (attached to " +
                                             loops.front() +
                                             "); close whatever uses it first");
    }
  }

  auto before_r = ProbeSignature(path);
  if (!before_r.ok()) return named(std::move(before_r).error());
  const Signature before = *before_r;
  if (!params.force && !before.description.empty()) {
    return MakeError(ErrorCode::kExists,
                     device + " already contains " + before.description +
                         "; refusing to overwrite it without --force");
  }

  auto cd_r = InitCrypt(path);
  if (!cd_r.ok()) return named(std::move(cd_r).error());
  CryptDevicePtr cd = std::move(cd_r).value();

  // Undoes a format that failed after it began writing: the whole LUKS2
  // area is zeroed again (crypt_format zeroes it before writing the
  // header, so nothing of value is lost by zeroing it), so that no
  // half-made volume is left for udev, blkid or a later open to find.
  auto undo = [&](Error e) -> Error {
    uint64_t off = crypt_get_data_offset(cd.get()) * 512;
    uint64_t len =
        std::min<uint64_t>(std::max<uint64_t>(off, kLuks2HeaderSize), geo.size);
    cd.reset();  // release libcryptsetup's fds and locks first
    Status st = ZeroHeaderArea(path, len);
    if (!st.ok()) {
      e.message +=
          "; wiping the partial header also failed: " + st.error().message;
    }
    return e;
  };

  // The LUKS2 digest over the volume key: PBKDF2 with libcryptsetup's
  // minimum iteration count instead of a benchmarked one (~125 ms of
  // hashing at every open, and a multi-second benchmark at every format).
  // Iterations only slow down guessing of low-entropy secrets; the DEK is
  // 512 random bits. No keyslot is created, so this PBKDF is used for
  // nothing else.
  struct crypt_pbkdf_type digest_kdf = {};
  digest_kdf.type = CRYPT_KDF_PBKDF2;
  digest_kdf.hash = "sha256";
  digest_kdf.iterations = 1000;
  digest_kdf.flags = CRYPT_PBKDF_NO_BENCHMARK;

  struct crypt_params_luks2 p = {};
  p.pbkdf = &digest_kdf;
  p.sector_size = params.sector_size;
  p.label = params.label.c_str();
  p.subsystem = kSubsystem.data();
  int r = crypt_format(cd.get(), CRYPT_LUKS2, "aes", "xts-plain64", nullptr,
                       dek.chars(), dek.size(), &p);
  if (r < 0) {
    Error e = LibFail(r == -EBUSY ? ErrorCode::kBusy : ErrorCode::kIo,
                      "cannot format " + device, r);
    // crypt_format can fail before it writes anything (then the device is
    // as it was and must stay so) or part-way through. Wipe only when a
    // LUKS header that was not there before is now found.
    cd.reset();
    auto after = ProbeSignature(path);
    bool ours = after.ok() && after->luks_uuid.has_value() &&
                after->luks_uuid != before.luks_uuid;
    if (!ours) return e;
    Status st =
        ZeroHeaderArea(path, std::min<uint64_t>(kLuks2HeaderSize, geo.size));
    if (!st.ok()) {
      e.message +=
          "; wiping the partial header also failed: " + st.error().message;
    }
    return e;
  }
  uint64_t data_offset = crypt_get_data_offset(cd.get()) * 512;
  if (data_offset + (1 << 20) > geo.size) {
    return undo(MakeError(ErrorCode::kInvalidArgument,
                          device + " is too small for the LUKS2 header (" +
                              std::to_string(data_offset) +
                              " bytes here) plus 1 MiB of data"));
  }
  const char* uuid_c = crypt_get_uuid(cd.get());
  if (uuid_c == nullptr) {
    return undo(MakeError(ErrorCode::kInternal,
                          "libcryptsetup returned no UUID after format"));
  }
  std::string uuid(uuid_c);

  Result<std::string> token = make_token(uuid);
  if (!token.ok()) return undo(std::move(token).error());
  if (Status st = CheckTokenJson(*token); !st.ok()) {
    return undo(std::move(st).error());
  }
  r = crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN, token->c_str());
  if (r < 0) {
    return undo(LibFail(ErrorCode::kIo,
                        "cannot write the vcrypt token to " + device, r));
  }
  return uuid;
}

}  // namespace vcrypt
