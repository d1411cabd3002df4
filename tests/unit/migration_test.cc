// Live migration through vcryptd (daemon/ops_migration.h): vm.incoming on
// the destination, vm.depart on the source, and what the boot path makes
// of a VM that left. Two real vcryptd (Controller + Server on their own
// state directories and sockets) stand for two hosts; image files in one
// directory stand for the shared storage. Needs root (formatting a volume
// file goes through libcryptsetup) and no device-mapper: nothing is
// opened here. The migration itself, with libvirt, QEMU and dm-crypt on
// two hosts, is tests/vm/pair_migration.sh.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "client/client.h"
#include "common/atomic_file.h"
#include "daemon/controller.h"
#include "daemon/server.h"
#include "tests/unit/recording_audit.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

using Recording = testing::RecordingAuditSink;

// One host: vcryptd on <dir>/<name>/{state,sock}.
class Host {
 public:
  Host(const std::string& dir, const std::string& name)
      : dir_(dir + "/" + name) {
    fs::create_directories(dir_);
    Start();
  }
  ~Host() { Stop(); }
  void Start() {
    ControllerOptions o;
    o.state_dir = dir_ + "/state";
    o.by_uuid_dir = dir_ + "/by-uuid";
    o.audit = audit;
    auto c = Controller::Create(o);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(c).value();
    ServerOptions so;
    so.socket_path = dir_ + "/sock";
    server_ = std::make_unique<Server>(controller_.get(), so,
                                       [](const std::string&) {});
    ASSERT_TRUE(server_->Listen().ok());
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
    auto c = Client::Connect(dir_ + "/sock");
    if (!c.ok()) return std::move(c).error();
    return c->Call(op, args, secret);
  }
  bool Cached(const std::string& vm) {
    auto st = Call("status");
    EXPECT_TRUE(st.ok());
    for (const auto& e : (*st)["kek_cache"])
      if (e["vm"] == vm) return true;
    return false;
  }

  std::shared_ptr<Recording> audit = std::make_shared<Recording>();

 private:
  std::string dir_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

SecureBuffer Password() {
  static const char kPw[] = "correct horse battery";
  return SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(kPw), sizeof kPw - 1));
}

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
    char t[] = "/tmp/vcrypt-migration-test-XXXXXX";
    dir_ = mkdtemp(t);
    a_ = std::make_unique<Host>(dir_, "a");
    b_ = std::make_unique<Host>(dir_, "b");
    // Host A: a native provider, VM web with two image-file volumes.
    ASSERT_TRUE(
        a_->Call("provider.add", {{"type", "native"}, {"name", "local"}}).ok());
    auto vm = a_->Call("vm.create", {{"vm", "web"}});
    ASSERT_TRUE(vm.ok()) << vm.error().message;
    kek_id_ = (*vm)["kek_id"];
    for (const char* d : {"os", "data"}) {
      auto r = a_->Call("volume.create", {{"vm", "web"},
                                          {"disk", d},
                                          {"file", Image(d)},
                                          {"size", 20u << 20}});
      ASSERT_TRUE(r.ok()) << r.error().message;
      uuids_[d] = (*r)["uuid"];
    }
  }
  void TearDown() override {
    b_.reset();
    a_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string Image(const std::string& disk) {
    return dir_ + "/" + disk + ".img";
  }
  // What the hook sends: the domain metadata's volumes of VM web.
  Json Volumes() {
    Json v = Json::array();
    for (const char* d : {"os", "data"})
      v.push_back({{"disk", d}, {"uuid", uuids_[d]}, {"image", Image(d)}});
    return v;
  }
  // The native primary key, streamed from A to B (provider backup/restore).
  void PushPrimaryKey() {
    SecureBuffer pw = Password();
    auto b = a_->Call("provider.backup", {{"name", "local"}}, &pw);
    ASSERT_TRUE(b.ok()) << b.error().message;
    auto r = b_->Call("provider.restore",
                      {{"name", "local"}, {"p12", (*b)["p12"]}}, &pw);
    ASSERT_TRUE(r.ok()) << r.error().message;
  }

  std::string dir_;
  std::unique_ptr<Host> a_, b_;
  std::string kek_id_;
  std::map<std::string, std::string> uuids_;
};

