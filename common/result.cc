#include "common/result.h"

#include <array>
#include <utility>

namespace vcrypt {
namespace {
constexpr std::array<std::pair<ErrorCode, std::string_view>, 13> kNames = {{
    {ErrorCode::kInternal, "internal"},
    {ErrorCode::kUsage, "usage"},
    {ErrorCode::kDaemonUnavailable, "daemon_unavailable"},
    {ErrorCode::kPermissionDenied, "permission_denied"},
    {ErrorCode::kNotFound, "not_found"},
    {ErrorCode::kExists, "exists"},
    {ErrorCode::kBusy, "busy"},
    {ErrorCode::kKeyUnavailable, "key_unavailable"},
    {ErrorCode::kInvalidVolume, "invalid_volume"},
    {ErrorCode::kNoDeviceMapper, "no_device_mapper"},
    {ErrorCode::kIo, "io"},
    {ErrorCode::kInvalidArgument, "invalid_argument"},
    {ErrorCode::kCrypto, "crypto"},
}};
}  // namespace

std::string_view ErrorCodeName(ErrorCode code) {
  for (const auto& [c, n] : kNames)
    if (c == code) return n;
  return "internal";
}

ErrorCode ErrorCodeFromName(std::string_view name) {
  for (const auto& [c, n] : kNames)
    if (n == name) return c;
  return ErrorCode::kInternal;
}

}  // namespace vcrypt
