// The recovery keyslot (volume.h, docs/recovery.md).
#include <libcryptsetup.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dmtools/lib_internal.h"
#include "dmtools/responsive.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

using dmlib::ClearLibMessage;
using dmlib::ErrnoText;
using dmlib::InitCrypt;
using dmlib::LibFail;
using dmlib::LoadLuks2;
using dmlib::LockLibraries;
using dmlib::OpenLuks2Device;
using dmlib::WithLibMessage;

// A token of type kRecoveryTokenType and the keyslots it is bound to.
struct RecoveryMarker {
  int token_id = -1;
  std::vector<int> keyslots;
  std::string created;
};

struct RecoveryMarkers {
  std::optional<RecoveryMarker> bound;  // the one bound to a keyslot
  std::vector<int> stale;               // token ids bound to no keyslot
};

Result<RecoveryMarkers> FindRecoveryMarkers(crypt_device* cd,
                                            const std::string& device) {
  RecoveryMarkers out;
  const int max = crypt_token_max(CRYPT_LUKS2);
  for (int i = 0; i < max; ++i) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd, i, &type);
    if (info == CRYPT_TOKEN_INVALID || info == CRYPT_TOKEN_INACTIVE) continue;
    if (type == nullptr || std::string_view(type) != kRecoveryTokenType) {
      continue;
    }
    const char* text = nullptr;
    int r = crypt_token_json_get(cd, i, &text);
    if (r < 0 || text == nullptr) {
      return LibFail(ErrorCode::kIo,
                     "cannot read token " + std::to_string(i) + " of " + device,
                     r);
    }
    // libcryptsetup has validated the LUKS2 part ("keyslots" is an array
    // of keyslot numbers as strings naming existing keyslots); the rest is
    // read leniently: it only says when the key was made.
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    RecoveryMarker m;
    m.token_id = i;
    if (j.is_object()) {
      auto ks = j.find("keyslots");
      if (ks != j.end() && ks->is_array()) {
        for (const auto& k : *ks) {
          if (!k.is_string()) continue;
          const std::string n = k.get<std::string>();
          if (n.empty() || n.size() > 3 ||
              n.find_first_not_of("0123456789") != std::string::npos) {
            continue;
          }
          m.keyslots.push_back(std::stoi(n));
        }
      }
      auto c = j.find("created");
      if (c != j.end() && c->is_string()) m.created = c->get<std::string>();
    }
    const std::string what = "token " + std::to_string(i) + " (" +
                             std::string(kRecoveryTokenType) + ") of " + device;
    if (m.keyslots.empty()) {
      out.stale.push_back(i);
      continue;
    }
    if (m.keyslots.size() > 1) {
      return MakeError(ErrorCode::kInvalidVolume,
                       what + " is bound to " +
                           std::to_string(m.keyslots.size()) +
                           " keyslots; vcrypt binds it to one");
    }
    crypt_keyslot_info ki = crypt_keyslot_status(cd, m.keyslots[0]);
    if (ki != CRYPT_SLOT_ACTIVE && ki != CRYPT_SLOT_ACTIVE_LAST) {
      return MakeError(ErrorCode::kInvalidVolume,
                       what + " is bound to keyslot " +
                           std::to_string(m.keyslots[0]) +
                           ", which is not an active keyslot");
    }
    if (out.bound) {
      return MakeError(ErrorCode::kInvalidVolume,
                       device +
                           " has more than one recovery keyslot marker "
                           "(tokens " +
                           std::to_string(out.bound->token_id) + " and " +
                           std::to_string(i) + "); vcrypt makes one");
    }
    out.bound = std::move(m);
  }
  return out;
}

RecoveryKeyslot DescribeRecoveryKeyslot(crypt_device* cd,
                                        const RecoveryMarker& m) {
  RecoveryKeyslot k;
  k.keyslot = m.keyslots.at(0);
  k.token_id = m.token_id;
  k.created = m.created;
  struct crypt_pbkdf_type p = {};
  if (crypt_keyslot_get_pbkdf(cd, k.keyslot, &p) == 0) {
    k.pbkdf = p.type != nullptr ? p.type : "";
    k.iterations = p.iterations;
    k.memory_kib = p.max_memory_kb;
    k.threads = p.parallel_threads;
  }
  return k;
}

std::vector<bool> ActiveKeyslots(crypt_device* cd) {
  std::vector<bool> active(static_cast<size_t>(crypt_keyslot_max(CRYPT_LUKS2)));
  for (size_t i = 0; i < active.size(); ++i) {
    crypt_keyslot_info ki = crypt_keyslot_status(cd, static_cast<int>(i));
    active[i] = ki != CRYPT_SLOT_INACTIVE && ki != CRYPT_SLOT_INVALID;
  }
  return active;
}

