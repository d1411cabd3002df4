#include "daemon/kek_cache.h"

#include <charconv>

namespace vcrypt {

using std::chrono::seconds;

KekMaxAge DefaultKekMaxAge(std::string_view provider_type) {
  // native: the primary key is on this host, so a re-fetch proves nothing
  // a cached KEK does not. standard: a revoked KMS key stops new opens
  // within the hour, and a KMS outage shorter than that stops none.
  // trusted: a withdrawn baseline or removed host acts within a quarter
  // hour (tokens already live only minutes).
  if (provider_type == "standard") return KekMaxAge{seconds{3600}};
  if (provider_type == "trusted") return KekMaxAge{seconds{900}};
  return KekMaxAge{};
}

Result<KekMaxAge> ParseKekMaxAge(std::string_view text) {
  auto bad = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KEK cache max age '" + std::string(text.substr(0, 32)) +
                         "' is not 'unlimited' or a duration from 1s to 365d "
                         "(e.g. 90s, 15m, 1h, 2d)");
  };
  if (text == "unlimited") return KekMaxAge{};
  if (text.empty() || text.size() > 12) return bad();
  int64_t unit = 1;
  std::string_view digits = text;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      unit = 0;
  }
  if (unit != 0)
    digits.remove_suffix(1);
  else
    unit = 1;
  int64_t n = 0;
  auto [end, ec] =
      std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (digits.empty() || ec != std::errc() ||
      end != digits.data() + digits.size() || n < 1 || n > 365 * 86400 / unit)
    return bad();
  return KekMaxAge{seconds{n * unit}};
}

std::string FormatKekMaxAge(const KekMaxAge& age) {
  if (age.unlimited()) return "unlimited";
  const int64_t s = age.limit->count();
  if (s % 86400 == 0) return std::to_string(s / 86400) + "d";
  if (s % 3600 == 0) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

void KekCache::Put(const std::string& provider, const std::string& kek_id,
                   const std::string& vm, SecureBuffer kek) {
  const auto now = now_();
  std::lock_guard lock(mu_);
  entries_[{provider, kek_id}] = Entry{vm, std::move(kek), now};
}

std::optional<SecureBuffer> KekCache::Get(const std::string& provider,
                                          const std::string& kek_id,
                                          const KekMaxAge& max_age,
                                          EntryInfo* expired) {
  const auto now = now_();
  std::lock_guard lock(mu_);
  auto it = entries_.find({provider, kek_id});
  if (it == entries_.end()) return std::nullopt;
  if (Expired(it->second, max_age, now)) {
    if (expired) *expired = Info(it->first, it->second, now);
    entries_.erase(it);  // ~SecureBuffer wipes
    return std::nullopt;
  }
  return it->second.kek.Clone();
}

bool KekCache::Contains(const std::string& provider,
                        const std::string& kek_id) const {
  std::lock_guard lock(mu_);
  return entries_.count({provider, kek_id}) != 0;
}

size_t KekCache::EvictKek(const std::string& provider,
                          const std::string& kek_id) {
  std::lock_guard lock(mu_);
  return entries_.erase({provider, kek_id});  // ~SecureBuffer wipes
}

size_t KekCache::EvictVm(const std::string& vm) {
  std::lock_guard lock(mu_);
  return std::erase_if(entries_,
                       [&](const auto& e) { return e.second.vm == vm; });
}

size_t KekCache::EvictProvider(const std::string& provider) {
  std::lock_guard lock(mu_);
  return std::erase_if(
      entries_, [&](const auto& e) { return e.first.first == provider; });
}

size_t KekCache::Clear() {
  std::lock_guard lock(mu_);
  size_t n = entries_.size();
  entries_.clear();
  return n;
}

std::vector<KekCache::EntryInfo> KekCache::EvictExpired(
    const std::map<std::string, KekMaxAge>& max_ages) {
  const auto now = now_();
  std::vector<EntryInfo> out;
  std::lock_guard lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    auto m = max_ages.find(it->first.first);
    if (m != max_ages.end() && Expired(it->second, m->second, now)) {
      out.push_back(Info(it->first, it->second, now));
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

KekCache::EntryInfo KekCache::Info(const Key& key, const Entry& e,
                                   Clock::time_point now) const {
  return {key.second, e.vm, key.first,
          std::chrono::duration_cast<seconds>(now - e.fetched)};
}

std::vector<KekCache::EntryInfo> KekCache::List() const {
  const auto now = now_();
  std::lock_guard lock(mu_);
  std::vector<EntryInfo> out;
  for (const auto& [key, e] : entries_) out.push_back(Info(key, e, now));
  return out;
}

}  // namespace vcrypt
