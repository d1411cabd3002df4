#include "common/openssl_secure_heap.h"

#include <openssl/crypto.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define VCRYPT_LSAN 1
#endif

namespace vcrypt {
namespace {

// Sanitizer builds only. LeakSanitizer does not look for pointers in
// memory it did not map, and OpenSSL keeps structures in its secure heap
// that point to ordinary heap blocks (its random generators' cipher
// contexts): without this, those blocks are reported as leaked. The
// arena is the mapping that holds a secure allocation (its guard pages
// are mappings of their own).
void LetLeakSanitizerScanTheArena() {
#ifdef VCRYPT_LSAN
  void* probe = OPENSSL_secure_malloc(1);
  if (probe == nullptr) return;
  const auto addr = reinterpret_cast<uintptr_t>(probe);
  OPENSSL_secure_free(probe);
  FILE* maps = std::fopen("/proc/self/maps", "re");
  if (maps == nullptr) return;
  char line[512];
  while (std::fgets(line, sizeof line, maps) != nullptr) {
    uintptr_t start = 0, end = 0;
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &start, &end) == 2 &&
        start <= addr && addr < end) {
      __lsan_register_root_region(reinterpret_cast<void*>(start), end - start);
      break;
    }
  }
  std::fclose(maps);
#endif
}

}  // namespace

Status InitOpensslSecureHeap() {
  static std::mutex mu;
  std::lock_guard lock(mu);
  if (CRYPTO_secure_malloc_initialized() == 1) return Status::Ok();
  const int r = CRYPTO_secure_malloc_init(kOpensslSecureHeapSize,
                                          kOpensslSecureHeapMinSize);
  if (r != 0) LetLeakSanitizerScanTheArena();
  switch (r) {
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
