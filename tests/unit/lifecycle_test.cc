// Key lifecycle through the real Controller on real LUKS2 headers in image
// files (libcryptsetup; needs root, not device-mapper: these operations
// only read and rewrite headers): shallow rekey and provider change
// (vm.rekey), vm.register from headers, vm.delete --erase. Mapped volumes,
// a real kill -9 and a KMS are in tests/integration/t_rekey.sh and
// t_kmip.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/aead.h"
#include "common/atomic_file.h"
#include "daemon/audit.h"
#include "daemon/controller.h"
#include "dmtools/reencrypt.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// Keeps the kek.rekey records (the rest of the audit is audit_test's).
class RekeyRecords : public AuditSink {
 public:
  void Write(const AuditRecord& r) override {
    if (r.op != AuditOp::kKekRekey) return;
    std::lock_guard lock(mu);
    lines.push_back(FormatAuditLine(r));
  }
  std::mutex mu;
  std::vector<std::string> lines;
};

class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
    Start();
    ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
    ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p2"}}).ok());
    ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}, {"provider", "p1"}}).ok());
    for (const char* d : {"d0", "d1", "d2"}) {
      auto r = Call("volume.create", {{"vm", "vm1"},
                                      {"disk", d},
                                      {"file", Image(d)},
                                      {"size", 20u << 20}});
      ASSERT_TRUE(r.ok()) << r.error().message;
      deks_.push_back(Dek(d));
    }
  }
  // A fresh Controller on the same state directory: nothing cached.
  void Start() {
    controller_.reset();
    ControllerOptions o;
    o.state_dir = dir_.path() + "/state";
    o.audit = audit_;
    o.reencrypt_helper = helper_;
    auto c = Controller::Create(o);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(c).value();
  }
  Result<Json> Call(const std::string& op, const Json& args) {
    return controller_->Handle(op, args, SecureBuffer(), Caller{});
  }
  std::string Image(const std::string& disk) {
    return dir_.path() + "/" + disk + ".img";
  }
  VcryptToken Token(const std::string& disk) {
    auto h = ReadHeader(Image(disk));
    EXPECT_TRUE(h.ok() && h->token_json) << disk;
    auto t = VcryptToken::Parse(*h->token_json);
    EXPECT_TRUE(t.ok()) << disk;
    return *t;
  }
  // The DEK of `disk`, unwrapped with the KEK its token names, taken from
  // the controller's cache (the test never sees a KEK otherwise).
  SecureBuffer Dek(const std::string& disk) {
    VcryptToken t = Token(disk);
    auto kek = controller_->cache().Get(t.provider_name, t.kek.kek_id);
    EXPECT_TRUE(kek.has_value()) << "KEK of " << disk << " not cached";
    if (!kek) return SecureBuffer();
    auto uuid = ReadHeader(Image(disk))->uuid;
    auto dek = UnwrapKey(*kek, t.dek, DekAad(uuid, t.kek.kek_id, t.provider_name));
    EXPECT_TRUE(dek.ok()) << disk;
    return dek.ok() ? std::move(dek).value() : SecureBuffer();
  }
  Json VmRecord() {
    return Json::parse(*ReadFile(dir_.path() + "/state/inventory.json"))["vms"]["vm1"];
  }

  testing::TempDir dir_{"lifecycle"};
  std::unique_ptr<Controller> controller_;
  std::vector<SecureBuffer> deks_;  // of d0, d1, d2 before any rekey
  std::shared_ptr<RekeyRecords> audit_ = std::make_shared<RekeyRecords>();
  std::vector<std::string> helper_;  // ControllerOptions::reencrypt_helper
};

