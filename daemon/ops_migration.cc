// Live migration ops: vm.incoming, vm.depart (daemon/ops_migration.h).
#include "daemon/ops_migration.h"

#include <filesystem>
#include <set>
#include <system_error>

#include "common/names.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::AllMappings;
using controller_ops::BoolArg;
using controller_ops::SameUuid;
using controller_ops::StrArg;
using controller_ops::Usage;

struct Wanted {
  std::string disk, uuid, image;  // image: "" for a block device
};

// The `volumes` argument, checked: names, UUIDs, absolute image paths,
// each disk and UUID once, at most kMaxIncomingVolumes.
Result<std::vector<Wanted>> ParseVolumes(const Json& args) {
  auto it = args.find("volumes");
  if (it == args.end() || !it->is_array() || it->empty())
    return Usage("vm.incoming needs 'volumes': [{disk, uuid, image?}, ...]");
  if (it->size() > kMaxIncomingVolumes)
    return MakeError(ErrorCode::kInvalidArgument,
                     "vm.incoming takes at most " +
                         std::to_string(kMaxIncomingVolumes) + " volumes");
  std::vector<Wanted> out;
  for (const auto& v : *it) {
    if (!v.is_object() || !v.contains("disk") || !v["disk"].is_string() ||
        !v.contains("uuid") || !v["uuid"].is_string() ||
        (v.contains("image") && !v["image"].is_string()))
      return Usage("each of 'volumes' is {disk, uuid, image?} (strings)");
    Wanted w{v["disk"].get<std::string>(), v["uuid"].get<std::string>(),
             v.value("image", "")};
    VCRYPT_RETURN_IF_ERROR(ValidateDiskName(w.disk));
    if (!IsUuidText(w.uuid))
      return MakeError(
          ErrorCode::kInvalidArgument,
          "disk '" + w.disk + "': '" + w.uuid + "' is not a LUKS UUID");
    if (!w.image.empty() &&
        (w.image[0] != '/' || w.image.find("/../") != std::string::npos ||
         w.image.size() > 4096))
      return MakeError(ErrorCode::kInvalidArgument,
                       "disk '" + w.disk +
                           "': the image path must be "
                           "absolute, without '..'");
    for (const auto& o : out)
      if (o.disk == w.disk || SameUuid(o.uuid, w.uuid))
        return MakeError(ErrorCode::kInvalidArgument,
                         "disk '" + w.disk + "' or its UUID is listed twice");
    out.push_back(std::move(w));
  }
  return out;
}

Error Named(const std::string& label, Error e) {
  e.message = label + ": " + e.message;
  return e;
}

}  // namespace

