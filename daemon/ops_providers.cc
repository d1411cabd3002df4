// Provider ops: provider.add, .list, .show, .remove, .default, .backup,
// .restore (docs/protocol.md, docs/providers.md; daemon/ops_providers.h).
#include "daemon/ops_providers.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "common/base64.h"
#include "common/names.h"
#include "daemon/ops_util.h"
#include "daemon/unavailable_provider.h"
#include "keyproviders/native/native_provider.h"
#include "keyproviders/standard/standard_provider.h"
#include "keyproviders/trusted/trusted_provider.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::BoolArg;
using controller_ops::OptStr;
using controller_ops::PrimaryKeyId;
using controller_ops::StrArg;
using controller_ops::Usage;

// How provider.add / provider.restore ask a native provider to keep its
// primary key: `tpm`, with an optional `tcti` and `pcrs` (PCR numbers).
// Only the shape is checked here; NativeProvider checks the values (the
// TCTI allowlist, the PCR list) before anything is made.
Result<NativeKeyStorage> StorageArg(const Json& args) {
  NativeKeyStorage s;
  s.tpm = BoolArg(args, "tpm");
  s.tcti = OptStr(args, "tcti").value_or("");
  auto it = args.find("pcrs");
  if (it != args.end() && !it->is_null()) {
    if (!it->is_array() || it->size() > 24)
      return Usage("'pcrs' must be a list of at most 24 PCR numbers");
    for (const auto& p : *it) {
      if (!p.is_number_integer() || p.get<int64_t>() < 0 ||
          p.get<int64_t>() > 23)
        return Usage("'pcrs' must hold PCR numbers 0 to 23");
      s.pcrs.push_back(p.get<int>());
    }
  }
  return s;
}

}  // namespace

// --- providers -------------------------------------------------------------

