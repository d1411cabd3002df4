// Tests of the standard key provider (keyproviders/standard/
// standard_provider.h) against real pykmip-servers on 127.0.0.1:
//  - a KEK's whole KMIP life cycle through KmsCluster::Execute and the codec,
//    ending in a KMIP result error surfaced with its reason;
//  - StandardProvider::Create's cluster check (unreachable, untrusted),
//    Load, and the KEK life cycle through the KeyProvider interface;
//  - failover on transport errors, and NO failover on KMIP result errors;
//  - a KMS killed mid-session and restarted with its database;
//  - coalescing of concurrent GetKek calls into batched Get messages.
//
// One suite, one main server started once (PyKmipSuite). The servers that
// only some tests need (a second KMS with its own database, a KMS with a
// certificate from another CA, a KMS the test kills) are started on first
// use, so a filtered run starts only what it needs. Skipped when
// pykmip-server is not installed.
#include "keyproviders/standard/standard_provider.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/handles.h"
#include "keyproviders/standard/kmip.h"
#include "tests/kmip/pykmip_fixture.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using kmip_test::Clock;
using kmip_test::Config;
using kmip_test::FreePort;
using kmip_test::MakeClient;
using kmip_test::PyKmipServer;
using kmip_test::PyKmipSuite;
using kmip_test::Seconds;
using kmip_test::TestDir;
using std::chrono::milliseconds;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A private key file read straight into locked memory (it is key material).
SecureBuffer ReadSecret(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (!fd.valid() || ::fstat(fd.get(), &st) != 0) return SecureBuffer();
  SecureBuffer out(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
    if (n <= 0) return SecureBuffer();
    got += static_cast<size_t>(n);
  }
  return out;
}

KmsServer Local(uint16_t port) { return KmsServer{"127.0.0.1", port}; }

// Short timeouts: loopback, and a test must not wait 10 s for anything.
StandardProviderOptions TestOptions() {
  StandardProviderOptions o;
  o.connect_timeout = milliseconds(3000);
  o.io_timeout = milliseconds(5000);
  return o;
}

// A fresh (not yet existing) provider directory.
std::string NewProviderDir(const std::string& name) {
  static int counter = 0;
  return TestDir::Get().path() + "/providers/" + name + "-" +
         std::to_string(++counter);
}

// StandardProvider::Create with the test PKI: client identity "client",
// trusting `ca` ("ca" or "other-ca").
Result<std::unique_ptr<StandardProvider>> CreateProvider(
    const std::string& name, const std::string& dir,
    const std::vector<KmsServer>& servers, const std::string& ca = "ca") {
  const std::string certs = TestDir::Get().certs();
  auto ca_pem = ReadFile(certs + "/" + ca + ".pem");
  auto cert_pem = ReadFile(certs + "/client.pem");
  if (!ca_pem.ok()) return ca_pem.error();
  if (!cert_pem.ok()) return cert_pem.error();
  SecureBuffer key_pem = ReadSecret(certs + "/client-key.pem");
  if (key_pem.empty()) {
    return MakeError(ErrorCode::kIo, "cannot read client-key.pem");
  }
  return StandardProvider::Create(name, dir, servers, *ca_pem, *cert_pem,
                                  key_pem, TestOptions());
}

std::unique_ptr<KmsCluster> MakeCluster(std::vector<KmsServer> servers) {
  return std::make_unique<KmsCluster>(MakeClient(Config()), std::move(servers));
}

// The state JSON of server `i` of a provider (Describe()["server_states"]).
nlohmann::json ServerState(const StandardProvider& p, size_t i) {
  return p.Describe()["server_states"].at(i);
}

