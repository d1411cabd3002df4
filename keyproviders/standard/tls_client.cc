// The KMS TLS client (mutual TLS, failover, one reused connection per
// server). Just over 800 lines; one concern, so not split.
#include "keyproviders/standard/tls_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

namespace vcrypt {
namespace {

using Clock = std::chrono::steady_clock;

std::string Ms(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " ms";
}

// ---------------------------------------------------------------------------
// A socket BIO that writes with MSG_NOSIGNAL. OpenSSL's own socket BIO uses
// write(2), which raises SIGPIPE when the server has gone away; a library
// must not rely on every program that links it ignoring SIGPIPE. The BIO
// borrows the fd (TlsConnection owns it).

int BioFd(BIO* b) {
  return static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(b)));
}

int SockBioWrite(BIO* b, const char* data, int len) {
  BIO_clear_retry_flags(b);
  ssize_t n = ::send(BioFd(b), data, static_cast<size_t>(len), MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      BIO_set_retry_write(b);
    }
    return -1;
  }
  return static_cast<int>(n);
}

int SockBioRead(BIO* b, char* data, int len) {
  BIO_clear_retry_flags(b);
  ssize_t n = ::recv(BioFd(b), data, static_cast<size_t>(len), MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      BIO_set_retry_read(b);
    }
    return -1;
  }
  return static_cast<int>(n);  // 0 = EOF
}

long SockBioCtrl(BIO* b, int cmd, long num, void* ptr) {  // NOLINT(runtime/int)
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;  // nothing is buffered here
    case BIO_C_GET_FD:
      if (ptr != nullptr) *static_cast<int*>(ptr) = BioFd(b);
      return BioFd(b);
    default:
      return 0;
  }
}

int SockBioCreate(BIO* b) {
  BIO_set_data(b, reinterpret_cast<void*>(intptr_t{-1}));
  BIO_set_init(b, 1);
  return 1;
}

int SockBioDestroy(BIO* b) { return b != nullptr ? 1 : 0; }

// The method table lives for the whole process (OpenSSL keeps pointers to
// it in every BIO made from it); it is created once, never freed.
const BIO_METHOD* NoSigpipeSocketMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(
        BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
        "vcrypt socket (MSG_NOSIGNAL)");
    if (m == nullptr) return m;
    BIO_meth_set_write(m, SockBioWrite);
    BIO_meth_set_read(m, SockBioRead);
    BIO_meth_set_ctrl(m, SockBioCtrl);
    BIO_meth_set_create(m, SockBioCreate);
    BIO_meth_set_destroy(m, SockBioDestroy);
    return m;
  }();
  return method;
}

// ---------------------------------------------------------------------------
// Certificate verification details, for messages an administrator can act
// on ("issued by CN=other-ca", "expected example.com"). The verify callback
// records the first failure into a VerifyInfo that Connect attaches to the
// SSL for the duration of the handshake.

struct VerifyInfo {
  bool failed = false;
  int error = X509_V_OK;
  int depth = 0;
  std::string subject;
  std::string issuer;
};

int VerifyInfoIndex() {
  static const int index =
      SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

std::string NameToString(const X509_NAME* name) {
  if (name == nullptr) return "?";
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return "?";
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  if (n <= 0) return "(empty)";
  return std::string(data, static_cast<size_t>(n));
}

int VerifyCallback(int preverify_ok, X509_STORE_CTX* store) {
  if (preverify_ok) return preverify_ok;
  SSL* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl == nullptr) return preverify_ok;
  auto* info =
      static_cast<VerifyInfo*>(SSL_get_ex_data(ssl, VerifyInfoIndex()));
  if (info != nullptr && !info->failed) {
    info->failed = true;
    info->error = X509_STORE_CTX_get_error(store);
    info->depth = X509_STORE_CTX_get_error_depth(store);
    if (X509* cert = X509_STORE_CTX_get_current_cert(store)) {
      info->subject = NameToString(X509_get_subject_name(cert));
      info->issuer = NameToString(X509_get_issuer_name(cert));
    }
  }
  return preverify_ok;  // fail the handshake
}

// Never prompt on a terminal for a key passphrase (OpenSSL's default).
int NoPassphraseCallback(char*, int, int, void*) { return -1; }

// ---------------------------------------------------------------------------
// OpenSSL error queue → text.

