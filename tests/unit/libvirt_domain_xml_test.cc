// libvirt/domain_xml: the <disk> vcrypt attaches (parsed back with libxml2
// and checked attribute by attribute), domain XML parsing, mapping paths,
// target names.
#include <gtest/gtest.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <map>

#include "libvirt/domain_xml.h"
#include "libvirt/handles.h"

namespace vcrypt {
namespace {

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

// Attributes of the first child element `name` of `n` (or of `n` itself
// with name == nullptr), read back through libxml2.
std::map<std::string, std::string> Attrs(const xmlNode* n,
                                         const char* name = nullptr) {
  if (name != nullptr) {
    const xmlNode* c = n->children;
    while (c != nullptr &&
           !(c->type == XML_ELEMENT_NODE && xmlStrcmp(c->name, X(name)) == 0))
      c = c->next;
    n = c;
  }
  std::map<std::string, std::string> out;
  if (n == nullptr) return out;
  for (const xmlAttr* a = n->properties; a != nullptr; a = a->next) {
    XmlString v(xmlGetProp(n, a->name));
    out[reinterpret_cast<const char*>(a->name)] =
        reinterpret_cast<const char*>(v.get());
  }
  return out;
}

int ElementChildren(const xmlNode* n) {
  int k = 0;
  for (const xmlNode* c = n->children; c != nullptr; c = c->next)
    k += c->type == XML_ELEMENT_NODE;
  return k;
}

TEST(LibvirtDiskXml, RawVirtioBlockDiskParsesBack) {
  auto xml = BuildDiskXml("/dev/mapper/vcrypt-web-01-root", "vdb");
  ASSERT_TRUE(xml.ok()) << xml.error().message;
  XmlDocHandle doc(xmlReadMemory(xml->data(), static_cast<int>(xml->size()),
                                 "disk.xml", nullptr,
                                 XML_PARSE_NONET | XML_PARSE_NOERROR));
  ASSERT_TRUE(doc) << *xml;
  const xmlNode* disk = xmlDocGetRootElement(doc.get());
  ASSERT_NE(disk, nullptr);
  EXPECT_STREQ(reinterpret_cast<const char*>(disk->name), "disk");
  using M = std::map<std::string, std::string>;
  EXPECT_EQ(Attrs(disk), (M{{"type", "block"}, {"device", "disk"}}));
  EXPECT_EQ(Attrs(disk, "driver"), (M{{"name", "qemu"},
                                      {"type", "raw"},
                                      {"cache", "none"},
                                      {"io", "native"}}));
  EXPECT_EQ(Attrs(disk, "source"),
            (M{{"dev", "/dev/mapper/vcrypt-web-01-root"}}));
  EXPECT_EQ(Attrs(disk, "target"), (M{{"dev", "vdb"}, {"bus", "virtio"}}));
  EXPECT_EQ(ElementChildren(disk), 3);
}

TEST(LibvirtDiskXml, RefusesWhatIsNotAVcryptDisk) {
  for (auto [src, tgt] : std::vector<std::pair<std::string, std::string>>{
           {"/dev/sda", "vdb"},
           {"/dev/mapper/other", "vdb"},
           {"/dev/mapper/vcrypt-vm1-d0'/><source dev='/dev/sda", "vdb"},
           {"/dev/mapper/vcrypt-vm1-d0", "sdb"},
           {"/dev/mapper/vcrypt-vm1-d0", "vdb'/><x a='"},
       }) {
    auto xml = BuildDiskXml(src, tgt);
    ASSERT_FALSE(xml.ok()) << src << " " << tgt << " -> " << *xml;
    EXPECT_EQ(xml.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(LibvirtMappingPath, SplitsAtTheLastDash) {
  auto v = ParseMappingPath("/dev/mapper/vcrypt-web-01-root");
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(v->has_value());
  EXPECT_EQ((*v)->vm, "web-01");
  EXPECT_EQ((*v)->disk, "root");
  EXPECT_EQ(MappingPath(**v), "/dev/mapper/vcrypt-web-01-root");

  for (const char* other : {"", "/dev/sda", "/dev/mapper/crypt-a-b",
                            "/dev/mapper/vcrypt", "/var/lib/vcrypt-a-b"}) {
    auto r = ParseMappingPath(other);
    ASSERT_TRUE(r.ok()) << other;
    EXPECT_FALSE(r->has_value()) << other;
  }
  for (const char* bad :
       {"/dev/mapper/vcrypt-nodash", "/dev/mapper/vcrypt--d0",
        "/dev/mapper/vcrypt-vm1-", "/dev/mapper/vcrypt-vm$1-d0",
        "/dev/mapper/vcrypt-vm1-d0/../../sda", "/dev/mapper/vcrypt-.vm-d0"}) {
    auto r = ParseMappingPath(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
}

constexpr const char* kDomain = R"(<domain type='kvm' id='7'>
  <name>web01</name>
  <uuid>0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8f</uuid>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/mapper/vcrypt-web01-data' index='2'/>
      <target dev='vdc' bus='virtio'/>
      <alias name='virtio-disk2'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='nbd' name='x'><host name='h' port='10809'/></source>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/mapper/vcrypt-web01-root'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/dev/mapper/vcrypt-web01-scratch'/>
      <target dev='vde' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/mapper/luks-1234'/>
      <target dev='vdf' bus='virtio'/>
    </disk>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>)";

TEST(LibvirtDomainXml, FindsVcryptDisksAndIgnoresOthers) {
  auto d = ParseDomainXml(kDomain);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->name, "web01");
  ASSERT_EQ(d->disks.size(), 7u);
  EXPECT_EQ(d->disks[0].source, "/var/lib/libvirt/images/web01.qcow2");
  EXPECT_EQ(d->disks[1].source, "");
  EXPECT_EQ(d->disks[1].device, "cdrom");
  EXPECT_EQ(d->disks[2].type, "block");
  EXPECT_EQ(d->disks[2].bus, "virtio");

  auto v = FindVcryptDisks(*d);
  ASSERT_TRUE(v.ok()) << v.error().message;
  ASSERT_EQ(v->size(), 3u);
  EXPECT_EQ((*v)[0].volume, (VolumeRef{"web01", "data"}));
  EXPECT_EQ((*v)[0].target, "vdc");
  EXPECT_EQ((*v)[0].source, "/dev/mapper/vcrypt-web01-data");
  EXPECT_EQ((*v)[1].volume, (VolumeRef{"web01", "root"}));
  EXPECT_EQ((*v)[1].target, "vdb");
  EXPECT_EQ((*v)[2].volume, (VolumeRef{"web01", "scratch"}));

  EXPECT_EQ(
      UsedTargets({&*d}),
      (std::set<std::string>{"vda", "sda", "vdb", "vdc", "vdd", "vde", "vdf"}));
  auto found = FindDiskBySource(*d, "/dev/mapper/vcrypt-web01-root");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->target, "vdb");
  EXPECT_FALSE(FindDiskBySource(*d, "/dev/mapper/vcrypt-web01-none"));
}

TEST(LibvirtDomainXml, DiskElementIsKeptForDetach) {
  auto d = ParseDomainXml(kDomain);
  ASSERT_TRUE(d.ok());
  // The element as libvirt gave it, parsed again on its own.
  auto again = ParseDomainXml("<domain><devices>" + d->disks[2].xml +
                              "</devices></domain>");
  ASSERT_TRUE(again.ok()) << d->disks[2].xml;
  ASSERT_EQ(again->disks.size(), 1u);
  EXPECT_EQ(again->disks[0].source, "/dev/mapper/vcrypt-web01-data");
  EXPECT_EQ(again->disks[0].target, "vdc");
  EXPECT_NE(d->disks[2].xml.find("virtio-disk2"), std::string::npos);
}

TEST(LibvirtDomainXml, EachVolumeOnce) {
  auto d = ParseDomainXml(R"(<domain><name>x</name><devices>
    <disk type='block'><source dev='/dev/mapper/vcrypt-a-b'/><target dev='vda'/></disk>
    <disk type='block'><source dev='/dev/mapper/vcrypt-a-b'/><target dev='vdb'/></disk>
    </devices></domain>)");
  ASSERT_TRUE(d.ok());
  auto v = FindVcryptDisks(*d);
  ASSERT_TRUE(v.ok());
  ASSERT_EQ(v->size(), 1u);
  EXPECT_EQ((*v)[0].target, "vda");
}

TEST(LibvirtDomainXml, NoDevicesNoDisks) {
  auto d = ParseDomainXml("<domain type='qemu'><name>e</name></domain>");
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->disks.empty());
  auto v = FindVcryptDisks(*d);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->empty());
}

TEST(LibvirtDomainXml, MalformedXmlIsRejected) {
  for (const char* bad : {"", "not xml", "<domain><devices>",
                          "<domain><name>a</name></domain><domain/>",
                          "<domain><disk></domain>"}) {
    auto d = ParseDomainXml(bad);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(d.error().message.find("not well-formed"), std::string::npos)
        << d.error().message;
    EXPECT_EQ(d.error().message.find('\n'), std::string::npos);
  }
  auto d = ParseDomainXml("<network><name>default</name></network>");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("not <domain>"), std::string::npos);
}

TEST(LibvirtDomainXml, VcryptPathsWithBadNamesAreRejected) {
  for (const char* src :
       {"/dev/mapper/vcrypt-vm1", "/dev/mapper/vcrypt-vm 1-d0",
        "/dev/mapper/vcrypt-vm1-d0;rm"}) {
    std::string xml =
        std::string("<domain><devices><disk type='block'><source dev='") + src +
        "'/><target dev='vdb'/></disk></devices></domain>";
    auto d = ParseDomainXml(xml);
    ASSERT_TRUE(d.ok()) << xml;
    auto v = FindVcryptDisks(*d);
    ASSERT_FALSE(v.ok()) << src;
    EXPECT_EQ(v.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(v.error().message.find("is not a vcrypt mapping"),
              std::string::npos);
  }
}

// No network, no external entities: a reference to a local file stays
// unexpanded.
TEST(LibvirtDomainXml, ExternalEntitiesAreNotLoaded) {
  auto d = ParseDomainXml(R"(<?xml version="1.0"?>
<!DOCTYPE domain [ <!ENTITY x SYSTEM "file:///etc/passwd"> ]>
<domain><name>&x;</name><devices>
  <disk type='block'><source dev='/dev/mapper/vcrypt-a-b'/><target dev='vda'/></disk>
</devices></domain>)");
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->name.find("root:"), std::string::npos) << d->name;
}

TEST(LibvirtTarget, ValidNames) {
  for (const char* ok : {"vda", "vdz", "vdaa", "vdzz", "vdbc"})
    EXPECT_TRUE(ValidateTargetName(ok).ok()) << ok;
  for (const char* bad : {"", "vd", "sda", "hda", "vdA", "vd1", "vdaaa", "vda1",
                          "xvda", " vda"}) {
    auto st = ValidateTargetName(bad);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(LibvirtTarget, FirstFreeInLinuxOrder) {
  EXPECT_EQ(*ChooseTarget({}, std::nullopt), "vda");
  EXPECT_EQ(*ChooseTarget({"vda", "sda", "hdc"}, std::nullopt), "vdb");
  EXPECT_EQ(*ChooseTarget({"vda", "vdc"}, std::nullopt), "vdb");
  std::set<std::string> used;
  for (char c = 'a'; c <= 'z'; ++c) used.insert(std::string("vd") + c);
  EXPECT_EQ(*ChooseTarget(used, std::nullopt), "vdaa");
  used.insert("vdaa");
  EXPECT_EQ(*ChooseTarget(used, std::nullopt), "vdab");
  for (char a = 'a'; a <= 'z'; ++a)
    for (char b = 'a'; b <= 'z'; ++b) used.insert(std::string("vd") + a + b);
  auto full = ChooseTarget(used, std::nullopt);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, ErrorCode::kExists);
}

TEST(LibvirtTarget, RequestedTarget) {
  EXPECT_EQ(*ChooseTarget({"vda"}, std::string("vdq")), "vdq");
  auto taken = ChooseTarget({"vda", "vdq"}, std::string("vdq"));
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, ErrorCode::kExists);
  EXPECT_NE(taken.error().message.find("vdq"), std::string::npos);
  auto bad = ChooseTarget({}, std::string("sdb"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace vcrypt
