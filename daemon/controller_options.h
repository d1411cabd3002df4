// What a Controller is configured with (ControllerOptions), who calls it
// (Caller) and where an operation's progress goes (EventSink): the types
// that daemon/controller.h's interface and the op groups behind it
// (daemon/controller_state.h) share.
#ifndef VCRYPT_DAEMON_CONTROLLER_OPTIONS_H_
#define VCRYPT_DAEMON_CONTROLLER_OPTIONS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "daemon/audit.h"
#include "daemon/roles.h"

namespace vcrypt {

struct ControllerOptions {
  std::string state_dir = "/var/lib/vcrypt";
  // nullopt: bypass dm-crypt workqueues on non-rotational devices.
  std::optional<bool> bypass_workqueues;
  // Where udev links block devices by file system UUID; a volume whose
  // inventory device path is stale is looked up here. Tests point it
  // elsewhere.
  std::string by_uuid_dir = "/dev/disk/by-uuid";
  // How many volumes `open_all` opens at the same time.
  size_t open_all_threads = 8;
  // Where audit records go. nullptr: SystemAuditSink::ForThisProcess()
  // (the journal when stderr is connected to it, else stderr), which is
  // what vcryptd wires in explicitly. Tests pass a recording sink.
  std::shared_ptr<AuditSink> audit;
  // Fault injection for the crash tests of `vm rekey` (tests/integration/
  // t_rekey.sh): when N > 0, the process kills itself with SIGKILL right
  // after the N-th volume token it rewrites. vcryptd sets it from
  // VCRYPT_TEST_CRASH_AFTER_TOKEN_WRITES; nothing else does.
  unsigned crash_after_token_writes = 0;
  // The command that runs a LUKS2 reencryption for a deep rekey
  // (daemon/reencrypt_helper.h); argv[0] absolute. vcryptd sets
  // {"/proc/self/exe", "--reencrypt-helper"}. Empty: deep rekeys are
  // refused.
  std::vector<std::string> reencrypt_helper;
  // Directories under which the operator role may format volumes
  // (daemon/roles.h, CheckOperatorVolumePath); absolute and lexically
  // normal. Empty: volume.create is root's.
  std::vector<std::string> volume_paths;
  // Whether a trusted provider, or a native provider's TPM-sealed primary
  // key, may use a simulator TCTI (swtpm:, mssim:) besides TPM device
  // nodes (keyproviders/tpm/tpm_context.h, CheckTcti).
  // Only root's own config turns it on, for tests.
  bool allow_test_tcti = false;
};

struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  // What the caller may do (daemon/roles.h). The Server sets it from the
  // peer's credentials; in-process callers (vcryptd itself, tests) are
  // root.
  Role role = Role::kRoot;
};

// Receives the progress events of an operation while it runs
// (docs/protocol.md, "Events"), in order, on the thread running it. The
// operation blocks while the sink runs, so a sink must not wait on the
// caller for long. Events never carry secrets.
using EventSink = std::function<void(const nlohmann::json& event)>;

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_CONTROLLER_OPTIONS_H_
