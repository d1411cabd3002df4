// VM ops: vm.create, vm.list, vm.show, vm.set, vm.unregister and
// vm.delete. vm.register and vm.rekey are in ops_rekey.cc.
#include <cstring>

#include "common/names.h"
#include "daemon/controller.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::BoolArg;
using controller_ops::OptStr;
using controller_ops::SameUuid;
using controller_ops::StrArg;
using controller_ops::Usage;

}  // namespace

// --- VMs -------------------------------------------------------------------

Result<Json> Controller::VmCreate(const Json& args, const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_RETURN_IF_ERROR(ValidateVmName(vm));
  auto guard = locks_.Lock("vm:" + vm);
  std::shared_ptr<KeyProvider> provider;
  {
    std::lock_guard lock(mu_);
    if (store_.vms().count(vm))
      return MakeError(ErrorCode::kExists, "VM '" + vm + "' already exists");
    std::optional<std::string> pname = OptStr(args, "provider");
    if (!pname) pname = store_.default_provider();
    if (!pname)
      return MakeError(ErrorCode::kNotFound,
                       "no key provider configured; add one with "
                       "'vcryptctl provider add native NAME'");
    auto it = providers_.find(*pname);
    if (it == providers_.end())
      return MakeError(ErrorCode::kNotFound,
                       "no key provider named '" + *pname + "'");
    provider = it->second;
  }
  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kKekCreate);
  audit.vm = vm;
  audit.provider = provider->name();
  auto created = provider->CreateKek(vm);
  if (!created.ok()) {
    Audit(audit.Outcome(created));
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
    std::lock_guard lock(mu_);
    st = store_.PutVm(vm, rec);
  }
  // A KEK the inventory could not record is a failed create, and is
  // destroyed again: no orphan key on a KMS.
  Audit(audit.Outcome(st));
  if (!st.ok()) {
    AuditRecord destroy = audit;
    destroy.op = AuditOp::kKekDestroy;
    Audit(destroy.Outcome(provider->DestroyKek(nk.ref)));
    return std::move(st).error();
  }
  cache_.Put(provider->name(), nk.ref.kek_id, vm, std::move(nk.kek));
  return Json{
      {"vm", vm}, {"provider", rec.provider}, {"kek_id", rec.kek.kek_id}};
}

Result<Json> Controller::VmList() {
  std::map<std::string, VmRecord> vms;
  {
    std::lock_guard lock(mu_);
    vms = store_.vms();
  }
  Json out = Json::array();
  for (const auto& [name, vm] : vms) {
    out.push_back({{"vm", name},
                   {"provider", vm.provider},
                   {"kek_id", vm.kek.kek_id},
                   {"kek_cached", cache_.Contains(vm.provider, vm.kek.kek_id)},
                   {"auto_unlock", vm.auto_unlock},
                   {"disks", vm.disks.size()},
                   {"created", vm.created}});
  }
  return Json{{"vms", out}};
}

Result<Json> Controller::VmShow(const Json& args) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_ASSIGN_OR_RETURN(VmRecord rec, FindVm(vm));
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  Json disks = Json::array();
  for (const auto& [dn, d] : rec.disks)
    disks.push_back(DiskStatus(vm, dn, d, maps));
  return Json{{"vm", vm},
              {"provider", rec.provider},
              {"kek_id", rec.kek.kek_id},
              {"kek_cached", cache_.Contains(rec.provider, rec.kek.kek_id)},
              {"auto_unlock", rec.auto_unlock},
              {"created", rec.created},
              {"disks", disks}};
}

// Settings of a registered VM; today only auto_unlock (read by the boot
// units through vm.show, and by open_all).
Result<Json> Controller::VmSet(const Json& args) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  auto it_arg = args.find("auto_unlock");
  if (it_arg == args.end() || !it_arg->is_boolean())
    return Usage("vm set needs --auto-unlock on|off");
  auto guard = locks_.Lock("vm:" + vm);
  std::lock_guard lock(mu_);
  auto it = store_.vms().find(vm);
  if (it == store_.vms().end())
    return MakeError(ErrorCode::kNotFound, "no VM named '" + vm + "'");
  VmRecord rec = it->second;
  rec.auto_unlock = it_arg->get<bool>();
  VCRYPT_RETURN_IF_ERROR(store_.PutVm(vm, rec));
  return Json{{"vm", vm}, {"auto_unlock", rec.auto_unlock}};
}

Result<Json> Controller::VmUnregister(const Json& args, bool is_delete,
                                      const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  auto guard = locks_.Lock("vm:" + vm);
  // No open of this VM runs from here on (OpenVolume).
  auto life = locks_.Lock("vm-life:" + vm);
  VCRYPT_ASSIGN_OR_RETURN(VmRecord rec, FindVm(vm));
  // --erase: every disk must be found first (by LUKS UUID, as open does),
  // so that the delete does not stop half-way over a missing one.
  const bool erase = is_delete && BoolArg(args, "erase");
  std::vector<std::pair<std::string, Target>> to_erase;  // disk, where
  if (erase) {
    for (const auto& [dn, d] : rec.disks) {
      VCRYPT_ASSIGN_OR_RETURN(Target t,
                              ResolveTarget(Json{{"vm", vm}, {"disk", dn}}));
      auto hdr = LocateVolume(&t);
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
    Audit(audit.Outcome(st));
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
    auto provider = FindProvider(rec.provider);
    Status st = provider ? provider->DestroyKek(rec.kek)
                         : MakeError(ErrorCode::kKeyUnavailable,
                                     "cannot destroy the KEK: provider '" +
                                         rec.provider + "' is not configured");
    Audit(audit.Outcome(st));
    VCRYPT_RETURN_IF_ERROR(st);
    destroyed = true;
  }
  auto evictions = EvictKeks(ctx, [&](const KekCache::EntryInfo& e) {
    return e.vm == vm ||
           (e.provider == rec.provider && e.kek_id == rec.kek.kek_id);
  });
  Audit(evictions);
  size_t evicted = evictions.size();
  {
    std::lock_guard lock(mu_);
    VCRYPT_RETURN_IF_ERROR(store_.RemoveVm(vm));
  }
  for (const auto& [dn, d] : rec.disks) {
    failures_.ClearFailure(d.uuid);
    (void)failures_.MissingSince(d.uuid, false);
  }
  return Json{
      {"vm", vm},         {is_delete ? "deleted" : "unregistered", true},
      {"closed", closed}, {"evicted", evicted},
      {"erased", erased}, {"kek_destroyed", destroyed}};
}

}  // namespace vcrypt
