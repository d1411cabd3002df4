// `provider add native NAME --tpm` end to end: the real vcryptctl against
// a real vcryptd Controller (tests/unit/daemon_fixture.h) with two software
// TPMs (swtpm), two hosts' TPMs. A host's state directory copied to a host
// with another TPM starts there with the sealed provider unavailable (one
// clear reason) while its other providers serve; on its own host the same
// directory works, and the KEK of a VM made before unwraps again with a
// cold cache (volume.create of a second disk fetches it from the
// provider), and the provider's backup restored --tpm on the other host
// seals the key to that host's TPM and opens the same VM's keys there.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "tests/unit/cli_run.h"
#include "tests/unit/daemon_fixture.h"
#include "tests/unit/swtpm.h"

namespace vcrypt::testing {
namespace {

const std::string kCtl = std::string(VCRYPT_BINARY_DIR) + "/cli/vcryptctl";

class NativeTpmDaemonTest : public DaemonTest {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm1_.Start(&why) || !tpm2_.Start(&why)) GTEST_SKIP() << why;
    DaemonTest::SetUp();
  }
  void Configure(ControllerOptions& o) override { o.allow_test_tcti = true; }
  CliRun Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"vcryptctl", "--socket", socket_});
    return RunBinary(kCtl, args);
  }
  Status CreateVolume(const std::string& vm, const std::string& disk) {
    auto r = Call("volume.create", {{"vm", vm},
                                    {"disk", disk},
                                    {"file", dir_ + "/" + vm + disk + ".img"},
                                    {"size", 40u << 20}});
    if (!r.ok()) return std::move(r).error();
    return Status::Ok();
  }
  Swtpm tpm1_, tpm2_;
};

