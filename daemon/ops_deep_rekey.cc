// Deep rekey (vm.rekey --deep; docs/rekey.md): a new DEK per disk, the
// data reencrypted under it, picking up where an interrupted run stopped
// (RekeyOps in daemon/ops_rekey.h).
#include <cstring>

#include "common/aead.h"
#include "common/random.h"
#include "daemon/ops_rekey.h"
#include "daemon/ops_util.h"
#include "daemon/reencrypt_helper.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::VolumeAudit;

}  // namespace

// --- deep rekey --------------------------------------------------------------
//
// A new DEK per disk, the data reencrypted under it (dmtools/reencrypt.h),
// and the new KEK as for a shallow rekey. At every instant a volume opens:
// with its DEK before the reencryption starts, with the reencryption
// passphrase (both keys) while it runs, with the passphrase or the new
// token after it ends. docs/rekey.md has the crash analysis.

namespace {

constexpr size_t kReencryptPassphraseSize = 32;

std::vector<uint8_t> ReencryptAad(std::string_view uuid,
                                  std::string_view kek_id,
                                  std::string_view provider) {
  return BuildAad("vcrypt-reencrypt-passphrase-v1", {uuid, kek_id, provider});
}

// The marker payload: the new KEK's reference and the passphrase wrapped
// under it. Never plaintext.
Json ReencryptPayload(const PendingRekey& to, std::string_view provider_type,
                      const WrappedKey& passphrase) {
  return Json{{"provider",
               {{"name", to.provider}, {"type", std::string(provider_type)}}},
              {"kek", {{"id", to.kek.kek_id}, {"data", to.kek.data}}},
              {"passphrase", passphrase.ToJson()}};
}

// The payload read back as a token-shaped value (its "dek" holds the
// wrapped passphrase), so the KEK is found as for a volume's own token.
Result<VcryptToken> PayloadAsToken(const ReencryptState& rs,
                                   const VcryptToken& owner,
                                   const std::string& device) {
  auto bad = [&](const std::string& what) {
    return MakeError(
        ErrorCode::kInvalidVolume,
        "the deep rekey marker of " + device + " is malformed (" + what + ")");
  };
  Json j = Json::parse(rs.payload, nullptr, false);
  if (!j.is_object()) return bad("not an object");
  try {
    VcryptToken t = owner;
    t.provider_name = j.at("provider").at("name").get<std::string>();
    t.provider_type = j.at("provider").at("type").get<std::string>();
    t.kek.kek_id = j.at("kek").at("id").get<std::string>();
    t.kek.data = j.at("kek").at("data");
    VCRYPT_ASSIGN_OR_RETURN(t.dek, WrappedKey::FromJson(j.at("passphrase")));
    return t;
  } catch (const Json::exception&) {
    return bad("missing or mistyped member");
  }
}

}  // namespace

Result<SecureBuffer> RekeyOps::ReencryptPassphrase(const ReencryptState& rs,
                                                   const VcryptToken& token,
                                                   const std::string& device,
                                                   const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken t, PayloadAsToken(rs, token, device));
  VCRYPT_ASSIGN_OR_RETURN(
      UnwrappedDek u,
      keys_.UnwrapUnderTokenKek(
          t, t.dek, ReencryptAad(rs.uuid, t.kek.kek_id, t.provider_name),
          rs.uuid, device, "the reencryption passphrase", ctx));
  return std::move(u.dek);
}

Result<std::string> RekeyOps::ActivateMidRekey(const ActivateParams& ap,
                                               const ReencryptState& rs,
                                               const VcryptToken& token,
                                               const std::string& uuid,
                                               const AuditContext& ctx) {
  if (rs.phase == ReencryptPhase::kNone) {
    // Set up but not started, or finished with the token already
    // rewritten: the token's DEK is the data's key.
    VCRYPT_ASSIGN_OR_RETURN(UnwrappedDek u,
                            keys_.UnwrapVolumeDek(token, uuid, ap.device, ctx));
    auto path = Activate(ap, u.dek);
    if (path.ok() || path.error().code != ErrorCode::kCrypto) return path;
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pass,
                          ReencryptPassphrase(rs, token, ap.device, ctx));
  return ActivateByPassphrase(ap, pass);
}

