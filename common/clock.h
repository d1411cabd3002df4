// Wall-clock helpers for human-readable timestamps in state files.
#ifndef VCRYPT_COMMON_CLOCK_H_
#define VCRYPT_COMMON_CLOCK_H_

#include <string>

namespace vcrypt {

// The current time as RFC 3339 UTC, e.g. "2026-11-27T19:00:00Z".
std::string NowRfc3339();

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_CLOCK_H_
