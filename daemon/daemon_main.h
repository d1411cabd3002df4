// vcryptd's program logic, kept in the library so tests can drive it.
#ifndef VCRYPT_DAEMON_DAEMON_MAIN_H_
#define VCRYPT_DAEMON_DAEMON_MAIN_H_

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace vcrypt {

// vcryptd's config file (--config FILE, docs/protocol.md "Roles"): a JSON
// object; an unknown key or a value of the wrong type is an error, so a
// misspelt security setting is never silently ignored.
struct DaemonConfig {
  std::optional<std::string> state_dir, socket, operator_group, monitor_group,
      bypass_workqueues;
  // Absolute, lexically normal directories (trailing '/' removed).
  std::vector<std::string> volume_paths;
  bool allow_test_tcti = false;
  // ServerOptions::request_timeout (100..600000 ms).
  std::optional<int> request_timeout_ms;
};
// kUsage naming the file and the problem; kNotFound/kIo reading it.
Result<DaemonConfig> ReadDaemonConfig(const std::string& path);

// Parses arguments, loads state, hardens the process and serves until
// SIGTERM/SIGINT. Returns the process exit code (the ErrorCode values, as
// for vcryptctl).
int DaemonMain(int argc, char** argv);

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_DAEMON_MAIN_H_
