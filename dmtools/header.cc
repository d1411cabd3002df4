// Loading LUKS2 headers, and header/token I/O: ReadHeader, WriteToken,
// VerifyDek, EraseKeyMaterial.
#include <libcryptsetup.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "dmtools/lib_internal.h"
#include "dmtools/reencrypt.h"
#include "dmtools/responsive.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"

namespace vcrypt {

namespace dmlib {

Result<CryptDevicePtr> InitCrypt(const std::string& device) {
  crypt_device* raw = nullptr;
  int r = crypt_init(&raw, device.c_str());
  CryptDevicePtr cd(raw);
  if (r < 0) {
    if (r == -ENOENT || r == -ENOTBLK) {
      return MakeError(ErrorCode::kNotFound,
                       "device or file " + device + " does not exist");
    }
    return LibFail(ErrorCode::kIo, "cannot open " + device, r);
  }
  return cd;
}

// Loads a LUKS2 header; LUKS1 and non-LUKS devices are kInvalidVolume.
Status LoadLuks2(crypt_device* cd, const std::string& device) {
  int r = crypt_load(cd, CRYPT_LUKS, nullptr);
  if (r == -EINVAL || r == -ENXIO) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " is not a LUKS2 volume (no valid LUKS header)");
  }
  if (r < 0)
    return LibFail(ErrorCode::kIo, "cannot read the LUKS header of " + device,
                   r);
  const char* type = crypt_get_type(cd);
  if (type == nullptr || std::strcmp(type, CRYPT_LUKS2) != 0) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " is a " + (type ? type : "unknown") +
                         " volume, not a vcrypt (LUKS2) volume");
  }
  return Status::Ok();
}

// The LUKS2 header of `device` loaded into a new handle, after checking
// that the device exists and is readable (Geometry gives the clear
// not-found / not-a-device errors).
Result<CryptDevicePtr> OpenLuks2Device(const std::string& device) {
  VCRYPT_ASSIGN_OR_RETURN(DeviceGeometry geo, Geometry(device));
  (void)geo;
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, InitCrypt(device));
  VCRYPT_RETURN_IF_ERROR(LoadLuks2(cd.get(), device));
  return cd;
}

// Checks token JSON before it goes into a header.
Status CheckTokenJson(const std::string& json) {
  if (json.size() > kMaxTokenSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vcrypt token is " + std::to_string(json.size()) +
                         " bytes, more than the " +
                         std::to_string(kMaxTokenSize) + " allowed");
  }
  auto parsed = VcryptToken::Parse(json);
  if (!parsed.ok()) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "refusing to write a bad token: " + parsed.error().message);
  }
  return Status::Ok();
}

}  // namespace dmlib

namespace {

using dmlib::CheckTokenJson;
using dmlib::LibFail;
using dmlib::LockLibraries;
using dmlib::OpenLuks2Device;

// Ids of all tokens of type "vcrypt".
std::vector<int> VcryptTokenIds(crypt_device* cd) {
  std::vector<int> ids;
  int max = crypt_token_max(CRYPT_LUKS2);
  for (int i = 0; i < max; ++i) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd, i, &type);
    if (info == CRYPT_TOKEN_INVALID || info == CRYPT_TOKEN_INACTIVE) continue;
    if (type != nullptr && std::string_view(type) == kTokenType) {
      ids.push_back(i);
    }
  }
  return ids;
}

}  // namespace

