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

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/kek_cache.h"
#include "daemon/state.h"
#include "dmtools/token.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

struct ControllerOptions {
  std::string state_dir = "/var/lib/vcrypt";
  // nullopt: bypass dm-crypt workqueues on non-rotational devices.
  std::optional<bool> bypass_workqueues;
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
  Result<Json> VmUnregister(const Json& args, bool is_delete);
  Result<Json> VolumeCreate(const Json& args);
  Result<Json> VolumeList(const Json& args);
  Result<Json> Open(const Json& args);
  Result<Json> Close(const Json& args);
  Result<Json> GetStatus();
  Result<Json> CacheEvict(const Json& args);

  // Where a request's target lives: from "vm"+"disk" via the inventory, or
  // from "path" directly.
  struct Target {
    std::string device;
    std::optional<std::string> vm, disk;  // as named by the caller
  };
  Result<Target> ResolveTarget(const Json& args);

  std::shared_ptr<KeyProvider> FindProvider(const std::string& name);
  // The provider able to produce the KEK of `token`.
  Result<std::shared_ptr<KeyProvider>> ProviderForToken(const VcryptToken& t);
  // The KEK for `ref`, from the cache or the provider (then cached).
  Result<SecureBuffer> GetKek(KeyProvider& provider, const KekRef& ref,
                              const std::string& vm);
  Result<Json> DiskStatus(const std::string& vm, const std::string& disk,
                          const DiskRecord& d);

  ControllerOptions options_;
  std::mutex mu_;  // guards store_ and providers_
  StateStore store_;
  std::map<std::string, std::shared_ptr<KeyProvider>> providers_;
  KekCache cache_;
  NamedLocks locks_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_CONTROLLER_H_
