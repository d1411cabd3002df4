// vcrypt-ta (trustauthority/ta_tool.h): the admin commands against a real
// state directory, and both services over real TLS (a test PKI made by
// tests/kmip/make-certs.sh with the openssl CLI), in-process through
// RunTaTool and, for signals and exit codes, as the built binary.
#include "trustauthority/ta_tool.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
#include "common/hex.h"
#include "keyproviders/trusted/tpm.h"
#include "taprotocol/jws.h"
#include "tests/test_util.h"
#include "tests/unit/eventlog_builder.h"
#include "tests/unit/pg_server.h"
#include "tests/unit/swtpm.h"
#include "trustauthority/store.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using testing::TempDir;

struct TaRun {
  int code;
  std::string out, err;
};

TaRun Ta(const std::vector<std::string>& args,
         ServiceControl* control = nullptr) {
  std::vector<const char*> argv = {"vcrypt-ta"};
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int code =
      RunTaTool(static_cast<int>(argv.size()), argv.data(), out, err, control);
  return {code, out.str(), err.str()};
}

int Lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

// Every file under `dir` (relative path -> contents), to show that a
// refused command changed nothing.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    std::string rel = fs::relative(e.path(), dir).string();
    m[rel] = e.is_regular_file() ? *ReadFile(e.path().string()) : "<dir>";
  }
  return m;
}

void WriteText(const std::string& path, const std::string& text,
               mode_t mode = 0644) {
  ASSERT_TRUE(WriteFileAtomic(path, text, AtomicWriteOptions{mode, {}}).ok());
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

std::string Digests(int n) {
  std::string s;
  for (int i = 0; i < n; ++i)
    s += std::string(63, '0') + "abcdef0123"[i % 10] + "\n";
  return s;
}

// The test PKI, once per process: ca.pem, server.pem (127.0.0.1,
// localhost), other-ca.pem.
const std::string& Certs() {
  static TempDir* dir = new TempDir("ta-pki");
  static std::string certs = [] {
    std::string script = fs::path(__FILE__).parent_path().parent_path() /
                         "kmip" / "make-certs.sh";
    std::string d = dir->path() + "/certs";
    std::string cmd = script + " " + d + " >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0 ? d : std::string();
  }();
  return certs;
}

TEST(TaToolParse, PcrSelection) {
  auto s = ParsePcrSelection("sha256:7,0-3");
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->pcrs, (std::vector<uint32_t>{0, 1, 2, 3, 7}));
  EXPECT_EQ(FormatPcrSelection(*s), "sha256:0,1,2,3,7");
  for (const char* bad : {"sha1:0", "0,1", "sha256:", "sha256:24", "sha256:1,1",
                          "sha256:3-1", "sha256:a", "sha256:0,,1"})
    EXPECT_FALSE(ParsePcrSelection(bad).ok()) << bad;
}

TEST(TaToolParse, BaselineValues) {
  PcrSelection sel{TPM2_ALG_SHA256, {0, 1}};
  std::string good = "# comment\n" + std::string(64, 'A') + "\n\n  " +
                     std::string(64, '0') + "  \r\n";
  auto v = ParseBaselineValues(good, sel);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ((*v)[0], std::vector<uint8_t>(32, 0xaa));
  auto bad_hex =
      ParseBaselineValues(std::string(63, '0') + "g\n" + Digests(1), sel);
  ASSERT_FALSE(bad_hex.ok());
  EXPECT_NE(bad_hex.error().message.find("line 1"), std::string::npos);
  EXPECT_FALSE(ParseBaselineValues(Digests(1), sel).ok());  // count
  EXPECT_FALSE(ParseBaselineValues(Digests(3), sel).ok());
  auto short_v =
      ParseBaselineValues(std::string(40, '0') + "\n" + Digests(1), sel);
  ASSERT_FALSE(short_v.ok());
  EXPECT_NE(short_v.error().message.find("20 bytes"), std::string::npos);
}

TEST(TaToolParse, ListenAddress) {
  auto a = ParseListenAddress("[::1]:0");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 0);
  EXPECT_EQ(ParseListenAddress("127.0.0.1:8443")->port, 8443);
  for (const char* bad : {"127.0.0.1", ":80", "h:99999", "h:8x", "a b:1"})
    EXPECT_FALSE(ParseListenAddress(bad).ok()) << bad;
}

class TaAdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = Ta({"admin", "--state", state_, "init", "--pcrs", "sha256:0-2"});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  // The state directory's database (opened while the test looks).
  std::shared_ptr<TaStore> Store() {
    auto s = OpenTaStore(DefaultStoreUrl(state_));
    EXPECT_TRUE(s.ok()) << s.error().message;
    return s.ok() ? std::move(s).value() : nullptr;
  }
  TempDir dir_{"ta-admin"};
  std::string state_ = dir_ / "state";
};

