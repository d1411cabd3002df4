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
//
// Layout. The Controller is a thin dispatcher: Ops() maps each op to its
// least role and a handler that calls one op group. The groups are
// classes over one shared ControllerState (daemon/controller_state.h:
// options, state store + mutex, providers, KEK cache, named locks,
// held-closed records, failed-open memory, audit sink); each group's
// header says what of it the group touches and which other group it
// calls:
//   controller.cc        construction, the op table, Handle/Authorize,
//                        ResumeDeepRekeys, EvictAllOnShutdown
//   controller_state.h   ControllerState; FindVm, FindProvider, Audit
//   key_access.h         KeyAccess: ProviderForToken, GetKek, EvictKeks,
//                        UnwrapVolumeDek, UnwrapUnderTokenKek
//   volume_locator.h     VolumeLocator: ResolveTarget, LocateVolume
//   open_failures.h      OpenFailures: the failed-open memory
//   named_locks.h        NamedLocks
//   ops_providers.h      ProviderOps: provider.*
//   ops_vms.h            VmOps: vm.create, .list, .show, .set, .register,
//                        .unregister, .delete
//   ops_volumes.h        VolumeOps: volume.create, volume.list
//   ops_open.h           OpenOps: open, open_all, close
//   ops_rekey.h          RekeyOps: vm.rekey, shallow (ops_rekey.cc) and
//                        deep (ops_deep_rekey.cc)
//   ops_recovery.h       RecoveryOps: volume.recovery_key.*
//   ops_status.h         StatusOps: status, cache.evict, DiskStatus
//   ops_migration.h      MigrationOps: vm.incoming, vm.depart
//   ops_util.h           argument, UUID, mapping and audit helpers
// Calls between groups, all one way: StatusOps -> ProviderOps (status
// lists providers), VmOps and VolumeOps -> StatusOps (DiskStatus), OpenOps
// -> RekeyOps (ActivateMidRekey). ResumeDeepRekeys runs vm.rekey through
// Handle.
//
// Audit: every key operation (KEK create/fetch/evict/destroy, DEK
// wrap/unwrap, native primary key add/remove/backup/restore) is reported,
// with the caller's uid and its outcome, to ControllerOptions::audit, and
// only there: the Controller prints nothing itself (daemon/audit.h,
// docs/audit.md). A key operation is audited once it is attempted, that
// is once the request names a key the daemon has resolved; a request
// refused before that (bad arguments, unknown VM) touched no key and shows
// only in vcryptd's request log.
#ifndef VCRYPT_DAEMON_CONTROLLER_H_
#define VCRYPT_DAEMON_CONTROLLER_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller_options.h"
#include "daemon/controller_state.h"
#include "daemon/kek_cache.h"
#include "daemon/key_access.h"
#include "daemon/named_locks.h"
#include "daemon/ops_migration.h"
#include "daemon/ops_open.h"
#include "daemon/ops_providers.h"
#include "daemon/ops_recovery.h"
#include "daemon/ops_rekey.h"
#include "daemon/ops_status.h"
#include "daemon/ops_vms.h"
#include "daemon/ops_volumes.h"
#include "daemon/roles.h"
#include "daemon/state.h"
#include "daemon/volume_locator.h"

namespace vcrypt {

class Controller {
 public:
  // Locks the state directory (StateDirLock: kBusy naming the PID of the
  // vcryptd that holds it), then loads state and providers. Fails if the
  // state directory is unusable. A provider whose files cannot be loaded
  // (damaged, insecure, unreadable) does not stop it: that provider is
  // kept as "unavailable" with the reason (daemon/unavailable_provider.h)
  // and the others work. The lock is released when the Controller goes.
  static Result<std::unique_ptr<Controller>> Create(ControllerOptions options);

  // One line per provider that failed to load, for vcryptd's log.
  std::vector<std::string> UnavailableProviders();

  // Every request is first checked against the role table
  // (daemon/roles.h): a caller whose role is too low gets
  // kPermissionDenied and nothing is done.
  Result<nlohmann::json> Handle(const std::string& op,
                                const nlohmann::json& args,
                                const SecureBuffer& secret,
                                const Caller& caller);
  // The same, for a caller that can carry a secret back: ops whose result
  // includes one (volume.recovery_key.add) put it into *reply_secret,
  // never into the JSON, and the Server sends it on the wire's secret
  // channel (common/wire.h). Every other op goes to the overload above and
  // leaves *reply_secret empty; that overload refuses those ops.
  // vm.rekey reports its progress to `on_event` (disk.start, disk.done,
  // disk.progress); through the overload above it reports to no one.
  Result<nlohmann::json> Handle(const std::string& op,
                                const nlohmann::json& args,
                                const SecureBuffer& secret,
                                const Caller& caller,
                                SecureBuffer* reply_secret,
                                const EventSink& on_event = {});

  KekCache& cache() { return state_.cache; }

  // One request as a handler sees it.
  struct Request {
    const nlohmann::json& args;
    const SecureBuffer& secret;
    const AuditContext& ctx;
    // Whether the caller came through the Handle overload that can carry
    // a secret back; then reply_secret is where it goes (may be null).
    bool secret_channel;
    SecureBuffer* reply_secret;
    const EventSink& on_event;
  };
  using Handler = Result<nlohmann::json> (*)(Controller&, const Request&);
  // One op of the protocol: its name, the least role that may call it
  // (RequiredRole raises it for some arguments) and its handler.
  struct Op {
    std::string_view name;
    Role role;
    Handler handler;
  };
  // The one table of ops, in docs/protocol.md's order: Handle dispatches
  // through it, and daemon/roles.h's RequiredRole and KnownOps read it.
  static const std::vector<Op>& Ops();
  // The entry of `op`; nullptr for an unknown op.
  static const Op* FindOp(std::string_view op);

  // Evicts (and wipes) every cached KEK, each audited as kek.evict of
  // request "shutdown" by vcryptd's own uid. vcryptd calls it when it
  // stops. Returns the number evicted.
  size_t EvictAllOnShutdown();
  // Evicts (audited, request=housekeeping) each cached KEK older than its
  // provider's maximum age; vcryptd calls it periodically so an expired
  // KEK does not stay in memory until its next use. Returns how many.
  size_t EvictExpiredKeks();

  // Finishes, one VM after the other, every deep rekey the inventory
  // records as pending (a crash or restart interrupted it). vcryptd runs
  // it in a thread at start. Returns one line per VM for the log.
  std::vector<std::string> ResumeDeepRekeys();

 private:
  Controller(ControllerOptions options, StateDirLock lock, StateStore store);
  // kPermissionDenied unless `caller` may run `op` with `args`.
  Status Authorize(const std::string& op, const nlohmann::json& args,
                   const Caller& caller);
  // Both Handle overloads: checks, then the op's handler.
  Result<nlohmann::json> Run(const std::string& op, const nlohmann::json& args,
                             const SecureBuffer& secret, const Caller& caller,
                             bool secret_channel, SecureBuffer* reply_secret,
                             const EventSink& on_event);

  // Declared in construction order: each group gets references to what
  // it uses (its header says which), all of them to state_.
  ControllerState state_;
  KeyAccess keys_;
  VolumeLocator locator_;
  ProviderOps provider_ops_;
  StatusOps status_ops_;
  VmOps vm_ops_;
  VolumeOps volume_ops_;
  RekeyOps rekey_ops_;
  OpenOps open_ops_;
  RecoveryOps recovery_ops_;
  MigrationOps migration_ops_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_CONTROLLER_H_
