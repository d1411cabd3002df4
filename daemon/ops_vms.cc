// VM ops: vm.create, vm.list, vm.show, vm.set, vm.register,
// vm.unregister and vm.delete (daemon/ops_vms.h).
#include "daemon/ops_vms.h"

#include <cstring>

#include "common/names.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::AllMappings;
using controller_ops::BoolArg;
using controller_ops::Exists;
using controller_ops::IsBlockDevice;
using controller_ops::OptStr;
using controller_ops::SameUuid;
using controller_ops::StrArg;
using controller_ops::Usage;

}  // namespace

// --- VMs -------------------------------------------------------------------

Result<Json> VmOps::VmCreate(const Json& args, const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_RETURN_IF_ERROR(ValidateVmName(vm));
  auto guard = state_.locks.Lock("vm:" + vm);
  std::shared_ptr<KeyProvider> provider;
  {
    std::lock_guard lock(state_.mu);
    if (state_.store.vms().count(vm))
      return MakeError(ErrorCode::kExists, "VM '" + vm + "' already exists");
    std::optional<std::string> pname = OptStr(args, "provider");
    if (!pname) pname = state_.store.default_provider();
    if (!pname)
      return MakeError(ErrorCode::kNotFound,
                       "no key provider configured; add one with "
                       "'vcryptctl provider add native NAME'");
    auto it = state_.providers.find(*pname);
    if (it == state_.providers.end())
      return MakeError(ErrorCode::kNotFound,
                       "no key provider named '" + *pname + "'");
    provider = it->second;
  }
  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kKekCreate);
  audit.vm = vm;
  audit.provider = provider->name();
  auto created = provider->CreateKek(vm);
  if (!created.ok()) {
    state_.Audit(audit.Outcome(created));
    return std::move(created).error();
  }
  NewKek nk = std::move(created).value();
  audit.kek_id = nk.ref.kek_id;
  VmRecord rec;
  rec.provider = provider->name();
  rec.kek = nk.ref;
  rec.created = NowRfc3339();
  rec.auto_unlock = !BoolArg(args, "no_auto_unlock");
  Status st;
  {
    std::lock_guard lock(state_.mu);
    st = state_.store.PutVm(vm, rec);
  }
  // A KEK the inventory could not record is a failed create, and is
  // destroyed again: no orphan key on a KMS.
  state_.Audit(audit.Outcome(st));
  if (!st.ok()) {
    AuditRecord destroy = audit;
    destroy.op = AuditOp::kKekDestroy;
    state_.Audit(destroy.Outcome(provider->DestroyKek(nk.ref)));
    return std::move(st).error();
  }
  state_.cache.Put(provider->name(), nk.ref.kek_id, vm, std::move(nk.kek));
  return Json{
      {"vm", vm}, {"provider", rec.provider}, {"kek_id", rec.kek.kek_id}};
}

Result<Json> VmOps::VmList() {
  std::map<std::string, VmRecord> vms;
  {
    std::lock_guard lock(state_.mu);
    vms = state_.store.vms();
  }
  Json out = Json::array();
  for (const auto& [name, vm] : vms) {
    out.push_back(
        {{"vm", name},
         {"provider", vm.provider},
         {"kek_id", vm.kek.kek_id},
         {"kek_cached", state_.cache.Contains(vm.provider, vm.kek.kek_id)},
         {"auto_unlock", vm.auto_unlock},
         {"disks", vm.disks.size()},
         {"created", vm.created}});
    if (!vm.away_since.empty()) out.back()["away_since"] = vm.away_since;
  }
  return Json{{"vms", out}};
}

Result<Json> VmOps::VmShow(const Json& args) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_ASSIGN_OR_RETURN(VmRecord rec, state_.FindVm(vm));
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  Json disks = Json::array();
  for (const auto& [dn, d] : rec.disks)
    disks.push_back(status_ops_.DiskStatus(vm, dn, d, maps));
  Json out{{"vm", vm},
           {"provider", rec.provider},
           {"kek_id", rec.kek.kek_id},
           {"kek_cached", state_.cache.Contains(rec.provider, rec.kek.kek_id)},
           {"auto_unlock", rec.auto_unlock},
           {"created", rec.created},
           {"disks", disks}};
  if (!rec.away_since.empty()) out["away_since"] = rec.away_since;
  return out;
}

