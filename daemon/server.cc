#include "daemon/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/escape.h"
#include "common/wire.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

Json ErrorResponse(const Error& e) {
  return Json{{"ok", false},
              {"error", {{"code", std::string(ErrorCodeName(e.code))},
                         {"exit", static_cast<int>(e.code)},
                         {"message", e.message}}}};
}

std::string ParentDir(const std::string& p) {
  auto pos = p.rfind('/');
  return pos == std::string::npos || pos == 0 ? "/" : p.substr(0, pos);
}

// How long an event line may wait for a peer that does not read. The
// operation waits meanwhile, holding its locks (a VM's, for vm.rekey), so
// a stalled client must not hold it for long.
constexpr auto kEventWriteTimeout = std::chrono::seconds(30);

// Writes one event line `{"event": ...}` (docs/protocol.md, "Events").
// kIo when the peer is gone or has not taken the line within
// kEventWriteTimeout; part of the line may have been sent then.
Status WriteEvent(int fd, const Json& event) {
  std::string line = Json{{"event", event}}.dump(
      -1, ' ', false, Json::error_handler_t::replace);
  line.push_back('\n');
  const auto deadline = std::chrono::steady_clock::now() + kEventWriteTimeout;
  size_t off = 0;
  while (off < line.size()) {
    ssize_t w = ::send(fd, line.data() + off, line.size() - off,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w >= 0) {
      off += static_cast<size_t>(w);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return MakeError(ErrorCode::kIo,
                       std::string("write failed: ") + std::strerror(errno));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return MakeError(ErrorCode::kIo, "the client does not read its events");
    pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR)
      return MakeError(ErrorCode::kIo,
                       std::string("poll: ") + std::strerror(errno));
  }
  return Status::Ok();
}

// How long a stopping server waits for requests in flight: within
// vcryptd.service's TimeoutStopSec (30 s), leaving time to evict keys.
constexpr auto kStopWait = std::chrono::seconds(20);

// One error line to a connection that will not be served, without ever
// blocking the accept loop on a peer that does not read.
void SendRefusal(int fd, const Error& e) {
  std::string line =
      ErrorResponse(e).dump(-1, ' ', false, Json::error_handler_t::replace);
  line.push_back('\n');
  (void)!::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace

Server::Server(Controller* controller, ServerOptions options, LogFn log)
    : controller_(controller), options_(std::move(options)), log_(std::move(log)) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
    stop_r_.reset(p[0]);
    stop_w_.reset(p[1]);
  }
  reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
}

Server::~Server() {
  if (owns_socket_file_) ::unlink(options_.socket_path.c_str());
}

Status Server::Listen() {
  if (options_.inherited_fd >= 0) {
    listen_fd_.reset(options_.inherited_fd);
    return Status::Ok();
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.socket_path.size() >= sizeof(addr.sun_path))
    return MakeError(ErrorCode::kInvalidArgument,
                     "socket path too long: " + options_.socket_path);
  std::strncpy(addr.sun_path, options_.socket_path.c_str(), sizeof(addr.sun_path) - 1);
  VCRYPT_RETURN_IF_ERROR(MakeDirs(ParentDir(options_.socket_path), 0755));

  // A live daemon on the socket: refuse. A stale socket file: replace.
  {
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
      return MakeError(ErrorCode::kBusy, "another vcryptd is already listening on " +
                                             options_.socket_path);
  }
  ::unlink(options_.socket_path.c_str());
  listen_fd_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_fd_.valid())
    return MakeError(ErrorCode::kIo, std::string("socket: ") + std::strerror(errno));
  // Create the socket file with no access, then open it up to exactly
  // root (and the groups): no window where others can connect.
  mode_t old = umask(0177);
  int rc = bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old);
  if (rc != 0)
    return MakeError(ErrorCode::kIo, "cannot bind " + options_.socket_path + ": " +
                                         std::strerror(errno));
  owns_socket_file_ = true;
  // Two groups cannot both own the file: with a monitor group everyone
  // may connect, and SO_PEERCRED refuses strangers before reading a byte.
  if (options_.operator_group || options_.monitor_group) {
    gid_t g = options_.operator_group ? *options_.operator_group
                                      : *options_.monitor_group;
    mode_t mode = options_.monitor_group ? 0666 : 0660;
    if (chown(options_.socket_path.c_str(), 0, g) != 0 ||
        chmod(options_.socket_path.c_str(), mode) != 0)
      return MakeError(ErrorCode::kIo, "cannot set the socket's group: " +
                                           std::string(std::strerror(errno)));
  }
  if (listen(listen_fd_.get(), 128) != 0)
    return MakeError(ErrorCode::kIo, std::string("listen: ") + std::strerror(errno));
  return Status::Ok();
}

