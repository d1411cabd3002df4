// Named locks: the per-name mutual exclusion the Controller's op groups
// serialise on (daemon/controller_state.h lists the names they use).
#ifndef VCRYPT_DAEMON_NAMED_LOCKS_H_
#define VCRYPT_DAEMON_NAMED_LOCKS_H_

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace vcrypt {

// Named locks: Lock("x") blocks while another holder has "x";
// LockShared("x") lets any number of shared holders in together, but none
// while an exclusive one holds "x" or waits for it (so a waiting exclusive
// holder is not starved by a stream of shared ones).
class NamedLocks {
 public:
  class Guard {
   public:
    Guard(NamedLocks* l, std::string k, bool shared)
        : locks_(l), key_(std::move(k)), shared_(shared) {}
    Guard(Guard&& o) noexcept
        : locks_(std::exchange(o.locks_, nullptr)),
          key_(std::move(o.key_)),
          shared_(o.shared_) {}
    Guard(const Guard&) = delete;
    ~Guard() {
      if (locks_) locks_->Unlock(key_, shared_);
    }

   private:
    NamedLocks* locks_;
    std::string key_;
    bool shared_;
  };
  Guard Lock(const std::string& key);
  Guard LockShared(const std::string& key);
  // Exclusive, waiting at most `timeout`; nullopt when still held then.
  std::optional<Guard> LockFor(const std::string& key,
                               std::chrono::milliseconds timeout);

 private:
  void Unlock(const std::string& key, bool shared);
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> held_;  // -1: exclusive; n > 0: n shared
  std::map<std::string, int> exclusive_waiting_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_NAMED_LOCKS_H_