// The reasons in the thread's OpenSSL error queue, oldest first, joined by
// ": "; empties the queue. Remembers whether any reason is an alert from the
// server saying it did not accept our client certificate.
struct SslErrors {
  std::string text;
  bool client_cert_rejected = false;
  bool unexpected_eof = false;
};

SslErrors DrainSslErrors() {
  SslErrors out;
  while (unsigned long e = ERR_get_error()) {  // NOLINT(runtime/int)
    if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
      switch (ERR_GET_REASON(e)) {
        case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
        case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
        case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
          out.client_cert_rejected = true;
          break;
        case SSL_R_UNEXPECTED_EOF_WHILE_READING:
          out.unexpected_eof = true;
          break;
        default:
          break;
      }
    }
    const char* reason = ERR_reason_error_string(e);
    std::string r;
    if (reason != nullptr) {
      r = reason;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof(buf));
      r = buf;
    }
    if (out.text.find(r) != std::string::npos) continue;
    if (!out.text.empty()) out.text += ": ";
    out.text += r;
  }
  return out;
}

std::string ErrnoText(int err) { return std::strerror(err); }

// ---------------------------------------------------------------------------
// Addresses.

struct HostSpec {
  std::string host;  // without brackets
  bool is_ip = false;
  int family = AF_UNSPEC;
};

HostSpec ParseHost(std::string_view host) {
  HostSpec spec;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  spec.host = std::string(host);
  unsigned char buf[sizeof(in6_addr)];
  if (inet_pton(AF_INET, spec.host.c_str(), buf) == 1) {
    spec.is_ip = true;
    spec.family = AF_INET;
  } else if (inet_pton(AF_INET6, spec.host.c_str(), buf) == 1) {
    spec.is_ip = true;
    spec.family = AF_INET6;
  }
  return spec;
}

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

std::string AddrToString(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf,
              sizeof(buf));
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr,
              buf, sizeof(buf));
  }
  return buf;
}

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - Clock::now());
  if (left.count() <= 0) return 0;
  // Round up so a poll never returns a hair before the deadline and spins.
  return static_cast<int>(std::min<int64_t>(left.count() + 1, INT32_MAX));
}

// Waits until `fd` has any of `events` or the deadline passes. Returns
// false on timeout; true when ready (or when poll reports an error
// condition: the following I/O call reports the actual error).
bool WaitFd(int fd, short events, Clock::time_point deadline) {  // NOLINT
  for (;;) {
    int ms = RemainingMs(deadline);
    if (ms == 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == 0) continue;  // recomputes; returns false when really due
    if (errno != EINTR) return true;
  }
}

// Outcome of one TCP connect attempt.
enum class TcpResult { kConnected, kRefused, kTimeout, kOtherError };

TcpResult ConnectTcp(const addrinfo* ai, Clock::time_point deadline,
                     UniqueFd* out, int* err) {
  UniqueFd fd(::socket(ai->ai_family,
                       ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                       ai->ai_protocol));
  if (!fd.valid()) {
    *err = errno;
    return TcpResult::kOtherError;
  }
  int r;
  do {
    r = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    if (errno != EINPROGRESS) {
      *err = errno;
      return errno == ECONNREFUSED ? TcpResult::kRefused
                                   : TcpResult::kOtherError;
    }
    if (!WaitFd(fd.get(), POLLOUT, deadline)) {
      *err = ETIMEDOUT;
      return TcpResult::kTimeout;
    }
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &len) != 0) {
      so_error = errno;
    }
    if (so_error != 0) {
      *err = so_error;
      return so_error == ECONNREFUSED ? TcpResult::kRefused
                                      : TcpResult::kOtherError;
    }
  }
  // KMIP is small request/response messages: do not let Nagle hold back
  // the last segment of a request waiting for an ACK.
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  *out = std::move(fd);
  return TcpResult::kConnected;
}

Status CheckReadable(const std::string& path, const char* what) {
  if (path.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("TLS configuration: no ") + what + " given");
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    int e = errno;
    ErrorCode code = e == ENOENT   ? ErrorCode::kNotFound
                     : e == EACCES ? ErrorCode::kPermissionDenied
                                   : ErrorCode::kIo;
    return MakeError(code, std::string("cannot read ") + what + " " + path +
                               ": " + ErrnoText(e));
  }
  return Status::Ok();
}

}  // namespace

// ===========================================================================
// TlsClient

