// vcryptd end to end on the host, through the real socket and protocol:
// everything that needs no device-mapper. (Volume operations against a
// real dm-crypt are in tests/integration, run in the VM harness.) Over 800
// lines: one fixture (a daemon on a temporary socket) serves all of them,
// and splitting would only copy it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "client/client.h"
#include "common/atomic_file.h"
#include "common/handles.h"
#include "daemon/controller.h"
#include "daemon/server.h"
#include "dmtools/volume.h"
#include "keyproviders/native/native_provider.h"
#include "tests/unit/daemon_fixture.h"
#include "tests/unit/recording_audit.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

using testing::DaemonTest;

TEST_F(DaemonTest, ProvidersAndVmsPersistAcrossRestart) {
  auto r = Call("provider.add", {{"type", "native"}, {"name", "p1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE((*r)["default"].get<bool>());
  r = Call("provider.add", {{"type", "native"}, {"name", "p1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);

  r = Call("vm.create", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string kek_id = (*r)["kek_id"];
  EXPECT_EQ((*r)["provider"], "p1");
  r = Call("vm.create", {{"vm", "vm1"}});
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  r = Call("vm.create", {{"vm", "../etc"}});
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  r = Call("vm.create", {{"vm", "vm2"}, {"provider", "nope"}});
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);

  r = Call("status");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ((*r)["kek_cache"].size(), 1u);
  EXPECT_EQ((*r)["kek_cache"][0]["kek_id"], kek_id);

  // Restart: inventory and provider survive, the cache does not.
  Stop();
  Start();
  r = Call("vm.show", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["kek_id"], kek_id);
  EXPECT_FALSE((*r)["kek_cached"].get<bool>());
  r = Call("provider.list");
  ASSERT_EQ((*r)["providers"].size(), 1u);
  EXPECT_EQ((*r)["providers"][0]["vms"], 1);
}

TEST_F(DaemonTest, StateHoldsNoKeyMaterial) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  auto r = Call("vm.create", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok());
  // Recover the KEK the way an attacker with the primary key would, and
  // check its bytes appear nowhere in the state directory.
  auto p = NativeProvider::Load("p1", dir_ + "/state/providers/p1");
  ASSERT_TRUE(p.ok()) << p.error().message;
  auto inv = Json::parse(*ReadFile(dir_ + "/state/inventory.json"));
  KekRef ref{inv["vms"]["vm1"]["kek"]["id"], inv["vms"]["vm1"]["kek"]["data"]};
  auto kek = (*p)->GetKek(ref);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  std::string state = AllStateBytes();
  std::string needle(kek->chars(), kek->size());
  EXPECT_EQ(state.find(needle), std::string::npos);
}

TEST_F(DaemonTest, UnregisterEvictsKek) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "a"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "b"}}).ok());
  EXPECT_EQ((*Call("status"))["kek_cache"].size(), 2u);
  auto r = Call("vm.unregister", {{"vm", "a"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["evicted"], 1);
  auto st = *Call("status");
  ASSERT_EQ(st["kek_cache"].size(), 1u);
  EXPECT_EQ(st["kek_cache"][0]["vm"], "b");
  EXPECT_EQ(Call("vm.show", {{"vm", "a"}}).error().code, ErrorCode::kNotFound);
  // The provider is still used by b.
  EXPECT_EQ(Call("provider.remove", {{"name", "p1"}, {"force", true}}).error().code,
            ErrorCode::kBusy);
  ASSERT_TRUE(Call("vm.delete", {{"vm", "b"}}).ok());
  EXPECT_EQ(Call("provider.remove", {{"name", "p1"}}).error().code, ErrorCode::kExists);
  ASSERT_TRUE(Call("provider.remove", {{"name", "p1"}, {"force", true}}).ok());
  EXPECT_FALSE(fs::exists(dir_ + "/state/providers/p1"));
}

TEST_F(DaemonTest, OpenWithoutDeviceMapperIsClear) {
  if (DeviceMapperAvailable()) GTEST_SKIP() << "this kernel has device-mapper";
  // The header is checked first: what is not a volume is said so.
  auto r = Call("open", {{"path", "/dev/null"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
  EXPECT_NE(r.error().message.find("neither a block device nor a regular file"),
            std::string::npos);
  if (geteuid() == 0) {  // formatting a volume file needs root
    MakeVolumes({"d0"});
    r = Call("open", {{"path", dir_ + "/d0.img"}});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kNoDeviceMapper);
    EXPECT_NE(r.error().message.find("device-mapper not available"),
              std::string::npos);
  }
  // Status still works and says so.
  auto st = Call("status");
  ASSERT_TRUE(st.ok());
  EXPECT_FALSE((*st)["device_mapper"].get<bool>());
}

// The boot path's open (vcryptctl unlock): vcryptd itself skips a VM it
// does not know or that has auto-unlock off, in the same request.
TEST_F(DaemonTest, BootOpenSkipsWhatTheBootPathLeavesAlone) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  auto r = Call("open", {{"vm", "ghost"}, {"disk", "d0"}, {"boot", true}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, (Json{{"vm", "ghost"}, {"skipped", "not_registered"}}));
  ASSERT_TRUE(
      Call("vm.create", {{"vm", "manual"}, {"no_auto_unlock", true}}).ok());
  r = Call("open", {{"vm", "manual"}, {"disk", "d0"}, {"boot", true}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, (Json{{"vm", "manual"}, {"skipped", "auto_unlock_off"}}));
  // A VM with auto-unlock goes on to the open itself (here: no such disk).
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}}).ok());
  r = Call("open", {{"vm", "vm1"}, {"disk", "d0"}, {"boot", true}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound) << r.error().message;
  // Without "boot" an unknown VM stays an error.
  r = Call("open", {{"vm", "ghost"}, {"disk", "d0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(Call("open", {{"path", "/dev/null"}, {"boot", true}}).error().code,
            ErrorCode::kUsage);
}

TEST_F(DaemonTest, BackupAndRestoreThroughTheDaemon) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  SecureBuffer pw = SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>("correct horse"), 13));
  auto b = Call("provider.backup", {{"name", "p1"}}, &pw);
  ASSERT_TRUE(b.ok()) << b.error().message;
  // No password: refused.
  EXPECT_EQ(Call("provider.backup", {{"name", "p1"}}).error().code, ErrorCode::kUsage);
  // The same key cannot be restored twice; a wrong password is kCrypto.
  SecureBuffer wrong = SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>("wrong"), 5));
  auto r = Call("provider.restore", {{"name", "p2"}, {"p12", (*b)["p12"]}}, &wrong);
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
  EXPECT_FALSE(fs::exists(dir_ + "/state/providers/p2"));
  r = Call("provider.restore", {{"name", "p2"}, {"p12", (*b)["p12"]}}, &pw);
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_FALSE(fs::exists(dir_ + "/state/providers/p2"));
}

