// Recovery keys: volume.recovery_key.add and .remove (docs/recovery.md,
// daemon/ops_recovery.h).
#include "daemon/ops_recovery.h"

#include <cstring>

#include "common/random.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::BoolArg;
using controller_ops::Exists;
using controller_ops::SameUuid;

}  // namespace

// --- recovery keys (docs/recovery.md) --------------------------------------
//
// A recovery key is a passphrase keyslot holding the DEK: a second way to
// the data that needs no key provider. It is generated here, goes back to
// the caller once on the wire's secret channel, and is kept nowhere else:
// not in the inventory, the audit log, vcryptd's log or an error message.

Result<RecoveryOps::RecoveryTarget> RecoveryOps::ResolveRecoveryTarget(
    const Json& args) {
  RecoveryTarget t;
  VCRYPT_ASSIGN_OR_RETURN(t.target, locator_.ResolveTarget(args));
  if (t.target.vm) {
    VCRYPT_ASSIGN_OR_RETURN(t.header, locator_.LocateVolume(&t.target));
  } else {
    if (!Exists(t.target.device))
      return MakeError(ErrorCode::kNotFound,
                       "device " + t.target.device + " does not exist");
    VCRYPT_ASSIGN_OR_RETURN(t.header, ReadHeader(t.target.device));
  }
  if (!t.header.token_json)
    return MakeError(ErrorCode::kInvalidVolume,
                     t.target.device +
                         " is a LUKS volume but not a vcrypt volume "
                         "(no vcrypt token); use cryptsetup for it");
  VCRYPT_ASSIGN_OR_RETURN(t.token, VcryptToken::Parse(*t.header.token_json));
  if (t.target.vm &&
      (t.token.vm != *t.target.vm || t.token.disk != *t.target.disk))
    return MakeError(ErrorCode::kInvalidVolume,
                     t.target.device + " holds volume " + t.token.vm + "/" +
                         t.token.disk + ", not " + *t.target.vm + "/" +
                         *t.target.disk);
  return t;
}

Result<SecureBuffer> RecoveryOps::RecoveryDek(const RecoveryTarget& t,
                                              const AuditContext& ctx) {
  // As open does it (kek.fetch, dek.unwrap), then checked against the
  // LUKS2 digest: a keyslot for a wrong key would be useless.
  VCRYPT_ASSIGN_OR_RETURN(
      UnwrappedDek u,
      keys_.UnwrapVolumeDek(t.token, t.header.uuid, t.target.device, ctx));
  VCRYPT_RETURN_IF_ERROR(VerifyDek(t.target.device, u.dek));
  return std::move(u.dek);
}

// The recovery keyslot of `t`'s device, read under its volume lock, and
// still of the same volume as when `t` was resolved.
Result<RecoveryState> RecoveryOps::RecoveryStateOf(const RecoveryTarget& t) {
  VCRYPT_ASSIGN_OR_RETURN(RecoveryState state,
                          ReadRecoveryKeyslot(t.target.device));
  if (!SameUuid(state.uuid, t.header.uuid))
    return MakeError(
        ErrorCode::kInvalidVolume,
        t.target.device + " changed while it was being read; retry");
  return state;
}

Result<Json> RecoveryOps::RecoveryKeyAdd(const Json& args,
                                         const AuditContext& ctx,
                                         SecureBuffer* key) {
  VCRYPT_ASSIGN_OR_RETURN(RecoveryTarget t, ResolveRecoveryTarget(args));
  const std::string& device = t.target.device;
  const std::string volume = t.token.vm + "/" + t.token.disk;
  auto guard = state_.locks.Lock("vol:" + t.header.uuid);
  // An existing recovery key is refused before the provider is asked.
  VCRYPT_ASSIGN_OR_RETURN(RecoveryState state, RecoveryStateOf(t));
  if (state.slot)
    return MakeError(
        ErrorCode::kExists,
        "volume " + volume + " already has a recovery key (keyslot " +
            std::to_string(state.slot->keyslot) +
            (state.slot->created.empty() ? ""
                                         : ", added " + state.slot->created) +
            "); remove it first with 'vcryptctl volume recovery-key remove " +
            volume + "'");
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer dek, RecoveryDek(t, ctx));

  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kRecoveryAdd);
  audit.vm = t.token.vm;
  audit.disk = t.token.disk;
  audit.volume = t.header.uuid;
  audit.provider = t.token.provider_name;
  audit.kek_id = t.token.kek.kek_id;
  auto generated = RandomRecoveryKey();
  if (!generated.ok()) {
    state_.Audit(audit.Outcome(generated));
    return std::move(generated).error();
  }
  auto added = AddRecoveryKeyslot(device, dek, *generated, NowRfc3339());
  state_.Audit(audit.Outcome(added));
  if (!added.ok()) return std::move(added).error();
  *key = std::move(generated).value();
  return Json{{"vm", t.token.vm},
              {"disk", t.token.disk},
              {"device", device},
              {"uuid", t.header.uuid},
              {"keyslot", added->keyslot},
              {"created", added->created},
              {"pbkdf",
               {{"type", added->pbkdf},
                {"time_cost", added->iterations},
                {"memory_kib", added->memory_kib},
                {"threads", added->threads}}}};
}

Result<Json> RecoveryOps::RecoveryKeyRemove(const Json& args,
                                            const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(RecoveryTarget t, ResolveRecoveryTarget(args));
  const std::string& device = t.target.device;
  const std::string volume = t.token.vm + "/" + t.token.disk;
  auto guard = state_.locks.Lock("vol:" + t.header.uuid);
  VCRYPT_ASSIGN_OR_RETURN(RecoveryState state, RecoveryStateOf(t));
  if (!state.slot)
    return MakeError(ErrorCode::kNotFound,
                     "volume " + volume + " has no recovery key");

  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kRecoveryRemove);
  audit.vm = t.token.vm;
  audit.disk = t.token.disk;
  audit.volume = t.header.uuid;
  audit.provider = t.token.provider_name;
  audit.kek_id = t.token.kek.kek_id;
  // Without a key provider that still produces the DEK, the recovery key
  // may be the last way to the data: removing it then takes --force.
  if (!BoolArg(args, "force")) {
    auto dek = RecoveryDek(t, ctx);
    if (!dek.ok()) {
      audit.error =
          MakeError(dek.error().code, "not removing the recovery key of " +
                                          volume + ": " + dek.error().message +
                                          "; without it the volume may not "
                                          "open at all; re-run with --force to "
                                          "remove it anyway");
      state_.Audit(audit);
      return *audit.error;
    }
  }
  auto removed = RemoveRecoveryKeyslot(device);
  state_.Audit(audit.Outcome(removed));
  if (!removed.ok()) return std::move(removed).error();
  return Json{{"vm", t.token.vm},
              {"disk", t.token.disk},
              {"device", device},
              {"uuid", t.header.uuid},
              {"keyslot", removed->keyslot},
              {"removed", true}};
}

}  // namespace vcrypt
