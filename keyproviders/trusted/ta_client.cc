#include "keyproviders/trusted/ta_client.h"

#include <fcntl.h>
#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/base64.h"
#include "common/handles.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

Error BadUrl(std::string_view url, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "bad Trust Authority URL '" + std::string(url) +
                       "': " + why + " (use https://HOST[:PORT][/PATH])");
}

// A server-supplied message made safe for a one-line error: printable
// ASCII only, bounded.
std::string OneLine(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (out.size() >= 300) {
      out += "...";
      break;
    }
    unsigned char u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : ' ';
  }
  return out;
}

std::string Ms(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " ms";
}

// Counts the certificates in a PEM file (0 when unreadable).
int CountPemCertificates(const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return 0;
  int n = 0;
  for (;;) {
    X509Ptr c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!c) break;
    ++n;
  }
  ERR_clear_error();
  return n;
}

// Wipes a string that held something secret-ish before it is freed.
void Wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

}  // namespace

Result<TaUrl> ParseTaUrl(std::string_view url) {
  constexpr std::string_view kScheme = "https://";
  if (url.size() < kScheme.size() ||
      !std::equal(kScheme.begin(), kScheme.end(), url.begin(),
                  [](char a, char b) { return a == std::tolower(b); }))
    return BadUrl(url, "only https is supported");
  std::string_view rest = url.substr(kScheme.size());
  if (rest.find_first_of("?#@ \t\r\n") != std::string_view::npos)
    return BadUrl(url, "no user, query, fragment or spaces allowed");
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path =
      slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  TaUrl u;
  std::string_view port;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return BadUrl(url, "unclosed '['");
    u.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return BadUrl(url, "junk after the address");
      port = after.substr(1);
      if (port.empty()) return BadUrl(url, "empty port");
    }
  } else {
    size_t colon = authority.find(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return BadUrl(url, "empty port");
    }
  }
  if (u.host.empty()) return BadUrl(url, "no host");
  for (char c : u.host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
          c == ':' || c == '_'))
      return BadUrl(url, "bad character in the host");
  if (!port.empty()) {
    if (port.size() > 5) return BadUrl(url, "bad port");
    int p = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return BadUrl(url, "bad port");
      p = p * 10 + (c - '0');
    }
    if (p < 1 || p > 65535) return BadUrl(url, "bad port");
    u.port = p;
  }
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  u.prefix = std::string(path);
  std::string host_part =
      u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
  u.url = "https://" + host_part +
          (u.port == 443 ? "" : ":" + std::to_string(u.port)) + u.prefix;
  return u;
}

Result<TaClient> TaClient::Create(std::string service, std::string_view url,
                                  std::string ca_file,
                                  TaClientOptions options) {
  VCRYPT_ASSIGN_OR_RETURN(TaUrl u, ParseTaUrl(url));
  if (CountPemCertificates(ca_file) == 0)
    return MakeError(ErrorCode::kInvalidArgument,
                     "CA file " + ca_file +
                         " holds no PEM certificate (give the CA that issued "
                         "the " +
                         service + "'s certificate)");
  return TaClient(std::move(service), std::move(u), std::move(ca_file),
                  options);
}

TaClient::TaClient(std::string service, TaUrl url, std::string ca_file,
                   TaClientOptions options)
    : service_(std::move(service)),
      url_(std::move(url)),
      ca_file_(std::move(ca_file)),
      options_(options),
      pool_(std::make_shared<Pool>()) {}

