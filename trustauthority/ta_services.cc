// The Trust Authority's two services, started from the command line:
// options, the TLS server with its connection guard, serving until told
// to stop.

#include <httplib.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ostream>
#include <thread>

#include "common/atomic_file.h"
#include "trustauthority/attestation.h"
#include "trustauthority/conn_guard.h"
#include "trustauthority/http.h"
#include "trustauthority/kps.h"
#include "trustauthority/ta_tool_internal.h"

namespace vcrypt::ta_tool_internal {
namespace {

struct TlsFiles {
  std::string cert, key;
};

// Checks what the TLS server will load, so that a missing file is
// kNotFound with its name rather than a bare "TLS setup failed".
Status CheckReadable(const std::string& path, const std::string& what) {
  if (access(path.c_str(), R_OK) != 0)
    return MakeError(
        errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kPermissionDenied,
        "cannot read " + what + " " + path + ": " + std::strerror(errno));
  return Status::Ok();
}

// Binds `server` to `addr`, announces it and serves until `control` stops
// it (or the listener fails).
Status Serve(httplib::Server& server, const std::string& listen_text,
             const ListenAddress& addr, std::ostream& out,
             ServiceControl& control) {
  server.set_payload_max_length(kMaxRequestBody);
  // Slow clients: each read or write of a request may take 5 s at most
  // (cpp-httplib's default read timeout), and an idle keep-alive
  // connection is closed after 2 s, so that one client cannot hold a
  // worker thread for long. Hosts reuse a connection for at most 1 s of
  // idleness (keyproviders/trusted/ta_client.h), so they never send on
  // one the server is closing; a busy one serves up to 100 requests.
  server.set_read_timeout(5, 0);
  server.set_write_timeout(5, 0);
  server.set_keep_alive_timeout(2);
  server.set_keep_alive_max_count(100);
  // An answer is written in pieces (headers, body): without TCP_NODELAY
  // the last piece waits for the host's delayed ACK (40 ms on Linux) on a
  // kept-alive connection.
  server.set_tcp_nodelay(true);
  // cpp-httplib serves a connection on one worker thread for its whole
  // life. Its default pool (8 on this kind of machine) was taken by a
  // nonce flood's connections while a host's waited in the queue: 27-43x
  // the idle attestation latency (bench/ta_flood.sh). Threads are cheap;
  // the ConnectionGuard bounds what one client may hold of them.
  server.new_task_queue = [] {
    return new httplib::ThreadPool(kWorkerThreads);
  };
  int port = -1;
  if (addr.port == 0) {
    port = server.bind_to_any_port(addr.host);
  } else if (server.bind_to_port(addr.host, addr.port)) {
    port = addr.port;
  }
  if (port <= 0)
    return MakeError(ErrorCode::kIo,
                     "cannot listen on " + listen_text +
                         " (address in use, not local, or not permitted)");
  const std::string shown =
      (addr.host.find(':') != std::string::npos ? "[" + addr.host + "]"
                                                : addr.host) +
      ":" + std::to_string(port);
  std::atomic<bool> done{false};
  std::thread t([&] {
    server.listen_after_bind();
    done = true;
    control.Notify();
  });
  // listen_after_bind sets is_running first thing; announce only then, so
  // a client that reads the line finds the server accepting.
  while (!server.is_running() && !done)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  if (!done) {
    out << "listening on " << shown << std::endl;
    if (control.on_listening) control.on_listening(shown);
  }
  control.WaitUntil([&] { return done.load(); });
  // stop() is a no-op unless the server is running: it is (or it ended).
  server.stop();
  t.join();
  if (!control.stopped())
    return MakeError(ErrorCode::kIo,
                     "the server on " + shown + " stopped unexpectedly");
  return Status::Ok();
}

// An httplib::SSLServer with our TLS policy and `guard`'s connection
// limits: TLS 1.2 or later, no
// compression or renegotiation, and keys never prompted for. The server
// certificate file may hold the chain after the leaf.
std::unique_ptr<httplib::SSLServer> MakeTlsServer(const TlsFiles& files,
                                                  ConnectionGuard& guard,
                                                  std::string* error) {
  auto server = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
    ERR_clear_error();
    if (!guard.Attach(&ctx)) {
      *error = "cannot hook the TLS context: " + OpensslError();
      return false;
    }
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(&ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                  SSL_OP_CIPHER_SERVER_PREFERENCE);
    // An encrypted key is a configuration error, not a terminal prompt.
    SSL_CTX_set_default_passwd_cb(
        &ctx, [](char*, int, int, void*) -> int { return 0; });
    if (SSL_CTX_use_certificate_chain_file(&ctx, files.cert.c_str()) != 1) {
      *error = "cannot load the TLS certificate " + files.cert + ": " +
               OpensslError();
      return false;
    }
    if (SSL_CTX_use_PrivateKey_file(&ctx, files.key.c_str(),
                                    SSL_FILETYPE_PEM) != 1) {
      // OpenSSL compares the key with the certificate while loading it.
      if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
        ERR_clear_error();
        *error = "the TLS key " + files.key +
                 " does not match the certificate " + files.cert;
        return false;
      }
      *error = "cannot load the TLS key " + files.key +
               " (unencrypted PEM expected): " + OpensslError();
      return false;
    }
    if (SSL_CTX_check_private_key(&ctx) != 1) {
      *error = "the TLS key " + files.key + " does not match the certificate " +
               files.cert;
      ERR_clear_error();
      return false;
    }
    return true;
  });
  return server;
}

