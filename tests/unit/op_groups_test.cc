// The Controller's op groups and shared helpers (daemon/controller.h,
// "Layout") built over a ControllerState of their own, without a
// Controller: a real state directory under /tmp, a real native provider,
// a recording audit sink. Needs no kernel; well under a second.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/atomic_file.h"
#include "daemon/controller_state.h"
#include "daemon/key_access.h"
#include "daemon/ops_providers.h"
#include "daemon/volume_locator.h"
#include "tests/test_util.h"
#include "tests/unit/recording_audit.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

using Recording = testing::RecordingAuditSink;

class OpGroupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ControllerOptions o;
    o.state_dir = dir_ / "state";
    o.by_uuid_dir = dir_ / "by-uuid";
    o.audit = audit_;
    ASSERT_TRUE(MakeDirs(o.state_dir, 0700).ok());
    auto lock = StateDirLock::Acquire(o.state_dir);
    ASSERT_TRUE(lock.ok()) << lock.error().message;
    auto store = StateStore::Open(o.state_dir);
    ASSERT_TRUE(store.ok()) << store.error().message;
    state_ = std::make_unique<ControllerState>(
        std::move(o), std::move(lock).value(), std::move(store).value());
    keys_ = std::make_unique<KeyAccess>(*state_);
    providers_ = std::make_unique<ProviderOps>(*state_, *keys_);
  }

  // A native provider `name`, added through ProviderOps.
  std::shared_ptr<KeyProvider> AddNative(const std::string& name) {
    auto r = providers_->ProviderAdd(Json{{"type", "native"}, {"name", name}},
                                     SecureBuffer(), ctx_);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return state_->FindProvider(name);
  }

  testing::TempDir dir_{"opgroups"};
  std::shared_ptr<Recording> audit_ = std::make_shared<Recording>();
  const AuditContext ctx_{0, "test"};
  std::unique_ptr<ControllerState> state_;
  std::unique_ptr<KeyAccess> keys_;
  std::unique_ptr<ProviderOps> providers_;
};

TEST_F(OpGroupsTest, ProviderOpsAddAndRemoveOverTheSharedState) {
  ASSERT_NE(AddNative("local"), nullptr);
  EXPECT_EQ(state_->store.default_provider(), "local");
  EXPECT_TRUE(std::filesystem::exists(state_->store.ProviderDir("local")));
  auto records = audit_->Take();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].op, AuditOp::kProviderAdd);
  EXPECT_EQ(records[0].provider, "local");
  EXPECT_FALSE(records[0].primary_key_id.empty());

  // A KEK of this provider in the cache goes with it.
  auto p = state_->FindProvider("local");
  auto kek = p->CreateKek("vm1");
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  state_->cache.Put("local", kek->ref.kek_id, "vm1", kek->kek.Clone());

  // A native provider's primary key goes only with --force.
  auto refused = providers_->ProviderRemove(Json{{"name", "local"}}, ctx_);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kExists);
  EXPECT_NE(state_->FindProvider("local"), nullptr);

  auto removed = providers_->ProviderRemove(
      Json{{"name", "local"}, {"force", true}}, ctx_);
  ASSERT_TRUE(removed.ok()) << removed.error().message;
  EXPECT_EQ((*removed)["evicted"], 1);
  EXPECT_EQ(state_->FindProvider("local"), nullptr);
  EXPECT_FALSE(state_->store.default_provider().has_value());
  EXPECT_FALSE(std::filesystem::exists(state_->store.ProviderDir("local")));
  EXPECT_FALSE(state_->cache.Contains("local", kek->ref.kek_id));
  records = audit_->Take();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].op, AuditOp::kProviderRemove);
  EXPECT_EQ(records[1].op, AuditOp::kKekEvict);
  EXPECT_EQ(records[1].kek_id, kek->ref.kek_id);
}

