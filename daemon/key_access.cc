#include "daemon/key_access.h"

#include <map>

#include "common/aead.h"
#include "common/names.h"
#include "daemon/ops_util.h"
#include "daemon/unavailable_provider.h"

namespace vcrypt {
namespace {

using controller_ops::VolumeAudit;

}  // namespace

Result<SecureBuffer> KeyAccess::GetKek(KeyProvider& provider, const KekRef& ref,
                                       AuditRecord audit) {
  const std::string& pname = provider.name();
  audit.op = AuditOp::kKekFetch;
  audit.provider = pname;
  audit.kek_id = ref.kek_id;
  // A cache hit is a use of the KEK too: audited, as source=cache.
  auto from_cache = [&](SecureBuffer kek) {
    audit.source = "cache";
    state_.Audit(audit);
    return kek;
  };
  // Past the provider's maximum age the cached KEK is evicted (audited)
  // and this use goes to the provider: a key revoked there since stops
  // here (docs/providers.md, "How long a KEK stays cached").
  const KekMaxAge max_age = MaxAgeFor(pname);
  auto cached = [&]() -> std::optional<SecureBuffer> {
    KekCache::EntryInfo expired;
    auto k = state_.cache.Get(pname, ref.kek_id, max_age, &expired);
    if (!k && !expired.kek_id.empty()) {
      AuditRecord ev = audit;
      ev.op = AuditOp::kKekEvict;
      ev.vm = expired.vm;
      ev.source.clear();
      ev.reason = "max-age";
      state_.Audit(ev);
    }
    return k;
  };
  if (auto k = cached()) return from_cache(std::move(*k));
  // One fetch per KEK even when many volumes of a VM open at once.
  auto guard = state_.locks.Lock("kek:" + pname + "/" + ref.kek_id);
  if (auto k = cached()) return from_cache(std::move(*k));
  audit.source = "provider";
  Result<SecureBuffer> kek = provider.GetKek(ref);
  if (kek.ok() && kek->size() != kKekSize)
    kek =
        MakeError(ErrorCode::kKeyUnavailable,
                  "provider '" + pname + "' returned a KEK of the wrong size");
  state_.Audit(audit.Outcome(kek));
  if (!kek.ok()) return std::move(kek).error();
  state_.cache.Put(pname, ref.kek_id, audit.vm, kek->Clone());
  return kek;
}

KekMaxAge KeyAccess::MaxAgeFor(const std::string& provider) {
  std::lock_guard lock(state_.mu);
  const auto& overrides = state_.store.kek_max_ages();
  if (auto it = overrides.find(provider); it != overrides.end())
    return it->second;
  auto p = state_.providers.find(provider);
  return p == state_.providers.end() ? KekMaxAge{}
                                     : DefaultKekMaxAge(p->second->type());
}

std::vector<AuditRecord> KeyAccess::EvictExpired(const AuditContext& ctx) {
  std::map<std::string, KekMaxAge> ages;
  {
    std::lock_guard lock(state_.mu);
    for (const auto& [name, p] : state_.providers) {
      auto it = state_.store.kek_max_ages().find(name);
      ages[name] = it != state_.store.kek_max_ages().end()
                       ? it->second
                       : DefaultKekMaxAge(p->type());
    }
  }
  std::vector<AuditRecord> records;
  for (const auto& e : state_.cache.EvictExpired(ages)) {
    AuditRecord r = AuditRecord::For(ctx, AuditOp::kKekEvict);
    r.vm = e.vm;
    r.provider = e.provider;
    r.kek_id = e.kek_id;
    r.reason = "max-age";
    records.push_back(std::move(r));
  }
  return records;
}

std::vector<AuditRecord> KeyAccess::EvictKeks(
    const AuditContext& ctx,
    const std::function<bool(const KekCache::EntryInfo&)>& match) {
  std::vector<AuditRecord> records;
  for (const auto& e : state_.cache.List()) {
    if (!match(e) || state_.cache.EvictKek(e.provider, e.kek_id) == 0) continue;
    AuditRecord r = AuditRecord::For(ctx, AuditOp::kKekEvict);
    r.vm = e.vm;
    r.provider = e.provider;
    r.kek_id = e.kek_id;
    records.push_back(std::move(r));
  }
  return records;
}

Result<std::shared_ptr<KeyProvider>> KeyAccess::ProviderForToken(
    const VcryptToken& t) {
  std::lock_guard lock(state_.mu);
  // Prefer the provider that recognises the key material (e.g. a native
  // provider restored under a new name), then the one named in the token.
  for (const auto& [n, p] : state_.providers)
    if (p->type() == t.provider_type && p->Recognizes(t.kek)) return p;
  auto it = state_.providers.find(t.provider_name);
  if (it != state_.providers.end()) {
    // The token's provider failed to load: say why, before any dm work.
    if (auto* u = dynamic_cast<const UnavailableProvider*>(it->second.get()))
      return u->Unavailable();
    if (it->second->type() == t.provider_type) return it->second;
  }
  // A native key is that primary key's, whatever the provider's name: say
  // which one a host needs (docs/cluster.md).
  if (t.provider_type == "native" && t.kek.data.is_object() &&
      t.kek.data.contains("primary_key_id") &&
      t.kek.data["primary_key_id"].is_string()) {
    std::string id = t.kek.data["primary_key_id"].get<std::string>();
    if (!IsUuidText(id)) id = "(invalid)";
    return MakeError(ErrorCode::kKeyUnavailable,
                     "native provider '" + t.provider_name +
                         "' with primary key " + id +
                         " is not configured on this host; restore its "
                         "backup here ('vcryptctl provider restore') and "
                         "retry");
  }
  return MakeError(ErrorCode::kKeyUnavailable,
                   "the volume's key provider '" + t.provider_name + "' (" +
                       t.provider_type +
                       ") is not configured on this host; add it "
                       "and retry");
}

Result<KeyAccess::UnwrappedDek> KeyAccess::UnwrapVolumeDek(
    const VcryptToken& token, const std::string& uuid,
    const std::string& device, const AuditContext& ctx) {
  return UnwrapUnderTokenKek(
      token, token.dek, DekAad(uuid, token.kek.kek_id, token.provider_name),
      uuid, device, "the DEK", ctx);
}

Result<KeyAccess::UnwrappedDek> KeyAccess::UnwrapUnderTokenKek(
    const VcryptToken& token, const WrappedKey& wrapped,
    const std::vector<uint8_t>& aad, const std::string& uuid,
    const std::string& device, const std::string& what,
    const AuditContext& ctx) {
  AuditRecord audit = VolumeAudit(ctx, AuditOp::kKekFetch, token.vm, token.disk,
                                  uuid, token.provider_name, token.kek.kek_id);
  auto provider = ProviderForToken(token);
  if (!provider.ok()) {
    state_.Audit(audit.Outcome(provider));
    return std::move(provider).error();
  }
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer kek,
                          GetKek(**provider, token.kek, audit));
  auto dek = UnwrapKey(kek, wrapped, aad);
  AuditRecord unwrap = audit;
  unwrap.op = AuditOp::kDekUnwrap;
  unwrap.provider = (*provider)->name();
  if (!dek.ok())
    unwrap.error = MakeError(
        ErrorCode::kCrypto,
        "cannot unwrap " + what + " of " + device +
            ": the token does not belong to this volume or was altered");
  state_.Audit(unwrap);
  if (!dek.ok()) return *unwrap.error;
  return UnwrappedDek{std::move(*provider), std::move(dek).value()};
}

}  // namespace vcrypt
