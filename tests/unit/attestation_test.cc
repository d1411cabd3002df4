// The attestation service's logic end to end against real software TPMs
// (swtpm) driven through the host side (keyproviders/trusted/tpm.h): AK
// enrollment by credential activation, nonce, quote, baseline, token; and
// the refusals the issue lists (PCR extended after the baseline,
// unregistered TPM, AK of another TPM, replayed nonce).
#include "trustauthority/attestation.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "keyproviders/trusted/tpm.h"
#include "taprotocol/proof.h"
#include "tests/unit/swtpm.h"
#include "tests/unit/ta_test_util.h"
#include "trustauthority/sql.h"

namespace vcrypt {
namespace {

std::vector<int> Ints(const std::vector<uint32_t>& v) {
  return {v.begin(), v.end()};
}

class AttestationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm_a_.Start(&why) || !tpm_b_.Start(&why)) GTEST_SKIP() << why;
    AttestationConfig c;
    c.store = testing::OpenTestStore(dir_.path());
    ASSERT_TRUE(c.store);
    c.selection = {TPM2_ALG_SHA256, {0, 1, 2, 3, 7}};
    auto key = EcSigningKey::Generate();
    ASSERT_TRUE(key.ok());
    auto s = AttestationService::Open(c, std::move(key).value());
    ASSERT_TRUE(s.ok()) << s.error().message;
    svc_.emplace(std::move(s).value());
    auto a = Tpm::Open(tpm_a_.Tcti());
    auto b = Tpm::Open(tpm_b_.Tcti());
    ASSERT_TRUE(a.ok() && b.ok());
    a_.emplace(std::move(a).value());
    b_.emplace(std::move(b).value());
  }

  // The configuration of a replica: the same database through a store of
  // its own (its own connections), as another process would have.
  AttestationConfig ReplicaConfig() {
    AttestationConfig c = svc_->config();
    auto s = OpenTaStore(c.store->url());
    EXPECT_TRUE(s.ok()) << s.error().message;
    if (s.ok()) c.store = std::move(s).value();
    return c;
  }

  // Registers `host` with `tpm`'s EK and enrolls its AK.
  void Enroll(const std::string& host, Tpm& tpm) {
    auto ek = tpm.EkPublic();
    auto ak = tpm.AkPublic();
    ASSERT_TRUE(ek.ok() && ak.ok());
    ASSERT_TRUE(svc_->AddHost(host, *ek).ok());
    auto ch = svc_->StartEnrollment(host, *ek, std::nullopt, *ak);
    ASSERT_TRUE(ch.ok()) << ch.error().message;
    auto secret = tpm.ActivateCredential(ch->credential.credential_blob,
                                         ch->credential.encrypted_secret);
    ASSERT_TRUE(secret.ok()) << secret.error().message;
    ASSERT_TRUE(svc_->FinishEnrollment(ch->id, *secret).ok());
  }

  struct Evidence {
    NonceGrant grant;
    std::vector<uint8_t> session;  // the session key's point
    Tpm::Quote quote;
  };
  Evidence Quote(const std::string& host, Tpm& tpm) {
    Evidence e;
    auto g = svc_->IssueNonce(host);
    EXPECT_TRUE(g.ok());
    e.grant = *g;
    e.session = *session_.PublicPoint();
    auto q = tpm.QuotePcrs(QuoteQualifyingData(g->nonce, e.session),
                           g->selection.hash, Ints(g->selection.pcrs));
    EXPECT_TRUE(q.ok()) << q.error().message;
    e.quote = *q;
    return e;
  }
  Result<std::string> Attest(const std::string& host, const Evidence& e) {
    return svc_->Attest(host, e.grant.nonce, e.session, e.quote.attest,
                        e.quote.signature, e.quote.pcr_values);
  }

  EcSigningKey session_ = std::move(EcSigningKey::Generate()).value();

  testing::TempDir dir_{"ta"};
  testing::Swtpm tpm_a_, tpm_b_;
  std::optional<AttestationService> svc_;
  std::optional<Tpm> a_, b_;
};

