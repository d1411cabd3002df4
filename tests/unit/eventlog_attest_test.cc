// Event-log baselines end to end against a real software TPM (swtpm): the
// TPM's PCRs are extended with the digests of a log built in the test
// (tests/unit/eventlog_builder.h), the host's AK quotes them, and
// AttestationService::Attest gets the quote and the log. ~1 s (two TPM
// resets, a handful of quotes).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/hex.h"
#include "keyproviders/trusted/tpm.h"
#include "taprotocol/proof.h"
#include "tests/unit/eventlog_builder.h"
#include "tests/unit/swtpm.h"
#include "tests/unit/ta_test_util.h"
#include "trustauthority/attestation.h"
#include "trustauthority/eventlog.h"

namespace vcrypt {
namespace {

using testing::EventLogBuilder;
using testing::TestBytes;
using Json = nlohmann::json;

constexpr uint32_t kEvSCrtmVersion = 0x8;
constexpr uint32_t kEvBootApp = 0x80000003;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class EventLogAttestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!swtpm_.Start(&why)) GTEST_SKIP() << why;
    AttestationConfig c;
    c.store = testing::OpenTestStore(dir_.path());
    ASSERT_TRUE(c.store);
    c.selection = {TPM2_ALG_SHA256, {0, 4, 7}};
    auto key = EcSigningKey::Generate();
    ASSERT_TRUE(key.ok());
    auto s = AttestationService::Open(c, std::move(key).value());
    ASSERT_TRUE(s.ok()) << s.error().message;
    svc_.emplace(std::move(s).value());
    ASSERT_NO_FATAL_FAILURE(OpenTpm());
    auto ek = tpm_->EkPublic();
    auto ak = tpm_->AkPublic();
    ASSERT_TRUE(ek.ok() && ak.ok());
    ASSERT_TRUE(svc_->AddHost("h1", *ek).ok());
    auto ch = svc_->StartEnrollment("h1", *ek, std::nullopt, *ak);
    ASSERT_TRUE(ch.ok()) << ch.error().message;
    auto secret = tpm_->ActivateCredential(ch->credential.credential_blob,
                                           ch->credential.encrypted_secret);
    ASSERT_TRUE(secret.ok()) << secret.error().message;
    ASSERT_TRUE(svc_->FinishEnrollment(ch->id, *secret).ok());
  }

  void OpenTpm() {
    tpm_.reset();
    auto t = Tpm::Open(swtpm_.Tcti());
    ASSERT_TRUE(t.ok()) << t.error().message;
    tpm_.emplace(std::move(t).value());
  }

  // A reboot: TPM Reset (PCRs back to their initial values); with
  // `locality3`, TPM2_Startup is sent at locality 3, so PCR 0 starts at
  // 0...03 (what an H-CRTM/locality 3 platform's log announces with a
  // StartupLocality event). tcti-swtpm talks at locality 0, so the
  // Startup goes over a raw socket after swtpm_ioctl set the locality.
  void Reboot(bool locality3) {
    tpm_.reset();  // its transient objects do not survive the reset
    if (!locality3) {
      ASSERT_EQ(swtpm_.Reset(), "");
    } else {
      const std::string tcti = swtpm_.Tcti();
      const int port = std::stoi(tcti.substr(tcti.rfind('=') + 1));
      const std::string ctrl =
          "swtpm_ioctl --tcp 127.0.0.1:" + std::to_string(port + 1);
      // (Run's closing flush talks through tcti-swtpm, which sets the
      // locality back to 0: set it to 3 only after that.)
      ASSERT_EQ(swtpm_.Run("tpm2_shutdown -c && " + ctrl + " -i"), "");
      std::string out;
      ASSERT_EQ(testing::RunShell(ctrl + " -l 3", &out), 0) << out;
      UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(port));
      ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)),
                0);
      const uint8_t startup_clear[12] = {0x80, 0x01, 0, 0,    0, 0x0c,
                                         0,    0,    1, 0x44, 0, 0};
      ASSERT_EQ(::write(fd.get(), startup_clear, 12), 12);
      uint8_t rsp[10] = {};
      ASSERT_EQ(::read(fd.get(), rsp, 10), 10);
      EXPECT_EQ(rsp[9], 0) << "TPM2_Startup at locality 3 failed";
      fd.reset();
      ASSERT_EQ(testing::RunShell(ctrl + " -l 0", &out), 0) << out;
      ASSERT_EQ(
          testing::RunShell(
              "TPM2TOOLS_TCTI='" + tcti + "' tpm2_pcrread sha256:0", &out),
          0)
          << out;
      ASSERT_NE(out.find("0x" + std::string(62, '0') + "03"), std::string::npos)
          << "PCR 0 after a Startup at locality 3: " << out;
    }
    ASSERT_NO_FATAL_FAILURE(OpenTpm());
  }

  // Extends the TPM as the firmware that wrote `b` would have.
  void ExtendTpm(const EventLogBuilder& b) {
    for (const auto& [pcr, digest] : b.extends())
      ASSERT_EQ(swtpm_.Tool("tpm2_pcrextend " + std::to_string(pcr) +
                            ":sha256=" + HexEncode(digest)),
                0);
  }

  // A boot with `kernel` as the kernel image into PCR 4 (and shim), CRTM
  // version into PCR 0, separators; the TPM extended to match.
  EventLogBuilder Boot(bool locality3, uint8_t kernel_tag,
                       std::vector<uint8_t>* kernel) {
    EventLogBuilder b;
    if (locality3) b.StartupLocality(3);
    b.Measure(0, kEvSCrtmVersion, TestBytes("firmware 1.0"));
    shim_ = b.Measure(4, kEvBootApp, TestBytes("shim 15.7"));
    *kernel = b.Measure(4, kEvBootApp,
                        TestBytes("vmlinuz " + std::to_string(kernel_tag)));
    for (uint32_t pcr : {0u, 4u, 7u})
      b.Measure(pcr, kEvSeparator, std::vector<uint8_t>(4, 0));
    b.Measure(7, 0x80000001, testing::UefiVariable("SecureBoot", {1}));
    ExtendTpm(b);
    return b;
  }

  Json Policy(const std::vector<std::vector<uint8_t>>& kernels) {
    const std::string sep = HexEncode(
        testing::TestDigest(TPM2_ALG_SHA256, std::vector<uint8_t>(4, 0)));
    auto d = [](const std::string& s) {
      return HexEncode(testing::TestDigest(TPM2_ALG_SHA256, TestBytes(s)));
    };
    const std::string secure_boot = HexEncode(testing::TestDigest(
        TPM2_ALG_SHA256, testing::UefiVariable("SecureBoot", {1})));
    Json pcr4 = Json::array({HexEncode(shim_), sep});
    for (const auto& k : kernels)
      pcr4.push_back({{"type", "EV_EFI_BOOT_SERVICES_APPLICATION"},
                      {"digest", HexEncode(k)}});
    return {{"policy",
             {{"bank", "sha256"},
              {"pcrs",
               {{"0", {{"allow", {d("firmware 1.0"), sep}}}},
                {"4", {{"allow", pcr4}}},
                {"7", {{"allow", {sep, secure_boot}}}}}}}}};
  }

  // Stores a baseline document in the service's store (trustauthority/
  // store.h: the body is opaque to it); admin commands for policies are
  // still to come.
  void PutBaseline(const std::string& name, const Json& doc) {
    ASSERT_TRUE(svc_->config()
                    .store
                    ->PutBaseline({name, doc.dump(), Now(), {}},
                                  /*replace=*/true, Now())
                    .ok());
  }

  // Nonce, quote over it and the session key, Attest with `log`.
  Result<std::string> Attest(const std::optional<std::vector<uint8_t>>& log) {
    auto g = svc_->IssueNonce("h1");
    if (!g.ok()) return g.error();
    const std::vector<uint8_t> point = *session_.PublicPoint();
    auto q =
        tpm_->QuotePcrs(QuoteQualifyingData(g->nonce, point), g->selection.hash,
                        {g->selection.pcrs.begin(), g->selection.pcrs.end()});
    if (!q.ok()) return q.error();
    return svc_->Attest("h1", g->nonce, point, q->attest, q->signature,
                        q->pcr_values, log);
  }

  std::string BaselineOf(const std::string& token) {
    auto pub = EcVerifyKey::FromPublicPem(*svc_->key().ToPublicPem());
    TokenPolicy p{svc_->config().issuer, svc_->config().audience};
    auto claims = VerifyToken(token, *pub, p, std::chrono::system_clock::now());
    return claims.ok() ? claims->baseline : "(" + claims.error().message + ")";
  }

  EcSigningKey session_ = std::move(EcSigningKey::Generate()).value();
  testing::TempDir dir_{"ta-eventlog"};
  testing::Swtpm swtpm_;
  std::optional<AttestationService> svc_;
  std::optional<Tpm> tpm_;
  std::vector<uint8_t> shim_;
};