Result<Json> MigrationOps::VmIncoming(const Json& args,
                                      const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_RETURN_IF_ERROR(ValidateVmName(vm));
  VCRYPT_ASSIGN_OR_RETURN(std::vector<Wanted> wanted, ParseVolumes(args));
  const bool do_register = BoolArg(args, "register");
  auto guard = state_.locks.Lock("vm:" + vm);
  std::optional<VmRecord> known;
  {
    std::lock_guard lock(state_.mu);
    auto it = state_.store.vms().find(vm);
    if (it != state_.store.vms().end()) known = it->second;
  }

  // A start on the host the VM lives on: nothing to learn from headers
  // (the opens that follow read them anyway), and a domain start should
  // not pay for a second header read and DEK check per disk.
  if (do_register && known && known->away_since.empty()) {
    bool all_known = true;
    for (const auto& w : wanted) {
      auto it = known->disks.find(w.disk);
      all_known = all_known && it != known->disks.end() &&
                  SameUuid(it->second.uuid, w.uuid) &&
                  it->second.is_file == !w.image.empty();
    }
    if (all_known)
      return Json{{"vm", vm},
                  {"provider", known->provider},
                  {"kek_id", known->kek.kek_id},
                  {"registered", false},
                  {"disks", Json::array()}};
  }

  struct Found {
    std::string disk, device;
    bool is_file;
    VolumeHeader hdr;
    VcryptToken token;
  };
  std::vector<Found> found;
  for (const auto& w : wanted) {
    const std::string label = vm + "/" + w.disk;
    VolumeLocator::Target t;
    t.vm = vm;
    t.disk = w.disk;
    t.uuid = w.uuid;
    t.is_file = !w.image.empty();
    if (t.is_file) {
      t.device = w.image;
    } else if (known && known->disks.count(w.disk) &&
               !known->disks.at(w.disk).is_file &&
               SameUuid(known->disks.at(w.disk).uuid, w.uuid)) {
      t.device = known->disks.at(w.disk).device;
    } else {
      // Not known here: the shared storage's device, by its UUID.
      const std::string link = state_.options.by_uuid_dir + "/" + w.uuid;
      std::error_code ec;
      std::string dev = std::filesystem::canonical(link, ec).string();
      if (ec)
        return MakeError(ErrorCode::kNotFound,
                         label + ": no block device with LUKS UUID " + w.uuid +
                             " on this host (" + link + ": " + ec.message() +
                             "); is the shared storage attached here?");
      t.device = dev;
    }
    auto hdr = locator_.LocateVolume(&t);
    if (!hdr.ok()) return Named(label, std::move(hdr).error());
    if (!hdr->token_json)
      return MakeError(ErrorCode::kInvalidVolume,
                       label + ": " + t.device +
                           " is not a vcrypt volume (no vcrypt token)");
    auto token = VcryptToken::Parse(*hdr->token_json);
    if (!token.ok()) return Named(label, std::move(token).error());
    if (token->vm != vm || token->disk != w.disk)
      return MakeError(ErrorCode::kInvalidVolume,
                       label + ": " + t.device + " holds volume " + token->vm +
                           "/" + token->disk + ", not " + label);
    for (const auto& f : found)
      if (f.token.provider_name != token->provider_name ||
          f.token.kek.kek_id != token->kek.kek_id)
        return MakeError(ErrorCode::kInvalidVolume,
                         label + " and " + vm + "/" + f.disk +
                             " are wrapped under different KEKs (an "
                             "interrupted rekey?): finish the rekey on the "
                             "host that started it before migrating");
    found.push_back({w.disk, t.device, t.is_file, std::move(hdr).value(),
                     std::move(token).value()});
  }

  // Proof that this host can open every volume: each DEK unwraps under
  // the KEK this host's provider produces, and the LUKS digest agrees.
  std::shared_ptr<KeyProvider> provider;
  for (const auto& f : found) {
    const std::string label = vm + "/" + f.disk;
    auto u = keys_.UnwrapVolumeDek(f.token, f.hdr.uuid, f.device, ctx);
    if (!u.ok()) return Named(label, std::move(u).error());
    if (Status s = VerifyDek(f.device, u->dek); !s.ok())
      return Named(label, std::move(s).error());
    provider = u->provider;
  }
  const KekRef& kek = found[0].token.kek;

  Json disks = Json::array();
  for (const auto& f : found)
    disks.push_back(
        {{"disk", f.disk}, {"device", f.device}, {"uuid", f.hdr.uuid}});
  Json out{{"vm", vm},
           {"provider", provider->name()},
           {"kek_id", kek.kek_id},
           {"registered", false},
           {"disks", disks}};
  if (!do_register) {
    // A check only: a VM this host does not know keeps no KEK here (the
    // migration may never come; its prepare fetches again).
    if (!known) {
      auto evictions = keys_.EvictKeks(ctx, [&](const KekCache::EntryInfo& e) {
        return e.provider == provider->name() && e.kek_id == kek.kek_id;
      });
      state_.Audit(evictions);
    }
    return out;
  }

  // The headers are the truth; the inventory follows them.
  VmRecord rec;
  if (known) {
    rec = *known;
  } else {
    rec.created = NowRfc3339();
    rec.auto_unlock = true;
  }
  if (!rec.rekey) {
    rec.provider = provider->name();
    rec.kek = kek;
  }
  for (const auto& f : found)
    rec.disks[f.disk] =
        DiskRecord{f.device, f.is_file, f.hdr.uuid, f.hdr.sector_size};
  rec.away_since.clear();
  {
    std::lock_guard lock(state_.mu);
    VCRYPT_RETURN_IF_ERROR(state_.store.PutVm(vm, rec));
  }
  out["registered"] = !known.has_value();
  return out;
}

Result<Json> MigrationOps::VmDepart(const Json& args, const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_RETURN_IF_ERROR(ValidateVmName(vm));
  VCRYPT_ASSIGN_OR_RETURN(std::string reason, StrArg(args, "reason"));
  if (reason != "migrated" && reason != "saved")
    return MakeError(ErrorCode::kInvalidArgument,
                     "vm.depart's reason is 'migrated' or 'saved'");
  auto guard = state_.locks.Lock("vm:" + vm);
  VCRYPT_ASSIGN_OR_RETURN(VmRecord rec, state_.FindVm(vm));
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  Json open = Json::array();
  for (const auto& [dn, d] : rec.disks)
    for (const auto& m : maps)
      if (SameUuid(m.luks_uuid, d.uuid)) {
        open.push_back(dn);
        break;
      }
  if (!open.empty())
    return Json{
        {"vm", vm}, {"departed", false}, {"evicted", 0}, {"open", open}};
  auto evictions = keys_.EvictKeks(ctx, [&](const KekCache::EntryInfo& e) {
    return e.vm == vm ||
           (e.provider == rec.provider && e.kek_id == rec.kek.kek_id);
  });
  for (auto& r : evictions) r.reason = reason;
  if (rec.away_since.empty()) {
    rec.away_since = NowRfc3339();
    std::lock_guard lock(state_.mu);
    Status s = state_.store.PutVm(vm, rec);
    if (!s.ok()) {
      state_.Audit(evictions);
      return std::move(s).error();
    }
  }
  state_.Audit(evictions);
  return Json{{"vm", vm},
              {"departed", true},
              {"evicted", evictions.size()},
              {"open", open}};
}

}  // namespace vcrypt
