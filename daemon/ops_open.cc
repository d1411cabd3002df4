// open, open_all and close, and what they share with the other groups:
// finding a volume (ResolveTarget, LocateVolume) and unwrapping its DEK
// (ProviderForToken, UnwrapVolumeDek).
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <thread>

#include "common/aead.h"
#include "common/names.h"
#include "daemon/controller.h"
#include "daemon/ops_util.h"
#include "daemon/unavailable_provider.h"
#include "dmtools/responsive.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::BoolArg;
using controller_ops::ErrorJson;
using controller_ops::Exists;
using controller_ops::GuestContent;
using controller_ops::IsUuidText;
using controller_ops::OptStr;
using controller_ops::SameUuid;
using controller_ops::StrArg;
using controller_ops::VolumeAudit;

}  // namespace

// --- open / close ------------------------------------------------------------

Result<Controller::Target> Controller::ResolveTarget(const Json& args) {
  Target t;
  if (auto path = OptStr(args, "path")) {
    if (path->empty() || (*path)[0] != '/')
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + *path + "' is not an absolute path");
    t.device = *path;
    // A path the inventory knows: a failure before its header is read is
    // still that volume's.
    std::lock_guard lock(mu_);
    for (const auto& [vn, v] : store_.vms())
      for (const auto& [dn, d] : v.disks)
        if (d.device == t.device) {
          t.uuid = d.uuid;
          t.is_file = d.is_file;
        }
    return t;
  }
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  VCRYPT_ASSIGN_OR_RETURN(std::string disk, StrArg(args, "disk"));
  VCRYPT_RETURN_IF_ERROR(ValidateVolumeNames(vm, disk));
  std::lock_guard lock(mu_);
  auto it = store_.vms().find(vm);
  if (it == store_.vms().end())
    return MakeError(ErrorCode::kNotFound, "no VM named '" + vm + "'");
  auto dit = it->second.disks.find(disk);
  if (dit == it->second.disks.end())
    return MakeError(ErrorCode::kNotFound,
                     "VM '" + vm + "' has no disk '" + disk + "'");
  t.device = dit->second.device;
  t.uuid = dit->second.uuid;
  t.is_file = dit->second.is_file;
  t.vm = vm;
  t.disk = disk;
  return t;
}

Result<VolumeHeader> Controller::LocateVolume(Target* t) {
  const std::string& uuid = *t->uuid;
  const std::string vol = *t->vm + "/" + *t->disk;
  // The header at `dev` if it is this volume's, else why not.
  auto probe = [&](const std::string& dev) -> Result<VolumeHeader> {
    if (!Exists(dev))
      return MakeError(ErrorCode::kNotFound, dev + " does not exist");
    VCRYPT_ASSIGN_OR_RETURN(VolumeHeader h, ReadHeader(dev));
    if (!SameUuid(h.uuid, uuid))
      return MakeError(
          ErrorCode::kNotFound,
          dev + " now holds another volume (LUKS UUID " + h.uuid + ")");
    return h;
  };
  // The recorded path is a name, and names are recycled (after a reboot,
  // or a removal): it may now lead into a guest's disk (a guest's LV
  // activated on the host, say), with a copy of this volume's header. Such
  // a device is never the volume, as with the by-uuid link below. Image
  // files are not block devices: stacked on nothing.
  std::string guest;
  if (!t->is_file && Exists(t->device)) guest = GuestContent(t->device);
  Result<VolumeHeader> here =
      MakeError(ErrorCode::kNotFound, t->device + " " + guest + ": not opened");
  if (guest.empty()) here = probe(t->device);
  if (here.ok()) return here;
  // A device that is there but does not answer (CheckResponsive) is not
  // looked for elsewhere: its by-uuid link leads to it again. (A device
  // refused as guest content was not read.)
  if (guest.empty()) {
    if (Status alive = CheckResponsive(t->device); !alive.ok())
      return alive.error();
  }
  if (t->is_file) {
    // An image file has no udev link to look for.
    if (!Exists(t->device))
      return MakeError(
          ErrorCode::kNotFound,
          "image file " + t->device + " of volume " + vol + " does not exist");
    if (here.error().code == ErrorCode::kNotFound)
      return MakeError(ErrorCode::kInvalidVolume,
                       "image file " + here.error().message + ", not volume " +
                           vol + " (LUKS UUID " + uuid + ")");
    return here;
  }
  // Block device names (/dev/vdb, /dev/loop3) can change between boots;
  // udev links LUKS devices by their UUID.
  const std::string not_found = "volume " + vol + " (LUKS UUID " + uuid +
                                ") not found: " + here.error().message;
  const std::string link = options_.by_uuid_dir + "/" + uuid;
  if (!IsUuidText(uuid) || !Exists(link))
    return MakeError(ErrorCode::kNotFound,
                     not_found + ", and there is no " + link +
                         "; attach its disk, or open it by path");
  std::error_code ec;
  std::string dev = std::filesystem::canonical(link, ec).string();
  if (ec)
    return MakeError(
        ErrorCode::kNotFound,
        not_found + ", and " + link + " cannot be resolved: " + ec.message());
  // Never a link into a guest's disk: it can carry a copy of this
  // volume's header.
  if (std::string why = GuestContent(dev); !why.empty())
    return MakeError(ErrorCode::kNotFound, not_found + ", and " + link +
                                               " -> " + dev + " " + why +
                                               ": not followed");
  auto there = probe(dev);
  if (!there.ok())
    return MakeError(ErrorCode::kNotFound, not_found + ", and " + link +
                                               " -> " + there.error().message);
  // Found under its new name: the inventory follows (atomically; it is an
  // index, so if it cannot be written the next open looks again).
  {
    std::lock_guard lock(mu_);
    auto it = store_.vms().find(*t->vm);
    if (it != store_.vms().end()) {
      auto dit = it->second.disks.find(*t->disk);
      if (dit != it->second.disks.end() && SameUuid(dit->second.uuid, uuid) &&
          dit->second.device != dev) {
        VmRecord next = it->second;
        next.disks[*t->disk].device = dev;
        (void)store_.PutVm(*t->vm, next);
      }
    }
  }
  t->device = dev;
  return there;
}

