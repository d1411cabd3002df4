// The last failed open of each volume since its last successful one, and
// since when status has seen each volume's device missing: in memory only
// (a restart forgets both), keyed by LUKS UUID in any spelling (case and
// dashes do not matter; controller_ops::UuidKey). Shown as the "reason"
// of a locked or unavailable volume (DiskStatus).
//
// Thread-safe: one mutex of its own, held only inside these calls.
#ifndef VCRYPT_DAEMON_OPEN_FAILURES_H_
#define VCRYPT_DAEMON_OPEN_FAILURES_H_

#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "common/result.h"

namespace vcrypt {

// The last failed open of a volume since its last successful one.
struct OpenFailure {
  ErrorCode code;
  std::string message;
  std::string since;         // first failure with this code in a row
  std::string last_attempt;  // the latest failure
};

class OpenFailures {
 public:
  // Records `e` as the volume's last failure: `since` is kept while the
  // code stays the same, and restarts when it changes.
  void RecordFailure(const std::string& uuid, const Error& e);
  // Forgets the volume's failure (a successful open, an unregister).
  void ClearFailure(const std::string& uuid);
  std::optional<OpenFailure> FindFailure(const std::string& uuid);
  // When status first saw a volume's device missing (for "unavailable"):
  // with `missing`, the time of the first call in a row (now, the first
  // time); without, forgets it and returns "".
  std::string MissingSince(const std::string& uuid, bool missing);

 private:
  std::mutex failures_mu_;  // guards failures_ and missing_since_
  // Both by LUKS UUID (lower-case hex without dashes).
  std::map<std::string, OpenFailure> failures_;
  std::map<std::string, std::string> missing_since_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_OPEN_FAILURES_H_
