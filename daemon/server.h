// vcryptd's UNIX-socket front end.
//
// Accepts connections on a stream socket, gives each peer a role
// (daemon/roles.h) from SO_PEERCRED: uid 0 is root, a member of the
// operator group (primary or supplementary, SO_PEERGROUPS) operator, a
// member of the monitor group monitor; anyone else is refused before a
// byte is read. Requests (docs/protocol.md) are served with one thread per
// connection. Libraries do not print: the server reports through the
// `log` callback, which main wires to stderr/the journal; what a client
// sent appears there only escaped (common/escape.h).
//
// A peer cannot exhaust the daemon: connections are capped per uid and in
// total for non-root peers (root has its own, larger cap, so root's
// commands and the boot path always get through), a request must arrive
// whole within `request_timeout`, an exhausted fd table or a thread that
// cannot start refuses one connection instead of spinning or aborting.
#ifndef VCRYPT_DAEMON_SERVER_H_
#define VCRYPT_DAEMON_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "common/handles.h"
#include "common/result.h"
#include "daemon/controller.h"

namespace vcrypt {

struct ServerOptions {
  std::string socket_path = "/run/vcrypt/vcryptd.sock";
  std::optional<gid_t> operator_group;  // --operator-group (--group)
  std::optional<gid_t> monitor_group;   // --monitor-group
  // Use this already-listening fd (systemd socket activation) instead of
  // binding socket_path.
  int inherited_fd = -1;
  // Connections served at once: per non-root uid, all non-root peers
  // together, and root's. A connection over its cap gets one "busy" error
  // line and is closed.
  size_t max_connections_per_uid = 32;
  size_t max_connections = 128;
  size_t max_root_connections = 1024;
  // How long a request may take to arrive, from the moment the server
  // waits for it (after connecting, or after the previous response). An
  // idle or trickling client is then dropped.
  std::chrono::milliseconds request_timeout{15000};
};

class Server {
 public:
  using LogFn = std::function<void(const std::string&)>;
  Server(Controller* controller, ServerOptions options, LogFn log);
  ~Server();

  // Binds and listens: mode 0600; 0660 with group = the operator group;
  // 0666 when a monitor group is set too (SO_PEERCRED decides).
  // kBusy if another vcryptd answers on the socket; a stale socket file
  // is replaced.
  Status Listen();
  // Serves until Stop() is called (from a signal handler: it only writes
  // to a pipe). Returns once the accept loop has ended; in-flight
  // requests finish on their own threads (Run waits for them, bounded,
  // and shuts down idle connections so they do not delay the stop).
  Status Run();
  void Stop();

  // Connections being served now (for tests).
  size_t active_connections() const;

 private:
  void Serve(UniqueFd conn, const Caller& caller);
  bool Authorised(int fd, Caller* caller, std::string* why) const;
  // Takes a connection slot for `caller`; false (and why) when over a cap.
  bool TakeSlot(const Caller& caller, std::string* why);
  void ReleaseSlot(const Caller& caller);
  // After accept(2) failed with `err`: handles fd exhaustion without
  // spinning. Returns how long to wait before accepting again.
  std::chrono::milliseconds OnAcceptError(int err);

  Controller* controller_;
  ServerOptions options_;
  LogFn log_;
  UniqueFd listen_fd_;
  UniqueFd stop_r_, stop_w_;
  // Kept open so that, when the fd table is full, closing it frees one fd
  // to accept and refuse the waiting connection (instead of a busy loop).
  UniqueFd reserve_fd_;
  bool owns_socket_file_ = false;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mu_;  // guards the counts and open_fds_
  std::condition_variable idle_cv_;
  size_t root_conns_ = 0, other_conns_ = 0;
  std::map<uid_t, size_t> conns_by_uid_;
  // The fds of connections waiting for a request (shut down at stop).
  std::set<int> waiting_fds_;
  std::chrono::steady_clock::time_point last_accept_error_log_{};
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_SERVER_H_
