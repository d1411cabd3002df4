// What attach/detach and the libvirt hook need from vcryptd: open and
// close a volume, check that one exists and describe it, and the two
// sides of a migration. The real implementation talks to vcryptd over its
// socket (the `open`, `close`, `volume.list`, `vm.show`, `provider.list`,
// `vm.incoming` and `vm.depart` ops of docs/protocol.md), never to
// libvirt; tests may substitute their own.
#ifndef VCRYPT_LIBVIRT_VOLUMES_H_
#define VCRYPT_LIBVIRT_VOLUMES_H_

#include <optional>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/result.h"
#include "libvirt/domain_xml.h"

namespace vcrypt {

class VolumeControl {
 public:
  struct Opened {
    std::string path;   // /dev/mapper/vcrypt-<vm>-<disk>
    bool already_open;  // false: this call created the mapping
  };
  virtual ~VolumeControl() = default;
  // Idempotent: an open volume returns its mapping with already_open.
  virtual Result<Opened> Open(const VolumeRef& v) = 0;
  // Closes the volume's mapping. kNotFound when it is not open, kBusy when
  // it is in use.
  virtual Status Close(const VolumeRef& v) = 0;
  // OK when vcryptd knows VM/DISK; kNotFound otherwise.
  virtual Status CheckKnown(const VolumeRef& v) = 0;
  // What the domain's vcrypt metadata records of a volume vcryptd knows
  // (its LUKS UUID, image path, provider, KEK). kNotFound when unknown.
  virtual Result<VolumeMeta> Describe(const VolumeRef& v) = 0;
  // vm.incoming for the volumes of one VM (all of `vols` have that VM):
  // OK when this host can open every one of them; with `register_vm`,
  // vcryptd also records the VM from their headers and marks it here.
  virtual Status Incoming(const std::vector<VolumeMeta>& vols,
                          bool register_vm) = 0;
  // vm.depart: true when vcryptd marked the VM away and evicted its KEK,
  // false when one of its volumes is still open here. kNotFound for a VM
  // vcryptd does not know.
  virtual Result<bool> Depart(const std::string& vm,
                              const std::string& reason) = 0;
};

// VolumeControl over vcryptd's socket. Connects on first use and keeps the
// connection.
class DaemonVolumes : public VolumeControl {
 public:
  explicit DaemonVolumes(std::string socket_path)
      : socket_(std::move(socket_path)) {}
  Result<Opened> Open(const VolumeRef& v) override;
  Status Close(const VolumeRef& v) override;
  Status CheckKnown(const VolumeRef& v) override;
  Result<VolumeMeta> Describe(const VolumeRef& v) override;
  Status Incoming(const std::vector<VolumeMeta>& vols,
                  bool register_vm) override;
  Result<bool> Depart(const std::string& vm,
                      const std::string& reason) override;

 private:
  Result<nlohmann::json> Call(const std::string& op, const nlohmann::json& a);
  std::string socket_;
  std::optional<Client> client_;
};

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_VOLUMES_H_
