// dmtools/stacking.h against a sysfs tree built in a temporary directory.
// The host kernel has no device-mapper, so a fake tree is the only way to
// run the walk here; it mirrors the real layout (dev/block/M:m and
// slaves/ entries are symlinks into devices/, a partition is a directory
// inside its disk's, with a "partition" file). tests/dm/volume_dm_test.cc
// and tests/integration/t_guest.sh run it against a real kernel.
#include "dmtools/stacking.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/handles.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

class StackingTest : public ::testing::Test {
 protected:
  // A block device at devices/<rel> with number dev_id.
  fs::path Device(const std::string& rel, const std::string& dev_id) {
    fs::path d = root() / "devices" / rel;
    fs::create_directories(d);
    fs::create_directories(root() / "dev" / "block");
    fs::create_directory_symlink(d, root() / "dev" / "block" / dev_id);
    return d;
  }
  fs::path Dm(const std::string& rel, const std::string& dev_id,
              const std::string& name, const std::string& uuid) {
    fs::path d = Device(rel, dev_id);
    fs::create_directories(d / "dm");
    std::ofstream(d / "dm" / "name") << name << "\n";
    std::ofstream(d / "dm" / "uuid") << uuid << "\n";
    return d;
  }
  void Slave(const fs::path& holder, const fs::path& slave) {
    fs::create_directories(holder / "slaves");
    fs::create_directory_symlink(slave, holder / "slaves" / slave.filename());
  }
  fs::path root() const { return fs::path(tmp_.path()) / "sys"; }
  Result<std::optional<std::string>> Below(const std::string& dev_id) {
    return VcryptMappingBelow(dev_id, root().string());
  }

  TempDir tmp_{"stacking"};
};

TEST(VcryptMappingTest, NameAndUuidMustBothMatch) {
  EXPECT_TRUE(
      IsVcryptMapping("vcrypt-vm1-d0", "CRYPT-LUKS2-0b6f-vcrypt-vm1-d0"));
  EXPECT_TRUE(
      IsVcryptMapping("vcrypt-vm1-d0-hotzone-forward",
                      "CRYPT-SUBDEV-0b6f-vcrypt-vm1-d0-hotzone-forward"));
  // An LV of a VG named "vcrypt", and a host's own LUKS device.
  EXPECT_FALSE(IsVcryptMapping("vcrypt-x", "LVM-abc"));
  EXPECT_FALSE(IsVcryptMapping("sda5_crypt", "CRYPT-LUKS2-0b6f-sda5_crypt"));
  EXPECT_FALSE(IsVcryptMapping("", ""));
}

TEST_F(StackingTest, FindsTheMappingItselfAndWhatIsStackedOnIt) {
  fs::path loop0 = Device("virtual/block/loop0", "7:0");
  fs::path vc =
      Dm("virtual/block/dm-0", "253:0", "vcrypt-vm1-d0",
         "CRYPT-LUKS2-0b6f0d6e6b8e4a439a7e3f2b1c0d9e8f-vcrypt-vm1-d0");
  Slave(vc, loop0);
  // A guest's LV activated by the host, two layers up: an LV on it and a
  // kpartx-style mapping on that.
  fs::path lv = Dm("virtual/block/dm-1", "253:1", "guestvg-guestlv", "LVM-x");
  Slave(lv, vc);
  fs::path part =
      Dm("virtual/block/dm-2", "253:2", "guestvg-guestlv1", "part1-LVM-x");
  Slave(part, lv);
  // md over the LV, and a partition of the md array.
  fs::path md = Device("virtual/block/md0", "9:0");
  Slave(md, lv);
  fs::create_directories(md / "md0p1");
  std::ofstream(md / "md0p1" / "partition") << "1\n";
  fs::create_directory_symlink(md / "md0p1",
                               root() / "dev" / "block" / "259:0");

  for (const char* id : {"253:0", "253:1", "253:2", "259:0"}) {
    auto r = Below(id);
    ASSERT_TRUE(r.ok()) << id << ": " << r.error().message;
    EXPECT_EQ(r->value_or("(none)"), "vcrypt-vm1-d0") << id;
  }
  auto r = Below("7:0");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->has_value());
  r = Below("9:0");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->value_or("(none)"), "vcrypt-vm1-d0");
}

