#include "libvirt/attach.h"

#include <libvirt/libvirt.h>

#include <thread>

#include "common/names.h"

namespace vcrypt {
namespace {

// What libvirt shows of a domain: its state and its disks, live (when it
// runs) and persistent (when it has a configuration).
struct DomainState {
  bool active = false;
  bool persistent = false;
  std::optional<DomainXml> live, config;
};

Result<DomainState> ReadState(const LibvirtDomain& dom) {
  DomainState s;
  VCRYPT_ASSIGN_OR_RETURN(s.active, dom.IsActive());
  VCRYPT_ASSIGN_OR_RETURN(s.persistent, dom.IsPersistent());
  if (s.active) {
    VCRYPT_ASSIGN_OR_RETURN(std::string x, dom.XmlDesc(false));
    VCRYPT_ASSIGN_OR_RETURN(s.live, ParseDomainXml(x));
  }
  if (s.persistent) {
    VCRYPT_ASSIGN_OR_RETURN(std::string x, dom.XmlDesc(true));
    VCRYPT_ASSIGN_OR_RETURN(s.config, ParseDomainXml(x));
  }
  return s;
}

std::optional<DomainDisk> Find(const std::optional<DomainXml>& d,
                               const std::string& path) {
  if (!d) return std::nullopt;
  return FindDiskBySource(*d, path);
}

// QEMU refuses a second device_del while the guest has not acknowledged
// the first one; libvirt passes that on as an internal error with this
// text. For detach it means "already requested": keep waiting.
// `entries` with `m` in place of any entry of the same volume (appended
// when there is none), or without it when `m` is null.
std::vector<VolumeMeta> WithEntry(std::vector<VolumeMeta> entries,
                                  const VolumeRef& v, const VolumeMeta* m) {
  std::vector<VolumeMeta> out;
  for (auto& e : entries)
    if (!(e.volume() == v)) out.push_back(std::move(e));
  if (m != nullptr) out.push_back(*m);
  return out;
}

// Writes the vcrypt metadata of the live domain and/or its persistent
// configuration (each from its own current entries) with `v` set to `m`,
// or removed when `m` is null. Unchanged when it already says so.
Status UpdateMetadata(LibvirtDomain& dom, const DomainState& st,
                      const VolumeRef& v, const VolumeMeta* m) {
  struct Side {
    const std::optional<DomainXml>& xml;
    unsigned int flag;
  };
  for (const Side& side : {Side{st.live, VIR_DOMAIN_AFFECT_LIVE},
                           Side{st.config, VIR_DOMAIN_AFFECT_CONFIG}}) {
    if (!side.xml) continue;
    std::vector<VolumeMeta> next = WithEntry(side.xml->vcrypt_volumes, v, m);
    if (next == side.xml->vcrypt_volumes) continue;
    std::string xml;
    if (!next.empty()) {
      VCRYPT_ASSIGN_OR_RETURN(xml, BuildVolumesMetadata(next));
    }
    VCRYPT_RETURN_IF_ERROR(dom.SetVcryptMetadata(xml, side.flag));
  }
  return Status::Ok();
}

bool UnplugAlreadyRequested(const Error& e) {
  return e.message.find("already in the process of unplug") !=
         std::string::npos;
}

}  // namespace

Result<AttachOutcome> AttachVolume(Libvirt& lv, VolumeControl& vols,
                                   const AttachRequest& req) {
  const VolumeRef& v = req.volume;
  VCRYPT_RETURN_IF_ERROR(ValidateVolumeNames(v.vm, v.disk));
  if (req.target) VCRYPT_RETURN_IF_ERROR(ValidateTargetName(*req.target));
  const std::string path = MappingPath(v);
  VCRYPT_ASSIGN_OR_RETURN(LibvirtDomain dom, lv.LookupDomain(req.domain));
  VCRYPT_ASSIGN_OR_RETURN(DomainState st, ReadState(dom));
  for (const auto* x : {&st.live, &st.config}) {
    if (auto d = Find(*x, path))
      return MakeError(
          ErrorCode::kExists,
          v.Label() + " is already attached to domain '" + req.domain +
              "' as " + (d->target.empty() ? "a disk" : d->target) +
              (x == &st.live ? "" : " (persistent configuration)"));
  }
  std::vector<const DomainXml*> all;
  if (st.live) all.push_back(&*st.live);
  if (st.config) all.push_back(&*st.config);
  VCRYPT_ASSIGN_OR_RETURN(std::string target,
                          ChooseTarget(UsedTargets(all), req.target));
  VCRYPT_ASSIGN_OR_RETURN(std::string xml, BuildDiskXml(path, target));

  AttachOutcome out;
  out.path = path;
  out.target = target;
  out.live = st.active;
  out.persistent = st.persistent;
  if (st.active) {
    VCRYPT_ASSIGN_OR_RETURN(VolumeControl::Opened o, vols.Open(v));
    out.opened = !o.already_open;
    if (o.path != path) {
      Error e = MakeError(ErrorCode::kInternal, "vcryptd opened " + v.Label() +
                                                    " as " + o.path +
                                                    ", expected " + path);
      if (out.opened) (void)vols.Close(v);
      return e;
    }
  } else {
    // The hook opens it when the domain starts; nothing to map now.
    VCRYPT_RETURN_IF_ERROR(vols.CheckKnown(v));
  }
  // What another host needs to open it travels in the domain XML
  // (docs/cluster.md), recorded before the disk so that a domain never
  // has a vcrypt disk that it cannot migrate with.
  Status a = [&]() -> Status {
    VCRYPT_ASSIGN_OR_RETURN(VolumeMeta meta, vols.Describe(v));
    VCRYPT_RETURN_IF_ERROR(UpdateMetadata(dom, st, v, &meta));
    unsigned int flags = (st.active ? VIR_DOMAIN_AFFECT_LIVE : 0) |
                         (st.persistent ? VIR_DOMAIN_AFFECT_CONFIG : 0);
    return dom.AttachDevice(xml, flags);
  }();
  if (!a.ok()) {
    Error e = std::move(a).error();
    if (auto now = ReadState(dom); now.ok())
      (void)UpdateMetadata(dom, *now, v, nullptr);
    if (out.opened) {
      Status c = vols.Close(v);
      if (c.ok())
        e.message += " (" + v.Label() + " was closed again)";
      else
        e.message += "; closing " + v.Label() +
                     " again failed too: " + c.error().message;
    }
    return e;
  }
  return out;
}

Result<DetachOutcome> DetachVolume(Libvirt& lv, VolumeControl& vols,
                                   const DetachRequest& req) {
  const VolumeRef& v = req.volume;
  VCRYPT_RETURN_IF_ERROR(ValidateVolumeNames(v.vm, v.disk));
  const std::string path = MappingPath(v);
  VCRYPT_ASSIGN_OR_RETURN(LibvirtDomain dom, lv.LookupDomain(req.domain));
  VCRYPT_ASSIGN_OR_RETURN(DomainState st, ReadState(dom));
  std::optional<DomainDisk> live = Find(st.live, path);
  std::optional<DomainDisk> config = Find(st.config, path);
  if (!live && !config)
    return MakeError(ErrorCode::kNotFound, v.Label() + " (" + path +
                                               ") is not attached to domain '" +
                                               req.domain + "'");
  DetachOutcome out;
  out.path = path;
  out.target = live ? live->target : config->target;

  // Live first: if the guest does not let go, nothing else changes.
  if (live) {
    Status s = dom.DetachDevice(live->xml, VIR_DOMAIN_AFFECT_LIVE);
    if (!s.ok() && !UnplugAlreadyRequested(s.error()))
      return std::move(s).error();
    const auto deadline = std::chrono::steady_clock::now() + req.timeout;
    for (;;) {
      VCRYPT_ASSIGN_OR_RETURN(bool active, dom.IsActive());
      if (!active) break;
      VCRYPT_ASSIGN_OR_RETURN(std::string x, dom.XmlDesc(false));
      VCRYPT_ASSIGN_OR_RETURN(DomainXml now, ParseDomainXml(x));
      if (!FindDiskBySource(now, path)) break;
      if (std::chrono::steady_clock::now() >= deadline)
        return MakeError(
            ErrorCode::kBusy,
            "domain '" + req.domain + "' has not released " + out.target +
                " (" + path +
                ") yet: the guest must acknowledge the unplug, "
                "which a paused or hung guest cannot; the persistent "
                "configuration and the volume are unchanged; run detach "
                "again later (or with a longer --timeout)");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    out.live = true;
  }
  if (config) {
    Status s = dom.DetachDevice(config->xml, VIR_DOMAIN_AFFECT_CONFIG);
    if (!s.ok()) {
      Error e = std::move(s).error();
      if (out.live)
        e.message +=
            " (it is already removed from the running domain; run detach "
            "again)";
      return e;
    }
    out.persistent = true;
  }
  // The entry goes with the disk; one left behind is harmless (the hook
  // only acts on entries of disks the domain has), so a failure here
  // does not fail the detach.
  if (auto now = ReadState(dom); now.ok())
    (void)UpdateMetadata(dom, *now, v, nullptr);

  Status c = vols.Close(v);
  if (c.ok()) {
    out.close = DetachOutcome::Close::kClosed;
  } else if (c.error().code == ErrorCode::kNotFound) {
    out.close = DetachOutcome::Close::kNotOpen;
  } else if (c.error().code == ErrorCode::kBusy) {
    out.close = DetachOutcome::Close::kInUse;
    out.close_error = c.error();
  } else {
    out.close = DetachOutcome::Close::kFailed;
    out.close_error = c.error();
  }
  return out;
}

}  // namespace vcrypt
