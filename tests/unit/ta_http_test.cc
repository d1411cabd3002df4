// The Trust Authority's HTTP API end to end on localhost: a host with a
// real software TPM enrolls, attests, gets a KEK sealed to its one-time
// key and unwraps it again, all through cpp-httplib (plain HTTP here; the
// services run behind TLS in production).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/hex.h"
#include "common/random.h"
#include "keyproviders/trusted/tpm.h"
#include "taprotocol/proof.h"
#include "tests/unit/eventlog_builder.h"
#include "tests/unit/swtpm.h"
#include "tests/unit/ta_test_util.h"
#include "trustauthority/eventlog.h"
#include "trustauthority/http.h"
#include "trustauthority/sql.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

class TaHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm_.Start(&why)) GTEST_SKIP() << why;
    ASSERT_NO_FATAL_FAILURE(
        testing::OpenTaServices(dir_.path(), &att_, &kps_, max_outstanding_));
    AddAttestationRoutes(server_, *att_, rate_);
    AddKpsRoutes(server_, *kps_, kps_mu_);
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // cpp-httplib 0.11 has no wait_until_ready: poll is_running.
    for (int i = 0; i < 500 && !server_.is_running(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto t = Tpm::Open(tpm_.Tcti());
    ASSERT_TRUE(t.ok());
    host_.emplace(std::move(t).value());
  }
  void TearDown() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  // POST `body` to `path`: {status, JSON}.
  std::pair<int, Json> Post(const std::string& path, const Json& body) {
    httplib::Client cli("127.0.0.1", port_);
    auto res = cli.Post(path, body.dump(), "application/json");
    if (!res) return {0, Json()};
    return {res->status, Json::parse(res->body, nullptr, false)};
  }
  static std::vector<uint8_t> B(const Json& j) {
    return *Base64Decode(j.get<std::string>());
  }

  // Pending enrollments in the store.
  size_t Enrollments() {
    auto e = att_->config().store->EnrollmentExpiries(0);
    EXPECT_TRUE(e.ok());
    return e.ok() ? e->size() : 0;
  }

  size_t max_outstanding_ = 10000;  // set before SetUp
  ClientRateLimit rate_;
  testing::TempDir dir_{"ta-http"};
  testing::Swtpm tpm_;
  std::optional<AttestationService> att_;
  std::optional<KeyProviderService> kps_;
  std::mutex kps_mu_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::optional<Tpm> host_;
};

