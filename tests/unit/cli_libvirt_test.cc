// vcryptctl attach/detach on the command line: usage and argument errors
// (exit 2 / 12, one line, before anything is contacted), and the order of
// checks: libvirt first, vcryptd only once the domain is known. libvirt is
// the real library, with its in-process test driver (test:///default,
// whose default domain "test" is running); vcryptd is not running
// (RunCtl's socket does not exist).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "tests/test_util.h"
#include "tests/unit/cli_run.h"

namespace vcrypt {
namespace {

using testing::CliRun;
using testing::CountLines;
using testing::RunCtl;
using testing::TempDir;

void ExpectOneLineError(const CliRun& r, int code, const std::string& text) {
  EXPECT_EQ(r.code, code) << r.err;
  EXPECT_EQ(CountLines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("vcryptctl: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(text), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

// Rejected before libvirt or vcryptd is contacted: usage errors (2) and
// invalid values (12).
TEST(CliLibvirt, BadArgumentsAreOneLineErrors) {
  struct Case {
    std::vector<std::string> args;
    int code;
    const char* text;
  };
  const Case cases[] = {
      {{"attach", "vm1/d0"}, 2, "needs --domain"},
      {{"detach", "vm1/d0"}, 2, "needs --domain"},
      {{"attach", "--domain", "x"}, 2, "wrong number of arguments"},
      {{"attach", "vm1", "--domain", "x"}, 2, "is not VM/DISK"},
      {{"attach", "/dev/sda", "--domain", "x"}, 2, "is not VM/DISK"},
      {{"attach", "vm1/d0", "--domain", "x", "--timeout", "5"}, 2,
       "unrecognised option"},
      {{"detach", "vm1/d0", "--domain", "x", "--target", "vdb"}, 2,
       "unrecognised option"},
      {{"attach", "vm1/d-0", "--domain", "x"}, 12,
       "disk name 'd-0' is not allowed"},
      {{"attach", "vm1/d0", "--domain", "x", "--target", "sdb"}, 12,
       "target 'sdb' is not allowed"},
      {{"detach", "vm1/d0", "--domain", "x", "--timeout", "100000"}, 12,
       "--timeout"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args[0] + " " + c.args[1]);
    ExpectOneLineError(RunCtl(c.args), c.code, c.text);
  }
}

TEST(CliLibvirt, LibvirtIsCheckedBeforeVcryptd) {
  ExpectOneLineError(
      RunCtl({"attach", "vm1/d0", "--domain", "test", "--connect",
              "test+unix:///default?socket=/nonexistent/libvirt-sock"}),
      3, "cannot connect to libvirt");
  ExpectOneLineError(RunCtl({"attach", "vm1/d0", "--domain", "no-such-domain",
                             "--connect", "test:///default"}),
                     5, "no libvirt domain named 'no-such-domain'");
  ExpectOneLineError(RunCtl({"detach", "vm1/d0", "--domain", "test",
                             "--connect", "test:///default"}),
                     5, "is not attached to domain 'test'");
  // The domain exists and runs: now vcryptd is asked to open the volume.
  ExpectOneLineError(RunCtl({"attach", "vm1/d0", "--domain", "test",
                             "--connect", "test:///default"}),
                     3, "vcryptd is not running");
}

TEST(CliLibvirt, HelpListsAttachAndDetach) {
  CliRun r = RunCtl({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("attach VM/DISK --domain DOMAIN [--target vdX]"),
            std::string::npos);
  EXPECT_NE(r.out.find("detach VM/DISK --domain DOMAIN [--timeout SEC]"),
            std::string::npos);
}

// The vcryptctl program (not RunCliWithLibvirt, as above) runs attach and
// detach through the helper vcrypt-attach (cli/attach.h): the same checks,
// errors and exit codes, without linking libvirt itself.
CliRun RunProgram(const std::string& bin, const std::vector<std::string>& args,
                  bool trace_libraries = false) {
  std::vector<std::string> argv = {"vcryptctl", "--socket",
                                   "/nonexistent/vcrypt.sock"};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunBinary(bin, argv, trace_libraries);
}

const std::string kVcryptctl =
    std::string(VCRYPT_BINARY_DIR) + "/cli/vcryptctl";

TEST(CliLibvirt, VcryptctlDoesNotLoadLibvirt) {
  CliRun r = RunProgram(kVcryptctl, {}, /*trace_libraries=*/true);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("libcryptsetup"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("libvirt"), std::string::npos) << r.out;
  CliRun h = RunProgram(std::string(VCRYPT_BINARY_DIR) + "/cli/vcrypt-attach",
                        {}, /*trace_libraries=*/true);
  EXPECT_NE(h.out.find("libvirt"), std::string::npos) << h.out;
}

TEST(CliLibvirt, VcryptctlRunsAttachThroughTheHelper) {
  ExpectOneLineError(
      RunProgram(kVcryptctl, {"attach", "vm1/d-0", "--domain", "x"}), 12,
      "disk name 'd-0' is not allowed");
  ExpectOneLineError(
      RunProgram(kVcryptctl, {"attach", "vm1/d0", "--domain", "no-such-domain",
                              "--connect", "test:///default"}),
      5, "no libvirt domain named 'no-such-domain'");
  ExpectOneLineError(
      RunProgram(kVcryptctl, {"detach", "vm1/d0", "--domain", "test",
                              "--connect", "test:///default"}),
      5, "is not attached to domain 'test'");
  ExpectOneLineError(
      RunProgram(kVcryptctl, {"attach", "vm1/d0", "--domain", "test",
                              "--connect", "test:///default"}),
      3, "vcryptd is not running");
}

// A vcryptctl without its helper says so in one line (exit 1) rather than
// running anything else; the other commands still work.
TEST(CliLibvirt, AMissingHelperIsOneLineError) {
  TempDir dir("cli-helper");
  const std::string copy = dir.path() + "/vcryptctl";
  {
    std::ifstream in(kVcryptctl, std::ios::binary);
    std::ofstream out(copy, std::ios::binary);
    out << in.rdbuf();
  }
  ASSERT_EQ(chmod(copy.c_str(), 0755), 0);
  ExpectOneLineError(RunProgram(copy, {"attach", "vm1/d0", "--domain", "x"}), 1,
                     "need the helper program");
  ExpectOneLineError(RunProgram(copy, {"status"}), 3, "vcryptd is not running");
}

}  // namespace
}  // namespace vcrypt