Status RekeyOps::CheckDeepRekeyPossible(const std::string& vm,
                                        const VmRecord& rec) {
  if (state_.options.reencrypt_helper.empty())
    return MakeError(
        ErrorCode::kInternal,
        "this vcryptd has no reencryption helper; deep rekey is unavailable");
  for (const auto& [dn, d] : rec.disks) {
    VCRYPT_ASSIGN_OR_RETURN(
        Target target, locator_.ResolveTarget(Json{{"vm", vm}, {"disk", dn}}));
    VCRYPT_ASSIGN_OR_RETURN(VolumeHeader hdr, locator_.LocateVolume(&target));
    VCRYPT_ASSIGN_OR_RETURN(ReencryptState rs,
                            ReadReencryptState(target.device));
    if (rs.has_marker()) continue;  // an interrupted deep rekey: resumable
    if (rs.phase != ReencryptPhase::kNone)
      return MakeError(
          ErrorCode::kBusy,
          vm + "/" + dn + " (" + target.device +
              ") is being reencrypted by something other than vcrypt; "
              "finish that with cryptsetup first");
    VCRYPT_ASSIGN_OR_RETURN(RecoveryState recovery,
                            ReadRecoveryKeyslot(target.device));
    if (recovery.slot)
      return MakeError(
          ErrorCode::kBusy,
          vm + "/" + dn +
              " has a recovery key, which holds the old DEK and "
              "would not open the volume after a deep rekey; remove it first "
              "('vcryptctl volume recovery-key remove " +
              vm + "/" + dn + "') and add a new one afterwards");
    if (rs.active_keyslots > 0)
      return MakeError(
          ErrorCode::kBusy,
          vm + "/" + dn + " has " + std::to_string(rs.active_keyslots) +
              " keyslot(s) vcrypt did not add; a deep rekey would leave "
              "them unusable: remove them first (cryptsetup luksKillSlot)");
  }
  return Status::Ok();
}

