// vcrypt-probe DEVICE: the udev probe of 90-vcrypt.rules (docs/boot.md).
// Answers from the fast probe (probe/probe.h) when it can; otherwise execs
// `vcryptctl probe DEVICE`, whose output and exit status (cli/probe.h) are
// then this program's. Exit 2: usage; 1: vcryptctl cannot be run.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/sibling_program.h"
#include "probe/probe.h"

int main(int argc, char** argv) {
  if (argc != 2 || argv[1][0] == '-' || argv[1][0] == '\0') {
    std::fputs("Usage: vcrypt-probe DEVICE\n", stderr);
    return 2;
  }
  std::string why;
  if (auto info = vcrypt::FastProbe(argv[1], &why)) {
    std::string out = vcrypt::FormatProbe(*info);
    return std::fwrite(out.data(), 1, out.size(), stdout) == out.size() &&
                   std::fflush(stdout) == 0
               ? 0
               : 1;
  }
  auto ctl = vcrypt::FindSiblingProgram("vcryptctl", VCRYPT_CTL_RELPATH);
  if (!ctl.ok()) {
    std::fprintf(stderr, "vcrypt-probe: %s\n", ctl.error().message.c_str());
    return 1;
  }
  const char* args[] = {ctl->c_str(), "probe", argv[1], nullptr};
  execv(ctl->c_str(), const_cast<char* const*>(args));
  std::fprintf(stderr, "vcrypt-probe: cannot run %s: %s\n", ctl->c_str(),
               std::strerror(errno));
  return 1;
}