// The KMIP result error of a single-item Get of `uid` on `cluster`; fails
// the test when the exchange itself fails (a transport error) or the Get
// succeeds.
std::optional<kmip::KmipResultError> GetResultError(KmsCluster& cluster,
                                                    const std::string& uid) {
  kmip::RequestItem get = kmip::MakeGet(uid);
  auto ex = cluster.Execute({&get, 1});
  EXPECT_TRUE(ex.ok()) << ex.error().message;
  if (!ex.ok() || (*ex)->matched[0] == nullptr) return std::nullopt;
  auto e = kmip::ResultErrorOf(*(*ex)->matched[0], kmip::Operation::kGet);
  EXPECT_TRUE(e.has_value()) << "Get of " << uid << " succeeded";
  return e;
}

class StandardProviderTest : public PyKmipSuite<StandardProviderTest> {
 protected:
  static void TearDownTestSuite() {
    for (auto* extra : {&second_, &foreign_, &restartable_}) {
      extra->server.reset();
      extra->error.clear();
    }
    PyKmipSuite::TearDownTestSuite();
  }

  struct Extra {
    std::unique_ptr<PyKmipServer> server;
    std::string error;
  };

  // Starts `extra` on first use; nullptr (and a test failure) if it cannot.
  static PyKmipServer* Lazy(Extra& extra, const std::string& name,
                            const std::string& certset) {
    if (!extra.server && extra.error.empty()) {
      extra.server = std::make_unique<PyKmipServer>(name, certset);
      extra.error = extra.server->Start();
    }
    EXPECT_TRUE(extra.error.empty()) << extra.error;
    return extra.error.empty() ? extra.server.get() : nullptr;
  }
  // A second KMS with its own (fresh) database.
  static PyKmipServer* Second() {
    return Lazy(second_, "pykmip-second", "default");
  }
  // A KMS whose certificate comes from other-ca.pem (not trusted).
  static PyKmipServer* Foreign() {
    return Lazy(foreign_, "pykmip-foreign", "other");
  }
  // A KMS that a test kills and restarts.
  static PyKmipServer* Restartable() {
    return Lazy(restartable_, "pykmip-restartable", "default");
  }

  static inline Extra second_;
  static inline Extra foreign_;
  static inline Extra restartable_;
};

// ---------------------------------------------------------------------------
// KMIP operations through KmsCluster::Execute and the codec.

