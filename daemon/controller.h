// The Controller performs every vcryptd operation. It owns the state
// store, the loaded key providers and the KEK cache; the Server only
// frames requests and checks who is calling.
//
// Requests are (op, args, secret) and results are JSON; docs/protocol.md
// lists every op with its arguments and result. Every op either completes
// or leaves state, headers and dm mappings as they were.
//
// Thread-safe: state changes are serialised by one mutex; slow work (key
// provider round trips, dm activation) runs outside it under a per-volume
// or per-KEK lock, so opening many volumes in parallel is parallel.
//
// Volume states (status, vm.show, volume.list): "unlocked" (a dm mapping
// of the volume's LUKS UUID exists), "unavailable" (its device or image
// file is missing), else "locked". The last failed open of each volume
// (code, message, time) is kept in memory only, keyed by LUKS UUID, shown
// as the "reason" of a locked volume and cleared by a successful open.
#ifndef VCRYPT_DAEMON_CONTROLLER_H_
#define VCRYPT_DAEMON_CONTROLLER_H_

#include <sys/types.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/kek_cache.h"
#include "daemon/state.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

struct ControllerOptions {
  std::string state_dir = "/var/lib/vcrypt";
  // nullopt: bypass dm-crypt workqueues on non-rotational devices.
  std::optional<bool> bypass_workqueues;
  // Where udev links block devices by file system UUID; a volume whose
  // inventory device path is stale is looked up here. Tests point it
  // elsewhere.
  std::string by_uuid_dir = "/dev/disk/by-uuid";
  // How many volumes `open_all` opens at the same time.
  size_t open_all_threads = 8;
};

struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
};

// Named locks: Lock("x") blocks while another holder has "x".
class NamedLocks {
 public:
  class Guard {
   public:
    Guard(NamedLocks* l, std::string k) : locks_(l), key_(std::move(k)) {}
    Guard(Guard&& o) noexcept : locks_(std::exchange(o.locks_, nullptr)),
                               key_(std::move(o.key_)) {}
    Guard(const Guard&) = delete;
    ~Guard() { if (locks_) locks_->Unlock(key_); }
   private:
    NamedLocks* locks_;
    std::string key_;
  };
  Guard Lock(const std::string& key);

 private:
  void Unlock(const std::string& key);
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> held_;
};

class Controller {
 public:
  // Loads state and providers. Fails if the state directory is unusable
  // or a provider's files are damaged.
  static Result<std::unique_ptr<Controller>> Create(ControllerOptions options);

  Result<nlohmann::json> Handle(const std::string& op,
                                const nlohmann::json& args,
                                const SecureBuffer& secret,
                                const Caller& caller);

  KekCache& cache() { return cache_; }

 private:
  explicit Controller(ControllerOptions options, StateStore store);

  using Json = nlohmann::json;

  Result<Json> ProviderAdd(const Json& args, const SecureBuffer& secret);
  Result<Json> ProviderList();
  Result<Json> ProviderShow(const Json& args);
  Result<Json> ProviderRemove(const Json& args);
  Result<Json> ProviderDefault(const Json& args);
  Result<Json> ProviderBackup(const Json& args, const SecureBuffer& password);
  Result<Json> ProviderRestore(const Json& args, const SecureBuffer& password);
  Result<Json> VmCreate(const Json& args);
  Result<Json> VmList();
  Result<Json> VmShow(const Json& args);
  Result<Json> VmSet(const Json& args);
  Result<Json> VmUnregister(const Json& args, bool is_delete);
  Result<Json> VolumeCreate(const Json& args);
  Result<Json> VolumeList(const Json& args);
  // Open with the outcome remembered per LUKS UUID (see OpenFailure).
  Result<Json> Open(const Json& args);
  Result<Json> OpenVolume(const Json& args, std::string* uuid);
  Result<Json> OpenAll(const Json& args);
  Result<Json> Close(const Json& args);
  Result<Json> GetStatus();
  Result<Json> CacheEvict(const Json& args);

  // Where a request's target lives: from "vm"+"disk" via the inventory, or
  // from "path" directly.
  struct Target {
    std::string device;
    std::optional<std::string> vm, disk;  // as named by the caller
    // From the inventory: for vm+disk, or a path that an inventory disk
    // names.
    std::optional<std::string> uuid;
    bool is_file = false;
  };
  Result<Target> ResolveTarget(const Json& args);
  // For a target named VM/DISK: the header of the volume with the
  // inventory's LUKS UUID. When the inventory's device path is missing or
  // holds something else, a block-device volume is looked up as
  // by_uuid_dir/<uuid>; when found there, target->device and the
  // inventory are updated to the device it links to.
  Result<VolumeHeader> LocateVolume(Target* target);

  std::shared_ptr<KeyProvider> FindProvider(const std::string& name);
  // The provider able to produce the KEK of `token`.
  Result<std::shared_ptr<KeyProvider>> ProviderForToken(const VcryptToken& t);
  // The KEK for `ref`, from the cache or the provider (then cached).
  Result<SecureBuffer> GetKek(KeyProvider& provider, const KekRef& ref,
                              const std::string& vm);
  // Every dm mapping (none without device-mapper): one listing per
  // request, looked up by LUKS UUID for each disk.
  Result<std::vector<MappingInfo>> AllMappings();
  Json DiskStatus(const std::string& vm, const std::string& disk,
                  const DiskRecord& d, const std::vector<MappingInfo>& maps);

  // The last failed open of a volume since its last successful one.
  struct OpenFailure {
    ErrorCode code;
    std::string message;
    std::string since;         // first failure with this code in a row
    std::string last_attempt;  // the latest failure
  };
  void RecordFailure(const std::string& uuid, const Error& e);
  void ClearFailure(const std::string& uuid);
  std::optional<OpenFailure> FindFailure(const std::string& uuid);
  // When status first saw a volume's device missing (for "unavailable").
  std::string MissingSince(const std::string& uuid, bool missing);

  ControllerOptions options_;
  std::mutex mu_;  // guards store_ and providers_
  StateStore store_;
  std::map<std::string, std::shared_ptr<KeyProvider>> providers_;
  KekCache cache_;
  NamedLocks locks_;
  std::mutex failures_mu_;  // guards failures_ and missing_since_
  // Both by LUKS UUID (lower-case hex without dashes).
  std::map<std::string, OpenFailure> failures_;
  std::map<std::string, std::string> missing_since_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_CONTROLLER_H_
