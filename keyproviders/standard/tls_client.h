// TLS transport for the KMIP client: mutual TLS to one KMS server, and
// framing of KMIP TTLV messages on that connection.
//
// Two objects:
//  - TlsClient holds the configuration loaded once (trust anchor, client
//    certificate and key, timeouts) as an SSL_CTX. It is immutable after
//    Create and safe to Connect from several threads at once.
//  - TlsConnection is one connection to one server: move-only, owns its
//    socket and SSL, not thread-safe (one request/response at a time), and
//    independent of the TlsClient's lifetime once made.
//
// Security decisions:
//  - The CA file is the ONLY trust anchor: the system's default CA paths
//    are never loaded, so a public CA cannot vouch for a KMS.
//  - The server certificate must match the name or IP address the caller
//    expects (SSL_set1_host / X509_VERIFY_PARAM_set1_ip_asc); SNI is sent
//    for names only (RFC 6066 forbids IP literals in SNI).
//  - TLS 1.2 minimum, 1.3 allowed (PyKMIP 0.10 speaks only 1.2).
//  - Key files are never prompted for: an encrypted private key is a
//    configuration error, not a read from the terminal.
//  - Nothing here logs or prints; everything is reported as an Error whose
//    one-line message names the server ("KMS HOST:PORT: ...").
//  - SIGPIPE is never raised: the socket is written with MSG_NOSIGNAL, so
//    a server that went away is an error value, not a dead process.
//  - Responses carry keys: they are returned in a SecureBuffer, and
//    OpenSSL's decrypted record buffers are wiped once read
//    (SSL_OP_CLEANSE_PLAINTEXT).
//  - All sockets are non-blocking and every wait is a poll(2) against a
//    deadline, so a stalled or SIGSTOPped server costs at most the
//    configured timeout, never a hang.
//
// FAILOVER CONTRACT (how the KMS cluster tells transport failures apart):
//  - TlsClient::Create fails only for configuration problems (kNotFound,
//    kPermissionDenied, kInvalidArgument, kIo, kInternal). The same
//    configuration is used for every server: never fail over on these.
//  - Every error returned by TlsClient::Connect, TlsConnection::Send,
//    ReadKmipMessage and RoundTrip is a TRANSPORT failure with code
//    ErrorCode::kKeyUnavailable (refused, unreachable, timeout, DNS,
//    certificate verification, handshake, reset, closed, framing), except
//    kInvalidArgument from Connect for an empty host or port 0 (a caller
//    bug). IsTransportError() encodes exactly this rule.
//  - So: fail over to the next server iff IsTransportError(e) for an error
//    from this header. A KMIP result error (Operation Failed, Item Not
//    Found, ...) is found by decoding a message that ReadKmipMessage
//    returned successfully, i.e. it never comes from here, and must never
//    trigger failover. Apply IsTransportError at the transport call site,
//    not to errors that have passed through other layers (those may use
//    kKeyUnavailable for their own reasons).
//  - After any transport failure the connection is dead (IsUsable() is
//    false): close it and Connect again rather than retrying on it; a
//    request on a dead connection may or may not have reached the server.
#ifndef VCRYPT_KEYPROVIDERS_STANDARD_TLS_CLIENT_H_
#define VCRYPT_KEYPROVIDERS_STANDARD_TLS_CLIENT_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "common/handles.h"
#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// A KMIP message starts with an 8-byte TTLV header: tag (3 bytes), type
// (1 byte, 0x01 = Structure for every Request/Response Message), length of
// the value (4 bytes, big-endian).
inline constexpr size_t kKmipHeaderSize = 8;
inline constexpr size_t kDefaultMaxKmipMessageSize = size_t{1} << 20;  // 1 MiB

struct TlsConfig {
  // PEM file with the CA certificate(s) that issued the KMS server
  // certificates. The only trust anchor.
  std::string ca_file;
  // PEM client certificate (optionally followed by its intermediates) and
  // its unencrypted PEM private key, for mutual TLS. The certificate must
  // be valid for TLS client authentication (clientAuth EKU if it has EKUs).
  std::string cert_file;
  std::string key_file;
  // Bounds establishing a connection: TCP connect plus the TLS handshake.
  // One budget for all addresses a name resolves to, tried in turn (a
  // refused address costs nothing; a silent one uses up the budget). Name
  // resolution itself uses the system resolver and its own timeouts
  // (resolv.conf).
  std::chrono::milliseconds connect_timeout{5000};
  // Bounds each Send and each ReadKmipMessage as a whole (not each
  // read(2)), so a server that stalls or trickles bytes cannot hold a
  // caller longer than this. RoundTrip may take up to twice this.
  std::chrono::milliseconds io_timeout{30000};
  // Largest message ReadKmipMessage accepts, header included. A larger
  // length in a header is refused before anything is allocated.
  size_t max_message_size = kDefaultMaxKmipMessageSize;
};