TEST_F(StandardProviderTest, KekLifeCycleThroughClusterAndCodec) {
  auto cluster = MakeCluster({Local(server().port())});
  const std::string name = "vcrypt-cluster-lifecycle";
  // One request item per exchange; returns the exchange (alive while the
  // matched items are used).
  auto run = [&](kmip::RequestItem item) {
    auto ex = cluster->Execute({&item, 1});
    EXPECT_TRUE(ex.ok()) << ex.error().message << "\n" << server().LogTail();
    if (ex.ok()) {
      EXPECT_EQ((*ex)->server, server().address());
      EXPECT_EQ((*ex)->matched.size(), 1u);
    }
    return ex;
  };

  auto created = run(kmip::MakeCreateAes256(name));
  ASSERT_TRUE(created.ok());
  auto uid_r = kmip::ParseCreate((*created)->matched[0]);
  ASSERT_TRUE(uid_r.ok()) << uid_r.error().message;
  const std::string uid = *uid_r;
  ASSERT_FALSE(uid.empty());

  auto activated = run(kmip::MakeActivate(uid));
  ASSERT_TRUE(activated.ok());
  Status act = kmip::ParseActivate((*activated)->matched[0], uid);
  ASSERT_TRUE(act.ok()) << act.error().message;

  auto got = run(kmip::MakeGet(uid));
  ASSERT_TRUE(got.ok());
  auto sym = kmip::ParseGetSymmetricKey((*got)->matched[0]);
  ASSERT_TRUE(sym.ok()) << sym.error().message;
  EXPECT_EQ(sym->unique_identifier, uid);
  EXPECT_EQ(sym->algorithm, kmip::CryptographicAlgorithm::kAes);
  EXPECT_EQ(sym->length_bits, 256);
  EXPECT_EQ(sym->key.size(), 32u);
  auto kek = kmip::ParseGetAes256((*got)->matched[0], uid);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_TRUE(kek->Equals(sym->key));

  auto located = run(kmip::MakeLocateByName(name));
  ASSERT_TRUE(located.ok());
  auto uids = kmip::ParseLocate((*located)->matched[0]);
  ASSERT_TRUE(uids.ok()) << uids.error().message;
  EXPECT_NE(std::find(uids->begin(), uids->end(), uid), uids->end())
      << "Locate by name did not find " << uid;

  // The attributes of an active KEK, as the KMS keeps them.
  auto state_of = [&](std::optional<kmip::State>* state) {
    auto ex = run(kmip::MakeGetAttributes(uid));
    ASSERT_TRUE(ex.ok());
    auto attrs = kmip::ParseGetAttributes((*ex)->matched[0]);
    ASSERT_TRUE(attrs.ok()) << attrs.error().message;
    EXPECT_EQ(attrs->unique_identifier, uid);
    auto s = kmip::SummarizeAttributes(attrs->attributes);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s->object_type, kmip::ObjectType::kSymmetricKey);
    EXPECT_EQ(s->algorithm, kmip::CryptographicAlgorithm::kAes);
    EXPECT_EQ(s->length_bits, 256);
    EXPECT_EQ(s->usage_mask, kmip::kKekUsageMask);
    EXPECT_NE(std::find(s->names.begin(), s->names.end(), name),
              s->names.end());
    *state = s->state;
  };
  std::optional<kmip::State> state;
  ASSERT_NO_FATAL_FAILURE(state_of(&state));
  EXPECT_EQ(state, kmip::State::kActive);

  auto revoked = run(
      kmip::MakeRevoke(uid, kmip::RevocationReasonCode::kCessationOfOperation));
  ASSERT_TRUE(revoked.ok());
  Status rev = kmip::ParseRevoke((*revoked)->matched[0], uid);
  ASSERT_TRUE(rev.ok()) << rev.error().message;
  ASSERT_NO_FATAL_FAILURE(state_of(&state));
  EXPECT_EQ(state, kmip::State::kDeactivated);

  auto destroyed = run(kmip::MakeDestroy(uid));
  ASSERT_TRUE(destroyed.ok());
  Status des = kmip::ParseDestroy((*destroyed)->matched[0], uid);
  ASSERT_TRUE(des.ok()) << des.error().message;

  // KMIP error results surfaced with their reason: the exchange succeeds
  // (the server answered; not a transport failure), the item carries the
  // Result Reason and the server's message, and the typed parser turns it
  // into kKeyUnavailable naming the operation and the reason.
  auto gone = run(kmip::MakeGet(uid));
  ASSERT_TRUE(gone.ok());
  const kmip::ResponseItem* item = (*gone)->matched[0];
  ASSERT_NE(item, nullptr);
  EXPECT_FALSE(item->ok());
  auto err = kmip::ResultErrorOf(*item, kmip::Operation::kGet);
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ(err->status, kmip::ResultStatus::kOperationFailed);
  EXPECT_EQ(err->reason, kmip::ResultReason::kItemNotFound);
  EXPECT_FALSE(err->message.empty()) << "PyKMIP sends a Result Message";
  std::printf("[ info     ] Get of a destroyed key: %s\n",
              err->Describe().c_str());
  auto refused = kmip::ParseGetAes256(item, uid);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_TRUE(Contains(refused.error().message, "KMS refused Get"))
      << refused.error().message;
  EXPECT_TRUE(Contains(refused.error().message, "Item Not Found"))
      << refused.error().message;
  EXPECT_TRUE(Contains(refused.error().message, err->message))
      << refused.error().message;

  auto none = run(kmip::MakeLocateByName(name));
  ASSERT_TRUE(none.ok());
  auto left = kmip::ParseLocate((*none)->matched[0]);
  ASSERT_TRUE(left.ok()) << left.error().message;
  EXPECT_EQ(std::find(left->begin(), left->end(), uid), left->end());

  // A KMIP error is an answer: the server is still "ok", and everything
  // went over one connection (DiscoverVersions once, then 10 requests).
  auto states = cluster->States();
  EXPECT_EQ(states[0]["state"], "ok") << states.dump();
  EXPECT_EQ(cluster->connections_made(), 1u);
  EXPECT_EQ(cluster->messages_sent(), 11u);
}