// Undoes a recovery keyslot add that did not complete: from a freshly read
// header, destroys every keyslot that was not active before (while the
// caller holds the volume, only the one being added can be new) and the
// marker `token_id` (-1: none was written). Returns "" or what failed, to
// be appended to the original error.
std::string UndoRecoveryAdd(const std::string& device,
                            const std::vector<bool>& active_before,
                            int token_id) {
  auto cd = InitCrypt(device);
  if (!cd.ok()) return "; undoing it failed: " + cd.error().message;
  if (Status st = LoadLuks2(cd->get(), device); !st.ok()) {
    return "; undoing it failed: " + st.error().message;
  }
  std::string note;
  if (token_id >= 0) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd->get(), token_id, &type);
    if (info != CRYPT_TOKEN_INACTIVE && info != CRYPT_TOKEN_INVALID &&
        type != nullptr && std::string_view(type) == kRecoveryTokenType) {
      int r = crypt_token_json_set(cd->get(), token_id, nullptr);
      if (r < 0) {
        note += "; deleting its marker (token " + std::to_string(token_id) +
                ") failed: " + ErrnoText(r);
      }
    }
  }
  std::vector<bool> now = ActiveKeyslots(cd->get());
  for (size_t i = 0; i < now.size(); ++i) {
    if (!now[i] || (i < active_before.size() && active_before[i])) continue;
    int r = crypt_keyslot_destroy(cd->get(), static_cast<int>(i));
    if (r < 0) {
      note += "; destroying the new keyslot " + std::to_string(i) +
              " failed: " + ErrnoText(r) +
              " (remove it with 'cryptsetup "
              "luksKillSlot " +
              device + " " + std::to_string(i) + "')";
    }
  }
  return note;
}

// The memory (KiB) a keyslot with libcryptsetup's default LUKS2 PBKDF may
// use on this host: the default's max_memory_kb, capped at half of the
// physical memory as libcryptsetup caps it (adjusted_phys_memory() in its
// utils_pbkdf.c, which ignores totals under 128 MiB). 0 for a PBKDF
// without a memory cost (PBKDF2 in FIPS mode).
uint64_t DefaultPbkdfMemoryKib() {
  const crypt_pbkdf_type* d = crypt_get_pbkdf_default(CRYPT_LUKS2);
  uint64_t kib = d != nullptr ? d->max_memory_kb : 0;
  long pages = sysconf(_SC_PHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) {
    uint64_t phys =
        static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 1024;
    if (phys >= (128u << 10) && phys / 2 < kib) kib = phys / 2;
  }
  return kib;
}

// MemAvailable from /proc/meminfo, in KiB; nullopt when unknown.
std::optional<uint64_t> MemAvailableKib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value;
  }
  return std::nullopt;
}

std::string Mib(uint64_t kib) { return std::to_string((kib + 1023) / 1024); }

}  // namespace

Result<RecoveryState> ReadRecoveryKeyslot(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));
  RecoveryState state;
  const char* uuid = crypt_get_uuid(cd.get());
  state.uuid = uuid != nullptr ? uuid : "";
  VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers markers,
                          FindRecoveryMarkers(cd.get(), device));
  if (markers.bound) {
    state.slot = DescribeRecoveryKeyslot(cd.get(), *markers.bound);
  }
  return state;
}

