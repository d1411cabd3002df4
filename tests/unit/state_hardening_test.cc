// vcryptd hardening of its state (issue 13, section 3, "Races on paths and
// state"): one daemon per state directory, providers with damaged files,
// backup and restore that neither collide on temporary files nor stall
// the daemon, and bounded key derivations in a backup.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/handles.h"
#include "daemon/controller.h"
#include "dmtools/volume.h"
#include "keyproviders/native/native_provider.h"
#include "tests/test_util.h"
#include "tests/unit/daemon_fixture.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using testing::DaemonTest;
using testing::TempDir;

SecureBuffer Secret(std::string_view s) {
  return SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

// ---- one vcryptd per state directory --------------------------------------

// The lock is an open file description lock, so even two Controllers in
// one process conflict (a POSIX record lock would not).
TEST(StateDirLockTest, TwoControllersOnOneStateDirCannotCoexist) {
  TempDir dir("statelock");
  ControllerOptions o;
  o.state_dir = dir / "state";
  auto first = Controller::Create(o);
  ASSERT_TRUE(first.ok()) << first.error().message;

  auto second = Controller::Create(o);
  ASSERT_FALSE(second.ok()) << "two controllers on one state directory";
  EXPECT_EQ(second.error().code, ErrorCode::kBusy);
  EXPECT_NE(second.error().message.find("pid " + std::to_string(getpid())),
            std::string::npos)
      << second.error().message;
  EXPECT_NE(second.error().message.find(o.state_dir), std::string::npos)
      << second.error().message;
  EXPECT_EQ(second.error().message.find('\n'), std::string::npos);

  // The lock file names the holder.
  auto text = ReadFile(o.state_dir + "/vcryptd.lock");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, std::to_string(getpid()) + "\n");

  // Another state directory is independent.
  ControllerOptions other = o;
  other.state_dir = dir / "other";
  EXPECT_TRUE(Controller::Create(other).ok());

  // Released with the Controller: a restart on the same directory works.
  first->reset();
  auto third = Controller::Create(o);
  ASSERT_TRUE(third.ok()) << third.error().message;
}

// A real second vcryptd process: exit code busy, one line naming the PID
// of the holder (this test process). Costs about 0.1 s.
TEST(StateDirLockTest, SecondVcryptdRefusesToStart) {
  if (geteuid() != 0)
    GTEST_SKIP() << "vcryptd locks memory for keys: needs root";
  TempDir dir("statelock");
  ControllerOptions o;
  o.state_dir = dir / "state";
  auto first = Controller::Create(o);
  ASSERT_TRUE(first.ok()) << first.error().message;

  const std::string err = dir / "err.txt";
  // Under timeout(1): a vcryptd that does start is stopped (exit 124).
  const std::string cmd = "timeout 10 " + std::string(VCRYPT_BINARY_DIR) +
                          "/daemon/vcryptd --state-dir " + o.state_dir +
                          " --socket " + (dir / "sock") + " 2>" + err;
  int st = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_EQ(WEXITSTATUS(st), static_cast<int>(ErrorCode::kBusy));
  auto text = ReadFile(err);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(testing::CountLines(*text), 1) << *text;
  EXPECT_NE(text->find("pid " + std::to_string(getpid())), std::string::npos)
      << *text;
  // It touched nothing of the running daemon's: no socket of its own.
  EXPECT_FALSE(fs::exists(dir / "sock"));
}

// ---- providers with damaged files -----------------------------------------

class DamagedProviderTest : public DaemonTest {
 protected:
  Json ProviderEntry(const Json& list, const std::string& name) {
    for (const auto& p : list)
      if (p["name"] == name) return p;
    ADD_FAILURE() << name << " not listed in " << list.dump();
    return Json();
  }
};