namespace {

// Enforces a request's total deadline from a second thread. cpp-httplib
// only bounds each connect, read and write; the watchdog shuts the
// request's socket down when the deadline passes, which ends whatever the
// request is blocked in (handshake, read, write) at once. It works on its
// own dup(2) of the socket, so it never touches a descriptor number that
// cpp-httplib has closed and the process has reused.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::steady_clock::time_point deadline)
      : deadline_(deadline), thread_([this] { Run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
    if (fd_ >= 0) close(fd_);
  }
  // The socket cpp-httplib just created (several when a name has several
  // addresses: the last one counts).
  void Watch(int sock) {
    std::lock_guard lock(mu_);
    if (fd_ >= 0) close(fd_);
    fd_ = fcntl(sock, F_DUPFD_CLOEXEC, 0);
    if (expired_ && fd_ >= 0) shutdown(fd_, SHUT_RDWR);
  }
  bool expired() const {
    std::lock_guard lock(mu_);
    return expired_;
  }

 private:
  void Run() {
    std::unique_lock lock(mu_);
    if (cv_.wait_until(lock, deadline_, [this] { return done_; })) return;
    expired_ = true;
    // Again every 20 ms: a socket still connecting ignores shutdown(2).
    do {
      if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
    } while (!cv_.wait_for(lock, std::chrono::milliseconds(20),
                           [this] { return done_; }));
  }

  const std::chrono::steady_clock::time_point deadline_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool expired_ = false;
  int fd_ = -1;
  std::thread thread_;  // last: starts once the rest is initialised
};

}  // namespace

// The connections a TaClient keeps open between requests (HTTP
// keep-alive) and the TLS session it resumes when it has to open a new one.
struct TaClient::Conn {
  std::unique_ptr<httplib::SSLClient> cli;
  Watchdog* watchdog = nullptr;  // of the request in flight, if any
  int fd = -1;                   // cpp-httplib's socket (not owned)
  std::chrono::steady_clock::time_point idle_since;
};

struct TaClient::Pool {
  static constexpr size_t kMaxIdle = 4;

  std::mutex mu;
  std::vector<std::unique_ptr<Conn>> idle;  // most recently used last
  SslSessionPtr session;                    // the server's latest ticket
  std::atomic<uint64_t> connections{0}, resumed{0}, requests{0};
};

namespace {

// The Pool an SSL_CTX made by a TaClient belongs to (its ex_data slot).
int PoolIndex() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// Client-side session cache of one: OpenSSL hands each new session (a
// TLS 1.3 ticket, after the handshake) here; the next connection offers
// it. Returns 1: the Pool keeps the reference.
int OnNewSession(SSL* ssl, SSL_SESSION* session) {
  auto* pool = static_cast<TaClient::Pool*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), PoolIndex()));
  if (pool == nullptr) return 0;
  std::lock_guard lock(pool->mu);
  pool->session.reset(session);
  return 1;
}

// cpp-httplib 0.11 creates the SSL object and connects in one call, with
// no hook in between; the info callback's "handshake start" comes before
// the ClientHello is built, which is where OpenSSL reads the session to
// offer. Only for a fresh connection (SSL_in_before); the server still
// decides, and a resumed session carries the verify result and the
// certificate of the handshake that made it, which cpp-httplib checks
// (host name included) as for a full handshake.
void OnInfo(const SSL* ssl, int where, int) {
  auto* pool = static_cast<TaClient::Pool*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), PoolIndex()));
  if (pool == nullptr) return;
  if ((where & SSL_CB_HANDSHAKE_DONE) && SSL_session_reused(ssl)) {
    pool->resumed++;
    return;
  }
  if (!(where & SSL_CB_HANDSHAKE_START) || !SSL_in_before(ssl)) return;
  std::lock_guard lock(pool->mu);
  if (pool->session && SSL_SESSION_is_resumable(pool->session.get()))
    SSL_set_session(const_cast<SSL*>(ssl), pool->session.get());
}

}  // namespace

TaClientStats TaClient::stats() const {
  return {pool_->connections.load(), pool_->resumed.load(),
          pool_->requests.load()};
}

