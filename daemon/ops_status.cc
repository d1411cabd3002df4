// What vcryptd knows about volumes without opening them: status, each
// disk's state for vm.show and volume.list, and cache.evict
// (daemon/ops_status.h).
#include "daemon/ops_status.h"

#include <cstring>

#include "common/names.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::AllMappings;
using controller_ops::Exists;
using controller_ops::GuestContent;
using controller_ops::OptStr;
using controller_ops::SameUuid;

}  // namespace

Json StatusOps::DiskStatus(const std::string& vm, const std::string& disk,
                           const DiskRecord& d,
                           const std::vector<MappingInfo>& maps) {
  Json j = {{"vm", vm},
            {"disk", disk},
            {"device", d.device},
            {"uuid", d.uuid},
            {"is_file", d.is_file},
            {"sector_size", d.sector_size},
            {"state", "locked"}};
  // Whether the header carries a recovery keyslot (docs/recovery.md); left
  // out when it cannot be read here or is another volume's.
  if (auto rk = ReadRecoveryKeyslot(d.device);
      rk.ok() && SameUuid(rk->uuid, d.uuid))
    j["recovery_key"] = rk->slot.has_value();
  for (const auto& m : maps) {
    if (SameUuid(m.luks_uuid, d.uuid)) {
      j["state"] = "unlocked";
      j["mapping"] = m.path;
      j["open_count"] = m.open_count;
      return j;
    }
  }
  auto reason = [](const OpenFailure& f) {
    return Json{{"code", std::string(ErrorCodeName(f.code))},
                {"message", f.message},
                {"since", f.since},
                {"last_attempt", f.last_attempt}};
  };
  auto failure = state_.failures.FindFailure(d.uuid);
  // A block device may have moved: open finds it through its udev link.
  const std::string link = state_.options.by_uuid_dir + "/" + d.uuid;
  // Neither the recorded device nor a link is the volume when it is guest
  // content (LocateVolume).
  std::string here_guest, link_guest;
  bool present = Exists(d.device);
  if (present && !d.is_file) {
    here_guest = GuestContent(d.device);
    present = here_guest.empty();
  }
  if (!present && !d.is_file && IsUuidText(d.uuid) && Exists(link)) {
    link_guest = GuestContent(link);
    present = link_guest.empty();
  }
  std::string missing_since = state_.failures.MissingSince(d.uuid, !present);
  if (!present) {
    j["state"] = "unavailable";
    if (failure && failure->code == ErrorCode::kNotFound) {
      j["reason"] = reason(*failure);
    } else {
      j["reason"] = {
          {"code", "not_found"},
          {"message",
           (d.is_file ? "image file " : "device ") + d.device +
               (here_guest.empty() ? " does not exist" : " " + here_guest) +
               (d.is_file            ? ""
                : link_guest.empty() ? " and there is no " + link
                                     : " and " + link + " " + link_guest)},
          {"since", missing_since}};
    }
  } else if (failure) {
    j["reason"] = reason(*failure);
  }
  return j;
}

// --- failed opens (memory only) -------------------------------------------

Result<Json> StatusOps::GetStatus() {
  Json st;
  st["device_mapper"] = DeviceMapperAvailable();
  st["state_dir"] = state_.store.dir();
  VCRYPT_ASSIGN_OR_RETURN(Json provs, provider_ops_.ProviderList());
  st["providers"] = provs["providers"];
  std::map<std::string, VmRecord> vms;
  {
    std::lock_guard lock(state_.mu);
    vms = state_.store.vms();
    if (state_.store.default_provider())
      st["default_provider"] = *state_.store.default_provider();
  }
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  Json jvms = Json::array();
  for (const auto& [vn, vm] : vms) {
    Json disks = Json::array();
    for (const auto& [dn, d] : vm.disks)
      disks.push_back(DiskStatus(vn, dn, d, maps));
    jvms.push_back(
        {{"vm", vn},
         {"provider", vm.provider},
         {"kek_id", vm.kek.kek_id},
         {"kek_cached", state_.cache.Contains(vm.provider, vm.kek.kek_id)},
         {"disks", disks}});
  }
  st["vms"] = jvms;
  Json cache = Json::array();
  // Each KEK's age since its provider produced it, and the provider's
  // maximum age (a use past it goes back to the provider).
  for (const auto& e : state_.cache.List())
    cache.push_back(
        {{"kek_id", e.kek_id},
         {"vm", e.vm},
         {"provider", e.provider},
         {"age_seconds", e.age.count()},
         {"max_age", FormatKekMaxAge(keys_.MaxAgeFor(e.provider))}});
  st["kek_cache"] = cache;
  return st;
}

Result<Json> StatusOps::CacheEvict(const Json& args, const AuditContext& ctx) {
  auto vm = OptStr(args, "vm");
  auto records = keys_.EvictKeks(
      ctx, [&](const KekCache::EntryInfo& e) { return !vm || e.vm == *vm; });
  state_.Audit(records);
  return Json{{"evicted", records.size()}};
}

}  // namespace vcrypt
