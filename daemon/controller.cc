// The Controller: construction, the op table and dispatch. The ops
// themselves are the op groups' (see the layout in controller.h).
#include "daemon/controller.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <system_error>

#include "common/atomic_file.h"
#include "common/names.h"
#include "daemon/ops_util.h"
#include "daemon/unavailable_provider.h"
#include "keyproviders/native/native_provider.h"
#include "keyproviders/standard/standard_provider.h"
#include "keyproviders/trusted/trusted_provider.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using controller_ops::OptStr;
using controller_ops::Usage;

Result<std::shared_ptr<KeyProvider>> LoadProvider(
    const std::string& name, const std::string& dir,
    const ControllerOptions& options) {
  VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/config.json"));
  Json cfg = Json::parse(text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object() || !cfg.contains("type") ||
      !cfg["type"].is_string())
    return MakeError(ErrorCode::kInvalidArgument,
                     "provider config " + dir + "/config.json is malformed");
  std::string type = cfg["type"].get<std::string>();
  if (type == "native") {
    NativeProviderOptions no;
    no.allow_test_tcti = options.allow_test_tcti;
    VCRYPT_ASSIGN_OR_RETURN(auto p, NativeProvider::Load(name, dir, no));
    return std::shared_ptr<KeyProvider>(std::move(p));
  }
  if (type == "standard") {
    VCRYPT_ASSIGN_OR_RETURN(auto p, StandardProvider::Load(name, dir));
    return std::shared_ptr<KeyProvider>(std::move(p));
  }
  if (type == "trusted") {
    TrustedProviderOptions to;
    to.allow_test_tcti = options.allow_test_tcti;
    VCRYPT_ASSIGN_OR_RETURN(auto p,
                            TrustedProvider::Load(name, dir, std::move(to)));
    return std::shared_ptr<KeyProvider>(std::move(p));
  }
  return MakeError(
      ErrorCode::kInvalidArgument,
      "provider '" + name + "' has unsupported type '" + type + "'");
}

// The type a provider directory's config.json names, "unknown" when it
// cannot be read: for a provider that failed to load.
std::string ConfiguredType(const std::string& dir) {
  auto text = ReadFile(dir + "/config.json");
  if (!text.ok()) return "unknown";
  Json cfg = Json::parse(*text, nullptr, false);
  if (!cfg.is_object() || !cfg.contains("type") || !cfg["type"].is_string())
    return "unknown";
  const std::string type = cfg["type"].get<std::string>();
  if (type != "native" && type != "standard" && type != "trusted")
    return "unknown";
  return type;
}

}  // namespace

// ---------------------------------------------------------------------------
Controller::Controller(ControllerOptions options, StateDirLock lock,
                       StateStore store)
    : state_(std::move(options), std::move(lock), std::move(store)),
      keys_(state_),
      locator_(state_),
      provider_ops_(state_, keys_),
      status_ops_(state_, keys_, provider_ops_),
      vm_ops_(state_, keys_, locator_, status_ops_),
      volume_ops_(state_, keys_, status_ops_),
      rekey_ops_(state_, keys_, locator_),
      open_ops_(state_, keys_, locator_, rekey_ops_),
      recovery_ops_(state_, keys_, locator_),
      migration_ops_(state_, keys_, locator_) {}

Result<std::unique_ptr<Controller>> Controller::Create(
    ControllerOptions options) {
  if (!options.audit) options.audit = SystemAuditSink::ForThisProcess();
  // Locked before anything is read: another vcryptd may be writing.
  VCRYPT_RETURN_IF_ERROR(MakeDirs(options.state_dir, 0700));
  VCRYPT_ASSIGN_OR_RETURN(StateDirLock lock,
                          StateDirLock::Acquire(options.state_dir));
  VCRYPT_ASSIGN_OR_RETURN(StateStore store,
                          StateStore::Open(options.state_dir));
  std::unique_ptr<Controller> c(
      new Controller(std::move(options), std::move(lock), std::move(store)));
  c->state_.held_closed.ForgetEarlierBoots();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(
           c->state_.store.dir() + "/providers", ec)) {
    if (!e.is_directory()) continue;
    std::string name = e.path().filename().string();
    if (!ValidateProviderName(name).ok()) continue;
    auto p = LoadProvider(name, e.path().string(), c->state_.options);
    if (!p.ok()) {
      // Only this provider is lost (until its files are repaired and
      // vcryptd restarted); its VMs fail with key_unavailable naming why.
      p = std::shared_ptr<KeyProvider>(std::make_shared<UnavailableProvider>(
          name, ConfiguredType(e.path().string()), std::move(p).error(),
          NowRfc3339()));
    }
    c->state_.providers.emplace(name, std::move(p).value());
  }
  if (ec)
    return MakeError(ErrorCode::kIo, "cannot list " + c->state_.store.dir() +
                                         "/providers: " + ec.message());
  return c;
}

