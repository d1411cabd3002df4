// Device-mapper mappings as the kernel reports them: QueryMapping,
// ListMappings, FindMappingByUuid, through libdevmapper. The dm-crypt key
// in a table is never copied, only measured.
#include <libdevmapper.h>
#include <sys/sysmacros.h>

#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dmtools/lib_internal.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

using dmlib::DmInfo;
using dmlib::GetDmInfo;
using dmlib::LockLibraries;
using dmlib::NoDm;
using dmlib::QueryMappingImpl;
using dmlib::QuietDm;
using dmlib::ValidateMappingName;
using dmlib::WithLibMessage;

// DM_NAME_LEN from <linux/dm-ioctl.h>, including the NUL.
constexpr size_t kDmNameLen = 128;

Result<DmTaskPtr> RunDmTask(int type, const std::string& name,
                            bool secure = false) {
  QuietDm();
  DmTaskPtr dmt(dm_task_create(type));
  if (!dmt) return MakeError(ErrorCode::kInternal, "dm_task_create failed");
  if (!name.empty() && !dm_task_set_name(dmt.get(), name.c_str())) {
    return MakeError(ErrorCode::kInternal, "dm_task_set_name failed");
  }
  // libdevmapper wipes its ioctl buffers for tasks that carry keys.
  if (secure && !dm_task_secure_data(dmt.get())) {
    return MakeError(ErrorCode::kInternal, "dm_task_secure_data failed");
  }
  if (!dm_task_run(dmt.get())) {
    if (!DeviceMapperAvailable()) return NoDm();
    return MakeError(
        ErrorCode::kIo,
        WithLibMessage("device-mapper request failed" +
                       (name.empty() ? std::string() : " for " + name)));
  }
  return dmt;
}

Result<std::vector<std::string>> ListDmNames() {
  VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt, RunDmTask(DM_DEVICE_LIST, ""));
  std::vector<std::string> names;
  struct dm_names* n = dm_task_get_names(dmt.get());
  if (n == nullptr || n->dev == 0) return names;  // no devices
  for (;;) {
    names.emplace_back(n->name);
    if (n->next == 0) break;
    n = reinterpret_cast<struct dm_names*>(reinterpret_cast<char*>(n) +
                                           n->next);
  }
  return names;
}

// "CRYPT-LUKS2-<32 hex>-<name>" -> canonical 8-4-4-4-12 UUID, or "".
std::string LuksUuidFromDmUuid(const std::string& dm_uuid) {
  static constexpr std::string_view kPrefix = "CRYPT-LUKS2-";
  if (dm_uuid.rfind(kPrefix, 0) != 0) return "";
  std::string hex = dm_uuid.substr(kPrefix.size(), 32);
  if (hex.size() != 32 || dm_uuid.size() < kPrefix.size() + 33 ||
      dm_uuid[kPrefix.size() + 32] != '-') {
    return "";
  }
  for (char c : hex) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return "";
  }
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) +
         "-" + hex.substr(16, 4) + "-" + hex.substr(20);
}

// Lower-case hex without dashes, for comparing UUIDs.
std::string CompactUuid(std::string_view uuid) {
  std::string out;
  for (char c : uuid) {
    if (c != '-')
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// kInvalidArgument unless `uuid` is a LUKS UUID (32 hex digits; dashes
// and case do not matter).
Status CheckLuksUuid(const std::string& uuid) {
  const std::string c = CompactUuid(uuid);
  if (c.size() != 32 ||
      c.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + uuid + "' is not a LUKS UUID");
  }
  return Status::Ok();
}

// Parses a dm-crypt table line into `m` without copying the key: the key
// field is only measured. Layout: <cipher> <key> <iv_offset> <device>
// <offset> [<#opt> <opt>...].
void ParseCryptTable(const char* params, MappingInfo& m) {
  std::string_view p(params);
  auto next = [&p]() {
    while (!p.empty() && p.front() == ' ') p.remove_prefix(1);
    size_t end = p.find(' ');
    std::string_view tok = p.substr(0, end);
    p.remove_prefix(end == std::string_view::npos ? p.size() : end);
    return tok;
  };
  m.cipher = std::string(next());
  std::string_view key = next();
  if (!key.empty() && key.front() == ':') {
    // ":<size>:<type>:<description>" - the key lives in the kernel keyring.
    m.key_in_keyring = true;
    std::string_view rest = key.substr(1);
    uint32_t bytes = 0;
    for (char c : rest.substr(0, rest.find(':'))) {
      if (c < '0' || c > '9') break;
      bytes = bytes * 10 + static_cast<uint32_t>(c - '0');
    }
    m.key_bits = bytes * 8;
  } else if (key != "-") {
    m.key_bits = static_cast<uint32_t>(key.size() * 4);
  }
  next();  // iv_offset
  next();  // device
  next();  // offset
  std::string_view count = next();
  int n = 0;
  for (char c : count) {
    if (c < '0' || c > '9') break;
    n = n * 10 + (c - '0');
  }
  for (int i = 0; i < n; ++i) {
    std::string_view opt = next();
    if (opt.empty()) break;
    m.options.emplace_back(opt);
  }
}

}  // namespace

