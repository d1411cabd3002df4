// Two Trust Authority replicas on one PostgreSQL database (a real server,
// tests/unit/pg_server.h), each with a store of its own (its own
// connections, as two vcrypt-ta processes with different state
// directories have), and a host with a real software TPM (swtpm): what one
// replica issued or recorded holds on the other. The signing key and the
// nonce key come from the database, so a nonce of one verifies on the
// other and a token of one is accepted by the other's key provider
// service; single use (nonces, KPS requests) holds across them; an admin
// change through one takes effect on the other.
#include <gtest/gtest.h>

#include <optional>

#include "common/random.h"
#include "keyproviders/trusted/tpm.h"
#include "taprotocol/proof.h"
#include "taprotocol/transport.h"
#include "tests/test_util.h"
#include "tests/unit/pg_server.h"
#include "tests/unit/swtpm.h"
#include "trustauthority/attestation.h"
#include "trustauthority/kps.h"
#include "trustauthority/store.h"

namespace vcrypt {
namespace {

std::vector<int> Ints(const std::vector<uint32_t>& v) {
  return {v.begin(), v.end()};
}

struct Replica {
  std::shared_ptr<TaStore> store;
  std::optional<AttestationService> att;
  std::optional<KeyProviderService> kps;
};

class TaReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm_.Start(&why)) GTEST_SKIP() << why;
    ASSERT_NO_FATAL_FAILURE(testing::NeedPostgres(&url_));
    if (IsSkipped()) return;
    // Initialised once, as `vcrypt-ta admin --db URL init` does.
    {
      auto store = OpenTaStore(url_);
      ASSERT_TRUE(store.ok()) << store.error().message;
      auto key = EcSigningKey::Generate();
      ASSERT_TRUE(key.ok());
      auto pem = key->ToPrivatePem();
      ASSERT_TRUE(pem.ok());
      SigningKeyInfo info{
          key->Thumbprint(), *key->ToPublicPem(), "active", 1, {}};
      auto nonce_key = RandomKey(32);
      ASSERT_TRUE(nonce_key.ok());
      ASSERT_TRUE((*store)
                      ->Initialise({{"pcrs", "sha256:0,1,2,3,7"}}, info,
                                   pem->span(), nonce_key->span())
                      .ok());
    }
    primary_ = std::move(RandomKey(32)).value();
    ASSERT_NO_FATAL_FAILURE(OpenReplica(&r1_));
    ASSERT_NO_FATAL_FAILURE(OpenReplica(&r2_));
    auto t = Tpm::Open(tpm_.Tcti());
    ASSERT_TRUE(t.ok()) << t.error().message;
    host_.emplace(std::move(t).value());
    auto tk = TransportKey::Generate();
    ASSERT_TRUE(tk.ok());
    transport_.emplace(std::move(tk).value());
  }

  // A replica: its own store on the database; the attestation service with
  // the store's signing key, the key provider service with its public key
  // (both from the database, not from files).
  void OpenReplica(Replica* r) {
    auto store = OpenTaStore(url_);
    ASSERT_TRUE(store.ok()) << store.error().message;
    r->store = *store;
    auto keys = r->store->SigningKeys();
    ASSERT_TRUE(keys.ok() && keys->size() == 1);
    auto pem = r->store->SigningKeyPrivate((*keys)[0].kid);
    ASSERT_TRUE(pem.ok());
    auto key = EcSigningKey::FromPrivatePem(*pem);
    ASSERT_TRUE(key.ok());
    AttestationConfig c;
    c.store = r->store;
    c.selection = {TPM2_ALG_SHA256, {0, 1, 2, 3, 7}};
    auto att = AttestationService::Open(c, std::move(key).value());
    ASSERT_TRUE(att.ok()) << att.error().message;
    r->att.emplace(std::move(att).value());
    auto verify = AttestationTokenKey(*r->store);
    ASSERT_TRUE(verify.ok()) << verify.error().message;
    auto kps = KeyProviderService::Open(
        {r->store, "kps"}, std::move(verify).value(), primary_.Clone());
    ASSERT_TRUE(kps.ok()) << kps.error().message;
    r->kps.emplace(std::move(kps).value());
  }

  // Registers h1 with the TPM's EK and enrolls its AK: started on `a`,
  // finished on `b`.
  void Enroll(Replica& a, Replica& b) {
    auto ek = host_->EkPublic();
    auto ak = host_->AkPublic();
    ASSERT_TRUE(ek.ok() && ak.ok());
    ASSERT_TRUE(a.att->AddHost("h1", *ek).ok());
    auto ch = a.att->StartEnrollment("h1", *ek, std::nullopt, *ak);
    ASSERT_TRUE(ch.ok()) << ch.error().message;
    auto secret = host_->ActivateCredential(ch->credential.credential_blob,
                                            ch->credential.encrypted_secret);
    ASSERT_TRUE(secret.ok()) << secret.error().message;
    auto fin = b.att->FinishEnrollment(ch->id, *secret);
    ASSERT_TRUE(fin.ok()) << fin.error().message;
    // Single use across replicas: the challenge is gone on `a` as well.
    EXPECT_FALSE(a.att->FinishEnrollment(ch->id, *secret).ok());
  }

  struct Evidence {
    NonceGrant grant;
    Tpm::Quote quote;
  };
  Evidence Quote(Replica& issuer) {
    Evidence e;
    auto g = issuer.att->IssueNonce("h1");
    EXPECT_TRUE(g.ok()) << g.error().message;
    if (!g.ok()) return e;
    e.grant = *g;
    auto q = host_->QuotePcrs(QuoteQualifyingData(g->nonce, Session()),
                              g->selection.hash, Ints(g->selection.pcrs));
    EXPECT_TRUE(q.ok()) << q.error().message;
    if (q.ok()) e.quote = *q;
    return e;
  }
  Result<std::string> Attest(Replica& r, const Evidence& e) {
    return r.att->Attest("h1", e.grant.nonce, Session(), e.quote.attest,
                         e.quote.signature, e.quote.pcr_values);
  }
  std::vector<uint8_t> Session() { return *session_.PublicPoint(); }
  // A KEK request for `token` with a fresh proof.
  KpsRequest Req(const std::string& token) {
    auto tk = transport_->public_point();
    KpsRequest r{token, "", {tk.begin(), tk.end()}, ""};
    auto p = SignRequestProof(session_, token, kKekPath, tk, "");
    EXPECT_TRUE(p.ok());
    if (p.ok()) r.proof = *p;
    return r;
  }

  testing::Swtpm tpm_;
  std::string url_;
  SecureBuffer primary_;
  Replica r1_, r2_;
  std::optional<Tpm> host_;
  std::optional<TransportKey> transport_;
  EcSigningKey session_ = std::move(EcSigningKey::Generate()).value();
};

