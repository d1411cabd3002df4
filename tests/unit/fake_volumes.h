// A stand-in for vcryptd behind libvirt/'s VolumeControl, for the unit
// tests of attach/detach and the qemu hook: it records every request and
// answers as the test configures. Those tests are about what libvirt/ asks
// for and in which order, and need faults (a KMS that does not answer, a
// volume in use) that a real vcryptd would need dm-crypt to produce; the
// same paths run against a real vcryptd in tests/integration/t_libvirt.sh.
#ifndef VCRYPT_TESTS_UNIT_FAKE_VOLUMES_H_
#define VCRYPT_TESTS_UNIT_FAKE_VOLUMES_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "libvirt/domain_xml.h"
#include "libvirt/volumes.h"

namespace vcrypt::testing {

class FakeVolumes : public VolumeControl {
 public:
  Result<Opened> Open(const VolumeRef& v) override {
    calls.push_back("open " + v.Label());
    if (auto it = open_errors.find(v.Label()); it != open_errors.end())
      return it->second;
    std::string path = MappingPath(v);
    if (wrong_path.count(v.Label())) path = "/dev/mapper/elsewhere";
    return Opened{path, already_open.count(v.Label()) > 0};
  }
  Status Close(const VolumeRef& v) override {
    calls.push_back("close " + v.Label());
    if (auto it = close_errors.find(v.Label()); it != close_errors.end())
      return it->second;
    return Status::Ok();
  }
  Status CheckKnown(const VolumeRef& v) override {
    calls.push_back("known " + v.Label());
    if (unknown) return MakeError(ErrorCode::kNotFound, "no such volume");
    return Status::Ok();
  }

  Result<VolumeMeta> Describe(const VolumeRef& v) override {
    calls.push_back("describe " + v.Label());
    if (unknown) return MakeError(ErrorCode::kNotFound, "no such volume");
    VolumeMeta m{v.vm,    v.disk,   "5a0f4b1e-93a7-4c2e-8f55-0d1c2b3a4f00",
                 "local", "native", "kek-" + v.vm,
                 "pk-1",  ""};
    return m;
  }
  Status Incoming(const std::vector<VolumeMeta>& vols,
                  bool register_vm) override {
    std::string c = register_vm ? "register" : "check";
    for (const auto& m : vols) c += " " + m.volume().Label();
    calls.push_back(c);
    if (!vols.empty())
      if (auto it = incoming_errors.find(vols[0].vm);
          it != incoming_errors.end())
        return it->second;
    return Status::Ok();
  }
  Result<bool> Depart(const std::string& vm,
                      const std::string& reason) override {
    calls.push_back("depart " + vm + " " + reason);
    if (auto it = depart_errors.find(vm); it != depart_errors.end())
      return it->second;
    return !still_open.count(vm);
  }

  // "open VM/DISK", "close ...", "known ...", "describe ...",
  // "check|register VM/DISK...", "depart VM REASON"
  std::vector<std::string> calls;
  std::set<std::string> already_open;  // Open says already_open
  std::set<std::string> wrong_path;    // Open answers another mapping path
  std::map<std::string, Error> open_errors, close_errors;  // by VM/DISK
  bool unknown = false;  // CheckKnown and Describe fail for every volume
  std::map<std::string, Error> incoming_errors, depart_errors;  // by VM
  std::set<std::string> still_open;  // Depart answers false for these VMs
};

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_FAKE_VOLUMES_H_
