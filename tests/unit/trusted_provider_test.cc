// The trusted key provider against real parts: a software TPM (swtpm) as
// the host's TPM, and the attestation service and key provider service
// in-process behind HTTPS (cpp-httplib SSLServer, trustauthority/http.h)
// with a test CA made here. Covers provider creation (enrollment +
// attestation, nothing written on any failure), KEK create/unwrap, the
// token cache (reuse, expiry, one attestation for concurrent callers),
// re-enrollment, unreachable services, a wrong CA and a tampered
// ciphertext.
#include "keyproviders/trusted/trusted_provider.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/hex.h"
#include "common/random.h"
#include "keyproviders/trusted/ta_client.h"
#include "keyproviders/trusted/tpm.h"
#include "tests/test_util.h"
#include "tests/unit/cli_run.h"
#include "tests/unit/eventlog_builder.h"
#include "tests/unit/swtpm.h"
#include "tests/unit/ta_test_util.h"
#include "trustauthority/http.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// --- a test PKI --------------------------------------------------------------

EvpPkeyPtr NewKey() { return EvpPkeyPtr(EVP_EC_gen("P-256")); }

void AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `key`, signed by `issuer`/`issuer_key` (self-signed
// when issuer is null): a CA, or a server certificate for 127.0.0.1.
X509Ptr MakeCert(EVP_PKEY* key, const char* cn, X509* issuer,
                 EVP_PKEY* issuer_key) {
  static std::atomic<long> serial{1};
  X509Ptr c(X509_new());
  X509_set_version(c.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), 3600);
  X509_set_pubkey(c.get(), key);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1,
                             0);
  X509* signer = issuer ? issuer : c.get();
  X509_set_issuer_name(c.get(), X509_get_subject_name(signer));
  if (issuer == nullptr) {
    AddExt(c.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    AddExt(c.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    AddExt(c.get(), signer, NID_basic_constraints, "CA:FALSE");
    AddExt(c.get(), signer, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
    AddExt(c.get(), signer, NID_ext_key_usage, "serverAuth");
  }
  X509_sign(c.get(), issuer_key, EVP_sha256());
  return c;
}

std::string Pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* p = nullptr;
  long n = BIO_get_mem_data(bio.get(), &p);
  return std::string(p, static_cast<size_t>(n));
}

// A localhost port nothing listens on.
int DeadPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// An HTTPS server on 127.0.0.1 running on its own thread.
class TestServer {
 public:
  // An idle keep-alive connection holds a worker until this timeout, and
  // Stop() waits for the workers: 1 s, below vcrypt-ta's 2 s.
  TestServer(X509* cert, EVP_PKEY* key) : server_(cert, key) {
    server_.set_keep_alive_timeout(1);
  }
  ~TestServer() { Stop(); }
  httplib::SSLServer& server() { return server_; }
  bool Start() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) return false;
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 500 && !server_.is_running(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return server_.is_running();
  }
  void Stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  std::string Url() const {
    return "https://127.0.0.1:" + std::to_string(port_);
  }

 private:
  httplib::SSLServer server_;
  int port_ = 0;
  std::thread thread_;
};

class TrustedProviderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm_.Start(&why)) GTEST_SKIP() << why;
    ca_key_ = NewKey();
    ca_ = MakeCert(ca_key_.get(), "vcrypt test CA", nullptr, ca_key_.get());
    server_key_ = NewKey();
    server_cert_ =
        MakeCert(server_key_.get(), "ta.test", ca_.get(), ca_key_.get());
    ca_pem_ = Pem(ca_.get());

    ASSERT_NO_FATAL_FAILURE(
        testing::OpenTaServices(state_.path(), &att_, &kps_));

    att_server_.emplace(server_cert_.get(), server_key_.get());
    kps_server_.emplace(server_cert_.get(), server_key_.get());
    AddAttestationRoutes(att_server_->server(), *att_);
    AddKpsRoutes(kps_server_->server(), *kps_, kps_mu_);
    // Counts the attestations the service sees.
    att_server_->server().set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response&) {
          if (req.path == "/v1/attest") ++attest_calls_;
          if (req.path == "/v1/enroll") ++enroll_calls_;
          return httplib::Server::HandlerResponse::Unhandled;
        });
    ASSERT_TRUE(att_server_->Start());
    ASSERT_TRUE(kps_server_->Start());

    // Register the host with its EK and approve the PCRs it has now.
    auto t = Tpm::Open(tpm_.Tcti());
    ASSERT_TRUE(t.ok()) << t.error().message;
    auto ek = t->EkPublic();
    ASSERT_TRUE(ek.ok());
    ek_ = *ek;
    ASSERT_TRUE(att_->AddHost("h1", ek_).ok());
    std::vector<uint8_t> nonce(32, 7);
    auto q = t->QuotePcrs(nonce, kTpmAlgSha256, {0, 1, 2, 3, 7});
    ASSERT_TRUE(q.ok()) << q.error().message;
    ASSERT_TRUE(att_->AddBaseline("golden", q->pcr_values).ok());
  }

  TrustedProviderConfig Config() {
    TrustedProviderConfig c;
    c.attestation_url = att_server_->Url();
    c.kps_url = kps_server_->Url();
    c.ca_pem = ca_pem_;
    c.host = "h1";
    c.tcti = tpm_.Tcti();
    return c;
  }
  TrustedProviderOptions Options() {
    TrustedProviderOptions o;
    o.allow_test_tcti = true;  // swtpm
    o.connect_timeout = std::chrono::milliseconds(2000);
    o.io_timeout = std::chrono::milliseconds(5000);
    o.now = [this] {
      return std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count() +
             clock_offset_.load();
    };
    return o;
  }
  std::string Dir() const { return home_ / "providers/t1"; }
  // Nothing of a failed Create is left: neither the directory nor its
  // temp sibling.
  void ExpectNothingWritten() {
    EXPECT_FALSE(fs::exists(Dir()));
    EXPECT_FALSE(fs::exists(Dir() + ".new"));
  }
  std::unique_ptr<TrustedProvider> MustCreate() {
    auto p = TrustedProvider::Create("t1", Dir(), Config(), Options());
    EXPECT_TRUE(p.ok()) << p.error().message;
    return p.ok() ? std::move(p).value() : nullptr;
  }

  testing::Swtpm tpm_;
  testing::TempDir state_{"ta-state"};
  testing::TempDir home_{"trusted-host"};
  EvpPkeyPtr ca_key_, server_key_;
  X509Ptr ca_, server_cert_;
  std::string ca_pem_;
  std::optional<AttestationService> att_;
  std::optional<KeyProviderService> kps_;
  std::mutex kps_mu_;
  std::optional<TestServer> att_server_, kps_server_;
  std::atomic<int> attest_calls_{0}, enroll_calls_{0};
  std::atomic<int64_t> clock_offset_{0};
  std::vector<uint8_t> ek_;
};

