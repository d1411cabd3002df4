// open, open_all and close (daemon/ops_open.h).
#include "daemon/ops_open.h"

#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <system_error>
#include <thread>

#include "common/names.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::AllMappings;
using controller_ops::BoolArg;
using controller_ops::ErrorJson;
using controller_ops::Exists;
using controller_ops::SameUuid;

}  // namespace

// --- open / close ------------------------------------------------------------

Result<Json> OpenOps::Open(const Json& args, const AuditContext& ctx) {
  // The boot path's open (vcryptctl unlock) asks, in the same request,
  // whether the VM wants its volumes opened at boot: one request per
  // volume instead of a vm.show (which lists every mapping) and an open.
  if (BoolArg(args, "boot")) {
    auto it = args.find("vm");
    if (it == args.end() || !it->is_string())
      return controller_ops::Usage("'boot' goes with 'vm' and 'disk'");
    auto vm = state_.FindVm(it->get<std::string>());
    if (!vm.ok() && vm.error().code == ErrorCode::kNotFound)
      return Json{{"vm", *it}, {"skipped", "not_registered"}};
    if (!vm.ok()) return std::move(vm).error();
    if (!vm->auto_unlock)
      return Json{{"vm", *it}, {"skipped", "auto_unlock_off"}};
    // It runs on another host now (docs/cluster.md): neither its volumes
    // nor its KEK are this host's business until it comes back.
    if (!vm->away_since.empty()) return Json{{"vm", *it}, {"skipped", "away"}};
  }
  std::string uuid;
  auto r = OpenVolume(args, ctx, &uuid);
  if (!uuid.empty()) {
    if (r.ok()) {
      state_.failures.ClearFailure(uuid);
    } else {
      state_.failures.RecordFailure(uuid, r.error());
    }
  }
  return r;
}

