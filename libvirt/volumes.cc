#include "libvirt/volumes.h"

namespace vcrypt {

using Json = nlohmann::json;

Result<Json> DaemonVolumes::Call(const std::string& op, const Json& a) {
  if (!client_) {
    VCRYPT_ASSIGN_OR_RETURN(Client c, Client::Connect(socket_));
    client_.emplace(std::move(c));
  }
  auto r = client_->Call(op, a);
  // A connection that broke is not reused.
  if (!r.ok() && r.error().code == ErrorCode::kDaemonUnavailable)
    client_.reset();
  return r;
}

Result<VolumeControl::Opened> DaemonVolumes::Open(const VolumeRef& v) {
  VCRYPT_ASSIGN_OR_RETURN(
      Json r,
      Call("open", {{"vm", v.vm}, {"disk", v.disk}, {"discards", false}}));
  if (!r.contains("path") || !r["path"].is_string())
    return MakeError(ErrorCode::kInternal,
                     "vcryptd answered 'open' without a path");
  return Opened{r["path"].get<std::string>(), r.value("already_open", false)};
}

Status DaemonVolumes::Close(const VolumeRef& v) {
  // By mapping path: closes exactly the mapping a domain uses.
  VCRYPT_ASSIGN_OR_RETURN(Json r, Call("close", {{"path", MappingPath(v)}}));
  (void)r;
  return Status::Ok();
}

Status DaemonVolumes::CheckKnown(const VolumeRef& v) {
  VCRYPT_ASSIGN_OR_RETURN(Json r, Call("volume.list", {{"vm", v.vm}}));
  if (r.contains("volumes") && r["volumes"].is_array())
    for (const auto& vol : r["volumes"])
      if (vol.value("disk", "") == v.disk) return Status::Ok();
  return MakeError(ErrorCode::kNotFound,
                   "VM '" + v.vm + "' has no disk '" + v.disk +
                       "' (see 'vcryptctl volume list " + v.vm + "')");
}

}  // namespace vcrypt