// Settings of a registered VM, read by the boot path (vm.show, open with
// `boot`, open_all with `auto`): auto_unlock, and away (the VM runs on
// another host: docs/cluster.md). Either or both.
Result<Json> VmOps::VmSet(const Json& args) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  auto auto_arg = args.find("auto_unlock");
  auto away_arg = args.find("away");
  const bool has_auto = auto_arg != args.end();
  const bool has_away = away_arg != args.end();
  if ((!has_auto && !has_away) || (has_auto && !auto_arg->is_boolean()) ||
      (has_away && !away_arg->is_boolean()))
    return Usage("vm set needs --auto-unlock on|off and/or --away on|off");
  auto guard = state_.locks.Lock("vm:" + vm);
  std::lock_guard lock(state_.mu);
  auto it = state_.store.vms().find(vm);
  if (it == state_.store.vms().end())
    return MakeError(ErrorCode::kNotFound, "no VM named '" + vm + "'");
  VmRecord rec = it->second;
  if (has_auto) rec.auto_unlock = auto_arg->get<bool>();
  if (has_away) {
    const bool away = away_arg->get<bool>();
    // Keeps the first departure's time when set again.
    if (!away)
      rec.away_since.clear();
    else if (rec.away_since.empty())
      rec.away_since = NowRfc3339();
  }
  VCRYPT_RETURN_IF_ERROR(state_.store.PutVm(vm, rec));
  return Json{{"vm", vm},
              {"auto_unlock", rec.auto_unlock},
              {"away", !rec.away_since.empty()}};
}

Result<Json> VmOps::VmUnregister(const Json& args, bool is_delete,
                                 const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  auto guard = state_.locks.Lock("vm:" + vm);
  // No open of this VM runs from here on (OpenVolume).
  auto life = state_.locks.Lock("vm-life:" + vm);
  VCRYPT_ASSIGN_OR_RETURN(VmRecord rec, state_.FindVm(vm));
  // --erase: every disk must be found first (by LUKS UUID, as open does),
  // so that the delete does not stop half-way over a missing one.
  const bool erase = is_delete && BoolArg(args, "erase");
  std::vector<std::pair<std::string, Target>> to_erase;  // disk, where
  if (erase) {
    for (const auto& [dn, d] : rec.disks) {
      VCRYPT_ASSIGN_OR_RETURN(
          Target t, locator_.ResolveTarget(Json{{"vm", vm}, {"disk", dn}}));
      auto hdr = locator_.LocateVolume(&t);
      if (!hdr.ok())
        return MakeError(hdr.error().code, "cannot erase " + vm + "/" + dn +
                                               ": " + hdr.error().message +
                                               "; nothing was deleted");
      to_erase.emplace_back(dn, std::move(t));
    }
  }
  // Refuse before touching anything if any volume is in use.
  std::vector<MappingInfo> to_close;
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  for (const auto& [dn, d] : rec.disks) {
    for (const auto& m : maps) {
      if (!SameUuid(m.luks_uuid, d.uuid)) continue;
      if (m.open_count > 0)
        return MakeError(ErrorCode::kBusy,
                         "volume " + vm + "/" + dn + " (" + m.path +
                             ") is in use; stop the guest or unmount it first");
      to_close.push_back(m);
    }
  }
  Json closed = Json::array();
  for (const auto& m : to_close) {
    VCRYPT_RETURN_IF_ERROR(Deactivate(m.name));
    closed.push_back(m.path);
  }
  // Erase before the KEK goes: a failure here leaves the VM registered
  // (and every KEK in place), so the same command can be repeated.
  Json erased = Json::array();
  for (const auto& [dn, t] : to_erase) {
    AuditRecord audit = AuditRecord::For(ctx, AuditOp::kDekErase);
    audit.vm = vm;
    audit.disk = dn;
    audit.volume = *t.uuid;
    Status st = EraseKeyMaterial(t.device);
    state_.Audit(audit.Outcome(st));
    if (!st.ok())
      return MakeError(st.error().code,
                       "cannot erase " + vm + "/" + dn + ": " +
                           st.error().message +
                           "; the VM is still registered, retry");
    erased.push_back(dn);
  }
  bool destroyed = false;
  if (is_delete && BoolArg(args, "destroy_key")) {
    AuditRecord audit = AuditRecord::For(ctx, AuditOp::kKekDestroy);
    audit.vm = vm;
    audit.provider = rec.provider;
    audit.kek_id = rec.kek.kek_id;
    auto provider = state_.FindProvider(rec.provider);
    Status st = provider ? provider->DestroyKek(rec.kek)
                         : MakeError(ErrorCode::kKeyUnavailable,
                                     "cannot destroy the KEK: provider '" +
                                         rec.provider + "' is not configured");
    state_.Audit(audit.Outcome(st));
    VCRYPT_RETURN_IF_ERROR(st);
    destroyed = true;
  }
  auto evictions = keys_.EvictKeks(ctx, [&](const KekCache::EntryInfo& e) {
    return e.vm == vm ||
           (e.provider == rec.provider && e.kek_id == rec.kek.kek_id);
  });
  state_.Audit(evictions);
  size_t evicted = evictions.size();
  {
    std::lock_guard lock(state_.mu);
    VCRYPT_RETURN_IF_ERROR(state_.store.RemoveVm(vm));
  }
  for (const auto& [dn, d] : rec.disks) {
    state_.failures.ClearFailure(d.uuid);
    (void)state_.failures.MissingSince(d.uuid, false);
  }
  return Json{
      {"vm", vm},         {is_delete ? "deleted" : "unregistered", true},
      {"closed", closed}, {"evicted", evicted},
      {"erased", erased}, {"kek_destroyed", destroyed}};
}