Result<Json> OpenOps::OpenVolume(const Json& args, const AuditContext& ctx,
                                 std::string* uuid) {
  VCRYPT_ASSIGN_OR_RETURN(Target target, locator_.ResolveTarget(args));
  if (target.uuid) *uuid = *target.uuid;
  VolumeHeader hdr;
  if (target.vm) {
    VCRYPT_ASSIGN_OR_RETURN(hdr, locator_.LocateVolume(&target));
  } else {
    if (!Exists(target.device))
      return MakeError(ErrorCode::kNotFound,
                       "device " + target.device + " does not exist");
    VCRYPT_ASSIGN_OR_RETURN(hdr, ReadHeader(target.device));
  }
  *uuid = hdr.uuid;
  struct stat st;
  if (stat(target.device.c_str(), &st) != 0)
    return MakeError(ErrorCode::kNotFound,
                     "device " + target.device + " does not exist");
  if (!hdr.token_json)
    return MakeError(ErrorCode::kInvalidVolume,
                     target.device +
                         " is a LUKS volume but not a vcrypt volume "
                         "(no vcrypt token); open it with cryptsetup");
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken token,
                          VcryptToken::Parse(*hdr.token_json));
  if (target.vm && (token.vm != *target.vm || token.disk != *target.disk))
    return MakeError(ErrorCode::kInvalidVolume,
                     target.device + " holds volume " + token.vm + "/" +
                         token.disk + ", not " + *target.vm + "/" +
                         *target.disk);
  if (!DeviceMapperAvailable()) {
    // Nothing can be open without device-mapper. A missing key provider
    // would stop the open on a kernel with it too: report that first.
    VCRYPT_RETURN_IF_ERROR(keys_.ProviderForToken(token));
    return MakeError(
        ErrorCode::kNoDeviceMapper,
        "device-mapper not available in this kernel; cannot open volumes "
        "(load dm-mod and dm-crypt, or run on a host kernel that has them)");
  }
  const std::string name = MappingName(token.vm, token.disk);
  auto already_open = [&](const MappingInfo& m) {
    return Json{{"vm", token.vm},
                {"disk", token.disk},
                {"path", m.path},
                {"device", target.device},
                {"already_open", true}};
  };
  // An open volume answers at once, even while a long operation (a deep
  // rekey's reencryption) holds its lock.
  {
    VCRYPT_ASSIGN_OR_RETURN(auto mapped, FindMappingByUuid(hdr.uuid));
    if (mapped) return already_open(*mapped);
  }
  // The boot path's opens (`auto`) leave a volume an admin closed on this
  // boot closed; an explicit open ends that (daemon/held_closed.h).
  if (BoolArg(args, "auto") || BoolArg(args, "boot")) {
    if (state_.held_closed.IsHeld(hdr.uuid, target.device))
      return Json{{"vm", token.vm},
                  {"disk", token.disk},
                  {"device", target.device},
                  {"already_open", false},
                  {"held_closed", true}};
  } else {
    VCRYPT_RETURN_IF_ERROR(state_.held_closed.Release(hdr.uuid));
  }
  // The VM is not unregistered or deleted while this open runs
  // (VmUnregister takes this lock exclusively), so once an unregister
  // returns no open of its VM maps a volume, caches its KEK or puts the
  // VM back into the inventory. An open that waited for the unregister
  // finds the VM gone.
  auto life = state_.locks.LockShared("vm-life:" + token.vm);
  if (target.vm) {
    std::lock_guard lock(state_.mu);
    auto it = state_.store.vms().find(*target.vm);
    if (it == state_.store.vms().end() || !it->second.disks.count(*target.disk))
      return MakeError(ErrorCode::kNotFound,
                       "no VM named '" + *target.vm + "' with a disk '" +
                           *target.disk + "' (unregistered meanwhile)");
  }

  // Never two mappings for one volume: serialise per LUKS UUID and reuse
  // an existing mapping.
  auto guard = state_.locks.Lock("vol:" + hdr.uuid);
  VCRYPT_ASSIGN_OR_RETURN(auto existing, FindMappingByUuid(hdr.uuid));
  if (existing) return already_open(*existing);
  ActivateParams ap;
  ap.device = target.device;
  ap.name = name;
  ap.discards = BoolArg(args, "discards");
  ap.bypass_workqueues = state_.options.bypass_workqueues;
  // Read again under the volume lock: a rekey that held it while this
  // open waited may have replaced the token, or left a deep rekey's marker.
  VCRYPT_ASSIGN_OR_RETURN(hdr, ReadHeader(target.device));
  if (!hdr.token_json)
    return MakeError(ErrorCode::kInvalidVolume,
                     target.device + " lost its vcrypt token");
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken current,
                          VcryptToken::Parse(*hdr.token_json));
  if (current.vm != token.vm || current.disk != token.disk)
    return MakeError(
        ErrorCode::kInvalidVolume,
        target.device + " now holds volume " + current.vm + "/" + current.disk);
  token = std::move(current);
  std::shared_ptr<KeyProvider> provider;
  std::string path;
  if (hdr.deep_rekey_marker) {
    // In the middle of a deep rekey (an interrupted one: a running one
    // holds the volume lock).
    VCRYPT_ASSIGN_OR_RETURN(ReencryptState rs,
                            ReadReencryptState(target.device));
    VCRYPT_ASSIGN_OR_RETURN(
        path, rekey_ops_.ActivateMidRekey(ap, rs, token, hdr.uuid, ctx));
    VCRYPT_ASSIGN_OR_RETURN(provider, keys_.ProviderForToken(token));
  } else {
    VCRYPT_ASSIGN_OR_RETURN(
        UnwrappedDek u,
        keys_.UnwrapVolumeDek(token, hdr.uuid, target.device, ctx));
    provider = u.provider;
    VCRYPT_ASSIGN_OR_RETURN(path, Activate(ap, u.dek));
  }

  // Opening by path registers a volume the inventory does not know yet
  // (the inventory is rebuilt from volumes, never the other way round),
  // and records where a known one is now.
  {
    std::lock_guard lock(state_.mu);
    auto it = state_.store.vms().find(token.vm);
    VmRecord rec;
    bool changed = false;
    if (it == state_.store.vms().end()) {
      rec.provider = provider->name();
      rec.kek = token.kek;
      rec.created = NowRfc3339();
      changed = true;
    } else {
      rec = it->second;
    }
    const bool is_file = !S_ISBLK(st.st_mode);
    auto dit = rec.disks.find(token.disk);
    if (rec.kek.kek_id == token.kek.kek_id && dit == rec.disks.end()) {
      rec.disks[token.disk] =
          DiskRecord{target.device, is_file, hdr.uuid, hdr.sector_size};
      changed = true;
    } else if (dit != rec.disks.end() && SameUuid(dit->second.uuid, hdr.uuid) &&
               dit->second.is_file == is_file &&
               dit->second.device != target.device) {
      dit->second.device = target.device;
      changed = true;
    }
    if (changed)
      (void)state_.store.PutVm(token.vm, rec);  // index only; open succeeded
  }
  return Json{{"vm", token.vm},
              {"disk", token.disk},
              {"path", path},
              {"device", target.device},
              {"already_open", false}};
}

