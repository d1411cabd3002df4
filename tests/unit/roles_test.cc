// The pieces of vcryptd's hardening that need no daemon: the role table,
// the operator's volume paths, the TCTI allowlist, the JSON depth limit,
// log escaping and the config file. socket_hardening_test.cc attacks the
// daemon itself.
#include "daemon/roles.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "common/atomic_file.h"
#include "common/escape.h"
#include "common/wire.h"
#include "daemon/daemon_main.h"
#include "keyproviders/trusted/tpm.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

TEST(RolesTest, KeyOperationsAreRootsAndReadsAreEveryones) {
  for (const char* op :
       {"provider.add", "provider.remove", "provider.backup",
        "provider.restore", "provider.default", "provider.set", "vm.delete",
        "volume.recovery_key.add", "volume.recovery_key.remove", "cache.evict"})
    EXPECT_EQ(RequiredRole(op, Json::object()), Role::kRoot) << op;
  for (const char* op : {"open", "open_all", "close", "vm.create",
                         "vm.unregister", "vm.register", "vm.set", "vm.rekey",
                         "volume.create", "vm.incoming", "vm.depart"})
    EXPECT_EQ(RequiredRole(op, Json::object()), Role::kOperator) << op;
  for (const char* op : {"status", "provider.list", "provider.show", "vm.list",
                         "vm.show", "volume.list", "ping"})
    EXPECT_EQ(RequiredRole(op, Json::object()), Role::kMonitor) << op;
  EXPECT_EQ(RequiredRole("vm.rekey", {{"provider", "kms"}}), Role::kRoot);
  EXPECT_EQ(RequiredRole("vm.rekey", {{"revoke_old", false}}), Role::kRoot);
  EXPECT_EQ(RequiredRole("vm.rekey", {{"deep", true}}), Role::kOperator);
  EXPECT_EQ(RequiredRole("no.such.op", Json::object()), std::nullopt);
  EXPECT_EQ(KnownOps().size(), 28u);
}