std::vector<std::string> Controller::UnavailableProviders() {
  std::lock_guard lock(state_.mu);
  std::vector<std::string> lines;
  for (const auto& [name, p] : state_.providers)
    if (auto* u = dynamic_cast<const UnavailableProvider*>(p.get()))
      lines.push_back(u->Unavailable().message);
  return lines;
}

Result<Json> Controller::Handle(const std::string& op, const Json& args,
                                const SecureBuffer& secret,
                                const Caller& caller) {
  return Run(op, args, secret, caller, /*secret_channel=*/false, nullptr,
             EventSink());
}

// A recovery key is generated by volume.recovery_key.add and goes back to
// the caller once on the wire's secret channel (ops_recovery.cc).
Result<Json> Controller::Handle(const std::string& op, const Json& args,
                                const SecureBuffer& secret,
                                const Caller& caller,
                                SecureBuffer* reply_secret,
                                const EventSink& on_event) {
  return Run(op, args, secret, caller, /*secret_channel=*/true, reply_secret,
             on_event);
}

Result<Json> Controller::Run(const std::string& op, const Json& args,
                             const SecureBuffer& secret, const Caller& caller,
                             bool secret_channel, SecureBuffer* reply_secret,
                             const EventSink& on_event) {
  if (!args.is_object()) return Usage("'args' must be an object");
  VCRYPT_RETURN_IF_ERROR(Authorize(op, args, caller));
  const Op* entry = FindOp(op);
  if (entry == nullptr) return Usage("unknown operation '" + op + "'");
  const AuditContext ctx{caller.uid, op};
  return entry->handler(*this, Request{args, secret, ctx, secret_channel,
                                       reply_secret, on_event});
}

Status Controller::Authorize(const std::string& op, const Json& args,
                             const Caller& caller) {
  std::optional<Role> need = RequiredRole(op, args);
  if (!need) return Usage("unknown operation '" + op + "'");
  if (caller.role < *need)
    return MakeError(
        ErrorCode::kPermissionDenied,
        "permission denied: " + op +
            (op == "vm.rekey" ? " with a provider change or revoke_old" : "") +
            " needs the " + std::string(RoleName(*need)) + " role; uid " +
            std::to_string(caller.uid) + " has " +
            std::string(RoleName(caller.role)));
  // The operator group formats only where root allowed it.
  if (op == "volume.create" && caller.role < Role::kRoot) {
    auto device = OptStr(args, "device");
    auto file = OptStr(args, "file");
    if (device.has_value() != file.has_value())
      return CheckOperatorVolumePath(device ? *device : *file, file.has_value(),
                                     state_.options.volume_paths);
  }
  return Status::Ok();
}

size_t Controller::EvictAllOnShutdown() {
  auto records =
      keys_.EvictKeks(AuditContext{geteuid(), "shutdown"},
                      [](const KekCache::EntryInfo&) { return true; });
  state_.Audit(records);
  return records.size() +
         state_.cache.Clear();  // none left unless one raced in
}

size_t Controller::EvictExpiredKeks() {
  auto records = keys_.EvictExpired(AuditContext{geteuid(), "housekeeping"});
  state_.Audit(records);
  return records.size();
}

std::vector<std::string> Controller::ResumeDeepRekeys() {
  std::vector<std::string> pending;
  {
    std::lock_guard lock(state_.mu);
    for (const auto& [vn, rec] : state_.store.vms())
      if (rec.rekey && rec.rekey->deep) pending.push_back(vn);
  }
  std::vector<std::string> lines;
  for (const auto& vn : pending) {
    auto r = Handle("vm.rekey", Json{{"vm", vn}}, SecureBuffer(),
                    Caller{getuid(), getgid(), getpid()});
    lines.push_back(r.ok() ? "finished the interrupted deep rekey of VM '" +
                                 vn + "'"
                           : "the interrupted deep rekey of VM '" + vn +
                                 "' is still pending: " + r.error().message);
  }
  return lines;
}

// --- the op table ------------------------------------------------------------

