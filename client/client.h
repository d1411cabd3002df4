// The client side of the vcryptd protocol (docs/protocol.md).
#ifndef VCRYPT_CLIENT_CLIENT_H_
#define VCRYPT_CLIENT_CLIENT_H_

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

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

 private:
  explicit Client(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace vcrypt

#endif  // VCRYPT_CLIENT_CLIENT_H_