TEST_F(AttestationTest, EnrolledHostWithApprovedBaselineGetsAToken) {
  Enroll("h1", *a_);
  Evidence first = Quote("h1", *a_);
  // No baseline yet: refused.
  auto none = Attest("h1", first);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kPermissionDenied);
  ASSERT_TRUE(svc_->AddBaseline("golden", first.quote.pcr_values).ok());

  Evidence e = Quote("h1", *a_);
  auto token = Attest("h1", e);
  ASSERT_TRUE(token.ok()) << token.error().message;
  auto pub = EcVerifyKey::FromPublicPem(*svc_->key().ToPublicPem());
  ASSERT_TRUE(pub.ok());
  TokenPolicy p{svc_->config().issuer, svc_->config().audience};
  auto claims = VerifyToken(*token, *pub, p, std::chrono::system_clock::now());
  ASSERT_TRUE(claims.ok()) << claims.error().message;
  EXPECT_EQ(claims->sub, "h1");
  EXPECT_EQ(claims->baseline, "golden");
  // Bound to the session key the TPM quoted with the nonce.
  EXPECT_EQ(claims->cnf_point, e.session);

  // The same evidence again: the nonce was consumed.
  auto replay = Attest("h1", e);
  ASSERT_FALSE(replay.ok());
  EXPECT_EQ(replay.error().code, ErrorCode::kPermissionDenied);
}

