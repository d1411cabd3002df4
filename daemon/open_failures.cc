#include "daemon/open_failures.h"

#include "common/clock.h"
#include "daemon/ops_util.h"

namespace vcrypt {
namespace {

using controller_ops::UuidKey;

}  // namespace

// --- failed opens (memory only) -------------------------------------------

void OpenFailures::RecordFailure(const std::string& uuid, const Error& e) {
  const std::string now = NowRfc3339();
  std::lock_guard lock(failures_mu_);
  auto [it, added] = failures_.try_emplace(UuidKey(uuid));
  OpenFailure& f = it->second;
  if (added || f.code != e.code) f.since = now;
  f.code = e.code;
  f.message = e.message;
  f.last_attempt = now;
}

void OpenFailures::ClearFailure(const std::string& uuid) {
  std::lock_guard lock(failures_mu_);
  failures_.erase(UuidKey(uuid));
}

std::optional<OpenFailure> OpenFailures::FindFailure(const std::string& uuid) {
  std::lock_guard lock(failures_mu_);
  auto it = failures_.find(UuidKey(uuid));
  if (it == failures_.end()) return std::nullopt;
  return it->second;
}

std::string OpenFailures::MissingSince(const std::string& uuid, bool missing) {
  std::lock_guard lock(failures_mu_);
  if (!missing) {
    missing_since_.erase(UuidKey(uuid));
    return "";
  }
  return missing_since_.try_emplace(UuidKey(uuid), NowRfc3339()).first->second;
}

}  // namespace vcrypt
