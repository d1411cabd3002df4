// The libvirt qemu hook (libvirt/hook.h): argument handling, what it does
// for each operation, roll-back, and the real program against a real
// in-process vcryptd (whose `open` fails on this kernel without
// device-mapper, or for an unknown VM: real faults). The hook never talks
// to libvirt, so no libvirt is involved here; with a real libvirtd it runs
// in tests/integration/t_libvirt.sh.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
#include "daemon/controller.h"
#include "daemon/server.h"
#include "dmtools/volume.h"
#include "libvirt/hook.h"
#include "tests/test_util.h"
#include "tests/unit/fake_volumes.h"

namespace vcrypt {
namespace {

using testing::FakeVolumes;
using testing::TempDir;

constexpr const char* kXml = R"(<domain type='qemu'><name>web01</name><devices>
  <disk type='file' device='disk'><source file='/img/os.qcow2'/><target dev='vda'/></disk>
  <disk type='block' device='disk'><source dev='/dev/mapper/vcrypt-web01-data'/><target dev='vdb'/></disk>
  <disk type='block' device='disk'><source dev='/dev/mapper/vcrypt-web01-logs'/><target dev='vdc'/></disk>
  <disk type='block' device='disk'><source dev='/dev/mapper/vcrypt-web01-db'/><target dev='vdd'/></disk>
</devices></domain>)";

HookArgs Args(const std::string& op, const std::string& sub) {
  auto a = ParseHookArgs({"web01", op, sub, "-"});
  EXPECT_TRUE(a.ok());
  return *a;
}

TEST(LibvirtHookArgs, FourArgumentsAndAnOptionalSocket) {
  auto a = ParseHookArgs({"web01", "prepare", "begin", "-"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->domain, "web01");
  EXPECT_EQ(a->operation, "prepare");
  EXPECT_EQ(a->sub_operation, "begin");
  EXPECT_EQ(a->extra, "-");
  EXPECT_EQ(a->socket, "/run/vcrypt/vcryptd.sock");
  a = ParseHookArgs({"--socket", "/tmp/s", "web01", "release", "end", "-"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->socket, "/tmp/s");
  EXPECT_EQ(a->operation, "release");

  for (const auto& bad : std::vector<std::vector<std::string>>{
           {},
           {"web01"},
           {"web01", "prepare", "begin"},
           {"web01", "prepare", "begin", "-", "extra"},
           {"--socket"},
           {"--socket", "", "web01", "prepare", "begin", "-"},
           {"", "prepare", "begin", "-"},
       }) {
    auto r = ParseHookArgs(bad);
    ASSERT_FALSE(r.ok()) << bad.size();
    EXPECT_EQ(r.error().code, ErrorCode::kUsage);
    EXPECT_NE(r.error().message.find("usage: vcrypt-libvirt-hook"),
              std::string::npos);
  }
}

TEST(LibvirtHookArgs, OnlyPrepareBeginAndReleaseEndDoAnything) {
  EXPECT_EQ(HookActionFor("migrate", "begin"), HookAction::kCheck);
  EXPECT_EQ(HookActionFor("restore", "begin"), HookAction::kCheck);
  EXPECT_EQ(HookActionFor("prepare", "begin"), HookAction::kOpen);
  EXPECT_EQ(HookActionFor("release", "end"), HookAction::kClose);
  for (auto [op, sub] :
       std::vector<std::pair<const char*, const char*>>{{"start", "begin"},
                                                        {"started", "begin"},
                                                        {"stopped", "end"},
                                                        {"prepare", "end"},
                                                        {"release", "begin"},
                                                        {"migrate", "end"},
                                                        {"reconnect", "begin"},
                                                        {"attach", "begin"},
                                                        {"PREPARE", "begin"}})
    EXPECT_EQ(HookActionFor(op, sub), HookAction::kNone) << op << " " << sub;
}

TEST(LibvirtHook, PrepareOpensEveryVcryptDisk) {
  FakeVolumes v;
  HookOutcome o = RunHook(Args("prepare", "begin"), kXml, v);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_TRUE(o.messages.empty());
  EXPECT_EQ(v.calls,
            (std::vector<std::string>{"open web01/data", "open web01/logs",
                                      "open web01/db"}));
}

TEST(LibvirtHook, OtherOperationsDoNothing) {
  FakeVolumes v;
  for (auto [op, sub] :
       std::vector<std::pair<const char*, const char*>>{{"start", "begin"},
                                                        {"started", "begin"},
                                                        {"stopped", "end"},
                                                        {"reconnect", "begin"},
                                                        {"migrate", "end"}}) {
    HookOutcome o = RunHook(Args(op, sub), "not even xml", v);
    EXPECT_EQ(o.exit_code, 0);
    EXPECT_TRUE(o.messages.empty());
  }
  EXPECT_TRUE(v.calls.empty());
}

// The third disk cannot be unlocked: one clear line, the error's exit
// code, and the disk this run opened is closed again (the one that was
// already open is left alone).
TEST(LibvirtHook, PrepareFailureRollsBackWhatItOpened) {
  FakeVolumes v;
  v.already_open.insert("web01/logs");
  v.open_errors["web01/db"] = MakeError(ErrorCode::kKeyUnavailable,
                                        "no KMS server answered (kms1:5696)");
  HookOutcome o = RunHook(Args("prepare", "begin"), kXml, v);
  EXPECT_EQ(o.exit_code, 8);
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: cannot unlock web01/db for domain web01: no KMS server "
            "answered (kms1:5696)");
  EXPECT_EQ(v.calls,
            (std::vector<std::string>{"open web01/data", "open web01/logs",
                                      "open web01/db", "close web01/data"}));
}

TEST(LibvirtHook, PrepareRefusesAMappingAtAnotherPath) {
  FakeVolumes v;
  v.wrong_path.insert("web01/data");
  HookOutcome o = RunHook(Args("prepare", "begin"), kXml, v);
  EXPECT_EQ(o.exit_code, 1);
  ASSERT_FALSE(o.messages.empty());
  EXPECT_NE(o.messages[0].find("cannot unlock web01/data for domain web01"),
            std::string::npos);
  EXPECT_EQ(v.calls,
            (std::vector<std::string>{"open web01/data", "close web01/data"}));
}

TEST(LibvirtHook, PrepareRefusesBadXml) {
  FakeVolumes v;
  HookOutcome o = RunHook(Args("prepare", "begin"), "<domain><devices>", v);
  EXPECT_EQ(o.exit_code, 12);
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0].rfind("vcrypt: cannot start domain web01: domain XML "
                                "is not well-formed",
                                0),
            0u)
      << o.messages[0];
  o = RunHook(Args("prepare", "begin"),
              "<domain><devices><disk><source dev='/dev/mapper/vcrypt-x'/>"
              "</disk></devices></domain>",
              v);
  EXPECT_EQ(o.exit_code, 12);
  EXPECT_TRUE(v.calls.empty());
}