struct ServiceArgs {
  std::string db;  // the store's URL
  std::string listen_text;
  ListenAddress listen;
  TlsFiles tls;
  ConnectionLimits connections;
};

Result<ServiceArgs> NeedServiceArgs(const Parsed& p, const std::string& what) {
  if (!p.words.empty())
    return UsageError(what + ": unexpected argument '" + p.words[0] + "'");
  ServiceArgs a;
  VCRYPT_ASSIGN_OR_RETURN(a.db, StoreUrlOf(p, what));
  VCRYPT_ASSIGN_OR_RETURN(a.listen_text, Need(p, "listen", what));
  VCRYPT_ASSIGN_OR_RETURN(a.tls.cert, Need(p, "tls-cert", what));
  VCRYPT_ASSIGN_OR_RETURN(a.tls.key, Need(p, "tls-key", what));
  auto l = ParseListenAddress(a.listen_text);
  if (!l.ok()) return UsageError(what + ": " + l.error().message);
  a.listen = std::move(l).value();
  VCRYPT_RETURN_IF_ERROR(CheckReadable(a.tls.cert, "TLS certificate"));
  VCRYPT_RETURN_IF_ERROR(CheckReadable(a.tls.key, "TLS key"));
  return a;
}

void AddServiceOptions(po::options_description& d) {
  d.add_options()("state", po::value<std::string>())(
      "db", po::value<std::string>())("listen", po::value<std::string>())(
      "tls-cert", po::value<std::string>())(
      "tls-key", po::value<std::string>())("max-client-connections",
                                           po::value<std::string>())(
      "max-connection-seconds", po::value<std::string>());
}

// A decimal option value in [min, max], or its default when not given.
Result<double> NumberOption(const Parsed& p, const char* name, double dflt,
                            double min, double max, const std::string& what) {
  if (!p.has(name)) return dflt;
  const std::string v = p.get(name);
  size_t used = 0;
  double d = 0;
  try {
    d = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v.empty() || used != v.size() || !(d >= min && d <= max))
    return UsageError(what + ": --" + name + " wants a number from " +
                      std::to_string(static_cast<long long>(min)) + " to " +
                      std::to_string(static_cast<long long>(max)) + ", not '" +
                      v.substr(0, 32) + "'");
  return d;
}

// --max-client-connections and --max-connection-seconds (both services).
Status ReadConnectionLimits(const Parsed& p, const std::string& what,
                            ConnectionLimits& limits) {
  VCRYPT_ASSIGN_OR_RETURN(
      double per_client,
      NumberOption(p, "max-client-connections", 16, 1, kWorkerThreads, what));
  VCRYPT_ASSIGN_OR_RETURN(
      double seconds,
      NumberOption(p, "max-connection-seconds", 30, 1, 3600, what));
  limits.per_client = static_cast<size_t>(per_client);
  limits.lifetime =
      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  return Status::Ok();
}

}  // namespace

Status AttestationServiceCmd(const std::vector<std::string>& args,
                             std::ostream& out, ServiceControl& control) {
  const std::string what = "attestation-service";
  po::options_description d;
  AddServiceOptions(d);
  d.add_options()("max-outstanding", po::value<std::string>())(
      "rate-limit", po::value<std::string>())("rate-burst",
                                              po::value<std::string>());
  VCRYPT_ASSIGN_OR_RETURN(Parsed p, Parse(args, d, what));
  VCRYPT_ASSIGN_OR_RETURN(ServiceArgs a, NeedServiceArgs(p, what));
  VCRYPT_RETURN_IF_ERROR(ReadConnectionLimits(p, what, a.connections));
  VCRYPT_ASSIGN_OR_RETURN(
      double max_outstanding,
      NumberOption(p, "max-outstanding", 10000, 1, 1e7, what));
  ClientRateLimit limit;
  VCRYPT_ASSIGN_OR_RETURN(limit.per_second,
                          NumberOption(p, "rate-limit", 50, 0, 1e6, what));
  VCRYPT_ASSIGN_OR_RETURN(limit.burst,
                          NumberOption(p, "rate-burst", 100, 1, 1e6, what));
  VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(a.db));
  VCRYPT_ASSIGN_OR_RETURN(
      AttestationService svc,
      OpenAttestation(store, static_cast<size_t>(max_outstanding)));
  // Declared before the server: it must outlive the server's connections.
  ConnectionGuard guard(a.connections);
  std::string tls_error;
  auto server = MakeTlsServer(a.tls, guard, &tls_error);
  if (!server->is_valid())
    return MakeError(ErrorCode::kInvalidArgument, tls_error);
  AddAttestationRoutes(*server, svc, limit);
  return Serve(*server, a.listen_text, a.listen, out, control);
}

