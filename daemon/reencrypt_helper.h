// The child process that runs a LUKS2 reencryption for vcryptd.
//
// crypt_reencrypt_run takes minutes and every libcryptsetup call of a
// process is serialised by one lock (dmtools/volume.h), so vcryptd would
// stop opening volumes for as long. It therefore runs the reencryption in
// a child: vcryptd re-executes itself as `vcryptd --reencrypt-helper`
// (exec, not a bare fork: vcryptd is multi-threaded and libcryptsetup is
// not fork-safe).
//
// Parent to child, on the child's stdin, one protocol message
// (common/wire.h): {"device": D, "active_name": N} with the reencryption
// passphrase on the secret channel (never argv or environment).
// Child to parent, on its stdout, messages {"done": B, "total": T} as it
// goes (at most every 1% or 0.5 s), then {"ok": true} or
// {"ok": false, "error": {"code": NAME, "message": LINE}}.
// The child asks the kernel to send it SIGTERM when vcryptd dies
// (PR_SET_PDEATHSIG) and stops cleanly at the next chunk on SIGTERM or
// SIGINT; SIGKILL stops it anywhere, which the LUKS2 resilience data
// covers (RunReencrypt recovers the step next time).
#ifndef VCRYPT_DAEMON_REENCRYPT_HELPER_H_
#define VCRYPT_DAEMON_REENCRYPT_HELPER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

struct ReencryptJob {
  std::string device;
  std::string active_name;  // dm name for an online reencryption, "" offline
};

// Runs `argv` (argv[0] an absolute path) as the helper for `job` and
// waits for it, calling `progress(done, total)` for each report. Returns
// the helper's result: ok when the reencryption finished, the error it
// reported, or kIo when it could not be started or died without a
// result (the message names the signal).
Status RunReencryptHelper(
    const std::vector<std::string>& argv, const ReencryptJob& job,
    const SecureBuffer& passphrase,
    const std::function<void(uint64_t, uint64_t)>& progress);

// main() of `vcryptd --reencrypt-helper`: reads the job from stdin, runs
// dmtools' RunReencrypt, reports on stdout. Returns the exit status.
int ReencryptHelperMain();

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_REENCRYPT_HELPER_H_