Result<TlsClient> TlsClient::Create(const TlsConfig& config) {
  if (config.connect_timeout.count() <= 0 || config.io_timeout.count() <= 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TLS configuration: timeouts must be positive");
  }
  if (config.max_message_size < kKmipHeaderSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "TLS configuration: maximum message size below the "
                     "KMIP header size");
  }
  VCRYPT_RETURN_IF_ERROR(CheckReadable(config.ca_file, "CA file"));
  VCRYPT_RETURN_IF_ERROR(
      CheckReadable(config.cert_file, "client certificate file"));
  VCRYPT_RETURN_IF_ERROR(CheckReadable(config.key_file, "client key file"));

  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) {
    return MakeError(ErrorCode::kInternal,
                     "cannot create TLS context: " + DrainSslErrors().text);
  }
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION) != 1) {
    return MakeError(ErrorCode::kInternal, "cannot set minimum TLS version: " +
                                               DrainSslErrors().text);
  }
  // A KMIP client has no use for renegotiation; refusing it removes a
  // class of attacks and surprises mid-request. Responses carry keys:
  // CLEANSE_PLAINTEXT wipes OpenSSL's decrypted record buffers once read,
  // so the only plaintext copy left is the caller's SecureBuffer.
  SSL_CTX_set_options(ctx.get(),
                      SSL_OP_NO_RENEGOTIATION | SSL_OP_CLEANSE_PLAINTEXT);
  SSL_CTX_set_default_passwd_cb(ctx.get(), NoPassphraseCallback);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, VerifyCallback);

  // Only the configured CA: deliberately no SSL_CTX_set_default_verify_paths.
  if (SSL_CTX_load_verify_locations(ctx.get(), config.ca_file.c_str(),
                                    nullptr) != 1) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "CA file " + config.ca_file +
            " holds no usable PEM certificate: " + DrainSslErrors().text);
  }
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), config.cert_file.c_str()) !=
      1) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "client certificate file " + config.cert_file +
            " holds no usable PEM certificate: " + DrainSslErrors().text);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), config.key_file.c_str(),
                                  SSL_FILETYPE_PEM) != 1) {
    // Loading the key also compares it with the certificate loaded above.
    const unsigned long e = ERR_peek_last_error();  // NOLINT(runtime/int)
    if (ERR_GET_LIB(e) == ERR_LIB_X509 &&
        ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      return MakeError(ErrorCode::kInvalidArgument,
                       "client key " + config.key_file +
                           " does not match certificate " + config.cert_file);
    }
    return MakeError(ErrorCode::kInvalidArgument,
                     "client key file " + config.key_file +
                         " holds no usable unencrypted PEM private key: " +
                         DrainSslErrors().text);
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "client key " + config.key_file +
                         " does not match certificate " + config.cert_file);
  }
  // A KMS (PyKMIP, and any server verifying purposes) rejects a client
  // certificate without clientAuth; say so now, naming the file, instead
  // of as an opaque alert from every server.
  if (X509* cert = SSL_CTX_get0_certificate(ctx.get());
      cert == nullptr ||
      X509_check_purpose(cert, X509_PURPOSE_SSL_CLIENT, 0) != 1) {
    ERR_clear_error();
    return MakeError(ErrorCode::kInvalidArgument,
                     "client certificate " + config.cert_file +
                         " is not valid for TLS client authentication "
                         "(its extended key usage must include clientAuth)");
  }
  return TlsClient(std::move(ctx), config);
}

