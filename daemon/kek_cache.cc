#include "daemon/kek_cache.h"

namespace vcrypt {

void KekCache::Put(const std::string& provider, const std::string& kek_id,
                   const std::string& vm, SecureBuffer kek) {
  std::lock_guard lock(mu_);
  entries_[{provider, kek_id}] = Entry{vm, std::move(kek)};
}

std::optional<SecureBuffer> KekCache::Get(const std::string& provider,
                                          const std::string& kek_id) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find({provider, kek_id});
  if (it == entries_.end()) return std::nullopt;
  return it->second.kek.Clone();
}

bool KekCache::Contains(const std::string& provider,
                        const std::string& kek_id) const {
  std::lock_guard lock(mu_);
  return entries_.count({provider, kek_id}) != 0;
}

size_t KekCache::EvictKek(const std::string& provider, const std::string& kek_id) {
  std::lock_guard lock(mu_);
  return entries_.erase({provider, kek_id});  // ~SecureBuffer wipes
}

size_t KekCache::EvictVm(const std::string& vm) {
  std::lock_guard lock(mu_);
  return std::erase_if(entries_, [&](const auto& e) { return e.second.vm == vm; });
}

size_t KekCache::EvictProvider(const std::string& provider) {
  std::lock_guard lock(mu_);
  return std::erase_if(entries_,
                       [&](const auto& e) { return e.first.first == provider; });
}

size_t KekCache::Clear() {
  std::lock_guard lock(mu_);
  size_t n = entries_.size();
  entries_.clear();
  return n;
}

std::vector<KekCache::EntryInfo> KekCache::List() const {
  std::lock_guard lock(mu_);
  std::vector<EntryInfo> out;
  for (const auto& [key, e] : entries_)
    out.push_back({key.second, e.vm, key.first});
  return out;
}

}  // namespace vcrypt
