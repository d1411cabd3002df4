// What the Controller's op groups share (daemon/controller.h, "Layout"):
// the options, the state store and the providers behind one mutex, the
// held-closed records, the KEK cache, the named locks, the failed-open
// memory and the audit sink; and the accessors every group uses on them.
//
// The Controller owns one ControllerState and hands each group (and the
// KeyAccess and VolumeLocator helpers) a reference to it; the groups own
// no shared state of their own. Each group's header says which parts it
// touches.
//
// Locking:
//   mu          guards `store` and `providers`. Held only to read or write
//               them: never while waiting for a named lock, nor across a
//               key server round trip or dm work (the provider calls
//               under it are local: Describe, Recognizes, a native
//               provider's Create).
//   cache, held_closed, failures, locks: thread-safe on their own.
//   options     read-only once constructed.
// The named locks the groups take, outermost first:
//   "vm:<vm>"          every change of one VM's record: vm.create, .set,
//                      .register, .unregister/.delete, .rekey,
//                      volume.create
//   "vm-life:<vm>"     shared by every open of the VM's volumes, exclusive
//                      by vm.unregister/.delete (after "vm:")
//   "dev:<path>"       volume.create on one device or file (after "vm:")
//   "vol:<LUKS UUID>"  every header write and activation of one volume:
//                      open, close (waits at most 5 s), rekey, deep rekey,
//                      recovery keys
//   "kek:<provider>/<KEK ID>"  one provider fetch per KEK (KeyAccess::GetKek)
//   "provider:<name>"  provider.add and .restore of one name
#ifndef VCRYPT_DAEMON_CONTROLLER_STATE_H_
#define VCRYPT_DAEMON_CONTROLLER_STATE_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/result.h"
#include "daemon/audit.h"
#include "daemon/controller_options.h"
#include "daemon/held_closed.h"
#include "daemon/kek_cache.h"
#include "daemon/named_locks.h"
#include "daemon/open_failures.h"
#include "daemon/state.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

struct ControllerState {
  // `options.audit` must be set. `lock` is held for the state's lifetime;
  // the held-closed records live under `store`'s directory.
  ControllerState(ControllerOptions options, StateDirLock lock,
                  StateStore store);
  ControllerState(const ControllerState&) = delete;
  ControllerState& operator=(const ControllerState&) = delete;

  // A copy of VM `vm`'s record; kNotFound "no VM named ..." otherwise.
  Result<VmRecord> FindVm(const std::string& vm);
  // The provider named `name` (an UnavailableProvider when it failed to
  // load); nullptr when none is configured.
  std::shared_ptr<KeyProvider> FindProvider(const std::string& name);
  // Writes to options.audit (daemon/audit.h).
  void Audit(const AuditRecord& record) { options.audit->Write(record); }
  void Audit(const std::vector<AuditRecord>& records) {
    for (const auto& r : records) Audit(r);
  }

  ControllerOptions options;
  StateDirLock dir_lock;  // held for the Controller's lifetime
  std::mutex mu;          // guards store and providers
  StateStore store;
  // Volumes an admin closed on this boot (<state>/held-closed/).
  HeldClosed held_closed;
  std::map<std::string, std::shared_ptr<KeyProvider>> providers;
  KekCache cache;
  NamedLocks locks;
  OpenFailures failures;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_CONTROLLER_STATE_H_
