#include "daemon/kek_cache.h"

namespace vcrypt {

void KekCache::Put(const std::string& kek_id, const std::string& vm,
                   const std::string& provider, SecureBuffer kek) {
  std::lock_guard lock(mu_);
  entries_[kek_id] = Entry{vm, provider, std::move(kek)};
}

std::optional<SecureBuffer> KekCache::Get(const std::string& kek_id) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(kek_id);
  if (it == entries_.end()) return std::nullopt;
  return it->second.kek.Clone();
}

bool KekCache::Contains(const std::string& kek_id) const {
  std::lock_guard lock(mu_);
  return entries_.count(kek_id) != 0;
}

size_t KekCache::EvictKek(const std::string& kek_id) {
  std::lock_guard lock(mu_);
  return entries_.erase(kek_id);  // ~SecureBuffer wipes
}

size_t KekCache::EvictVm(const std::string& vm) {
  std::lock_guard lock(mu_);
  return std::erase_if(entries_, [&](const auto& e) { return e.second.vm == vm; });
}

size_t KekCache::EvictProvider(const std::string& provider) {
  std::lock_guard lock(mu_);
  return std::erase_if(entries_,
                       [&](const auto& e) { return e.second.provider == provider; });
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
  for (const auto& [id, e] : entries_) out.push_back({id, e.vm, e.provider});
  return out;
}

}  // namespace vcrypt