Result<TlsConnection> TlsClient::Connect(std::string_view host, uint16_t port,
                                         std::string_view verify_name) const {
  if (host.empty() || port == 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KMS address needs a host and a non-zero port");
  }
  const HostSpec spec = ParseHost(host);
  const HostSpec verify = verify_name.empty() ? spec : ParseHost(verify_name);

  TlsConnection conn;
  conn.server_ = (spec.family == AF_INET6 ? "[" + spec.host + "]" : spec.host) +
                 ":" + std::to_string(port);
  conn.io_timeout_ = config_.io_timeout;
  conn.max_message_size_ = config_.max_message_size;
  const Clock::time_point deadline = Clock::now() + config_.connect_timeout;

  // --- TCP -----------------------------------------------------------------
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // No AI_ADDRCONFIG: on a host with only loopback up (test VMs) it would
  // hide "localhost".
  hints.ai_flags = AI_NUMERICSERV | (spec.is_ip ? AI_NUMERICHOST : 0);
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  int gai = getaddrinfo(spec.host.c_str(), port_str.c_str(), &hints, &res);
  AddrInfoPtr addrs(res);
  if (gai != 0) {
    return conn.Fail(
        "cannot resolve host name: " +
        std::string(gai == EAI_SYSTEM ? ErrnoText(errno) : gai_strerror(gai)));
  }
  std::string last_error = "no address";
  bool connected = false;
  for (const addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    int err = 0;
    TcpResult r = ConnectTcp(ai, deadline, &conn.fd_, &err);
    if (r == TcpResult::kConnected) {
      connected = true;
      break;
    }
    const std::string where =
        spec.is_ip ? "" : " (" + AddrToString(ai->ai_addr) + ")";
    if (r == TcpResult::kRefused) {
      last_error = "connection refused" + where +
                   ": nothing listening on the port, or a firewall rejects it";
    } else if (r == TcpResult::kTimeout) {
      last_error =
          "TCP connect timed out after " + Ms(config_.connect_timeout) + where;
      break;  // the whole connect budget is spent
    } else {
      last_error = "cannot connect" + where + ": " + ErrnoText(err);
    }
  }
  if (!connected) return conn.Fail(last_error);

  // --- TLS -----------------------------------------------------------------
  ERR_clear_error();
  conn.ssl_.reset(SSL_new(ctx_.get()));
  const BIO_METHOD* method = NoSigpipeSocketMethod();
  BIO* bio = method != nullptr ? BIO_new(method) : nullptr;
  if (!conn.ssl_ || bio == nullptr) {
    BIO_free(bio);
    return conn.Fail("cannot set up TLS: " + DrainSslErrors().text);
  }
  BIO_set_data(bio, reinterpret_cast<void*>(intptr_t{conn.fd_.get()}));
  SSL_set_bio(conn.ssl_.get(), bio, bio);  // the SSL owns the BIO now
  SSL_set_connect_state(conn.ssl_.get());

  bool params_ok;
  if (verify.is_ip) {
    params_ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(conn.ssl_.get()),
                                              verify.host.c_str()) == 1;
  } else {
    SSL_set_hostflags(conn.ssl_.get(), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    params_ok =
        SSL_set1_host(conn.ssl_.get(), verify.host.c_str()) == 1 &&
        SSL_set_tlsext_host_name(conn.ssl_.get(), verify.host.c_str()) == 1;
  }
  if (!params_ok) {
    return conn.Fail("cannot set the expected server name '" + verify.host +
                     "': " + DrainSslErrors().text);
  }

  VerifyInfo info;
  SSL_set_ex_data(conn.ssl_.get(), VerifyInfoIndex(), &info);
  // `info` lives on this stack frame: detach it on every way out.
  struct Detach {
    SSL* ssl;
    ~Detach() {
      if (ssl != nullptr) SSL_set_ex_data(ssl, VerifyInfoIndex(), nullptr);
    }
  } detach{conn.ssl_.get()};

  for (;;) {
    ERR_clear_error();
    int rc = SSL_do_handshake(conn.ssl_.get());
    if (rc == 1) break;
    int err = SSL_get_error(conn.ssl_.get(), rc);
    int saved_errno = errno;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (!WaitFd(conn.fd_.get(), err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                  deadline)) {
        return conn.Fail("TLS handshake timed out after " +
                         Ms(config_.connect_timeout) +
                         " (server accepted the TCP connection but does not "
                         "answer: overloaded, paused, or not a TLS server?)");
      }
      continue;
    }
    SslErrors errors = DrainSslErrors();
    long vr = SSL_get_verify_result(conn.ssl_.get());  // NOLINT(runtime/int)
    if (info.failed || vr != X509_V_OK) {
      int code = info.failed ? info.error : static_cast<int>(vr);
      std::string msg =
          std::string("server certificate verification failed: ") +
          X509_verify_cert_error_string(code);
      if (!info.subject.empty()) {
        msg += " (certificate " + info.subject + ", issued by " + info.issuer;
        if (info.depth > 0)
          msg += ", chain depth " + std::to_string(info.depth);
        msg += ")";
      }
      if (code == X509_V_ERR_HOSTNAME_MISMATCH ||
          code == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        msg += "; expected " + verify.host;
      } else if (code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
                 code == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
                 code == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
                 code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT) {
        msg += "; not issued by a CA in " + config_.ca_file;
      }
      return conn.Fail(msg);
    }
    if (errors.client_cert_rejected) {
      return conn.Fail(
          "TLS handshake failed: the server rejected the client "
          "certificate " +
          config_.cert_file + " (" + errors.text + ")");
    }
    if (err == SSL_ERROR_SYSCALL || errors.unexpected_eof) {
      if (saved_errno != 0 && err == SSL_ERROR_SYSCALL && errors.text.empty()) {
        return conn.Fail("TLS handshake failed: " + ErrnoText(saved_errno));
      }
      return conn.Fail(
          "TLS handshake failed: the server closed the connection (it may "
          "not accept this client, its TLS versions or ciphers)");
    }
    return conn.Fail(
        "TLS handshake failed: " +
        (errors.text.empty() ? std::string("unknown error") : errors.text));
  }
  return conn;
}