// The session key is what a cached token is bound to: a quote that does
// not cover it (bare nonce, or another key than the one presented) earns
// no token.
TEST_F(AttestationTest, SessionKeyMustBeTheOneTheTpmQuoted) {
  Enroll("h1", *a_);
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h1", *a_).quote.pcr_values).ok());
  NonceGrant g = *svc_->IssueNonce("h1");
  auto point = *session_.PublicPoint();
  auto bare = a_->QuotePcrs(g.nonce, g.selection.hash, Ints(g.selection.pcrs));
  ASSERT_TRUE(bare.ok());
  auto r = svc_->Attest("h1", g.nonce, point, bare->attest, bare->signature,
                        bare->pcr_values);
  ASSERT_FALSE(r.ok());

  Evidence e = Quote("h1", *a_);
  auto other = *std::move(EcSigningKey::Generate()).value().PublicPoint();
  r = svc_->Attest("h1", e.grant.nonce, other, e.quote.attest,
                   e.quote.signature, e.quote.pcr_values);
  ASSERT_FALSE(r.ok());
  // Not a point at all.
  e = Quote("h1", *a_);
  r = svc_->Attest("h1", e.grant.nonce, std::vector<uint8_t>(65, 4),
                   e.quote.attest, e.quote.signature, e.quote.pcr_values);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(AttestationTest, PcrExtendedAfterTheBaselineIsDenied) {
  Enroll("h1", *a_);
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h1", *a_).quote.pcr_values).ok());
  ASSERT_EQ(tpm_a_.Tool("tpm2_pcrextend 7:sha256=" + std::string(64, 'b')), 0);
  auto r = Attest("h1", Quote("h1", *a_));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(r.error().message.find("no approved baseline"), std::string::npos);
}

TEST_F(AttestationTest, UnregisteredTpmIsDenied) {
  Enroll("h1", *a_);
  auto ek_b = b_->EkPublic();
  auto ak_b = b_->AkPublic();
  ASSERT_TRUE(ek_b.ok() && ak_b.ok());
  // TPM B presenting itself as h1 (whose registered EK is A's).
  auto r = svc_->StartEnrollment("h1", *ek_b, std::nullopt, *ak_b);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  // A host registered without an EK needs an EK certificate from a
  // registered TPM CA; none is registered.
  ASSERT_TRUE(svc_->AddHost("h2", std::nullopt).ok());
  r = svc_->StartEnrollment("h2", *ek_b, std::nullopt, *ak_b);
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  // An unregistered host name.
  r = svc_->StartEnrollment("h3", *ek_b, std::nullopt, *ak_b);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(AttestationTest, AkOfAnotherTpmIsDenied) {
  auto ek_a = a_->EkPublic();
  auto ak_b = b_->AkPublic();
  ASSERT_TRUE(ek_a.ok() && ak_b.ok());
  ASSERT_TRUE(svc_->AddHost("h1", *ek_a).ok());
  // Enrollment of B's AK under A's EK: A's TPM cannot activate a
  // credential made for a key it does not hold.
  auto ch = svc_->StartEnrollment("h1", *ek_a, std::nullopt, *ak_b);
  ASSERT_TRUE(ch.ok()) << ch.error().message;
  auto s = a_->ActivateCredential(ch->credential.credential_blob,
                                  ch->credential.encrypted_secret);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kCrypto);
  // A guessed secret does not enroll it either.
  SecureBuffer guess(32);
  EXPECT_EQ(svc_->FinishEnrollment(ch->id, guess).error().code,
            ErrorCode::kPermissionDenied);

  // h1 properly enrolled with A (registered again: adding a registered
  // host is refused); a quote signed by B's AK is refused.
  ASSERT_TRUE(svc_->RemoveHost("h1").ok());
  Enroll("h1", *a_);
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h1", *a_).quote.pcr_values).ok());
  NonceGrant g = *svc_->IssueNonce("h1");
  auto point = *session_.PublicPoint();
  auto q = b_->QuotePcrs(QuoteQualifyingData(g.nonce, point), g.selection.hash,
                         Ints(g.selection.pcrs));
  ASSERT_TRUE(q.ok());
  auto r = svc_->Attest("h1", g.nonce, point, q->attest, q->signature,
                        q->pcr_values);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
}

TEST_F(AttestationTest, EnrollmentChallengeIsSingleUse) {
  auto ek = a_->EkPublic();
  auto ak = a_->AkPublic();
  ASSERT_TRUE(svc_->AddHost("h1", *ek).ok());
  auto ch = svc_->StartEnrollment("h1", *ek, std::nullopt, *ak);
  ASSERT_TRUE(ch.ok());
  auto secret = a_->ActivateCredential(ch->credential.credential_blob,
                                       ch->credential.encrypted_secret);
  ASSERT_TRUE(secret.ok());
  ASSERT_TRUE(svc_->FinishEnrollment(ch->id, *secret).ok());
  EXPECT_EQ(svc_->FinishEnrollment(ch->id, *secret).error().code,
            ErrorCode::kPermissionDenied);
}

// A host registered without an EK public key: its TPM's EK certificate
// (made by swtpm_setup, signed by swtpm's local CA: root + intermediate)
// must chain to the TPM CAs the admin registered. Refused before they
// are, accepted after, and the enrolled AK then attests.
TEST_F(AttestationTest, EkCertificateChainingToARegisteredTpmCaIsAccepted) {
  testing::Swtpm vendor;
  std::string why = vendor.ManufactureWithEkCertificate();
  if (!why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(vendor.Start(&why)) << why;
  auto t = Tpm::Open(vendor.Tcti());
  ASSERT_TRUE(t.ok()) << t.error().message;
  auto ek = t->EkPublic();
  auto ak = t->AkPublic();
  auto cert = t->EkCertificate();
  ASSERT_TRUE(ek.ok() && ak.ok() && cert.ok());
  ASSERT_TRUE(cert->has_value()) << "swtpm_setup wrote no EK certificate";
  ASSERT_TRUE(svc_->AddHost("h-cert", std::nullopt).ok());

  // No TPM CA registered yet.
  auto r = svc_->StartEnrollment("h-cert", *ek, *cert, *ak);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  // A certificate that is not the EK's: refused even with the CAs in.
  auto read = [](const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  ASSERT_TRUE(
      svc_->AddTpmCa(read(vendor.dir() + "/ca/swtpm-localca-rootca-cert.pem"))
          .ok());
  ASSERT_TRUE(svc_->AddTpmCa(read(vendor.dir() + "/ca/issuercert.pem")).ok());
  auto ek_a = a_->EkPublic();
  ASSERT_TRUE(ek_a.ok());
  r = svc_->StartEnrollment("h-cert", *ek_a, *cert, *ak);
  ASSERT_FALSE(r.ok()) << "another TPM's EK passed with this certificate";

  r = svc_->StartEnrollment("h-cert", *ek, *cert, *ak);
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto secret = t->ActivateCredential(r->credential.credential_blob,
                                      r->credential.encrypted_secret);
  ASSERT_TRUE(secret.ok()) << secret.error().message;
  ASSERT_TRUE(svc_->FinishEnrollment(r->id, *secret).ok());
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h-cert", *t).quote.pcr_values).ok());
  auto token = Attest("h-cert", Quote("h-cert", *t));
  ASSERT_TRUE(token.ok()) << token.error().message;
}

// A host registered by TPM CA alone (no EK) is pinned to the first EK that
// completes enrollment under its name (trust on first use): another TPM
// whose EK certificate chains just as well is refused, with one line,
// until an admin removes the host. Two swtpm_setup-manufactured TPMs, each
// with its own vendor CA, both registered.
TEST_F(AttestationTest, AHostRegisteredByTpmCaIsPinnedToItsFirstEk) {
  testing::Swtpm v1, v2;
  std::string why = v1.ManufactureWithEkCertificate();
  if (why.empty()) why = v2.ManufactureWithEkCertificate();
  if (!why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(v1.Start(&why)) << why;
  ASSERT_TRUE(v2.Start(&why)) << why;
  auto read = [](const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  for (testing::Swtpm* v : {&v1, &v2}) {
    ASSERT_TRUE(
        svc_->AddTpmCa(read(v->dir() + "/ca/swtpm-localca-rootca-cert.pem"))
            .ok());
    ASSERT_TRUE(svc_->AddTpmCa(read(v->dir() + "/ca/issuercert.pem")).ok());
  }
  auto t1 = Tpm::Open(v1.Tcti());
  auto t2 = Tpm::Open(v2.Tcti());
  ASSERT_TRUE(t1.ok() && t2.ok());
  struct Keys {
    std::vector<uint8_t> ek, ak;
    std::optional<std::vector<uint8_t>> cert;
  };
  auto keys = [](Tpm& t) {
    Keys k;
    auto ek = t.EkPublic();
    auto ak = t.AkPublic();
    auto cert = t.EkCertificate();
    EXPECT_TRUE(ek.ok() && ak.ok() && cert.ok() && cert->has_value());
    if (ek.ok()) k.ek = *ek;
    if (ak.ok()) k.ak = *ak;
    if (cert.ok()) k.cert = *cert;
    return k;
  };
  const Keys k1 = keys(*t1), k2 = keys(*t2);
  auto start = [&](const std::string& host, const Keys& k) {
    return svc_->StartEnrollment(host, k.ek, k.cert, k.ak);
  };
  auto finish = [&](Tpm& t, const EnrollmentChallenge& ch) {
    auto secret = t.ActivateCredential(ch.credential.credential_blob,
                                       ch.credential.encrypted_secret);
    if (!secret.ok()) return Status(std::move(secret).error());
    return svc_->FinishEnrollment(ch.id, *secret);
  };
  ASSERT_TRUE(svc_->AddHost("h-tofu", std::nullopt).ok());
  auto c1 = start("h-tofu", k1);
  ASSERT_TRUE(c1.ok()) << c1.error().message;
  ASSERT_TRUE(finish(*t1, *c1).ok());

  // The second TPM: refused at the start, with one line that says what
  // to do.
  auto c2 = start("h-tofu", k2);
  ASSERT_FALSE(c2.ok()) << "another TPM enrolled as a pinned host";
  EXPECT_EQ(c2.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(c2.error().message.find("pinned"), std::string::npos)
      << c2.error().message;
  EXPECT_NE(c2.error().message.find("host remove"), std::string::npos)
      << c2.error().message;
  EXPECT_EQ(c2.error().message.find('\n'), std::string::npos);
  // The pinned TPM may enroll again (a new AK).
  c1 = start("h-tofu", k1);
  ASSERT_TRUE(c1.ok()) << c1.error().message;
  ASSERT_TRUE(finish(*t1, *c1).ok());

  // Two TPMs racing for a fresh name: both challenges are issued, the
  // first to finish wins, the other's finish is refused.
  ASSERT_TRUE(svc_->AddHost("h-race", std::nullopt).ok());
  auto r1 = start("h-race", k1);
  auto r2 = start("h-race", k2);
  ASSERT_TRUE(r1.ok() && r2.ok());
  ASSERT_TRUE(finish(*t2, *r2).ok());
  Status lost = finish(*t1, *r1);
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, ErrorCode::kPermissionDenied);
  EXPECT_NE(lost.error().message.find("pinned"), std::string::npos)
      << lost.error().message;

  // The admin removes and re-registers the host: the next EK is pinned.
  ASSERT_TRUE(svc_->RemoveHost("h-tofu").ok());
  ASSERT_TRUE(svc_->AddHost("h-tofu", std::nullopt).ok());
  c2 = start("h-tofu", k2);
  ASSERT_TRUE(c2.ok()) << c2.error().message;
  ASSERT_TRUE(finish(*t2, *c2).ok());
  EXPECT_FALSE(start("h-tofu", k1).ok());

  // The same race on two replicas sharing the state directory, finishing
  // at the same moment: exactly one TPM is pinned, every round. (The pin
  // used to be the host record's read-then-write, serialised only within
  // one instance.)
  auto replica = AttestationService::Open(
      ReplicaConfig(), std::move(EcSigningKey::Generate()).value());
  ASSERT_TRUE(replica.ok()) << replica.error().message;
  for (int round = 0; round < 20; ++round) {
    const std::string host = "h-replicas-" + std::to_string(round);
    ASSERT_TRUE(svc_->AddHost(host, std::nullopt).ok());
    auto e1 = start(host, k1);
    auto e2 = start(host, k2);
    ASSERT_TRUE(e1.ok() && e2.ok());
    auto s1 = t1->ActivateCredential(e1->credential.credential_blob,
                                     e1->credential.encrypted_secret);
    auto s2 = t2->ActivateCredential(e2->credential.credential_blob,
                                     e2->credential.encrypted_secret);
    ASSERT_TRUE(s1.ok() && s2.ok());
    std::atomic<int> go{0};
    Status f1 = Status::Ok(), f2 = Status::Ok();
    std::thread a([&] {
      ++go;
      while (go < 2) {
      }
      f1 = svc_->FinishEnrollment(e1->id, *s1);
    });
    std::thread b([&] {
      ++go;
      while (go < 2) {
      }
      f2 = replica->FinishEnrollment(e2->id, *s2);
    });
    a.join();
    b.join();
    EXPECT_NE(f1.ok(), f2.ok()) << "round " << round << ": both or neither "
                                << "of two TPMs got pinned to one host";
  }
}

// Expired unused enrollment challenges and used-nonce records do not pile
// up in the shared state: swept (at most once a minute) on the enrollment
// path, a minute after they expired.
TEST_F(AttestationTest, ExpiredChallengesAndUsedNoncesAreSwept) {
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  TaStore& store = *svc_->config().store;
  ASSERT_TRUE(store.PutEnrollment("x", "{}", now - 120).ok());
  ASSERT_TRUE(store.PutEnrollment("y", "{}", now - 5).ok());
  ASSERT_TRUE(*store.ConsumeOnce("nonce", "old", now - 120));
  ASSERT_TRUE(*store.ConsumeOnce("nonce", "recent", now - 5));
  Enroll("h1", *a_);
  EXPECT_FALSE(store.TakeEnrollment("x")->has_value());
  EXPECT_TRUE(store.TakeEnrollment("y")->has_value())
      << "swept inside the grace";
  EXPECT_TRUE(*store.ConsumeOnce("nonce", "old", now + 60)) << "not swept";
  EXPECT_FALSE(*store.ConsumeOnce("nonce", "recent", now + 60))
      << "swept inside the grace";
}

// Number of entries under the state directory, recursively.
size_t StateEntries(const std::string& dir) {
  size_t n = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir);
       it != std::filesystem::recursive_directory_iterator(); ++it)
    ++n;
  return n;
}

// Issuing a nonce takes no state (issue 13: an unauthenticated flood of
// /v1/nonce used to write and fsync a file each and, past the cap on
// outstanding nonces, lock real hosts out): a thousand nonces write
// nothing, and the host still attests after them.
TEST_F(AttestationTest, NoncesAreMadeWithoutStateAndAFloodLocksNoHostOut) {
  Enroll("h1", *a_);
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h1", *a_).quote.pcr_values).ok());
  const size_t before = StateEntries(dir_.path());
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(svc_->IssueNonce("h1").ok()) << i;
  EXPECT_EQ(StateEntries(dir_.path()), before);
  auto token = Attest("h1", Quote("h1", *a_));
  EXPECT_TRUE(token.ok()) << token.error().message;
}

// A nonce is bound to the host it was issued to and to its expiry: one of
// another host, one whose bytes were changed (a later expiry), or one the
// service never made is refused.
TEST_F(AttestationTest, ANonceIsBoundToItsHostAndCannotBeForged) {
  Enroll("h1", *a_);
  Enroll("h2", *b_);
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h1", *a_).quote.pcr_values).ok());
  auto refused = [&](std::vector<uint8_t> nonce, const std::string& why) {
    auto point = *session_.PublicPoint();
    auto q = a_->QuotePcrs(QuoteQualifyingData(nonce, point),
                           svc_->config().selection.hash,
                           Ints(svc_->config().selection.pcrs));
    ASSERT_TRUE(q.ok());
    auto r = svc_->Attest("h1", nonce, point, q->attest, q->signature,
                          q->pcr_values);
    ASSERT_FALSE(r.ok()) << why;
    EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied) << why;
  };
  refused(svc_->IssueNonce("h2")->nonce, "another host's nonce");
  std::vector<uint8_t> later = svc_->IssueNonce("h1")->nonce;
  later[7] ^= 0x10;  // the expiry, 16 s on
  refused(later, "a changed expiry");
  refused(std::vector<uint8_t>(32, 7), "a nonce the service never made");
  refused(std::vector<uint8_t>(16, 7), "a short nonce");
  // Made by another Trust Authority (another state directory, another
  // nonce key).
  testing::TempDir other_dir{"ta-other"};
  AttestationConfig c = svc_->config();
  c.store = testing::OpenTestStore(other_dir.path());
  auto other =
      AttestationService::Open(c, std::move(EcSigningKey::Generate()).value());
  ASSERT_TRUE(other.ok()) << other.error().message;
  ASSERT_TRUE(other->AddHost("h1", *a_->EkPublic()).ok());
  refused(other->IssueNonce("h1")->nonce, "another service's nonce");
}

// Replicas sharing the state directory share the nonce key and the
// record of used nonces: a nonce from one is redeemed on the other, once.
TEST_F(AttestationTest, ReplicasRedeemEachOthersNoncesOnce) {
  Enroll("h1", *a_);
  ASSERT_TRUE(
      svc_->AddBaseline("golden", Quote("h1", *a_).quote.pcr_values).ok());
  auto replica = AttestationService::Open(
      ReplicaConfig(), std::move(EcSigningKey::Generate()).value());
  ASSERT_TRUE(replica.ok()) << replica.error().message;
  Evidence e = Quote("h1", *a_);  // issued by svc_
  auto on_replica =
      replica->Attest("h1", e.grant.nonce, e.session, e.quote.attest,
                      e.quote.signature, e.quote.pcr_values);
  ASSERT_TRUE(on_replica.ok()) << on_replica.error().message;
  auto again = Attest("h1", e);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kPermissionDenied);
}

// The nonce key is made once, in an owner-only database, and a damaged one
// is an error, not a silently new key.
TEST_F(AttestationTest, TheNonceKeyIsOwnerOnlyAndCheckedWhenOpened) {
  const std::string db = dir_.path() + "/ta.db";
  struct stat st;
  ASSERT_EQ(stat(db.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto key = svc_->config().store->NonceKey(32);
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_EQ(key->size(), 32u);
  auto conn = store_internal::OpenSqlite(db);
  ASSERT_TRUE(conn.ok()) << conn.error().message;
  const uint8_t short_key[3] = {1, 2, 3};
  ASSERT_TRUE((*conn)
                  ->Exec("UPDATE secrets SET value = $1 "
                         "WHERE name = 'nonce_key'",
                         {std::span<const uint8_t>(short_key)})
                  .ok());
  auto reopened = AttestationService::Open(
      ReplicaConfig(), std::move(EcSigningKey::Generate()).value());
  ASSERT_FALSE(reopened.ok());
  EXPECT_NE(reopened.error().message.find("nonce key"), std::string::npos)
      << reopened.error().message;
}

}  // namespace
}  // namespace vcrypt
