// OpenSSL's secure heap: the memory OpenSSL keeps private key material in
// (the BIGNUMs of RSA and EC private keys it decodes or generates, which it
// allocates with BN_secure_new, and its BIO_s_secmem buffers). Until it is
// set up, those "secure" allocations are ordinary malloc ones: swappable,
// in core dumps, and not wiped by a guard page from their neighbours.
// The heap is one mmap'd area, mlock'ed, with guard pages, excluded from
// core dumps (MADV_DONTDUMP); OpenSSL wipes each allocation when it is
// freed.
//
// vcryptd (the KMS client key of standard providers, trusted providers'
// host keys) and vcrypt-ta (the token signing key, host keys) set it up
// first thing, before any key is loaded.
#ifndef VCRYPT_COMMON_OPENSSL_SECURE_HEAP_H_
#define VCRYPT_COMMON_OPENSSL_SECURE_HEAP_H_

#include <cstddef>

#include "common/result.h"

namespace vcrypt {

// 1 MiB: an RSA-4096 private key takes about 3.5 KiB of it, and RSA/EC
// operations on a secure key keep their temporaries there too (per thread,
// for as long as the operation runs), so this leaves room for hundreds of
// concurrent TLS handshakes; well under the default RLIMIT_MEMLOCK (8 MiB).
// When the heap is full OpenSSL's key operations fail rather than fall
// back to the ordinary heap.
inline constexpr size_t kOpensslSecureHeapSize = size_t{1} << 20;
// Smallest allocation unit (a power of two): 32 bytes, so small BIGNUMs
// do not waste much of the heap.
inline constexpr size_t kOpensslSecureHeapMinSize = 32;

// Sets up OpenSSL's secure heap (CRYPTO_secure_malloc_init) once per
// process; later calls do nothing. kInternal when it cannot be mapped, or
// cannot be locked in memory (mlock: raise RLIMIT_MEMLOCK or run as root);
// the caller should refuse to start then.
Status InitOpensslSecureHeap();

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_OPENSSL_SECURE_HEAP_H_