TEST_F(TaReplicaTest, TwoReplicasOnOneDatabaseBehaveAsOneService) {
  ASSERT_NO_FATAL_FAILURE(Enroll(r1_, r2_));
  Evidence first = Quote(r1_);
  ASSERT_TRUE(r2_.att->AddBaseline("golden", first.quote.pcr_values).ok());

  // A nonce issued by replica 1 is redeemed on replica 2, exactly once:
  // the replayed attest request is refused on either.
  auto token = Attest(r2_, first);
  ASSERT_TRUE(token.ok()) << token.error().message;
  for (Replica* r : {&r1_, &r2_}) {
    auto again = Attest(*r, first);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.error().code, ErrorCode::kPermissionDenied);
    EXPECT_NE(again.error().message.find("already used"), std::string::npos)
        << again.error().message;
  }

  // The token of replica 2's attestation service is accepted by replica
  // 1's key provider service (the key is the database's), and a replayed
  // KPS request is refused by the other replica.
  KpsRequest req = Req(*token);
  auto grant = r1_.kps->CreateKek(req);
  ASSERT_TRUE(grant.ok()) << grant.error().message;
  for (Replica* r : {&r2_, &r1_}) {
    auto replay = r->kps->CreateKek(req);
    ASSERT_FALSE(replay.ok());
    EXPECT_EQ(replay.error().code, ErrorCode::kPermissionDenied);
    EXPECT_NE(replay.error().message.find("replayed"), std::string::npos)
        << replay.error().message;
  }
  // The same token with a fresh proof goes through on the other replica.
  ASSERT_TRUE(r2_.kps->CreateKek(Req(*token)).ok());

  // An admin change through replica 1 takes effect on replica 2 at once:
  // a withdrawn baseline stops the KPS and the attestation there...
  ASSERT_TRUE(r1_.att->RemoveBaseline("golden").ok());
  auto withdrawn = r2_.kps->CreateKek(Req(*token));
  ASSERT_FALSE(withdrawn.ok());
  EXPECT_NE(withdrawn.error().message.find("no longer approved"),
            std::string::npos)
      << withdrawn.error().message;
  auto unmatched = Attest(r2_, Quote(r1_));
  ASSERT_FALSE(unmatched.ok());
  EXPECT_NE(unmatched.error().message.find("no approved baseline"),
            std::string::npos)
      << unmatched.error().message;
  // ...and a removed host gets no nonce and no token from either.
  Evidence pending = Quote(r2_);
  ASSERT_TRUE(r1_.att->RemoveHost("h1").ok());
  auto nonce = r2_.att->IssueNonce("h1");
  ASSERT_FALSE(nonce.ok());
  EXPECT_EQ(nonce.error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(r1_.att->AddBaseline("golden", first.quote.pcr_values).ok());
  auto removed = Attest(r2_, pending);
  ASSERT_FALSE(removed.ok());
  EXPECT_EQ(removed.error().code, ErrorCode::kPermissionDenied);
}

}  // namespace
}  // namespace vcrypt