TEST(LibvirtHook, ReleaseClosesBestEffort) {
  FakeVolumes v;
  v.close_errors["web01/data"] =
      MakeError(ErrorCode::kNotFound, "no device-mapper mapping");
  v.close_errors["web01/logs"] =
      MakeError(ErrorCode::kBusy, "vcrypt-web01-logs is in use");
  HookOutcome o = RunHook(Args("release", "end"), kXml, v);
  EXPECT_EQ(o.exit_code, 0);
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: web01/logs of domain web01 stays open: vcrypt-web01-logs "
            "is in use");
  EXPECT_EQ(v.calls,
            (std::vector<std::string>{"close web01/data", "close web01/logs",
                                      "close web01/db"}));

  // A real failure is reported and the rest still closed.
  FakeVolumes w;
  w.close_errors["web01/data"] =
      MakeError(ErrorCode::kDaemonUnavailable, "vcryptd is not running");
  o = RunHook(Args("release", "end"), kXml, w);
  EXPECT_EQ(o.exit_code, 3);
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0],
            "vcrypt: cannot close web01/data of domain web01: vcryptd is not "
            "running");
  EXPECT_EQ(w.calls.size(), 3u);
}

// The hook through the real socket client against a real vcryptd.
class LibvirtHookDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ControllerOptions o;
    o.state_dir = dir_ / "state";
    auto c = Controller::Create(o);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(c).value();
    ServerOptions so;
    so.socket_path = dir_ / "sock";
    server_ = std::make_unique<Server>(controller_.get(), so,
                                       [](const std::string&) {});
    ASSERT_TRUE(server_->Listen().ok());
    thread_ = std::thread([this] { (void)server_->Run(); });
    auto cl = Client::Connect(dir_ / "sock");
    ASSERT_TRUE(cl.ok());
    ASSERT_TRUE(
        cl->Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
    ASSERT_TRUE(cl->Call("vm.create", {{"vm", "web01"}}).ok());
  }
  void TearDown() override {
    if (!server_) return;
    server_->Stop();
    thread_.join();
  }
  TempDir dir_{"hook"};
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

