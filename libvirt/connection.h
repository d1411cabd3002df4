// A libvirt connection and domain, over libvirt's C API, with errors as
// values.
//
// libvirt's default error handler prints every error to stderr; the first
// Connect installs a silent one process-wide (libraries do not print), and
// each failed call turns virGetLastError() into an Error:
//   cannot connect                              kDaemonUnavailable
//   authentication / access denied              kPermissionDenied
//   no such domain                              kNotFound
//   anything else libvirt refuses               kInternal ("libvirt: ...")
#ifndef VCRYPT_LIBVIRT_CONNECTION_H_
#define VCRYPT_LIBVIRT_CONNECTION_H_

#include <string>

#include "common/result.h"
#include "libvirt/handles.h"

namespace vcrypt {

inline constexpr const char* kDefaultLibvirtUri = "qemu:///system";

class LibvirtDomain {
 public:
  const std::string& name() const { return name_; }
  Result<bool> IsActive() const;
  Result<bool> IsPersistent() const;
  // Live XML (of a running domain), or with `inactive` the persistent
  // configuration.
  Result<std::string> XmlDesc(bool inactive) const;
  // virDomainAttachDeviceFlags / virDomainDetachDeviceFlags with `flags`
  // (VIR_DOMAIN_AFFECT_LIVE and/or VIR_DOMAIN_AFFECT_CONFIG).
  Status AttachDevice(const std::string& xml, unsigned int flags);
  Status DetachDevice(const std::string& xml, unsigned int flags);
  // virDomainSetMetadata of the vcrypt element (kVcryptMetadataUri,
  // prefix "vcrypt") with `flags`; an empty `xml` removes it.
  Status SetVcryptMetadata(const std::string& xml, unsigned int flags);
  // virDomainGetState: the state (VIR_DOMAIN_*) and its reason
  // (VIR_DOMAIN_SHUTOFF_MIGRATED, ...).
  struct State {
    int state = 0;
    int reason = 0;
  };
  Result<State> GetState() const;

 private:
  friend class Libvirt;
  LibvirtDomain(VirDomainHandle d, std::string name)
      : dom_(std::move(d)), name_(std::move(name)) {}
  VirDomainHandle dom_;
  std::string name_;
};

class Libvirt {
 public:
  // virConnectOpen(uri): read-write, as the calling user.
  static Result<Libvirt> Connect(const std::string& uri);
  const std::string& uri() const { return uri_; }
  Result<LibvirtDomain> LookupDomain(const std::string& name);

 private:
  Libvirt(VirConnectHandle c, std::string uri)
      : conn_(std::move(c)), uri_(std::move(uri)) {}
  VirConnectHandle conn_;
  std::string uri_;
};

// The calling thread's last libvirt error as an Error, "<context>: <libvirt's
// message>", with the code mapped as above (`fallback` when none fits).
// Resets libvirt's last error.
Error LastLibvirtError(const std::string& context,
                       ErrorCode fallback = ErrorCode::kInternal);

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_CONNECTION_H_