Result<Json> ProviderOps::ProviderAdd(const Json& args,
                                      const SecureBuffer& secret,
                                      const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string type, StrArg(args, "type"));
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  if (type != "native" && type != "standard" && type != "trusted")
    return MakeError(
        ErrorCode::kInvalidArgument,
        "provider type '" + type + "' is not supported by this vcryptd");
  std::optional<KekMaxAge> max_age;
  if (auto a = OptStr(args, "kek_cache_max_age")) {
    VCRYPT_ASSIGN_OR_RETURN(max_age, ParseKekMaxAge(*a));
  }
  if (type != "native" && (BoolArg(args, "tpm") || args.contains("pcrs")))
    return MakeError(ErrorCode::kInvalidArgument,
                     "--tpm and --pcrs (a TPM-sealed primary key) are for "
                     "native providers only");
  {
    std::lock_guard lock(state_.mu);
    if (state_.providers.count(name))
      return MakeError(ErrorCode::kExists,
                       "provider '" + name + "' already exists");
  }
  // Only one add per name at a time; the cluster check of a standard
  // provider runs outside the state lock (it may take a connect timeout).
  auto guard = state_.locks.Lock("provider:" + name);
  // Audited once the provider's key material is made (native) or its
  // cluster checked (standard), whatever the outcome.
  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kProviderAdd);
  audit.provider = name;
  std::shared_ptr<KeyProvider> provider;
  Json desc;
  if (type == "native") {
    VCRYPT_ASSIGN_OR_RETURN(NativeKeyStorage storage, StorageArg(args));
    NativeProviderOptions no;
    no.allow_test_tcti = state_.options.allow_test_tcti;
    {
      std::lock_guard lock(state_.mu);
      if (state_.providers.count(name))
        return MakeError(ErrorCode::kExists,
                         "provider '" + name + "' already exists");
    }
    // Outside the state lock: sealing to a TPM is a few TPM commands, one
    // of them a primary key creation (slow on some TPMs). The name's lock
    // keeps another add or restore of this name out meanwhile.
    auto p = NativeProvider::Create(name, state_.store.ProviderDir(name),
                                    storage, no);
    if (p.ok()) audit.primary_key_id = (*p)->primary_key_id();
    state_.Audit(audit.Outcome(p));
    if (!p.ok()) return std::move(p).error();
    provider = std::move(p).value();
  } else if (type == "trusted") {
    // Enrolls this host's AK and attests once before anything is written
    // (keyproviders/trusted/trusted_provider.h); may take the services'
    // timeouts, so it runs outside the state lock like the standard check.
    TrustedProviderConfig c;
    VCRYPT_ASSIGN_OR_RETURN(c.attestation_url, StrArg(args, "attestation"));
    VCRYPT_ASSIGN_OR_RETURN(c.kps_url, StrArg(args, "kps"));
    VCRYPT_ASSIGN_OR_RETURN(c.ca_pem, StrArg(args, "ca_pem"));
    c.host = OptStr(args, "host").value_or("");
    c.tcti = OptStr(args, "tcti").value_or("");
    TrustedProviderOptions to;
    to.allow_test_tcti = state_.options.allow_test_tcti;
    auto p = TrustedProvider::Create(name, state_.store.ProviderDir(name), c,
                                     std::move(to));
    state_.Audit(audit.Outcome(p));
    if (!p.ok()) return std::move(p).error();
    provider = std::move(p).value();
  } else {
    VCRYPT_ASSIGN_OR_RETURN(std::string kms, StrArg(args, "kms"));
    VCRYPT_ASSIGN_OR_RETURN(std::string ca, StrArg(args, "ca_pem"));
    VCRYPT_ASSIGN_OR_RETURN(std::string cert, StrArg(args, "cert_pem"));
    if (secret.empty())
      return Usage("a standard provider needs the client key (--key)");
    VCRYPT_ASSIGN_OR_RETURN(auto servers, ParseKmsServers(kms));
    auto p = StandardProvider::Create(name, state_.store.ProviderDir(name),
                                      servers, ca, cert, secret);
    state_.Audit(audit.Outcome(p));
    if (!p.ok()) return std::move(p).error();
    provider = std::move(p).value();
  }
  desc = provider->Describe();
  std::lock_guard lock(state_.mu);
  // Before the provider is in use: a stale setting of an earlier provider
  // of this name goes, and this one's is recorded.
  if (max_age || state_.store.kek_max_ages().count(name))
    VCRYPT_RETURN_IF_ERROR(state_.store.SetKekMaxAge(name, max_age));
  state_.providers.emplace(name, provider);
  bool made_default = false;
  if (!state_.store.default_provider() ||
      !state_.providers.count(*state_.store.default_provider())) {
    VCRYPT_RETURN_IF_ERROR(state_.store.SetDefaultProvider(name));
    made_default = true;
  }
  desc["default"] = made_default || state_.store.default_provider() == name;
  return desc;
}

Result<Json> ProviderOps::ProviderList() {
  std::lock_guard lock(state_.mu);
  Json out = Json::array();
  for (const auto& [name, p] : state_.providers) {
    Json d = p->Describe();
    d["name"] = name;
    d["type"] = std::string(p->type());
    // An UnavailableProvider describes itself as "unavailable", with reason.
    if (dynamic_cast<const UnavailableProvider*>(p.get()) == nullptr)
      d["state"] = "available";
    d["default"] = state_.store.default_provider() == name;
    auto age = state_.store.kek_max_ages().find(name);
    const bool set = age != state_.store.kek_max_ages().end();
    d["kek_cache_max_age"] =
        FormatKekMaxAge(set ? age->second : DefaultKekMaxAge(p->type()));
    d["kek_cache_max_age_source"] = set ? "set" : "default";
    size_t vms = 0;
    for (const auto& [vn, vm] : state_.store.vms()) vms += vm.provider == name;
    d["vms"] = vms;
    out.push_back(std::move(d));
  }
  return Json{{"providers", out}};
}

Result<Json> ProviderOps::ProviderShow(const Json& args) {
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  VCRYPT_ASSIGN_OR_RETURN(Json all, ProviderList());
  for (auto& p : all["providers"])
    if (p["name"] == name) return p;
  return MakeError(ErrorCode::kNotFound,
                   "no key provider named '" + name + "'");
}

