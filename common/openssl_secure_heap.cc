#include "common/openssl_secure_heap.h"

#include <openssl/crypto.h>

#include <mutex>
#include <string>

namespace vcrypt {

Status InitOpensslSecureHeap() {
  static std::mutex mu;
  std::lock_guard lock(mu);
  if (CRYPTO_secure_malloc_initialized() == 1) return Status::Ok();
  switch (CRYPTO_secure_malloc_init(kOpensslSecureHeapSize,
                                    kOpensslSecureHeapMinSize)) {
    case 1:
      return Status::Ok();
    case 2:
      // Mapped, but its guard pages, mlock or MADV_DONTDUMP failed: keys
      // could be swapped out or dumped.
      return MakeError(ErrorCode::kInternal,
                       "cannot protect OpenSSL's secure heap (mlock, guard "
                       "pages or MADV_DONTDUMP failed); raise RLIMIT_MEMLOCK "
                       "or run as root");
    default:
      return MakeError(ErrorCode::kInternal,
                       "cannot set up OpenSSL's secure heap (" +
                           std::to_string(kOpensslSecureHeapSize) + " bytes)");
  }
}

}  // namespace vcrypt