// Three native providers: "good" keeps working while "badkey" (primary.key
// cut short) and "badcfg" (config.json garbage) are reported unavailable.
// Formatting volume files needs root; runs in about a second.
TEST_F(DamagedProviderTest, DamagedProviderIsUnavailableAndOthersWork) {
  if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
  for (const char* p : {"good", "badkey", "badcfg"})
    ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", p}}).ok())
        << p;
  ASSERT_TRUE(Call("vm.create", {{"vm", "vmgood"}, {"provider", "good"}}).ok());
  ASSERT_TRUE(
      Call("vm.create", {{"vm", "vmbad"}, {"provider", "badkey"}}).ok());
  for (const char* vm : {"vmgood", "vmbad"}) {
    auto r = Call("volume.create", {{"vm", vm},
                                    {"disk", "d0"},
                                    {"file", dir_ + "/" + vm + "-d0.img"},
                                    {"size", 20u << 20}});
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  Stop();
  const std::string prov = dir_ + "/state/providers/";
  ASSERT_TRUE(
      WriteFileAtomic(prov + "badkey/primary.key", std::string("short")).ok());
  ASSERT_TRUE(
      WriteFileAtomic(prov + "badcfg/config.json", std::string("{garbage"))
          .ok());
  Start();  // asserts that the daemon starts

  auto list = Call("provider.list");
  ASSERT_TRUE(list.ok()) << list.error().message;
  Json good = ProviderEntry((*list)["providers"], "good");
  EXPECT_EQ(good["state"], "available") << good.dump();
  EXPECT_FALSE(good.contains("reason"));
  Json badkey = ProviderEntry((*list)["providers"], "badkey");
  EXPECT_EQ(badkey["state"], "unavailable") << badkey.dump();
  EXPECT_EQ(badkey["type"], "native");
  EXPECT_EQ(badkey["reason"]["code"], "invalid_argument") << badkey.dump();
  EXPECT_NE(badkey["reason"]["message"].get<std::string>().find("primary.key"),
            std::string::npos)
      << badkey.dump();
  Json badcfg = ProviderEntry((*list)["providers"], "badcfg");
  EXPECT_EQ(badcfg["state"], "unavailable") << badcfg.dump();
  EXPECT_NE(badcfg["reason"]["message"].get<std::string>().find("config.json"),
            std::string::npos)
      << badcfg.dump();
  // provider show and status say the same.
  auto show = Call("provider.show", {{"name", "badkey"}});
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["reason"], badkey["reason"]);
  auto st = Call("status");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(ProviderEntry((*st)["providers"], "badcfg")["reason"],
            badcfg["reason"]);

  // The good provider's VMs work: a new VM, and a new volume of an old VM
  // (which fetches its KEK from the provider: nothing is cached after the
  // restart).
  auto r = Call("vm.create", {{"vm", "vmnew"}, {"provider", "good"}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  r = Call("volume.create", {{"vm", "vmgood"},
                             {"disk", "d1"},
                             {"file", dir_ + "/vmgood-d1.img"},
                             {"size", 20u << 20}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  r = Call("open", {{"vm", "vmgood"}, {"disk", "d0"}});
  if (DeviceMapperAvailable()) {
    EXPECT_TRUE(r.ok()) << r.error().message;
    (void)Call("close", {{"vm", "vmgood"}, {"disk", "d0"}});
  } else {
    EXPECT_EQ(r.error().code, ErrorCode::kNoDeviceMapper) << r.error().message;
  }

  // The damaged provider's VMs fail with key_unavailable naming the reason.
  const std::string reason = badkey["reason"]["message"];
  for (const auto& [op, args] : std::vector<std::pair<std::string, Json>>{
           {"open", {{"vm", "vmbad"}, {"disk", "d0"}}},
           {"open", {{"path", dir_ + "/vmbad-d0.img"}}},
           {"volume.create",
            {{"vm", "vmbad"},
             {"disk", "d1"},
             {"file", dir_ + "/vmbad-d1.img"},
             {"size", 20u << 20}}},
           {"vm.create", {{"vm", "vmbad2"}, {"provider", "badkey"}}}}) {
    r = Call(op, args);
    ASSERT_FALSE(r.ok()) << op << " " << args.dump();
    EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable) << r.error().message;
    EXPECT_NE(r.error().message.find("'badkey'"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find(reason), std::string::npos)
        << r.error().message;
  }
  EXPECT_FALSE(fs::exists(dir_ + "/vmbad-d1.img"));
  EXPECT_EQ(Call("vm.show", {{"vm", "vmbad2"}}).error().code,
            ErrorCode::kNotFound);
  // No backup of a key that could not be read.
  SecureBuffer pw = Secret("pw");
  r = Call("provider.backup", {{"name", "badkey"}}, &pw);
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable) << r.error().message;

  // An unavailable provider can still be removed: with --force, as a native
  // one (its type is unknown when its config is unreadable).
  EXPECT_EQ(Call("provider.remove", {{"name", "badcfg"}}).error().code,
            ErrorCode::kExists);
  r = Call("provider.remove", {{"name", "badcfg"}, {"force", true}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(fs::exists(prov + "badcfg"));
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vmbad"}}).ok());
  r = Call("provider.remove", {{"name", "badkey"}, {"force", true}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  list = Call("provider.list");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)["providers"].size(), 1u) << list->dump();
}

}  // namespace
}  // namespace vcrypt