Result<std::shared_ptr<KeyProvider>> Controller::ProviderForToken(
    const VcryptToken& t) {
  std::lock_guard lock(mu_);
  // Prefer the provider that recognises the key material (e.g. a native
  // provider restored under a new name), then the one named in the token.
  for (const auto& [n, p] : providers_)
    if (p->type() == t.provider_type && p->Recognizes(t.kek)) return p;
  auto it = providers_.find(t.provider_name);
  if (it != providers_.end()) {
    // The token's provider failed to load: say why, before any dm work.
    if (auto* u = dynamic_cast<const UnavailableProvider*>(it->second.get()))
      return u->Unavailable();
    if (it->second->type() == t.provider_type) return it->second;
  }
  return MakeError(ErrorCode::kKeyUnavailable,
                   "the volume's key provider '" + t.provider_name + "' (" +
                       t.provider_type +
                       ") is not configured on this host; add it "
                       "(for native: restore its backup) and retry");
}

Result<Controller::UnwrappedDek> Controller::UnwrapVolumeDek(
    const VcryptToken& token, const std::string& uuid,
    const std::string& device, const AuditContext& ctx) {
  return UnwrapUnderTokenKek(
      token, token.dek, DekAad(uuid, token.kek.kek_id, token.provider_name),
      uuid, device, "the DEK", ctx);
}

Result<Controller::UnwrappedDek> Controller::UnwrapUnderTokenKek(
    const VcryptToken& token, const WrappedKey& wrapped,
    const std::vector<uint8_t>& aad, const std::string& uuid,
    const std::string& device, const std::string& what,
    const AuditContext& ctx) {
  AuditRecord audit = VolumeAudit(ctx, AuditOp::kKekFetch, token.vm, token.disk,
                                  uuid, token.provider_name, token.kek.kek_id);
  auto provider = ProviderForToken(token);
  if (!provider.ok()) {
    Audit(audit.Outcome(provider));
    return std::move(provider).error();
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer kek,
                          GetKek(**provider, token.kek, audit));
  auto dek = UnwrapKey(kek, wrapped, aad);
  AuditRecord unwrap = audit;
  unwrap.op = AuditOp::kDekUnwrap;
  unwrap.provider = (*provider)->name();
  if (!dek.ok())
    unwrap.error = MakeError(
        ErrorCode::kCrypto,
        "cannot unwrap " + what + " of " + device +
            ": the token does not belong to this volume or was altered");
  Audit(unwrap);
  if (!dek.ok()) return *unwrap.error;
  return UnwrappedDek{std::move(*provider), std::move(dek).value()};
}

Result<Json> Controller::Open(const Json& args, const AuditContext& ctx) {
  // The boot path's open (vcryptctl unlock) asks, in the same request,
  // whether the VM wants its volumes opened at boot: one request per
  // volume instead of a vm.show (which lists every mapping) and an open.
  if (BoolArg(args, "boot")) {
    auto it = args.find("vm");
    if (it == args.end() || !it->is_string())
      return controller_ops::Usage("'boot' goes with 'vm' and 'disk'");
    auto vm = FindVm(it->get<std::string>());
    if (!vm.ok() && vm.error().code == ErrorCode::kNotFound)
      return Json{{"vm", *it}, {"skipped", "not_registered"}};
    if (!vm.ok()) return std::move(vm).error();
    if (!vm->auto_unlock)
      return Json{{"vm", *it}, {"skipped", "auto_unlock_off"}};
  }
  std::string uuid;
  auto r = OpenVolume(args, ctx, &uuid);
  if (!uuid.empty()) {
    if (r.ok()) {
      failures_.ClearFailure(uuid);
    } else {
      failures_.RecordFailure(uuid, r.error());
    }
  }
  return r;
}

