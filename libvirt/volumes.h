// What attach/detach and the libvirt hook need from vcryptd: open and
// close a volume, and check that one exists. The real implementation talks
// to vcryptd over its socket (the `open`, `close` and `volume.list` ops of
// docs/protocol.md), never to libvirt; tests may substitute their own.
#ifndef VCRYPT_LIBVIRT_VOLUMES_H_
#define VCRYPT_LIBVIRT_VOLUMES_H_

#include <optional>
#include <string>

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

 private:
  Result<nlohmann::json> Call(const std::string& op, const nlohmann::json& a);
  std::string socket_;
  std::optional<Client> client_;
};

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_VOLUMES_H_