// True iff `error`, returned by TlsClient::Connect or a TlsConnection
// method, is a transport failure on which the KMS cluster fails over to
// the next server. See the FAILOVER CONTRACT above.
inline bool IsTransportError(const Error& error) {
  return error.code == ErrorCode::kKeyUnavailable;
}

class TlsConnection;

class TlsClient {
 public:
  // Loads and checks the CA file, client certificate and key (the key must
  // match the certificate). Errors are configuration errors (see above)
  // naming the offending file.
  static Result<TlsClient> Create(const TlsConfig& config);

  TlsClient(TlsClient&&) noexcept = default;
  TlsClient& operator=(TlsClient&&) noexcept = default;

  // Connects to host:port and completes a mutually authenticated TLS
  // handshake within config.connect_timeout.
  //  - `host`: DNS name, IPv4 literal or IPv6 literal (with or without
  //    brackets). Names may resolve to several addresses; each is tried.
  //  - `verify_name`: the name or IP literal the server certificate must
  //    carry (subjectAltName); empty means `host`. Lets a caller connect to
  //    an address while verifying the name in the certificate.
  // Errors: kKeyUnavailable (transport, see above) or kInvalidArgument for
  // an empty host / port 0.
  Result<TlsConnection> Connect(std::string_view host, uint16_t port,
                                std::string_view verify_name = {}) const;

  const TlsConfig& config() const { return config_; }

 private:
  TlsClient(SslCtxPtr ctx, TlsConfig config)
      : ctx_(std::move(ctx)), config_(std::move(config)) {}

  SslCtxPtr ctx_;
  TlsConfig config_;
};

class TlsConnection {
 public:
  // An empty connection: IsUsable() is false, I/O fails. Lets a caller keep
  // "one connection per server" in a plain member and fill it on demand.
  TlsConnection() = default;
  TlsConnection(const TlsConnection&) = delete;
  TlsConnection& operator=(const TlsConnection&) = delete;
  TlsConnection(TlsConnection&& other) noexcept;
  TlsConnection& operator=(TlsConnection&& other) noexcept;
  // Close().
  ~TlsConnection();

  // Writes `message` (one complete KMIP request; it may hold key material
  // and is not copied) within config.io_timeout. Transport errors only.
  Status Send(std::span<const uint8_t> message);

  // Reads exactly one KMIP message: the 8-byte header, then exactly the
  // length it announces, all within config.io_timeout. Refuses (without
  // reading further) a header whose type is not Structure, whose length is
  // not a multiple of 8, or whose total size exceeds
  // config.max_message_size. Returns header + body in a SecureBuffer
  // (responses carry key material). Transport errors only.
  Result<SecureBuffer> ReadKmipMessage();

  // Send(request) then ReadKmipMessage(): one KMIP request/response.
  Result<SecureBuffer> RoundTrip(std::span<const uint8_t> request);

  // True if the connection can carry another request: connected, no
  // earlier failure, and the server has not closed it or sent anything
  // unsolicited meanwhile (checked without blocking). A false result is
  // final. A true result is not a promise: a server can still vanish
  // silently (the I/O timeout catches that).
  bool IsUsable();

  // Best-effort TLS close_notify (not after a failure, never blocking),
  // then frees the SSL and closes the socket. Idempotent.
  void Close();

  // "HOST:PORT" as given to Connect ("[v6]:PORT" for IPv6 literals); empty
  // for an empty connection.
  const std::string& server() const { return server_; }
  // Negotiated protocol, e.g. "TLSv1.2"; empty for an empty connection.
  std::string_view protocol_version() const;

 private:
  friend class TlsClient;

  // Marks the connection dead and returns the transport error
  // "KMS <server>: <what>".
  Error Fail(const std::string& what);

  // Member order matters for destruction: ssl_ (and the BIO inside it,
  // which only borrows the fd) goes before fd_.
  UniqueFd fd_;
  SslPtr ssl_;
  std::string server_;
  std::chrono::milliseconds io_timeout_{0};
  size_t max_message_size_ = 0;
  bool failed_ = false;
};

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_STANDARD_TLS_CLIENT_H_