TEST_F(OpGroupsTest, KeyAccessFetchesFromTheProviderOnceThenFromTheCache) {
  auto p = AddNative("local");
  ASSERT_NE(p, nullptr);
  auto kek = p->CreateKek("vm1");
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  audit_->Take();

  AuditRecord audit = AuditRecord::For(ctx_, AuditOp::kKekFetch);
  audit.vm = "vm1";
  auto first = keys_->GetKek(*p, kek->ref, audit);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE(first->Equals(kek->kek));
  auto second = keys_->GetKek(*p, kek->ref, audit);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_TRUE(second->Equals(kek->kek));
  auto records = audit_->Take();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].source, "provider");
  EXPECT_EQ(records[1].source, "cache");
  for (const auto& r : records) {
    EXPECT_EQ(r.op, AuditOp::kKekFetch);
    EXPECT_EQ(r.vm, "vm1");
    EXPECT_EQ(r.provider, "local");
    EXPECT_EQ(r.kek_id, kek->ref.kek_id);
    EXPECT_FALSE(r.error.has_value());
  }
  // Cached under the VM the audit record names.
  auto cached = state_->cache.List();
  ASSERT_EQ(cached.size(), 1u);
  EXPECT_EQ(cached[0].vm, "vm1");

  // Evictions are returned for the caller to audit, not written.
  auto evicted = keys_->EvictKeks(
      ctx_, [](const KekCache::EntryInfo& e) { return e.vm == "vm1"; });
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0].op, AuditOp::kKekEvict);
  EXPECT_TRUE(audit_->Take().empty());
  EXPECT_TRUE(state_->cache.List().empty());
}

TEST_F(OpGroupsTest, VolumeLocatorResolvesThroughTheInventory) {
  VmRecord vm;
  vm.provider = "local";
  vm.kek.kek_id = "k1";
  vm.disks["root"] = DiskRecord{dir_ / "root.img", true,
                                "0123abcd-4567-89ef-0123-456789abcdef", 4096};
  ASSERT_TRUE(state_->store.PutVm("vm1", vm).ok());
  VolumeLocator locator(*state_);

  auto byname = locator.ResolveTarget(Json{{"vm", "vm1"}, {"disk", "root"}});
  ASSERT_TRUE(byname.ok()) << byname.error().message;
  EXPECT_EQ(byname->device, dir_ / "root.img");
  EXPECT_EQ(byname->uuid, vm.disks["root"].uuid);
  EXPECT_TRUE(byname->is_file);
  EXPECT_EQ(byname->vm, "vm1");
  EXPECT_EQ(byname->disk, "root");

  // A path the inventory knows is that volume's, though not named so.
  auto bypath = locator.ResolveTarget(Json{{"path", dir_ / "root.img"}});
  ASSERT_TRUE(bypath.ok()) << bypath.error().message;
  EXPECT_EQ(bypath->uuid, vm.disks["root"].uuid);
  EXPECT_FALSE(bypath->vm.has_value());
  auto unknown_path = locator.ResolveTarget(Json{{"path", dir_ / "x.img"}});
  ASSERT_TRUE(unknown_path.ok());
  EXPECT_FALSE(unknown_path->uuid.has_value());

  auto no_vm = locator.ResolveTarget(Json{{"vm", "vm2"}, {"disk", "root"}});
  ASSERT_FALSE(no_vm.ok());
  EXPECT_EQ(no_vm.error().code, ErrorCode::kNotFound);
  auto no_disk = locator.ResolveTarget(Json{{"vm", "vm1"}, {"disk", "data"}});
  ASSERT_FALSE(no_disk.ok());
  EXPECT_EQ(no_disk.error().code, ErrorCode::kNotFound);
  auto relative = locator.ResolveTarget(Json{{"path", "root.img"}});
  ASSERT_FALSE(relative.ok());
  EXPECT_EQ(relative.error().code, ErrorCode::kInvalidArgument);

  // VM/DISK whose image is gone: not found, and no by-uuid link is
  // looked for an image file.
  auto located = locator.LocateVolume(&*byname);
  ASSERT_FALSE(located.ok());
  EXPECT_EQ(located.error().code, ErrorCode::kNotFound);
  EXPECT_NE(located.error().message.find("does not exist"), std::string::npos)
      << located.error().message;
}

}  // namespace
}  // namespace vcrypt