Status KeyProviderServiceCmd(const std::vector<std::string>& args,
                             std::ostream& out, ServiceControl& control) {
  const std::string what = "key-provider-service";
  po::options_description d;
  AddServiceOptions(d);
  AddKmsOptions(d);
  d.add_options()("provider-id", po::value<std::string>())(
      "primary-key", po::value<std::string>())("primary-key-file",
                                               po::value<std::string>());
  VCRYPT_ASSIGN_OR_RETURN(Parsed p, Parse(args, d, what));
  VCRYPT_ASSIGN_OR_RETURN(ServiceArgs a, NeedServiceArgs(p, what));
  VCRYPT_RETURN_IF_ERROR(ReadConnectionLimits(p, what, a.connections));
  VCRYPT_ASSIGN_OR_RETURN(std::string provider_id,
                          Need(p, "provider-id", what));
  VCRYPT_RETURN_IF_ERROR(CheckName("provider", provider_id));
  const bool from_file = p.has("primary-key-file");
  if (from_file == p.has("primary-key"))
    return UsageError(what + ": give exactly one of --primary-key UID (on a " +
                      "KMS) and --primary-key-file FILE");
  if (from_file && (p.has("kms") || p.has("kms-ca") || p.has("kms-cert") ||
                    p.has("kms-key")))
    return UsageError(what + ": --kms* options go with --primary-key, not " +
                      "--primary-key-file");
  KmsOptions kms;
  if (!from_file) {
    VCRYPT_ASSIGN_OR_RETURN(kms, NeedKms(p, what));
  }

  // Everything local first (cheap, and a typo should not cost a KMS
  // round trip); the primary key last.
  VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(a.db));
  VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config, LoadConfig(store));
  // The attestation service's public key, from the store it signs from.
  VCRYPT_ASSIGN_OR_RETURN(EcVerifyKey token_key, AttestationTokenKey(*store));
  // Declared before the server: it must outlive the server's connections.
  ConnectionGuard guard(a.connections);
  std::string tls_error;
  auto server = MakeTlsServer(a.tls, guard, &tls_error);
  if (!server->is_valid())
    return MakeError(ErrorCode::kInvalidArgument, tls_error);

  SecureBuffer primary;
  if (from_file) {
    const std::string f = p.get("primary-key-file");
    VCRYPT_ASSIGN_OR_RETURN(
        primary, ReadOwnerOnlyFile(f, "primary key file", kPrimaryKeySize));
    if (primary.size() != kPrimaryKeySize)
      return MakeError(ErrorCode::kInvalidArgument,
                       "primary key file " + f + " must hold exactly " +
                           std::to_string(kPrimaryKeySize) + " raw bytes");
  } else {
    VCRYPT_ASSIGN_OR_RETURN(auto cluster, MakeCluster(kms));
    VCRYPT_ASSIGN_OR_RETURN(primary,
                            FetchPrimaryKey(*cluster, p.get("primary-key")));
  }
  // vcryptd's rule for its KEK cache: key memory that may be swapped out
  // is refused rather than tolerated.
  if (!primary.locked())
    return MakeError(ErrorCode::kPermissionDenied,
                     "cannot lock the primary key in memory (raise "
                     "RLIMIT_MEMLOCK, e.g. LimitMEMLOCK= in the unit)");
  KpsConfig kc;
  kc.store = store;
  kc.provider_id = provider_id;
  kc.policy.issuer = config.issuer;
  kc.policy.audience = config.audience;
  VCRYPT_ASSIGN_OR_RETURN(
      KeyProviderService kps,
      KeyProviderService::Open(std::move(kc), std::move(token_key),
                               std::move(primary)));
  std::mutex mu;
  AddKpsRoutes(*server, kps, mu);
  return Serve(*server, a.listen_text, a.listen, out, control);
}

}  // namespace vcrypt::ta_tool_internal
