// RAII owners for every C handle the project uses, in one place.
//
// Each is a std::unique_ptr with a deleter that calls the library's own
// free function; UniqueFd owns a file descriptor. Libraries that the
// common target does not link (libcryptsetup, libdevmapper) only get
// forward-declared deleters here; their definitions live in dmtools/.
#ifndef VCRYPT_COMMON_HANDLES_H_
#define VCRYPT_COMMON_HANDLES_H_

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include <openssl/pkcs12.h>
#include <openssl/pkcs7.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <memory>
#include <utility>

struct crypt_device;
struct dm_task;
struct ESYS_CONTEXT;
struct TSS2_TCTI_OPAQUE_CONTEXT_BLOB;
struct sqlite3;
struct sqlite3_stmt;
struct pg_conn;    // libpq's PGconn
struct pg_result;  // libpq's PGresult
struct _PQconninfoOption;

namespace vcrypt {

template <typename T, void (*F)(T*)>
struct FnDeleter {
  void operator()(T* p) const {
    if (p != nullptr) F(p);
  }
};

// OpenSSL.
using EvpCipherCtxPtr =
    std::unique_ptr<EVP_CIPHER_CTX, FnDeleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>>;
using EvpCipherPtr =
    std::unique_ptr<EVP_CIPHER, FnDeleter<EVP_CIPHER, EVP_CIPHER_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, FnDeleter<EVP_PKEY, EVP_PKEY_free>>;
using EvpMdCtxPtr =
    std::unique_ptr<EVP_MD_CTX, FnDeleter<EVP_MD_CTX, EVP_MD_CTX_free>>;
using EvpKdfCtxPtr =
    std::unique_ptr<EVP_KDF_CTX, FnDeleter<EVP_KDF_CTX, EVP_KDF_CTX_free>>;
using EvpKdfPtr = std::unique_ptr<EVP_KDF, FnDeleter<EVP_KDF, EVP_KDF_free>>;
using BioPtr = std::unique_ptr<BIO, FnDeleter<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, FnDeleter<X509, X509_free>>;
using Pkcs12Ptr = std::unique_ptr<PKCS12, FnDeleter<PKCS12, PKCS12_free>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, FnDeleter<SSL_CTX, SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, FnDeleter<SSL, SSL_free>>;
using SslSessionPtr =
    std::unique_ptr<SSL_SESSION, FnDeleter<SSL_SESSION, SSL_SESSION_free>>;
using Pkcs7Ptr = std::unique_ptr<PKCS7, FnDeleter<PKCS7, PKCS7_free>>;
using X509AlgorPtr =
    std::unique_ptr<X509_ALGOR, FnDeleter<X509_ALGOR, X509_ALGOR_free>>;
using EvpPkeyCtxPtr =
    std::unique_ptr<EVP_PKEY_CTX, FnDeleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
// For public values only (signature halves, curve coordinates): BN_free
// does not wipe, so a BIGNUM holding a secret needs BN_clear_free.
using BignumPtr = std::unique_ptr<BIGNUM, FnDeleter<BIGNUM, BN_free>>;
using EcdsaSigPtr =
    std::unique_ptr<ECDSA_SIG, FnDeleter<ECDSA_SIG, ECDSA_SIG_free>>;
// Building OSSL_PARAM arrays (EVP_PKEY_fromdata). The builder does not
// wipe: use it for public values only.
using OsslParamBldPtr =
    std::unique_ptr<OSSL_PARAM_BLD,
                    FnDeleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
using OsslParamPtr =
    std::unique_ptr<OSSL_PARAM, FnDeleter<OSSL_PARAM, OSSL_PARAM_free>>;
// STACK_OF(...) owners free the elements too (sk_*_pop_free). A stack whose
// elements hold key material needs a deleter that wipes them first; see
// keyproviders/native/native_provider.cc.
struct Pkcs7StackDeleter {
  void operator()(STACK_OF(PKCS7) * s) const {
    sk_PKCS7_pop_free(s, PKCS7_free);
  }
};
using Pkcs7StackPtr = std::unique_ptr<STACK_OF(PKCS7), Pkcs7StackDeleter>;
// Memory that OpenSSL allocated for us (OPENSSL_malloc: i2d_* output,
// PKCS12_get_friendlyname, ...). Not for secrets: it is not wiped.
struct OpensslFreeDeleter {
  void operator()(void* p) const { OPENSSL_free(p); }
};
using OpensslCharPtr = std::unique_ptr<char, OpensslFreeDeleter>;
using OpensslBytePtr = std::unique_ptr<unsigned char, OpensslFreeDeleter>;

// libcryptsetup / libdevmapper (deleters defined in dmtools/handles.cc).
struct CryptDeviceDeleter {
  void operator()(crypt_device* cd) const;
};
using CryptDevicePtr = std::unique_ptr<crypt_device, CryptDeviceDeleter>;
struct DmTaskDeleter {
  void operator()(dm_task* t) const;
};
using DmTaskPtr = std::unique_ptr<dm_task, DmTaskDeleter>;

// tpm2-tss (deleters defined in keyproviders/tpm/tpm_handles.cc).
struct EsysContextDeleter {
  void operator()(ESYS_CONTEXT* ctx) const;  // Esys_Finalize
};
using EsysContextPtr = std::unique_ptr<ESYS_CONTEXT, EsysContextDeleter>;
struct TctiContextDeleter {
  void operator()(TSS2_TCTI_OPAQUE_CONTEXT_BLOB* tcti) const;  // Tss2_TctiLdr_Finalize
};
using TctiContextPtr = std::unique_ptr<TSS2_TCTI_OPAQUE_CONTEXT_BLOB, TctiContextDeleter>;
// Structures that Esys_* calls allocate for their outputs (Esys_Free).
struct EsysFreeDeleter {
  void operator()(void* p) const;
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFreeDeleter>;

// SQLite and libpq, the Trust Authority's stores (deleters defined in
// trustauthority/db_handles.cc; trustauthority/store.h).
struct SqliteDeleter {
  void operator()(sqlite3* db) const;  // sqlite3_close_v2
};
using SqlitePtr = std::unique_ptr<sqlite3, SqliteDeleter>;
struct SqliteStmtDeleter {
  void operator()(sqlite3_stmt* s) const;  // sqlite3_finalize
};
using SqliteStmtPtr = std::unique_ptr<sqlite3_stmt, SqliteStmtDeleter>;
struct PgConnDeleter {
  void operator()(pg_conn* c) const;  // PQfinish
};
using PgConnPtr = std::unique_ptr<pg_conn, PgConnDeleter>;
struct PgResultDeleter {
  void operator()(pg_result* r) const;  // PQclear
};
using PgResultPtr = std::unique_ptr<pg_result, PgResultDeleter>;
struct PgConninfoDeleter {
  void operator()(_PQconninfoOption* o) const;  // PQconninfoFree
};
using PgConninfoPtr = std::unique_ptr<_PQconninfoOption, PgConninfoDeleter>;
struct PgFreememDeleter {
  void operator()(char* p) const;  // PQfreemem
};
using PgCharPtr = std::unique_ptr<char, PgFreememDeleter>;

// A file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_HANDLES_H_