TEST_F(TaHttpTest, EnrollAttestAndGetAKekOverHttp) {
  auto ek = host_->EkPublic();
  auto ak = host_->AkPublic();
  ASSERT_TRUE(ek.ok() && ak.ok());
  ASSERT_TRUE(att_->AddHost("h1", *ek).ok());

  auto [st, ch] = Post(
      "/v1/enroll",
      {{"host", "h1"}, {"ek", Base64Encode(*ek)}, {"ak", Base64Encode(*ak)}});
  ASSERT_EQ(st, 200) << ch.dump();
  auto secret = host_->ActivateCredential(B(ch["credential_blob"]),
                                          B(ch["encrypted_secret"]));
  ASSERT_TRUE(secret.ok()) << secret.error().message;
  auto [st2, fin] = Post("/v1/enroll/finish",
                         {{"id", ch["id"]},
                          {"secret", Base64Encode(std::span<const uint8_t>(
                                         secret->data(), secret->size()))}});
  ASSERT_EQ(st2, 200) << fin.dump();

  auto session_key = EcSigningKey::Generate();
  ASSERT_TRUE(session_key.ok());
  const std::vector<uint8_t> session = *session_key->PublicPoint();
  auto attest = [&]() -> std::pair<int, Json> {
    auto [s, n] = Post("/v1/nonce", {{"host", "h1"}});
    EXPECT_EQ(s, 200);
    std::vector<int> pcrs = n["pcrs"].get<std::vector<int>>();
    auto q = host_->QuotePcrs(QuoteQualifyingData(B(n["nonce"]), session),
                              n["bank"].get<uint16_t>(), pcrs);
    EXPECT_TRUE(q.ok());
    Json vals = Json::array();
    for (const auto& v : q->pcr_values) vals.push_back(Base64Encode(v));
    if (!att_->AddBaseline("golden", q->pcr_values).ok()) ADD_FAILURE();
    return Post("/v1/attest", {{"host", "h1"},
                               {"nonce", n["nonce"]},
                               {"session_key", Base64Encode(session)},
                               {"attest", Base64Encode(q->attest)},
                               {"signature", Base64Encode(q->signature)},
                               {"pcr_values", vals}});
  };
  auto [st3, tok] = attest();
  ASSERT_EQ(st3, 200) << tok.dump();

  auto tk = TransportKey::Generate();
  ASSERT_TRUE(tk.ok());
  const std::string token = tok["token"];
  auto body = [&](const std::string& path, const std::string& ct) {
    Json b = {{"token", token},
              {"proof", *SignRequestProof(*session_key, token, path,
                                          tk->public_point(), ct)},
              {"transport_key", Base64Encode(tk->public_point())}};
    if (!ct.empty()) b["ciphertext"] = ct;
    return b;
  };
  auto [st4, grant] = Post("/v1/kek", body("/v1/kek", ""));
  ASSERT_EQ(st4, 200) << grant.dump();
  auto sealed = SealedKey::FromJson(grant["kek"]);
  ASSERT_TRUE(sealed.ok());
  auto kek = tk->Open(*sealed, grant["kek_id"].get<std::string>());
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_EQ(grant.dump().find("\"kek\":\""), std::string::npos);

  // The cached token with a fresh proof: the ciphertext unwraps to the
  // same KEK.
  const std::string ct = grant["ciphertext"];
  const Json unwrap = body("/v1/kek/unwrap", ct);
  auto [st5, un] = Post("/v1/kek/unwrap", unwrap);
  ASSERT_EQ(st5, 200) << un.dump();
  auto k2 = tk->Open(*SealedKey::FromJson(un["kek"]),
                     grant["kek_id"].get<std::string>());
  ASSERT_TRUE(k2.ok());
  EXPECT_TRUE(k2->Equals(*kek));
  // The same request replayed: 403.
  auto [st6, again] = Post("/v1/kek/unwrap", unwrap);
  EXPECT_EQ(st6, 403) << again.dump();
  EXPECT_EQ(again["error"]["code"], "permission_denied");
  // The token without its proof: 400 (missing member).
  Json no_proof = unwrap;
  no_proof.erase("proof");
  EXPECT_EQ(Post("/v1/kek/unwrap", no_proof).first, 400);
}