namespace dmlib {

Status ValidateMappingName(const std::string& name) {
  for (char c : name) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "device-mapper name contains a space or control "
                       "character");
    }
  }
  if (name.empty() || name.size() >= kDmNameLen || name == "." ||
      name == ".." || name.find('/') != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + name.substr(0, kDmNameLen) +
                         "' is not a valid device-mapper name");
  }
  return Status::Ok();
}

Result<DmInfo> GetDmInfo(const std::string& name) {
  VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt, RunDmTask(DM_DEVICE_INFO, name));
  struct dm_info info;
  if (!dm_task_get_info(dmt.get(), &info)) {
    return MakeError(ErrorCode::kIo,
                     "cannot read device-mapper info of " + name);
  }
  DmInfo out;
  out.exists = info.exists != 0;
  if (!out.exists) return out;
  out.open_count = info.open_count;
  out.suspended = info.suspended != 0;
  const char* uuid = dm_task_get_uuid(dmt.get());
  if (uuid != nullptr) out.dm_uuid = uuid;
  return out;
}

Result<MappingInfo> QueryMappingImpl(const std::string& name) {
  VCRYPT_ASSIGN_OR_RETURN(DmInfo info, GetDmInfo(name));
  if (!info.exists) {
    return MakeError(ErrorCode::kNotFound, "no device-mapper mapping " + name);
  }
  MappingInfo m;
  m.name = name;
  m.path = "/dev/mapper/" + name;
  m.dm_uuid = info.dm_uuid;
  m.luks_uuid = LuksUuidFromDmUuid(info.dm_uuid);
  m.open_count = info.open_count;
  m.suspended = info.suspended;

  {
    VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt,
                            RunDmTask(DM_DEVICE_TABLE, name, /*secure=*/true));
    uint64_t start = 0, length = 0;
    char* type = nullptr;
    char* params = nullptr;
    void* next = nullptr;
    int targets = 0;
    do {
      next =
          dm_get_next_target(dmt.get(), next, &start, &length, &type, &params);
      if (type == nullptr) break;
      ++targets;
      m.size_bytes += length * 512;
      if (targets == 1) {
        m.target = type;
        if (m.target == "crypt" && params != nullptr) {
          ParseCryptTable(params, m);
        }
      }
    } while (next != nullptr);
    m.target_count = targets;
    // dmt (and with it the key text in its buffer) is wiped on destruction
    // because the task was marked secure.
  }

  {
    VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt, RunDmTask(DM_DEVICE_DEPS, name));
    struct dm_deps* deps = dm_task_get_deps(dmt.get());
    if (deps != nullptr && deps->count > 0) {
      dev_t dev = makedev(major(deps->device[0]), minor(deps->device[0]));
      m.backing = DevicePathOf(dev);
      if (auto f = ReadSmallFile(SysDevBlock(dev) + "/loop/backing_file")) {
        m.backing_file = *f;
      }
    }
  }
  return m;
}

}  // namespace dmlib

Result<MappingInfo> QueryMapping(const std::string& name) {
  auto lib = LockLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(name));
  if (!DeviceMapperAvailable()) return NoDm();
  return QueryMappingImpl(name);
}

Result<std::vector<MappingInfo>> ListMappings(const std::string& prefix) {
  auto lib = LockLibraries();
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDmNames());
  std::vector<MappingInfo> out;
  for (const auto& n : names) {
    if (n.rfind(prefix, 0) != 0) continue;
    auto m = QueryMappingImpl(n);
    if (!m.ok()) {
      if (m.error().code == ErrorCode::kNotFound) continue;  // removed since
      return std::move(m).error();
    }
    out.push_back(std::move(m).value());
  }
  return out;
}

Result<std::optional<MappingInfo>> FindMappingByUuid(
    const std::string& luks_uuid) {
  auto lib = LockLibraries();
  VCRYPT_RETURN_IF_ERROR(CheckLuksUuid(luks_uuid));
  if (!DeviceMapperAvailable()) return NoDm();
  return dmlib::FindMappingByUuidLocked(luks_uuid);
}

namespace dmlib {

Result<std::optional<MappingInfo>> FindMappingByUuidLocked(
    const std::string& luks_uuid) {
  ClearLibMessage();  // as LockLibraries did when this was a nested call
  VCRYPT_RETURN_IF_ERROR(CheckLuksUuid(luks_uuid));
  const std::string want = CompactUuid(luks_uuid);
  VCRYPT_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDmNames());
  for (const auto& n : names) {
    VCRYPT_ASSIGN_OR_RETURN(DmInfo info, GetDmInfo(n));
    if (!info.exists) continue;
    std::string u = LuksUuidFromDmUuid(info.dm_uuid);
    if (u.empty() || CompactUuid(u) != want) continue;
    auto m = QueryMappingImpl(n);
    if (!m.ok()) {
      if (m.error().code == ErrorCode::kNotFound) continue;
      return std::move(m).error();
    }
    return std::optional<MappingInfo>(std::move(m).value());
  }
  return std::optional<MappingInfo>();
}

}  // namespace dmlib

}  // namespace vcrypt
