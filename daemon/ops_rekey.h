// vm.rekey: the shallow rekey or provider change (ops_rekey.cc) and the
// deep rekey with its resume (ops_deep_rekey.cc); docs/rekey.md.
//
// Touches, of the ControllerState: `store` (the pending rekey and the
// VM's new KEK; under `mu`), `cache` (the new KEK), the "vm:" and "vol:"
// named locks, `options.reencrypt_helper`,
// `options.crash_after_token_writes` and the audit sink. Uses KeyAccess
// (KEKs, unwraps, evicting the old KEK) and VolumeLocator (each disk).
// Calls no other group; OpenOps calls ActivateMidRekey.
#ifndef VCRYPT_DAEMON_OPS_REKEY_H_
#define VCRYPT_DAEMON_OPS_REKEY_H_

#include <atomic>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller_options.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/state.h"
#include "daemon/volume_locator.h"
#include "dmtools/reencrypt.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

class RekeyOps {
 public:
  using Json = nlohmann::json;

  RekeyOps(ControllerState& state, KeyAccess& keys, VolumeLocator& locator)
      : state_(state), keys_(keys), locator_(locator) {}

  // Shallow rekey / provider change, or deep rekey (docs/rekey.md); also
  // finishes a pending one. Each disk is bracketed by disk.start and
  // disk.done events to `on_event`, when set.
  Result<Json> VmRekey(const Json& args, const AuditContext& ctx,
                       const EventSink& on_event);
  // Activates a volume in the middle of a deep rekey: with its DEK while
  // the data is still under it, else with the reencryption passphrase.
  // For the open path (OpenOps), under the volume's "vol:" lock.
  Result<std::string> ActivateMidRekey(const ActivateParams& ap,
                                       const ReencryptState& rs,
                                       const VcryptToken& token,
                                       const std::string& uuid,
                                       const AuditContext& ctx);

 private:
  using Target = VolumeLocator::Target;
  using UnwrappedDek = KeyAccess::UnwrappedDek;

  // Re-wraps the DEK of one disk under `new_kek` (a no-op when the token
  // already carries it). Returns "rekeyed" or "already".
  Result<std::string> RekeyDisk(const std::string& vm, const std::string& disk,
                                const PendingRekey& to,
                                KeyProvider& to_provider,
                                const SecureBuffer& new_kek,
                                const AuditContext& ctx);
  // Deep rekey of one disk (docs/rekey.md): a new DEK, the data
  // reencrypted under it by the helper process (disk.progress events to
  // `on_event`), then the token rewritten under `new_kek` and the
  // temporary keyslots removed. Picks up whatever an interrupted run left.
  // Returns "rekeyed" or "already".
  Result<std::string> DeepRekeyDisk(
      const std::string& vm, const std::string& disk, const PendingRekey& to,
      KeyProvider& to_provider, const SecureBuffer& new_kek,
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
                             KeyProvider& to_provider,
                             const SecureBuffer& new_kek,
                             const SecureBuffer& dek, const AuditContext& ctx);
  // The passphrase of a deep rekey's temporary keyslots, unwrapped from
  // the reencryption marker of the volume that holds `token`. Audited as
  // kek.fetch and dek.unwrap.
  Result<SecureBuffer> ReencryptPassphrase(const ReencryptState& rs,
                                           const VcryptToken& token,
                                           const std::string& device,
                                           const AuditContext& ctx);

  ControllerState& state_;
  KeyAccess& keys_;
  VolumeLocator& locator_;
  std::atomic<unsigned> token_writes_{0};  // for crash_after_token_writes
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPS_REKEY_H_
