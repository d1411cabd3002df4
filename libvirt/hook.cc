#include "libvirt/hook.h"

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
    return Fail(
        e, "vcrypt: cannot " +
               std::string(action == HookAction::kOpen ? "start" : "release") +
               " domain " + args.domain + ": " + e.message);
  }
  if (action == HookAction::kOpen) return Prepare(args, *disks, vols);
  return Release(args, *disks, vols);
}

}  // namespace vcrypt
