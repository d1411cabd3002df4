#include "daemon/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
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

}  // namespace

Server::Server(Controller* controller, ServerOptions options, LogFn log)
    : controller_(controller), options_(std::move(options)), log_(std::move(log)) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
    stop_r_.reset(p[0]);
    stop_w_.reset(p[1]);
  }
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
  // root (and the group): no window where others can connect.
  mode_t old = umask(0177);
  int rc = bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old);
  if (rc != 0)
    return MakeError(ErrorCode::kIo, "cannot bind " + options_.socket_path + ": " +
                                         std::strerror(errno));
  owns_socket_file_ = true;
  if (options_.allowed_group) {
    if (chown(options_.socket_path.c_str(), 0, *options_.allowed_group) != 0 ||
        chmod(options_.socket_path.c_str(), 0660) != 0)
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

Status Server::Run() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_r_.get(), POLLIN, 0}};
    int n = poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo, std::string("poll: ") + std::strerror(errno));
    }
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) continue;
    ++active_;
    std::thread([this, c = std::move(conn)]() mutable {
      Serve(std::move(c));
      --active_;
    }).detach();
  }
  // Let in-flight requests finish (bounded), so no operation is cut off
  // halfway by process exit.
  for (int i = 0; i < 600 && active_.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
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
  if (cred.uid == 0) return true;
  if (options_.allowed_group) {
    if (cred.gid == *options_.allowed_group) return true;
    std::vector<gid_t> groups(256);
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      for (size_t i = 0; i < glen / sizeof(gid_t); ++i)
        if (groups[i] == *options_.allowed_group) return true;
    }
  }
  *why = "uid " + std::to_string(cred.uid) +
         " is not allowed to use vcryptd (root or the vcrypt group only)";
  return false;
}

void Server::Serve(UniqueFd conn) {
  Caller caller;
  std::string why;
  if (!Authorised(conn.get(), &caller, &why)) {
    (void)WriteMessage(conn.get(), ErrorResponse(MakeError(ErrorCode::kPermissionDenied,
                                                           "permission denied: " + why)));
    log_("refused connection: " + why);
    return;
  }
  for (;;) {
    auto msg = ReadMessage(conn.get());
    if (!msg.ok()) {
      if (msg.error().code != ErrorCode::kNotFound)
        (void)WriteMessage(conn.get(), ErrorResponse(msg.error()));
      return;
    }
    const Json& body = msg->body;
    Json response;
    // A secret in the result (a new recovery key) travels after the JSON
    // line, like a request's secret, never inside it.
    SecureBuffer reply_secret;
    if (!body.contains("op") || !body["op"].is_string()) {
      response = ErrorResponse(MakeError(ErrorCode::kUsage, "request without 'op'"));
    } else {
      std::string op = body["op"].get<std::string>();
      Json args = body.value("args", Json::object());
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
        log_("uid=" + std::to_string(caller.uid) + " op=" + op +
             ": events not delivered (" + st.error().message +
             "); the operation goes on");
      };
      auto r = controller_->Handle(op, args, msg->secret, caller, &reply_secret,
                                   on_event);
      if (r.ok()) {
        response = Json{{"ok", true}, {"result", std::move(r).value()}};
      } else {
        response = ErrorResponse(r.error());
      }
      log_("uid=" + std::to_string(caller.uid) + " op=" + op +
           (r.ok() ? " ok" : " error=" + std::string(ErrorCodeName(r.error().code))));
    }
    msg->secret.Clear();
    Status sent = WriteMessage(conn.get(), response, &reply_secret);
    reply_secret.Clear();
    if (!sent.ok()) return;
  }
}

}  // namespace vcrypt
