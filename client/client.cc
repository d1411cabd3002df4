#include "client/client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "common/wire.h"

namespace vcrypt {

Result<Client> Client::Connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path))
    return MakeError(ErrorCode::kUsage, "socket path too long: " + socket_path);
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid())
    return MakeError(ErrorCode::kInternal, std::string("socket: ") + std::strerror(errno));
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    if (err == EACCES || err == EPERM)
      return MakeError(
          ErrorCode::kPermissionDenied,
          "permission denied on " + socket_path +
              " (run as root or as a member of the operator or monitor group)");
    return MakeError(ErrorCode::kDaemonUnavailable,
                     "vcryptd is not running (cannot connect to " + socket_path + ": " +
                         std::strerror(err) + "); start it with 'systemctl start vcryptd'");
  }
  return Client(std::move(fd));
}

Result<nlohmann::json> Client::Call(
    const std::string& op, const nlohmann::json& args,
    const SecureBuffer* secret, SecureBuffer* reply_secret,
    const std::function<void(const nlohmann::json&)>& on_event) {
  nlohmann::json req = {{"op", op}, {"args", args}};
  // A refused peer gets its error before the daemon reads anything, so a
  // failed write still leaves an answer to read.
  auto wrote = WriteMessage(fd_.get(), req, secret);
  Result<WireMessage> resp = ReadMessage(fd_.get());
  // Event lines come first; the answer is the line with "ok".
  while (resp.ok() && !resp->body.contains("ok") &&
         resp->body.contains("event")) {
    if (on_event) on_event(resp->body["event"]);
    resp = ReadMessage(fd_.get());
  }
  if (!resp.ok()) {
    if (!wrote.ok()) return std::move(wrote).error();
    return MakeError(ErrorCode::kDaemonUnavailable,
                     "vcryptd closed the connection without an answer (" +
                         resp.error().message + ")");
  }
  const auto& b = resp->body;
  if (b.value("ok", false) && b.contains("result")) {
    if (reply_secret != nullptr) *reply_secret = std::move(resp->secret);
    return b["result"];
  }
  if (b.contains("error") && b["error"].is_object()) {
    const auto& e = b["error"];
    return MakeError(ErrorCodeFromName(e.value("code", "internal")),
                     e.value("message", "unknown error"));
  }
  return MakeError(ErrorCode::kInternal, "malformed answer from vcryptd");
}

}  // namespace vcrypt
