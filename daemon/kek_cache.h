// The in-memory KEK cache of vcryptd.
//
// KEKs live only here (and transiently on the stack of an operation), in
// SecureBuffers: locked, excluded from core dumps, wiped on eviction.
// Entries are keyed by provider name and KEK ID: a KEK ID is unique only
// within its provider (two KMSs both number their keys "1", "2", ...).
// Each remembers the VM it belongs to, so it can be evicted when a VM is
// unregistered or deleted, or a provider removed, and when it was fetched,
// so that a provider's maximum age (KekMaxAge, docs/providers.md "How long
// a KEK stays cached") sends the next use back to the provider. Thread-safe.
#ifndef VCRYPT_DAEMON_KEK_CACHE_H_
#define VCRYPT_DAEMON_KEK_CACHE_H_

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// How long a provider's KEKs may be used from the cache after they were
// fetched: a number of seconds (at least 1), or unlimited.
struct KekMaxAge {
  std::optional<std::chrono::seconds> limit;  // nullopt: unlimited

  bool unlimited() const { return !limit.has_value(); }
  bool operator==(const KekMaxAge&) const = default;
};

// The default of a provider type (docs/providers.md argues each): native
// unlimited, standard 1 hour, trusted 15 minutes; unlimited for a type
// this vcryptd does not know.
KekMaxAge DefaultKekMaxAge(std::string_view provider_type);
// "unlimited", or a whole number followed by s, m, h or d ("90s", "15m",
// "1h", "2d"; a bare number is seconds), from 1 second to 365 days.
// kInvalidArgument (one line quoting the text) otherwise.
Result<KekMaxAge> ParseKekMaxAge(std::string_view text);
// "unlimited" or seconds with the largest unit that divides them ("15m").
std::string FormatKekMaxAge(const KekMaxAge& age);

class KekCache {
 public:
  using Clock = std::chrono::steady_clock;

  struct EntryInfo {  // what `status` shows: never key bytes
    std::string kek_id;
    std::string vm;
    std::string provider;
    std::chrono::seconds age{0};  // since it was fetched from the provider
  };

  // `now` is the clock ages are measured with (tests move it).
  explicit KekCache(std::function<Clock::time_point()> now = Clock::now)
      : now_(std::move(now)) {}

  // (Re)starts the entry's age.
  void Put(const std::string& provider, const std::string& kek_id,
           const std::string& vm, SecureBuffer kek);
  // A copy of the cached KEK (the caller's copy is wiped when it goes out
  // of scope), or nullopt. An entry older than `max_age` is not returned:
  // it is evicted (wiped) and `*expired`, when given, says so.
  std::optional<SecureBuffer> Get(const std::string& provider,
                                  const std::string& kek_id,
                                  const KekMaxAge& max_age = {},
                                  EntryInfo* expired = nullptr);
  bool Contains(const std::string& provider, const std::string& kek_id) const;

  // Each returns the number of entries evicted (and wiped).
  size_t EvictKek(const std::string& provider, const std::string& kek_id);
  size_t EvictVm(const std::string& vm);
  size_t EvictProvider(const std::string& provider);
  size_t Clear();
  // Evicts every entry older than its provider's maximum age in
  // `max_ages` (a provider not in it: unlimited); returns what was evicted.
  std::vector<EntryInfo> EvictExpired(
      const std::map<std::string, KekMaxAge>& max_ages);

  std::vector<EntryInfo> List() const;

 private:
  using Key = std::pair<std::string, std::string>;  // provider, KEK ID
  struct Entry {
    std::string vm;
    SecureBuffer kek;
    Clock::time_point fetched;
  };
  EntryInfo Info(const Key& key, const Entry& e, Clock::time_point now) const;
  static bool Expired(const Entry& e, const KekMaxAge& max_age,
                      Clock::time_point now) {
    return max_age.limit && now - e.fetched >= *max_age.limit;
  }

  std::function<Clock::time_point()> now_;
  mutable std::mutex mu_;
  std::map<Key, Entry> entries_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_KEK_CACHE_H_