Result<Json> ProviderOps::ProviderRemove(const Json& args,
                                         const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  // Records are written once the state lock is released.
  std::vector<AuditRecord> records;
  auto r = [&]() -> Result<Json> {
    std::lock_guard lock(state_.mu);
    auto it = state_.providers.find(name);
    if (it == state_.providers.end())
      return MakeError(ErrorCode::kNotFound,
                       "no key provider named '" + name + "'");
    for (const auto& [vn, vm] : state_.store.vms())
      if (vm.provider == name)
        return MakeError(ErrorCode::kBusy,
                         "provider '" + name + "' is used by VM '" + vn +
                             "'; rekey or delete its VMs first");
    // An unavailable provider of unknown type may be a native one.
    const std::string_view type = it->second->type();
    if ((type == "native" || type == "unknown") && !BoolArg(args, "force"))
      return MakeError(
          ErrorCode::kExists,
          "removing native provider '" + name +
              "' destroys its primary key: volumes made with it then "
              "open only from a backup; back it up, then re-run with --force");
    AuditRecord audit = AuditRecord::For(ctx, AuditOp::kProviderRemove);
    audit.provider = name;
    audit.primary_key_id = PrimaryKeyId(*it->second);
    std::string dir = state_.store.ProviderDir(name);
    // Move aside first so a crash never leaves a half-deleted provider that
    // fails to load; then remove the files.
    std::string trash = state_.store.dir() + "/providers/.removed-" + name;
    std::error_code ec;
    std::filesystem::remove_all(trash, ec);
    if (rename(dir.c_str(), trash.c_str()) != 0) {
      audit.error = MakeError(
          ErrorCode::kIo, "cannot remove " + dir + ": " + std::strerror(errno));
      records.push_back(audit);
      return *audit.error;
    }
    std::filesystem::remove_all(trash, ec);
    state_.providers.erase(it);
    records.push_back(audit);
    auto evicted = keys_.EvictKeks(
        ctx, [&](const KekCache::EntryInfo& e) { return e.provider == name; });
    records.insert(records.end(), evicted.begin(), evicted.end());
    if (state_.store.default_provider() == name)
      VCRYPT_RETURN_IF_ERROR(state_.store.SetDefaultProvider(std::nullopt));
    if (state_.store.kek_max_ages().count(name))
      VCRYPT_RETURN_IF_ERROR(state_.store.SetKekMaxAge(name, std::nullopt));
    return Json{{"removed", name}, {"evicted", evicted.size()}};
  }();
  state_.Audit(records);
  return r;
}

Result<Json> ProviderOps::ProviderDefault(const Json& args) {
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  std::lock_guard lock(state_.mu);
  if (!state_.providers.count(name))
    return MakeError(ErrorCode::kNotFound,
                     "no key provider named '" + name + "'");
  VCRYPT_RETURN_IF_ERROR(state_.store.SetDefaultProvider(name));
  return Json{{"default", name}};
}

Result<Json> ProviderOps::ProviderSet(const Json& args,
                                      const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  auto text = OptStr(args, "kek_cache_max_age");
  if (!text) return Usage("provider set needs --kek-cache-max-age");
  std::optional<KekMaxAge> age;
  if (*text != "default") {
    VCRYPT_ASSIGN_OR_RETURN(age, ParseKekMaxAge(*text));
  }
  std::string effective;
  {
    std::lock_guard lock(state_.mu);
    auto it = state_.providers.find(name);
    if (it == state_.providers.end())
      return MakeError(ErrorCode::kNotFound,
                       "no key provider named '" + name + "'");
    VCRYPT_RETURN_IF_ERROR(state_.store.SetKekMaxAge(name, age));
    effective =
        FormatKekMaxAge(age ? *age : DefaultKekMaxAge(it->second->type()));
  }
  // A shorter maximum applies to the KEKs already cached, now.
  state_.Audit(keys_.EvictExpired(ctx));
  return Json{{"name", name},
              {"kek_cache_max_age", effective},
              {"kek_cache_max_age_source", age ? "set" : "default"}};
}