// ===========================================================================
// TlsConnection

TlsConnection::TlsConnection(TlsConnection&& other) noexcept
    : fd_(std::move(other.fd_)),
      ssl_(std::move(other.ssl_)),
      server_(std::move(other.server_)),
      io_timeout_(other.io_timeout_),
      max_message_size_(other.max_message_size_),
      failed_(std::exchange(other.failed_, false)) {}

TlsConnection& TlsConnection::operator=(TlsConnection&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::move(other.fd_);
    ssl_ = std::move(other.ssl_);
    server_ = std::move(other.server_);
    io_timeout_ = other.io_timeout_;
    max_message_size_ = other.max_message_size_;
    failed_ = std::exchange(other.failed_, false);
  }
  return *this;
}

TlsConnection::~TlsConnection() { Close(); }

Error TlsConnection::Fail(const std::string& what) {
  failed_ = true;
  ERR_clear_error();
  return MakeError(ErrorCode::kKeyUnavailable,
                   (server_.empty() ? "KMS" : "KMS " + server_) + ": " + what);
}

void TlsConnection::Close() {
  if (ssl_ && !failed_) {
    // One non-blocking attempt to send close_notify; not waiting for the
    // server's. Never after a failure (OpenSSL forbids it after fatal
    // errors, and a stalled server must not delay us).
    ERR_clear_error();
    SSL_shutdown(ssl_.get());
    ERR_clear_error();
  }
  ssl_.reset();
  fd_.reset();
}

std::string_view TlsConnection::protocol_version() const {
  if (!ssl_) return {};
  return SSL_get_version(ssl_.get());
}

bool TlsConnection::IsUsable() {
  if (!ssl_ || !fd_.valid() || failed_) return false;
  pollfd p{fd_.get(), POLLIN | POLLRDHUP, 0};
  int r;
  do {
    r = ::poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r == 0) {
    if (SSL_pending(ssl_.get()) == 0) return true;  // idle and open
    failed_ = true;  // decrypted data nobody asked for (see below)
    return false;
  }
  if (r < 0 || (p.revents & (POLLERR | POLLNVAL))) {
    failed_ = true;
    return false;
  }
  // Something arrived while no request was outstanding. TLS 1.3 session
  // tickets are fine (SSL_peek consumes them and wants more); close_notify,
  // EOF or unsolicited application data mean the connection is done (KMIP
  // is strictly request/response, so stray data cannot be resynchronised).
  ERR_clear_error();
  unsigned char c;
  size_t n = 0;
  int rc = SSL_peek_ex(ssl_.get(), &c, 1, &n);
  int err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_.get(), rc);
  ERR_clear_error();
  if (err == SSL_ERROR_WANT_READ) return true;
  failed_ = true;
  return false;
}

Status TlsConnection::Send(std::span<const uint8_t> message) {
  if (!ssl_ || failed_) {
    return Fail(server_.empty() ? "not connected"
                                : "connection unusable after an earlier "
                                  "failure; reconnect");
  }
  const Clock::time_point deadline = Clock::now() + io_timeout_;
  size_t off = 0;
  while (off < message.size()) {
    ERR_clear_error();
    size_t written = 0;
    int rc = SSL_write_ex(ssl_.get(), message.data() + off,
                          message.size() - off, &written);
    if (rc == 1) {
      off += written;
      continue;
    }
    int err = SSL_get_error(ssl_.get(), rc);
    int saved_errno = errno;
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
      if (!WaitFd(fd_.get(), err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                  deadline)) {
        return Fail("timed out after " + Ms(io_timeout_) +
                    " sending a request (server not reading)");
      }
      continue;
    }
    SslErrors errors = DrainSslErrors();
    if (err == SSL_ERROR_SYSCALL && saved_errno != 0) {
      return Fail("cannot send request: " + ErrnoText(saved_errno));
    }
    if (err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL ||
        errors.unexpected_eof) {
      return Fail("cannot send request: the server closed the connection");
    }
    return Fail("cannot send request: " + errors.text);
  }
  return Status::Ok();
}

