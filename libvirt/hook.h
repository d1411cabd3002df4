// The libvirt qemu hook (installed as /etc/libvirt/hooks/qemu.d/vcrypt;
// docs/libvirt.md). libvirtd runs it with DOMAIN OPERATION SUB-OPERATION
// EXTRA and the domain XML on stdin:
//   prepare begin  open every vcrypt disk of the domain through vcryptd;
//                  if one cannot be unlocked, close what this run opened
//                  and fail (libvirt then refuses to start the domain and
//                  shows the hook's stderr)
//   release end    close every vcrypt disk of the domain, best effort
//   anything else  nothing
// The hook talks to vcryptd only. It must never call libvirt: libvirtd
// waits for it while holding the domain's lock.
#ifndef VCRYPT_LIBVIRT_HOOK_H_
#define VCRYPT_LIBVIRT_HOOK_H_

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "libvirt/volumes.h"

namespace vcrypt {

inline constexpr size_t kMaxHookXmlSize = 16 << 20;  // bytes read from stdin

struct HookArgs {
  std::string socket = "/run/vcrypt/vcryptd.sock";
  std::string domain, operation, sub_operation, extra;
};

// The arguments after the program name:
//   [--socket PATH] DOMAIN OPERATION SUB-OPERATION EXTRA
// (--socket is for setups where vcryptd listens elsewhere: install a
// wrapper script that adds it). kUsage on anything else.
Result<HookArgs> ParseHookArgs(const std::vector<std::string>& args);

enum class HookAction { kNone, kOpen, kClose };
HookAction HookActionFor(std::string_view operation,
                         std::string_view sub_operation);

struct HookOutcome {
  int exit_code = 0;
  std::vector<std::string> messages;  // lines for stderr, "vcrypt: ..."
};

// Does what `args` asks for the domain described by `domain_xml`.
//   prepare: exit 0 when every vcrypt disk is open; else the ErrorCode of
//            the first failure and one line
//            "vcrypt: cannot unlock VM/DISK for domain D: <reason>".
//   release: a volume that is not open is fine; one that is still in use
//            stays open (a line says so, exit 0); any other failure is
//            reported and makes the exit code non-zero (libvirtd logs it),
//            after trying the remaining volumes.
HookOutcome RunHook(const HookArgs& args, std::string_view domain_xml,
                    VolumeControl& vols);

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_HOOK_H_