TEST_F(EventLogAttestTest, APolicyApprovesAnUpdateOnceItIsStaged) {
  std::vector<uint8_t> kernel1, kernel2;
  EventLogBuilder boot1 = Boot(false, 1, &kernel1);
  ASSERT_NO_FATAL_FAILURE(PutBaseline("fleet", Policy({kernel1})));
  auto token = Attest(boot1.bytes());
  ASSERT_TRUE(token.ok()) << token.error().message;
  EXPECT_EQ(BaselineOf(*token), "fleet");
  // A policy needs the log.
  auto r = Attest(std::nullopt);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(r.error().message.find("the host sent no event log"),
            std::string::npos)
      << r.error().message;

  // The kernel is updated: refused by a policy that lacks it, naming it.
  ASSERT_NO_FATAL_FAILURE(Reboot(false));
  EventLogBuilder boot2 = Boot(false, 2, &kernel2);
  r = Attest(boot2.bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(r.error().message,
            "host 'h1' booted a configuration no approved baseline matches "
            "(baseline 'fleet': PCR 4 event 3 "
            "(EV_EFI_BOOT_SERVICES_APPLICATION) digest " +
                HexEncode(kernel2).substr(0, 16) + "... is not allowed)");
  // The old boot's log against the new boot's quote: does not replay.
  r = Attest(boot1.bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find(
                "the event log does not replay to the quoted PCR 4"),
            std::string::npos)
      << r.error().message;

  // The staged entry for the update: accepted through it.
  Json staged = Policy({kernel1, kernel2});
  staged["expires"] = Now() + 3600;
  ASSERT_NO_FATAL_FAILURE(PutBaseline("fleet-staged", staged));
  token = Attest(boot2.bytes());
  ASSERT_TRUE(token.ok()) << token.error().message;
  EXPECT_EQ(BaselineOf(*token), "fleet-staged");
  // Expired: ignored, refused again.
  staged["expires"] = Now() - 1;
  ASSERT_NO_FATAL_FAILURE(PutBaseline("fleet-staged", staged));
  r = Attest(boot2.bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("PCR 4 event 3"), std::string::npos);

  // Raw baselines keep working next to policies, without a log.
  Json vals = Json::array();
  for (uint32_t p : {0u, 4u, 7u}) vals.push_back(HexEncode(boot2.Expected(p)));
  ASSERT_NO_FATAL_FAILURE(PutBaseline("raw", Json{{"values", vals}}));
  token = Attest(std::nullopt);
  ASSERT_TRUE(token.ok()) << token.error().message;
  EXPECT_EQ(BaselineOf(*token), "raw");
}

// StartupLocality against a TPM that really started at locality 3.
TEST_F(EventLogAttestTest, StartupLocalitySetsPcr0LikeTheTpm) {
  ASSERT_NO_FATAL_FAILURE(Reboot(true));
  std::vector<uint8_t> kernel;
  EventLogBuilder with = Boot(true, 1, &kernel);
  ASSERT_NO_FATAL_FAILURE(PutBaseline("fleet", Policy({kernel})));
  auto token = Attest(with.bytes());
  ASSERT_TRUE(token.ok()) << token.error().message;
  EXPECT_EQ(BaselineOf(*token), "fleet");
  // The same events without the StartupLocality event: PCR 0 differs.
  EventLogBuilder without;
  without.Measure(0, kEvSCrtmVersion, TestBytes("firmware 1.0"));
  auto r = Attest(without.bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find(
                "the event log does not replay to the quoted PCR 0"),
            std::string::npos)
      << r.error().message;
}

}  // namespace
}  // namespace vcrypt
