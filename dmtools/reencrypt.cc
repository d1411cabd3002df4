#include "dmtools/reencrypt.h"

#include <libcryptsetup.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "dmtools/lib_internal.h"
#include "dmtools/responsive.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

using dmlib::LibFail;
using Json = nlohmann::json;

constexpr int kMarkerVersion = 1;
constexpr uint64_t kMaxHotzoneBytes = 16ull << 20;

// Keyslot numbers of a token's "keyslots" (strings of digits; libcryptsetup
// has validated that they name existing keyslots).
std::vector<int> BoundKeyslots(const Json& token) {
  std::vector<int> out;
  auto ks = token.find("keyslots");
  if (ks == token.end() || !ks->is_array()) return out;
  for (const auto& k : *ks) {
    if (!k.is_string()) continue;
    const std::string n = k.get<std::string>();
    if (n.empty() || n.size() > 3 ||
        n.find_first_not_of("0123456789") != std::string::npos)
      continue;
    out.push_back(std::stoi(n));
  }
  return out;
}

// Token ids of `type`, with their JSON.
Result<std::vector<std::pair<int, Json>>> TokensOfType(
    crypt_device* cd, std::string_view type, const std::string& device) {
  std::vector<std::pair<int, Json>> out;
  for (int i = 0; i < crypt_token_max(CRYPT_LUKS2); ++i) {
    const char* t = nullptr;
    crypt_token_info info = crypt_token_status(cd, i, &t);
    if (info == CRYPT_TOKEN_INVALID || info == CRYPT_TOKEN_INACTIVE) continue;
    if (t == nullptr || std::string_view(t) != type) continue;
    const char* text = nullptr;
    int r = crypt_token_json_get(cd, i, &text);
    if (r < 0 || text == nullptr)
      return LibFail(ErrorCode::kIo,
                     "cannot read token " + std::to_string(i) + " of " + device,
                     r);
    out.emplace_back(i, Json::parse(text, nullptr, false));
  }
  return out;
}

Result<ReencryptState> StateOf(crypt_device* cd, const std::string& device) {
  ReencryptState st;
  const char* uuid = crypt_get_uuid(cd);
  st.uuid = uuid != nullptr ? uuid : "";
  switch (crypt_reencrypt_status(cd, nullptr)) {
    case CRYPT_REENCRYPT_NONE:
      st.phase = ReencryptPhase::kNone;
      break;
    case CRYPT_REENCRYPT_CLEAN:
      st.phase = ReencryptPhase::kInProgress;
      break;
    case CRYPT_REENCRYPT_CRASH:
      st.phase = ReencryptPhase::kCrashed;
      break;
    default:
      return MakeError(
          ErrorCode::kInvalidVolume,
          device + " has reencryption metadata libcryptsetup cannot use");
  }
  for (int s = 0; s < crypt_keyslot_max(CRYPT_LUKS2); ++s) {
    crypt_keyslot_info ki = crypt_keyslot_status(cd, s);
    if (ki != CRYPT_SLOT_INACTIVE && ki != CRYPT_SLOT_INVALID)
      ++st.active_keyslots;
  }
  VCRYPT_ASSIGN_OR_RETURN(auto markers,
                          TokensOfType(cd, kReencryptTokenType, device));
  if (markers.size() > 1)
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has " + std::to_string(markers.size()) + " " +
                         std::string(kReencryptTokenType) +
                         " tokens; vcrypt writes one");
  if (markers.empty()) return st;
  const auto& [id, j] = markers[0];
  st.token_id = id;
  if (j.is_object() && j.contains("vcrypt")) st.payload = j["vcrypt"].dump();
  if (j.is_object()) st.keyslots = BoundKeyslots(j);
  for (int s : st.keyslots) {
    crypt_keyslot_info ki = crypt_keyslot_status(cd, s);
    if (ki == CRYPT_SLOT_UNBOUND)
      st.new_keyslot = s;
    else if (ki == CRYPT_SLOT_ACTIVE || ki == CRYPT_SLOT_ACTIVE_LAST)
      st.old_keyslot = s;
  }
  return st;
}

