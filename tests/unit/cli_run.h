// vcryptctl run in-process, for the unit tests of the CLI. Apart from
// tests/test_util.h so that test binaries that do not link the CLI (the dm
// tests) can use those helpers.
#ifndef VCRYPT_TESTS_UNIT_CLI_RUN_H_
#define VCRYPT_TESTS_UNIT_CLI_RUN_H_

#include <sstream>
#include <string>
#include <vector>

#include "cli/attach.h"
#include "cli/cli.h"

namespace vcrypt::testing {

struct CliRun {
  int code;
  std::string out, err;
};

// vcryptctl in-process, pointed at a socket that does not exist (so any
// command that would reach the daemon gets exit code 3). attach/detach
// run in-process too (RunCliWithLibvirt), not through vcrypt-attach.
inline CliRun RunCtl(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"vcryptctl", "--socket",
                                   "/nonexistent/vcrypt.sock"};
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int code =
      RunCliWithLibvirt(static_cast<int>(argv.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_CLI_RUN_H_
