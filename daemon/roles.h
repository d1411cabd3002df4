// Who may do what on vcryptd's socket (docs/protocol.md, "Roles").
//
// Three roles, each allowed everything the one below it is:
//   monitor   (--monitor-group)   read-only: status, lists, show
//   operator  (--operator-group)  day-to-day VM and volume work: open,
//                                 close, VM create/unregister/register/set,
//                                 rekey under the same provider, and volume
//                                 create under the paths root allowed
//   root      (uid 0)             everything, in particular whatever
//                                 exports, destroys or re-homes a key, or
//                                 configures a provider
// The table is the single source of truth: it is the Controller's op table
// (daemon/controller.cc, Controller::Ops()), where each op's least role
// sits next to its handler, so an op without a role cannot exist. The
// Controller checks every request against it before doing anything;
// KnownOps and RequiredRole below read it (they are defined there).
#ifndef VCRYPT_DAEMON_ROLES_H_
#define VCRYPT_DAEMON_ROLES_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vcrypt {

enum class Role { kMonitor = 0, kOperator = 1, kRoot = 2 };

std::string_view RoleName(Role r);

// Every op vcryptd serves, sorted by name.
const std::vector<std::string>& KnownOps();

// The role an op needs with these arguments; nullopt for an unknown op.
// Arguments raise it where they change what the op does to keys:
// vm.rekey with "provider" (re-homes the KEK) or "revoke_old" (destroys
// the old one) is root's.
std::optional<Role> RequiredRole(const std::string& op,
                                 const nlohmann::json& args);

// RequiredRole's argument-dependent part: `least` (the op's entry in the
// table) raised where `args` change what `op` does to keys.
Role RaiseForArguments(const std::string& op, const nlohmann::json& args,
                       Role least);

// Whether an operator may format `path` (volume.create): only inside one
// of `allowed_dirs` (vcryptd's config `volume_paths`), so the group cannot
// format arbitrary host disks. The path must be absolute and lexically
// normal (no ".", "..", "//"), lie under an allowed directory, and the
// directory that holds it must be that directory or below it after
// resolving symlinks, owned by root and writable by nobody else (so no
// caller can plant a link there). A device must be a block device (a
// symlink to one is fine: root put it there); a file must not exist yet.
// kPermissionDenied, naming the rule broken; kNotFound when a device does
// not exist.
Status CheckOperatorVolumePath(const std::string& path, bool is_file,
                               const std::vector<std::string>& allowed_dirs);

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_ROLES_H_