// Best-effort undo of a PrepareReencrypt that failed part-way; "" or what
// failed, to be appended to the original error.
std::string UndoPrepare(const std::string& device,
                        const SecureBuffer& passphrase) {
  Status st = RemoveReencryptKeyslots(device, &passphrase);
  return st.ok() ? "" : "; undoing it failed: " + st.error().message;
}

struct ProgressCtx {
  const ReencryptProgress* progress;
  bool stopped = false;
};

int OnProgress(uint64_t size, uint64_t offset, void* usrptr) {
  auto* ctx = static_cast<ProgressCtx*>(usrptr);
  if (ctx->progress != nullptr && *ctx->progress &&
      !(*ctx->progress)(offset, size)) {
    ctx->stopped = true;
    return 1;  // libcryptsetup stops cleanly after this chunk
  }
  return 0;
}

Error InitError(const std::string& device, int r) {
  if (r == -EPERM || r == -ENOENT)
    return MakeError(
        ErrorCode::kCrypto,
        "the reencryption passphrase opens no keyslot of " + device);
  if (r == -EBUSY)
    return LibFail(ErrorCode::kBusy,
                   "cannot reencrypt " + device + ": another process holds it",
                   r);
  return LibFail(ErrorCode::kIo, "cannot start reencrypting " + device, r);
}

}  // namespace

Result<ReencryptState> ReadReencryptState(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = dmlib::LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, dmlib::OpenLuks2Device(device));
  return StateOf(cd.get(), device);
}

Status PrepareReencrypt(const std::string& device, const SecureBuffer& old_dek,
                        const SecureBuffer& new_dek,
                        const SecureBuffer& passphrase,
                        const std::string& payload_json) {
  if (old_dek.size() != kDekSize || new_dek.size() != kDekSize)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a DEK must be " + std::to_string(kDekSize) + " bytes");
  if (passphrase.size() == 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "empty reencryption passphrase");
  Json payload = Json::parse(payload_json, nullptr, false);
  if (!payload.is_object())
    return MakeError(ErrorCode::kInvalidArgument,
                     "the reencryption marker payload must be a JSON object");

  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = dmlib::LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, dmlib::OpenLuks2Device(device));
  VCRYPT_ASSIGN_OR_RETURN(ReencryptState st, StateOf(cd.get(), device));
  if (st.phase != ReencryptPhase::kNone)
    return MakeError(ErrorCode::kBusy,
                     device + " is already being reencrypted");
  if (st.has_marker())
    return MakeError(ErrorCode::kExists,
                     device + " already has a deep rekey set up (token " +
                         std::to_string(st.token_id) + ")");
  // Checked before anything is written: a keyslot for a wrong key would
  // make the reencryption fail half-set-up.
  if (crypt_activate_by_volume_key(cd.get(), nullptr, old_dek.chars(),
                                   old_dek.size(), 0) < 0)
    return MakeError(ErrorCode::kCrypto,
                     "the key does not match the LUKS2 digest of " + device);

  // 1. The marker, bound to nothing yet.
  Json marker = {{"type", std::string(kReencryptTokenType)},
                 {"keyslots", Json::array()},
                 {"vcrypt_reencrypt_version", kMarkerVersion},
                 {"vcrypt", payload}};
  int token =
      crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN, marker.dump().c_str());
  if (token < 0)
    return LibFail(ErrorCode::kIo,
                   "cannot write the reencryption marker to " + device, token);

  // 2. The two keyslots.
  struct crypt_pbkdf_type pbkdf = {};
  pbkdf.type = CRYPT_KDF_PBKDF2;
  pbkdf.hash = "sha256";
  pbkdf.iterations = 1000;
  pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
  int r = crypt_set_pbkdf_type(cd.get(), &pbkdf);
  if (r < 0) {
    Error e =
        LibFail(ErrorCode::kIo, "cannot set the keyslot KDF for " + device, r);
    cd.reset();
    return MakeError(e.code, e.message + UndoPrepare(device, passphrase));
  }
  int old_slot = crypt_keyslot_add_by_volume_key(
      cd.get(), CRYPT_ANY_SLOT, old_dek.chars(), old_dek.size(),
      passphrase.chars(), passphrase.size());
  int new_slot = -1;
  if (old_slot >= 0)
    new_slot = crypt_keyslot_add_by_key(
        cd.get(), CRYPT_ANY_SLOT, new_dek.chars(), new_dek.size(),
        passphrase.chars(), passphrase.size(), CRYPT_VOLUME_KEY_NO_SEGMENT);
  // 3. The binding.
  int bind = -1;
  if (new_slot >= 0)
    bind = crypt_token_assign_keyslot(cd.get(), token, old_slot);
  if (bind >= 0) bind = crypt_token_assign_keyslot(cd.get(), token, new_slot);
  if (old_slot < 0 || new_slot < 0 || bind < 0) {
    int err = old_slot < 0 ? old_slot : new_slot < 0 ? new_slot : bind;
    Error e = LibFail(ErrorCode::kIo,
                      "cannot add the reencryption keyslots to " + device, err);
    cd.reset();
    return MakeError(e.code, e.message + UndoPrepare(device, passphrase));
  }
  return Status::Ok();
}