TEST_F(NativeTpmDaemonTest, SealedProviderMovesOnlyWithItsTpm) {
  CliRun add = Ctl({"provider", "add", "native", "sealed", "--tpm", "--tcti",
                    tpm1_.Tcti(), "--pcrs", "16"});
  ASSERT_EQ(add.code, 0) << add.err;
  EXPECT_EQ(add.out,
            "created native provider 'sealed' (default)\n"
            "  primary key sealed to the TPM at " +
                tpm1_.Tcti() + " (PCRs 16)\n");
  ASSERT_EQ(Ctl({"provider", "add", "native", "plain"}).code, 0);
  CliRun list = Ctl({"provider", "list"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_NE(list.out.find("KEY STORAGE"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(" tpm "), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(" file"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(" 16\n"), std::string::npos) << list.out;
  auto show = Call("provider.show", {{"name", "sealed"}});
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["key_storage"], "tpm");
  EXPECT_EQ((*show)["pcrs"], Json::array({16}));
  EXPECT_EQ((*show)["tcti"], tpm1_.Tcti());

  ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}, {"provider", "sealed"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm2"}, {"provider", "plain"}}).ok());
  ASSERT_TRUE(CreateVolume("vm1", "d1").ok());

  // Host 2: a copy of the state directory, its TPM another one.
  Stop();
  const std::string state = dir_ + "/state", host1 = dir_ + "/state.host1";
  fs::rename(state, host1);
  fs::copy(host1, state, fs::copy_options::recursive);
  const std::string cfg = state + "/providers/sealed/config.json";
  Json c = Json::parse(*ReadFile(cfg));
  c["tcti"] = tpm2_.Tcti();
  ASSERT_TRUE(WriteFileAtomic(cfg, c.dump(2)).ok());
  Start();
  auto s2 = Call("provider.show", {{"name", "sealed"}});
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ((*s2)["state"], "unavailable");
  const std::string reason = (*s2)["reason"]["message"];
  EXPECT_NE(reason.find("provider 'sealed': the primary key is sealed to "
                        "another TPM or its PCR policy no longer matches "
                        "(PCRs 16)"),
            std::string::npos)
      << reason;
  EXPECT_EQ(reason.find('\n'), std::string::npos);
  EXPECT_EQ(controller_->UnavailableProviders().size(), 1u);
  // Its VM gets no key; the other provider serves.
  auto no_key = CreateVolume("vm1", "d2");
  ASSERT_FALSE(no_key.ok());
  EXPECT_EQ(no_key.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(no_key.error().message.find("sealed to another TPM"),
            std::string::npos)
      << no_key.error().message;
  EXPECT_TRUE(CreateVolume("vm2", "d1").ok());
  CliRun list2 = Ctl({"provider", "list"});
  EXPECT_EQ(list2.code, 0) << list2.err;
  EXPECT_NE(list2.out.find("unavailable"), std::string::npos) << list2.out;

  // Back on host 1: the sealed key loads and the VM's KEK unwraps (the
  // cache is empty after the restart: it comes from the provider).
  Stop();
  fs::remove_all(state);
  fs::rename(host1, state);
  Start();
  auto s1 = Call("provider.show", {{"name", "sealed"}});
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ((*s1)["state"], "available") << s1->dump();
  auto d2 = CreateVolume("vm1", "d2");
  EXPECT_TRUE(d2.ok()) << d2.error().message;
  // A sealed provider still backs up (root's): that is how the key
  // reaches the cluster's other hosts, each sealing it to its own TPM.
  const std::string pw = dir_ + "/pw";
  std::ofstream(pw) << "pw\n";
  CliRun backup = Ctl({"provider", "backup", "sealed", "--out",
                       dir_ + "/sealed.p12", "--password-file", pw});
  ASSERT_EQ(backup.code, 0) << backup.err;
  const std::string key_id = (*s1)["primary_key_id"];

  // Host 2 again, with nothing on it: the backup restored --tpm seals the
  // key to host 2's TPM, and host 1's volumes open there (their VM taken
  // over from the volumes, a new disk made under the same KEK).
  Stop();
  fs::rename(state, host1);
  Start();
  CliRun restore = Ctl({"provider", "restore", dir_ + "/sealed.p12", "--name",
                        "sealed", "--password-file", pw, "--tpm", "--tcti",
                        tpm2_.Tcti(), "--pcrs", "16"});
  ASSERT_EQ(restore.code, 0) << restore.err;
  EXPECT_EQ(restore.out,
            "restored provider 'sealed'\n"
            "  primary key sealed to the TPM at " +
                tpm2_.Tcti() + " (PCRs 16)\n");
  auto s3 = Call("provider.show", {{"name", "sealed"}});
  ASSERT_TRUE(s3.ok());
  EXPECT_EQ((*s3)["primary_key_id"], key_id);
  EXPECT_EQ((*s3)["key_storage"], "tpm");
  auto reg =
      Call("vm.register",
           {{"vm", "vm1"},
            {"from", Json::array({dir_ + "/vm1d1.img", dir_ + "/vm1d2.img"})}});
  ASSERT_TRUE(reg.ok()) << reg.error().message;
  auto d3 = CreateVolume("vm1", "d3");
  EXPECT_TRUE(d3.ok()) << d3.error().message;
}

TEST_F(NativeTpmDaemonTest, Refusals) {
  // --tcti/--pcrs without --tpm; --pcrs out of range; --tpm for another
  // type: usage errors, nothing made.
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{
           {"provider", "add", "native", "p", "--pcrs", "0"},
           {"provider", "add", "native", "p", "--tcti", tpm1_.Tcti()},
           {"provider", "add", "native", "p", "--tpm", "--pcrs", "24"},
           {"provider", "add", "native", "p", "--tpm", "--pcrs", "0,,7"},
           {"provider", "add", "native", "p", "--tpm", "--pcrs", "x"},
           {"provider", "add", "standard", "p", "--tpm"}}) {
    CliRun r = Ctl(args);
    EXPECT_EQ(r.code, 2) << args.back() << ": " << r.err;
    EXPECT_EQ(CountLines(r.err), 1) << r.err;
  }
  // The daemon checks too: a bad TCTI, bad PCRs, a TPM that is not there.
  auto bad_tcti = Call("provider.add", {{"type", "native"},
                                        {"name", "p"},
                                        {"tpm", true},
                                        {"tcti", "device:/dev/sda"}});
  ASSERT_FALSE(bad_tcti.ok());
  EXPECT_EQ(bad_tcti.error().code, ErrorCode::kInvalidArgument);
  for (const Json& pcrs : {Json::array({7, 0}), Json::array({-1}), Json("0,7"),
                           Json::array({"0"})}) {
    auto r = Call("provider.add", {{"type", "native"},
                                   {"name", "p"},
                                   {"tpm", true},
                                   {"tcti", tpm1_.Tcti()},
                                   {"pcrs", pcrs}});
    ASSERT_FALSE(r.ok()) << pcrs.dump();
  }
  auto down = Call("provider.add", {{"type", "native"},
                                    {"name", "p"},
                                    {"tpm", true},
                                    {"tcti", "swtpm:host=127.0.0.1,port=9"}});
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.error().code, ErrorCode::kIo);
  EXPECT_FALSE(fs::exists(dir_ + "/state/providers/p"));
  EXPECT_FALSE(Call("provider.show", {{"name", "p"}}).ok());
}

}  // namespace
}  // namespace vcrypt::testing