TEST(RolesTest, OperatorVolumePaths) {
  testing::TempDir dir("roles");
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  const std::string vols = dir / "vols";
  ASSERT_EQ(mkdir(vols.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((vols + "/sub").c_str(), 0755), 0);
  ASSERT_EQ(symlink("/tmp", (vols + "/out").c_str()), 0);
  const std::vector<std::string> allowed = {vols};
  auto code = [&](const std::string& p, bool is_file) {
    Status s = CheckOperatorVolumePath(p, is_file, allowed);
    return s.ok() ? 0 : static_cast<int>(s.error().code);
  };
  EXPECT_EQ(code(vols + "/a.img", true), 0);
  EXPECT_EQ(code(vols + "/sub/a.img", true), 0);
  EXPECT_EQ(code(vols + "/out/a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols + "/../a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols + "/./a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols + "//a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols, true), static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols + "x/a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code("a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols + "/missing/a.img", true),
            static_cast<int>(ErrorCode::kNotFound));
  // Devices: block devices only.
  ASSERT_TRUE(WriteFileAtomic(vols + "/file", "x").ok());
  EXPECT_EQ(code(vols + "/file", false),
            static_cast<int>(ErrorCode::kPermissionDenied));
  EXPECT_EQ(code(vols + "/nodev", false),
            static_cast<int>(ErrorCode::kNotFound));
  // Nothing allowed without volume_paths.
  EXPECT_EQ(CheckOperatorVolumePath(vols + "/a.img", true, {}).error().code,
            ErrorCode::kPermissionDenied);
  // A directory on the way that others may write to.
  ASSERT_EQ(chmod((vols + "/sub").c_str(), 0775), 0);
  EXPECT_EQ(code(vols + "/sub/a.img", true),
            static_cast<int>(ErrorCode::kPermissionDenied));
}

TEST(TctiTest, OnlyTpmDeviceNodesUnlessTestTctisAreAllowed) {
  for (const char* ok : {"device:/dev/tpmrm0", "device:/dev/tpm0",
                         "device:/dev/tpm12", "device:/dev/tpmrm3"}) {
    EXPECT_TRUE(CheckTcti(ok, false).ok()) << ok;
    EXPECT_TRUE(CheckTcti(ok, true).ok()) << ok;
  }
  for (const char* test_only :
       {"swtpm:host=127.0.0.1,port=2321", "mssim:port=2321", "swtpm"})
    EXPECT_FALSE(CheckTcti(test_only, false).ok()) << test_only;
  EXPECT_TRUE(CheckTcti("swtpm:host=127.0.0.1,port=2321", true).ok());
  for (const char* bad :
       {"", "device", "device:", "device:/dev/tpm", "device:/dev/sda",
        "device:/dev/tpm0/../sda", "device:/dev/tpmrm0 ", "device:/tmp/tpm0",
        "/tmp/x.so", "/tmp/x.so:conf", "./x.so", "../x",
        "libtss2-tcti-device.so.0:/dev/tpm0", "tabrmd", "swtpm:host=/tmp/x",
        "swtpm/../x:port=1", "mssim:host=a;b", "cmd:tpm2_startup",
        "Device:/dev/tpm0"}) {
    Status s = CheckTcti(bad, true);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
    EXPECT_EQ(s.error().message.find('\n'), std::string::npos);
  }
  Status s = CheckTcti("x\ny", false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message.find('\n'), std::string::npos)
      << s.error().message;
}

TEST(WireTest, NestingDepth) {
  EXPECT_EQ(JsonNestingDepth("{}"), 1u);
  EXPECT_EQ(JsonNestingDepth(R"({"a":[{"b":[]}]})"), 4u);
  EXPECT_EQ(JsonNestingDepth(R"({"a":"[[[[[[[[[[[[[["})"), 1u);
  EXPECT_EQ(JsonNestingDepth(R"({"a":"\"[[[[[[[[["})"), 1u);
  EXPECT_EQ(JsonNestingDepth(R"(["\\",[]])"), 2u);
  EXPECT_GT(JsonNestingDepth(std::string(1000000, '[')), kMaxJsonDepth);
}

TEST(WireTest, DeepMessagesAreRefusedAndShallowOnesRead) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  std::string deep = R"({"op":"x","args":)" + std::string(kMaxJsonDepth, '[') +
                     std::string(kMaxJsonDepth, ']') + "}\n";
  std::string fine = R"({"op":"x","args":)" +
                     std::string(kMaxJsonDepth - 1, '[') +
                     std::string(kMaxJsonDepth - 1, ']') + "}\n";
  ASSERT_EQ(write(sv[0], deep.data(), deep.size()),
            static_cast<ssize_t>(deep.size()));
  ASSERT_EQ(write(sv[0], fine.data(), fine.size()),
            static_cast<ssize_t>(fine.size()));
  auto m = ReadMessage(sv[1]);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kUsage);
  m = ReadMessage(sv[1]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ((*m).body["op"], "x");
  close(sv[0]);
  close(sv[1]);
}

TEST(WireTest, ALineAndItsSecretMustArriveInTime) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ASSERT_EQ(write(sv[0], "{\"op\":", 6), 6);
  auto m = ReadMessage(sv[1], 100);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kIo);
  EXPECT_NE(m.error().message.find("timed out"), std::string::npos);
  // The secret after the line too.
  std::string line = R"({"op":"x","secret_bytes":8})"
                     "\n"
                     "1234";
  int sv2[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv2), 0);
  ASSERT_EQ(write(sv2[0], line.data(), line.size()),
            static_cast<ssize_t>(line.size()));
  m = ReadMessage(sv2[1], 100);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("timed out"), std::string::npos);
  for (int fd : {sv[0], sv[1], sv2[0], sv2[1]}) close(fd);
}

// A pipe whose reader is gone (a reencryption helper that exited at
// once): the write fails with kIo instead of SIGPIPE killing the caller
// (LifecycleTest.DeepRekeyWhoseHelperFailsStaysPendingUnderTheOldDek died
// of it now and then in CI). In a child, so the old behaviour kills the
// child, not the test binary.
TEST(WireTest, WriteToAPipeWithoutReaderIsAnErrorNotASignal) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGPIPE, SIG_DFL);
    int p[2];
    if (pipe(p) != 0) _exit(90);
    close(p[0]);
    Status st = WriteMessage(p[1], Json{{"op", "x"}});
    _exit(!st.ok() && st.error().code == ErrorCode::kIo ? 0 : 91);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(WIFSIGNALED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(EscapeTest, OneLineWhateverTheInput) {
  EXPECT_EQ(EscapeForMessage("vm1"), "vm1");
  EXPECT_EQ(EscapeForMessage("a\nb\\c\x1b"), "a\\x0ab\\\\c\\x1b");
  EXPECT_EQ(EscapeForMessage(std::string(100, 'x'), 10),
            std::string(10, 'x') + "...");
  EXPECT_EQ(EscapeForMessage(std::string("\0", 1)), "\\x00");
}

TEST(DaemonConfigTest, KnownKeysTypedAndChecked) {
  testing::TempDir dir("config");
  auto read = [&](const std::string& text) {
    EXPECT_TRUE(WriteFileAtomic(dir / "c.json", text).ok());
    return ReadDaemonConfig(dir / "c.json");
  };
  auto c = read(R"({"operator_group":"vcrypt","monitor_group":"mon",
                    "volume_paths":["/srv/vms/","/dev/vg0"],"allow_test_tcti":true,
                    "request_timeout_ms":2000})");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->operator_group, "vcrypt");
  EXPECT_EQ(c->monitor_group, "mon");
  EXPECT_EQ(c->volume_paths,
            (std::vector<std::string>{"/srv/vms", "/dev/vg0"}));
  EXPECT_TRUE(c->allow_test_tcti);
  EXPECT_EQ(c->request_timeout_ms, 2000);
  // "group" is the old name of operator_group.
  c = read(R"({"group":"vcrypt"})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->operator_group, "vcrypt");
  EXPECT_FALSE(c->allow_test_tcti);
  for (const char* bad :
       {R"({"volume_path":["/srv"]})", R"({"allow_test_tcti":"yes"})",
        R"({"volume_paths":"/srv"})", R"({"volume_paths":["srv"]})",
        R"({"volume_paths":["/srv/../etc"]})",
        R"({"volume_paths":["/srv//x"]})", R"({"request_timeout_ms":5})",
        R"([1])", R"({"socket":1})"}) {
    auto r = read(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kUsage) << bad;
  }
}

}  // namespace
}  // namespace vcrypt