TEST_F(StandardProviderTest, BatchWithOneMissingKeyAnswersTheOthers) {
  // Continue-on-error batches: one missing key does not fail the others.
  auto cluster = MakeCluster({Local(server().port())});
  kmip::RequestItem create = kmip::MakeCreateAes256("vcrypt-batch-missing");
  auto c = cluster->Execute({&create, 1});
  ASSERT_TRUE(c.ok()) << c.error().message;
  auto uid = kmip::ParseCreate((*c)->matched[0]);
  ASSERT_TRUE(uid.ok()) << uid.error().message;
  std::vector<kmip::RequestItem> items = {kmip::MakeGet("no-such-key"),
                                          kmip::MakeGet(*uid)};
  auto ex = cluster->Execute(items, /*continue_on_error=*/true);
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  ASSERT_EQ((*ex)->matched.size(), 2u);
  auto missing = kmip::ParseGetAes256((*ex)->matched[0], "no-such-key");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(Contains(missing.error().message, "Item Not Found"))
      << missing.error().message;
  // A pre-active key can be fetched too (PyKMIP allows Get before Activate).
  auto found = kmip::ParseGetAes256((*ex)->matched[1], *uid);
  EXPECT_TRUE(found.ok()) << found.error().message;
}

// ---------------------------------------------------------------------------
// StandardProvider::Create / Load and the KeyProvider interface.

TEST_F(StandardProviderTest, CreateRefusesUnreachableCluster) {
  const uint16_t dead = FreePort();
  const std::string dir = NewProviderDir("unreachable");
  auto p = CreateProvider("unreachable", dir, {Local(dead)});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kKeyUnavailable);
  const std::string& msg = p.error().message;
  EXPECT_TRUE(Contains(msg, "KMS cluster check failed")) << msg;
  EXPECT_TRUE(Contains(msg, "127.0.0.1:" + std::to_string(dead))) << msg;
  EXPECT_TRUE(Contains(msg, "connection refused")) << msg;
  EXPECT_FALSE(fs::exists(dir)) << "left " << dir;
  EXPECT_FALSE(fs::exists(dir + ".new")) << "left " << dir << ".new";
}

TEST_F(StandardProviderTest, CreateRefusesUntrustedServer) {
  PyKmipServer* foreign = Foreign();
  ASSERT_NE(foreign, nullptr);
  const std::string dir = NewProviderDir("untrusted");
  auto p = CreateProvider("untrusted", dir, {Local(foreign->port())});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, ErrorCode::kKeyUnavailable);
  const std::string& msg = p.error().message;
  EXPECT_TRUE(Contains(msg, "KMS cluster check failed")) << msg;
  EXPECT_TRUE(Contains(msg, foreign->address())) << msg;
  EXPECT_TRUE(Contains(msg, "server certificate verification failed")) << msg;
  EXPECT_FALSE(fs::exists(dir)) << "left " << dir;
  EXPECT_FALSE(fs::exists(dir + ".new")) << "left " << dir << ".new";
}

