// vcrypt-libvirt-hook: the libvirt qemu hook (libvirt/hook.h). Thin main:
// reads the domain XML from stdin, prints the hook's lines on stderr.
#include <unistd.h>

#include <cerrno>
#include <iostream>
#include <string>
#include <vector>

#include "libvirt/hook.h"
#include "libvirt/volumes.h"

namespace {

// All of stdin, at most `limit` bytes; false if there is more or a read
// fails.
bool ReadStdin(std::string* out, size_t limit) {
  char buf[65536];
  for (;;) {
    ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) return true;
    out->append(buf, static_cast<size_t>(r));
    if (out->size() > limit) return false;
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vcrypt;
  std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = ParseHookArgs(args);
  if (!parsed.ok()) {
    std::cerr << "vcrypt: " << parsed.error().message << "\n";
    return static_cast<int>(parsed.error().code);
  }
  const HookArgs& a = *parsed;
  // Most calls (start, started, stopped, reconnect, ...) need nothing.
  if (HookActionFor(a.operation, a.sub_operation) == HookAction::kNone)
    return 0;
  std::string xml;
  if (!ReadStdin(&xml, kMaxHookXmlSize)) {
    std::cerr << "vcrypt: cannot read the XML of domain " << a.domain
              << " from stdin (unreadable or larger than " << kMaxHookXmlSize
              << " bytes)\n";
    return static_cast<int>(ErrorCode::kIo);
  }
  DaemonVolumes vols(a.socket);
  HookOutcome out = RunHook(a, xml, vols);
  for (const auto& m : out.messages) std::cerr << m << "\n";
  return out.exit_code;
}