Status RunReencrypt(const std::string& device, const std::string& active_name,
                    const SecureBuffer& passphrase,
                    const ReencryptProgress& progress) {
  auto lib = dmlib::LockLibraries();
  const char* name = active_name.empty() ? nullptr : active_name.c_str();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, dmlib::OpenLuks2Device(device));
  VCRYPT_ASSIGN_OR_RETURN(ReencryptState st, StateOf(cd.get(), device));
  if (!st.has_marker())
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has no deep rekey set up by vcrypt");
  if (st.phase == ReencryptPhase::kCrashed) {
    // A step was cut short: put its hot zone back from the resilience
    // data (checksums) before resuming.
    struct crypt_params_reencrypt rec = {};
    rec.flags = CRYPT_REENCRYPT_RECOVERY;
    dmlib::ClearLibMessage();
    int r = crypt_reencrypt_init_by_passphrase(
        cd.get(), nullptr, passphrase.chars(), passphrase.size(),
        CRYPT_ANY_SLOT, CRYPT_ANY_SLOT, nullptr, nullptr, &rec);
    if (r < 0) return InitError(device, r);
    cd.reset();
    VCRYPT_ASSIGN_OR_RETURN(cd, dmlib::OpenLuks2Device(device));
    VCRYPT_ASSIGN_OR_RETURN(st, StateOf(cd.get(), device));
  }
  struct crypt_params_luks2 luks2 = {};
  struct crypt_params_reencrypt params = {};
  params.mode = CRYPT_REENCRYPT_REENCRYPT;
  params.direction = CRYPT_REENCRYPT_FORWARD;
  params.resilience = "checksum";
  params.hash = "sha256";
  // At most this much data per step (one header update each side of it):
  // checksum resilience would otherwise take whole GiBs at once (a 16 MiB
  // keyslots area holds the checksums of 2 GiB), and progress would come
  // that coarsely.
  params.max_hotzone_size = kMaxHotzoneBytes / 512;
  dmlib::ClearLibMessage();
  int r;
  if (st.phase == ReencryptPhase::kNone) {
    if (st.old_keyslot < 0 || st.new_keyslot < 0)
      return MakeError(ErrorCode::kInvalidVolume,
                       "the deep rekey set-up of " + device +
                           " is incomplete (its keyslots are missing)");
    int ss = crypt_get_sector_size(cd.get());
    luks2.sector_size = ss > 0 ? static_cast<uint32_t>(ss) : 512;
    params.luks2 = &luks2;
    r = crypt_reencrypt_init_by_passphrase(
        cd.get(), name, passphrase.chars(), passphrase.size(), st.old_keyslot,
        st.new_keyslot, "aes", "xts-plain64", &params);
  } else {
    params.flags = CRYPT_REENCRYPT_RESUME_ONLY;
    r = crypt_reencrypt_init_by_passphrase(
        cd.get(), name, passphrase.chars(), passphrase.size(), CRYPT_ANY_SLOT,
        CRYPT_ANY_SLOT, nullptr, nullptr, &params);
  }
  if (r < 0) return InitError(device, r);
  ProgressCtx ctx{&progress};
  dmlib::ClearLibMessage();
  r = crypt_reencrypt_run(cd.get(), OnProgress, &ctx);
  if (r < 0)
    return LibFail(ErrorCode::kIo, "reencryption of " + device + " failed", r);
  if (ctx.stopped)
    return MakeError(ErrorCode::kBusy,
                     "reencryption of " + device +
                         " was interrupted; it resumes where it stopped");
  cd.reset();
  VCRYPT_ASSIGN_OR_RETURN(cd, dmlib::OpenLuks2Device(device));
  if (crypt_reencrypt_status(cd.get(), nullptr) != CRYPT_REENCRYPT_NONE)
    return MakeError(ErrorCode::kIo,
                     "reencryption of " + device +
                         " stopped before the end; run it again to resume");
  return Status::Ok();
}