void Server::Stop() {
  if (stop_w_.valid()) {
    char c = 1;
    (void)!write(stop_w_.get(), &c, 1);
  }
}

size_t Server::active_connections() const {
  std::lock_guard lock(mu_);
  return root_conns_ + other_conns_;
}

bool Server::TakeSlot(const Caller& caller, std::string* why) {
  std::lock_guard lock(mu_);
  if (caller.uid == 0) {
    if (root_conns_ >= options_.max_root_connections) {
      *why = "too many connections from root (" +
             std::to_string(options_.max_root_connections) + ")";
      return false;
    }
    ++root_conns_;
    return true;
  }
  size_t& mine = conns_by_uid_[caller.uid];
  if (mine >= options_.max_connections_per_uid) {
    *why = "too many connections from uid " + std::to_string(caller.uid) +
           " (" + std::to_string(options_.max_connections_per_uid) + ")";
    return false;
  }
  if (other_conns_ >= options_.max_connections) {
    *why = "too many connections (" + std::to_string(options_.max_connections) +
           " from non-root users)";
    return false;
  }
  ++mine;
  ++other_conns_;
  return true;
}

void Server::ReleaseSlot(const Caller& caller) {
  // Notified under the lock: once Run sees no connection left, the
  // Server may be destroyed, and this thread touches nothing of it after
  // the unlock.
  std::lock_guard lock(mu_);
  if (caller.uid == 0) {
    --root_conns_;
  } else {
    if (--conns_by_uid_[caller.uid] == 0) conns_by_uid_.erase(caller.uid);
    --other_conns_;
  }
  idle_cv_.notify_all();
}

std::chrono::milliseconds Server::OnAcceptError(int err) {
  using std::chrono::milliseconds;
  if (err == EINTR || err == EAGAIN || err == ECONNABORTED || err == EPROTO)
    return milliseconds(0);
  auto now = std::chrono::steady_clock::now();
  bool log_it = now - last_accept_error_log_ > std::chrono::seconds(10);
  if (log_it) last_accept_error_log_ = now;
  if (err == EMFILE || err == ENFILE) {
    // The connection stays queued and poll keeps saying "readable": free
    // the reserve fd, take the connection and close it (the client sees
    // EOF at once rather than hanging), then wait a little.
    if (reserve_fd_.valid()) {
      reserve_fd_.reset();
      UniqueFd c(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      c.reset();
      reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
    }
    if (log_it)
      log_("out of file descriptors (" + std::string(std::strerror(err)) +
           "): refusing connections until some close; raise LimitNOFILE=");
    return milliseconds(100);
  }
  if (log_it) log_(std::string("accept: ") + std::strerror(err));
  return milliseconds(100);
}

Status Server::Run() {
  auto backoff = std::chrono::milliseconds(0);
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_r_.get(), POLLIN, 0}};
    // While backing off, watch only the stop pipe.
    int n =
        poll(backoff.count() > 0 ? fds + 1 : fds, backoff.count() > 0 ? 1 : 2,
             backoff.count() > 0 ? static_cast<int>(backoff.count()) : -1);
    backoff = std::chrono::milliseconds(0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo, std::string("poll: ") + std::strerror(errno));
    }
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) {
      backoff = OnAcceptError(errno);
      continue;
    }
    Caller caller;
    std::string why;
    if (!Authorised(conn.get(), &caller, &why)) {
      SendRefusal(conn.get(), MakeError(ErrorCode::kPermissionDenied,
                                        "permission denied: " + why));
      log_("refused connection: " + why);
      continue;
    }
    if (!TakeSlot(caller, &why)) {
      SendRefusal(conn.get(),
                  MakeError(ErrorCode::kBusy,
                            "vcryptd is busy: " + why + "; try again later"));
      continue;
    }
    try {
      std::thread([this, caller, c = std::move(conn)]() mutable {
        Serve(std::move(c), caller);
        ReleaseSlot(caller);
      }).detach();
    } catch (const std::system_error& e) {
      // The lambda (and the connection it owns) is gone: the client
      // sees EOF. The daemon goes on.
      ReleaseSlot(caller);
      log_(std::string("cannot start a thread for a connection: ") + e.what());
    }
  }
  // Stop: wake the connections that wait for a request (they end), and let
  // requests in flight finish (bounded, within systemd's TimeoutStopSec),
  // so no operation is cut off halfway by process exit.
  stopping_ = true;
  std::unique_lock lock(mu_);
  for (int fd : waiting_fds_) ::shutdown(fd, SHUT_RDWR);
  idle_cv_.wait_for(lock, kStopWait,
                    [this] { return root_conns_ + other_conns_ == 0; });
  return Status::Ok();
}