Result<VolumeHeader> ReadHeader(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));

  VolumeHeader h;
  h.device = device;
  auto str = [](const char* s) { return s ? std::string(s) : std::string(); };
  h.uuid = str(crypt_get_uuid(cd.get()));
  h.label = str(crypt_get_label(cd.get()));
  h.subsystem = str(crypt_get_subsystem(cd.get()));
  std::string cipher = str(crypt_get_cipher(cd.get()));
  std::string mode = str(crypt_get_cipher_mode(cd.get()));
  h.cipher = mode.empty() ? cipher : cipher + "-" + mode;
  // LUKS2 records the volume key size only in keyslots; with none,
  // libcryptsetup reports 0 (see the key_bits contract in volume.h).
  int ks = crypt_get_volume_key_size(cd.get());
  h.key_bits = ks > 0 ? static_cast<uint32_t>(ks) * 8 : 0;
  int ss = crypt_get_sector_size(cd.get());
  h.sector_size = ss > 0 ? static_cast<uint32_t>(ss) : 0;
  h.data_offset = crypt_get_data_offset(cd.get()) * 512;
  int max_slots = crypt_keyslot_max(CRYPT_LUKS2);
  for (int i = 0; i < max_slots; ++i) {
    crypt_keyslot_info ki = crypt_keyslot_status(cd.get(), i);
    if (ki != CRYPT_SLOT_INACTIVE && ki != CRYPT_SLOT_INVALID) {
      ++h.active_keyslots;
    }
  }
  std::vector<int> ids = VcryptTokenIds(cd.get());
  if (ids.size() > 1) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has " + std::to_string(ids.size()) +
                         " vcrypt tokens; a vcrypt volume has exactly one");
  }
  for (int i = 0; i < crypt_token_max(CRYPT_LUKS2) && !h.deep_rekey_marker;
       ++i) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd.get(), i, &type);
    h.deep_rekey_marker = info != CRYPT_TOKEN_INVALID &&
                          info != CRYPT_TOKEN_INACTIVE && type != nullptr &&
                          std::string_view(type) == kReencryptTokenType;
  }
  if (ids.size() == 1) {
    const char* json = nullptr;
    int r = crypt_token_json_get(cd.get(), ids[0], &json);
    if (r < 0 || json == nullptr) {
      return LibFail(ErrorCode::kIo,
                     "cannot read the vcrypt token of " + device, r);
    }
    h.token_json = std::string(json);
    h.token_id = ids[0];
    if (h.key_bits == 0) {
      // The wrapped DEK has the DEK's length (AES-GCM is length
      // preserving).
      auto t = VcryptToken::Parse(*h.token_json);
      if (t.ok())
        h.key_bits = static_cast<uint32_t>(t->dek.ciphertext.size()) * 8;
    }
  }
  return h;
}

Status WriteToken(const std::string& device, const std::string& token_json) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  VCRYPT_RETURN_IF_ERROR(CheckTokenJson(token_json));
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));
  std::vector<int> ids = VcryptTokenIds(cd.get());
  if (ids.size() > 1) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has " + std::to_string(ids.size()) +
                         " vcrypt tokens; refusing to choose one to replace");
  }
  // Replacing under the same id is one header update (both copies, with
  // libcryptsetup's metadata lock held), so readers see old or new.
  int id = ids.empty() ? CRYPT_ANY_TOKEN : ids[0];
  int r = crypt_token_json_set(cd.get(), id, token_json.c_str());
  if (r < 0) {
    return LibFail(r == -ENOSPC ? ErrorCode::kInvalidArgument : ErrorCode::kIo,
                   "cannot write the vcrypt token to " + device, r);
  }
  return Status::Ok();
}

Status VerifyDek(const std::string& device, const SecureBuffer& dek) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));
  int r = crypt_activate_by_volume_key(cd.get(), nullptr, dek.chars(),
                                       dek.size(), 0);
  if (r == -EPERM || r == -EINVAL)
    return MakeError(ErrorCode::kCrypto,
                     "the key does not match the LUKS2 digest of " + device);
  if (r < 0)
    return LibFail(ErrorCode::kIo, "cannot check the key of " + device, r);
  return Status::Ok();
}

Status EraseKeyMaterial(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));
  // A mapped volume keeps its key in the dm table; erasing under it would
  // leave a running volume whose key exists nowhere else.
  if (DeviceMapperAvailable()) {
    const char* uuid = crypt_get_uuid(cd.get());
    VCRYPT_ASSIGN_OR_RETURN(auto mapped, dmlib::FindMappingByUuidLocked(
                                             uuid != nullptr ? uuid : ""));
    if (mapped)
      return MakeError(
          ErrorCode::kBusy,
          device + " is open as " + mapped->path + "; close it before erasing");
  }
  for (int id = 0; id < crypt_token_max(CRYPT_LUKS2); ++id) {
    const char* type = nullptr;
    if (crypt_token_status(cd.get(), id, &type) == CRYPT_TOKEN_INACTIVE)
      continue;
    int r = crypt_token_json_set(cd.get(), id, nullptr);
    if (r < 0)
      return LibFail(
          ErrorCode::kIo,
          "cannot remove token " + std::to_string(id) + " of " + device, r);
  }
  for (int slot = 0; slot < crypt_keyslot_max(CRYPT_LUKS2); ++slot) {
    if (crypt_keyslot_status(cd.get(), slot) == CRYPT_SLOT_INACTIVE) continue;
    int r = crypt_keyslot_destroy(cd.get(), slot);
    if (r < 0)
      return LibFail(
          ErrorCode::kIo,
          "cannot destroy keyslot " + std::to_string(slot) + " of " + device,
          r);
  }
  return Status::Ok();
}

}  // namespace vcrypt
