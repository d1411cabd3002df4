#include "daemon/ops_util.h"

#include <sys/stat.h>

#include <cctype>

#include "dmtools/stacking.h"
#include "keyproviders/native/native_provider.h"

namespace vcrypt::controller_ops {

Error Usage(const std::string& msg) {
  return MakeError(ErrorCode::kUsage, msg);
}

// Typed argument access with one clear error per problem.
Result<std::string> StrArg(const Json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || !it->is_string())
    return Usage(std::string("missing argument '") + key + "'");
  return it->get<std::string>();
}
std::optional<std::string> OptStr(const Json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}
bool BoolArg(const Json& args, const char* key) {
  auto it = args.find(key);
  return it != args.end() && it->is_boolean() && it->get<bool>();
}

bool IsBlockDevice(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Lower-case hex without dashes, for comparing UUIDs.
std::string CompactUuid(std::string_view uuid) {
  std::string out;
  for (char c : uuid)
    if (c != '-')
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool SameUuid(std::string_view a, std::string_view b) {
  return !a.empty() && CompactUuid(a) == CompactUuid(b);
}

std::string UuidKey(std::string_view uuid) { return CompactUuid(uuid); }

// The primary key ID of a native provider ("" for others): what an audit
// record names for provider.* operations.
std::string PrimaryKeyId(const KeyProvider& p) {
  auto* native = dynamic_cast<const NativeProvider*>(&p);
  return native ? native->primary_key_id() : std::string();
}

Json ErrorJson(const Error& e) {
  return Json{{"code", std::string(ErrorCodeName(e.code))},
              {"exit", static_cast<int>(e.code)},
              {"message", e.message}};
}

// Why the device a /dev/disk/by-uuid link leads to must not be taken, or
// "" when it may. A vcrypt mapping, or a device stacked on one, holds a
// guest's data, whatever header it shows (docs/boot.md, "Guest content
// stays the guest's"); a stack that cannot be read counts as one.
std::string GuestContent(const std::string& dev) {
  auto below = VcryptMappingBelowPath(dev);
  if (!below.ok())
    return "may be guest content (" + below.error().message + ")";
  if (*below) return "is guest content (on vcrypt mapping " + **below + ")";
  return "";
}

Result<std::vector<MappingInfo>> AllMappings() {
  if (!DeviceMapperAvailable()) return std::vector<MappingInfo>();
  return ListMappings("");
}

// An audit record about one volume's key.
AuditRecord VolumeAudit(const AuditContext& ctx, AuditOp op,
                        const std::string& vm, const std::string& disk,
                        const std::string& uuid, const std::string& provider,
                        const std::string& kek_id) {
  AuditRecord r = AuditRecord::For(ctx, op);
  r.vm = vm;
  r.disk = disk;
  r.volume = uuid;
  r.provider = provider;
  r.kek_id = kek_id;
  return r;
}

}  // namespace vcrypt::controller_ops