TEST_F(LibvirtHookDaemonTest, UnlockFailuresFromTheRealDaemon) {
  DaemonVolumes vols(dir_ / "sock");
  // vcryptd does not know the volume.
  HookOutcome o = RunHook(Args("prepare", "begin"), kXml, vols);
  EXPECT_EQ(o.exit_code, static_cast<int>(ErrorCode::kNotFound));
  ASSERT_EQ(o.messages.size(), 1u);
  EXPECT_EQ(o.messages[0].rfind(
                "vcrypt: cannot unlock web01/data for domain web01: ", 0),
            0u)
      << o.messages[0];

  // A domain without vcrypt disks needs nothing from vcryptd.
  o = RunHook(Args("prepare", "begin"),
              "<domain><name>web01</name><devices/></domain>", vols);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_TRUE(o.messages.empty());

  if (DeviceMapperAvailable()) GTEST_SKIP() << "this kernel has device-mapper";
  // Release on a kernel without dm: a real failure, reported for each.
  o = RunHook(Args("release", "end"), kXml, vols);
  EXPECT_EQ(o.exit_code, static_cast<int>(ErrorCode::kNoDeviceMapper));
  EXPECT_EQ(o.messages.size(), 3u);
}

// The installed program: exit codes, stderr, stdin.
struct HookRun {
  int code;
  std::string err;
};
HookRun RunHookProgram(const TempDir& dir, const std::string& args,
                       const std::string& stdin_text) {
  const std::string in = dir / "in.xml", err = dir / "err.txt";
  EXPECT_TRUE(WriteFileAtomic(in, stdin_text, {}).ok());
  std::string cmd = std::string(VCRYPT_BINARY_DIR) +
                    "/libvirt/vcrypt-libvirt-hook " + args + " <" + in +
                    " >/dev/null 2>" + err;
  int st = std::system(cmd.c_str());
  auto text = ReadFile(err);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, text.ok() ? *text : ""};
}

TEST(LibvirtHookProgram, ExitCodesAndOneLine) {
  TempDir dir("hookprog");
  const std::string sock = "--socket " + (dir / "nosock") + " ";
  // Operations it ignores: exit 0, no output, stdin not needed.
  HookRun r = RunHookProgram(dir, sock + "web01 started begin -", "");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.err, "");
  // libvirt always passes four arguments.
  r = RunHookProgram(dir, "web01 prepare", kXml);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(testing::CountLines(r.err), 1) << r.err;
  // vcryptd is not running: the domain must not start.
  r = RunHookProgram(dir, sock + "web01 prepare begin -", kXml);
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(testing::CountLines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("vcrypt: cannot unlock web01/data for domain web01: "
                        "vcryptd is not running",
                        0),
            0u)
      << r.err;
  // No vcrypt disk: nothing to do, even without vcryptd.
  r = RunHookProgram(dir, sock + "web01 prepare begin -",
                     "<domain><name>web01</name></domain>");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.err, "");
  // Release without vcryptd: reported, one line per volume.
  r = RunHookProgram(dir, sock + "web01 release end -", kXml);
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(testing::CountLines(r.err), 3) << r.err;
  // Malformed XML at prepare.
  r = RunHookProgram(dir, sock + "web01 prepare begin -", "<domain>");
  EXPECT_EQ(r.code, 12);
  EXPECT_EQ(testing::CountLines(r.err), 1) << r.err;
}

}  // namespace
}  // namespace vcrypt