// --- register ----------------------------------------------------------------

// Rebuilds a VM's inventory entry from its volumes' headers (after
// `vm unregister`, or on another host). Every volume must carry a token of
// this VM and the same KEK, and that KEK must unwrap every DEK, which the
// LUKS2 digest then confirms: nothing is registered that this host could
// not open.
Result<Json> VmOps::VmRegister(const Json& args, const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_RETURN_IF_ERROR(ValidateVmName(vm));
  auto from = args.find("from");
  if (from == args.end() || !from->is_array() || from->empty())
    return Usage("vm register needs --from PATH (one per volume)");
  std::vector<std::string> paths;
  for (const auto& p : *from) {
    if (!p.is_string() || p.get<std::string>().empty() ||
        p.get<std::string>()[0] != '/')
      return MakeError(ErrorCode::kInvalidArgument,
                       "--from takes absolute paths");
    paths.push_back(p.get<std::string>());
  }
  auto guard = state_.locks.Lock("vm:" + vm);
  {
    std::lock_guard lock(state_.mu);
    if (state_.store.vms().count(vm))
      return MakeError(ErrorCode::kExists,
                       "VM '" + vm + "' is already registered");
  }
  struct Found {
    std::string path;
    VolumeHeader hdr;
    VcryptToken token;
  };
  std::vector<Found> found;
  for (const auto& path : paths) {
    if (!Exists(path))
      return MakeError(ErrorCode::kNotFound, path + " does not exist");
    VCRYPT_ASSIGN_OR_RETURN(VolumeHeader hdr, ReadHeader(path));
    if (!hdr.token_json)
      return MakeError(ErrorCode::kInvalidVolume,
                       path + " is not a vcrypt volume (no vcrypt token)");
    VCRYPT_ASSIGN_OR_RETURN(VcryptToken t, VcryptToken::Parse(*hdr.token_json));
    if (t.vm != vm)
      return MakeError(ErrorCode::kInvalidVolume,
                       path + " holds volume " + t.vm + "/" + t.disk +
                           " of VM '" + t.vm + "', not of '" + vm + "'");
    for (const auto& f : found) {
      if (f.token.disk == t.disk)
        return MakeError(
            ErrorCode::kInvalidArgument,
            path + " and " + f.path + " both hold disk '" + t.disk + "'");
      if (SameUuid(f.hdr.uuid, hdr.uuid))
        return MakeError(ErrorCode::kInvalidArgument,
                         path + " and " + f.path + " are the same volume");
      if (f.token.provider_name != t.provider_name ||
          f.token.kek.kek_id != t.kek.kek_id)
        return MakeError(
            ErrorCode::kInvalidVolume,
            path + " and " + f.path +
                " are wrapped under different KEKs (an interrupted "
                "rekey?): register the VM from the volumes of one KEK, "
                "or finish the rekey on the host that started it");
    }
    found.push_back({path, std::move(hdr), std::move(t)});
  }
  // Proof that this host can use the KEK: every DEK unwraps and matches.
  std::shared_ptr<KeyProvider> provider;
  for (const auto& f : found) {
    VCRYPT_ASSIGN_OR_RETURN(
        UnwrappedDek u,
        keys_.UnwrapVolumeDek(f.token, f.hdr.uuid, f.path, ctx));
    VCRYPT_RETURN_IF_ERROR(VerifyDek(f.path, u.dek));
    provider = u.provider;
  }
  VmRecord rec;
  rec.provider = provider->name();
  rec.kek = found[0].token.kek;
  rec.created = NowRfc3339();
  rec.auto_unlock = !BoolArg(args, "no_auto_unlock");
  Json disks = Json::array();
  for (const auto& f : found) {
    rec.disks[f.token.disk] = DiskRecord{f.path, !IsBlockDevice(f.path),
                                         f.hdr.uuid, f.hdr.sector_size};
    disks.push_back(
        {{"disk", f.token.disk}, {"device", f.path}, {"uuid", f.hdr.uuid}});
  }
  {
    std::lock_guard lock(state_.mu);
    VCRYPT_RETURN_IF_ERROR(state_.store.PutVm(vm, rec));
  }
  return Json{{"vm", vm},
              {"provider", rec.provider},
              {"kek_id", rec.kek.kek_id},
              {"disks", disks}};
}

}  // namespace vcrypt
