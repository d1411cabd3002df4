#include "keyproviders/key_provider.h"

namespace vcrypt {

std::vector<Result<SecureBuffer>> KeyProvider::GetKeks(
    std::span<const KekRef> refs) {
  std::vector<Result<SecureBuffer>> out;
  out.reserve(refs.size());
  for (const auto& r : refs) out.push_back(GetKek(r));
  return out;
}

Status KeyProvider::DestroyKek(const KekRef&) { return Status::Ok(); }

bool KeyProvider::Recognizes(const KekRef&) const { return false; }

}  // namespace vcrypt