Result<RecoveryKeyslot> AddRecoveryKeyslot(const std::string& device,
                                           const SecureBuffer& dek,
                                           const SecureBuffer& passphrase,
                                           const std::string& created) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  if (dek.size() != kDekSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the DEK must be " + std::to_string(kDekSize) +
                         " bytes, not " + std::to_string(dek.size()));
  }
  if (passphrase.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the recovery passphrase is empty");
  }
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));
  VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers markers,
                          FindRecoveryMarkers(cd.get(), device));
  if (markers.bound) {
    return MakeError(ErrorCode::kExists,
                     device + " already has a recovery keyslot (keyslot " +
                         std::to_string(markers.bound->keyslots[0]) + ")");
  }

  // argon2id allocates its whole memory cost at once and, with no swap,
  // the kernel meets an overcommitted 1 GiB by OOM-killing someone: on a
  // KVM host that may be a guest. Refuse before writing anything when the
  // memory is plainly not there.
  const uint64_t need = DefaultPbkdfMemoryKib();
  const std::optional<uint64_t> avail = MemAvailableKib();
  if (need > 0 && avail && *avail < need) {
    return MakeError(ErrorCode::kInternal,
                     "not enough memory to add a recovery keyslot to " +
                         device + ": argon2id may use " + Mib(need) +
                         " MiB and " + Mib(*avail) +
                         " MiB are available; retry when memory is free");
  }

  for (int id : markers.stale) {
    int r = crypt_token_json_set(cd.get(), id, nullptr);
    if (r < 0) {
      return LibFail(ErrorCode::kIo,
                     "cannot delete the unbound recovery marker (token " +
                         std::to_string(id) + ") of " + device,
                     r);
    }
  }

  const std::vector<bool> before = ActiveKeyslots(cd.get());
  int r = crypt_set_pbkdf_type(cd.get(), crypt_get_pbkdf_default(CRYPT_LUKS2));
  if (r < 0) {
    return LibFail(ErrorCode::kIo, "cannot select the default LUKS2 PBKDF", r);
  }
  ClearLibMessage();
  const int slot = crypt_keyslot_add_by_volume_key(
      cd.get(), CRYPT_ANY_SLOT, dek.chars(), dek.size(), passphrase.chars(),
      passphrase.size());
  if (slot < 0) {
    Error e = [&] {
      const std::string what = "cannot add a recovery keyslot to " + device;
      switch (slot) {
        case -EPERM:
          return MakeError(ErrorCode::kCrypto,
                           what + ": the DEK does not match its LUKS2 digest");
        case -ENOMEM:
          // libcryptsetup's own message here ("Not compatible PBKDF
          // options") would mislead.
          return MakeError(ErrorCode::kInternal,
                           what + ": not enough memory for argon2id (up to " +
                               Mib(need) + " MiB); retry when memory is free");
        default:
          return LibFail(ErrorCode::kIo, what, slot);
      }
    }();
    cd.reset();
    e.message += UndoRecoveryAdd(device, before, -1);
    return e;
  }

  nlohmann::json marker = {
      {"type", std::string(kRecoveryTokenType)},
      {"keyslots", nlohmann::json::array({std::to_string(slot)})},
      {"vcrypt_recovery_version", 1},
      {"created", created}};
  ClearLibMessage();
  const int token_id =
      crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN, marker.dump().c_str());
  if (token_id < 0) {
    Error e = LibFail(ErrorCode::kIo,
                      "cannot write the recovery keyslot marker to " + device,
                      token_id);
    cd.reset();
    e.message += UndoRecoveryAdd(device, before, -1);
    return e;
  }
  cd.reset();

  // Read back: the header on disk has the marked keyslot, and it opens
  // with the passphrase (the derivation again, from the stored salt and
  // costs). A recovery key that does not work would be found out only
  // when it is needed.
  auto check = [&]() -> Result<RecoveryKeyslot> {
    VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr c, InitCrypt(device));
    VCRYPT_RETURN_IF_ERROR(LoadLuks2(c.get(), device));
    VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers now,
                            FindRecoveryMarkers(c.get(), device));
    if (!now.bound || now.bound->keyslots[0] != slot ||
        now.bound->token_id != token_id) {
      return MakeError(ErrorCode::kIo, "the recovery keyslot of " + device +
                                           " does not read back");
    }
    ClearLibMessage();
    int opened = crypt_activate_by_passphrase(
        c.get(), nullptr, slot, passphrase.chars(), passphrase.size(), 0);
    if (opened != slot) {
      return MakeError(
          ErrorCode::kIo,
          WithLibMessage("the new recovery keyslot " + std::to_string(slot) +
                         " of " + device + " does not open with its key"));
    }
    return DescribeRecoveryKeyslot(c.get(), *now.bound);
  };
  auto added = check();
  if (!added.ok()) {
    Error e = std::move(added).error();
    e.message += UndoRecoveryAdd(device, before, token_id);
    return e;
  }
  return added;
}

Result<RecoveryKeyslot> RemoveRecoveryKeyslot(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = LockLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2Device(device));
  VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers markers,
                          FindRecoveryMarkers(cd.get(), device));
  if (!markers.bound) {
    return MakeError(ErrorCode::kNotFound, device + " has no recovery keyslot");
  }
  RecoveryKeyslot k = DescribeRecoveryKeyslot(cd.get(), *markers.bound);
  // The keyslot first: stopping between the two writes then leaves an
  // unbound marker (no recovery key), never a working keyslot that vcrypt
  // no longer shows.
  ClearLibMessage();
  int r = crypt_keyslot_destroy(cd.get(), k.keyslot);
  if (r < 0) {
    return LibFail(ErrorCode::kIo,
                   "cannot destroy the recovery keyslot " +
                       std::to_string(k.keyslot) + " of " + device,
                   r);
  }
  ClearLibMessage();
  r = crypt_token_json_set(cd.get(), k.token_id, nullptr);
  if (r < 0) {
    return LibFail(ErrorCode::kIo,
                   "destroyed the recovery keyslot " +
                       std::to_string(k.keyslot) + " of " + device +
                       " but cannot delete its marker (token " +
                       std::to_string(k.token_id) +
                       "), which now counts as no recovery key",
                   r);
  }
  return k;
}

}  // namespace vcrypt
