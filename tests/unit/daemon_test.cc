// vcryptd end to end on the host, through the real socket and protocol:
// everything that needs no device-mapper. (Volume operations against a
// real dm-crypt are in tests/integration, run in the VM harness.)
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "cli/client.h"
#include "common/atomic_file.h"
#include "common/handles.h"
#include "daemon/controller.h"
#include "daemon/server.h"
#include "dmtools/volume.h"
#include "keyproviders/native/native_provider.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/vcrypt-daemon-test-XXXXXX";
    dir_ = mkdtemp(t);
    socket_ = dir_ + "/sock";
    Start();
  }
  void TearDown() override {
    Stop();
    fs::remove_all(dir_);
  }
  void Start() {
    ControllerOptions o;
    o.state_dir = dir_ + "/state";
    auto c = Controller::Create(o);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(c).value();
    ServerOptions so;
    so.socket_path = socket_;
    server_ = std::make_unique<Server>(controller_.get(), so, [](const std::string&) {});
    auto st = server_->Listen();
    ASSERT_TRUE(st.ok()) << st.error().message;
    thread_ = std::thread([this] { (void)server_->Run(); });
  }
  void Stop() {
    if (!server_) return;
    server_->Stop();
    thread_.join();
    server_.reset();
    controller_.reset();
  }
  Result<Json> Call(const std::string& op, const Json& args = Json::object(),
                    const SecureBuffer* secret = nullptr) {
    auto c = Client::Connect(socket_);
    if (!c.ok()) return std::move(c).error();
    return c->Call(op, args, secret);
  }
  // Every regular file under the state directory, concatenated.
  std::string AllStateBytes() {
    std::string all;
    for (auto& e : fs::recursive_directory_iterator(dir_ + "/state"))
      if (e.is_regular_file()) all += *ReadFile(e.path().string());
    return all;
  }

  std::string dir_, socket_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

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
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}}).ok());
  auto r = Call("open", {{"path", "/dev/null"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNoDeviceMapper);
  EXPECT_NE(r.error().message.find("device-mapper not available"), std::string::npos);
  // Status still works and says so.
  auto st = Call("status");
  ASSERT_TRUE(st.ok());
  EXPECT_FALSE((*st)["device_mapper"].get<bool>());
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

// SO_PEERCRED authorisation: a non-root uid that is not in the allowed
// group is refused even when the socket file itself is open to everyone.
TEST_F(DaemonTest, UnauthorisedUidIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to switch uid";
  ASSERT_EQ(chmod(socket_.c_str(), 0777), 0);
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(90);
    auto c = Client::Connect(socket_);
    if (!c.ok()) _exit(91);
    auto r = c->Call("status", Json::object());
    if (r.ok()) _exit(92);
    _exit(r.error().code == ErrorCode::kPermissionDenied ? 0 : 93);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace vcrypt