TEST_F(TaAdminTest, InitWritesKeysAndConfig) {
  struct stat st;
  ASSERT_EQ(stat(state_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(stat((state_ + "/ta.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // One active signing key; its private and public halves are a pair,
  // named by the thumbprint (the JWS kid).
  auto store = Store();
  ASSERT_TRUE(store);
  auto keys = store->SigningKeys();
  ASSERT_TRUE(keys.ok()) << keys.error().message;
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].state, "active");
  auto priv = store->SigningKeyPrivate((*keys)[0].kid);
  ASSERT_TRUE(priv.ok()) << priv.error().message;
  auto key = EcSigningKey::FromPrivatePem(*priv);
  ASSERT_TRUE(key.ok());
  auto pub = EcVerifyKey::FromPublicPem((*keys)[0].public_pem);
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(pub->Thumbprint(), key->Thumbprint());
  EXPECT_EQ(pub->Thumbprint(), (*keys)[0].kid);
  EXPECT_EQ(*store->GetSetting("pcrs"), "sha256:0,1,2");
}

TEST_F(TaAdminTest, InitRefusesAnInitialisedOrNonEmptyDirectory) {
  auto before = Snapshot(state_);
  auto r = Ta({"admin", "--state", state_, "init"});
  EXPECT_EQ(r.code, 6);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("already initialised"), std::string::npos) << r.err;
  EXPECT_EQ(Snapshot(state_), before);

  std::string other = dir_ / "other";
  ASSERT_EQ(mkdir(other.c_str(), 0755), 0);
  WriteText(other + "/data", "someone's");
  r = Ta({"admin", "--state", other, "init"});
  EXPECT_EQ(r.code, 6) << r.err;
  EXPECT_EQ(Snapshot(other).size(), 1u);

  // A bad selection creates nothing.
  r = Ta({"admin", "--state", dir_ / "new", "init", "--pcrs", "sha256:0,0"});
  EXPECT_EQ(r.code, 12) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "new"));
  // An empty directory is taken (systemd's StateDirectory= makes one).
  std::string empty = dir_ / "empty";
  ASSERT_EQ(mkdir(empty.c_str(), 0755), 0);
  r = Ta({"admin", "--state", empty, "init"});
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(TaAdminTest, BaselineAddValidatesAndWritesNothingOnBadInput) {
  const std::string vals = dir_ / "values";
  auto before = Snapshot(state_);
  WriteText(vals, Digests(2) + "zz" + std::string(62, '0') + "\n");
  auto r = Ta(
      {"admin", "--state", state_, "baseline", "add", "b1", "--values", vals});
  EXPECT_EQ(r.code, 12);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("line 3"), std::string::npos) << r.err;
  WriteText(vals, Digests(4));  // the selection has 3 PCRs
  r = Ta(
      {"admin", "--state", state_, "baseline", "add", "b1", "--values", vals});
  EXPECT_EQ(r.code, 12);
  EXPECT_NE(r.err.find("4 values for the 3 PCRs"), std::string::npos) << r.err;
  r = Ta({"admin", "--state", state_, "baseline", "add", "../b1", "--values",
          vals});
  EXPECT_EQ(r.code, 12);
  EXPECT_EQ(Snapshot(state_), before);

  WriteText(vals, Digests(3));
  r = Ta(
      {"admin", "--state", state_, "baseline", "add", "b1", "--values", vals});
  ASSERT_EQ(r.code, 0) << r.err;
  Json b = Json::parse((*Store()->GetBaseline("b1", 0))->body);
  EXPECT_EQ(b["values"].size(), 3u);
  r = Ta(
      {"admin", "--state", state_, "baseline", "add", "b1", "--values", vals});
  EXPECT_EQ(r.code, 6) << r.err;
  r = Ta({"admin", "--state", state_, "list", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(Json::parse(r.out)["baselines"].size(), 1u);
  EXPECT_EQ(Json::parse(r.out)["baselines"][0]["name"], "b1");
  EXPECT_EQ(Json::parse(r.out)["baselines"][0]["kind"], "values");
  EXPECT_EQ(Ta({"admin", "--state", state_, "baseline", "remove", "b1"}).code,
            0);
  EXPECT_FALSE(Store()->GetBaseline("b1", 0)->has_value());
  EXPECT_EQ(Ta({"admin", "--state", state_, "baseline", "remove", "b1"}).code,
            5);
}

// Event-log policies through the admin commands (docs/trusted-admin.md,
// "Event-log policies and staged updates"): a policy made from a host's
// log, stored after it is checked; a staged entry with an expiry; bad
// documents refused with one line and nothing stored.
TEST_F(TaAdminTest, PolicyBaselinesFromALogAndStagedWithAnExpiry) {
  testing::EventLogBuilder log;
  log.Measure(0, 0x00000008, testing::TestBytes("firmware 1.0"));
  log.Measure(1, 0x80000001, testing::TestBytes("boot order"));
  log.Measure(2, 0x80000003, testing::TestBytes("option rom"));
  const std::string log_file = dir_ / "log.bin";
  {
    std::ofstream f(log_file, std::ios::binary);
    f.write(reinterpret_cast<const char*>(log.bytes().data()),
            static_cast<std::streamsize>(log.bytes().size()));
  }
  auto r = Ta({"admin", "--state", state_, "baseline", "policy-from-log",
               "--log", log_file});
  ASSERT_EQ(r.code, 0) << r.err;
  Json policy = Json::parse(r.out, nullptr, false);
  ASSERT_TRUE(policy.is_object()) << r.out;
  const auto d0 = HexEncode(
      testing::TestDigest(TPM2_ALG_SHA256, testing::TestBytes("firmware 1.0")));
  EXPECT_EQ(policy["policy"]["pcrs"]["0"]["allow"][0]["digest"], d0) << r.out;
  EXPECT_EQ(policy["policy"]["pcrs"]["0"]["allow"][0]["type"],
            "EV_S_CRTM_VERSION")
      << r.out;
  const std::string pol = dir_ / "policy.json";
  WriteText(pol, r.out);
  r = Ta({"admin", "--state", state_, "baseline", "add", "fleet", "--policy",
          pol});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "added baseline fleet\n");

  // A staged update: a second entry that expires.
  r = Ta({"admin", "--state", state_, "--json", "baseline", "add",
          "fleet-update", "--policy", pol, "--expires-in", "48h"});
  ASSERT_EQ(r.code, 0) << r.err;
  const int64_t now = std::time(nullptr);
  const int64_t exp = Json::parse(r.out)["expires_at"].get<int64_t>();
  EXPECT_GE(exp, now + 48 * 3600 - 5);
  EXPECT_LE(exp, now + 48 * 3600 + 5);
  auto row = Store()->GetBaseline("fleet-update", now);
  ASSERT_TRUE(row.ok() && row->has_value());
  EXPECT_EQ((*row)->expires_at, exp);
  // Expired entries are not served (the store filters by `now`).
  EXPECT_FALSE(Store()->GetBaseline("fleet-update", exp + 1)->has_value());
  r = Ta({"admin", "--state", state_, "list", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  Json list = Json::parse(r.out)["baselines"];
  ASSERT_EQ(list.size(), 2u) << r.out;
  EXPECT_EQ(list[0]["kind"], "policy");
  EXPECT_TRUE(list[0]["expires_at"].is_null());
  EXPECT_EQ(list[1]["expires_at"], exp);

  // Refused, one line each, nothing stored.
  auto before = Store()->ListBaselines(now);
  ASSERT_TRUE(before.ok());
  WriteText(pol, R"({"policy":{"bank":"sha256","pcrs":{"0":{"any":true}}}})");
  r = Ta(
      {"admin", "--state", state_, "baseline", "add", "b2", "--policy", pol});
  EXPECT_EQ(r.code, 12) << r.err;  // PCRs 1 and 2 of the selection missing
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  WriteText(pol, "not json");
  r = Ta(
      {"admin", "--state", state_, "baseline", "add", "b2", "--policy", pol});
  EXPECT_EQ(r.code, 12) << r.err;
  r = Ta({"admin", "--state", state_, "baseline", "add", "b2", "--policy", pol,
          "--values", pol});
  EXPECT_EQ(r.code, 2) << r.err;
  for (const char* bad : {"0s", "1w", "367d", "-1h", "h"}) {
    r = Ta({"admin", "--state", state_, "baseline", "add", "b2", "--policy",
            pol, "--expires-in", bad});
    EXPECT_EQ(r.code, 2) << bad << ": " << r.err;
  }
  WriteText(log_file, "garbage");
  r = Ta({"admin", "--state", state_, "baseline", "policy-from-log", "--log",
          log_file});
  EXPECT_EQ(r.code, 12) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_EQ(Store()->ListBaselines(now)->size(), before->size());
}

TEST_F(TaAdminTest, HostsAndTpmCas) {
  const std::string junk = dir_ / "junk.pub";
  WriteText(junk, "not a TPM2B_PUBLIC");
  auto r =
      Ta({"admin", "--state", state_, "host", "add", "h1", "--ek-pub", junk});
  EXPECT_EQ(r.code, 12) << r.err;
  EXPECT_FALSE(Store()->GetHost("h1")->has_value());
  EXPECT_EQ(Ta({"admin", "--state", state_, "host", "add", "h1"}).code, 0);
  r = Ta({"admin", "--state", state_, "host", "add", "h1"});
  EXPECT_EQ(r.code, 6) << r.err;
  ASSERT_FALSE(Certs().empty());
  r = Ta({"admin", "--state", state_, "tpm-ca", "add", Certs() + "/ca.pem"});
  EXPECT_EQ(r.code, 0) << r.err;
  r = Ta({"admin", "--state", state_, "tpm-ca", "add", junk});
  EXPECT_EQ(r.code, 12) << r.err;
  r = Ta({"admin", "--state", state_, "list", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  Json j = Json::parse(r.out);
  ASSERT_EQ(j["hosts"].size(), 1u);
  EXPECT_EQ(j["hosts"][0]["name"], "h1");
  EXPECT_EQ(j["hosts"][0]["ek"], "certificate");
  ASSERT_EQ(j["tpm_cas"].size(), 1u);
  EXPECT_NE(
      j["tpm_cas"][0]["subject"].get<std::string>().find("vcrypt-test-ca"),
      std::string::npos);
  EXPECT_EQ(Ta({"admin", "--state", state_, "host", "remove", "h1"}).code, 0);
  EXPECT_EQ(Ta({"admin", "--state", state_, "host", "remove", "h1"}).code, 5);
}

// The EK file formats tpm2-tools writes: TPM2B_PUBLIC ("tss", the default)
// and TPMT_PUBLIC ("-f tpmt"), from a real software TPM.
TEST_F(TaAdminTest, HostWithRealEkInBothFileFormats) {
  testing::Swtpm tpm;
  std::string why;
  if (!tpm.Start(&why)) GTEST_SKIP() << why;
  auto t = Tpm::Open(tpm.Tcti());
  ASSERT_TRUE(t.ok()) << t.error().message;
  auto ek = t->EkPublic();
  ASSERT_TRUE(ek.ok()) << ek.error().message;
  const std::string tss = dir_ / "ek.tss", tpmt = dir_ / "ek.tpmt";
  WriteText(tss, std::string(ek->begin(), ek->end()));
  WriteText(tpmt, std::string(ek->begin() + 2, ek->end()));
  auto r =
      Ta({"admin", "--state", state_, "host", "add", "h1", "--ek-pub", tss});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Ta({"admin", "--state", state_, "host", "add", "h2", "--ek-pub", tpmt});
  ASSERT_EQ(r.code, 0) << r.err;
  auto h1 = Store()->GetHost("h1");
  auto h2 = Store()->GetHost("h2");
  ASSERT_TRUE(h1.ok() && h2.ok() && h1->has_value() && h2->has_value());
  ASSERT_TRUE((*h1)->ek.has_value());
  EXPECT_EQ((*h1)->ek, (*h2)->ek);
  r = Ta({"admin", "--state", state_, "list", "--json"});
  EXPECT_EQ(Json::parse(r.out)["hosts"][0]["ek"], "pinned");
}

TEST(TaToolUsage, ExitCodes) {
  EXPECT_EQ(Ta({}).code, 2);
  EXPECT_EQ(Ta({"frobnicate"}).code, 2);
  EXPECT_EQ(Ta({"admin", "list"}).code, 2);  // no --state
  EXPECT_EQ(Ta({"admin", "--state", "/x", "list", "--bogus"}).code, 2);
  auto r = Ta({"admin", "--state", "/nonexistent/ta", "list"});
  EXPECT_EQ(r.code, 5);
  EXPECT_EQ(Lines(r.err), 1);
  EXPECT_EQ(r.err.rfind("vcrypt-ta: ", 0), 0u) << r.err;
  EXPECT_EQ(Ta({"--help"}).code, 0);
}

// A service run in-process on a thread; Stop() ends it.
class RunningService {
 public:
  explicit RunningService(std::vector<std::string> args) {
    control_.on_listening = [this](const std::string& a) {
      listening_.set_value(a);
    };
    thread_ = std::thread([this, args] {
      result_ = Ta(args, &control_);
      finished_ = true;
    });
  }
  ~RunningService() { Stop(); }
  // "HOST:PORT", or "" when the service ended (or hung) without listening.
  std::string WaitListening() {
    auto f = listening_.get_future();
    for (int i = 0; i < 300; ++i) {
      if (f.wait_for(std::chrono::milliseconds(100)) ==
          std::future_status::ready)
        return f.get();
      if (finished_) return "";
    }
    return "";
  }
  TaRun Stop() {
    control_.Stop();
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  TaRun Finish() {  // for a service expected to fail on its own
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  ServiceControl control_;
  std::promise<std::string> listening_;
  std::atomic<bool> finished_{false};
  TaRun result_{-1, "", ""};
  std::thread thread_;
};

int PortOf(const std::string& address) {
  return std::stoi(address.substr(address.rfind(':') + 1));
}

// POST over TLS trusting `ca`; status 0 when no answer (handshake failed).
std::pair<int, Json> Post(int port, const std::string& ca,
                          const std::string& path, const Json& body,
                          httplib::Error* error = nullptr) {
  httplib::SSLClient cli("127.0.0.1", port);
  cli.set_ca_cert_path(ca.c_str());
  cli.enable_server_certificate_verification(true);
  cli.set_connection_timeout(5);
  auto res = cli.Post(path.c_str(), body.dump(), "application/json");
  if (error) *error = res.error();
  if (!res) return {0, Json()};
  return {res->status, Json::parse(res->body, nullptr, false)};
}

class TaServiceTest : public TaAdminTest {
 protected:
  void SetUp() override {
    TaAdminTest::SetUp();
    ASSERT_FALSE(Certs().empty()) << "make-certs.sh failed";
  }
  std::vector<std::string> Tls() {
    return {"--tls-cert", Certs() + "/server.pem", "--tls-key",
            Certs() + "/server-key.pem"};
  }
  std::vector<std::string> Kps(std::vector<std::string> extra) {
    std::vector<std::string> a = {
        "key-provider-service", "--state",       state_, "--listen",
        "127.0.0.1:0",          "--provider-id", "kps1"};
    for (auto& t : Tls()) a.push_back(t);
    for (auto& e : extra) a.push_back(e);
    return a;
  }
  std::vector<std::string> As() {
    std::vector<std::string> a = {"attestation-service", "--state", state_,
                                  "--listen", "127.0.0.1:0"};
    for (auto& t : Tls()) a.push_back(t);
    return a;
  }
};

TEST_F(TaServiceTest, AttestationServiceAnswersOverTlsOnly) {
  RunningService svc(As());
  std::string addr = svc.WaitListening();
  ASSERT_FALSE(addr.empty());
  EXPECT_EQ(addr.rfind("127.0.0.1:", 0), 0u);
  int port = PortOf(addr);
  ASSERT_GT(port, 0);

  // The route and TLS work: an unknown host is a JSON 404.
  auto [st, body] =
      Post(port, Certs() + "/ca.pem", "/v1/nonce", {{"host", "nobody"}});
  EXPECT_EQ(st, 404) << body.dump();
  EXPECT_EQ(body["error"]["code"], "not_found");
  // A known host gets a nonce over the selection of the state directory.
  ASSERT_EQ(Ta({"admin", "--state", state_, "host", "add", "h1"}).code, 0);
  auto [st2, grant] =
      Post(port, Certs() + "/ca.pem", "/v1/nonce", {{"host", "h1"}});
  EXPECT_EQ(st2, 200) << grant.dump();
  EXPECT_EQ(grant["pcrs"], Json::array({0, 1, 2}));
  // A client trusting another CA does not get through the handshake.
  httplib::Error e;
  auto [st3, b3] =
      Post(port, Certs() + "/other-ca.pem", "/v1/nonce", {{"host", "h1"}}, &e);
  EXPECT_EQ(st3, 0);
  EXPECT_EQ(e, httplib::Error::SSLServerVerification);
  // TLS 1.1 is refused by the server (the client is made permissive).
  {
    httplib::SSLClient cli("127.0.0.1", port);
    cli.enable_server_certificate_verification(false);
    SSL_CTX_set_security_level(cli.ssl_context(), 0);
    SSL_CTX_set_min_proto_version(cli.ssl_context(), TLS1_VERSION);
    SSL_CTX_set_max_proto_version(cli.ssl_context(), TLS1_1_VERSION);
    auto res = cli.Post("/v1/nonce", "{}", "application/json");
    EXPECT_FALSE(res);
  }
  TaRun r = svc.Stop();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "listening on " + addr + "\n");
}

// A client that trickles its TLS handshake a byte at a time (each read
// completes well within cpp-httplib's 5 s read timeout): a TCP connection
// from `source` to 127.0.0.1:port. Owns the socket.
class Trickler {
 public:
  Trickler(const char* source, int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in src{}, dst{};
    src.sin_family = dst.sin_family = AF_INET;
    inet_pton(AF_INET, source, &src.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    dst.sin_port = htons(static_cast<uint16_t>(port));
    ok_ = fd_ >= 0 &&
          bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src) == 0 &&
          connect(fd_, reinterpret_cast<sockaddr*>(&dst), sizeof dst) == 0;
  }
  ~Trickler() {
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ok_; }
  // Sends the next byte of a TLS record announcing 512 bytes that hold a
  // ClientHello of 508 bytes, then zeros of its body: nothing the server
  // can parse until all 512 have come (over four minutes at the pace of
  // the tests); false once the server closed.
  bool Step() {
    static const uint8_t kHeader[] = {0x16, 0x03, 0x01, 0x02, 0x00,
                                      0x01, 0x00, 0x01, 0xfc};
    uint8_t b = sent_ < sizeof kHeader ? kHeader[sent_] : 0;
    ++sent_;
    if (send(fd_, &b, 1, MSG_NOSIGNAL) != 1) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 0) == 1) {  // the server said something: it closed
      char c;
      return recv(fd_, &c, 1, MSG_DONTWAIT) > 0;
    }
    return true;
  }

 private:
  int fd_ = -1;
  bool ok_ = false;
  size_t sent_ = 0;
};

// Slow clients on many connections from one address used to take every
// worker thread of a service (8), and a real host's request waited until
// they gave up (never, as long as they trickled): now one address holds
// at most --max-client-connections (16) connections, the others are
// refused at once, and the host from another address is served.
TEST_F(TaServiceTest, TricklingClientsOfOneAddressDoNotStarveAHost) {
  RunningService svc(As());
  std::string addr = svc.WaitListening();
  ASSERT_FALSE(addr.empty());
  const int port = PortOf(addr);
  std::vector<std::unique_ptr<Trickler>> slow;
  for (int i = 0; i < 40; ++i) {
    slow.push_back(std::make_unique<Trickler>("127.0.0.2", port));
    ASSERT_TRUE(slow.back()->ok()) << i;
  }
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    while (!done) {
      for (auto& t : slow) t->Step();
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const auto t0 = std::chrono::steady_clock::now();
  auto [st, body] =
      Post(port, Certs() + "/ca.pem", "/v1/nonce", {{"host", "nobody"}});
  const auto took = std::chrono::steady_clock::now() - t0;
  done = true;
  trickle.join();
  EXPECT_EQ(st, 404) << body.dump();
  // Old code: no answer before the client's 5 s read timeout.
  EXPECT_LT(took, std::chrono::seconds(3));
  // Of the 40, the server let at most 16 in and refused the rest. On an
  // idle machine exactly 16 stay; on a loaded one (2 cores, a TCG guest
  // and two builds beside) 14 were seen: an admitted trickler can lose its
  // connection to the server's own read timeout when this thread is
  // starved, which is not what this test is about. The cap is.
  int open = 0;
  for (auto& t : slow) open += t->Step();
  EXPECT_LE(open, 16);
  EXPECT_GE(open, 8);
  slow.clear();
  EXPECT_EQ(svc.Stop().code, 0);
}

// A connection lives at most --max-connection-seconds, however slowly it
// keeps the server's reads busy.
TEST_F(TaServiceTest, AConnectionIsCutAtItsDeadline) {
  const std::string key = dir_ / "primary.key";
  WriteText(key, std::string(32, '\x5a'), 0600);
  RunningService svc(
      Kps({"--max-connection-seconds", "2", "--primary-key-file", key}));
  std::string addr = svc.WaitListening();
  ASSERT_FALSE(addr.empty());
  Trickler t("127.0.0.1", PortOf(addr));
  ASSERT_TRUE(t.ok());
  const auto t0 = std::chrono::steady_clock::now();
  while (t.Step() &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto lived = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(lived, std::chrono::milliseconds(1500));
  EXPECT_LT(lived, std::chrono::seconds(4));
  EXPECT_EQ(svc.Stop().code, 0);
}

// The service's body limit lets a /v1/attest with a full-size event log
// (1 MiB, base64) through to the route, and refuses bodies beyond 1.5 MiB
// before they are parsed.
TEST_F(TaServiceTest, AnAttestBodyWithAFullSizeEventLogIsRead) {
  RunningService svc(As());
  std::string addr = svc.WaitListening();
  ASSERT_FALSE(addr.empty());
  const std::string log(1398104, 'A');  // base64 of 1 MiB
  auto [st, body] = Post(PortOf(addr), Certs() + "/ca.pem", "/v1/attest",
                         {{"host", "h1"}, {"event_log", log}});
  EXPECT_EQ(st, 400) << body.dump();
  EXPECT_EQ(body["error"]["message"], "bad request: 'nonce' missing");
  auto [st2, body2] =
      Post(PortOf(addr), Certs() + "/ca.pem", "/v1/attest",
           {{"host", "h1"}, {"event_log", std::string(1600 * 1024, 'A')}});
  EXPECT_EQ(st2, 413);
  EXPECT_EQ(svc.Stop().code, 0);
}

TEST_F(TaServiceTest, KeyProviderServiceWithPrimaryKeyFile) {
  const std::string key = dir_ / "primary.key";
  WriteText(key, std::string(32, '\x5a'), 0644);
  RunningService loose(Kps({"--primary-key-file", key}));
  EXPECT_EQ(loose.WaitListening(), "");
  TaRun r = loose.Finish();
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_NE(r.err.find("mode 0644"), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err), 1);
  EXPECT_EQ(r.out, "");

  WriteText(key, std::string(31, '\x5a'), 0600);
  RunningService short_key(Kps({"--primary-key-file", key}));
  EXPECT_EQ(short_key.WaitListening(), "");
  EXPECT_EQ(short_key.Finish().code, 12);

  WriteText(key, std::string(32, '\x5a'), 0600);
  RunningService svc(Kps({"--primary-key-file", key}));
  std::string addr = svc.WaitListening();
  ASSERT_FALSE(addr.empty());
  // The KPS routes answer: a forged token is refused with a JSON error.
  auto [st, body] =
      Post(PortOf(addr), Certs() + "/ca.pem", "/v1/kek",
           {{"token", "a.b.c"}, {"proof", "x"}, {"transport_key", "AAAA"}});
  EXPECT_TRUE(st == 400 || st == 403) << st << " " << body.dump();
  EXPECT_TRUE(body["error"].contains("code")) << body.dump();
  EXPECT_EQ(svc.Stop().code, 0);
}

TEST_F(TaServiceTest, KeyProviderServiceFailsWhenTheKmsIsUnreachable) {
  // A port nobody listens on: bind one, note it, close it.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  const std::string kms = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  RunningService svc(
      Kps({"--primary-key", "1", "--kms", kms, "--kms-ca", Certs() + "/ca.pem",
           "--kms-cert", Certs() + "/client.pem", "--kms-key",
           Certs() + "/client-key.pem"}));
  EXPECT_EQ(svc.WaitListening(), "");
  TaRun r = svc.Finish();
  EXPECT_EQ(r.code, 8) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("cannot fetch the primary key"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(kms), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_F(TaServiceTest, ServiceUsageErrors) {
  EXPECT_EQ(Ta(Kps({})).code, 2);  // no primary key source
  EXPECT_EQ(Ta(Kps({"--primary-key", "1", "--primary-key-file", "/x"})).code,
            2);
  EXPECT_EQ(Ta({"attestation-service", "--state", state_, "--listen", "nope",
                "--tls-cert", "/x", "--tls-key", "/y"})
                .code,
            2);
  auto r = Ta({"attestation-service", "--state", state_, "--listen",
               "127.0.0.1:0", "--tls-cert", dir_ / "missing.pem", "--tls-key",
               dir_ / "missing.pem"});
  EXPECT_EQ(r.code, 5) << r.err;
  // A key that does not match the certificate.
  r = Ta({"attestation-service", "--state", state_, "--listen", "127.0.0.1:0",
          "--tls-cert", Certs() + "/server.pem", "--tls-key",
          Certs() + "/client-key.pem"});
  EXPECT_EQ(r.code, 12) << r.err;
  EXPECT_NE(r.err.find("does not match"), std::string::npos) << r.err;
  // The limits on unauthenticated clients: numbers in range only.
  for (std::vector<std::string> bad :
       {std::vector<std::string>{"--rate-limit", "fast"},
        {"--rate-limit", "-1"},
        {"--rate-burst", "0"},
        {"--max-outstanding", "0"},
        {"--max-outstanding", "10x"}}) {
    std::vector<std::string> args = {"attestation-service",
                                     "--state",
                                     state_,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--tls-cert",
                                     Certs() + "/server.pem",
                                     "--tls-key",
                                     Certs() + "/server-key.pem"};
    args.insert(args.end(), bad.begin(), bad.end());
    r = Ta(args);
    EXPECT_EQ(r.code, 2) << bad[0] << " " << bad[1] << ": " << r.err;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(bad[0]), std::string::npos) << r.err;
  }
}

// The binary: prints the line tests and scripts wait for, and exits 0 on
// SIGTERM.
TEST_F(TaServiceTest, BinaryStopsCleanlyOnSigterm) {
  const std::string bin =
      std::string(VCRYPT_BINARY_DIR) + "/trustauthority/vcrypt-ta";
  ASSERT_EQ(access(bin.c_str(), X_OK), 0) << bin << " not built";
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  const std::string cert = Certs() + "/server.pem",
                    key = Certs() + "/server-key.pem";
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    execl(bin.c_str(), "vcrypt-ta", "attestation-service", "--state",
          state_.c_str(), "--listen", "127.0.0.1:0", "--tls-cert", cert.c_str(),
          "--tls-key", key.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string line;
  pollfd p{out[0], POLLIN, 0};
  while (line.find('\n') == std::string::npos && poll(&p, 1, 10000) == 1) {
    char buf[256];
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  EXPECT_EQ(line.rfind("listening on 127.0.0.1:", 0), 0u) << line;
  if (line.find('\n') != std::string::npos) {
    int port = std::stoi(line.substr(line.rfind(':') + 1));
    auto [st, body] =
        Post(port, Certs() + "/ca.pem", "/v1/nonce", {{"host", "x"}});
    EXPECT_EQ(st, 404);
  }
  kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// --- the database: --db, PostgreSQL, import-files ---------------------------

// Root initialising the services' directory (owned by their user) leaves a
// database the services can open: it belongs to the directory's owner.
TEST(TaToolDb, ADatabaseRootMakesBelongsToTheDirectorysOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  TempDir dir("ta-owner");
  const std::string state = dir / "state";
  ASSERT_EQ(mkdir(state.c_str(), 0700), 0);
  ASSERT_EQ(chown(state.c_str(), 65534, 65534), 0);
  auto r = Ta({"admin", "--state", state, "init"});
  ASSERT_EQ(r.code, 0) << r.err;
  struct stat st;
  ASSERT_EQ(stat((state + "/ta.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// A password never reaches argv: refused with one line that says where it
// goes instead, without echoing it.
TEST(TaToolDb, APasswordInTheDatabaseUrlIsRefused) {
  for (const std::string url :
       {"postgresql://ta:s3cret@db.example/ta", "host=db password=s3cret"}) {
    for (std::vector<std::string> args :
         {std::vector<std::string>{"admin", "--db", url, "list"},
          {"attestation-service", "--db", url, "--listen", "127.0.0.1:0",
           "--tls-cert", "/x", "--tls-key", "/y"}}) {
      auto r = Ta(args);
      EXPECT_EQ(r.code, 2) << url;
      EXPECT_EQ(Lines(r.err), 1) << r.err;
      EXPECT_NE(r.err.find(".pgpass"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("s3cret"), std::string::npos) << r.err;
    }
  }
  auto r = Ta({"admin", "--db", "mysql://h/db", "list"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(Ta({"admin", "--db", "sqlite:/nonexistent/ta.db", "list"}).code, 5);
}

// Admin commands and both services on a PostgreSQL database, with no
// state directory at all.
class TaDbServiceTest : public TaServiceTest {
 protected:
  void SetUp() override {
    TaServiceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_NO_FATAL_FAILURE(testing::NeedPostgres(&db_));
  }
  std::string db_;
};

TEST_F(TaDbServiceTest, AdminAndServicesOnPostgres) {
  auto r = Ta({"admin", "--db", db_, "init", "--pcrs", "sha256:0-2"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Ta({"admin", "--db", db_, "init"});
  EXPECT_EQ(r.code, 6) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  ASSERT_EQ(Ta({"admin", "--db", db_, "host", "add", "h1"}).code, 0);
  EXPECT_EQ(Ta({"admin", "--db", db_, "host", "add", "h1"}).code, 6);
  const std::string vals = dir_ / "values";
  WriteText(vals, Digests(3));
  ASSERT_EQ(
      Ta({"admin", "--db", db_, "baseline", "add", "b1", "--values", vals})
          .code,
      0);
  r = Ta({"admin", "--db", db_, "list", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["pcrs"], "sha256:0,1,2");
  EXPECT_EQ(j["hosts"][0]["name"], "h1");
  ASSERT_EQ(j["baselines"].size(), 1u);
  EXPECT_EQ(j["baselines"][0]["name"], "b1");
  ASSERT_EQ(j["signing_keys"].size(), 1u);
  EXPECT_EQ(j["signing_keys"][0]["state"], "active");

  // The attestation service serves the database's hosts and selection.
  std::vector<std::string> as = {"attestation-service", "--db", db_, "--listen",
                                 "127.0.0.1:0"};
  for (auto& t : Tls()) as.push_back(t);
  RunningService svc(as);
  std::string addr = svc.WaitListening();
  ASSERT_FALSE(addr.empty()) << svc.Finish().err;
  auto [st, grant] =
      Post(PortOf(addr), Certs() + "/ca.pem", "/v1/nonce", {{"host", "h1"}});
  EXPECT_EQ(st, 200) << grant.dump();
  EXPECT_EQ(grant["pcrs"], Json::array({0, 1, 2}));
  EXPECT_EQ(svc.Stop().code, 0);

  // The key provider service finds the attestation service's public key in
  // the database (no file to pin).
  const std::string primary = dir_ / "primary.key";
  WriteText(primary, std::string(32, 'k'), 0600);
  std::vector<std::string> kps = {"key-provider-service",
                                  "--db",
                                  db_,
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--provider-id",
                                  "kps1",
                                  "--primary-key-file",
                                  primary};
  for (auto& t : Tls()) kps.push_back(t);
  RunningService k(kps);
  ASSERT_FALSE(k.WaitListening().empty()) << k.Finish().err;
  EXPECT_EQ(k.Stop().code, 0);
}

// An installation of the file store moves into a database, SQLite or
// PostgreSQL: settings, signing key (same kid), nonce key, TPM CAs, hosts
// with their pins and enrolled AKs, baselines.
TEST_F(TaDbServiceTest, ImportFilesMovesAFileStoreIntoADatabase) {
  const std::string old = dir_ / "old";
  for (const char* d : {"", "/hosts", "/baselines", "/tpm-cas"})
    ASSERT_TRUE(MakeDirs(old + d, 0700).ok());
  WriteText(old + "/config.json",
            R"({"version":1,"pcrs":"sha256:0,1,2","issuer":"iss-x"})");
  auto key = EcSigningKey::Generate();
  ASSERT_TRUE(key.ok());
  auto pem = key->ToPrivatePem();
  ASSERT_TRUE(pem.ok());
  WriteText(old + "/signing-key.pem", std::string(pem->chars(), pem->size()),
            0600);
  const std::string nonce_key(32, 'n');
  WriteText(old + "/nonce.key", nonce_key, 0600);
  const std::string reg(32, 'a');
  WriteText(old + "/hosts/h1.json",
            R"({"registration":")" + reg + R"(","pinned_ek":"OLD"})");
  WriteText(old + "/hosts/h1." + reg + ".pin", "PINNED");
  WriteText(old + "/hosts/h2.json",
            R"({"registration":")" + reg +
                R"(","ek":"EK2","enrolled":{"ek":"EK2","ak":"AK2","at":5},)"
                R"("last_clock":{"clock":7}})");
  WriteText(old + "/baselines/b1.json", R"({"values":["00"]})");
  WriteText(old + "/tpm-cas/x.pem", *ReadFile(Certs() + "/ca.pem"));
  for (const std::string& url :
       {std::string("sqlite:") + (dir_ / "imported.db"), db_}) {
    auto r = Ta({"admin", "--state", old, "--db", url, "import-files"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("2 hosts, 1 baselines, 1 TPM CAs"), std::string::npos)
        << r.out;
    auto store = OpenTaStore(url);
    ASSERT_TRUE(store.ok()) << store.error().message;
    EXPECT_EQ(*(*store)->GetSetting("issuer"), "iss-x");
    auto keys = (*store)->SigningKeys();
    ASSERT_TRUE(keys.ok() && keys->size() == 1);
    EXPECT_EQ((*keys)[0].kid, key->Thumbprint());
    auto nk = (*store)->NonceKey(32);
    ASSERT_TRUE(nk.ok());
    EXPECT_EQ(std::string(nk->chars(), nk->size()), nonce_key);
    auto h1 = (*store)->GetHost("h1");
    ASSERT_TRUE(h1.ok() && h1->has_value());
    EXPECT_EQ((*h1)->registration, reg);
    EXPECT_EQ((*h1)->pinned_ek, "PINNED");  // the pin file wins
    auto h2 = (*store)->GetHost("h2");
    ASSERT_TRUE(h2.ok() && h2->has_value());
    EXPECT_EQ((*h2)->ek, "EK2");
    EXPECT_FALSE((*h2)->pinned_ek.has_value());
    EXPECT_EQ((*h2)->enrolled_ak, "AK2");
    EXPECT_EQ((*h2)->last_clock, R"({"clock":7})");
    EXPECT_EQ((*(*store)->GetBaseline("b1", 0))->body, R"({"values":["00"]})");
    EXPECT_EQ((*store)->ListTpmCas()->size(), 1u);
    // Into an initialised database: refused.
    r = Ta({"admin", "--state", old, "--db", url, "import-files"});
    EXPECT_EQ(r.code, 6) << r.err;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
  }
  // A damaged file store is refused before the database is touched.
  WriteText(old + "/hosts/h3.json", "not json");
  const std::string fresh = std::string("sqlite:") + (dir_ / "fresh.db");
  auto r = Ta({"admin", "--state", old, "--db", fresh, "import-files"});
  EXPECT_EQ(r.code, 12) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "fresh.db"));
}

}  // namespace
}  // namespace vcrypt
