// vcryptd's UNIX-socket front end.
//
// Accepts connections on a stream socket, authorises each peer by
// SO_PEERCRED (uid 0, or membership of the configured group, checked with
// SO_PEERGROUPS), and serves requests (docs/protocol.md) with one thread per
// connection. Libraries do not print: the server reports through the
// `log` callback, which main wires to stderr/the journal.
#ifndef VCRYPT_DAEMON_SERVER_H_
#define VCRYPT_DAEMON_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <optional>
#include <string>

#include "common/handles.h"
#include "common/result.h"
#include "daemon/controller.h"

namespace vcrypt {

struct ServerOptions {
  std::string socket_path = "/run/vcrypt/vcryptd.sock";
  std::optional<gid_t> allowed_group;  // besides root
  // Use this already-listening fd (systemd socket activation) instead of
  // binding socket_path.
  int inherited_fd = -1;
};

class Server {
 public:
  using LogFn = std::function<void(const std::string&)>;
  Server(Controller* controller, ServerOptions options, LogFn log);
  ~Server();

  // Binds and listens (mode 0600, or 0660 with the allowed group).
  // kBusy if another vcryptd answers on the socket; a stale socket file
  // is replaced.
  Status Listen();
  // Serves until Stop() is called (from a signal handler: it only writes
  // to a pipe). Returns once the accept loop has ended; in-flight
  // requests finish on their own threads.
  Status Run();
  void Stop();

 private:
  void Serve(UniqueFd conn);
  bool Authorised(int fd, Caller* caller, std::string* why) const;

  Controller* controller_;
  ServerOptions options_;
  LogFn log_;
  UniqueFd listen_fd_;
  UniqueFd stop_r_, stop_w_;
  bool owns_socket_file_ = false;
  std::atomic<int> active_{0};
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_SERVER_H_