std::unique_ptr<TaClient::Conn> TaClient::TakeConnection() const {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(pool_->mu);
    while (!pool_->idle.empty()) {
      std::unique_ptr<Conn> c = std::move(pool_->idle.back());
      pool_->idle.pop_back();
      // Idle too long: the server may be closing it right now (vcrypt-ta
      // closes after 2 s); a request must never race that.
      if (now - c->idle_since < options_.idle_timeout) return c;
    }
  }
  auto c = std::make_unique<Conn>();
  c->cli = std::make_unique<httplib::SSLClient>(url_.host, url_.port);
  httplib::SSLClient& cli = *c->cli;
  // The configured CA only: a path (not an X509_STORE) because with a store
  // cpp-httplib 0.11 would add the system's default CA locations to it.
  cli.set_ca_cert_path(ca_file_);
  cli.enable_server_certificate_verification(true);
  if (SSL_CTX* ctx = cli.ssl_context()) {
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_ex_data(ctx, PoolIndex(), pool_.get());
    SSL_CTX_set_session_cache_mode(
        ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, OnNewSession);
    SSL_CTX_set_info_callback(ctx, OnInfo);
  }
  auto sec = [](std::chrono::milliseconds d) {
    return std::pair<time_t, time_t>(d.count() / 1000,
                                     (d.count() % 1000) * 1000);
  };
  auto [cs, cus] = sec(std::min(options_.connect_timeout, Deadline()));
  auto [is, ius] = sec(options_.io_timeout);
  cli.set_connection_timeout(cs, cus);
  cli.set_read_timeout(is, ius);
  cli.set_write_timeout(is, ius);
  cli.set_keep_alive(true);
  // A request is written in pieces (headers, body): without TCP_NODELAY
  // the body waits for the server's delayed ACK (40 ms) on a reused
  // connection.
  cli.set_tcp_nodelay(true);
  cli.set_follow_location(false);
  Conn* raw = c.get();
  cli.set_socket_options([raw, pool = pool_.get()](socket_t sock) {
    raw->fd = sock;
    pool->connections++;
    if (raw->watchdog) raw->watchdog->Watch(sock);
  });
  return c;
}

void TaClient::ReturnConnection(std::unique_ptr<Conn> c) const {
  c->watchdog = nullptr;
  c->idle_since = std::chrono::steady_clock::now();
  std::lock_guard lock(pool_->mu);
  pool_->idle.push_back(std::move(c));
  if (pool_->idle.size() > Pool::kMaxIdle)
    pool_->idle.erase(pool_->idle.begin());  // the oldest
}

std::chrono::milliseconds TaClient::Deadline() const {
  return options_.deadline.count() > 0
             ? options_.deadline
             : options_.connect_timeout + options_.io_timeout;
}