const std::vector<Controller::Op>& Controller::Ops() {
  using R = Result<Json>;
  using Q = const Request&;
  using C = Controller&;
  static const auto* ops = new std::vector<Op>{
      {"ping", Role::kMonitor,
       [](C, Q) -> R {
         return Json{{"pong", true}};
       }},
      {"status", Role::kMonitor,
       [](C c, Q) { return c.status_ops_.GetStatus(); }},
      {"provider.list", Role::kMonitor,
       [](C c, Q) { return c.provider_ops_.ProviderList(); }},
      {"provider.show", Role::kMonitor,
       [](C c, Q q) { return c.provider_ops_.ProviderShow(q.args); }},
      {"vm.list", Role::kMonitor, [](C c, Q) { return c.vm_ops_.VmList(); }},
      {"vm.show", Role::kMonitor,
       [](C c, Q q) { return c.vm_ops_.VmShow(q.args); }},
      {"volume.list", Role::kMonitor,
       [](C c, Q q) { return c.volume_ops_.VolumeList(q.args); }},
      {"open", Role::kOperator,
       [](C c, Q q) { return c.open_ops_.Open(q.args, q.ctx); }},
      {"open_all", Role::kOperator,
       [](C c, Q q) { return c.open_ops_.OpenAll(q.args, q.ctx); }},
      {"close", Role::kOperator,
       [](C c, Q q) { return c.open_ops_.Close(q.args); }},
      {"vm.create", Role::kOperator,
       [](C c, Q q) { return c.vm_ops_.VmCreate(q.args, q.ctx); }},
      {"vm.set", Role::kOperator,
       [](C c, Q q) { return c.vm_ops_.VmSet(q.args); }},
      {"vm.register", Role::kOperator,
       [](C c, Q q) { return c.vm_ops_.VmRegister(q.args, q.ctx); }},
      {"vm.unregister", Role::kOperator,
       [](C c, Q q) { return c.vm_ops_.VmUnregister(q.args, false, q.ctx); }},
      // The libvirt hook's, on each side of a live migration
      // (docs/cluster.md).
      {"vm.incoming", Role::kOperator,
       [](C c, Q q) { return c.migration_ops_.VmIncoming(q.args, q.ctx); }},
      {"vm.depart", Role::kOperator,
       [](C c, Q q) { return c.migration_ops_.VmDepart(q.args, q.ctx); }},
      // Reports progress (docs/protocol.md, "Events") to whoever listens.
      {"vm.rekey", Role::kOperator,
       [](C c, Q q) {
         return c.rekey_ops_.VmRekey(q.args, q.ctx, q.on_event);
       }},
      // Operators format only under volume_paths (Authorize).
      {"volume.create", Role::kOperator,
       [](C c, Q q) { return c.volume_ops_.VolumeCreate(q.args, q.ctx); }},
      {"provider.add", Role::kRoot,
       [](C c, Q q) {
         return c.provider_ops_.ProviderAdd(q.args, q.secret, q.ctx);
       }},
      {"provider.remove", Role::kRoot,
       [](C c, Q q) { return c.provider_ops_.ProviderRemove(q.args, q.ctx); }},
      {"provider.default", Role::kRoot,
       [](C c, Q q) { return c.provider_ops_.ProviderDefault(q.args); }},
      {"provider.set", Role::kRoot,
       [](C c, Q q) { return c.provider_ops_.ProviderSet(q.args, q.ctx); }},
      {"provider.backup", Role::kRoot,
       [](C c, Q q) {
         return c.provider_ops_.ProviderBackup(q.args, q.secret, q.ctx);
       }},
      {"provider.restore", Role::kRoot,
       [](C c, Q q) {
         return c.provider_ops_.ProviderRestore(q.args, q.secret, q.ctx);
       }},
      {"vm.delete", Role::kRoot,
       [](C c, Q q) { return c.vm_ops_.VmUnregister(q.args, true, q.ctx); }},
      // Its key goes back on the secret channel, never in the JSON.
      {"volume.recovery_key.add", Role::kRoot,
       [](C c, Q q) -> R {
         if (!q.secret_channel)
           return MakeError(ErrorCode::kInternal,
                            "volume.recovery_key.add needs a caller that can "
                            "take a secret back");
         if (q.reply_secret == nullptr)
           return MakeError(ErrorCode::kInternal,
                            "no channel for the recovery key");
         return c.recovery_ops_.RecoveryKeyAdd(q.args, q.ctx, q.reply_secret);
       }},
      {"volume.recovery_key.remove", Role::kRoot,
       [](C c, Q q) {
         return c.recovery_ops_.RecoveryKeyRemove(q.args, q.ctx);
       }},
      {"cache.evict", Role::kRoot,
       [](C c, Q q) { return c.status_ops_.CacheEvict(q.args, q.ctx); }},
  };
  return *ops;
}

const Controller::Op* Controller::FindOp(std::string_view op) {
  static const auto* index = [] {
    auto* m = new std::map<std::string_view, const Op*, std::less<>>;
    for (const Op& o : Ops()) m->emplace(o.name, &o);
    return m;
  }();
  auto it = index->find(op);
  return it == index->end() ? nullptr : it->second;
}

// daemon/roles.h's view of the table.
const std::vector<std::string>& KnownOps() {
  static const auto* ops = [] {
    // Sorted, as they always were.
    auto* v = new std::vector<std::string>;
    for (const auto& op : Controller::Ops()) v->emplace_back(op.name);
    std::sort(v->begin(), v->end());
    return v;
  }();
  return *ops;
}

std::optional<Role> RequiredRole(const std::string& op, const Json& args) {
  const Controller::Op* entry = Controller::FindOp(op);
  if (entry == nullptr) return std::nullopt;
  return RaiseForArguments(op, args, entry->role);
}

}  // namespace vcrypt