TEST_F(LifecycleTest, NewKekEveryTokenSameDek) {
  const std::string old_kek = VmRecord()["kek"]["id"];
  auto r = Call("vm.rekey", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string new_kek = (*r)["kek_id"];
  EXPECT_NE(new_kek, old_kek);
  EXPECT_EQ((*r)["old_kek_id"], old_kek);
  EXPECT_EQ((*r)["resumed"], false);
  EXPECT_EQ((*r)["disks"].size(), 3u);
  int i = 0;
  for (const char* d : {"d0", "d1", "d2"}) {
    SCOPED_TRACE(d);
    VcryptToken t = Token(d);
    EXPECT_EQ(t.kek.kek_id, new_kek);
    EXPECT_EQ(t.provider_name, "p1");
    SecureBuffer dek = Dek(d);
    EXPECT_TRUE(dek.Equals(deks_[i++]));
    EXPECT_TRUE(VerifyDek(Image(d), dek).ok());
  }
  Json rec = VmRecord();
  EXPECT_EQ(rec["kek"]["id"], new_kek);
  EXPECT_FALSE(rec.contains("rekey"));
  EXPECT_FALSE(controller_->cache().Contains("p1", old_kek)) << "old KEK still cached";
  // The old KEK's wrapped copy is gone from the inventory: the new KEK
  // alone opens the VM after a restart.
  Start();
  ASSERT_TRUE(Call("vm.show", {{"vm", "vm1"}}).ok());
}

TEST_F(LifecycleTest, ProviderChangeRewrapsUnderTheOtherProvider) {
  auto r = Call("vm.rekey", {{"vm", "vm1"}, {"provider", "p2"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["provider"], "p2");
  EXPECT_EQ((*r)["old_provider"], "p1");
  EXPECT_EQ(VmRecord()["provider"], "p2");
  int i = 0;
  for (const char* d : {"d0", "d1", "d2"}) {
    VcryptToken t = Token(d);
    EXPECT_EQ(t.provider_name, "p2") << d;
    EXPECT_EQ(t.provider_type, "native") << d;
    EXPECT_TRUE(Dek(d).Equals(deks_[i++])) << d;
  }
}

// A disk that fails (here: its image is gone) leaves the rekey pending:
// the others carry the new KEK, the failed one the old, the VM keeps its
// old KEK. A re-run, on a cold controller, finishes with the same new KEK.
TEST_F(LifecycleTest, InterruptedRekeyIsFinishedByARerun) {
  const std::string old_kek = VmRecord()["kek"]["id"];
  fs::rename(Image("d1"), Image("d1") + ".away");
  auto r = Call("vm.rekey", {{"vm", "vm1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("1 of 3 disk(s) still carry the old KEK"),
            std::string::npos)
      << r.error().message;
  Json rec = VmRecord();
  ASSERT_TRUE(rec.contains("rekey"));
  const std::string pending = rec["rekey"]["kek"]["id"];
  EXPECT_EQ(rec["kek"]["id"], old_kek);
  EXPECT_EQ(Token("d0").kek.kek_id, pending);
  EXPECT_EQ(Token("d2").kek.kek_id, pending);

  // Another provider is refused while this one is pending.
  r = Call("vm.rekey", {{"vm", "vm1"}, {"provider", "p2"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kBusy);

  fs::rename(Image("d1") + ".away", Image("d1"));
  EXPECT_EQ(Token("d1").kek.kek_id, old_kek);
  Start();
  r = Call("vm.rekey", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["resumed"], true);
  EXPECT_EQ((*r)["kek_id"], pending);
  int rekeyed = 0;
  for (const auto& d : (*r)["disks"]) rekeyed += d["result"] == "rekeyed";
  EXPECT_EQ(rekeyed, 1);
  EXPECT_EQ(VmRecord()["kek"]["id"], pending);
  EXPECT_FALSE(VmRecord().contains("rekey"));
  // One kek.rekey record per run: not_found (left pending), then ok. The
  // refused --provider p2 run started nothing and is not a rekey.
  ASSERT_EQ(audit_->lines.size(), 2u);
  EXPECT_NE(audit_->lines[0].find("op=kek.rekey request=vm.rekey vm=vm1 provider=p1 kek_id=" + pending),
            std::string::npos) << audit_->lines[0];
  EXPECT_NE(audit_->lines[0].find("result=not_found"), std::string::npos) << audit_->lines[0];
  EXPECT_NE(audit_->lines[1].find("kek_id=" + pending + " result=ok"), std::string::npos)
      << audit_->lines[1];
  int i = 0;
  for (const char* d : {"d0", "d1", "d2"}) {
    EXPECT_EQ(Token(d).kek.kek_id, pending) << d;
    EXPECT_TRUE(Dek(d).Equals(deks_[i++])) << d;
  }
}

// A token that does not belong to its disk is never re-wrapped: that disk
// fails, is left as it was, and the rekey stays pending.
TEST_F(LifecycleTest, ForeignTokenIsLeftAlone) {
  auto foreign = ReadHeader(Image("d1"))->token_json;
  ASSERT_TRUE(WriteToken(Image("d0"), *foreign).ok());
  auto r = Call("vm.rekey", {{"vm", "vm1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
  EXPECT_EQ(*ReadHeader(Image("d0"))->token_json, *foreign);
  EXPECT_TRUE(VmRecord().contains("rekey"));
}

TEST_F(LifecycleTest, Refusals) {
  auto r = Call("vm.rekey", {{"vm", "nope"}});
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  r = Call("vm.rekey", {{"vm", "vm1"}, {"provider", "nope"}});
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  // Deep needs the reencryption helper, which this controller lacks.
  r = Call("vm.rekey", {{"vm", "vm1"}, {"deep", true}});
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  // Nothing was started by any of them.
  EXPECT_FALSE(VmRecord().contains("rekey"));
  EXPECT_EQ(Token("d0").provider_name, "p1");
}

// unregister forgets the VM (volumes stay); register rebuilds it from the
// headers alone, after checking that this host's provider opens them.
TEST_F(LifecycleTest, RegisterFromHeadersAfterUnregister) {
  Json before = VmRecord();
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vm1"}}).ok());
  EXPECT_EQ(Call("vm.show", {{"vm", "vm1"}}).error().code, ErrorCode::kNotFound);
  Start();  // cold: the KEK must come from the provider again
  auto r = Call("vm.register",
                {{"vm", "vm1"}, {"from", {Image("d0"), Image("d1"), Image("d2")}}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  Json after = VmRecord();
  EXPECT_EQ(after["provider"], before["provider"]);
  EXPECT_EQ(after["kek"], before["kek"]);
  EXPECT_EQ(after["disks"], before["disks"]);
  EXPECT_EQ(after["auto_unlock"], true);
  int i = 0;
  for (const char* d : {"d0", "d1", "d2"}) EXPECT_TRUE(Dek(d).Equals(deks_[i++])) << d;

  // Registered already; a volume of another VM; the same disk twice;
  // not absolute; nothing to register from.
  EXPECT_EQ(Call("vm.register", {{"vm", "vm1"}, {"from", {Image("d0")}}}).error().code,
            ErrorCode::kExists);
  EXPECT_EQ(Call("vm.register", {{"vm", "vm2"}, {"from", {Image("d0")}}}).error().code,
            ErrorCode::kInvalidVolume);
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vm1"}}).ok());
  EXPECT_EQ(Call("vm.register", {{"vm", "vm1"}, {"from", {Image("d0"), Image("d0")}}})
                .error()
                .code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(Call("vm.register", {{"vm", "vm1"}, {"from", {"d0.img"}}}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(Call("vm.register", {{"vm", "vm1"}, {"from", Json::array()}}).error().code,
            ErrorCode::kUsage);
  EXPECT_FALSE(VmRecord().is_object()) << "a refused register wrote the inventory";
}

// Disks wrapped under different KEKs (a rekey that stopped half-way on
// another host) are refused rather than registered under one of them.
TEST_F(LifecycleTest, RegisterRefusesMixedKeks) {
  fs::rename(Image("d2"), Image("d2") + ".away");
  ASSERT_FALSE(Call("vm.rekey", {{"vm", "vm1"}}).ok());  // d0, d1 re-wrapped
  fs::rename(Image("d2") + ".away", Image("d2"));
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vm1"}}).ok());
  auto r = Call("vm.register",
                {{"vm", "vm1"}, {"from", {Image("d0"), Image("d1"), Image("d2")}}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
  EXPECT_NE(r.error().message.find("different KEKs"), std::string::npos) << r.error().message;
}

// A provider this host does not have: register refuses (nothing written).
TEST_F(LifecycleTest, RegisterNeedsTheProvider) {
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vm1"}}).ok());
  ASSERT_TRUE(Call("provider.remove", {{"name", "p1"}, {"force", true}}).ok());
  auto r = Call("vm.register", {{"vm", "vm1"}, {"from", {Image("d0")}}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_FALSE(VmRecord().is_object());
}

// delete --erase: no token, no keyslot, the wrapped DEK's bytes are gone
// from the image, and even the right KEK opens nothing.
TEST_F(LifecycleTest, DeleteEraseLeavesAHeaderNoKeyOpens) {
  auto wrapped_ct = Json::parse(*ReadHeader(Image("d0"))->token_json)["dek"]["ct"];
  auto r = Call("vm.delete", {{"vm", "vm1"}, {"erase", true}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["erased"].size(), 3u);
  int i = 0;
  for (const char* d : {"d0", "d1", "d2"}) {
    SCOPED_TRACE(d);
    auto h = ReadHeader(Image(d));
    ASSERT_TRUE(h.ok()) << "the LUKS2 header itself stays";
    EXPECT_FALSE(h->token_json.has_value());
    EXPECT_EQ(h->active_keyslots, 0);
    // The digest stays: what is gone is every stored copy of the DEK.
    EXPECT_TRUE(VerifyDek(Image(d), deks_[i++]).ok());
  }
  std::string image = *ReadFile(Image("d0"));
  EXPECT_EQ(image.find(wrapped_ct.get<std::string>()), std::string::npos)
      << "the wrapped DEK is still in the image";
  EXPECT_FALSE(VmRecord().is_object());
  // Nothing to register any more.
  EXPECT_EQ(Call("vm.register", {{"vm", "vm1"}, {"from", {Image("d0")}}}).error().code,
            ErrorCode::kInvalidVolume);
}

// --erase with a disk missing refuses before anything changes.
TEST_F(LifecycleTest, DeleteEraseWithAMissingDiskChangesNothing) {
  fs::rename(Image("d1"), Image("d1") + ".away");
  auto r = Call("vm.delete", {{"vm", "vm1"}, {"erase", true}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("nothing was deleted"), std::string::npos)
      << r.error().message;
  EXPECT_TRUE(ReadHeader(Image("d0"))->token_json.has_value());
  EXPECT_TRUE(VmRecord().is_object());
}

}  // namespace
}  // namespace vcrypt

namespace vcrypt {
namespace {

// The deep rekey set-up on real headers (reencryption itself needs the
// helper and is in tests/integration/t_rekey.sh): a helper that fails
// (/bin/false, a fault the real helper cannot be made to produce on cue)
// leaves every disk set up, still under its old DEK, and the rekey
// pending as deep.
TEST_F(LifecycleTest, DeepRekeyWhoseHelperFailsStaysPendingUnderTheOldDek) {
  helper_ = {"/bin/false"};
  Start();
  const std::string old_kek = VmRecord()["kek"]["id"];
  auto r = Call("vm.rekey", {{"vm", "vm1"}, {"deep", true}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  // /bin/false may exit before the job is written to it (a loaded
  // machine): then the write fails with EPIPE instead. Both are the
  // helper failing.
  EXPECT_TRUE(r.error().message.find("reencryption helper exited") !=
                  std::string::npos ||
              r.error().message.find(
                  "cannot hand the job to the reencryption helper") !=
                  std::string::npos)
      << r.error().message;
  EXPECT_EQ(VmRecord()["rekey"]["deep"], true);
  EXPECT_EQ(VmRecord()["kek"]["id"], old_kek);
  const char* disks[] = {"d0", "d1", "d2"};
  for (size_t i = 0; i < 3; ++i) {
    auto st = ReadReencryptState(Image(disks[i]));
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_TRUE(st->has_marker()) << disks[i];
    EXPECT_EQ(st->phase, ReencryptPhase::kNone);
    EXPECT_EQ(st->keyslots.size(), 2u);
    EXPECT_GE(st->old_keyslot, 0);
    EXPECT_GE(st->new_keyslot, 0);
    // The payload names the new KEK and never holds the passphrase in
    // clear (it is wrapped: a base64 ciphertext with iv and tag).
    auto payload = Json::parse(st->payload);
    EXPECT_EQ(payload["kek"]["id"], VmRecord()["rekey"]["kek"]["id"]);
    EXPECT_EQ(payload["passphrase"]["alg"], "A256GCM");
    EXPECT_TRUE(VerifyDek(Image(disks[i]), deks_[i]).ok()) << disks[i];
    EXPECT_EQ(Token(disks[i]).kek.kek_id, old_kek);
  }
  // A shallow rekey cannot start while the deep one is pending.
  r = Call("vm.rekey", {{"vm", "vm1"}, {"provider", "p2"}});
  EXPECT_EQ(r.error().code, ErrorCode::kBusy);
}

TEST_F(LifecycleTest, ReencryptSetUpChecksAndRemoval) {
  const std::string img = Image("d0");
  SecureBuffer pass(32), wrong(64), new_dek(64);
  for (size_t i = 0; i < 32; ++i) pass.data()[i] = static_cast<uint8_t>(i + 1);
  for (size_t i = 0; i < 64; ++i) new_dek.data()[i] = static_cast<uint8_t>(0xA0 ^ i);
  // A key that is not the volume's: refused, nothing written.
  Status st = PrepareReencrypt(img, wrong, new_dek, pass, "{}");
  EXPECT_EQ(st.error().code, ErrorCode::kCrypto);
  auto s0 = ReadReencryptState(img);
  ASSERT_TRUE(s0.ok());
  EXPECT_FALSE(s0->has_marker());
  EXPECT_EQ(s0->active_keyslots, 0);

  ASSERT_TRUE(PrepareReencrypt(img, deks_[0], new_dek, pass, R"({"x":1})").ok());
  auto s1 = ReadReencryptState(img);
  ASSERT_TRUE(s1.ok());
  EXPECT_TRUE(s1->has_marker());
  EXPECT_EQ(s1->payload, R"({"x":1})");
  EXPECT_EQ(s1->active_keyslots, 2);
  // Not started: the passphrase gives the data's key, still the old DEK.
  auto key = VolumeKeyByPassphrase(img, pass);
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_TRUE(key->Equals(deks_[0]));
  // A second set-up is refused.
  EXPECT_EQ(PrepareReencrypt(img, deks_[0], new_dek, pass, "{}").error().code,
            ErrorCode::kExists);
  // The vcrypt token is untouched by all of it.
  EXPECT_TRUE(VerifyDek(img, deks_[0]).ok());

  ASSERT_TRUE(RemoveReencryptKeyslots(img, &pass).ok());
  auto s2 = ReadReencryptState(img);
  ASSERT_TRUE(s2.ok());
  EXPECT_FALSE(s2->has_marker());
  EXPECT_EQ(s2->active_keyslots, 0);
  EXPECT_EQ(VolumeKeyByPassphrase(img, pass).error().code, ErrorCode::kCrypto);
  EXPECT_TRUE(RemoveReencryptKeyslots(img, &pass).ok());  // idempotent
}

}  // namespace
}  // namespace vcrypt