Result<SecureBuffer> VolumeKeyByPassphrase(const std::string& device,
                                           const SecureBuffer& passphrase) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = dmlib::LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, dmlib::OpenLuks2Device(device));
  if (crypt_reencrypt_status(cd.get(), nullptr) != CRYPT_REENCRYPT_NONE)
    return MakeError(ErrorCode::kBusy, device + " is being reencrypted");
  SecureBuffer key(kDekSize);
  size_t size = key.size();
  int r = crypt_volume_key_get(cd.get(), CRYPT_ANY_SLOT, key.chars(), &size,
                               passphrase.chars(), passphrase.size());
  if (r == -EPERM || r == -ENOENT)
    return MakeError(
        ErrorCode::kCrypto,
        "the reencryption passphrase opens no keyslot of " + device);
  if (r < 0)
    return LibFail(ErrorCode::kIo, "cannot read the key of " + device, r);
  if (size != kDekSize)
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has a " + std::to_string(size * 8) +
                         "-bit key; vcrypt volumes have 512");
  return key;
}

Status RemoveReencryptKeyslots(const std::string& device,
                               const SecureBuffer* passphrase) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = dmlib::LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, dmlib::OpenLuks2Device(device));
  if (crypt_reencrypt_status(cd.get(), nullptr) != CRYPT_REENCRYPT_NONE)
    return MakeError(ErrorCode::kBusy,
                     device + " is being reencrypted; finish that first");
  VCRYPT_ASSIGN_OR_RETURN(auto markers,
                          TokensOfType(cd.get(), kReencryptTokenType, device));
  std::vector<int> doomed;
  for (const auto& [id, j] : markers)
    for (int s : BoundKeyslots(j)) doomed.push_back(s);
  if (passphrase != nullptr && passphrase->size() > 0) {
    VCRYPT_ASSIGN_OR_RETURN(auto recovery,
                            TokensOfType(cd.get(), kRecoveryTokenType, device));
    std::vector<int> claimed;
    for (const auto& [id, j] : recovery)
      for (int s : BoundKeyslots(j)) claimed.push_back(s);
    SecureBuffer probe(kDekSize);
    for (int s = 0; s < crypt_keyslot_max(CRYPT_LUKS2); ++s) {
      crypt_keyslot_info ki = crypt_keyslot_status(cd.get(), s);
      if (ki == CRYPT_SLOT_INACTIVE || ki == CRYPT_SLOT_INVALID) continue;
      if (std::find(claimed.begin(), claimed.end(), s) != claimed.end())
        continue;
      if (std::find(doomed.begin(), doomed.end(), s) != doomed.end()) continue;
      size_t size = probe.size();
      if (crypt_volume_key_get(cd.get(), s, probe.chars(), &size,
                               passphrase->chars(), passphrase->size()) >= 0)
        doomed.push_back(s);
    }
  }
  for (int s : doomed) {
    if (crypt_keyslot_status(cd.get(), s) == CRYPT_SLOT_INACTIVE) continue;
    int r = crypt_keyslot_destroy(cd.get(), s);
    if (r < 0)
      return LibFail(
          ErrorCode::kIo,
          "cannot remove keyslot " + std::to_string(s) + " of " + device, r);
  }
  for (const auto& [id, j] : markers) {
    int r = crypt_token_json_set(cd.get(), id, nullptr);
    if (r < 0)
      return LibFail(
          ErrorCode::kIo,
          "cannot remove token " + std::to_string(id) + " of " + device, r);
  }
  return Status::Ok();
}

}  // namespace vcrypt
