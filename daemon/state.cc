#include "daemon/state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "common/atomic_file.h"
#include "common/names.h"

namespace vcrypt {
namespace {

using nlohmann::json;

constexpr int kStateVersion = 1;

json VmToJson(const VmRecord& vm) {
  json disks = json::object();
  for (const auto& [name, d] : vm.disks) {
    disks[name] = {{"device", d.device},
                   {"is_file", d.is_file},
                   {"uuid", d.uuid},
                   {"sector_size", d.sector_size}};
  }
  json j = {{"provider", vm.provider},
            {"kek", {{"id", vm.kek.kek_id}, {"data", vm.kek.data}}},
            {"auto_unlock", vm.auto_unlock},
            {"created", vm.created},
            {"disks", disks}};
  if (vm.rekey)
    j["rekey"] = {{"provider", vm.rekey->provider},
                  {"kek", {{"id", vm.rekey->kek.kek_id}, {"data", vm.rekey->kek.data}}},
                  {"started", vm.rekey->started}};
  if (vm.rekey && vm.rekey->deep) j["rekey"]["deep"] = true;
  if (!vm.away_since.empty()) j["away_since"] = vm.away_since;
  return j;
}

Result<VmRecord> VmFromJson(const std::string& name, const json& j) {
  auto bad = [&](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "inventory entry for VM '" + name + "' is malformed (" +
                         what + ")");
  };
  if (!ValidateVmName(name).ok()) return bad("name");
  try {
    VmRecord vm;
    vm.provider = j.at("provider").get<std::string>();
    vm.kek.kek_id = j.at("kek").at("id").get<std::string>();
    vm.kek.data = j.at("kek").at("data");
    if (!vm.kek.data.is_object()) return bad("kek.data");
    vm.auto_unlock = j.value("auto_unlock", true);
    vm.created = j.value("created", "");
    vm.away_since = j.value("away_since", "");
    if (j.contains("rekey")) {
      const json& r = j.at("rekey");
      PendingRekey p;
      p.provider = r.at("provider").get<std::string>();
      p.kek.kek_id = r.at("kek").at("id").get<std::string>();
      p.kek.data = r.at("kek").at("data");
      if (!p.kek.data.is_object()) return bad("rekey.kek.data");
      p.started = r.value("started", "");
      p.deep = r.value("deep", false);
      vm.rekey = std::move(p);
    }
    for (const auto& [dname, d] : j.at("disks").items()) {
      if (!ValidateDiskName(dname).ok()) return bad("disk name");
      DiskRecord r;
      r.device = d.at("device").get<std::string>();
      r.is_file = d.at("is_file").get<bool>();
      r.uuid = d.at("uuid").get<std::string>();
      r.sector_size = d.at("sector_size").get<uint32_t>();
      vm.disks.emplace(dname, std::move(r));
    }
    return vm;
  } catch (const json::exception& e) {
    return bad(e.what());
  }
}

}  // namespace

Result<StateDirLock> StateDirLock::Acquire(const std::string& dir) {
  const std::string path = dir + "/vcryptd.lock";
  UniqueFd fd(
      open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid())
    return MakeError(ErrorCode::kIo,
                     "cannot open " + path + ": " + std::strerror(errno));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file
  if (fcntl(fd.get(), F_OFD_SETLK, &fl) != 0) {
    const int err = errno;
    if (err != EAGAIN && err != EACCES)
      return MakeError(ErrorCode::kIo,
                       "cannot lock " + path + ": " + std::strerror(err));
    // F_OFD_GETLK reports no PID for OFD locks: the holder wrote it.
    char buf[24] = {};
    const ssize_t n = pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string pid;
    for (ssize_t i = 0;
         i < n && std::isdigit(static_cast<unsigned char>(buf[i])); ++i)
      pid += buf[i];
    return MakeError(
        ErrorCode::kBusy,
        "state directory " + dir + " is in use by vcryptd (pid " +
            (pid.empty() ? std::string("unknown") : pid) +
            "); stop that one first, or give this one another --state-dir");
  }
  const std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd.get(), 0) != 0 ||
      pwrite(fd.get(), pid.data(), pid.size(), 0) !=
          static_cast<ssize_t>(pid.size()))
    return MakeError(ErrorCode::kIo,
                     "cannot write " + path + ": " + std::strerror(errno));
  return StateDirLock(std::move(fd));
}

StateDirLock::~StateDirLock() {
  if (fd_.valid()) (void)!ftruncate(fd_.get(), 0);
}

