// The TCG PC Client firmware event log (docs/trusted.md, "Event-log
// baselines"): the binary log a host's firmware leaves in
// /sys/kernel/security/tpm0/binary_bios_measurements, parsed and replayed
// by the attestation service.
//
// Format (TCG PC Client Platform Firmware Profile, "crypto agile" log):
//   - first event, in the SHA-1 TCG_PCClientPCREvent layout: PCR index
//     (u32) 0, type (u32) EV_NO_ACTION, digest (20 bytes), data size (u32),
//     data = TCG_EfiSpecIDEvent: "Spec ID Event03\0", platformClass (u32),
//     specVersionMinor/Major, specErrata, uintnSize (u8 each),
//     numberOfAlgorithms (u32), {algorithmId (u16), digestSize (u16)}...,
//     vendorInfoSize (u8), vendorInfo;
//   - then TCG_PCR_EVENT2 records: PCR index (u32), type (u32),
//     TPML_DIGEST_VALUES {count (u32), {hashAlg (u16), digest}...}, data
//     size (u32), data.
// Every integer is LITTLE-endian (unlike the TPM's own wire format).
// EV_NO_ACTION events are never extended into a PCR; one of them, the
// "StartupLocality\0" event in PCR 0, tells the locality TPM2_Startup ran
// at, which is PCR 0's initial value (its last byte).
//
// Why our own parser (the issue asked "say which, and why"):
//  - tpm2-tss 3.2.1 (Debian 12) has no firmware event-log parser at all:
//    libtss2-fapi exports only the Fapi_* API and its ifapi_eventlog is
//    FAPI's own JSON log of Fapi_PcrExtend calls. (tpm2-tss 4.x grew an
//    internal firmware-log reader for Fapi_Quote; it is not exported API
//    either, and FAPI needs a key store and profiles the service has no
//    use for.)
//  - tpm2-tools' `tpm2_eventlog` (5.4) is a CLI printing YAML: a process
//    per attestation on a privileged service, a second parser (YAML) for
//    its output, no bounds of ours, and it replays differently from the
//    specification: with a StartupLocality event (locality 3) before a
//    PCR 0 measurement, 5.4 printed H(H(0 || 0) || d), the event's zero
//    digest extended and the locality ignored, where the TPM holds
//    H(0...03 || d) (see EventLogAttestTest). It also refuses whole logs
//    whose event data it cannot decode (e.g. a short UEFI variable).
//  So this is a small bounded parser (about 300 lines) that the fuzz target
//  fuzz/eventlog_fuzz.cc runs whole; tpm2_eventlog serves the tests as an
//  independent oracle on logs where it follows the specification.
//
// Bounds (hostile input: the log comes from the network): the whole log
// at most kMaxEventLogSize bytes, at most kMaxEvents events, event data at
// most kMaxEventDataSize bytes, at most kMaxAlgorithms algorithms in the
// Spec ID table and digests per event. Every length is checked before it
// is used; anything truncated, trailing or unknown is refused.
#ifndef VCRYPT_TRUSTAUTHORITY_EVENTLOG_H_
#define VCRYPT_TRUSTAUTHORITY_EVENTLOG_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace vcrypt {

inline constexpr size_t kMaxEventLogSize = size_t{1} << 20;  // 1 MiB
// Real logs have 50-500 events.
inline constexpr size_t kMaxEvents = 8192;
// Larger than any db/dbx variable event seen (dbx ~30 KiB).
inline constexpr size_t kMaxEventDataSize = 256 * 1024;
inline constexpr size_t kMaxAlgorithms = 8;

inline constexpr uint32_t kEvNoAction = 0x00000003;
inline constexpr uint32_t kEvSeparator = 0x00000004;

// One algorithm of the Spec ID event's table.
struct EventLogAlgorithm {
  uint16_t id = 0;  // TPM_ALG_ID
  uint16_t digest_size = 0;
};

struct EventLogDigest {
  uint16_t alg = 0;
  std::vector<uint8_t> digest;
};

struct EventLogEvent {
  size_t index = 0;  // position in the log; the Spec ID event is 0
  uint32_t pcr = 0;
  uint32_t type = 0;
  std::vector<EventLogDigest> digests;  // each algorithm at most once
  std::vector<uint8_t> data;
};

struct EventLog {
  std::vector<EventLogAlgorithm> algorithms;  // the Spec ID event's table
  // 0 unless a StartupLocality event says otherwise (then 0, 3 or 4).
  uint8_t startup_locality = 0;
  // Every event after the Spec ID event, EV_NO_ACTION ones included (they
  // are kept for the record; Replay skips them).
  std::vector<EventLogEvent> events;
};

// Parses a crypto-agile TCG PC Client event log. Checks, each refused with
// kInvalidArgument and one line naming the event index and what is wrong:
// the size bounds above; the first event is EV_NO_ACTION in PCR 0 carrying
// exactly one TCG_EfiSpecIDEvent ("Spec ID Event03", spec version 2, 1 to
// kMaxAlgorithms algorithms, each known (SHA-1, SHA-256, SHA-384, SHA-512,
// SM3-256) with its right digest size, none twice); each later event has
// a PCR index below 24, 1 to kMaxAlgorithms digests, each of an algorithm
// of the table and at most once, and is complete; a StartupLocality event
// is EV_NO_ACTION in PCR 0, 17 bytes, locality 0, 3 or 4, at most one and
// before any event extends PCR 0. A TPM 1.2 (SHA-1 only) log is refused.
Result<EventLog> ParseEventLog(std::span<const uint8_t> bytes);

// The values the PCRs `pcrs` of bank `alg` (TPM_ALG_ID) have after the
// log's events, in the order of `pcrs`: each starts at zero (PCR 0: the
// startup locality in its last byte) and is extended, in log order, with
// the `alg` digest of every event of its index that is not EV_NO_ACTION.
// kInvalidArgument when the log has no `alg` bank, an event to replay
// lacks an `alg` digest, or a PCR is 17-22 (the D-RTM PCRs start at -1 and
// are reset by a late launch the firmware log does not describe) or above
// 23.
Result<std::vector<std::vector<uint8_t>>> ReplayEventLog(
    const EventLog& log, uint16_t alg, std::span<const uint32_t> pcrs);

// "EV_EFI_BOOT_SERVICES_APPLICATION", ..., or "0x%08x" for a type this
// does not name. For messages and policies (eventlog_policy.h).
std::string EventTypeName(uint32_t type);
// The inverse for the names EventTypeName gives (names and "0x..."
// forms); false when `name` is neither.
bool EventTypeFromName(const std::string& name, uint32_t* type);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_EVENTLOG_H_
