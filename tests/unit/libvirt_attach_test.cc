// libvirt/connection and libvirt/attach against libvirt's test driver
// ("test:///default"). That is the real libvirt library with its built-in
// in-process hypervisor driver (shipped in libvirt0, no daemon), not a
// mock: domains are defined, started and read through the same C API as
// with qemu:///system. The test driver does not implement device attach or
// detach, so those calls fail for real, which is how the roll-back paths
// are exercised here. vcryptd is replaced by FakeVolumes (a recorder of
// open/close requests); attach/detach with a real libvirtd, QEMU and
// dm-crypt are in tests/integration/t_libvirt.sh.
#include <gtest/gtest.h>
#include <libvirt/libvirt.h>

#include <map>
#include <string>
#include <vector>

#include "libvirt/attach.h"
#include "libvirt/connection.h"
#include "libvirt/handles.h"
#include "tests/unit/fake_volumes.h"

namespace vcrypt {
namespace {

constexpr const char* kTestUri = "test:///default";

using testing::FakeVolumes;

// A domain of the test driver, defined (and optionally started) by the
// fixture through the plain C API and removed afterwards. Our own
// connection keeps the test driver's shared state alive for the test.
class LibvirtAttachTest : public ::testing::Test {
 protected:
  void SetUp() override {
    conn_.reset(virConnectOpen(kTestUri));
    ASSERT_TRUE(conn_) << "libvirt test driver unavailable";
    auto lv = Libvirt::Connect(kTestUri);
    ASSERT_TRUE(lv.ok()) << lv.error().message;
    lv_.emplace(std::move(lv).value());
  }
  void TearDown() override {
    for (const auto& n : defined_) {
      VirDomainHandle d(virDomainLookupByName(conn_.get(), n.c_str()));
      if (!d) continue;
      if (virDomainIsActive(d.get()) == 1) virDomainDestroy(d.get());
      virDomainUndefine(d.get());
    }
  }
  std::string Define(const std::string& name, const std::string& disks,
                     bool start) {
    std::string xml = "<domain type='test'><name>" + name +
                      "</name><memory>65536</memory><os><type>hvm</type></os>"
                      "<devices>" +
                      disks + "</devices></domain>";
    VirDomainHandle d(virDomainDefineXML(conn_.get(), xml.c_str()));
    EXPECT_TRUE(d) << xml;
    if (!d) return name;
    defined_.push_back(name);
    if (start) {
      EXPECT_EQ(virDomainCreate(d.get()), 0);
    }
    return name;
  }
  static std::string FileDisk(const std::string& target) {
    return "<disk type='file' device='disk'><source file='/guest/" + target +
           ".img'/><target dev='" + target + "' bus='virtio'/></disk>";
  }
  static std::string VcryptDiskXml(const std::string& vm,
                                   const std::string& disk,
                                   const std::string& target) {
    return "<disk type='block' device='disk'><source dev='/dev/mapper/vcrypt-" +
           vm + "-" + disk + "'/><target dev='" + target +
           "' bus='virtio'/></disk>";
  }

  VirConnectHandle conn_;
  std::optional<Libvirt> lv_;
  std::vector<std::string> defined_;
  FakeVolumes vols_;
};

TEST_F(LibvirtAttachTest, UnreachableLibvirtIsDaemonUnavailable) {
  auto lv = Libvirt::Connect("test+unix:///default?socket=/nonexistent/sock");
  ASSERT_FALSE(lv.ok());
  EXPECT_EQ(lv.error().code, ErrorCode::kDaemonUnavailable);
  EXPECT_NE(lv.error().message.find("cannot connect to libvirt"),
            std::string::npos);
  EXPECT_EQ(lv.error().message.find('\n'), std::string::npos);
}

TEST_F(LibvirtAttachTest, UnknownDomainIsNotFoundAndOpensNothing) {
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, "no-such-domain", {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("no-such-domain"), std::string::npos);
  EXPECT_TRUE(vols_.calls.empty());
  auto d = DetachVolume(*lv_, vols_, {{"vm1", "d0"}, "no-such-domain"});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(vols_.calls.empty());
}

TEST_F(LibvirtAttachTest, AlreadyAttachedIsRefusedWithItsTarget) {
  std::string dom = Define(
      "vc-attached", FileDisk("vda") + VcryptDiskXml("vm1", "d0", "vdc"), true);
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_NE(r.error().message.find("already attached"), std::string::npos);
  EXPECT_NE(r.error().message.find("vdc"), std::string::npos);
  EXPECT_TRUE(vols_.calls.empty());
}

TEST_F(LibvirtAttachTest, TakenTargetIsRefused) {
  std::string dom = Define("vc-taken", FileDisk("vda") + FileDisk("vdb"), true);
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, std::string("vdb")});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_NE(r.error().message.find("vdb"), std::string::npos);
  EXPECT_TRUE(vols_.calls.empty());
}