Result<StateStore> StateStore::Open(const std::string& dir) {
  VCRYPT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  VCRYPT_RETURN_IF_ERROR(MakeDirs(dir + "/providers", 0700));
  StateStore s;
  s.dir_ = dir;
  auto state = ReadFile(dir + "/state.json");
  if (state.ok()) {
    json j = json::parse(*state, nullptr, false);
    if (j.is_discarded() || !j.is_object() ||
        j.value("version", 0) != kStateVersion)
      return MakeError(ErrorCode::kInvalidArgument,
                       dir + "/state.json is malformed or of an unknown version");
    if (j.contains("default_provider") && j["default_provider"].is_string())
      s.default_provider_ = j["default_provider"].get<std::string>();
    if (j.contains("kek_cache_max_age")) {
      const json& m = j["kek_cache_max_age"];
      if (!m.is_object())
        return MakeError(
            ErrorCode::kInvalidArgument,
            dir + "/state.json: 'kek_cache_max_age' is not an object");
      for (const auto& [name, v] : m.items()) {
        if (!v.is_string())
          return MakeError(
              ErrorCode::kInvalidArgument,
              dir + "/state.json: a 'kek_cache_max_age' is not a string");
        auto age = ParseKekMaxAge(v.get<std::string>());
        if (!age.ok())
          return MakeError(ErrorCode::kInvalidArgument,
                           dir + "/state.json: " + age.error().message);
        s.kek_max_ages_.emplace(name, *age);
      }
    }
  } else if (state.error().code != ErrorCode::kNotFound) {
    return std::move(state).error();
  }
  auto inv = ReadFile(dir + "/inventory.json");
  if (inv.ok()) {
    json j = json::parse(*inv, nullptr, false);
    if (j.is_discarded() || !j.is_object() ||
        j.value("version", 0) != kStateVersion || !j.contains("vms") ||
        !j["vms"].is_object())
      return MakeError(
          ErrorCode::kInvalidArgument,
          dir + "/inventory.json is malformed or of an unknown version");
    for (const auto& [name, v] : j["vms"].items()) {
      VCRYPT_ASSIGN_OR_RETURN(VmRecord vm, VmFromJson(name, v));
      s.vms_.emplace(name, std::move(vm));
    }
  } else if (inv.error().code != ErrorCode::kNotFound) {
    return std::move(inv).error();
  }
  return s;
}

std::string StateStore::ProviderDir(const std::string& name) const {
  return dir_ + "/providers/" + name;
}

Status StateStore::SaveInventory(const std::map<std::string, VmRecord>& vms) const {
  json j = {{"version", kStateVersion}, {"vms", json::object()}};
  for (const auto& [name, vm] : vms) j["vms"][name] = VmToJson(vm);
  return WriteFileAtomic(dir_ + "/inventory.json", j.dump(2) + "\n");
}

Status StateStore::SaveState(
    const std::optional<std::string>& def,
    const std::map<std::string, KekMaxAge>& ages) const {
  json j = {{"version", kStateVersion}};
  if (def) j["default_provider"] = *def;
  if (!ages.empty()) {
    j["kek_cache_max_age"] = json::object();
    for (const auto& [name, age] : ages)
      j["kek_cache_max_age"][name] = FormatKekMaxAge(age);
  }
  return WriteFileAtomic(dir_ + "/state.json", j.dump(2) + "\n");
}

Status StateStore::PutVm(const std::string& name, const VmRecord& vm) {
  auto next = vms_;
  next[name] = vm;
  VCRYPT_RETURN_IF_ERROR(SaveInventory(next));
  vms_ = std::move(next);
  return Status::Ok();
}

Status StateStore::RemoveVm(const std::string& name) {
  auto next = vms_;
  next.erase(name);
  VCRYPT_RETURN_IF_ERROR(SaveInventory(next));
  vms_ = std::move(next);
  return Status::Ok();
}

Status StateStore::SetDefaultProvider(std::optional<std::string> name) {
  VCRYPT_RETURN_IF_ERROR(SaveState(name, kek_max_ages_));
  default_provider_ = std::move(name);
  return Status::Ok();
}

Status StateStore::SetKekMaxAge(const std::string& provider,
                                std::optional<KekMaxAge> age) {
  auto next = kek_max_ages_;
  if (age)
    next[provider] = *age;
  else
    next.erase(provider);
  VCRYPT_RETURN_IF_ERROR(SaveState(default_provider_, next));
  kek_max_ages_ = std::move(next);
  return Status::Ok();
}

}  // namespace vcrypt