TEST_F(DaemonTest, MalformedRequestsGetAnError) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM, 0));
  ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const char kGarbage[] = "this is not json\n";
  ASSERT_EQ(write(fd.get(), kGarbage, sizeof kGarbage - 1),
            static_cast<ssize_t>(sizeof kGarbage - 1));
  char buf[512] = {};
  ssize_t n = read(fd.get(), buf, sizeof buf - 1);
  ASSERT_GT(n, 0);
  auto j = Json::parse(std::string(buf, static_cast<size_t>(n)));
  EXPECT_FALSE(j["ok"].get<bool>());
  EXPECT_EQ(j["error"]["code"], "usage");
  EXPECT_EQ(Call("no.such.op").error().code, ErrorCode::kUsage);
}

// The tests below open volumes on a host without device-mapper (the
// build machines): every open fails, which is what they look at. Opens
// that succeed are covered in tests/integration (t_status.sh).
#define SKIP_UNLESS_ROOT_WITHOUT_DM()                                          \
  do {                                                                         \
    if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root"; \
    if (DeviceMapperAvailable())                                               \
      GTEST_SKIP() << "this kernel has device-mapper";                         \
  } while (0)

TEST_F(DaemonTest, FailedOpenIsTheLockedReasonUntilRestart) {
  SKIP_UNLESS_ROOT_WITHOUT_DM();
  MakeVolumes({"d0"});
  Json d = DiskState("vm1", "d0");
  EXPECT_EQ(d["state"], "locked");
  EXPECT_FALSE(d.contains("reason")) << d.dump();

  auto r = Call("open", {{"vm", "vm1"}, {"disk", "d0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNoDeviceMapper);
  d = DiskState("vm1", "d0");
  EXPECT_EQ(d["state"], "locked");
  ASSERT_TRUE(d.contains("reason")) << d.dump();
  EXPECT_EQ(d["reason"]["code"], "no_device_mapper");
  EXPECT_EQ(d["reason"]["message"], r.error().message);
  const std::string since = d["reason"]["since"];
  EXPECT_EQ(since.size(), 20u) << since;  // 2026-01-02T03:04:05Z

  // The provider is gone (its files lost): key_unavailable, in every view.
  Stop();
  fs::remove_all(dir_ + "/state/providers/p1");
  Start();
  EXPECT_FALSE(DiskState("vm1", "d0").contains("reason"))
      << "kept across a restart";
  r = Call("open", {{"vm", "vm1"}, {"disk", "d0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find("'p1'"), std::string::npos)
      << r.error().message;
  d = DiskState("vm1", "d0");
  EXPECT_EQ(d["state"], "locked");
  EXPECT_EQ(d["reason"]["code"], "key_unavailable");
  EXPECT_EQ(d["reason"]["message"], r.error().message);
  auto show = Call("vm.show", {{"vm", "vm1"}});
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["disks"][0]["reason"], d["reason"]);
  auto list = Call("volume.list");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)["volumes"][0]["reason"], d["reason"]);
  // Opening by path counts for the same volume.
  r = Call("open", {{"path", dir_ + "/d0.img"}});
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  Json again = DiskState("vm1", "d0");
  EXPECT_EQ(again["reason"]["since"], d["reason"]["since"])
      << "same failure: same since";
  // Memory only: nothing of it in the state directory.
  EXPECT_EQ(AllStateBytes().find("is not configured"), std::string::npos);
}

TEST_F(DaemonTest, MissingImageFileIsUnavailable) {
  SKIP_UNLESS_ROOT_WITHOUT_DM();
  MakeVolumes({"d0", "d1"});
  ASSERT_EQ(unlink((dir_ + "/d0.img").c_str()), 0);
  Json d = DiskState("vm1", "d0");
  EXPECT_EQ(d["state"], "unavailable");
  EXPECT_EQ(d["reason"]["code"], "not_found");
  EXPECT_NE(d["reason"]["message"].get<std::string>().find(dir_ + "/d0.img"),
            std::string::npos);
  EXPECT_FALSE(d["reason"]["since"].get<std::string>().empty());
  EXPECT_EQ(DiskState("vm1", "d1")["state"], "locked");

  auto r = Call("open", {{"vm", "vm1"}, {"disk", "d0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find(dir_ + "/d0.img"), std::string::npos)
      << r.error().message;
  d = DiskState("vm1", "d0");
  EXPECT_EQ(d["state"], "unavailable");
  EXPECT_EQ(d["reason"]["message"], r.error().message);
  // The unlock helper reads `vm show`: it says the same.
  auto show = Call("vm.show", {{"vm", "vm1"}});
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["disks"][0]["state"], "unavailable");
}

// A block device's name can change between boots: open VM/DISK looks for
// by_uuid_dir/<uuid>, checks the header there and moves the inventory.
TEST_F(DaemonTest, StaleDevicePathFallsBackToTheUuidLink) {
  SKIP_UNLESS_ROOT_WITHOUT_DM();
  MakeVolumes({"d0", "d1"});
  const std::string img0 = dir_ + "/d0.img", img1 = dir_ + "/d1.img";
  std::string uuid0, uuid1;
  // Pretend both are block devices whose names have gone.
  EditInventory([&](Json& inv) {
    for (const char* d : {"d0", "d1"}) {
      Json& disk = inv["vms"]["vm1"]["disks"][d];
      disk["is_file"] = false;
      disk["device"] = dir_ + "/gone-" + d;
    }
    uuid0 = inv["vms"]["vm1"]["disks"]["d0"]["uuid"];
    uuid1 = inv["vms"]["vm1"]["disks"]["d1"]["uuid"];
  });
  ASSERT_TRUE(fs::create_directory(dir_ + "/by-uuid"));
  Json d = DiskState("vm1", "d0");
  EXPECT_EQ(d["state"], "unavailable");
  EXPECT_NE(d["reason"]["message"].get<std::string>().find("by-uuid/" + uuid0),
            std::string::npos)
      << d.dump();
  auto r = Call("open", {{"vm", "vm1"}, {"disk", "d0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find(uuid0), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("gone-d0 does not exist"), std::string::npos)
      << r.error().message;

  // udev's link appears: the volume is found, and the inventory follows
  // before the open goes on (and here stops at the missing device-mapper).
  fs::create_symlink(img0, dir_ + "/by-uuid/" + uuid0);
  EXPECT_EQ(DiskState("vm1", "d0")["state"], "locked");
  r = Call("open", {{"vm", "vm1"}, {"disk", "d0"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNoDeviceMapper) << r.error().message;
  EXPECT_EQ(Inventory()["vms"]["vm1"]["disks"]["d0"]["device"], img0);
  EXPECT_EQ(DiskState("vm1", "d0")["device"], img0);
  EXPECT_EQ(Inventory()["vms"]["vm1"]["disks"]["d0"]["is_file"], false);

  // A link to another volume is not taken: not found, inventory unchanged.
  fs::create_symlink(img0, dir_ + "/by-uuid/" + uuid1);
  r = Call("open", {{"vm", "vm1"}, {"disk", "d1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("holds another volume"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(Inventory()["vms"]["vm1"]["disks"]["d1"]["device"],
            dir_ + "/gone-d1");
  // Nor is a path that now holds another volume.
  EditInventory(
      [&](Json& inv) { inv["vms"]["vm1"]["disks"]["d1"]["device"] = img0; });
  fs::remove(dir_ + "/by-uuid/" + uuid1);
  r = Call("open", {{"vm", "vm1"}, {"disk", "d1"}});
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(Inventory()["vms"]["vm1"]["disks"]["d1"]["device"], img0);
  (void)img1;
}

TEST_F(DaemonTest, OpenAllTriesEveryAutoUnlockVolume) {
  SKIP_UNLESS_ROOT_WITHOUT_DM();
  MakeVolumes({"d0", "d1", "d2"});
  ASSERT_TRUE(
      Call("vm.create", {{"vm", "vm2"}, {"no_auto_unlock", true}}).ok());
  ASSERT_TRUE(Call("volume.create", {{"vm", "vm2"},
                                     {"disk", "d0"},
                                     {"file", dir_ + "/vm2-d0.img"},
                                     {"size", 40u << 20}})
                  .ok());
  // vm1/d1 "is a block device" that is not there.
  EditInventory([&](Json& inv) {
    inv["vms"]["vm1"]["disks"]["d1"]["is_file"] = false;
    inv["vms"]["vm1"]["disks"]["d1"]["device"] = dir_ + "/no-such-disk";
  });
  auto names = [](const Json& r) {
    std::vector<std::string> out;
    for (const auto& v : r["volumes"])
      out.push_back(
          v["vm"].get<std::string>() + "/" + v["disk"].get<std::string>() +
          ":" +
          (v["ok"].get<bool>() ? "ok" : v["error"]["code"].get<std::string>()));
    return out;
  };
  auto r = Call("open_all", {{"file_backed", true}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(names(*r), (std::vector<std::string>{"vm1/d0:no_device_mapper",
                                                 "vm1/d2:no_device_mapper"}));
  EXPECT_EQ((*r)["failed"], 2);
  EXPECT_EQ((*r)["opened"], Json::array());
  r = Call("open_all");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(names(*r), (std::vector<std::string>{"vm1/d0:no_device_mapper",
                                                 "vm1/d1:not_found",
                                                 "vm1/d2:no_device_mapper"}));
  EXPECT_EQ((*r)["volumes"][1]["error"]["exit"], 5);
  // Each failure is its volume's locked reason; vm2 was not touched.
  EXPECT_EQ(DiskState("vm1", "d1")["reason"]["code"], "not_found");
  EXPECT_EQ(DiskState("vm1", "d2")["reason"]["code"], "no_device_mapper");
  EXPECT_FALSE(DiskState("vm2", "d0").contains("reason"));

  // vcryptctl: one line per failed volume, the first one's exit code.
  std::vector<const char*> argv = {"vcryptctl", "--socket", socket_.c_str(),
                                   "open", "--all"};
  std::ostringstream out, err;
  EXPECT_EQ(RunCli(static_cast<int>(argv.size()), argv.data(), out, err), 10);
  EXPECT_EQ(out.str(), "");
  EXPECT_EQ(
      err.str().rfind("vcryptctl: vm1/d0: device-mapper not available", 0), 0u)
      << err.str();
  EXPECT_NE(err.str().find("\nvcryptctl: vm1/d1: "), std::string::npos)
      << err.str();
  const std::string errs = err.str();
  EXPECT_EQ(std::count(errs.begin(), errs.end(), '\n'), 3) << errs;

  // The human status names each volume's state and why.
  argv = {"vcryptctl", "--socket", socket_.c_str(), "status"};
  std::ostringstream sout, serr;
  EXPECT_EQ(RunCli(static_cast<int>(argv.size()), argv.data(), sout, serr), 0)
      << serr.str();
  auto line = [&](const std::string& volume) {
    std::istringstream in(sout.str());
    for (std::string l; std::getline(in, l);)
      if (l.rfind(volume + " ", 0) == 0) return l;
    return std::string();
  };
  EXPECT_NE(line("vm1/d1").find(" unavailable "), std::string::npos)
      << sout.str();
  EXPECT_NE(line("vm1/d1").find(" (not found: volume vm1/d1"),
            std::string::npos);
  EXPECT_NE(line("vm1/d0").find(" locked "), std::string::npos) << sout.str();
  EXPECT_NE(
      line("vm1/d0").find(" (no device mapper: device-mapper not available"),
      std::string::npos);
  EXPECT_NE(line("vm1/d0").find(", since 20"), std::string::npos);
  EXPECT_EQ(line("vm2/d0").back(), 'e')
      << "no reason, no trailing blanks";  // KEK_CACHED false
}

// vm.set changes auto-unlock after creation: stored in the inventory, seen
// by vm.show (the boot units) and by open_all.
TEST_F(DaemonTest, VmSetAutoUnlock) {
  SKIP_UNLESS_ROOT_WITHOUT_DM();
  MakeVolumes({"d0"});
  auto r = Call("vm.set", {{"vm", "vm1"}, {"auto_unlock", false}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["auto_unlock"], false);
  EXPECT_EQ(Inventory()["vms"]["vm1"]["auto_unlock"], false);
  EXPECT_EQ((*Call("vm.show", {{"vm", "vm1"}}))["auto_unlock"], false);
  EXPECT_EQ((*Call("open_all"))["volumes"], Json::array());
  ASSERT_TRUE(Call("vm.set", {{"vm", "vm1"}, {"auto_unlock", true}}).ok());
  EXPECT_EQ(Inventory()["vms"]["vm1"]["auto_unlock"], true);
  EXPECT_EQ((*Call("open_all"))["volumes"].size(), 1u);

  EXPECT_EQ(Call("vm.set", {{"vm", "nope"}, {"auto_unlock", true}}).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(Call("vm.set", {{"vm", "vm1"}}).error().code, ErrorCode::kUsage);
  EXPECT_EQ(Call("vm.set", {{"vm", "vm1"}, {"auto_unlock", "yes"}}).error().code,
            ErrorCode::kUsage);
}

// SO_PEERCRED authorisation: a non-root uid that is not in the allowed
// group is refused even when the socket file itself is open to everyone.
// The client runs as `nobody` in a program of its own (vcryptctl, exec'd
// right after the uid switch): a forked child of this multi-threaded test
// must not call malloc or take locks before exec (the daemon's threads may
// hold them at the fork; under ASan that hung the child for good).
TEST_F(DaemonTest, UnauthorisedUidIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to switch uid";
  ASSERT_EQ(chmod(socket_.c_str(), 0777), 0);
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  // A copy in the (0755) test directory: the build tree may sit where
  // `nobody` cannot reach it (under /root).
  const std::string ctl = dir_ + "/vcryptctl";
  fs::copy_file(std::string(VCRYPT_BINARY_DIR) + "/cli/vcryptctl", ctl);
  ASSERT_EQ(chmod(ctl.c_str(), 0755), 0);
  const char* argv[] = {"vcryptctl", "--socket", socket_.c_str(), "status",
                        nullptr};
  UniqueFd devnull(open("/dev/null", O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(devnull.valid());
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(90);
    dup2(devnull.get(), 1);
    dup2(devnull.get(), 2);
    execv(ctl.c_str(), const_cast<char* const*>(argv));
    _exit(91);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status),
            static_cast<int>(ErrorCode::kPermissionDenied));
}

}  // namespace
}  // namespace vcrypt

// --- audit log (daemon/audit.h, docs/audit.md) ------------------------------
// (Appended as a block, with its own includes, while this file is edited
// concurrently; they can move to the top.)
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <mutex>

#include "common/aead.h"
#include "common/base64.h"
#include "daemon/audit.h"
#include "dmtools/token.h"

namespace vcrypt {
namespace {

using testing::RecordingAuditSink;

// "op result" of each record, e.g. "kek.fetch ok", in order.
std::vector<std::string> OpsOf(const std::vector<AuditRecord>& rs) {
  std::vector<std::string> out;
  for (const auto& r : rs)
    out.push_back(std::string(AuditOpName(r.op)) + " " +
                  (r.error ? std::string(ErrorCodeName(r.error->code)) : "ok"));
  return out;
}

// A self-signed EC certificate and its key (PEM), good enough for a
// standard provider to load: the KMS it names is never reached.
std::pair<std::string, std::string> SelfSignedPem() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("vcrypt-test"),
                             -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_sign(x, key, EVP_sha256());
  auto pem = [](auto write) {
    BIO* b = BIO_new(BIO_s_mem());
    write(b);
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);  // NOLINT(runtime/int)
    std::string s(p, static_cast<size_t>(n));
    BIO_free(b);
    return s;
  };
  std::string cert = pem([&](BIO* b) { PEM_write_bio_X509(b, x); });
  std::string key_pem = pem([&](BIO* b) {
    PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
  X509_free(x);
  EVP_PKEY_free(key);
  return {cert, key_pem};
}

std::string Hex(std::span<const uint8_t> bytes, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

// DaemonTest with the controller's audit records going to `audit_`.
class AuditDaemonTest : public DaemonTest {
 protected:
  void Configure(ControllerOptions& o) override { o.audit = audit_; }
  void Restart() {
    Stop();
    Start();
  }
  // Adds VM `vm` using provider `provider` with KEK ID `kek_id` to the
  // inventory, with the daemon stopped.
  void AddVmRecord(const std::string& vm, const std::string& provider,
                   const std::string& kek_id) {
    Stop();
    Json inv = Inventory();
    inv["vms"][vm] = {{"provider", provider},
                      {"kek", {{"id", kek_id}, {"data", Json::object()}}},
                      {"auto_unlock", true},
                      {"created", "2026-01-01T00:00:00Z"},
                      {"disks", Json::object()}};
    ASSERT_TRUE(
        WriteFileAtomic(dir_ + "/state/inventory.json", inv.dump(2)).ok());
    Start();
  }
  Result<Json> CreateVolume(const std::string& vm, const std::string& disk) {
    return Call("volume.create", {{"vm", vm},
                                  {"disk", disk},
                                  {"file", dir_ + "/" + vm + "-" + disk + ".img"},
                                  {"size", 40u << 20}});
  }
  static SecureBuffer Password(const std::string& pw) {
    return SecureBuffer::CopyOf(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(pw.data()), pw.size()));
  }

  std::shared_ptr<RecordingAuditSink> audit_ =
      std::make_shared<RecordingAuditSink>();
};

// One record per key operation, with who, what and on what; operations
// that touch no key (list, show, status, a refused request) none.
TEST_F(AuditDaemonTest, EachKeyOperationIsAudited) {
  if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
  const uid_t uid = geteuid();  // SO_PEERCRED of this process

  auto r = Call("provider.add", {{"type", "native"}, {"name", "p1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string pk_id = (*r)["primary_key_id"];
  auto rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"provider.add ok"});
  EXPECT_EQ(rs[0].uid, uid);
  EXPECT_EQ(rs[0].request, "provider.add");
  EXPECT_EQ(rs[0].provider, "p1");
  EXPECT_EQ(rs[0].primary_key_id, pk_id);

  r = Call("vm.create", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string kek_id = (*r)["kek_id"];
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.create ok"});
  EXPECT_EQ(FormatAuditLine(rs[0]),
            "vcrypt-audit: uid=" + std::to_string(uid) +
                " op=kek.create request=vm.create vm=vm1 provider=p1 kek_id=" +
                kek_id + " result=ok");

  // The KEK just made is cached: the volume's fetch is a cache hit.
  r = CreateVolume("vm1", "d0");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string uuid0 = (*r)["uuid"];
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), (std::vector<std::string>{"kek.fetch ok", "dek.wrap ok"}));
  EXPECT_EQ(FormatAuditLine(rs[0]),
            "vcrypt-audit: uid=" + std::to_string(uid) +
                " op=kek.fetch request=volume.create vm=vm1 disk=d0 provider=p1"
                " kek_id=" + kek_id + " source=cache result=ok");
  EXPECT_EQ(FormatAuditLine(rs[1]),
            "vcrypt-audit: uid=" + std::to_string(uid) +
                " op=dek.wrap request=volume.create vm=vm1 disk=d0 volume=" +
                uuid0 + " provider=p1 kek_id=" + kek_id + " result=ok");

  // After a restart the cache is empty: the provider produces it.
  Restart();
  r = CreateVolume("vm1", "d1");
  ASSERT_TRUE(r.ok()) << r.error().message;
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), (std::vector<std::string>{"kek.fetch ok", "dek.wrap ok"}));
  EXPECT_EQ(rs[0].source, "provider");
  EXPECT_EQ(rs[1].volume, (*r)["uuid"]);
  EXPECT_EQ(rs[1].disk, "d1");

  // Nothing here touches a key.
  ASSERT_TRUE(Call("status").ok());
  ASSERT_TRUE(Call("vm.show", {{"vm", "vm1"}}).ok());
  ASSERT_TRUE(Call("provider.list").ok());
  EXPECT_FALSE(Call("vm.create", {{"vm", "vm1"}}).ok());  // exists
  EXPECT_FALSE(Call("volume.create", {{"vm", "nope"}, {"disk", "d0"},
                                      {"file", dir_ + "/x.img"}, {"size", 1 << 20}})
                   .ok());
  EXPECT_EQ(OpsOf(audit_->Take()), std::vector<std::string>{});

  // Without device-mapper an open stops before any key is fetched.
  if (!DeviceMapperAvailable()) {
    EXPECT_EQ(Call("open", {{"vm", "vm1"}, {"disk", "d0"}}).error().code,
              ErrorCode::kNoDeviceMapper);
    EXPECT_EQ(OpsOf(audit_->Take()), std::vector<std::string>{});
  }

  r = Call("cache.evict", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["evicted"], 1);
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.evict ok"});
  EXPECT_EQ(FormatAuditLine(rs[0]),
            "vcrypt-audit: uid=" + std::to_string(uid) +
                " op=kek.evict request=cache.evict vm=vm1 provider=p1 kek_id=" +
                kek_id + " result=ok");
  // Nothing cached, nothing evicted, nothing audited.
  ASSERT_TRUE(Call("cache.evict").ok());
  EXPECT_EQ(OpsOf(audit_->Take()), std::vector<std::string>{});

  // Backup, and restores that fail: a wrong password, the same key twice.
  SecureBuffer pw = Password("correct horse");
  auto b = Call("provider.backup", {{"name", "p1"}}, &pw);
  ASSERT_TRUE(b.ok()) << b.error().message;
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"provider.backup ok"});
  EXPECT_EQ(FormatAuditLine(rs[0]),
            "vcrypt-audit: uid=" + std::to_string(uid) +
                " op=provider.backup request=provider.backup provider=p1"
                " primary_key_id=" + pk_id + " result=ok");
  SecureBuffer wrong = Password("wrong");
  EXPECT_EQ(Call("provider.restore", {{"name", "p2"}, {"p12", (*b)["p12"]}}, &wrong)
                .error()
                .code,
            ErrorCode::kCrypto);
  EXPECT_EQ(Call("provider.restore", {{"name", "p2"}, {"p12", (*b)["p12"]}}, &pw)
                .error()
                .code,
            ErrorCode::kExists);
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), (std::vector<std::string>{"provider.restore crypto",
                                                 "provider.restore exists"}));
  EXPECT_EQ(rs[0].provider, "p2");
  EXPECT_TRUE(rs[0].primary_key_id.empty()) << "the backup did not open";
  EXPECT_EQ(rs[1].primary_key_id, pk_id);
  EXPECT_NE(FormatAuditLine(rs[1]).find(
                " result=exists error=\"this backup's primary key is already "
                "configured as provider 'p1'\""),
            std::string::npos)
      << FormatAuditLine(rs[1]);

  // Delete with --destroy-key: the KEK is destroyed, then evicted.
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm2"}}).ok());
  const std::string kek2 = audit_->Take().at(0).kek_id;
  ASSERT_TRUE(Call("vm.delete", {{"vm", "vm2"}, {"destroy_key", true}}).ok());
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), (std::vector<std::string>{"kek.destroy ok", "kek.evict ok"}));
  for (const auto& rec : rs) {
    EXPECT_EQ(rec.request, "vm.delete");
    EXPECT_EQ(rec.vm, "vm2");
    EXPECT_EQ(rec.kek_id, kek2);
  }

  // Unregister evicts what is cached; removing the provider destroys its
  // primary key.
  ASSERT_TRUE(CreateVolume("vm1", "d2").ok());  // caches vm1's KEK again
  audit_->Take();
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vm1"}}).ok());
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.evict ok"});
  EXPECT_EQ(rs[0].request, "vm.unregister");
  EXPECT_EQ(rs[0].kek_id, kek_id);
  EXPECT_FALSE(Call("provider.remove", {{"name", "p1"}}).ok());  // needs --force
  EXPECT_EQ(OpsOf(audit_->Take()), std::vector<std::string>{});
  ASSERT_TRUE(Call("provider.remove", {{"name", "p1"}, {"force", true}}).ok());
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"provider.remove ok"});
  EXPECT_EQ(rs[0].primary_key_id, pk_id);

  // vcryptd evicts what is left when it stops, as request=shutdown.
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p3"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm3"}}).ok());
  audit_->Take();
  EXPECT_EQ(controller_->EvictAllOnShutdown(), 1u);
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.evict ok"});
  EXPECT_EQ(rs[0].request, "shutdown");
  EXPECT_EQ(rs[0].vm, "vm3");
}

// Failed key operations are audited with the error code and message: a
// KMS that does not answer, a provider that is not configured.
TEST_F(AuditDaemonTest, FailuresAreAudited) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}}).ok());
  // A standard provider whose only KMS refuses connections (port 1 on
  // loopback), and a VM whose KEK lives there; a VM whose provider is gone.
  Stop();
  const std::string kms_dir = dir_ + "/state/providers/kms";
  ASSERT_TRUE(fs::create_directory(kms_dir));
  auto [cert, key] = SelfSignedPem();
  ASSERT_TRUE(WriteFileAtomic(kms_dir + "/ca.pem", cert).ok());
  ASSERT_TRUE(WriteFileAtomic(kms_dir + "/cert.pem", cert).ok());
  ASSERT_TRUE(WriteFileAtomic(kms_dir + "/key.pem", key).ok());
  ASSERT_TRUE(WriteFileAtomic(kms_dir + "/config.json",
                              Json{{"version", 1},
                                   {"type", "standard"},
                                   {"name", "kms"},
                                   {"servers", {"127.0.0.1:1"}},
                                   {"connect_timeout_ms", 2000},
                                   {"io_timeout_ms", 2000}}
                                  .dump())
                  .ok());
  Start();
  AddVmRecord("vmk", "kms", "42");
  AddVmRecord("vmx", "gone", "7");
  audit_->Take();

  auto r = CreateVolume("vmk", "d0");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable) << r.error().message;
  EXPECT_FALSE(fs::exists(dir_ + "/vmk-d0.img"));
  auto rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.fetch key_unavailable"});
  EXPECT_EQ(rs[0].vm, "vmk");
  EXPECT_EQ(rs[0].disk, "d0");
  EXPECT_EQ(rs[0].provider, "kms");
  EXPECT_EQ(rs[0].kek_id, "42");
  EXPECT_EQ(rs[0].source, "provider");
  EXPECT_EQ(rs[0].error->message, r.error().message);
  const std::string line = FormatAuditLine(rs[0]);
  EXPECT_EQ(line.rfind("vcrypt-audit: uid=" + std::to_string(geteuid()) +
                           " op=kek.fetch request=volume.create vm=vmk disk=d0"
                           " provider=kms kek_id=42 source=provider"
                           " result=key_unavailable error=\"",
                       0),
            0u)
      << line;
  EXPECT_NE(line.find("127.0.0.1:1"), std::string::npos) << line;

  // Destroying a KEK on an unreachable KMS fails, audited; the VM stays.
  r = Call("vm.delete", {{"vm", "vmk"}, {"destroy_key", true}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.destroy key_unavailable"});
  EXPECT_EQ(rs[0].kek_id, "42");
  EXPECT_EQ(rs[0].provider, "kms");
  EXPECT_TRUE(Call("vm.show", {{"vm", "vmk"}}).ok());

  // A provider that is not configured cannot produce the KEK either.
  r = CreateVolume("vmx", "d0");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  rs = audit_->Take();
  ASSERT_EQ(OpsOf(rs), std::vector<std::string>{"kek.fetch key_unavailable"});
  EXPECT_EQ(rs[0].provider, "gone");
  EXPECT_EQ(rs[0].kek_id, "7");
  EXPECT_TRUE(rs[0].source.empty()) << "nothing was asked";
}

// The audit lines name keys by ID only: no byte of the native primary key,
// a KEK or a DEK, raw or as hex or base64, in any line or journal field.
TEST_F(AuditDaemonTest, AuditLinesHoldNoKeyBytes) {
  if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  auto r = Call("vm.create", {{"vm", "vm1"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string kek_id = (*r)["kek_id"];
  r = CreateVolume("vm1", "d0");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const std::string uuid = (*r)["uuid"];
  Restart();
  ASSERT_TRUE(CreateVolume("vm1", "d1").ok());  // fetched from the provider
  SecureBuffer pw = Password("correct horse");
  auto b = Call("provider.backup", {{"name", "p1"}}, &pw);
  ASSERT_TRUE(b.ok()) << b.error().message;
  (void)Call("provider.restore", {{"name", "p2"}, {"p12", (*b)["p12"]}}, &pw);

  // The keys, as this host holds them.
  auto primary = ReadFile(dir_ + "/state/providers/p1/primary.key");
  ASSERT_TRUE(primary.ok()) << primary.error().message;
  ASSERT_EQ(primary->size(), 32u);
  auto kek = controller_->cache().Get("p1", kek_id);
  ASSERT_TRUE(kek.has_value()) << "vm1's KEK is cached";
  auto hdr = ReadHeader(dir_ + "/vm1-d0.img");
  ASSERT_TRUE(hdr.ok() && hdr->token_json) << "vm1/d0 has a vcrypt token";
  auto token = VcryptToken::Parse(*hdr->token_json);
  ASSERT_TRUE(token.ok()) << token.error().message;
  auto dek = UnwrapKey(*kek, token->dek, DekAad(uuid, kek_id, "p1"));
  ASSERT_TRUE(dek.ok()) << dek.error().message;

  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vm1"}}).ok());  // kek.evict
  ASSERT_TRUE(Call("provider.remove", {{"name", "p1"}, {"force", true}}).ok());

  std::vector<std::string> texts;  // every line and every journal field
  for (const auto& rec : audit_->records()) {
    texts.push_back(FormatAuditLine(rec));
    for (const auto& [name, value] : AuditFields(rec))
      texts.push_back(AuditEscape(value));
  }
  ASSERT_GE(audit_->records().size(), 10u);
  // Not vacuous: the lines do name the keys, by ID.
  EXPECT_NE(std::find_if(texts.begin(), texts.end(),
                         [&](const std::string& t) {
                           return t.find("kek_id=" + kek_id) != std::string::npos;
                         }),
            texts.end());

  auto forms = [](std::span<const uint8_t> key) {
    std::string b64 = Base64Encode(key);
    std::string b64_bare = b64.substr(0, b64.find('='));
    return std::vector<std::string>{
        std::string(reinterpret_cast<const char*>(key.data()), key.size()),
        Hex(key, false), Hex(key, true), b64, b64_bare};
  };
  const std::vector<std::pair<std::string, std::vector<std::string>>> keys = {
      {"primary key",
       forms(std::span<const uint8_t>(
           reinterpret_cast<const uint8_t*>(primary->data()), primary->size()))},
      {"KEK", forms(kek->span())},
      {"DEK", forms(dek->span())},
  };
  for (const auto& [what, needles] : keys)
    for (const auto& needle : needles)
      for (const auto& t : texts)
        EXPECT_EQ(t.find(needle), std::string::npos) << what << " in: " << t;
}

}  // namespace
}  // namespace vcrypt