TEST_F(LibvirtAttachTest, BadNamesAreRefusedBeforeAnything) {
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d-0"}, "whatever", {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  r = AttachVolume(*lv_, vols_,
                   {{"vm1", "d0"}, "whatever", std::string("sdb")});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(vols_.calls.empty());
}

// The volume is opened, libvirt then refuses the device (the test driver
// has no hot-plug): the volume this call opened is closed again.
TEST_F(LibvirtAttachTest, FailedAttachClosesWhatItOpened) {
  std::string dom = Define("vc-running", FileDisk("vda"), true);
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("libvirt refused to attach"),
            std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("vm1/d0 was closed again"),
            std::string::npos)
      << r.error().message;
  EXPECT_EQ(vols_.calls,
            (std::vector<std::string>{"open vm1/d0", "describe vm1/d0",
                                      "close vm1/d0"}));
  // The metadata written before the attach is gone again with it.
  auto x = lv_->LookupDomain(dom)->XmlDesc(false);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->find(kVcryptMetadataUri), std::string::npos) << *x;

  // When closing fails too, the message says so.
  vols_.calls.clear();
  vols_.close_errors["vm1/d0"] = MakeError(ErrorCode::kBusy, "in use");
  r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("closing vm1/d0 again failed too: in use"),
            std::string::npos)
      << r.error().message;
}

TEST_F(LibvirtAttachTest, FailedAttachLeavesAnAlreadyOpenVolumeOpen) {
  std::string dom = Define("vc-running2", FileDisk("vda"), true);
  vols_.already_open.insert("vm1/d0");
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(vols_.calls,
            (std::vector<std::string>{"open vm1/d0", "describe vm1/d0"}));
}

TEST_F(LibvirtAttachTest, VolumeThatCannotBeOpenedIsNotAttached) {
  std::string dom = Define("vc-running3", FileDisk("vda"), true);
  vols_.open_errors["vm1/d0"] =
      MakeError(ErrorCode::kKeyUnavailable, "the KMS is unreachable");
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_EQ(r.error().message, "the KMS is unreachable");
  EXPECT_EQ(vols_.calls, (std::vector<std::string>{"open vm1/d0"}));
}

// A shut-off domain: nothing is opened (the hook does that at start), but
// the volume must be known to vcryptd.
TEST_F(LibvirtAttachTest, ShutOffDomainOnlyChecksTheVolume) {
  std::string dom = Define("vc-off", FileDisk("vda"), false);
  vols_.unknown = true;
  auto r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(vols_.calls, (std::vector<std::string>{"known vm1/d0"}));

  vols_.calls.clear();
  vols_.unknown = false;
  r = AttachVolume(*lv_, vols_, {{"vm1", "d0"}, dom, {}});
  ASSERT_FALSE(r.ok());  // the test driver cannot attach
  EXPECT_NE(r.error().message.find("libvirt refused"), std::string::npos);
  EXPECT_EQ(vols_.calls,
            (std::vector<std::string>{"known vm1/d0", "describe vm1/d0"}));
}

TEST_F(LibvirtAttachTest, DetachOfAVolumeNotAttachedIsNotFound) {
  std::string dom =
      Define("vc-detach",
             FileDisk("vda") + VcryptDiskXml("vm1", "other", "vdb"), true);
  auto r = DetachVolume(*lv_, vols_, {{"vm1", "d0"}, dom});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("not attached"), std::string::npos);
  EXPECT_TRUE(vols_.calls.empty());
}

// libvirt refuses the detach: nothing is closed.
TEST_F(LibvirtAttachTest, FailedDetachClosesNothing) {
  std::string dom = Define(
      "vc-detach2", FileDisk("vda") + VcryptDiskXml("vm1", "d0", "vdb"), true);
  auto r = DetachVolume(*lv_, vols_, {{"vm1", "d0"}, dom});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("libvirt refused to detach"),
            std::string::npos)
      << r.error().message;
  EXPECT_TRUE(vols_.calls.empty());
}

// The domain's real XML, as the test driver reports it, drives the
// choice of target.
TEST_F(LibvirtAttachTest, TargetChosenFromTheDomainsXml) {
  std::string dom = Define(
      "vc-targets", FileDisk("vda") + FileDisk("vdb") + FileDisk("vdd"), true);
  auto d = lv_->LookupDomain(dom);
  ASSERT_TRUE(d.ok());
  auto live = d->XmlDesc(false);
  auto config = d->XmlDesc(true);
  ASSERT_TRUE(live.ok() && config.ok());
  auto lx = ParseDomainXml(*live);
  auto cx = ParseDomainXml(*config);
  ASSERT_TRUE(lx.ok() && cx.ok());
  EXPECT_EQ(lx->name, dom);
  EXPECT_EQ(*ChooseTarget(UsedTargets({&*lx, &*cx}), std::nullopt), "vdc");
  EXPECT_TRUE(*d->IsActive());
  EXPECT_TRUE(*d->IsPersistent());
}

}  // namespace
}  // namespace vcrypt
