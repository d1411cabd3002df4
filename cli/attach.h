// vcryptctl with `attach` and `detach` run in-process. They are the only
// commands that need libvirt, and linking libvirt (and the ~50 libraries
// it pulls in) would double vcryptctl's start-up time, which every open at
// boot pays. So vcryptctl (RunCli) does not link it: for these two
// commands it execs the helper program vcrypt-attach with its own argv,
// and that program is this function. Library vcrypt_cli_attach.
#ifndef VCRYPT_CLI_ATTACH_H_
#define VCRYPT_CLI_ATTACH_H_

#include <iosfwd>

namespace vcrypt {

// RunCli (cli/cli.h), with attach and detach implemented here rather than
// by exec'ing vcrypt-attach. Same arguments, output and exit codes.
int RunCliWithLibvirt(int argc, const char* const* argv, std::ostream& out,
                      std::ostream& err);

}  // namespace vcrypt

#endif  // VCRYPT_CLI_ATTACH_H_