Result<std::string> RekeyOps::DeepRekeyDisk(
    const std::string& vm, const std::string& disk, const PendingRekey& to,
    KeyProvider& to_provider, const SecureBuffer& new_kek,
    const AuditContext& ctx, const EventSink& on_event) {
  VCRYPT_ASSIGN_OR_RETURN(
      Target target, locator_.ResolveTarget(Json{{"vm", vm}, {"disk", disk}}));
  VCRYPT_ASSIGN_OR_RETURN(VolumeHeader hdr, locator_.LocateVolume(&target));
  auto guard = state_.locks.Lock("vol:" + hdr.uuid);
  const std::string& device = target.device;
  VCRYPT_ASSIGN_OR_RETURN(hdr, ReadHeader(device));
  if (!hdr.token_json)
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has no vcrypt token");
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken token,
                          VcryptToken::Parse(*hdr.token_json));
  if (token.vm != vm || token.disk != disk)
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " holds volume " + token.vm + "/" + token.disk +
                         ", not " + vm + "/" + disk);
  const bool token_is_new =
      token.provider_name == to.provider && token.kek.kek_id == to.kek.kek_id;
  VCRYPT_ASSIGN_OR_RETURN(ReencryptState rs, ReadReencryptState(device));
  // 1. Set up: marker with the wrapped passphrase, the two keyslots.
  auto set_up = [&]() -> Status {
    VCRYPT_ASSIGN_OR_RETURN(
        UnwrappedDek old_dek,
        keys_.UnwrapVolumeDek(token, hdr.uuid, device, ctx));
    VCRYPT_RETURN_IF_ERROR(VerifyDek(device, old_dek.dek));
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer new_dek, RandomKey(kDekSize));
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pass,
                            RandomKey(kReencryptPassphraseSize));
    auto wrapped = WrapKey(new_kek, pass,
                           ReencryptAad(hdr.uuid, to.kek.kek_id, to.provider));
    AuditRecord wrap = VolumeAudit(ctx, AuditOp::kDekWrap, vm, disk, hdr.uuid,
                                   to.provider, to.kek.kek_id);
    state_.Audit(wrap.Outcome(wrapped));
    VCRYPT_ASSIGN_OR_RETURN(WrappedKey wp, std::move(wrapped));
    VCRYPT_RETURN_IF_ERROR(
        PrepareReencrypt(device, old_dek.dek, new_dek, pass,
                         ReencryptPayload(to, to_provider.type(), wp).dump()));
    VCRYPT_ASSIGN_OR_RETURN(rs, ReadReencryptState(device));
    return Status::Ok();
  };
  if (!rs.has_marker()) {
    if (token_is_new) return std::string("already");
    // As CheckDeepRekeyPossible, for a disk reached by a resumed rekey.
    if (rs.phase != ReencryptPhase::kNone || rs.active_keyslots > 0)
      return MakeError(
          ErrorCode::kBusy,
          device +
              " has keyslots or a reencryption vcrypt did not make (a "
              "recovery key?); remove them first");
    VCRYPT_RETURN_IF_ERROR(set_up());
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pass,
                          ReencryptPassphrase(rs, token, device, ctx));

  if (!token_is_new) {
    // 2. Reencrypt, unless it already ended (the segment's key is then no
    //    longer the token's DEK).
    bool run = rs.phase != ReencryptPhase::kNone;
    if (!run) {
      auto current = VolumeKeyByPassphrase(device, pass);
      // Only "no keyslot opens" means a set-up cut short; any other
      // failure must not lead to removing keyslots (one may hold the only
      // copy of the new DEK).
      if (!current.ok() && current.error().code != ErrorCode::kCrypto)
        return std::move(current).error();
      VCRYPT_ASSIGN_OR_RETURN(
          UnwrappedDek old_dek,
          keys_.UnwrapVolumeDek(token, hdr.uuid, device, ctx));
      const bool not_started = current.ok() && current->Equals(old_dek.dek);
      if (!current.ok() ||
          (not_started && (rs.old_keyslot < 0 || rs.new_keyslot < 0))) {
        // A set-up cut short (keyslots missing): remove what it left and
        // set up again.
        VCRYPT_RETURN_IF_ERROR(RemoveReencryptKeyslots(device, &pass));
        VCRYPT_RETURN_IF_ERROR(set_up());
        VCRYPT_ASSIGN_OR_RETURN(pass,
                                ReencryptPassphrase(rs, token, device, ctx));
        run = true;
      } else {
        run = not_started;
      }
    }
    if (run) {
      // Without device-mapper nothing is mapped: offline.
      std::optional<MappingInfo> mapped;
      if (DeviceMapperAvailable()) {
        VCRYPT_ASSIGN_OR_RETURN(mapped, FindMappingByUuid(hdr.uuid));
      }
      // Online, libcryptsetup checks that the header's device is the one
      // under the mapping: for an image file that is the loop device the
      // mapping uses, not a new loop device for the file.
      ReencryptJob job{
          mapped && !mapped->backing.empty() ? mapped->backing : device,
          mapped ? mapped->name : ""};
      auto progress = [&](uint64_t done, uint64_t total) {
        if (on_event)
          on_event(Json{{"type", "disk.progress"},
                        {"vm", vm},
                        {"disk", disk},
                        {"done_bytes", done},
                        {"total_bytes", total}});
      };
      VCRYPT_RETURN_IF_ERROR(RunReencryptHelper(state_.options.reencrypt_helper,
                                                job, pass, progress));
    }
    // 3. The new DEK into the token, under the new KEK.
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer new_dek,
                            VolumeKeyByPassphrase(device, pass));
    VCRYPT_RETURN_IF_ERROR(VerifyDek(device, new_dek));
    VCRYPT_RETURN_IF_ERROR(WriteRewrappedToken(
        token, hdr.uuid, device, to, to_provider, new_kek, new_dek, ctx));
  }
  // 4. No keyslot remains.
  VCRYPT_RETURN_IF_ERROR(RemoveReencryptKeyslots(device, &pass));
  return std::string("rekeyed");
}

}  // namespace vcrypt