Result<Json> Controller::OpenVolume(const Json& args, const AuditContext& ctx,
                                    std::string* uuid) {
  VCRYPT_ASSIGN_OR_RETURN(Target target, ResolveTarget(args));
  if (target.uuid) *uuid = *target.uuid;
  VolumeHeader hdr;
  if (target.vm) {
    VCRYPT_ASSIGN_OR_RETURN(hdr, LocateVolume(&target));
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
    VCRYPT_RETURN_IF_ERROR(ProviderForToken(token));
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
    if (held_closed_.IsHeld(hdr.uuid, target.device))
      return Json{{"vm", token.vm},
                  {"disk", token.disk},
                  {"device", target.device},
                  {"already_open", false},
                  {"held_closed", true}};
  } else {
    VCRYPT_RETURN_IF_ERROR(held_closed_.Release(hdr.uuid));
  }
  // The VM is not unregistered or deleted while this open runs
  // (VmUnregister takes this lock exclusively), so once an unregister
  // returns no open of its VM maps a volume, caches its KEK or puts the
  // VM back into the inventory. An open that waited for the unregister
  // finds the VM gone.
  auto life = locks_.LockShared("vm-life:" + token.vm);
  if (target.vm) {
    std::lock_guard lock(mu_);
    auto it = store_.vms().find(*target.vm);
    if (it == store_.vms().end() || !it->second.disks.count(*target.disk))
      return MakeError(ErrorCode::kNotFound,
                       "no VM named '" + *target.vm + "' with a disk '" +
                           *target.disk + "' (unregistered meanwhile)");
  }

  // Never two mappings for one volume: serialise per LUKS UUID and reuse
  // an existing mapping.
  auto guard = locks_.Lock("vol:" + hdr.uuid);
  VCRYPT_ASSIGN_OR_RETURN(auto existing, FindMappingByUuid(hdr.uuid));
  if (existing) return already_open(*existing);
  ActivateParams ap;
  ap.device = target.device;
  ap.name = name;
  ap.discards = BoolArg(args, "discards");
  ap.bypass_workqueues = options_.bypass_workqueues;
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
    VCRYPT_ASSIGN_OR_RETURN(path,
                            ActivateMidRekey(ap, rs, token, hdr.uuid, ctx));
    VCRYPT_ASSIGN_OR_RETURN(provider, ProviderForToken(token));
  } else {
    VCRYPT_ASSIGN_OR_RETURN(
        UnwrappedDek u, UnwrapVolumeDek(token, hdr.uuid, target.device, ctx));
    provider = u.provider;
    VCRYPT_ASSIGN_OR_RETURN(path, Activate(ap, u.dek));
  }

  // Opening by path registers a volume the inventory does not know yet
  // (the inventory is rebuilt from volumes, never the other way round),
  // and records where a known one is now.
  {
    std::lock_guard lock(mu_);
    auto it = store_.vms().find(token.vm);
    VmRecord rec;
    bool changed = false;
    if (it == store_.vms().end()) {
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
      (void)store_.PutVm(token.vm, rec);  // index only; open succeeded
  }
  return Json{{"vm", token.vm},
              {"disk", token.disk},
              {"path", path},
              {"device", target.device},
              {"already_open", false}};
}

Result<Json> Controller::OpenAll(const Json& args, const AuditContext& ctx) {
  const bool files_only = BoolArg(args, "file_backed");
  const bool automatic = BoolArg(args, "auto");
  struct Item {
    std::string vm, disk, uuid;
  };
  std::vector<Item> items;
  {
    std::lock_guard lock(mu_);
    for (const auto& [vn, vm] : store_.vms()) {
      if (!vm.auto_unlock) continue;
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
    failures_.ClearFailure(items[i].uuid);
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
  const size_t n = std::min(options_.open_all_threads, todo.size());
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

Result<Json> Controller::Close(const Json& args) {
  const bool automatic = BoolArg(args, "auto");
  VCRYPT_ASSIGN_OR_RETURN(Target target, ResolveTarget(args));
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
        VCRYPT_RETURN_IF_ERROR(held_closed_.Hold(hdr.uuid, backing));
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
  auto guard = locks_.LockFor("vol:" + m->luks_uuid, std::chrono::seconds(5));
  if (!guard)
    return MakeError(ErrorCode::kBusy,
                     m->path +
                         " is being worked on (a rekey or another open/close "
                         "of it is running); try again when it is done");
  // Held closed before it closes: a header write racing this close must
  // not let the boot path open it again. Not for the boot path's own close
  // (a unit's stop: `systemctl restart` must open it again).
  if (!automatic) VCRYPT_RETURN_IF_ERROR(held_closed_.Hold(hdr.uuid, backing));
  VCRYPT_RETURN_IF_ERROR(Deactivate(m->name));
  return Json{{"closed", m->path}};
}

}  // namespace vcrypt
