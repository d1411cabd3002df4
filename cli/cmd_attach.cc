// vcryptctl attach and detach, and the CLI that runs them in-process
// (cli/attach.h). Apart from the rest of the CLI because it links libvirt.
#include <chrono>
#include <optional>

#include "cli/attach.h"
#include "cli/commands.h"
#include "common/names.h"
#include "libvirt/attach.h"
#include "libvirt/connection.h"
#include "libvirt/domain_xml.h"
#include "libvirt/volumes.h"

namespace vcrypt {
namespace cli_internal {

// attach/detach: a vcrypt volume as a disk of a libvirt domain
// (libvirt/attach.h, docs/libvirt.md). libvirt is checked before vcryptd
// is asked to open anything.
Status Cli::AttachDetach(const std::string& cmd,
                         const std::vector<std::string>& a) {
  std::string domain, target, uri = kDefaultLibvirtUri;
  unsigned timeout = 10;
  po::options_description o;
  o.add_options()("domain", po::value(&domain))("connect", po::value(&uri));
  if (cmd == "attach")
    o.add_options()("target", po::value(&target));
  else
    o.add_options()("timeout", po::value(&timeout));
  VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(a, o, 1, 1, cmd));
  if (domain.empty()) return UsageError(cmd + " needs --domain DOMAIN");
  if (uri.empty()) return UsageError(cmd + ": --connect needs a libvirt URI");
  const std::string& t = s.words[0];
  auto slash = t.find('/');
  if (slash == std::string::npos || t.find('/', slash + 1) != std::string::npos)
    return UsageError(cmd + ": '" + t + "' is not VM/DISK");
  VolumeRef v{t.substr(0, slash), t.substr(slash + 1)};
  VCRYPT_RETURN_IF_ERROR(ValidateVolumeNames(v.vm, v.disk));
  std::optional<std::string> want;
  if (s.vm.count("target")) {
    VCRYPT_RETURN_IF_ERROR(ValidateTargetName(target));
    want = target;
  }
  if (timeout > 3600)
    return MakeError(ErrorCode::kInvalidArgument,
                     "--timeout is at most 3600 seconds");
  VCRYPT_ASSIGN_OR_RETURN(Libvirt lv, Libvirt::Connect(uri));
  DaemonVolumes vols(socket_);
  auto disk_json = [&](const std::string& path, const std::string& tgt,
                       bool live, bool persistent) {
    return Json{{"vm", v.vm},
                {"disk", v.disk},
                {"domain", domain},
                {"path", path},
                {"target", tgt},
                {"live", live},
                {"persistent", persistent}};
  };
  if (cmd == "attach") {
    VCRYPT_ASSIGN_OR_RETURN(AttachOutcome r,
                            AttachVolume(lv, vols, {v, domain, want}));
    Json j = disk_json(r.path, r.target, r.live, r.persistent);
    j["opened"] = r.opened;
    Print(j, [&](const Json&) {
      out_ << "attached " << r.path << " to domain '" << domain << "' as "
           << r.target;
      if (r.live && r.persistent)
        out_ << " (live and persistent)\n";
      else if (r.live)
        out_ << " (live only: the domain is transient)\n";
      else
        out_ << " (persistent configuration; the hook opens it when the domain "
                "starts)\n";
    });
    return Status::Ok();
  }
  DetachRequest req{v, domain, std::chrono::seconds(timeout)};
  VCRYPT_ASSIGN_OR_RETURN(DetachOutcome r, DetachVolume(lv, vols, req));
  using C = DetachOutcome::Close;
  const char* close = r.close == C::kClosed    ? "closed"
                      : r.close == C::kNotOpen ? "not_open"
                      : r.close == C::kInUse   ? "in_use"
                                               : "failed";
  Json j = disk_json(r.path, r.target, r.live, r.persistent);
  j["volume"] = close;
  if (r.close == C::kInUse || r.close == C::kFailed)
    j["volume_message"] = r.close_error.message;
  Print(j, [&](const Json&) {
    out_ << "detached " << r.path << " (" << r.target << ") from domain '"
         << domain << "'";
    if (r.close == C::kClosed)
      out_ << "; closed " << v.Label() << "\n";
    else if (r.close == C::kNotOpen)
      out_ << "; " << v.Label() << " was not open\n";
    else if (r.close == C::kInUse)
      out_ << "; " << v.Label() << " stays open (in use)\n";
    else
      out_ << "\n";
  });
  if (r.close == C::kFailed)
    return MakeError(r.close_error.code,
                     "detached " + v.Label() + " from domain '" + domain +
                         "' but could not close it: " + r.close_error.message);
  return Status::Ok();
}

}  // namespace cli_internal

int RunCliWithLibvirt(int argc, const char* const* argv, std::ostream& out,
                      std::ostream& err) {
  cli_internal::Cli cli(out, err);
  cli.set_attach(&cli_internal::Cli::AttachDetach);
  return cli.Run(argc, argv);
}

}  // namespace vcrypt
