// libvirt domain XML, as far as vcrypt needs it: the <disk> element that
// attaches a vcrypt mapping, and the disks of a domain (which of them are
// vcrypt volumes, which targets are taken). Built and parsed with libxml2's
// tree API, never by pasting strings.
#ifndef VCRYPT_LIBVIRT_DOMAIN_XML_H_
#define VCRYPT_LIBVIRT_DOMAIN_XML_H_

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace vcrypt {

inline constexpr std::string_view kVcryptMapperPrefix = "/dev/mapper/vcrypt-";

struct VolumeRef {
  std::string vm, disk;
  std::string Label() const { return vm + "/" + disk; }  // "VM/DISK"
  bool operator==(const VolumeRef&) const = default;
};

// "/dev/mapper/vcrypt-<vm>-<disk>".
std::string MappingPath(const VolumeRef& v);

// The volume behind a vcrypt mapping path. The name splits at its last
// '-' (disk names have none). std::nullopt when `path` is not under
// /dev/mapper/vcrypt-; kInvalidArgument when it is but the names do not
// pass the VM/disk name rules (such a mapping is never vcrypt's).
Result<std::optional<VolumeRef>> ParseMappingPath(std::string_view path);

// One <disk> of a domain.
struct DomainDisk {
  std::string type;    // disk@type: block, file, network, ...
  std::string device;  // disk@device: disk, cdrom, ...
  std::string source;  // source@dev, else source@file; "" if neither
  std::string target;  // target@dev ("" if missing)
  std::string bus;     // target@bus
  std::string cache;   // driver@cache ("" if missing)
  std::string xml;     // the <disk> element itself, serialised
};

// What the domain XML records of one vcrypt volume, under <metadata> in
// the vcrypt namespace (docs/cluster.md): everything a host needs to find
// the volume and its key without a prior registration. Written by
// `vcryptctl attach`; it travels with every migration. The volume's own
// header stays the authority: the destination checks it.
//   <metadata>
//     <vcrypt:volumes xmlns:vcrypt="urn:vcrypt:libvirt:volumes:1">
//       <vcrypt:volume vm=".." disk=".." uuid=".." provider=".."
//                      provider-type="native|standard|trusted"
//                      kek-id=".." [primary-key-id=".."] [image="/.."]/>
//     </vcrypt:volumes>
//   </metadata>
inline constexpr const char* kVcryptMetadataUri =
    "urn:vcrypt:libvirt:volumes:1";
inline constexpr const char* kVcryptMetadataPrefix = "vcrypt";
// A domain with more vcrypt volumes than this in its metadata is refused.
inline constexpr size_t kMaxMetadataVolumes = 64;

struct VolumeMeta {
  std::string vm, disk;
  std::string uuid;           // LUKS2 UUID
  std::string provider;       // provider name on the attaching host
  std::string provider_type;  // native, standard or trusted
  std::string kek_id;
  std::string primary_key_id;  // native only
  std::string image;           // image file path; "" for a block device
  VolumeRef volume() const { return {vm, disk}; }
  bool operator==(const VolumeMeta&) const = default;
};

struct DomainXml {
  std::string name;
  std::vector<DomainDisk> disks;  // document order
  // The vcrypt metadata's entries, in document order (none without it).
  std::vector<VolumeMeta> vcrypt_volumes;
};

// Parses a domain XML document (virDomainGetXMLDesc output, or what
// libvirt hands a hook on stdin). No network, no DTD, no entity
// expansion. kInvalidArgument when it is not well-formed, its root is
// not <domain>, or its vcrypt metadata is invalid (as
// ParseVolumesMetadata).
Result<DomainXml> ParseDomainXml(std::string_view xml);

struct VcryptDisk {
  VolumeRef volume;
  std::string source;  // the mapping path
  std::string target;
};

// The domain's disks whose source is a vcrypt mapping, in document order,
// each volume once. kInvalidArgument if a source under /dev/mapper/vcrypt-
// has names that do not pass validation.
Result<std::vector<VcryptDisk>> FindVcryptDisks(const DomainXml& domain);

// The disk whose source is `path`, if any.
std::optional<DomainDisk> FindDiskBySource(const DomainXml& domain,
                                           std::string_view path);

// What `vcryptctl attach` adds: a raw virtio disk on a block device,
//   <disk type='block' device='disk'>
//     <driver name='qemu' type='raw' cache='none' io='native'/>
//     <source dev='SOURCE'/>
//     <target dev='TARGET' bus='virtio'/>
//   </disk>
// kInvalidArgument if `source` is not a vcrypt mapping path or `target`
// is not a valid target name.
Result<std::string> BuildDiskXml(std::string_view source,
                                 std::string_view target);

// The element vcryptctl hands virDomainSetMetadata (and parses back from
// virDomainGetMetadata): <volumes xmlns="urn:vcrypt:libvirt:volumes:1">
// with one <volume/> per entry, in order. kInvalidArgument when an entry
// fails ValidateVolumeMeta or there are more than kMaxMetadataVolumes.
Result<std::string> BuildVolumesMetadata(const std::vector<VolumeMeta>& vols);
// The entries of such an element ("" gives none). Every entry is checked
// (ValidateVolumeMeta); a VM/DISK listed twice is kInvalidArgument.
Result<std::vector<VolumeMeta>> ParseVolumesMetadata(std::string_view xml);
// Names pass the VM/disk rules, the UUID is a UUID, the provider name and
// type are valid, IDs are printable and short, an image path is absolute
// without "..". The domain XML is anybody-with-libvirt-access's input.
Status ValidateVolumeMeta(const VolumeMeta& m);

// Target device names vcrypt uses: ^vd[a-z]{1,2}$. kInvalidArgument
// otherwise.
Status ValidateTargetName(std::string_view target);

// The target for a new disk. With `requested`: that name, if valid and
// not in `used` (kExists if used). Without: the first of vda..vdz,
// vdaa..vdzz not in `used` (kExists when all are taken).
Result<std::string> ChooseTarget(const std::set<std::string>& used,
                                 const std::optional<std::string>& requested);

// Every target dev name of the given domains' disks.
std::set<std::string> UsedTargets(const std::vector<const DomainXml*>& domains);

// `s` as one line for an error message: inner line breaks become spaces,
// trailing newlines and spaces (libvirt's and libxml2's) are dropped.
std::string OneLine(std::string s);

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_DOMAIN_XML_H_