Result<Json> TaClient::Post(std::string_view route, const Json& body) const {
  const std::string where = service_ + " " + url_.url;
  const std::chrono::milliseconds total = Deadline();
  Watchdog watchdog(std::chrono::steady_clock::now() + total);
  std::unique_ptr<Conn> conn = TakeConnection();
  conn->watchdog = &watchdog;
  if (conn->fd >= 0) watchdog.Watch(conn->fd);  // a kept-alive connection
  httplib::SSLClient& cli = *conn->cli;
  pool_->requests++;

  httplib::Request req;
  req.method = "POST";
  req.path = url_.prefix + std::string(route);
  req.set_header("Content-Type", "application/json");
  req.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  // The body as it arrives, refused past the limit (on the announced
  // length alone when there is one) rather than read to the end.
  std::string answer_text;
  bool too_large = false;
  const size_t limit = options_.max_response_bytes;
  req.content_receiver = [&](const char* data, size_t n, uint64_t,
                             uint64_t announced) {
    if (announced > limit || answer_text.size() + n > limit) {
      too_large = true;
      return false;
    }
    answer_text.append(data, n);
    return true;
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  const bool sent = cli.send(req, response, error);
  Wipe(req.body);
  conn->watchdog = nullptr;
  // Kept for the next request only after a complete, well-behaved answer
  // the server did not ask to close; anything else closes it (~SSLClient).
  if (sent && !too_large && !watchdog.expired() &&
      response.get_header_value("Connection") != "close")
    ReturnConnection(std::move(conn));
  if (too_large)
    return MakeError(ErrorCode::kKeyUnavailable,
                     where + " sent an answer larger than " +
                         std::to_string(limit) + " bytes (refused)");
  if (!sent) {
    // Whatever cpp-httplib saw when the socket went away.
    if (watchdog.expired())
      return MakeError(ErrorCode::kKeyUnavailable,
                       where + " unreachable: no complete answer within the " +
                           "deadline of " + Ms(total));
    std::string why;
    switch (error) {
      case httplib::Error::Connection:
        why =
            "cannot connect (no such host, connection refused or "
            "unreachable)";
        break;
      case httplib::Error::ConnectionTimeout:
        why = "connection timed out after " +
              Ms(std::min(options_.connect_timeout, total));
        break;
      case httplib::Error::SSLConnection:
        why = "TLS handshake failed";
        break;
      case httplib::Error::SSLLoadingCerts:
        why = "cannot load the CA file " + ca_file_;
        break;
      case httplib::Error::SSLServerVerification: {
        long v = cli.get_openssl_verify_result();
        why = v != X509_V_OK
                  ? std::string("server certificate not trusted (") +
                        X509_verify_cert_error_string(v) +
                        "; is --ca the CA that issued it?)"
                  : "server certificate does not name host '" + url_.host + "'";
        break;
      }
      case httplib::Error::Read:
        why = "no answer (read failed or timed out after " +
              Ms(options_.io_timeout) + ")";
        break;
      case httplib::Error::Write:
        why = "cannot send the request";
        break;
      default:
        why = httplib::to_string(error);
    }
    return MakeError(ErrorCode::kKeyUnavailable,
                     where + " unreachable: " + why);
  }
  Json answer = Json::parse(answer_text, nullptr, false);
  if (response.status >= 200 && response.status < 300) {
    if (!answer.is_object())
      return MakeError(ErrorCode::kKeyUnavailable,
                       where + " sent an answer that is not a JSON object");
    return answer;
  }
  std::string message;
  std::string code_name;
  if (answer.is_object() && answer.contains("error") &&
      answer["error"].is_object()) {
    const Json& e = answer["error"];
    if (e.contains("message") && e["message"].is_string())
      message = OneLine(e["message"].get<std::string>());
    if (e.contains("code") && e["code"].is_string())
      code_name = e["code"].get<std::string>();
  }
  if (message.empty()) message = "HTTP " + std::to_string(response.status);
  ErrorCode code;
  switch (response.status) {
    case 400:
      code = ErrorCode::kInvalidArgument;
      break;
    case 403:
      code = code_name == "crypto" ? ErrorCode::kCrypto
                                   : ErrorCode::kPermissionDenied;
      break;
    case 404:
      code = ErrorCode::kNotFound;
      break;
    default:  // 5xx and anything undocumented: the service failed
      code = ErrorCode::kKeyUnavailable;
  }
  return MakeError(code, where + ": " + message);
}

namespace {

// Members of an answer; a missing or mistyped one means the service does
// not speak this protocol (kKeyUnavailable: nothing the host can fix).
Error Malformed(const TaClient& c, const std::string& what) {
  return MakeError(
      ErrorCode::kKeyUnavailable,
      c.service() + " " + c.url() + " sent a malformed answer (" + what + ")");
}

Result<std::string> Str(const TaClient& c, const Json& j, const char* name) {
  if (!j.contains(name) || !j[name].is_string())
    return Malformed(c, std::string("'") + name + "' missing");
  return j[name].get<std::string>();
}

Result<std::vector<uint8_t>> Bytes(const TaClient& c, const Json& j,
                                   const char* name) {
  VCRYPT_ASSIGN_OR_RETURN(std::string s, Str(c, j, name));
  auto b = Base64Decode(s);
  if (!b.ok()) return Malformed(c, std::string("'") + name + "' not base64");
  return b;
}

}  // namespace

Result<TaEnrollChallenge> TaClient::Enroll(
    const std::string& host, std::span<const uint8_t> ek,
    const std::optional<std::vector<uint8_t>>& ek_cert,
    std::span<const uint8_t> ak) const {
  Json body = {
      {"host", host}, {"ek", Base64Encode(ek)}, {"ak", Base64Encode(ak)}};
  if (ek_cert) body["ek_cert"] = Base64Encode(*ek_cert);
  VCRYPT_ASSIGN_OR_RETURN(Json a, Post("/v1/enroll", body));
  TaEnrollChallenge ch;
  VCRYPT_ASSIGN_OR_RETURN(ch.id, Str(*this, a, "id"));
  VCRYPT_ASSIGN_OR_RETURN(ch.credential_blob,
                          Bytes(*this, a, "credential_blob"));
  VCRYPT_ASSIGN_OR_RETURN(ch.encrypted_secret,
                          Bytes(*this, a, "encrypted_secret"));
  return ch;
}

Status TaClient::EnrollFinish(const std::string& id,
                              const SecureBuffer& secret) const {
  // The secret is single use (the service consumes the challenge), but it
  // still leaves no copies behind.
  Json body = {{"id", id}, {"secret", Base64Encode(secret.span())}};
  auto r = Post("/v1/enroll/finish", body);
  Wipe(body["secret"].get_ref<std::string&>());
  if (!r.ok()) return std::move(r).error();
  return Status::Ok();
}

Result<TaNonce> TaClient::Nonce(const std::string& host) const {
  VCRYPT_ASSIGN_OR_RETURN(Json a, Post("/v1/nonce", Json{{"host", host}}));
  TaNonce n;
  VCRYPT_ASSIGN_OR_RETURN(n.nonce, Bytes(*this, a, "nonce"));
  if (!a.contains("bank") || !a["bank"].is_number_unsigned() ||
      a["bank"].get<uint64_t>() > 0xffff)
    return Malformed(*this, "'bank' missing");
  n.bank = static_cast<uint16_t>(a["bank"].get<uint64_t>());
  if (!a.contains("pcrs") || !a["pcrs"].is_array() || a["pcrs"].empty())
    return Malformed(*this, "'pcrs' missing");
  for (const auto& p : a["pcrs"]) {
    if (!p.is_number_unsigned() || p.get<uint64_t>() > 23)
      return Malformed(*this, "'pcrs' must be PCR numbers 0..23");
    n.pcrs.push_back(static_cast<int>(p.get<uint64_t>()));
  }
  if (a.contains("expires") && a["expires"].is_number_integer())
    n.expires = a["expires"].get<int64_t>();
  return n;
}

Result<std::string> TaClient::Attest(
    const std::string& host, std::span<const uint8_t> nonce,
    std::span<const uint8_t> attest, std::span<const uint8_t> signature,
    const std::vector<std::vector<uint8_t>>& pcr_values,
    std::span<const uint8_t> session_point,
    const std::optional<std::vector<uint8_t>>& event_log) const {
  Json vals = Json::array();
  for (const auto& v : pcr_values) vals.push_back(Base64Encode(v));
  Json body = {{"host", host},
               {"nonce", Base64Encode(nonce)},
               {"attest", Base64Encode(attest)},
               {"signature", Base64Encode(signature)},
               {"pcr_values", vals},
               {"session_key", Base64Encode(session_point)}};
  if (event_log) body["event_log"] = Base64Encode(*event_log);
  VCRYPT_ASSIGN_OR_RETURN(Json a, Post("/v1/attest", body));
  return Str(*this, a, "token");
}

Result<TaKekGrant> TaClient::CreateKek(
    std::string_view token, std::string_view proof,
    std::span<const uint8_t> transport_point) const {
  Json body = {{"token", token},
               {"proof", proof},
               {"transport_key", Base64Encode(transport_point)}};
  VCRYPT_ASSIGN_OR_RETURN(Json a, Post("/v1/kek", body));
  TaKekGrant g;
  VCRYPT_ASSIGN_OR_RETURN(g.kek_id, Str(*this, a, "kek_id"));
  VCRYPT_ASSIGN_OR_RETURN(g.ciphertext, Str(*this, a, "ciphertext"));
  if (!a.contains("kek")) return Malformed(*this, "'kek' missing");
  auto sealed = SealedKey::FromJson(a["kek"]);
  if (!sealed.ok()) return Malformed(*this, "'kek': " + sealed.error().message);
  g.kek = std::move(sealed).value();
  return g;
}

Result<SealedKey> TaClient::UnwrapKek(
    std::string_view token, std::string_view proof, std::string_view ciphertext,
    std::span<const uint8_t> transport_point) const {
  Json body = {{"token", token},
               {"proof", proof},
               {"ciphertext", ciphertext},
               {"transport_key", Base64Encode(transport_point)}};
  VCRYPT_ASSIGN_OR_RETURN(Json a, Post("/v1/kek/unwrap", body));
  if (!a.contains("kek")) return Malformed(*this, "'kek' missing");
  auto sealed = SealedKey::FromJson(a["kek"]);
  if (!sealed.ok()) return Malformed(*this, "'kek': " + sealed.error().message);
  return sealed;
}

}  // namespace vcrypt
