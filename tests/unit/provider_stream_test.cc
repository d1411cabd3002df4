// `provider backup --out -` and `provider restore -` (cli/cmd_provider.cc):
// a native provider's primary key streamed from one host to another
// through a pipe (issue 15, "Keys on every host"), run through the real
// vcryptctl against a daemon of this fixture. The other host is the same
// daemon started again on an empty state directory.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "tests/unit/cli_run.h"
#include "tests/unit/daemon_fixture.h"

namespace vcrypt::testing {
namespace {

const std::string kCtl = std::string(VCRYPT_BINARY_DIR) + "/cli/vcryptctl";

class ProviderStreamTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    pw_ = dir_ + "/pw";
    std::ofstream(pw_) << "correct horse battery\n";
  }
  CliRun Ctl(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {"vcryptctl", "--socket", socket_});
    return RunBinary(kCtl, args, false, input);
  }
  // The primary key ID `provider show` reports for `name`.
  std::string KeyId(const std::string& name) {
    auto r = Call("provider.show", {{"name", name}});
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? r->value("primary_key_id", "") : "";
  }
  // A host with nothing on it yet: the daemon on an empty state directory.
  void FreshHost() {
    Stop();
    fs::remove_all(dir_ + "/state");
    Start();
  }
  std::string pw_;
};

TEST_F(ProviderStreamTest, BackupToStdoutRestoresFromStdinOnAnotherHost) {
  ASSERT_TRUE(
      Call("provider.add", {{"type", "native"}, {"name", "local"}}).ok());
  const std::string id = KeyId("local");
  ASSERT_FALSE(id.empty());

  CliRun b = Ctl(
      {"provider", "backup", "local", "--out", "-", "--password-file", pw_});
  ASSERT_EQ(b.code, 0) << b.err;
  // stdout is the PKCS#12 itself (DER: a SEQUENCE), stderr one line.
  ASSERT_GT(b.out.size(), 100u);
  EXPECT_EQ(static_cast<unsigned char>(b.out[0]), 0x30);
  EXPECT_EQ(CountLines(b.err), 1) << b.err;
  EXPECT_NE(b.err.find("primary key " + id), std::string::npos) << b.err;

  FreshHost();
  ASSERT_FALSE(Call("provider.show", {{"name", "local"}}).ok());
  CliRun r = Ctl(
      {"provider", "restore", "-", "--name", "local", "--password-file", pw_},
      b.out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "restored provider 'local'\n");
  EXPECT_EQ(KeyId("local"), id);

  // `provider list` shows the ID, so that an admin can compare hosts.
  CliRun l = Ctl({"provider", "list"});
  ASSERT_EQ(l.code, 0) << l.err;
  EXPECT_NE(l.out.find("PRIMARY KEY"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find(id), std::string::npos) << l.out;
}

TEST_F(ProviderStreamTest, StreamingRefusals) {
  ASSERT_TRUE(
      Call("provider.add", {{"type", "native"}, {"name", "local"}}).ok());
  // --json would share stdout with the backup.
  CliRun j = Ctl({"--json", "provider", "backup", "local", "--out", "-",
                  "--password-file", pw_});
  EXPECT_EQ(j.code, 2);
  EXPECT_EQ(j.out, "");
  EXPECT_EQ(CountLines(j.err), 1) << j.err;

  CliRun b = Ctl(
      {"provider", "backup", "local", "--out", "-", "--password-file", pw_});
  ASSERT_EQ(b.code, 0) << b.err;
  FreshHost();
  // The password cannot come from stdin too.
  for (const char* p : {"-", "/dev/stdin"}) {
    CliRun r = Ctl(
        {"provider", "restore", "-", "--name", "local", "--password-file", p},
        b.out);
    EXPECT_EQ(r.code, 2) << p;
    EXPECT_EQ(CountLines(r.err), 1) << r.err;
  }
  // Empty and oversized input: one line, nothing restored.
  CliRun e = Ctl(
      {"provider", "restore", "-", "--name", "local", "--password-file", pw_},
      "");
  EXPECT_NE(e.code, 0);
  EXPECT_EQ(CountLines(e.err), 1) << e.err;
  EXPECT_NE(e.err.find("empty"), std::string::npos) << e.err;
  CliRun big = Ctl(
      {"provider", "restore", "-", "--name", "local", "--password-file", pw_},
      std::string((64 << 10) + 1, '\x30'));
  EXPECT_NE(big.code, 0);
  EXPECT_EQ(CountLines(big.err), 1) << big.err;
  EXPECT_NE(big.err.find("larger than 64 KiB"), std::string::npos) << big.err;
  // A truncated backup: the daemon refuses it, nothing is restored.
  CliRun cut = Ctl(
      {"provider", "restore", "-", "--name", "local", "--password-file", pw_},
      b.out.substr(0, b.out.size() / 2));
  EXPECT_NE(cut.code, 0);
  EXPECT_EQ(CountLines(cut.err), 1) << cut.err;
  EXPECT_FALSE(Call("provider.show", {{"name", "local"}}).ok());
  EXPECT_FALSE(fs::exists(dir_ + "/state/providers/local"));
  // And the intact stream still restores.
  CliRun ok = Ctl(
      {"provider", "restore", "-", "--name", "local", "--password-file", pw_},
      b.out);
  EXPECT_EQ(ok.code, 0) << ok.err;
}

}  // namespace
}  // namespace vcrypt::testing
