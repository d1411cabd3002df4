// The in-memory KEK cache of vcryptd.
//
// KEKs live only here (and transiently on the stack of an operation), in
// SecureBuffers: locked, excluded from core dumps, wiped on eviction.
// Entries are keyed by provider name and KEK ID: a KEK ID is unique only
// within its provider (two KMSs both number their keys "1", "2", ...).
// Each remembers the VM it belongs to, so it can be evicted when a VM is
// unregistered or deleted, or a provider removed. Thread-safe.
#ifndef VCRYPT_DAEMON_KEK_CACHE_H_
#define VCRYPT_DAEMON_KEK_CACHE_H_

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/secure_buffer.h"

namespace vcrypt {

class KekCache {
 public:
  struct EntryInfo {  // what `status` shows: never key bytes
    std::string kek_id;
    std::string vm;
    std::string provider;
  };

  void Put(const std::string& provider, const std::string& kek_id,
           const std::string& vm, SecureBuffer kek);
  // A copy of the cached KEK (the caller's copy is wiped when it goes out
  // of scope), or nullopt.
  std::optional<SecureBuffer> Get(const std::string& provider,
                                  const std::string& kek_id) const;
  bool Contains(const std::string& provider, const std::string& kek_id) const;

  // Each returns the number of entries evicted (and wiped).
  size_t EvictKek(const std::string& provider, const std::string& kek_id);
  size_t EvictVm(const std::string& vm);
  size_t EvictProvider(const std::string& provider);
  size_t Clear();

  std::vector<EntryInfo> List() const;

 private:
  using Key = std::pair<std::string, std::string>;  // provider, KEK ID
  struct Entry {
    std::string vm;
    SecureBuffer kek;
  };
  mutable std::mutex mu_;
  std::map<Key, Entry> entries_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_KEK_CACHE_H_