Result<Json> OpenOps::OpenAll(const Json& args, const AuditContext& ctx) {
  const bool files_only = BoolArg(args, "file_backed");
  const bool automatic = BoolArg(args, "auto");
  struct Item {
    std::string vm, disk, uuid;
  };
  std::vector<Item> items;
  {
    std::lock_guard lock(state_.mu);
    for (const auto& [vn, vm] : state_.store.vms()) {
      // A VM that migrated away is opened where it runs, not here.
      if (!vm.auto_unlock || !vm.away_since.empty()) continue;
      for (const auto& [dn, d] : vm.disks)
        if (!files_only || d.is_file) items.push_back({vn, dn, d.uuid});
    }
  }
  VCRYPT_ASSIGN_OR_RETURN(auto maps, AllMappings());
  std::vector<Json> results(items.size());
  std::vector<size_t> todo;
  for (size_t i = 0; i < items.size(); ++i) {
    const MappingInfo* mapped = nullptr;
    for (const auto& m : maps)
      if (SameUuid(m.luks_uuid, items[i].uuid)) mapped = &m;
    if (mapped == nullptr) {
      todo.push_back(i);
      continue;
    }
    state_.failures.ClearFailure(items[i].uuid);
    results[i] = {{"vm", items[i].vm},
                  {"disk", items[i].disk},
                  {"ok", true},
                  {"path", mapped->path},
                  {"already_open", true}};
  }
  // A few at a time: KEKs of one VM are fetched once (GetKek), and a
  // standard provider batches concurrent fetches into one KMIP message.
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t k; (k = next.fetch_add(1)) < todo.size();) {
      const Item& it = items[todo[k]];
      Json& out = results[todo[k]];
      out = {{"vm", it.vm}, {"disk", it.disk}};
      auto r = Open(Json{{"vm", it.vm}, {"disk", it.disk}, {"auto", automatic}},
                    ctx);
      if (r.ok() && r->value("held_closed", false)) {
        out["ok"] = true;
        out["held_closed"] = true;
        out["already_open"] = false;
      } else if (r.ok()) {
        out["ok"] = true;
        out["path"] = (*r)["path"];
        out["already_open"] = (*r)["already_open"];
      } else {
        out["ok"] = false;
        out["error"] = ErrorJson(r.error());
      }
    }
  };
  std::vector<std::thread> threads;
  const size_t n = std::min(state_.options.open_all_threads, todo.size());
  for (size_t i = 1; i < n; ++i) {
    try {
      threads.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // fewer helpers; this thread does the rest
    }
  }
  work();
  for (auto& t : threads) t.join();

  Json opened = Json::array();
  size_t already = 0, failed = 0, held = 0;
  for (const auto& r : results) {
    if (!r.value("ok", false)) {
      ++failed;
    } else if (r.value("held_closed", false)) {
      ++held;
    } else if (r.value("already_open", false)) {
      ++already;
    } else {
      opened.push_back(r["vm"].get<std::string>() + "/" +
                       r["disk"].get<std::string>());
    }
  }
  return Json{{"volumes", results},
              {"opened", opened},
              {"already_open", already},
              {"held_closed", held},
              {"failed", failed}};
}