TEST_F(TrustedProviderTest, CreateEnrollsAttestsAndWritesTheConfig) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  EXPECT_EQ(enroll_calls_, 1);
  EXPECT_EQ(attest_calls_, 1);
  EXPECT_EQ(p->type(), "trusted");
  struct stat st;
  ASSERT_EQ(stat(Dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const char* f : {"config.json", "ca.pem"}) {
    ASSERT_EQ(stat((Dir() + "/" + f).c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
  }
  EXPECT_FALSE(fs::exists(Dir() + ".new"));
  auto cfg = Json::parse(*ReadFile(Dir() + "/config.json"));
  EXPECT_EQ(cfg["type"], "trusted");
  EXPECT_EQ(cfg["host"], "h1");
  EXPECT_EQ(cfg["tcti"], tpm_.Tcti());
  EXPECT_EQ(cfg["attestation"], att_server_->Url());
  EXPECT_EQ(cfg["kps"], kps_server_->Url());

  Json d = p->Describe();
  EXPECT_EQ(d["host"], "h1");
  EXPECT_EQ(d["token_cached"], true);
  EXPECT_TRUE(d.contains("token_expires"));
  // No token in the description (it is a credential of this host).
  EXPECT_EQ(d.dump().find("eyJ"), std::string::npos);
}

TEST_F(TrustedProviderTest, CreateKekThenGetKekReusingTheCachedToken) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  EXPECT_EQ(nk->kek.size(), kKekSize);
  EXPECT_FALSE(nk->ref.kek_id.empty());
  ASSERT_TRUE(nk->ref.data["ciphertext"].is_string());

  auto k1 = p->GetKek(nk->ref);
  ASSERT_TRUE(k1.ok()) << k1.error().message;
  EXPECT_TRUE(k1->Equals(nk->kek));
  auto k2 = p->GetKek(nk->ref);
  ASSERT_TRUE(k2.ok()) << k2.error().message;
  EXPECT_TRUE(k2->Equals(nk->kek));
  // Create's attestation served every request.
  EXPECT_EQ(attest_calls_, 1);
  EXPECT_EQ(p->attestations(), 1u);

  // A provider loaded from its directory (vcryptd restarting) attests once
  // and opens the same KEK.
  auto loaded = TrustedProvider::Load("t1", Dir(), Options());
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  auto k3 = (*loaded)->GetKek(nk->ref);
  ASSERT_TRUE(k3.ok()) << k3.error().message;
  EXPECT_TRUE(k3->Equals(nk->kek));
  EXPECT_EQ(attest_calls_, 2);
}

// Keep-alive and TLS session resumption (ta_client.h): KEK fetches with
// the cached token share one connection; after the idle timeout a new
// connection resumes the TLS session the server issued.
TEST_F(TrustedProviderTest, KekFetchesReuseTheConnectionAndResumeTls) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  auto kps = [&] { return p->Describe()["connections"]["kps"]; };
  const Json before = kps();
  for (int i = 0; i < 3; ++i) {
    auto k = p->GetKek(nk->ref);
    ASSERT_TRUE(k.ok()) << k.error().message;
  }
  Json after = kps();
  EXPECT_EQ(after["requests"].get<int>() - before["requests"].get<int>(), 3);
  EXPECT_EQ(after["tls_connections_made"], before["tls_connections_made"])
      << "the 3 fetches should have used the connection CreateKek left open";
  // Past the idle timeout (1 s) the connection is not reused: a new one,
  // resuming the session.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  auto k = p->GetKek(nk->ref);
  ASSERT_TRUE(k.ok()) << k.error().message;
  after = kps();
  EXPECT_EQ(after["tls_connections_made"].get<int>(),
            before["tls_connections_made"].get<int>() + 1);
  EXPECT_EQ(after["tls_sessions_resumed"].get<int>(),
            before["tls_sessions_resumed"].get<int>() + 1);
  EXPECT_TRUE(k->Equals(nk->kek));
}

TEST_F(TrustedProviderTest, AnExpiredCacheAttestsAgain) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  EXPECT_EQ(attest_calls_, 1);
  // 5 min tokens, refreshed 30 s before exp: 4 min later still cached...
  clock_offset_ = 240;
  ASSERT_TRUE(p->GetKek(nk->ref).ok());
  EXPECT_EQ(attest_calls_, 1);
  // ...at exp - 30 s not any more.
  clock_offset_ = 275;
  auto k = p->GetKek(nk->ref);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_TRUE(k->Equals(nk->kek));
  EXPECT_EQ(attest_calls_, 2);
}

TEST_F(TrustedProviderTest, ConcurrentCallersShareOneAttestation) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  clock_offset_ = 1000;  // the cached token is too old for everyone
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 6; ++i)
    threads.emplace_back([&] {
      auto k = p->GetKek(nk->ref);
      if (k.ok() && k->Equals(nk->kek)) ++good;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(good, 6);
  EXPECT_EQ(attest_calls_, 2);
}

TEST_F(TrustedProviderTest, AnAkTheServiceForgotIsEnrolledAgain) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  // The host re-registered at the TA: its AK enrollment is gone.
  ASSERT_TRUE(att_->RemoveHost("h1").ok());
  ASSERT_TRUE(att_->AddHost("h1", ek_).ok());
  clock_offset_ = 1000;
  auto k = p->GetKek(nk->ref);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_TRUE(k->Equals(nk->kek));
  EXPECT_EQ(enroll_calls_, 2);
}