bool Server::Authorised(int fd, Caller* caller, std::string* why) const {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    *why = "cannot read peer credentials";
    return false;
  }
  caller->uid = cred.uid;
  caller->gid = cred.gid;
  caller->pid = cred.pid;
  if (cred.uid == 0) {
    caller->role = Role::kRoot;
    return true;
  }
  std::vector<gid_t> groups(1, cred.gid);
  std::vector<gid_t> more(256);
  socklen_t glen = static_cast<socklen_t>(more.size() * sizeof(gid_t));
  if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, more.data(), &glen) == 0)
    groups.insert(groups.end(), more.begin(),
                  more.begin() + glen / sizeof(gid_t));
  auto member = [&](const std::optional<gid_t>& g) {
    return g && std::find(groups.begin(), groups.end(), *g) != groups.end();
  };
  if (member(options_.operator_group)) {
    caller->role = Role::kOperator;
    return true;
  }
  if (member(options_.monitor_group)) {
    caller->role = Role::kMonitor;
    return true;
  }
  *why = "uid " + std::to_string(cred.uid) +
         " is not allowed to use vcryptd (root, the operator group or the "
         "monitor group only)";
  return false;
}

void Server::Serve(UniqueFd conn, const Caller& caller) {
  const std::string who = "uid=" + std::to_string(caller.uid) + " (" +
                          std::string(RoleName(caller.role)) + ")";
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) break;
      waiting_fds_.insert(conn.get());
    }
    auto msg = ReadMessage(conn.get(),
                           static_cast<int>(options_.request_timeout.count()));
    {
      std::lock_guard lock(mu_);
      waiting_fds_.erase(conn.get());
    }
    if (!msg.ok()) {
      if (msg.error().code != ErrorCode::kNotFound && !stopping_) {
        (void)WriteMessage(conn.get(), ErrorResponse(msg.error()));
        log_(who + " dropped: " + msg.error().message);
      }
      break;
    }
    const Json& body = msg->body;
    Json response;
    // A secret in the result (a new recovery key) travels after the JSON
    // line, like a request's secret, never inside it.
    SecureBuffer reply_secret;
    auto op_it = body.find("op");
    if (op_it == body.end() || !op_it->is_string()) {
      response = ErrorResponse(MakeError(ErrorCode::kUsage, "request without 'op'"));
      log_(who + " request without 'op'");
    } else {
      const std::string& op = op_it->get_ref<const std::string&>();
      // The op as it may appear in a log line: escaped and bounded.
      const std::string op_text = EscapeForMessage(op, 64);
      // The arguments by reference: a request's JSON is never copied.
      static const Json kNoArgs = Json::object();
      auto args_it = body.find("args");
      const Json& args = args_it == body.end() ? kNoArgs : *args_it;
      // Events go out as they come. Once one cannot be written, none
      // is: the operation still finishes (a rekey half done is worse
      // than an unwatched one), and the connection is shut down so the
      // client never reads a cut-off line as a response.
      bool events_failed = false;
      EventSink on_event = [&](const Json& ev) {
        if (events_failed) return;
        Status st = WriteEvent(conn.get(), ev);
        if (st.ok()) return;
        events_failed = true;
        ::shutdown(conn.get(), SHUT_RDWR);
        log_(who + " op=" + op_text + ": events not delivered (" +
             st.error().message + "); the operation goes on");
      };
      auto r = controller_->Handle(op, args, msg->secret, caller, &reply_secret,
                                   on_event);
      if (r.ok()) {
        response = Json{{"ok", true}, {"result", std::move(r).value()}};
      } else {
        response = ErrorResponse(r.error());
      }
      log_(who + " op=" + op_text +
           (r.ok() ? " ok"
                   : " error=" + std::string(ErrorCodeName(r.error().code))));
    }
    msg->secret.Clear();
    Status sent = WriteMessage(conn.get(), response, &reply_secret);
    reply_secret.Clear();
    if (!sent.ok()) break;
  }
}

}  // namespace vcrypt
