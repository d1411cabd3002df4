// Baselines the attestation service compares a quote with (docs/trusted.md,
// "Event-log baselines"): raw PCR values, or a policy over the events of
// the host's firmware event log (trustauthority/eventlog.h), so that one
// baseline approves several shim/GRUB/kernel versions at once and a
// firmware or boot-loader update does not lock hosts out.
//
// A baseline document is a JSON object, one of:
//
//   {"values": ["<hex>", ...]}
//       raw: exactly the service selection's PCR values, in its order
//       (lower-case hex, as the service has always stored them);
//
//   {"policy": {"bank": "sha256",
//               "pcrs": {"0": {"allow": ["<hex digest>", ...]},
//                        "4": {"allow": ["<hex>",
//                                        {"type":
//                                        "EV_EFI_BOOT_SERVICES_APPLICATION",
//                                         "digest": "<hex>"}]},
//                        "5": {"value": "<hex PCR value>"},
//                        "6": {"any": true}}}}
//       policy: the host's event log must replay (in `bank`, which must
//       be the selection's) to exactly the quoted PCR values, and for each
//       PCR of the selection its rule holds:
//         allow  every event extended into the PCR (EV_NO_ACTION ones are
//                not extended) has a `bank` digest in the list, and there
//                is at least one such event. A bare hex string allows the
//                digest for any event type; {"type", "digest"} only for
//                events of that type (a name EventTypeName gives, e.g.
//                "EV_SEPARATOR", or "0x" and 8 lower-case hex digits).
//         value  the quoted PCR value is this one (a PCR that never
//                changes, without listing its events);
//         any    the PCR is not checked (it still must replay): an
//                explicit opt-out, e.g. for a PCR holding host-specific
//                measurements (PCR 5's GPT event).
//       Every PCR of the selection must have a rule, and no other PCR may:
//       a PCR left out is refused, never taken as "any". The safe default
//       for a forgotten PCR is to check it, and a rule for a PCR the
//       service does not quote would look like a check that never runs.
//       The rules check which components booted, not their order nor
//       their count; order and completeness are what the replay against
//       the TPM's quote guarantees.
//
// Either kind may carry "expires": unix seconds, after which it is
// ignored (a staged update: the new components' policy is added next to
// the current one and expires once the fleet has moved over).
//
// Bounds: a document is at most kMaxBaselineDocumentSize bytes with at most
// kMaxPolicyDigests allowed digests in all; unknown members are refused.
#ifndef VCRYPT_TRUSTAUTHORITY_EVENTLOG_POLICY_H_
#define VCRYPT_TRUSTAUTHORITY_EVENTLOG_POLICY_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "trustauthority/quote.h"

namespace vcrypt {

inline constexpr size_t kMaxBaselineDocumentSize = 256 * 1024;
inline constexpr size_t kMaxPolicyDigests = 4096;

struct BaselineDocument {
  std::string name;
  std::string body;  // the JSON document above
  // Unix seconds, from the store; the body's own "expires" applies too
  // (whichever is earlier).
  std::optional<int64_t> expires;
};

// Whether `body` is a well-formed baseline document for `selection` (what
// an admin command checks before storing one). kInvalidArgument with one
// line saying what is wrong.
Status ValidateBaselineDocument(std::string_view body,
                                const PcrSelection& selection);

// The name of the first document in `baselines` (in their order) that is
// not expired at `now` (expires <= now: expired) and that the quote
// matches. `quoted` are the selection's PCR values as VerifyQuote proved
// them (one per PCR of `selection`, in its order); `event_log` is the
// host's binary log, if it sent one. Raw documents never look at the log,
// so a host whose log cannot be parsed still matches a raw baseline.
// Malformed documents are skipped (and named in the reason).
// kPermissionDenied when none matches, with one line: "no approved
// baseline matches" and the first reason a policy gave, e.g. "baseline
// 'fw-2026-11': PCR 4 event 12 (EV_EFI_BOOT_SERVICES_APPLICATION) digest
// ab12cd34... is not allowed", or why the log was refused.
Result<std::string> MatchBaseline(
    const std::vector<BaselineDocument>& baselines,
    const PcrSelection& selection,
    const std::vector<std::vector<uint8_t>>& quoted,
    std::optional<std::span<const uint8_t>> event_log, int64_t now);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_EVENTLOG_POLICY_H_
