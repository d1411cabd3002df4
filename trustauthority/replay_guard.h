// The Trust Authority's replay guard: single use of token and proof `jti`s
// and of quote nonces. Server state, so not with the token format in
// taprotocol/jws.h.
#ifndef VCRYPT_TRUSTAUTHORITY_REPLAY_GUARD_H_
#define VCRYPT_TRUSTAUTHORITY_REPLAY_GUARD_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/handles.h"
#include "common/result.h"

namespace vcrypt {

// Single use of identifiers (token `jti`s, quote nonces) across processes
// and replicas sharing one directory (docs/trusted.md, "Replicas and
// state").
//
// Each consumed id is one file in the directory, named by the hex SHA-256
// of the id (so any id, "../x" or "a/b" included, is a safe, fixed-length
// name) and holding its expiry in decimal seconds. The file is written
// complete under a temporary name and then hard-linked to its final name:
// link(2) fails with EEXIST if the name exists, atomically, on local file
// systems and on NFS alike (where it is the classic exclusive-create
// primitive), and a crash never leaves a final name with no expiry in it.
// Exactly one of any number of concurrent ConsumeOnce calls for one id
// returns true.
class ReplayGuard {
 public:
  // Opens (creating it, mode 0700, if missing) the directory. `grace` is
  // how long past its expiry an id stays recorded: it must cover the
  // verifier's leeway plus the clock difference between replicas, or an
  // id purged too early could be accepted again while still valid.
  static Result<ReplayGuard> Open(
      const std::string& dir,
      std::chrono::seconds grace = std::chrono::seconds{60});

  // true the first time `id` (non-empty, else kInvalidArgument) is seen,
  // false on every later call from any process, until Purge removes it.
  // `exp_unix` is the id's expiry (seconds since the epoch). kIo if the
  // directory cannot be written: the caller must then refuse the id.
  Result<bool> ConsumeOnce(std::string_view id, int64_t exp_unix);

  // Removes the entries whose exp_unix + grace is before `now`, and
  // temporary files left by a crash. Entries it cannot read or parse are
  // kept (an id stays consumed when in doubt). Safe to run concurrently
  // with ConsumeOnce and with other replicas' Purge.
  Status Purge(std::chrono::system_clock::time_point now);

  ReplayGuard(ReplayGuard&&) noexcept = default;
  ReplayGuard& operator=(ReplayGuard&&) noexcept = default;

 private:
  ReplayGuard(std::string dir, UniqueFd dir_fd, std::chrono::seconds grace)
      : dir_(std::move(dir)), dir_fd_(std::move(dir_fd)), grace_(grace) {}
  std::string dir_;
  UniqueFd dir_fd_;
  std::chrono::seconds grace_;
};

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_REPLAY_GUARD_H_