TEST_F(TrustedProviderTest, UnregisteredHostIsRefusedAndNothingIsWritten) {
  TrustedProviderConfig c = Config();
  c.host = "h2";
  auto p = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kNotFound);
  EXPECT_NE(p.error().message.find("not registered"), std::string::npos)
      << p.error().message;
  ExpectNothingWritten();
}

TEST_F(TrustedProviderTest, PcrsMatchingNoBaselineAreRefused) {
  ASSERT_TRUE(att_->RemoveBaseline("golden").ok());
  auto p = TrustedProvider::Create("t1", Dir(), Config(), Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(p.error().message.find("no approved baseline"), std::string::npos)
      << p.error().message;
  ExpectNothingWritten();
}

// The configured event log travels with the quote (POST /v1/attest
// event_log) and an event-log policy admits the host; without the log the
// policy cannot match.
TEST_F(TrustedProviderTest, TheEventLogIsSentAndAPolicyAdmitsTheHost) {
  testing::EventLogBuilder b;
  const auto crtm = b.Measure(0, 0x8, testing::TestBytes("firmware 1.0"));
  const auto sb =
      b.Measure(7, 0x80000001, testing::UefiVariable("SecureBoot", {1}));
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
                           {"7", {{"allow", {HexEncode(sb)}}}}}}}}};
  ASSERT_TRUE(att_->config()
                  .store->PutBaseline({"fleet", policy.dump(), 0, {}}, false, 0)
                  .ok());
  const std::string log = home_ / "binary_bios_measurements";
  ASSERT_TRUE(testing::WriteBytes(log, b.bytes()));

  TrustedProviderConfig c = Config();
  c.event_log = "";  // never send one
  auto refused = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("the host sent no event log"),
            std::string::npos)
      << refused.error().message;
  ExpectNothingWritten();

  c.event_log = "binary_bios_measurements";
  refused = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);

  c.event_log = log;
  auto p = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(attest_calls_, 2);  // the refused one and this one
  auto cfg = Json::parse(*ReadFile(Dir() + "/config.json"));
  EXPECT_EQ(cfg["event_log"], log);
  // Loaded again, it still sends the log.
  p->reset();
  auto loaded = TrustedProvider::Load("t1", Dir(), Options());
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ((*loaded)->Describe()["event_log"], log);
  auto nk = (*loaded)->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  EXPECT_EQ(attest_calls_, 3);
}

TEST(TrustedProviderEventLogTest, TheHostReadsItsLogBounded) {
  testing::TempDir dir("eventlog-host");
  auto none = ReadHostEventLog(std::string());
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto missing = ReadHostEventLog(dir.path() + "/nothing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  const std::string big = dir.path() + "/big";
  ASSERT_TRUE(
      testing::WriteBytes(big, std::vector<uint8_t>(kMaxHostEventLog + 1, 1)));
  auto r = ReadHostEventLog(big);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("exceeds 1048576 bytes"), std::string::npos);
  const std::string ok = dir.path() + "/ok";
  ASSERT_TRUE(testing::WriteBytes(ok, std::vector<uint8_t>(40000, 2)));
  auto read = ReadHostEventLog(ok);
  ASSERT_TRUE(read.ok());
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ((*read)->size(), 40000u);
}

TEST_F(TrustedProviderTest, AttestationServiceDownFailsCreateClearly) {
  TrustedProviderConfig c = Config();
  c.attestation_url = "https://127.0.0.1:" + std::to_string(DeadPort());
  auto p = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(p.error().message.find(c.attestation_url + " unreachable"),
            std::string::npos)
      << p.error().message;
  EXPECT_EQ(p.error().message.find('\n'), std::string::npos);
  ExpectNothingWritten();
}

TEST_F(TrustedProviderTest, KpsDownMakesGetKekUnavailable) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  kps_server_->Stop();
  auto k = p->GetKek(nk->ref);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(k.error().message.find("key provider service"), std::string::npos)
      << k.error().message;
}

