// vcryptctl attach/detach on the command line: usage and argument errors
// (exit 2 / 12, one line, before anything is contacted), and the order of
// checks: libvirt first, vcryptd only once the domain is known. libvirt is
// the real library, with its in-process test driver (test:///default,
// whose default domain "test" is running); vcryptd is not running
// (RunCtl's socket does not exist).
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "tests/unit/cli_run.h"

namespace vcrypt {
namespace {

using testing::CliRun;
using testing::CountLines;
using testing::RunCtl;

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

}  // namespace
}  // namespace vcrypt
