// Shallow rekey (vm.rekey without --deep; docs/rekey.md; RekeyOps in
// daemon/ops_rekey.h).
#include "daemon/ops_rekey.h"

#include <signal.h>

#include <cstring>

#include "common/aead.h"
#include "common/names.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::BoolArg;
using controller_ops::ErrorJson;
using controller_ops::OptStr;
using controller_ops::StrArg;
using controller_ops::VolumeAudit;

}  // namespace

// --- shallow rekey ---------------------------------------------------------
//
// Every step leaves each volume with exactly one token, wrapping its DEK
// under either the old or the new KEK (a token is replaced in one header
// update), and both KEKs stay available until every disk carries the new
// one. See docs/rekey.md for the crash analysis.

Status RekeyOps::WriteRewrappedToken(
    const VcryptToken& token, const std::string& uuid,
    const std::string& device, const PendingRekey& to, KeyProvider& to_provider,
    const SecureBuffer& new_kek, const SecureBuffer& dek,
    const AuditContext& ctx) {
  VcryptToken next = token;
  next.provider_name = to.provider;
  next.provider_type = std::string(to_provider.type());
  next.kek = to.kek;
  auto wrapped =
      WrapKey(new_kek, dek, DekAad(uuid, to.kek.kek_id, to.provider));
  AuditRecord wrap = VolumeAudit(ctx, AuditOp::kDekWrap, token.vm, token.disk,
                                 uuid, to.provider, to.kek.kek_id);
  state_.Audit(wrap.Outcome(wrapped));
  VCRYPT_ASSIGN_OR_RETURN(next.dek, std::move(wrapped));
  VCRYPT_RETURN_IF_ERROR(WriteToken(device, next.ToJsonString()));
  if (state_.options.crash_after_token_writes > 0 &&
      ++token_writes_ == state_.options.crash_after_token_writes)
    ::raise(SIGKILL);

  // Read back: the header now opens with the new KEK.
  VCRYPT_ASSIGN_OR_RETURN(VolumeHeader check, ReadHeader(device));
  if (!check.token_json)
    return MakeError(ErrorCode::kIo, "the new token of " + device + " is gone");
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken written,
                          VcryptToken::Parse(*check.token_json));
  auto again =
      UnwrapKey(new_kek, written.dek,
                DekAad(check.uuid, written.kek.kek_id, written.provider_name));
  if (!again.ok() || !again->Equals(dek))
    return MakeError(ErrorCode::kIo,
                     "the new token of " + device + " does not read back");
  return Status::Ok();
}

Result<std::string> RekeyOps::RekeyDisk(const std::string& vm,
                                        const std::string& disk,
                                        const PendingRekey& to,
                                        KeyProvider& to_provider,
                                        const SecureBuffer& new_kek,
                                        const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(
      Target target, locator_.ResolveTarget(Json{{"vm", vm}, {"disk", disk}}));
  VCRYPT_ASSIGN_OR_RETURN(VolumeHeader hdr, locator_.LocateVolume(&target));
  auto guard = state_.locks.Lock("vol:" + hdr.uuid);
  // Read again under the volume lock: two rekeys of one volume must not
  // interleave.
  VCRYPT_ASSIGN_OR_RETURN(hdr, ReadHeader(target.device));
  if (!hdr.token_json)
    return MakeError(ErrorCode::kInvalidVolume,
                     target.device + " has no vcrypt token");
  VCRYPT_ASSIGN_OR_RETURN(VcryptToken token,
                          VcryptToken::Parse(*hdr.token_json));
  if (token.vm != vm || token.disk != disk)
    return MakeError(ErrorCode::kInvalidVolume,
                     target.device + " holds volume " + token.vm + "/" +
                         token.disk + ", not " + vm + "/" + disk);
  if (token.provider_name == to.provider && token.kek.kek_id == to.kek.kek_id)
    return std::string("already");

  // Audited: the old KEK's fetch and unwrap, the new KEK's wrap.
  VCRYPT_ASSIGN_OR_RETURN(
      UnwrappedDek u,
      keys_.UnwrapVolumeDek(token, hdr.uuid, target.device, ctx));
  const SecureBuffer& dek = u.dek;
  // The DEK must be the volume's before it is wrapped again: a wrong one
  // written now would lose the volume.
  VCRYPT_RETURN_IF_ERROR(VerifyDek(target.device, dek));

  VCRYPT_RETURN_IF_ERROR(WriteRewrappedToken(token, hdr.uuid, target.device, to,
                                             to_provider, new_kek, dek, ctx));
  return std::string("rekeyed");
}