TEST_F(TrustedProviderTest, KpsDownFailsCreateAndNothingIsWritten) {
  kps_server_->Stop();
  auto p = TrustedProvider::Create("t1", Dir(), Config(), Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kKeyUnavailable);
  ExpectNothingWritten();
}

TEST_F(TrustedProviderTest, AWrongCaIsRefused) {
  EvpPkeyPtr other_key = NewKey();
  X509Ptr other =
      MakeCert(other_key.get(), "another CA", nullptr, other_key.get());
  TrustedProviderConfig c = Config();
  c.ca_pem = Pem(other.get());
  auto p = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(p.error().message.find("not trusted"), std::string::npos)
      << p.error().message;
  ExpectNothingWritten();
  // Not a certificate at all: refused before any connection.
  c.ca_pem = "not a certificate\n";
  p = TrustedProvider::Create("t1", Dir(), c, Options());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kInvalidArgument);
  ExpectNothingWritten();
  EXPECT_EQ(enroll_calls_, 0);
}

TEST_F(TrustedProviderTest, TamperedCiphertextIsRefused) {
  auto p = MustCreate();
  ASSERT_TRUE(p);
  auto nk = p->CreateKek("vm1");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  Json ct = Json::parse(nk->ref.data["ciphertext"].get<std::string>());
  auto bytes = Base64Decode(ct["wrapped"]["ct"].get<std::string>());
  ASSERT_TRUE(bytes.ok());
  (*bytes)[0] ^= 1;
  ct["wrapped"]["ct"] = Base64Encode(*bytes);
  KekRef bad = nk->ref;
  bad.data["ciphertext"] = ct.dump();
  auto k = p->GetKek(bad);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kCrypto) << k.error().message;

  // A ciphertext moved under another KEK ID does not open either.
  KekRef moved = nk->ref;
  moved.kek_id = "00000000-0000-4000-8000-000000000000";
  k = p->GetKek(moved);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kInvalidVolume) << k.error().message;

  KekRef none;
  none.kek_id = nk->ref.kek_id;
  k = p->GetKek(none);
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.error().code, ErrorCode::kInvalidVolume);
}

// --- the client against a misbehaving server ------------------------------
//
// A server that trickles its answer or sends a huge one is a fault the
// real services cannot produce: these handlers are written to be hostile.
// No TPM needed.
class TaClientHostileServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_key_ = NewKey();
    ca_ = MakeCert(ca_key_.get(), "vcrypt test CA", nullptr, ca_key_.get());
    server_key_ = NewKey();
    server_cert_ =
        MakeCert(server_key_.get(), "ta.test", ca_.get(), ca_key_.get());
    ca_file_ = dir_.path() + "/ca.pem";
    ASSERT_TRUE(
        WriteFileAtomic(ca_file_, Pem(ca_.get()), AtomicWriteOptions{0644, {}})
            .ok());
    server_.emplace(server_cert_.get(), server_key_.get());
  }
  void TearDown() override {
    stop_ = true;
    if (server_) server_->Stop();
  }
  Result<TaClient> Client(TaClientOptions o) {
    return TaClient::Create("attestation service", server_->Url(), ca_file_, o);
  }

  testing::TempDir dir_{"ta-client"};
  EvpPkeyPtr ca_key_, server_key_;
  X509Ptr ca_, server_cert_;
  std::string ca_file_;
  std::optional<TestServer> server_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> sent_{0};
};

