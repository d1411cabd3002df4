// The client side of the vcryptd protocol (docs/protocol.md).
#ifndef VCRYPT_CLIENT_CLIENT_H_
#define VCRYPT_CLIENT_CLIENT_H_

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/handles.h"
#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

class Client {
 public:
  // kDaemonUnavailable when nothing listens on `socket_path`;
  // kPermissionDenied when the socket refuses this user.
  static Result<Client> Connect(const std::string& socket_path);

  // One request/response. A daemon error comes back as the Error it
  // carried (same code, same message). A secret that comes back with the
  // answer (a new recovery key) is moved into *reply_secret, read there
  // straight from the socket; without reply_secret it is wiped unseen.
  // The events the daemon sends before its answer (docs/protocol.md,
  // "Events") go to `on_event`, each as it arrives; without one they are
  // read and dropped.
  Result<nlohmann::json> Call(
      const std::string& op, const nlohmann::json& args,
      const SecureBuffer* secret = nullptr,
      SecureBuffer* reply_secret = nullptr,
      const std::function<void(const nlohmann::json&)>& on_event = {});

  // Bounds how long each later Call waits for its answer (events
  // included); zero, the default, waits as long as the daemon works. A
  // wait that runs out is kDaemonUnavailable ("did not answer within"),
  // and the connection is then useless: the answer may still come.
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 private:
  explicit Client(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
  std::chrono::milliseconds timeout_{0};
};

}  // namespace vcrypt

#endif  // VCRYPT_CLIENT_CLIENT_H_