Result<Json> RekeyOps::VmRekey(const Json& args, const AuditContext& ctx,
                               const EventSink& on_event) {
  VCRYPT_ASSIGN_OR_RETURN(std::string vm, StrArg(args, "vm"));
  const auto want_provider = OptStr(args, "provider");
  const bool revoke_old = BoolArg(args, "revoke_old");
  const bool want_deep = BoolArg(args, "deep");
  auto vm_guard = state_.locks.Lock("vm:" + vm);
  VCRYPT_ASSIGN_OR_RETURN(VmRecord rec, state_.FindVm(vm));

  // 1. The new KEK: the pending one after an interrupted run, else a new
  //    one, recorded before any volume is touched.
  PendingRekey to;
  std::shared_ptr<KeyProvider> to_provider;
  std::optional<SecureBuffer> new_kek;
  bool resumed = false;
  if (rec.rekey) {
    to = *rec.rekey;
    if (want_provider && *want_provider != to.provider)
      return MakeError(
          ErrorCode::kBusy,
          "VM '" + vm + "' has an unfinished rekey to provider '" +
              to.provider + "'; finish it first with 'vcryptctl vm rekey " +
              vm +
              (to.provider != rec.provider ? " --provider " + to.provider
                                           : "") +
              "'");
    if (want_deep && !to.deep)
      return MakeError(
          ErrorCode::kBusy,
          "VM '" + vm +
              "' has an unfinished shallow rekey; finish it first "
              "with 'vcryptctl vm rekey " +
              vm +
              (to.provider != rec.provider ? " --provider " + to.provider
                                           : "") +
              "', then run the deep one");
    // A pending deep rekey stays deep, with or without --deep now.
    if (to.deep && state_.options.reencrypt_helper.empty())
      return MakeError(
          ErrorCode::kInternal,
          "this vcryptd has no reencryption helper; deep rekey is unavailable");
    to_provider = state_.FindProvider(to.provider);
    if (!to_provider)
      return MakeError(ErrorCode::kKeyUnavailable,
                       "the unfinished rekey of VM '" + vm +
                           "' uses provider '" + to.provider +
                           "', which is not configured");
    AuditRecord fetch = AuditRecord::For(ctx, AuditOp::kKekFetch);
    fetch.vm = vm;
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer k,
                            keys_.GetKek(*to_provider, to.kek, fetch));
    new_kek = std::move(k);
    resumed = true;
  } else {
    to.provider = want_provider ? *want_provider : rec.provider;
    to_provider = state_.FindProvider(to.provider);
    if (!to_provider)
      return MakeError(ErrorCode::kNotFound,
                       "no key provider named '" + to.provider + "'");
    // Refused before a KEK exists when a disk cannot be reencrypted.
    if (want_deep) VCRYPT_RETURN_IF_ERROR(CheckDeepRekeyPossible(vm, rec));
    to.deep = want_deep;
    AuditRecord create = AuditRecord::For(ctx, AuditOp::kKekCreate);
    create.vm = vm;
    create.provider = to.provider;
    auto created = to_provider->CreateKek(vm);
    if (!created.ok()) {
      state_.Audit(create.Outcome(created));
      return std::move(created).error();
    }
    NewKek nk = std::move(created).value();
    create.kek_id = nk.ref.kek_id;
    to.kek = nk.ref;
    to.started = NowRfc3339();
    VmRecord next = rec;
    next.rekey = to;
    Status st;
    {
      std::lock_guard lock(state_.mu);
      st = state_.store.PutVm(vm, next);
    }
    state_.Audit(create.Outcome(st));
    if (!st.ok()) {
      AuditRecord destroy = create;  // never used: no orphan key
      destroy.op = AuditOp::kKekDestroy;
      state_.Audit(destroy.Outcome(to_provider->DestroyKek(nk.ref)));
      return std::move(st).error();
    }
    rec = next;
    state_.cache.Put(to.provider, to.kek.kek_id, vm, nk.kek.Clone());
    new_kek = std::move(nk.kek);
  }

  // 2. Every disk, one header update each. A disk that fails leaves the
  //    rekey pending; the others still move on.
  Json disks = Json::array();
  size_t failed = 0;
  std::string first_error;
  ErrorCode first_code = ErrorCode::kInternal;
  for (const auto& [dn, d] : rec.disks) {
    if (on_event)
      on_event(Json{
          {"type", "disk.start"}, {"vm", vm}, {"disk", dn}, {"deep", to.deep}});
    auto r = to.deep ? DeepRekeyDisk(vm, dn, to, *to_provider, *new_kek, ctx,
                                     on_event)
                     : RekeyDisk(vm, dn, to, *to_provider, *new_kek, ctx);
    if (r.ok()) {
      disks.push_back({{"disk", dn}, {"result", *r}});
    } else {
      ++failed;
      if (first_error.empty()) {
        first_error = vm + "/" + dn + ": " + r.error().message;
        first_code = r.error().code;
      }
      disks.push_back({{"disk", dn},
                       {"result", "failed"},
                       {"error", ErrorJson(r.error())}});
    }
    if (on_event) {
      Json done = {{"type", "disk.done"},
                   {"vm", vm},
                   {"disk", dn},
                   {"result", r.ok() ? *r : std::string("failed")}};
      if (!r.ok()) done["error"] = ErrorJson(r.error());
      on_event(done);
    }
  }
  // One kek.rekey record for the VM: ok once every disk carries the new
  // KEK (named here), else the error that leaves the rekey pending.
  AuditRecord rekeyed = AuditRecord::For(ctx, AuditOp::kKekRekey);
  rekeyed.vm = vm;
  rekeyed.provider = to.provider;
  rekeyed.kek_id = to.kek.kek_id;
  if (failed > 0) {
    Error e = MakeError(
        first_code,
        "rekey of VM '" + vm + "' is not finished: " + std::to_string(failed) +
            " of " + std::to_string(rec.disks.size()) +
            " disk(s) still carry the old KEK, which is kept (" + first_error +
            "); fix that and run 'vcryptctl vm rekey " + vm + "' again");
    state_.Audit(rekeyed.Outcome(Status(e)));
    return e;
  }

  // 3. Every disk carries the new KEK: it becomes the VM's, and only then
  //    is the old one dropped.
  const KekRef old_kek = rec.kek;
  const std::string old_provider_name = rec.provider;
  VmRecord done = rec;
  done.provider = to.provider;
  done.kek = to.kek;
  done.rekey.reset();
  {
    std::lock_guard lock(state_.mu);
    // Disks added meanwhile are not possible (the VM lock is held), so the
    // record is written as computed.
    Status st = state_.store.PutVm(vm, done);
    state_.Audit(rekeyed.Outcome(st));
    VCRYPT_RETURN_IF_ERROR(st);
  }
  if (!(old_provider_name == to.provider && old_kek.kek_id == to.kek.kek_id))
    state_.Audit(keys_.EvictKeks(ctx, [&](const KekCache::EntryInfo& e) {
      return e.provider == old_provider_name && e.kek_id == old_kek.kek_id;
    }));
  Json out = {{"vm", vm},
              {"provider", to.provider},
              {"old_provider", old_provider_name},
              {"kek_id", to.kek.kek_id},
              {"old_kek_id", old_kek.kek_id},
              {"resumed", resumed},
              {"deep", to.deep},
              {"disks", disks},
              {"old_kek_revoked", false}};
  if (revoke_old) {
    auto old_provider = state_.FindProvider(old_provider_name);
    Status st = old_provider
                    ? old_provider->DestroyKek(old_kek)
                    : Status(MakeError(ErrorCode::kKeyUnavailable,
                                       "provider '" + old_provider_name +
                                           "' is not configured"));
    AuditRecord destroy = AuditRecord::For(ctx, AuditOp::kKekDestroy);
    destroy.vm = vm;
    destroy.provider = old_provider_name;
    destroy.kek_id = old_kek.kek_id;
    state_.Audit(destroy.Outcome(st));
    if (st.ok()) {
      out["old_kek_revoked"] = true;
    } else {
      // The rekey itself is complete; say why the old key is still there.
      out["revoke_error"] = ErrorJson(st.error());
    }
  }
  return out;
}

}  // namespace vcrypt
