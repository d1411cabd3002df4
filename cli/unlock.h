// The boot path: what the unlock units run (`vcryptctl unlock`,
// docs/boot.md). One process per volume asks vcryptd whether the VM wants
// its volumes opened at boot and opens the volume (one request), retrying
// what may pass
// (vcryptd not up yet, a key provider that cannot produce the KEK yet)
// until a deadline, and leaves a marker so that the unit's stop closes
// only what its start opened.
//
// The policy lives here, apart from the command line and the socket, so
// that tests drive it with their own clock: every wait goes through
// UnlockIo, nothing here sleeps or reads the time by itself.
#ifndef VCRYPT_CLI_UNLOCK_H_
#define VCRYPT_CLI_UNLOCK_H_

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace vcrypt {

using UnlockClock = std::chrono::steady_clock;

// What the policy needs from the world.
struct UnlockIo {
  // Sends one request to vcryptd and waits at most `timeout` for the
  // answer. A wait that runs out is kDaemonUnavailable with a message that
  // says so; so is a vcryptd that is not there.
  std::function<Result<nlohmann::json>(const std::string& op,
                                       const nlohmann::json& args,
                                       std::chrono::milliseconds timeout)>
      call;
  std::function<UnlockClock::time_point()> now;
  std::function<void(std::chrono::milliseconds)> sleep;
  // One progress line (the journal's), without a trailing newline.
  std::function<void(const std::string&)> log;
};

struct UnlockOptions {
  // No attempt starts after this much time from the start. The default is
  // the unit's.
  std::chrono::milliseconds deadline = std::chrono::seconds(30);
  // Each attempt waits for its answer until the deadline, but at least
  // this long: an open that started just before the deadline may finish.
  std::chrono::milliseconds min_attempt = std::chrono::seconds(10);
  // Backoff between attempts: 1, 2, 4, ... s, at most this.
  std::chrono::milliseconds max_delay = std::chrono::seconds(30);
  // Where the "opened by this start" markers go (the unit's
  // RuntimeDirectory); empty: none, and stop then closes nothing.
  std::string marker_dir;
};

// Whether a failed attempt may succeed later: vcryptd unreachable or not
// answering in time (kDaemonUnavailable), a key provider that cannot
// produce the KEK yet (kKeyUnavailable). Everything else is for good.
bool IsTransient(ErrorCode code);

// "VM/DISK", or a unit instance "VM-DISK" (split at the last '-': a VM
// name may contain '-', a disk name cannot). kUsage for anything else.
Result<std::pair<std::string, std::string>> ParseUnlockTarget(
    const std::string& text);

// ExecStart of vcrypt-unlock@VM-DISK: opens the volume (one `open` with
// `boot`, docs/protocol.md) unless its VM is unknown to vcryptd or has
// auto-unlock off, or an admin closed it on this boot
// (daemon/held_closed.h); each of those is success. On success after
// opening, writes the marker "opened". An error carries the last
// attempt's code; its message names the volume.
Status UnlockVolume(const std::string& vm, const std::string& disk,
                    const UnlockOptions& options, const UnlockIo& io);

// ExecStart of vcrypt-unlock-files.service: `open_all` (auto) of every
// volume of the VMs with auto-unlock (only image files with
// `file_backed`), retried while any volume failed for a transient reason;
// a volume that failed for good does not hold up the others. Appends what
// each attempt opened to the marker "opened-all". The error is the first
// failed volume's code, after one log line per failed volume.
Status UnlockAll(bool file_backed, const UnlockOptions& options,
                 const UnlockIo& io);

// ExecStop of the units: `close --auto` of the volume (or, with `vm`
// empty, of each volume in "opened-all") if the start's marker says it
// opened it, then removes the marker. A volume that does not close (in
// use) stays open and is logged; stopping never fails.
Status StopUnlocked(const std::string& vm, const std::string& disk,
                    const UnlockOptions& options, const UnlockIo& io);

}  // namespace vcrypt

#endif  // VCRYPT_CLI_UNLOCK_H_