Result<Json> OpenOps::Close(const Json& args) {
  const bool automatic = BoolArg(args, "auto");
  VCRYPT_ASSIGN_OR_RETURN(Target target, locator_.ResolveTarget(args));
  if (!DeviceMapperAvailable())
    return MakeError(ErrorCode::kNoDeviceMapper,
                     "device-mapper not available in this kernel");
  // Only what vcrypt made: a mapping named vcrypt-* of a volume whose
  // header carries a vcrypt token. Other dm-crypt devices on the host
  // (the root file system's, another tool's) are not vcryptd's to close,
  // whoever asks.
  // "/dev/mapper/vcrypt-..." names the mapping; any other path (an LVM
  // volume under /dev/mapper among them) is the volume's backing device.
  std::optional<MappingInfo> m;
  std::string backing;
  const std::string mapper = "/dev/mapper/" + std::string(kMappingPrefix);
  if (target.device.rfind(mapper, 0) == 0) {
    VCRYPT_ASSIGN_OR_RETURN(MappingInfo mi,
                            QueryMapping(target.device.substr(12)));
    m = mi;
    backing = mi.backing;
  } else {
    backing = target.device;
  }
  const std::string what = m ? m->path + " (on " + backing + ")" : backing;
  auto header = ReadHeader(backing);
  if (!header.ok() && header.error().code == ErrorCode::kInvalidVolume)
    return MakeError(ErrorCode::kInvalidVolume,
                     what + " is not a vcrypt volume nor a vcrypt mapping (" +
                         header.error().message +
                         "); close it with the tool that opened it");
  if (!header.ok()) return std::move(header).error();
  const VolumeHeader& hdr = *header;
  if (!hdr.token_json)
    return MakeError(ErrorCode::kInvalidVolume,
                     what +
                         " is not a vcrypt volume (no vcrypt token); close "
                         "it with the tool that opened it");
  if (!m) {
    VCRYPT_ASSIGN_OR_RETURN(m, FindMappingByUuid(hdr.uuid));
    if (!m) {
      // Closed already (by its unit's stop, say): the admin's close still
      // holds it closed against the boot path.
      if (!automatic)
        VCRYPT_RETURN_IF_ERROR(state_.held_closed.Hold(hdr.uuid, backing));
      return MakeError(ErrorCode::kNotFound,
                       "volume on " + target.device + " is not open");
    }
  }
  if (m->name.rfind(kMappingPrefix, 0) != 0 ||
      !SameUuid(m->luks_uuid, hdr.uuid))
    return MakeError(
        ErrorCode::kInvalidVolume,
        m->path +
            " is not a mapping vcrypt made (vcrypt-<vm>-<disk> "
            "of the volume); close it with the tool that opened it");
  // Never wait long: a deep rekey holds the volume lock for as long as
  // the reencryption runs.
  auto guard =
      state_.locks.LockFor("vol:" + m->luks_uuid, std::chrono::seconds(5));
  if (!guard)
    return MakeError(ErrorCode::kBusy,
                     m->path +
                         " is being worked on (a rekey or another open/close "
                         "of it is running); try again when it is done");
  // Held closed before it closes: a header write racing this close must
  // not let the boot path open it again. Not for the boot path's own close
  // (a unit's stop: `systemctl restart` must open it again).
  if (!automatic)
    VCRYPT_RETURN_IF_ERROR(state_.held_closed.Hold(hdr.uuid, backing));
  VCRYPT_RETURN_IF_ERROR(Deactivate(m->name));
  return Json{{"closed", m->path}};
}

}  // namespace vcrypt
