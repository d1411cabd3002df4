#include "client/client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/wire.h"

namespace vcrypt {
namespace {

// "10s", "2.5s".
std::string SecondsText(std::chrono::milliseconds d) {
  std::string s = std::to_string(d.count() / 1000);
  if (const auto frac = d.count() % 1000; frac != 0) {
    char buf[8];
    std::snprintf(buf, sizeof buf, ".%03d", static_cast<int>(frac));
    s += buf;
    while (s.back() == '0') s.pop_back();
  }
  return s + "s";
}

}  // namespace

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
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout_;
  bool timed_out = false;
  auto read = [&]() -> Result<WireMessage> {
    if (timeout_.count() <= 0) return ReadMessage(fd_.get());
    // Rounded up, so that the read's own deadline is not before ours.
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    timed_out = left.count() <= 0;
    if (!timed_out) {
      auto m = ReadMessage(fd_.get(), static_cast<int>(left.count()));
      timed_out = !m.ok() && Clock::now() >= deadline;
      if (!timed_out) return m;
    }
    return MakeError(
        ErrorCode::kDaemonUnavailable,
        "vcryptd did not answer '" + op + "' within " + SecondsText(timeout_));
  };
  Result<WireMessage> resp = read();
  // Event lines come first; the answer is the line with "ok".
  while (resp.ok() && !resp->body.contains("ok") &&
         resp->body.contains("event")) {
    if (on_event) on_event(resp->body["event"]);
    resp = read();
  }
  if (timed_out) return std::move(resp).error();
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