Result<SecureBuffer> TlsConnection::ReadKmipMessage() {
  if (!ssl_ || failed_) {
    return Fail(server_.empty() ? "not connected"
                                : "connection unusable after an earlier "
                                  "failure; reconnect");
  }
  const Clock::time_point deadline = Clock::now() + io_timeout_;

  // Reads exactly `len` bytes into `buf`; `total`/`done_before` only make
  // the error messages say how far the message got.
  auto read_exact = [&](uint8_t* buf, size_t len, size_t done_before,
                        size_t total) -> Status {
    size_t off = 0;
    while (off < len) {
      ERR_clear_error();
      size_t got = 0;
      int rc = SSL_read_ex(ssl_.get(), buf + off, len - off, &got);
      if (rc == 1) {
        off += got;
        continue;
      }
      int err = SSL_get_error(ssl_.get(), rc);
      int saved_errno = errno;
      const size_t have = done_before + off;
      const std::string progress =
          have == 0
              ? std::string()
              : " after " + std::to_string(have) + " of " +
                    (total == 0 ? std::string("?") : std::to_string(total)) +
                    " bytes of the response";
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        if (!WaitFd(fd_.get(), err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                    deadline)) {
          return Fail(have == 0 ? "no response within " + Ms(io_timeout_) +
                                      " (server stalled or overloaded)"
                                : "response incomplete within " +
                                      Ms(io_timeout_) + progress);
        }
        continue;
      }
      SslErrors errors = DrainSslErrors();
      if (err == SSL_ERROR_ZERO_RETURN ||
          (err == SSL_ERROR_SYSCALL && saved_errno == 0) ||
          errors.unexpected_eof) {
        return Fail(
            "the server closed the connection" +
            (have == 0 ? std::string(" without a response") : progress));
      }
      if (err == SSL_ERROR_SYSCALL) {
        return Fail("cannot read response: " + ErrnoText(saved_errno) +
                    progress);
      }
      if (errors.client_cert_rejected) {
        // TLS 1.3: the server checks our certificate after the client
        // considers the handshake done, so its alert arrives here.
        return Fail("the server rejected the client certificate (" +
                    errors.text + ")");
      }
      return Fail("cannot read response: " + errors.text + progress);
    }
    return Status::Ok();
  };

  uint8_t header[kKmipHeaderSize];
  VCRYPT_RETURN_IF_ERROR(read_exact(header, sizeof(header), 0, 0));
  const uint32_t body_len = (uint32_t{header[4]} << 24) |
                            (uint32_t{header[5]} << 16) |
                            (uint32_t{header[6]} << 8) | uint32_t{header[7]};
  constexpr uint8_t kTypeStructure = 0x01;
  if (header[3] != kTypeStructure || body_len % 8 != 0) {
    char hex[3 * kKmipHeaderSize + 1];
    for (size_t i = 0; i < kKmipHeaderSize; ++i) {
      std::snprintf(hex + 3 * i, 4, "%02x ", header[i]);
    }
    hex[3 * kKmipHeaderSize - 1] = '\0';
    return Fail(std::string("response is not a KMIP message (header ") + hex +
                "): is this port a KMIP server?");
  }
  if (body_len > max_message_size_ - kKmipHeaderSize) {
    return Fail("response of " + std::to_string(kKmipHeaderSize + body_len) +
                " bytes exceeds the limit of " +
                std::to_string(max_message_size_) + " bytes");
  }
  const size_t total = kKmipHeaderSize + body_len;
  SecureBuffer message(total);
  std::memcpy(message.data(), header, kKmipHeaderSize);
  VCRYPT_RETURN_IF_ERROR(read_exact(message.data() + kKmipHeaderSize, body_len,
                                    kKmipHeaderSize, total));
  return message;
}

Result<SecureBuffer> TlsConnection::RoundTrip(
    std::span<const uint8_t> request) {
  VCRYPT_RETURN_IF_ERROR(Send(request));
  return ReadKmipMessage();
}

}  // namespace vcrypt
