// libFuzzer target for the firmware event log and the baseline documents
// the attestation service evaluates (trustauthority/eventlog.h,
// trustauthority/eventlog_policy.h). They must never crash, leak or hit
// UB, whatever the bytes; results are ignored.
//
// By the first byte (mode = byte % 2), the rest is used as:
//   0  an event log: ParseEventLog; if it parses, ReplayEventLog of every
//      bank it lists over PCRs 0-16 and 23, and MatchBaseline of a fixed
//      policy (allowing every digest of PCR 4 the log holds, so the rule
//      walk runs to its end, "any" elsewhere) with the replayed values as
//      the quote, so a parsed log reaches the policy evaluation;
//   1  a baseline document: ValidateBaselineDocument and MatchBaseline of
//      it against a fixed valid log and its own replayed values.
// Seeds: fuzz/seeds/eventlog/ (a small boot with and without a
// StartupLocality event, two banks; policies of each rule kind).
#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "common/hex.h"
#include "trustauthority/eventlog.h"
#include "trustauthority/eventlog_policy.h"

namespace {

const vcrypt::PcrSelection kSel{TPM2_ALG_SHA256, {0, 4, 7}};

void Put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> 8 * i));
}

// Spec ID (SHA-256 only), then one event per PCR of kSel with digest
// bytes `pcr + 1`.
std::vector<uint8_t> FixedLog() {
  std::vector<uint8_t> b;
  const char sig[16] = "Spec ID Event03";
  std::vector<uint8_t> spec(sig, sig + 16);
  Put32(spec, 0);
  spec.insert(spec.end(), {0, 2, 0, 2});
  Put32(spec, 1);
  spec.insert(spec.end(), {0x0b, 0x00, 32, 0, 0});
  Put32(b, 0);
  Put32(b, 3);
  b.insert(b.end(), 20, 0);
  Put32(b, static_cast<uint32_t>(spec.size()));
  b.insert(b.end(), spec.begin(), spec.end());
  for (uint32_t pcr : kSel.pcrs) {
    Put32(b, pcr);
    Put32(b, 4);
    Put32(b, 1);
    b.insert(b.end(), {0x0b, 0x00});
    b.insert(b.end(), 32, static_cast<uint8_t>(pcr + 1));
    Put32(b, 0);
  }
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::span<const uint8_t> rest(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    auto log = vcrypt::ParseEventLog(rest);
    if (!log.ok()) return 0;
    std::vector<uint32_t> pcrs;
    for (uint32_t p = 0; p <= 16; ++p) pcrs.push_back(p);
    pcrs.push_back(23);
    for (const auto& a : log->algorithms)
      (void)vcrypt::ReplayEventLog(*log, a.id, pcrs);
    auto quoted = vcrypt::ReplayEventLog(*log, TPM2_ALG_SHA256, kSel.pcrs);
    if (!quoted.ok()) return 0;
    std::string allow;
    for (const auto& e : log->events)
      for (const auto& d : e.digests)
        if (e.pcr == 4 && d.alg == TPM2_ALG_SHA256 && allow.size() < 60000)
          allow += std::string(allow.empty() ? "" : ",") + "\"" +
                   vcrypt::HexEncode(d.digest) + "\"";
    const std::string rule4 =
        allow.empty() ? "{\"any\":true}" : "{\"allow\":[" + allow + "]}";
    const std::vector<vcrypt::BaselineDocument> docs{
        {"p",
         "{\"policy\":{\"bank\":\"sha256\",\"pcrs\":{\"0\":{\"any\":true},"
         "\"4\":" +
             rule4 + ",\"7\":{\"any\":true}}}}",
         {}}};
    (void)vcrypt::MatchBaseline(docs, kSel, *quoted, rest, 0);
  } else {
    static const std::vector<uint8_t> log = FixedLog();
    static const std::vector<std::vector<uint8_t>> quoted = [] {
      auto parsed = vcrypt::ParseEventLog(log);
      if (!parsed.ok()) std::abort();  // the harness itself is broken
      auto v = vcrypt::ReplayEventLog(*parsed, TPM2_ALG_SHA256, kSel.pcrs);
      if (!v.ok()) std::abort();
      return *v;
    }();
    const std::string body(reinterpret_cast<const char*>(rest.data()),
                           rest.size());
    (void)vcrypt::ValidateBaselineDocument(body, kSel);
    const std::vector<vcrypt::BaselineDocument> docs{{"d", body, {}}};
    (void)vcrypt::MatchBaseline(docs, kSel, quoted, log, 0);
  }
  return 0;
}