TEST_F(TaHttpTest, MalformedRequestsGetOneClearError) {
  httplib::Client cli("127.0.0.1", port_);
  auto res = cli.Post("/v1/nonce", "not json", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  auto [st, body] = Post("/v1/nonce", {{"host", "nobody"}});
  EXPECT_EQ(st, 404);
  EXPECT_EQ(body["error"]["code"], "not_found");
  auto [st2, b2] =
      Post("/v1/kek", {{"token", "x.y.z"}, {"transport_key", "AAAA"}});
  EXPECT_EQ(st2 / 100, 4) << b2.dump();
}

// POST /v1/attest with `event_log`: the log reaches the service (a policy
// baseline admits the host), an oversized one is refused before it is
// decoded, a malformed one with one clear line.
TEST_F(TaHttpTest, TheEventLogTravelsWithTheQuote) {
  auto ek = host_->EkPublic();
  auto ak = host_->AkPublic();
  ASSERT_TRUE(ek.ok() && ak.ok());
  ASSERT_TRUE(att_->AddHost("h1", *ek).ok());
  auto ch = att_->StartEnrollment("h1", *ek, std::nullopt, *ak);
  ASSERT_TRUE(ch.ok());
  auto secret = host_->ActivateCredential(ch->credential.credential_blob,
                                          ch->credential.encrypted_secret);
  ASSERT_TRUE(secret.ok());
  ASSERT_TRUE(att_->FinishEnrollment(ch->id, *secret).ok());

  testing::EventLogBuilder b;
  const auto crtm = b.Measure(0, 0x8, testing::TestBytes("firmware 1.0"));
  for (const auto& [pcr, digest] : b.extends())
    ASSERT_EQ(tpm_.Tool("tpm2_pcrextend " + std::to_string(pcr) +
                        ":sha256=" + HexEncode(digest)),
              0);
  const Json any = {{"any", true}};
  const Json policy = {{"policy",
                        {{"bank", "sha256"},
                         {"pcrs",
                          {{"0", {{"allow", {HexEncode(crtm)}}}},
                           {"1", any},
                           {"2", any},
                           {"3", any},
                           {"7", {{"value", std::string(64, '0')}}}}}}}};
  ASSERT_TRUE(att_->config()
                  .store->PutBaseline({"fleet", policy.dump(), 0, {}}, false, 0)
                  .ok());

  auto session_key = EcSigningKey::Generate();
  ASSERT_TRUE(session_key.ok());
  const std::vector<uint8_t> session = *session_key->PublicPoint();
  auto attest = [&](const std::optional<std::string>& log) {
    auto [s, n] = Post("/v1/nonce", {{"host", "h1"}});
    EXPECT_EQ(s, 200);
    auto q = host_->QuotePcrs(QuoteQualifyingData(B(n["nonce"]), session),
                              n["bank"].get<uint16_t>(),
                              n["pcrs"].get<std::vector<int>>());
    EXPECT_TRUE(q.ok());
    Json vals = Json::array();
    for (const auto& v : q->pcr_values) vals.push_back(Base64Encode(v));
    Json body = {{"host", "h1"},
                 {"nonce", n["nonce"]},
                 {"session_key", Base64Encode(session)},
                 {"attest", Base64Encode(q->attest)},
                 {"signature", Base64Encode(q->signature)},
                 {"pcr_values", vals}};
    if (log) body["event_log"] = *log;
    return Post("/v1/attest", body);
  };
  auto [st, tok] = attest(Base64Encode(b.bytes()));
  ASSERT_EQ(st, 200) << tok.dump();
  auto [st2, no_log] = attest(std::nullopt);
  EXPECT_EQ(st2, 403);
  EXPECT_NE(no_log["error"]["message"].get<std::string>().find(
                "the host sent no event log"),
            std::string::npos)
      << no_log.dump();
  auto [st3, big] =
      attest(std::string((kMaxEventLogSize + 2) / 3 * 4 + 4, 'A'));
  EXPECT_EQ(st3, 400);
  EXPECT_EQ(big["error"]["message"],
            "bad request: 'event_log' exceeds 1048576 bytes");
  auto [st4, bad] = attest("not base64!");
  EXPECT_EQ(st4, 400);
  EXPECT_EQ(bad["error"]["message"], "bad request: 'event_log' is not base64");
  // A log cut short: refused, the parser's line in the message.
  auto cut = b.bytes();
  cut.resize(cut.size() - 3);
  auto [st5, trunc] = attest(Base64Encode(cut));
  EXPECT_EQ(st5, 403);
  EXPECT_NE(trunc["error"]["message"].get<std::string>().find(
                "event log: event 1: truncated data"),
            std::string::npos)
      << trunc.dump();
}

// A request stuck on the database does not hold up the others: another
// connection holds SQLite's write lock (as an admin command or a stuck
// replica might), so the enrollment's write waits, while another client
// gets a nonce (a read).
TEST_F(TaHttpTest, ARequestStuckOnTheDatabaseDoesNotBlockTheOthers) {
  auto ek = host_->EkPublic();
  auto ak = host_->AkPublic();
  ASSERT_TRUE(ek.ok() && ak.ok());
  ASSERT_TRUE(att_->AddHost("h1", *ek).ok());
  ASSERT_TRUE(att_->AddHost("stuck", *ek).ok());
  auto locker = store_internal::OpenSqlite(dir_.path() + "/ta.db");
  ASSERT_TRUE(locker.ok()) << locker.error().message;
  ASSERT_TRUE((*locker)->Begin().ok());
  std::thread stuck([&] {
    Post("/v1/enroll", {{"host", "stuck"},
                        {"ek", Base64Encode(*ek)},
                        {"ak", Base64Encode(*ak)}});
  });
  // Let the enrollment reach its write (it waits for the lock, up to the
  // busy timeout).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  httplib::Client cli("127.0.0.1", port_);
  cli.set_read_timeout(3, 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto res =
      cli.Post("/v1/nonce", Json{{"host", "h1"}}.dump(), "application/json");
  const auto took = std::chrono::steady_clock::now() - t0;
  // Release the stuck request.
  (*locker)->Rollback();
  stuck.join();
  ASSERT_TRUE(res) << "no answer while another request was stuck";
  EXPECT_EQ(res->status, 200);
  EXPECT_LT(took, std::chrono::seconds(2));
}

// An unauthenticated client cannot make the service write without bound:
// past the cap on outstanding enrollment challenges the answer is 503 and
// nothing is written; a challenge that is used frees its slot. Nonces are
// made without state: no cap for a flood to fill and lock hosts out.
class TaHttpCapTest : public TaHttpTest {
 protected:
  TaHttpCapTest() {
    max_outstanding_ = 4;
    rate_.per_second = 0;  // no rate limit here
  }
};

TEST_F(TaHttpCapTest, OutstandingNoncesAndChallengesAreCapped) {
  auto ek = host_->EkPublic();
  auto ak = host_->AkPublic();
  ASSERT_TRUE(ek.ok() && ak.ok());
  ASSERT_TRUE(att_->AddHost("h1", *ek).ok());
  for (int i = 0; i < 40; ++i)
    ASSERT_EQ(Post("/v1/nonce", {{"host", "h1"}}).first, 200) << i;

  const Json enroll = {
      {"host", "h1"}, {"ek", Base64Encode(*ek)}, {"ak", Base64Encode(*ak)}};
  Json first;
  for (int i = 0; i < 4; ++i) {
    auto [s, ch] = Post("/v1/enroll", enroll);
    ASSERT_EQ(s, 200) << ch.dump();
    if (i == 0) first = ch;
  }
  auto [st2, busy2] = Post("/v1/enroll", enroll);
  EXPECT_EQ(st2, 503) << busy2.dump();
  EXPECT_EQ(busy2["error"]["code"], "busy") << busy2.dump();
  EXPECT_EQ(Enrollments(), 4u);

  // Finishing a challenge frees its slot.
  auto secret = host_->ActivateCredential(B(first["credential_blob"]),
                                          B(first["encrypted_secret"]));
  ASSERT_TRUE(secret.ok()) << secret.error().message;
  ASSERT_EQ(Post("/v1/enroll/finish",
                 {{"id", first["id"]},
                  {"secret", Base64Encode(std::span<const uint8_t>(
                                 secret->data(), secret->size()))}})
                .first,
            200);
  EXPECT_EQ(Post("/v1/enroll", enroll).first, 200);
  EXPECT_EQ(Post("/v1/enroll", enroll).first, 503);
}

// One client address gets `burst` unauthenticated requests, then 429
// until its bucket refills. Authenticated routes are not limited.
class TaHttpRateTest : public TaHttpTest {
 protected:
  TaHttpRateTest() {
    rate_.per_second = 0.5;
    rate_.burst = 3;
  }
};

TEST_F(TaHttpRateTest, UnauthenticatedRoutesAreRateLimitedPerClient) {
  ASSERT_TRUE(att_->AddHost("h1", std::nullopt).ok());
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(Post("/v1/nonce", {{"host", "h1"}}).first, 200) << i;
  auto [st, limited] = Post("/v1/nonce", {{"host", "h1"}});
  EXPECT_EQ(st, 429) << limited.dump();
  EXPECT_TRUE(limited["error"]["message"].is_string()) << limited.dump();
  // /v1/enroll shares the bucket.
  EXPECT_EQ(Post("/v1/enroll", {{"host", "h1"}}).first, 429);
  // Not limited: a request that must carry a valid token anyway.
  EXPECT_EQ(Post("/v1/kek", {{"token", "x.y.z"}}).first, 400);
}

}  // namespace
}  // namespace vcrypt
