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

Result<VolumeMeta> DaemonVolumes::Describe(const VolumeRef& v) {
  VCRYPT_ASSIGN_OR_RETURN(Json vm, Call("vm.show", {{"vm", v.vm}}));
  VolumeMeta m;
  m.vm = v.vm;
  m.disk = v.disk;
  m.provider = vm.value("provider", "");
  m.kek_id = vm.value("kek_id", "");
  bool found = false;
  if (vm.contains("disks") && vm["disks"].is_array())
    for (const auto& d : vm["disks"])
      if (d.is_object() && d.value("disk", "") == v.disk) {
        found = true;
        m.uuid = d.value("uuid", "");
        if (d.value("is_file", false)) m.image = d.value("device", "");
      }
  if (!found)
    return MakeError(ErrorCode::kNotFound,
                     "VM '" + v.vm + "' has no disk '" + v.disk +
                         "' (see 'vcryptctl volume list " + v.vm + "')");
  VCRYPT_ASSIGN_OR_RETURN(Json pl, Call("provider.list", Json::object()));
  if (pl.contains("providers") && pl["providers"].is_array())
    for (const auto& p : pl["providers"])
      if (p.is_object() && p.value("name", "") == m.provider) {
        m.provider_type = p.value("type", "");
        m.primary_key_id = p.value("primary_key_id", "");
      }
  if (m.provider_type != "native") m.primary_key_id.clear();
  if (Status s = ValidateVolumeMeta(m); !s.ok())
    return MakeError(
        ErrorCode::kInternal,
        "vcryptd's description of " + v.Label() +
            " does not fit the domain metadata: " + s.error().message);
  return m;
}

Status DaemonVolumes::Incoming(const std::vector<VolumeMeta>& vols,
                               bool register_vm) {
  if (vols.empty()) return Status::Ok();
  Json list = Json::array();
  for (const auto& m : vols) {
    Json e = {{"disk", m.disk}, {"uuid", m.uuid}};
    if (!m.image.empty()) e["image"] = m.image;
    list.push_back(std::move(e));
  }
  VCRYPT_ASSIGN_OR_RETURN(
      Json r,
      Call("vm.incoming",
           {{"vm", vols[0].vm}, {"volumes", list}, {"register", register_vm}}));
  (void)r;
  return Status::Ok();
}

Result<bool> DaemonVolumes::Depart(const std::string& vm,
                                   const std::string& reason) {
  VCRYPT_ASSIGN_OR_RETURN(Json r,
                          Call("vm.depart", {{"vm", vm}, {"reason", reason}}));
  return r.value("departed", false);
}

}  // namespace vcrypt
