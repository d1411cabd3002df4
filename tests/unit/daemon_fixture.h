// The fixture of the daemon-level unit tests: a real Controller behind a
// real Server on a UNIX socket in a temporary directory, called through
// the real client library (everything but device-mapper, which the host
// kernel lacks). Shared by daemon_test.cc and recovery_test.cc.
#ifndef VCRYPT_TESTS_UNIT_DAEMON_FIXTURE_H_
#define VCRYPT_TESTS_UNIT_DAEMON_FIXTURE_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "common/atomic_file.h"
#include "daemon/controller.h"
#include "daemon/server.h"

namespace vcrypt::testing {

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
    o.by_uuid_dir = dir_ + "/by-uuid";
    Configure(o);
    auto c = Controller::Create(o);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(c).value();
    ServerOptions so;
    so.socket_path = socket_;
    server_ = std::make_unique<Server>(controller_.get(), so, [this](const std::string& l) {
      std::lock_guard lock(log_mu_);
      log_ += l + "\n";
    });
    auto st = server_->Listen();
    ASSERT_TRUE(st.ok()) << st.error().message;
    thread_ = std::thread([this] { (void)server_->Run(); });
  }
  // A derived fixture adds to the options of every controller Start makes.
  virtual void Configure(ControllerOptions&) {}
  // vcryptd's request log lines so far.
  std::string ServerLog() {
    std::lock_guard lock(log_mu_);
    return log_;
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

  // Provider p1, VM vm1 and file-backed volumes vm1/<disk> (40 MiB
  // images in dir_). Formatting a file through libcryptsetup needs root.
  void MakeVolumes(const std::vector<std::string>& disks) {
    ASSERT_TRUE(
        Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
    ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}}).ok());
    for (const auto& d : disks) {
      auto r = Call("volume.create", {{"vm", "vm1"},
                                      {"disk", d},
                                      {"file", dir_ + "/" + d + ".img"},
                                      {"size", 40u << 20}});
      ASSERT_TRUE(r.ok()) << r.error().message;
    }
  }
  Json Inventory() {
    return Json::parse(*ReadFile(dir_ + "/state/inventory.json"));
  }
  // Rewrites the inventory with the daemon stopped.
  template <typename F>
  void EditInventory(F edit) {
    Stop();
    Json inv = Inventory();
    edit(inv);
    ASSERT_TRUE(
        WriteFileAtomic(dir_ + "/state/inventory.json", inv.dump(2)).ok());
    Start();
  }
  // The status entry of VM/DISK.
  Json DiskState(const std::string& vm, const std::string& disk) {
    auto st = Call("status");
    EXPECT_TRUE(st.ok()) << st.error().message;
    if (!st.ok()) return Json();
    for (const auto& v : (*st)["vms"])
      for (const auto& d : v["disks"])
        if (v["vm"] == vm && d["disk"] == disk) return d;
    ADD_FAILURE() << vm << "/" << disk << " not in status";
    return Json();
  }

  std::string dir_, socket_;
  std::mutex log_mu_;
  std::string log_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_DAEMON_FIXTURE_H_
