// vcryptctl argument handling: every bad invocation gets one line on
// stderr and its documented exit code, before any daemon is contacted
// (the socket here does not exist, so reaching the daemon would give 3).
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "tests/test_util.h"
#include "tests/unit/cli_run.h"

namespace vcrypt {
namespace {

using testing::CliRun;
using testing::RunCtl;
int Lines(const std::string& s) { return testing::CountLines(s); }

TEST(CliTest, UsageErrorsExitTwoWithOneLine) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"provider"},
      {"provider", "add"},
      {"provider", "add", "native"},
      {"provider", "add", "native", "a", "b"},
      {"provider", "backup", "p1"},
      {"provider", "restore", "x.p12"},
      {"vm", "create"},
      {"vm", "create", "a", "b"},
      {"vm", "explode", "a"},
      {"vm", "set", "a"},
      {"vm", "set", "a", "--auto-unlock", "maybe"},
      {"vm", "rekey"},
      {"vm", "rekey", "a", "--provider", ""},
      {"vm", "register", "a"},
      {"volume", "create", "vm1"},
      {"volume", "create", "vm1", "d0"},
      {"volume", "create", "vm1", "d0", "--file", "/tmp/x"},
      {"volume", "create", "vm1", "d0", "--device", "/dev/x", "--file", "/tmp/x"},
      {"volume", "create", "vm1", "d0", "--device", "/dev/x", "--size", "1G"},
      {"volume", "create", "vm1", "d0", "--device", "/dev/x", "--bogus"},
      {"open"},
      {"open", "vm1"},
      {"open", "vm1/d0/x"},
      {"open", "--all", "vm1/d0"},
      {"open", "--all", "--discards"},
      {"open", "--file-backed"},
      {"open", "vm1/d0", "--file-backed"},
      {"close", "a", "b"},
      {"status", "extra"},
      {"cache", "flush"},
  };
  for (const auto& c : cases) {
    CliRun r = RunCtl(c);
    std::string joined;
    for (auto& w : c) joined += w + " ";
    EXPECT_EQ(r.code, 2) << joined << " -> " << r.err;
    EXPECT_EQ(Lines(r.err), 1) << joined << " -> " << r.err;
    EXPECT_EQ(r.err.rfind("vcryptctl: ", 0), 0u) << r.err;
    EXPECT_TRUE(r.out.empty()) << joined;
  }
}

TEST(CliTest, InvalidValuesExitTwelve) {
  CliRun r = RunCtl({"volume", "create", "vm1", "d0", "--file", "/tmp/x", "--size", "12Q"});
  EXPECT_EQ(r.code, 12) << r.err;
  r = RunCtl({"volume", "create", "vm1", "d0", "--device", "/dev/x", "--sector-size", "1024"});
  EXPECT_EQ(r.code, 12) << r.err;
  r = RunCtl({"provider", "add", "kmip", "p"});
  EXPECT_EQ(r.code, 12) << r.err;
}

TEST(CliTest, DaemonNotRunningExitsThree) {
  CliRun r = RunCtl({"status"});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("vcryptd is not running"), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err), 1);
}

TEST(CliTest, HelpListsCommandsAndExitCodes) {
  CliRun r = RunCtl({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* w : {"provider add native", "volume create", "open", "Exit codes"})
    EXPECT_NE(r.out.find(w), std::string::npos) << w;
}

TEST(CliTest, ParseSize) {
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("64M"), 64ull << 20);
  EXPECT_EQ(*ParseSize("10GiB"), 10ull << 30);
  EXPECT_EQ(*ParseSize("1k"), 1024u);
  for (const char* bad : {"", "M", "0", "1X", "1MB2", "-1", "99999999999999999999",
                          "17179869184T"})
    EXPECT_FALSE(ParseSize(bad).ok()) << bad;
}

}  // namespace
}  // namespace vcrypt