TEST_F(StackingTest, OtherStacksAreNotGuestContent) {
  // A host on LVM over LUKS (Debian's encrypted install), a vcrypt volume
  // on one of its LVs: the backing LV is the host's.
  fs::path vda = Device("pci0000:00/block/vda", "254:0");
  fs::create_directories(vda / "vda2");
  std::ofstream(vda / "vda2" / "partition") << "2\n";
  fs::create_directory_symlink(vda / "vda2",
                               root() / "dev" / "block" / "254:2");
  fs::path host = Dm("virtual/block/dm-0", "253:0", "vda2_crypt",
                     "CRYPT-LUKS2-1111-vda2_crypt");
  Slave(host, vda / "vda2");
  fs::path lv = Dm("virtual/block/dm-1", "253:1", "vcrypt-images", "LVM-y");
  Slave(lv, host);
  for (const char* id : {"254:0", "254:2", "253:0", "253:1"}) {
    auto r = Below(id);
    ASSERT_TRUE(r.ok()) << id << ": " << r.error().message;
    EXPECT_FALSE(r->has_value()) << id << ": " << **r;
  }
}

TEST_F(StackingTest, ErrorsSayWhy) {
  Device("virtual/block/loop0", "7:0");
  auto r = Below("7:1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  for (const char* bad : {"", "7", ":1", "7:", "../7:0", "7:0:1", "a:b"}) {
    r = Below(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  // A dm directory without its attributes: unreadable, not "no mapping".
  fs::path d = Device("virtual/block/dm-9", "253:9");
  fs::create_directories(d / "dm");
  r = Below("253:9");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  EXPECT_NE(r.error().message.find("dm/name"), std::string::npos)
      << r.error().message;
}

TEST_F(StackingTest, DepthIsBounded) {
  fs::path below = Device("virtual/block/loop0", "7:0");
  for (int i = 0; i < 20; ++i) {
    fs::path d =
        Dm("virtual/block/dm-" + std::to_string(i), "253:" + std::to_string(i),
           "l" + std::to_string(i), "LVM-" + std::to_string(i));
    Slave(d, below);
    below = d;
  }
  auto r = Below("253:19");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("deeper"), std::string::npos)
      << r.error().message;
  r = Below("253:10");  // 11 levels: fine
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->has_value());
}

TEST_F(StackingTest, PathsThatAreNotBlockDevicesStackOnNothing) {
  const std::string file = tmp_ / "disk.img";
  std::ofstream(file) << "x";
  auto r = VcryptMappingBelowPath(file, root().string());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->has_value());
  r = VcryptMappingBelowPath(tmp_ / "missing", root().string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

// A block device node of this machine opened O_PATH (no I/O, no read
// permission needed), and its "MAJOR:MINOR"; an invalid fd when /dev has
// none.
std::pair<UniqueFd, std::string> SomeBlockDevice() {
  std::error_code ec;
  for (fs::directory_iterator it("/dev", ec), end; !ec && it != end;
       it.increment(ec)) {
    UniqueFd fd(open(it->path().c_str(), O_PATH | O_CLOEXEC | O_NOFOLLOW));
    struct stat st;
    if (!fd.valid() || fstat(fd.get(), &st) != 0 || !S_ISBLK(st.st_mode))
      continue;
    return {std::move(fd), std::to_string(major(st.st_rdev)) + ":" +
                               std::to_string(minor(st.st_rdev))};
  }
  return {UniqueFd(), ""};
}

// vcrypt's format path decides by the descriptor it opened (FormatVolume):
// the device number comes from fstat, not from any path.
TEST_F(StackingTest, DescriptorsAreJudgedByTheDeviceTheyOpened) {
  auto [fd, id] = SomeBlockDevice();
  if (!fd.valid()) GTEST_SKIP() << "no block device node in /dev";
  const std::string vc_id = id == "253:4000" ? "253:4001" : "253:4000";
  fs::path vc =
      Dm("virtual/block/dm-4000", vc_id, "vcrypt-vm1-d0",
         "CRYPT-LUKS2-0b6f0d6e6b8e4a439a7e3f2b1c0d9e8f-vcrypt-vm1-d0");
  // The opened device is a guest's LV on that mapping.
  fs::path lv = Dm("virtual/block/dm-4002", id, "guestvg-lv", "LVM-x");
  Slave(lv, vc);
  auto r = VcryptMappingBelowFd(fd.get(), root().string());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->value_or("(none)"), "vcrypt-vm1-d0");

  // An unreadable stack is an error (the caller refuses), not "none".
  fs::remove(lv / "dm" / "uuid");
  r = VcryptMappingBelowFd(fd.get(), root().string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);

  // A regular file (an image) stacks on nothing; a bad descriptor is kIo.
  const std::string file = tmp_ / "disk.img";
  std::ofstream(file) << "x";
  UniqueFd ffd(open(file.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ffd.valid());
  r = VcryptMappingBelowFd(ffd.get(), root().string());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->has_value());
  r = VcryptMappingBelowFd(-1, root().string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
}

}  // namespace
}  // namespace vcrypt
