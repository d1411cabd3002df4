// A key provider whose files could not be loaded when vcryptd started
// (damaged, insecure or unreadable). It stands in for the provider so that
// one damaged provider does not keep vcryptd, and the volumes of every
// other provider, down: the provider is listed with state "unavailable"
// and the reason, and every key operation on it fails with
// key_unavailable naming that reason. `provider remove` still removes it;
// repairing its files (or restoring its backup under the same name after
// removing it) and restarting vcryptd brings it back.
#ifndef VCRYPT_DAEMON_UNAVAILABLE_PROVIDER_H_
#define VCRYPT_DAEMON_UNAVAILABLE_PROVIDER_H_

#include <string>
#include <string_view>

#include "common/result.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

class UnavailableProvider : public KeyProvider {
 public:
  // `type`: the type its config.json names, "unknown" when unreadable.
  // `reason`: why it failed to load; `since`: when (RFC 3339 UTC).
  UnavailableProvider(std::string name, std::string type, Error reason,
                      std::string since)
      : name_(std::move(name)),
        type_(std::move(type)),
        reason_(std::move(reason)),
        since_(std::move(since)) {}

  const std::string& name() const override { return name_; }
  std::string_view type() const override { return type_; }
  Result<NewKek> CreateKek(std::string_view) override { return Unavailable(); }
  Result<SecureBuffer> GetKek(const KekRef&) override { return Unavailable(); }
  Status DestroyKek(const KekRef&) override { return Unavailable(); }
  // {"name","type","state":"unavailable","reason":{"code","message","since"}}
  nlohmann::json Describe() const override {
    return nlohmann::json{{"name", name_},
                          {"type", type_},
                          {"state", "unavailable"},
                          {"reason",
                           {{"code", std::string(ErrorCodeName(reason_.code))},
                            {"message", reason_.message},
                            {"since", since_}}}};
  }

  // kKeyUnavailable: what every key operation on this provider returns.
  Error Unavailable() const {
    return MakeError(ErrorCode::kKeyUnavailable,
                     "key provider '" + name_ +
                         "' is unavailable: " + reason_.message +
                         " (repair its files and restart vcryptd)");
  }
  const Error& reason() const { return reason_; }

 private:
  std::string name_;
  std::string type_;
  Error reason_;
  std::string since_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_UNAVAILABLE_PROVIDER_H_
