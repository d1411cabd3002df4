#include "libvirt/hook.h"

#include <libvirt/libvirt.h>

#include <map>
#include <thread>

#include "libvirt/domain_xml.h"

namespace vcrypt {
namespace {

Error HookUsage(const std::string& why) {
  return MakeError(ErrorCode::kUsage,
                   why +
                       " (usage: vcrypt-libvirt-hook [--socket PATH] DOMAIN "
                       "OPERATION SUB-OPERATION EXTRA, domain XML on stdin)");
}

HookOutcome Fail(const Error& e, std::string line) {
  return HookOutcome{static_cast<int>(e.code), {std::move(line)}};
}

// The vcrypt disks of the domain, by VM, each with the metadata entry
// that describes it (if any). Entries of volumes that are not disks of
// the domain are ignored: a detach may leave one behind.
struct VmDisks {
  std::vector<VcryptDisk> disks;
  std::vector<VolumeMeta> metas;
  std::vector<VolumeRef> without_meta;
};
std::map<std::string, VmDisks> ByVm(const DomainXml& dom,
                                    const std::vector<VcryptDisk>& disks) {
  std::map<std::string, VmDisks> out;
  for (const auto& d : disks) {
    VmDisks& g = out[d.volume.vm];
    g.disks.push_back(d);
    const VolumeMeta* meta = nullptr;
    for (const auto& m : dom.vcrypt_volumes)
      if (m.volume() == d.volume) meta = &m;
    if (meta)
      g.metas.push_back(*meta);
    else
      g.without_meta.push_back(d.volume);
  }
  return out;
}

// Whether this host can take every vcrypt disk (migrate/restore begin),
// or, with `register_vm`, records the VMs here (prepare begin).
HookOutcome CheckIncoming(const HookArgs& args, const DomainXml& dom,
                          const std::vector<VcryptDisk>& disks,
                          VolumeControl& vols, bool register_vm) {
  const std::string prefix = "vcrypt: cannot take domain " + args.domain + ": ";
  if (!register_vm && args.operation == "migrate") {
    // Both hosts have the volume open during the migration: only
    // O_DIRECT caching keeps the destination from reading stale pages.
    for (const auto& d : disks) {
      auto disk = FindDiskBySource(dom, d.source);
      const std::string cache = disk ? disk->cache : "";
      if (cache != "none" && cache != "directsync")
        return Fail(MakeError(ErrorCode::kInvalidArgument, ""),
                    prefix + d.volume.Label() + ": its disk uses cache='" +
                        (cache.empty() ? "default" : cache) +
                        "'; a live migration needs cache='none' on shared "
                        "storage (docs/cluster.md)");
    }
  }
  for (const auto& [vm, g] : ByVm(dom, disks)) {
    // Disks attached before vcrypt recorded metadata: only a host that
    // knows them can take them.
    // (At prepare begin the opens that follow say why they fail.)
    for (const auto& v : g.without_meta) {
      if (register_vm) break;
      Status k = vols.CheckKnown(v);
      if (!k.ok())
        return Fail(k.error(),
                    prefix + v.Label() +
                        ": the domain XML has no vcrypt metadata for it and "
                        "this host does not know it (run 'vcryptctl attach' "
                        "for it again on the host it runs on, or 'vcryptctl "
                        "vm register' here)");
    }
    if (g.metas.empty()) continue;
    Status s = vols.Incoming(g.metas, register_vm);
    if (!s.ok()) return Fail(s.error(), prefix + s.error().message);
  }
  return {};
}

HookOutcome Prepare(const HookArgs& args, const std::vector<VcryptDisk>& disks,
                    VolumeControl& vols) {
  std::vector<VolumeRef> opened;  // by this run, closed again on failure
  for (const auto& d : disks) {
    auto o = vols.Open(d.volume);
    Error err;
    if (!o.ok()) {
      err = std::move(o).error();
    } else {
      if (!o->already_open) opened.push_back(d.volume);
      if (o->path == d.source) continue;
      err = MakeError(ErrorCode::kInternal,
                      "vcryptd opened it as " + o->path + ", not " + d.source);
    }
    HookOutcome out =
        Fail(err, "vcrypt: cannot unlock " + d.volume.Label() + " for domain " +
                      args.domain + ": " + err.message);
    for (auto it = opened.rbegin(); it != opened.rend(); ++it) {
      Status c = vols.Close(*it);
      if (!c.ok())
        out.messages.push_back("vcrypt: could not close " + it->Label() +
                               " again: " + c.error().message);
    }
    return out;
  }
  return {};
}

HookOutcome Release(const HookArgs& args, const std::vector<VcryptDisk>& disks,
                    VolumeControl& vols) {
  HookOutcome out;
  for (const auto& d : disks) {
    Status c = vols.Close(d.volume);
    if (c.ok() || c.error().code == ErrorCode::kNotFound) continue;
    if (c.error().code == ErrorCode::kBusy) {
      out.messages.push_back("vcrypt: " + d.volume.Label() + " of domain " +
                             args.domain + " stays open: " + c.error().message);
      continue;
    }
    out.messages.push_back("vcrypt: cannot close " + d.volume.Label() +
                           " of domain " + args.domain + ": " +
                           c.error().message);
    if (out.exit_code == 0) out.exit_code = static_cast<int>(c.error().code);
  }
  return out;
}

}  // namespace

Result<HookArgs> ParseHookArgs(const std::vector<std::string>& args) {
  HookArgs h;
  size_t i = 0;
  if (i < args.size() && args[i] == "--socket") {
    if (i + 1 >= args.size() || args[i + 1].empty())
      return HookUsage("--socket needs a path");
    h.socket = args[i + 1];
    i += 2;
  }
  if (args.size() - i != 4)
    return HookUsage("expected 4 arguments, got " +
                     std::to_string(args.size() - i));
  h.domain = args[i];
  h.operation = args[i + 1];
  h.sub_operation = args[i + 2];
  h.extra = args[i + 3];
  if (h.domain.empty()) return HookUsage("empty domain name");
  return h;
}

HookAction HookActionFor(std::string_view operation,
                         std::string_view sub_operation) {
  if ((operation == "migrate" || operation == "restore") &&
      sub_operation == "begin")
    return HookAction::kCheck;
  if (operation == "prepare" && sub_operation == "begin")
    return HookAction::kOpen;
  if (operation == "release" && sub_operation == "end")
    return HookAction::kClose;
  return HookAction::kNone;
}

HookOutcome RunHook(const HookArgs& args, std::string_view domain_xml,
                    VolumeControl& vols) {
  HookAction action = HookActionFor(args.operation, args.sub_operation);
  if (action == HookAction::kNone) return {};
  auto dom = ParseDomainXml(domain_xml);
  Result<std::vector<VcryptDisk>> disks =
      dom.ok() ? FindVcryptDisks(*dom)
               : Result<std::vector<VcryptDisk>>(std::move(dom).error());
  if (!disks.ok()) {
    const Error& e = disks.error();
    const char* what = action == HookAction::kOpen    ? "start"
                       : action == HookAction::kCheck ? "take"
                                                      : "release";
    return Fail(e, "vcrypt: cannot " + std::string(what) + " domain " +
                       args.domain + ": " + e.message);
  }
  switch (action) {
    case HookAction::kCheck:
      return CheckIncoming(args, *dom, *disks, vols, false);
    case HookAction::kOpen: {
      HookOutcome in = CheckIncoming(args, *dom, *disks, vols, true);
      if (in.exit_code != 0) return in;
      return Prepare(args, *disks, vols);
    }
    default:
      break;
  }
  HookOutcome out = Release(args, *disks, vols);
  std::vector<std::string> vms;
  for (const auto& [vm, g] : ByVm(*dom, *disks)) vms.push_back(vm);
  if (args.extra == "migrated") {
    for (const auto& vm : vms) {
      auto d = vols.Depart(vm, "migrated");
      if (!d.ok() && d.error().code != ErrorCode::kNotFound)
        out.messages.push_back("vcrypt: VM " + vm + " of domain " +
                               args.domain +
                               " migrated away, but: " + d.error().message);
    }
  } else if (args.extra == "-") {
    out.watch_vms = std::move(vms);
  }
  return out;
}

bool MigratedAway(bool exists, int state, int reason) {
  return exists && state == VIR_DOMAIN_SHUTOFF &&
         reason == VIR_DOMAIN_SHUTOFF_MIGRATED;
}

std::vector<std::string> RunReleaseWatch(
    const std::string& domain, const std::vector<std::string>& vms,
    const std::function<Result<std::optional<DomainStateNow>>()>& state,
    VolumeControl& vols, std::chrono::milliseconds timeout) {
  std::vector<std::string> log;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto st = state();
    if (!st.ok()) {
      log.push_back("domain " + domain + ": " + st.error().message);
      return log;
    }
    if (!*st) return log;  // gone (transient): nothing to say
    const int s = (*st)->state;
    if (s == VIR_DOMAIN_SHUTOFF || s == VIR_DOMAIN_CRASHED) {
      if (!MigratedAway(true, s, (*st)->reason)) return log;
      break;
    }
    // Still active: libvirtd has not finished the stop yet, or the domain
    // was started again (then it runs here, and stays).
    if (std::chrono::steady_clock::now() >= deadline) {
      log.push_back("domain " + domain +
                    " is still active here; not treating it as migrated");
      return log;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (const auto& vm : vms) {
    auto d = vols.Depart(vm, "migrated");
    if (!d.ok()) {
      if (d.error().code != ErrorCode::kNotFound)
        log.push_back("VM " + vm + " of domain " + domain +
                      " migrated away, but: " + d.error().message);
    } else if (*d) {
      log.push_back("VM " + vm + " of domain " + domain +
                    " migrated away: its KEK left this host's cache and it "
                    "is marked away");
    } else {
      log.push_back("VM " + vm + " of domain " + domain +
                    " migrated away, but a volume of it is still open here; "
                    "its KEK stays cached");
    }
  }
  return log;
}

}  // namespace vcrypt
