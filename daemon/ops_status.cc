// What vcryptd knows about volumes without opening them: status, each
// disk's state for vm.show and volume.list, and cache.evict. The failed
// opens kept in memory are daemon/open_failures.h's.
#include <cstring>

#include "daemon/controller.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::Exists;
using controller_ops::GuestContent;
using controller_ops::IsUuidText;
using controller_ops::OptStr;
using controller_ops::SameUuid;

}  // namespace

Result<std::vector<MappingInfo>> Controller::AllMappings() {
  if (!DeviceMapperAvailable()) return std::vector<MappingInfo>();
  return ListMappings("");
}

Json Controller::DiskStatus(const std::string& vm, const std::string& disk,
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
  auto failure = failures_.FindFailure(d.uuid);
  // A block device may have moved: open finds it through its udev link.
  const std::string link = options_.by_uuid_dir + "/" + d.uuid;
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
  std::string missing_since = failures_.MissingSince(d.uuid, !present);
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

Result<Json> Controller::GetStatus() {
  Json st;
  st["device_mapper"] = DeviceMapperAvailable();
  st["state_dir"] = store_.dir();
  VCRYPT_ASSIGN_OR_RETURN(Json provs, ProviderList());
  st["providers"] = provs["providers"];
  std::map<std::string, VmRecord> vms;
  {
    std::lock_guard lock(mu_);
    vms = store_.vms();
    if (store_.default_provider())
      st["default_provider"] = *store_.default_provider();
  }
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  Json jvms = Json::array();
  for (const auto& [vn, vm] : vms) {
    Json disks = Json::array();
    for (const auto& [dn, d] : vm.disks)
      disks.push_back(DiskStatus(vn, dn, d, maps));
    jvms.push_back({{"vm", vn},
                    {"provider", vm.provider},
                    {"kek_id", vm.kek.kek_id},
                    {"kek_cached", cache_.Contains(vm.provider, vm.kek.kek_id)},
                    {"disks", disks}});
  }
  st["vms"] = jvms;
  Json cache = Json::array();
  for (const auto& e : cache_.List())
    cache.push_back(
        {{"kek_id", e.kek_id}, {"vm", e.vm}, {"provider", e.provider}});
  st["kek_cache"] = cache;
  return st;
}

Result<Json> Controller::CacheEvict(const Json& args, const AuditContext& ctx) {
  auto vm = OptStr(args, "vm");
  auto records = EvictKeks(
      ctx, [&](const KekCache::EntryInfo& e) { return !vm || e.vm == *vm; });
  Audit(records);
  return Json{{"evicted", records.size()}};
}

}  // namespace vcrypt