TEST_F(StandardProviderTest, CreateLoadAndKekLifeCycle) {
  const std::string dir = NewProviderDir("kms");
  auto created = CreateProvider("kms", dir, {Local(server().port())});
  ASSERT_TRUE(created.ok()) << created.error().message << "\n"
                            << server().LogTail();
  StandardProvider& p = **created;
  EXPECT_EQ(p.name(), "kms");
  EXPECT_EQ(p.type(), "standard");

  // The files, private to root.
  struct stat st;
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const char* f : {"config.json", "ca.pem", "cert.pem", "key.pem"}) {
    ASSERT_EQ(::stat((dir + "/" + f).c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
  }
  EXPECT_FALSE(fs::exists(dir + ".new"));
  auto desc = p.Describe();
  EXPECT_EQ(desc["servers"], nlohmann::json::array({server().address()}));

  // An existing directory is never overwritten.
  auto again = CreateProvider("kms", dir, {Local(server().port())});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kExists);

  auto nk = p.CreateKek("lifecycle-vm");
  ASSERT_TRUE(nk.ok()) << nk.error().message << "\n" << server().LogTail();
  EXPECT_EQ(nk->kek.size(), kKekSize);
  EXPECT_FALSE(nk->ref.kek_id.empty());
  EXPECT_TRUE(nk->ref.data.empty()) << "standard KekRefs carry only the uid";

  // Another instance loaded from the files (vcryptd after a restart).
  auto loaded = StandardProvider::Load("kms", dir);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  for (StandardProvider* q : {&p, loaded->get()}) {
    auto k = q->GetKek(nk->ref);
    ASSERT_TRUE(k.ok()) << k.error().message;
    EXPECT_TRUE(k->Equals(nk->kek));
  }

  // A uid the KMS does not know: kKeyUnavailable with the KMS's reason.
  auto unknown = (*loaded)->GetKek(KekRef{"no-such-key"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_TRUE(Contains(unknown.error().message, "Item Not Found"))
      << unknown.error().message;
  EXPECT_TRUE(Contains(unknown.error().message, "no-such-key"))
      << unknown.error().message;
  EXPECT_TRUE(Contains(unknown.error().message, "'kms'"))
      << unknown.error().message;

  // A token without a uid is damaged, not a KMS question.
  auto empty = p.GetKek(KekRef{});
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidVolume);

  Status destroyed = p.DestroyKek(nk->ref);
  ASSERT_TRUE(destroyed.ok()) << destroyed.error().message;
  for (StandardProvider* q : {&p, loaded->get()}) {
    auto k = q->GetKek(nk->ref);
    ASSERT_FALSE(k.ok()) << "a destroyed KEK is still served";
    EXPECT_EQ(k.error().code, ErrorCode::kKeyUnavailable);
    EXPECT_TRUE(Contains(k.error().message, "Item Not Found"))
        << k.error().message;
  }
  Status twice = p.DestroyKek(nk->ref);
  EXPECT_FALSE(twice.ok());
}

// ---------------------------------------------------------------------------
// Failover.

TEST_F(StandardProviderTest, FailsOverPastAnUnreachableServer) {
  const uint16_t dead = FreePort();
  const std::string dead_addr = "127.0.0.1:" + std::to_string(dead);
  auto created = CreateProvider("failover", NewProviderDir("failover"),
                                {Local(dead), Local(server().port())});
  ASSERT_TRUE(created.ok()) << created.error().message;
  StandardProvider& p = **created;

  auto nk = p.CreateKek("failover-vm");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  auto k = p.GetKek(nk->ref);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_TRUE(k->Equals(nk->kek));

  auto dead_state = ServerState(p, 0);
  EXPECT_EQ(dead_state["server"], dead_addr);
  EXPECT_EQ(dead_state["state"], "error") << dead_state.dump();
  const std::string last_error = dead_state.value("last_error", "");
  EXPECT_TRUE(Contains(last_error, dead_addr)) << last_error;
  EXPECT_TRUE(Contains(last_error, "connection refused")) << last_error;
  EXPECT_TRUE(dead_state.contains("since"));
  auto live_state = ServerState(p, 1);
  EXPECT_EQ(live_state["server"], server().address());
  EXPECT_EQ(live_state["state"], "ok") << live_state.dump();
  EXPECT_FALSE(live_state.contains("last_error"));
  EXPECT_EQ(p.cluster().connections_made(), 1u);
}

// A KMIP result error must NOT fail over. Cluster [second, main]: both are
// live KMSes with separate databases, and the KEK exists only on `main`.
// `second` answers "Item Not Found", and that is the answer: asking the
// next server would be wrong, because
//  - a live KMS that says "not found" (or "permission denied") is
//    authoritative; the cluster is a list of replicas of one key store, and
//    failover exists only for servers that cannot be reached;
//  - unique identifiers are local to a server (PyKMIP numbers objects 1, 2,
//    3... in each database), so the same uid on another server can name an
//    unrelated key, and failing over on "not found" could hand out a
//    foreign KEK.
// The KEK being served by `main` in the reverse order shows it exists.
TEST_F(StandardProviderTest, KmipResultErrorDoesNotFailOver) {
  PyKmipServer* second = Second();
  ASSERT_NE(second, nullptr);
  auto main_only = CreateProvider("main-only", NewProviderDir("main-only"),
                                  {Local(server().port())});
  ASSERT_TRUE(main_only.ok()) << main_only.error().message;
  auto nk = (*main_only)->CreateKek("only-on-main");
  ASSERT_TRUE(nk.ok()) << nk.error().message;

  // `second` really lacks it (its database is fresh and no test creates
  // keys there).
  {
    auto direct = MakeCluster({Local(second->port())});
    auto e = GetResultError(*direct, nk->ref.kek_id);
    ASSERT_TRUE(e.has_value());
    ASSERT_EQ(e->reason, kmip::ResultReason::kItemNotFound) << e->Describe();
  }

  auto pair = CreateProvider("second-first", NewProviderDir("second-first"),
                             {Local(second->port()), Local(server().port())});
  ASSERT_TRUE(pair.ok()) << pair.error().message;
  StandardProvider& p = **pair;
  auto k = p.GetKek(nk->ref);
  ASSERT_FALSE(k.ok()) << "failed over on a KMIP result error";
  EXPECT_EQ(k.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_TRUE(Contains(k.error().message, "Item Not Found"))
      << k.error().message;
  // The batched path behaves the same.
  KekRef refs[] = {nk->ref};
  auto ks = p.GetKeks(refs);
  ASSERT_EQ(ks.size(), 1u);
  EXPECT_FALSE(ks[0].ok());
  // `second` answered (ok); `main` was never asked.
  EXPECT_EQ(ServerState(p, 0)["state"], "ok") << p.Describe().dump();
  EXPECT_EQ(ServerState(p, 1)["state"], "unknown") << p.Describe().dump();
  EXPECT_EQ(p.cluster().connections_made(), 1u);

  // In the other order `main` answers first and has the key.
  auto reversed =
      CreateProvider("main-first", NewProviderDir("main-first"),
                     {Local(server().port()), Local(second->port())});
  ASSERT_TRUE(reversed.ok()) << reversed.error().message;
  auto k2 = (*reversed)->GetKek(nk->ref);
  ASSERT_TRUE(k2.ok()) << k2.error().message;
  EXPECT_TRUE(k2->Equals(nk->kek));
}

// ---------------------------------------------------------------------------
// A KMS that goes away mid-session and comes back.

TEST_F(StandardProviderTest, ServerKilledMidSessionThenRestarted) {
  PyKmipServer* kms = Restartable();
  ASSERT_NE(kms, nullptr);
  auto created = CreateProvider("restart", NewProviderDir("restart"),
                                {Local(kms->port())});
  ASSERT_TRUE(created.ok()) << created.error().message;
  StandardProvider& p = **created;
  auto nk = p.CreateKek("restart-vm");
  ASSERT_TRUE(nk.ok()) << nk.error().message;
  auto k = p.GetKek(nk->ref);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_EQ(p.cluster().connections_made(), 1u);

  // The KMS crashes: the kernel closes its sockets, so the provider's idle
  // connection is dead and a reconnect is refused at once. The failure must
  // come back promptly (not after connect_timeout, 3 s here).
  kms->Kill();
  auto t0 = Clock::now();
  auto down = p.GetKek(nk->ref);
  const double elapsed = Seconds(Clock::now() - t0);
  ASSERT_FALSE(down.ok()) << "served a KEK from a dead KMS";
  EXPECT_EQ(down.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_TRUE(Contains(down.error().message, kms->address()))
      << down.error().message;
  EXPECT_LT(elapsed, 1.0) << "took " << elapsed << " s";
  std::printf("[ info     ] GetKek with the KMS down failed in %.1f ms: %s\n",
              elapsed * 1000, down.error().message.c_str());
  EXPECT_EQ(ServerState(p, 0)["state"], "error");

  // Back on the same port with its database: the same GetKek reconnects.
  const std::string restarted = kms->Restart(/*keep_db=*/true);
  ASSERT_TRUE(restarted.empty()) << restarted;
  auto up = p.GetKek(nk->ref);
  ASSERT_TRUE(up.ok()) << up.error().message << "\n" << kms->LogTail();
  EXPECT_TRUE(up->Equals(nk->kek));
  EXPECT_EQ(p.cluster().connections_made(), 2u);
  EXPECT_EQ(ServerState(p, 0)["state"], "ok");
}

// ---------------------------------------------------------------------------
// Boot storms: concurrent GetKek calls share messages.

TEST_F(StandardProviderTest, ConcurrentGetKekCallsAreCoalesced) {
  constexpr size_t kThreads = 20;
  const std::string dir = NewProviderDir("storm");
  auto created = CreateProvider("storm", dir, {Local(server().port())});
  ASSERT_TRUE(created.ok()) << created.error().message;
  std::vector<KekRef> refs;
  std::vector<SecureBuffer> keks;
  for (size_t i = 0; i < kThreads; ++i) {
    auto nk = (*created)->CreateKek("storm-vm-" + std::to_string(i));
    ASSERT_TRUE(nk.ok()) << nk.error().message;
    refs.push_back(nk->ref);
    keks.push_back(std::move(nk->kek));
  }

  // A freshly loaded provider (clean counters), connected by one fetch.
  auto loaded = StandardProvider::Load("storm", dir);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  StandardProvider& p = **loaded;
  ASSERT_TRUE(p.GetKek(refs[0]).ok());
  const uint64_t before = p.cluster().messages_sent();

  std::vector<std::optional<Result<SecureBuffer>>> results(kThreads);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  auto t0 = Clock::now();
  for (size_t i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();  // all at once, like VMs at host boot
      results[i] = p.GetKek(refs[i]);
    });
  }
  for (auto& t : threads) t.join();
  const double elapsed = Seconds(Clock::now() - t0);
  const uint64_t messages = p.cluster().messages_sent() - before;
  std::printf(
      "[ info     ] %zu concurrent GetKek calls: %llu KMIP messages, "
      "%.1f ms\n",
      kThreads, static_cast<unsigned long long>(messages), elapsed * 1000);
  for (size_t i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(results[i].has_value());
    const Result<SecureBuffer>& r = *results[i];
    ASSERT_TRUE(r.ok()) << i << ": " << r.error().message;
    EXPECT_TRUE(r->Equals(keks[i])) << "wrong KEK for caller " << i;
  }
  EXPECT_GE(messages, 1u);
  EXPECT_LE(messages, 5u) << "concurrent GetKek calls were not coalesced";
  EXPECT_EQ(p.cluster().connections_made(), 1u);

  // GetKeks: all of them plus an unknown uid in one message; the unknown
  // one fails alone (continue on error).
  std::vector<KekRef> batch = refs;
  batch.insert(batch.begin() + 7, KekRef{"no-such-key"});
  const uint64_t before_batch = p.cluster().messages_sent();
  auto all = p.GetKeks(batch);
  EXPECT_EQ(p.cluster().messages_sent() - before_batch, 1u);
  ASSERT_EQ(all.size(), batch.size());
  for (size_t i = 0, k = 0; i < batch.size(); ++i) {
    if (i == 7) {
      ASSERT_FALSE(all[i].ok());
      EXPECT_TRUE(Contains(all[i].error().message, "Item Not Found"))
          << all[i].error().message;
      continue;
    }
    ASSERT_TRUE(all[i].ok()) << all[i].error().message;
    EXPECT_TRUE(all[i]->Equals(keks[k++]));
  }
}

}  // namespace
}  // namespace vcrypt