Result<Json> ProviderOps::ProviderBackup(const Json& args,
                                         const SecureBuffer& password,
                                         const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  if (password.empty())
    return Usage("a backup needs a non-empty password (--password-file)");
  auto p = state_.FindProvider(name);
  if (!p)
    return MakeError(ErrorCode::kNotFound,
                     "no key provider named '" + name + "'");
  if (auto* u = dynamic_cast<const UnavailableProvider*>(p.get()))
    return u->Unavailable();
  auto* native = dynamic_cast<NativeProvider*>(p.get());
  if (native == nullptr)
    return MakeError(ErrorCode::kInvalidArgument,
                     "only native providers hold keys to back up; '" + name +
                         "' keeps its keys on its key server");
  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kProviderBackup);
  audit.provider = name;
  audit.primary_key_id = native->primary_key_id();
  auto r = [&]() -> Result<Json> {
    // The PKCS#12 file is encrypted under the password; it is made in
    // memory (no temporary file, so concurrent backups cannot meet) and
    // returned to the caller, which writes it with its own permissions.
    VCRYPT_ASSIGN_OR_RETURN(std::string bytes, native->BackupBytes(password));
    return Json{{"name", name},
                {"primary_key_id", native->primary_key_id()},
                {"p12", Base64Encode(std::span<const uint8_t>(
                            reinterpret_cast<const uint8_t*>(bytes.data()),
                            bytes.size()))}};
  }();
  state_.Audit(audit.Outcome(r));
  return r;
}

Result<Json> ProviderOps::ProviderRestore(const Json& args,
                                          const SecureBuffer& password,
                                          const AuditContext& ctx) {
  VCRYPT_ASSIGN_OR_RETURN(std::string name, StrArg(args, "name"));
  VCRYPT_ASSIGN_OR_RETURN(std::string p12, StrArg(args, "p12"));
  VCRYPT_RETURN_IF_ERROR(ValidateProviderName(name));
  if (password.empty())
    return Usage("a restore needs the backup's password (--password-file)");
  VCRYPT_ASSIGN_OR_RETURN(NativeKeyStorage storage, StorageArg(args));
  NativeProviderOptions no;
  no.allow_test_tcti = state_.options.allow_test_tcti;
  auto bytes = Base64Decode(p12);
  if (!bytes.ok())
    return MakeError(ErrorCode::kInvalidArgument,
                     "backup data is not valid base64");
  // Audited once the backup is opened, whatever the outcome (a wrong
  // password is result=crypto); written after the state lock is released.
  AuditRecord audit = AuditRecord::For(ctx, AuditOp::kProviderRestore);
  audit.provider = name;
  bool attempted = false;
  auto exists = [&]() -> Status {
    std::lock_guard lock(state_.mu);
    if (state_.providers.count(name))
      return MakeError(ErrorCode::kExists, "provider '" + name +
                                               "' already exists; "
                                               "restore under another --name");
    return Status::Ok();
  };
  auto r = [&]() -> Result<Json> {
    VCRYPT_RETURN_IF_ERROR(exists());
    // One add or restore per name at a time. The key derivations (seconds,
    // by design) run outside the state lock, so vcryptd keeps answering
    // meanwhile; the backup is read from memory, never a temporary file.
    auto guard = state_.locks.Lock("provider:" + name);
    VCRYPT_RETURN_IF_ERROR(exists());
    attempted = true;
    auto p = NativeProvider::RestoreBytes(
        std::string_view(reinterpret_cast<const char*>(bytes->data()),
                         bytes->size()),
        password, name, state_.store.ProviderDir(name), "the backup", storage,
        no);
    if (!p.ok()) return std::move(p).error();
    audit.primary_key_id = (*p)->primary_key_id();
    std::lock_guard lock(state_.mu);
    for (const auto& [n, other] : state_.providers) {
      auto* o = dynamic_cast<NativeProvider*>(other.get());
      if (o != nullptr && o->primary_key_id() == (*p)->primary_key_id()) {
        std::error_code ec;
        std::filesystem::remove_all(state_.store.ProviderDir(name), ec);
        return MakeError(ErrorCode::kExists,
                         "this backup's primary key is already "
                         "configured as provider '" +
                             n + "'");
      }
    }
    Json desc = (*p)->Describe();
    state_.providers.emplace(
        name, std::shared_ptr<KeyProvider>(std::move(p).value()));
    if (!state_.store.default_provider() ||
        !state_.providers.count(*state_.store.default_provider()))
      VCRYPT_RETURN_IF_ERROR(state_.store.SetDefaultProvider(name));
    return desc;
  }();
  if (attempted) state_.Audit(audit.Outcome(r));
  return r;
}

}  // namespace vcrypt
