// The host's HTTPS client of the Trust Authority services (docs/trusted.md,
// "HTTP API"; the routes are trustauthority/http.h): JSON over HTTPS with
// cpp-httplib, one client per service URL.
//
// Trust: the configured CA file is the only trust anchor (no system CAs),
// the server certificate must verify and name the URL's host (DNS or IP
// subjectAltName), TLS 1.2 or later.
//
// Connections are kept alive between requests (HTTP/1.1 keep-alive, up to
// 4 idle ones, each reused only within TaClientOptions::idle_timeout, below
// vcrypt-ta's own 2 s keep-alive timeout, so a request never races the
// server closing the connection), and a new connection offers the TLS
// session the server last issued (session resumption: no certificate
// chain, no server signature). A KEK fetch with a cached token is then one
// round trip on an open connection (bench/trusted_bench.sh). Requests from
// several threads at once each take their own connection.
//
// Errors, one line each, naming the service and its URL:
//   kKeyUnavailable    not reachable (connect, TLS handshake, timeout, I/O;
//                      the reason is named) or the service failed (5xx,
//                      an answer that is not the documented JSON)
//   kPermissionDenied  403 permission_denied (and any other 403)
//   kCrypto            403 crypto (a signature, quote or ciphertext check)
//   kNotFound          404 (e.g. the host is not registered)
//   kInvalidArgument   400 (the service found the request malformed)
// For an HTTP error the message is the service's own one-line
// {"error":{"code","message"}} message.
//
// Nothing secret travels in clear here except the one-time enrollment
// secret (which the service consumes on first use): KEKs come sealed to a
// one-time transport key (taprotocol/transport.h).
#ifndef VCRYPT_KEYPROVIDERS_TRUSTED_TA_CLIENT_H_
#define VCRYPT_KEYPROVIDERS_TRUSTED_TA_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "taprotocol/transport.h"

namespace vcrypt {

// "https://HOST[:PORT][/PREFIX]" taken apart. HOST may be a name, an IPv4
// address or a bracketed IPv6 address; PORT defaults to 443; PREFIX (no
// trailing '/') is put before every route, for services behind a reverse
// proxy under a path.
struct TaUrl {
  std::string url;  // normalised: no trailing '/'
  std::string host;
  int port = 443;
  std::string prefix;
};
// kInvalidArgument (one line naming the URL) for anything but https, a
// missing host, a bad port, userinfo, a query or a fragment.
Result<TaUrl> ParseTaUrl(std::string_view url);

// Every request has a total deadline: connect, TLS handshake, sending the
// request and receiving the whole answer together, so a server that
// trickles a byte at a time (each read well within io_timeout) is still
// cut off. Answers are refused, without being read further, once they
// exceed max_response_bytes (the documented answers are a few KiB).
struct TaClientOptions {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds io_timeout{10000};  // read and write, each
  // The whole request; 0: connect_timeout + io_timeout.
  std::chrono::milliseconds deadline{0};
  size_t max_response_bytes = size_t{1} << 20;  // of the body
  // How long an idle connection is kept for reuse.
  std::chrono::milliseconds idle_timeout{1000};
};

// What a TaClient's connections did (tests and the benchmark).
struct TaClientStats {
  uint64_t connections_made = 0;  // TCP connections opened
  uint64_t sessions_resumed = 0;  // of those, TLS handshakes resumed
  uint64_t requests = 0;
};

struct TaEnrollChallenge {
  std::string id;
  std::vector<uint8_t> credential_blob;   // TPM2B_ID_OBJECT
  std::vector<uint8_t> encrypted_secret;  // TPM2B_ENCRYPTED_SECRET
};

struct TaNonce {
  std::vector<uint8_t> nonce;
  uint16_t bank = 0;  // TPM_ALG_ID of the PCR bank to quote
  std::vector<int> pcrs;
  int64_t expires = 0;  // unix seconds
};

struct TaKekGrant {
  std::string kek_id;
  std::string ciphertext;  // not secret: goes into the volume tokens
  SealedKey kek;           // sealed to the request's transport key
};

class TaClient {
 public:
  // `service` names the service in messages ("attestation service", "key
  // provider service"). `ca_file` is a PEM file of trust anchors; it is
  // read at each connection, so it must stay where it is.
  static Result<TaClient> Create(std::string service, std::string_view url,
                                 std::string ca_file,
                                 TaClientOptions options = {});

  const std::string& url() const { return url_.url; }
  TaClientStats stats() const;
  const std::string& service() const { return service_; }

  // One POST of a JSON object to `route` ("/v1/..."); the answer's JSON
  // object on 2xx. Errors as in the file comment.
  Result<nlohmann::json> Post(std::string_view route,
                              const nlohmann::json& body) const;

  // --- attestation service ---
  // POST /v1/enroll. `ek`, `ak`: TPM2B_PUBLIC; `ek_cert`: DER.
  Result<TaEnrollChallenge> Enroll(
      const std::string& host, std::span<const uint8_t> ek,
      const std::optional<std::vector<uint8_t>>& ek_cert,
      std::span<const uint8_t> ak) const;
  // POST /v1/enroll/finish with the secret the TPM recovered.
  Status EnrollFinish(const std::string& id, const SecureBuffer& secret) const;
  // POST /v1/nonce.
  Result<TaNonce> Nonce(const std::string& host) const;
  // POST /v1/attest: the quote (made over QuoteQualifyingData(nonce,
  // session_point), taprotocol/proof.h) and the session key's point
  // the token is to be bound to, with the host's binary firmware event
  // log if given (`event_log`, sent base64). Returns the token.
  Result<std::string> Attest(
      const std::string& host, std::span<const uint8_t> nonce,
      std::span<const uint8_t> attest, std::span<const uint8_t> signature,
      const std::vector<std::vector<uint8_t>>& pcr_values,
      std::span<const uint8_t> session_point,
      const std::optional<std::vector<uint8_t>>& event_log =
          std::nullopt) const;

  // --- key provider service ---
  // POST /v1/kek: a new KEK sealed to `transport_point`.
  Result<TaKekGrant> CreateKek(std::string_view token, std::string_view proof,
                               std::span<const uint8_t> transport_point) const;
  // POST /v1/kek/unwrap: the KEK of `ciphertext` sealed to
  // `transport_point`.
  Result<SealedKey> UnwrapKek(std::string_view token, std::string_view proof,
                              std::string_view ciphertext,
                              std::span<const uint8_t> transport_point) const;

  // ta_client.cc; public for its OpenSSL callbacks.
  struct Conn;
  struct Pool;

 private:
  TaClient(std::string service, TaUrl url, std::string ca_file,
           TaClientOptions options);
  std::unique_ptr<Conn> TakeConnection() const;
  void ReturnConnection(std::unique_ptr<Conn> c) const;
  std::chrono::milliseconds Deadline() const;

  std::string service_;
  TaUrl url_;
  std::string ca_file_;
  TaClientOptions options_;
  // Shared by copies of this client (and alive while a request uses it).
  std::shared_ptr<Pool> pool_;
};

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_TRUSTED_TA_CLIENT_H_