TEST_F(TaClientHostileServerTest, ATricklingServerIsCutOffAtTheDeadline) {
  // One byte of a valid JSON answer every 100 ms, for up to 10 s: every
  // read returns well within io_timeout.
  server_->server().Post(
      "/v1/nonce", [this](const httplib::Request&, httplib::Response& res) {
        res.set_chunked_content_provider(
            "application/json", [this](size_t off, httplib::DataSink& sink) {
              std::this_thread::sleep_for(std::chrono::milliseconds(100));
              if (stop_ || off >= 100) return false;
              const char* c = off == 0 ? "{" : off == 99 ? "}" : " ";
              if (!sink.write(c, 1)) return false;
              if (off == 99) sink.done();
              return true;
            });
      });
  ASSERT_TRUE(server_->Start());
  TaClientOptions o;
  o.connect_timeout = std::chrono::milliseconds(1000);
  o.io_timeout = std::chrono::milliseconds(1000);
  o.deadline = std::chrono::milliseconds(1500);
  auto c = Client(o);
  ASSERT_TRUE(c.ok()) << c.error().message;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = c->Post("/v1/nonce", Json{{"host", "h1"}});
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find("deadline"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  EXPECT_LT(took, std::chrono::milliseconds(1500 + 700));
}

TEST_F(TaClientHostileServerTest, AnOversizedAnswerIsRefused) {
  // A valid JSON object of 2 MiB with a Content-Length: refused on the
  // length alone.
  server_->server().Post(
      "/v1/nonce", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("{\"pad\":\"" + std::string(2 << 20, 'x') + "\"}",
                        "application/json");
      });
  // Chunked, no length, 64 MiB unless the client stops reading: refused
  // without reading (or keeping) it all.
  server_->server().Post(
      "/v1/attest", [this](const httplib::Request&, httplib::Response& res) {
        res.set_chunked_content_provider(
            "application/json", [this](size_t off, httplib::DataSink& sink) {
              static const std::string pad(64 << 10, ' ');
              if (stop_) return false;
              if (off == 0) {
                if (!sink.write("{", 1)) return false;
                ++sent_;
              }
              if (sent_ >= (64u << 20)) {
                sink.write("}", 1);
                sink.done();
                return true;
              }
              if (!sink.write(pad.data(), pad.size())) return false;
              sent_ += pad.size();
              return true;
            });
      });
  ASSERT_TRUE(server_->Start());
  auto c = Client(TaClientOptions{});
  ASSERT_TRUE(c.ok()) << c.error().message;
  auto r = c->Post("/v1/nonce", Json{{"host", "h1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find("larger than 1048576 bytes"),
            std::string::npos)
      << r.error().message;
  r = c->Post("/v1/attest", Json{{"host", "h1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find("larger than 1048576 bytes"),
            std::string::npos)
      << r.error().message;
  // The client stopped reading: the server got no further than the limit
  // plus what the socket buffers held.
  EXPECT_LT(sent_.load(), size_t{32} << 20);
}

TEST(TaUrlTest, ParsesHttpsUrlsOnly) {
  auto u = ParseTaUrl("https://ta.example:8443/attest/");
  ASSERT_TRUE(u.ok()) << u.error().message;
  EXPECT_EQ(u->host, "ta.example");
  EXPECT_EQ(u->port, 8443);
  EXPECT_EQ(u->prefix, "/attest");
  EXPECT_EQ(u->url, "https://ta.example:8443/attest");
  u = ParseTaUrl("HTTPS://[::1]");
  ASSERT_TRUE(u.ok()) << u.error().message;
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 443);
  for (const char* bad :
       {"http://ta.example", "ta.example", "https://", "https://:443",
        "https://ta.example:0", "https://ta.example:99999",
        "https://user@ta.example", "https://ta.example/?x=1"}) {
    auto r = ParseTaUrl(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    }
  }
}

TEST(TrustedProviderCliTest, ProviderAddTrustedNeedsItsOptions) {
  auto r = testing::RunCtl(
      {"provider", "add", "trusted", "t1", "--kps", "https://kps.example"});
  EXPECT_EQ(r.code, static_cast<int>(ErrorCode::kUsage));
  EXPECT_NE(r.err.find("--attestation URL --kps URL --ca FILE"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(testing::CountLines(r.err), 1);
  r = testing::RunCtl({"provider", "add", "trusted", "t1", "--attestation",
                       "https://a", "--kps", "https://k", "--ca", "/x", "--kms",
                       "h:1"});
  EXPECT_EQ(r.code, static_cast<int>(ErrorCode::kUsage));
  r = testing::RunCtl({"provider", "add", "native", "n1", "--tcti", "x"});
  EXPECT_EQ(r.code, static_cast<int>(ErrorCode::kUsage));
}

}  // namespace
}  // namespace vcrypt
