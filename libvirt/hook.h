// The libvirt qemu hook (installed as /etc/libvirt/hooks/qemu.d/vcrypt;
// docs/libvirt.md, docs/cluster.md). libvirtd runs it with DOMAIN
// OPERATION SUB-OPERATION EXTRA and the domain XML on stdin:
//   migrate begin  (destination of a live migration, before QEMU starts)
//   restore begin  (a saved domain is restored) check that this host can
//                  open every vcrypt disk of the domain: located by the
//                  LUKS UUID its vcrypt metadata records, header checked,
//                  KEK fetched (vm.incoming). A failure refuses the
//                  migration or restore with one line on stderr, which
//                  virsh shows. Nothing is written on stdout: libvirt
//                  takes empty output as "XML unchanged".
//   prepare begin  record the VM on this host from its volumes' headers
//                  when vcryptd does not know it (or knows it as away),
//                  then open every vcrypt disk of the domain through
//                  vcryptd; if one cannot be unlocked, close what this run
//                  opened and fail (libvirt then refuses to start the
//                  domain and shows the hook's stderr)
//   release end    close every vcrypt disk of the domain, best effort;
//                  when the domain migrated away (EXTRA "migrated",
//                  libvirt >= 10.5), tell vcryptd (vm.depart: KEK evicted,
//                  VM marked away). Older libvirt passes "-": the caller
//                  then confirms the departure once libvirtd is done
//                  (RunReleaseWatch).
//   anything else  nothing
// The hook itself never calls libvirt: libvirtd waits for it while
// holding the domain's lock.
#ifndef VCRYPT_LIBVIRT_HOOK_H_
#define VCRYPT_LIBVIRT_HOOK_H_

#include <chrono>
#include <functional>
#include <optional>
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

enum class HookAction { kNone, kCheck, kOpen, kClose };
HookAction HookActionFor(std::string_view operation,
                         std::string_view sub_operation);

struct HookOutcome {
  int exit_code = 0;
  std::vector<std::string> messages;  // lines for stderr, "vcrypt: ..."
  // release end without a shutoff reason: the VMs whose departure the
  // caller confirms with RunReleaseWatch after the hook has returned.
  std::vector<std::string> watch_vms;
};

// Does what `args` asks for the domain described by `domain_xml`.
//   prepare: exit 0 when every vcrypt disk is open; else the ErrorCode of
//            the first failure and one line
//            "vcrypt: cannot unlock VM/DISK for domain D: <reason>".
//   release: a volume that is not open is fine; one that is still in use
//            stays open (a line says so, exit 0); any other failure is
//            reported and makes the exit code non-zero (libvirtd logs it),
//            after trying the remaining volumes.
//   check:   exit 0 when every vcrypt disk can be opened here; else the
//            ErrorCode of the first failure and one line
//            "vcrypt: cannot take domain D: VM/DISK: <reason>". A live
//            migration also needs cache='none' (or 'directsync') on
//            every vcrypt disk (the two hosts use the volume at once).
HookOutcome RunHook(const HookArgs& args, std::string_view domain_xml,
                    VolumeControl& vols);

// What a domain's state after `release end` says about its vcrypt VMs:
// true when it left this host by migration (shut off, reason migrated).
// A domain that no longer exists (a transient one) says nothing.
bool MigratedAway(bool exists, int state, int reason);

// The watcher `release end -` leaves behind (libvirt < 10.5): waits, at
// most `timeout`, for libvirtd to finish with the domain (`state` returns
// std::nullopt for a domain that no longer exists, else {state, reason};
// it blocks while libvirtd holds the domain), and when it migrated away
// sends vm.depart for each of `vms`. Returns lines for the log.
struct DomainStateNow {
  int state = 0, reason = 0;
};
std::vector<std::string> RunReleaseWatch(
    const std::string& domain, const std::vector<std::string>& vms,
    const std::function<Result<std::optional<DomainStateNow>>()>& state,
    VolumeControl& vols, std::chrono::milliseconds timeout);

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_HOOK_H_
