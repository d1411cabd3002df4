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
// Layout. One class, its member functions split over files by op group,
// all over the same shared state (state store + mu_, providers_, KEK
// cache, named locks, failed-open memory, options and audit sink):
//   controller.cc        construction, the op table (Ops(): op -> least
//                        role -> handler), Handle/Authorize, and the key
//                        access every group uses (FindVm, FindProvider,
//                        GetKek, EvictKeks)
//   ops_providers.cc     provider.*
//   ops_vms.cc           vm.create, vm.list, vm.show, vm.set,
//                        vm.unregister, vm.delete
//   ops_volumes.cc       volume.create, volume.list
//   ops_open.cc          open, open_all, close; ResolveTarget,
//                        LocateVolume, ProviderForToken, UnwrapVolumeDek
//   ops_rekey.cc         vm.rekey (shallow), vm.register,
//                        WriteRewrappedToken
//   ops_deep_rekey.cc    vm.rekey --deep and ResumeDeepRekeys
//   ops_recovery.cc      volume.recovery_key.*
//   ops_status.cc        status, cache.evict, DiskStatus
//   open_failures.h      the failed opens kept in memory (OpenFailures)
//   named_locks.h        NamedLocks
//   ops_util.{h,cc}      argument, UUID and audit helpers they share
// Member functions rather than one class per group: the groups call into
// each other (vm.show uses DiskStatus, register and recovery use the
// open path's LocateVolume and UnwrapVolumeDek, open uses the deep
// rekey's ActivateMidRekey, ResumeDeepRekeys runs VmRekey), and the move
// keeps every function body as it was, so that the split is reviewable as
// a pure move with no behaviour change. Narrowing each group to an
// interface of its own over a shared context is the next step (issue 14).
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

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller_options.h"
#include "daemon/held_closed.h"
#include "daemon/kek_cache.h"
#include "daemon/named_locks.h"
#include "daemon/open_failures.h"
#include "daemon/roles.h"
#include "daemon/state.h"
#include "dmtools/reencrypt.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "keyproviders/key_provider.h"

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

  KekCache& cache() { return cache_; }

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

  using Json = nlohmann::json;

  // Ops that perform key operations take the request's AuditContext.
  Result<Json> ProviderAdd(const Json& args, const SecureBuffer& secret,
                           const AuditContext& ctx);
  Result<Json> ProviderList();
  Result<Json> ProviderShow(const Json& args);
  Result<Json> ProviderRemove(const Json& args, const AuditContext& ctx);
  Result<Json> ProviderDefault(const Json& args);
  Result<Json> ProviderBackup(const Json& args, const SecureBuffer& password,
                              const AuditContext& ctx);
  Result<Json> ProviderRestore(const Json& args, const SecureBuffer& password,
                               const AuditContext& ctx);
  Result<Json> VmCreate(const Json& args, const AuditContext& ctx);
  Result<Json> VmList();
  Result<Json> VmShow(const Json& args);
  Result<Json> VmSet(const Json& args);
  Result<Json> VmRegister(const Json& args, const AuditContext& ctx);
  // The DEK of a volume whose header holds `token` (LUKS UUID `uuid`,
  // found at `device`): the KEK from the token's provider (cache first),
  // then the unwrap. Audited as kek.fetch and dek.unwrap. kCrypto when the
  // token does not belong to the volume.
  struct UnwrappedDek {
    std::shared_ptr<KeyProvider> provider;
    SecureBuffer dek;
  };
  Result<UnwrappedDek> UnwrapVolumeDek(const VcryptToken& token,
                                       const std::string& uuid,
                                       const std::string& device,
                                       const AuditContext& ctx);
  // Shallow rekey / provider change (docs/rekey.md). Each disk is
  // bracketed by disk.start and disk.done events to `on_event`, when set.
  Result<Json> VmRekey(const Json& args, const AuditContext& ctx,
                       const EventSink& on_event);
  // Re-wraps the DEK of one disk under `new_kek` (a no-op when the token
  // already carries it). Returns "rekeyed" or "already".
  Result<std::string> RekeyDisk(const std::string& vm, const std::string& disk,
                                const PendingRekey& to, KeyProvider& to_provider,
                                const SecureBuffer& new_kek,
                                const AuditContext& ctx);
  // Deep rekey of one disk (docs/rekey.md): a new DEK, the data
  // reencrypted under it by the helper process (disk.progress events to
  // `on_event`), then the token rewritten under `new_kek` and the
  // temporary keyslots removed. Picks up whatever an interrupted run left.
  // Returns "rekeyed" or "already".
  Result<std::string> DeepRekeyDisk(const std::string& vm, const std::string& disk,
                                    const PendingRekey& to, KeyProvider& to_provider,
                                    const SecureBuffer& new_kek,
                                    const AuditContext& ctx, const EventSink& on_event);
  // Before a deep rekey creates anything: every disk is present and has
  // no keyslot vcrypt did not add for a deep rekey (a recovery key among
  // them, which a new DEK would make useless).
  Status CheckDeepRekeyPossible(const std::string& vm, const VmRecord& rec);
  // Writes `token` re-targeted at the KEK of `to`, with `dek` wrapped
  // under `new_kek`, into the header of `device` (LUKS UUID `uuid`), then
  // reads it back and checks that it unwraps to `dek`. Audited as
  // dek.wrap.
  Status WriteRewrappedToken(const VcryptToken& token, const std::string& uuid,
                             const std::string& device, const PendingRekey& to,
                             KeyProvider& to_provider, const SecureBuffer& new_kek,
                             const SecureBuffer& dek, const AuditContext& ctx);
  // The passphrase of a deep rekey's temporary keyslots, unwrapped from
  // the reencryption marker of the volume that holds `token`. Audited as
  // kek.fetch and dek.unwrap.
  Result<SecureBuffer> ReencryptPassphrase(const ReencryptState& rs,
                                           const VcryptToken& token,
                                           const std::string& device,
                                           const AuditContext& ctx);
  // Unwraps `wrapped` under the KEK named by `token` with `aad`: the
  // common part of UnwrapVolumeDek and ReencryptPassphrase.
  Result<UnwrappedDek> UnwrapUnderTokenKek(const VcryptToken& token,
                                           const WrappedKey& wrapped,
                                           const std::vector<uint8_t>& aad,
                                           const std::string& uuid,
                                           const std::string& device,
                                           const std::string& what,
                                           const AuditContext& ctx);
  // Activates a volume in the middle of a deep rekey: with its DEK while
  // the data is still under it, else with the reencryption passphrase.
  Result<std::string> ActivateMidRekey(const ActivateParams& ap,
                                       const ReencryptState& rs,
                                       const VcryptToken& token,
                                       const std::string& uuid,
                                       const AuditContext& ctx);

 public:
  // Finishes, one VM after the other, every deep rekey the inventory
  // records as pending (a crash or restart interrupted it). vcryptd runs
  // it in a thread at start. Returns one line per VM for the log.
  std::vector<std::string> ResumeDeepRekeys();

 private:
  Result<Json> VmUnregister(const Json& args, bool is_delete,
                            const AuditContext& ctx);
  Result<Json> VolumeCreate(const Json& args, const AuditContext& ctx);
  Result<Json> VolumeList(const Json& args);
  // Open with the outcome remembered per LUKS UUID (see OpenFailure).
  Result<Json> Open(const Json& args, const AuditContext& ctx);
  Result<Json> OpenVolume(const Json& args, const AuditContext& ctx,
                          std::string* uuid);
  Result<Json> OpenAll(const Json& args, const AuditContext& ctx);
  Result<Json> Close(const Json& args);
  Result<Json> GetStatus();
  Result<Json> CacheEvict(const Json& args, const AuditContext& ctx);

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

  // Recovery keys (docs/recovery.md). Add returns the key in *key only.
  Result<Json> RecoveryKeyAdd(const Json& args, const AuditContext& ctx,
                              SecureBuffer* key);
  Result<Json> RecoveryKeyRemove(const Json& args, const AuditContext& ctx);
  // The volume a recovery-key request names, its header and vcrypt token,
  // checked as open checks them.
  struct RecoveryTarget {
    Target target;
    VolumeHeader header;
    VcryptToken token;
  };
  Result<RecoveryTarget> ResolveRecoveryTarget(const Json& args);
  Result<RecoveryState> RecoveryStateOf(const RecoveryTarget& t);
  // The DEK of `t` from its provider (kek.fetch, dek.unwrap audited),
  // checked against the LUKS2 digest.
  Result<SecureBuffer> RecoveryDek(const RecoveryTarget& t,
                                   const AuditContext& ctx);

  // A copy of VM `vm`'s record; kNotFound "no VM named ..." otherwise.
  Result<VmRecord> FindVm(const std::string& vm);
  std::shared_ptr<KeyProvider> FindProvider(const std::string& name);
  // The provider able to produce the KEK of `token`.
  Result<std::shared_ptr<KeyProvider>> ProviderForToken(const VcryptToken& t);
  // The KEK for `ref`, from the cache or the provider (then cached under
  // `audit.vm`), audited as kek.fetch: `audit` carries the request and
  // what the KEK is for (vm, and disk/volume when known); op, provider,
  // kek_id, source and result are filled in here.
  Result<SecureBuffer> GetKek(KeyProvider& provider, const KekRef& ref,
                              AuditRecord audit);
  // Evicts each cached KEK that `match` selects; one kek.evict record per
  // KEK evicted, returned for the caller to Audit (after its locks).
  std::vector<AuditRecord> EvictKeks(
      const AuditContext& ctx,
      const std::function<bool(const KekCache::EntryInfo&)>& match);
  void Audit(const AuditRecord& record) { options_.audit->Write(record); }
  void Audit(const std::vector<AuditRecord>& records) {
    for (const auto& r : records) Audit(r);
  }
  // Every dm mapping (none without device-mapper): one listing per
  // request, looked up by LUKS UUID for each disk.
  Result<std::vector<MappingInfo>> AllMappings();
  Json DiskStatus(const std::string& vm, const std::string& disk,
                  const DiskRecord& d, const std::vector<MappingInfo>& maps);

  ControllerOptions options_;
  StateDirLock dir_lock_;  // held for the Controller's lifetime
  std::mutex mu_;  // guards store_ and providers_
  StateStore store_;
  // Volumes an admin closed on this boot (<state>/held-closed/).
  HeldClosed held_closed_;
  std::map<std::string, std::shared_ptr<KeyProvider>> providers_;
  KekCache cache_;
  NamedLocks locks_;
  std::atomic<unsigned> token_writes_{0};  // for crash_after_token_writes
  // The last failed open of each volume, and missing devices.
  OpenFailures failures_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_CONTROLLER_H_
