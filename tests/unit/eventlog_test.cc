// The firmware event-log parser and replay (trustauthority/eventlog.h) and
// the baseline policies (trustauthority/eventlog_policy.h) on logs built
// in the test (tests/unit/eventlog_builder.h), cross-checked with
// tpm2-tools' tpm2_eventlog where it follows the specification. Against a
// real TPM (swtpm): tests/unit/eventlog_attest_test.cc.
#include "trustauthority/eventlog.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "common/hex.h"
#include "tests/test_util.h"
#include "tests/unit/eventlog_builder.h"
#include "tests/unit/swtpm.h"
#include "trustauthority/eventlog_policy.h"

namespace vcrypt {
namespace {

using testing::EventLogBuilder;
using testing::TestBytes;
using Json = nlohmann::json;

constexpr uint32_t kEvPostCode = 0x1;
constexpr uint32_t kEvSCrtmVersion = 0x8;
constexpr uint32_t kEvBootApp = 0x80000003;  // EV_EFI_BOOT_SERVICES_APPLICATION

const PcrSelection kSel{TPM2_ALG_SHA256, {0, 4, 7}};

// UEFI_IMAGE_LOAD_EVENT with no device path (what tpm2_eventlog decodes).
std::vector<uint8_t> ImageLoad(uint8_t tag) {
  std::vector<uint8_t> d(32, 0);
  d[0] = tag;
  return d;
}

// A small boot: CRTM version and POST code into PCR 0, shim and kernel
// into PCR 4, a separator into each of 0, 4, 7 and Secure Boot state into
// PCR 7. Digests of shim and kernel in *shim / *kernel.
EventLogBuilder SmallBoot(bool locality3, std::vector<uint8_t>* shim = nullptr,
                          std::vector<uint8_t>* kernel = nullptr,
                          uint8_t kernel_tag = 2,
                          std::vector<EventLogBuilder::Alg> algs = {
                              {TPM2_ALG_SHA256, 32}}) {
  EventLogBuilder b(algs);
  if (locality3) b.StartupLocality(3);
  b.Measure(0, kEvSCrtmVersion, TestBytes("firmware 1.0"));
  b.Measure(0, kEvPostCode, TestBytes("post"));
  auto s = b.Measure(4, kEvBootApp, ImageLoad(1));
  auto k = b.Measure(4, kEvBootApp, ImageLoad(kernel_tag));
  const std::vector<uint8_t> sep(4, 0);
  for (uint32_t pcr : {0u, 4u, 7u}) b.Measure(pcr, kEvSeparator, sep);
  b.Measure(7, 0x80000001, testing::UefiVariable("SecureBoot", {1}));
  if (shim) *shim = s;
  if (kernel) *kernel = k;
  return b;
}

std::vector<std::vector<uint8_t>> Expected(const EventLogBuilder& b,
                                           const PcrSelection& sel = kSel) {
  std::vector<std::vector<uint8_t>> v;
  for (uint32_t p : sel.pcrs) v.push_back(b.Expected(p));
  return v;
}

void ExpectRefused(const std::vector<uint8_t>& log, const std::string& what) {
  auto r = ParseEventLog(log);
  ASSERT_FALSE(r.ok()) << "accepted; expected: " << what;
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find(what), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
}

TEST(EventLogTest, ParsesAndReplaysASynthesizedLog) {
  for (bool locality3 : {false, true}) {
    EventLogBuilder b = SmallBoot(locality3);
    auto log = ParseEventLog(b.bytes());
    ASSERT_TRUE(log.ok()) << log.error().message;
    EXPECT_EQ(log->startup_locality, locality3 ? 3 : 0);
    ASSERT_EQ(log->algorithms.size(), 1u);
    EXPECT_EQ(log->events.size(), locality3 ? 9u : 8u);
    EXPECT_EQ(log->events.front().index, 1u);
    auto replayed = ReplayEventLog(*log, TPM2_ALG_SHA256, kSel.pcrs);
    ASSERT_TRUE(replayed.ok()) << replayed.error().message;
    EXPECT_EQ(*replayed, Expected(b));
    // An untouched PCR replays to zero.
    const std::vector<uint32_t> one{1};
    EXPECT_EQ((*ReplayEventLog(*log, TPM2_ALG_SHA256, one))[0],
              std::vector<uint8_t>(32, 0));
  }
}

// tpm2_eventlog (tpm2-tools) as an independent implementation: its
// replayed "pcrs:" must equal ours, for one bank and for two. (It differs
// from the specification on EV_NO_ACTION events, which it extends, and
// on StartupLocality, which it ignores, so those are checked against a
// real TPM in eventlog_attest_test.cc instead.)
TEST(EventLogTest, ReplayAgreesWithTpm2Eventlog) {
  std::string out;
  if (testing::RunShell("command -v tpm2_eventlog", &out) != 0)
    GTEST_SKIP() << "tpm2_eventlog is not installed (tpm2-tools)";
  testing::TempDir dir("eventlog");
  for (bool two_banks : {false, true}) {
    std::vector<EventLogBuilder::Alg> algs{{TPM2_ALG_SHA256, 32}};
    if (two_banks) algs.insert(algs.begin(), {TPM2_ALG_SHA1, 20});
    EventLogBuilder b = SmallBoot(false, nullptr, nullptr, 2, algs);
    const std::string path = dir.path() + "/log.bin";
    ASSERT_TRUE(testing::WriteBytes(path, b.bytes()));
    ASSERT_EQ(testing::RunShell("tpm2_eventlog " + path, &out), 0) << out;
    // "pcrs:\n  sha256:\n    0  : 0x..." (then sha1: ... when present)
    const size_t at = out.find("\n  sha256:\n");
    ASSERT_NE(at, std::string::npos) << out;
    std::istringstream lines(out.substr(at + 11));
    std::map<uint32_t, std::string> tool;
    std::string line;
    const std::regex re(R"(^\s+(\d+)\s*:\s*0x([0-9a-fA-F]{64})\s*$)");
    while (std::getline(lines, line)) {
      std::smatch m;
      if (!std::regex_match(line, m, re)) break;
      std::string hex = m[2];
      for (char& c : hex) c = static_cast<char>(std::tolower(c));
      tool[static_cast<uint32_t>(std::stoul(m[1]))] = hex;
    }
    ASSERT_EQ(tool.size(), 3u) << out;
    auto log = ParseEventLog(b.bytes());
    ASSERT_TRUE(log.ok()) << log.error().message;
    for (const auto& [pcr, hex] : tool) {
      const std::vector<uint32_t> one{pcr};
      auto ours = ReplayEventLog(*log, TPM2_ALG_SHA256, one);
      ASSERT_TRUE(ours.ok());
      EXPECT_EQ(HexEncode((*ours)[0]), hex) << "PCR " << pcr;
    }
  }
}

// Every prefix of a log is refused by the parser, or (a prefix ending on
// an event boundary is a well-formed shorter log) by the replay against
// the full boot's quoted values; no prefix crashes or matches a policy.
TEST(EventLogTest, EveryTruncationIsRefused) {
  std::vector<uint8_t> shim, kernel;
  EventLogBuilder b = SmallBoot(true, &shim, &kernel);
  const auto& full = b.bytes();
  std::string policy = Json{{"policy",
                             {{"bank", "sha256"},
                              {"pcrs",
                               {{"0", {{"any", true}}},
                                {"4", {{"any", true}}},
                                {"7", {{"any", true}}}}}}}}
                           .dump();
  const std::vector<BaselineDocument> docs{{"p", policy, {}}};
  auto ok = MatchBaseline(docs, kSel, Expected(b), std::span(full), 0);
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  size_t parsed = 0;
  for (size_t n = 0; n < full.size(); ++n) {
    std::span<const uint8_t> prefix(full.data(), n);
    auto log = ParseEventLog(prefix);
    if (log.ok()) {
      ++parsed;
    } else {
      EXPECT_EQ(log.error().code, ErrorCode::kInvalidArgument);
      EXPECT_EQ(log.error().message.rfind("event log: ", 0), 0u);
    }
    auto m = MatchBaseline(docs, kSel, Expected(b), prefix, 0);
    ASSERT_FALSE(m.ok()) << "prefix of " << n << " bytes matched";
    EXPECT_EQ(m.error().code, ErrorCode::kPermissionDenied);
  }
  // The boundaries after the Spec ID event and each event but the last.
  EXPECT_EQ(parsed, 9u);
}

TEST(EventLogTest, UnknownAlgorithmsAreRefused) {
  // In the Spec ID table.
  EventLogBuilder unknown({{TPM2_ALG_SHA256, 32}, {0x0099, 32}});
  ExpectRefused(unknown.bytes(),
                "event 0: Spec ID event lists unknown "
                "algorithm 0x0099");
  // A known algorithm with another size than its own.
  EventLogBuilder wrong_size({{TPM2_ALG_SHA256, 20}});
  ExpectRefused(wrong_size.bytes(), "digest size 20 (it is 32)");
  // In an event, not listed in the table.
  EventLogBuilder b;
  b.Measure(0, kEvPostCode, TestBytes("a"));
  b.Event(4, kEvBootApp, {{TPM2_ALG_SHA384, std::vector<uint8_t>(48, 1)}},
          TestBytes("x"));
  ExpectRefused(b.bytes(),
                "event 2: digest of algorithm 0x000c, which the "
                "Spec ID event does not list");
  // The same algorithm twice in one event.
  EventLogBuilder twice;
  twice.Event(4, kEvBootApp,
              {{TPM2_ALG_SHA256, std::vector<uint8_t>(32, 1)},
               {TPM2_ALG_SHA256, std::vector<uint8_t>(32, 2)}},
              TestBytes("x"));
  ExpectRefused(twice.bytes(), "event 1: 2 digests (1-1");
  // A bank the log does not have cannot be replayed.
  EventLogBuilder sha1_only({{TPM2_ALG_SHA1, 20}});
  sha1_only.Measure(0, kEvPostCode, TestBytes("a"));
  auto log = ParseEventLog(sha1_only.bytes());
  ASSERT_TRUE(log.ok()) << log.error().message;
  auto r = ReplayEventLog(*log, TPM2_ALG_SHA256, kSel.pcrs);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no 0x000b bank"), std::string::npos);
}

TEST(EventLogTest, OversizedLogsAndEventsAreRefused) {
  // More events than kMaxEvents (each ~60 bytes: well under 1 MiB).
  EventLogBuilder many;
  for (size_t i = 0; i <= kMaxEvents; ++i)
    many.Event(4, kEvBootApp, {{TPM2_ALG_SHA256, std::vector<uint8_t>(32, 1)}},
               {});
  ASSERT_LT(many.bytes().size(), kMaxEventLogSize);
  ExpectRefused(many.bytes(), "event " + std::to_string(kMaxEvents + 1) +
                                  ": more than 8192 events");
  // The whole log above 1 MiB.
  EventLogBuilder big;
  const std::vector<uint8_t> chunk(200 * 1024, 7);
  for (int i = 0; i < 6; ++i) big.Measure(4, kEvBootApp, chunk);
  ExpectRefused(big.bytes(), "bytes exceed the limit of 1048576");
  // One event's data above kMaxEventDataSize, with or without the bytes.
  EventLogBuilder fat;
  fat.Measure(4, kEvBootApp, std::vector<uint8_t>(kMaxEventDataSize + 1, 1));
  ExpectRefused(fat.bytes(), "event 1: data size 262145 exceeds 262144");
  EventLogBuilder huge;
  huge.Measure(4, kEvBootApp, TestBytes("x"));
  auto& bytes = huge.mutable_bytes();
  // The data size is the 4 bytes before the last one.
  for (size_t i = bytes.size() - 5; i < bytes.size() - 1; ++i) bytes[i] = 0xff;
  ExpectRefused(bytes, "event 1: data size 4294967295 exceeds");
  // A digest count far beyond the table.
  EventLogBuilder count;
  count.Event(4, kEvBootApp, {}, {});
  auto& c = count.mutable_bytes();
  const size_t at = c.size() - 8;  // count, then the data size
  for (size_t i = at; i < at + 4; ++i) c[i] = 0xff;
  ExpectRefused(c, "event 1: 4294967295 digests (1-1");
}

TEST(EventLogTest, MalformedFirstEventsAndLocalitiesAreRefused) {
  // A TPM 1.2 log: SHA-1 events from the start.
  std::vector<uint8_t> tpm12(32, 0);
  tpm12[4] = 8;  // EV_S_CRTM_VERSION
  ExpectRefused(tpm12, "not a crypto-agile log");
  EventLogBuilder b;
  auto bytes = b.bytes();
  bytes[32 + 16 + 5] = 1;  // specVersionMajor
  ExpectRefused(bytes, "Spec ID event version 1");
  // PCR index beyond 23.
  EventLogBuilder pcr;
  pcr.Measure(24, kEvPostCode, TestBytes("a"));
  ExpectRefused(pcr.bytes(), "event 1: PCR index 24");
  // StartupLocality after PCR 0 was extended, twice, or an odd locality.
  EventLogBuilder late;
  late.Measure(0, kEvPostCode, TestBytes("a"));
  late.StartupLocality(3);
  ExpectRefused(late.bytes(), "event 2: StartupLocality event after PCR 0");
  EventLogBuilder two;
  two.StartupLocality(3);
  two.StartupLocality(3);
  ExpectRefused(two.bytes(), "event 2: a second StartupLocality event");
  EventLogBuilder odd;
  odd.StartupLocality(2);
  ExpectRefused(odd.bytes(), "event 1: startup locality 2 (0, 3 or 4)");
  // The D-RTM PCRs are not replayed.
  auto log = ParseEventLog(SmallBoot(false).bytes());
  ASSERT_TRUE(log.ok());
  const std::vector<uint32_t> drtm{17};
  EXPECT_FALSE(ReplayEventLog(*log, TPM2_ALG_SHA256, drtm).ok());
}

// --- policies ----------------------------------------------------------------

Json Policy(const Json& pcrs) {
  return {{"policy", {{"bank", "sha256"}, {"pcrs", pcrs}}}};
}

Json Allow(std::initializer_list<std::vector<uint8_t>> digests) {
  Json a = Json::array();
  for (const auto& d : digests) a.push_back(HexEncode(d));
  return {{"allow", a}};
}

// The policy of SmallBoot: every digest it measures, per PCR.
Json BootPolicy(const std::vector<uint8_t>& shim,
                const std::vector<uint8_t>& kernel) {
  const auto sep =
      testing::TestDigest(TPM2_ALG_SHA256, std::vector<uint8_t>(4));
  auto d = [](const std::string& s) {
    return testing::TestDigest(TPM2_ALG_SHA256, TestBytes(s));
  };
  Json pcr4 = Allow({shim, sep});
  pcr4["allow"].push_back({{"type", "EV_EFI_BOOT_SERVICES_APPLICATION"},
                           {"digest", HexEncode(kernel)}});
  return Policy(
      {{"0", Allow({d("firmware 1.0"), d("post"), sep})},
       {"4", pcr4},
       {"7", Allow({sep, testing::TestDigest(
                             TPM2_ALG_SHA256,
                             testing::UefiVariable("SecureBoot", {1}))})}});
}

Result<std::string> Match(const std::vector<BaselineDocument>& docs,
                          const EventLogBuilder& b, int64_t now = 1000) {
  return MatchBaseline(docs, kSel, Expected(b), std::span(b.bytes()), now);
}

TEST(EventLogPolicyTest, APolicyAllowsTheComponentsItLists) {
  std::vector<uint8_t> shim, kernel, kernel2;
  EventLogBuilder b = SmallBoot(true, &shim, &kernel);
  const std::string policy = BootPolicy(shim, kernel).dump();
  ASSERT_TRUE(ValidateBaselineDocument(policy, kSel).ok());
  auto m = Match({{"boot", policy, {}}}, b);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(*m, "boot");

  // Another kernel: refused, naming the PCR, the event and its type.
  EventLogBuilder update = SmallBoot(true, nullptr, &kernel2, 9);
  auto r = Match({{"boot", policy, {}}}, update);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(r.error().message,
            "no approved baseline matches (baseline 'boot': PCR 4 event 5 "
            "(EV_EFI_BOOT_SERVICES_APPLICATION) digest " +
                HexEncode(kernel2).substr(0, 16) + "... is not allowed)");
  // A staged second policy with the new kernel: accepted by it, until it
  // expires (in the store's expiry or in its own body).
  const std::string staged = BootPolicy(shim, kernel2).dump();
  m = Match({{"boot", policy, {}}, {"staged", staged, 2000}}, update);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(*m, "staged");
  EXPECT_FALSE(
      Match({{"boot", policy, {}}, {"staged", staged, 1000}}, update).ok());
  Json expiring = BootPolicy(shim, kernel2);
  expiring["expires"] = 1000;
  EXPECT_FALSE(
      Match({{"boot", policy, {}}, {"staged", expiring.dump(), {}}}, update)
          .ok());
  expiring["expires"] = 1001;
  EXPECT_TRUE(
      Match({{"boot", policy, {}}, {"staged", expiring.dump(), {}}}, update)
          .ok());

  // The kernel digest allowed only as another event type does not pass.
  Json typed = BootPolicy(shim, kernel);
  typed["policy"]["pcrs"]["4"]["allow"][2]["type"] =
      "EV_EFI_BOOT_SERVICES_DRIVER";
  r = Match({{"typed", typed.dump(), {}}}, b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("PCR 4 event 5"), std::string::npos);
}

TEST(EventLogPolicyTest, TheLogMustReplayToTheQuote) {
  std::vector<uint8_t> shim, kernel;
  EventLogBuilder b = SmallBoot(true, &shim, &kernel);
  const std::string policy = BootPolicy(shim, kernel).dump();
  // PCR 4 quoted with another value than the log gives.
  auto quoted = Expected(b);
  quoted[1][0] ^= 1;
  auto r = MatchBaseline(std::vector<BaselineDocument>{{"boot", policy, {}}},
                         kSel, quoted, std::span(b.bytes()), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(r.error().message.find(
                "the event log does not replay to the quoted PCR 4"),
            std::string::npos)
      << r.error().message;
  // The log without its StartupLocality event: PCR 0 differs.
  EventLogBuilder no_locality = SmallBoot(false);
  r = MatchBaseline(std::vector<BaselineDocument>{{"boot", policy, {}}}, kSel,
                    Expected(b), std::span(no_locality.bytes()), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("quoted PCR 0"), std::string::npos);
  // No log at all.
  r = MatchBaseline(std::vector<BaselineDocument>{{"boot", policy, {}}}, kSel,
                    Expected(b), std::nullopt, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("the host sent no event log"),
            std::string::npos);
  // A log that does not parse: its line is the reason.
  auto broken = b.bytes();
  broken.resize(broken.size() - 1);
  r = MatchBaseline(std::vector<BaselineDocument>{{"boot", policy, {}}}, kSel,
                    Expected(b), std::span(broken), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("event log: event 9: truncated data"),
            std::string::npos)
      << r.error().message;
}

TEST(EventLogPolicyTest, RawBaselinesWorkWhateverTheLog) {
  EventLogBuilder b = SmallBoot(false);
  Json vals = Json::array();
  for (const auto& v : Expected(b)) vals.push_back(HexEncode(v));
  const std::string raw = Json{{"values", vals}}.dump();
  ASSERT_TRUE(ValidateBaselineDocument(raw, kSel).ok());
  const std::vector<uint8_t> garbage(10, 0xee);
  for (auto log : {std::optional<std::span<const uint8_t>>(),
                   std::optional<std::span<const uint8_t>>(garbage)}) {
    auto m = MatchBaseline(std::vector<BaselineDocument>{{"golden", raw, {}}},
                           kSel, Expected(b), log, 0);
    ASSERT_TRUE(m.ok()) << m.error().message;
    EXPECT_EQ(*m, "golden");
  }
  auto other = Expected(b);
  other[2][5] ^= 1;
  auto r = MatchBaseline(std::vector<BaselineDocument>{{"golden", raw, {}}},
                         kSel, other, std::nullopt, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "no approved baseline matches");
}

TEST(EventLogPolicyTest, MalformedPoliciesAreRefused) {
  auto invalid = [](const Json& doc, const std::string& what) {
    Status s = ValidateBaselineDocument(doc.dump(), kSel);
    ASSERT_FALSE(s.ok()) << doc.dump();
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(s.error().message.find(what), std::string::npos)
        << s.error().message;
  };
  const Json any = {{"any", true}};
  invalid(Policy({{"0", any}, {"4", any}, {"7", any}, {"8", any}}),
          "policy PCR 8 is not in the service's PCR selection");
  invalid(Policy({{"0", any}, {"4", any}}), "policy has no rule for PCR 7");
  invalid(Policy({{"0", any}, {"4", any}, {"07", any}}),
          "policy PCR '07' is not a number");
  invalid(Policy({{"0", any}, {"4", {{"allow", {"abcd"}}}}, {"7", any}}),
          "policy PCR 4: not 32 bytes of hex");
  invalid(Policy({{"0", any}, {"4", {{"allow", Json::array()}}}, {"7", any}}),
          "'allow' must be a non-empty array");
  invalid(
      Policy({{"0", any},
              {"4", {{"allow", {{{"type", "EV_BOGUS"}, {"digest", "00"}}}}}},
              {"7", any}}),
      "unknown event type 'EV_BOGUS'");
  invalid(
      Policy({{"0", any}, {"4", {{"any", true}, {"value", "00"}}}, {"7", any}}),
      "exactly one of allow, value, any");
  Json sha1 = Policy({{"0", any}, {"4", any}, {"7", any}});
  sha1["policy"]["bank"] = "sha1";
  invalid(sha1, "policy bank 'sha1' is not the service selection's");
  invalid({{"values", Json::array()}, {"policy", Json::object()}},
          "exactly one of 'values' (raw) and 'policy'");
  invalid({{"value", Json::array()}}, "unknown member 'value'");
  // Bounds: allowed digests and document size.
  Json many = Json::array();
  for (size_t i = 0; i <= kMaxPolicyDigests; ++i) many.push_back("a");
  invalid(Policy({{"0", any}, {"4", {{"allow", many}}}, {"7", any}}),
          "more than 4096 allowed digests");
  EXPECT_FALSE(ValidateBaselineDocument(
                   std::string(kMaxBaselineDocumentSize + 1, ' '), kSel)
                   .ok());
  // A malformed policy never matches, and is named in the reason.
  EventLogBuilder b = SmallBoot(false);
  auto r =
      Match({{"bad",
              Policy({{"0", any}, {"4", any}, {"7", any}, {"8", any}}).dump(),
              {}}},
            b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("baseline 'bad': invalid: policy PCR 8 is "
                                   "not in the service's PCR selection"),
            std::string::npos)
      << r.error().message;
  // "value" and "any" rules; a PCR with no event fails an allow rule.
  auto m = Match({{"v",
                   Policy({{"0", any},
                           {"4", any},
                           {"7", {{"value", HexEncode(b.Expected(7))}}}})
                       .dump(),
                   {}}},
                 b);
  EXPECT_TRUE(m.ok()) << m.error().message;
  EventLogBuilder empty;
  r = Match(
      {{"e",
        Policy({{"0", any}, {"4", Allow({b.Expected(4)})}, {"7", any}}).dump(),
        {}}},
      empty);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("PCR 4 has no event in the log"),
            std::string::npos)
      << r.error().message;
}

}  // namespace
}  // namespace vcrypt