// Without the primary key, the destination refuses, naming the volume, the
// provider and its primary key ID, and keeps nothing.
TEST_F(MigrationTest, DestinationWithoutTheProviderRefusesAndKeepsNothing) {
  ASSERT_TRUE(
      b_->Call("provider.add", {{"type", "native"}, {"name", "other"}}).ok());
  auto pl = a_->Call("provider.list");
  const std::string pk = (*pl)["providers"][0]["primary_key_id"];
  auto r = b_->Call("vm.incoming", {{"vm", "web"}, {"volumes", Volumes()}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_EQ(r.error().message.rfind("web/os: native provider 'local' with "
                                    "primary key " +
                                        pk + " is not configured on this host",
                                    0),
            0u)
      << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  EXPECT_EQ(b_->Call("vm.show", {{"vm", "web"}}).error().code,
            ErrorCode::kNotFound);
  EXPECT_FALSE(b_->Cached("web"));
}

// The check fetches and proves the KEK, records nothing, and leaves no KEK
// of a VM this host does not know; register then records the VM from the
// headers, here.
TEST_F(MigrationTest, CheckThenRegisterOnTheDestination) {
  PushPrimaryKey();
  auto r = b_->Call("vm.incoming", {{"vm", "web"}, {"volumes", Volumes()}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["kek_id"], kek_id_);
  EXPECT_EQ((*r)["registered"], false);
  EXPECT_EQ(b_->Call("vm.show", {{"vm", "web"}}).error().code,
            ErrorCode::kNotFound);
  EXPECT_FALSE(b_->Cached("web"));
  bool fetched = false, unwrapped = 0;
  for (const auto& rec : b_->audit->Take()) {
    fetched =
        fetched || (rec.op == AuditOp::kKekFetch && rec.source == "provider");
    unwrapped = unwrapped || rec.op == AuditOp::kDekUnwrap;
  }
  EXPECT_TRUE(fetched);
  EXPECT_TRUE(unwrapped);

  r = b_->Call("vm.incoming",
               {{"vm", "web"}, {"volumes", Volumes()}, {"register", true}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["registered"], true);
  auto show = b_->Call("vm.show", {{"vm", "web"}});
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["kek_id"], kek_id_);
  EXPECT_EQ((*show)["disks"].size(), 2u);
  EXPECT_FALSE(show->contains("away_since"));
  EXPECT_TRUE(b_->Cached("web"));
}

// The source after the domain left: KEK evicted (audited, reason
// migrated), VM away, and the boot path leaves it alone until it comes
// back.
TEST_F(MigrationTest, DepartEvictsMarksAwayAndTheBootPathSkipsIt) {
  ASSERT_TRUE(a_->Cached("web"));
  a_->audit->Take();
  auto r = a_->Call("vm.depart", {{"vm", "web"}, {"reason", "migrated"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["departed"], true);
  EXPECT_EQ((*r)["evicted"], 1);
  EXPECT_FALSE(a_->Cached("web"));
  auto records = a_->audit->Take();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].op, AuditOp::kKekEvict);
  EXPECT_EQ(records[0].reason, "migrated");
  EXPECT_EQ(records[0].kek_id, kek_id_);
  EXPECT_NE(FormatAuditLine(records[0]).find(" reason=migrated "),
            std::string::npos)
      << FormatAuditLine(records[0]);

  auto show = a_->Call("vm.show", {{"vm", "web"}});
  ASSERT_TRUE(show->contains("away_since"));
  // The boot path: vcryptctl unlock's open, and open --all.
  auto o = a_->Call(
      "open", {{"vm", "web"}, {"disk", "os"}, {"auto", true}, {"boot", true}});
  ASSERT_TRUE(o.ok()) << o.error().message;
  EXPECT_EQ(*o, (Json{{"vm", "web"}, {"skipped", "away"}}));
  auto all = a_->Call("open_all", {{"auto", true}});
  ASSERT_TRUE(all.ok()) << all.error().message;
  EXPECT_TRUE((*all)["volumes"].empty()) << all->dump();
  EXPECT_FALSE(a_->Cached("web"));  // nothing fetched its KEK

  // Across a restart (a reboot) too.
  a_->Stop();
  a_->Start();
  EXPECT_TRUE((*a_->Call("vm.show", {{"vm", "web"}})).contains("away_since"));

  // Back by hand: vm set --away off.
  r = a_->Call("vm.set", {{"vm", "web"}, {"away", false}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["away"], false);
  EXPECT_FALSE((*a_->Call("vm.show", {{"vm", "web"}})).contains("away_since"));
}

// Coming back by migration clears away, and KEK changes made elsewhere (a
// rekey on the other host) are taken from the headers.
TEST_F(MigrationTest, ComingBackClearsAwayAndFollowsTheHeaders) {
  PushPrimaryKey();
  ASSERT_TRUE(
      a_->Call("vm.depart", {{"vm", "web"}, {"reason", "migrated"}}).ok());
  ASSERT_TRUE(
      b_->Call("vm.incoming",
               {{"vm", "web"}, {"volumes", Volumes()}, {"register", true}})
          .ok());
  auto rk = b_->Call("vm.rekey", {{"vm", "web"}});
  ASSERT_TRUE(rk.ok()) << rk.error().message;
  const std::string new_kek = (*rk)["kek_id"];
  ASSERT_NE(new_kek, kek_id_);
  ASSERT_TRUE(
      b_->Call("vm.depart", {{"vm", "web"}, {"reason", "migrated"}}).ok());

  auto r = a_->Call("vm.incoming", {{"vm", "web"}, {"volumes", Volumes()}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["kek_id"], new_kek);
  // A check alone does not bring it back.
  EXPECT_TRUE((*a_->Call("vm.show", {{"vm", "web"}})).contains("away_since"));
  r = a_->Call("vm.incoming",
               {{"vm", "web"}, {"volumes", Volumes()}, {"register", true}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)["registered"], false);
  auto show = *a_->Call("vm.show", {{"vm", "web"}});
  EXPECT_FALSE(show.contains("away_since"));
  EXPECT_EQ(show["kek_id"], new_kek);
}

// The domain XML is anyone-with-libvirt-access's input: every field is
// checked, and a header decides what a volume is.
TEST_F(MigrationTest, HostileIncomingRequestsAreRefused) {
  PushPrimaryKey();
  auto code = [&](const Json& args) {
    auto r = b_->Call("vm.incoming", args);
    return r.ok() ? std::string("ok")
                  : std::string(ErrorCodeName(r.error().code));
  };
  Json vols = Volumes();
  auto with = [&](const std::string& key, const Json& value) {
    Json v = vols;
    v[0][key] = value;
    return Json{{"vm", "web"}, {"volumes", v}};
  };
  EXPECT_EQ(code(with("uuid", "not-a-uuid")), "invalid_argument");
  EXPECT_EQ(code(with("image", "relative.img")), "invalid_argument");
  EXPECT_EQ(code(with("image", dir_ + "/../" + dir_ + "/os.img")),
            "invalid_argument");
  EXPECT_EQ(code(with("disk", "../x")), "invalid_argument");
  EXPECT_EQ(code(with("uuid", 7)), "usage");
  EXPECT_EQ(code({{"vm", "../web"}, {"volumes", vols}}), "invalid_argument");
  EXPECT_EQ(code({{"vm", "web"}, {"volumes", Json::array()}}), "usage");
  Json many = Json::array();
  for (int i = 0; i < 65; ++i)
    many.push_back({{"disk", "d" + std::to_string(i)},
                    {"uuid", uuids_["os"]},
                    {"image", Image("os")}});
  EXPECT_EQ(code({{"vm", "web"}, {"volumes", many}}), "invalid_argument");
  // Listed twice.
  Json twice = Json::array({vols[0], vols[0]});
  EXPECT_EQ(code({{"vm", "web"}, {"volumes", twice}}), "invalid_argument");
  // The data volume's image named as the os disk: its header says
  // otherwise.
  Json swapped = vols;
  swapped[0]["image"] = Image("data");
  swapped[0]["uuid"] = uuids_["data"];
  swapped.erase(1);
  auto r = b_->Call("vm.incoming", {{"vm", "web"}, {"volumes", swapped}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
  EXPECT_NE(r.error().message.find("holds volume web/data, not web/os"),
            std::string::npos)
      << r.error().message;
  // Another VM's name for these volumes.
  EXPECT_EQ(code({{"vm", "mail"}, {"volumes", vols}}), "invalid_volume");
  // A UUID that is not the image's.
  EXPECT_EQ(code(with("uuid", "0b3e9a52-4c1d-4f0e-9a57-2f6b1d3c8e01")),
            "invalid_volume");
  // A missing image.
  EXPECT_EQ(code(with("image", dir_ + "/gone.img")), "not_found");
  // A block device this host has no by-uuid link for.
  Json block = vols;
  block[0].erase("image");
  r = b_->Call("vm.incoming", {{"vm", "web"}, {"volumes", block}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("web/os: no block device with LUKS UUID"),
            std::string::npos)
      << r.error().message;
  // None of it registered anything or left a KEK behind.
  EXPECT_EQ(b_->Call("vm.show", {{"vm", "web"}}).error().code,
            ErrorCode::kNotFound);
  EXPECT_FALSE(b_->Cached("web"));

  // vm.depart: known VMs and two reasons only.
  EXPECT_EQ(b_->Call("vm.depart", {{"vm", "web"}, {"reason", "migrated"}})
                .error()
                .code,
            ErrorCode::kNotFound);
  EXPECT_EQ(
      a_->Call("vm.depart", {{"vm", "web"}, {"reason", "bored"}}).error().code,
      ErrorCode::kInvalidArgument);
  EXPECT_TRUE(a_->Cached("web"));
}

}  // namespace
}  // namespace vcrypt
