// Helpers shared by the Controller's op groups (daemon/controller.h,
// daemon/ops_*.cc): typed access to request arguments, LUKS UUID
// comparison, the listing of dm mappings, and the small audit and error
// shapes several groups build.
// Internal to vcryptd's controller; nothing outside daemon/ includes it.
#ifndef VCRYPT_DAEMON_OPS_UTIL_H_
#define VCRYPT_DAEMON_OPS_UTIL_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "daemon/audit.h"
#include "dmtools/volume.h"
#include "keyproviders/key_provider.h"

namespace vcrypt::controller_ops {

using Json = nlohmann::json;

// kUsage with `msg`.
Error Usage(const std::string& msg);

// Typed argument access with one clear error per problem.
Result<std::string> StrArg(const Json& args, const char* key);
std::optional<std::string> OptStr(const Json& args, const char* key);
bool BoolArg(const Json& args, const char* key);

bool IsBlockDevice(const std::string& path);
bool Exists(const std::string& path);

// Lower-case hex without dashes, for comparing UUIDs.
std::string CompactUuid(std::string_view uuid);
// Both name the same UUID (`a` not empty), whatever case and dashes.
bool SameUuid(std::string_view a, std::string_view b);
// The key of a volume in the Controller's per-UUID maps.
std::string UuidKey(std::string_view uuid);

// The primary key ID of a native provider ("" for others): what an audit
// record names for provider.* operations.
std::string PrimaryKeyId(const KeyProvider& p);

// An error as a JSON object (code, exit, message), for per-volume results.
Json ErrorJson(const Error& e);

// Why the device a /dev/disk/by-uuid link leads to must not be taken, or
// "" when it may. A vcrypt mapping, or a device stacked on one, holds a
// guest's data, whatever header it shows (docs/boot.md, "Guest content
// stays the guest's"); a stack that cannot be read counts as one.
std::string GuestContent(const std::string& dev);

// Every dm mapping (none without device-mapper): one listing per
// request, looked up by LUKS UUID for each disk.
Result<std::vector<MappingInfo>> AllMappings();

// An audit record about one volume's key.
AuditRecord VolumeAudit(const AuditContext& ctx, AuditOp op,
                        const std::string& vm, const std::string& disk,
                        const std::string& uuid, const std::string& provider,
                        const std::string& kek_id);

}  // namespace vcrypt::controller_ops

#endif  // VCRYPT_DAEMON_OPS_UTIL_H_
