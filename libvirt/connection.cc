#include "libvirt/connection.h"

#include <libvirt/virterror.h>

#include <mutex>

#include "libvirt/domain_xml.h"

namespace vcrypt {
namespace {

void SilentErrorHandler(void*, virErrorPtr) {}

void InitLibvirtOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, SilentErrorHandler);
  });
}

}  // namespace

Error LastLibvirtError(const std::string& context, ErrorCode fallback) {
  virErrorPtr e = virGetLastError();
  if (e == nullptr)
    return MakeError(fallback, context + ": unknown libvirt error");
  ErrorCode code = fallback;
  switch (e->code) {
    case VIR_ERR_NO_DOMAIN:
      code = ErrorCode::kNotFound;
      break;
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
    case VIR_ERR_AUTH_UNAVAILABLE:
    case VIR_ERR_OPERATION_DENIED:
    case VIR_ERR_ACCESS_DENIED:
      code = ErrorCode::kPermissionDenied;
      break;
    case VIR_ERR_NO_CONNECT:
      code = ErrorCode::kDaemonUnavailable;
      break;
    default:
      break;
  }
  std::string msg = e->message ? OneLine(e->message) : "unknown libvirt error";
  virResetLastError();
  return MakeError(code, context + ": " + msg);
}

Result<Libvirt> Libvirt::Connect(const std::string& uri) {
  InitLibvirtOnce();
  VirConnectHandle c(virConnectOpen(uri.c_str()));
  if (!c) {
    Error e = LastLibvirtError("cannot connect to libvirt at " + uri,
                               ErrorCode::kDaemonUnavailable);
    if (e.code != ErrorCode::kPermissionDenied) {
      e.code = ErrorCode::kDaemonUnavailable;
      e.message += " (is libvirtd running, and the URI right?)";
    }
    return e;
  }
  return Libvirt(std::move(c), uri);
}

Result<LibvirtDomain> Libvirt::LookupDomain(const std::string& name) {
  VirDomainHandle d(virDomainLookupByName(conn_.get(), name.c_str()));
  if (!d) {
    Error e = LastLibvirtError("domain '" + name + "'");
    if (e.code == ErrorCode::kNotFound)
      e.message = "no libvirt domain named '" + name + "' at " + uri_ +
                  " (see 'virsh -c " + uri_ + " list --all')";
    return e;
  }
  return LibvirtDomain(std::move(d), name);
}

Result<bool> LibvirtDomain::IsActive() const {
  int r = virDomainIsActive(dom_.get());
  if (r < 0) return LastLibvirtError("domain '" + name_ + "'");
  return r == 1;
}

Result<bool> LibvirtDomain::IsPersistent() const {
  int r = virDomainIsPersistent(dom_.get());
  if (r < 0) return LastLibvirtError("domain '" + name_ + "'");
  return r == 1;
}

Result<std::string> LibvirtDomain::XmlDesc(bool inactive) const {
  VirString x(
      virDomainGetXMLDesc(dom_.get(), inactive ? VIR_DOMAIN_XML_INACTIVE : 0));
  if (!x)
    return LastLibvirtError("cannot read the " +
                            std::string(inactive ? "persistent" : "live") +
                            " XML of domain '" + name_ + "'");
  return std::string(x.get());
}

Status LibvirtDomain::AttachDevice(const std::string& xml, unsigned int flags) {
  if (virDomainAttachDeviceFlags(dom_.get(), xml.c_str(), flags) != 0)
    return LastLibvirtError("libvirt refused to attach the disk to domain '" +
                            name_ + "'");
  return Status::Ok();
}

Status LibvirtDomain::DetachDevice(const std::string& xml, unsigned int flags) {
  if (virDomainDetachDeviceFlags(dom_.get(), xml.c_str(), flags) != 0)
    return LastLibvirtError("libvirt refused to detach the disk from domain '" +
                            name_ + "'");
  return Status::Ok();
}

Status LibvirtDomain::SetVcryptMetadata(const std::string& xml,
                                        unsigned int flags) {
  if (virDomainSetMetadata(dom_.get(), VIR_DOMAIN_METADATA_ELEMENT,
                           xml.empty() ? nullptr : xml.c_str(),
                           xml.empty() ? nullptr : kVcryptMetadataPrefix,
                           kVcryptMetadataUri, flags) != 0)
    return LastLibvirtError(
        "libvirt refused to record vcrypt's metadata in domain '" + name_ +
        "'");
  return Status::Ok();
}

Result<LibvirtDomain::State> LibvirtDomain::GetState() const {
  State st;
  if (virDomainGetState(dom_.get(), &st.state, &st.reason, 0) != 0)
    return LastLibvirtError("domain '" + name_ + "'");
  return st;
}

}  // namespace vcrypt
