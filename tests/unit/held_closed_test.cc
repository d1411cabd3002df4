// The record that keeps a volume an admin closed closed against the boot
// path (daemon/held_closed.h). The device identity and the boot id are
// injected here; the VM boot test (tests/systemd/boot_test.sh) checks the
// whole path under systemd with real udev events.
#include "daemon/held_closed.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "tests/test_util.h"

namespace vcrypt {
namespace {

constexpr char kUuid[] = "0b3e7f0c-9d1a-4c55-8a8e-2f5d1c3b9a77";

class HeldClosedTest : public ::testing::Test {
 protected:
  HeldClosed Make(const std::string& boot) {
    return HeldClosed(
        dir_.path() + "/held-closed",
        [this](const std::string& dev) -> std::optional<std::string> {
          auto it = devices_.find(dev);
          if (it == devices_.end()) return std::nullopt;
          return it->second;
        },
        boot);
  }
  testing::TempDir dir_{"held"};
  std::map<std::string, std::string> devices_ = {{"/dev/vdb", "diskseq:7"}};
};

TEST_F(HeldClosedTest, AClosedVolumeStaysClosedOnThisBootOnThisDevice) {
  HeldClosed h = Make("boot-1");
  EXPECT_FALSE(h.IsHeld(kUuid, "/dev/vdb"));
  ASSERT_TRUE(h.Hold(kUuid, "/dev/vdb").ok());
  EXPECT_TRUE(h.IsHeld(kUuid, "/dev/vdb"));
  // A vcryptd restart reads the same record.
  EXPECT_TRUE(Make("boot-1").IsHeld(kUuid, "/dev/vdb"));
  // Another volume is not held.
  EXPECT_FALSE(h.IsHeld("11111111-2222-3333-4444-555555555555", "/dev/vdb"));
}

TEST_F(HeldClosedTest, TheNextBootAHotplugOrAnExplicitOpenEndIt) {
  HeldClosed h = Make("boot-1");
  ASSERT_TRUE(h.Hold(kUuid, "/dev/vdb").ok());
  EXPECT_FALSE(Make("boot-2").IsHeld(kUuid, "/dev/vdb")) << "next boot";
  devices_["/dev/vdb"] = "diskseq:8";  // removed and plugged in again
  EXPECT_FALSE(h.IsHeld(kUuid, "/dev/vdb")) << "device appeared anew";
  devices_["/dev/vdb"] = "diskseq:7";
  EXPECT_TRUE(h.IsHeld(kUuid, "/dev/vdb"));
  ASSERT_TRUE(h.Release(kUuid).ok());
  EXPECT_FALSE(h.IsHeld(kUuid, "/dev/vdb")) << "explicit open";
  EXPECT_TRUE(h.Release(kUuid).ok()) << "releasing twice is fine";
}

TEST_F(HeldClosedTest, RecordsOfEarlierBootsAreForgotten) {
  const std::string other = "11111111-2222-3333-4444-555555555555";
  ASSERT_TRUE(Make("boot-1").Hold(kUuid, "/dev/vdb").ok());
  ASSERT_TRUE(Make("boot-2").Hold(other, "/dev/vdb").ok());
  HeldClosed now = Make("boot-2");
  now.ForgetEarlierBoots();
  EXPECT_FALSE(
      std::filesystem::exists(dir_.path() + "/held-closed/" + kUuid + ".json"));
  EXPECT_TRUE(now.IsHeld(other, "/dev/vdb"));
}

// An image file (or the auto-clear loop device vcryptd attached for it)
// has no lasting device identity: the record then holds whatever device
// the volume is found on, until the next boot or an explicit open.
TEST_F(HeldClosedTest, AVolumeWithoutADeviceIdentityIsHeldOnAnyDevice) {
  HeldClosed h = Make("boot-1");
  ASSERT_TRUE(h.Hold(kUuid, "/var/lib/vcrypt/images/vm1-d0.img").ok());
  EXPECT_TRUE(h.IsHeld(kUuid, "/var/lib/vcrypt/images/vm1-d0.img"));
  EXPECT_TRUE(h.IsHeld(kUuid, "/dev/vdb"));
  EXPECT_FALSE(Make("boot-2").IsHeld(kUuid, "/dev/vdb"));
}

// A record it cannot read holds: a damaged file must not undo an admin's
// close. A name that is not a UUID is refused (it becomes a file name).
TEST_F(HeldClosedTest, DamagedRecordsHoldAndNamesAreChecked) {
  HeldClosed h = Make("boot-1");
  ASSERT_TRUE(h.Hold(kUuid, "/dev/vdb").ok());
  std::ofstream(dir_.path() + "/held-closed/" + kUuid + ".json") << "{not json";
  EXPECT_TRUE(h.IsHeld(kUuid, "/dev/vdb"));
  EXPECT_FALSE(h.Hold("../../etc/passwd", "/dev/vdb").ok());
  EXPECT_FALSE(h.IsHeld("../x", "/dev/vdb"));
}

TEST(DeviceInstanceTest, OnlyBlockDevicesHaveOne) {
  testing::TempDir d{"held-dev"};
  std::ofstream(d.path() + "/image") << "x";
  EXPECT_EQ(DeviceInstance(d.path() + "/image"), std::nullopt);
  EXPECT_EQ(DeviceInstance("/dev/null"), std::nullopt);  // a char device
  EXPECT_EQ(DeviceInstance(d.path() + "/missing"), std::nullopt);
  EXPECT_EQ(BootId().size(), 36u) << BootId();
}

}  // namespace
}  // namespace vcrypt
