#include "daemon/named_locks.h"

namespace vcrypt {

NamedLocks::Guard NamedLocks::Lock(const std::string& key) {
  std::unique_lock lock(mu_);
  ++exclusive_waiting_[key];
  cv_.wait(lock, [&] { return held_.count(key) == 0; });
  if (--exclusive_waiting_[key] == 0) exclusive_waiting_.erase(key);
  held_[key] = -1;
  return Guard(this, key, /*shared=*/false);
}

NamedLocks::Guard NamedLocks::LockShared(const std::string& key) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] {
    auto it = held_.find(key);
    return (it == held_.end() || it->second > 0) &&
           exclusive_waiting_.count(key) == 0;
  });
  ++held_[key];
  return Guard(this, key, /*shared=*/true);
}

std::optional<NamedLocks::Guard> NamedLocks::LockFor(
    const std::string& key, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  ++exclusive_waiting_[key];
  bool got = cv_.wait_for(lock, timeout, [&] { return held_.count(key) == 0; });
  if (--exclusive_waiting_[key] == 0) exclusive_waiting_.erase(key);
  if (!got) {
    // Shared waiters may have paused for this one.
    cv_.notify_all();
    return std::nullopt;
  }
  held_[key] = -1;
  return Guard(this, key, /*shared=*/false);
}

void NamedLocks::Unlock(const std::string& key, bool shared) {
  {
    std::lock_guard lock(mu_);
    auto it = held_.find(key);
    if (it != held_.end() && (!shared || --it->second == 0)) held_.erase(it);
  }
  cv_.notify_all();
}

}  // namespace vcrypt
