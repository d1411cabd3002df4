// Bounds on the connections of a TLS server (the Trust Authority's two
// services): how many one client address may hold at once, and how long
// any connection may live.
//
// cpp-httplib serves each connection on one worker thread and bounds only
// each single read or write (5 s), so a client that trickles a request a
// byte at a time, or simply opens many connections, holds worker threads
// for as long as it likes and starves real hosts (issue 13). The guard
// hooks the server's SSL_CTX (the only per-connection hook cpp-httplib
// 0.11 offers): when a connection's TLS handshake starts, on its worker
// thread, the guard counts it against its client address and refuses it
// at once past the per-client limit; a watchdog thread shuts down
// (shutdown(2), which makes the worker's pending read fail) every
// connection still open at its deadline. The count is given back when the
// SSL object is freed, which cpp-httplib does before it closes the
// socket, so the watchdog never touches a descriptor number that was
// reused.
#ifndef VCRYPT_TRUSTAUTHORITY_CONN_GUARD_H_
#define VCRYPT_TRUSTAUTHORITY_CONN_GUARD_H_

#include <openssl/ssl.h>

#include <chrono>
#include <memory>

namespace vcrypt {

struct ConnectionLimits {
  // Connections one client address (IPv4, or IPv6 /64) may hold at once.
  size_t per_client = 16;
  // The longest a connection lives, handshake and keep-alive included.
  std::chrono::milliseconds lifetime{std::chrono::seconds(30)};
};

class ConnectionGuard {
 public:
  explicit ConnectionGuard(ConnectionLimits limits);
  // Shuts down the watchdog. The SSL_CTX it was attached to must be gone
  // first, or at least have no connection left (cpp-httplib's server
  // stopped and its workers joined); connections freed later are ignored.
  ~ConnectionGuard();
  ConnectionGuard(const ConnectionGuard&) = delete;
  ConnectionGuard& operator=(const ConnectionGuard&) = delete;

  // Hooks `ctx` (its info callback and one ex_data slot of the SSL_CTX and
  // of each SSL). false if OpenSSL refused the slots.
  bool Attach(SSL_CTX* ctx);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_CONN_GUARD_H_
